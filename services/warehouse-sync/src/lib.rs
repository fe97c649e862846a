//! warehouse-sync: follows the trial store's gRPC change feed and keeps the sponsor warehouse's
//! PostgreSQL tables current: `fhir_version` (every version, by change sequence) and
//! `fhir_resource` (the current version of each resource, deletes included as tombstones), and
//! one flat table per ViewDefinition: the study's (`studies/mesemcart/views/`: `view_subject`,
//! `view_observation`, `view_procedure`, `view_adverse_event`, `view_visit`) and any the
//! warehouse team puts in `TRIALBRIDGE_VIEWS_DIR`. A view that is new or changed gets its table
//! made and back-filled from `fhir_resource` in one transaction (`sync_view` records which
//! definition each table holds); the directory is read again while the sync follows, so a view
//! added to it is live within seconds.
//!
//! Each batch of events is written in one PostgreSQL transaction together with the cursor
//! (`sync_cursor`): a crash at any point rolls the whole batch back, and the restart resumes
//! after the last committed sequence, so nothing is lost and nothing is applied twice.

pub mod metrics;
pub mod view;

use view::View;

use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
// View and column names are checked identifiers (letters, digits, `_`: `view::is_name`), so
// the SQL made from them is safe to run.
use sqlx::{AssertSqlSafe, Executor, Postgres, Transaction};
use trialbridge_feed::change_feed_client::ChangeFeedClient;
use trialbridge_feed::{ChangeEvent, SubscribeRequest};

/// The name of this sync's row in `sync_cursor`.
const FEED: &str = "trial-store";

/// Events written per PostgreSQL transaction at most.
const BATCH: usize = 1000;

/// A following sync writes what it has after this long without new events.
const IDLE_FLUSH: Duration = Duration::from_millis(200);

/// Where to read and where to write.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// The store's change-feed URL (`http://127.0.0.1:8082`).
    pub feed_url: String,
    /// A `warehouse` bearer token.
    pub token: String,
    /// The warehouse database (`postgres://user@host:port/db`).
    pub postgres_url: String,
    /// Keep following new commits; otherwise stop once caught up.
    pub follow: bool,
    /// A directory of the warehouse's own ViewDefinitions (`*.json`), beside the study's.
    pub views_dir: Option<std::path::PathBuf>,
}

/// What a sync did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncStats {
    /// Events written.
    pub events: u64,
    /// Transactions committed.
    pub batches: u64,
    /// The cursor at the end.
    pub cursor: i64,
    /// `lastUpdated` of the newest change written.
    pub last_updated: Option<String>,
}

/// Why a sync stopped.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// PostgreSQL failed.
    #[error("warehouse database: {0}")]
    Postgres(#[from] sqlx::Error),
    /// The feed could not be reached.
    #[error("change feed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The feed refused or failed.
    #[error("change feed: {0}")]
    Feed(#[from] tonic::Status),
    /// The token is not usable as metadata.
    #[error("the token cannot be sent")]
    Token,
    /// The metrics listener failed.
    #[error("metrics listener: {0}")]
    Metrics(std::io::Error),
}

/// The warehouse schema (idempotent).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS fhir_version (
    seq           bigint PRIMARY KEY,
    resource_type text   NOT NULL,
    id            text   NOT NULL,
    version       bigint NOT NULL,
    operation     text   NOT NULL,
    site          text,
    last_updated  text   NOT NULL,
    resource      jsonb
);
CREATE INDEX IF NOT EXISTS fhir_version_resource ON fhir_version (resource_type, id, version);
CREATE TABLE IF NOT EXISTS fhir_resource (
    resource_type text   NOT NULL,
    id            text   NOT NULL,
    version       bigint NOT NULL,
    seq           bigint NOT NULL,
    deleted       boolean NOT NULL,
    site          text,
    last_updated  text   NOT NULL,
    resource      jsonb,
    PRIMARY KEY (resource_type, id)
);
CREATE TABLE IF NOT EXISTS sync_cursor (
    feed text PRIMARY KEY,
    seq  bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS sync_view (
    name       text PRIMARY KEY,
    definition text NOT NULL
);
";

/// How often a following sync reads the views directory again.
const VIEWS_RESCAN: Duration = Duration::from_secs(2);

/// Connects to PostgreSQL and applies the schema. The pool holds the one connection the
/// writer uses (and another for the metrics).
pub async fn connect(url: &str) -> Result<PgPool, SyncError> {
    let pool = PgPoolOptions::new().max_connections(2).connect(url).await?;
    pool.execute(sqlx::raw_sql(SCHEMA)).await?;
    Ok(pool)
}

/// Makes the table of every view that is new or whose definition changed, and back-fills it
/// from the current resources in `fhir_resource`, each view in one transaction with its
/// `sync_view` row (a crash leaves the old table or the new one, whole). Returns the names of
/// the views made.
pub async fn install_views(pool: &PgPool, views: &[View]) -> Result<Vec<String>, SyncError> {
    let known: std::collections::HashMap<String, String> =
        sqlx::query_as("SELECT name, definition FROM sync_view")
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect();
    let mut made = Vec::new();
    for v in views {
        if known.get(&v.name) == Some(&v.text) {
            continue;
        }
        let cols: Vec<String> = v
            .columns
            .iter()
            .map(|c| format!("\"{}\" {}", c.name, c.sql_type))
            .collect();
        let ddl = format!(
            "DROP TABLE IF EXISTS view_{n};
             CREATE TABLE view_{n} (_key text NOT NULL, {cols});
             CREATE INDEX view_{n}_key ON view_{n} (_key);",
            n = v.name,
            cols = cols.join(", ")
        );
        let mut tx = pool.begin().await?;
        tx.execute(sqlx::raw_sql(AssertSqlSafe(ddl))).await?;
        let current: Vec<(String, String)> = sqlx::query_as(
            "SELECT id, resource::text FROM fhir_resource
             WHERE resource_type = $1 AND NOT deleted AND resource IS NOT NULL",
        )
        .bind(&v.resource)
        .fetch_all(&mut *tx)
        .await?;
        let mut rows = ViewRows::new(v);
        for (id, body) in &current {
            if let Ok(resource) = serde_json::from_str::<serde_json::Value>(body) {
                rows.add(&format!("{}/{id}", v.resource), &resource);
            }
        }
        rows.insert(&mut tx).await?;
        sqlx::query(
            "INSERT INTO sync_view (name, definition) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET definition = excluded.definition",
        )
        .bind(&v.name)
        .bind(&v.text)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(view = %v.name, resources = current.len(), "view table made and back-filled");
        made.push(v.name.clone());
    }
    Ok(made)
}

/// The rows of one view for a set of resources, column by column, ready for one INSERT.
struct ViewRows<'v> {
    view: &'v View,
    keys: Vec<String>,
    cols: Vec<Vec<Option<String>>>,
}

impl<'v> ViewRows<'v> {
    fn new(view: &'v View) -> Self {
        Self {
            view,
            keys: Vec::new(),
            cols: vec![Vec::new(); view.columns.len()],
        }
    }

    /// Adds the rows of one resource. A resource the view cannot make a row of (several
    /// values in a single-valued column) is logged and left out of that view: the change is
    /// still in `fhir_version` and `fhir_resource`, and one resource must not stop the sync.
    fn add(&mut self, key: &str, resource: &serde_json::Value) {
        match self.view.rows(resource) {
            Ok(rows) => {
                for row in rows {
                    self.keys.push(key.to_string());
                    for (i, value) in row.into_iter().enumerate() {
                        self.cols[i].push(value);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(view = %self.view.name, resource = key, error = %e, "no view rows for this resource")
            }
        }
    }

    async fn insert(self, tx: &mut Transaction<'_, Postgres>) -> Result<(), SyncError> {
        if self.keys.is_empty() {
            return Ok(());
        }
        let v = self.view;
        let names: Vec<String> = v
            .columns
            .iter()
            .map(|c| format!("\"{}\"", c.name))
            .collect();
        let casts: Vec<String> = v
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("c{i}::{}", c.sql_type))
            .collect();
        let arrays: Vec<String> = (0..v.columns.len())
            .map(|i| format!("${}::text[]", i + 2))
            .collect();
        let aliases: Vec<String> = (0..v.columns.len()).map(|i| format!("c{i}")).collect();
        let sql = format!(
            "INSERT INTO view_{n} (_key, {names}) SELECT k, {casts} FROM UNNEST($1::text[], {arrays}) AS x(k, {aliases})",
            n = v.name,
            names = names.join(", "),
            casts = casts.join(", "),
            arrays = arrays.join(", "),
            aliases = aliases.join(", "),
        );
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(&self.keys);
        for c in &self.cols {
            q = q.bind(c);
        }
        q.execute(&mut **tx).await?;
        Ok(())
    }
}

/// Replaces the view rows of the resources a batch changed (the newest version of each).
async fn write_views(
    tx: &mut Transaction<'_, Postgres>,
    views: &[View],
    batch: &[ChangeEvent],
) -> Result<(), SyncError> {
    for v in views {
        let mut newest: std::collections::BTreeMap<String, &ChangeEvent> = Default::default();
        for e in batch.iter().filter(|e| e.resource_type == v.resource) {
            newest.insert(format!("{}/{}", e.resource_type, e.id), e);
        }
        if newest.is_empty() {
            continue;
        }
        let keys: Vec<String> = newest.keys().cloned().collect();
        sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM view_{} WHERE _key = ANY($1)",
            v.name
        )))
        .bind(&keys)
        .execute(&mut **tx)
        .await?;
        let mut rows = ViewRows::new(v);
        for (k, e) in &newest {
            if e.resource_json.is_empty() {
                continue; // deleted: no row
            }
            if let Ok(resource) = serde_json::from_str::<serde_json::Value>(&e.resource_json) {
                rows.add(k, &resource);
            }
        }
        rows.insert(tx).await?;
    }
    Ok(())
}

/// The last sequence written.
pub async fn cursor(pool: &PgPool) -> Result<i64, SyncError> {
    let seq: Option<i64> = sqlx::query_scalar("SELECT seq FROM sync_cursor WHERE feed = $1")
        .bind(FEED)
        .fetch_optional(pool)
        .await?;
    Ok(seq.unwrap_or(0))
}

/// One `warehouse.apply` span per trace the batch's events carry (a store transaction's
/// events share one), each a child of the store write that made them: a trace then runs from
/// the HL7 message to the warehouse row. The spans last until the batch is committed.
fn apply_spans(batch: &[ChangeEvent]) -> Vec<tracing::Span> {
    let mut traces: Vec<(&str, usize, i64, i64)> = Vec::new();
    for e in batch.iter().filter(|e| !e.traceparent.is_empty()) {
        match traces.iter_mut().find(|t| t.0 == e.traceparent) {
            Some(t) => {
                t.1 += 1;
                t.3 = e.sequence;
            }
            None => traces.push((&e.traceparent, 1, e.sequence, e.sequence)),
        }
    }
    traces
        .into_iter()
        .map(|(parent, events, first, last)| {
            let span = tracing::info_span!(
                "warehouse.apply",
                events,
                first_seq = first,
                last_seq = last
            );
            trialbridge_telemetry::set_parent(&span, parent);
            span
        })
        .collect()
}

/// Writes a batch, its view rows and the cursor in one transaction.
async fn write(pool: &PgPool, views: &[View], batch: &[ChangeEvent]) -> Result<(), SyncError> {
    let Some(last) = batch.last() else {
        return Ok(());
    };
    let _spans = apply_spans(batch);
    let col = |f: fn(&ChangeEvent) -> String| batch.iter().map(f).collect::<Vec<String>>();
    let seqs: Vec<i64> = batch.iter().map(|e| e.sequence).collect();
    let versions: Vec<i64> = batch.iter().map(|e| e.version).collect();
    let types = col(|e| e.resource_type.clone());
    let ids = col(|e| e.id.clone());
    let ops = col(|e| e.operation().as_str_name().to_string());
    let sites: Vec<Option<String>> = batch
        .iter()
        .map(|e| (!e.site.is_empty()).then(|| e.site.clone()))
        .collect();
    let updated = col(|e| e.last_updated.clone());
    let bodies: Vec<Option<String>> = batch
        .iter()
        .map(|e| (!e.resource_json.is_empty()).then(|| e.resource_json.clone()))
        .collect();
    // Both statements read the batch as the same eight arrays.
    let batch_arrays = |sql: &'static str| {
        sqlx::query(sql)
            .bind(&seqs)
            .bind(&types)
            .bind(&ids)
            .bind(&versions)
            .bind(&ops)
            .bind(&sites)
            .bind(&updated)
            .bind(&bodies)
    };
    let mut tx = pool.begin().await?;
    batch_arrays(
        "INSERT INTO fhir_version (seq, resource_type, id, version, operation, site, last_updated, resource)
         SELECT s, t, i, v, o, si, u, b::jsonb
         FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::text[], $8::text[])
              AS x(s, t, i, v, o, si, u, b)
         ON CONFLICT (seq) DO NOTHING",
    )
    .execute(&mut *tx)
    .await?;
    // The newest version of each resource in the batch becomes (or stays) its current row.
    batch_arrays(
        "INSERT INTO fhir_resource (resource_type, id, version, seq, deleted, site, last_updated, resource)
         SELECT DISTINCT ON (t, i) t, i, v, s, o = 'DELETE', si, u, b::jsonb
         FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::text[], $8::text[])
              AS x(s, t, i, v, o, si, u, b)
         ORDER BY t, i, s DESC
         ON CONFLICT (resource_type, id) DO UPDATE SET
             version = excluded.version, seq = excluded.seq, deleted = excluded.deleted,
             site = excluded.site, last_updated = excluded.last_updated, resource = excluded.resource
         WHERE fhir_resource.seq < excluded.seq",
    )
    .execute(&mut *tx)
    .await?;
    write_views(&mut tx, views, batch).await?;
    sqlx::query(
        "INSERT INTO sync_cursor (feed, seq) VALUES ($1, $2)
         ON CONFLICT (feed) DO UPDATE SET seq = excluded.seq",
    )
    .bind(FEED)
    .bind(last.sequence)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Follows the feed from the stored cursor and writes it; returns when caught up (or, when
/// following, when `stop` resolves). `progress` is called after each committed batch.
pub async fn run(
    config: &SyncConfig,
    stop: impl std::future::Future<Output = ()>,
    mut progress: impl FnMut(&SyncStats),
) -> Result<SyncStats, SyncError> {
    let pg = connect(&config.postgres_url).await?;
    let mut views = load_views(&pg, config.views_dir.as_deref()).await?;
    let mut rescanned = std::time::Instant::now();
    let mut stats = SyncStats {
        cursor: cursor(&pg).await?,
        ..Default::default()
    };
    let mut feed = ChangeFeedClient::connect(config.feed_url.clone())
        .await?
        .max_decoding_message_size(64 * 1024 * 1024);
    let mut req = tonic::Request::new(SubscribeRequest {
        after_sequence: stats.cursor,
        resource_types: vec![],
        follow: config.follow,
    });
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", config.token)
            .parse()
            .map_err(|_| SyncError::Token)?,
    );
    let mut stream = feed.subscribe(req).await?.into_inner();
    let mut batch: Vec<ChangeEvent> = Vec::with_capacity(BATCH);
    tokio::pin!(stop);
    loop {
        let next = tokio::select! {
            m = tokio::time::timeout(IDLE_FLUSH, stream.message()) => Some(m),
            _ = &mut stop => None,
        };
        // `done`: stopped or caught up (a stream that does not follow ends); `idle`: nothing
        // new for a while. Either way, what has arrived is written.
        let (done, idle) = match next {
            Some(Ok(Ok(Some(e)))) => {
                batch.push(e);
                (false, false)
            }
            None | Some(Ok(Ok(None))) => (true, false),
            Some(Ok(Err(status))) => return Err(status.into()),
            Some(Err(_)) => (false, true),
        };
        if !batch.is_empty() && (batch.len() >= BATCH || done || idle) {
            write(&pg, &views, &batch).await?;
            stats.events += batch.len() as u64;
            stats.batches += 1;
            stats.cursor = batch.last().map_or(stats.cursor, |e| e.sequence);
            stats.last_updated = batch.last().map(|e| e.last_updated.clone());
            batch.clear();
            progress(&stats);
        }
        if done {
            break;
        }
        // A view added to (or changed in) the directory: made and back-filled between two
        // batches, so its table is consistent with the cursor from the start.
        if idle && config.views_dir.is_some() && rescanned.elapsed() >= VIEWS_RESCAN {
            views = load_views(&pg, config.views_dir.as_deref()).await?;
            rescanned = std::time::Instant::now();
        }
    }
    Ok(stats)
}

/// The views to keep (the study's and the directory's), their tables made or re-made where
/// new or changed. Files that are not valid views are logged (with the element that is wrong)
/// and left out.
async fn load_views(pg: &PgPool, dir: Option<&std::path::Path>) -> Result<Vec<View>, SyncError> {
    let (views, errors) = view::all_views(dir);
    for e in errors {
        tracing::error!(error = %e, "a ViewDefinition in the views directory is not used");
    }
    install_views(pg, &views).await?;
    Ok(views)
}
