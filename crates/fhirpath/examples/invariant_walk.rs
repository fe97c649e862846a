//! Times the evaluation of every core invariant over the 1,000 benchmark Observations, and the
//! walk alone (no invariant evaluated), best of five:
//! `cargo run --release -p trialbridge-fhirpath --example invariant_walk`.
fn main() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../bench/data/observations-1000.ndjson"
    );
    let text = std::fs::read_to_string(path).expect("bench/data/observations-1000.ndjson");
    let values: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    let every = trialbridge_fhirpath::invariants::Checker::except(&[]);
    let keys: Vec<&str> = trialbridge_fhir::structure::INVARIANTS
        .iter()
        .map(|i| i.key)
        .collect();
    let none = trialbridge_fhirpath::invariants::Checker::except(&keys);
    for (label, checker) in [("every core invariant", &every), ("the walk alone", &none)] {
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = std::time::Instant::now();
            for v in &values {
                let f = checker.check(v);
                std::hint::black_box(f);
            }
            best = best.min(t.elapsed().as_secs_f64() * 1000.0);
        }
        println!("{label}: {best:.1} ms for {} Observations", values.len());
    }
}
