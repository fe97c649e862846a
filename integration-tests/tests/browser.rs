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

/// Runs `node integration-tests/node/{script} ARGS... OUTDIR` (screenshots to
/// `target/browser-artifacts/`) and fails with what it printed unless it succeeds.
async fn run_flow(script: &str, args: &[&str]) {
    let chromium = chromium();
    let node_dir = repo_root().join("integration-tests/node");
    assert!(
        node_dir.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: run `bash scripts/test.sh` (it runs npm ci in integration-tests/node)"
    );
    let out = repo_root().join("target/browser-artifacts");
    let run = tokio::process::Command::new("node")
        .arg(node_dir.join(script))
        .args(args)
        .arg(&out)
        .env("TRIALBRIDGE_TEST_CHROMIUM", &chromium)
        .current_dir(&node_dir)
        .output();
    let run = tokio::time::timeout(std::time::Duration::from_secs(240), run)
        .await
        .expect("the browser flow finished in time")
        .unwrap();
    println!("{}", String::from_utf8_lossy(&run.stdout));
    assert!(
        run.status.success(),
        "{script} failed:\n{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
}

fn example(name: &str) -> Value {
    let p = repo_root().join("studies/mesemcart/examples").join(name);
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_works_through_a_subject_in_the_browser_and_site_02_sees_nothing_of_it() {
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

    run_flow("monitor_flow.mjs", &[&origin, &site_token]).await;
    let _ = store.kill().await;
}

fn oru(control_id: &str, local_code: &str, value: &str) -> String {
    format!(
        "MSH|^~\\&|LAB|KH-NORD|TB|SPONSOR|20260302100000+0100||ORU^R01^ORU_R01|{control_id}|P|2.5.1\r\
         PID|1||4711^^^KH-NORD^MR||Muster^Erika||19880412|F\r\
         OBR|1|||SCREEN^Screening|||20260302093000+0100\r\
         OBX|1|NM|{local_code}^Koerpergroesse^L||{value}|cm^^UCUM|||||F|||20260302093000+0100\r"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_integrator_finds_a_dead_letter_in_the_console_and_replays_it_after_the_code_map_is_fixed(
) {
    use integration_tests::gateway::{mllp_send, msa};
    // `trialbridge serve`: the store and site 01's gateway in one process, the store's
    // development issuer signing site staff in to the gateway's console.
    let dir = tempfile::tempdir().unwrap();
    integration_tests::install_test_key(dir.path());
    let (mllp_port, gateway_port) = (
        integration_tests::free_port(),
        integration_tests::free_port(),
    );
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_trialbridge-under-test"));
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--grpc-listen",
        "127.0.0.1:0",
    ])
    .env(
        "TRIALBRIDGE_DATABASE_URL",
        format!("sqlite://{}", dir.path().join("store.db").display()),
    )
    .env("TRIALBRIDGE_DATA_DIR", dir.path())
    .env("TRIALBRIDGE_MLLP_LISTEN", format!("127.0.0.1:{mllp_port}"))
    .env(
        "TRIALBRIDGE_GATEWAY_LISTEN",
        format!("127.0.0.1:{gateway_port}"),
    )
    .env("TRIALBRIDGE_CODE_MAP_REFRESH_SECONDS", "3600");
    let (mut serve, base) = integration_tests::spawn_with_base(&mut cmd).await;
    let gateway = format!("http://127.0.0.1:{gateway_port}");
    let mllp: std::net::SocketAddr = format!("127.0.0.1:{mllp_port}").parse().unwrap();

    // Site staff enrol a patient; the lab sends a height under a local code the study's map
    // does not know yet (acknowledged, held as a dead letter), and a second one that will be
    // discarded.
    let site_token = token(Role::Site, &[S1], "");
    let staff = client_with(&site_token);
    let r = staff
        .post(format!("{gateway}/enrolments"))
        .json(&json!({"mrn": "4711", "authority": "KH-NORD", "subjectId": "MC-01-001", "gender": "female", "birthYear": 1988}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    for (control, value) in [("LAB-1001", "172"), ("LAB-1002", "17.2")] {
        let ack = mllp_send(mllp, &oru(control, "KNIE-GR", value)).await;
        assert_eq!(msa(&ack).0, "AA", "{ack}");
    }

    let admin_token = token(Role::Admin, &[], "");
    run_flow("console_flow.mjs", &[&gateway, &base, &admin_token]).await;

    // The replayed value is in the store under the study's code; the discarded one is not.
    let reader = client_with(&site_token);
    let mut heights = Vec::new();
    for _ in 0..100 {
        let b = integration_tests::get_json_as(
            &reader,
            &format!("{base}/Observation?subject=Patient/mc-01-001"),
        )
        .await;
        heights = b["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| e["resource"].clone())
            .collect();
        if !heights.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(heights.len(), 1, "{heights:?}");
    assert_eq!(heights[0]["code"]["coding"][0]["code"], "8302-2");
    assert_eq!(heights[0]["valueQuantity"]["value"], 172);

    // The gateway's audit log holds the person's reads and decisions, the discard's reason.
    let audit = integration_tests::get_json_as(&staff, &format!("{gateway}/audit")).await;
    let acts: Vec<(String, String)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["who"].as_str().unwrap_or("").to_string(),
                a["action"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let by_person = |action: &str| {
        acts.iter()
            .any(|(who, a)| who == "it.staff@klinikum.example" && a == action)
    };
    for action in ["read-message", "replay", "discard", "read-key-list"] {
        assert!(
            by_person(action),
            "{action} by the signed-in person: {acts:?}"
        );
    }
    assert!(
        audit.to_string().contains("decimal point misplaced"),
        "{audit}"
    );
    let _ = serve.kill().await;
}
