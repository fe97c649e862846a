//! The audit trail: one FHIR AuditEvent (IHE BALP style codes) per request. A change is
//! audited by [`write_audited`] inside the write transaction it records (the storage refuses
//! a change without one); everything else (reads, searches, refusals, failures) by the
//! access middleware once the response is known.

use axum::http::StatusCode;
use base64::Engine;
use futures::future::BoxFuture;
use serde_json::{json, Value};
use trialbridge_storage::{AuditRecord, ResourceStore, StoredVersion, WriteTxn};

use crate::access::Caller;
use crate::error::ApiError;
use crate::interactions::Written;
use crate::StoreState;

/// What a write returns that the audit event lists.
pub trait Changes {
    /// The versions written, each with its own reason for change when it has one (a
    /// Provenance in the same transaction) that differs from the request's.
    fn versions(&self) -> Vec<(&StoredVersion, Option<&str>)>;
}

impl Changes for Written {
    fn versions(&self) -> Vec<(&StoredVersion, Option<&str>)> {
        self.version.iter().map(|v| (v, None)).collect()
    }
}

/// Runs `f` in a write transaction and records its AuditEvent in the same transaction: the
/// change and its audit commit together or not at all.
pub async fn write_audited<T, F>(
    store: &dyn ResourceStore,
    caller: &Caller,
    subtype: &'static str,
    f: F,
) -> Result<T, ApiError>
where
    T: Changes + Send + 'static,
    F: for<'a> FnOnce(&'a mut dyn WriteTxn) -> BoxFuture<'a, Result<T, ApiError>> + Send + 'static,
{
    let who = caller.clone();
    trialbridge_storage::write(store, &caller.ctx, move |txn| {
        Box::pin(async move {
            let out = f(&mut *txn).await?;
            let record = change_event(&who, subtype, &out.versions());
            txn.audit(record).await?;
            Ok(out)
        })
    })
    .await
}

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
        "update" => "U",
        "delete" => "D",
        _ => "E",
    }
}

fn agents(caller: &Caller) -> Value {
    let user = match &caller.principal {
        Some(p) => {
            let mut who = json!({"identifier": {"system": "urn:trialbridge:token-subject", "value": p.subject}});
            if let Some(c) = &p.client {
                who["display"] = json!(format!("{} via {c}", p.subject));
            }
            let mut a = json!({
                "who": who, "requestor": true,
                "role": [{"text": trialbridge_auth::role_name(p.role)}],
            });
            if !p.sites.is_empty() {
                a["location"] = json!({"display": p.sites.join(" ")});
            }
            if let Some(addr) = &caller.address {
                a["network"] = json!({"address": addr, "type": "2"});
            }
            a
        }
        None => {
            json!({"who": {"display": caller.ctx.agent}, "requestor": true, "role": [{"text": "system"}]})
        }
    };
    json!([user, {"who": {"display": "trialbridge trial store"}, "requestor": false}])
}

fn event(
    caller: Option<&Caller>,
    subtype: &str,
    status: StatusCode,
    description: &str,
    entities: Vec<Value>,
) -> (String, i64, Value) {
    let id = uuid::Uuid::now_v7().to_string();
    let us = now_us();
    let outcome = if status.is_server_error() {
        "8"
    } else if status.is_client_error() {
        "4"
    } else {
        "0"
    };
    let mut e = json!({
        "resourceType": "AuditEvent",
        "id": id,
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": subtype}],
        "action": action(subtype),
        "recorded": instant(us),
        "outcome": outcome,
        "outcomeDesc": format!("HTTP {} {}", status.as_u16(), description),
        "agent": match caller {
            Some(c) => agents(c),
            None => json!([{"who": {"display": "unauthenticated client"}, "requestor": true},
                           {"who": {"display": "trialbridge trial store"}, "requestor": false}]),
        },
        "source": {"site": "trialbridge", "observer": {"display": "trialbridge trial store"},
                   "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}]},
    });
    if !entities.is_empty() {
        e["entity"] = Value::Array(entities);
    }
    (id, us, e)
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
    let (id, us, body) = event(Some(caller), subtype, StatusCode::OK, "", entities);
    AuditRecord {
        id,
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

/// The interaction a request path names (for requests audited after the fact).
fn interaction_of(method: &str, segments: &[&str]) -> &'static str {
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
pub async fn request(s: &StoreState, caller: &Caller, path: &str, status: StatusCode) {
    let method = caller.request.split(' ').next().unwrap_or("");
    let segments: Vec<&str> = path
        .trim_start_matches("/fhir")
        .split('/')
        .filter(|x| !x.is_empty())
        .collect();
    let subtype = interaction_of(method, &segments);
    let mut entities = Vec::new();
    let mut about = Vec::new();
    if let [t, id, ..] = segments.as_slice() {
        if !t.starts_with('$') && !id.starts_with('$') && !id.starts_with('_') {
            let r = format!("{t}/{id}");
            entities.push(resource_entity(&r, caller.reason.as_deref()));
            about.push(r);
        }
    }
    entities.push(query_entity(&caller.request));
    let (id, us, body) = event(Some(caller), subtype, status, "", entities);
    store(
        s,
        AuditRecord {
            id,
            recorded_us: us,
            site: caller.own_site().map(String::from),
            entities: about,
            body: body.to_string(),
        },
    )
    .await;
}

/// Audits a request refused before it had a caller (no or a bad token).
pub async fn refused(s: &StoreState, request: &str, address: Option<&str>, why: &str) {
    let method = request.split(' ').next().unwrap_or("");
    let subtype = if method == "GET" { "read" } else { "operation" };
    let mut entity = query_entity(request);
    if let Some(a) = address {
        entity["description"] = json!(format!("from {a}"));
    }
    let (id, us, body) = event(None, subtype, StatusCode::UNAUTHORIZED, why, vec![entity]);
    store(
        s,
        AuditRecord {
            id,
            recorded_us: us,
            site: None,
            entities: Vec::new(),
            body: body.to_string(),
        },
    )
    .await;
}

async fn store(s: &StoreState, record: AuditRecord) {
    if let Err(e) = s.store.audit(record).await {
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
}
