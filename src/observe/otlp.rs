//! Trace export over OTLP/HTTP (feature `otlp`): every request's span and its attempts' child
//! spans, with their OpenTelemetry GenAI attributes, go to the collector named by the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), e.g.
//! `http://localhost:4318` for Jaeger, Tempo or an OpenTelemetry collector, or Langfuse's OTLP
//! endpoint with `OTEL_EXPORTER_OTLP_HEADERS` for its key. Spans are batched and sent from the
//! SDK's own thread: no request waits on the exporter. Only our own spans (target `switchyard`)
//! go out: the actor library's internal spans would arrive as root spans with nothing a collector
//! can use.

use opentelemetry::trace::TracerProvider;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;

/// Flushes the spans still batched when dropped (at exit).
pub struct Guard(SdkTracerProvider);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Err(e) = self.0.shutdown() {
            eprintln!("switchyard: could not flush the last trace spans: {e}");
        }
    }
}

/// The export layer, when an endpoint is configured in the environment.
pub fn layer<S>() -> Result<Option<(impl Layer<S>, Guard)>, String>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let configured = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()));
    if !configured {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .build()
        .map_err(|e| format!("cannot build the OTLP exporter: {e}"))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name("switchyard").build())
        .build();
    let tracer = provider.tracer("switchyard");
    // A filter on this layer alone: the log lines keep whatever RUST_LOG lets through, and the
    // traces get switchyard's spans (and the events in them) at `info` and above, whatever it is.
    let ours = Targets::new().with_target("switchyard", tracing::Level::INFO);
    Ok(Some((
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(ours),
        Guard(provider),
    )))
}
