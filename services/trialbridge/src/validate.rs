//! `trialbridge validate`: the store's validation of FHIR JSON files or NDJSON lines, offline,
//! for hospital IT checking an export before connecting. With `--repeat` it is the benchmark
//! of the validator (best of N runs over the whole input, single-threaded).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;

/// Arguments of `validate`.
#[derive(Debug, Clone, clap::Args)]
pub struct ValidateArgs {
    /// .json files (one resource each) or .ndjson files (one resource per line).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Validate the whole input this many times and report the best time (benchmark).
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
}

/// Validates every input; prints each error, then one JSON line of figures. Fails (exit 1)
/// when a resource has errors, so that scripts can gate on it.
pub fn run(args: ValidateArgs, options: &trialbridge_validation::Options) -> anyhow::Result<()> {
    let mut bodies: Vec<(String, Vec<u8>)> = Vec::new();
    for f in &args.files {
        let bytes = std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
        if f.extension().and_then(|e| e.to_str()) == Some("ndjson") {
            for (n, line) in bytes.split(|&b| b == b'\n').enumerate() {
                if !line.iter().all(u8::is_ascii_whitespace) {
                    bodies.push((format!("{}:{}", f.display(), n + 1), line.to_vec()));
                }
            }
        } else {
            bodies.push((f.display().to_string(), bytes));
        }
    }
    // Parsed once, for the figure comparable with validators that take parsed objects.
    let parsed: Vec<Option<serde_json::Value>> = bodies
        .iter()
        .map(|(_, b)| trialbridge_validation::json_text::parse(b, &options.limits).ok())
        .collect();
    let mut best_bytes = f64::INFINITY;
    let mut best_parsed = f64::INFINITY;
    let mut invalid = 0;
    for round in 0..args.repeat.max(1) {
        let t = Instant::now();
        let reports: Vec<_> = bodies
            .iter()
            .map(|(_, b)| trialbridge_validation::validate_bytes(b, options))
            .collect();
        best_bytes = best_bytes.min(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        for v in parsed.iter().flatten() {
            std::hint::black_box(trialbridge_validation::validate_resource(v, options));
        }
        best_parsed = best_parsed.min(t.elapsed().as_secs_f64() * 1000.0);
        if round == 0 {
            for ((name, _), report) in bodies.iter().zip(&reports) {
                if report.has_errors() {
                    invalid += 1;
                }
                for i in report.errors() {
                    println!("{name}: {} {}", i.expression.join(", "), i.diagnostics);
                }
            }
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "validator": "trialbridge",
            "resources": bodies.len(),
            "invalid": invalid,
            "best_ms_from_bytes": (best_bytes * 100.0).round() / 100.0,
            "best_ms_parsed": (best_parsed * 100.0).round() / 100.0,
            "runs": args.repeat.max(1),
        })
    );
    if invalid > 0 {
        anyhow::bail!("{invalid} of {} resources have errors", bodies.len());
    }
    Ok(())
}
