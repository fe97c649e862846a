//! `trialbridge load`: FHIR resources from JSON files, NDJSON files or directories, written
//! straight into the database in batches (one commit per batch).

use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::Value;
use trial_store::{load_values, LoadCounts};
use trialbridge_storage::ResourceStore;

/// Arguments of `load`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// A .json file (a resource or a Bundle), an .ndjson file, or a directory of them.
    pub path: PathBuf,
}

/// How many resources one commit takes.
const BATCH: usize = 500;

/// Loads `pending` once it holds a whole batch.
async fn flush_full_batch(
    store: &dyn ResourceStore,
    pending: &mut Vec<Value>,
    total: &mut LoadCounts,
    bar: &indicatif::ProgressBar,
    validation: &trialbridge_validation::Options,
) -> anyhow::Result<()> {
    if pending.len() >= BATCH {
        total.add(load_batch(store, std::mem::take(pending), validation).await?);
        bar.set_message(format!("{} created", total.created));
    }
    Ok(())
}

async fn load_batch(
    store: &dyn ResourceStore,
    values: Vec<Value>,
    validation: &trialbridge_validation::Options,
) -> anyhow::Result<LoadCounts> {
    load_values(
        store,
        std::sync::Arc::new(trial_store::TrialRules),
        "trialbridge load",
        values,
        validation,
    )
    .await
    .map_err(|e| {
        let why: Vec<String> = e
            .outcome()
            .issues
            .iter()
            .map(|i| i.diagnostics.clone())
            .collect();
        anyhow::anyhow!("{}", why.join("; "))
    })
}

/// Resources of one JSON document: a resource, or the resources of a Bundle's entries (for a
/// collection, searchset or history Bundle). A resource without an id gets a new one.
/// Transaction and batch Bundles are requests, not data: they belong on `POST /fhir`.
pub fn resources_of(doc: Value, out: &mut Vec<Value>) -> anyhow::Result<()> {
    if doc.get("resourceType").and_then(Value::as_str) == Some("Bundle") {
        match doc.get("type").and_then(Value::as_str) {
            Some(t @ ("transaction" | "batch")) => anyhow::bail!(
                "a {t} Bundle is a request: POST it to the FHIR base URL instead of loading it"
            ),
            Some("collection" | "searchset" | "history") => {
                for e in doc
                    .get("entry")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(r) = e.get("resource") {
                        resources_of(r.clone(), out)?;
                    }
                }
                return Ok(());
            }
            _ => {}
        }
    }
    let mut doc = doc;
    if doc.get("id").is_none() {
        if let Value::Object(m) = &mut doc {
            m.insert("id".into(), Value::from(uuid::Uuid::now_v7().to_string()));
        }
    }
    out.push(doc);
    Ok(())
}

fn files_under(path: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for e in entries {
            files_under(&e, out)?;
        }
    } else if matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("json" | "ndjson")
    ) {
        out.push(path.to_path_buf());
    }
    Ok(())
}

pub async fn run(
    args: LoadArgs,
    database_url: &str,
    validation: &trialbridge_validation::Options,
) -> anyhow::Result<()> {
    let mut files = Vec::new();
    files_under(&args.path, &mut files)
        .with_context(|| format!("cannot read {}", args.path.display()))?;
    if files.is_empty() {
        anyhow::bail!("{} holds no .json or .ndjson files", args.path.display());
    }
    let total_bytes: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let store = trialbridge_storage::open(database_url).await?;
    let bar = indicatif::ProgressBar::new(total_bytes);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg} ({eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut total = LoadCounts::default();
    let mut pending = Vec::with_capacity(BATCH);
    for f in &files {
        let is_ndjson = f.extension().and_then(|e| e.to_str()) == Some("ndjson");
        if is_ndjson {
            let reader = std::io::BufReader::new(std::fs::File::open(f)?);
            for (n, line) in reader.lines().enumerate() {
                let line = line?;
                bar.inc(line.len() as u64 + 1);
                if line.trim().is_empty() {
                    continue;
                }
                let v: Value = serde_json::from_str(&line)
                    .with_context(|| format!("{}:{}", f.display(), n + 1))?;
                resources_of(v, &mut pending)
                    .with_context(|| format!("{}:{}", f.display(), n + 1))?;
                flush_full_batch(&*store, &mut pending, &mut total, &bar, validation).await?;
            }
        } else {
            let bytes = std::fs::read(f)?;
            bar.inc(bytes.len() as u64);
            let v: Value = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not JSON", f.display()))?;
            resources_of(v, &mut pending).with_context(|| f.display().to_string())?;
            flush_full_batch(&*store, &mut pending, &mut total, &bar, validation).await?;
        }
    }
    if !pending.is_empty() {
        total.add(load_batch(&*store, pending, validation).await?);
    }
    bar.finish_and_clear();
    println!(
        "loaded {} files: {} created, {} updated, {} unchanged",
        files.len(),
        total.created,
        total.updated,
        total.unchanged
    );
    Ok(())
}
