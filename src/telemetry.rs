//! Structured logs through tracing; JSON on request (`LOG_FORMAT=json`). The
//! panic hook is here too: a panic becomes one rate-limited error line, so a
//! client that found a panicking input cannot flood the log. Sets up where
//! logs go, never what they say: each module words its own lines.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub fn init(format: LogFormat) {
    init_to(format, false)
}

/// Logs to stderr instead of stdout (for commands whose stdout is a report).
pub fn init_to_stderr(format: LogFormat) {
    init_to(format, true)
}

/// A panic anywhere (a request handler, a background task) becomes one
/// error line with its location, at most 10 a second after a burst of 20,
/// instead of a message and backtrace on stderr per panic: a client that
/// found a panicking input must not be able to flood the log with it.
pub fn install_panic_hook() {
    use std::num::NonZeroU32;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

    static LIMITER: OnceLock<DefaultDirectRateLimiter> = OnceLock::new();
    static SUPPRESSED: AtomicU64 = AtomicU64::new(0);
    std::panic::set_hook(Box::new(|info| {
        let limiter = LIMITER.get_or_init(|| {
            RateLimiter::direct(
                Quota::per_second(NonZeroU32::new(10).unwrap())
                    .allow_burst(NonZeroU32::new(20).unwrap()),
            )
        });
        if limiter.check().is_err() {
            SUPPRESSED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        // Bounded: a panic message can quote the input that caused it.
        let message: String = payload.chars().take(200).collect();
        tracing::error!(
            location = %info.location().map(ToString::to_string).unwrap_or_default(),
            suppressed_since_last = SUPPRESSED.swap(0, Ordering::Relaxed),
            "panic: {message}"
        );
    }));
}

fn init_to(format: LogFormat, stderr: bool) {
    install_panic_hook();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,sqlx=warn,sea_orm=warn,socketioxide=warn,engineioxide=warn")
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match (format, stderr) {
        (LogFormat::Json, false) => builder.json().try_init(),
        (LogFormat::Text, false) => builder.try_init(),
        (LogFormat::Json, true) => builder.json().with_writer(std::io::stderr).try_init(),
        (LogFormat::Text, true) => builder.with_writer(std::io::stderr).try_init(),
    };
}
