//! Loading resources that carry ids straight into the store, in one commit per call: the study
//! definition at start-up and `trialbridge load`. Content equal to the current version is left
//! alone, so loading the same files twice creates no versions.

use serde_json::Value;
use trialbridge_storage::{write, AccessContext, ResourceStore, StoredVersion};

use std::sync::Arc;

use crate::error::StoreError;
use crate::fhir::interactions::{load_resource, LoadResult};
use crate::fhir::WriteRules;
use crate::security::audit::change_event;
use crate::security::Caller;

/// What a load did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LoadCounts {
    /// New resources.
    pub created: usize,
    /// New versions.
    pub updated: usize,
    /// Identical to what was stored; nothing written.
    pub unchanged: usize,
}

impl LoadCounts {
    /// Adds another load's counts.
    pub fn add(&mut self, c: LoadCounts) {
        self.created += c.created;
        self.updated += c.updated;
        self.unchanged += c.unchanged;
    }
}

/// One resource to load and where it came from (`file:line`), for the error that names it.
#[derive(Debug, Clone)]
pub struct LoadItem {
    /// The resource.
    pub value: Value,
    /// Where it was read (`export.ndjson:17`, a study file).
    pub origin: String,
}

impl LoadItem {
    /// A resource whose origin is its own `Type/id`.
    pub fn of(value: Value) -> Self {
        let origin = format!(
            "{}/{}",
            value
                .get("resourceType")
                .and_then(Value::as_str)
                .unwrap_or("?"),
            value.get("id").and_then(Value::as_str).unwrap_or("?")
        );
        Self { value, origin }
    }
}

/// Writes `items` in one transaction: all of them or, if one is refused, none (the error
/// names its origin and element). The commit gets one AuditEvent per site and interaction
/// (create, update) naming `agent` (the operator's command) and every version it wrote, as a
/// transaction Bundle through the API does; each resource is findable in the trail by
/// `entity`. One event per resource made the trail as large as the data itself (1.2 kB per
/// Observation, a fifth of the store). A resource whose content names no site belongs to
/// `site`; clinical data of no site is refused.
pub async fn load_values(
    store: &dyn ResourceStore,
    rules: Arc<dyn WriteRules>,
    agent: &str,
    items: Vec<LoadItem>,
    validation: &trialbridge_validation::Options,
    site: Option<String>,
) -> Result<LoadCounts, StoreError> {
    let validation = validation.clone();
    let caller = Caller::system(agent);
    let who = caller.clone();
    write(store, &caller.ctx, move |txn| {
        Box::pin(async move {
            let mut c = LoadCounts::default();
            let mut written_all: Vec<(&'static str, u16, StoredVersion)> = Vec::new();
            for item in items {
                let written = match load_resource(
                    txn,
                    &who,
                    &*rules,
                    item.value,
                    &validation,
                    site.as_deref(),
                )
                .await
                {
                    Ok(LoadResult::Created(v)) => {
                        c.created += 1;
                        Some(("create", 201, v))
                    }
                    Ok(LoadResult::Updated(v)) => {
                        c.updated += 1;
                        Some(("update", 200, v))
                    }
                    Ok(LoadResult::Unchanged) => {
                        c.unchanged += 1;
                        None
                    }
                    Err(StoreError::Rejected {
                        status,
                        mut outcome,
                    }) => {
                        for i in &mut outcome.issues {
                            i.diagnostics = format!("{}: {}", item.origin, i.diagnostics);
                        }
                        return Err(StoreError::Rejected { status, outcome });
                    }
                    Err(e) => return Err(e),
                };
                written_all.extend(written);
            }
            for record in audit_records(&who, &written_all) {
                txn.audit(record).await?;
            }
            Ok(c)
        })
    })
    .await
}

/// What an AuditEvent of a load groups by: interaction, HTTP status, site.
type AuditGroup<'a> = (&'a str, u16, Option<&'a str>);

/// One AuditEvent per (interaction, site) of what one commit wrote, in the order each group
/// first appears.
fn audit_records(
    who: &Caller,
    written: &[(&'static str, u16, StoredVersion)],
) -> Vec<trialbridge_storage::AuditRecord> {
    let mut groups: Vec<(AuditGroup, Vec<&StoredVersion>)> = Vec::new();
    for (subtype, status, v) in written {
        let key = (*subtype, *status, v.site.as_deref());
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, vs)) => vs.push(v),
            None => groups.push((key, vec![v])),
        }
    }
    groups
        .into_iter()
        .map(|((subtype, status, _), vs)| {
            let named: Vec<_> = vs.into_iter().map(|v| (v, None)).collect();
            change_event(who, subtype, status, &named)
        })
        .collect()
}

/// How many resources one re-index commit covers.
const REINDEX_BATCH: usize = 500;

/// Rebuilds the search index of every current resource from its stored JSON, without writing
/// versions: for when the search-parameter definitions (or their extraction) changed. Calls
/// `progress` with the running count after each batch; returns the total.
pub async fn reindex(
    store: &dyn ResourceStore,
    mut progress: impl FnMut(usize),
) -> Result<usize, StoreError> {
    let ctx = AccessContext::system("trialbridge reindex");
    let mut after = None;
    let mut done = 0;
    loop {
        let page = store
            .current_page(&ctx, after.clone(), REINDEX_BATCH)
            .await?;
        let Some(last) = page.last() else {
            return Ok(done);
        };
        after = Some((last.resource_type.clone(), last.id.clone()));
        let n = page.len();
        write(store, &ctx, move |txn| {
            Box::pin(async move {
                for v in &page {
                    let (Some(rt), Some(body)) = (
                        trialbridge_fhir::resource_type::canonical(&v.resource_type),
                        v.body.as_deref(),
                    ) else {
                        continue;
                    };
                    let Ok(value) = serde_json::from_str::<Value>(body) else {
                        continue;
                    };
                    let index = trialbridge_fhir::index::extract(rt, &value);
                    txn.replace_index(rt, &v.id, &index).await?;
                }
                Ok::<_, StoreError>(())
            })
        })
        .await?;
        done += n;
        progress(done);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One AuditEvent per site and interaction of a commit, naming every version it wrote; each
    /// resource is still found by `entity`.
    #[tokio::test]
    async fn a_commit_is_audited_once_per_site_and_interaction() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            trialbridge_storage::open(&format!("sqlite://{}", dir.path().join("a.db").display()))
                .await
                .unwrap();
        let patient = |i: usize, site: &str| {
            serde_json::json!({"resourceType":"Patient","id":format!("p{i}"),"gender":"female",
                "extension":[{"url":"http://hl7.org/fhir/StructureDefinition/workflow-researchStudy",
                    "valueReference":{"reference":format!("ResearchStudy/{site}")}}]})
        };
        let load = |items: Vec<Value>| {
            let store = &store;
            async move {
                load_values(
                    &**store,
                    std::sync::Arc::new(crate::fhir::NoRules),
                    "test",
                    items.into_iter().map(LoadItem::of).collect(),
                    &Default::default(),
                    None,
                )
                .await
                .unwrap()
            }
        };
        let first: Vec<Value> = (0..5)
            .map(|i| {
                patient(
                    i,
                    if i < 3 {
                        "mesemcart-site-01"
                    } else {
                        "mesemcart-site-02"
                    },
                )
            })
            .collect();
        assert_eq!(load(first).await.created, 5);
        // p0 changes, p1 stays, p5 is new: one update event and one create event (site-01).
        let mut changed = patient(0, "mesemcart-site-01");
        changed["gender"] = "male".into();
        let counts = load(vec![
            changed,
            patient(1, "mesemcart-site-01"),
            patient(5, "mesemcart-site-01"),
        ])
        .await;
        assert_eq!(
            (counts.created, counts.updated, counts.unchanged),
            (1, 1, 1)
        );
        let ctx = AccessContext::system("test");
        let all = store
            .audit_search(
                &ctx,
                &trialbridge_storage::AuditQuery {
                    count: 100,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let summary: Vec<(Option<String>, usize, bool)> = all
            .iter()
            .map(|a| {
                let e: Value = serde_json::from_str(&a.body).unwrap();
                let named = e["entity"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|x| x["what"]["reference"].is_string())
                    .count();
                (a.site.clone(), named, e["action"] == "C")
            })
            .collect();
        assert_eq!(
            summary,
            [
                (Some("mesemcart-site-01".into()), 3, true),
                (Some("mesemcart-site-02".into()), 2, true),
                (Some("mesemcart-site-01".into()), 1, false),
                (Some("mesemcart-site-01".into()), 1, true),
            ]
        );
        for id in ["Patient/p1", "Patient/p4"] {
            let found = store
                .audit_search(
                    &ctx,
                    &trialbridge_storage::AuditQuery {
                        entity: Some(id.into()),
                        count: 10,
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            assert_eq!(found.len(), 1, "{id}");
        }
    }

    #[tokio::test]
    async fn reindex_restores_a_lost_index() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            trialbridge_storage::open(&format!("sqlite://{}", dir.path().join("r.db").display()))
                .await
                .unwrap();
        let ctx = AccessContext::system("test");
        let patients: Vec<Value> = (0..1200).map(|i| serde_json::json!({"resourceType":"Patient","id":format!("p{i}"),"gender":"female"})).collect();
        load_values(
            &*store,
            std::sync::Arc::new(crate::fhir::NoRules),
            "test",
            patients.into_iter().map(LoadItem::of).collect(),
            &Default::default(),
            Some("mesemcart-site-01".into()),
        )
        .await
        .unwrap();
        let query =
            trialbridge_fhir::search::parse("Patient", &[("gender".into(), "female".into())], true)
                .unwrap();
        assert_eq!(store.count(&ctx, "Patient", &query).await.unwrap(), 1200);
        // Lose the index rows (as if the definitions had changed).
        write(&*store, &ctx, |txn| {
            Box::pin(async move {
                for i in 0..1200 {
                    txn.replace_index("Patient", &format!("p{i}"), &Default::default())
                        .await?;
                }
                Ok::<_, StoreError>(())
            })
        })
        .await
        .unwrap();
        assert_eq!(store.count(&ctx, "Patient", &query).await.unwrap(), 0);
        let mut seen = Vec::new();
        assert_eq!(reindex(&*store, |n| seen.push(n)).await.unwrap(), 1200);
        assert_eq!(seen, [500, 1000, 1200]);
        assert_eq!(store.count(&ctx, "Patient", &query).await.unwrap(), 1200);
        let history = store
            .history(
                &ctx,
                &trialbridge_storage::HistoryQuery {
                    scope: trialbridge_storage::HistoryScope::System,
                    since_us: None,
                    at_or_before_us: None,
                    order: trialbridge_storage::HistoryOrder::OldestFirst,
                    after_seq: None,
                    snapshot_seq: None,
                    count: 5000,
                },
            )
            .await
            .unwrap();
        assert_eq!(
            history.versions.len(),
            1200,
            "re-indexing writes no versions"
        );
    }
}
