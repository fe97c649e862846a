//! The pages in a real browser: `trialbridge store` (local profile, so its development issuer
//! signs monitors in) with one subject written by site 01, and `node monitor_flow.mjs`
//! (playwright-core driving Debian's chromium, axe-core checking each page) through the whole
//! monitor flow and the site-02 isolation check. Screenshots land in
//! `target/browser-artifacts/`. Needs chromium (`.ci/run` installs Debian's package) and the npm
//! test clients (`scripts/test.sh` runs `npm ci`).

use integration_tests::{client_with, repo_root, token, Role};
use serde_json::{json, Value};

const S1: &str = "mesemcart-site-01";

fn chromium() -> String {
    let path =
        std::env::var("TRIALBRIDGE_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&path).exists(),
        "no chromium at {path}: install Debian's chromium package (.ci/run does) or set TRIALBRIDGE_TEST_CHROMIUM"
    );
    path
}

fn example(name: &str) -> Value {
    let p = repo_root().join("studies/mesemcart/examples").join(name);
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_works_through_a_subject_in_the_browser_and_site_02_sees_nothing_of_it() {
    let chromium = chromium();
    let node_dir = repo_root().join("integration-tests/node");
    assert!(
        node_dir.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: run `bash scripts/test.sh` (it runs npm ci in integration-tests/node)"
    );
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("store.db").display());
    let mut cmd = integration_tests::store_command(
        env!("CARGO_BIN_EXE_trialbridge-under-test"),
        &db,
        dir.path(),
    );
    cmd.env("TRIALBRIDGE_LOAD_STUDY", "true");
    let (mut store, base) = integration_tests::spawn_with_base(&mut cmd).await;
    let origin = base.trim_end_matches("/fhir").to_string();

    // Site 01 writes a subject's screening, and corrects one value (two versions).
    let site_token = token(Role::Site, &[S1], "");
    let site = client_with(&site_token);
    let mut koos = example("Observation-mc-01-001-koos-pain-v5.json");
    let writes = [
        example("Patient-mc-01-001.json"),
        example("ResearchSubject-mc-01-001.json"),
        example("Observation-mc-01-001-bmi.json"),
        example("Observation-mc-01-001-icrs-grade.json"),
        koos.clone(),
        {
            koos["valueQuantity"]["value"] = json!(70);
            koos
        },
    ];
    for v in writes {
        let url = format!(
            "{base}/{}/{}",
            v["resourceType"].as_str().unwrap(),
            v["id"].as_str().unwrap()
        );
        let r = site
            .put(url)
            .header("content-type", "application/fhir+json")
            .header("x-reason-for-change", "value re-read from the form")
            .body(v.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status();
        assert!(status.is_success(), "{status}: {}", r.text().await.unwrap());
    }

    let out = repo_root().join("target/browser-artifacts");
    let run = tokio::process::Command::new("node")
        .arg(node_dir.join("monitor_flow.mjs"))
        .args([&origin, &site_token, &out.display().to_string()])
        .env("TRIALBRIDGE_TEST_CHROMIUM", &chromium)
        .current_dir(&node_dir)
        .output();
    let run = tokio::time::timeout(std::time::Duration::from_secs(240), run)
        .await
        .expect("the browser flow finished in time")
        .unwrap();
    let _ = store.kill().await;
    println!("{}", String::from_utf8_lossy(&run.stdout));
    assert!(
        run.status.success(),
        "the monitor flow failed:\n{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
}
