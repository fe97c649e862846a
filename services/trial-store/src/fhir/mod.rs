//! FHIR semantics over the storage trait: the interactions (create, update, delete,
//! conditional matching), Bundles (transaction and batch), history, search with includes,
//! `$validate`, `$export`, the change feed, the CapabilityStatement and loading. Functions here
//! return domain values (Bundle text, versions, outcomes) and [`StoreError`]s; they know no
//! HTTP (`rest` shapes their answers) and no trial (its rules plug in through [`WriteRules`]).

pub mod bundle;
pub mod capability;
pub mod export;
pub mod feed;
pub mod history;
mod include;
pub mod interactions;
pub mod loading;
pub mod patch;
pub mod search;
pub mod validate;
pub mod views;

use std::sync::Arc;

use serde_json::Value;
use trialbridge_storage::{ResourceStore, WriteTxn};

use crate::config::StoreConfig;
use crate::error::StoreError;
use crate::security::Caller;
pub use interactions::Incoming;

/// What every interaction shares: the trial database, the API settings, running `$export`
/// jobs, the token check and the domain's write rules.
#[derive(Clone)]
pub struct StoreState {
    /// The trial database.
    pub store: Arc<dyn ResourceStore>,
    /// API settings.
    pub config: Arc<StoreConfig>,
    /// Running `$export` jobs.
    pub exports: Arc<export::Exports>,
    /// How tokens are checked.
    pub auth: Arc<trialbridge_auth::Authenticator>,
    /// The rules of the domain every write passes (the trial's protocol).
    pub rules: Arc<dyn WriteRules>,
    /// The local profile's sign-in for the pages (none in production, where the sponsor's
    /// identity provider signs people in).
    pub dev_sign_in: Option<Arc<crate::security::sign_in::DevSignIn>>,
}

impl StoreState {
    /// A state with no export running.
    pub fn new(
        store: Arc<dyn ResourceStore>,
        config: StoreConfig,
        auth: Arc<trialbridge_auth::Authenticator>,
        rules: Arc<dyn WriteRules>,
    ) -> Self {
        Self {
            store,
            config: Arc::new(config),
            exports: Arc::default(),
            auth,
            rules,
            dev_sign_in: None,
        }
    }
}

/// Rules of the domain that every write of a resource passes, inside the write transaction
/// (so they read the facts the write would see). The trial plugs its protocol in here; FHIR's
/// own semantics do not know what the rules are.
#[async_trait::async_trait]
pub trait WriteRules: Send + Sync {
    /// Checks `res`, about to be written as `id` by `caller` (the rules read only what the
    /// caller sees: another site's facts are unknown to them): `Err` refuses the write; `Ok`
    /// lists further resources to record with it (findings such as a protocol deviation).
    async fn check(
        &self,
        txn: &mut dyn WriteTxn,
        caller: &Caller,
        res: &Incoming,
        id: &str,
    ) -> Result<Vec<Value>, StoreError>;

    /// Checks the deletion of the live resource `current` (its stored JSON) by `caller`.
    async fn check_delete(
        &self,
        _txn: &mut dyn WriteTxn,
        _caller: &Caller,
        _current: &Value,
    ) -> Result<(), StoreError> {
        Ok(())
    }
}

/// No rules beyond FHIR's (a plain FHIR server, tests).
pub struct NoRules;

#[async_trait::async_trait]
impl WriteRules for NoRules {
    async fn check(
        &self,
        _: &mut dyn WriteTxn,
        _: &Caller,
        _: &Incoming,
        _: &str,
    ) -> Result<Vec<Value>, StoreError> {
        Ok(Vec::new())
    }
}

/// `Type/id/_history/n` of a version.
pub fn version_path(v: &trialbridge_storage::StoredVersion) -> String {
    format!("{}/{}/_history/{}", v.resource_type, v.id, v.version)
}

/// The decoded query string, in order, repeats kept.
pub fn query_pairs(q: Option<&str>) -> Vec<(String, String)> {
    q.map(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .into_owned()
            .collect()
    })
    .unwrap_or_default()
}

/// An absolute paging link (`self`, `next`): the base, the path, the parameters that were
/// understood, and the cursor. An empty path is the system level (`/fhir?...`).
pub fn page_link(
    base: &str,
    path: &str,
    kept: &[&(String, String)],
    cursor: Option<&str>,
) -> String {
    let mut ser = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in kept {
        ser.append_pair(k, v);
    }
    if let Some(c) = cursor {
        ser.append_pair("_cursor", c);
    }
    let qs = ser.finish();
    let at = if path.is_empty() {
        base.to_string()
    } else {
        format!("{base}/{path}")
    };
    if qs.is_empty() {
        at
    } else {
        format!("{at}?{qs}")
    }
}
