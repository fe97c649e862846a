//! The one place where failures become HTTP responses: always an OperationOutcome.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use trialbridge_fhir::{IssueType, OperationOutcome, OutcomeIssue};
use trialbridge_storage::StorageError;

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request cannot be honoured; the outcome says why and where.
    #[error("{status}: {outcome:?}")]
    Rejected {
        /// HTTP status.
        status: StatusCode,
        /// Every issue found.
        outcome: OperationOutcome,
    },
    /// The database failed; not the client's fault.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl ApiError {
    /// A rejection with one issue.
    pub fn new(status: StatusCode, code: IssueType, diagnostics: impl Into<String>) -> Self {
        Self::Rejected {
            status,
            outcome: OperationOutcome::single(OutcomeIssue::error(code, diagnostics)),
        }
    }

    /// Adds the FHIRPath expression of the element concerned to every issue.
    pub fn at(mut self, expression: impl Into<String>) -> Self {
        if let Self::Rejected { outcome, .. } = &mut self {
            let e = expression.into();
            for i in &mut outcome.issues {
                i.expression.push(e.clone());
            }
        }
        self
    }

    /// A rejection from an issue.
    pub fn from_issue(status: StatusCode, issue: OutcomeIssue) -> Self {
        Self::Rejected {
            status,
            outcome: OperationOutcome::single(issue),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Rejected { status, .. } => *status,
            Self::Storage(StorageError::WriterGone) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The OperationOutcome.
    pub fn outcome(&self) -> OperationOutcome {
        match self {
            Self::Rejected { outcome, .. } => outcome.clone(),
            Self::Storage(e) => {
                tracing::error!(error = %e, "storage failure");
                OperationOutcome::single(OutcomeIssue::error(
                    IssueType::Exception,
                    format!("the trial database failed: {e}"),
                ))
            }
        }
    }
}

/// An OperationOutcome response.
pub fn outcome_response(status: StatusCode, outcome: &OperationOutcome) -> Response {
    let mut r = (status, outcome.to_json().to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/fhir+json; charset=utf-8"),
    );
    r
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        outcome_response(self.status(), &self.outcome())
    }
}
