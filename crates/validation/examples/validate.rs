//! Validates FHIR JSON files (or NDJSON lines) and prints each error: `cargo run -p
//! trialbridge-validation --example validate -- FILE...`.

fn main() {
    let options = trialbridge_validation::Options {
        extension_domains: std::env::var("EXTENSION_DOMAINS")
            .unwrap_or_default()
            .split(',')
            .filter(|d| !d.is_empty())
            .map(String::from)
            .collect(),
        ..Default::default()
    };
    for path in std::env::args().skip(1) {
        let bytes = std::fs::read(&path).expect("readable file");
        let bodies: Vec<&[u8]> = if path.ends_with(".ndjson") {
            bytes
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .collect()
        } else {
            vec![&bytes[..]]
        };
        for (n, body) in bodies.iter().enumerate() {
            let report = trialbridge_validation::validate_bytes(body, &options);
            for i in report.errors() {
                println!("{path}:{}: {:?} {}", n + 1, i.expression, i.diagnostics);
            }
        }
    }
}
