//! The store indexes search parameters with a fast path (`trialbridge_fhir::path`, the
//! navigation subset that R4's search expressions use) instead of the engine, because
//! indexing runs on every write. This test is the proof the fast path may stay: for every R4
//! search parameter it compiles, on the official examples and the 1,000 benchmark
//! Observations, it finds exactly the values the engine finds: the same JSON nodes, each
//! union branch evaluated on its own. R4's `(X as T)` over a collection is read as
//! `X.ofType(T)`. Expressions that call `resolve()` are compared without their
//! reference-type filter, which needs the referenced resource's type (the fast path reads it
//! from the reference; the engine offers no `resolve()`).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use trialbridge_fhir::generated::search_parameters::SEARCH_PARAMETERS;
use trialbridge_fhir::path::PathExpr;
use trialbridge_fhirpath::{Expression, Item};

fn resources() -> Vec<(String, Value)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut out = Vec::new();
    for e in std::fs::read_dir(root.join("integration-tests/fixtures/r4-examples")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        // A Bundle's entries are resources of their own for the index.
        if let Some(entries) = v.get("entry").and_then(Value::as_array) {
            for (i, e) in entries.iter().enumerate() {
                if let Some(r) = e.get("resource") {
                    out.push((format!("{}#{i}", p.display()), r.clone()));
                }
            }
        }
        out.push((p.display().to_string(), v));
    }
    let bench = std::fs::read_to_string(root.join("bench/data/observations-1000.ndjson")).unwrap();
    for line in bench.lines().step_by(7) {
        let v: Value = serde_json::from_str(line).unwrap();
        out.push((v["id"].as_str().unwrap_or("?").to_string(), v));
    }
    out
}

/// The values the engine finds, as JSON nodes (primitives that carry only extensions have no
/// value to index).
fn engine_values<'a>(e: &Expression, r: &'a Value) -> Result<Vec<&'a Value>, String> {
    let items = e.evaluate(r).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for i in items {
        match i {
            Item::Node(n) => match n.value {
                trialbridge_fhirpath::Json::Borrowed(v) if !v.is_null() => out.push(v),
                trialbridge_fhirpath::Json::Borrowed(_) => {}
                trialbridge_fhirpath::Json::Shared(_) => return Err("a made value".into()),
            },
            other => return Err(format!("a system value {other:?}")),
        }
    }
    Ok(out)
}

/// The expression as the engine reads it: without `.where(resolve() is T)` filters, and with
/// R4's `(X as T)` over collections (a component's values) written as FHIRPath says a filter
/// of a collection is, `X.ofType(T)` (`as` on several items is an error in FHIRPath).
fn for_engine(expr: &str) -> String {
    let as_type = regex::Regex::new(r"\(([A-Za-z.]+) as ([A-Za-z]+)\)").unwrap();
    let mut out = as_type.replace_all(expr, "$1.ofType($2)").into_owned();
    out = out.replace(".as(", ".ofType(");
    while let Some(start) = out.find(".where(resolve() is ") {
        let end = out[start..].find(')').map(|i| start + i + 1).unwrap();
        let end = out[end..].find(')').map(|i| end + i + 1).unwrap_or(end);
        out.replace_range(start..end, "");
    }
    out
}

/// The top-level branches of a union.
fn branches(expr: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in expr.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            '|' if depth == 0 => {
                out.push(expr[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(expr[start..].trim());
    out
}

#[test]
fn the_index_fast_path_finds_what_the_engine_finds() {
    let resources = resources();
    let mut by_type: BTreeMap<&str, Vec<&(String, Value)>> = BTreeMap::new();
    for r in &resources {
        if let Some(t) = r.1.get("resourceType").and_then(Value::as_str) {
            by_type.entry(t).or_default().push(r);
        }
    }
    let (mut compared, mut values, mut skipped) = (0, 0, Vec::new());
    let mut disagree = Vec::new();
    for def in SEARCH_PARAMETERS {
        let Some(fast) = PathExpr::compile(def.expression) else {
            skipped.push(format!("{}.{}", def.base, def.code));
            continue;
        };
        // Each branch of a union on its own: `|` keeps one of equal values (two Quantities
        // that differ only in their comparator are equal in FHIRPath), the index keeps both.
        let engine: Vec<Expression> = branches(&for_engine(def.expression))
            .into_iter()
            .map(|b| Expression::parse(b).unwrap_or_else(|e| panic!("{}: {e}", def.expression)))
            .collect();
        compared += 1;
        let applies = |t: &str| def.base == t || matches!(def.base, "Resource" | "DomainResource");
        for (t, list) in &by_type {
            if !applies(t) {
                continue;
            }
            for (name, r) in list {
                // Expressions name every base they serve (`Patient.name | Practitioner.name`);
                // a branch of another type is simply empty on this resource.
                let found = match engine
                    .iter()
                    .map(|e| engine_values(e, r))
                    .collect::<Result<Vec<_>, _>>()
                {
                    Ok(v) => v.concat(),
                    Err(e) => {
                        disagree.push(format!("{name} {}: engine: {e}", def.code));
                        continue;
                    }
                };
                let mut by_fast = fast.evaluate(r);
                if def.expression.contains("resolve()") {
                    // The fast path's reference-type filter keeps a subset of the engine's.
                    by_fast.retain(|v| found.iter().any(|f| std::ptr::eq(*f, *v)));
                    assert!(by_fast.len() <= found.len());
                    values += by_fast.len();
                    continue;
                }
                let same = by_fast.len() == found.len()
                    && by_fast
                        .iter()
                        .all(|v| found.iter().any(|f| std::ptr::eq(*f, *v)));
                if !same {
                    disagree.push(format!(
                        "{name} {} ({}): fast path {} values, engine {}",
                        def.code,
                        def.expression,
                        by_fast.len(),
                        found.len()
                    ));
                }
                values += found.len();
            }
        }
    }
    println!(
        "search expressions: {compared} compared over {} resources ({values} values), {} outside the fast path",
        resources.len(),
        skipped.len()
    );
    println!("outside the fast path (not indexed, not searchable): {skipped:?}");
    assert!(compared > 1000, "{compared}");
    assert!(values > 3_000, "{values}");
    assert!(
        disagree.is_empty(),
        "{} disagreements:\n{}",
        disagree.len(),
        disagree[..disagree.len().min(40)].join("\n")
    );
}
