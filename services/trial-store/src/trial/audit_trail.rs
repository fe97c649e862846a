//! The audit trail as FHIR AuditEvents: read by id and search by the R4 parameters an
//! inspector uses (`date` ranges, `agent`, `entity`, `patient`, `type`, `subtype`, `action`,
//! `outcome`, `site`), with `_summary=count`.
//!
//! `entity`, `patient`, `date` and `site` narrow the rows in storage; the others are matched
//! on the events themselves, so one page may hold fewer events than `_count` while the `next`
//! link goes on (scanning at most [`SCAN_PAGES`] storage pages per request keeps each answer
//! bounded).

use serde_json::{json, Value};
use trialbridge_auth::Interaction;
use trialbridge_fhir::bundle::{BundleEntry, BundleWriter};
use trialbridge_fhir::IssueType;
use trialbridge_storage::AuditQuery;

use crate::error::{Status, StoreError};
use crate::fhir::{page_link, StoreState};
use crate::security::audit::expand;
use crate::security::Caller;

/// The search parameters served, for the CapabilityStatement and the 400 that names them.
pub const AUDIT_EVENT_PARAMS: &[(&str, &str, &str)] = &[
    (
        "date",
        "date",
        "When the event was recorded (ge, gt, le, lt, eq; repeat for a range)",
    ),
    (
        "agent",
        "reference",
        "Who: the agent's identifier value or reference",
    ),
    (
        "entity",
        "reference",
        "The resource the event is about (Type/id)",
    ),
    (
        "patient",
        "reference",
        "Events about this Patient (Patient/id or id)",
    ),
    ("type", "token", "Event type (rest)"),
    (
        "subtype",
        "token",
        "The restful interaction (read, create, update, delete, ...)",
    ),
    ("action", "token", "C, R, U, D or E"),
    ("outcome", "token", "0 success, 4 refused, 8 failed"),
    (
        "site",
        "token",
        "The trial site whose data the event concerns (source.site)",
    ),
];

/// The CapabilityStatement entry of AuditEvent: read and search only, with the parameters
/// above (nobody writes an AuditEvent through the API; the store records them).
pub fn capability_entry(entry: &mut Value) {
    let params: Vec<Value> = AUDIT_EVENT_PARAMS
        .iter()
        .map(|(name, kind, doc)| {
            json!({"name": name, "type": kind, "documentation": doc,
                   "definition": format!("http://hl7.org/fhir/SearchParameter/AuditEvent-{name}")})
        })
        .chain(std::iter::once(json!({"name": "_summary", "type": "token", "documentation": "count: the number of matching events only"})))
        .collect();
    *entry = json!({
        "type": "AuditEvent",
        "interaction": [{"code": "read"}, {"code": "search-type"}],
        "readHistory": false,
        "updateCreate": false,
        "conditionalCreate": false,
        "conditionalRead": "not-supported",
        "conditionalUpdate": false,
        "conditionalDelete": "not-supported",
        "searchParam": params,
    });
}

/// Storage pages read for one answer at most when events are matched in memory.
pub const SCAN_PAGES: usize = 20;

fn bad(msg: impl Into<String>, at: &str) -> StoreError {
    StoreError::new(Status::BadRequest, IssueType::Value, msg).at(at.to_string())
}

/// `GET AuditEvent/{id}`: the event's JSON.
pub async fn audit_event(s: &StoreState, caller: &Caller, id: &str) -> Result<String, StoreError> {
    caller.require("AuditEvent", Interaction::Read)?;
    let not_found = || {
        StoreError::new(
            Status::NotFound,
            IssueType::NotFound,
            format!("AuditEvent/{id} is not known"),
        )
    };
    let seq: i64 = id
        .split('.')
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(not_found)?;
    let row = s
        .store
        .audit_read(&caller.ctx, seq)
        .await?
        .ok_or_else(not_found)?;
    let (_, body) = expand(&row)
        .into_iter()
        .find(|(i, _)| i == id)
        .ok_or_else(not_found)?;
    Ok(body)
}

/// A token value, `code` or `system|code`, of a comma-separated list.
fn tokens(v: &str) -> Vec<(Option<String>, String)> {
    v.split(',')
        .map(|t| match t.split_once('|') {
            Some((sys, code)) => (Some(sys.to_string()), code.to_string()),
            None => (None, t.to_string()),
        })
        .collect()
}

fn token_matches(want: &[(Option<String>, String)], system: Option<&str>, code: &str) -> bool {
    want.iter().any(|(sys, c)| {
        c == code
            && sys
                .as_deref()
                .is_none_or(|s| s.is_empty() || Some(s) == system)
    })
}

/// What is matched on the events themselves; each list is ORed, the lists ANDed.
#[derive(Default)]
struct EventFilter {
    agents: Vec<Vec<String>>,
    types: Vec<Vec<(Option<String>, String)>>,
    subtypes: Vec<Vec<(Option<String>, String)>>,
    actions: Vec<Vec<String>>,
    outcomes: Vec<Vec<String>>,
}

impl EventFilter {
    fn is_empty(&self) -> bool {
        self.agents.is_empty()
            && self.types.is_empty()
            && self.subtypes.is_empty()
            && self.actions.is_empty()
            && self.outcomes.is_empty()
    }

    fn matches(&self, e: &Value) -> bool {
        let agents: Vec<&str> = e["agent"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|a| {
                [
                    a.pointer("/who/identifier/value").and_then(Value::as_str),
                    a.pointer("/who/reference").and_then(Value::as_str),
                    a.pointer("/altId").and_then(Value::as_str),
                ]
            })
            .flatten()
            .collect();
        let str_of = |p: &str| e.pointer(p).and_then(Value::as_str).unwrap_or("");
        self.agents
            .iter()
            .all(|any| any.iter().any(|w| agents.contains(&w.as_str())))
            && self.types.iter().all(|any| {
                token_matches(
                    any,
                    e.pointer("/type/system").and_then(Value::as_str),
                    str_of("/type/code"),
                )
            })
            && self.subtypes.iter().all(|any| {
                e["subtype"].as_array().into_iter().flatten().any(|c| {
                    token_matches(any, c["system"].as_str(), c["code"].as_str().unwrap_or(""))
                })
            })
            && self
                .actions
                .iter()
                .all(|any| any.iter().any(|a| a == str_of("/action")))
            && self
                .outcomes
                .iter()
                .all(|any| any.iter().any(|o| o == str_of("/outcome")))
    }
}

fn list(v: &str) -> Vec<String> {
    v.split(',').map(String::from).collect()
}

/// Narrows `q`'s time window by one `date` value.
fn narrow_date(q: &mut AuditQuery, v: &str) -> Result<(), StoreError> {
    let (prefix, value) = match v.get(..2) {
        Some(p @ ("ge" | "gt" | "le" | "lt" | "eq")) => (p, &v[2..]),
        _ => ("eq", v),
    };
    let r = trialbridge_fhir::date::parse_range(value).ok_or_else(|| {
        bad(
            format!("'{v}' is not a date search value (prefix ge, gt, le, lt or eq, then a date)"),
            "date",
        )
    })?;
    let (low, high) = match prefix {
        "ge" => (Some(r.low), None),
        "gt" => (Some(r.high), None),
        "le" => (None, Some(r.high)),
        "lt" => (None, Some(r.low)),
        _ => (Some(r.low), Some(r.high)),
    };
    if let Some(l) = low {
        q.since_us = Some(q.since_us.map_or(l, |x| x.max(l)));
    }
    if let Some(h) = high {
        q.before_us = Some(q.before_us.map_or(h, |x| x.min(h)));
    }
    Ok(())
}

/// `GET AuditEvent?...`: oldest first, paged by chain position.
pub async fn audit_search(
    s: &StoreState,
    caller: &Caller,
    pairs: &[(String, String)],
) -> Result<String, StoreError> {
    caller.require("AuditEvent", Interaction::Search)?;
    let mut q = AuditQuery {
        count: s.config.default_count,
        ..Default::default()
    };
    let mut filter = EventFilter::default();
    let mut count_only = false;
    let entity_of = |q: &mut AuditQuery, e: String, at: &str| {
        if q.entity.as_ref().is_some_and(|x| *x != e) {
            return Err(bad(
                format!("{at} names a second resource; search one at a time"),
                at,
            ));
        }
        q.entity = Some(e);
        Ok(())
    };
    for (k, v) in pairs {
        match k.as_str() {
            "entity" => {
                let e = v.split("/_history/").next().unwrap_or(v).to_string();
                entity_of(&mut q, e, "entity")?;
            }
            "patient" => {
                let id = v.strip_prefix("Patient/").unwrap_or(v);
                entity_of(&mut q, format!("Patient/{id}"), "patient")?;
            }
            "date" => narrow_date(&mut q, v)?,
            "site" => q.site = Some(v.rsplit('|').next().unwrap_or(v).to_string()),
            "agent" => filter.agents.push(list(v)),
            "type" => filter.types.push(tokens(v)),
            "subtype" => filter.subtypes.push(tokens(v)),
            "action" => filter.actions.push(list(v)),
            "outcome" => filter.outcomes.push(list(v)),
            "_summary" if v == "count" => count_only = true,
            "_count" => {
                q.count = v
                    .parse::<usize>()
                    .map_err(|_| bad("_count is a number", "_count"))?
                    .min(s.config.max_count)
            }
            "_cursor" => {
                q.after_seq = Some(
                    v.parse()
                        .map_err(|_| bad("_cursor is not ours", "_cursor"))?,
                )
            }
            "_format" => {}
            other => {
                let served: Vec<&str> = AUDIT_EVENT_PARAMS.iter().map(|p| p.0).collect();
                return Err(bad(
                    format!(
                        "AuditEvent is searched by {}, _summary=count, _count (not {other})",
                        served.join(", ")
                    ),
                    other,
                ));
            }
        }
    }
    let base = &s.config.base_url;
    if count_only {
        // Counting reads the whole window: 5000 rows a round.
        let mut total = 0usize;
        let mut scan = AuditQuery {
            count: 5000,
            ..q.clone()
        };
        loop {
            let page = s.store.audit_search(&caller.ctx, &scan).await?;
            let Some(last) = page.last() else { break };
            scan.after_seq = Some(last.seq);
            total += page
                .iter()
                .flat_map(expand)
                .filter(|(_, b)| {
                    filter.is_empty()
                        || serde_json::from_str::<Value>(b).is_ok_and(|e| filter.matches(&e))
                })
                .count();
        }
        let mut b = BundleWriter::new("searchset");
        b.total(total as u64);
        let kept: Vec<&(String, String)> = pairs.iter().collect();
        b.link("self", &page_link(base, "AuditEvent", &kept, None));
        return Ok(b.finish());
    }
    let mut events: Vec<(String, String)> = Vec::new();
    let mut more: Option<i64> = None;
    let mut scan = q.clone();
    for _ in 0..SCAN_PAGES {
        let page = s.store.audit_search(&caller.ctx, &scan).await?;
        let full = page.len() == scan.count && scan.count > 0;
        for row in &page {
            for (id, body) in expand(row) {
                if filter.is_empty()
                    || serde_json::from_str::<Value>(&body).is_ok_and(|e| filter.matches(&e))
                {
                    events.push((id, body));
                }
            }
        }
        more = page.last().map(|a| a.seq).filter(|_| full);
        if !filter.is_empty() && events.len() < q.count && more.is_some() {
            scan.after_seq = more;
            continue;
        }
        break;
    }
    let kept: Vec<&(String, String)> = pairs.iter().filter(|(k, _)| k != "_cursor").collect();
    let mut b = BundleWriter::new("searchset");
    b.link("self", &page_link(base, "AuditEvent", &kept, None));
    if let Some(last) = more {
        b.link(
            "next",
            &page_link(base, "AuditEvent", &kept, Some(&last.to_string())),
        );
    }
    for (id, body) in &events {
        b.entry(BundleEntry {
            full_url: Some(format!("{base}/AuditEvent/{id}")),
            resource: Some(body),
            search: Some(json!({"mode": "match"})),
            ..Default::default()
        });
    }
    Ok(b.finish())
}
