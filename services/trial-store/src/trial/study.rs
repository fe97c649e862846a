//! The MesemCart study definition (`studies/mesemcart/`), built into the binary and loaded at
//! start-up. Loading is idempotent: unchanged resources are left alone.

use trialbridge_storage::ResourceStore;

use crate::error::StoreError;
use crate::fhir::loading::{load_values, LoadCounts};

/// The protocol rules of the built-in study definition (parsed once).
pub fn rules() -> &'static trialbridge_validation::protocol::StudyRules {
    static RULES: std::sync::OnceLock<trialbridge_validation::protocol::StudyRules> =
        std::sync::OnceLock::new();
    RULES.get_or_init(|| {
        trialbridge_validation::protocol::StudyRules::from_study(trialbridge_study::resources())
    })
}

/// Loads the study definition, every resource through `rules` (the trial's own, at start-up).
pub async fn load(
    store: &dyn ResourceStore,
    rules: std::sync::Arc<dyn crate::fhir::WriteRules>,
    validation: &trialbridge_validation::Options,
) -> Result<LoadCounts, StoreError> {
    load_values(
        store,
        rules,
        "trialbridge start-up: MesemCart study definition",
        trialbridge_study::resources()
            .iter()
            .cloned()
            .map(crate::fhir::loading::LoadItem::of)
            .collect(),
        validation,
        None,
    )
    .await
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

    #[tokio::test]
    async fn loading_twice_creates_nothing_new() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            trialbridge_storage::open(&format!("sqlite://{}", dir.path().join("s.db").display()))
                .await
                .unwrap();
        let first = load(
            &*store,
            std::sync::Arc::new(crate::fhir::NoRules),
            &crate::config::validation_options(crate::config::DEFAULT_EXTENSION_DOMAINS),
        )
        .await
        .unwrap();
        assert_eq!(first.created, trialbridge_study::FILES.len());
        let second = load(
            &*store,
            std::sync::Arc::new(crate::fhir::NoRules),
            &crate::config::validation_options(crate::config::DEFAULT_EXTENSION_DOMAINS),
        )
        .await
        .unwrap();
        assert_eq!(
            second,
            LoadCounts {
                created: 0,
                updated: 0,
                unchanged: trialbridge_study::FILES.len()
            }
        );
    }
}
