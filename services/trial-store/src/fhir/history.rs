//! history: instance, type and system level, paged by change sequence.

use serde_json::json;
use trialbridge_fhir::bundle::{BundleEntry, BundleWriter};
use trialbridge_fhir::{instant, IssueType};
use trialbridge_storage::{HistoryOrder, HistoryQuery, HistoryScope, StoredVersion};

use crate::error::{Status, StoreError};
use crate::fhir::{page_link, StoreState};
use crate::security::Caller;

/// The history of one resource: 404 when the caller cannot see it.
pub async fn instance_history(
    s: &StoreState,
    caller: &Caller,
    rt: &str,
    id: &str,
    pairs: &[(String, String)],
    strict: bool,
) -> Result<String, StoreError> {
    if s.store.read(&caller.ctx, rt, id).await?.is_none() {
        return Err(StoreError::new(
            Status::NotFound,
            IssueType::NotFound,
            format!("{rt}/{id} is not known"),
        )
        .at(format!("{rt}.id")));
    }
    history(
        s,
        caller,
        HistoryScope::Instance(rt.to_string(), id.to_string()),
        format!("{rt}/{id}/_history"),
        pairs,
        strict,
    )
    .await
}

/// The paging cursor: the last sequence number delivered and the snapshot of the first page.
fn parse_cursor(v: &str) -> Option<(i64, i64)> {
    let (a, b) = v.split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// A history Bundle of `scope` (`path` is its URL below the base, for the links): the query
/// parameters `_since`, `_at`, `_count`, `_sort` and `_cursor`; others are ignored (with an
/// outcome entry) or, under `strict`, refused. The caller's permission was checked.
pub async fn history(
    s: &StoreState,
    caller: &Caller,
    scope: HistoryScope,
    path: String,
    pairs: &[(String, String)],
    strict: bool,
) -> Result<String, StoreError> {
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
    for (k, v) in pairs {
        let bad = |what: &str| {
            StoreError::new(
                Status::BadRequest,
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
                    return Err(StoreError::new(
                        Status::BadRequest,
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
        b.entry(crate::fhir::search::ignored_parameters_entry(&ignored));
    }
    Ok(b.finish())
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
