//! `GET /fhir/metadata`: the CapabilityStatement (`fhir::capability` builds it).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;

use crate::error::StoreError;
use crate::fhir::capability::capability_statement;
use crate::fhir::StoreState;
use crate::rest::negotiate::Asked;
use crate::rest::respond::json_response;

pub async fn metadata(State(s): State<StoreState>, a: Asked) -> Result<Response, StoreError> {
    let cs = capability_statement(&s.config.base_url);
    Ok(json_response(StatusCode::OK, cs.to_string(), a.fmt))
}
