//! `POST /fhir` with a Bundle: `transaction` (all or nothing, in the specification's processing
//! order, `urn:uuid:` fullUrls and conditional references resolved) and `batch` (independent
//! entries).

use std::collections::HashMap;

use serde_json::{json, Value};
use trialbridge_auth::Interaction;
use trialbridge_fhir::bundle::{BundleEntry, BundleText, BundleWriter, EntryText};
use trialbridge_fhir::id::parse_etag_version;
use trialbridge_fhir::reference::{references, rewrite_references};
use trialbridge_fhir::search::SearchRequest;
use trialbridge_fhir::{IssueType, OperationOutcome, OutcomeIssue};
use trialbridge_storage::{StoredVersion, WriteTxn};

use crate::error::{Status, StoreError};
use crate::fhir::interactions::{
    self, checked_id, conditional_criteria, conditional_update_in, found, incoming_from_bytes,
    known_type, Incoming,
};
use crate::fhir::patch::{Patch, PatchOf};
use crate::fhir::{query_pairs, version_path, StoreState, WriteRules};
use crate::security::audit::{write_audited, Changes};
use crate::security::Caller;

/// How large a batch's answer may grow before later entries are answered with a refusal.
const MAX_BATCH_RESPONSE_BYTES: usize = 16 << 20;

/// What one entry asks for.
#[derive(Debug, Clone)]
enum Action {
    Create {
        res: Incoming,
        if_none_exist: Option<SearchRequest>,
    },
    Update {
        res: Incoming,
        id: String,
        if_match: Option<i64>,
    },
    ConditionalUpdate {
        res: Incoming,
        criteria: SearchRequest,
        if_match: Option<i64>,
    },
    Delete {
        rt: &'static str,
        id: String,
        if_match: Option<i64>,
    },
    ConditionalDelete {
        rt: &'static str,
        criteria: SearchRequest,
    },
    Read {
        rt: &'static str,
        id: String,
        version: Option<i64>,
    },
    Search {
        rt: &'static str,
        criteria: SearchRequest,
    },
    Patch {
        rt: &'static str,
        which: PatchOf,
        patch: Patch,
        if_match: Option<i64>,
        /// The validation the patched resource gets (an update's).
        validation: Box<trialbridge_validation::Options>,
    },
}

impl Action {
    /// Processing order of the specification: DELETE, POST, PUT/PATCH, GET/HEAD.
    fn rank(&self) -> u8 {
        match self {
            Action::Delete { .. } | Action::ConditionalDelete { .. } => 0,
            Action::Create { .. } => 1,
            Action::Update { .. } | Action::ConditionalUpdate { .. } | Action::Patch { .. } => 2,
            Action::Read { .. } | Action::Search { .. } => 3,
        }
    }

    /// The interactions the entry needs permission for, on its type.
    fn needs(&self) -> (&str, &'static [Interaction]) {
        use Interaction::*;
        match self {
            Action::Create {
                res,
                if_none_exist: None,
            } => (res.resource_type, &[Create]),
            Action::Create { res, .. } => (res.resource_type, &[Create, Search]),
            Action::Update { res, .. } => (res.resource_type, &[Update]),
            Action::ConditionalUpdate { res, .. } => (res.resource_type, &[Update, Search]),
            Action::Delete { rt, .. } => (rt, &[Delete]),
            Action::ConditionalDelete { rt, .. } => (rt, &[Delete, Search]),
            Action::Read { rt, .. } => (rt, &[Read]),
            Action::Search { rt, .. } => (rt, &[Search]),
            Action::Patch {
                rt,
                which: PatchOf::Id(_),
                ..
            } => (rt, &[Read, Update]),
            Action::Patch { rt, .. } => (rt, &[Read, Update, Search]),
        }
    }

    /// The audit subtype of the entry on its own (batch).
    fn subtype(&self) -> &'static str {
        match self {
            Action::Create { .. } => "create",
            Action::Update { .. } | Action::ConditionalUpdate { .. } => "update",
            Action::Delete { .. } | Action::ConditionalDelete { .. } => "delete",
            Action::Read { .. } => "read",
            Action::Search { .. } => "search-type",
            Action::Patch { .. } => "patch",
        }
    }

    /// The `Type/id` an update or delete changes, when known before it runs.
    fn target(&self) -> Option<String> {
        match self {
            Action::Update { res, id, .. } => Some(format!("{}/{id}", res.resource_type)),
            Action::ConditionalUpdate { res, .. } => res
                .value
                .get("id")
                .and_then(Value::as_str)
                .map(|id| format!("{}/{id}", res.resource_type)),
            Action::Delete { rt, id, .. } => Some(format!("{rt}/{id}")),
            Action::Patch {
                rt,
                which: PatchOf::Id(id),
                ..
            } => Some(format!("{rt}/{id}")),
            _ => None,
        }
    }

    fn resource_mut(&mut self) -> Option<&mut Incoming> {
        match self {
            Action::Create { res, .. }
            | Action::Update { res, .. }
            | Action::ConditionalUpdate { res, .. } => Some(res),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
struct Planned {
    index: usize,
    full_url: Option<String>,
    action: Action,
}

/// The result of one entry.
#[derive(Debug)]
struct EntryResult {
    status: Status,
    /// Whether `version` was written by this entry (not only read).
    changed: bool,
    /// The reason for change a Provenance in the same transaction gave this entry.
    reason: Option<String>,
    version: Option<StoredVersion>,
    /// A searchset Bundle for a search entry.
    bundle: Option<String>,
}

impl Changes for Vec<EntryResult> {
    fn versions(&self) -> Vec<(&StoredVersion, Option<&str>)> {
        self.iter().flat_map(|r| r.versions()).collect()
    }

    fn read(&self) -> Vec<&StoredVersion> {
        self.iter().flat_map(|r| r.read()).collect()
    }
}

impl Changes for EntryResult {
    fn versions(&self) -> Vec<(&StoredVersion, Option<&str>)> {
        self.version
            .iter()
            .filter(|_| self.changed)
            .map(|v| (v, self.reason.as_deref()))
            .collect()
    }

    fn read(&self) -> Vec<&StoredVersion> {
        self.version.iter().filter(|_| !self.changed).collect()
    }

    fn status(&self) -> u16 {
        self.status.code()
    }
}

/// 403 for an entry the caller may not run.
fn permitted(caller: &Caller, p: &Planned) -> Result<(), StoreError> {
    let (rt, needs) = p.action.needs();
    for i in needs {
        caller
            .require(rt, *i)
            .map_err(|e| entry_error(p.index, e, "request.url"))?;
    }
    Ok(())
}

/// Provenances in a transaction give the resources they target a reason for change: their
/// `reason` or `activity` text, else a pointer to the Provenance itself.
fn provenance_reasons(plan: &[Planned]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for p in plan {
        let (Action::Create { res, .. } | Action::Update { res, .. }) = &p.action else {
            continue;
        };
        if res.resource_type != "Provenance" {
            continue;
        }
        let v = &res.value;
        let text = |cc: &Value| {
            cc.get("text")
                .and_then(Value::as_str)
                .map(String::from)
                .or_else(|| {
                    cc.pointer("/coding/0/display")
                        .or_else(|| cc.pointer("/coding/0/code"))
                        .and_then(Value::as_str)
                        .map(String::from)
                })
        };
        let why = v
            .get("reason")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find_map(text))
            .or_else(|| v.get("activity").and_then(text))
            .unwrap_or_else(|| {
                format!(
                    "see Provenance/{}",
                    v.get("id").and_then(Value::as_str).unwrap_or("")
                )
            });
        for t in v
            .get("target")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(r) = t.get("reference").and_then(Value::as_str) {
                let base = r.split("/_history/").next().unwrap_or(r);
                out.insert(base.to_string(), why.clone());
            }
        }
    }
    out
}

fn entry_error(i: usize, e: StoreError, field: &str) -> StoreError {
    let status = e.status();
    let mut outcome = e.outcome();
    for issue in &mut outcome.issues {
        issue.diagnostics = format!("entry {i}: {}", issue.diagnostics);
        // A refusal of what the resource says (a reference outside the site: `Observation.subject`)
        // stays named by its element; other errors are about the entry's request.
        let in_resource = issue
            .expression
            .first()
            .filter(|_| issue.code == IssueType::Forbidden)
            .and_then(|x| {
                let (root, rest) = x.split_once('.')?;
                trialbridge_fhir::resource_type::canonical(root).map(|_| rest.to_string())
            });
        issue.expression = vec![match in_resource {
            Some(rest) => format!("Bundle.entry[{i}].resource.{rest}"),
            None => format!("Bundle.entry[{i}].{field}"),
        }];
    }
    StoreError::Rejected { status, outcome }
}

/// Which part of an entry an error is about.
fn error_field(e: &StoreError) -> &'static str {
    match e {
        StoreError::Rejected { outcome, .. } => match outcome.issues.first().map(|i| i.code) {
            Some(IssueType::Conflict) => "request.ifMatch",
            Some(
                IssueType::Structure | IssueType::Invalid | IssueType::Required | IssueType::Value,
            ) if outcome.issues.iter().any(|i| {
                i.expression
                    .iter()
                    .any(|x| x.contains(".id") || x == "resourceType")
            }) =>
            {
                "resource"
            }
            _ => "request.url",
        },
        StoreError::Storage(_) => "request",
    }
}

/// The patch a PATCH entry carries: a `Binary` holding a JSON Patch or a JSON merge patch
/// (its `contentType` says which), or a FHIRPath Patch `Parameters`.
fn entry_patch(entry: &EntryText) -> Result<Patch, StoreError> {
    let bad = |msg: &str| StoreError::new(Status::BadRequest, IssueType::Invalid, msg.to_string());
    let text = entry.resource.as_ref().ok_or_else(|| {
        bad("PATCH needs a resource: a Binary with the patch, or a FHIRPath Patch Parameters")
    })?;
    let value: Value = serde_json::from_str(text.get())
        .map_err(|e| bad(&format!("the resource is not JSON: {e}")))?;
    match value.get("resourceType").and_then(Value::as_str) {
        Some("Parameters") => Ok(Patch::FhirPath(value)),
        Some("Binary") => {
            let content_type = value.get("contentType").and_then(Value::as_str);
            let data = value
                .get("data")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("the Binary has no data: put the patch in Binary.data, base64"))?;
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|e| bad(&format!("Binary.data is not base64: {e}")))?;
            crate::fhir::patch::parse(content_type, &bytes)
        }
        _ => Err(bad(
            "a PATCH entry's resource is a Binary (JSON Patch or JSON merge patch) or a Parameters (FHIRPath Patch)",
        )),
    }
}

fn plan_entry(
    i: usize,
    entry: &EntryText,
    base: &str,
    validation: &trialbridge_validation::Options,
) -> Result<Planned, StoreError> {
    let bad = |field: &str, msg: String| {
        StoreError::new(
            Status::BadRequest,
            IssueType::Invalid,
            format!("entry {i}: {msg}"),
        )
        .at(format!("Bundle.entry[{i}].{field}"))
    };
    let request = entry.request.as_ref().ok_or_else(|| {
        bad(
            "request",
            "a transaction or batch entry needs a request".into(),
        )
    })?;
    let method = request
        .get("method")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("request.method", "request.method is missing".into()))?;
    let url = request
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("request.url", "request.url is missing".into()))?;
    let url = url
        .strip_prefix(base)
        .map(|u| u.trim_start_matches('/'))
        .unwrap_or(url);
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (url, None),
    };
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let full_url = entry.full_url.clone();
    let wrap = |e: StoreError| entry_error(i, e, "request.url");
    if segments.iter().any(|s| s.starts_with('$')) {
        return Err(StoreError::new(
            Status::BadRequest,
            IssueType::NotSupported,
            format!("entry {i}: operation '{url}' is not supported"),
        )
        .at(format!("Bundle.entry[{i}].request.url")));
    }
    let rt = segments
        .first()
        .map(|t| known_type(t))
        .transpose()
        .map_err(wrap)?;
    let Some(rt) = rt else {
        return Err(bad(
            "request.url",
            format!("'{url}' names no resource type"),
        ));
    };
    let if_match = match request.get("ifMatch").and_then(Value::as_str) {
        Some(v) => Some(
            parse_etag_version(v)
                .ok_or_else(|| bad("request.ifMatch", format!("'{v}' is not a version ETag")))?,
        ),
        None => None,
    };
    let resource = |field: &str| -> Result<Incoming, StoreError> {
        let text = entry
            .resource
            .as_ref()
            .ok_or_else(|| bad("resource", format!("{method} needs a resource")))?;
        // From the entry's own text, so that decimals keep their spelling here too.
        incoming_from_bytes(rt, text.get().as_bytes(), validation)
            .map_err(|e| entry_error(i, e, field))
    };
    let criteria = |q: &str, what: &str| conditional_criteria(rt, q, what).map_err(wrap);
    let action = match (method, segments.len(), query) {
        ("POST", 1, None) => {
            let if_none_exist = request
                .get("ifNoneExist")
                .and_then(Value::as_str)
                .map(|q| criteria(q, "ifNoneExist"))
                .transpose()?;
            Action::Create {
                res: resource("resource")?,
                if_none_exist,
            }
        }
        ("PUT", 2, None) => {
            checked_id(rt, segments[1]).map_err(wrap)?;
            Action::Update {
                res: resource("resource")?,
                id: segments[1].to_string(),
                if_match,
            }
        }
        ("PUT", 1, Some(q)) => Action::ConditionalUpdate {
            res: resource("resource")?,
            criteria: criteria(q, "conditional update")?,
            if_match,
        },
        ("DELETE", 2, None) => {
            checked_id(rt, segments[1]).map_err(wrap)?;
            Action::Delete {
                rt,
                id: segments[1].to_string(),
                if_match,
            }
        }
        ("DELETE", 1, Some(q)) => Action::ConditionalDelete {
            rt,
            criteria: criteria(q, "conditional delete")?,
        },
        ("GET" | "HEAD", 2, None) => {
            checked_id(rt, segments[1]).map_err(wrap)?;
            Action::Read {
                rt,
                id: segments[1].to_string(),
                version: None,
            }
        }
        ("GET" | "HEAD", 4, None) if segments[2] == "_history" => {
            checked_id(rt, segments[1]).map_err(wrap)?;
            let v = segments[3].parse::<i64>().map_err(|_| {
                bad(
                    "request.url",
                    format!("'{}' is not a version id", segments[3]),
                )
            })?;
            Action::Read {
                rt,
                id: segments[1].to_string(),
                version: Some(v),
            }
        }
        ("GET" | "HEAD", 1, q) => {
            let pairs = query_pairs(q);
            let criteria = trialbridge_fhir::search::parse(rt, &pairs, false).map_err(|issue| {
                entry_error(
                    i,
                    StoreError::from_issue(Status::BadRequest, issue),
                    "request.url",
                )
            })?;
            Action::Search { rt, criteria }
        }
        ("PATCH", 2, None) | ("PATCH", 1, Some(_)) => {
            let which = match query {
                None => {
                    checked_id(rt, segments[1]).map_err(wrap)?;
                    PatchOf::Id(segments[1].to_string())
                }
                Some(q) => PatchOf::Matching(criteria(q, "conditional patch")?),
            };
            Action::Patch {
                rt,
                which,
                patch: entry_patch(entry).map_err(|e| entry_error(i, e, "resource"))?,
                if_match,
                validation: Box::new(validation.clone()),
            }
        }
        _ => {
            return Err(bad(
                "request.url",
                format!("{method} {url} is not an interaction this server supports"),
            ))
        }
    };
    Ok(Planned {
        index: i,
        full_url,
        action,
    })
}

/// What processing a Bundle gave: the response Bundle, and whether its audit event was
/// written with it (a transaction; a batch's entries are audited one by one).
pub struct Processed {
    /// The `transaction-response` or `batch-response` Bundle.
    pub bundle: String,
    /// Whether the request is audited already.
    pub audited: bool,
}

/// Processes a `transaction` or `batch` Bundle (the body of `POST [base]`).
pub async fn process(
    s: &StoreState,
    caller: &Caller,
    bytes: &[u8],
) -> Result<Processed, StoreError> {
    // The whole body under the validation limits first (duplicate keys, depth), and for a
    // transaction the Bundle as a whole, so that one OperationOutcome names every bad entry.
    let parsed = trialbridge_validation::json_text::parse(bytes, &s.config.validation.limits)
        .map_err(|issue| StoreError::from_issue(Status::BadRequest, issue.at("Bundle")))?;
    if parsed.get("type").and_then(Value::as_str) == Some("transaction") {
        crate::fhir::interactions::validated(&parsed, &s.config.validation)?;
    }
    drop(parsed);
    let bundle = BundleText::parse(bytes).map_err(|e| {
        StoreError::new(
            Status::BadRequest,
            IssueType::Structure,
            format!(
                "the Bundle cannot be read at line {}, column {}: {e}",
                e.line(),
                e.column()
            ),
        )
        .at("Bundle")
    })?;
    if bundle.resource_type.as_deref() != Some("Bundle") {
        return Err(StoreError::new(
            Status::BadRequest,
            IssueType::Invalid,
            "POST to the base URL takes a Bundle",
        )
        .at("resourceType"));
    }
    let btype = bundle.bundle_type.as_deref().unwrap_or("");
    let entries = bundle.entry;
    let base = s.config.base_url.clone();
    match btype {
        "transaction" => {
            let mut plan = Vec::with_capacity(entries.len());
            let mut problems = OperationOutcome::default();
            let mut status = None;
            for (i, e) in entries.iter().enumerate() {
                match plan_entry(i, e, &base, &s.config.validation)
                    .and_then(|p| permitted(caller, &p).map(|()| p))
                {
                    Ok(p) => plan.push(p),
                    Err(e) => {
                        status.get_or_insert(e.status());
                        problems.issues.extend(e.outcome().issues);
                    }
                }
            }
            // Entries that could not be planned fail the transaction, but the others are still
            // run (and rolled back) so that the outcome names every failing entry.
            let b = base.clone();
            let planned_failures = status.map(|st| (st, problems));
            let (c, rules) = (caller.clone(), s.rules.clone());
            let results = write_audited(&*s.store, caller, "transaction", move |txn| {
                Box::pin(async move {
                    run_transaction(txn, &c, &*rules, plan, &b, planned_failures).await
                })
            })
            .await?;
            let mut out = BundleWriter::new("transaction-response");
            for r in &results {
                out.entry(response_entry(r));
            }
            Ok(Processed {
                bundle: out.finish(),
                audited: true,
            })
        }
        "batch" => {
            let mut out = BundleWriter::new("batch-response");
            for (i, e) in entries.iter().enumerate() {
                // A bounded answer: once the response is this large, later entries are not
                // run but answered with why.
                if out.bytes() > MAX_BATCH_RESPONSE_BYTES {
                    let e = StoreError::new(
                        Status::BadRequest,
                        IssueType::TooCostly,
                        format!("entry {i}: not run: the batch's answer already exceeds {} MiB; send the rest in another batch", MAX_BATCH_RESPONSE_BYTES >> 20),
                    )
                    .at(format!("Bundle.entry[{i}]"));
                    out.entry(BundleEntry { response: Some(json!({ "status": e.status().line(), "outcome": e.outcome().to_json() })), ..Default::default() });
                    continue;
                }
                let result = match plan_entry(i, e, &base, &s.config.validation)
                    .and_then(|p| permitted(caller, &p).map(|()| p))
                {
                    Ok(p) => {
                        let b = base.clone();
                        let (c, rules) = (caller.clone(), s.rules.clone());
                        write_audited(&*s.store, caller, p.action.subtype(), move |txn| {
                            Box::pin(async move { execute(txn, &c, &*rules, &p.action, &b).await })
                        })
                        .await
                    }
                    Err(e) => Err(e),
                };
                match result {
                    Ok(r) => out.entry(response_entry(&r)),
                    Err(e) => out.entry(BundleEntry { response: Some(json!({ "status": e.status().line(), "outcome": e.outcome().to_json() })), ..Default::default() }),
                };
            }
            // Each entry was audited in its own transaction; refused entries by the batch's event.
            Ok(Processed {
                bundle: out.finish(),
                audited: false,
            })
        }
        other => Err(StoreError::new(
            Status::BadRequest,
            IssueType::Invalid,
            format!("Bundle.type '{other}' cannot be processed here; send a transaction or batch"),
        )
        .at("Bundle.type")),
    }
}

fn response_entry(r: &EntryResult) -> BundleEntry<'_> {
    let mut response = json!({ "status": r.status.line() });
    if let Some(v) = &r.version {
        if !v.deleted {
            response["location"] = json!(version_path(v));
        }
        response["etag"] = json!(format!("W/\"{}\"", v.version));
        response["lastModified"] = json!(v.last_updated);
    }
    let resource = match (&r.bundle, &r.version) {
        (Some(b), _) => Some(b.as_str()),
        (None, Some(v)) if r.status == Status::Ok && !v.deleted => v.body.as_deref(),
        _ => None,
    };
    BundleEntry {
        resource,
        response: Some(response),
        ..Default::default()
    }
}

async fn execute(
    txn: &mut dyn WriteTxn,
    caller: &Caller,
    rules: &dyn WriteRules,
    action: &Action,
    base: &str,
) -> Result<EntryResult, StoreError> {
    let visible = |v: Option<StoredVersion>| v.filter(|v| caller.ctx.sites.sees(v.site.as_deref()));
    let written = match action {
        Action::Create { res, if_none_exist } => {
            interactions::create(
                txn,
                caller,
                rules,
                res,
                &uuid::Uuid::now_v7().to_string(),
                if_none_exist.as_ref(),
            )
            .await?
        }
        Action::Update { res, id, if_match } => {
            interactions::update(txn, caller, rules, res, id, *if_match).await?
        }
        Action::ConditionalUpdate {
            res,
            criteria,
            if_match,
        } => conditional_update_in(txn, caller, rules, res.clone(), criteria, *if_match).await?,
        Action::Delete { rt, id, if_match } => {
            interactions::delete(txn, caller, rules, rt, id, *if_match).await?
        }
        Action::ConditionalDelete { rt, criteria } => {
            match interactions::match_one(txn, caller, rt, criteria, "conditional delete").await? {
                Some(id) => interactions::delete(txn, caller, rules, rt, &id, None).await?,
                None => interactions::Written {
                    status: Status::NoContent,
                    version: None,
                    changed: false,
                },
            }
        }
        Action::Read { rt, id, version } => {
            let v = match version {
                None => found(rt, id, visible(txn.current(rt, id).await?))?,
                Some(n) => found(rt, id, visible(txn.version(rt, id, *n).await?))?,
            };
            return Ok(EntryResult {
                status: Status::Ok,
                changed: false,
                reason: None,
                version: Some(v),
                bundle: None,
            });
        }
        Action::Patch {
            rt,
            which,
            patch,
            if_match,
            validation,
        } => {
            let id = which.resolve(txn, caller, rt).await?;
            let target = crate::fhir::patch::Target {
                resource_type: rt,
                id: &id,
                if_match: *if_match,
            };
            crate::fhir::patch::patch_in(txn, caller, rules, target, patch, validation).await?
        }
        Action::Search { rt, criteria } => {
            // One page, as the same search on its own would answer (`_count`, default 20).
            let count = criteria.count.unwrap_or(20).min(1000);
            let ids = txn.search_ids(&caller.ctx, rt, criteria, count).await?;
            let mut versions = Vec::with_capacity(ids.len());
            for id in &ids {
                if let Some(v) = txn.current(rt, id).await? {
                    versions.push(v);
                }
            }
            let mut b = BundleWriter::new("searchset");
            b.total(versions.len() as u64);
            for v in &versions {
                b.entry(BundleEntry {
                    full_url: Some(format!("{base}/{rt}/{}", v.id)),
                    resource: v.body.as_deref(),
                    search: Some(json!({"mode": "match"})),
                    ..Default::default()
                });
            }
            return Ok(EntryResult {
                status: Status::Ok,
                changed: false,
                reason: None,
                version: None,
                bundle: Some(b.finish()),
            });
        }
    };
    Ok(EntryResult {
        status: written.status,
        changed: written.changed,
        reason: None,
        version: written.version,
        bundle: None,
    })
}

/// Decides the id each creating entry will get, so that references can be rewritten before
/// anything is written.
async fn assign_ids(
    txn: &mut dyn WriteTxn,
    caller: &Caller,
    plan: &mut [Planned],
) -> Result<HashMap<String, String>, StoreError> {
    let mut ids = HashMap::new();
    for p in plan.iter_mut() {
        let i = p.index;
        let target = match &mut p.action {
            Action::Create { res, if_none_exist } => {
                let existing = match if_none_exist {
                    Some(c) => {
                        interactions::match_one(txn, caller, res.resource_type, c, "ifNoneExist")
                            .await
                            .map_err(|e| entry_error(i, e, "request.ifNoneExist"))?
                    }
                    None => None,
                };
                let id = existing.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
                res.set_id(&id);
                Some(format!("{}/{id}", res.resource_type))
            }
            Action::Update { res, id, .. } => Some(format!("{}/{id}", res.resource_type)),
            Action::ConditionalUpdate { res, criteria, .. } => {
                let found = interactions::match_one(
                    txn,
                    caller,
                    res.resource_type,
                    criteria,
                    "conditional update",
                )
                .await
                .map_err(|e| entry_error(i, e, "request.url"))?;
                let id = found
                    .or_else(|| {
                        res.value
                            .get("id")
                            .and_then(Value::as_str)
                            .map(str::to_string)
                    })
                    .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
                res.set_id(&id);
                Some(format!("{}/{id}", res.resource_type))
            }
            _ => None,
        };
        if let (Some(full), Some(target)) = (&p.full_url, target) {
            ids.insert(full.clone(), target);
        }
    }
    Ok(ids)
}

/// Rewrites `urn:uuid:` references to assigned ids and resolves conditional references
/// (`Patient?identifier=sys|val`) to the one resource they match; a conditional reference that
/// matches nothing fails the transaction. A `urn:uuid:` that names no entry is kept as it is
/// (the specification only requires rewriting those that do; validation may flag it).
async fn resolve_references(
    txn: &mut dyn WriteTxn,
    caller: &Caller,
    p: &mut Planned,
    ids: &HashMap<String, String>,
) -> Result<(), StoreError> {
    let i = p.index;
    let Some(res) = p.action.resource_mut() else {
        return Ok(());
    };
    let mut refs = Vec::new();
    references(&res.value, &mut refs);
    let mut map: HashMap<String, String> = HashMap::new();
    for r in refs {
        if let Some(target) = ids.get(&r) {
            map.insert(r, target.clone());
        } else if let Some((t, q)) = r.split_once('?') {
            let rt = known_type(t).map_err(|e| entry_error(i, e, "resource"))?;
            let criteria = conditional_criteria(rt, q, "conditional reference")
                .map_err(|e| entry_error(i, e, "resource"))?;
            match interactions::match_one(txn, caller, rt, &criteria, "conditional reference")
                .await
                .map_err(|e| entry_error(i, e, "resource"))?
            {
                Some(id) => {
                    map.insert(r, format!("{rt}/{id}"));
                }
                None => {
                    return Err(StoreError::new(
                        Status::NotFound,
                        IssueType::NotFound,
                        format!("entry {i}: conditional reference '{r}' matches no resource"),
                    )
                    .at(format!("Bundle.entry[{i}].resource")))
                }
            }
        }
    }
    if map.is_empty() {
        return Ok(());
    }
    rewrite_references(&mut res.value, &mut |r| map.get(r).cloned());
    res.index = trialbridge_fhir::index::extract(res.resource_type, &res.value);
    for needle in ["urn:", "?"] {
        res.raw.rewrite_members(needle, &mut |v| {
            rewrite_references(v, &mut |r| map.get(r).cloned()) > 0
        });
    }
    Ok(())
}

async fn run_transaction(
    txn: &mut dyn WriteTxn,
    caller: &Caller,
    rules: &dyn WriteRules,
    mut plan: Vec<Planned>,
    base: &str,
    planned_failures: Option<(Status, OperationOutcome)>,
) -> Result<Vec<EntryResult>, StoreError> {
    let ids = assign_ids(txn, caller, &mut plan).await?;
    let (mut first_status, mut problems) = match planned_failures {
        Some((st, oo)) => (Some(st), oo),
        None => (None, OperationOutcome::default()),
    };
    for p in plan.iter_mut() {
        if let Err(e) = resolve_references(txn, caller, p, &ids).await {
            first_status.get_or_insert(e.status());
            problems.issues.extend(e.outcome().issues);
        }
    }
    let mut order: Vec<usize> = (0..plan.len()).collect();
    order.sort_by_key(|&k| (plan[k].action.rank(), plan[k].index));
    let mut results: Vec<Option<EntryResult>> = (0..plan.len()).map(|_| None).collect();
    let reasons = provenance_reasons(&plan);
    for k in order {
        let p = &plan[k];
        // A Provenance in the transaction is the reason for changing what it targets.
        let with_reason;
        let caller = match (
            &caller.reason,
            p.action.target().and_then(|t| reasons.get(&t)),
        ) {
            (None, Some(why)) => {
                with_reason = Caller {
                    reason: Some(why.clone()),
                    ..caller.clone()
                };
                &with_reason
            }
            _ => caller,
        };
        // Creates already carry the id chosen in assign_ids: store them under it.
        let r = match &p.action {
            Action::Create { res, if_none_exist } => {
                let id = res
                    .value
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let existing = txn.current(res.resource_type, &id).await?;
                if if_none_exist.is_some() && existing.as_ref().is_some_and(|v| !v.deleted) {
                    Ok(EntryResult {
                        status: Status::Ok,
                        changed: false,
                        reason: None,
                        version: existing,
                        bundle: None,
                    })
                } else {
                    interactions::create(txn, caller, rules, res, &id, None)
                        .await
                        .map(|w| EntryResult {
                            status: w.status,
                            changed: true,
                            reason: None,
                            version: w.version,
                            bundle: None,
                        })
                }
            }
            other => execute(txn, caller, rules, other, base).await,
        };
        let r = r.map(|mut r| {
            if r.changed {
                r.reason = caller.reason.clone();
            }
            r
        });
        match r {
            Ok(r) => results[k] = Some(r),
            Err(e) => {
                let field = error_field(&e);
                let e = if matches!(&e, StoreError::Rejected { outcome, .. } if outcome.issues.iter().all(|x| x.expression.iter().any(|s| s.starts_with("Bundle."))))
                {
                    e
                } else {
                    entry_error(p.index, e, field)
                };
                first_status.get_or_insert(e.status());
                problems.issues.extend(e.outcome().issues);
            }
        }
    }
    if let Some(status) = first_status {
        problems.issues.insert(
            0,
            OutcomeIssue::error(
                IssueType::Processing,
                "the transaction failed as a whole; nothing was stored",
            )
            .at("Bundle"),
        );
        return Err(StoreError::Rejected {
            status,
            outcome: problems,
        });
    }
    Ok(results.into_iter().flatten().collect())
}
