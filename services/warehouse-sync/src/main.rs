//! `warehouse-sync`: the sync as a service (the same library as `trialbridge sync --follow`),
//! configured by `TRIALBRIDGE_FEED_URL`, `TRIALBRIDGE_TOKEN` and `TRIALBRIDGE_WAREHOUSE_URL`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let config = warehouse_sync::SyncConfig {
        feed_url: std::env::var("TRIALBRIDGE_FEED_URL")
            .unwrap_or_else(|_| "http://127.0.0.1:8082".into()),
        token: var("TRIALBRIDGE_TOKEN"),
        postgres_url: var("TRIALBRIDGE_WAREHOUSE_URL"),
        follow: true,
    };
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match warehouse_sync::run(&config, stop, |s| {
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
