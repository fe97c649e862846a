//! `trialbridge view run`: a SQL on FHIR v2 ViewDefinition on demand, for the warehouse team
//! trying a view before the warehouse takes it. The rows come from files (FHIR JSON: one
//! resource or a Bundle; NDJSON: one resource per line) or from a trial store's search API,
//! and are printed as CSV (a header, then one line per row; arrays and objects as JSON text)
//! or NDJSON (one object per row).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use serde_json::Value;
use trialbridge_views::ViewDefinition;

/// `trialbridge view ...`
#[derive(Debug, clap::Subcommand)]
pub enum ViewCommand {
    /// Print the rows of a ViewDefinition over FHIR data.
    Run(RunArgs),
}

/// Output formats of `view run`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    /// Comma-separated values with a header line (RFC 4180).
    Csv,
    /// One JSON object per row.
    Ndjson,
}

/// Arguments of `view run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The ViewDefinition (JSON).
    pub view: PathBuf,
    /// FHIR data: .json files (a resource or a Bundle) or .ndjson files. Without files, the
    /// resources come from --from.
    pub data: Vec<PathBuf>,
    /// A trial store's FHIR base URL to read the view's resource type from (all pages).
    #[arg(long)]
    pub from: Option<String>,
    /// Bearer token for --from (a warehouse or monitor token).
    #[arg(long, env = "TRIALBRIDGE_TOKEN")]
    pub token: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "csv")]
    pub format: Format,
}

/// Runs a `view` subcommand.
pub async fn run(cmd: ViewCommand) -> anyhow::Result<()> {
    match cmd {
        ViewCommand::Run(a) => run_view(a).await,
    }
}

/// Resources of one data file, each with where it is (`file:line` for NDJSON).
fn read_data(path: &PathBuf, out: &mut Vec<(String, Value)>) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "ndjson") {
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not a JSON resource", path.display(), n + 1))?;
            out.push((format!("{}:{}", path.display(), n + 1), v));
        }
        return Ok(());
    }
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not JSON (NDJSON files end in .ndjson)", path.display()))?;
    if v["resourceType"] == "Bundle" {
        for (i, e) in v["entry"].as_array().into_iter().flatten().enumerate() {
            if let Some(r) = e.get("resource") {
                out.push((format!("{} entry[{i}]", path.display()), r.clone()));
            }
        }
    } else {
        out.push((path.display().to_string(), v));
    }
    Ok(())
}

/// Every resource of `resource_type` from a store's search API, page by page.
async fn fetch(
    base: &str,
    resource_type: &str,
    token: Option<&str>,
) -> anyhow::Result<Vec<(String, Value)>> {
    let client = reqwest::Client::new();
    let mut url = format!("{}/{resource_type}?_count=1000", base.trim_end_matches('/'));
    let mut out = Vec::new();
    loop {
        let mut req = client.get(&url).header("accept", "application/fhir+json");
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach {url}"))?;
        let status = resp.status();
        let body: Value = resp
            .json()
            .await
            .with_context(|| format!("{url}: not a FHIR Bundle"))?;
        if !status.is_success() {
            let why = body["issue"][0]["diagnostics"]
                .as_str()
                .unwrap_or("")
                .to_string();
            anyhow::bail!("{url}: {status} {why} (a warehouse token is given with --token or TRIALBRIDGE_TOKEN)");
        }
        for e in body["entry"].as_array().into_iter().flatten() {
            if e["search"]["mode"] == "include" {
                continue;
            }
            if let Some(r) = e.get("resource") {
                let key = format!("{resource_type}/{}", r["id"].as_str().unwrap_or(""));
                out.push((key, r.clone()));
            }
        }
        let next = body["link"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["relation"] == "next")
            .and_then(|l| l["url"].as_str());
        match next {
            Some(n) => url = n.to_string(),
            None => return Ok(out),
        }
    }
}

async fn run_view(a: RunArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.view)
        .with_context(|| format!("cannot read {}", a.view.display()))?;
    let def: Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", a.view.display()))?;
    let view = ViewDefinition::parse(&def)
        .with_context(|| format!("{}: not a valid ViewDefinition", a.view.display()))?;
    let mut resources = Vec::new();
    match (&a.from, a.data.is_empty()) {
        (Some(base), true) => resources = fetch(base, &view.resource, a.token.as_deref()).await?,
        (None, false) => {
            for f in &a.data {
                read_data(f, &mut resources)?;
            }
        }
        (Some(_), false) => anyhow::bail!("give data files or --from, not both"),
        (None, true) => anyhow::bail!(
            "no data: give .json/.ndjson files after the view, or --from a trial store's FHIR base URL"
        ),
    }
    let names: Vec<&str> = view.columns().iter().map(|c| c.name.as_str()).collect();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match a.format {
        Format::Csv => {
            let mut w = csv::Writer::from_writer(out);
            w.write_record(&names)?;
            for (at, r) in &resources {
                for row in view.rows(r).with_context(|| at.clone())? {
                    w.write_record(
                        row.iter()
                            .map(|v| trialbridge_views::cell_text(v).unwrap_or_default()),
                    )?;
                }
            }
            w.flush()?;
        }
        Format::Ndjson => {
            for (at, r) in &resources {
                for row in view.rows(r).with_context(|| at.clone())? {
                    let obj: serde_json::Map<String, Value> =
                        names.iter().map(|n| n.to_string()).zip(row).collect();
                    writeln!(out, "{}", Value::Object(obj))?;
                }
            }
            out.flush()?;
        }
    }
    Ok(())
}
