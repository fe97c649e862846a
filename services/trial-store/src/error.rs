//! What a request can come to, in FHIR's words and without HTTP types: the [`Status`] of an
//! interaction (the codes FHIR's RESTful API and `Bundle.entry.response.status` use) and the
//! [`StoreError`] that refuses one with an OperationOutcome. Every room of the store speaks
//! these; `rest::error` is the one place that turns them into HTTP responses.

use trialbridge_fhir::{IssueType, OperationOutcome, OutcomeIssue};
use trialbridge_storage::StorageError;

/// The outcome of an interaction, as FHIR names it by its HTTP status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// 200.
    Ok,
    /// 201: a resource was created.
    Created,
    /// 202: an asynchronous request was accepted.
    Accepted,
    /// 204: done, nothing to show.
    NoContent,
    /// 304: the client's copy is current.
    NotModified,
    /// 400: the request is malformed.
    BadRequest,
    /// 401: no valid token.
    Unauthorized,
    /// 403: the caller may not.
    Forbidden,
    /// 404: not known (or not visible).
    NotFound,
    /// 405: the interaction is not offered there.
    MethodNotAllowed,
    /// 406: the client asks for a format the server cannot write.
    NotAcceptable,
    /// 410: deleted.
    Gone,
    /// 412: a version or conditional precondition failed.
    PreconditionFailed,
    /// 413: the body is too large.
    PayloadTooLarge,
    /// 415: the body's format is not understood.
    UnsupportedMediaType,
    /// 422: the content breaks a rule (validation, profiles, protocol).
    Unprocessable,
    /// 500: the server failed.
    InternalError,
    /// 503: the server cannot answer now.
    Unavailable,
}

impl Status {
    /// The HTTP status code.
    pub fn code(self) -> u16 {
        match self {
            Self::Ok => 200,
            Self::Created => 201,
            Self::Accepted => 202,
            Self::NoContent => 204,
            Self::NotModified => 304,
            Self::BadRequest => 400,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::NotAcceptable => 406,
            Self::Gone => 410,
            Self::PreconditionFailed => 412,
            Self::PayloadTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::Unprocessable => 422,
            Self::InternalError => 500,
            Self::Unavailable => 503,
        }
    }

    /// The status line of a Bundle entry's response (`201 Created`).
    pub fn line(self) -> String {
        let reason = match self {
            Self::Ok => "OK",
            Self::Created => "Created",
            Self::Accepted => "Accepted",
            Self::NoContent => "No Content",
            Self::NotModified => "Not Modified",
            Self::BadRequest => "Bad Request",
            Self::Unauthorized => "Unauthorized",
            Self::Forbidden => "Forbidden",
            Self::NotFound => "Not Found",
            Self::MethodNotAllowed => "Method Not Allowed",
            Self::NotAcceptable => "Not Acceptable",
            Self::Gone => "Gone",
            Self::PreconditionFailed => "Precondition Failed",
            Self::PayloadTooLarge => "Payload Too Large",
            Self::UnsupportedMediaType => "Unsupported Media Type",
            Self::Unprocessable => "Unprocessable Entity",
            Self::InternalError => "Internal Server Error",
            Self::Unavailable => "Service Unavailable",
        };
        format!("{} {reason}", self.code())
    }
}

/// A refused or failed request.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The request cannot be honoured; the outcome says why and where.
    #[error("{status:?}: {outcome:?}")]
    Rejected {
        /// What FHIR calls the refusal.
        status: Status,
        /// Every issue found.
        outcome: OperationOutcome,
    },
    /// The database failed; not the client's fault.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl StoreError {
    /// A rejection with one issue.
    pub fn new(status: Status, code: IssueType, diagnostics: impl Into<String>) -> Self {
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
    pub fn from_issue(status: Status, issue: OutcomeIssue) -> Self {
        Self::Rejected {
            status,
            outcome: OperationOutcome::single(issue),
        }
    }

    /// The status.
    pub fn status(&self) -> Status {
        match self {
            Self::Rejected { status, .. } => *status,
            Self::Storage(StorageError::WriterGone) => Status::Unavailable,
            // The request asked for more than the statement budget allows: the same request
            // would fail again, so a 4xx, not a 5xx a client would retry.
            Self::Storage(e) if e.is_too_costly() => Status::Unprocessable,
            Self::Storage(_) => Status::InternalError,
        }
    }

    /// The OperationOutcome.
    pub fn outcome(&self) -> OperationOutcome {
        match self {
            Self::Rejected { outcome, .. } => outcome.clone(),
            Self::Storage(e) if e.is_too_costly() => OperationOutcome::single(OutcomeIssue::error(
                IssueType::TooCostly,
                "the query ran past the statement timeout (TRIALBRIDGE_STATEMENT_TIMEOUT) and was cancelled: narrow it (more criteria, a smaller _count, no _sort on an unindexed value)",
            )),
            Self::Storage(e) => {
                // The database's own words (SQL, constraint names) stay in the log.
                let reference = uuid::Uuid::now_v7().simple().to_string();
                tracing::error!(error = %e, %reference, "storage failure");
                OperationOutcome::single(OutcomeIssue::error(
                    IssueType::Exception,
                    format!("the trial database failed; the operator finds the cause in the log under {reference}"),
                ))
            }
        }
    }
}

/// A 403.
pub fn forbidden(why: String) -> StoreError {
    StoreError::new(Status::Forbidden, IssueType::Forbidden, why)
}
