//! The command line: configuration errors, `load`.

use std::process::Command;

use integration_tests::{fixture, EXAMPLE_EXTENSION_DOMAINS, INVALID_EXAMPLE};

fn trialbridge() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_trialbridge-under-test"));
    for (k, _) in std::env::vars() {
        if k.starts_with("TRIALBRIDGE_") {
            c.env_remove(k);
        }
    }
    c
}

#[test]
fn every_bad_setting_is_reported_on_its_own_line() {
    let out = trialbridge()
        .arg("serve")
        .env("TRIALBRIDGE_LISTEN", "nowhere")
        .env("TRIALBRIDGE_MAX_BODY_BYTES", "lots")
        .env("TRIALBRIDGE_DATABASE_URL", "mysql://db")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("configuration:"))
        .collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(lines
        .iter()
        .any(|l| l.contains("TRIALBRIDGE_LISTEN") && l.contains("nowhere")));
    assert!(lines
        .iter()
        .any(|l| l.contains("TRIALBRIDGE_MAX_BODY_BYTES")));
    assert!(lines.iter().any(|l| l.contains("TRIALBRIDGE_DATABASE_URL")));
}

#[test]
fn load_is_idempotent_and_refuses_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("in");
    std::fs::create_dir(&data).unwrap();
    let mut n = 0;
    for e in std::fs::read_dir(fixture("r4-examples")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".json") && !name.starts_with("Bundle-") && name != INVALID_EXAMPLE {
            std::fs::copy(&p, data.join(&name)).unwrap();
            n += 1;
        }
    }
    let db = format!("sqlite://{}", dir.path().join("load.db").display());
    let run = |path: &std::path::Path| {
        trialbridge()
            .args(["load"])
            .arg(path)
            .env("TRIALBRIDGE_DATABASE_URL", &db)
            .env(
                "TRIALBRIDGE_EXTENSION_DOMAINS",
                format!(
                    "{},{}",
                    trial_store::config::DEFAULT_EXTENSION_DOMAINS,
                    EXAMPLE_EXTENSION_DOMAINS.join(",")
                ),
            )
            .output()
            .unwrap()
    };
    let first = run(&data);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        stdout.contains(&format!("{n} created, 0 updated, 0 unchanged")),
        "{stdout}"
    );
    let second = run(&data);
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(
        stdout.contains(&format!("0 created, 0 updated, {n} unchanged")),
        "{stdout}"
    );
    let txn = run(&fixture("r4-examples/Bundle-bundle-transaction.json"));
    assert!(!txn.status.success());
    assert!(String::from_utf8_lossy(&txn.stderr).contains("POST it to the FHIR base URL"));
}

#[test]
fn validate_and_hl7_parse_report_and_fail_on_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.json");
    std::fs::write(&good, r#"{"resourceType":"Patient","gender":"female"}"#).unwrap();
    let bad = dir.path().join("bad.ndjson");
    std::fs::write(
        &bad,
        "{\"resourceType\":\"Observation\",\"status\":\"done\",\"code\":{\"text\":\"x\"}}\n",
    )
    .unwrap();
    let ok = trialbridge().arg("validate").arg(&good).output().unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let out = trialbridge().arg("validate").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("bad.ndjson:1: Observation.status"), "{text}");
    let msg = dir.path().join("m.hl7");
    std::fs::write(
        &msg,
        "MSH|^~\\&|A|B|C|D|20260101||ORU^R01|M1|P|2.5\nPID|1||4711\n",
    )
    .unwrap();
    let out = trialbridge()
        .args(["hl7", "parse"])
        .arg(&msg)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"type\":\"ORU^R01\""));
    std::fs::write(&msg, "PID|1||4711\n").unwrap();
    let out = trialbridge()
        .args(["hl7", "parse"])
        .arg(&msg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("does not start with an MSH segment"));
}

#[test]
fn token_mints_a_site_token_and_a_monitor_token_for_several_sites() {
    let dir = tempfile::tempdir().unwrap();
    let mint = |args: &[&str]| {
        trialbridge()
            .arg("token")
            .args(args)
            .env("TRIALBRIDGE_DATA_DIR", dir.path())
            .output()
            .unwrap()
    };
    let site = mint(&["--role", "site", "--site", "mesemcart-site-01"]);
    assert!(
        site.status.success(),
        "{}",
        String::from_utf8_lossy(&site.stderr)
    );
    let token = String::from_utf8_lossy(&site.stdout).trim().to_string();
    assert_eq!(token.split('.').count(), 3, "{token}");
    let monitor = mint(&[
        "--role",
        "monitor",
        "--site",
        "mesemcart-site-01",
        "--site",
        "mesemcart-site-02",
    ]);
    assert!(
        monitor.status.success(),
        "{}",
        String::from_utf8_lossy(&monitor.stderr)
    );
    // A site token names exactly one site.
    let two = mint(&[
        "--role",
        "site",
        "--site",
        "mesemcart-site-01",
        "--site",
        "mesemcart-site-02",
    ]);
    assert!(!two.status.success());
    assert!(String::from_utf8_lossy(&two.stderr).contains("exactly one --site"));
}
