//! Real third-party FHIR clients against the store. The Python interpreter with the packages of
//! `integration-tests/python/requirements.txt` is taken from `TRIALBRIDGE_TEST_PYTHON` (the test
//! script sets it up); without it this test fails and says how to get it.

use integration_tests::{repo_root, TestStore};

fn python() -> String {
    std::env::var("TRIALBRIDGE_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhirpy_create_read_update_history_transaction_delete() {
    let s = TestStore::start().await;
    let py = python();
    let probe = tokio::process::Command::new(&py)
        .args(["-c", "import fhirpy"])
        .output()
        .await;
    match probe {
        Ok(o) if o.status.success() => {}
        _ => panic!("{py} cannot import fhirpy: run `bash scripts/test.sh` (it creates the test venv) or set TRIALBRIDGE_TEST_PYTHON to a Python with integration-tests/python/requirements.txt installed"),
    }
    let script = repo_root().join("integration-tests/python/fhirpy_walkthrough.py");
    let out = tokio::process::Command::new(&py)
        .arg(script)
        .arg(&s.base)
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
