//! Validation of FHIR R4 payloads, pure and synchronous: every write to the trial store and
//! every HL7 v2 message the site gateway maps goes through [`Validator`].
//!
//! Layers, each reporting every issue it finds with a FHIRPath `expression`:
//! 1. [`json_text`]: the body as text (size, depth, string length, duplicate keys, JSON syntax);
//! 2. the R4 structure, generated from the official StructureDefinitions (`walk`);
//! 3. required and extensible bindings against the core value sets (`walk`);
//! 4. core invariants and Bundle rules ([`invariants`]): the common ones written out, every
//!    other one evaluated from its FHIRPath expression by `trialbridge-fhirpath`;
//! 5. profiles: the core vital-signs profiles (`profiles`) and the trial profiles, JSON
//!    Schemas in `openapi/schemas/` ([`trial`]).
//!
//! Protocol rules that need stored data (eligibility, status transitions, visit windows) are
//! in [`protocol`], as functions of the facts the caller looked up.

pub mod invariants;
pub mod json_text;
mod narrative;
pub mod primitive;
mod profiles;
pub mod protocol;
pub mod trial;
mod walk;

pub use json_text::Limits;

use serde_json::Value;
use trialbridge_fhir::{IssueSeverity, OperationOutcome, OutcomeIssue};

/// The result of validating one payload.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Every issue, errors and warnings, in document order (the first thousand).
    pub issues: Vec<OutcomeIssue>,
    /// How many more issues were found and not kept.
    pub omitted: usize,
    /// Whether one of those was an error.
    pub omitted_error: bool,
}

impl Report {
    /// Whether any issue is an error (or fatal).
    pub fn has_errors(&self) -> bool {
        self.omitted_error
            || self
                .issues
                .iter()
                .any(|i| matches!(i.severity, IssueSeverity::Error | IssueSeverity::Fatal))
    }

    /// The errors only.
    pub fn errors(&self) -> impl Iterator<Item = &OutcomeIssue> {
        self.issues
            .iter()
            .filter(|i| matches!(i.severity, IssueSeverity::Error | IssueSeverity::Fatal))
    }

    /// The report as an OperationOutcome (an `information` issue when there is nothing to say,
    /// as `$validate` must return at least one issue).
    pub fn to_outcome(&self) -> OperationOutcome {
        let mut issues = self.issues.clone();
        if self.omitted > 0 {
            issues.push(OutcomeIssue::information(
                trialbridge_fhir::IssueType::TooCostly,
                format!(
                    "{} more issues were found and not kept{}",
                    self.omitted,
                    if self.omitted_error {
                        " (errors among them)"
                    } else {
                        ""
                    }
                ),
            ));
        }
        if issues.is_empty() {
            issues.push(OutcomeIssue::information(
                trialbridge_fhir::IssueType::Informational,
                "no issues found",
            ));
        }
        OperationOutcome { issues }
    }
}

/// What a deployment decides about validation.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Bounds on bodies (layer 1).
    pub limits: Limits,
    /// URL prefixes of extensions accepted without a definition here (the study's canonical
    /// base, national base profiles).
    pub extension_domains: Vec<String>,
    /// What an extension of no accepted domain is.
    pub extensions: ExtensionPolicy,
    /// Treat HTML tags inside markdown as errors (else warnings).
    pub no_html_in_markdown: bool,
}

/// What an extension is when neither R4 nor an accepted domain defines it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ExtensionPolicy {
    /// As R4 says ("applications should not reject resources merely because they contain
    /// extensions"): a warning that names it, the resource kept as sent; an unknown
    /// modifierExtension is an error (it changes the meaning of what holds it). Example URLs
    /// are a warning.
    #[default]
    Lenient,
    /// Every unknown extension and every example URL is an error (the HL7 Java validator's
    /// default; for sponsors who want only what they defined).
    Strict,
}

/// Validates a resource that is already parsed: layers 2-4 (structure, bindings, invariants).
pub fn validate_resource(resource: &Value, options: &Options) -> Report {
    let mut walk = walk::Walk::new(options);
    match resource {
        Value::Object(m) => {
            walk.path = m
                .get("resourceType")
                .and_then(Value::as_str)
                .unwrap_or("Resource")
                .to_string();
            walk.resource(m, false);
            invariants::from_definitions(&mut walk, resource);
            trial::check(resource, &mut walk.issues);
        }
        _ => walk.error(
            trialbridge_fhir::IssueType::Structure,
            "a resource must be a JSON object",
        ),
    }
    Report {
        issues: walk.issues,
        omitted: walk.omitted,
        omitted_error: walk.omitted_error,
    }
}

/// Validates a body as received: layer 1, then the resource.
pub fn validate_bytes(body: &[u8], options: &Options) -> Report {
    match json_text::parse(body, &options.limits) {
        Ok(v) => validate_resource(&v, options),
        Err(issue) => Report {
            issues: vec![issue],
            ..Report::default()
        },
    }
}
