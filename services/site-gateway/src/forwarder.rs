//! The outbox forwarder: sends queued transaction Bundles to the trial store in the order they
//! were received. Consecutive messages go together in one transaction (up to `GROUP`, and
//! never two that write the same resource, so every message still becomes its own versions);
//! if the store refuses a group, its messages are sent one by one so that only the refused one
//! moves to the dead-letter queue, with the store's OperationOutcome. A store that is down
//! (5xx, no connection) is retried with backoff, and nothing is skipped. The Bundles use PUT
//! with deterministic ids, so sending one twice (after a crash between the store's commit and
//! ours) changes nothing.

use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::sync::watch;

use tracing::Instrument;

use crate::db::State;
use crate::Gateway;

/// Most messages per transaction sent to the store.
const GROUP: usize = 25;

/// What the store said to one POST.
enum Sent {
    Accepted,
    Refused(String),
    Unavailable,
}

async fn post(client: &reqwest::Client, gateway: &Gateway, url: &str, body: String) -> Sent {
    // The current span (`gateway.forward`) goes along as the request's trace context.
    let mut headers = reqwest::header::HeaderMap::new();
    trialbridge_telemetry::inject(&mut headers);
    let mut req = client
        .post(url)
        .header("content-type", "application/fhir+json")
        .headers(headers)
        .body(body);
    if let Some(t) = gateway.config.store_token.current() {
        req = req.bearer_auth(t);
    }
    match req.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let body = if r.status().is_success() {
                String::new()
            } else {
                r.text().await.unwrap_or_default()
            };
            verdict(status, body)
        }
        Err(e) => {
            tracing::warn!(error = %e, "the trial store is not reachable; retrying");
            Sent::Unavailable
        }
    }
}

/// What a store answer means for the message. A 401, or a 403 about the token as a whole, is
/// the deployment's problem: the message is kept and retried. A 403 that names an element of
/// the Bundle (`Bundle.entry[1].request.url`: an id outside the site's namespace) is this
/// message's, like any other 4xx: it goes to the dead-letter queue, so it cannot hold up the
/// messages behind it.
fn verdict(status: u16, body: String) -> Sent {
    let names_an_entry = || {
        serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|oo| oo.get("issue").and_then(Value::as_array).cloned())
            .into_iter()
            .flatten()
            .filter(|i| i["code"] == "forbidden")
            .flat_map(|i| i["expression"].as_array().cloned().unwrap_or_default())
            .any(|e| e.as_str().is_some_and(|e| e.starts_with("Bundle.entry[")))
    };
    match status {
        200..=299 => Sent::Accepted,
        401 => {
            tracing::error!(
                status,
                "the trial store refused the gateway's token; retrying"
            );
            Sent::Unavailable
        }
        403 if !names_an_entry() => {
            tracing::error!(
                status,
                "the trial store refused the gateway's token; retrying"
            );
            Sent::Unavailable
        }
        400..=499 => Sent::Refused(format!("the trial store refused it ({status}): {body}")),
        _ => {
            tracing::warn!(status, "the trial store failed; retrying");
            Sent::Unavailable
        }
    }
}

/// An outbox Bundle as the forwarder reads it: its entries as written (the forwarder never
/// builds them into a tree: that cost 5-10 ms of the gateway's CPU per 100 messages, time the
/// MLLP connections waited for their ACKs) and the resources they write.
#[derive(Default)]
struct Queued<'a> {
    entries: Vec<&'a RawValue>,
    urls: Vec<String>,
}

#[derive(Deserialize)]
struct BundleEntries<'a> {
    #[serde(borrow, default)]
    entry: Vec<&'a RawValue>,
}

/// What the forwarder needs of an entry: `request.url` (the rest is skipped, not built).
#[derive(Deserialize)]
struct EntryRequest {
    request: Option<Request>,
}

#[derive(Deserialize)]
struct Request {
    url: Option<String>,
}

fn read_queued(bundle: &str) -> Queued<'_> {
    let Ok(b) = serde_json::from_str::<BundleEntries>(bundle) else {
        return Queued::default();
    };
    let urls = b
        .entry
        .iter()
        .filter_map(|e| serde_json::from_str::<EntryRequest>(e.get()).ok())
        .filter_map(|e| e.request.and_then(|r| r.url))
        .collect();
    Queued {
        entries: b.entry,
        urls,
    }
}

/// Splits the outbox rows into groups of consecutive messages that write disjoint resources.
fn groups(queued: &[Queued<'_>]) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut urls: Vec<&str> = Vec::new();
    for (i, q) in queued.iter().enumerate() {
        let fits = out.last().is_some_and(|g| g.len() < GROUP)
            && !q.urls.iter().any(|u| urls.contains(&u.as_str()));
        if !fits {
            out.push(Vec::new());
            urls.clear();
        }
        out.last_mut().expect("a group").push(i);
        urls.extend(q.urls.iter().map(String::as_str));
    }
    out
}

/// One transaction Bundle of the group's entries, spliced from their text as written.
fn combined(queued: &[Queued<'_>], group: &[usize]) -> String {
    let mut body = String::from(r#"{"resourceType":"Bundle","type":"transaction","entry":["#);
    for (n, e) in group.iter().flat_map(|&i| &queued[i].entries).enumerate() {
        if n > 0 {
            body.push(',');
        }
        body.push_str(e.get());
    }
    body.push_str("]}");
    body
}

/// Runs until `stop` turns true (finishing the send in flight).
pub async fn run(gateway: Gateway, mut stop: watch::Receiver<bool>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("HTTP client");
    let url = format!("{}/", gateway.config.store_url);
    let mut backoff = Duration::from_millis(100);
    loop {
        if *stop.borrow() {
            return;
        }
        let rows = match gateway.db.outbox(GROUP * 4).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the outbox");
                Vec::new()
            }
        };
        if rows.is_empty() {
            tokio::select! {
                _ = gateway.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            continue;
        }
        let queued: Vec<Queued> = rows.iter().map(|(_, b, _)| read_queued(b)).collect();
        let mut unavailable = false;
        'groups: for group in groups(&queued) {
            // One span per store request: a child of the first message's trace, linked to the
            // traces of the others it carries.
            let span = tracing::info_span!(
                "gateway.forward",
                otel.kind = "producer",
                messages = group.len()
            );
            let traces: Vec<&str> = group.iter().filter_map(|&i| rows[i].2.as_deref()).collect();
            if let Some((first, rest)) = traces.split_first() {
                trialbridge_telemetry::set_parent(&span, first);
                for t in rest {
                    trialbridge_telemetry::add_link(&span, t);
                }
            }
            let sent = if group.len() == 1 {
                post(&client, &gateway, &url, rows[group[0]].1.clone())
                    .instrument(span.clone())
                    .await
            } else {
                post(&client, &gateway, &url, combined(&queued, &group))
                    .instrument(span.clone())
                    .await
            };
            match sent {
                Sent::Accepted => {
                    let ids: Vec<i64> = group.iter().map(|&i| rows[i].0).collect();
                    if let Err(e) = gateway.db.set_states(ids, State::Forwarded).await {
                        tracing::error!(error = %e, "cannot update the outbox");
                    }
                }
                Sent::Unavailable => {
                    unavailable = true;
                    break 'groups;
                }
                // One message of the group was refused: find it by sending them one by one.
                Sent::Refused(why) if group.len() == 1 => {
                    let _ = gateway.db.bump("dead_letters", 1).await;
                    if let Err(e) = gateway
                        .db
                        .set_state(rows[group[0]].0, State::Dead, Some(why))
                        .await
                    {
                        tracing::error!(error = %e, "cannot update the outbox");
                    }
                }
                Sent::Refused(_) => {
                    for &i in &group {
                        match post(&client, &gateway, &url, rows[i].1.clone()).await {
                            Sent::Accepted => {
                                let _ = gateway
                                    .db
                                    .set_states(vec![rows[i].0], State::Forwarded)
                                    .await;
                            }
                            Sent::Refused(why) => {
                                let _ = gateway.db.bump("dead_letters", 1).await;
                                let _ = gateway
                                    .db
                                    .set_state(rows[i].0, State::Dead, Some(why))
                                    .await;
                            }
                            Sent::Unavailable => {
                                unavailable = true;
                                break 'groups;
                            }
                        }
                    }
                }
            }
        }
        if unavailable {
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        } else {
            backoff = Duration::from_millis(100);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_problem_is_retried_and_a_refused_entry_is_dead_lettered() {
        let oo = |expr: &str| {
            serde_json::json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "forbidden", "diagnostics": "x", "expression": [expr]}]}).to_string()
        };
        assert!(matches!(verdict(201, String::new()), Sent::Accepted));
        assert!(matches!(verdict(401, oo("Bundle")), Sent::Unavailable));
        assert!(matches!(verdict(403, oo("Bundle")), Sent::Unavailable));
        assert!(matches!(verdict(403, "not json".into()), Sent::Unavailable));
        assert!(matches!(
            verdict(403, oo("Bundle.entry[1].request.url")),
            Sent::Refused(_)
        ));
        assert!(matches!(
            verdict(422, oo("Observation.code")),
            Sent::Refused(_)
        ));
        assert!(matches!(verdict(503, String::new()), Sent::Unavailable));
    }

    #[test]
    fn groups_never_write_a_resource_twice() {
        let b = |urls: &[&str]| {
            let e: Vec<Value> = urls
                .iter()
                .map(|u| serde_json::json!({"request": {"method": "PUT", "url": u}}))
                .collect();
            serde_json::json!({"resourceType": "Bundle", "type": "transaction", "entry": e})
                .to_string()
        };
        let rows = [
            b(&["Patient/a", "Observation/1"]),
            b(&["Observation/2"]),
            b(&["Patient/a", "Observation/3"]),
            b(&["Observation/4"]),
        ];
        let queued: Vec<Queued> = rows.iter().map(|r| read_queued(r)).collect();
        let groups = groups(&queued);
        assert_eq!(groups, vec![vec![0, 1], vec![2, 3]]);
        // The group's Bundle has the entries of its messages, in order, as they were written.
        let sent: Value = serde_json::from_str(&combined(&queued, &groups[1])).unwrap();
        assert_eq!(sent["resourceType"], "Bundle");
        assert_eq!(sent["type"], "transaction");
        let urls: Vec<&str> = sent["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["request"]["url"].as_str().unwrap())
            .collect();
        assert_eq!(urls, ["Patient/a", "Observation/3", "Observation/4"]);
    }
}
