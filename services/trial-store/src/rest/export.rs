//! Bulk Data `$export` handlers: kick-off (202 with `Content-Location`), status (202 with
//! `X-Progress`, then the manifest), cancel, and the NDJSON files streamed from disk
//! (`fhir::export` runs the jobs).

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use trialbridge_fhir::IssueType;

use crate::error::{Status, StoreError};
use crate::fhir::export::{self, JobState};
use crate::fhir::StoreState;
use crate::security::Caller;

/// Whether the request asks for an asynchronous answer (`Prefer: respond-async`).
fn respond_async(headers: &HeaderMap) -> bool {
    headers
        .get("prefer")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .split([',', ';'])
        .any(|p| p.trim() == "respond-async")
}

/// Starts a job: 202 with its status URL.
async fn kick_off(
    s: &StoreState,
    caller: &Caller,
    headers: &HeaderMap,
    q: Option<&str>,
    (patient_level, group): (bool, Option<&str>),
) -> Result<Response, StoreError> {
    let url = export::kick_off(s, caller, respond_async(headers), q, patient_level, group).await?;
    let mut r = StatusCode::ACCEPTED.into_response();
    if let Ok(v) = HeaderValue::from_str(&url) {
        r.headers_mut().insert(header::CONTENT_LOCATION, v);
    }
    Ok(r)
}

/// `GET [base]/$export`.
pub async fn system(
    State(s): State<StoreState>,
    caller: Caller,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, StoreError> {
    kick_off(&s, &caller, &headers, q.as_deref(), (false, None)).await
}

/// `GET [base]/Group/{id}/$export`: the compartments of the Group's Patients.
pub async fn group(
    State(s): State<StoreState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, StoreError> {
    let Path(id) = path?;
    kick_off(&s, &caller, &headers, q.as_deref(), (true, Some(&id))).await
}

/// `GET [base]/[type]/$export`: Patient-level export (Group-level has its own route).
pub async fn type_level(
    State(s): State<StoreState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, StoreError> {
    let Path(t) = path?;
    if t != "Patient" {
        return Err(StoreError::new(
            Status::NotFound,
            IssueType::NotSupported,
            format!("$export is served at the system level and for Patient, not for {t}"),
        ));
    }
    kick_off(&s, &caller, &headers, q.as_deref(), (true, None)).await
}

/// `GET [base]/$export-status/{job}`.
pub async fn status(
    State(s): State<StoreState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, StoreError> {
    let Path(id) = path?;
    match export::status(&s, &caller, &id).await? {
        JobState::Running { progress } => {
            let mut r = StatusCode::ACCEPTED.into_response();
            if let Ok(v) = HeaderValue::from_str(&progress) {
                r.headers_mut().insert("x-progress", v);
            }
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            Ok(r)
        }
        JobState::Done(manifest) => Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            manifest.to_string(),
        )
            .into_response()),
    }
}

/// `DELETE [base]/$export-status/{job}`.
pub async fn cancel(
    State(s): State<StoreState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, StoreError> {
    let Path(id) = path?;
    export::cancel(&s, &caller, &id).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

/// `GET [base]/$export-file/{job}/{Type}.ndjson`, streamed from disk.
pub async fn file(
    State(s): State<StoreState>,
    caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, StoreError> {
    let Path((id, name)) = path?;
    let f = export::file(&s, &caller, &id, &name).await?;
    let stream = futures::stream::unfold(f, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 64 * 1024];
        match f.read(&mut buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), f))
            }
        }
    });
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/fhir+ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}
