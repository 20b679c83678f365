//! Detecting the time zone a client that sends none gets: the role's, the
//! database's or the server's default, which is the zone node-postgres (hence
//! connect-pg-simple) writes `expire` in. It only answers with the zone;
//! knows nothing of the session table or the pool, which `db::connect` sets
//! up.
//!
//! sqlx always sends `TimeZone=UTC`, so the probe connects with
//! tokio-postgres, which sends none, and with the TLS the URL asks for: the
//! same `sslmode` semantics as the pool's sqlx connections (`disable`;
//! `allow`/`prefer` try TLS and fall back to plain text when the server has
//! none; `require` encrypts without checking the certificate; `verify-ca`
//! checks the chain; `verify-full` the chain and the host name), roots from
//! `sslrootcert` or else the Mozilla set.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot parse the URL: {0}")]
    Url(String),
    #[error("sslrootcert {path}: {error}")]
    RootCert { path: String, error: String },
    #[error("{0}")]
    Connect(#[from] tokio_postgres::Error),
    #[error("timed out")]
    Timeout,
}

/// The URL parameters tokio-postgres understands besides `sslmode`; the
/// others (sqlx's `sslrootcert`, `statement-cache-capacity`, ...) are read
/// here or do not matter to a probe.
const PASSED_ON: [&str; 12] = [
    "user",
    "password",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "options",
    "application_name",
    "connect_timeout",
    "keepalives",
    "keepalives_idle",
    "target_session_attrs",
];

/// What the probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// `TimeZone` on a connection that sent none.
    pub zone: String,
    /// Whether that connection was encrypted.
    pub encrypted: bool,
}

/// `SHOW TimeZone` on a connection that sends none.
pub async fn default_zone(url: &str) -> Result<Probe, ProbeError> {
    let mode = PgConnectOptions::from_str(url)
        .map_err(|e| ProbeError::Url(e.to_string()))?
        .get_ssl_mode();
    let (config, root_cert) = tokio_postgres_config(url, mode)?;
    let probe = async {
        let client = match mode {
            PgSslMode::Disable => {
                let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
                tokio::spawn(conn);
                client
            }
            _ => {
                let tls = RustlsMake(Arc::new(client_config(mode, root_cert.as_deref())?));
                let (client, conn) = config.connect(tls).await?;
                tokio::spawn(conn);
                client
            }
        };
        let row = client
            .query_one(
                "SELECT current_setting('TimeZone'), \
                        COALESCE((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)",
                &[],
            )
            .await?;
        Ok::<_, ProbeError>(Probe {
            zone: row.get(0),
            encrypted: row.get(1),
        })
    };
    tokio::time::timeout(Duration::from_secs(10), probe)
        .await
        .map_err(|_| ProbeError::Timeout)?
}

/// The URL as tokio-postgres reads it, `sslmode` mapped to what it knows
/// (the certificate checks are in the rustls config), and `sslrootcert`.
fn tokio_postgres_config(
    url: &str,
    mode: PgSslMode,
) -> Result<(tokio_postgres::Config, Option<String>), ProbeError> {
    let mut parsed = url::Url::parse(url).map_err(|e| ProbeError::Url(e.to_string()))?;
    let pairs: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
    let root_cert = pairs
        .iter()
        .find(|(k, _)| k == "sslrootcert")
        .map(|(_, v)| v.clone());
    let sslmode = match mode {
        PgSslMode::Disable => "disable",
        PgSslMode::Allow | PgSslMode::Prefer => "prefer",
        PgSslMode::Require | PgSslMode::VerifyCa | PgSslMode::VerifyFull => "require",
    };
    {
        let mut query = parsed.query_pairs_mut();
        query.clear();
        for (k, v) in pairs
            .iter()
            .filter(|(k, _)| PASSED_ON.contains(&k.as_str()))
        {
            query.append_pair(k, v);
        }
        query.append_pair("sslmode", sslmode);
    }
    let config = tokio_postgres::Config::from_str(parsed.as_str())
        .map_err(|e| ProbeError::Url(e.to_string()))?;
    Ok((config, root_cert))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(mode: PgSslMode, root_cert: Option<&str>) -> Result<ClientConfig, ProbeError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        PgSslMode::VerifyCa | PgSslMode::VerifyFull => {
            let mut roots = RootCertStore::empty();
            match root_cert {
                Some(path) => {
                    let bad = |error: String| ProbeError::RootCert {
                        path: path.to_owned(),
                        error,
                    };
                    for cert in
                        CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))?
                    {
                        roots
                            .add(cert.map_err(|e| bad(e.to_string()))?)
                            .map_err(|e| bad(e.to_string()))?;
                    }
                }
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| ProbeError::Url(format!("TLS roots: {e}")))?;
            if matches!(mode, PgSslMode::VerifyFull) {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
        _ => Arc::new(Unchecked(provider)),
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// `sslmode=require` (and `prefer`): encrypted, certificate not checked,
/// as libpq and sqlx do without a root certificate.
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `sslmode=verify-ca`: the chain is checked, the host name is not.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// tokio-postgres over rustls (no channel binding: SCRAM without `-PLUS`,
/// which servers accept unless told to require it).
#[derive(Clone)]
struct RustlsMake(Arc<ClientConfig>);

struct RustlsConnect {
    name: ServerName<'static>,
    connector: tokio_rustls::TlsConnector,
}

struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S> MakeTlsConnect<S> for RustlsMake
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<RustlsConnect> {
        Ok(RustlsConnect {
            name: ServerName::try_from(domain.to_owned()).map_err(io::Error::other)?,
            connector: tokio_rustls::TlsConnector::from(self.0.clone()),
        })
    }
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            Ok(RustlsStream(
                self.connector.connect(self.name, stream).await?,
            ))
        })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_keeps_what_tokio_postgres_reads_and_maps_sslmode() {
        let (config, root) = tokio_postgres_config(
            "postgres://u:p@db.example:6543/app?sslmode=verify-full&sslrootcert=/etc/ca.pem&statement-cache-capacity=5",
            PgSslMode::VerifyFull,
        )
        .unwrap();
        assert_eq!(root.as_deref(), Some("/etc/ca.pem"));
        assert_eq!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        assert_eq!(config.get_dbname(), Some("app"));
        assert_eq!(config.get_ports(), &[6543]);
        let (config, _) = tokio_postgres_config("postgres://u@h/db", PgSslMode::Prefer).unwrap();
        assert_eq!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Prefer
        );
        let (config, _) =
            tokio_postgres_config("postgres://u@h/db?sslmode=disable", PgSslMode::Disable).unwrap();
        assert_eq!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Disable
        );
    }

    #[test]
    fn every_tls_mode_builds_a_config() {
        for mode in [
            PgSslMode::Allow,
            PgSslMode::Prefer,
            PgSslMode::Require,
            PgSslMode::VerifyCa,
            PgSslMode::VerifyFull,
        ] {
            client_config(mode, None).unwrap();
        }
        assert!(matches!(
            client_config(PgSslMode::VerifyCa, Some("/nonexistent/ca.pem")),
            Err(ProbeError::RootCert { .. })
        ));
    }
}
