//! `POST /fhir` with a transaction or batch Bundle (`fhir::bundle` processes it).

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use crate::error::StoreError;
use crate::fhir::{bundle, StoreState};
use crate::rest::access::audited;
use crate::rest::negotiate::{read_body, Asked};
use crate::rest::respond::json_response;
use crate::security::Caller;

pub async fn process(
    State(s): State<StoreState>,
    caller: Caller,
    a: Asked,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, StoreError> {
    let bytes = read_body(&headers, body, s.config.max_body_bytes).await?;
    let done = bundle::process(&s, &caller, &bytes).await?;
    let r = json_response(StatusCode::OK, done.bundle, a.fmt);
    Ok(if done.audited { audited(r) } else { r })
}
