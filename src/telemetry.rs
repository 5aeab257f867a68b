//! Logging, and trace export with OpenTelemetry: log lines go to stderr (text or JSON); with
//! an OTLP endpoint (`--otlp-endpoint`, or OpenTelemetry's own `OTEL_EXPORTER_OTLP_ENDPOINT`)
//! the same spans (`job`, `stage`, `task`) are exported over OTLP/gRPC, batched
//! (`OTEL_BSP_*` variables tune the batches). Off without an endpoint.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::cli::LogFormat;

/// What was set up; its exporter is flushed by [`Telemetry::shutdown`].
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still buffered (call inside the runtime, before it stops).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            eprintln!("warning: exporting the last traces failed: {e}");
        }
    }
}

/// The endpoint to export to: the flag's, else OpenTelemetry's standard variable.
pub fn endpoint(flag: Option<&str>) -> Option<String> {
    flag.map(str::to_string)
        .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
        .filter(|e| !e.trim().is_empty())
}

/// Installs logging (and, with an endpoint, trace export as `service`). Must run inside the
/// Tokio runtime the exporter's connection lives on.
pub fn init(filter: &str, format: LogFormat, otlp: Option<String>, service: &str) -> Telemetry {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    let provider = otlp.and_then(|endpoint| match exporter(&endpoint, service) {
        Ok(provider) => Some(provider),
        Err(e) => {
            eprintln!("warning: traces are not exported to {endpoint}: {e}");
            None
        }
    });
    // Spans are exported whatever the log filter says; the filter governs log lines only.
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("ember"))
            .with_filter(tracing_subscriber::EnvFilter::new("info"))
    });
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init();
    Telemetry { provider }
}

fn exporter(endpoint: &str, service: &str) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| e.to_string())?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_string())
                .build(),
        )
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    Ok(provider)
}

use tracing_subscriber::Layer as _;
