//! The SQLite backend: WAL with `synchronous=FULL`, one writer thread with group commit, and a
//! pool of read connections.
//!
//! The writer owns its connection on a dedicated thread and runs each queued job to completion
//! there (jobs only await the writer's own synchronous calls), so a write costs one hand-over to
//! the writer and one back, not one per statement. All jobs that queued up while the previous
//! commit was being fsynced go into the next transaction, each in its own savepoint.
//!
//! Gap-safety of the change sequence: `seq` is assigned inside the write transaction and SQLite
//! admits one writer at a time (across processes too), so commits happen in `seq` order and a
//! reader that sees `seq = n` also sees every version below `n`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use rusqlite::types::Value as SqlValue;
use rusqlite::{params, params_from_iter, Connection, OpenFlags, OptionalExtension, Row};
use tokio::sync::mpsc;

use trialbridge_fhir::index::normalize_string;
use trialbridge_fhir::search::{
    Criterion, Cursor, Match, Prefix, RangeKind, SearchRequest, SortKey, SortValue,
};
use trialbridge_fhir::search_param::SearchParamKind;

use crate::{
    audit_hash, AccessContext, AuditQuery, AuditRecord, HistoryOrder, HistoryPage, HistoryQuery,
    HistoryScope, Index, JobFinish, JobOutcome, NewVersion, ResourceStore, SearchPage, SiteScope,
    StorageError, StoredAudit, StoredVersion, WriteJob, WriteTxn, AUDIT_GENESIS,
};

/// Range rows at most this wide (in their unit: a day in microseconds for dates; numbers are
/// points, width 0) are "short": a search can bound their `low` and read one index range.
const SHORT_SPAN: f64 = 86_400_000_000.0;

/// How many queued write jobs one commit may take at most.
const MAX_BATCH: usize = 512;

/// Queued audit events beyond which each new one waits for the writer.
const MAX_PENDING_AUDIT: usize = 50_000;

/// How long audit events of requests that changed nothing wait for a commit at most.
const AUDIT_FLUSH_DELAY: Duration = Duration::from_millis(100);

/// Schema migrations, applied in order; `PRAGMA user_version` records the last one applied.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/sqlite/0001_versions.sql"),
    include_str!("../migrations/sqlite/0002_audit_and_sites.sql"),
    include_str!("../migrations/sqlite/0003_jobs.sql"),
];

/// Where and how to open the SQLite database.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// The database file.
    pub path: PathBuf,
    /// Read connections kept open.
    pub readers: usize,
}

impl SqliteOptions {
    /// Parses `sqlite://path` (relative or absolute) or `sqlite:path`.
    pub fn from_url(url: &str) -> Result<Self, StorageError> {
        let rest = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or_else(|| StorageError::UnsupportedUrl(url.to_string()))?;
        let path = rest.split('?').next().unwrap_or_default();
        if path.is_empty() || path.starts_with(':') {
            return Err(StorageError::UnsupportedUrl(url.to_string()));
        }
        Ok(Self {
            path: PathBuf::from(path),
            readers: 8,
        })
    }

    /// A file or folder beside the database (exports, the site gateway's own database).
    pub fn beside(&self, name: &str) -> PathBuf {
        self.path
            .parent()
            .map(|d| d.join(name))
            .unwrap_or_else(|| name.into())
    }
}

/// The SQLite implementation of [`ResourceStore`].
pub struct SqliteStore {
    readers: Arc<ReaderPool>,
    jobs: mpsc::Sender<WriteJob>,
    /// Audit events waiting for the writer's next commit.
    pending_audit: Arc<PendingAudit>,
    /// Dropping it stops the checkpoint thread.
    _checkpointer: std::sync::mpsc::Sender<()>,
}

/// How often the background thread copies WAL frames into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// Copies WAL frames into the database file from its own connection, so that the writer's
/// automatic checkpoint (every 1,000 pages, inside a commit) finds most of the work done and
/// stalls its batch for less time. PASSIVE never blocks the writer. The writer's own
/// checkpoint stays on: under continuous writes only it, running between two transactions,
/// can finish a checkpoint and so let the WAL start again from the beginning (measured: with
/// the background thread alone the WAL grew to 1.3 GB over 30,000 writes).
fn checkpoint_loop(path: PathBuf, stop: std::sync::mpsc::Receiver<()>) {
    let conn = match open_connection(&path, false) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot open the checkpoint connection; the writer checkpoints alone");
            return;
        }
    };
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY)
    {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "WAL checkpoint failed");
        }
    }
}

/// Read-only connections, reused.
struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    keep: usize,
}

impl ReaderPool {
    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let conn = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match conn {
            Some(c) => c,
            None => open_connection(&self.path, true)?,
        };
        let result = f(&conn);
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.keep {
            idle.push(conn);
        }
        result
    }
}

fn open_connection(path: &std::path::Path, read_only: bool) -> Result<Connection, StorageError> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    if !read_only {
        // FULL: the WAL is fsynced at every commit, so a 2xx survives a crash of the machine,
        // not only of the process.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
    }
    conn.pragma_update(None, "cache_size", -65536)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<(), StorageError> {
    let applied: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate() {
        let version = i as i64 + 1;
        if version <= applied {
            continue;
        }
        let tx = conn.transaction()?;
        tx.execute_batch(sql)
            .map_err(|e| StorageError::Migration(format!("migration {version}: {e}")))?;
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
    }
    if applied > MIGRATIONS.len() as i64 {
        return Err(StorageError::Migration(format!(
            "the database has schema version {applied}, newer than this trialbridge knows ({})",
            MIGRATIONS.len()
        )));
    }
    Ok(())
}

const VERSION_COLUMNS: &str =
    "v.res_type, v.res_id, v.version, v.seq, v.last_updated, v.last_updated_us, v.deleted, v.body, v.site";
/// The number of columns in [`VERSION_COLUMNS`]; sort keys follow them.
const VERSION_COLUMN_COUNT: usize = 9;

/// ` AND (col IS NULL OR col IN (...))` for a caller limited to some sites; nothing otherwise.
fn push_site_scope(
    sql: &mut String,
    args: &mut Vec<SqlValue>,
    sites: Option<&[String]>,
    col: &str,
) {
    let Some(sites) = sites else { return };
    if sites.is_empty() {
        sql.push_str(&format!(" AND {col} IS NULL"));
        return;
    }
    let marks = vec!["?"; sites.len()].join(",");
    sql.push_str(&format!(" AND ({col} IS NULL OR {col} IN ({marks}))"));
    args.extend(sites.iter().map(|s| SqlValue::from(s.clone())));
}

/// The sites a context is limited to, `None` when it sees every site.
fn limited(ctx: &AccessContext) -> Option<&[String]> {
    match &ctx.sites {
        SiteScope::All => None,
        SiteScope::Only(s) => Some(s),
    }
}

fn version_from_row(row: &Row<'_>) -> rusqlite::Result<StoredVersion> {
    Ok(StoredVersion {
        resource_type: row.get(0)?,
        id: row.get(1)?,
        version: row.get(2)?,
        seq: row.get(3)?,
        last_updated: row.get(4)?,
        last_updated_us: row.get(5)?,
        deleted: row.get::<_, i64>(6)? != 0,
        body: row.get(7)?,
        site: row.get(8)?,
    })
}

impl SqliteStore {
    /// Opens (creating if needed) the database, applies migrations and starts the writer.
    pub async fn open(options: SqliteOptions) -> Result<Self, StorageError> {
        if let Some(dir) = options.path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)?;
            }
        }
        let path = options.path.clone();
        let writer = tokio::task::spawn_blocking(move || {
            let mut conn = open_connection(&path, false)?;
            migrate(&mut conn)?;
            Ok::<_, StorageError>(conn)
        })
        .await
        .map_err(|e| StorageError::Corrupt(format!("opening the database panicked: {e}")))??;
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        let pending_audit = Arc::new(PendingAudit::default());
        let pending = pending_audit.clone();
        std::thread::Builder::new()
            .name("trialbridge-sqlite-writer".into())
            .spawn(move || writer_loop(writer, rx, &pending))?;
        let (stop_tx, stop_rx) = std::sync::mpsc::channel();
        let checkpoint_path = options.path.clone();
        std::thread::Builder::new()
            .name("trialbridge-sqlite-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpoint_path, stop_rx))?;
        let readers = Arc::new(ReaderPool {
            path: options.path,
            idle: Mutex::new(Vec::new()),
            keep: options.readers.max(1),
        });
        Ok(Self {
            readers,
            jobs: tx,
            pending_audit,
            _checkpointer: stop_tx,
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || pool.with(f))
            .await
            .map_err(|e| StorageError::Corrupt(format!("a read panicked: {e}")))?
    }
}

fn writer_loop(mut conn: Connection, mut rx: mpsc::Receiver<WriteJob>, pending: &PendingAudit) {
    let mut batch: Vec<WriteJob> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let mut finishers = Vec::with_capacity(batch.len());
        let result = run_batch(&mut conn, &mut batch, &mut finishers, pending);
        if let Err(e) = &result {
            tracing::error!(error = %e, "write batch failed; rolling back");
            let _ = conn.execute_batch("ROLLBACK");
        }
        let msg = result.as_ref().err().map(ToString::to_string);
        for f in finishers {
            f(match &msg {
                None => Ok(()),
                Some(m) => Err(StorageError::CommitFailed(m.clone())),
            });
        }
        // Jobs not reached because the batch failed early are dropped, which tells their
        // callers that the writer could not run them.
        batch.clear();
    }
}

fn run_batch(
    conn: &mut Connection,
    batch: &mut Vec<WriteJob>,
    finishers: &mut Vec<JobFinish>,
    pending: &PendingAudit,
) -> Result<(), StorageError> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let last_us: i64 = conn.query_row(
        "SELECT COALESCE(MAX(last_updated_us), 0) FROM resource_version",
        [],
        |r| r.get(0),
    )?;
    let mut txn = SqliteWriteTxn {
        conn,
        last_us,
        appended: 0,
        audited: 0,
        chain_end: None,
    };
    for job in batch.drain(..) {
        txn.conn.execute_batch("SAVEPOINT job")?;
        txn.appended = 0;
        txn.audited = 0;
        // Restored when the job is rolled back, with its audit rows.
        let chain_before = txn.chain_end.clone();
        // The job only awaits this transaction's synchronous calls, so it completes here. A
        // panicking job must not take the writer down: its savepoint is rolled back and its
        // caller sees the writer's error.
        let outcome =
            futures::executor::block_on(std::panic::AssertUnwindSafe(job(&mut txn)).catch_unwind());
        match outcome {
            Ok(JobOutcome { keep: true, finish }) if txn.appended > 0 && txn.audited == 0 => {
                tracing::error!("a write job changed data without an audit event; rolled back");
                txn.conn.execute_batch("ROLLBACK TO job; RELEASE job")?;
                txn.chain_end = chain_before;
                finish(Err(StorageError::Unaudited));
            }
            Ok(JobOutcome { keep: true, finish }) => {
                txn.conn.execute_batch("RELEASE job")?;
                finishers.push(finish);
            }
            Ok(JobOutcome {
                keep: false,
                finish,
            }) => {
                txn.conn.execute_batch("ROLLBACK TO job; RELEASE job")?;
                txn.chain_end = chain_before;
                finishers.push(finish);
            }
            Err(_) => {
                tracing::error!("a write job panicked; its changes were rolled back");
                txn.conn.execute_batch("ROLLBACK TO job; RELEASE job")?;
                txn.chain_end = chain_before;
            }
        }
    }
    // The queued audit events of requests that changed nothing ride along with this commit.
    pending.flush(txn.conn, &mut txn.chain_end)?;
    txn.conn.execute_batch("COMMIT")?;
    Ok(())
}

struct SqliteWriteTxn<'c> {
    conn: &'c mut Connection,
    last_us: i64,
    /// Versions the current job appended.
    appended: usize,
    /// Audit events the current job recorded.
    audited: usize,
    /// The audit chain's last position and hash in this transaction, once read.
    chain_end: Option<(i64, String)>,
}

/// Appends one row to the chain (the writer is the only one, so the chain's end, read once
/// per transaction, stays true).
fn insert_audit(
    conn: &Connection,
    chain_end: &mut Option<(i64, String)>,
    r: &AuditRecord,
    batch: bool,
) -> Result<(), StorageError> {
    let (last_seq, prev) = match chain_end.take() {
        Some(end) => end,
        None => conn
            .prepare_cached("SELECT seq, hash FROM audit_event ORDER BY seq DESC LIMIT 1")?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?
            .unwrap_or((0, AUDIT_GENESIS.to_string())),
    };
    let seq = last_seq + 1;
    let hash = audit_hash(&prev, seq, &r.body);
    conn.prepare_cached("INSERT INTO audit_event (seq, recorded_us, site, batch, body, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")?
        .execute(params![seq, r.recorded_us, r.site, i64::from(batch), r.body, prev, hash])?;
    let mut e =
        conn.prepare_cached("INSERT OR IGNORE INTO audit_entity (entity, seq) VALUES (?1, ?2)")?;
    for entity in &r.entities {
        e.execute(params![entity, seq])?;
    }
    *chain_end = Some((seq, hash));
    Ok(())
}

const AUDIT_COLUMNS: &str = "seq, recorded_us, site, batch, body, prev_hash, hash";

fn audit_from_row(row: &Row<'_>) -> rusqlite::Result<StoredAudit> {
    Ok(StoredAudit {
        seq: row.get(0)?,
        recorded_us: row.get(1)?,
        site: row.get(2)?,
        batch: row.get::<_, i64>(3)? != 0,
        body: row.get(4)?,
        prev_hash: row.get(5)?,
        hash: row.get(6)?,
    })
}

/// Audit events of requests that changed nothing, waiting for the writer.
#[derive(Default)]
struct PendingAudit(Mutex<Vec<AuditRecord>>);

impl PendingAudit {
    /// Writes everything queued: one batch row (a JSON array of the queued bodies) per site.
    fn flush(
        &self,
        conn: &Connection,
        chain_end: &mut Option<(i64, String)>,
    ) -> Result<(), StorageError> {
        let records = std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()));
        let mut by_site: Vec<(Option<String>, Vec<AuditRecord>)> = Vec::new();
        for r in records {
            match by_site.iter_mut().find(|(s, _)| *s == r.site) {
                Some((_, v)) => v.push(r),
                None => by_site.push((r.site.clone(), vec![r])),
            }
        }
        for (site, group) in by_site {
            let mut body =
                String::with_capacity(group.iter().map(|r| r.body.len() + 1).sum::<usize>() + 2);
            body.push('[');
            let mut entities = Vec::new();
            for (i, r) in group.iter().enumerate() {
                if i > 0 {
                    body.push(',');
                }
                body.push_str(&r.body);
                entities.extend(r.entities.iter().cloned());
            }
            body.push(']');
            entities.sort();
            entities.dedup();
            let row = AuditRecord {
                recorded_us: group[0].recorded_us,
                site,
                entities,
                body,
            };
            insert_audit(conn, chain_end, &row, true)?;
        }
        Ok(())
    }
}

fn now_us() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64
}

fn read_current(
    conn: &Connection,
    resource_type: &str,
    id: &str,
) -> Result<Option<StoredVersion>, StorageError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {VERSION_COLUMNS} FROM resource_current c JOIN resource_version v ON v.seq = c.seq WHERE c.res_type = ?1 AND c.res_id = ?2"
    ))?;
    Ok(stmt
        .query_row(params![resource_type, id], version_from_row)
        .optional()?)
}

fn read_version(
    conn: &Connection,
    resource_type: &str,
    id: &str,
    version: i64,
) -> Result<Option<StoredVersion>, StorageError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {VERSION_COLUMNS} FROM resource_version v WHERE v.res_type = ?1 AND v.res_id = ?2 AND v.version = ?3"
    ))?;
    Ok(stmt
        .query_row(params![resource_type, id, version], version_from_row)
        .optional()?)
}

/// Replaces the index rows of one resource: removes the old ones (if it had any) and writes
/// `index` (none for a tombstone).
fn write_index(
    conn: &Connection,
    resource_type: &str,
    id: &str,
    had_rows: bool,
    index: Option<&Index>,
) -> Result<(), StorageError> {
    if had_rows {
        conn.prepare_cached("DELETE FROM search_index WHERE res_type = ?1 AND res_id = ?2")?
            .execute(params![resource_type, id])?;
        conn.prepare_cached("DELETE FROM search_range WHERE res_type = ?1 AND res_id = ?2")?
            .execute(params![resource_type, id])?;
    }
    let Some(index) = index else { return Ok(()) };
    let mut insert = conn.prepare_cached("INSERT INTO search_index (res_type, param, value, system, res_id) VALUES (?1, ?2, ?3, ?4, ?5)")?;
    for e in &index.text {
        insert.execute(params![
            resource_type,
            e.param,
            e.value,
            e.system.as_deref().unwrap_or(""),
            id
        ])?;
    }
    let mut insert = conn.prepare_cached(
        "INSERT INTO search_range (res_type, param, token_code, low, high, token_system, unit_system, unit_code, long, res_id) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    for r in &index.ranges {
        insert.execute(params![
            resource_type,
            r.param,
            r.token_code,
            r.low,
            r.high,
            r.token_system,
            r.unit_system,
            r.unit_code,
            i64::from(r.high - r.low > SHORT_SPAN),
            id
        ])?;
    }
    Ok(())
}

#[async_trait]
impl WriteTxn for SqliteWriteTxn<'_> {
    async fn replace_index(
        &mut self,
        resource_type: &str,
        id: &str,
        index: &Index,
    ) -> Result<(), StorageError> {
        write_index(self.conn, resource_type, id, true, Some(index))
    }

    async fn current(
        &mut self,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<StoredVersion>, StorageError> {
        read_current(self.conn, resource_type, id)
    }

    async fn version(
        &mut self,
        resource_type: &str,
        id: &str,
        version: i64,
    ) -> Result<Option<StoredVersion>, StorageError> {
        read_version(self.conn, resource_type, id, version)
    }

    async fn current_version(
        &mut self,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<(i64, bool, Option<String>)>, StorageError> {
        let mut stmt = self.conn.prepare_cached("SELECT v.version, c.deleted, c.site FROM resource_current c JOIN resource_version v ON v.seq = c.seq WHERE c.res_type = ?1 AND c.res_id = ?2")?;
        Ok(stmt
            .query_row(params![resource_type, id], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)? != 0, r.get(2)?))
            })
            .optional()?)
    }

    async fn search_ids(
        &mut self,
        ctx: &AccessContext,
        resource_type: &str,
        request: &SearchRequest,
        limit: usize,
    ) -> Result<Vec<String>, StorageError> {
        let (sql, args) = search_sql(
            limited(ctx),
            resource_type,
            request,
            None,
            Some(limit),
            "c.res_id",
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let ids = stmt
            .query_map(params_from_iter(args), |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ids)
    }

    async fn put_job(&mut self, id: &str, state: Option<&str>) -> Result<(), StorageError> {
        match state {
            Some(st) => self.conn.prepare_cached("INSERT INTO job (id, state) VALUES (?1, ?2) ON CONFLICT (id) DO UPDATE SET state = excluded.state")?.execute(params![id, st])?,
            None => self.conn.prepare_cached("DELETE FROM job WHERE id = ?1")?.execute(params![id])?,
        };
        Ok(())
    }

    async fn audit(&mut self, record: AuditRecord) -> Result<(), StorageError> {
        insert_audit(self.conn, &mut self.chain_end, &record, false)?;
        self.audited += 1;
        Ok(())
    }

    async fn append(&mut self, new: NewVersion<'_>) -> Result<StoredVersion, StorageError> {
        self.appended += 1;
        let conn = &*self.conn;
        let previous: Option<i64> = conn
            .prepare_cached("SELECT v.version FROM resource_current c JOIN resource_version v ON v.seq = c.seq WHERE c.res_type = ?1 AND c.res_id = ?2")?
            .query_row(params![new.resource_type, new.id], |r| r.get(0))
            .optional()?;
        let version = previous.unwrap_or(0) + 1;
        // lastUpdated strictly increases with seq, so `_since` never skips a late commit.
        let us = now_us().max(self.last_us + 1);
        self.last_us = us;
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
            .map_err(|e| StorageError::Corrupt(e.to_string()))?;
        let last_updated = trialbridge_fhir::instant::format(t);
        let body = (!new.deleted).then(|| (new.body)(version, &last_updated));
        let seq: i64 = conn
            .prepare_cached(
                "INSERT INTO resource_version (res_type, res_id, version, last_updated, last_updated_us, deleted, body, site) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) RETURNING seq",
            )?
            .query_row(params![new.resource_type, new.id, version, last_updated, us, i64::from(new.deleted), body, new.site], |r| r.get(0))?;
        conn.prepare_cached(
            "INSERT INTO resource_current (res_type, res_id, seq, deleted, site) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (res_type, res_id) DO UPDATE SET seq = excluded.seq, deleted = excluded.deleted, site = excluded.site",
        )?
        .execute(params![new.resource_type, new.id, seq, i64::from(new.deleted), new.site])?;
        write_index(
            conn,
            new.resource_type,
            new.id,
            previous.is_some(),
            (!new.deleted).then_some(new.index),
        )?;
        Ok(StoredVersion {
            resource_type: new.resource_type.to_string(),
            id: new.id.to_string(),
            version,
            seq,
            last_updated,
            last_updated_us: us,
            deleted: new.deleted,
            body,
            site: new.site.map(String::from),
        })
    }
}

/// Bounds on `low` that every short row (`high - low <= SHORT_SPAN`) matching `m` satisfies:
/// a necessary condition the index can use; the exact comparison follows it.
fn short_row_bounds(m: &Match) -> (f64, f64) {
    let Match::Range {
        kind,
        prefix,
        value,
        low,
        high,
        ..
    } = m
    else {
        return (f64::MIN, f64::MAX);
    };
    let (pl, ph, pv) = (*low, *high, *value);
    match kind {
        RangeKind::Date => match prefix {
            Prefix::Eq => (pl, ph),
            Prefix::Ne => (f64::MIN, f64::MAX),
            Prefix::Gt => (ph - SHORT_SPAN, f64::MAX),
            Prefix::Lt | Prefix::Eb => (f64::MIN, pl),
            Prefix::Ge => (pl - SHORT_SPAN, f64::MAX),
            Prefix::Le => (f64::MIN, ph),
            Prefix::Sa => (ph, f64::MAX),
            // ap widens by at most the distance to now; leave it unbounded.
            Prefix::Ap => (f64::MIN, f64::MAX),
        },
        RangeKind::Number => match prefix {
            Prefix::Eq => (pl, ph),
            Prefix::Gt | Prefix::Sa | Prefix::Ge => (pv, f64::MAX),
            Prefix::Lt | Prefix::Eb | Prefix::Le => (f64::MIN, pv),
            Prefix::Ne | Prefix::Ap => (f64::MIN, f64::MAX),
        },
    }
}

/// Escapes GLOB metacharacters.
fn glob_literal(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '*' | '?' | '[' => format!("[{c}]"),
            c => c.to_string(),
        })
        .collect()
}

/// The search SELECT over current, non-deleted resources, ordered by id; with `limit` `None`
/// it selects `columns` without order or limit (for counting).
fn search_sql(
    sites: Option<&[String]>,
    resource_type: &str,
    request: &SearchRequest,
    after_id: Option<&str>,
    limit: Option<usize>,
    columns: &str,
) -> (String, Vec<SqlValue>) {
    let mut q = SqlBuilder { sql: format!("SELECT {columns} FROM resource_current c JOIN resource_version v ON v.seq = c.seq WHERE c.res_type = ? AND c.deleted = 0"), args: vec![resource_type.to_string().into()], sites: sites.map(<[String]>::to_vec) };
    q.site_scope();
    // ANDed single-value range criteria of one parameter (`date=ge..&date=lt..`) are evaluated
    // together, on the same value, so that the index reads only the rows between both bounds.
    // (For an element that repeats, each criterion could otherwise be met by a different value.)
    let single_range = |c: &Criterion| {
        c.param != "_lastUpdated"
            && matches!(c.any_of.as_slice(), [Match::Range { token: None, .. }])
    };
    let mut grouped: Vec<&str> = Vec::new();
    for criterion in &request.criteria {
        if single_range(criterion) {
            if grouped.contains(&criterion.param.as_str()) {
                continue;
            }
            grouped.push(&criterion.param);
            let group: Vec<&Match> = request
                .criteria
                .iter()
                .filter(|c| c.param == criterion.param && single_range(c))
                .map(|c| &c.any_of[0])
                .collect();
            q.sql.push_str(" AND (");
            q.range_rows_condition(resource_type, &criterion.param, &group);
            q.sql.push(')');
            continue;
        }
        q.sql.push_str(" AND (");
        for (i, m) in criterion.any_of.iter().enumerate() {
            if i > 0 {
                q.sql.push_str(" OR ");
            }
            q.condition(resource_type, criterion, m);
        }
        q.sql.push(')');
    }
    if let Some(after) = after_id {
        q.sql.push_str(" AND c.res_id > ?");
        q.arg(after.to_string());
    }
    if let Some(limit) = limit {
        q.sql.push_str(" ORDER BY c.res_id LIMIT ?");
        q.arg(limit as i64);
    }
    (q.sql, q.args)
}

/// SQL text with its bound values.
struct SqlBuilder {
    sql: String,
    args: Vec<SqlValue>,
    /// The caller's sites when limited: every `resource_current c` the query reads, nested
    /// ones (chains, `_has`) included, is filtered by them.
    sites: Option<Vec<String>>,
}

impl SqlBuilder {
    fn site_scope(&mut self) {
        push_site_scope(
            &mut self.sql,
            &mut self.args,
            self.sites.as_deref(),
            "c.site",
        );
    }

    fn arg(&mut self, v: impl Into<SqlValue>) {
        self.args.push(v.into());
    }

    fn push(&mut self, sql: &str, v: impl Into<SqlValue>) {
        self.sql.push_str(sql);
        self.arg(v);
    }

    /// A boolean expression over `c` (current pointer) and `v` (its version) for one value.
    fn condition(&mut self, rt: &str, criterion: &Criterion, m: &Match) {
        let ranged = matches!(
            criterion.kind,
            SearchParamKind::Date
                | SearchParamKind::Number
                | SearchParamKind::Quantity
                | SearchParamKind::Composite
        );
        match m {
            Match::Id(id) => self.push("c.res_id = ?", id.clone()),
            Match::Missing(missing) => {
                self.sql.push_str(if *missing {
                    "c.res_id NOT IN "
                } else {
                    "c.res_id IN "
                });
                let table = if ranged {
                    "search_range"
                } else {
                    "search_index"
                };
                self.sql
                    .push_str(&format!("(SELECT res_id FROM {table} WHERE res_type = ?"));
                self.arg(rt.to_string());
                self.push(" AND param = ?)", criterion.param.clone());
            }
            Match::Not(inner) => {
                self.sql.push_str("NOT (");
                self.condition(rt, criterion, inner);
                self.sql.push(')');
            }
            Match::Chain {
                target_type,
                criterion: inner,
            } => {
                // Nested SELECTs reuse the aliases c and v: SQL resolves them to the nearest one.
                self.sql.push_str(
                    "c.res_id IN (SELECT i.res_id FROM search_index i WHERE i.res_type = ?",
                );
                self.arg(rt.to_string());
                self.push(" AND i.param = ?", criterion.param.clone());
                self.push(
                    " AND i.value IN (SELECT ? || '/' || c.res_id FROM ",
                    target_type.clone(),
                );
                self.matching_ids_tail(target_type, inner);
                self.sql.push_str("))");
            }
            Match::AnyOf(criteria) => {
                self.sql.push('(');
                for (k, c) in criteria.iter().enumerate() {
                    if k > 0 {
                        self.sql.push_str(" OR ");
                    }
                    self.sql.push('(');
                    for (i, m) in c.any_of.iter().enumerate() {
                        if i > 0 {
                            self.sql.push_str(" OR ");
                        }
                        self.condition(rt, c, m);
                    }
                    self.sql.push(')');
                }
                self.sql.push(')');
            }
            Match::Has {
                source_type,
                reference_param,
                criterion: inner,
            } => {
                let prefix = format!("{rt}/");
                self.push("c.res_id IN (SELECT substr(i.value, ?) FROM search_index i WHERE i.res_type = ?", prefix.len() as i64 + 1);
                self.arg(source_type.clone());
                self.push(" AND i.param = ?", reference_param.clone());
                self.push(" AND i.value >= ?", prefix.clone());
                self.push(" AND i.value < ?", format!("{rt}0"));
                self.sql.push_str(" AND i.res_id IN (SELECT c.res_id FROM ");
                self.matching_ids_tail(source_type, inner);
                self.sql.push_str("))");
            }
            Match::Range { .. } if criterion.param == "_lastUpdated" => {
                // From the version itself: an instant, i.e. the range [t, t + 1 µs).
                self.range_condition(m, "v.last_updated_us", "(v.last_updated_us + 1)");
            }
            Match::Range { .. } => self.range_rows_condition(rt, &criterion.param, &[m]),
            _ => {
                self.sql.push_str(
                    "c.res_id IN (SELECT i.res_id FROM search_index i WHERE i.res_type = ?",
                );
                self.arg(rt.to_string());
                self.push(" AND i.param = ?", criterion.param.clone());
                self.text_condition(m);
                self.sql.push(')');
            }
        }
    }

    /// `resource_current c JOIN resource_version v ... WHERE` current `rt` resources matching
    /// `criterion` (the SELECT list is the caller's).
    fn matching_ids_tail(&mut self, rt: &str, criterion: &Criterion) {
        self.push(
            "resource_current c JOIN resource_version v ON v.seq = c.seq WHERE c.res_type = ?",
            rt.to_string(),
        );
        self.sql.push_str(" AND c.deleted = 0");
        self.site_scope();
        self.sql.push_str(" AND (");
        for (i, m) in criterion.any_of.iter().enumerate() {
            if i > 0 {
                self.sql.push_str(" OR ");
            }
            self.condition(rt, criterion, m);
        }
        self.sql.push(')');
    }

    fn text_condition(&mut self, m: &Match) {
        match m {
            Match::Token { system, code } => {
                if let Some(code) = code {
                    self.push(" AND i.value = ?", code.clone());
                }
                match system {
                    None => {}
                    Some(None) => self.sql.push_str(" AND i.system = ''"),
                    Some(Some(s)) => self.push(" AND i.system = ?", s.clone()),
                }
            }
            Match::StartsWith(prefix) => {
                self.push(" AND i.value >= ?", prefix.clone());
                self.push(" AND i.value < ?", format!("{prefix}\u{10FFFF}"));
            }
            Match::Exact(text) => {
                self.push(" AND i.value = ?", normalize_string(text));
                self.push(" AND i.system = ?", text.clone());
            }
            Match::Contains(part) => {
                let escaped = part
                    .replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_");
                self.push(" AND i.value LIKE ? ESCAPE '\\'", format!("%{escaped}%"));
            }
            Match::Reference {
                target_type: Some(t),
                id,
            } => self.push(" AND i.value = ?", format!("{t}/{id}")),
            Match::Reference {
                target_type: None,
                id,
            } => self.push(" AND i.value GLOB ?", format!("*/{}", glob_literal(id))),
            Match::Uri(u) => self.push(" AND i.value = ?", u.clone()),
            Match::Id(_)
            | Match::Range { .. }
            | Match::Missing(_)
            | Match::Not(_)
            | Match::Chain { .. }
            | Match::AnyOf(_)
            | Match::Has { .. } => {}
        }
    }

    /// `c.res_id IN` the resources with one `param` row that satisfies every match of `group`
    /// (ANDed range criteria of one parameter are evaluated on the same value). Short rows are
    /// bounded on `low` so the lookup index reads one range; long rows come from their own
    /// index.
    fn range_rows_condition(&mut self, rt: &str, param: &str, group: &[&Match]) {
        let (mut lb, mut ub) = (f64::MIN, f64::MAX);
        for m in group {
            let (l, u) = short_row_bounds(m);
            lb = lb.max(l);
            ub = ub.min(u);
        }
        self.sql.push_str("c.res_id IN (");
        for long in [false, true] {
            if long {
                self.sql.push_str(" UNION ALL ");
            }
            // The planner would otherwise scan the lookup index for the few long rows.
            let table = if long {
                "search_range r INDEXED BY search_range_long"
            } else {
                "search_range r"
            };
            self.push(
                &format!("SELECT r.res_id FROM {table} WHERE r.res_type = ?"),
                rt.to_string(),
            );
            self.push(" AND r.param = ?", param.to_string());
            let token = group.iter().find_map(|m| match m {
                Match::Range { token: Some(t), .. } => Some(t.clone()),
                _ => None,
            });
            match &token {
                Some((system, code)) => {
                    self.push(" AND r.token_code = ?", code.clone());
                    if let Some(s) = system {
                        self.push(" AND r.token_system = ?", s.clone());
                    }
                }
                None => self.sql.push_str(" AND r.token_code = ''"),
            }
            if long {
                self.sql.push_str(" AND r.long = 1");
            } else {
                // Long rows may come back from both branches: harmless in an IN list, and it keeps
                // this branch inside the covering index.
                self.sql
                    .push_str(&format!(" AND r.low >= {lb:?} AND r.low <= {ub:?}"));
            }
            for m in group {
                if let Match::Range {
                    unit_system,
                    unit_code,
                    ..
                } = m
                {
                    if let Some(u) = unit_code {
                        self.push(" AND r.unit_code = ?", u.clone());
                    }
                    if let Some(s) = unit_system {
                        self.push(" AND r.unit_system = ?", s.clone());
                    }
                }
                self.sql.push_str(" AND ");
                self.range_condition(m, "r.low", "r.high");
            }
        }
        self.sql.push(')');
    }

    /// The comparison of an indexed range `[lo, hi)` (dates) or value (numbers) with the search
    /// value, per the prefix rules of FHIR R4 search.
    fn range_condition(&mut self, m: &Match, lo: &str, hi: &str) {
        let Match::Range {
            kind,
            prefix,
            value,
            low,
            high,
            ..
        } = m
        else {
            return;
        };
        let (pl, ph, pv) = (*low, *high, *value);
        match kind {
            RangeKind::Date => match prefix {
                Prefix::Eq => self
                    .sql
                    .push_str(&format!("({lo} >= {pl:?} AND {hi} <= {ph:?})")),
                Prefix::Ne => self
                    .sql
                    .push_str(&format!("NOT ({lo} >= {pl:?} AND {hi} <= {ph:?})")),
                Prefix::Gt => self.sql.push_str(&format!("{hi} > {ph:?}")),
                Prefix::Lt => self.sql.push_str(&format!("{lo} < {pl:?}")),
                Prefix::Ge => self.sql.push_str(&format!(
                    "({hi} > {ph:?} OR ({lo} >= {pl:?} AND {hi} <= {ph:?}))"
                )),
                Prefix::Le => self.sql.push_str(&format!(
                    "({lo} < {pl:?} OR ({lo} >= {pl:?} AND {hi} <= {ph:?}))"
                )),
                Prefix::Sa => self.sql.push_str(&format!("{lo} >= {ph:?}")),
                Prefix::Eb => self.sql.push_str(&format!("{hi} <= {pl:?}")),
                Prefix::Ap => {
                    // 10% of the distance from now, as the specification suggests.
                    let now =
                        (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as f64;
                    let d = ((now - pl).abs() * 0.1).max(ph - pl);
                    self.sql
                        .push_str(&format!("({lo} < {:?} AND {hi} > {:?})", ph + d, pl - d));
                }
            },
            RangeKind::Number => match prefix {
                Prefix::Eq => self
                    .sql
                    .push_str(&format!("({lo} >= {pl:?} AND {hi} < {ph:?})")),
                Prefix::Ne => self
                    .sql
                    .push_str(&format!("NOT ({lo} >= {pl:?} AND {hi} < {ph:?})")),
                Prefix::Gt | Prefix::Sa => self.sql.push_str(&format!("{hi} > {pv:?}")),
                Prefix::Lt | Prefix::Eb => self.sql.push_str(&format!("{lo} < {pv:?}")),
                Prefix::Ge => self.sql.push_str(&format!("{hi} >= {pv:?}")),
                Prefix::Le => self.sql.push_str(&format!("{lo} <= {pv:?}")),
                Prefix::Ap => {
                    let d = (pv.abs() * 0.1).max(ph - pl);
                    self.sql
                        .push_str(&format!("({lo} <= {:?} AND {hi} >= {:?})", pv + d, pv - d));
                }
            },
        }
    }
}

fn sort_value(row: &Row<'_>, i: usize) -> rusqlite::Result<SortValue> {
    use rusqlite::types::ValueRef;
    Ok(match row.get_ref(i)? {
        ValueRef::Null => SortValue::Null,
        ValueRef::Integer(n) => SortValue::Number(n as f64),
        ValueRef::Real(f) => SortValue::Number(f),
        ValueRef::Text(t) | ValueRef::Blob(t) => {
            SortValue::Text(String::from_utf8_lossy(t).into_owned())
        }
    })
}

/// The queries that deliver a page, run in order until the page is full. A search with no
/// criteria sorted by one date, number or quantity parameter reads the range index in order
/// (rows with a value), then the resources without one; anything else is one query.
fn search_phases(
    sites: Option<&[String]>,
    resource_type: &str,
    request: &SearchRequest,
    after: Option<&Cursor>,
    limit: usize,
) -> Vec<(String, Vec<SqlValue>)> {
    let fast = match request.sort.as_slice() {
        [key] => {
            request.criteria.is_empty()
                && key.param != "_lastUpdated"
                && matches!(
                    key.kind,
                    SearchParamKind::Date | SearchParamKind::Number | SearchParamKind::Quantity
                )
        }
        _ => false,
    };
    if !fast {
        return vec![sorted_search_sql(
            sites,
            resource_type,
            request,
            after,
            limit,
        )];
    }
    let key = &request.sort[0];
    let (order, op) = if key.descending {
        ("DESC", "<")
    } else {
        ("ASC", ">")
    };
    let mut phases = Vec::new();
    let after_value = after.map(|c| c.keys.first().cloned().unwrap_or(SortValue::Null));
    if !matches!(after_value, Some(SortValue::Null)) {
        // Each resource once, at its first row in this order (its MIN or MAX value).
        let mut sql = format!(
            "SELECT {VERSION_COLUMNS}, r.low AS k0 FROM search_range r \
             JOIN resource_current c ON c.res_type = r.res_type AND c.res_id = r.res_id JOIN resource_version v ON v.seq = c.seq \
             WHERE r.res_type = ? AND r.param = ? AND r.token_code = '' AND c.deleted = 0 \
             AND r.rowid = (SELECT r2.rowid FROM search_range r2 INDEXED BY search_range_owner WHERE r2.res_type = r.res_type AND r2.res_id = r.res_id \
             AND r2.param = r.param AND r2.token_code = '' ORDER BY r2.low {order}, r2.rowid LIMIT 1)"
        );
        let mut args: Vec<SqlValue> =
            vec![resource_type.to_string().into(), key.param.clone().into()];
        push_site_scope(&mut sql, &mut args, sites, "c.site");
        if let (Some(SortValue::Number(k)), Some(cursor)) = (&after_value, after) {
            sql.push_str(&format!(
                " AND (r.low {op} ? OR (r.low = ? AND c.res_id > ?))"
            ));
            args.push((*k).into());
            args.push((*k).into());
            args.push(cursor.id.clone().into());
        }
        sql.push_str(&format!(" ORDER BY r.low {order}, c.res_id LIMIT ?"));
        args.push((limit as i64).into());
        phases.push((sql, args));
    }
    let mut sql = format!(
        "SELECT {VERSION_COLUMNS}, NULL AS k0 FROM resource_current c JOIN resource_version v ON v.seq = c.seq \
         WHERE c.res_type = ? AND c.deleted = 0 \
         AND c.res_id NOT IN (SELECT res_id FROM search_range WHERE res_type = ? AND param = ? AND token_code = '')"
    );
    let mut args: Vec<SqlValue> = vec![
        resource_type.to_string().into(),
        resource_type.to_string().into(),
        key.param.clone().into(),
    ];
    push_site_scope(&mut sql, &mut args, sites, "c.site");
    if let (Some(SortValue::Null), Some(cursor)) = (&after_value, after) {
        sql.push_str(" AND c.res_id > ?");
        args.push(cursor.id.clone().into());
    }
    sql.push_str(" ORDER BY c.res_id LIMIT ?");
    args.push((limit as i64).into());
    phases.push((sql, args));
    phases
}

/// A page query in `_sort` order, then by id, starting after `after`. Resources without a
/// value for a key sort last in either direction.
fn sorted_search_sql(
    sites: Option<&[String]>,
    resource_type: &str,
    request: &SearchRequest,
    after: Option<&Cursor>,
    limit: usize,
) -> (String, Vec<SqlValue>) {
    if request.sort.is_empty() {
        return search_sql(
            sites,
            resource_type,
            request,
            after.map(|c| c.id.as_str()),
            Some(limit),
            VERSION_COLUMNS,
        );
    }
    let mut key_exprs = String::new();
    let mut key_args: Vec<SqlValue> = Vec::new();
    for (k, key) in request.sort.iter().enumerate() {
        let agg = if key.descending { "MAX" } else { "MIN" };
        let expr = match (key.param.as_str(), key.kind) {
            ("_id", _) => "c.res_id".to_string(),
            ("_lastUpdated", _) => "v.last_updated_us".to_string(),
            (_, SearchParamKind::Date | SearchParamKind::Number | SearchParamKind::Quantity) => {
                key_args.push(key.param.clone().into());
                format!("(SELECT {agg}(r.low) FROM search_range r WHERE r.res_type = c.res_type AND r.res_id = c.res_id AND r.param = ?)")
            }
            _ => {
                key_args.push(key.param.clone().into());
                format!("(SELECT {agg}(i.value) FROM search_index i WHERE i.res_type = c.res_type AND i.res_id = c.res_id AND i.param = ?)")
            }
        };
        key_exprs.push_str(&format!(", {expr} AS k{k}"));
    }
    let (inner, inner_args) = search_sql(
        sites,
        resource_type,
        request,
        None,
        None,
        &format!("{VERSION_COLUMNS}{key_exprs}"),
    );
    // The key sub-selects come before the WHERE clause's placeholders.
    let mut args = key_args;
    args.extend(inner_args);
    let keys: Vec<String> = (0..request.sort.len()).map(|k| format!("k{k}")).collect();
    let mut sql = format!("SELECT * FROM ({inner}) AS m");
    if let Some(cursor) = after {
        sql.push_str(" WHERE ");
        cursor_condition(&mut sql, &mut args, &request.sort, &keys, cursor, 0);
    }
    sql.push_str(" ORDER BY ");
    for (k, key) in request.sort.iter().enumerate() {
        sql.push_str(&format!(
            "(k{k} IS NULL), k{k} {}, ",
            if key.descending { "DESC" } else { "ASC" }
        ));
    }
    sql.push_str("res_id LIMIT ?");
    args.push((limit as i64).into());
    (sql, args)
}

/// Rows after the cursor in (keys..., id) order, nulls last.
fn cursor_condition(
    sql: &mut String,
    args: &mut Vec<SqlValue>,
    sort: &[SortKey],
    keys: &[String],
    cursor: &Cursor,
    j: usize,
) {
    if j == sort.len() {
        sql.push_str("res_id > ?");
        args.push(cursor.id.clone().into());
        return;
    }
    let k = &keys[j];
    let value: Option<SqlValue> = match cursor.keys.get(j) {
        Some(SortValue::Number(n)) => Some((*n).into()),
        Some(SortValue::Text(t)) => Some(t.clone().into()),
        _ => None,
    };
    match value {
        // After a row without a value only rows without a value remain.
        None => {
            sql.push_str(&format!("({k} IS NULL AND ("));
            cursor_condition(sql, args, sort, keys, cursor, j + 1);
            sql.push_str("))");
        }
        Some(v) => {
            let op = if sort[j].descending { "<" } else { ">" };
            sql.push_str(&format!("({k} IS NULL OR {k} {op} ? OR ({k} = ? AND ("));
            args.push(v.clone());
            args.push(v);
            cursor_condition(sql, args, sort, keys, cursor, j + 1);
            sql.push_str(")))");
        }
    }
}

fn history_page(
    conn: &Connection,
    sites: Option<&[String]>,
    q: &HistoryQuery,
) -> Result<HistoryPage, StorageError> {
    // One read transaction: the snapshot bound and the page come from the same snapshot.
    conn.execute_batch("BEGIN")?;
    let result = (|| {
        let max_seq: i64 = conn.query_row(
            "SELECT COALESCE(MAX(seq), 0) FROM resource_version",
            [],
            |r| r.get(0),
        )?;
        let snapshot = q.snapshot_seq.unwrap_or(max_seq).min(max_seq);
        let mut sql = format!("SELECT {VERSION_COLUMNS} FROM resource_version v WHERE v.seq <= ?");
        let mut args: Vec<SqlValue> = vec![snapshot.into()];
        push_site_scope(&mut sql, &mut args, sites, "v.site");
        match &q.scope {
            HistoryScope::System => {}
            HistoryScope::Type(t) => {
                sql.push_str(" AND v.res_type = ?");
                args.push(t.clone().into());
            }
            HistoryScope::Instance(t, id) => {
                sql.push_str(" AND v.res_type = ? AND v.res_id = ?");
                args.push(t.clone().into());
                args.push(id.clone().into());
            }
        }
        if let Some(since) = q.since_us {
            sql.push_str(" AND v.last_updated_us >= ?");
            args.push(since.into());
        }
        if let Some(at) = q.at_or_before_us {
            sql.push_str(" AND v.last_updated_us <= ?");
            args.push(at.into());
        }
        let (cmp, order) = match q.order {
            HistoryOrder::NewestFirst => ("<", "DESC"),
            HistoryOrder::OldestFirst => (">", "ASC"),
        };
        if let Some(after) = q.after_seq {
            sql.push_str(&format!(" AND v.seq {cmp} ?"));
            args.push(after.into());
        }
        sql.push_str(&format!(" ORDER BY v.seq {order} LIMIT ?"));
        args.push((q.count as i64 + 1).into());
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut versions = stmt
            .query_map(params_from_iter(args), version_from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        let has_more = versions.len() > q.count;
        versions.truncate(q.count);
        Ok::<_, StorageError>(HistoryPage {
            versions,
            snapshot_seq: snapshot,
            has_more,
        })
    })();
    let _ = conn.execute_batch("COMMIT");
    result
}

#[async_trait]
impl ResourceStore for SqliteStore {
    async fn read(
        &self,
        ctx: &AccessContext,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<StoredVersion>, StorageError> {
        // A point read by primary key takes microseconds: run it inline rather than hand it
        // to another thread.
        let v = self.readers.with(|c| read_current(c, resource_type, id))?;
        Ok(v.filter(|v| ctx.sites.sees(v.site.as_deref())))
    }

    async fn vread(
        &self,
        ctx: &AccessContext,
        resource_type: &str,
        id: &str,
        version: i64,
    ) -> Result<Option<StoredVersion>, StorageError> {
        let v = self
            .readers
            .with(|c| read_version(c, resource_type, id, version))?;
        Ok(v.filter(|v| ctx.sites.sees(v.site.as_deref())))
    }

    async fn history(
        &self,
        ctx: &AccessContext,
        q: &HistoryQuery,
    ) -> Result<HistoryPage, StorageError> {
        let q = q.clone();
        let sites = limited(ctx).map(<[String]>::to_vec);
        self.blocking(move |c| history_page(c, sites.as_deref(), &q))
            .await
    }

    async fn search(
        &self,
        ctx: &AccessContext,
        resource_type: &str,
        request: &SearchRequest,
        after: Option<&Cursor>,
        count: usize,
    ) -> Result<SearchPage, StorageError> {
        if count == 0 {
            return Ok(SearchPage {
                versions: Vec::new(),
                next: None,
            });
        }
        let phases = search_phases(limited(ctx), resource_type, request, after, count + 1);
        let keys = request.sort.len();
        self.blocking(move |c| {
            let mut versions = Vec::new();
            let mut last_keys = Vec::new();
            for (sql, args) in phases {
                let mut stmt = c.prepare_cached(&sql)?;
                let mut rows = stmt.query(params_from_iter(args))?;
                while let Some(row) = rows.next()? {
                    if versions.len() == count {
                        // One more row exists: the page ends at the previous one.
                        let id = versions
                            .last()
                            .map(|v: &StoredVersion| v.id.clone())
                            .unwrap_or_default();
                        return Ok(SearchPage {
                            next: Some(Cursor {
                                keys: std::mem::take(&mut last_keys),
                                id,
                            }),
                            versions,
                        });
                    }
                    versions.push(version_from_row(row)?);
                    last_keys = (0..keys)
                        .map(|k| sort_value(row, VERSION_COLUMN_COUNT + k))
                        .collect::<Result<Vec<_>, _>>()?;
                }
            }
            Ok(SearchPage {
                versions,
                next: None,
            })
        })
        .await
    }

    async fn count(
        &self,
        ctx: &AccessContext,
        resource_type: &str,
        request: &SearchRequest,
    ) -> Result<u64, StorageError> {
        let (sql, args) = search_sql(limited(ctx), resource_type, request, None, None, "COUNT(*)");
        self.blocking(move |c| {
            let n: i64 = c
                .prepare_cached(&sql)?
                .query_row(params_from_iter(args), |r| r.get(0))?;
            Ok(n.max(0) as u64)
        })
        .await
    }

    async fn current_page(
        &self,
        ctx: &AccessContext,
        after: Option<(String, String)>,
        limit: usize,
    ) -> Result<Vec<StoredVersion>, StorageError> {
        let sites = ctx.sites.clone();
        self.blocking(move |c| {
            let (t, i) = after.unwrap_or_default();
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {VERSION_COLUMNS} FROM resource_current c JOIN resource_version v ON v.seq = c.seq \
                 WHERE c.deleted = 0 AND (c.res_type > ?1 OR (c.res_type = ?1 AND c.res_id > ?2)) ORDER BY c.res_type, c.res_id LIMIT ?3"
            ))?;
            let rows = stmt.query_map(params![t, i, limit as i64], version_from_row)?.collect::<Result<Vec<_>, _>>()?;
            // A page may come back short for a limited caller; callers page until empty.
            Ok(rows.into_iter().filter(|v| sites.sees(v.site.as_deref())).collect())
        })
        .await
    }

    async fn last_seq(&self, _ctx: &AccessContext) -> Result<i64, StorageError> {
        self.blocking(|c| {
            Ok(c.query_row(
                "SELECT COALESCE(MAX(seq), 0) FROM resource_version",
                [],
                |r| r.get(0),
            )?)
        })
        .await
    }

    async fn snapshot_page(
        &self,
        ctx: &AccessContext,
        resource_type: &str,
        as_of: i64,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<StoredVersion>, StorageError> {
        let rt = resource_type.to_string();
        let sites = ctx.sites.clone();
        self.blocking(move |c| {
            // Page over the current versions by id (one query); a resource changed after
            // `as_of` is read at its newest version up to `as_of` (few: only those written
            // while the export runs).
            let mut cur = c.prepare_cached(&format!(
                "SELECT {VERSION_COLUMNS} FROM resource_current c JOIN resource_version v ON v.seq = c.seq \
                 WHERE c.res_type = ?1 AND c.res_id > ?2 ORDER BY c.res_id LIMIT ?3"
            ))?;
            let mut older = c.prepare_cached(&format!(
                "SELECT {VERSION_COLUMNS} FROM resource_version v WHERE v.res_type = ?1 AND v.res_id = ?2 AND v.seq <= ?3 ORDER BY v.version DESC LIMIT 1"
            ))?;
            let mut out = Vec::new();
            let mut after = after.unwrap_or_default();
            // Keep reading pages until `limit` snapshot rows are found or the type ends.
            loop {
                let page: Vec<StoredVersion> = cur
                    .query_map(params![rt, after, limit as i64], version_from_row)?
                    .collect::<Result<_, _>>()?;
                let Some(last) = page.last().map(|v| v.id.clone()) else { break };
                for v in page {
                    let v = if v.seq <= as_of {
                        Some(v)
                    } else {
                        older.query_row(params![rt, v.id, as_of], version_from_row).optional()?
                    };
                    if let Some(v) = v.filter(|v| !v.deleted && sites.sees(v.site.as_deref())) {
                        out.push(v);
                        if out.len() == limit {
                            return Ok(out);
                        }
                    }
                }
                after = last;
            }
            Ok(out)
        })
        .await
    }

    async fn index_values(
        &self,
        _ctx: &AccessContext,
        resource_type: &str,
        param: &str,
        ids: &[String],
    ) -> Result<Vec<(String, String)>, StorageError> {
        let (rt, param, ids) = (resource_type.to_string(), param.to_string(), ids.to_vec());
        self.blocking(move |c| {
            let mut out = Vec::new();
            for chunk in ids.chunks(500) {
                let marks = vec!["?"; chunk.len()].join(",");
                let sql = format!("SELECT res_id, value FROM search_index INDEXED BY search_index_owner WHERE res_type = ? AND res_id IN ({marks}) AND param = ?");
                let mut args: Vec<SqlValue> = vec![rt.clone().into()];
                args.extend(chunk.iter().map(|i| SqlValue::from(i.clone())));
                args.push(param.clone().into());
                let mut stmt = c.prepare_cached(&sql)?;
                let rows = stmt.query_map(params_from_iter(args), |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
                for row in rows {
                    out.push(row?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn audit(&self, record: AuditRecord) -> Result<(), StorageError> {
        let queued = {
            let mut p = self
                .pending_audit
                .0
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            p.push(record);
            p.len()
        };
        // An empty job makes the writer commit, and every commit writes the queue. The first
        // event queued sends one after AUDIT_FLUSH_DELAY (unless a write commits first), so that
        // a stream of reads costs a few commits a second rather than one per read; a long queue
        // waits for room in the writer's channel, which slows its producers.
        let nudge = || -> WriteJob {
            Box::new(|_| {
                Box::pin(async {
                    JobOutcome {
                        keep: true,
                        finish: Box::new(|_| {}),
                    }
                })
            })
        };
        if queued >= MAX_PENDING_AUDIT {
            self.jobs
                .send(nudge())
                .await
                .map_err(|_| StorageError::WriterGone)?;
        } else if queued == 1 {
            let jobs = self.jobs.clone();
            tokio::spawn(async move {
                tokio::time::sleep(AUDIT_FLUSH_DELAY).await;
                let _ = jobs.send(nudge()).await;
            });
        }
        Ok(())
    }

    async fn job(&self, id: &str) -> Result<Option<String>, StorageError> {
        let id = id.to_string();
        self.blocking(move |c| {
            Ok(c.prepare_cached("SELECT state FROM job WHERE id = ?1")?
                .query_row(params![id], |r| r.get(0))
                .optional()?)
        })
        .await
    }

    async fn jobs(&self) -> Result<Vec<(String, String)>, StorageError> {
        self.blocking(|c| {
            let mut stmt = c.prepare_cached("SELECT id, state FROM job ORDER BY id")?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn audit_read(
        &self,
        ctx: &AccessContext,
        seq: i64,
    ) -> Result<Option<StoredAudit>, StorageError> {
        let sites = ctx.sites.clone();
        self.blocking(move |c| {
            let a = c
                .prepare_cached(&format!(
                    "SELECT {AUDIT_COLUMNS} FROM audit_event WHERE seq = ?1"
                ))?
                .query_row(params![seq], audit_from_row)
                .optional()?;
            Ok(a.filter(|a| sites.sees(a.site.as_deref())))
        })
        .await
    }

    async fn audit_search(
        &self,
        ctx: &AccessContext,
        q: &AuditQuery,
    ) -> Result<Vec<StoredAudit>, StorageError> {
        let q = q.clone();
        let sites = limited(ctx).map(<[String]>::to_vec);
        self.blocking(move |c| {
            let mut sql = format!("SELECT {AUDIT_COLUMNS} FROM audit_event a WHERE a.seq > ?");
            let mut args: Vec<SqlValue> = vec![q.after_seq.unwrap_or(0).into()];
            push_site_scope(&mut sql, &mut args, sites.as_deref(), "a.site");
            if let Some(e) = &q.entity {
                sql.push_str(" AND a.seq IN (SELECT seq FROM audit_entity WHERE entity = ?)");
                args.push(e.clone().into());
            }
            if let Some(t) = q.since_us {
                sql.push_str(" AND a.recorded_us >= ?");
                args.push(t.into());
            }
            sql.push_str(" ORDER BY a.seq LIMIT ?");
            args.push((q.count as i64).into());
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt
                .query_map(params_from_iter(args), audit_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn submit(&self, _ctx: &AccessContext, job: WriteJob) -> Result<(), StorageError> {
        self.jobs
            .send(job)
            .await
            .map_err(|_| StorageError::WriterGone)
    }

    async fn is_ready(&self) -> bool {
        self.readers
            .with(|c| Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?))
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::write;
    use trialbridge_fhir::index::extract;

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(SqliteOptions {
            path: dir.path().join("t.db"),
            readers: 2,
        })
        .await
        .unwrap();
        (dir, s)
    }

    async fn put(
        s: &SqliteStore,
        t: &'static str,
        id: &str,
        body: serde_json::Value,
    ) -> Result<StoredVersion, StorageError> {
        put_at(s, None, t, id, body).await
    }

    fn record(n: usize) -> AuditRecord {
        AuditRecord {
            recorded_us: now_us(),
            site: None,
            entities: vec![],
            body: format!("{{\"n\":{n}}}"),
        }
    }

    async fn put_at(
        s: &SqliteStore,
        site: Option<&'static str>,
        t: &'static str,
        id: &str,
        body: serde_json::Value,
    ) -> Result<StoredVersion, StorageError> {
        let id = id.to_string();
        write(s, &AccessContext::system("test"), move |txn| {
            Box::pin(async move {
                let index = extract(t, &body);
                let text = body.to_string();
                let render = move |_v: i64, _t: &str| text.clone();
                let v = txn
                    .append(NewVersion {
                        resource_type: t,
                        id: &id,
                        deleted: false,
                        index: &index,
                        body: &render,
                        site,
                    })
                    .await?;
                txn.audit(record(0)).await?;
                Ok(v)
            })
        })
        .await
    }

    fn site_ctx(sites: &[&str]) -> AccessContext {
        AccessContext {
            study: None,
            sites: SiteScope::Only(sites.iter().map(|s| s.to_string()).collect()),
            role: crate::Role::Site,
            agent: "test".into(),
        }
    }

    #[tokio::test]
    async fn a_limited_context_sees_its_sites_and_shared_resources_only() {
        let (_d, s) = store().await;
        let obs = |v: &str| serde_json::json!({"resourceType":"Observation","status":"final","code":{"text":v}});
        put_at(&s, Some("site-a"), "Observation", "a", obs("x"))
            .await
            .unwrap();
        put_at(&s, Some("site-b"), "Observation", "b", obs("x"))
            .await
            .unwrap();
        put_at(&s, None, "Observation", "shared", obs("x"))
            .await
            .unwrap();
        let a = site_ctx(&["site-a"]);
        let all = AccessContext::system("test");
        assert!(s.read(&a, "Observation", "a").await.unwrap().is_some());
        assert!(s.read(&a, "Observation", "b").await.unwrap().is_none());
        assert!(s.vread(&a, "Observation", "b", 1).await.unwrap().is_none());
        assert!(s.read(&a, "Observation", "shared").await.unwrap().is_some());
        let q = trialbridge_fhir::search::parse(
            "Observation",
            &[("status".into(), "final".into())],
            true,
        )
        .unwrap();
        assert_eq!(s.count(&a, "Observation", &q).await.unwrap(), 2);
        assert_eq!(s.count(&all, "Observation", &q).await.unwrap(), 3);
        let ids: Vec<String> = s
            .search(&a, "Observation", &q, None, 10)
            .await
            .unwrap()
            .versions
            .into_iter()
            .map(|v| v.id)
            .collect();
        assert_eq!(ids, ["a", "shared"]);
        let h = s
            .history(
                &a,
                &HistoryQuery {
                    scope: HistoryScope::System,
                    since_us: None,
                    at_or_before_us: None,
                    order: HistoryOrder::OldestFirst,
                    after_seq: None,
                    snapshot_seq: None,
                    count: 10,
                },
            )
            .await
            .unwrap();
        assert_eq!(
            h.versions.iter().map(|v| v.id.as_str()).collect::<Vec<_>>(),
            ["a", "shared"]
        );
        assert!(s
            .snapshot_page(&a, "Observation", 10, None, 10)
            .await
            .unwrap()
            .iter()
            .all(|v| v.id != "b"));
        let none = site_ctx(&[]);
        assert_eq!(s.count(&none, "Observation", &q).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_change_without_an_audit_event_is_refused_and_the_trail_is_append_only() {
        let (d, s) = store().await;
        let ctx = AccessContext::system("test");
        let r = write::<_, StorageError, _>(&s, &ctx, |txn| {
            Box::pin(async move {
                let render = |_: i64, _: &str| "{}".to_string();
                txn.append(NewVersion {
                    resource_type: "Patient",
                    id: "u",
                    deleted: false,
                    index: &Default::default(),
                    body: &render,
                    site: None,
                })
                .await
            })
        })
        .await;
        assert!(matches!(r, Err(StorageError::Unaudited)), "{r:?}");
        assert!(s.read(&ctx, "Patient", "u").await.unwrap().is_none());
        for n in 1..=3 {
            s.audit(record(n)).await.unwrap();
        }
        put(
            &s,
            "Patient",
            "p",
            serde_json::json!({"resourceType":"Patient"}),
        )
        .await
        .unwrap();
        let chain = s
            .audit_search(
                &ctx,
                &AuditQuery {
                    count: 10,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let events: usize = chain
            .iter()
            .map(|a| {
                if a.batch {
                    serde_json::from_str::<Vec<serde_json::Value>>(&a.body)
                        .unwrap()
                        .len()
                } else {
                    1
                }
            })
            .sum();
        assert_eq!(events, 4, "three queued, one with the change");
        assert!(chain.len() < 4, "the queued ones share a row");
        let mut prev = AUDIT_GENESIS.to_string();
        for (i, a) in chain.iter().enumerate() {
            assert_eq!(a.seq, i as i64 + 1);
            assert_eq!(a.prev_hash, prev);
            assert_eq!(a.hash, audit_hash(&prev, a.seq, &a.body));
            prev = a.hash.clone();
        }
        let c = Connection::open(d.path().join("t.db")).unwrap();
        assert!(c
            .execute_batch("UPDATE audit_event SET body = '{}' WHERE seq = 1")
            .is_err());
        assert!(c.execute_batch("DELETE FROM audit_event").is_err());
    }

    #[tokio::test]
    async fn versions_sequence_and_index() {
        let (_d, s) = store().await;
        let ctx = AccessContext::system("test");
        let a = put(
            &s,
            "Patient",
            "a",
            serde_json::json!({"resourceType":"Patient","name":[{"family":"Müller"}]}),
        )
        .await
        .unwrap();
        let b = put(
            &s,
            "Patient",
            "a",
            serde_json::json!({"resourceType":"Patient","name":[{"family":"Meier"}]}),
        )
        .await
        .unwrap();
        assert_eq!((a.version, b.version), (1, 2));
        assert!(b.seq > a.seq && b.last_updated_us > a.last_updated_us);
        assert_eq!(
            s.read(&ctx, "Patient", "a").await.unwrap().unwrap().version,
            2
        );
        assert_eq!(
            s.vread(&ctx, "Patient", "a", 1).await.unwrap().unwrap().seq,
            a.seq
        );
        let req = trialbridge_fhir::search::parse("Patient", &[("name".into(), "mu".into())], true)
            .unwrap();
        assert!(
            s.search(&ctx, "Patient", &req, None, 10)
                .await
                .unwrap()
                .versions
                .is_empty(),
            "old index rows replaced"
        );
        let req =
            trialbridge_fhir::search::parse("Patient", &[("name".into(), "MEI".into())], true)
                .unwrap();
        assert_eq!(
            s.search(&ctx, "Patient", &req, None, 10)
                .await
                .unwrap()
                .versions
                .len(),
            1
        );
        assert_eq!(s.count(&ctx, "Patient", &req).await.unwrap(), 1);
        let h = s
            .history(
                &ctx,
                &HistoryQuery {
                    scope: HistoryScope::System,
                    since_us: None,
                    at_or_before_us: None,
                    order: HistoryOrder::OldestFirst,
                    after_seq: Some(a.seq),
                    snapshot_seq: None,
                    count: 10,
                },
            )
            .await
            .unwrap();
        assert_eq!(h.versions.len(), 1);
        assert_eq!(h.versions[0].seq, b.seq);
    }

    #[tokio::test]
    async fn failed_job_leaves_nothing_and_others_commit() {
        let (_d, s) = store().await;
        let ctx = AccessContext::system("test");
        let failing = write::<(), StorageError, _>(&s, &ctx, |txn| {
            Box::pin(async move {
                let render = |_: i64, _: &str| "{}".to_string();
                txn.append(NewVersion {
                    resource_type: "Patient",
                    id: "x",
                    deleted: false,
                    index: &Default::default(),
                    body: &render,
                    site: None,
                })
                .await?;
                Err(StorageError::Corrupt("boom".into()))
            })
        });
        let ok = put(
            &s,
            "Patient",
            "y",
            serde_json::json!({"resourceType":"Patient"}),
        );
        let (f, o) = tokio::join!(failing, ok);
        assert!(f.is_err());
        assert!(o.is_ok());
        assert!(s.read(&ctx, "Patient", "x").await.unwrap().is_none());
        assert!(s.read(&ctx, "Patient", "y").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_panicking_job_does_not_stop_the_writer() {
        let (_d, s) = store().await;
        let r = write::<(), StorageError, _>(&s, &AccessContext::system("test"), |_txn| {
            Box::pin(async move { panic!("job bug") })
        })
        .await;
        assert!(matches!(r, Err(StorageError::WriterGone)));
        assert!(put(
            &s,
            "Patient",
            "after",
            serde_json::json!({"resourceType":"Patient"})
        )
        .await
        .is_ok());
    }

    #[tokio::test]
    async fn versions_are_append_only_in_the_database() {
        let (d, s) = store().await;
        put(
            &s,
            "Patient",
            "a",
            serde_json::json!({"resourceType":"Patient"}),
        )
        .await
        .unwrap();
        let c = Connection::open(d.path().join("t.db")).unwrap();
        assert!(c
            .execute_batch("UPDATE resource_version SET body = '{}'")
            .is_err());
        assert!(c.execute_batch("DELETE FROM resource_version").is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_stays_bounded_under_continuous_writes() {
        let (d, s) = store().await;
        let s = std::sync::Arc::new(s);
        let filler = "x".repeat(4000);
        let writes = (0..4000).map(|i| {
            let (s, filler) = (s.clone(), filler.clone());
            tokio::spawn(async move {
                put(
                    &s,
                    "Patient",
                    &format!("p{i}"),
                    serde_json::json!({"resourceType":"Patient","text":{"div":filler}}),
                )
                .await
            })
        });
        for w in futures::future::join_all(writes).await {
            w.unwrap().unwrap();
        }
        // About 16 MB were written; the WAL is checkpointed and restarted along the way.
        let wal = std::fs::metadata(d.path().join("t.db-wal")).unwrap().len();
        assert!(wal < 12 * 1024 * 1024, "WAL is {wal} bytes");
    }

    #[tokio::test]
    async fn reopening_keeps_data_and_schema() {
        let dir = tempfile::tempdir().unwrap();
        let opts = SqliteOptions {
            path: dir.path().join("r.db"),
            readers: 1,
        };
        {
            let s = SqliteStore::open(opts.clone()).await.unwrap();
            put(
                &s,
                "Patient",
                "keep",
                serde_json::json!({"resourceType":"Patient"}),
            )
            .await
            .unwrap();
        }
        let s = SqliteStore::open(opts).await.unwrap();
        assert!(s
            .read(&AccessContext::system("test"), "Patient", "keep")
            .await
            .unwrap()
            .is_some());
    }
}
