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

/// The monitor's and the site's writing operations, one handler (`OP`: which).
pub const VERIFY: u8 = 0;
/// `POST [type]/{id}/$raise-query`.
pub const RAISE_QUERY: u8 = 1;
/// `POST Task/{id}/$answer`.
pub const ANSWER_QUERY: u8 = 2;
/// `POST Task/{id}/$close`.
pub const CLOSE_QUERY: u8 = 3;

/// `POST [type]/{id}/$verify`, `POST [type]/{id}/$raise-query`, `POST Task/{id}/$answer`,
/// `POST Task/{id}/$close`: the version written (or found), audited.
pub async fn write_operation<const OP: u8>(
    State(s): State<StoreState>,
    caller: Caller,
    Instance { rt, id }: Instance,
    a: Asked,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, StoreError> {
    match OP {
        ANSWER_QUERY => only_on_task(rt, "$answer")?,
        CLOSE_QUERY => only_on_task(rt, "$close")?,
        _ => {}
    }
    let bytes = read_body(&headers, body, s.config.max_body_bytes).await?;
    let w = match OP {
        VERIFY => monitor::verify(&s, &caller, (rt, &id), &bytes).await?,
        RAISE_QUERY => queries::raise(&s, &caller, (rt, &id), &bytes).await?,
        ANSWER_QUERY => queries::answer(&s, &caller, &id, &bytes).await?,
        _ => queries::close(&s, &caller, &id, &bytes).await?,
    };
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
