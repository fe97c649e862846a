//! Search: type level, compartment (`Patient/{id}/Observation`) and system level (`_type`),
//! with keyset paging, `_sort`, `_total`, `_summary`, `_elements`, `_include` and `_revinclude`.

use serde_json::json;
use trialbridge_auth::Interaction;
use trialbridge_fhir::bundle::{BundleEntry, BundleWriter};
use trialbridge_fhir::json::subset;
use trialbridge_fhir::search::{compartment_criterion, parse, Cursor, SearchRequest};
use trialbridge_fhir::{resource_type, IssueType, OperationOutcome, OutcomeIssue};
use trialbridge_storage::StoredVersion;

use crate::error::{Status, StoreError};
use crate::fhir::interactions::{checked_id, found, known_type};
use crate::fhir::{page_link, StoreState};
use crate::security::Caller;

/// A type-level search (`GET [type]?...`): the searchset Bundle. Under `strict` (Prefer:
/// handling=strict) an unknown parameter is an error instead of an outcome entry.
pub async fn type_search(
    s: &StoreState,
    caller: &Caller,
    rt: &'static str,
    pairs: Vec<(String, String)>,
    strict: bool,
) -> Result<String, StoreError> {
    run(s, caller, rt, pairs, strict, None).await
}

/// `[compartment]/{id}/[type]?...` (`Patient/{id}/Observation`): the search within that
/// Patient's compartment, when the caller may see its owner.
pub async fn compartment_search(
    s: &StoreState,
    caller: &Caller,
    (ct, id, t): (&str, &str, &str),
    pairs: Vec<(String, String)>,
    strict: bool,
) -> Result<String, StoreError> {
    let compartment = known_type(ct)?;
    checked_id(compartment, id)?;
    let rt = known_type(t)?;
    let criterion = compartment_criterion(compartment, id, rt).ok_or_else(|| {
        StoreError::new(Status::BadRequest, IssueType::NotSupported, format!("{rt} is not in the {compartment} compartment (only the Patient compartment is supported)")).at(rt.to_string())
    })?;
    caller.require(compartment, Interaction::Read)?;
    // A compartment is searched only when its owner is visible to the caller.
    found(
        compartment,
        id,
        s.store.read(&caller.ctx, compartment, id).await?,
    )?;
    run(
        s,
        caller,
        rt,
        pairs,
        strict,
        Some((format!("{compartment}/{id}/{rt}"), criterion)),
    )
    .await
}

/// Summary options this server honours.
struct Shape {
    count_only: bool,
    drop_narrative: bool,
    elements: Option<Vec<String>>,
}

fn shape(
    pairs: &[(String, String)],
    strict: bool,
    ignored: &mut Vec<String>,
) -> Result<Shape, StoreError> {
    let mut sh = Shape {
        count_only: false,
        drop_narrative: false,
        elements: None,
    };
    for (k, v) in pairs {
        match (k.as_str(), v.as_str()) {
            // R4 (search.html#count): "_count=0 ... is treated as _summary=count".
            ("_summary", "count") | ("_count", "0") => sh.count_only = true,
            ("_summary", "data") => sh.drop_narrative = true,
            ("_summary", "false") => {}
            ("_summary", other) => {
                if strict {
                    return Err(StoreError::new(
                        Status::BadRequest,
                        IssueType::NotSupported,
                        format!("_summary={other} is not supported (count, data and false are)"),
                    )
                    .at("_summary"));
                }
                ignored.push("_summary".into());
            }
            ("_elements", list) => {
                sh.elements = Some(
                    list.split(',')
                        .map(|e| e.trim().to_string())
                        .filter(|e| !e.is_empty())
                        .collect(),
                )
            }
            _ => {}
        }
    }
    Ok(sh)
}

fn entry<'a>(base: &str, v: &'a StoredVersion, mode: &str, sh: &Shape) -> BundleEntry<'a> {
    let shaped = (sh.elements.is_some() || sh.drop_narrative)
        .then(|| {
            v.body
                .as_deref()
                .map(|b| subset(b, sh.elements.as_deref(), sh.drop_narrative))
        })
        .flatten();
    BundleEntry {
        full_url: Some(format!("{base}/{}/{}", v.resource_type, v.id)),
        resource: if shaped.is_some() {
            None
        } else {
            v.body.as_deref()
        },
        resource_value: shaped.and_then(|t| serde_json::from_str(&t).ok()),
        search: Some(json!({ "mode": mode })),
        ..Default::default()
    }
}

fn bad_cursor() -> StoreError {
    StoreError::new(
        Status::BadRequest,
        IssueType::Value,
        "_cursor is not a cursor from a next link of this search",
    )
    .at("_cursor")
}

async fn run(
    s: &StoreState,
    caller: &Caller,
    rt: &'static str,
    pairs: Vec<(String, String)>,
    strict: bool,
    compartment: Option<(String, trialbridge_fhir::search::Criterion)>,
) -> Result<String, StoreError> {
    caller.require(rt, Interaction::Search)?;
    let mut req = parse(rt, &pairs, strict)
        .map_err(|issue| StoreError::from_issue(Status::BadRequest, issue))?;
    let sh = shape(&pairs, strict, &mut req.ignored)?;
    let (path, extra) = match compartment {
        Some((p, c)) => (p, Some(c)),
        None => (rt.to_string(), None),
    };
    req.criteria.extend(extra);
    let count = req
        .count
        .unwrap_or(s.config.default_count)
        .min(s.config.max_count);
    let cursor_text = pairs
        .iter()
        .find(|(k, _)| k == "_cursor")
        .map(|(_, v)| v.as_str());
    let cursor = cursor_text
        .map(|t| Cursor::decode(t, req.sort.len()).ok_or_else(bad_cursor))
        .transpose()?;
    let total_wanted = sh.count_only || pairs.iter().any(|(k, v)| k == "_total" && v == "accurate");
    let ctx = &caller.ctx;
    let base = &s.config.base_url;
    // self/next keep what was understood, and drop what was ignored.
    let kept: Vec<&(String, String)> = pairs
        .iter()
        .filter(|(k, _)| k != "_cursor" && !req.ignored.contains(k))
        .collect();
    let mut b = BundleWriter::new("searchset");
    if total_wanted {
        b.total(s.store.count(ctx, rt, &req).await?);
    }
    b.link("self", &page_link(base, &path, &kept, cursor_text));
    let page = if sh.count_only || count == 0 {
        None
    } else {
        Some(
            s.store
                .search(ctx, rt, &req, cursor.as_ref(), count)
                .await?,
        )
    };
    let mut included = match &page {
        Some(page) if !req.includes.is_empty() => {
            crate::fhir::include::resolve(&*s.store, ctx, &req.includes, &page.versions).await?
        }
        _ => Vec::new(),
    };
    if included.len() > crate::fhir::include::MAX_INCLUDED {
        return Err(StoreError::new(
            Status::BadRequest,
            IssueType::TooCostly,
            format!(
                "_include/_revinclude would add more than {} resources to this page; ask again with a smaller _count",
                crate::fhir::include::MAX_INCLUDED
            ),
        )
        .at(if req.includes.iter().any(|i| i.reverse) { "_revinclude" } else { "_include" }));
    }
    // Included resources of a type the caller may not read are left out, as SMART servers do.
    included.retain(|v| caller.permits(&v.resource_type, Interaction::Read));
    if let Some(page) = &page {
        if let Some(next) = &page.next {
            b.link("next", &page_link(base, &path, &kept, Some(&next.encode())));
        }
        for v in &page.versions {
            b.entry(entry(base, v, "match", &sh));
        }
    }
    for v in &included {
        b.entry(entry(base, v, "include", &sh));
    }
    if !req.ignored.is_empty() {
        b.entry(ignored_parameters_entry(&req.ignored));
    }
    Ok(b.finish())
}

/// `GET /fhir?_type=Patient,Observation&...`: the same search over several types (all types
/// without `_type`), type after type, paged with one cursor.
pub async fn system_search(
    s: &StoreState,
    caller: &Caller,
    pairs: Vec<(String, String)>,
    strict: bool,
) -> Result<String, StoreError> {
    let types: Vec<&'static str> = match pairs.iter().find(|(k, _)| k == "_type") {
        Some((_, list)) => list
            .split(',')
            .map(|t| {
                let t = known_type(t.trim()).map_err(|e| e.at("_type"))?;
                caller.require(t, Interaction::Search)?;
                Ok::<_, StoreError>(t)
            })
            .collect::<Result<_, _>>()?,
        None => resource_type::all()
            .iter()
            .copied()
            .filter(|t| caller.permits(t, Interaction::Search))
            .collect(),
    };
    let rest: Vec<(String, String)> = pairs
        .iter()
        .filter(|(k, _)| k != "_type")
        .cloned()
        .collect();
    let mut requests: Vec<SearchRequest> = Vec::with_capacity(types.len());
    let mut ignored = Vec::new();
    for t in &types {
        let r = parse(t, &rest, strict)
            .map_err(|issue| StoreError::from_issue(Status::BadRequest, issue))?;
        if !r.sort.is_empty() || !r.includes.is_empty() {
            return Err(StoreError::new(
                Status::BadRequest,
                IssueType::NotSupported,
                "_sort and _include are supported per type, not in a system-level search",
            )
            .at("_sort"));
        }
        ignored.extend(r.ignored.iter().cloned());
        requests.push(r);
    }
    ignored.sort();
    ignored.dedup();
    let sh = shape(&rest, strict, &mut ignored)?;
    let count = requests
        .first()
        .and_then(|r| r.count)
        .unwrap_or(s.config.default_count)
        .min(s.config.max_count);
    // The cursor names the type index and that type's own cursor.
    let cursor_text = pairs
        .iter()
        .find(|(k, _)| k == "_cursor")
        .map(|(_, v)| v.as_str());
    let (mut ti, mut inner) = match cursor_text {
        None => (0usize, None),
        Some(c) => {
            let (i, rest) = c.split_once(':').ok_or_else(bad_cursor)?;
            let i: usize = i.parse().map_err(|_| bad_cursor())?;
            let inner = if rest.is_empty() {
                None
            } else {
                Some(Cursor::decode(rest, 0).ok_or_else(bad_cursor)?)
            };
            (i, inner)
        }
    };
    let ctx = &caller.ctx;
    let base = &s.config.base_url;
    let kept: Vec<&(String, String)> = pairs
        .iter()
        .filter(|(k, _)| k != "_cursor" && !ignored.contains(k))
        .collect();
    let mut b = BundleWriter::new("searchset");
    if sh.count_only || pairs.iter().any(|(k, v)| k == "_total" && v == "accurate") {
        let mut total = 0;
        for (t, r) in types.iter().zip(&requests) {
            total += s.store.count(ctx, t, r).await?;
        }
        b.total(total);
    }
    b.link("self", &page_link(base, "", &kept, cursor_text));
    let mut found: Vec<StoredVersion> = Vec::new();
    let mut next = None;
    while !sh.count_only && ti < types.len() && found.len() < count {
        let page = s
            .store
            .search(
                ctx,
                types[ti],
                &requests[ti],
                inner.as_ref(),
                count - found.len(),
            )
            .await?;
        found.extend(page.versions);
        match page.next {
            Some(c) => {
                next = Some(format!("{ti}:{}", c.encode()));
                break;
            }
            None => {
                ti += 1;
                inner = None;
            }
        }
    }
    if next.is_none() && found.len() == count && ti < types.len() {
        next = Some(format!("{ti}:"));
    }
    if let Some(n) = &next {
        b.link("next", &page_link(base, "", &kept, Some(n)));
    }
    for v in &found {
        b.entry(entry(base, v, "match", &sh));
    }
    if !ignored.is_empty() {
        b.entry(ignored_parameters_entry(&ignored));
    }
    Ok(b.finish())
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
