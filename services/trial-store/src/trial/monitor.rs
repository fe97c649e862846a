//! What monitors (CRAs) use for remote source data verification: the audit trail as FHIR
//! AuditEvents, `ResearchSubject/{id}/$sdv` (every clinical value of a subject with its source,
//! its versions with who, when and why, and whether it was verified), `[type]/{id}/$diff`
//! between two versions, and `[type]/{id}/$verify`, the one write a monitor makes (a
//! Provenance with a `verifier` agent, audited like any change).

use std::collections::HashMap;

use serde_json::{json, Value};
use trialbridge_auth::Interaction;
use trialbridge_fhir::IssueType;
use trialbridge_storage::{AuditQuery, HistoryQuery, HistoryScope, Role, StoredVersion};

use crate::error::{Status, StoreError};
use crate::fhir::interactions::{self, checked_id, found, Written};
use crate::fhir::StoreState;
use crate::security::audit::write_audited;
use crate::security::Caller;
use crate::trial::queries::{is_query, writes_queries, QueryState};

/// The types whose values a monitor verifies for a subject.
const CLINICAL: &[&str] = &["AdverseEvent", "Condition", "Observation", "Procedure"];

/// The `verifier` participant type of a verification Provenance.
const VERIFIER: &str = "http://terminology.hl7.org/CodeSystem/provenance-participant-type";

/// The tag `$verify` puts on the Provenance it writes: `$sdv` counts only these.
pub const VERIFICATION_TAG: (&str, &str) = ("urn:trialbridge:monitor", "source-data-verification");

/// The code of the DetectedIssues the protocol rules record.
const DEVIATION: &str = "protocol-deviation";

/// Whether a resource is monitor evidence: a Provenance with a `verifier` agent or the
/// verification tag.
fn is_verification(v: &Value) -> bool {
    v["resourceType"] == "Provenance"
        && (v["agent"].as_array().into_iter().flatten().any(|a| {
            a["type"]["coding"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["code"] == "verifier")
        }) || has_verification_tag(v))
}

fn has_verification_tag(v: &Value) -> bool {
    v.pointer("/meta/tag")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|t| t["system"] == VERIFICATION_TAG.0 && t["code"] == VERIFICATION_TAG.1)
}

/// Whether a resource is a protocol deviation the store recorded.
fn is_deviation(v: &Value) -> bool {
    v["resourceType"] == "DetectedIssue"
        && v.pointer("/code/coding")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|c| c["code"] == DEVIATION)
}

/// Monitor evidence is written by the monitor's operations (`$verify`; `$raise-query`,
/// `$answer` and `$close` for data queries) and protocol deviations by the store's own rules;
/// nobody else writes either, so a site cannot forge them, and what is recorded is never
/// edited into something else (`current` is the stored version a write would replace).
/// trialbridge's own tools (the system) may load them.
pub fn evidence_is_the_monitors(
    caller: &Caller,
    v: &Value,
    current: Option<&Value>,
) -> Result<(), StoreError> {
    if caller.is_system() {
        return Ok(());
    }
    if is_verification(v) && caller.operation != Some("$verify") {
        return Err(crate::error::forbidden(
            "a Provenance with a verifier agent is a monitor's verification: only $verify writes it".into(),
        )
        .at("Provenance.agent"));
    }
    if is_deviation(v) {
        return Err(crate::error::forbidden(
            "protocol-deviation DetectedIssues are recorded by the trial store's protocol rules only".into(),
        )
        .at("DetectedIssue.code"));
    }
    if (is_query(v) || current.is_some_and(is_query)) && !writes_queries(caller.operation) {
        return Err(crate::error::forbidden(
            "a data query Task is written by $raise-query, $answer and $close only".into(),
        )
        .at("Task.code"));
    }
    if let Some(c) = current.filter(|c| is_verification(c) || is_deviation(c)) {
        return Err(crate::error::forbidden(format!(
            "{} is monitoring evidence: it is kept as it was recorded",
            c["resourceType"].as_str().unwrap_or("the resource")
        )));
    }
    Ok(())
}

/// Whether a write of `resource_type` can touch monitoring evidence (so that the rules read
/// the version it would replace).
pub fn may_be_evidence(resource_type: &str) -> bool {
    matches!(resource_type, "Provenance" | "DetectedIssue" | "Task")
}

/// Verifications, recorded deviations and data queries stay: only the system deletes them.
pub fn evidence_stays(caller: &Caller, current: &Value) -> Result<(), StoreError> {
    if caller.is_system()
        || !(is_verification(current) || is_deviation(current) || is_query(current))
    {
        return Ok(());
    }
    Err(crate::error::forbidden(format!(
        "{} is monitoring evidence: it is kept (only the system deletes it)",
        current["resourceType"].as_str().unwrap_or("the resource")
    )))
}

fn bad(msg: impl Into<String>, at: &str) -> StoreError {
    StoreError::new(Status::BadRequest, IssueType::Value, msg).at(at.to_string())
}

fn parse(v: &StoredVersion) -> Value {
    v.body
        .as_deref()
        .and_then(|b| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null)
}

/// Who changed each version of a resource, when and why, from the audit trail.
async fn changes_of(
    s: &StoreState,
    caller: &Caller,
    entity: &str,
) -> Result<HashMap<i64, Value>, StoreError> {
    let q = AuditQuery {
        entity: Some(entity.to_string()),
        count: 10_000,
        ..Default::default()
    };
    let mut out = HashMap::new();
    let rows = s.store.audit_search(&caller.ctx, &q).await?;
    for (id, body) in rows.iter().flat_map(crate::security::audit::expand) {
        let e: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let who = e
            .pointer("/agent/0/who/identifier/value")
            .or_else(|| e.pointer("/agent/0/who/display"))
            .cloned()
            .unwrap_or(Value::Null);
        for ent in e["entity"].as_array().into_iter().flatten() {
            let Some(r) = ent.pointer("/what/reference").and_then(Value::as_str) else {
                continue;
            };
            let Some((base, v)) = r.split_once("/_history/") else {
                continue;
            };
            if base != entity {
                continue;
            }
            if let Ok(v) = v.parse::<i64>() {
                out.insert(
                    v,
                    json!({
                        "who": who, "when": e["recorded"], "action": e["action"],
                        "why": ent.pointer("/detail/0/valueString").cloned().unwrap_or(Value::Null),
                        "auditEvent": format!("AuditEvent/{id}"),
                    }),
                );
            }
        }
    }
    Ok(out)
}

/// Provenances targeting a resource: (sources, verification marks).
async fn provenances(
    s: &StoreState,
    caller: &Caller,
    entity: &str,
) -> Result<(Vec<Value>, Vec<Value>), StoreError> {
    let req = trialbridge_fhir::search::parse(
        "Provenance",
        &[("target".to_string(), entity.to_string())],
        true,
    )
    .map_err(|i| StoreError::from_issue(Status::BadRequest, i))?;
    let page = s
        .store
        .search(&caller.ctx, "Provenance", &req, None, 1000)
        .await?;
    let (mut sources, mut marks) = (Vec::new(), Vec::new());
    for v in &page.versions {
        let p = parse(v);
        // Only what $verify wrote counts as a verification (and an untagged verifier
        // Provenance is no source either).
        if is_verification(&p) {
            if !has_verification_tag(&p) {
                continue;
            }
            marks.push(json!({
                "target": p.pointer("/target/0/reference"),
                "who": p.pointer("/agent/0/who/identifier/value"),
                "when": p["recorded"], "comment": p.pointer("/reason/0/text"),
                "provenance": format!("Provenance/{}", v.id),
            }));
        } else {
            sources.push(json!({
                "system": p.pointer("/agent/0/who/display").or_else(|| p.pointer("/agent/0/who/reference")),
                "message": p.pointer("/entity/0/what/identifier/value").or_else(|| p.pointer("/entity/0/what/reference")),
                "received": p["recorded"],
                "provenance": format!("Provenance/{}", v.id),
            }));
        }
    }
    Ok((sources, marks))
}

/// What a subject's report knows beside each value: the subject's data queries and recorded
/// protocol deviations (one search each, not one per value).
struct SubjectEvidence {
    queries: Vec<(String, Value)>,
    deviations: Vec<(String, Value)>,
}

impl SubjectEvidence {
    async fn of(s: &StoreState, caller: &Caller, patient: &str) -> Result<Self, StoreError> {
        let mut queries = Vec::new();
        if caller.permits("Task", Interaction::Search) {
            queries = search_all(s, caller, "Task", "subject", patient).await?;
            queries.retain(|(_, t)| is_query(t));
        }
        let mut deviations = Vec::new();
        if caller.permits("DetectedIssue", Interaction::Search) {
            deviations = search_all(s, caller, "DetectedIssue", "patient", patient).await?;
            deviations.retain(|(_, d)| is_deviation(d));
        }
        Ok(Self {
            queries,
            deviations,
        })
    }

    /// The queries about any version of `entity` (`Type/id`), oldest first.
    fn queries_of(&self, entity: &str) -> Vec<Value> {
        self.queries
            .iter()
            .filter(|(_, t)| {
                t.pointer("/focus/reference")
                    .and_then(Value::as_str)
                    .is_some_and(|r| r.split("/_history/").next() == Some(entity))
            })
            .map(|(id, t)| query_summary(id, t))
            .collect()
    }

    /// The deviations that implicate `entity`.
    fn deviations_of(&self, entity: &str) -> Vec<Value> {
        self.deviations
            .iter()
            .filter(|(_, d)| {
                d["implicated"].as_array().into_iter().flatten().any(|r| {
                    r["reference"]
                        .as_str()
                        .is_some_and(|r| r.split("/_history/").next() == Some(entity))
                })
            })
            .map(|(id, d)| deviation_summary(id, d))
            .collect()
    }
}

fn query_summary(id: &str, t: &Value) -> Value {
    let output = |name: &str| {
        t["output"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|o| o.pointer("/type/text").and_then(Value::as_str) == Some(name))
            .cloned()
    };
    json!({
        "task": format!("Task/{id}"),
        "state": QueryState::of(t).map(QueryState::name),
        "focus": t.pointer("/focus/reference"),
        "text": t["description"],
        "raised": t["authoredOn"],
        "raisedBy": t.pointer("/requester/identifier/value"),
        "answer": output("answer").map(|o| o["valueString"].clone()),
        "correction": output("correction").and_then(|o| o.pointer("/valueReference/reference").cloned()),
        "thread": t["note"],
    })
}

fn deviation_summary(id: &str, d: &Value) -> Value {
    json!({
        "detectedIssue": format!("DetectedIssue/{id}"),
        "detail": d["detail"],
        "severity": d["severity"],
        "identified": d["identifiedDateTime"],
    })
}

/// Every version of `t` whose `param` is `value` that the caller sees (current ones), all
/// pages.
async fn search_versions(
    s: &StoreState,
    caller: &Caller,
    t: &str,
    param: &str,
    value: &str,
) -> Result<Vec<StoredVersion>, StoreError> {
    let req = trialbridge_fhir::search::parse(t, &[(param.to_string(), value.to_string())], true)
        .map_err(|i| StoreError::from_issue(Status::BadRequest, i))?;
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = s
            .store
            .search(&caller.ctx, t, &req, after.as_ref(), 500)
            .await?;
        out.extend(page.versions);
        match page.next {
            Some(c) => after = Some(c),
            None => return Ok(out),
        }
    }
}

/// [`search_versions`], as (id, body).
async fn search_all(
    s: &StoreState,
    caller: &Caller,
    t: &str,
    param: &str,
    value: &str,
) -> Result<Vec<(String, Value)>, StoreError> {
    let found = search_versions(s, caller, t, param, value).await?;
    Ok(found.iter().map(|v| (v.id.clone(), parse(v))).collect())
}

/// The display of a code: its first coding's own, the concept's text, else what the study's
/// ValueSets or CodeSystems give it.
fn display_of(code: Option<&Value>) -> Option<String> {
    let coding = code?.pointer("/coding/0")?;
    if let Some(d) = coding["display"]
        .as_str()
        .or_else(|| code?["text"].as_str())
    {
        return Some(d.to_string());
    }
    let (system, code) = (coding["system"].as_str()?, coding["code"].as_str()?);
    trialbridge_study::display(system, code)
        .or_else(|| trialbridge_study::code_system_display(system, code))
        .map(String::from)
}

/// One item of `$sdv`: a value with its source, versions, verification state, data queries
/// and protocol deviations.
async fn item(
    s: &StoreState,
    caller: &Caller,
    v: &StoredVersion,
    evidence: &SubjectEvidence,
) -> Result<Value, StoreError> {
    let entity = format!("{}/{}", v.resource_type, v.id);
    let body = parse(v);
    let history = s
        .store
        .history(
            &caller.ctx,
            &HistoryQuery::oldest_first(
                HistoryScope::Instance(v.resource_type.clone(), v.id.clone()),
                0,
                1000,
            ),
        )
        .await?;
    let changes = changes_of(s, caller, &entity).await?;
    let versions: Vec<Value> = history
        .versions
        .iter()
        .map(|h| {
            let mut x =
                json!({"version": h.version, "lastUpdated": h.last_updated, "deleted": h.deleted});
            if let Some(c) = changes.get(&h.version) {
                x["change"] = c.clone();
            }
            x
        })
        .collect();
    let (sources, marks) = provenances(s, caller, &entity).await?;
    let current = format!("{entity}/_history/{}", v.version);
    let verified = marks
        .iter()
        .any(|m| m["target"].as_str() == Some(current.as_str()));
    let verified_version = marks
        .iter()
        .filter_map(|m| {
            m["target"]
                .as_str()?
                .split_once("/_history/")?
                .1
                .parse::<i64>()
                .ok()
        })
        .max();
    let value = [
        "valueQuantity",
        "valueCodeableConcept",
        "valueString",
        "valueInteger",
        "valueBoolean",
        "valueDateTime",
    ]
    .iter()
    .find_map(|k| body.get(*k).map(|x| json!({*k: x})));
    let queries = evidence.queries_of(&entity);
    let open_queries = queries.iter().filter(|q| q["state"] != "closed").count();
    Ok(json!({
        "resource": current,
        "type": v.resource_type,
        "code": body.get("code"),
        "display": display_of(body.get("code")),
        "visit": visit_of(&body),
        "value": value,
        "effective": body.get("effectiveDateTime").or_else(|| body.get("performedDateTime")).or_else(|| body.get("onsetDateTime")).or_else(|| body.get("date")),
        "sources": sources,
        "versions": versions,
        "verified": verified,
        "verifiedVersion": verified_version,
        "changedSinceVerification": !verified && verified_version.is_some(),
        "verifications": marks,
        "queries": queries,
        "openQueries": open_queries,
        "deviations": evidence.deviations_of(&entity),
    }))
}

/// The visit a value belongs to, from the MesemCart visit extension (`v0`..`v9`).
fn visit_of(body: &Value) -> Option<String> {
    body["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["url"] == trialbridge_validation::protocol::VISIT_EXTENSION)
        .and_then(|e| {
            e.get("valueCanonical")
                .or_else(|| e.get("valueString"))
                .or_else(|| e.get("valueCode"))
                .or_else(|| e.pointer("/valueCoding/code"))
                .or_else(|| e.pointer("/valueReference/reference"))
                .and_then(Value::as_str)
                .map(|v| v.rsplit(['/', '-']).next().unwrap_or(v).to_string())
        })
}

/// `GET ResearchSubject/{id}/$sdv[?unverified=true]` (the subject's clinical values for
/// source data verification) and `GET ResearchStudy/{id}/$sdv` (a site's worklist, see
/// [`site_sdv`]), as JSON reports (`application/json`).
pub async fn sdv(
    s: &StoreState,
    caller: &Caller,
    (t, id): (&str, &str),
    pairs: &[(String, String)],
) -> Result<Value, StoreError> {
    match t {
        "ResearchSubject" => {
            let only_unverified = pairs.iter().any(|(k, v)| k == "unverified" && v == "true");
            subject_sdv(s, caller, id, only_unverified).await
        }
        "ResearchStudy" => site_sdv(s, caller, id, pairs).await,
        _ => Err(StoreError::new(
            Status::NotFound,
            IssueType::NotSupported,
            "$sdv is an operation on ResearchSubject and ResearchStudy",
        )),
    }
}

fn require_sdv_reads(caller: &Caller) -> Result<(), StoreError> {
    for t in std::iter::once("ResearchSubject").chain(CLINICAL.iter().copied()) {
        caller.require(t, Interaction::Read)?;
    }
    Ok(())
}

async fn subject_sdv(
    s: &StoreState,
    caller: &Caller,
    id: &str,
    only_unverified: bool,
) -> Result<Value, StoreError> {
    checked_id("ResearchSubject", id)?;
    require_sdv_reads(caller)?;
    let subject = found(
        "ResearchSubject",
        id,
        s.store.read(&caller.ctx, "ResearchSubject", id).await?,
    )?;
    subject_report(s, caller, &subject, only_unverified).await
}

/// The `$sdv` report of a subject the caller has read.
async fn subject_report(
    s: &StoreState,
    caller: &Caller,
    subject: &StoredVersion,
    only_unverified: bool,
) -> Result<Value, StoreError> {
    let id = &subject.id;
    let sb = parse(subject);
    let patient = sb
        .pointer("/individual/reference")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let evidence = SubjectEvidence::of(s, caller, &patient).await?;
    let mut items = vec![item(s, caller, subject, &evidence).await?];
    for t in CLINICAL {
        let param = if *t == "AdverseEvent" {
            "subject"
        } else {
            "patient"
        };
        for v in search_versions(s, caller, t, param, &patient).await? {
            items.push(item(s, caller, &v, &evidence).await?);
        }
    }
    let total = items.len();
    let count = |f: &dyn Fn(&Value) -> bool| items.iter().filter(|i| f(i)).count();
    let unverified = count(&|i| i["verified"] != json!(true));
    let changed = count(&|i| i["changedSinceVerification"] == json!(true));
    let open_queries: u64 = items.iter().filter_map(|i| i["openQueries"].as_u64()).sum();
    if only_unverified {
        items.retain(|i| i["verified"] != json!(true));
    }
    Ok(json!({
        "subject": format!("ResearchSubject/{id}"),
        "identifier": sb.pointer("/identifier/0/value"),
        "patient": patient,
        "status": sb.get("status"),
        "site": subject.site,
        "values": total, "verified": total - unverified, "unverified": unverified,
        "changedSinceVerification": changed,
        "openQueries": open_queries,
        "deviations": evidence.deviations.iter().map(|(id, d)| deviation_summary(id, d)).collect::<Vec<_>>(),
        "items": items,
    }))
}

/// `GET ResearchStudy/{id}/$sdv?_count=&_offset=`: the worklist of a site study (or of every
/// site the caller sees, for the main study): one row per subject, in id order, with how many
/// values are verified, unverified and changed since their verification, its open queries and
/// its protocol deviations. Paged, because each row is a subject's whole report.
pub async fn site_sdv(
    s: &StoreState,
    caller: &Caller,
    id: &str,
    pairs: &[(String, String)],
) -> Result<Value, StoreError> {
    checked_id("ResearchStudy", id)?;
    require_sdv_reads(caller)?;
    // The study as stored (an administrator may have edited it), else as built in.
    let title = match s.store.read(&caller.ctx, "ResearchStudy", id).await? {
        Some(v) if !v.deleted => parse(&v)["title"].clone(),
        _ => trialbridge_study::resource("ResearchStudy", id)
            .map(|r| r["title"].clone())
            .ok_or_else(|| {
                StoreError::new(
                    Status::NotFound,
                    IssueType::NotFound,
                    format!("ResearchStudy/{id} is not known"),
                )
            })?,
    };
    let sites: Vec<String> = if trialbridge_study::site_studies().iter().any(|x| x == id) {
        vec![id.to_string()]
    } else {
        trialbridge_study::site_studies().to_vec()
    };
    let sites: Vec<String> = match &caller.ctx.sites {
        trialbridge_storage::SiteScope::All => sites,
        trialbridge_storage::SiteScope::Only(mine) => {
            sites.into_iter().filter(|x| mine.contains(x)).collect()
        }
    };
    if sites.is_empty() {
        return Err(crate::error::forbidden(format!(
            "ResearchStudy/{id} is not a site this token is assigned to"
        )));
    }
    let number = |k: &str, default: usize, max: usize| -> Result<usize, StoreError> {
        match pairs.iter().find(|(n, _)| n == k) {
            None => Ok(default),
            Some((_, v)) => v
                .parse::<usize>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| bad(format!("{k} must be a number up to {max}"), k)),
        }
    };
    let count = number("_count", 20, 100)?.max(1);
    let offset = number("_offset", 0, usize::MAX)?;
    let mut subjects = Vec::new();
    for site in &sites {
        let study = format!("ResearchStudy/{site}");
        subjects.extend(search_versions(s, caller, "ResearchSubject", "study", &study).await?);
    }
    subjects.sort_by(|a, b| a.id.cmp(&b.id));
    subjects.dedup_by(|a, b| a.id == b.id);
    let mut rows = Vec::new();
    for subject in subjects.iter().skip(offset).take(count) {
        let r = subject_report(s, caller, subject, false).await?;
        rows.push(json!({
            "subject": r["subject"], "identifier": r["identifier"], "status": r["status"],
            "site": r["site"], "values": r["values"], "verified": r["verified"],
            "unverified": r["unverified"], "changedSinceVerification": r["changedSinceVerification"],
            "openQueries": r["openQueries"],
            "deviations": r["deviations"].as_array().map_or(0, Vec::len),
        }));
    }
    let mut report = json!({
        "study": format!("ResearchStudy/{id}"),
        "title": title,
        "sites": sites,
        "total": subjects.len(), "offset": offset, "count": count,
        "subjects": rows,
    });
    if offset + count < subjects.len() {
        report["next"] = json!(format!(
            "ResearchStudy/{id}/$sdv?_count={count}&_offset={}",
            offset + count
        ));
    }
    Ok(report)
}

/// The differences between two JSON values, as (path, operation, old, new).
fn diff(path: &str, a: &Value, b: &Value, out: &mut Vec<Value>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                let p = format!("{path}.{k}");
                match y.get(k) {
                    Some(vb) => diff(&p, va, vb, out),
                    None => out.push(json!({"path": p, "op": "remove", "old": va})),
                }
            }
            for (k, vb) in y {
                if !x.contains_key(k) {
                    out.push(json!({"path": format!("{path}.{k}"), "op": "add", "new": vb}));
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                diff(&format!("{path}[{i}]"), va, vb, out);
            }
        }
        _ if a == b => {}
        _ => out.push(json!({"path": path, "op": "replace", "old": a, "new": b})),
    }
}

/// `GET [type]/{id}/$diff?from=N&to=M` (default: the previous and the current version): what
/// changed, element by element (`meta` left out), with who, when and why of `to`.
pub async fn version_diff(
    s: &StoreState,
    caller: &Caller,
    (rt, id): (&'static str, &str),
    pairs: &[(String, String)],
) -> Result<Value, StoreError> {
    caller.require(rt, Interaction::Read)?;
    let current = found(rt, id, s.store.read(&caller.ctx, rt, id).await?)?;
    let num = |k: &str, default: i64| -> Result<i64, StoreError> {
        match pairs.iter().find(|(n, _)| n == k) {
            None => Ok(default),
            Some((_, v)) => v
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| bad(format!("{k} must be a version number"), k)),
        }
    };
    let to = num("to", current.version)?;
    let from = num("from", (to - 1).max(1))?;
    let mut bodies = Vec::new();
    for n in [from, to] {
        let v = s
            .store
            .vread(&caller.ctx, rt, id, n)
            .await?
            .ok_or_else(|| bad(format!("{rt}/{id} has no version {n}"), "from"))?;
        let mut b = parse(&v);
        if let Value::Object(m) = &mut b {
            m.remove("meta");
        }
        bodies.push(b);
    }
    let mut changes = Vec::new();
    diff(rt, &bodies[0], &bodies[1], &mut changes);
    let who = changes_of(s, caller, &format!("{rt}/{id}")).await?;
    Ok(json!({
        "resource": format!("{rt}/{id}"), "from": from, "to": to,
        "change": who.get(&to), "differences": changes,
    }))
}

/// `POST [type]/{id}/$verify` (monitors): marks a version (default the current one) as source
/// data verified, optionally with a `comment`, as a Provenance with a `verifier` agent.
pub async fn verify(
    s: &StoreState,
    caller: &Caller,
    (rt, id): (&'static str, &str),
    bytes: &[u8],
) -> Result<Written, StoreError> {
    caller.require_role(
        &[Role::Monitor, Role::System],
        "mark source data as verified",
    )?;
    caller.require(rt, Interaction::Read)?;
    let current = found(rt, id, s.store.read(&caller.ctx, rt, id).await?)?;
    let params: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        trialbridge_validation::json_text::parse(bytes, &s.config.validation.limits)
            .map_err(|i| StoreError::from_issue(Status::BadRequest, i))?
    };
    let param = |name: &str| {
        params["parameter"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name)
            .cloned()
    };
    let version =
        interactions::version_asked(s, caller, (rt, id), param("version"), current.version).await?;
    let who = caller
        .principal
        .as_ref()
        .map_or(caller.ctx.agent.clone(), |p| p.subject.clone());
    let mut prov = json!({
        "resourceType": "Provenance",
        "meta": {"tag": [{"system": VERIFICATION_TAG.0, "code": VERIFICATION_TAG.1}]},
        "target": [{"reference": format!("{rt}/{id}/_history/{version}")}],
        "recorded": trialbridge_fhir::instant::format(time::OffsetDateTime::now_utc()),
        "activity": {"text": "source data verified"},
        "agent": [{"type": {"coding": [{"system": VERIFIER, "code": "verifier", "display": "Verifier"}]},
                   "who": {"identifier": {"system": "urn:trialbridge:token-subject", "value": who}}}],
    });
    if let Some(c) = param("comment").and_then(|p| p["valueString"].as_str().map(String::from)) {
        prov["reason"] = json!([{"text": c}]);
    }
    if let Some(site) = &current.site {
        prov["extension"] = json!([{"url": "http://hl7.org/fhir/StructureDefinition/workflow-researchStudy",
                                    "valueReference": {"reference": format!("ResearchStudy/{site}")}}]);
    }
    let raw = trialbridge_fhir::json::RawResource::from_value(&prov);
    let res = interactions::incoming("Provenance", raw, prov, &s.config.validation)?;
    let pid = verification_id(&format!("{rt}/{id}/_history/{version}"));
    // The verification is written with the system's reach for the Provenance type, but it is
    // audited as the monitor's act. A version is verified once: a second `$verify` (the same
    // monitor clicking twice, two monitors at once) finds the first inside the same write and
    // answers with it.
    let (c, rules) = (caller.running("$verify"), s.rules.clone());
    write_audited(&*s.store, caller, "create", move |txn| {
        Box::pin(async move {
            if let Some(first) = txn.current("Provenance", &pid).await? {
                if !first.deleted {
                    return Ok(Written {
                        status: Status::Ok,
                        version: Some(first),
                        changed: false,
                    });
                }
            }
            interactions::create(txn, &c, &*rules, &res, &pid, None).await
        })
    })
    .await
}

/// The id of the one verification of a version: derived from the version's reference, so
/// that the store itself keeps it unique.
fn verification_id(target: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(target.as_bytes());
    format!("sdv-{}", hex::encode(&digest[..16]))
}
