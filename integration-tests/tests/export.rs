//! Bulk Data `$export`: kick-off, polling, manifest, NDJSON files; an export of everything
//! re-imported into an empty store gives the same resources; writes during an export do not
//! appear in it; cancel; a job left running is run again at start-up.

use std::collections::BTreeMap;
use std::time::Duration;

use integration_tests::{
    client, fixture, get_json, post_fhir, put_fhir, store_database_url, TestStore, INVALID_EXAMPLE,
};
use serde_json::{json, Value};

async fn kick_off(s: &TestStore, path: &str) -> reqwest::Response {
    client()
        .get(s.url(path))
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap()
}

/// Polls the status URL until the manifest (200).
async fn manifest(status_url: &str) -> Value {
    for _ in 0..600 {
        let r = client().get(status_url).send().await.unwrap();
        match r.status().as_u16() {
            202 => {
                assert!(r.headers().contains_key("x-progress"));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            200 => return r.json().await.unwrap(),
            other => panic!("status {other}: {}", r.text().await.unwrap()),
        }
    }
    panic!("the export did not finish");
}

async fn ndjson(url: &str) -> Vec<Value> {
    let r = client().get(url).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "application/fhir+ndjson");
    r.text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn without_meta(v: &Value) -> Value {
    let mut v = v.clone();
    v.as_object_mut().unwrap().remove("meta");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_export_of_everything_reimports_to_the_same_resources() {
    let s = TestStore::start().await;
    let mut originals = BTreeMap::new();
    for e in std::fs::read_dir(fixture("r4-examples")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".json") || name.starts_with("Bundle-") || name == INVALID_EXAMPLE {
            continue;
        }
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        let key = format!(
            "{}/{}",
            v["resourceType"].as_str().unwrap(),
            v["id"].as_str().unwrap()
        );
        let r = put_fhir(s.url(&key), v.to_string()).send().await.unwrap();
        assert!(r.status().is_success(), "{key}");
        originals.insert(key, v);
    }
    // A deleted resource is not exported.
    client()
        .delete(s.url("Patient/example"))
        .send()
        .await
        .unwrap();
    originals.remove("Patient/example");
    let r = kick_off(&s, "$export").await;
    assert_eq!(r.status(), 202);
    let status_url = r.headers()["content-location"]
        .to_str()
        .unwrap()
        .to_string();
    let m = manifest(&status_url).await;
    assert!(m["transactionTime"].is_string());
    let fresh = TestStore::start().await;
    let mut exported = BTreeMap::new();
    for out in m["output"].as_array().unwrap() {
        let lines = ndjson(out["url"].as_str().unwrap()).await;
        assert_eq!(out["count"].as_u64().unwrap() as usize, lines.len());
        for v in lines {
            assert_eq!(v["resourceType"], out["type"]);
            let key = format!(
                "{}/{}",
                v["resourceType"].as_str().unwrap(),
                v["id"].as_str().unwrap()
            );
            let r = put_fhir(fresh.url(&key), v.to_string())
                .send()
                .await
                .unwrap();
            assert!(
                r.status().is_success(),
                "re-import {key}: {}",
                r.text().await.unwrap()
            );
            exported.insert(key, v);
        }
    }
    // The study definition is in the export too; the examples must be exactly themselves.
    for (key, v) in &originals {
        let e = exported
            .get(key)
            .unwrap_or_else(|| panic!("{key} missing from the export"));
        assert_eq!(without_meta(e), without_meta(v), "{key}");
        let back = get_json(&fresh.url(key)).await;
        assert_eq!(
            without_meta(&back),
            without_meta(v),
            "{key} after re-import"
        );
    }
    assert!(!exported.contains_key("Patient/example"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_during_an_export_are_not_in_it() {
    let s = TestStore::start().await;
    for chunk in 0..6 {
        let entries: Vec<Value> = (0..500)
            .map(|i| {
                let id = format!("p{}", chunk * 500 + i);
                json!({"resource": {"resourceType": "Patient", "id": id, "gender": "female"}, "request": {"method": "PUT", "url": format!("Patient/{id}")}})
            })
            .collect();
        let r = post_fhir(
            &s.base,
            json!({"resourceType":"Bundle","type":"transaction","entry":entries}).to_string(),
        )
        .send()
        .await
        .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = kick_off(&s, "$export?_type=Patient").await;
    assert_eq!(r.status(), 202);
    let status_url = r.headers()["content-location"]
        .to_str()
        .unwrap()
        .to_string();
    // While the export runs: new Patients, and changes to exported ones.
    let mut late = Vec::new();
    for i in 0..100 {
        let r = put_fhir(
            s.url(&format!("Patient/late{i}")),
            json!({"resourceType":"Patient","id":format!("late{i}")}).to_string(),
        )
        .send()
        .await
        .unwrap();
        late.push(r.headers()["last-modified"].to_str().unwrap().to_string());
        put_fhir(
            s.url(&format!("Patient/p{i}")),
            json!({"resourceType":"Patient","id":format!("p{i}"),"gender":"male"}).to_string(),
        )
        .send()
        .await
        .unwrap();
    }
    let m = manifest(&status_url).await;
    let patients = ndjson(m["output"][0]["url"].as_str().unwrap()).await;
    assert_eq!(patients.len(), 3000);
    assert!(
        patients.iter().all(|p| p["gender"] == "female"),
        "a change after kick-off leaked into the export"
    );
    assert!(!patients
        .iter()
        .any(|p| p["id"].as_str().unwrap().starts_with("late")));
    let tt = trialbridge_fhir::instant::parse(m["transactionTime"].as_str().unwrap()).unwrap();
    for p in &patients {
        let lu =
            trialbridge_fhir::instant::parse(p["meta"]["lastUpdated"].as_str().unwrap()).unwrap();
        assert!(lu <= tt, "exported version newer than transactionTime");
    }
    assert_eq!(
        m["request"].as_str().unwrap(),
        format!("{}/$export?_type=Patient", s.base)
    );
}

#[tokio::test]
async fn kick_off_rules_cancel_and_patient_level() {
    let s = TestStore::start().await;
    let r = client().get(s.url("$export")).send().await.unwrap();
    assert_eq!(r.status(), 400, "without Prefer: respond-async");
    assert_eq!(kick_off(&s, "$export?_type=Nonsense").await.status(), 400);
    assert_eq!(kick_off(&s, "$export?_since=yesterday").await.status(), 400);
    assert_eq!(
        kick_off(&s, "$export?_outputFormat=text/csv")
            .await
            .status(),
        400
    );
    assert_eq!(kick_off(&s, "Observation/$export").await.status(), 404);
    put_fhir(
        s.url("Patient/a"),
        json!({"resourceType":"Patient","id":"a"}).to_string(),
    )
    .send()
    .await
    .unwrap();
    put_fhir(s.url("Observation/o"), json!({"resourceType":"Observation","id":"o","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/a"}}).to_string()).send().await.unwrap();
    let r = kick_off(&s, "Patient/$export?_type=Patient,Observation").await;
    assert_eq!(r.status(), 202);
    let status_url = r.headers()["content-location"]
        .to_str()
        .unwrap()
        .to_string();
    let m = manifest(&status_url).await;
    let types: Vec<&str> = m["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["Patient", "Observation"]);
    // ResearchStudy is not in the Patient compartment.
    assert_eq!(
        kick_off(&s, "Patient/$export?_type=ResearchStudy")
            .await
            .status(),
        400
    );
    // Cancel (here: of a finished job) removes it.
    let r = client().delete(&status_url).send().await.unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(
        client().get(&status_url).send().await.unwrap().status(),
        404
    );
}

#[tokio::test]
async fn a_job_left_running_runs_again_at_start_up() {
    // A job the database records as running, as a server stopped mid-export leaves it.
    let dir = tempfile::tempdir().unwrap();
    let job = "0123456789abcdef0123456789abcdef";
    {
        let url = store_database_url(dir.path()).await;
        let store = trialbridge_storage::open(&url).await.unwrap();
        let state = json!({"id": job, "status": "running", "request": "x", "types": ["ResearchStudy"], "since_us": null, "as_of": 1_000_000, "transaction_time": "2026-11-25T00:00:00Z", "written": 0, "outputs": [], "error": null});
        trialbridge_storage::put_job(&*store, job, Some(state.to_string()))
            .await
            .unwrap();
    }
    let s = TestStore::start_in(dir, |_| {}).await;
    let m = manifest(&s.url(&format!("$export-status/{job}"))).await;
    assert_eq!(m["transactionTime"], "2026-11-25T00:00:00Z");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_export_command_downloads_the_files() {
    let s = TestStore::start().await;
    for i in 0..3 {
        put_fhir(
            s.url(&format!("Patient/c{i}")),
            json!({"resourceType":"Patient","id":format!("c{i}")}).to_string(),
        )
        .send()
        .await
        .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_trialbridge-under-test"))
        .args(["export", "--from", &s.base, "--type", "Patient", "--to"])
        .arg(dir.path())
        .env("TRIALBRIDGE_TOKEN", integration_tests::system_token())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(dir.path().join("Patient.ndjson")).unwrap();
    assert_eq!(text.lines().count(), 3);
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["output"][0]["count"], 3);
}

#[tokio::test]
async fn a_group_export_holds_its_members_compartments() {
    let s = TestStore::start().await;
    for p in ["a", "b", "c"] {
        put_fhir(
            s.url(&format!("Patient/{p}")),
            json!({"resourceType":"Patient","id":p}).to_string(),
        )
        .send()
        .await
        .unwrap();
        put_fhir(
            s.url(&format!("Observation/o-{p}")),
            json!({"resourceType":"Observation","id":format!("o-{p}"),"status":"final","code":{"text":"KOOS pain"},"subject":{"reference":format!("Patient/{p}")}}).to_string(),
        )
        .send()
        .await
        .unwrap();
    }
    let group = json!({"resourceType":"Group","id":"site-01-subjects","type":"person","actual":true,
        "member":[{"entity":{"reference":"Patient/a"}},{"entity":{"reference":"Patient/c"}}]});
    assert!(put_fhir(s.url("Group/site-01-subjects"), group.to_string())
        .send()
        .await
        .unwrap()
        .status()
        .is_success());
    // The Group's own routes still answer beside the export route.
    assert_eq!(
        client()
            .get(s.url("Group/site-01-subjects"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client()
            .get(s.url("Group/site-01-subjects/_history"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = kick_off(
        &s,
        "Group/site-01-subjects/$export?_type=Patient,Observation",
    )
    .await;
    assert_eq!(r.status(), 202);
    let m = manifest(r.headers()["content-location"].to_str().unwrap()).await;
    let mut ids = Vec::new();
    for out in m["output"].as_array().unwrap() {
        for v in ndjson(out["url"].as_str().unwrap()).await {
            ids.push(format!(
                "{}/{}",
                v["resourceType"].as_str().unwrap(),
                v["id"].as_str().unwrap()
            ));
        }
    }
    ids.sort();
    assert_eq!(
        ids,
        [
            "Observation/o-a",
            "Observation/o-c",
            "Patient/a",
            "Patient/c"
        ]
    );
    assert_eq!(kick_off(&s, "Group/nobody/$export").await.status(), 404);
}
