//! The Origin allowlist: which browser origins may open a socket or call a
//! state-changing route. Origins are compared normalized (scheme, host,
//! port), exactly; the only wildcard is an explicit `*.` subdomain pattern.
//! Plain rules: knows nothing of the layer that enforces them
//! (`http::origin_guard`), of sockets or of the audit.

use std::fmt;

use url::{Host, Url};

/// A normalized origin: lowercase scheme and host (IDN in punycode), port
/// always explicit (default ports folded in).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let default = default_port(&self.scheme);
        if Some(self.port) == default {
            write!(f, "{}://{}", self.scheme, self.host)
        } else {
            write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
        }
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    #[error("not a URL")]
    NotAUrl,
    #[error("only http and https origins are allowed")]
    Scheme,
    #[error("an origin has no user, password, path, query or fragment")]
    NotAnOrigin,
    #[error("no host")]
    NoHost,
}

impl Origin {
    /// Parses an `Origin` header value (or an allowlist entry) strictly: a
    /// bare `scheme://host[:port]`, optionally with one trailing `/` in
    /// configuration. `null` is not an origin here; callers treat it as a
    /// real, disallowed value.
    pub fn parse(text: &str) -> Result<Origin, OriginError> {
        if text.is_empty()
            || text.len() > 2048
            || text.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(OriginError::NotAUrl);
        }
        let url = Url::parse(text).map_err(|_| OriginError::NotAUrl)?;
        let scheme = url.scheme();
        if scheme != "http" && scheme != "https" {
            return Err(OriginError::Scheme);
        }
        // Url normalizes an empty path to "/" and accepts `http:host`, so
        // look at the text itself: it must spell `scheme://` in full. `get`
        // rather than slicing: the text may be shorter, or multibyte there.
        let prefix_len = scheme.len() + 3;
        let after_scheme = match (text.get(..prefix_len), text.get(prefix_len..)) {
            (Some(prefix), Some(rest)) if prefix.eq_ignore_ascii_case(&format!("{scheme}://")) => {
                rest
            }
            _ => return Err(OriginError::NotAnOrigin),
        };
        if !url.username().is_empty()
            || url.password().is_some()
            || url.query().is_some()
            || url.fragment().is_some()
            || url.path() != "/"
            || after_scheme.contains(['/', '?', '#', '@', '\\']) && !after_scheme.ends_with('/')
            || after_scheme.matches('/').count() > 1
        {
            return Err(OriginError::NotAnOrigin);
        }
        let host = match url.host() {
            Some(Host::Domain(d)) => d.to_ascii_lowercase(),
            Some(Host::Ipv4(ip)) => ip.to_string(),
            Some(Host::Ipv6(ip)) => format!("[{ip}]"),
            None => return Err(OriginError::NoHost),
        };
        if host.is_empty() {
            return Err(OriginError::NoHost);
        }
        let port = url.port_or_known_default().ok_or(OriginError::Scheme)?;
        Ok(Origin {
            scheme: scheme.to_owned(),
            host,
            port,
        })
    }
}

/// One allowlist entry: an exact origin, or `scheme://*.domain[:port]`,
/// which matches any subdomain of `domain` (one label or more) but never
/// `domain` itself and never a host that merely ends with the same text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Exact(Origin),
    Subdomains {
        scheme: String,
        suffix: String,
        port: u16,
    },
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Entry::Exact(o) => o.fmt(f),
            Entry::Subdomains {
                scheme,
                suffix,
                port,
            } => {
                if Some(*port) == default_port(scheme) {
                    write!(f, "{scheme}://*{suffix}")
                } else {
                    write!(f, "{scheme}://*{suffix}:{port}")
                }
            }
        }
    }
}

impl Entry {
    pub fn parse(text: &str) -> Result<Entry, OriginError> {
        let text = text.trim();
        if let Some((scheme, rest)) = text.split_once("://*.") {
            // Parse the pattern's domain as an origin to normalize it.
            let base = Origin::parse(&format!("{scheme}://{rest}"))?;
            if base.host.starts_with('[') || base.host.parse::<std::net::Ipv4Addr>().is_ok() {
                return Err(OriginError::NotAnOrigin);
            }
            return Ok(Entry::Subdomains {
                scheme: base.scheme,
                suffix: format!(".{}", base.host),
                port: base.port,
            });
        }
        Origin::parse(text).map(Entry::Exact)
    }

    pub fn matches(&self, origin: &Origin) -> bool {
        match self {
            Entry::Exact(o) => o == origin,
            Entry::Subdomains {
                scheme,
                suffix,
                port,
            } => {
                *scheme == origin.scheme
                    && *port == origin.port
                    && origin.host.len() > suffix.len()
                    && origin.host.ends_with(suffix.as_str())
                    // The label before the suffix must be a real one.
                    && !origin.host[..origin.host.len() - suffix.len()].ends_with('.')
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// No Origin header (a non-browser client) and that is allowed.
    NoOrigin,
    Rejected(Rejection),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// No Origin header and the allowlist requires one.
    Missing,
    /// `Origin: null` (sandboxed frames, file://, some redirects).
    Null,
    /// Not a parseable origin; the raw text is kept for the log.
    Malformed(String),
    NotAllowed(Origin),
    /// More than one `Origin` header: Node joins repeated headers into one
    /// value that is no origin, so the Node stack refuses it; so does this.
    Ambiguous,
}

impl Rejection {
    /// The origin as it should be logged: bounded, printable.
    pub fn shown(&self) -> String {
        match self {
            Rejection::Missing => "<none>".into(),
            Rejection::Null => "null".into(),
            Rejection::Malformed(raw) => raw.chars().take(200).collect(),
            Rejection::NotAllowed(o) => o.to_string(),
            Rejection::Ambiguous => "<several>".into(),
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Missing => "missing origin",
            Rejection::Null => "null origin",
            Rejection::Malformed(_) => "malformed origin",
            Rejection::NotAllowed(_) => "origin not allowed",
            Rejection::Ambiguous => "several origin headers",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Allowlist {
    entries: Vec<Entry>,
    allow_missing: bool,
}

impl Allowlist {
    pub fn new(entries: Vec<Entry>, allow_missing: bool) -> Self {
        Self {
            entries,
            allow_missing,
        }
    }

    /// Parses a comma-separated list; every entry must parse.
    pub fn parse(list: &str, allow_missing: bool) -> Result<Self, (String, OriginError)> {
        let entries = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| Entry::parse(s).map_err(|e| (s.to_owned(), e)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::new(entries, allow_missing))
    }

    pub fn describe(&self) -> String {
        self.entries
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Judges an `Origin` header (raw bytes, as received).
    pub fn check(&self, header: Option<&[u8]>) -> Verdict {
        let Some(raw) = header else {
            return if self.allow_missing {
                Verdict::NoOrigin
            } else {
                Verdict::Rejected(Rejection::Missing)
            };
        };
        let Ok(text) = std::str::from_utf8(raw) else {
            return Verdict::Rejected(Rejection::Malformed(
                String::from_utf8_lossy(raw).into_owned(),
            ));
        };
        if text.trim().eq_ignore_ascii_case("null") {
            return Verdict::Rejected(Rejection::Null);
        }
        match Origin::parse(text) {
            Err(_) => Verdict::Rejected(Rejection::Malformed(text.to_owned())),
            Ok(origin) if self.entries.iter().any(|e| e.matches(&origin)) => Verdict::Allowed,
            Ok(origin) => Verdict::Rejected(Rejection::NotAllowed(origin)),
        }
    }

    /// Judges a request's `Origin` headers: none, exactly one, or (refused)
    /// several, whatever their values.
    pub fn check_headers(&self, headers: &http::HeaderMap) -> Verdict {
        let mut origins = headers.get_all(http::header::ORIGIN).iter();
        match (origins.next(), origins.next()) {
            (first, None) => self.check(first.map(http::HeaderValue::as_bytes)),
            (Some(_), Some(_)) => Verdict::Rejected(Rejection::Ambiguous),
            (None, Some(_)) => unreachable!("an iterator yields nothing after its end"),
        }
    }

    pub fn allows(&self, header: &[u8]) -> bool {
        self.check(Some(header)) == Verdict::Allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn list() -> Allowlist {
        Allowlist::parse(
            "https://app.example.com, http://localhost:3000, https://*.tenant.io",
            true,
        )
        .unwrap()
    }

    #[test]
    fn exact_matches_are_normalized() {
        let l = list();
        for ok in [
            "https://app.example.com",
            "https://APP.Example.COM",
            "HTTPS://app.example.com",
            "https://app.example.com:443",
            "http://localhost:3000",
            "https://a.tenant.io",
            "https://a.b.tenant.io",
        ] {
            assert_eq!(l.check(Some(ok.as_bytes())), Verdict::Allowed, "{ok}");
        }
    }

    #[test]
    fn look_alikes_are_refused() {
        let l = list();
        for bad in [
            "http://app.example.com",
            "https://app.example.com:8443",
            "https://app.example.com.evil.com",
            "https://evilapp.example.com",
            "https://app.example.co",
            "https://app.example.com.",
            "https://user@app.example.com",
            "https://app.example.com/path",
            "https://app.example.com?x",
            "http://localhost:30000",
            "http://localhost",
            "https://tenant.io",
            "https://eviltenant.io",
            "https://tenant.io.evil.com",
            "https://x.tenant.io.evil.com",
            "https://.tenant.io",
            "ws://app.example.com",
            "file://app.example.com",
            "app.example.com",
            "",
            " https://app.example.com",
        ] {
            assert!(
                matches!(l.check(Some(bad.as_bytes())), Verdict::Rejected(_)),
                "{bad:?} must be refused"
            );
        }
        assert_eq!(l.check(Some(b"null")), Verdict::Rejected(Rejection::Null));
        assert_eq!(l.check(None), Verdict::NoOrigin);
        assert_eq!(
            Allowlist::parse("https://a.com", false)
                .unwrap()
                .check(None),
            Verdict::Rejected(Rejection::Missing)
        );
    }

    #[test]
    fn short_or_multibyte_scheme_tails_are_refused_not_panics() {
        let l = list();
        for bad in [
            "http:a",
            "https:/é.com",
            "http:",
            "https:",
            "http:/",
            "https:/a",
            "http:é",
            "https:éé",
            "http:/\u{10FFFF}",
            "HTTP:x",
            "http:\\a",
            "https:a.tenant.io",
        ] {
            assert!(
                matches!(l.check(Some(bad.as_bytes())), Verdict::Rejected(_)),
                "{bad:?} must be refused"
            );
        }
    }

    #[test]
    fn several_origin_headers_are_refused() {
        let l = list();
        let mut h = http::HeaderMap::new();
        h.append(
            http::header::ORIGIN,
            "https://app.example.com".parse().unwrap(),
        );
        assert_eq!(l.check_headers(&h), Verdict::Allowed);
        h.append(
            http::header::ORIGIN,
            "https://app.example.com".parse().unwrap(),
        );
        assert_eq!(l.check_headers(&h), Verdict::Rejected(Rejection::Ambiguous));
        let mut h = http::HeaderMap::new();
        h.append(
            http::header::ORIGIN,
            "https://app.example.com".parse().unwrap(),
        );
        h.append(
            http::header::ORIGIN,
            "https://evil.example".parse().unwrap(),
        );
        assert_eq!(l.check_headers(&h), Verdict::Rejected(Rejection::Ambiguous));
        assert_eq!(l.check_headers(&http::HeaderMap::new()), Verdict::NoOrigin);
    }

    #[test]
    fn bad_configuration_is_an_error() {
        assert!(Allowlist::parse("https://ok.com, not a url", true).is_err());
        assert!(Allowlist::parse("https://ok.com/path", true).is_err());
        assert!(Allowlist::parse("ftp://ok.com", true).is_err());
        assert!(
            Allowlist::parse("https://ok.com/", true).is_ok(),
            "one trailing slash in configuration is fine"
        );
    }

    fn label() -> impl Strategy<Value = String> {
        "[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?"
    }

    proptest! {
        /// Whatever an attacker sends, it is admitted only if it is, after
        /// normalization, exactly a listed origin or a real subdomain of a
        /// listed pattern.
        #[test]
        fn never_admits_what_is_not_listed(
            prefix in label(), suffix in label(), port in prop::option::of(1u16..65535),
            scheme in prop::sample::select(vec!["http", "https", "HTTPS", "ws", "javascript", "file"]),
            sep in prop::sample::select(vec![".", "", "-", "..", "@", "/", "%2e", ".evil."]),
            host in prop::sample::select(vec!["app.example.com", "APP.EXAMPLE.COM", "tenant.io", "localhost", "example.com"]),
            trailing in prop::sample::select(vec!["", ".", "/", "/x", "#", "?", ":"]),
        ) {
            let l = list();
            for candidate in [
                format!("{scheme}://{prefix}{sep}{host}{}{trailing}", port.map(|p| format!(":{p}")).unwrap_or_default()),
                format!("{scheme}://{host}{sep}{suffix}{}{trailing}", port.map(|p| format!(":{p}")).unwrap_or_default()),
            ] {
                if l.check(Some(candidate.as_bytes())) == Verdict::Allowed {
                    let o = Origin::parse(&candidate).unwrap();
                    let s = o.to_string();
                    let listed = s == "https://app.example.com" || s == "http://localhost:3000"
                        || (o.scheme == "https" && o.port == 443 && o.host.ends_with(".tenant.io") && o.host.len() > ".tenant.io".len() && !o.host.ends_with("..tenant.io"));
                    prop_assert!(listed, "{candidate:?} was admitted as {s}");
                }
            }
        }

        #[test]
        fn garbage_never_panics_and_is_never_admitted(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let l = list();
            let v = l.check(Some(&bytes));
            if v == Verdict::Allowed {
                let text = std::str::from_utf8(&bytes).unwrap();
                let s = Origin::parse(text).unwrap().to_string();
                prop_assert!(s == "https://app.example.com" || s == "http://localhost:3000" || s.ends_with(".tenant.io"));
            }
        }

        /// `scheme:` followed by anything short, multibyte or odd: parsing
        /// never panics, and nothing unlisted is admitted.
        #[test]
        fn scheme_with_any_tail_never_panics(
            scheme in prop::sample::select(vec!["http", "https", "HTTP", "Https", "ws", "x"]),
            colon in prop::sample::select(vec![":", ":/", "://", ":\\", ":///"]),
            tail in "\\PC{0,6}",
        ) {
            let candidate = format!("{scheme}{colon}{tail}");
            let v = list().check(Some(candidate.as_bytes()));
            if v == Verdict::Allowed {
                let s = Origin::parse(&candidate).unwrap().to_string();
                prop_assert!(s == "https://app.example.com" || s == "http://localhost:3000" || s.ends_with(".tenant.io"));
                let prefix = format!("{}://", scheme.to_ascii_lowercase());
                prop_assert!(candidate.to_ascii_lowercase().starts_with(&prefix));
            }
        }

        #[test]
        fn case_and_default_port_do_not_matter(upper in any::<bool>(), explicit in any::<bool>()) {
            let mut o = String::from("https://app.example.com");
            if upper { o = o.to_uppercase(); }
            if explicit { o.push_str(":443"); }
            prop_assert_eq!(list().check(Some(o.as_bytes())), Verdict::Allowed);
        }
    }
}
