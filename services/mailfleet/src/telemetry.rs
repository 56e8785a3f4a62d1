//! Logging and trace export.
//!
//! Log events go to stderr, as text or JSON lines (`[log] format`), filtered by `log.level`.
//! When `[tracing] otlp_endpoint` is set, a second layer turns the same `tracing` spans into
//! OpenTelemetry spans and exports them over OTLP/HTTP (protobuf) in batches, from the
//! SDK's own thread, so a slow collector never holds up a session: the batch queue is
//! bounded and drops spans when full. Each layer has its own filter: the log level does
//! not decide which spans are exported (the protocol crates' spans are at `debug`, so a
//! production `info` log stays quiet while traces stay complete).

use anyhow::Context;
use mailfleet_core::config::{LogConfig, LogFormat, TracingConfig};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use std::time::Duration;
use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Flushes and stops the trace exporter when dropped (at the end of `serve`), so the
/// spans of the last seconds before a clean shutdown are not lost.
pub struct Guard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            if let Err(e) = p.shutdown() {
                eprintln!("mailfleet: trace exporter shutdown: {e}");
            }
        }
    }
}

/// What the trace layer sees: the spans of Mailfleet's crates down to `debug`, and events
/// (which become span events) at `info` and above only. Letting `debug` events through
/// made every `tracing::debug!` in a hot path build its arguments for the trace layer:
/// 30% of IMAP FETCH throughput in the first measurement (docs/benchmarks.md).
fn exported(meta: &tracing::Metadata<'_>) -> bool {
    meta.target().starts_with("mailfleet")
        && if meta.is_span() {
            *meta.level() <= tracing::Level::DEBUG
        } else {
            *meta.level() <= tracing::Level::INFO
        }
}

pub fn init(log: &LogConfig, trace: &TracingConfig) -> anyhow::Result<Guard> {
    let filter = EnvFilter::try_new(&log.level)
        .with_context(|| format!("configuration key `log.level`: bad filter '{}'", log.level))?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let fmt = match log.format {
        LogFormat::Json => fmt.json().with_filter(filter).boxed(),
        LogFormat::Text => fmt.with_filter(filter).boxed(),
    };
    let endpoint = trace.otlp_endpoint.trim();
    let (otel, provider) = if endpoint.is_empty() {
        (None, None)
    } else {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(endpoint)
            .with_timeout(Duration::from_secs(trace.export_timeout_secs.max(1)))
            .build()
            .context("tracing: building the OTLP exporter")?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(trace.service_name.clone())
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                mailfleet_telemetry::VERSION,
            ))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                trace.sample_ratio,
            ))))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("mailfleet");
        let layer = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_filter(tracing_subscriber::filter::filter_fn(exported));
        mailfleet_telemetry::trace::set_exporting(true);
        (Some(layer), Some(provider))
    };
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|e| anyhow::anyhow!("logging: {e}"))?;
    Ok(Guard { provider })
}
