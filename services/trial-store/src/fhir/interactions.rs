//! Create, update and delete as FHIR defines them, on a storage write transaction. The REST
//! handlers and Bundle processing both run these, so a transaction entry behaves exactly like
//! the same request on its own.

use serde_json::{json, Value};
use trialbridge_fhir::json::{BodyError, RawResource};
use trialbridge_fhir::search::SearchRequest;
use trialbridge_fhir::{id::is_valid_id, index, resource_type, IssueType};
use trialbridge_storage::{NewVersion, StoredVersion, WriteTxn};
use trialbridge_validation::Options as ValidationOptions;

use crate::error::{forbidden, Status, StoreError};
use crate::fhir::WriteRules;
use crate::security::audit::Changes;
use crate::security::{in_site_namespace, resource_site, site_namespace, Caller};

/// A resource body checked against its URL and ready to store.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The resource type (static, from the R4 table).
    pub resource_type: &'static str,
    /// The members as received.
    pub raw: RawResource,
    /// The parsed value (for ids and index extraction).
    pub value: Value,
    /// Its search-index rows, extracted before the write transaction so that the writer does
    /// not spend its time on them.
    pub index: index::Index,
}

impl Incoming {
    /// Gives the resource its id (in the parsed value and in the text kept for storing).
    pub fn set_id(&mut self, id: &str) {
        if let Value::Object(m) = &mut self.value {
            m.insert("id".into(), Value::from(id));
        }
        self.raw.set("id", &Value::from(id));
    }
}

/// What a write did.
#[derive(Debug, Clone)]
pub struct Written {
    /// Ok, Created or NoContent.
    pub status: Status,
    /// The version written or found (none for a delete of nothing).
    pub version: Option<StoredVersion>,
    /// Whether a version was appended (false for a match of `If-None-Exist`, an update that
    /// equals the current version, a delete of nothing).
    pub changed: bool,
}

impl Changes for Written {
    fn versions(&self) -> Vec<(&StoredVersion, Option<&str>)> {
        self.version
            .iter()
            .filter(|_| self.changed)
            .map(|v| (v, None))
            .collect()
    }

    fn status(&self) -> u16 {
        self.status.code()
    }
}

/// Resolves a type name from a URL.
pub fn known_type(name: &str) -> Result<&'static str, StoreError> {
    resource_type::canonical(name).ok_or_else(|| {
        StoreError::new(
            Status::NotFound,
            IssueType::NotSupported,
            format!("'{name}' is not a FHIR R4 resource type"),
        )
        .at(name.to_string())
    })
}

/// Checks a logical id from a URL.
pub fn checked_id(resource_type: &str, id: &str) -> Result<(), StoreError> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(StoreError::new(
            Status::BadRequest,
            IssueType::Value,
            format!("'{id}' is not a valid id (1-64 of A-Z a-z 0-9 - .)"),
        )
        .at(format!("{resource_type}.id")))
    }
}

/// The version an operation's `version` parameter names (default `current`), which must
/// exist.
pub async fn version_asked(
    s: &crate::fhir::StoreState,
    caller: &Caller,
    (rt, id): (&str, &str),
    param: Option<serde_json::Value>,
    current: i64,
) -> Result<i64, StoreError> {
    let version = match param {
        Some(p) => p["valueInteger"].as_i64().ok_or_else(|| {
            StoreError::new(
                Status::BadRequest,
                IssueType::Value,
                "version is a valueInteger",
            )
            .at("Parameters.parameter")
        })?,
        None => current,
    };
    if s.store.vread(&caller.ctx, rt, id, version).await?.is_none() {
        return Err(StoreError::new(
            Status::BadRequest,
            IssueType::Value,
            format!("{rt}/{id} has no version {version}"),
        )
        .at("version"));
    }
    Ok(version)
}

/// Parses a body for `url_type` under the validation limits (duplicate keys and the like are
/// refused with their position), then checks it as [`incoming`] does.
pub fn incoming_from_bytes(
    url_type: &'static str,
    bytes: &[u8],
    validation: &ValidationOptions,
) -> Result<Incoming, StoreError> {
    let value =
        trialbridge_validation::json_text::parse(bytes, &validation.limits).map_err(|issue| {
            let status = if issue.code == IssueType::TooLong {
                Status::PayloadTooLarge
            } else {
                Status::BadRequest
            };
            StoreError::from_issue(status, issue.at(url_type.to_string()))
        })?;
    if !value.is_object() {
        return Err(body_error(url_type, BodyError::NotAnObject));
    }
    let raw = RawResource::parse(bytes).map_err(|e| body_error(url_type, e))?;
    incoming(url_type, raw, value, validation)
}

/// Validates a resource (structure, bindings, invariants, profiles): 422 with every issue
/// when there is an error.
pub fn validated(value: &Value, validation: &ValidationOptions) -> Result<(), StoreError> {
    let report = tracing::info_span!("validate", resource.type = rtype_of(value))
        .in_scope(|| trialbridge_validation::validate_resource(value, validation));
    if report.has_errors() {
        return Err(StoreError::Rejected {
            status: Status::Unprocessable,
            outcome: report.to_outcome(),
        });
    }
    Ok(())
}

/// Checks a parsed resource for `url_type`.
pub fn incoming(
    url_type: &'static str,
    raw: RawResource,
    value: Value,
    validation: &ValidationOptions,
) -> Result<Incoming, StoreError> {
    let body_type = value
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or("");
    if body_type != url_type {
        return Err(StoreError::new(
            Status::BadRequest,
            IssueType::Invalid,
            format!("resourceType '{body_type}' does not match the URL's type '{url_type}'"),
        )
        .at("resourceType"));
    }
    match value.get("id") {
        None => {}
        Some(Value::String(id)) if is_valid_id(id) => {}
        Some(other) => {
            return Err(StoreError::new(
                Status::BadRequest,
                IssueType::Value,
                format!("{other} is not a valid id (1-64 of A-Z a-z 0-9 - .)"),
            )
            .at(format!("{url_type}.id")));
        }
    }
    validated(&value, validation)?;
    let index = index::extract(url_type, &value);
    Ok(Incoming {
        resource_type: url_type,
        raw,
        value,
        index,
    })
}

fn body_error(url_type: &str, e: BodyError) -> StoreError {
    let code = match e {
        BodyError::Malformed { .. } => IssueType::Structure,
        _ => IssueType::Invalid,
    };
    StoreError::new(Status::BadRequest, code, e.to_string()).at(url_type.to_string())
}

/// Appends `res` after the domain's rules passed, then records what they found (a protocol
/// deviation as a DetectedIssue) in the same transaction.
async fn store(
    txn: &mut dyn WriteTxn,
    caller: &Caller,
    rules: &dyn WriteRules,
    res: &Incoming,
    id: &str,
) -> Result<StoredVersion, StoreError> {
    store_in(txn, caller, rules, res, id, None).await
}

/// [`store`], with the site the resource belongs to when its content names none (a load's
/// `--site`).
async fn store_in(
    txn: &mut dyn WriteTxn,
    caller: &Caller,
    rules: &dyn WriteRules,
    res: &Incoming,
    id: &str,
    default_site: Option<&str>,
) -> Result<StoredVersion, StoreError> {
    let site = resource_site(caller, &res.value)?.or(default_site.map(String::from));
    references_within_sites(txn, caller, res).await?;
    let deviations = rules.check(txn, caller, res, id).await?;
    let stored = append_version(txn, res, id, site.as_deref()).await?;
    for d in deviations {
        let raw = RawResource::from_value(&d);
        let issue = incoming("DetectedIssue", raw, d, &ValidationOptions::default())?;
        append_version(
            txn,
            &issue,
            &uuid::Uuid::now_v7().to_string(),
            site.as_deref(),
        )
        .await?;
    }
    Ok(stored)
}

/// A site writes only about its own subjects: a reference must name a resource the caller
/// sees, or one that does not exist yet in the caller's namespace or of a definitional type. Whether a resource of
/// another site exists is never told apart from it not existing: both get the same 403.
/// (Checked for site tokens; trialbridge and the sponsor's roles may link across sites.)
async fn references_within_sites(
    txn: &mut dyn WriteTxn,
    caller: &Caller,
    res: &Incoming,
) -> Result<(), StoreError> {
    let Some(own) = caller.own_site() else {
        return Ok(());
    };
    let mut refs = Vec::new();
    trialbridge_fhir::reference::references_at(&res.value, res.resource_type, &mut refs);
    refs.sort_by(|a, b| a.1.cmp(&b.1));
    refs.dedup_by(|a, b| a.1 == b.1);
    // An absolute URL names a resource of another server (the EHR version a gateway's
    // Provenance came from); it reaches nothing here, and reads filter by site anyway.
    for (path, r) in refs.iter().filter(|(_, r)| !r.contains("://")) {
        let Some((t, id)) = trialbridge_fhir::reference::literal_target(r) else {
            continue;
        };
        let current = txn.current_version(t, id).await?;
        let visible = current
            .as_ref()
            .is_some_and(|(_, _, site)| caller.ctx.sites.sees(site.as_deref()));
        // A missing study definition (a ResearchStudy not loaded yet) is no site's data.
        let may_exist_later =
            in_site_namespace(own, id) || trialbridge_auth::is_definitional_type(t);
        if !visible && (current.is_some() || !may_exist_later) {
            return Err(outside_namespace(t, id, own).at(path.clone()));
        }
    }
    Ok(())
}

/// The one answer to a site writing or linking outside what it owns, whether or not the
/// resource exists.
fn outside_namespace(rt: &str, id: &str, site_study: &str) -> StoreError {
    forbidden(format!(
        "{rt}/{id} is not a resource of {site_study}: a site writes and references its own resources, and the ids it chooses begin with {}",
        site_namespace(site_study)
    ))
}

/// The live version of a resource the caller may change. A site changes only what it sees or
/// creates ids in its own namespace: another site's resource and a missing id outside the
/// namespace get the same 403, so that writes reveal nothing of other sites.
async fn live_version(
    txn: &mut dyn WriteTxn,
    caller: &Caller,
    resource_type: &str,
    id: &str,
) -> Result<Option<(i64, Option<String>)>, StoreError> {
    let current = txn.current_version(resource_type, id).await?;
    let visible = current
        .as_ref()
        .is_some_and(|(_, _, site)| caller.ctx.sites.sees(site.as_deref()));
    if let Some(own) = caller.own_site() {
        if !visible && (current.is_some() || !in_site_namespace(own, id)) {
            return Err(outside_namespace(resource_type, id, own));
        }
    }
    match current {
        Some((_, _, Some(site))) if !caller.ctx.sites.sees(Some(&site)) => Err(forbidden(format!(
            "{resource_type}/{id} belongs to a site this token does not cover"
        ))),
        Some((v, false, site)) => Ok(Some((v, site))),
        _ => Ok(None),
    }
}

/// Changing or deleting recorded clinical data needs a reason (GCP): the
/// `X-Reason-For-Change` header, or a Provenance for the resource in the same transaction.
fn require_reason(caller: &Caller, resource_type: &str, id: &str) -> Result<(), StoreError> {
    if caller.reason.is_some() || !trialbridge_auth::REASON_REQUIRED_TYPES.contains(&resource_type)
    {
        return Ok(());
    }
    Err(reason_needed(resource_type, id))
}

fn reason_needed(resource_type: &str, id: &str) -> StoreError {
    StoreError::new(
        Status::Unprocessable,
        IssueType::Required,
        format!("changing {resource_type}/{id} needs a reason for change: send the X-Reason-For-Change header, or a Provenance targeting it in the same transaction"),
    )
    .at("X-Reason-For-Change")
}

/// Appends `res` as the next version of `resource_type/id`, setting `id` and `meta`.
async fn append_version(
    txn: &mut dyn WriteTxn,
    res: &Incoming,
    id: &str,
    site: Option<&str>,
) -> Result<StoredVersion, StoreError> {
    let mut raw = res.raw.clone();
    raw.set("id", &json!(id));
    let meta = raw
        .get("meta")
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    let render = move |version: i64, last_updated: &str| {
        let mut meta = meta.clone();
        meta["versionId"] = json!(version.to_string());
        meta["lastUpdated"] = json!(last_updated);
        raw.to_json_string_with("meta", &meta)
    };
    Ok(txn
        .append(NewVersion {
            resource_type: res.resource_type,
            id,
            deleted: false,
            index: &res.index,
            body: &render,
            site,
        })
        .await?)
}

/// Resolves conditional criteria to at most one id; several matches are a 412.
pub async fn match_one(
    txn: &mut dyn WriteTxn,
    caller: &Caller,
    resource_type: &str,
    criteria: &SearchRequest,
    what: &str,
) -> Result<Option<String>, StoreError> {
    if criteria.criteria.is_empty() {
        return Err(StoreError::new(
            Status::BadRequest,
            IssueType::Invalid,
            format!("{what} needs search criteria"),
        )
        .at(what.to_string()));
    }
    let mut ids = txn
        .search_ids(&caller.ctx, resource_type, criteria, 2)
        .await?;
    match ids.len() {
        0 => Ok(None),
        1 => Ok(ids.pop()),
        _ => Err(StoreError::new(
            Status::PreconditionFailed,
            IssueType::MultipleMatches,
            format!("{what} matches more than one {resource_type}"),
        )
        .at(what.to_string())),
    }
}

/// create, with `If-None-Exist` criteria if given; `id` is the server-assigned id.
pub async fn create(
    txn: &mut dyn WriteTxn,
    caller: &Caller,
    rules: &dyn WriteRules,
    res: &Incoming,
    id: &str,
    if_none_exist: Option<&SearchRequest>,
) -> Result<Written, StoreError> {
    if let Some(criteria) = if_none_exist {
        if let Some(existing) =
            match_one(txn, caller, res.resource_type, criteria, "If-None-Exist").await?
        {
            let version = txn.current(res.resource_type, &existing).await?;
            return Ok(Written {
                status: Status::Ok,
                version,
                changed: false,
            });
        }
    }
    let v = store(txn, caller, rules, res, id).await?;
    Ok(Written {
        status: Status::Created,
        version: Some(v),
        changed: true,
    })
}

fn precondition(resource_type: &str, expected: i64, actual: Option<i64>) -> StoreError {
    let actual = actual.map_or("none".to_string(), |v| format!("W/\"{v}\""));
    StoreError::new(
        Status::PreconditionFailed,
        IssueType::Conflict,
        format!("If-Match W/\"{expected}\" does not match the current version ({actual})"),
    )
    .at(format!("{resource_type}.meta.versionId"))
}

/// update (create-on-update allowed), honouring `If-Match`.
pub async fn update(
    txn: &mut dyn WriteTxn,
    caller: &Caller,
    rules: &dyn WriteRules,
    res: &Incoming,
    id: &str,
    if_match: Option<i64>,
) -> Result<Written, StoreError> {
    match res.value.get("id").and_then(Value::as_str) {
        Some(body_id) if body_id == id => {}
        Some(body_id) => {
            return Err(StoreError::new(
                Status::BadRequest,
                IssueType::Invalid,
                format!("the resource id '{body_id}' differs from the URL id '{id}'"),
            )
            .at(format!("{}.id", res.resource_type)));
        }
        None => {
            return Err(StoreError::new(
                Status::BadRequest,
                IssueType::Required,
                format!("an update must carry the id '{id}' of the URL"),
            )
            .at(format!("{}.id", res.resource_type)));
        }
    }
    let live = live_version(txn, caller, res.resource_type, id)
        .await?
        .map(|(v, _)| v);
    if let Some(expected) = if_match {
        if live != Some(expected) {
            return Err(precondition(res.resource_type, expected, live));
        }
    }
    if live.is_some() {
        // A resend (a gateway after a crash, a client retrying) changes nothing: the current
        // version is the answer, and no version appears that nobody made.
        if let Some(current) = txn.current(res.resource_type, id).await? {
            if current
                .body
                .as_deref()
                .is_some_and(|body| same_content(body, &res.value))
            {
                return Ok(Written {
                    status: Status::Ok,
                    version: Some(current),
                    changed: false,
                });
            }
        }
        require_reason(caller, res.resource_type, id)?;
    }
    let status = if live.is_some() {
        Status::Ok
    } else {
        Status::Created
    };
    let v = store(txn, caller, rules, res, id).await?;
    Ok(Written {
        status,
        version: Some(v),
        changed: true,
    })
}

/// Whether a stored body and a new resource say the same, apart from the server's
/// `meta.versionId` and `meta.lastUpdated` (a changed profile, tag or security label is a
/// change). Numbers compare by their spelling, as they are stored.
pub fn same_content(stored: &str, new: &Value) -> bool {
    let Ok(mut stored) = serde_json::from_str::<Value>(stored) else {
        return false;
    };
    let mut new = new.clone();
    for v in [&mut stored, &mut new] {
        if let Some(m) = v.as_object_mut() {
            let emptied = m
                .get_mut("meta")
                .and_then(Value::as_object_mut)
                .map(|meta| {
                    meta.remove("versionId");
                    meta.remove("lastUpdated");
                    meta.is_empty()
                });
            if emptied == Some(true) {
                m.remove("meta");
            }
        }
    }
    stored == new
}

/// delete: a tombstone version; deleting what is absent or already deleted changes nothing.
pub async fn delete(
    txn: &mut dyn WriteTxn,
    caller: &Caller,
    rules: &dyn WriteRules,
    resource_type: &'static str,
    id: &str,
    if_match: Option<i64>,
) -> Result<Written, StoreError> {
    let live = live_version(txn, caller, resource_type, id).await?;
    let version = live.as_ref().map(|(v, _)| *v);
    if let Some(expected) = if_match {
        if version != Some(expected) {
            return Err(precondition(resource_type, expected, version));
        }
    }
    // Deleting what is absent or already deleted changes nothing.
    let Some((_, site)) = live else {
        return Ok(Written {
            status: Status::NoContent,
            version: None,
            changed: false,
        });
    };
    // Deleting recorded data needs a reason, whatever clinical type it is.
    if trialbridge_auth::is_clinical_type(resource_type) && caller.reason.is_none() {
        return Err(reason_needed(resource_type, id));
    }
    if let Some(body) = txn.current(resource_type, id).await?.and_then(|c| c.body) {
        if let Ok(current) = serde_json::from_str::<Value>(&body) {
            rules.check_delete(txn, caller, &current).await?;
        }
    }
    let render = |_: i64, _: &str| String::new();
    // The tombstone stays with the resource's site.
    let v = txn
        .append(NewVersion {
            resource_type,
            id,
            deleted: true,
            index: &Default::default(),
            body: &render,
            site: site.as_deref(),
        })
        .await?;
    Ok(Written {
        status: Status::NoContent,
        version: Some(v),
        changed: true,
    })
}

/// Result of loading one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadResult {
    /// A new resource (its first version).
    Created(StoredVersion),
    /// A new version of an existing resource.
    Updated(StoredVersion),
    /// Same content as the current version: nothing written.
    Unchanged,
}

/// Writes a resource with an id unless the current version already has the same content
/// (ignoring `meta`), so loading the same files twice creates no versions. A resource whose
/// content names no site belongs to `default_site`; clinical data must belong to one.
pub async fn load_resource(
    txn: &mut dyn WriteTxn,
    caller: &Caller,
    rules: &dyn WriteRules,
    value: Value,
    validation: &ValidationOptions,
    default_site: Option<&str>,
) -> Result<LoadResult, StoreError> {
    let t = value
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or("");
    let rt = known_type(t)?;
    let id = value
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            StoreError::new(
                Status::BadRequest,
                IssueType::Required,
                "a loaded resource needs an id",
            )
            .at(format!("{rt}.id"))
        })?
        .to_string();
    checked_id(rt, &id)?;
    let named = crate::security::named_site(&value);
    if named.is_none() && default_site.is_none() && trialbridge_auth::is_clinical_type(rt) {
        return Err(StoreError::new(
            Status::Unprocessable,
            IssueType::Required,
            format!("{rt}/{id} is clinical data of no site: name its site study (ResearchSubject.study or the workflow-researchStudy extension) or load with --site"),
        )
        .at(format!("{rt}.extension")));
    }
    let raw = RawResource::from_value(&value);
    let res = incoming(rt, raw, value, validation)?;
    if let Some(current) = txn.current(rt, &id).await?.filter(|c| !c.deleted) {
        if current
            .body
            .as_deref()
            .is_some_and(|body| same_content(body, &res.value))
        {
            return Ok(LoadResult::Unchanged);
        }
        let v = store_in(txn, caller, rules, &res, &id, default_site).await?;
        return Ok(LoadResult::Updated(v));
    }
    let v = store_in(txn, caller, rules, &res, &id, default_site).await?;
    Ok(LoadResult::Created(v))
}

/// The `resourceType` of a parsed body, for span attributes.
fn rtype_of(value: &serde_json::Value) -> &str {
    value
        .get("resourceType")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("")
}

/// A read result: 404, 410, or the version.
pub fn found(
    resource_type: &str,
    id: &str,
    v: Option<StoredVersion>,
) -> Result<StoredVersion, StoreError> {
    match v {
        None => Err(StoreError::new(
            Status::NotFound,
            IssueType::NotFound,
            format!("{resource_type}/{id} is not known"),
        )
        .at(format!("{resource_type}.id"))),
        Some(v) if v.deleted => Err(StoreError::new(
            Status::Gone,
            IssueType::Deleted,
            format!("{resource_type}/{id} was deleted (version {})", v.version),
        )
        .at(format!("{resource_type}.id"))),
        Some(v) => Ok(v),
    }
}

/// A vread result: 404 for a version that does not exist, 410 for a deletion, or the version.
pub fn version_found(
    rt: &str,
    id: &str,
    version: i64,
    v: Option<StoredVersion>,
) -> Result<StoredVersion, StoreError> {
    match v {
        None => Err(StoreError::new(
            Status::NotFound,
            IssueType::NotFound,
            format!("{rt}/{id} has no version {version}"),
        )
        .at(format!("{rt}.meta.versionId"))),
        Some(v) if v.deleted => Err(StoreError::new(
            Status::Gone,
            IssueType::Deleted,
            format!("version {version} of {rt}/{id} is a deletion"),
        )
        .at(format!("{rt}.meta.versionId"))),
        Some(v) => Ok(v),
    }
}

/// Parses conditional criteria (`If-None-Exist`, conditional update and delete). Unknown
/// parameters are always errors here: ignoring one would widen the match.
pub fn conditional_criteria(
    resource_type: &str,
    query: &str,
    what: &str,
) -> Result<SearchRequest, StoreError> {
    let query = query.split_once('?').map_or(query, |(_, q)| q);
    let pairs = crate::fhir::query_pairs(Some(query));
    let request = trialbridge_fhir::search::parse(resource_type, &pairs, true)
        .map_err(|issue| StoreError::from_issue(Status::BadRequest, issue).at(what.to_string()))?;
    // A condition names what it is about: no criterion that matches by absence or negation
    // (`:missing`, `:not`, `ne`) or by a fragment (`:contains`), which would widen the match
    // of a conditional delete or update to resources nobody named.
    for c in &request.criteria {
        for m in &c.any_of {
            use trialbridge_fhir::search::{Match, Prefix};
            let widening = match m {
                Match::Missing(_) | Match::Not(_) | Match::Contains(_) => true,
                Match::Range { prefix, .. } => matches!(prefix, Prefix::Ne),
                _ => false,
            };
            if widening {
                return Err(StoreError::new(
                    Status::BadRequest,
                    IssueType::NotSupported,
                    format!("{what}: the criterion on '{}' does not name the resource (:missing, :not, :contains and ne widen the match); use criteria that identify it", c.param),
                )
                .at(what.to_string()));
            }
        }
    }
    Ok(request)
}

/// Conditional update: no match creates (with the body's id or a new one), one match updates
/// it, several are a 412.
pub async fn conditional_update_in(
    txn: &mut dyn trialbridge_storage::WriteTxn,
    caller: &Caller,
    rules: &dyn WriteRules,
    mut res: Incoming,
    criteria: &SearchRequest,
    expected: Option<i64>,
) -> Result<Written, StoreError> {
    let rt = res.resource_type;
    let body_id = res
        .value
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_string);
    match match_one(txn, caller, rt, criteria, "conditional update").await? {
        Some(found) => {
            if body_id.as_deref().is_some_and(|b| b != found) {
                return Err(StoreError::new(
                    Status::BadRequest,
                    IssueType::Invalid,
                    format!("the resource id differs from the matched {rt}/{found}"),
                )
                .at(format!("{rt}.id")));
            }
            res.set_id(&found);
            update(txn, caller, rules, &res, &found, expected).await
        }
        None => match body_id {
            Some(id) => update(txn, caller, rules, &res, &id, expected).await,
            // No match and no id: a create with an id the server assigns (no site chose it,
            // so no namespace applies).
            None if expected.is_none() => {
                let id = uuid::Uuid::now_v7().to_string();
                res.set_id(&id);
                create(txn, caller, rules, &res, &id, None).await
            }
            None => Err(precondition(rt, expected.unwrap_or_default(), None)),
        },
    }
}
