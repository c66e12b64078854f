//! Logging: human-readable lines by default, JSON with `--log-format json`.
//! The filter comes from `LIAISON_LOG` (e.g. `debug` or `info,sqlx=debug`). Logs go to
//! standard error, so commands that print results keep standard output clean.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

const DEFAULT_FILTER: &str = "info,sqlx=warn,h2=warn,tower=warn";

/// Installs the global subscriber; does nothing if one is installed already (tests).
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_env("LIAISON_LOG").unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}
