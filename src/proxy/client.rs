//! The call to the Node app: one signed POST per allowed client event,
//! within the per-socket budget of calls in flight and the timeout, and its
//! answer read. Owns the HTTP client (hyper's, over rustls) and the shared
//! secret, which no log line, error or `Debug` ever shows. Knows nothing of
//! sockets, sessions or the audit log: the socket layer says who calls and
//! reports what came of it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, USER_AGENT};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::config::Config;
use crate::proxy::rules::{
    self, Answer, Call, EventPatterns, InFlight, MAX_ANSWER_BYTES, PatternError, ProxyError,
};

#[derive(Debug, thiserror::Error)]
pub enum ProxyConfigError {
    #[error("EVENT_PROXY_URL is not an http:// or https:// URL: {0}")]
    BadUrl(String),
    #[error("EVENT_PROXY_SECRET is required when EVENT_PROXY_URL is set")]
    SecretRequired,
    #[error(transparent)]
    Events(#[from] PatternError),
}

/// The configured proxy: where allowed client events go and how.
pub struct Proxy {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    url: Uri,
    secret: Vec<u8>,
    events: EventPatterns,
    timeout: Duration,
    max_in_flight: usize,
    forward_cookie: bool,
    in_flight: InFlight,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("url", &self.shown_url())
            .field("events", &self.events)
            .field("secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// The proxy EVENT_PROXY_URL asks for, or `None` when it is unset.
    pub fn of(config: &Config) -> Result<Option<Self>, ProxyConfigError> {
        let Some(url) = config
            .event_proxy_url
            .as_deref()
            .filter(|u| !u.trim().is_empty())
        else {
            return Ok(None);
        };
        let url: Uri = url
            .trim()
            .parse()
            .map_err(|e: http::uri::InvalidUri| ProxyConfigError::BadUrl(e.to_string()))?;
        if !matches!(url.scheme_str(), Some("http" | "https")) || url.host().is_none() {
            return Err(ProxyConfigError::BadUrl(
                "no http or https scheme and host".into(),
            ));
        }
        let secret = config
            .event_proxy_secret
            .as_deref()
            .filter(|s| !s.is_empty())
            .ok_or(ProxyConfigError::SecretRequired)?;
        let events = EventPatterns::parse(config.event_proxy_events.as_deref().unwrap_or(""))?;
        let tls = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .expect("ring supports the default protocol versions")
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Some(Self {
            http: Client::builder(TokioExecutor::new()).build(tls),
            url,
            secret: secret.as_bytes().to_vec(),
            events,
            timeout: Duration::from_millis(config.event_proxy_timeout_ms),
            max_in_flight: config.event_proxy_max_in_flight,
            forward_cookie: config.event_proxy_forward_cookie,
            in_flight: InFlight::default(),
        }))
    }

    /// Whether the app asked for the session cookie (EVENT_PROXY_FORWARD_COOKIE).
    pub fn forwards_cookie(&self) -> bool {
        self.forward_cookie
    }

    /// The URL without its query (which may carry a token), for the log.
    pub fn shown_url(&self) -> String {
        format!(
            "{}://{}{}",
            self.url.scheme_str().unwrap_or("http"),
            // Without any `user:password@`.
            self.url
                .authority()
                .and_then(|a| a.as_str().rsplit('@').next())
                .unwrap_or(""),
            self.url.path()
        )
    }

    pub fn events(&self) -> &EventPatterns {
        &self.events
    }

    /// Forwards `call` when its event is allowed and its socket has room in
    /// its budget, and reads the app's answer.
    pub async fn forward(&self, call: &Call<'_>) -> Result<Answer, ProxyError> {
        if !self.events.allows(call.event) {
            return Err(ProxyError::NotAllowed);
        }
        let _slot = self
            .in_flight
            .acquire(call.socket_id, self.max_in_flight)
            .ok_or(ProxyError::TooManyInFlight {
                max: self.max_in_flight,
            })?;
        let body = call.body();
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let signature = rules::signature(&self.secret, timestamp, &body);
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, concat!("sockgate/", env!("CARGO_PKG_VERSION")))
            .header(rules::TIMESTAMP_HEADER, timestamp)
            .header(rules::SIGNATURE_HEADER, signature)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ProxyError::Unreachable(e.to_string()))?;
        tokio::time::timeout(self.timeout, self.send(request))
            .await
            .map_err(|_| ProxyError::Timeout(self.timeout))?
    }

    async fn send(&self, request: Request<Full<Bytes>>) -> Result<Answer, ProxyError> {
        let response = self
            .http
            .request(request)
            .await
            .map_err(|e| ProxyError::Unreachable(error_chain(&e)))?;
        let status = response.status().as_u16();
        if !response.status().is_success() {
            // Not read: the error ack does not carry it.
            return Err(ProxyError::Status(status));
        }
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| ProxyError::BadAnswer(format!("reading the body: {e}")))?
            .to_bytes();
        rules::read_answer(status, &body)
    }
}

/// hyper's client error says only "client error (Connect)"; the reason is
/// in its sources.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
