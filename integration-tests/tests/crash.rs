//! An acknowledged write survives `kill -9`; nothing is half-written.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use integration_tests::{client, next_link};
use serde_json::{json, Value};
use tokio::process::{Child, Command};

async fn start(db: &str, data_dir: &std::path::Path) -> (Child, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trialbridge-under-test"));
    cmd.args([
        "serve",
        "--grpc-listen",
        "127.0.0.1:0",
        "--listen",
        "127.0.0.1:0",
        "--mllp-listen",
        "127.0.0.1:0",
        "--gateway-listen",
        "127.0.0.1:0",
    ])
    .env("TRIALBRIDGE_DATABASE_URL", db)
    .env("TRIALBRIDGE_DATA_DIR", data_dir)
    .env("TRIALBRIDGE_LOAD_STUDY", "false")
    .stderr(Stdio::null());
    integration_tests::spawn_with_base(&mut cmd).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    // SQLite in `dir`, or a PostgreSQL database when the store suite runs there.
    let db = integration_tests::store_database_url(dir.path()).await;
    integration_tests::install_test_key(dir.path());
    let (mut child, base) = start(&db, dir.path()).await;

    // id -> highest acknowledged version; transactions acknowledged (by number).
    let acked: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let acked_txn: Arc<Mutex<BTreeSet<usize>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..8usize {
        let (base, acked, acked_txn) = (base.clone(), acked.clone(), acked_txn.clone());
        writers.push(tokio::spawn(async move {
            let c = client();
            for n in 0..100_000usize {
                if w == 0 {
                    // Transactions of 10: all or nothing.
                    let entries: Vec<Value> = (0..10).map(|j| json!({"resource":{"resourceType":"Observation","id":format!("t{n}-{j}"),"status":"final","code":{"text":"txn"}},"request":{"method":"PUT","url":format!("Observation/t{n}-{j}")}})).collect();
                    let b = json!({"resourceType":"Bundle","type":"transaction","entry":entries});
                    match c.post(&base).header("content-type", "application/fhir+json").body(b.to_string()).send().await {
                        Ok(r) if r.status() == 200 => {
                            acked_txn.lock().unwrap().insert(n);
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    }
                    continue;
                }
                // Each id is written twice: version 1, then version 2.
                let id = format!("w{w}-{}", n / 2);
                let body = json!({"resourceType":"Observation","id":id,"status":"final","code":{"text":format!("write {n}")}});
                match c.put(format!("{base}/Observation/{id}")).header("content-type", "application/fhir+json").body(body.to_string()).send().await {
                    Ok(r) if r.status().is_success() => {
                        let v: u64 = r.headers()["etag"].to_str().unwrap().trim_start_matches("W/\"").trim_end_matches('"').parse().unwrap();
                        acked.lock().unwrap().insert(id, v);
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        }));
    }
    // Let writes flow, then kill without warning while they are in flight.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    child.start_kill().expect("kill -9");
    let _ = child.wait().await;
    for w in writers {
        let _ = w.await;
    }
    let acked = acked.lock().unwrap().clone();
    let acked_txn = acked_txn.lock().unwrap().clone();
    assert!(
        acked.len() > 50,
        "the test must have written something before the kill ({} acks)",
        acked.len()
    );

    let (_child, base) = start(&db, dir.path()).await;
    let c = client();
    for (id, version) in &acked {
        let r = c
            .get(format!("{base}/Observation/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "acknowledged {id} lost");
        let v: Value = r.json().await.unwrap();
        let stored: u64 = v["meta"]["versionId"].as_str().unwrap().parse().unwrap();
        assert!(
            stored >= *version,
            "{id}: acknowledged version {version}, found {stored}"
        );
    }
    // Transactions: every one is either complete or absent.
    let mut complete = 0;
    for n in 0..=acked_txn.iter().max().copied().unwrap_or(0) + 1 {
        let mut present = 0;
        for j in 0..10 {
            if c.get(format!("{base}/Observation/t{n}-{j}"))
                .send()
                .await
                .unwrap()
                .status()
                == 200
            {
                present += 1;
            }
        }
        assert!(
            present == 0 || present == 10,
            "transaction {n} is half-written ({present}/10)"
        );
        if acked_txn.contains(&n) {
            assert_eq!(present, 10, "acknowledged transaction {n} lost");
        }
        complete += usize::from(present == 10);
    }
    assert!(complete >= acked_txn.len());
    // Every stored version is whole JSON.
    let mut url = format!("{base}/_history?_sort=_lastUpdated&_count=1000");
    loop {
        let h: Value = integration_tests::get_json_as(&c, &url).await;
        for e in h["entry"].as_array().into_iter().flatten() {
            assert_eq!(e["resource"]["resourceType"], "Observation", "{e}");
        }
        match next_link(&h) {
            Some(n) => url = n,
            None => break,
        }
    }
}
