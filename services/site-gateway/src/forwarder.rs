//! The outbox forwarder: sends queued transaction Bundles to the trial store in the order they
//! were received. 2xx marks a message forwarded; a refusal (4xx) moves it to the dead-letter
//! queue with the store's OperationOutcome; a store that is down (5xx, no connection) is
//! retried with backoff, and nothing is skipped. The Bundles use PUT with deterministic ids,
//! so sending one twice (after a crash between the store's commit and ours) changes nothing.

use std::time::Duration;

use tokio::sync::watch;

use crate::db::State;
use crate::Gateway;

/// Runs until `stop` turns true (finishing the message in flight).
pub async fn run(gateway: Gateway, mut stop: watch::Receiver<bool>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client");
    let url = format!("{}/", gateway.config.store_url);
    let mut backoff = Duration::from_millis(100);
    loop {
        if *stop.borrow() {
            return;
        }
        let batch = match gateway.db.outbox(50).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the outbox");
                Vec::new()
            }
        };
        if batch.is_empty() {
            tokio::select! {
                _ = gateway.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            continue;
        }
        for (id, bundle) in batch {
            let sent = client
                .post(&url)
                .header("content-type", "application/fhir+json")
                .body(bundle)
                .send()
                .await;
            let outcome = match sent {
                Ok(r) if r.status().is_success() => Some((State::Forwarded, None)),
                Ok(r) if r.status().is_client_error() => {
                    let status = r.status();
                    let body = r.text().await.unwrap_or_default();
                    Some((
                        State::Dead,
                        Some(format!("the trial store refused it ({status}): {body}")),
                    ))
                }
                Ok(r) => {
                    tracing::warn!(status = %r.status(), "the trial store failed; retrying");
                    None
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the trial store is not reachable; retrying");
                    None
                }
            };
            match outcome {
                Some((state, reason)) => {
                    if state == State::Dead {
                        let _ = gateway.db.bump("dead_letters", 1).await;
                    }
                    if let Err(e) = gateway.db.set_state(id, state, reason).await {
                        tracing::error!(error = %e, "cannot update the outbox");
                    }
                    backoff = Duration::from_millis(100);
                }
                None => {
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    break;
                }
            }
        }
    }
}
