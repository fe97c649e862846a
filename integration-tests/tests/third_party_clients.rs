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

/// Runs a client script (`python` with fhirpy, or `node` with fhir-kit-client) with the
/// system token in `TRIALBRIDGE_TOKEN`; fails the test with its output unless it succeeds.
/// Returns its standard output.
async fn run_client(program: &str, script: &str, args: &[&str]) -> String {
    let (program, path) = if program == "node" {
        let dir = repo_root().join("integration-tests/node");
        assert!(
            dir.join("node_modules/fhir-kit-client").exists(),
            "fhir-kit-client is not installed: run `bash scripts/test.sh` (it runs npm ci in integration-tests/node)"
        );
        ("node".to_string(), dir.join(script))
    } else {
        (
            python_with_fhirpy().await,
            repo_root().join("integration-tests/python").join(script),
        )
    };
    let out = tokio::process::Command::new(&program)
        .arg(path)
        .args(args)
        .env("TRIALBRIDGE_TOKEN", integration_tests::system_token())
        .output()
        .await
        .expect("run the client");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} failed\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhirpy_create_read_update_history_transaction_delete() {
    let s = TestStore::start().await;
    let stdout = run_client("python", "fhirpy_walkthrough.py", &[&s.base]).await;
    assert!(stdout.contains("all steps passed"), "{stdout}");
}

/// Loads `n` body-weight Observations with distinct dates in transactions of 100.
async fn load_weights(s: &TestStore, n: usize) {
    for chunk in 0..n.div_ceil(100) {
        let entries: Vec<serde_json::Value> = (chunk * 100..((chunk + 1) * 100).min(n))
            .map(|i| {
                let id = format!("w{i:04}");
                serde_json::json!({"resource":{"resourceType":"Observation","id":id,"status":"final",
                    "category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs"}]}],"code":{"coding":[{"system":"http://loinc.org","code":"29463-7"}]},
                    "subject":{"display":"a test subject"},
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
    run_client("python", "fhirpy_paging.py", &[&s.base, "1000"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_kit_client_next_page_walks_1000_results_once() {
    let s = TestStore::start().await;
    load_weights(&s, 1000).await;
    run_client("node", "fhir_kit_client_paging.mjs", &[&s.base, "1000"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhirpy_patch_count_and_get_or_create() {
    let s = TestStore::start().await;
    let stdout = run_client("python", "fhirpy_patch_count.py", &[&s.base]).await;
    assert!(stdout.contains("all steps passed"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_kit_client_json_patch() {
    let s = TestStore::start().await;
    run_client("node", "fhir_kit_client_patch.mjs", &[&s.base]).await;
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
    let stdout = run_client(
        "python",
        "fhirclient_discovery.py",
        &[&s.base, TOKEN, AUTHORIZE],
    )
    .await;
    assert!(stdout.contains("all steps passed"), "{stdout}");
}
