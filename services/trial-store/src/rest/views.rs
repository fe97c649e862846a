//! `$viewdefinition-run` handlers: `POST [base]/$viewdefinition-run` (the R4 form) and
//! `POST ViewDefinition/$viewdefinition-run` with Parameters, and
//! `GET ViewDefinition/{name}/$viewdefinition-run` for the study's views
//! (`fhir::views` runs them). The first page is computed before the answer starts, so a view
//! that fails on it is an OperationOutcome; the rest streams.

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::error::StoreError;
use crate::fhir::views::ViewRun;
use crate::fhir::{query_pairs, StoreState};
use crate::rest::negotiate::read_body;
use crate::security::Caller;

async fn answer(s: StoreState, mut run: ViewRun) -> Result<Response, StoreError> {
    let first = run.next_chunk(&s).await?.unwrap_or_default();
    let content_type = run.format.content_type();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    tokio::spawn(async move {
        if tx.send(Ok(first)).await.is_err() {
            return;
        }
        loop {
            let chunk = match run.next_chunk(&s).await {
                Ok(Some(c)) => Ok(c),
                Ok(None) => break,
                // Past the first page the status line is sent: the stream ends with an error,
                // which the client sees as a broken transfer, never as a short table.
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
            let failed = chunk.is_err();
            if tx.send(chunk).await.is_err() || failed {
                break;
            }
        }
    });
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
        .into_response())
}

/// `POST ViewDefinition/$viewdefinition-run`.
pub async fn run_posted(
    State(s): State<StoreState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, StoreError> {
    let bytes = read_body(&headers, body, s.config.max_body_bytes).await?;
    let params: Value = serde_json::from_slice(&bytes).map_err(|e| {
        StoreError::new(
            crate::error::Status::BadRequest,
            trialbridge_fhir::IssueType::Invalid,
            format!("the body is not JSON: {e}"),
        )
    })?;
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let run = ViewRun::start(&s, &caller, &params, None, accept).await?;
    answer(s, run).await
}

/// `GET ViewDefinition/{name}/$viewdefinition-run[?_format=csv&_limit=..&_since=..&patient=..]`:
/// one of the study's views by name, the operation's parameters from the query.
pub async fn run_named(
    State(s): State<StoreState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, StoreError> {
    let Path(name) = path?;
    let parameter: Vec<Value> = query_pairs(q.as_deref())
        .into_iter()
        .map(|(k, v)| match k.as_str() {
            "_limit" | "_count" => {
                json!({"name": k, "valueInteger": v.parse::<u64>().unwrap_or(0)})
            }
            "header" => json!({"name": k, "valueBoolean": v != "false"}),
            "patient" => json!({"name": k, "valueReference": {"reference": v}}),
            _ => json!({"name": k, "valueString": v}),
        })
        .collect();
    let params = json!({"resourceType": "Parameters", "parameter": parameter});
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let run = ViewRun::start(&s, &caller, &params, Some(&name), accept).await?;
    answer(s, run).await
}
