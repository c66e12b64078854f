//! Logging: human-readable lines by default, JSON with `--log-format json`.
//! The filter comes from `LIAISON_LOG` (e.g. `debug` or `info,sqlx=debug`). Logs go to
//! standard error, so commands that print results keep standard output clean.
//!
//! Spans (`rpc` with method and request id, `webhook` per delivery, `email` per
//! message) are exported over OTLP/gRPC when `telemetry.otlp_endpoint` is set, by a
//! build with the `otlp` feature (the default); without an endpoint no exporter runs.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, TelemetryConfig};

const DEFAULT_FILTER: &str = "info,sqlx=warn,h2=warn,tower=warn";

/// Installs the global subscriber; does nothing if one is installed already (tests).
pub fn init(format: LogFormat, telemetry: &TelemetryConfig) -> anyhow::Result<()> {
    let filter =
        EnvFilter::try_from_env("LIAISON_LOG").unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    // Colours only for a person at a terminal: a file or a pipe gets plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let text = (format == LogFormat::Text).then(|| {
        tracing_subscriber::fmt::layer()
            .with_ansi(colour)
            .with_writer(std::io::stderr)
    });
    let json = (format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
    });
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json);
    #[cfg(feature = "otlp")]
    let registry = registry.with(otlp::layer(telemetry)?);
    #[cfg(not(feature = "otlp"))]
    let _ = telemetry;
    let _ = registry.try_init();
    Ok(())
}

/// Sends the spans still buffered (with the `otlp` feature); call before exiting.
pub fn shutdown() {
    #[cfg(feature = "otlp")]
    otlp::shutdown();
}

#[cfg(feature = "otlp")]
mod otlp {
    use std::sync::OnceLock;

    use anyhow::Context;
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig;
    use opentelemetry_sdk::trace::SdkTracerProvider;

    use crate::config::TelemetryConfig;

    static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

    /// The export layer, or none when no endpoint is configured.
    pub fn layer<S>(
        telemetry: &TelemetryConfig,
    ) -> anyhow::Result<
        Option<tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>>,
    >
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        if telemetry.otlp_endpoint.is_empty() {
            return Ok(None);
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(telemetry.otlp_endpoint.clone())
            .build()
            .context("telemetry.otlp_endpoint: cannot build the OTLP exporter")?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(telemetry.service_name.clone())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("liaison");
        let _ = PROVIDER.set(provider);
        Ok(Some(tracing_opentelemetry::layer().with_tracer(tracer)))
    }

    pub fn shutdown() {
        if let Some(provider) = PROVIDER.get()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("OTLP export did not finish: {error}");
        }
    }
}
