//! `$validate` handlers (`fhir::validate` makes the report): 200 with the OperationOutcome
//! whether or not the resource is valid.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use crate::error::StoreError;
use crate::fhir::{validate, StoreState};
use crate::rest::extract::{Instance, TypeName};
use crate::rest::negotiate::{read_body, Asked};
use crate::rest::respond::json_response;
use crate::security::Caller;

/// `POST [type]/$validate`.
pub async fn type_level(
    State(s): State<StoreState>,
    caller: Caller,
    TypeName(rt): TypeName,
    a: Asked,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, StoreError> {
    let bytes = read_body(&headers, body, s.config.max_body_bytes).await?;
    let outcome = validate::type_level(&s, &caller, rt, &a.pairs, &bytes).await?;
    Ok(json_response(
        StatusCode::OK,
        outcome.to_json().to_string(),
        a.fmt,
    ))
}

/// `POST [type]/{id}/$validate` and `GET [type]/{id}/$validate`.
pub async fn instance_level(
    State(s): State<StoreState>,
    caller: Caller,
    Instance { rt, id }: Instance,
    a: Asked,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, StoreError> {
    let bytes = read_body(&headers, body, s.config.max_body_bytes).await?;
    let outcome = validate::instance_level(&s, &caller, (rt, &id), &a.pairs, &bytes).await?;
    Ok(json_response(
        StatusCode::OK,
        outcome.to_json().to_string(),
        a.fmt,
    ))
}
