//! The official SQL on FHIR v2 test suite (`sql-on-fhir-v2/tests`, 134 tests): every test's
//! view is read and run over the file's resources; a test passes when an expected error is
//! an error, and otherwise when the rows (in any order) or the columns (in order) are the
//! expected ones. The result is compared with the committed `report.json` (the shape the
//! specification's test report collects), so a change in the score, up or down, is seen.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{json, Map, Value};
use trialbridge_views::ViewDefinition;

/// Tests that must pass at least; raise it when more do.
const FLOOR: usize = 134;

fn suite() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sql-on-fhir-v2")
}

/// Numbers compared by value (the suite writes `5` where an engine may give `5.0`).
fn canonical(v: &Value) -> Value {
    match v {
        Value::Number(n) => json!(n.as_f64()),
        Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
        Value::Object(o) => {
            // Keys in one order, whatever order the rows were written in.
            let sorted: BTreeMap<&String, Value> =
                o.iter().map(|(k, v)| (k, canonical(v))).collect();
            Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
        }
        other => other.clone(),
    }
}

fn sorted(rows: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = rows.iter().map(|r| canonical(r).to_string()).collect();
    out.sort();
    out
}

/// The view's columns and rows as objects, or why it failed.
fn run(view: &Value, resources: &[Value]) -> Result<(Vec<String>, Vec<Value>), String> {
    let v = ViewDefinition::parse(view).map_err(|e| e.to_string())?;
    let names: Vec<String> = v.columns().iter().map(|c| c.name.clone()).collect();
    let mut rows = Vec::new();
    for r in resources {
        for row in v.rows(r).map_err(|e| e.to_string())? {
            let obj: Map<String, Value> = names.iter().cloned().zip(row).collect();
            rows.push(Value::Object(obj));
        }
    }
    Ok((names, rows))
}

/// One test: passed, or why not.
fn check(test: &Value, resources: &[Value]) -> Result<(), String> {
    let outcome = run(&test["view"], resources);
    if test["expectError"] == json!(true) {
        return match outcome {
            Err(_) => Ok(()),
            Ok((_, rows)) => Err(format!("expected an error, got {} rows", rows.len())),
        };
    }
    let (names, rows) = outcome?;
    if let Some(cols) = test.get("expectColumns") {
        let want: Vec<String> = serde_json::from_value(cols.clone()).unwrap();
        if want != names {
            return Err(format!("columns {names:?}, expected {want:?}"));
        }
    }
    if let Some(expect) = test.get("expect").and_then(Value::as_array) {
        if sorted(expect) != sorted(&rows) {
            return Err(format!(
                "rows {}, expected {}",
                Value::Array(rows),
                Value::Array(expect.clone())
            ));
        }
    }
    Ok(())
}

#[test]
fn the_official_sql_on_fhir_v2_suite() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(suite().join("tests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let mut report = BTreeMap::new();
    let (mut passed, mut total) = (0, 0);
    let mut failures = Vec::new();
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
        let resources = doc["resources"].as_array().cloned().unwrap_or_default();
        let mut tests = Vec::new();
        for t in doc["tests"].as_array().unwrap() {
            total += 1;
            let title = t["title"].as_str().unwrap_or("").to_string();
            // A panic is a failure of that test, not of the run.
            let r = std::panic::catch_unwind(|| check(t, &resources))
                .unwrap_or_else(|_| Err("panicked".into()));
            match &r {
                Ok(()) => passed += 1,
                Err(why) => failures.push(format!("{name} / {title}: {why}")),
            }
            tests.push(json!({"name": title, "result": {"passed": r.is_ok()}}));
        }
        report.insert(name, json!({"tests": tests}));
    }
    let report = serde_json::to_string_pretty(&report).unwrap() + "\n";
    let committed = suite().join("report.json");
    if std::env::var_os("UPDATE_SOF_REPORT").is_some() {
        std::fs::write(&committed, &report).unwrap();
    }
    println!("SQL on FHIR v2: {passed} of {total} passed");
    for f in &failures {
        println!("  failed: {f}");
    }
    assert!(
        passed >= FLOOR,
        "{passed} of {total} passed, the floor is {FLOOR}:\n{}",
        failures.join("\n")
    );
    assert!(
        std::fs::read_to_string(&committed).unwrap_or_default() == report,
        "the suite's result ({passed} of {total}) differs from report.json; if the change is intended, run UPDATE_SOF_REPORT=1 cargo test -p trialbridge-views --test official"
    );
}
