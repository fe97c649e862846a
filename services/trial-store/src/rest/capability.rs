//! `GET /fhir/metadata`: the CapabilityStatement (`fhir::capability` builds it, the trial
//! layer adjusts its types).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;

use crate::error::StoreError;
use crate::fhir::capability::capability_statement;
use crate::fhir::StoreState;
use crate::rest::negotiate::Asked;
use crate::rest::respond::json_response;

pub async fn metadata(State(s): State<StoreState>, a: Asked) -> Result<Response, StoreError> {
    let cs = capability_statement(&s.config.base_url, &crate::trial::adjust_capability);
    Ok(json_response(StatusCode::OK, cs.to_string(), a.fmt))
}
