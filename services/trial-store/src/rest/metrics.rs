//! What the store tells operators about its requests: Prometheus metrics at `/metrics`
//! (requests by interaction, type and status, their latency, validation refusals, the change
//! sequence that the warehouse compares with its cursor for the feed lag), and a trace span per
//! FHIR request that continues the caller's W3C trace context and is recorded with the versions
//! the request writes.

use std::sync::LazyLock;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};
use tracing::Instrument;

use crate::error::{Status, StoreError};
use crate::fhir::StoreState;

/// The store's metrics, one set per process (replicas are told apart by the scrape target).
pub struct StoreMetrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    validation_failures: IntCounterVec,
    change_sequence: IntGauge,
}

/// The process's metrics.
pub static METRICS: LazyLock<StoreMetrics> = LazyLock::new(|| {
    let registry = Registry::new();
    let requests = IntCounterVec::new(
        Opts::new(
            "trialbridge_http_requests_total",
            "FHIR requests by interaction, resource type and status code",
        ),
        &["interaction", "type", "status"],
    )
    .expect("metric");
    let latency = HistogramVec::new(
        HistogramOpts::new(
            "trialbridge_http_request_duration_seconds",
            "Time from the request's arrival to its response, by interaction and type",
        )
        .buckets(vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]),
        &["interaction", "type"],
    )
    .expect("metric");
    let validation_failures = IntCounterVec::new(
        Opts::new(
            "trialbridge_validation_failures_total",
            "Writes refused because the content is invalid (422), by resource type",
        ),
        &["type"],
    )
    .expect("metric");
    let change_sequence = IntGauge::new(
        "trialbridge_change_sequence",
        "The highest committed change sequence number",
    )
    .expect("metric");
    for c in [
        Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(latency.clone()),
        Box::new(validation_failures.clone()),
        Box::new(change_sequence.clone()),
    ] {
        registry.register(c).expect("register metric");
    }
    StoreMetrics {
        registry,
        requests,
        latency,
        validation_failures,
        change_sequence,
    }
});

/// The interaction and resource type of a request path (types outside R4 count as `other`,
/// so that a client cannot grow the label set).
fn labels(method: &str, path: &str) -> (&'static str, &'static str) {
    let Some(rest) = path.strip_prefix("/fhir") else {
        return ("other", "");
    };
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    if segments.first() == Some(&"metadata") {
        return ("capabilities", "");
    }
    let interaction = crate::security::audit::interaction_of(method, &segments);
    let rtype = segments
        .first()
        .filter(|s| !s.starts_with('$') && !s.starts_with('_'))
        .map_or("", |t| {
            trialbridge_fhir::resource_type::canonical(t).unwrap_or("other")
        });
    (interaction, rtype)
}

/// Counts, times and traces every FHIR request (a layer around the whole router).
pub async fn record(req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if !path.starts_with("/fhir") {
        return next.run(req).await;
    }
    let (interaction, rtype) = labels(req.method().as_str(), path);
    let start = Instant::now();
    let span = tracing::info_span!(
        "fhir.request",
        otel.kind = "server",
        fhir.interaction = interaction,
        fhir.resource_type = rtype,
        http.request.method = %req.method(),
        url.path = path,
        http.response.status_code = tracing::field::Empty,
    );
    // With trace export off the span is disabled: no header parsing on the hot path.
    let trace = if span.is_disabled() {
        None
    } else {
        trialbridge_telemetry::set_parent_from_headers(&span, req.headers());
        trialbridge_telemetry::traceparent_of(&span)
    };
    let response = trialbridge_storage::TRACE_CONTEXT
        .scope(trace, next.run(req).instrument(span.clone()))
        .await;
    span.record("http.response.status_code", response.status().as_u16());
    let m = &*METRICS;
    let status = response.status();
    m.requests
        .with_label_values(&[interaction, rtype, status.as_str()])
        .inc();
    m.latency
        .with_label_values(&[interaction, rtype])
        .observe(start.elapsed().as_secs_f64());
    if status == StatusCode::UNPROCESSABLE_ENTITY {
        m.validation_failures.with_label_values(&[rtype]).inc();
    }
    response
}

/// `GET /metrics`, in the Prometheus text format.
pub async fn serve(State(s): State<StoreState>) -> Response {
    let m = &*METRICS;
    let ctx = trialbridge_storage::AccessContext::system("metrics");
    if let Ok(seq) = s.store.last_seq(&ctx).await {
        m.change_sequence.set(seq);
    }
    let mut out = Vec::new();
    if let Err(e) = prometheus::TextEncoder::new().encode(&m.registry.gather(), &mut out) {
        return StoreError::new(
            Status::InternalError,
            trialbridge_fhir::IssueType::Exception,
            format!("the metrics could not be encoded: {e}"),
        )
        .into_response();
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        out,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::labels;

    #[test]
    fn requests_are_labelled_by_interaction_and_type() {
        assert_eq!(
            labels("GET", "/fhir/Observation/1"),
            ("read", "Observation")
        );
        assert_eq!(labels("POST", "/fhir"), ("transaction", ""));
        assert_eq!(
            labels("GET", "/fhir/Observation"),
            ("search-type", "Observation")
        );
        assert_eq!(labels("PUT", "/fhir/Nonsense/1"), ("update", "other"));
        assert_eq!(labels("GET", "/fhir/metadata"), ("capabilities", ""));
        assert_eq!(labels("GET", "/fhir/$export"), ("operation", ""));
    }
}
