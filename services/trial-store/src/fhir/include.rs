//! `_include` and `_revinclude` (with `:iterate`): the resources a search page points at, or
//! that point at it, up to [`MAX_INCLUDED`] per page: a page that would add more is refused
//! (the client asks again with a smaller `_count`), so one request stays bounded.

use std::collections::BTreeSet;

use trialbridge_fhir::resource_type;
use trialbridge_fhir::search::{Criterion, Cursor, Include, Match, SearchRequest};
use trialbridge_fhir::search_param::SearchParamKind;
use trialbridge_storage::{AccessContext, ResourceStore, StorageError, StoredVersion};

/// How many rounds `:iterate` may take. Cycles end by themselves (nothing new is found); this
/// bounds very long reference chains.
const MAX_ROUNDS: usize = 16;

/// How many resources `_include` and `_revinclude` add to one page at most.
pub const MAX_INCLUDED: usize = 1000;

/// How many references one reverse-include query asks for at once.
const CHUNK: usize = 200;

/// The resources to add to a page as `search.mode = include`; more than [`MAX_INCLUDED`] of
/// them (the search stops collecting there) means the page is too costly.
pub async fn resolve(
    store: &dyn ResourceStore,
    ctx: &AccessContext,
    includes: &[Include],
    page: &[StoredVersion],
) -> Result<Vec<StoredVersion>, StorageError> {
    let mut seen: BTreeSet<(String, String)> = page
        .iter()
        .map(|v| (v.resource_type.clone(), v.id.clone()))
        .collect();
    let mut out = Vec::new();
    let mut frontier: Vec<StoredVersion> = page.to_vec();
    for round in 0..MAX_ROUNDS {
        let mut found = Vec::new();
        for inc in includes.iter().filter(|i| round == 0 || i.iterate) {
            let candidates = if inc.reverse {
                reverse_include(store, ctx, inc, &frontier).await?
            } else {
                forward_include(store, ctx, inc, &frontier).await?
            };
            for v in candidates {
                if seen.insert((v.resource_type.clone(), v.id.clone())) {
                    found.push(v);
                }
            }
            if out.len() + found.len() > MAX_INCLUDED {
                out.extend(found);
                return Ok(out);
            }
        }
        if found.is_empty() {
            break;
        }
        out.extend(found.iter().cloned());
        frontier = found;
    }
    Ok(out)
}

async fn forward_include(
    store: &dyn ResourceStore,
    ctx: &AccessContext,
    inc: &Include,
    from: &[StoredVersion],
) -> Result<Vec<StoredVersion>, StorageError> {
    let ids: Vec<String> = from
        .iter()
        .filter(|v| v.resource_type == inc.source)
        .map(|v| v.id.clone())
        .collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    // The references as the index holds them (`Type/id`), not re-read from the JSON.
    let mut targets: Vec<String> = store
        .index_values(ctx, &inc.source, &inc.param, &ids)
        .await?
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    targets.sort();
    targets.dedup();
    // One read per target type (one query on PostgreSQL), not one per resource.
    let mut by_type: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for r in &targets {
        let Some((t, id)) = r.split_once('/') else {
            continue;
        };
        if inc.target.as_deref().is_some_and(|want| want != t)
            || !resource_type::is_resource_type(t)
        {
            continue;
        }
        by_type.entry(t).or_default().push(id.to_string());
    }
    let mut out = Vec::new();
    for (t, ids) in by_type {
        let mut found = store.read_many(ctx, t, &ids).await?;
        found.retain(|f| !f.deleted);
        found.sort_by(|a, b| a.id.cmp(&b.id));
        out.extend(found);
    }
    Ok(out)
}

async fn reverse_include(
    store: &dyn ResourceStore,
    ctx: &AccessContext,
    inc: &Include,
    to: &[StoredVersion],
) -> Result<Vec<StoredVersion>, StorageError> {
    let targets: Vec<Match> = to
        .iter()
        .filter(|v| inc.target.as_deref().is_none_or(|t| t == v.resource_type))
        .map(|v| Match::Reference {
            target_type: Some(v.resource_type.clone()),
            id: v.id.clone(),
        })
        .collect();
    let mut out = Vec::new();
    for chunk in targets.chunks(CHUNK) {
        let request = SearchRequest {
            criteria: vec![Criterion {
                param: inc.param.clone(),
                kind: SearchParamKind::Reference,
                any_of: chunk.to_vec(),
            }],
            ..Default::default()
        };
        let mut after: Option<Cursor> = None;
        loop {
            let page = store
                .search(ctx, &inc.source, &request, after.as_ref(), 1000)
                .await?;
            out.extend(page.versions);
            match page.next {
                Some(_) if out.len() > MAX_INCLUDED => return Ok(out),
                Some(c) => after = Some(c),
                None => break,
            }
        }
    }
    Ok(out)
}
