//! `warehouse-sync`: the sync as a service (the same library as `trialbridge sync --follow`),
//! configured by `TRIALBRIDGE_FEED_URL`, `TRIALBRIDGE_TOKEN`, `TRIALBRIDGE_WAREHOUSE_URL` and
//! `TRIALBRIDGE_VIEWS_DIR` (the warehouse's own ViewDefinitions, optional);
//! Prometheus metrics on `TRIALBRIDGE_SYNC_METRICS_LISTEN` (default 127.0.0.1:9108).

use std::sync::Arc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let _telemetry = trialbridge_telemetry::init("warehouse-sync", "info");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let config = warehouse_sync::SyncConfig {
        feed_url: std::env::var("TRIALBRIDGE_FEED_URL")
            .unwrap_or_else(|_| "http://127.0.0.1:8082".into()),
        token: var("TRIALBRIDGE_TOKEN"),
        postgres_url: var("TRIALBRIDGE_WAREHOUSE_URL"),
        follow: true,
        views_dir: std::env::var_os("TRIALBRIDGE_VIEWS_DIR").map(Into::into),
    };
    let metrics = Arc::new(warehouse_sync::metrics::Metrics::default());
    let listen = std::env::var("TRIALBRIDGE_SYNC_METRICS_LISTEN")
        .unwrap_or_else(|_| "127.0.0.1:9108".into());
    match tokio::net::TcpListener::bind(&listen).await {
        Ok(l) => {
            tokio::spawn(warehouse_sync::metrics::serve(
                l,
                metrics.clone(),
                config.postgres_url.clone(),
            ));
        }
        Err(e) => {
            eprintln!("warehouse-sync: cannot serve metrics on {listen}: {e}");
            return std::process::ExitCode::from(1);
        }
    }
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match warehouse_sync::run(&config, stop, |s| {
        metrics.record(s);
        eprintln!(
            "warehouse-sync: {} changes written, at sequence {}",
            s.events, s.cursor
        )
    })
    .await
    {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warehouse-sync: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
