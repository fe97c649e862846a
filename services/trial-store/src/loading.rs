//! Loading resources that carry ids straight into the store, in one commit per call: the study
//! definition at start-up and `trialbridge load`. Content equal to the current version is left
//! alone, so loading the same files twice creates no versions.

use serde_json::Value;
use trialbridge_storage::{write, AccessContext, ResourceStore};

use crate::error::ApiError;
use crate::interactions::{load_resource, LoadResult};

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

/// Writes `values` in one transaction: all of them or, if one is refused, none (the error
/// names it).
pub async fn load_values(
    store: &dyn ResourceStore,
    values: Vec<Value>,
) -> Result<LoadCounts, ApiError> {
    write(store, &AccessContext::system(), move |txn| {
        Box::pin(async move {
            let mut c = LoadCounts::default();
            for v in values {
                let what = format!(
                    "{}/{}",
                    v.get("resourceType").and_then(Value::as_str).unwrap_or("?"),
                    v.get("id").and_then(Value::as_str).unwrap_or("?")
                );
                match load_resource(txn, v).await {
                    Ok(LoadResult::Created) => c.created += 1,
                    Ok(LoadResult::Updated) => c.updated += 1,
                    Ok(LoadResult::Unchanged) => c.unchanged += 1,
                    Err(ApiError::Rejected {
                        status,
                        mut outcome,
                    }) => {
                        for i in &mut outcome.issues {
                            i.diagnostics = format!("{what}: {}", i.diagnostics);
                        }
                        return Err(ApiError::Rejected { status, outcome });
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(c)
        })
    })
    .await
}
