//! The one place where failures become HTTP responses: always an OperationOutcome.

use axum::extract::rejection::PathRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use trialbridge_fhir::{IssueType, OperationOutcome, OutcomeIssue};

use crate::error::{Status, StoreError};
use crate::rest::respond::http_status;

/// An OperationOutcome response.
pub fn outcome_response(status: StatusCode, outcome: &OperationOutcome) -> Response {
    let mut r = (status, outcome.to_json().to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/fhir+json; charset=utf-8"),
    );
    r
}

impl IntoResponse for StoreError {
    fn into_response(self) -> Response {
        outcome_response(http_status(self.status()), &self.outcome())
    }
}

impl From<PathRejection> for StoreError {
    fn from(e: PathRejection) -> Self {
        StoreError::new(
            Status::BadRequest,
            IssueType::Value,
            format!("the URL path cannot be read: {e}"),
        )
    }
}

/// The answer when a handler panicked: a 500 OperationOutcome, nothing of the panic.
pub fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    outcome_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        &OperationOutcome::single(OutcomeIssue::error(
            IssueType::Exception,
            "internal error while processing the request",
        )),
    )
}
