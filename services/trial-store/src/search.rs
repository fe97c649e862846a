//! Type-level search with keyset paging, `_sort`, `_total`, `_summary=count`, `_include` and
//! `_revinclude`.

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use http_body_util::BodyExt;
use serde_json::json;
use trialbridge_fhir::bundle::{BundleEntry, BundleWriter};
use trialbridge_fhir::search::{parse, Cursor};
use trialbridge_fhir::{IssueType, OperationOutcome, OutcomeIssue};

use crate::error::ApiError;
use crate::http::{access, json_response, prefer, query_pairs};
use crate::interactions::known_type;
use crate::negotiate::negotiate;
use crate::StoreState;

pub async fn type_search(
    State(s): State<StoreState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let Path(t) = path?;
    let rt = known_type(&t)?;
    run(&s, &headers, rt, query_pairs(q.as_deref())).await
}

pub async fn type_search_post(
    State(s): State<StoreState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> Result<Response, ApiError> {
    let Path(t) = path?;
    let rt = known_type(&t)?;
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/x-www-form-urlencoded") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IssueType::NotSupported,
            "_search takes an application/x-www-form-urlencoded body",
        )
        .at("Content-Type"));
    }
    let bytes = http_body_util::Limited::new(body, s.config.max_body_bytes)
        .collect()
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                IssueType::TooLong,
                "the search form is too large",
            )
        })?
        .to_bytes();
    let mut pairs = query_pairs(q.as_deref());
    pairs.extend(url::form_urlencoded::parse(&bytes).into_owned());
    run(&s, &headers, rt, pairs).await
}

pub async fn system_search() -> Result<Response, ApiError> {
    Err(ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        IssueType::NotSupported,
        "system-level search is not supported yet; search per type (GET /fhir/[type]?...)",
    ))
}

async fn run(
    s: &StoreState,
    headers: &HeaderMap,
    rt: &'static str,
    pairs: Vec<(String, String)>,
) -> Result<Response, ApiError> {
    let fmt = negotiate(headers, &pairs)?;
    let strict = prefer(headers).strict;
    let req = parse(rt, &pairs, strict)
        .map_err(|issue| ApiError::from_issue(StatusCode::BAD_REQUEST, issue))?;
    let count = req
        .count
        .unwrap_or(s.config.default_count)
        .min(s.config.max_count);
    let cursor_text = pairs
        .iter()
        .find(|(k, _)| k == "_cursor")
        .map(|(_, v)| v.as_str());
    let cursor = match cursor_text {
        None => None,
        Some(t) => Some(Cursor::decode(t, req.sort.len()).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                IssueType::Value,
                "_cursor is not a cursor from a next link of this search",
            )
            .at("_cursor")
        })?),
    };
    let total_wanted = pairs
        .iter()
        .any(|(k, v)| (k == "_total" && v == "accurate") || (k == "_summary" && v == "count"));
    let summary_count = pairs.iter().any(|(k, v)| k == "_summary" && v == "count");
    let ctx = access(headers);
    let base = &s.config.base_url;
    // self/next keep what was understood, and drop what was ignored.
    let kept: Vec<&(String, String)> = pairs
        .iter()
        .filter(|(k, _)| k != "_cursor" && !req.ignored.contains(k))
        .collect();
    let link = |c: Option<&str>| {
        let mut ser = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in &kept {
            ser.append_pair(k, v);
        }
        if let Some(c) = c {
            ser.append_pair("_cursor", c);
        }
        let qs = ser.finish();
        if qs.is_empty() {
            format!("{base}/{rt}")
        } else {
            format!("{base}/{rt}?{qs}")
        }
    };
    let mut b = BundleWriter::new("searchset");
    if total_wanted {
        b.total(s.store.count(&ctx, rt, &req).await?);
    }
    b.link("self", &link(cursor_text));
    let page = if summary_count || count == 0 {
        None
    } else {
        Some(
            s.store
                .search(&ctx, rt, &req, cursor.as_ref(), count)
                .await?,
        )
    };
    if let Some(page) = &page {
        if let Some(next) = &page.next {
            b.link("next", &link(Some(&next.encode())));
        }
        for v in &page.versions {
            b.entry(BundleEntry {
                full_url: Some(format!("{base}/{rt}/{}", v.id)),
                resource: v.body.as_deref(),
                search: Some(json!({"mode": "match"})),
                ..Default::default()
            });
        }
    }
    let included = match &page {
        Some(page) if !req.includes.is_empty() => {
            crate::include::resolve(&*s.store, &ctx, &req.includes, &page.versions).await?
        }
        _ => Vec::new(),
    };
    for v in &included {
        b.entry(BundleEntry {
            full_url: Some(format!("{base}/{}/{}", v.resource_type, v.id)),
            resource: v.body.as_deref(),
            search: Some(json!({"mode": "include"})),
            ..Default::default()
        });
    }
    if !req.ignored.is_empty() {
        b.entry(ignored_parameters_entry(&req.ignored));
    }
    Ok(json_response(StatusCode::OK, b.finish(), fmt))
}

/// The `search.mode = outcome` entry that tells a lenient client which parameters were ignored.
pub fn ignored_parameters_entry(ignored: &[String]) -> BundleEntry<'static> {
    let oo = OperationOutcome {
        issues: ignored
            .iter()
            .map(|p| {
                OutcomeIssue::warning(
                    IssueType::NotSupported,
                    format!("parameter '{p}' is not supported and was ignored"),
                )
                .at(p.clone())
            })
            .collect(),
    };
    BundleEntry {
        resource_value: Some(oo.to_json()),
        search: Some(json!({"mode": "outcome"})),
        ..Default::default()
    }
}
