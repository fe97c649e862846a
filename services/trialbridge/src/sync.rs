//! `trialbridge sync`: follows the trial store's change feed into the warehouse's PostgreSQL
//! tables (`services/warehouse-sync`), from where the last run stopped.

/// Flags of `sync`.
#[derive(Debug, clap::Args)]
pub struct SyncArgs {
    /// The store's change-feed address (default: the one `TRIALBRIDGE_GRPC_LISTEN` names).
    #[arg(long)]
    pub from: Option<String>,
    /// The warehouse database (`postgres://user@host:port/db`).
    #[arg(long, env = "TRIALBRIDGE_WAREHOUSE_URL", hide_env_values = true)]
    pub postgres: String,
    /// Keep following new commits (until Ctrl-C) instead of stopping once caught up.
    #[arg(long)]
    pub follow: bool,
    /// Bearer token (a `warehouse` token).
    #[arg(long, env = "TRIALBRIDGE_TOKEN", hide_env_values = true)]
    pub token: String,
    /// A directory of the warehouse's own ViewDefinitions (`*.json`): each gets a table
    /// `view_<name>`, made and back-filled when it appears or changes (read again while
    /// following).
    #[arg(long, env = "TRIALBRIDGE_VIEWS_DIR")]
    pub views: Option<std::path::PathBuf>,
    /// Serve Prometheus metrics, `/livez` and `/readyz` on this address (a deployment's
    /// probes and scrapes).
    #[arg(long, env = "TRIALBRIDGE_SYNC_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
}

/// Runs the sync with a progress line; prints the totals as one JSON line.
pub async fn run(a: SyncArgs) -> anyhow::Result<()> {
    let config = warehouse_sync::SyncConfig {
        feed_url: a.from.unwrap_or_default(),
        token: a.token,
        postgres_url: a.postgres,
        follow: a.follow,
        views_dir: a.views,
    };
    let metrics = std::sync::Arc::new(warehouse_sync::metrics::Metrics::default());
    if let Some(listen) = &a.metrics_listen {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot serve metrics on {listen}: {e}"))?;
        let (m, url) = (metrics.clone(), config.postgres_url.clone());
        tokio::spawn(async move {
            if let Err(e) = warehouse_sync::metrics::serve(listener, m, url).await {
                tracing::error!(error = %e, "the metrics listener stopped");
            }
        });
    }
    let bar = indicatif::ProgressBar::new_spinner();
    let start = std::time::Instant::now();
    let stats = warehouse_sync::run(&config, trial_store::shutdown_signal(), |s| {
        metrics.record(s);
        bar.set_message(format!(
            "{} changes written, at sequence {}",
            s.events, s.cursor
        ))
    })
    .await?;
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"events": stats.events, "batches": stats.batches, "cursor": stats.cursor,
                           "seconds": (secs * 100.0).round() / 100.0,
                           "events_per_s": (stats.events as f64 / secs.max(1e-9)).round()})
    );
    Ok(())
}
