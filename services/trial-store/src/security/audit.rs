//! The audit trail: one FHIR AuditEvent (IHE BALP style codes) per request. A change is
//! audited by [`write_audited`] inside the write transaction it records (the storage refuses
//! a change without one), stored as the AuditEvent's JSON; everything else (reads, searches,
//! refusals, failures) by the access middleware once the response is known, as a compact
//! [`Entry`] that the storage writes together with the others queued meanwhile. Both render to
//! the same AuditEvent ([`expand`]); the hash chain covers what is stored.

use base64::Engine;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use trialbridge_storage::{AuditRecord, ResourceStore, StoredAudit, StoredVersion, WriteTxn};

use crate::error::StoreError;
use crate::security::Caller;

/// What a write returns that the audit event lists.
pub trait Changes {
    /// The versions written, each with its own reason for change when it has one (a
    /// Provenance in the same transaction) that differs from the request's.
    fn versions(&self) -> Vec<(&StoredVersion, Option<&str>)>;

    /// The versions it read without changing them (a batch's read entries), named in the
    /// event too.
    fn read(&self) -> Vec<&StoredVersion> {
        Vec::new()
    }

    /// The HTTP status of the answer (201 for a create, 204 for a delete, ...).
    fn status(&self) -> u16 {
        200
    }
}

/// Runs `f` in a write transaction and records its AuditEvent in the same transaction: the
/// change and its audit commit together or not at all.
pub async fn write_audited<T, F>(
    store: &dyn ResourceStore,
    caller: &Caller,
    subtype: &'static str,
    f: F,
) -> Result<T, StoreError>
where
    T: Changes + Send + 'static,
    F: for<'a> FnOnce(&'a mut dyn WriteTxn) -> BoxFuture<'a, Result<T, StoreError>>
        + Send
        + 'static,
{
    let who = caller.clone();
    trialbridge_storage::write(store, &caller.ctx, move |txn| {
        Box::pin(async move {
            let out = f(&mut *txn).await?;
            let mut touched = out.versions();
            touched.extend(out.read().into_iter().map(|v| (v, None)));
            let record = change_event(&who, subtype, out.status(), &touched);
            txn.audit(record).await?;
            Ok(out)
        })
    })
    .await
}

/// Who made a request, as the audit trail keeps it. Generic over its strings so that a request
/// writes it from borrowed values (`AgentRef`) and a reader gets owned ones (`StoredAgent`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound(
    serialize = "S: Serialize, L: Serialize",
    deserialize = "S: Deserialize<'de> + Default, L: Deserialize<'de> + Default"
))]
struct Agent<S, L> {
    /// The token's `sub`, or trialbridge's own component.
    #[serde(rename = "u")]
    subject: S,
    #[serde(rename = "c", default, skip_serializing_if = "Option::is_none")]
    client: Option<S>,
    #[serde(rename = "r")]
    role: S,
    #[serde(rename = "s")]
    sites: L,
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    address: Option<S>,
    /// True for trialbridge itself (no token).
    #[serde(rename = "t", default, skip_serializing_if = "std::ops::Not::not")]
    tool: bool,
}

type AgentRef<'a> = Agent<&'a str, &'a [String]>;

impl<'a> AgentRef<'a> {
    fn of(caller: &'a Caller) -> Self {
        match &caller.principal {
            Some(p) => Agent {
                subject: &p.subject,
                client: p.client.as_deref(),
                role: trialbridge_auth::role_name(p.role),
                sites: &p.sites,
                address: caller.address.as_deref(),
                tool: false,
            },
            None => Agent {
                subject: &caller.ctx.agent,
                client: None,
                role: "system",
                sites: &[],
                address: None,
                tool: true,
            },
        }
    }
}

impl<S: AsRef<str>, L: AsRef<[String]>> Agent<S, L> {
    /// The AuditEvent's agents: the requestor, then the server.
    fn to_fhir(&self) -> Value {
        let user = if self.tool {
            json!({"who": {"display": self.subject.as_ref()}, "requestor": true, "role": [{"text": "system"}]})
        } else {
            let subject = self.subject.as_ref();
            let mut who = json!({"identifier": {"system": "urn:trialbridge:token-subject", "value": subject}});
            if let Some(c) = &self.client {
                who["display"] = json!(format!("{subject} via {}", c.as_ref()));
            }
            let mut v =
                json!({"who": who, "requestor": true, "role": [{"text": self.role.as_ref()}]});
            if !self.sites.as_ref().is_empty() {
                v["location"] = json!({"display": self.sites.as_ref().join(" ")});
            }
            if let Some(addr) = &self.address {
                v["network"] = json!({"address": addr.as_ref(), "type": "2"});
            }
            v
        };
        json!([user, {"who": {"display": SERVER}, "requestor": false}])
    }
}

fn is_empty<S: AsRef<str>>(s: &S) -> bool {
    s.as_ref().is_empty()
}

/// A request that changed nothing, as queued and stored (short member names: a busy server
/// records one per read). Generic like [`Agent`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound(
    serialize = "S: Serialize + AsRef<str>, L: Serialize",
    deserialize = "S: Deserialize<'de> + Default, L: Deserialize<'de> + Default"
))]
struct Entry<S, L> {
    /// Recorded, microseconds since the epoch.
    #[serde(rename = "t")]
    recorded_us: i64,
    /// The restful-interaction code.
    #[serde(rename = "i")]
    subtype: S,
    /// HTTP status.
    #[serde(rename = "h")]
    status: u16,
    /// Why it was refused (for a 401).
    #[serde(rename = "d", default, skip_serializing_if = "is_empty")]
    description: S,
    /// The caller; none when the token was missing or bad.
    #[serde(rename = "w", default, skip_serializing_if = "Option::is_none")]
    agent: Option<Agent<S, L>>,
    /// Method, path and query.
    #[serde(rename = "q")]
    request: S,
    /// `Type/id` the request named, if any.
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    entity: Option<S>,
    /// `X-Reason-For-Change`, if sent.
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    reason: Option<S>,
}

type StoredEntry = Entry<String, Vec<String>>;

fn now_us() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64
}

fn instant(us: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .map(trialbridge_fhir::instant::format)
        .unwrap_or_default()
}

/// The BALP action code of an interaction.
fn action(subtype: &str) -> &'static str {
    match subtype {
        "create" => "C",
        "read" | "vread" | "history-instance" => "R",
        "update" | "patch" => "U",
        "delete" => "D",
        _ => "E",
    }
}

const SERVER: &str = "trialbridge trial store";

/// An AuditEvent without its id: the id is its place in the chain, given when it is read.
fn event(
    recorded_us: i64,
    agents: Value,
    subtype: &str,
    status: u16,
    description: &str,
    entities: Vec<Value>,
) -> Value {
    let outcome = match status {
        500.. => "8",
        400.. => "4",
        _ => "0",
    };
    // The reason phrase of the status recorded, as the event's outcome description.
    let desc = axum::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut e = json!({
        "resourceType": "AuditEvent",
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": subtype}],
        // An update that created the resource (PUT of a new id) is a create to an inspector.
        "action": if status == 201 { "C" } else { action(subtype) },
        "recorded": instant(recorded_us),
        "outcome": outcome,
        "outcomeDesc": if description.is_empty() { format!("HTTP {status} {desc}") } else { format!("HTTP {status} {description}") },
        "agent": agents,
        "source": {"site": "trialbridge", "observer": {"display": SERVER},
                   "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}]},
    });
    if !entities.is_empty() {
        e["entity"] = Value::Array(entities);
    }
    e
}

fn query_entity(request: &str) -> Value {
    json!({
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"},
        "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "24", "display": "Query"},
        "query": base64::engine::general_purpose::STANDARD.encode(request),
    })
}

fn resource_entity(reference: &str, reason: Option<&str>) -> Value {
    let mut e = json!({
        "what": {"reference": reference},
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"},
    });
    if let Some(r) = reason {
        e["detail"] = json!([{"type": "reason-for-change", "valueString": r}]);
    }
    e
}

/// The event of a change, listing every version written.
pub fn change_event(
    caller: &Caller,
    subtype: &str,
    status: u16,
    versions: &[(&StoredVersion, Option<&str>)],
) -> AuditRecord {
    let entities: Vec<Value> = versions
        .iter()
        .map(|(v, own)| {
            resource_entity(
                &format!("{}/{}/_history/{}", v.resource_type, v.id, v.version),
                own.or(caller.reason.as_deref()),
            )
        })
        .chain(std::iter::once(query_entity(&caller.request)))
        .collect();
    let us = now_us();
    let body = event(
        us,
        AgentRef::of(caller).to_fhir(),
        subtype,
        status,
        "",
        entities,
    );
    AuditRecord {
        recorded_us: us,
        site: versions
            .iter()
            .find_map(|(v, _)| v.site.clone())
            .or_else(|| caller.own_site().map(String::from)),
        entities: versions
            .iter()
            .map(|(v, _)| format!("{}/{}", v.resource_type, v.id))
            .collect(),
        body: body.to_string(),
    }
}

/// Nobody known: a request without a usable token.
fn unauthenticated() -> Value {
    json!([{"who": {"display": "unauthenticated client"}, "requestor": true},
           {"who": {"display": SERVER}, "requestor": false}])
}

fn render(entry: &StoredEntry) -> Value {
    let mut entities = Vec::new();
    if let Some(e) = &entry.entity {
        entities.push(resource_entity(e, entry.reason.as_deref()));
    }
    let mut q = query_entity(&entry.request);
    if entry.agent.is_none() {
        if let Some(a) = entry.request.split_once(" from ").map(|(_, a)| a) {
            q["description"] = json!(format!("from {a}"));
        }
    }
    entities.push(q);
    event(
        entry.recorded_us,
        entry
            .agent
            .as_ref()
            .map_or_else(unauthenticated, Agent::to_fhir),
        &entry.subtype,
        entry.status,
        &entry.description,
        entities,
    )
}

/// The AuditEvents of a stored row of the chain, each with its id: `SEQ` for a change's row,
/// `SEQ.N` for the N-th queued entry of a batch row. `source.site` is the trial site whose
/// data the event concerns (the row's site), else the server.
pub fn expand(row: &StoredAudit) -> Vec<(String, String)> {
    let finish = |id: String, mut e: Value| {
        if let Some(o) = e.as_object_mut() {
            o.insert("id".into(), Value::String(id.clone()));
        }
        if let Some(site) = &row.site {
            e["source"]["site"] = Value::String(site.clone());
        }
        (id, e.to_string())
    };
    if !row.batch {
        let e = serde_json::from_str::<Value>(&row.body).unwrap_or(Value::Null);
        return vec![finish(row.seq.to_string(), e)];
    }
    serde_json::from_str::<Vec<StoredEntry>>(&row.body)
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, e)| finish(format!("{}.{i}", row.seq), render(e)))
        .collect()
}

/// The `Type/id` entities a stored row's body names, sorted and without repeats: what its
/// `audit_entity` rows were filed under (for `audit verify` to tell deleted entity rows from
/// an edited body).
pub fn entities_named(batch: bool, body: &str) -> Vec<String> {
    let mut out = Vec::new();
    if batch {
        for e in serde_json::from_str::<Vec<StoredEntry>>(body).unwrap_or_default() {
            out.extend(e.entity);
        }
    } else if let Ok(v) = serde_json::from_str::<Value>(body) {
        for e in v["entity"].as_array().into_iter().flatten() {
            if let Some(r) = e.pointer("/what/reference").and_then(Value::as_str) {
                let mut parts = r.splitn(3, '/');
                if let (Some(t), Some(id)) = (parts.next(), parts.next()) {
                    out.push(format!("{t}/{id}"));
                }
            }
        }
    }
    trialbridge_storage::audit_entities_of(&out)
}

/// The interaction a request path names (for requests audited after the fact).
pub(crate) fn interaction_of(method: &str, segments: &[&str]) -> &'static str {
    if segments.iter().any(|s| s.starts_with('$')) {
        return "operation";
    }
    match (method, segments) {
        ("GET", []) => "search-system",
        ("POST", []) => "transaction",
        ("GET", ["_history"]) => "history-system",
        ("GET", [_]) | ("POST", [_, "_search"]) => "search-type",
        ("POST", [_]) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", _) => "delete",
        ("GET", [_, "_history"]) => "history-type",
        ("GET", [_, _]) => "read",
        ("GET", [_, _, "_history"]) => "history-instance",
        ("GET", [_, _, "_history", _]) => "vread",
        ("GET", [_, _, _]) => "search-type",
        _ => "operation",
    }
}

/// Audits a request the handler did not audit itself.
pub async fn request(
    store: &dyn ResourceStore,
    caller: &Caller,
    path: &str,
    status: u16,
    site: Option<String>,
) {
    let method = caller.request.split(' ').next().unwrap_or("");
    let segments: Vec<&str> = path
        .trim_start_matches("/fhir")
        .split('/')
        .filter(|x| !x.is_empty())
        .collect();
    let entity = match segments.as_slice() {
        [t, id, ..] if !t.starts_with('$') && !id.starts_with('$') && !id.starts_with('_') => {
            Some(format!("{t}/{id}"))
        }
        _ => None,
    };
    let entry = Entry {
        recorded_us: now_us(),
        subtype: interaction_of(method, &segments),
        status,
        description: "",
        agent: Some(AgentRef::of(caller)),
        request: &caller.request,
        entity: entity.as_deref(),
        reason: caller.reason.as_deref(),
    };
    let about = entity.clone();
    queue(store, entry, site, about).await;
}

/// Audits a request refused before it had a caller (no or a bad token).
pub async fn refused(store: &dyn ResourceStore, request: &str, address: Option<&str>, why: &str) {
    let method = request.split(' ').next().unwrap_or("");
    // Anyone can send these: keep each one compact, whatever the request carried.
    let request = trialbridge_auth::clip(request, 512);
    let why = trialbridge_auth::clip(why, 256);
    let request = match address {
        Some(a) => format!("{request} from {a}"),
        None => request,
    };
    let entry: Entry<&str, &[String]> = Entry {
        recorded_us: now_us(),
        subtype: if method == "GET" { "read" } else { "operation" },
        status: 401,
        description: &why,
        agent: None,
        request: &request,
        entity: None,
        reason: None,
    };
    queue(store, entry, None, None).await;
}

async fn queue(
    store: &dyn ResourceStore,
    entry: Entry<&str, &[String]>,
    site: Option<String>,
    entity: Option<String>,
) {
    let record = AuditRecord {
        recorded_us: entry.recorded_us,
        site,
        entities: entity.into_iter().collect(),
        body: serde_json::to_string(&entry).unwrap_or_default(),
    };
    if let Err(e) = store.audit(record).await {
        tracing::error!(error = %e, "an audit event could not be queued");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interactions_from_paths() {
        assert_eq!(interaction_of("GET", &["Observation", "1"]), "read");
        assert_eq!(interaction_of("GET", &["Observation"]), "search-type");
        assert_eq!(
            interaction_of("GET", &["Observation", "1", "_history", "2"]),
            "vread"
        );
        assert_eq!(interaction_of("GET", &["$export"]), "operation");
        assert_eq!(interaction_of("POST", &[]), "transaction");
        assert_eq!(interaction_of("DELETE", &["Observation", "1"]), "delete");
    }

    #[test]
    fn a_queued_entry_renders_as_the_audit_event_of_its_request() {
        let entry: StoredEntry = Entry {
            recorded_us: 1_780_000_000_000_000,
            subtype: "read".into(),
            status: 404,
            description: String::new(),
            agent: Some(Agent {
                subject: "cra-7".into(),
                client: None,
                role: "monitor".into(),
                sites: vec!["mesemcart-site-01".into()],
                address: Some("10.0.0.7".into()),
                tool: false,
            }),
            request: "GET /fhir/Observation/x".into(),
            entity: Some("Observation/x".into()),
            reason: None,
        };
        let row = StoredAudit {
            seq: 9,
            recorded_us: entry.recorded_us,
            site: None,
            batch: true,
            body: serde_json::to_string(&vec![entry.clone(), entry]).unwrap(),
            prev_hash: String::new(),
            hash: String::new(),
            hash_version: 2,
        };
        let events = expand(&row);
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].0, "9.1");
        let e: Value = serde_json::from_str(&events[0].1).unwrap();
        assert_eq!(e["id"], "9.0");
        assert_eq!(e["action"], "R");
        assert_eq!(e["outcome"], "4");
        assert_eq!(e["agent"][0]["who"]["identifier"]["value"], "cra-7");
        assert_eq!(e["agent"][0]["network"]["address"], "10.0.0.7");
        assert_eq!(e["entity"][0]["what"]["reference"], "Observation/x");
        let report = trialbridge_validation::validate_resource(&e, &Default::default());
        assert!(!report.has_errors(), "{:?}", report.to_outcome());
    }
}
