//! Three trial-store processes (`trialbridge store`) writing to one PostgreSQL database at
//! once, as replicas behind a Kubernetes Service do, while a reader follows `_history?_since` on
//! one of them: the follower sees every committed version exactly once, in the order of the
//! change sequence; version numbers stay contiguous per resource even when every replica
//! updates the same resources; the audit hash chain the replicas extended together passes
//! `trialbridge audit verify`; and a `$export` on a replica holds every resource once, at its
//! latest version. Needs TRIALBRIDGE_TEST_POSTGRES_URL (`scripts/test.sh` starts a server).

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use integration_tests::history::{committed, follow_http, Key};
use integration_tests::{client, get_json, postgres_database};
use serde_json::json;
use tokio::process::Child;

fn server_url() -> String {
    std::env::var("TRIALBRIDGE_TEST_POSTGRES_URL").expect(
        "TRIALBRIDGE_TEST_POSTGRES_URL names no PostgreSQL: run the tests with `bash scripts/test.sh`",
    )
}

/// Three replicas started at once on a fresh database `name` (they race to migrate it and to
/// load the study): the database's URL, their processes and bases, and their data directories.
async fn three_replicas(name: &str) -> (String, [(Child, String); 3], [tempfile::TempDir; 3]) {
    let db = postgres_database(&server_url(), name).await;
    let dirs = [(); 3].map(|_| tempfile::tempdir().unwrap());
    let (a, b, c) = tokio::join!(
        replica(&db, dirs[0].path()),
        replica(&db, dirs[1].path()),
        replica(&db, dirs[2].path())
    );
    (db, [a, b, c], dirs)
}

/// Starts `trialbridge store` on `db` with its own data directory; returns it and its base.
async fn replica(db: &str, dir: &std::path::Path) -> (Child, String) {
    let mut cmd =
        integration_tests::store_command(env!("CARGO_BIN_EXE_trialbridge-under-test"), db, dir);
    cmd.stderr(Stdio::inherit());
    integration_tests::spawn_with_base(&mut cmd).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_write_at_once_and_feed_chain_and_export_stay_whole() {
    let name = format!("tb_replicas_{}", std::process::id());
    let (db, [(mut a, base_a), (mut b, base_b), (mut c, base_c)], _dirs) =
        three_replicas(&name).await;

    let done = Arc::new(AtomicBool::new(false));
    let follower = tokio::spawn(follow_http(base_a.clone(), done.clone()));

    // Three writers per replica. Each writes its own Patients twice (versions 1 and 2) and
    // updates ten Patients that every writer of every replica updates too.
    let mut writers = Vec::new();
    for (r, base) in [("a", &base_a), ("b", &base_b), ("c", &base_c)] {
        for w in 0..3 {
            let base = base.clone();
            writers.push(tokio::spawn(async move {
                let c = client();
                let mut acked = 0usize;
                for n in 0..120 {
                    let id = if n % 4 == 3 {
                        format!("shared-{}", n % 10)
                    } else {
                        format!("{r}{w}-{}", n / 2)
                    };
                    // Every write says something new (an update that changes nothing writes no version).
                    let body = json!({"resourceType": "Patient", "id": id, "gender": "other", "birthDate": format!("19{:02}", n % 90 + 10), "name": [{"text": format!("{r}{w}-{n}")}]});
                    let resp = c
                        .put(format!("{base}/Patient/{id}"))
                        .header("content-type", "application/fhir+json")
                        .body(body.to_string())
                        .send()
                        .await
                        .expect("PUT");
                    assert!(
                        resp.status().is_success(),
                        "{id}: {} {}",
                        resp.status(),
                        resp.text().await.unwrap_or_default()
                    );
                    acked += 1;
                }
                acked
            }));
        }
    }
    let mut acknowledged = 0;
    for w in writers {
        acknowledged += w.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let seen = follower.await.unwrap();

    // The reference: one `_history` walk on the other replica after the writes.
    let reference = committed(&base_b).await;
    let patients: Vec<&Key> = reference.iter().filter(|k| k.0 == "Patient").collect();
    assert_eq!(
        patients.len(),
        acknowledged,
        "every acknowledged write is one version"
    );
    assert_eq!(
        seen, reference,
        "the follower on replica a saw every version once, in order"
    );

    // Versions of each resource are 1..=n, in sequence order, whichever replica wrote them.
    let mut versions: BTreeMap<(String, String), Vec<i64>> = BTreeMap::new();
    for (t, id, v) in &reference {
        versions
            .entry((t.clone(), id.clone()))
            .or_default()
            .push(*v);
    }
    for ((t, id), vs) in &versions {
        let want: Vec<i64> = (1..=vs.len() as i64).collect();
        assert_eq!(vs, &want, "{t}/{id}");
    }
    assert_eq!(
        versions[&("Patient".to_string(), "shared-3".to_string())].len(),
        9 * 6
    );

    // The study was loaded once, not once per replica.
    let studies: Vec<&Key> = reference
        .iter()
        .filter(|k| k.0 == "ResearchStudy" && k.2 > 1)
        .collect();
    assert!(
        studies.is_empty(),
        "a study resource was written twice: {studies:?}"
    );

    // The audit chain that three processes extended at once is one unbroken chain.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trialbridge-under-test"))
        .args(["audit", "verify"])
        .env("TRIALBRIDGE_DATABASE_URL", &db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "audit verify after three replicas wrote: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // `$export` on the third replica: every Patient once, at the version the feed ends with.
    let latest: BTreeMap<String, i64> = versions
        .iter()
        .filter(|((t, _), _)| t == "Patient")
        .map(|((_, id), vs)| (id.clone(), *vs.last().unwrap()))
        .collect();
    let exported = export_patients(&base_c).await;
    assert_eq!(
        exported, latest,
        "the export holds each Patient once, at its latest version"
    );

    for child in [&mut a, &mut b, &mut c] {
        let _ = child.kill().await;
    }
}

/// Runs `$export?_type=Patient` on `base` to its manifest and reads its files: id -> version.
async fn export_patients(base: &str) -> BTreeMap<String, i64> {
    let c = client();
    let kick = c
        .get(format!("{base}/$export?_type=Patient"))
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(
        kick.status(),
        202,
        "{}",
        kick.text().await.unwrap_or_default()
    );
    let status_url = kick.headers()["content-location"]
        .to_str()
        .unwrap()
        .to_string();
    let mut manifest = None;
    for _ in 0..1200 {
        let r = c.get(&status_url).send().await.unwrap();
        if r.status() == 200 {
            manifest = Some(r.json::<serde_json::Value>().await.unwrap());
            break;
        }
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let manifest = manifest.expect("the export finished");
    let mut out = BTreeMap::new();
    for f in manifest["output"].as_array().unwrap() {
        let text = c
            .get(f["url"].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let id = v["id"].as_str().unwrap().to_string();
            let version = v["meta"]["versionId"].as_str().unwrap().parse().unwrap();
            assert!(
                out.insert(id.clone(), version).is_none(),
                "Patient/{id} exported twice"
            );
        }
    }
    out
}

/// The version and the name text `GET {base}/Patient/{id}` answers with.
async fn read_patient(c: &reqwest::Client, base: &str, id: &str) -> (i64, String) {
    let r = c.get(format!("{base}/Patient/{id}")).send().await.unwrap();
    assert_eq!(r.status(), 200, "GET {base}/Patient/{id}");
    let body: serde_json::Value = r.json().await.unwrap();
    let version = body["meta"]["versionId"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("meta.versionId");
    (
        version,
        body["name"][0]["text"].as_str().unwrap_or("").into(),
    )
}

/// The name text of each Patient a search `GET {base}/Patient?{query}` lists, by id.
async fn searched_names(base: &str, query: &str) -> BTreeMap<String, String> {
    let page = get_json(&format!("{base}/Patient?{query}")).await;
    page["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let r = &e["resource"];
            (
                r["id"].as_str().unwrap_or("").to_string(),
                r["name"][0]["text"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Each replica keeps the current versions it has read in memory; a read must still answer
/// with every write any replica acknowledged before it arrived, and so must a search page,
/// whose bodies come from the same cache. Writers update their own
/// Patients on the replicas in turn and read each write back from all three at once; readers
/// meanwhile read the same Patients from any replica and never see a version go back; and a
/// transaction of more versions than one cache poll reads, written on one replica, is seen
/// whole on the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_replica_reads_what_another_acknowledged() {
    let name = format!("tb_replica_reads_{}", std::process::id());
    let (_db, [(mut a, base_a), (mut b, base_b), (mut c, base_c)], _dirs) =
        three_replicas(&name).await;
    let bases = [base_a.clone(), base_b.clone(), base_c.clone()];
    let put = |c: &reqwest::Client, base: &str, id: &str, text: &str| {
        let body = json!({"resourceType": "Patient", "id": id, "name": [{"text": text}]});
        c.put(format!("{base}/Patient/{id}"))
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
    };
    let ids: Vec<String> = (0..8).map(|i| format!("r-{i}")).collect();
    let http = client();
    for id in &ids {
        let r = put(&http, &base_a, id, "start").await.unwrap();
        assert!(r.status().is_success(), "{id}: {}", r.status());
    }
    // An `_include` reads its Patients through the same cache.
    let observation = json!({"resourceType": "Observation", "id": "obs-r", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]}, "valueQuantity": {"value": 13.2, "unit": "g/dL"},
        "subject": {"reference": "Patient/r-0"}});
    let r = http
        .put(format!("{base_a}/Observation/obs-r"))
        .header("content-type", "application/fhir+json")
        .body(observation.to_string())
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success(),
        "obs-r: {}",
        r.text().await.unwrap_or_default()
    );
    let included_name = |base: String| async move {
        let page = get_json(&format!(
            "{base}/Observation?_id=obs-r&_include=Observation:subject"
        ))
        .await;
        let patient = page["entry"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["resource"]["resourceType"] == "Patient")
            .unwrap_or_else(|| panic!("{base}: no included Patient in {page}"));
        patient["resource"]["name"][0]["text"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };

    let done = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for r in 0..6usize {
        let (bases, ids, done) = (bases.clone(), ids.clone(), done.clone());
        readers.push(tokio::spawn(async move {
            let c = client();
            let mut seen: BTreeMap<String, i64> = BTreeMap::new();
            let mut n = r;
            while !done.load(Ordering::SeqCst) {
                n += 1;
                let id = &ids[n % ids.len()];
                let base = &bases[(n / ids.len()) % bases.len()];
                let (v, _) = read_patient(&c, base, id).await;
                let before = seen.insert(id.clone(), v).unwrap_or(0);
                assert!(
                    v >= before,
                    "reader {r}: {id} went back from version {before} to {v} on {base}"
                );
            }
        }));
    }

    let mut writers = Vec::new();
    for w in 0..4usize {
        let (bases, mine) = (bases.clone(), [ids[2 * w].clone(), ids[2 * w + 1].clone()]);
        writers.push(tokio::spawn(async move {
            let c = client();
            for n in 0..30usize {
                let id = &mine[n % 2];
                let text = format!("w{w}-{n}");
                let r = put(&c, &bases[n % 3], id, &text).await.unwrap();
                assert!(r.status().is_success(), "{id}: {}", r.status());
                let written: serde_json::Value = r.json().await.unwrap();
                let version: i64 = written["meta"]["versionId"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                // The search first: the replica's cache may still hold the version before.
                let query = format!("_id={id}");
                let (sa, sb, sc) = tokio::join!(
                    searched_names(&bases[0], &query),
                    searched_names(&bases[1], &query),
                    searched_names(&bases[2], &query)
                );
                for (base, got) in bases.iter().zip([sa, sb, sc]) {
                    assert_eq!(
                        got.get(id),
                        Some(&text),
                        "{base}: a search after version {version} of {id} was acknowledged"
                    );
                }
                let (ra, rb, rc) = tokio::join!(
                    read_patient(&c, &bases[0], id),
                    read_patient(&c, &bases[1], id),
                    read_patient(&c, &bases[2], id)
                );
                let reads = [ra, rb, rc];
                for (base, got) in bases.iter().zip(reads) {
                    assert_eq!(
                        got,
                        (version, text.clone()),
                        "{base} after version {version} of {id} was acknowledged"
                    );
                }
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }

    done.store(true, Ordering::SeqCst);
    for r in readers {
        r.await.unwrap();
    }

    // More new versions than one poll reads, the cached Patients last; no other reads, so the
    // first read on each replica afterwards is the one that meets them.
    for base in &bases {
        for id in &ids {
            read_patient(&http, base, id).await;
        }
        included_name(base.clone()).await;
        searched_names(base, &format!("_id={}", ids.join(","))).await;
    }
    let mut entries: Vec<serde_json::Value> = (0..1100)
        .map(|i| json!({"resource": {"resourceType": "Patient", "id": format!("bulk-{i}")}, "request": {"method": "PUT", "url": format!("Patient/bulk-{i}")}}))
        .collect();
    entries.extend(ids.iter().map(|id| json!({"resource": {"resourceType": "Patient", "id": id, "name": [{"text": "bulk"}]}, "request": {"method": "PUT", "url": format!("Patient/{id}")}})));
    let r = http
        .post(&base_a)
        .header("content-type", "application/fhir+json")
        .body(
            json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}).to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    for base in [&base_b, &base_c] {
        // The search first, before anything else on the replica polls.
        let listed = searched_names(base, &format!("_id={}", ids.join(","))).await;
        assert_eq!(listed.len(), ids.len(), "{base}: {listed:?}");
        assert!(
            listed.values().all(|t| t == "bulk"),
            "{base}: a search after the transaction: {listed:?}"
        );
        assert_eq!(
            included_name(base.clone()).await,
            "bulk",
            "{base}: the included Patient after the transaction"
        );
        for id in &ids {
            let (_, text) = read_patient(&http, base, id).await;
            assert_eq!(text, "bulk", "{base}: {id} after the transaction");
        }
    }

    for child in [&mut a, &mut b, &mut c] {
        let _ = child.kill().await;
    }
}
