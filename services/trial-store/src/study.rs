//! The MesemCart study definition (`studies/mesemcart/`), built into the binary and loaded at
//! start-up. Loading is idempotent: unchanged resources are left alone.

use trialbridge_storage::ResourceStore;

use crate::error::ApiError;
use crate::loading::{load_values, LoadCounts};

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

/// The protocol rules of the built-in study definition (parsed once).
pub fn rules() -> &'static trialbridge_validation::protocol::StudyRules {
    static RULES: std::sync::OnceLock<trialbridge_validation::protocol::StudyRules> =
        std::sync::OnceLock::new();
    RULES.get_or_init(|| {
        let values: Vec<serde_json::Value> = FILES
            .iter()
            .filter_map(|(_, text)| serde_json::from_str(text).ok())
            .collect();
        trialbridge_validation::protocol::StudyRules::from_study(&values)
    })
}

/// Loads the study definition.
pub async fn load(
    store: &dyn ResourceStore,
    validation: &trialbridge_validation::Options,
) -> Result<LoadCounts, ApiError> {
    let mut values = Vec::with_capacity(FILES.len());
    for (name, text) in FILES {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                trialbridge_fhir::IssueType::Exception,
                format!("studies/mesemcart/{name}: {e}"),
            )
        })?;
        values.push(v);
    }
    load_values(store, values, validation).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protocol_rules_come_from_the_study_files() {
        let r = rules();
        assert_eq!(r.age_years, Some((18.0, 60.0)));
        assert_eq!(r.bmi_below, Some(35.0));
        assert_eq!(r.qualifying_grades.len(), 5);
        assert!(r.excluded_conditions.iter().any(|(_, c)| c == "M17"));
        assert!(r.transition("on-study", "off-study").is_none());
        assert!(r.transition("on-study", "withdrawn").is_some());
        assert_eq!(r.visits.len(), 9, "{:?}", r.visits);
    }

    #[test]
    fn every_study_file_is_built_in() {
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
    }

    #[test]
    fn file_names_match_type_and_id() {
        for (name, text) in FILES {
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
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

    #[tokio::test]
    async fn loading_twice_creates_nothing_new() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            trialbridge_storage::open(&format!("sqlite://{}", dir.path().join("s.db").display()))
                .await
                .unwrap();
        let first = load(
            &*store,
            &crate::config::validation_options(crate::config::DEFAULT_EXTENSION_DOMAINS),
        )
        .await
        .unwrap();
        assert_eq!(first.created, FILES.len());
        let second = load(
            &*store,
            &crate::config::validation_options(crate::config::DEFAULT_EXTENSION_DOMAINS),
        )
        .await
        .unwrap();
        assert_eq!(
            second,
            LoadCounts {
                created: 0,
                updated: 0,
                unchanged: FILES.len()
            }
        );
    }
}
