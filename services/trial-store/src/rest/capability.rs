//! `GET /fhir/metadata`: the CapabilityStatement (`fhir::capability` builds it, the trial
//! layer adjusts its types).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::error::StoreError;
use crate::fhir::capability::capability_statement;
use crate::fhir::StoreState;
use crate::rest::negotiate::Asked;
use crate::rest::respond::json_response;

pub async fn metadata(State(s): State<StoreState>, a: Asked) -> Result<Response, StoreError> {
    let cs = capability_statement(
        &s.config.base_url,
        &s.config.smart,
        &crate::trial::adjust_capability,
    );
    Ok(json_response(StatusCode::OK, cs.to_string(), a.fmt))
}

/// `GET /fhir/.well-known/smart-configuration` (and at the root): open, like the
/// CapabilityStatement.
pub async fn smart_configuration(State(s): State<StoreState>) -> Response {
    let body = crate::fhir::capability::smart_configuration(&s.config.smart).to_string();
    (
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}
