//! OperationOutcome: the one shape every rejection takes.

use serde_json::{json, Map, Value};

/// `OperationOutcome.issue.severity` (required binding `issue-severity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueSeverity {
    /// The issue caused the action to fail and no further checking could be done.
    Fatal,
    /// The issue is sufficiently important to cause the action to fail.
    Error,
    /// The issue is not important enough to cause the action to fail.
    Warning,
    /// The issue has no relation to the degree of success of the action.
    Information,
}

impl IssueSeverity {
    /// The FHIR code.
    pub fn code(self) -> &'static str {
        match self {
            Self::Fatal => "fatal",
            Self::Error => "error",
            Self::Warning => "warning",
            Self::Information => "information",
        }
    }
}

/// `OperationOutcome.issue.code` (required binding `issue-type`), the codes trialbridge uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueType {
    /// Content invalid against the specification or a profile.
    Invalid,
    /// A structural issue in the content (e.g. malformed JSON).
    Structure,
    /// A required element is missing.
    Required,
    /// An element or header value is invalid.
    Value,
    /// A content validation rule failed.
    Invariant,
    /// The client needs to authenticate.
    Login,
    /// The user does not have the rights to perform this action.
    Forbidden,
    /// Processing issues (e.g. a transaction entry that cannot be processed).
    Processing,
    /// The interaction, operation, resource type or parameter is not supported.
    NotSupported,
    /// An attempt was made to create a duplicate record.
    Duplicate,
    /// Multiple matching records were found where only one was allowed.
    MultipleMatches,
    /// The reference provided was not found.
    NotFound,
    /// The reference pointed to content that has been deleted.
    Deleted,
    /// Provided content is too long (typically, the request body).
    TooLong,
    /// The resource has been changed by someone else (version conflict).
    Conflict,
    /// An unexpected internal error.
    Exception,
    /// The operation completed successfully (informational).
    Informational,
    /// A business rule failed.
    BusinessRule,
    /// A code is not in the value set it must come from.
    CodeInvalid,
    /// A temporary failure: the same request may succeed later.
    Transient,
    /// The request would cost more than the server allows.
    TooCostly,
}

impl IssueType {
    /// The FHIR code.
    pub fn code(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::Structure => "structure",
            Self::Required => "required",
            Self::Value => "value",
            Self::Invariant => "invariant",
            Self::Login => "login",
            Self::Forbidden => "forbidden",
            Self::Processing => "processing",
            Self::NotSupported => "not-supported",
            Self::Duplicate => "duplicate",
            Self::MultipleMatches => "multiple-matches",
            Self::NotFound => "not-found",
            Self::Deleted => "deleted",
            Self::TooLong => "too-long",
            Self::Conflict => "conflict",
            Self::Exception => "exception",
            Self::Informational => "informational",
            Self::BusinessRule => "business-rule",
            Self::CodeInvalid => "code-invalid",
            Self::Transient => "transient",
            Self::TooCostly => "too-costly",
        }
    }
}

/// One `OperationOutcome.issue`.
#[derive(Debug, Clone, PartialEq)]
pub struct OutcomeIssue {
    /// How bad it is.
    pub severity: IssueSeverity,
    /// What kind of issue.
    pub code: IssueType,
    /// A human-readable explanation that an integrator can act on.
    pub diagnostics: String,
    /// FHIRPath expressions of the elements concerned (e.g. `Observation.status`).
    pub expression: Vec<String>,
}

impl OutcomeIssue {
    /// An error issue.
    pub fn error(code: IssueType, diagnostics: impl Into<String>) -> Self {
        Self {
            severity: IssueSeverity::Error,
            code,
            diagnostics: diagnostics.into(),
            expression: Vec::new(),
        }
    }

    /// A warning issue.
    pub fn warning(code: IssueType, diagnostics: impl Into<String>) -> Self {
        Self {
            severity: IssueSeverity::Warning,
            ..Self::error(code, diagnostics)
        }
    }

    /// An information issue.
    pub fn information(code: IssueType, diagnostics: impl Into<String>) -> Self {
        Self {
            severity: IssueSeverity::Information,
            ..Self::error(code, diagnostics)
        }
    }

    /// Names the element the issue is about.
    pub fn at(mut self, expression: impl Into<String>) -> Self {
        self.expression.push(expression.into());
        self
    }

    /// The issue as FHIR JSON.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("severity".into(), json!(self.severity.code()));
        m.insert("code".into(), json!(self.code.code()));
        if !self.diagnostics.is_empty() {
            m.insert("diagnostics".into(), json!(self.diagnostics));
        }
        if !self.expression.is_empty() {
            m.insert("expression".into(), json!(self.expression));
        }
        Value::Object(m)
    }
}

/// How many issues an OperationOutcome lists at most; one more issue says how many were left
/// out.
pub const MAX_LISTED_ISSUES: usize = 100;

/// An OperationOutcome: all issues found, not only the first.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OperationOutcome {
    /// The issues, in the order they were found.
    pub issues: Vec<OutcomeIssue>,
}

impl OperationOutcome {
    /// An outcome with one issue.
    pub fn single(issue: OutcomeIssue) -> Self {
        Self {
            issues: vec![issue],
        }
    }

    /// True when any issue is an error or fatal.
    pub fn has_errors(&self) -> bool {
        self.issues
            .iter()
            .any(|i| matches!(i.severity, IssueSeverity::Error | IssueSeverity::Fatal))
    }

    /// The outcome as a FHIR resource.
    pub fn to_json(&self) -> Value {
        let mut issues: Vec<Value> = if self.issues.is_empty() {
            // issue is 1..*: an empty outcome still says that all went well.
            vec![OutcomeIssue::information(IssueType::Informational, "All OK").to_json()]
        } else {
            self.issues
                .iter()
                .take(MAX_LISTED_ISSUES)
                .map(OutcomeIssue::to_json)
                .collect()
        };
        // A bounded answer whatever the request: the last issue says what was left out.
        if self.issues.len() > MAX_LISTED_ISSUES {
            let more = self.issues.len() - MAX_LISTED_ISSUES;
            let errors = self.issues[MAX_LISTED_ISSUES..]
                .iter()
                .filter(|i| matches!(i.severity, IssueSeverity::Error | IssueSeverity::Fatal))
                .count();
            issues.push(
                OutcomeIssue::information(
                    IssueType::TooCostly,
                    format!("{more} more issues ({errors} of them errors) are not listed: fix these and ask again"),
                )
                .to_json(),
            );
        }
        json!({ "resourceType": "OperationOutcome", "issue": issues })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape() {
        let oo = OperationOutcome::single(
            OutcomeIssue::error(IssueType::Value, "bad id").at("Observation.id"),
        );
        assert!(oo.has_errors());
        let j = oo.to_json();
        assert_eq!(j["resourceType"], "OperationOutcome");
        assert_eq!(j["issue"][0]["severity"], "error");
        assert_eq!(j["issue"][0]["code"], "value");
        assert_eq!(j["issue"][0]["expression"][0], "Observation.id");
        let ok = OperationOutcome::default().to_json();
        assert_eq!(ok["issue"][0]["severity"], "information");
    }

    #[test]
    fn a_long_outcome_is_cut_and_says_so() {
        let oo = OperationOutcome {
            issues: (0..250)
                .map(|i| OutcomeIssue::error(IssueType::Value, format!("issue {i}")))
                .collect(),
        };
        let j = oo.to_json();
        let listed = j["issue"].as_array().unwrap();
        assert_eq!(listed.len(), MAX_LISTED_ISSUES + 1);
        let last = listed.last().unwrap();
        assert_eq!(last["code"], "too-costly");
        assert!(last["diagnostics"]
            .as_str()
            .unwrap()
            .starts_with("150 more issues (150 of them errors)"));
    }
}
