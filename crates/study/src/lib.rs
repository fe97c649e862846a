//! The MesemCart study definition (`studies/mesemcart/`: ResearchStudies, eligibility Group,
//! schedule PlanDefinitions, CodeSystems, ValueSets, ConceptMaps) built into the binary, for
//! every service that needs it: the trial store loads it, the site gateway maps site codes
//! with its ConceptMaps, the protocol rules read their numbers from it.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::Value;

/// Every file of `studies/mesemcart/` (a test checks that none is missing).
pub const FILES: &[(&str, &str)] = &[
    (
        "CodeSystem-mesemcart-grades.json",
        include_str!("../../../studies/mesemcart/CodeSystem-mesemcart-grades.json"),
    ),
    (
        "CodeSystem-mesemcart-measures.json",
        include_str!("../../../studies/mesemcart/CodeSystem-mesemcart-measures.json"),
    ),
    (
        "ConceptMap-mesemcart-site-local-codes.json",
        include_str!("../../../studies/mesemcart/ConceptMap-mesemcart-site-local-codes.json"),
    ),
    (
        "ConceptMap-mesemcart-subject-status-transitions.json",
        include_str!(
            "../../../studies/mesemcart/ConceptMap-mesemcart-subject-status-transitions.json"
        ),
    ),
    (
        "Group-mesemcart-eligibility.json",
        include_str!("../../../studies/mesemcart/Group-mesemcart-eligibility.json"),
    ),
    (
        "OperationDefinition-ResearchStudy-sdv.json",
        include_str!("../../../studies/mesemcart/OperationDefinition-ResearchStudy-sdv.json"),
    ),
    (
        "OperationDefinition-ResearchSubject-sdv.json",
        include_str!("../../../studies/mesemcart/OperationDefinition-ResearchSubject-sdv.json"),
    ),
    (
        "OperationDefinition-Resource-diff.json",
        include_str!("../../../studies/mesemcart/OperationDefinition-Resource-diff.json"),
    ),
    (
        "OperationDefinition-Resource-raise-query.json",
        include_str!("../../../studies/mesemcart/OperationDefinition-Resource-raise-query.json"),
    ),
    (
        "OperationDefinition-Resource-verify.json",
        include_str!("../../../studies/mesemcart/OperationDefinition-Resource-verify.json"),
    ),
    (
        "OperationDefinition-Task-answer.json",
        include_str!("../../../studies/mesemcart/OperationDefinition-Task-answer.json"),
    ),
    (
        "OperationDefinition-Task-close.json",
        include_str!("../../../studies/mesemcart/OperationDefinition-Task-close.json"),
    ),
    (
        "Organization-mesemcart-sponsor.json",
        include_str!("../../../studies/mesemcart/Organization-mesemcart-sponsor.json"),
    ),
    (
        "PlanDefinition-mesemcart-protocol.json",
        include_str!("../../../studies/mesemcart/PlanDefinition-mesemcart-protocol.json"),
    ),
    (
        "PlanDefinition-mesemcart-visit-v0.json",
        include_str!("../../../studies/mesemcart/PlanDefinition-mesemcart-visit-v0.json"),
    ),
    (
        "PlanDefinition-mesemcart-visit-v1.json",
        include_str!("../../../studies/mesemcart/PlanDefinition-mesemcart-visit-v1.json"),
    ),
    (
        "PlanDefinition-mesemcart-visit-v2.json",
        include_str!("../../../studies/mesemcart/PlanDefinition-mesemcart-visit-v2.json"),
    ),
    (
        "PlanDefinition-mesemcart-visit-v3.json",
        include_str!("../../../studies/mesemcart/PlanDefinition-mesemcart-visit-v3.json"),
    ),
    (
        "PlanDefinition-mesemcart-visit-v4.json",
        include_str!("../../../studies/mesemcart/PlanDefinition-mesemcart-visit-v4.json"),
    ),
    (
        "PlanDefinition-mesemcart-visit-v5.json",
        include_str!("../../../studies/mesemcart/PlanDefinition-mesemcart-visit-v5.json"),
    ),
    (
        "PlanDefinition-mesemcart-visit-v6.json",
        include_str!("../../../studies/mesemcart/PlanDefinition-mesemcart-visit-v6.json"),
    ),
    (
        "PlanDefinition-mesemcart-visit-v7.json",
        include_str!("../../../studies/mesemcart/PlanDefinition-mesemcart-visit-v7.json"),
    ),
    (
        "PlanDefinition-mesemcart-visit-v8.json",
        include_str!("../../../studies/mesemcart/PlanDefinition-mesemcart-visit-v8.json"),
    ),
    (
        "PlanDefinition-mesemcart-visit-v9.json",
        include_str!("../../../studies/mesemcart/PlanDefinition-mesemcart-visit-v9.json"),
    ),
    (
        "ResearchStudy-mesemcart-site-01.json",
        include_str!("../../../studies/mesemcart/ResearchStudy-mesemcart-site-01.json"),
    ),
    (
        "ResearchStudy-mesemcart-site-02.json",
        include_str!("../../../studies/mesemcart/ResearchStudy-mesemcart-site-02.json"),
    ),
    (
        "ResearchStudy-mesemcart-site-03.json",
        include_str!("../../../studies/mesemcart/ResearchStudy-mesemcart-site-03.json"),
    ),
    (
        "ResearchStudy-mesemcart.json",
        include_str!("../../../studies/mesemcart/ResearchStudy-mesemcart.json"),
    ),
    (
        "ValueSet-mesemcart-conditions.json",
        include_str!("../../../studies/mesemcart/ValueSet-mesemcart-conditions.json"),
    ),
    (
        "ValueSet-mesemcart-excluded-conditions.json",
        include_str!("../../../studies/mesemcart/ValueSet-mesemcart-excluded-conditions.json"),
    ),
    (
        "ValueSet-mesemcart-observation-codes.json",
        include_str!("../../../studies/mesemcart/ValueSet-mesemcart-observation-codes.json"),
    ),
    (
        "ValueSet-mesemcart-qualifying-defect-grades.json",
        include_str!("../../../studies/mesemcart/ValueSet-mesemcart-qualifying-defect-grades.json"),
    ),
];

/// The warehouse's flat tables as SQL-on-FHIR v2 ViewDefinitions (`studies/mesemcart/views/`):
/// data for warehouse-sync, not resources of the trial store.
pub const VIEWS: &[(&str, &str)] = &[
    (
        "adverse_event.json",
        include_str!("../../../studies/mesemcart/views/adverse_event.json"),
    ),
    (
        "observation.json",
        include_str!("../../../studies/mesemcart/views/observation.json"),
    ),
    (
        "procedure.json",
        include_str!("../../../studies/mesemcart/views/procedure.json"),
    ),
    (
        "subject.json",
        include_str!("../../../studies/mesemcart/views/subject.json"),
    ),
    (
        "visit.json",
        include_str!("../../../studies/mesemcart/views/visit.json"),
    ),
];

/// The study's resources, parsed once.
pub fn resources() -> &'static [Value] {
    static RESOURCES: OnceLock<Vec<Value>> = OnceLock::new();
    RESOURCES.get_or_init(|| {
        FILES
            .iter()
            .map(|(name, text)| {
                serde_json::from_str(text).unwrap_or_else(|e| {
                    panic!("studies/mesemcart/{name}: {e} (a test parses every file)")
                })
            })
            .collect()
    })
}

/// The ids of the site studies (ResearchStudy resources that are `partOf` another study):
/// the units of access control.
pub fn site_studies() -> &'static [String] {
    static SITES: OnceLock<Vec<String>> = OnceLock::new();
    SITES.get_or_init(|| {
        resources()
            .iter()
            .filter(|r| r.get("resourceType").and_then(Value::as_str) == Some("ResearchStudy"))
            .filter(|r| r.get("partOf").is_some())
            .filter_map(|r| r.get("id").and_then(Value::as_str).map(String::from))
            .collect()
    })
}

/// The prefix of a site study's namespace, `mesemcart-site-01` → `mc-01-`: the ids a site
/// chooses itself (by PUT) begin with it, as its subjects' ids and identifiers (`MC-01-007`) do.
pub fn site_namespace(site_study: &str) -> String {
    let n = site_study.rsplit('-').next().unwrap_or(site_study);
    format!("mc-{}-", n.to_ascii_lowercase())
}

/// Whether an id or a subject identifier lies in a site's namespace (case-insensitive).
pub fn in_site_namespace(site_study: &str, id: &str) -> bool {
    id.to_ascii_lowercase()
        .starts_with(&site_namespace(site_study))
}

/// A concept one of the study's ValueSets lists.
struct Listed {
    value_set: &'static str,
    display: Option<&'static str>,
}

/// The concepts of the study's ValueSets by system and code, indexed once: the gateway asks
/// for every coding of every message.
fn listed() -> &'static HashMap<&'static str, HashMap<&'static str, Vec<Listed>>> {
    static LISTED: OnceLock<HashMap<&'static str, HashMap<&'static str, Vec<Listed>>>> =
        OnceLock::new();
    LISTED.get_or_init(|| {
        let mut out: HashMap<&'static str, HashMap<&'static str, Vec<Listed>>> = HashMap::new();
        for vs in resources()
            .iter()
            .filter(|r| r.get("resourceType").and_then(Value::as_str) == Some("ValueSet"))
        {
            let value_set = vs.get("id").and_then(Value::as_str).unwrap_or("");
            for inc in vs
                .pointer("/compose/include")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(system) = inc.get("system").and_then(Value::as_str) else {
                    continue;
                };
                for k in inc
                    .get("concept")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(code) = k.get("code").and_then(Value::as_str) {
                        out.entry(system)
                            .or_default()
                            .entry(code)
                            .or_default()
                            .push(Listed {
                                value_set,
                                display: k.get("display").and_then(Value::as_str),
                            });
                    }
                }
            }
        }
        out
    })
}

/// Whether the study's ValueSet `id` lists `(system, code)`.
pub fn in_value_set(id: &str, system: &str, code: &str) -> bool {
    listed()
        .get(system)
        .and_then(|codes| codes.get(code))
        .is_some_and(|l| l.iter().any(|c| c.value_set == id))
}

/// The display the study's ValueSets give `(system, code)`.
pub fn display(system: &str, code: &str) -> Option<&'static str> {
    listed()
        .get(system)
        .and_then(|codes| codes.get(code))
        .and_then(|l| l.iter().find_map(|c| c.display))
}

/// The display a study CodeSystem gives `(system, code)` (the sponsor's own codes, whose
/// ValueSet entries carry none).
pub fn code_system_display(system: &str, code: &str) -> Option<&'static str> {
    resources()
        .iter()
        .filter(|r| r["resourceType"] == "CodeSystem" && r["url"] == system)
        .flat_map(|r| r["concept"].as_array().into_iter().flatten())
        .find(|c| c["code"] == code)
        .and_then(|c| c["display"].as_str())
}

/// The resource of this type and id.
pub fn resource(resource_type: &str, id: &str) -> Option<&'static Value> {
    resources().iter().find(|r| {
        r.get("resourceType").and_then(Value::as_str) == Some(resource_type)
            && r.get("id").and_then(Value::as_str) == Some(id)
    })
}

/// Looks a code up in one ConceptMap (the built-in one, or the version an administrator
/// edited in the trial store): the target `(system, code, display)` of `(system, code)`.
/// An element whose first target is `unmatched` or `disjoint` translates to nothing.
pub fn translate_in(
    concept_map: &Value,
    system: &str,
    code: &str,
) -> Option<(String, String, Option<String>)> {
    for g in concept_map
        .get("group")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if g.get("source").and_then(Value::as_str) != Some(system) {
            continue;
        }
        let Some(target_system) = g.get("target").and_then(Value::as_str) else {
            continue;
        };
        for e in g
            .get("element")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if e.get("code").and_then(Value::as_str) != Some(code) {
                continue;
            }
            let t = e
                .get("target")
                .and_then(Value::as_array)
                .and_then(|t| t.first())?;
            let eq = t.get("equivalence").and_then(Value::as_str).unwrap_or("");
            if matches!(eq, "unmatched" | "disjoint") {
                return None;
            }
            let tc = t.get("code").and_then(Value::as_str)?;
            let display = t.get("display").and_then(Value::as_str).map(String::from);
            return Some((target_system.to_string(), tc.to_string(), display));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_set_concepts_are_looked_up_by_system_and_code() {
        let loinc = "http://loinc.org";
        assert!(in_value_set(
            "mesemcart-observation-codes",
            loinc,
            "29463-7"
        ));
        assert!(!in_value_set(
            "mesemcart-observation-codes",
            loinc,
            "2345-7"
        ));
        assert!(!in_value_set("no-such-value-set", loinc, "29463-7"));
        assert_eq!(display(loinc, "29463-7"), Some("Body weight"));
        assert_eq!(display("http://snomed.info/sct", "29463-7"), None);
    }

    #[test]
    fn every_study_file_is_built_in_and_parses() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../studies/mesemcart");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json"))
            .collect();
        on_disk.sort();
        let built_in: Vec<String> = FILES.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(on_disk, built_in, "add new study files to FILES");
        assert_eq!(resources().len(), FILES.len());
        assert!(resource("ResearchStudy", "mesemcart-site-01").is_some());
    }

    #[test]
    fn site_local_codes_translate() {
        let map = resource("ConceptMap", "mesemcart-site-local-codes").unwrap();
        let (system, code, _) = translate_in(map, "urn:mesemcart:site-01:local", "BMI").unwrap();
        assert_eq!(
            (system.as_str(), code.as_str()),
            ("http://loinc.org", "39156-5")
        );
        assert!(translate_in(map, "urn:mesemcart:site-01:local", "HB").is_none());
    }

    #[test]
    fn file_names_match_type_and_id() {
        for ((name, _), v) in FILES.iter().zip(resources()) {
            assert_eq!(
                *name,
                format!(
                    "{}-{}.json",
                    v["resourceType"].as_str().unwrap(),
                    v["id"].as_str().unwrap()
                )
            );
        }
    }
}
