//! Following a store's `_history`: the reference list of committed versions and a follower
//! that polls `_history?_since`, shared by the change-feed and replica tests.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::{get_json, next_link};

/// `Type/id/version` of a version.
pub type Key = (String, String, i64);

/// Every committed version, in sequence order, from one `_history` snapshot (the reference).
pub async fn committed(base: &str) -> Vec<Key> {
    let mut out = Vec::new();
    let mut url = Some(format!("{base}/_history?_sort=_lastUpdated&_count=1000"));
    while let Some(u) = url {
        let b = get_json(&u).await;
        out.extend(keys(&b));
        url = next_link(&b);
    }
    out
}

pub fn keys(bundle: &Value) -> Vec<Key> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            // A delete has no resource: its request URL names it, its ETag the version.
            let (t, id) = match e["resource"]["resourceType"].as_str() {
                Some(t) => (
                    t.to_string(),
                    e["resource"]["id"].as_str().unwrap().to_string(),
                ),
                None => {
                    let url = e["request"]["url"].as_str().unwrap();
                    let (t, id) = url.split_once('/').unwrap();
                    (t.to_string(), id.to_string())
                }
            };
            let etag = e["response"]["etag"].as_str().unwrap_or("");
            let v = etag
                .trim_start_matches("W/\"")
                .trim_end_matches('"')
                .parse()
                .unwrap();
            (t, id, v)
        })
        .collect()
}

/// Follows `_history?_sort=_lastUpdated` with `_since` of the last instant seen, until `done`
/// and one more empty round. A version at the `_since` boundary may come again (the bound is
/// inclusive); any other repeat is an error.
pub async fn follow_http(base: String, done: Arc<AtomicBool>) -> Vec<Key> {
    let mut seen: Vec<Key> = Vec::new();
    let mut set: HashSet<Key> = HashSet::new();
    let mut since: Option<String> = None;
    loop {
        let finished = done.load(Ordering::SeqCst);
        let mut url = Some(match &since {
            None => format!("{base}/_history?_sort=_lastUpdated&_count=37"),
            Some(t) => format!(
                "{base}/_history?_sort=_lastUpdated&_count=37&_since={}",
                urlencode(t)
            ),
        });
        let mut new = 0;
        while let Some(u) = url {
            let b = get_json(&u).await;
            for (e, k) in b["entry"].as_array().into_iter().flatten().zip(keys(&b)) {
                let at = e["response"]["lastModified"].as_str().map(String::from);
                if set.insert(k.clone()) {
                    seen.push(k);
                    new += 1;
                } else {
                    assert_eq!(
                        at, since,
                        "{k:?} came twice, and not at the _since boundary"
                    );
                }
                if at.is_some() {
                    since = at;
                }
            }
            url = next_link(&b);
        }
        if finished && new == 0 {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}
