//! Logs and traces of every trialbridge service, configured by the standard variables:
//!
//! - `TRIALBRIDGE_LOG` (an `EnvFilter`, e.g. `info` or `warn,trial_store=debug`) and
//!   `TRIALBRIDGE_LOG_FORMAT` (`text`, or `json`: one object a line with the trace and span ids
//!   of the event's span) for logs on stderr;
//! - `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` turn trace export on
//!   (OTLP over HTTP; `OTEL_EXPORTER_OTLP_PROTOCOL` `http/protobuf`, the default, or
//!   `http/json`), with `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER[_ARG]`,
//!   `OTEL_BSP_*` and `OTEL_SDK_DISABLED` as the OpenTelemetry specification defines them.
//!
//! With no endpoint no trace layer is installed: spans are then only as costly as the log
//! filter makes them (disabled below its level). W3C trace context (`traceparent`) is carried
//! across services by [`inject`] / [`set_parent_from_headers`] and stored with queued work as
//! text ([`traceparent`], [`set_parent`]).

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

mod json_log;

/// Keeps trace export alive; dropping it flushes the spans not yet sent.
#[must_use = "dropping it stops trace export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            if let Err(e) = p.shutdown() {
                eprintln!("trialbridge: flushing traces: {e}");
            }
        }
    }
}

/// Whether the `OTEL_*` variables ask for trace export.
fn otlp_configured() -> bool {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.eq_ignore_ascii_case("none"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// The OTLP/HTTP span exporter as the variables describe it.
fn exporter() -> Result<opentelemetry_otlp::SpanExporter, String> {
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    let protocol = match std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .as_deref()
    {
        Ok("http/json") => Protocol::HttpJson,
        Ok("http/protobuf") | Err(_) => Protocol::HttpBinary,
        Ok(other) => {
            return Err(format!(
            "OTEL_EXPORTER_OTLP_PROTOCOL '{other}' is not supported (http/protobuf or http/json)"
        ))
        }
    };
    opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .build()
        .map_err(|e| e.to_string())
}

/// Sets up logging and, when configured, trace export for the component `service` (the
/// default of `OTEL_SERVICE_NAME`). `default_log` is the log filter when `TRIALBRIDGE_LOG` is
/// not set. Call once, early in `main`; keep the returned value until the process ends.
pub fn init(service: &str, default_log: &str) -> Telemetry {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let log_filter =
        EnvFilter::try_from_env("TRIALBRIDGE_LOG").unwrap_or_else(|_| EnvFilter::new(default_log));
    let json = std::env::var("TRIALBRIDGE_LOG_FORMAT").is_ok_and(|f| f == "json");
    let log_layer = if json {
        tracing_subscriber::fmt::layer()
            .event_format(json_log::JsonWithTrace)
            .with_writer(std::io::stderr)
            .with_filter(log_filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(log_filter)
            .boxed()
    };
    let mut provider = None;
    let mut problem = None;
    let trace_layer = if otlp_configured() {
        match exporter() {
            Ok(exporter) => {
                let mut resource = opentelemetry_sdk::Resource::builder();
                if std::env::var("OTEL_SERVICE_NAME").is_err() {
                    resource = resource.with_service_name(service.to_string());
                }
                let p = SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource.build())
                    .build();
                let tracer = p.tracer("trialbridge");
                provider = Some(p);
                // trialbridge's own spans; the libraries' below info stay out of the traces.
                let filter = EnvFilter::new(
                    "info,h2=warn,hyper=warn,hyper_util=warn,tower=warn,tonic=warn,reqwest=warn,sqlx=warn,opentelemetry=warn",
                );
                Some(
                    tracing_opentelemetry::layer()
                        .with_tracer(tracer)
                        .with_filter(filter),
                )
            }
            Err(e) => {
                problem = Some(e);
                None
            }
        }
    } else {
        None
    };
    let _ = tracing_subscriber::registry()
        .with(log_layer)
        .with(trace_layer)
        .try_init();
    if let Some(e) = problem {
        tracing::error!("traces are not exported: {e}");
    }
    Telemetry { provider }
}

/// The W3C `traceparent` of the current span, if it belongs to a trace (export on).
pub fn traceparent() -> Option<String> {
    traceparent_of(&tracing::Span::current())
}

/// The W3C `traceparent` of `span`, if it belongs to a trace.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// Makes the trace of `traceparent` the parent of `span` (work resumed from a queue).
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    let mut carrier = std::collections::HashMap::new();
    carrier.insert("traceparent".to_string(), traceparent.to_string());
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        span.set_parent(cx);
    }
}

/// Links `span` to the trace of `traceparent` (one span serving several traces, such as a
/// forwarded batch of messages).
pub fn add_link(span: &tracing::Span, traceparent: &str) {
    let mut carrier = std::collections::HashMap::new();
    carrier.insert("traceparent".to_string(), traceparent.to_string());
    let cx = TraceContextPropagator::new().extract(&carrier);
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        span.add_link(sc);
    }
}

/// Makes the trace in a request's `traceparent` header the parent of `span`.
pub fn set_parent_from_headers(span: &tracing::Span, headers: &http::HeaderMap) {
    let cx = TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers));
    if cx.span().span_context().is_valid() {
        span.set_parent(cx);
    }
}

/// Writes the current span's trace context into outgoing request headers.
pub fn inject(headers: &mut http::HeaderMap) {
    let cx = tracing::Span::current().context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new()
            .inject_context(&cx, &mut opentelemetry_http::HeaderInjector(headers));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_trace_there_is_no_traceparent_and_nothing_is_injected() {
        let span = tracing::info_span!("x");
        let _g = span.enter();
        assert_eq!(traceparent(), None);
        let mut h = http::HeaderMap::new();
        inject(&mut h);
        assert!(h.is_empty());
    }
}
