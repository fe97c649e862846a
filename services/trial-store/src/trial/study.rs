//! The MesemCart study definition (`studies/mesemcart/`), built into the binary and loaded at
//! start-up. A built-in resource is written only when the store has never held its content:
//! when it is missing, or when this binary brings a newer definition than every version
//! stored so far. A current version that differs from a built-in content the store held
//! before is an edit made since (a study administrator's, audited: a local code added to the
//! site code map, say) and is never overwritten by a restart. The version history is the
//! marker of what was loaded; nothing else needs to be kept.

use serde_json::Value;
use trialbridge_storage::{AccessContext, ResourceStore};

use crate::error::StoreError;
use crate::fhir::interactions::same_content;
use crate::fhir::loading::{load_values, LoadCounts, LoadItem};

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
    load_definition(store, rules, validation, trialbridge_study::resources()).await
}

/// Loads the built-in `resources`: those whose content the store never held (see the module
/// comment); the others count as unchanged.
async fn load_definition(
    store: &dyn ResourceStore,
    rules: std::sync::Arc<dyn crate::fhir::WriteRules>,
    validation: &trialbridge_validation::Options,
    resources: &[Value],
) -> Result<LoadCounts, StoreError> {
    const AGENT: &str = "trialbridge start-up: MesemCart study definition";
    let ctx = AccessContext::system(AGENT);
    let mut items = Vec::new();
    let mut kept = 0;
    for r in resources {
        if held_before(store, &ctx, r).await? {
            kept += 1;
        } else {
            items.push(LoadItem::of(r.clone()));
        }
    }
    let mut counts = load_values(store, rules, AGENT, items, validation, None).await?;
    counts.unchanged += kept;
    Ok(counts)
}

/// Whether some stored version of `r`'s resource (the current one included) had exactly
/// `r`'s content.
async fn held_before(
    store: &dyn ResourceStore,
    ctx: &AccessContext,
    r: &Value,
) -> Result<bool, StoreError> {
    let (Some(ty), Some(id)) = (
        r.get("resourceType").and_then(Value::as_str),
        r.get("id").and_then(Value::as_str),
    ) else {
        return Ok(false);
    };
    let Some(current) = store.read(ctx, ty, id).await? else {
        return Ok(false);
    };
    let same = |v: &trialbridge_storage::StoredVersion| {
        v.body.as_deref().is_some_and(|b| same_content(b, r))
    };
    if same(&current) {
        return Ok(true);
    }
    for version in (1..current.version).rev() {
        if let Some(v) = store.vread(ctx, ty, id, version).await? {
            if same(&v) {
                tracing::info!(
                    resource = %format!("{ty}/{id}"),
                    loaded = version,
                    current = current.version,
                    "the study resource was edited after it was loaded; the edit stays"
                );
                return Ok(true);
            }
        }
    }
    Ok(false)
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

    async fn current(store: &dyn ResourceStore) -> (i64, Value) {
        let v = store
            .read(
                &AccessContext::system("test"),
                "ConceptMap",
                "mesemcart-site-local-codes",
            )
            .await
            .unwrap()
            .unwrap();
        (v.version, serde_json::from_str(&v.body.unwrap()).unwrap())
    }

    #[tokio::test]
    async fn an_edit_after_loading_stays_and_a_newer_definition_is_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            trialbridge_storage::open(&format!("sqlite://{}", dir.path().join("s.db").display()))
                .await
                .unwrap();
        let options = crate::config::validation_options(crate::config::DEFAULT_EXTENSION_DOMAINS);
        let rules = || -> std::sync::Arc<dyn crate::fhir::WriteRules> {
            std::sync::Arc::new(crate::fhir::NoRules)
        };
        let built_in = trialbridge_study::resource("ConceptMap", "mesemcart-site-local-codes")
            .unwrap()
            .clone();
        load_definition(&*store, rules(), &options, std::slice::from_ref(&built_in))
            .await
            .unwrap();
        // An administrator's edit (another writer, another version).
        let mut edited = built_in.clone();
        edited["title"] = serde_json::json!("edited by the study administrator");
        load_values(
            &*store,
            rules(),
            "admin",
            vec![LoadItem::of(edited)],
            &options,
            None,
        )
        .await
        .unwrap();
        assert_eq!(current(&*store).await.0, 2);
        // A restart with the same built-in definition keeps the edit.
        let again = load_definition(&*store, rules(), &options, std::slice::from_ref(&built_in))
            .await
            .unwrap();
        assert_eq!((again.updated, again.unchanged), (0, 1));
        let (version, body) = current(&*store).await;
        assert_eq!(
            (version, body["title"].as_str()),
            (2, Some("edited by the study administrator"))
        );
        // A binary with a newer definition loads it.
        let mut newer = built_in.clone();
        newer["version"] = serde_json::json!("1.1.0");
        let upgrade = load_definition(&*store, rules(), &options, std::slice::from_ref(&newer))
            .await
            .unwrap();
        assert_eq!(upgrade.updated, 1);
        let (version, body) = current(&*store).await;
        assert_eq!((version, body["version"].as_str()), (3, Some("1.1.0")));
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
