//! The audit trail as an inspector tests it: every kind of tampering named by
//! `trialbridge audit verify` (against a signed checkpoint where only one can tell), what each
//! request records (status, site, entities, compact refusals), AuditEvent search by the R4
//! parameters, and who reads which events.
//!
//! The tampering runs on SQLite, where the test can drop the append-only triggers; the chain
//! and its verification are the same code on PostgreSQL (security.rs edits a row there).

use std::path::Path;
use std::time::Duration;

use integration_tests::{client_with, token, Role, TestStore};
use serde_json::{json, Value};
use trialbridge_storage::{audit_entities_of, audit_hash_v2, AuditRow};

const S1: &str = "mesemcart-site-01";
const S2: &str = "mesemcart-site-02";

fn cli(args: &[&str], db: &str) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_trialbridge-under-test"))
        .args(args)
        .env("TRIALBRIDGE_DATABASE_URL", db)
        .output()
        .unwrap()
}

async fn put(http: &reqwest::Client, s: &TestStore, v: Value) -> u16 {
    let path = format!(
        "{}/{}",
        v["resourceType"].as_str().unwrap(),
        v["id"].as_str().unwrap()
    );
    http.put(s.url(&path))
        .header("content-type", "application/fhir+json")
        .header("x-reason-for-change", "correction")
        .body(v.to_string())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn observation(id: &str, value: f64) -> Value {
    json!({"resourceType": "Observation", "id": id, "status": "final",
           "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}], "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
           "subject": {"reference": "Patient/mc-01-p"},
           "effectiveDateTime": "2026-03-02",
           "valueQuantity": {"value": value, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}})
}

/// All AuditEvents an admin finds with `query`, once at least `min` are there (reads are
/// committed with the next batch).
async fn events(s: &TestStore, query: &str, min: usize) -> Vec<Value> {
    let admin = client_with(&token(Role::Admin, &[], ""));
    for _ in 0..100 {
        let mut all = Vec::new();
        let mut url = Some(s.url(&format!("AuditEvent?_count=1000&{query}")));
        while let Some(u) = url {
            let r = admin.get(u).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let b: Value = r.json().await.unwrap();
            all.extend(
                b["entry"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| e["resource"].clone()),
            );
            url = integration_tests::next_link(&b);
        }
        if all.len() >= min {
            return all;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("fewer than {min} AuditEvents for {query}");
}

/// A store with site 01's patient, three Observations (one updated, one deleted) and reads:
/// change rows with entities and batch rows of queued reads.
async fn busy_store() -> TestStore {
    let s = TestStore::start_in(tempfile::tempdir().unwrap(), |_| {}).await;
    assert!(
        s.database_url.starts_with("sqlite:"),
        "tampering runs on SQLite"
    );
    let site = client_with(&token(Role::Site, &[S1], ""));
    assert_eq!(
        put(
            &site,
            &s,
            json!({"resourceType": "Patient", "id": "mc-01-p"})
        )
        .await,
        201
    );
    for i in 0..3 {
        assert_eq!(
            put(&site, &s, observation(&format!("mc-01-o{i}"), 70.0)).await,
            201
        );
    }
    assert_eq!(put(&site, &s, observation("mc-01-o0", 71.0)).await, 200);
    let r = site
        .delete(s.url("Observation/mc-01-o2"))
        .header("x-reason-for-change", "duplicate")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    for _ in 0..3 {
        site.get(s.url("Observation/mc-01-o1"))
            .send()
            .await
            .unwrap();
    }
    events(&s, "", 9).await;
    s
}

fn sqlite(s: &TestStore) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(s.dir.path().join("store.db")).unwrap();
    c.execute_batch(
        "DROP TRIGGER audit_event_no_update; DROP TRIGGER audit_event_no_delete;
         DROP TRIGGER audit_entity_no_update; DROP TRIGGER audit_entity_no_delete;",
    )
    .unwrap();
    c
}

/// Re-computes every hash from `from` on, as someone who edited a row and knows the formula.
fn rehash_from(c: &rusqlite::Connection, from: i64) {
    let mut rows: Vec<(i64, i64, Option<String>, bool, String, String)> = c
        .prepare(
            "SELECT seq, recorded_us, site, batch, body, prev_hash FROM audit_event ORDER BY seq",
        )
        .unwrap()
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get::<_, i64>(3)? != 0,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut prev: Option<String> = None;
    for (seq, recorded_us, site, batch, body, prev_hash) in rows.iter_mut() {
        if *seq < from {
            prev = Some(
                c.query_row("SELECT hash FROM audit_event WHERE seq = ?1", [*seq], |r| {
                    r.get(0)
                })
                .unwrap(),
            );
            continue;
        }
        let p = prev.clone().unwrap_or_else(|| prev_hash.clone());
        let entities: Vec<String> = c
            .prepare("SELECT entity FROM audit_entity WHERE seq = ?1")
            .unwrap()
            .query_map([*seq], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let hash = audit_hash_v2(&AuditRow {
            prev_hash: &p,
            seq: *seq,
            recorded_us: *recorded_us,
            site: site.as_deref(),
            batch: *batch,
            body,
            entities: &audit_entities_of(&entities),
        });
        c.execute(
            "UPDATE audit_event SET prev_hash = ?1, hash = ?2 WHERE seq = ?3",
            rusqlite::params![p, hash, *seq],
        )
        .unwrap();
        prev = Some(hash);
    }
}

fn keys_and_checkpoint(s: &TestStore, dir: &Path) -> [String; 2] {
    let prefix = dir.join("inspector");
    let out = cli(
        &["audit", "keygen", "--out", prefix.to_str().unwrap()],
        &s.database_url,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cp = dir.join("checkpoint.json");
    let out = cli(
        &[
            "audit",
            "checkpoint",
            "--key",
            dir.join("inspector.key").to_str().unwrap(),
            "--out",
            cp.to_str().unwrap(),
        ],
        &s.database_url,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    [
        cp.display().to_string(),
        dir.join("inspector.pub").display().to_string(),
    ]
}

fn verify(s: &TestStore, checkpoint: Option<&[String; 2]>) -> (bool, String) {
    let mut args = vec!["audit", "verify"];
    if let Some([cp, key]) = checkpoint {
        args.extend(["--checkpoint", cp, "--public-key", key]);
    }
    let out = cli(&args, &s.database_url);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A seq of a change row (it has entity rows), and the last seq.
fn change_row_and_last(c: &rusqlite::Connection) -> (i64, i64) {
    let change: i64 = c
        .query_row(
            "SELECT min(seq) FROM audit_event WHERE batch = 0 AND seq > 1 AND seq IN (SELECT seq FROM audit_entity)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let last: i64 = c
        .query_row("SELECT max(seq) FROM audit_event", [], |r| r.get(0))
        .unwrap();
    (change, last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_names_each_kind_of_tampering() {
    type Tamper = fn(&rusqlite::Connection);
    let kinds: &[(&str, Tamper, &str)] = &[
        (
            "an edited body",
            |c| {
                let (n, _) = change_row_and_last(c);
                c.execute("UPDATE audit_event SET body = replace(body, 'correction', 'nothing') WHERE seq = ?1", [n]).unwrap();
            },
            "edited column",
        ),
        (
            "an edited site",
            |c| {
                let (n, _) = change_row_and_last(c);
                c.execute(
                    "UPDATE audit_event SET site = ?1 WHERE seq = ?2",
                    rusqlite::params![S2, n],
                )
                .unwrap();
            },
            "edited column",
        ),
        (
            "an edited time",
            |c| {
                let (n, _) = change_row_and_last(c);
                c.execute(
                    "UPDATE audit_event SET recorded_us = recorded_us - 86400000000 WHERE seq = ?1",
                    [n],
                )
                .unwrap();
            },
            "edited column",
        ),
        (
            "an edited batch flag",
            |c| {
                let (n, _) = change_row_and_last(c);
                c.execute("UPDATE audit_event SET batch = 1 WHERE seq = ?1", [n])
                    .unwrap();
            },
            "edited column",
        ),
        (
            "a row deleted in the middle",
            |c| {
                let (n, _) = change_row_and_last(c);
                c.execute("DELETE FROM audit_entity WHERE seq = ?1", [n])
                    .unwrap();
                c.execute("DELETE FROM audit_event WHERE seq = ?1", [n])
                    .unwrap();
            },
            "deleted row",
        ),
        (
            "a deleted entity row",
            |c| {
                let (n, _) = change_row_and_last(c);
                c.execute("DELETE FROM audit_entity WHERE seq = ?1", [n])
                    .unwrap();
            },
            "entity rows changed",
        ),
        (
            "a cut tail",
            |c| {
                let (_, last) = change_row_and_last(c);
                c.execute("DELETE FROM audit_entity WHERE seq >= ?1", [last - 1])
                    .unwrap();
                c.execute("DELETE FROM audit_event WHERE seq >= ?1", [last - 1])
                    .unwrap();
            },
            "cut tail",
        ),
        (
            "a chain re-hashed after an edit",
            |c| {
                let (n, _) = change_row_and_last(c);
                c.execute("UPDATE audit_event SET body = replace(body, 'correction', 'nothing') WHERE seq = ?1", [n]).unwrap();
                rehash_from(c, n);
            },
            "re-hashed chain",
        ),
    ];
    for (what, tamper, named) in kinds {
        let s = busy_store().await;
        let keys = tempfile::tempdir().unwrap();
        let checkpoint = keys_and_checkpoint(&s, keys.path());
        let (ok, said) = verify(&s, Some(&checkpoint));
        assert!(ok, "{what}: intact before: {said}");
        assert!(said.contains("reaches the checkpoint"), "{said}");
        tamper(&sqlite(&s));
        let (ok, said) = verify(&s, Some(&checkpoint));
        assert!(!ok, "{what}: not found: {said}");
        assert!(said.contains(named), "{what}: expected '{named}': {said}");
        // Without the checkpoint, a cut tail and a re-hashed chain look whole: say so.
        if matches!(*named, "cut tail" | "re-hashed chain") {
            let (ok, said) = verify(&s, None);
            assert!(ok, "{said}");
            assert!(said.contains("no checkpoint given"), "{said}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_signed_with_another_key_is_refused() {
    let s = busy_store().await;
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let [cp, _] = keys_and_checkpoint(&s, a.path());
    let [_, other_key] = keys_and_checkpoint(&s, b.path());
    let (ok, said) = verify(&s, Some(&[cp, other_key]));
    assert!(!ok);
    assert!(said.contains("does not verify"), "{said}");
    // A damaged chain is not signed.
    let c = sqlite(&s);
    c.execute("UPDATE audit_event SET site = 'x' WHERE seq = 2", [])
        .unwrap();
    let out = cli(
        &[
            "audit",
            "checkpoint",
            "--key",
            a.path().join("inspector.key").to_str().unwrap(),
            "--out",
            a.path().join("again.json").to_str().unwrap(),
        ],
        &s.database_url,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not signing a damaged chain"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_recorded_with_its_status_site_and_entities() {
    let s = TestStore::start().await;
    let site1 = client_with(&token(Role::Site, &[S1], ""));
    let wh = client_with(&token(Role::Warehouse, &[], ""));
    assert_eq!(
        put(
            &site1,
            &s,
            json!({"resourceType": "Patient", "id": "mc-01-p"})
        )
        .await,
        201
    );
    assert_eq!(put(&site1, &s, observation("mc-01-o", 70.0)).await, 201);
    let r = site1
        .delete(s.url("Observation/mc-01-o"))
        .header("x-reason-for-change", "entered in error")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // Creates and deletes with their real status.
    let changes = events(&s, "entity=Observation/mc-01-o", 2).await;
    let outcomes: Vec<&str> = changes
        .iter()
        .filter_map(|e| e["outcomeDesc"].as_str())
        .collect();
    assert!(
        outcomes.iter().any(|o| o.starts_with("HTTP 201")),
        "{outcomes:?}"
    );
    assert!(
        outcomes.iter().any(|o| o.starts_with("HTTP 204")),
        "{outcomes:?}"
    );
    let actions: Vec<&str> = changes
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(
        actions.contains(&"C") && actions.contains(&"D"),
        "{actions:?}"
    );
    // The warehouse reads site 01's patient: the event is site 01's.
    let r = wh.get(s.url("Patient/mc-01-p")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let reads = events(
        &s,
        &format!("entity=Patient/mc-01-p&subtype=read&site={S1}"),
        1,
    )
    .await;
    assert_eq!(reads[0]["source"]["site"], S1, "{}", reads[0]);
    // A batch names what it read.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Patient/mc-01-p"}}]});
    let r = wh
        .post(&s.base)
        .header("content-type", "application/fhir+json")
        .body(batch.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let post = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "POST /fhir");
    let named = events(&s, "entity=Patient/mc-01-p&subtype=read", 2).await;
    assert!(
        named.iter().any(|e| e.to_string().contains(&post[..8])
            && e.to_string().contains("Patient/mc-01-p/_history/1")),
        "{named:?}"
    );
    // An unauthenticated request with a 60 KB kid is recorded compactly, without it.
    let header = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        json!({"alg": "RS256", "kid": "k".repeat(60_000)}).to_string(),
    );
    let r = reqwest::Client::new()
        .get(s.url("Patient/mc-01-p"))
        .bearer_auth(format!("{header}.e30.c2ln"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.text().await.unwrap().len() < 2_000,
        "the 401 does not echo the kid"
    );
    let refused = events(&s, "outcome=4&agent=nobody-by-that-name", 0).await;
    assert!(refused.is_empty());
    let refused = events(&s, "outcome=4", 1).await;
    let biggest = refused.iter().map(|e| e.to_string().len()).max().unwrap();
    assert!(biggest < 4_000, "a refusal is recorded in {biggest} bytes");
    // The gRPC change feed's refusals are recorded too.
    let mut feed = trialbridge_feed::change_feed_client::ChangeFeedClient::connect(s.feed.clone())
        .await
        .unwrap();
    let mut req = tonic::Request::new(trialbridge_feed::SubscribeRequest::default());
    req.metadata_mut()
        .insert("authorization", "Bearer not-a-token".parse().unwrap());
    assert!(feed.subscribe(req).await.is_err());
    let grpc = events(&s, "outcome=4", 2).await;
    assert!(
        grpc.iter().any(|e| e.to_string().contains(
            &base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                "gRPC ChangeFeed.Subscribe"
            )[..20]
        )),
        "{grpc:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_events_are_searched_by_the_r4_parameters() {
    let s = TestStore::start().await;
    let site1 = client_with(&token(Role::Site, &[S1], ""));
    let site2 = client_with(&token(Role::Site, &[S2], ""));
    assert_eq!(
        put(
            &site1,
            &s,
            json!({"resourceType": "Patient", "id": "mc-01-p"})
        )
        .await,
        201
    );
    assert_eq!(put(&site1, &s, observation("mc-01-o", 70.0)).await, 201);
    assert_eq!(
        put(
            &site2,
            &s,
            json!({"resourceType": "Patient", "id": "mc-02-p"})
        )
        .await,
        201
    );
    site2.get(s.url("Patient/mc-02-p")).send().await.unwrap();
    events(&s, "", 4).await;
    let count = |q: &'static str| {
        let s = &s;
        async move {
            let admin = client_with(&token(Role::Admin, &[], ""));
            let r = admin
                .get(s.url(&format!("AuditEvent?{q}&_summary=count")))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{q}");
            let b: Value = r.json().await.unwrap();
            assert!(b["entry"].is_null(), "{q}: count only");
            b["total"].as_u64().unwrap()
        }
    };
    assert_eq!(count("patient=mc-01-p").await, 1);
    assert_eq!(count("patient=Patient/mc-02-p").await, 2);
    assert_eq!(count("entity=Observation/mc-01-o&action=C").await, 1);
    assert_eq!(count("entity=Observation/mc-01-o&action=R,D").await, 0);
    assert_eq!(count("subtype=read&entity=Patient/mc-02-p").await, 1);
    assert_eq!(
        count("subtype=http://hl7.org/fhir/restful-interaction|update&site=mesemcart-site-01")
            .await,
        2
    );
    assert_eq!(count("type=rest&outcome=0&site=mesemcart-site-02").await, 2);
    assert_eq!(count("agent=test-site&site=mesemcart-site-01").await, 2);
    assert_eq!(count("agent=someone-else").await, 0);
    assert!(count("date=ge2020-01-01&date=lt2100").await >= 4);
    assert_eq!(count("date=lt2020").await, 0);
    // An unknown parameter names the ones served.
    let admin = client_with(&token(Role::Admin, &[], ""));
    let r = admin
        .get(s.url("AuditEvent?policy=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("outcome"));
    // A monitor of site 01 reads its site's changes, not who looked at what.
    let mon = client_with(&token(Role::Monitor, &[S1], ""));
    site1.get(s.url("Patient/mc-01-p")).send().await.unwrap();
    events(&s, "subtype=read&site=mesemcart-site-01", 1).await;
    let b: Value = integration_tests::get_json_as(&mon, &s.url("AuditEvent?_count=100")).await;
    let seen: Vec<&Value> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .collect();
    assert_eq!(seen.len(), 2, "site 01's two changes: {b}");
    assert!(seen
        .iter()
        .all(|e| e["source"]["site"] == S1 && e["action"] != "R"));
}
