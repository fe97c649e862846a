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
            .args(["load", "--site", "mesemcart-site-01"])
            .arg(path)
            .env("TRIALBRIDGE_DATABASE_URL", &db)
            .env(
                "TRIALBRIDGE_EXTENSION_DOMAINS",
                EXAMPLE_EXTENSION_DOMAINS.join(","),
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

/// `trialbridge load` writes like the API: a site for clinical data (refused without one), an
/// AuditEvent naming the operator that finds each resource by `entity`, each error with its file, line and element,
/// and a report of what was committed before a refusal, or nothing at all with `--atomic`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_writes_like_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("store.db").display());
    let load = |args: &[&str], file: &std::path::Path| {
        let out = trialbridge()
            .arg("load")
            .args(args)
            .arg(file)
            .env("TRIALBRIDGE_DATABASE_URL", &db)
            .env("USER", "dm-anna")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let obs = |id: &str, v: &str| {
        format!(
            r#"{{"resourceType":"Observation","id":"{id}","status":"final","category":[{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs"}}]}}],"code":{{"coding":[{{"system":"http://loinc.org","code":"29463-7"}}]}},"subject":{{"reference":"Patient/mc-01-p"}},"effectiveDateTime":"2026-03-02","valueQuantity":{{"value":{v},"unit":"kg","system":"http://unitsofmeasure.org","code":"kg"}}}}"#
        )
    };
    // Clinical data of no site is refused, naming the line.
    let ndjson = dir.path().join("perf.ndjson");
    let lines: Vec<String> = (0..5).map(|i| obs(&format!("perf-000{i}"), "70")).collect();
    std::fs::write(&ndjson, lines.join("\n")).unwrap();
    let (ok, _, err) = load(&[], &ndjson);
    assert!(!ok);
    assert!(err.contains("perf.ndjson:1"), "{err}");
    assert!(err.contains("of no site"), "{err}");
    // With --site it loads, and a site-02 token neither reads nor overwrites it.
    let (ok, out, err) = load(&["--site", "mesemcart-site-01"], &ndjson);
    assert!(ok, "{err}");
    assert!(out.contains("5 created"), "{out}");
    // A bad line in the middle: its line and element, and what was committed before it.
    let mut lines: Vec<String> = (0..1200)
        .map(|i| obs(&format!("mc-01-b{i}"), "71"))
        .collect();
    lines[1100] = obs("mc-01-b1100", "\"heavy\"");
    let bad = dir.path().join("bad.ndjson");
    std::fs::write(&bad, lines.join("\n")).unwrap();
    let (ok, out, err) = load(&["--site", "mesemcart-site-01"], &bad);
    assert!(!ok);
    assert!(err.contains("bad.ndjson:1101"), "{err}");
    assert!(err.contains("Quantity).value"), "{err}");
    assert!(
        format!("{out}{err}").contains("bad.ndjson:1000"),
        "says what was committed: {out}{err}"
    );
    // --atomic: the file is loaded whole or not at all.
    let mut lines: Vec<String> = (0..20).map(|i| obs(&format!("mc-01-a{i}"), "72")).collect();
    lines[19] = obs("mc-01-a19", "\"heavy\"");
    let atomic = dir.path().join("atomic.ndjson");
    std::fs::write(&atomic, lines.join("\n")).unwrap();
    let (ok, _, err) = load(&["--site", "mesemcart-site-01", "--atomic"], &atomic);
    assert!(!ok);
    assert!(err.contains("atomic.ndjson:20"), "{err}");
    assert!(err.contains("nothing was committed"), "{err}");

    // What the store serves from it.
    let s = integration_tests::TestStore::start_in(dir, |_| {}).await;
    let site2 = integration_tests::client_with(&integration_tests::token(
        integration_tests::Role::Site,
        &["mesemcart-site-02"],
        "",
    ));
    let r = site2
        .get(s.url("Observation/perf-0001"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = site2
        .put(s.url("Observation/perf-0001"))
        .header("content-type", "application/fhir+json")
        .header("x-reason-for-change", "overwrite")
        .body(obs("perf-0001", "1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let site1 = integration_tests::client_with(&integration_tests::token(
        integration_tests::Role::Site,
        &["mesemcart-site-01"],
        "",
    ));
    let r = site1
        .get(s.url("Observation/mc-01-b999"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the first batches were committed");
    let r = site1
        .get(s.url("Observation/mc-01-a0"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "the atomic file was not");
    // The resource's AuditEvent, naming the operator.
    let admin = integration_tests::client_with(&integration_tests::token(
        integration_tests::Role::Admin,
        &[],
        "",
    ));
    let b: serde_json::Value =
        integration_tests::get_json_as(&admin, &s.url("AuditEvent?entity=Observation/perf-0003"))
            .await;
    let e = &b["entry"][0]["resource"];
    assert_eq!(e["action"], "C", "{b}");
    assert!(e.to_string().contains("dm-anna"), "{e}");
}

/// `load` reports its pace per tenth of the input and how much the store grew per resource;
/// `space` lists every table and index, on both backends. The trail of a load names what it
/// wrote without outweighing it: one AuditEvent per commit and site, not one per resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_reports_its_pace_and_space_shows_where_the_bytes_are() {
    let dir = tempfile::tempdir().unwrap();
    let server = std::env::var("TRIALBRIDGE_TEST_POSTGRES_URL").expect(
        "TRIALBRIDGE_TEST_POSTGRES_URL names no PostgreSQL: run the tests with `bash scripts/test.sh`",
    );
    let pg =
        integration_tests::postgres_database(&server, &format!("tb_space_{}", std::process::id()))
            .await;
    let lines: Vec<String> = (0..1200)
        .map(|i| {
            format!(
                r#"{{"resourceType":"Observation","id":"sp-{i}","status":"final","category":[{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs"}}]}}],"code":{{"coding":[{{"system":"http://loinc.org","code":"29463-7"}}]}},"subject":{{"reference":"Patient/p{}"}},"effectiveDateTime":"2026-03-02","valueQuantity":{{"value":{i},"unit":"kg","system":"http://unitsofmeasure.org","code":"kg"}}}}"#,
                i % 50
            )
        })
        .collect();
    let file = dir.path().join("obs.ndjson");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let sqlite = format!("sqlite://{}", dir.path().join("space.db").display());
    for db in [sqlite, pg] {
        // stdout of a command that must succeed.
        let run = |args: &[&std::ffi::OsStr]| {
            let out = trialbridge()
                .args(args)
                .env("TRIALBRIDGE_DATABASE_URL", &db)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                out.status.success(),
                "{text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            text
        };
        let text = run(&[
            "load".as_ref(),
            "--site".as_ref(),
            "mesemcart-site-01".as_ref(),
            file.as_os_str(),
        ]);
        assert!(text.contains("1200 created"), "{text}");
        assert!(text.contains("1200 resources in "), "{text}");
        assert!(text.contains("by tenth of the input: "), "{text}");
        let per = text
            .split("store grew by ")
            .nth(1)
            .and_then(|t| t.split(" MB, ").nth(1))
            .and_then(|t| t.split(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no growth line: {text}"));
        assert!(per > 0, "{text}");
        if db.starts_with("postgres://") {
            // The load ends with fresh planner statistics: an ANALYZE finished after the last
            // version was written (the writer's own, started after the first 1,000, need not
            // have; the statistics views may lag a little).
            let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&db)
                .await
                .unwrap();
            let mut fresh = false;
            for _ in 0..50 {
                fresh = sqlx::query_scalar::<_, bool>(
                    "SELECT COALESCE(s.last_analyze >= (SELECT to_timestamp(MAX(last_updated_us) / 1e6) FROM resource_version), false) \
                     FROM pg_stat_user_tables s WHERE s.relname = 'resource_version'",
                )
                .fetch_one(&mut conn)
                .await
                .unwrap();
                if fresh {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            assert!(fresh, "no ANALYZE after the last version loaded");
        }

        let text = run(&["space".as_ref()]);
        let bytes = |name: &str| -> u64 {
            text.lines()
                .find(|l| l.split_whitespace().next() == Some(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{name} not listed: {text}"))
        };
        assert!(bytes("search_index") > 0, "{text}");
        assert!(
            bytes("audit_event") < bytes("resource_version"),
            "the trail outweighs the data: {text}"
        );
        assert!(text.contains("(1200 resources)"), "{text}");
    }
}

/// `--help` never shows a secret: a database URL with a password in the environment is not
/// echoed (clap prints the values of the variables it names unless told not to).
#[test]
fn help_does_not_print_the_database_password() {
    let out = trialbridge()
        .args(["serve", "--help"])
        .env(
            "TRIALBRIDGE_DATABASE_URL",
            "postgres://trialbridge:s3cret-pw@db.example:5432/trial",
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("TRIALBRIDGE_DATABASE_URL"), "{text}");
    assert!(!text.contains("s3cret-pw"), "{text}");
}

/// The bench client counts a failed request apart from the throughput and fails the run: here
/// every GET asks for an Observation the store does not have (404).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_counts_failed_requests_apart_and_exits_non_zero() {
    let s = integration_tests::TestStore::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("obs.ndjson");
    std::fs::write(
        &data,
        r#"{"resourceType":"Observation","id":"nowhere","status":"final","code":{"text":"x"}}"#,
    )
    .unwrap();
    let base = s.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        trialbridge()
            .args([
                "bench",
                "--base",
                &base,
                "--scenario",
                "get",
                "--requests",
                "20",
            ])
            .arg("--data")
            .arg(&data)
            .env("TRIALBRIDGE_TOKEN", integration_tests::system_token())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout} {stderr}");
    let line: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(line["errors"], 20, "{line}");
    assert_eq!(line["requests"], 0, "{line}");
    assert!(stderr.contains("20 requests failed"), "{stderr}");
}

/// Message files as hospital IT has them: the README's MLLP-framed `printf` output, several
/// messages with CRLF segment ends, and a bad message among good ones named by its line.
#[test]
fn hl7_parse_reads_framed_and_multi_message_files_and_names_the_bad_line() {
    let dir = tempfile::tempdir().unwrap();
    let a = "MSH|^~\\&|LAB|KH-NORD|TB|SPONSOR|20260302100000+0100||ORU^R01^ORU_R01|LAB-0001|P|2.5.1\rPID|1||4711^^^KH-NORD^MR\rOBX|1|NM|BMI^Body mass index^L||27.4|kg/m2^^UCUM\r";
    let b = a.replace("LAB-0001", "LAB-0002");
    let parse = |name: &str, content: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        let out = trialbridge()
            .args(["hl7", "parse"])
            .arg(&p)
            .output()
            .unwrap();
        let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (
            out.status.code(),
            lines,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, lines, err) = parse("framed.hl7", &format!("\x0b{a}\x1c\r"));
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(lines[0]["control_id"], "LAB-0001");

    let (code, lines, err) = parse("two.hl7", &format!("{a}{b}").replace('\r', "\r\n"));
    assert_eq!(code, Some(0), "{err}");
    let found: Vec<(u64, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["line"].as_u64().unwrap(),
                l["control_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(found, vec![(1, "LAB-0001"), (4, "LAB-0002")]);

    // The middle message has a line that is not a segment (a line break inside OBX-5).
    let broken = a
        .replace("LAB-0001", "LAB-0003")
        .replace("27.4|", "27.4\nkg|");
    let (code, lines, err) = parse(
        "three.hl7",
        &format!("{a}\n{broken}\n{b}").replace('\r', "\n"),
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("1 of 3 messages do not parse"), "{err}");
    let bad: Vec<&serde_json::Value> = lines.iter().filter(|l| l.get("error").is_some()).collect();
    assert_eq!(bad.len(), 1, "{lines:?}");
    assert_eq!(bad[0]["line"], 8, "{lines:?}");
    assert!(bad[0]["hint"]
        .as_str()
        .unwrap()
        .contains("line break inside a field"));

    let (code, lines, _) = parse("cut.hl7", &format!("\x0b{a}\x1c\r\x0b{b}"));
    assert_eq!(code, Some(1));
    assert!(
        lines[0]["error"].as_str().unwrap().contains("line 5"),
        "{lines:?}"
    );
}

/// `trialbridge view run`: a ViewDefinition over NDJSON and a Bundle file, as CSV and NDJSON;
/// an invalid view names its element.
#[test]
fn view_run_prints_the_rows_of_a_view_and_names_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let view = dir.path().join("bp.json");
    std::fs::write(
        &view,
        serde_json::json!({"resourceType": "ViewDefinition", "name": "bp", "resource": "Observation", "select": [
            {"column": [{"name": "id", "path": "getResourceKey()"}]},
            {"forEach": "component", "column": [
                {"name": "code", "path": "code.coding.first().code"},
                {"name": "value", "path": "value.ofType(Quantity).value"},
                {"name": "note", "path": "'a, \"b\"'"}]}]})
        .to_string(),
    )
    .unwrap();
    let obs = |id: &str, s: f64, d: f64| {
        serde_json::json!({"resourceType": "Observation", "id": id, "status": "final", "code": {"text": "bp"}, "component": [
            {"code": {"coding": [{"code": "8480-6"}]}, "valueQuantity": {"value": s}},
            {"code": {"coding": [{"code": "8462-4"}]}, "valueQuantity": {"value": d}}]})
    };
    let ndjson = dir.path().join("data.ndjson");
    std::fs::write(
        &ndjson,
        format!(
            "{}\n\n{}\n",
            obs("a", 120.0, 80.0),
            serde_json::json!({"resourceType": "Patient", "id": "p"})
        ),
    )
    .unwrap();
    let bundle = dir.path().join("bundle.json");
    std::fs::write(
        &bundle,
        serde_json::json!({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": obs("b", 130.5, 85.0)}]}).to_string(),
    )
    .unwrap();
    let out = trialbridge()
        .args(["view", "run"])
        .args([&view, &ndjson, &bundle])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "id,code,value,note\nObservation/a,8480-6,120.0,\"a, \"\"b\"\"\"\nObservation/a,8462-4,80.0,\"a, \"\"b\"\"\"\nObservation/b,8480-6,130.5,\"a, \"\"b\"\"\"\nObservation/b,8462-4,85.0,\"a, \"\"b\"\"\"\n"
    );
    let out = trialbridge()
        .args(["view", "run", "--format", "ndjson"])
        .args([&view, &bundle])
        .output()
        .unwrap();
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        rows[1],
        serde_json::json!({"id": "Observation/b", "code": "8462-4", "value": 85.0, "note": "a, \"b\""})
    );

    std::fs::write(&view, r#"{"resource": "Observation", "select": [{"forEachOrNull": "component.(", "column": []}]}"#).unwrap();
    let out = trialbridge()
        .args(["view", "run"])
        .args([&view, &bundle])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a valid ViewDefinition") && err.contains("select[0].forEachOrNull"),
        "{err}"
    );
    let out = trialbridge()
        .args(["view", "run"])
        .arg(&view)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

/// One data directory: `serve` with only `TRIALBRIDGE_DATA_DIR` writes its SQLite database, the
/// gateway's database and the development key there, and nothing in the working directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_holds_everything_serve_writes() {
    let (data, cwd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_trialbridge-under-test"));
    for (k, _) in std::env::vars() {
        if k.starts_with("TRIALBRIDGE_") {
            cmd.env_remove(k);
        }
    }
    cmd.arg("serve")
        .current_dir(cwd.path())
        .env("TRIALBRIDGE_DATA_DIR", data.path())
        .env("TRIALBRIDGE_LISTEN", "127.0.0.1:0")
        .env("TRIALBRIDGE_GRPC_LISTEN", "127.0.0.1:0")
        .env("TRIALBRIDGE_MLLP_LISTEN", "127.0.0.1:0")
        .env("TRIALBRIDGE_GATEWAY_LISTEN", "127.0.0.1:0")
        .env("TRIALBRIDGE_LOAD_STUDY", "false")
        .stderr(std::process::Stdio::null());
    let (mut child, base) = integration_tests::spawn_with_base(&mut cmd).await;
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    for f in ["trialbridge.db", "site-gateway.db", "dev-signing-key.p8"] {
        assert!(
            data.path().join(f).exists(),
            "{f} is not in the data directory"
        );
    }
    let _ = child.kill().await;
    let stray: Vec<_> = std::fs::read_dir(cwd.path()).unwrap().collect();
    assert!(
        stray.is_empty(),
        "written in the working directory: {stray:?}"
    );
}

/// A PostgreSQL password never appears in start-up logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_logs_show_the_database_url_without_its_password() {
    use tokio::io::AsyncBufReadExt;
    let server = std::env::var("TRIALBRIDGE_TEST_POSTGRES_URL").expect(
        "TRIALBRIDGE_TEST_POSTGRES_URL names no PostgreSQL: run the tests with `bash scripts/test.sh`",
    );
    let db =
        integration_tests::postgres_database(&server, &format!("tb_secret_{}", std::process::id()))
            .await;
    // The test server trusts local connections: the password is carried, not needed.
    let with_password = db.replacen("://postgres@", "://postgres:Very-Secret-42@", 1);
    assert_ne!(with_password, db, "{db}");
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = integration_tests::store_command(
        env!("CARGO_BIN_EXE_trialbridge-under-test"),
        &with_password,
        dir.path(),
    );
    cmd.stderr(std::process::Stdio::piped());
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut err = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(std::time::Duration::from_secs(30), err.next_line()).await
    {
        let done = line.contains("listening, FHIR base");
        seen.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill().await;
    let text = seen.join("\n");
    assert!(text.contains("listening, FHIR base"), "{text}");
    assert!(text.contains("postgres:***@"), "{text}");
    assert!(!text.contains("Very-Secret-42"), "{text}");
}

/// Every subcommand, given one bad input, says what was wrong and what to do next, and exits
/// non-zero.
#[test]
fn each_subcommand_names_a_bad_input_and_the_next_step() {
    let dir = tempfile::tempdir().unwrap();
    let missing = format!(
        "sqlite://{}",
        dir.path().join("none/trialbridge.db").display()
    );
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    drop(std::net::TcpListener::bind(&free));
    let nobody = format!("http://{free}/fhir");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "audit".into(),
                "verify".into(),
                "--database-url".into(),
                missing.clone(),
            ],
            "no trial database at",
        ),
        (
            vec!["reindex".into(), "--database-url".into(), missing.clone()],
            "--database-url (TRIALBRIDGE_DATABASE_URL)",
        ),
        (
            vec![
                "archive".into(),
                "--to".into(),
                dir.path().join("a").display().to_string(),
                "--database-url".into(),
                missing.clone(),
            ],
            "no trial database at",
        ),
        (
            vec![
                "archive".into(),
                "verify".into(),
                dir.path().display().to_string(),
            ],
            "not an archive",
        ),
        (
            vec![
                "export".into(),
                "--from".into(),
                nobody.clone(),
                "--to".into(),
                dir.path().join("x").display().to_string(),
            ],
            "start the server",
        ),
        (
            vec![
                "feed".into(),
                "--from".into(),
                format!("http://{free}"),
                "--token".into(),
                "t".into(),
                "--after".into(),
                "0".into(),
            ],
            "start the server",
        ),
        (
            vec![
                "hl7".into(),
                "send".into(),
                "--to".into(),
                free.clone(),
                "--file".into(),
                dir.path().join("nothing.hl7").display().to_string(),
            ],
            "cannot read",
        ),
        (
            vec!["token".into(), "--role".into(), "nobody".into()],
            "not one of site, monitor",
        ),
        (
            vec![
                "sync".into(),
                "--token".into(),
                "t".into(),
                "--postgres".into(),
                "warehouse".into(),
                "--from".into(),
                format!("http://{free}"),
            ],
            "postgres://user:password@host:5432/database",
        ),
        (
            vec![
                "view".into(),
                "run".into(),
                dir.path().join("v.json").display().to_string(),
            ],
            "cannot read",
        ),
    ];
    for (args, says) in cases {
        let out = trialbridge().args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert!(
        !dir.path().join("none").exists(),
        "a missing database was created"
    );
}
