//! history: instance, type and system level, paged by change sequence.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::json;
use trialbridge_fhir::bundle::{BundleEntry, BundleWriter};
use trialbridge_fhir::{instant, IssueType};
use trialbridge_storage::{HistoryOrder, HistoryQuery, HistoryScope, StoredVersion};

use trialbridge_auth::Interaction;

use crate::access::Caller;
use crate::error::ApiError;
use crate::http::{json_response, page_link, prefer, query_pairs};
use crate::interactions::{checked_id, known_type};
use crate::negotiate::negotiate;
use crate::StoreState;

pub async fn system(
    State(s): State<StoreState>,
    caller: Caller,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    caller.require_every_type(Interaction::Search)?;
    respond(
        &s,
        &caller,
        &headers,
        q.as_deref(),
        HistoryScope::System,
        "_history".to_string(),
    )
    .await
}

pub async fn of_type(
    State(s): State<StoreState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let Path(t) = path?;
    let rt = known_type(&t)?;
    caller.require(rt, Interaction::Search)?;
    respond(
        &s,
        &caller,
        &headers,
        q.as_deref(),
        HistoryScope::Type(rt.to_string()),
        format!("{rt}/_history"),
    )
    .await
}

pub async fn instance(
    State(s): State<StoreState>,
    caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let Path((t, id)) = path?;
    let rt = known_type(&t)?;
    caller.require(rt, Interaction::Read)?;
    checked_id(rt, &id)?;
    if s.store.read(&caller.ctx, rt, &id).await?.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            IssueType::NotFound,
            format!("{rt}/{id} is not known"),
        )
        .at(format!("{rt}.id")));
    }
    respond(
        &s,
        &caller,
        &headers,
        q.as_deref(),
        HistoryScope::Instance(rt.to_string(), id.clone()),
        format!("{rt}/{id}/_history"),
    )
    .await
}

/// The paging cursor: the last sequence number delivered and the snapshot of the first page.
fn parse_cursor(v: &str) -> Option<(i64, i64)> {
    let (a, b) = v.split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

async fn respond(
    s: &StoreState,
    caller: &Caller,
    headers: &HeaderMap,
    q: Option<&str>,
    scope: HistoryScope,
    path: String,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(q);
    let fmt = negotiate(headers, &pairs)?;
    let strict = prefer(headers).strict;
    let mut query = HistoryQuery {
        scope,
        since_us: None,
        at_or_before_us: None,
        order: HistoryOrder::NewestFirst,
        after_seq: None,
        snapshot_seq: None,
        count: s.config.default_count,
    };
    let mut ignored = Vec::new();
    let mut kept = Vec::new();
    for (k, v) in &pairs {
        let bad = |what: &str| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                IssueType::Value,
                format!("{k}: {what}, got '{v}'"),
            )
            .at(k.clone())
        };
        match k.as_str() {
            "_since" | "_at" => {
                let t = instant::parse(v)
                    .ok_or_else(|| bad("expected an instant such as 2026-01-31T12:00:00Z"))?;
                let us = (t.unix_timestamp_nanos() / 1000) as i64;
                if k == "_since" {
                    query.since_us = Some(us);
                } else {
                    query.at_or_before_us = Some(us);
                }
            }
            "_count" => {
                query.count = v
                    .parse::<usize>()
                    .map_err(|_| bad("expected a non-negative integer"))?
                    .min(s.config.max_count)
            }
            "_sort" => match v.as_str() {
                "_lastUpdated" => query.order = HistoryOrder::OldestFirst,
                "-_lastUpdated" => query.order = HistoryOrder::NewestFirst,
                _ => return Err(bad("history sorts by _lastUpdated or -_lastUpdated only")),
            },
            "_cursor" => {
                let (after, snap) =
                    parse_cursor(v).ok_or_else(|| bad("not a cursor from a next link"))?;
                query.after_seq = Some(after);
                query.snapshot_seq = Some(snap);
                continue;
            }
            "_format" | "_pretty" => {}
            _ => {
                if strict {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        IssueType::NotSupported,
                        format!("history parameter '{k}' is not supported"),
                    )
                    .at(k.clone()));
                }
                ignored.push(k.clone());
                continue;
            }
        }
        kept.push((k.clone(), v.clone()));
    }
    let page = s.store.history(&caller.ctx, &query).await?;
    // For oldest-first paging the snapshot bound must not hide later commits from next pages.
    let snap_for_link = match query.order {
        HistoryOrder::NewestFirst => page.snapshot_seq,
        HistoryOrder::OldestFirst => i64::MAX,
    };
    let base = &s.config.base_url;
    let kept: Vec<&(String, String)> = kept.iter().collect();
    let link = |cursor: Option<String>| page_link(base, &path, &kept, cursor.as_deref());
    let mut b = BundleWriter::new("history");
    b.link(
        "self",
        &link(
            query
                .after_seq
                .map(|a| format!("{a}.{}", query.snapshot_seq.unwrap_or(snap_for_link))),
        ),
    );
    if page.has_more {
        if let Some(last) = page.versions.last() {
            b.link("next", &link(Some(format!("{}.{snap_for_link}", last.seq))));
        }
    }
    if let Some(last) = page.versions.iter().map(|v| &v.last_updated).max() {
        b.last_updated(last);
    }
    for v in &page.versions {
        b.entry(history_entry(base, v));
    }
    if !ignored.is_empty() {
        b.entry(crate::search::ignored_parameters_entry(&ignored));
    }
    Ok(json_response(StatusCode::OK, b.finish(), fmt))
}

/// One history entry: the version with the request that made it.
pub fn history_entry<'a>(base: &str, v: &'a StoredVersion) -> BundleEntry<'a> {
    let (method, url, status) = if v.deleted {
        (
            "DELETE",
            format!("{}/{}", v.resource_type, v.id),
            "204 No Content",
        )
    } else if v.version == 1 {
        ("POST", v.resource_type.clone(), "201 Created")
    } else {
        ("PUT", format!("{}/{}", v.resource_type, v.id), "200 OK")
    };
    BundleEntry {
        full_url: Some(format!("{base}/{}/{}", v.resource_type, v.id)),
        resource: v.body.as_deref(),
        request: Some(json!({ "method": method, "url": url })),
        response: Some(
            json!({ "status": status, "etag": format!("W/\"{}\"", v.version), "lastModified": v.last_updated }),
        ),
        ..Default::default()
    }
}
