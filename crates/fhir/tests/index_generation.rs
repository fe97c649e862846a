//! Pins what index extraction returns for the repository's example resources, so that a change
//! to it cannot ship without a new [`INDEX_GENERATION`] (stores written with the old rows
//! rebuild their index when they open; see the constant).

use std::path::Path;

use serde_json::Value;
use sha2::{Digest, Sha256};
use trialbridge_fhir::index::{extract, INDEX_GENERATION};
use trialbridge_fhir::resource_type::canonical;

/// The digest of the rows below for generation [`INDEX_GENERATION`].
const PINNED: (i64, &str) = (
    1,
    "9642beedee7306a70f491d9d0e288f60888f62bd2aff213b7714d63ebb374d11",
);

fn corpus() -> Vec<Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(root.join("integration-tests/fixtures/r4-examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    for f in files {
        out.push(serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap());
    }
    let ndjson = std::fs::read_to_string(root.join("bench/data/observations-1000.ndjson")).unwrap();
    for line in ndjson.lines().filter(|l| !l.trim().is_empty()) {
        out.push(serde_json::from_str(line).unwrap());
    }
    out
}

/// Every resource of `v`, a Bundle's entries included.
fn resources<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    out.push(v);
    for e in v
        .get("entry")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(r) = e.get("resource") {
            resources(r, out);
        }
    }
}

#[test]
fn index_generation() {
    let corpus = corpus();
    let mut all = Vec::new();
    for v in &corpus {
        resources(v, &mut all);
    }
    let mut hash = Sha256::new();
    let mut rows = 0;
    for r in &all {
        let Some(rt) = r
            .get("resourceType")
            .and_then(Value::as_str)
            .and_then(canonical)
        else {
            continue;
        };
        let index = extract(rt, r);
        rows += index.text.len() + index.ranges.len();
        hash.update(format!("{rt} {index:?}\n").as_bytes());
    }
    assert!(rows > 10_000, "the corpus gives {rows} rows");
    let digest = hex::encode(hash.finalize());
    assert_eq!(
        (INDEX_GENERATION, digest.as_str()),
        PINNED,
        "index extraction changed for the example resources: raise INDEX_GENERATION in \
         crates/fhir/src/index.rs and pin the new digest here"
    );
}
