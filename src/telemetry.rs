//! Structured logs through tracing; JSON on request (`LOG_FORMAT=json`).

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub fn init(format: LogFormat) {
    init_to(format, false)
}

/// Logs to stderr instead of stdout (for commands whose stdout is a report).
pub fn init_to_stderr(format: LogFormat) {
    init_to(format, true)
}

fn init_to(format: LogFormat, stderr: bool) {
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
