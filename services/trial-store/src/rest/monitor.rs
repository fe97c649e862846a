//! The monitor's handlers: AuditEvents, `$sdv`, `$diff`, `$verify` (`trial::monitor` makes the
//! reports; the reports of `$sdv` and `$diff` are plain JSON, not FHIR resources).

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::error::StoreError;
use crate::fhir::{query_pairs, StoreState};
use crate::rest::access::audited;
use crate::rest::extract::Instance;
use crate::rest::negotiate::{read_body, Asked};
use crate::rest::respond::{json_response, written_response};
use crate::security::Caller;
use crate::trial::{monitor, queries};

/// A report of the monitor operations: plain JSON, not a FHIR resource.
fn json_report(report: &Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        report.to_string(),
    )
        .into_response()
}

/// `GET AuditEvent/{id}`.
pub async fn audit_event(
    s: &StoreState,
    caller: &Caller,
    id: &str,
) -> Result<Response, StoreError> {
    let body = crate::trial::audit_trail::audit_event(s, caller, id).await?;
    Ok(json_response(StatusCode::OK, body, Default::default()))
}

/// `GET AuditEvent?...`.
pub async fn audit_search(
    s: &StoreState,
    caller: &Caller,
    pairs: &[(String, String)],
) -> Result<Response, StoreError> {
    let bundle = crate::trial::audit_trail::audit_search(s, caller, pairs).await?;
    Ok(json_response(StatusCode::OK, bundle, Default::default()))
}

/// `GET ResearchSubject/{id}/$sdv[?unverified=true]`, `GET ResearchStudy/{id}/$sdv`.
pub async fn sdv(
    State(s): State<StoreState>,
    caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(q): RawQuery,
) -> Result<Response, StoreError> {
    let Path((t, id)) = path?;
    let report = monitor::sdv(&s, &caller, (&t, &id), &query_pairs(q.as_deref())).await?;
    Ok(json_report(&report))
}

/// `GET [type]/{id}/$diff?from=N&to=M`.
pub async fn version_diff(
    State(s): State<StoreState>,
    caller: Caller,
    Instance { rt, id }: Instance,
    RawQuery(q): RawQuery,
) -> Result<Response, StoreError> {
    let report = monitor::version_diff(&s, &caller, (rt, &id), &query_pairs(q.as_deref())).await?;
    Ok(json_report(&report))
}

/// `POST [type]/{id}/$verify`.
pub async fn verify(
    State(s): State<StoreState>,
    caller: Caller,
    Instance { rt, id }: Instance,
    a: Asked,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, StoreError> {
    let bytes = read_body(&headers, body, s.config.max_body_bytes).await?;
    let w = monitor::verify(&s, &caller, (rt, &id), &bytes).await?;
    Ok(audited(written_response(&s, w, a.fmt, Default::default())))
}

/// `POST [type]/{id}/$raise-query`.
pub async fn raise_query(
    State(s): State<StoreState>,
    caller: Caller,
    Instance { rt, id }: Instance,
    a: Asked,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, StoreError> {
    let bytes = read_body(&headers, body, s.config.max_body_bytes).await?;
    let w = queries::raise(&s, &caller, (rt, &id), &bytes).await?;
    Ok(audited(written_response(&s, w, a.fmt, Default::default())))
}

/// `POST Task/{id}/$answer`.
pub async fn answer_query(
    State(s): State<StoreState>,
    caller: Caller,
    Instance { rt, id }: Instance,
    a: Asked,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, StoreError> {
    only_on_task(rt, "$answer")?;
    let bytes = read_body(&headers, body, s.config.max_body_bytes).await?;
    let w = queries::answer(&s, &caller, &id, &bytes).await?;
    Ok(audited(written_response(&s, w, a.fmt, Default::default())))
}

/// `POST Task/{id}/$close`.
pub async fn close_query(
    State(s): State<StoreState>,
    caller: Caller,
    Instance { rt, id }: Instance,
    a: Asked,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, StoreError> {
    only_on_task(rt, "$close")?;
    let bytes = read_body(&headers, body, s.config.max_body_bytes).await?;
    let w = queries::close(&s, &caller, &id, &bytes).await?;
    Ok(audited(written_response(&s, w, a.fmt, Default::default())))
}

fn only_on_task(rt: &str, op: &str) -> Result<(), StoreError> {
    if rt == "Task" {
        return Ok(());
    }
    Err(StoreError::new(
        crate::error::Status::NotFound,
        trialbridge_fhir::IssueType::NotSupported,
        format!("{op} is an operation on Task (a data query)"),
    ))
}
