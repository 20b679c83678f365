//! cookie-signature compatible signing, as express-session uses it. Knows
//! nothing of cookies or sessions: it signs and unsigns strings.
//!
//! `sign(val, secret) = val + "." + base64(HMAC-SHA256(secret, val))` with the
//! trailing `=` removed. Unsigning recomputes the whole signed string and
//! compares it with the input in constant time, exactly as cookie-signature
//! does: a signature that decodes to the same bytes but is spelled differently
//! (padding, URL-safe alphabet, other trailing bits) is refused, just as Node
//! refuses it.

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// The secrets that sign and verify session cookies. The first one signs;
/// every one verifies (rotation). Never empty.
#[derive(Clone)]
pub struct Secrets(Vec<String>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretsError {
    #[error("at least one session secret is required")]
    Empty,
    #[error("session secret #{0} is empty")]
    EmptySecret(usize),
    #[error(
        "session secret #{0} starts or ends with white space (a stray space after a comma in SESSION_SECRET?); remove it"
    )]
    PaddedSecret(usize),
}

/// Below this a secret earns a start-up warning (an HMAC-SHA256 key of
/// fewer bytes than its output is weaker than it need be).
pub const MIN_SECRET_BYTES: usize = 32;

impl Secrets {
    /// The configured secrets, with the public development secret in
    /// development mode (SQLite) only.
    pub fn of(config: &crate::config::Config) -> Result<Self, SecretsError> {
        if config.secrets.is_empty() && config.is_development() {
            return Self::new([crate::config::DEV_SECRET]);
        }
        Self::new(config.secrets.iter().cloned())
    }

    pub fn new<I, S>(secrets: I) -> Result<Self, SecretsError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let secrets: Vec<String> = secrets.into_iter().map(Into::into).collect();
        if secrets.is_empty() {
            return Err(SecretsError::Empty);
        }
        if let Some(i) = secrets.iter().position(|s| s.trim().is_empty()) {
            return Err(SecretsError::EmptySecret(i + 1));
        }
        if let Some(i) = secrets.iter().position(|s| s.trim() != s) {
            return Err(SecretsError::PaddedSecret(i + 1));
        }
        Ok(Self(secrets))
    }

    /// The positions (from 1) of secrets shorter than 32 bytes: guessable
    /// enough to warn about at start.
    pub fn short(&self) -> Vec<usize> {
        (1..=self.0.len())
            .filter(|i| self.0[i - 1].len() < MIN_SECRET_BYTES)
            .collect()
    }

    /// Signs with the first secret, as express-session does for new cookies.
    pub fn sign(&self, value: &str) -> String {
        sign(value, &self.0[0])
    }

    /// Returns the unsigned value if any secret verifies `input`.
    pub fn unsign<'a>(&self, input: &'a str) -> Option<&'a str> {
        self.0.iter().find_map(|secret| unsign(input, secret))
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets(<{} redacted>)", self.0.len())
    }
}

fn mac_base64(value: &str, secret: &str) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(value.as_bytes());
    STANDARD_NO_PAD.encode(mac.finalize().into_bytes())
}

/// cookie-signature's `sign`.
pub fn sign(value: &str, secret: &str) -> String {
    format!("{value}.{}", mac_base64(value, secret))
}

/// cookie-signature's `unsign`: the value before the last `.` if the whole
/// input equals its own re-signing, compared in constant time.
pub fn unsign<'a>(input: &'a str, secret: &str) -> Option<&'a str> {
    let dot = input.rfind('.')?;
    let value = &input[..dot];
    let expected = sign(value, secret);
    // Length is not secret (it is fixed by the algorithm); the bytes are.
    if expected.len() == input.len() && bool::from(expected.as_bytes().ct_eq(input.as_bytes())) {
        Some(value)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_vector() {
        assert_eq!(
            sign("hello", "tobiiscool"),
            "hello.DGDUkGlIkCzPz+C0B064FNgHdEjox7ch8tOBGslZ5QI"
        );
        assert_eq!(
            unsign(
                "hello.DGDUkGlIkCzPz+C0B064FNgHdEjox7ch8tOBGslZ5QI",
                "tobiiscool"
            ),
            Some("hello")
        );
        assert_eq!(
            unsign(
                "hello.DGDUkGlIkCzPz+C0B064FNgHdEjox7ch8tOBGslZ5QI=",
                "tobiiscool"
            ),
            None
        );
        assert_eq!(unsign("hello", "tobiiscool"), None);
    }

    #[test]
    fn empty_secret_list_is_an_error() {
        assert_eq!(
            Secrets::new(Vec::<String>::new()).unwrap_err(),
            SecretsError::Empty
        );
        assert_eq!(
            Secrets::new(["a", ""]).unwrap_err(),
            SecretsError::EmptySecret(2)
        );
        assert_eq!(
            Secrets::new(["a", "   "]).unwrap_err(),
            SecretsError::EmptySecret(2)
        );
        assert_eq!(
            Secrets::new(["a", " b"]).unwrap_err(),
            SecretsError::PaddedSecret(2)
        );
        assert_eq!(
            Secrets::new(["a\t"]).unwrap_err(),
            SecretsError::PaddedSecret(1)
        );
        let s = Secrets::new(["short", &"x".repeat(32), "also short"]).unwrap();
        assert_eq!(s.short(), vec![1, 3]);
    }

    #[test]
    fn debug_never_shows_secrets() {
        let s = Secrets::new(["super-secret-value"]).unwrap();
        assert!(!format!("{s:?}").contains("super-secret"));
    }

    proptest! {
        #[test]
        fn roundtrip_with_rotation(value in ".*", old in "[^\\s]{1,32}", new in "[^\\s]{1,32}", third in "[^\\s]{1,32}") {
            let rotated = Secrets::new([new.clone(), old.clone(), third]).unwrap();
            let signed_by_old = sign(&value, &old);
            prop_assert_eq!(rotated.unsign(&signed_by_old), Some(value.as_str()));
            let signed_by_new = rotated.sign(&value);
            prop_assert_eq!(rotated.unsign(&signed_by_new), Some(value.as_str()));
        }

        #[test]
        fn forged_signatures_are_refused(value in ".*", secret in ".+", other in ".+", sig in "[A-Za-z0-9+/=_-]{0,50}") {
            prop_assume!(secret != other);
            let forged = sign(&value, &other);
            prop_assert_eq!(unsign(&forged, &secret), None);
            let guessed = format!("{value}.{sig}");
            prop_assume!(guessed != sign(&value, &secret));
            prop_assert_eq!(unsign(&guessed, &secret), None);
        }

        #[test]
        fn any_single_byte_change_is_refused(value in "[ -~]{0,40}", secret in ".+", idx in any::<prop::sample::Index>(), byte in 0x20u8..0x7f) {
            let signed = sign(&value, &secret);
            let mut bytes = signed.clone().into_bytes();
            let i = idx.index(bytes.len());
            prop_assume!(bytes[i] != byte);
            bytes[i] = byte;
            let tampered = String::from_utf8(bytes).unwrap();
            prop_assert_eq!(unsign(&tampered, &secret), None);
        }

        #[test]
        fn unsign_never_panics(input in any::<String>(), secret in ".+") {
            let _ = unsign(&input, &secret);
        }
    }
}
