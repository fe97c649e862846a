//! Pulling from the EHR's FHIR R4 API: for every enrolled subject, the Observations,
//! Procedures and Conditions updated since the last poll (`_lastUpdated`, following `next`
//! links), with OAuth2 client credentials when configured and retries with backoff. Each
//! resource version goes through the same path as an HL7 v2 message: deduplicated, reduced to
//! what the trial needs, pseudonymised, stored in the outbox with a Provenance naming the EHR
//! resource and version, and forwarded. The cursor per site and type moves only after the
//! resources it covers are stored.

use std::time::Duration;

use serde_json::{json, Value};

use crate::db::{Effects, NewMessage, Recorded, State};
use crate::identity::Enrolment;
use crate::mapping::{Event, PatientGroup};
use crate::pseudonym::{self, Origin, Outgoing};
use crate::Gateway;

/// How to reach the EHR.
#[derive(Debug, Clone)]
pub struct EhrConfig {
    /// FHIR base URL of the EHR.
    pub base: String,
    /// Identifier system under which the EHR knows the site's MRNs.
    pub mrn_system: String,
    /// OAuth2 token endpoint and client credentials, if the EHR wants a bearer token.
    pub oauth: Option<(String, String, String)>,
    /// Seconds between polls.
    pub every: Duration,
}

/// A failed poll (retried later).
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// HTTP or JSON.
    #[error("EHR request failed: {0}")]
    Http(String),
    /// The gateway database.
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
}

struct Client {
    http: reqwest::Client,
    config: EhrConfig,
    token: Option<(String, std::time::Instant)>,
}

impl Client {
    async fn bearer(&mut self) -> Result<Option<String>, PullError> {
        let Some((url, id, secret)) = self.config.oauth.clone() else {
            return Ok(None);
        };
        if let Some((t, until)) = &self.token {
            if std::time::Instant::now() < *until {
                return Ok(Some(t.clone()));
            }
        }
        let r = self
            .http
            .post(&url)
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", id.as_str()),
                ("client_secret", secret.as_str()),
            ])
            .send()
            .await
            .map_err(|e| PullError::Http(e.to_string()))?;
        if !r.status().is_success() {
            return Err(PullError::Http(format!(
                "token endpoint answered {}",
                r.status()
            )));
        }
        let v: Value = r.json().await.map_err(|e| PullError::Http(e.to_string()))?;
        let token = v["access_token"]
            .as_str()
            .ok_or_else(|| PullError::Http("no access_token".into()))?
            .to_string();
        let ttl = v["expires_in"]
            .as_u64()
            .unwrap_or(300)
            .saturating_sub(30)
            .max(10);
        self.token = Some((
            token.clone(),
            std::time::Instant::now() + Duration::from_secs(ttl),
        ));
        Ok(Some(token))
    }

    async fn get(&mut self, url: &str) -> Result<Value, PullError> {
        let mut delay = Duration::from_millis(200);
        for attempt in 0..5 {
            let mut req = self.http.get(url).header("accept", "application/fhir+json");
            if let Some(t) = self.bearer().await? {
                req = req.bearer_auth(t);
            }
            match req.send().await {
                Ok(r) if r.status().is_success() => {
                    return r.json().await.map_err(|e| PullError::Http(e.to_string()))
                }
                Ok(r) if r.status() == reqwest::StatusCode::UNAUTHORIZED => {
                    self.token = None;
                }
                Ok(r) if r.status().is_client_error() => {
                    return Err(PullError::Http(format!("{url}: {}", r.status())))
                }
                Ok(_) | Err(_) if attempt < 4 => {}
                Ok(r) => return Err(PullError::Http(format!("{url}: {}", r.status()))),
                Err(e) => return Err(PullError::Http(e.to_string())),
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
        Err(PullError::Http(format!("{url}: gave up after retries")))
    }

    /// Every resource of a search, following `next` links.
    async fn search(&mut self, first: String) -> Result<Vec<Value>, PullError> {
        let mut out = Vec::new();
        let mut next = Some(first);
        let mut pages = 0;
        while let Some(url) = next.take() {
            pages += 1;
            if pages > 10_000 {
                break;
            }
            let b = self.get(&url).await?;
            for e in b["entry"].as_array().into_iter().flatten() {
                if e["search"]["mode"].as_str().unwrap_or("match") == "match" {
                    out.push(e["resource"].clone());
                }
            }
            next = b["link"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|l| l["relation"] == "next")
                .and_then(|l| l["url"].as_str())
                .map(String::from);
        }
        Ok(out)
    }
}

/// The site-side shape of an EHR resource: only what the trial may receive.
fn reduce(r: &Value) -> Option<Value> {
    let keep = |names: &[&str]| {
        let mut o = json!({"resourceType": r["resourceType"], "id": ""});
        for n in names {
            if let Some(v) = r.get(*n) {
                o[*n] = v.clone();
            }
        }
        o
    };
    match r["resourceType"].as_str()? {
        "Observation" => {
            let mut o = keep(&[
                "status",
                "category",
                "code",
                "valueQuantity",
                "valueCodeableConcept",
                "valueString",
                "valueBoolean",
                "valueInteger",
                "valueRange",
                "valueRatio",
                "valueDateTime",
                "interpretation",
                "referenceRange",
                "component",
            ]);
            let eff = r
                .get("effectiveDateTime")
                .or_else(|| r.pointer("/effectivePeriod/start"))
                .or_else(|| r.get("effectiveInstant"));
            if let Some(e) = eff {
                o["effectiveDateTime"] = e.clone();
            }
            Some(o)
        }
        "Procedure" => {
            let mut o = keep(&["status", "code", "bodySite"]);
            if let Some(t) = r
                .get("performedDateTime")
                .or_else(|| r.pointer("/performedPeriod/start"))
            {
                o["performedDateTime"] = t.clone();
            }
            Some(o)
        }
        "Condition" => Some(keep(&[
            "clinicalStatus",
            "verificationStatus",
            "code",
            "bodySite",
            "onsetDateTime",
            "abatementDateTime",
            "recordedDate",
        ])),
        _ => None,
    }
}

/// One poll over every enrolled subject; returns how many resource versions were stored.
pub async fn poll_once(gateway: &Gateway, config: &EhrConfig) -> Result<usize, PullError> {
    let mut client = Client {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| PullError::Http(e.to_string()))?,
        config: config.clone(),
        token: None,
    };
    let base = config.base.trim_end_matches('/').to_string();
    let mut subjects: Vec<(Enrolment, Vec<(String, String)>)> = Vec::new();
    for row in gateway.db.key_list().await? {
        match subjects
            .iter_mut()
            .find(|(s, _)| s.subject_id == row.subject.subject_id)
        {
            Some((_, ids)) => ids.push((row.authority, row.mrn)),
            None => subjects.push((row.subject, vec![(row.authority, row.mrn)])),
        }
    }
    let mut stored = 0;
    for (who, ids) in subjects {
        // The subject's Patient in the EHR, by MRN.
        let mut ehr_patients = Vec::new();
        for (_, mrn) in &ids {
            let url = format!(
                "{base}/Patient?identifier={}|{}",
                enc(&config.mrn_system),
                enc(mrn)
            );
            for p in client.search(url).await? {
                if let Some(id) = p["id"].as_str() {
                    ehr_patients.push(id.to_string());
                }
            }
        }
        for pid in ehr_patients {
            for ty in ["Observation", "Procedure", "Condition"] {
                let cursor_name = format!("ehr:{base}:{ty}:{pid}");
                let since = gateway.db.cursor(&cursor_name).await?;
                let mut url = format!(
                    "{base}/{ty}?patient=Patient/{}&_sort=_lastUpdated&_count=100",
                    enc(&pid)
                );
                if let Some(s) = &since {
                    url.push_str(&format!("&_lastUpdated=gt{}", enc(s)));
                }
                let found = client.search(url).await?;
                let mut newest = since.clone();
                for r in &found {
                    let (Some(id), Some(reduced)) = (r["id"].as_str(), reduce(r)) else {
                        continue;
                    };
                    let version = r
                        .pointer("/meta/versionId")
                        .and_then(Value::as_str)
                        .unwrap_or("1");
                    let updated = r
                        .pointer("/meta/lastUpdated")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    let mut reduced = reduced;
                    reduced["id"] = json!(format!("{ty}-{id}"));
                    let group = PatientGroup {
                        resources: vec![reduced],
                        ..Default::default()
                    };
                    let received = crate::now_instant();
                    let origin = Origin {
                        sender: format!("ehr^{base}"),
                        control_id: format!("{ty}/{id}"),
                        fingerprint: String::new(),
                        received: received.clone(),
                        site: gateway.config.site.clone(),
                    };
                    let (out, dropped) = pseudonym::outgoing(
                        &Event::Results,
                        &[(&group, &who)],
                        &origin,
                        &gateway.code_map.current(),
                        &gateway.validation,
                    );
                    let control = format!("{ty}/{id}/_history/{version}");
                    let sender = format!("ehr^{base}");
                    let kind = format!("FHIR {ty}");
                    let base_row = NewMessage {
                        sender: &sender,
                        control_id: &control,
                        kind: &kind,
                        fingerprint: "",
                        received: &received,
                        raw: None,
                        state: State::Done,
                        reason: None,
                        bundle: None,
                        ack: "",
                        reused_ack: None,
                    };
                    let effects =
                        |counter: Option<&'static str>| Effects {
                            counters: counter
                                .map(|c| (c, 1))
                                .into_iter()
                                .chain((dropped > 0).then_some((
                                    "observations_outside_the_dataset",
                                    dropped as i64,
                                )))
                                .collect(),
                            ..Effects::default()
                        };
                    let row = match out {
                        Outgoing::Bundle(mut b) => {
                            // The Provenance names the EHR resource version it came from.
                            if let Some(entries) = b["entry"].as_array_mut() {
                                for e in entries
                                    .iter_mut()
                                    .filter(|e| e["resource"]["resourceType"] == "Provenance")
                                {
                                    e["resource"]["entity"] = json!([{"role": "source", "what": {"reference": format!("{base}/{ty}/{id}/_history/{version}")}}]);
                                }
                            }
                            let text = b.to_string();
                            gateway
                                .db
                                .record(
                                    NewMessage {
                                        state: State::Outbox,
                                        bundle: Some(&text),
                                        ..base_row
                                    },
                                    effects(Some("ehr_queued")),
                                )
                                .await?
                        }
                        Outgoing::Nothing => {
                            gateway
                                .db
                                .record(
                                    NewMessage {
                                        reason: Some("nothing of the trial's dataset"),
                                        ..base_row
                                    },
                                    effects(None),
                                )
                                .await?
                        }
                        Outgoing::Dead(why) => {
                            let raw = r.to_string();
                            gateway
                                .db
                                .record(
                                    NewMessage {
                                        state: State::Dead,
                                        reason: Some(&why),
                                        raw: Some(raw.as_bytes()),
                                        ..base_row
                                    },
                                    effects(Some("dead_letters")),
                                )
                                .await?
                        }
                    };
                    if matches!(row, Recorded::Stored(_)) {
                        stored += 1;
                    }
                    if newest.as_deref().is_none_or(|n| updated > n) && !updated.is_empty() {
                        newest = Some(updated.to_string());
                    }
                }
                if newest != since {
                    if let Some(n) = newest {
                        gateway.db.set_cursor(&cursor_name, &n).await?;
                    }
                }
            }
        }
    }
    if stored > 0 {
        gateway.wake.notify_one();
    }
    Ok(stored)
}

/// A query-parameter value, percent-encoded.
fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Polls every `config.every` until `stop`.
pub async fn run(
    gateway: Gateway,
    config: EhrConfig,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        match poll_once(&gateway, &config).await {
            Ok(n) if n > 0 => tracing::info!(stored = n, "EHR poll stored resource versions"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "EHR poll failed; retrying at the next interval"),
        }
        tokio::select! {
            _ = tokio::time::sleep(config.every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
