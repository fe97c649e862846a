//! Prometheus metrics of a running sync: events and batches written, the cursor, the lag
//! (how long the newest written change had been committed in the store when its batch
//! committed in the warehouse) and the rows of every warehouse table.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use crate::SyncStats;

/// Counters updated after each committed batch.
#[derive(Debug, Default)]
pub struct Metrics {
    events: AtomicU64,
    batches: AtomicU64,
    cursor: AtomicI64,
    lag_ms: AtomicI64,
}

impl Metrics {
    /// Records a committed batch.
    pub fn record(&self, s: &SyncStats) {
        self.events.store(s.events, Ordering::Relaxed);
        self.batches.store(s.batches, Ordering::Relaxed);
        self.cursor.store(s.cursor, Ordering::Relaxed);
        if let Some(t) = s.last_updated.as_deref().and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        }) {
            let lag = time::OffsetDateTime::now_utc() - t;
            self.lag_ms
                .store(lag.whole_milliseconds().max(0) as i64, Ordering::Relaxed);
        }
    }
}

/// The metrics in the Prometheus text format; the row counts are read from `pg`.
pub async fn render(m: &Metrics, pg: &sqlx::PgPool) -> Result<String, sqlx::Error> {
    let mut out = String::new();
    let mut metric = |name: &str, help: &str, kind: &str, value: String| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    };
    metric(
        "warehouse_sync_events_total",
        "Changes written by this process.",
        "counter",
        m.events.load(Ordering::Relaxed).to_string(),
    );
    metric(
        "warehouse_sync_batches_total",
        "PostgreSQL transactions committed by this process.",
        "counter",
        m.batches.load(Ordering::Relaxed).to_string(),
    );
    metric(
        "warehouse_sync_cursor",
        "The change sequence written up to.",
        "gauge",
        m.cursor.load(Ordering::Relaxed).to_string(),
    );
    metric("warehouse_sync_lag_seconds", "How long the newest written change had been committed in the store when its batch committed.", "gauge", format!("{:.3}", m.lag_ms.load(Ordering::Relaxed) as f64 / 1000.0));
    out.push_str("# HELP warehouse_sync_table_rows Rows of a warehouse table.\n# TYPE warehouse_sync_table_rows gauge\n");
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = current_schema() AND (table_name LIKE 'fhir_%' OR table_name LIKE 'view_%')
         ORDER BY table_name",
    )
    .fetch_all(pg)
    .await?;
    for name in tables {
        // Names come from the catalogue and are plain identifiers (the sync created them).
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM \"{name}\""
        )))
        .fetch_one(pg)
        .await?;
        out.push_str(&format!(
            "warehouse_sync_table_rows{{table=\"{name}\"}} {n}\n"
        ));
    }
    Ok(out)
}

/// Serves `GET /metrics`, `/livez` and `/readyz` on `listener` for as long as the process runs.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    postgres_url: String,
) -> Result<(), crate::SyncError> {
    let pg = Arc::new(crate::connect(&postgres_url).await?);
    let ready_pg = pg.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let (m, pg) = (metrics.clone(), pg.clone());
                async move {
                    match render(&m, &pg).await {
                        Ok(text) => (axum::http::StatusCode::OK, text),
                        Err(e) => (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            format!("# warehouse database: {e}\n"),
                        ),
                    }
                }
            }),
        )
        .route("/livez", axum::routing::get(|| async { "ok" }))
        .route(
            "/readyz",
            // Ready when the warehouse database answers.
            axum::routing::get(move || {
                let pg = ready_pg.clone();
                async move {
                    match sqlx::query("SELECT 1").execute(&*pg).await {
                        Ok(_) => (axum::http::StatusCode::OK, "ready".to_string()),
                        Err(e) => (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            format!("the warehouse database does not answer: {e}"),
                        ),
                    }
                }
            }),
        );
    axum::serve(listener, app)
        .await
        .map_err(crate::SyncError::Metrics)
}
