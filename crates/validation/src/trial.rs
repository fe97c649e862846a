//! Layer 5, trial part: the MesemCart profiles, kept as JSON Schemas in `openapi/schemas/`
//! (the artefact sponsors and integrators read) and checked here with the `jsonschema` crate.
//! A profile applies when the resource claims it in `meta.profile` or is linked to the study
//! (see [`applicable`]).

use std::fmt::Write;
use std::sync::OnceLock;

use serde_json::Value;
use trialbridge_fhir::structure::{self, TypeKind};
use trialbridge_fhir::{IssueType, OutcomeIssue};

/// Canonical base of the MesemCart study definition.
pub const STUDY_BASE: &str = "https://fhir.mesemcart-sponsor.example";
const STUDY_EXT: &str = "http://hl7.org/fhir/StructureDefinition/workflow-researchStudy";
const MEASURES: &str = "https://fhir.mesemcart-sponsor.example/CodeSystem/mesemcart-measures";

/// One trial profile: its canonical URL, resource type and compiled schema.
pub struct TrialProfile {
    /// Canonical URL (the schema's `$id`).
    pub url: String,
    /// Title for messages.
    pub title: String,
    /// The resource type it constrains.
    pub resource_type: &'static str,
    schema: Value,
    validator: jsonschema::Validator,
}

const SCHEMAS: &[(&str, &str)] = &[
    (
        "Observation",
        include_str!("../../../openapi/schemas/mesemcart-observation.schema.json"),
    ),
    (
        "ResearchSubject",
        include_str!("../../../openapi/schemas/mesemcart-research-subject.schema.json"),
    ),
    (
        "Procedure",
        include_str!("../../../openapi/schemas/mesemcart-implantation.schema.json"),
    ),
];

/// The trial profiles, compiled once.
pub fn profiles() -> &'static [TrialProfile] {
    static PROFILES: OnceLock<Vec<TrialProfile>> = OnceLock::new();
    PROFILES.get_or_init(|| {
        SCHEMAS
            .iter()
            .map(|(rt, text)| {
                let schema: Value = serde_json::from_str(text).expect("schema is JSON (tested)");
                let validator =
                    jsonschema::validator_for(&schema).expect("schema compiles (tested)");
                TrialProfile {
                    url: schema["$id"].as_str().unwrap_or_default().to_string(),
                    title: schema["title"].as_str().unwrap_or_default().to_string(),
                    resource_type: rt,
                    schema,
                    validator,
                }
            })
            .collect()
    })
}

fn is_study_reference(r: Option<&Value>) -> bool {
    r.and_then(|r| r.get("reference"))
        .and_then(Value::as_str)
        .is_some_and(|s| {
            s == "ResearchStudy/mesemcart" || s.starts_with("ResearchStudy/mesemcart-site-")
        })
}

fn linked_to_study(resource: &Value) -> bool {
    resource
        .get("extension")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|e| {
            e.get("url").and_then(Value::as_str) == Some(STUDY_EXT)
                && is_study_reference(e.get("valueReference"))
        })
}

/// Whether `resource` is coded as the MesemCart implantation.
pub fn is_implantation(resource: &Value) -> bool {
    resource.get("resourceType").and_then(Value::as_str) == Some("Procedure")
        && resource
            .get("code")
            .and_then(|c| c.get("coding"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|c| {
                c.get("system").and_then(Value::as_str) == Some(MEASURES)
                    && c.get("code").and_then(Value::as_str) == Some("mesemcart-implantation")
            })
}

/// The trial profiles that apply to `resource`: claimed in `meta.profile`, or implied by a
/// link to the study (an Observation's `workflow-researchStudy`, a ResearchSubject's study, the
/// implantation code of a Procedure).
pub fn applicable(resource: &Value) -> Vec<&'static TrialProfile> {
    let Some(rt) = resource.get("resourceType").and_then(Value::as_str) else {
        return Vec::new();
    };
    let claims: Vec<&str> = resource
        .get("meta")
        .and_then(|m| m.get("profile"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|p| p.split('|').next().unwrap_or(p))
        .collect();
    let implied = match rt {
        "Observation" => linked_to_study(resource),
        "ResearchSubject" => is_study_reference(resource.get("study")),
        "Procedure" => is_implantation(resource),
        _ => false,
    };
    profiles()
        .iter()
        .filter(|p| claims.contains(&p.url.as_str()) || (implied && p.resource_type == rt))
        .collect()
}

/// Checks `resource` against the trial profiles that apply to it.
pub(crate) fn check(resource: &Value, issues: &mut Vec<OutcomeIssue>) {
    let rt = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or("Resource");
    for p in applicable(resource) {
        if p.resource_type != rt {
            issues.push(
                OutcomeIssue::error(
                    IssueType::Invalid,
                    format!("{} applies to {} resources only", p.title, p.resource_type),
                )
                .at(format!("{rt}.meta.profile")),
            );
            continue;
        }
        for e in p.validator.iter_errors(resource) {
            let mut expression = fhirpath(rt, e.instance_path().as_str());
            if let jsonschema::error::ValidationErrorKind::Required { property } = e.kind() {
                if let Some(name) = property.as_str() {
                    expression = fhirpath(rt, &format!("{}/{name}", e.instance_path().as_str()));
                }
            }
            let rule = rule_description(&p.schema, e.schema_path().as_str());
            let message = match rule {
                Some(r) => format!("{}: {} ({r})", p.title, e),
                None => format!("{}: {}", p.title, e),
            };
            issues.push(OutcomeIssue::error(IssueType::Invariant, message).at(expression));
        }
    }
}

/// The `description` of the `allOf` rule a schema path runs through, if any.
fn rule_description<'a>(schema: &'a Value, schema_path: &str) -> Option<&'a str> {
    let mut parts = schema_path.trim_start_matches('/').split('/');
    if parts.next()? != "allOf" {
        return None;
    }
    let i: usize = parts.next()?.parse().ok()?;
    schema.get("allOf")?.get(i)?.get("description")?.as_str()
}

/// A JSON pointer into a resource as a FHIRPath in the HL7 validator's style
/// (`/valueQuantity/value` → `Observation.value.ofType(Quantity).value`).
pub(crate) fn fhirpath(resource_type: &str, pointer: &str) -> String {
    let mut out = resource_type.to_string();
    let mut td = structure::type_def(resource_type);
    for seg in pointer.split('/').filter(|s| !s.is_empty()) {
        if seg.bytes().all(|b| b.is_ascii_digit()) {
            let _ = write!(out, "[{seg}]");
            continue;
        }
        let el = td.and_then(|t| t.element(seg));
        match el {
            Some(el) if !el.choice.is_empty() => {
                let _ = write!(out, ".{}.ofType({})", el.choice, el.ty.name);
            }
            _ => {
                let _ = write!(out, ".{seg}");
            }
        }
        td = el.and_then(|el| {
            structure::type_def(structure::model_name(el.ty.name))
                .filter(|t| t.kind != TypeKind::Primitive)
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_compile_and_name_their_profiles() {
        let p = profiles();
        assert_eq!(p.len(), 3);
        assert!(p.iter().all(|p| p.url.starts_with(STUDY_BASE)));
    }

    #[test]
    fn pointers_become_fhirpaths() {
        assert_eq!(
            fhirpath("Observation", "/valueQuantity/value"),
            "Observation.value.ofType(Quantity).value"
        );
        assert_eq!(
            fhirpath("Observation", "/code/coding/0/system"),
            "Observation.code.coding[0].system"
        );
        assert_eq!(fhirpath("Procedure", ""), "Procedure");
    }
}
