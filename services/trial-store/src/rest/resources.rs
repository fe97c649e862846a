//! The instance and type interactions: read, vread, create, update, delete and their
//! conditional forms. Each handler reads the request (headers, body), calls
//! `fhir::interactions` inside an audited write, and shapes the answer.

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use trialbridge_auth::Interaction;
use trialbridge_fhir::id::parse_etag_version;
use trialbridge_fhir::{instant, IssueType};

use crate::error::{Status, StoreError};
use crate::fhir::interactions::{self, conditional_criteria, found, incoming_from_bytes, Written};
use crate::fhir::patch::PatchOf;
use crate::fhir::StoreState;
use crate::rest::access::audited;
use crate::rest::extract::{Instance, TypeName, VersionPath};
use crate::rest::negotiate::{read_body, read_bounded, Asked};
use crate::rest::respond::{json_response, version_headers, written_response};
use crate::security::audit::write_audited;
use crate::security::Caller;

fn if_match(headers: &HeaderMap, resource_type: &str) -> Result<Option<i64>, StoreError> {
    match headers.get(header::IF_MATCH) {
        None => Ok(None),
        Some(v) => parse_etag_version(v.to_str().unwrap_or(""))
            .map(Some)
            .ok_or_else(|| {
                StoreError::new(
                    Status::BadRequest,
                    IssueType::Value,
                    "If-Match must be a version ETag such as W/\"3\"",
                )
                .at(format!("{resource_type}.meta.versionId"))
            }),
    }
}

/// `304 Not Modified` with the version's headers.
fn not_modified(v: &trialbridge_storage::StoredVersion) -> Response {
    let mut r = StatusCode::NOT_MODIFIED.into_response();
    version_headers(&mut r, v);
    r
}

pub async fn read(
    State(s): State<StoreState>,
    caller: Caller,
    Instance { rt, id }: Instance,
    a: Asked,
    headers: HeaderMap,
) -> Result<Response, StoreError> {
    if rt == "AuditEvent" {
        return crate::rest::monitor::audit_event(&s, &caller, &id).await;
    }
    caller.require(rt, Interaction::Read)?;
    let fmt = a.fmt;
    let v = found(rt, &id, s.store.read(&caller.ctx, rt, &id).await?)?;
    if let Some(inm) = headers.get(header::IF_NONE_MATCH) {
        if parse_etag_version(inm.to_str().unwrap_or("")) == Some(v.version) {
            return Ok(not_modified(&v));
        }
    }
    if let Some(ims) = headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|h| h.to_str().ok())
    {
        if let Some(since) = instant::parse_http_date(ims).or_else(|| instant::parse(ims)) {
            if v.last_updated_us.div_euclid(1_000_000) <= since.unix_timestamp() {
                return Ok(not_modified(&v));
            }
        }
    }
    let mut r = json_response(StatusCode::OK, v.body.clone().unwrap_or_default(), fmt);
    version_headers(&mut r, &v);
    Ok(r)
}

pub async fn vread(
    State(s): State<StoreState>,
    caller: Caller,
    VersionPath { rt, id, vid }: VersionPath,
    a: Asked,
) -> Result<Response, StoreError> {
    caller.require(rt, Interaction::Read)?;
    let version = vid.parse::<i64>().ok().filter(|v| *v > 0).ok_or_else(|| {
        StoreError::new(
            Status::BadRequest,
            IssueType::Value,
            format!("'{vid}' is not a version id"),
        )
        .at(format!("{rt}.meta.versionId"))
    })?;
    let v = interactions::version_found(
        rt,
        &id,
        version,
        s.store.vread(&caller.ctx, rt, &id, version).await?,
    )?;
    let mut r = json_response(StatusCode::OK, v.body.clone().unwrap_or_default(), a.fmt);
    version_headers(&mut r, &v);
    Ok(r)
}

pub async fn create(
    State(s): State<StoreState>,
    caller: Caller,
    TypeName(rt): TypeName,
    a: Asked,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, StoreError> {
    caller.require(rt, Interaction::Create)?;
    // A condition in the query string is not how R4 asks for a conditional create (that is
    // the If-None-Exist header); creating anyway would make the duplicate the client meant to
    // avoid.
    if let Some((k, _)) = a
        .pairs
        .iter()
        .find(|(k, _)| !matches!(k.as_str(), "_format" | "_pretty"))
    {
        return Err(StoreError::new(
            Status::BadRequest,
            IssueType::NotSupported,
            format!("POST {rt} takes no search parameters in its URL ('{k}'); a conditional create sends its criteria in the If-None-Exist header"),
        )
        .at(k));
    }
    let bytes = read_body(&headers, body, s.config.max_body_bytes).await?;
    let res = incoming_from_bytes(rt, &bytes, &s.config.validation)?;
    let ine = match headers.get("if-none-exist") {
        Some(h) => Some(conditional_criteria(
            rt,
            h.to_str().unwrap_or(""),
            "If-None-Exist",
        )?),
        None => None,
    };
    if ine.is_some() {
        caller.require(rt, Interaction::Search)?;
    }
    let id = uuid::Uuid::now_v7().to_string();
    let (c, rules) = (caller.clone(), s.rules.clone());
    let w = write_audited(&*s.store, &caller, "create", move |txn| {
        Box::pin(
            async move { interactions::create(txn, &c, &*rules, &res, &id, ine.as_ref()).await },
        )
    })
    .await?;
    Ok(audited(written_response(&s, w, a.fmt, a.prefer)))
}

pub async fn update(
    State(s): State<StoreState>,
    caller: Caller,
    Instance { rt, id }: Instance,
    a: Asked,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, StoreError> {
    caller.require(rt, Interaction::Update)?;
    let expected = if_match(&headers, rt)?;
    let bytes = read_body(&headers, body, s.config.max_body_bytes).await?;
    let res = incoming_from_bytes(rt, &bytes, &s.config.validation)?;
    let (c, rules) = (caller.clone(), s.rules.clone());
    let w = write_audited(&*s.store, &caller, "update", move |txn| {
        Box::pin(async move { interactions::update(txn, &c, &*rules, &res, &id, expected).await })
    })
    .await?;
    Ok(audited(written_response(&s, w, a.fmt, a.prefer)))
}

/// A PATCH body within the size limit, read by its media type.
async fn read_patch(
    s: &StoreState,
    headers: &HeaderMap,
    body: Body,
) -> Result<crate::fhir::patch::Patch, StoreError> {
    crate::rest::negotiate::body_version(headers)?;
    let bytes = read_bounded(headers, body, s.config.max_body_bytes).await?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    crate::fhir::patch::parse(content_type, &bytes)
}

/// `PATCH [type]/[id]`: JSON Patch, JSON merge patch or FHIRPath Patch on the current
/// version, validated and written like an update.
pub async fn patch(
    State(s): State<StoreState>,
    caller: Caller,
    Instance { rt, id }: Instance,
    a: Asked,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, StoreError> {
    patch_one(s, caller, rt, PatchOf::Id(id), a, headers, body).await
}

/// `PATCH [type]?criteria`: the patch of the one resource the criteria match.
pub async fn conditional_patch(
    State(s): State<StoreState>,
    caller: Caller,
    TypeName(rt): TypeName,
    a: Asked,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, StoreError> {
    caller.require(rt, Interaction::Search)?;
    let criteria = conditional_criteria(rt, q.as_deref().unwrap_or(""), "conditional patch")?;
    patch_one(s, caller, rt, PatchOf::Matching(criteria), a, headers, body).await
}

async fn patch_one(
    s: StoreState,
    caller: Caller,
    rt: &'static str,
    which: PatchOf,
    a: Asked,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, StoreError> {
    caller.require(rt, Interaction::Read)?;
    caller.require(rt, Interaction::Update)?;
    let expected = if_match(&headers, rt)?;
    let p = read_patch(&s, &headers, body).await?;
    let (c, rules, validation) = (caller.clone(), s.rules.clone(), s.config.validation.clone());
    let w = write_audited(&*s.store, &caller, "patch", move |txn| {
        Box::pin(async move {
            let id = which.resolve(txn, &c, rt).await?;
            let target = crate::fhir::patch::Target {
                resource_type: rt,
                id: &id,
                if_match: expected,
            };
            crate::fhir::patch::patch_in(txn, &c, &*rules, target, &p, &validation).await
        })
    })
    .await?;
    Ok(audited(written_response(&s, w, a.fmt, a.prefer)))
}

pub async fn conditional_update(
    State(s): State<StoreState>,
    caller: Caller,
    TypeName(rt): TypeName,
    a: Asked,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, StoreError> {
    caller.require(rt, Interaction::Update)?;
    caller.require(rt, Interaction::Search)?;
    let criteria = conditional_criteria(rt, q.as_deref().unwrap_or(""), "conditional update")?;
    let expected = if_match(&headers, rt)?;
    let bytes = read_body(&headers, body, s.config.max_body_bytes).await?;
    let res = incoming_from_bytes(rt, &bytes, &s.config.validation)?;
    let (c, rules) = (caller.clone(), s.rules.clone());
    let w = write_audited(&*s.store, &caller, "update", move |txn| {
        Box::pin(async move {
            interactions::conditional_update_in(txn, &c, &*rules, res, &criteria, expected).await
        })
    })
    .await?;
    Ok(audited(written_response(&s, w, a.fmt, a.prefer)))
}

pub async fn delete(
    State(s): State<StoreState>,
    caller: Caller,
    Instance { rt, id }: Instance,
    headers: HeaderMap,
) -> Result<Response, StoreError> {
    caller.require(rt, Interaction::Delete)?;
    let expected = if_match(&headers, rt)?;
    let (c, rules) = (caller.clone(), s.rules.clone());
    let w = write_audited(&*s.store, &caller, "delete", move |txn| {
        Box::pin(async move { interactions::delete(txn, &c, &*rules, rt, &id, expected).await })
    })
    .await?;
    let mut r = StatusCode::NO_CONTENT.into_response();
    if let Some(v) = &w.version {
        version_headers(&mut r, v);
    }
    Ok(audited(r))
}

pub async fn conditional_delete(
    State(s): State<StoreState>,
    caller: Caller,
    TypeName(rt): TypeName,
    RawQuery(q): RawQuery,
) -> Result<Response, StoreError> {
    caller.require(rt, Interaction::Delete)?;
    caller.require(rt, Interaction::Search)?;
    let criteria = conditional_criteria(rt, q.as_deref().unwrap_or(""), "conditional delete")?;
    let (c, rules) = (caller.clone(), s.rules.clone());
    write_audited(&*s.store, &caller, "delete", move |txn| {
        Box::pin(async move {
            match interactions::match_one(txn, &c, rt, &criteria, "conditional delete").await? {
                Some(id) => interactions::delete(txn, &c, &*rules, rt, &id, None).await,
                None => Ok(Written {
                    status: Status::NoContent,
                    version: None,
                    changed: false,
                }),
            }
        })
    })
    .await?;
    Ok(audited(StatusCode::NO_CONTENT.into_response()))
}
