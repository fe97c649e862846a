//! Every core R4 invariant, evaluated from its expression by the engine, on the official R4
//! examples of the trial's types and on the 1,000 benchmark Observations: no error-level
//! invariant is broken by these valid resources (a false alarm would refuse real data), and
//! the only invariants the engine cannot evaluate are those that need narrative checks.

use std::path::Path;
use trialbridge_fhir::structure::invariant;
use trialbridge_fhirpath::invariants::check;

fn error_level(key: &str) -> bool {
    invariant(key).is_some_and(|i| i.error)
}

#[test]
fn valid_resources_break_no_error_level_invariant() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut resources: Vec<(String, serde_json::Value)> = Vec::new();
    for e in std::fs::read_dir(root.join("integration-tests/fixtures/r4-examples")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let v = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        resources.push((p.file_name().unwrap().to_string_lossy().into_owned(), v));
    }
    let bench = std::fs::read_to_string(root.join("bench/data/observations-1000.ndjson")).unwrap();
    for line in bench.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        resources.push((v["id"].as_str().unwrap_or("?").to_string(), v));
    }
    assert!(resources.len() > 1100);
    let mut broken = Vec::new();
    for (name, v) in &resources {
        let f = check(v);
        for (key, path) in f.violated.iter().filter(|(k, _)| error_level(k)) {
            broken.push(format!("{name}: {key} at {path}"));
        }
        for (key, why) in &f.not_evaluated {
            assert!(
                matches!(*key, "txt-1" | "txt-2"),
                "{name}: {key} not evaluated: {why}"
            );
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}
