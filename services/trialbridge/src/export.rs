//! `trialbridge export`: a Bulk Data client for the sponsor's warehouse: kicks off `$export`
//! on a trial store, shows the progress, and downloads the NDJSON files into a folder (streamed,
//! never whole in memory), with the manifest beside them.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tokio::io::AsyncWriteExt;

/// Arguments of `export`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// FHIR base URL of the trial store (default: `TRIALBRIDGE_BASE_URL`, else the one
    /// `TRIALBRIDGE_LISTEN` names).
    #[arg(long)]
    pub from: Option<String>,
    /// Folder for the NDJSON files and `manifest.json`.
    #[arg(long)]
    pub to: PathBuf,
    /// Resource types, comma-separated (`_type`).
    #[arg(long = "type")]
    pub types: Option<String>,
    /// Only resources changed after this instant (`_since`).
    #[arg(long)]
    pub since: Option<String>,
    /// Patient-level export (the Patient compartment) instead of everything.
    #[arg(long)]
    pub patients: bool,
    /// Bearer token (a `warehouse` token).
    #[arg(long, env = "TRIALBRIDGE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// Runs the export; prints one line per file.
pub async fn run(a: ExportArgs) -> anyhow::Result<()> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(t) = &a.token {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            reqwest::header::HeaderValue::from_str(&format!("Bearer {t}"))?,
        );
    }
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .build()?;
    let base = a.from.as_deref().unwrap_or_default().trim_end_matches('/');
    let mut url = format!("{base}/{}$export", if a.patients { "Patient/" } else { "" });
    let mut params = Vec::new();
    if let Some(t) = &a.types {
        params.push(format!("_type={t}"));
    }
    if let Some(s) = &a.since {
        params.push(format!("_since={}", s.replace('+', "%2B")));
    }
    if !params.is_empty() {
        url.push('?');
        url.push_str(&params.join("&"));
    }
    let r = client
        .get(&url)
        .header("prefer", "respond-async")
        .send()
        .await
        .with_context(|| format!("cannot reach {base}"))?;
    anyhow::ensure!(
        r.status().as_u16() == 202,
        "kick-off answered {}: {}",
        r.status(),
        r.text().await.unwrap_or_default()
    );
    let status_url = r
        .headers()
        .get("content-location")
        .and_then(|h| h.to_str().ok())
        .context("no Content-Location")?
        .to_string();
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(Duration::from_millis(200));
    let manifest: serde_json::Value = loop {
        let r = client.get(&status_url).send().await?;
        match r.status().as_u16() {
            202 => {
                let p = r
                    .headers()
                    .get("x-progress")
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                bar.set_message(format!("exporting: {p}"));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            200 => break r.json().await?,
            s => anyhow::bail!(
                "status answered {s}: {}",
                r.text().await.unwrap_or_default()
            ),
        }
    };
    bar.finish_and_clear();
    tokio::fs::create_dir_all(&a.to).await?;
    // A server may split one type over several files: they go into one file per type.
    let mut started: Vec<String> = Vec::new();
    for out in manifest["output"].as_array().into_iter().flatten() {
        let (Some(t), Some(u)) = (out["type"].as_str(), out["url"].as_str()) else {
            continue;
        };
        anyhow::ensure!(
            !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphabetic()),
            "the manifest names an unusable type {t:?}"
        );
        let path = a.to.join(format!("{t}.ndjson"));
        let first = !started.iter().any(|s| s == t);
        if first {
            started.push(t.to_string());
        }
        let f = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(!first)
            .truncate(first)
            .open(&path)
            .await?;
        let mut file = tokio::io::BufWriter::new(f);
        let mut r = client.get(u).send().await?;
        anyhow::ensure!(r.status().is_success(), "{u}: {}", r.status());
        while let Some(chunk) = r.chunk().await? {
            file.write_all(&chunk).await?;
        }
        file.flush().await?;
        println!("{}\t{}", out["count"], path.display());
    }
    tokio::fs::write(
        a.to.join("manifest.json"),
        serde_json::to_vec_pretty(&manifest)?,
    )
    .await?;
    println!(
        "transactionTime {}",
        manifest["transactionTime"].as_str().unwrap_or("")
    );
    Ok(())
}
