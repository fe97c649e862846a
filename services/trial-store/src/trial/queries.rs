//! Data queries, the other half of a monitoring visit: a monitor raises a query on one version
//! of a value (`POST [type]/{id}/$raise-query`), the site answers it, after correcting the value
//! with a reason for change or with an explanation (`POST Task/{id}/$answer`), and the monitor
//! closes it (`POST Task/{id}/$close`). A query is a FHIR Task: `focus` the value's version,
//! `for` the subject's Patient, `owner` the site study, `requester` the monitor, the thread in
//! `note`, the state in `status` (requested → in-progress → completed) and `businessStatus`
//! (open → answered → closed). Only these three operations write query Tasks (the protocol
//! rules refuse any other write of one), and each step is audited like any change.

use serde_json::{json, Value};
use trialbridge_auth::Interaction;
use trialbridge_fhir::IssueType;
use trialbridge_storage::Role;

use crate::error::{Status, StoreError};
use crate::fhir::interactions::{self, found, Written};
use crate::fhir::StoreState;
use crate::security::audit::write_audited;
use crate::security::Caller;

/// The code of a data query Task (system and code).
pub const QUERY_CODE: (&str, &str) = ("urn:trialbridge:monitor", "data-query");

/// The identifier system of a site study named in `Task.owner`.
pub const SITE_STUDY_SYSTEM: &str = "urn:trialbridge:site-study";

/// The state of a query as people name it (`Task.businessStatus.text`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryState {
    /// Raised by the monitor, waiting for the site.
    Open,
    /// Answered by the site, waiting for the monitor.
    Answered,
    /// Closed by the monitor.
    Closed,
}

impl QueryState {
    /// The state's name (`open`, `answered`, `closed`).
    pub fn name(self) -> &'static str {
        match self {
            QueryState::Open => "open",
            QueryState::Answered => "answered",
            QueryState::Closed => "closed",
        }
    }

    /// The FHIR Task status of the state.
    fn task_status(self) -> &'static str {
        match self {
            QueryState::Open => "requested",
            QueryState::Answered => "in-progress",
            QueryState::Closed => "completed",
        }
    }

    /// The state of a stored query Task.
    pub fn of(task: &Value) -> Option<Self> {
        match task["status"].as_str()? {
            "requested" => Some(QueryState::Open),
            "in-progress" => Some(QueryState::Answered),
            "completed" => Some(QueryState::Closed),
            _ => None,
        }
    }
}

/// Whether a resource is a data query Task.
pub fn is_query(v: &Value) -> bool {
    v["resourceType"] == "Task"
        && v.pointer("/code/coding")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|c| c["system"] == QUERY_CODE.0 && c["code"] == QUERY_CODE.1)
}

/// The operations that write query Tasks.
pub fn writes_queries(operation: Option<&str>) -> bool {
    matches!(operation, Some("$raise-query" | "$answer" | "$close"))
}

fn bad(msg: impl Into<String>, at: &str) -> StoreError {
    StoreError::new(Status::BadRequest, IssueType::Value, msg).at(at.to_string())
}

/// The operation's `Parameters` (an empty body is no parameters).
fn parameters(s: &StoreState, bytes: &[u8]) -> Result<Value, StoreError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    let v = trialbridge_validation::json_text::parse(bytes, &s.config.validation.limits)
        .map_err(|i| StoreError::from_issue(Status::BadRequest, i))?;
    if v["resourceType"] != "Parameters" {
        return Err(bad("the body is a Parameters resource", "resourceType"));
    }
    Ok(v)
}

/// The `valueString` of parameter `name`, trimmed; `None` when absent or blank.
fn text_param(params: &Value, name: &str) -> Result<Option<String>, StoreError> {
    let Some(p) = params["parameter"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
    else {
        return Ok(None);
    };
    match p["valueString"].as_str() {
        Some(t) if !t.trim().is_empty() => Ok(Some(t.trim().to_string())),
        Some(_) => Ok(None),
        None => Err(bad(
            format!("{name} is a valueString"),
            "Parameters.parameter",
        )),
    }
}

/// Who the caller is, as the audit trail and the thread name them.
fn person(caller: &Caller) -> String {
    caller
        .principal
        .as_ref()
        .map_or(caller.ctx.agent.clone(), |p| p.subject.clone())
}

fn now() -> String {
    trialbridge_fhir::instant::format(time::OffsetDateTime::now_utc())
}

fn note(caller: &Caller, what: &str, text: &str) -> Value {
    json!({"authorString": format!("{} ({})", person(caller), trialbridge_auth::role_name(caller.role())),
           "time": now(), "text": format!("{what}: {text}")})
}

/// `POST [type]/{id}/$raise-query` (monitors): a query about version `version` (default the
/// current one) of a value, with its `text`, owned by the value's site.
pub async fn raise(
    s: &StoreState,
    caller: &Caller,
    (rt, id): (&'static str, &str),
    bytes: &[u8],
) -> Result<Written, StoreError> {
    caller.require_role(&[Role::Monitor, Role::System], "raise a data query")?;
    caller.require(rt, Interaction::Read)?;
    let current = found(rt, id, s.store.read(&caller.ctx, rt, id).await?)?;
    let params = parameters(s, bytes)?;
    let text = text_param(&params, "text")?
        .ok_or_else(|| bad("a query needs its text", "Parameters.parameter"))?;
    let asked = params["parameter"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "version")
        .cloned();
    let version = interactions::version_asked(s, caller, (rt, id), asked, current.version).await?;
    let body: Value = current
        .body
        .as_deref()
        .and_then(|b| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    let patient = body
        .pointer("/subject/reference")
        .or_else(|| body.pointer("/patient/reference"))
        .or_else(|| body.pointer("/individual/reference"))
        .cloned();
    let state = QueryState::Open;
    let mut task = json!({
        "resourceType": "Task",
        "status": state.task_status(),
        "businessStatus": {"text": state.name()},
        "intent": "order",
        "code": {"coding": [{"system": QUERY_CODE.0, "code": QUERY_CODE.1, "display": "Data query"}]},
        "description": text,
        "focus": {"reference": format!("{rt}/{id}/_history/{version}")},
        "authoredOn": now(),
        "lastModified": now(),
        "requester": {"identifier": {"system": "urn:trialbridge:token-subject", "value": person(caller)}},
        "note": [note(caller, "raised", &text)],
    });
    if let Some(p) = patient {
        task["for"] = json!({"reference": p});
    }
    if let Some(site) = &current.site {
        // The site answers: Task.owner may not reference a ResearchStudy, so the site study
        // is named by identifier.
        task["owner"] =
            json!({"identifier": {"system": SITE_STUDY_SYSTEM, "value": site}, "display": site});
        task["extension"] = json!([{"url": "http://hl7.org/fhir/StructureDefinition/workflow-researchStudy",
                                    "valueReference": {"reference": format!("ResearchStudy/{site}")}}]);
    }
    let raw = trialbridge_fhir::json::RawResource::from_value(&task);
    let res = interactions::incoming("Task", raw, task, &s.config.validation)?;
    let tid = uuid::Uuid::now_v7().to_string();
    let (c, rules) = (caller.running("$raise-query"), s.rules.clone());
    write_audited(&*s.store, caller, "create", move |txn| {
        Box::pin(async move { interactions::create(txn, &c, &*rules, &res, &tid, None).await })
    })
    .await
}

/// One step of a query's life: `Task/{id}` must be a query in state `from`; it moves to `to`
/// with a note in the thread (and what `adjust` adds), written with `If-Match` so that two
/// steps at once cannot both pass.
async fn step(
    s: &StoreState,
    caller: &Caller,
    id: &str,
    operation: &'static str,
    (from, to): (&[QueryState], QueryState),
    text: &str,
    adjust: impl FnOnce(&mut Value),
) -> Result<Written, StoreError> {
    let current = found("Task", id, s.store.read(&caller.ctx, "Task", id).await?)?;
    let mut task: Value = current
        .body
        .as_deref()
        .and_then(|b| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    if !is_query(&task) {
        return Err(StoreError::new(
            Status::BadRequest,
            IssueType::NotSupported,
            format!("Task/{id} is not a data query"),
        )
        .at("Task.code"));
    }
    let state = QueryState::of(&task);
    if !state.is_some_and(|st| from.contains(&st)) {
        return Err(StoreError::new(
            Status::Unprocessable,
            IssueType::BusinessRule,
            format!(
                "the query is {}; {operation} applies to a query that is {}",
                state.map_or("in no known state", QueryState::name),
                from.iter()
                    .map(|s| s.name())
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
        )
        .at("Task.status"));
    }
    if let Value::Object(m) = &mut task {
        m.remove("meta");
    }
    task["status"] = json!(to.task_status());
    task["businessStatus"] = json!({"text": to.name()});
    task["lastModified"] = json!(now());
    let what = match to {
        QueryState::Open => "reopened",
        QueryState::Answered => "answered",
        QueryState::Closed => "closed",
    };
    match task["note"].as_array_mut() {
        Some(n) => n.push(note(caller, what, text)),
        None => task["note"] = json!([note(caller, what, text)]),
    }
    adjust(&mut task);
    let raw = trialbridge_fhir::json::RawResource::from_value(&task);
    let res = interactions::incoming("Task", raw, task, &s.config.validation)?;
    let (c, rules, id, expected) = (
        caller.running(operation),
        s.rules.clone(),
        id.to_string(),
        current.version,
    );
    write_audited(&*s.store, caller, "update", move |txn| {
        Box::pin(
            async move { interactions::update(txn, &c, &*rules, &res, &id, Some(expected)).await },
        )
    })
    .await
}

/// `POST Task/{id}/$answer` (the site): answers an open query with `text`. When the queried
/// value has a newer version than the one queried (the site corrected it, with its reason for
/// change), the answer names that version as `output` `correction`.
pub async fn answer(
    s: &StoreState,
    caller: &Caller,
    id: &str,
    bytes: &[u8],
) -> Result<Written, StoreError> {
    caller.require_role(&[Role::Site, Role::System], "answer a data query")?;
    let params = parameters(s, bytes)?;
    let text = text_param(&params, "text")?
        .ok_or_else(|| bad("an answer needs its text", "Parameters.parameter"))?;
    let task = found("Task", id, s.store.read(&caller.ctx, "Task", id).await?)?;
    let focus = task
        .body
        .as_deref()
        .and_then(|b| serde_json::from_str::<Value>(b).ok())
        .and_then(|t| {
            t.pointer("/focus/reference")
                .and_then(Value::as_str)
                .map(String::from)
        })
        .unwrap_or_default();
    let mut correction = None;
    if let Some((entity, v)) = focus.split_once("/_history/") {
        if let (Some((rt, rid)), Ok(queried)) = (entity.split_once('/'), v.parse::<i64>()) {
            if let Some(now) = s.store.read(&caller.ctx, rt, rid).await? {
                if now.version > queried {
                    correction = Some(format!("{rt}/{rid}/_history/{}", now.version));
                }
            }
        }
    }
    step(
        s,
        caller,
        id,
        "$answer",
        (&[QueryState::Open], QueryState::Answered),
        &text,
        |t| {
            let mut out = vec![json!({"type": {"text": "answer"}, "valueString": text})];
            if let Some(c) = correction {
                out.push(
                    json!({"type": {"text": "correction"}, "valueReference": {"reference": c}}),
                );
            }
            t["output"] = json!(out);
        },
    )
    .await
}

/// `POST Task/{id}/$close` (monitors): closes an answered query (or withdraws an open one),
/// with an optional `text`.
pub async fn close(
    s: &StoreState,
    caller: &Caller,
    id: &str,
    bytes: &[u8],
) -> Result<Written, StoreError> {
    caller.require_role(&[Role::Monitor, Role::System], "close a data query")?;
    let params = parameters(s, bytes)?;
    let text = text_param(&params, "text")?.unwrap_or_else(|| "closed".to_string());
    step(
        s,
        caller,
        id,
        "$close",
        (
            &[QueryState::Open, QueryState::Answered],
            QueryState::Closed,
        ),
        &text,
        |_| {},
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_task_status() {
        for st in [QueryState::Open, QueryState::Answered, QueryState::Closed] {
            let t = json!({"status": st.task_status()});
            assert_eq!(QueryState::of(&t), Some(st));
        }
        assert_eq!(QueryState::of(&json!({"status": "cancelled"})), None);
    }

    #[test]
    fn only_tasks_with_the_query_code_are_queries() {
        let q = json!({"resourceType": "Task", "code": {"coding": [{"system": QUERY_CODE.0, "code": QUERY_CODE.1}]}});
        assert!(is_query(&q));
        let other = json!({"resourceType": "Task", "code": {"coding": [{"system": "x", "code": QUERY_CODE.1}]}});
        assert!(!is_query(&other));
        let obs = json!({"resourceType": "Observation", "code": q["code"]});
        assert!(!is_query(&obs));
    }
}
