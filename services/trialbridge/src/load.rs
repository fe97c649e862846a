//! `trialbridge load`: FHIR resources from JSON files, NDJSON files or directories, written
//! straight into the database like the API writes them: each resource validated, with the
//! protocol rules, its site (from its content, else `--site`; clinical data of no site is
//! refused) and, per commit and site, an AuditEvent naming the operator and every version
//! written. Batches of 500 commit one by one (a refusal names its file, line and element and
//! says what was committed before), or with `--atomic` each file commits whole or not at all.
//! The report ends with the rate in each tenth of the input and the store's growth per resource.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::Value;
use trial_store::fhir::loading::LoadItem;
use trial_store::{load_values, LoadCounts};
use trialbridge_storage::ResourceStore;

/// Arguments of `load`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// A .json file (a resource or a Bundle), an .ndjson file, or a directory of them.
    pub path: PathBuf,
    /// The site study (`mesemcart-site-01`) of resources whose content names none.
    #[arg(long = "site", value_name = "SITE_STUDY")]
    pub site: Option<String>,
    /// One transaction per file: a file is loaded whole or not at all.
    #[arg(long)]
    pub atomic: bool,
}

/// How many resources one commit takes (without `--atomic`).
const BATCH: usize = 500;

/// The operator as the audit trail names them.
fn operator() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("trialbridge load (operator {user})")
}

/// What has been committed so far, for the report after a refusal, and how fast.
struct Progress {
    total: LoadCounts,
    committed_through: Option<String>,
    pace: Pace,
}

/// The load's rate in each tenth of the input (by bytes read), so that a slowdown as the
/// store grows shows in the report: a load should end as fast as it began.
struct Pace {
    started: std::time::Instant,
    total_bytes: u64,
    /// (when, resources done) at the first commit past each tenth of the input.
    marks: Vec<(std::time::Instant, usize)>,
}

impl Pace {
    fn new(total_bytes: u64) -> Self {
        Self {
            started: std::time::Instant::now(),
            total_bytes: total_bytes.max(1),
            marks: Vec::new(),
        }
    }

    /// Called after each commit with the bytes read and resources done so far.
    fn committed(&mut self, bytes_read: u64, done: usize) {
        let tenth = (bytes_read.saturating_mul(10) / self.total_bytes).min(10) as usize;
        while self.marks.len() < tenth {
            self.marks.push((std::time::Instant::now(), done));
        }
    }

    /// Resources per second in each tenth that saw a commit.
    fn rates(&self) -> Vec<f64> {
        let mut from = (self.started, 0usize);
        let mut rates = Vec::new();
        for &(t, n) in &self.marks {
            let secs = t.duration_since(from.0).as_secs_f64();
            if n > from.1 && secs > 0.0 {
                rates.push((n - from.1) as f64 / secs);
                from = (t, n);
            }
        }
        rates
    }
}

fn done(c: &LoadCounts) -> usize {
    c.created + c.updated + c.unchanged
}

async fn commit(
    store: &dyn ResourceStore,
    items: Vec<LoadItem>,
    args: &LoadArgs,
    validation: &trialbridge_validation::Options,
    progress: &mut Progress,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<()> {
    let Some(last) = items.last().map(|i| i.origin.clone()) else {
        return Ok(());
    };
    let counts = load_values(
        store,
        std::sync::Arc::new(trial_store::TrialRules),
        &operator(),
        items,
        validation,
        args.site.clone(),
    )
    .await
    .map_err(|e| {
        let why: Vec<String> = e
            .outcome()
            .issues
            .iter()
            .map(|i| match i.expression.first() {
                Some(at) => format!("{} (at {at})", i.diagnostics),
                None => i.diagnostics.clone(),
            })
            .collect();
        let before = match &progress.committed_through {
            Some(o) => format!(
                "; committed before it: {} created, {} updated, {} unchanged (through {o}); load the rest after fixing the line",
                progress.total.created, progress.total.updated, progress.total.unchanged
            ),
            None => "; nothing was committed".into(),
        };
        anyhow::anyhow!("{}{before}", why.join("; "))
    })?;
    progress.total.add(counts);
    progress.committed_through = Some(last);
    progress
        .pace
        .committed(bar.position(), done(&progress.total));
    bar.set_message(rate_message(progress));
    Ok(())
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

/// The resources of one JSON document, with its origin.
fn items_of(v: Value, origin: &str) -> anyhow::Result<Vec<LoadItem>> {
    let mut rs = Vec::new();
    resources_of(v, &mut rs).with_context(|| origin.to_string())?;
    Ok(rs
        .into_iter()
        .enumerate()
        .map(|(i, value)| LoadItem {
            value,
            origin: if i == 0 {
                origin.to_string()
            } else {
                format!("{origin} (entry {i})")
            },
        })
        .collect())
}

pub async fn run(
    args: LoadArgs,
    database_url: &str,
    validation: &trialbridge_validation::Options,
) -> anyhow::Result<()> {
    if let Some(site) = &args.site {
        anyhow::ensure!(
            trialbridge_study::site_studies().iter().any(|s| s == site),
            "--site {site}: not a site study of the trial ({})",
            trialbridge_study::site_studies().join(", ")
        );
    }
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
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {msg} (ETA {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut progress = Progress {
        total: LoadCounts::default(),
        committed_through: None,
        pace: Pace::new(total_bytes),
    };
    let space_before = store_bytes(&*store).await?;
    let mut pending: Vec<LoadItem> = Vec::with_capacity(BATCH);
    for f in &files {
        let name = f.display().to_string();
        if f.extension().and_then(|e| e.to_str()) == Some("ndjson") {
            // Streamed: a file of a million lines is never held whole.
            let reader = std::io::BufReader::new(std::fs::File::open(f)?);
            for (n, line) in reader.lines().enumerate() {
                let origin = format!("{name}:{}", n + 1);
                let line = line.with_context(|| origin.clone())?;
                bar.inc(line.len() as u64 + 1);
                if line.trim().is_empty() {
                    continue;
                }
                let v: Value =
                    serde_json::from_str(&line).with_context(|| format!("{origin}: not JSON"))?;
                pending.extend(items_of(v, &origin)?);
                if !args.atomic && pending.len() >= BATCH {
                    let batch = std::mem::take(&mut pending);
                    commit(&*store, batch, &args, validation, &mut progress, &bar).await?;
                }
            }
        } else {
            let bytes = std::fs::read(f)?;
            bar.inc(bytes.len() as u64);
            let v: Value =
                serde_json::from_slice(&bytes).with_context(|| format!("{name}: not JSON"))?;
            pending.extend(items_of(v, &name)?);
        }
        if args.atomic || pending.len() >= BATCH {
            let batch = std::mem::take(&mut pending);
            commit(&*store, batch, &args, validation, &mut progress, &bar).await?;
        }
    }
    commit(&*store, pending, &args, validation, &mut progress, &bar).await?;
    // The first searches after a load are planned with what was loaded (PostgreSQL).
    bar.set_message("renewing the planner's statistics");
    store.refresh_statistics().await?;
    bar.finish_and_clear();
    println!(
        "loaded {} files: {} created, {} updated, {} unchanged",
        files.len(),
        progress.total.created,
        progress.total.updated,
        progress.total.unchanged
    );
    let n = done(&progress.total);
    let secs = progress.pace.started.elapsed().as_secs_f64();
    if n > 0 {
        println!(
            "{n} resources in {secs:.1} s, {:.0}/s; by tenth of the input: {}",
            n as f64 / secs.max(1e-9),
            progress
                .pace
                .rates()
                .iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let grown = store_bytes(&*store).await?.saturating_sub(space_before);
        let written = progress.total.created + progress.total.updated;
        if written > 0 {
            println!(
                "store grew by {:.1} MB, {} bytes per resource written; the input is {} bytes per resource (the store grew by {:.1}x the input)",
                grown as f64 / 1e6,
                grown / written as u64,
                total_bytes / n as u64,
                grown as f64 / total_bytes.max(1) as f64,
            );
        }
    }
    Ok(())
}

fn rate_message(p: &Progress) -> String {
    let n = done(&p.total);
    format!(
        "{n} resources, {:.0}/s",
        n as f64 / p.pace.started.elapsed().as_secs_f64().max(1e-9)
    )
}

/// The database's size on disk now.
async fn store_bytes(store: &dyn ResourceStore) -> anyhow::Result<u64> {
    Ok(store.space(false).await?.total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pace_gives_the_rate_of_each_tenth_that_saw_a_commit() {
        let mut pace = Pace::new(1000);
        let t0 = pace.started;
        // Commits past 10 %, past 30 % (the second tenth saw none of its own) and at the end.
        pace.committed(150, 100);
        pace.committed(350, 300);
        pace.committed(1000, 700);
        assert_eq!(pace.marks.len(), 10);
        assert_eq!(pace.marks[1].1, 300);
        assert_eq!(pace.marks[9].1, 700);
        // Made-up times for the three commits: after 1 s, 3 s and 10 s (marks of one commit
        // share its time).
        for (i, m) in pace.marks.iter_mut().enumerate() {
            let secs = match i {
                0 => 1,
                1 | 2 => 3,
                _ => 10,
            };
            m.0 = t0 + std::time::Duration::from_secs(secs);
        }
        let rates = pace.rates();
        // 100 in the first second, 200 over the next two, 400 over the last seven.
        assert_eq!(rates.len(), 3, "{rates:?}");
        assert!((rates[0] - 100.0).abs() < 1e-9);
        assert!((rates[1] - 100.0).abs() < 1e-9);
        assert!((rates[2] - 400.0 / 7.0).abs() < 1e-9);
    }
}
