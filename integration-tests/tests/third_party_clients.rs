//! Real third-party FHIR clients against the store. The Python interpreter with the packages of
//! `integration-tests/python/requirements.txt` is taken from `TRIALBRIDGE_TEST_PYTHON` (the test
//! script sets it up); without it this test fails and says how to get it.

use integration_tests::{post_fhir, repo_root, TestStore};

fn python() -> String {
    std::env::var("TRIALBRIDGE_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// The Python to run fhirpy with; fails the test with instructions when fhirpy is missing.
async fn python_with_fhirpy() -> String {
    let py = python();
    let probe = tokio::process::Command::new(&py)
        .args(["-c", "import fhirpy"])
        .output()
        .await;
    match probe {
        Ok(o) if o.status.success() => py,
        _ => panic!(
            "{py} cannot import fhirpy: run `bash scripts/test.sh` (it creates the test venv) or set TRIALBRIDGE_TEST_PYTHON to a Python with integration-tests/python/requirements.txt installed"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhirpy_create_read_update_history_transaction_delete() {
    let s = TestStore::start().await;
    let py = python_with_fhirpy().await;
    let script = repo_root().join("integration-tests/python/fhirpy_walkthrough.py");
    let out = tokio::process::Command::new(&py)
        .arg(script)
        .arg(&s.base)
        .env("TRIALBRIDGE_TOKEN", integration_tests::system_token())
        .output()
        .await
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "fhirpy walkthrough failed\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all steps passed"), "{stdout}");
}

/// Loads `n` body-weight Observations with distinct dates in transactions of 100.
async fn load_weights(s: &TestStore, n: usize) {
    for chunk in 0..n.div_ceil(100) {
        let entries: Vec<serde_json::Value> = (chunk * 100..((chunk + 1) * 100).min(n))
            .map(|i| {
                let id = format!("w{i:04}");
                serde_json::json!({"resource":{"resourceType":"Observation","id":id,"status":"final",
                    "code":{"coding":[{"system":"http://loinc.org","code":"29463-7"}]},
                    "effectiveDateTime": format!("2024-{:02}-{:02}T{:02}:{:02}:00Z", 1 + i % 12, 1 + i % 28, i % 24, i % 60),
                    "valueQuantity":{"value": 60 + i % 40, "unit":"kg","system":"http://unitsofmeasure.org","code":"kg"}},
                  "request":{"method":"PUT","url":format!("Observation/{id}")}})
            })
            .collect();
        let b = serde_json::json!({"resourceType":"Bundle","type":"transaction","entry":entries});
        let r = post_fhir(&s.base, b.to_string()).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhirpy_fetch_all_sorted_walks_1000_results_once() {
    let s = TestStore::start().await;
    load_weights(&s, 1000).await;
    let script = repo_root().join("integration-tests/python/fhirpy_paging.py");
    let out = tokio::process::Command::new(python_with_fhirpy().await)
        .arg(script)
        .arg(&s.base)
        .env("TRIALBRIDGE_TOKEN", integration_tests::system_token())
        .arg("1000")
        .output()
        .await
        .expect("run python");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_kit_client_next_page_walks_1000_results_once() {
    let s = TestStore::start().await;
    load_weights(&s, 1000).await;
    let node_dir = repo_root().join("integration-tests/node");
    assert!(
        node_dir.join("node_modules/fhir-kit-client").exists(),
        "fhir-kit-client is not installed: run `bash scripts/test.sh` (it runs npm ci in integration-tests/node)"
    );
    let out = tokio::process::Command::new("node")
        .arg(node_dir.join("fhir_kit_client_paging.mjs"))
        .arg(&s.base)
        .env("TRIALBRIDGE_TOKEN", integration_tests::system_token())
        .arg("1000")
        .output()
        .await
        .expect("run node");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhirpy_patch_count_and_get_or_create() {
    let s = TestStore::start().await;
    let script = repo_root().join("integration-tests/python/fhirpy_patch_count.py");
    let out = tokio::process::Command::new(python_with_fhirpy().await)
        .arg(script)
        .arg(&s.base)
        .env("TRIALBRIDGE_TOKEN", integration_tests::system_token())
        .output()
        .await
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all steps passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_kit_client_json_patch() {
    let s = TestStore::start().await;
    let node_dir = repo_root().join("integration-tests/node");
    let out = tokio::process::Command::new("node")
        .arg(node_dir.join("fhir_kit_client_patch.mjs"))
        .arg(&s.base)
        .env("TRIALBRIDGE_TOKEN", integration_tests::system_token())
        .output()
        .await
        .expect("run node");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A SMART client discovers that the store is protected and where the issuer's endpoints are
/// (from the configuration), and `.well-known/smart-configuration` answers without a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smart_client_discovers_the_issuer() {
    const TOKEN: &str = "https://idp.mesemcart-sponsor.example/oauth2/token";
    const AUTHORIZE: &str = "https://idp.mesemcart-sponsor.example/oauth2/authorize";
    let s = TestStore::start_with(|c| {
        c.smart.token = Some(TOKEN.into());
        c.smart.authorize = Some(AUTHORIZE.into());
    })
    .await;
    let script = repo_root().join("integration-tests/python/fhirclient_discovery.py");
    let out = tokio::process::Command::new(python_with_fhirpy().await)
        .arg(script)
        .args([&s.base, TOKEN, AUTHORIZE])
        .output()
        .await
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all steps passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
