//! The 30-year archive as an inspector uses it: a store holding the example subject's full
//! history (creates, corrections with reasons, a deletion) is archived with `trialbridge
//! archive --to`, checked with `archive verify` and with the standard-tool recipe of the
//! archive's own README (sha256sum, openssl, jq: run here as written), restored into an empty
//! store (same versions, same audit chain, searchable), and tampered with: one byte of one
//! file, and one line of the audit trail with the manifest re-hashed to match; both
//! verifications fail each time.

use std::path::Path;
use std::process::Command;

use integration_tests::{client, repo_root, TestStore};
use serde_json::{json, Value};
use trialbridge_storage::{AccessContext, HistoryQuery, HistoryScope};

fn cli(args: &[&str], db: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_trialbridge-under-test"))
        .args(args)
        .env("TRIALBRIDGE_DATABASE_URL", db)
        .output()
        .unwrap()
}

fn example(name: &str) -> Value {
    let p = repo_root().join("studies/mesemcart/examples").join(name);
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

async fn send(method: reqwest::Method, s: &TestStore, path: &str, body: Option<&Value>) {
    let mut r = client()
        .request(method, s.url(path))
        .header("x-reason-for-change", "transcription error corrected");
    if let Some(b) = body {
        r = r
            .header("content-type", "application/fhir+json")
            .body(b.to_string());
    }
    let r = r.send().await.unwrap();
    assert!(
        r.status().is_success(),
        "{path}: {}",
        r.text().await.unwrap()
    );
}

async fn put(s: &TestStore, v: &Value) {
    let path = format!(
        "{}/{}",
        v["resourceType"].as_str().unwrap(),
        v["id"].as_str().unwrap()
    );
    send(reqwest::Method::PUT, s, &path, Some(v)).await;
}

/// Every version of a store, as (type, id, version, seq, lastUpdated, body).
async fn versions(url: &str) -> Vec<(String, String, i64, i64, String, Option<String>)> {
    let store = trialbridge_storage::open(url).await.unwrap();
    let ctx = AccessContext::system("test");
    let (mut out, mut after) = (Vec::new(), 0);
    loop {
        let page = store
            .history(
                &ctx,
                &HistoryQuery::oldest_first(HistoryScope::System, after, 500),
            )
            .await
            .unwrap();
        for v in &page.versions {
            out.push((
                v.resource_type.clone(),
                v.id.clone(),
                v.version,
                v.seq,
                v.last_updated.clone(),
                v.body.clone(),
            ));
            after = v.seq;
        }
        if !page.has_more {
            return out;
        }
    }
}

/// The commands of the README's "Checking it" section: each indented block of a numbered
/// step, joined where a line ends in `\` or a pipe.
fn recipe(readme: &str) -> Vec<(String, String)> {
    let section = readme
        .split("Checking it\n")
        .nth(1)
        .unwrap()
        .split("Reading it\n")
        .next()
        .unwrap();
    let mut steps = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in section.lines() {
        if let Some(n) = line
            .split_once(". ")
            .map(|(n, _)| n)
            .filter(|n| n.chars().all(|c| c.is_ascii_digit()) && !n.is_empty())
        {
            steps.extend(current.take());
            current = Some((n.to_string(), String::new()));
        } else if let Some(cmd) = line.strip_prefix("     ") {
            if let Some((_, text)) = current.as_mut() {
                text.push_str(cmd);
                text.push('\n');
            }
        }
    }
    steps.extend(current);
    steps.retain(|(_, c)| !c.trim().is_empty());
    steps
}

fn bash(dir: &Path, script: &str) -> (i32, String, String) {
    let out = Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the README's recipe in `dir`: true when every step says the archive is intact.
fn recipe_passes(dir: &Path, fingerprint: &str) -> bool {
    let readme = std::fs::read_to_string(dir.join("README.txt")).unwrap();
    let steps = recipe(&readme);
    assert_eq!(
        steps.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["1", "2", "3", "4", "5", "6"],
        "{readme}"
    );
    let mut ok = true;
    for (n, script) in &steps {
        let (code, out, err) = bash(dir, script);
        let passed = match n.as_str() {
            "1" => code == 0 && out.lines().all(|l| l.ends_with(": OK")),
            "2" => code == 0 && out.contains("Signature Verified Successfully"),
            "3" => out.starts_with(fingerprint),
            "4" | "5" => code == 0 && out.trim().is_empty() && err.trim().is_empty(),
            // The checkpoint's event carries the signed hash.
            _ => {
                let signed: Value = serde_json::from_str(
                    &std::fs::read_to_string(dir.join("audit/checkpoint.json")).unwrap(),
                )
                .unwrap();
                let hash = signed["hash"].as_str().unwrap();
                code == 0
                    && out.contains("Signature Verified Successfully")
                    && out.lines().filter(|l| *l == hash).count() == 2
            }
        };
        if !passed {
            eprintln!("step {n} says the archive is not intact: code {code}\n{out}\n{err}");
        }
        ok &= passed;
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_archive_verifies_with_the_command_and_standard_tools_restores_and_shows_tampering() {
    let s = TestStore::start().await;
    for f in [
        "Patient-mc-01-001.json",
        "ResearchSubject-mc-01-001.json",
        "Observation-mc-01-001-bmi.json",
        "Observation-mc-01-001-icrs-grade.json",
        "Observation-mc-01-001-defect-area.json",
        "Procedure-mc-01-001-implantation.json",
        "Observation-mc-01-001-koos-pain-v5.json",
    ] {
        put(&s, &example(f)).await;
    }
    // The subject's history: enrolled, a value corrected with a reason, a value withdrawn.
    let mut rs = example("ResearchSubject-mc-01-001.json");
    rs["status"] = json!("on-study");
    put(&s, &rs).await;
    let mut bmi = example("Observation-mc-01-001-bmi.json");
    bmi["valueQuantity"]["value"] = json!(27.9);
    put(&s, &bmi).await;
    send(
        reqwest::Method::DELETE,
        &s,
        "Observation/mc-01-001-defect-area",
        None,
    )
    .await;

    // The sponsor's signed checkpoint of the chain, carried in the archive.
    let work = tempfile::tempdir().unwrap();
    let keys = work.path().join("sponsor");
    let k = cli(
        &["audit", "keygen", "--out", keys.to_str().unwrap()],
        &s.database_url,
    );
    assert!(k.status.success(), "{}", String::from_utf8_lossy(&k.stderr));
    let checkpoint = work.path().join("checkpoint.json");
    let c = cli(
        &[
            "audit",
            "checkpoint",
            "--key",
            keys.with_extension("key").to_str().unwrap(),
            "--out",
            checkpoint.to_str().unwrap(),
        ],
        &s.database_url,
    );
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    let dir = work.path().join("archive");
    let out = cli(
        &[
            "archive",
            "--to",
            dir.to_str().unwrap(),
            "--checkpoint",
            checkpoint.to_str().unwrap(),
            "--checkpoint-key",
            keys.with_extension("pub").to_str().unwrap(),
        ],
        &s.database_url,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["versions"], 10, "{summary}");
    assert_eq!(summary["resources"], 6, "{summary}");
    let fingerprint = summary["key_fingerprint_sha256"]
        .as_str()
        .unwrap()
        .to_string();
    // What the package holds: every version, the chain, the study, the definitions.
    let lines = std::fs::read_to_string(dir.join("resources/versions.ndjson")).unwrap();
    assert_eq!(lines.lines().count(), 10);
    assert!(lines.lines().any(|l| l.contains("\"deleted\":true")));
    assert!(dir.join("study/ResearchStudy-mesemcart.json").exists());
    assert!(dir.join("audit/checkpoint.json").exists());
    for d in [
        "StructureDefinition-Observation",
        "StructureDefinition-ResearchSubject",
        "StructureDefinition-Quantity",
        "ValueSet-observation-status",
    ] {
        assert!(dir.join(format!("definitions/{d}.json")).exists(), "{d}");
    }

    // Verified by the command and by the README's recipe.
    let verify = |dir: &Path| {
        cli(
            &[
                "archive",
                "verify",
                dir.to_str().unwrap(),
                "--key-fingerprint",
                &fingerprint,
            ],
            "sqlite::memory:",
        )
    };
    let v = verify(&dir);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    assert!(recipe_passes(&dir, &fingerprint));

    // Restored into an empty store: the same versions, a chain that verifies, search works.
    let restored_dir = tempfile::tempdir().unwrap();
    let restored_url = integration_tests::store_database_url(restored_dir.path()).await;
    let r = cli(
        &["archive", "restore", dir.to_str().unwrap()],
        &restored_url,
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(
        versions(&restored_url).await,
        versions(&s.database_url).await
    );
    let a = cli(&["audit", "verify"], &restored_url);
    assert!(
        a.status.success(),
        "{}{}",
        String::from_utf8_lossy(&a.stdout),
        String::from_utf8_lossy(&a.stderr)
    );
    let again = cli(
        &["archive", "restore", dir.to_str().unwrap()],
        &restored_url,
    );
    assert!(
        !again.status.success(),
        "a second restore into the same store is refused"
    );
    let restored = TestStore::start_in(restored_dir, |_| {}).await;
    let found = integration_tests::get_json(
        &restored.url("Observation?subject=Patient/mc-01-001&_summary=count"),
    )
    .await;
    assert_eq!(found["total"], 3, "{found}");

    // One byte of one file changed: both verifications fail.
    let tampered = work.path().join("one-byte");
    copy_dir(&dir, &tampered);
    let f = tampered.join("resources/versions.ndjson");
    let mut bytes = std::fs::read(&f).unwrap();
    let at = bytes.windows(4).position(|w| w == b"27.9").unwrap();
    bytes[at + 1] = b'1'; // 27.9 -> 21.9
    std::fs::write(&f, bytes).unwrap();
    let v = verify(&tampered);
    assert!(!v.status.success());
    assert!(String::from_utf8_lossy(&v.stderr)
        .contains("resources/versions.ndjson: its SHA-256 differs"));
    assert!(!recipe_passes(&tampered, &fingerprint));

    // A line of the audit trail edited, and the manifest re-hashed to match (what someone
    // with write access but without the key could do): the signature and the chain fail.
    let tampered = work.path().join("audit-line");
    copy_dir(&dir, &tampered);
    let f = tampered.join("audit/events.ndjson");
    let text = std::fs::read_to_string(&f).unwrap();
    let edited = text.replacen("transcription error corrected", "no reason given", 1);
    assert_ne!(edited, text);
    std::fs::write(&f, edited).unwrap();
    let (code, _, err) = bash(
        &tampered,
        "grep -v ' audit/events.ndjson$' manifest.sha256 > m && sha256sum audit/events.ndjson >> m && sort -k2 m > manifest.sha256 && rm m",
    );
    assert_eq!(code, 0, "{err}");
    let v = verify(&tampered);
    assert!(!v.status.success());
    let why = String::from_utf8_lossy(&v.stderr);
    assert!(why.contains("manifest.sig"), "{why}");
    assert!(why.contains("does not match its hash"), "{why}");
    assert!(!recipe_passes(&tampered, &fingerprint));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let target = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &target);
        } else {
            std::fs::copy(&p, &target).unwrap();
        }
    }
}
