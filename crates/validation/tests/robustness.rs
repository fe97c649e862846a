//! No input makes the validator panic or loop: thousands of mechanical mutations of the
//! official examples (members removed, values swapped for other JSON types, nesting and
//! strings pushed to the limits, bytes cut) are each validated to completion.

use serde_json::{json, Value};
use std::path::Path;
use trialbridge_validation::{validate_bytes, Options};

/// A small deterministic generator (xorshift), so a failure is reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn replacement(rng: &mut Rng) -> Value {
    match rng.below(9) {
        0 => Value::Null,
        1 => json!(true),
        2 => json!(-1.5e300),
        3 => json!(""),
        4 => json!("2016-13-45T25:61:00+99:00"),
        5 => json!([]),
        6 => json!({}),
        7 => json!([null, {}, "x"]),
        _ => json!({"resourceType": "Observation", "contained": [{"resourceType": "Bundle"}]}),
    }
}

/// Changes one randomly chosen node of `v`.
fn mutate(v: &mut Value, rng: &mut Rng, depth: usize) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            let keys: Vec<String> = m.keys().cloned().collect();
            let k = keys[rng.below(keys.len())].clone();
            match rng.below(4) {
                0 => {
                    m.remove(&k);
                }
                1 if depth < 8 => mutate(m.get_mut(&k).unwrap(), rng, depth + 1),
                2 => {
                    m.insert(format!("_{k}"), replacement(rng));
                }
                _ => {
                    m.insert(k, replacement(rng));
                }
            }
        }
        Value::Array(a) if !a.is_empty() => {
            let i = rng.below(a.len());
            if depth < 8 && rng.below(2) == 0 {
                mutate(&mut a[i], rng, depth + 1);
            } else {
                a[i] = replacement(rng);
            }
        }
        other => *other = replacement(rng),
    }
}

#[test]
fn mutated_examples_never_panic() {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../integration-tests/fixtures/r4-examples");
    let mut examples = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "json") {
            examples.push(std::fs::read(path).unwrap());
        }
    }
    assert!(examples.len() > 100);
    let options = Options::default();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut rejected = 0;
    for round in 0..3000 {
        let bytes = &examples[round % examples.len()];
        let mut v: Value =
            trialbridge_validation::json_text::parse(bytes, &options.limits).unwrap();
        for _ in 0..1 + rng.below(3) {
            mutate(&mut v, &mut rng, 0);
        }
        let text = v.to_string();
        if validate_bytes(text.as_bytes(), &options).has_errors() {
            rejected += 1;
        }
        // Cut bytes: every prefix length class, never a panic.
        let cut = rng.below(text.len());
        let _ = validate_bytes(&text.as_bytes()[..cut], &options);
    }
    // Most mutations break something; the test proves the walk ran, not only the parser.
    assert!(rejected > 1500, "{rejected}");
}

#[test]
fn pathological_shapes_are_bounded() {
    let options = Options::default();
    let deep = format!(
        "{}{}",
        "{\"a\":".repeat(10_000),
        "1".to_string() + &"}".repeat(10_000)
    );
    assert!(validate_bytes(deep.as_bytes(), &options).has_errors());
    let wide = format!(
        "{{\"resourceType\":\"Patient\",{}\"gender\":\"male\"}}",
        (0..50_000)
            .map(|i| format!("\"k{i}\":1,"))
            .collect::<String>()
    );
    let report = validate_bytes(wide.as_bytes(), &options);
    // Every unknown element is counted; only the first thousand are kept.
    assert!(report.issues.len() + report.omitted >= 50_000);
    assert!(report.issues.len() <= 1_000 && report.omitted_error);
    let long = format!(
        "{{\"resourceType\":\"Patient\",\"id\":\"{}\"}}",
        "a".repeat(2_000_000)
    );
    assert!(validate_bytes(long.as_bytes(), &options).has_errors());
}
