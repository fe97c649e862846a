//! The site's code map: how the local result codes a site system sends translate into the
//! study's codes. It is the study's ConceptMap `mesemcart-site-local-codes` as the trial store
//! holds it now, so that a study administrator's audited fix in the store (a local code added)
//! applies at every site without a new gateway release: the gateway refreshes it in the
//! background and before every replay of a dead letter. Until the store has answered once,
//! the map built into the binary serves (a gateway starts and acknowledges while the store is
//! down).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::Value;

use crate::config::GatewayConfig;

/// The id of the study's site code map in the trial store.
pub const CONCEPT_MAP_ID: &str = "mesemcart-site-local-codes";

/// The current site code map, shared by every task of a gateway.
#[derive(Clone)]
pub struct CodeMap {
    current: Arc<RwLock<Current>>,
    client: reqwest::Client,
}

struct Current {
    map: Arc<Value>,
    /// The store's ETag of `map` (None: the built-in map).
    etag: Option<String>,
}

/// What a refresh found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refreshed {
    /// The store holds the version the gateway already uses.
    Unchanged,
    /// A new version is in use (its `meta.versionId`).
    Changed(String),
    /// The store does not hold the map (a store without the study): the one in use stays.
    Missing,
}

/// Why a refresh did not happen; the map in use stays.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// The store did not answer.
    #[error("the trial store is not reachable: {0}")]
    Unreachable(#[from] reqwest::Error),
    /// It answered with something else than the map.
    #[error("the trial store answered {status} for ConceptMap/{CONCEPT_MAP_ID}: {detail}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// What it said.
        detail: String,
    },
}

impl CodeMap {
    /// The map built into the binary.
    pub fn built_in() -> Self {
        let map = trialbridge_study::resource("ConceptMap", CONCEPT_MAP_ID)
            .cloned()
            .unwrap_or(Value::Null);
        Self {
            current: Arc::new(RwLock::new(Current {
                map: Arc::new(map),
                etag: None,
            })),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("HTTP client"),
        }
    }

    /// The map in use now (a snapshot: one message is translated with one version).
    pub fn current(&self) -> Arc<Value> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .map
            .clone()
    }

    /// Replaces the map in use (what a refresh does with the store's answer).
    fn set(&self, map: Value, etag: Option<String>) {
        let mut c = self.current.write().unwrap_or_else(|e| e.into_inner());
        c.map = Arc::new(map);
        c.etag = etag;
    }

    /// Reads the map from the trial store (a conditional read: an unchanged map costs a 304).
    pub async fn refresh(&self, config: &GatewayConfig) -> Result<Refreshed, RefreshError> {
        let etag = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .etag
            .clone();
        let mut req = self
            .client
            .get(format!("{}/ConceptMap/{CONCEPT_MAP_ID}", config.store_url))
            .header("accept", "application/fhir+json");
        if let Some(t) = config.store_token.current() {
            req = req.bearer_auth(t);
        }
        if let Some(e) = &etag {
            req = req.header("if-none-match", e);
        }
        let r = req.send().await?;
        let status = r.status().as_u16();
        match status {
            304 => Ok(Refreshed::Unchanged),
            404 | 410 => Ok(Refreshed::Missing),
            200 => {
                let new_etag = r
                    .headers()
                    .get("etag")
                    .and_then(|v| v.to_str().ok())
                    .map(String::from);
                let map: Value = r.json().await?;
                if map.get("resourceType").and_then(Value::as_str) != Some("ConceptMap") {
                    return Err(RefreshError::Refused {
                        status,
                        detail: "the answer is not a ConceptMap".into(),
                    });
                }
                if new_etag.is_some() && new_etag == etag {
                    return Ok(Refreshed::Unchanged);
                }
                let version = map
                    .pointer("/meta/versionId")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                self.set(map, new_etag);
                Ok(Refreshed::Changed(version))
            }
            _ => Err(RefreshError::Refused {
                status,
                detail: r
                    .text()
                    .await
                    .unwrap_or_default()
                    .chars()
                    .take(300)
                    .collect(),
            }),
        }
    }

    /// Refreshes now and logs what happened (the map in use stays on failure).
    pub async fn refresh_logged(&self, config: &GatewayConfig) {
        match self.refresh(config).await {
            Ok(Refreshed::Changed(v)) => {
                tracing::info!(version = %v, "site code map updated from the trial store")
            }
            Ok(Refreshed::Unchanged) => {}
            Ok(Refreshed::Missing) => tracing::warn!(
                "the trial store holds no ConceptMap/{CONCEPT_MAP_ID}; the map in use stays"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "site code map not refreshed; the map in use stays")
            }
        }
    }

    /// Refreshes every `every` until `stop` turns true.
    pub async fn follow(
        self,
        config: Arc<GatewayConfig>,
        every: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            self.refresh_logged(&config).await;
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_map_translates_until_the_store_answers() {
        let m = CodeMap::built_in();
        let t = trialbridge_study::translate_in(&m.current(), "urn:mesemcart:site-01:local", "BMI")
            .unwrap();
        assert_eq!(
            (t.0.as_str(), t.1.as_str()),
            ("http://loinc.org", "39156-5")
        );
        assert!(trialbridge_study::translate_in(
            &m.current(),
            "urn:mesemcart:site-01:local",
            "NEW"
        )
        .is_none());
        let mut edited = (*m.current()).clone();
        edited["group"][0]["element"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"code": "NEW", "target": [{"code": "8302-2", "equivalence": "equivalent"}]}));
        m.set(edited, Some("W/\"2\"".into()));
        assert!(trialbridge_study::translate_in(
            &m.current(),
            "urn:mesemcart:site-01:local",
            "NEW"
        )
        .is_some());
    }
}
