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
//!
//! A resource's old index rows are found again by extracting them from its old body, not
//! through an index by owner (see `write_index` and migration 0007); the extraction's
//! generation is recorded, and the index rebuilt at open when it differs
//! (`ensure_index_generation`).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use rusqlite::{params, params_from_iter, Connection, OpenFlags, OptionalExtension, Row};
use tokio::sync::mpsc;

use trialbridge_fhir::index::{
    index_key, IndexEntry, RangeEntry, INDEX_GENERATION, INDEX_KEY_MAX_BYTES,
};
use trialbridge_fhir::search::{Cursor, SearchRequest, SortValue};

use crate::checkpoint::Checkpointer;
use crate::sql::{
    audit_search_sql, history_sql, instant_text, limited, now_us, search_phases, search_sql, Arg,
    Dialect, AUDIT_COLUMNS, HEAD_SEQ, SHORT_SPAN, VERSION_COLUMNS, VERSION_COLUMN_COUNT,
};
use crate::writer::{gather, report, settle, PendingAudit, Settlement, MAX_BATCH};
use crate::{
    audit_entities_of, audit_hash_v2, AccessContext, AuditQuery, AuditRecord, AuditRow,
    HistoryPage, HistoryQuery, Index, JobFinish, NewVersion, ResourceStore, SearchPage, SpaceUse,
    StorageError, StoreSpace, StoredAudit, StoredVersion, WriteJob, WriteTxn, AUDIT_GENESIS,
};

/// Schema migrations, applied in order; `PRAGMA user_version` records the last one applied.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/sqlite/0001_versions.sql"),
    include_str!("../migrations/sqlite/0002_audit_and_sites.sql"),
    include_str!("../migrations/sqlite/0003_jobs.sql"),
    include_str!("../migrations/sqlite/0004_trace_context.sql"),
    include_str!("../migrations/sqlite/0005_audit_hash_v2.sql"),
    include_str!("../migrations/sqlite/0006_index_keys_cut.sql"),
    include_str!("../migrations/sqlite/0007_index_by_owner_dropped.sql"),
];

/// The migration that cuts index keys written before they were cut (see its SQL file).
const INDEX_KEYS_CUT: i64 = 6;

/// Where and how to open the SQLite database.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// The database file.
    pub path: PathBuf,
    /// Read connections kept open.
    pub readers: usize,
    /// How long one read may run before it is interrupted ([`StorageError::is_too_costly`]).
    pub statement_timeout: Duration,
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
            statement_timeout: crate::DEFAULT_STATEMENT_TIMEOUT,
        })
    }
}

/// The SQLite implementation of [`ResourceStore`].
pub struct SqliteStore {
    readers: Arc<ReaderPool>,
    jobs: mpsc::Sender<WriteJob>,
    /// Audit events waiting for the writer's next commit.
    pending_audit: Arc<PendingAudit>,
}

/// Read-only connections, reused.
struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    keep: usize,
    /// The budget of one read: SQLite's progress handler interrupts a read past it, as
    /// PostgreSQL's `statement_timeout` cancels a statement.
    timeout: Duration,
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
        let deadline = std::time::Instant::now() + self.timeout;
        // Checked every 10,000 virtual-machine steps: a clock read per tens of microseconds.
        conn.progress_handler(10_000, Some(move || std::time::Instant::now() > deadline))?;
        let result = f(&conn);
        conn.progress_handler(0, None::<fn() -> bool>)?;
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
    // The writer's savepoint journals (one savepoint per job, one per statement) go to a file
    // once they pass 64 kB: an in-memory journal is a chunk list that each statement's release
    // walks from its start, so a large job (a `load` batch touching thousands of pages) got
    // slower with every page it touched and with the size of the table (54 % of a load's CPU
    // went there). Readers keep their sorts in memory.
    conn.pragma_update(
        None,
        "temp_store",
        if read_only { "MEMORY" } else { "FILE" },
    )?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Cuts the index keys longer than [`INDEX_KEY_MAX_BYTES`] as the indexer now does; rows that
/// become equal are kept once.
fn cut_long_index_keys(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    let max = INDEX_KEY_MAX_BYTES as i64;
    let long: Vec<(String, String, String, String, String)> = tx
        .prepare(
            "SELECT res_type, param, value, system, res_id FROM search_index \
             WHERE length(CAST(value AS BLOB)) > ?1 OR length(CAST(system AS BLOB)) > ?1",
        )?
        .query_map([max], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<Result<_, _>>()?;
    for (res_type, param, value, system, res_id) in long {
        tx.execute(
            "DELETE FROM search_index WHERE res_type = ?1 AND param = ?2 AND value = ?3 AND system = ?4 AND res_id = ?5",
            params![res_type, param, value, system, res_id],
        )?;
        tx.execute(
            "INSERT OR IGNORE INTO search_index (res_type, param, value, system, res_id) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![res_type, param, index_key(&value), index_key(&system), res_id],
        )?;
    }
    let long: Vec<(i64, String, String)> = tx
        .prepare(
            "SELECT rowid, token_code, token_system FROM search_range \
             WHERE length(CAST(token_code AS BLOB)) > ?1 OR length(CAST(token_system AS BLOB)) > ?1",
        )?
        .query_map([max], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    for (rowid, code, system) in long {
        tx.execute(
            "UPDATE search_range SET token_code = ?2, token_system = ?3 WHERE rowid = ?1",
            params![rowid, index_key(&code), index_key(&system)],
        )?;
    }
    Ok(())
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
        if version == INDEX_KEYS_CUT {
            cut_long_index_keys(&tx)
                .map_err(|e| StorageError::Migration(format!("migration {version}: {e}")))?;
        }
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
        traceparent: row.get(9)?,
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
            ensure_index_generation(&mut conn)?;
            let checkpointer = Checkpointer::start(&path, &conn, "trialbridge-sqlite-checkpoint")?;
            Ok::<_, StorageError>((conn, checkpointer))
        })
        .await
        .map_err(|e| StorageError::Corrupt(format!("opening the database panicked: {e}")))??;
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        let pending_audit = Arc::new(PendingAudit::default());
        let pending = pending_audit.clone();
        std::thread::Builder::new()
            .name("trialbridge-sqlite-writer".into())
            .spawn(move || writer_loop(writer, rx, &pending))?;
        let readers = Arc::new(ReaderPool {
            path: options.path,
            idle: Mutex::new(Vec::new()),
            keep: options.readers.max(1),
            timeout: options.statement_timeout,
        });
        Ok(Self {
            readers,
            jobs: tx,
            pending_audit,
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

/// Runs write jobs in batches (one commit each) until the store is dropped; checkpoints the
/// WAL only after a commit's callers have their answer.
fn writer_loop(
    (mut conn, checkpointer): (Connection, Checkpointer),
    mut rx: mpsc::Receiver<WriteJob>,
    pending: &PendingAudit,
) {
    let mut batch: Vec<WriteJob> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        gather(first, &mut rx, &mut batch);
        let mut finishers = Vec::with_capacity(batch.len());
        let result = run_batch(&mut conn, &mut batch, &mut finishers, pending);
        if let Err(e) = &result {
            tracing::error!(error = %e, "write batch failed; rolling back");
            let _ = conn.execute_batch("ROLLBACK");
        }
        report(finishers, &result);
        if result.is_ok() {
            checkpointer.after_commit(&conn);
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
        trace: None,
        appended: 0,
        audited: 0,
        chain_end: None,
    };
    for job in batch.drain(..) {
        txn.conn.execute_batch("SAVEPOINT job")?;
        txn.appended = 0;
        txn.audited = 0;
        txn.trace = None;
        // Restored when the job is rolled back, with its audit rows.
        let chain_before = txn.chain_end.clone();
        // The job only awaits this transaction's synchronous calls, so it completes here. A
        // panicking job must not take the writer down: its savepoint is rolled back and its
        // caller sees the writer's error.
        let outcome =
            futures::executor::block_on(std::panic::AssertUnwindSafe(job(&mut txn)).catch_unwind());
        match settle(outcome, txn.appended, txn.audited) {
            Settlement::Keep(finish) => {
                txn.conn.execute_batch("RELEASE job")?;
                finishers.push(finish);
            }
            discarded => {
                txn.conn.execute_batch("ROLLBACK TO job; RELEASE job")?;
                txn.chain_end = chain_before;
                match discarded {
                    Settlement::Discard(finish) => finishers.push(finish),
                    Settlement::Refuse(finish, e) => finish(Err(e)),
                    Settlement::Keep(_) | Settlement::Panicked => {}
                }
            }
        }
    }
    // The queued audit events of requests that changed nothing ride along with this commit.
    flush_pending(txn.conn, pending, &mut txn.chain_end)?;
    txn.conn.execute_batch("COMMIT")?;
    Ok(())
}

struct SqliteWriteTxn<'c> {
    conn: &'c mut Connection,
    last_us: i64,
    /// The trace context of the job being run, recorded with its versions.
    trace: Option<String>,
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
    let entities = audit_entities_of(&r.entities);
    let hash = audit_hash_v2(&AuditRow {
        prev_hash: &prev,
        seq,
        recorded_us: r.recorded_us,
        site: r.site.as_deref(),
        batch,
        body: &r.body,
        entities: &entities,
    });
    conn.prepare_cached("INSERT INTO audit_event (seq, recorded_us, site, batch, body, prev_hash, hash, hash_version) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 2)")?
        .execute(params![seq, r.recorded_us, r.site, i64::from(batch), r.body, prev, hash])?;
    let mut e = conn.prepare_cached(
        "INSERT INTO audit_entity (entity, seq) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
    )?;
    for entity in &entities {
        e.execute(params![entity, seq])?;
    }
    *chain_end = Some((seq, hash));
    Ok(())
}

fn audit_from_row(row: &Row<'_>) -> rusqlite::Result<StoredAudit> {
    Ok(StoredAudit {
        seq: row.get(0)?,
        recorded_us: row.get(1)?,
        site: row.get(2)?,
        batch: row.get::<_, i64>(3)? != 0,
        body: row.get(4)?,
        prev_hash: row.get(5)?,
        hash: row.get(6)?,
        hash_version: row.get(7)?,
    })
}

/// Writes everything queued in `pending` into the chain.
fn flush_pending(
    conn: &Connection,
    pending: &PendingAudit,
    chain_end: &mut Option<(i64, String)>,
) -> Result<(), StorageError> {
    for row in pending.take_rows() {
        insert_audit(conn, chain_end, &row, true)?;
    }
    Ok(())
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

/// The index rows of a stored body, as this build extracts them: the rows a write of it
/// inserted, while the recorded index generation is this build's (see [`ensure_index_generation`]).
fn index_of_body(resource_type: &str, body: &str) -> Result<Index, StorageError> {
    let Some(rt) = trialbridge_fhir::resource_type::canonical(resource_type) else {
        return Ok(Index::default());
    };
    let value: serde_json::Value = serde_json::from_str(body).map_err(|e| {
        StorageError::Corrupt(format!(
            "the stored body of a {resource_type} is not JSON: {e}"
        ))
    })?;
    Ok(trialbridge_fhir::index::extract(rt, &value))
}

/// Adds one text row; its parameters are those of [`DELETE_TEXT_ROW`].
const INSERT_TEXT_ROW: &str =
    "INSERT INTO search_index (res_type, param, value, system, res_id) VALUES (?1, ?2, ?3, ?4, ?5)";
/// Removes one text row (a lookup of the primary key).
const DELETE_TEXT_ROW: &str = "DELETE FROM search_index WHERE res_type = ?1 AND param = ?2 AND value = ?3 AND system = ?4 AND res_id = ?5";

/// Runs `sql` ([`INSERT_TEXT_ROW`] or [`DELETE_TEXT_ROW`]) for each of `rows`.
/// The current version number of a resource (if it has one) and the index rows of its body
/// (none for a tombstone): the rows its write inserted.
fn current_index(
    conn: &Connection,
    resource_type: &str,
    id: &str,
) -> Result<(Option<i64>, Option<Index>), StorageError> {
    let current: Option<(i64, Option<String>)> = conn
        .prepare_cached("SELECT v.version, v.body FROM resource_current c JOIN resource_version v ON v.seq = c.seq WHERE c.res_type = ?1 AND c.res_id = ?2")?
        .query_row(params![resource_type, id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((version, body)) = current else {
        return Ok((None, None));
    };
    let index = body.map(|b| index_of_body(resource_type, &b)).transpose()?;
    Ok((Some(version), index))
}

fn each_text_row<'a>(
    conn: &Connection,
    sql: &str,
    resource_type: &str,
    id: &str,
    rows: impl Iterator<Item = &'a IndexEntry>,
) -> Result<(), StorageError> {
    let mut stmt = conn.prepare_cached(sql)?;
    for e in rows {
        stmt.execute(params![
            resource_type,
            e.param,
            e.value,
            e.system.as_deref().unwrap_or(""),
            id
        ])?;
    }
    Ok(())
}

fn insert_range_rows(
    conn: &Connection,
    resource_type: &str,
    id: &str,
    rows: &[RangeEntry],
) -> Result<(), StorageError> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO search_range (res_type, param, token_code, low, high, token_system, unit_system, unit_code, long, res_id) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    for r in rows {
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

/// Removes the range rows of `rows` (every copy: a range extracted twice was inserted twice).
fn delete_range_rows(
    conn: &Connection,
    resource_type: &str,
    id: &str,
    rows: &[RangeEntry],
) -> Result<(), StorageError> {
    // The lookup index's columns: the row is found in it, not by a scan.
    let mut delete = conn.prepare_cached(
        "DELETE FROM search_range WHERE res_type = ?1 AND param = ?2 AND token_code = ?3 AND low = ?4 AND high = ?5 AND res_id = ?6",
    )?;
    for r in rows {
        delete.execute(params![
            resource_type,
            r.param,
            r.token_code,
            r.low,
            r.high,
            id
        ])?;
    }
    Ok(())
}

/// Moves the index rows of one resource from `old` (the rows its previous body has, if any)
/// to `new` (none for a tombstone). Token and string rows that both have stay in place.
fn write_index(
    conn: &Connection,
    resource_type: &str,
    id: &str,
    old: Option<&Index>,
    new: Option<&Index>,
) -> Result<(), StorageError> {
    let empty = Index::default();
    let (old, new) = (old.unwrap_or(&empty), new.unwrap_or(&empty));
    // Both lists are sorted and free of duplicates (see `extract`).
    let kept = |e: &IndexEntry, other: &[IndexEntry]| other.binary_search(e).is_ok();
    each_text_row(
        conn,
        DELETE_TEXT_ROW,
        resource_type,
        id,
        old.text.iter().filter(|e| !kept(e, &new.text)),
    )?;
    delete_range_rows(conn, resource_type, id, &old.ranges)?;
    each_text_row(
        conn,
        INSERT_TEXT_ROW,
        resource_type,
        id,
        new.text.iter().filter(|e| !kept(e, &old.text)),
    )?;
    insert_range_rows(conn, resource_type, id, &new.ranges)
}

/// Rebuilds the search index from the current bodies when the recorded index generation is
/// not this build's (or is missing): rows another extraction wrote cannot be found again from
/// the bodies. Runs before the store serves; in commits of [`REBUILD_BATCH`] resources, after
/// one that empties the index and forgets the generation, so that a rebuild cut short is
/// started again at the next open.
fn ensure_index_generation(conn: &mut Connection) -> Result<(), StorageError> {
    let recorded: Option<i64> = conn
        .query_row("SELECT generation FROM index_state", [], |r| r.get(0))
        .optional()?;
    if recorded == Some(INDEX_GENERATION) {
        return Ok(());
    }
    let any: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM resource_current WHERE deleted = 0)",
        [],
        |r| r.get(0),
    )?;
    if any {
        tracing::warn!(
            recorded,
            generation = INDEX_GENERATION,
            "the search index was written by another extraction; rebuilding it from the current bodies"
        );
        let tx = conn.transaction()?;
        tx.execute_batch(
            "DELETE FROM index_state; DELETE FROM search_index; DELETE FROM search_range;",
        )?;
        tx.commit()?;
        let mut after = (String::new(), String::new());
        let mut done = 0usize;
        loop {
            let tx = conn.transaction()?;
            let page: Vec<(String, String, String)> = tx
                .prepare_cached(
                    "SELECT c.res_type, c.res_id, v.body FROM resource_current c JOIN resource_version v ON v.seq = c.seq \
                     WHERE c.deleted = 0 AND (c.res_type, c.res_id) > (?1, ?2) ORDER BY c.res_type, c.res_id LIMIT ?3",
                )?
                .query_map(params![after.0, after.1, REBUILD_BATCH], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?
                .collect::<Result<_, _>>()?;
            let Some((t, id, _)) = page.last() else {
                break;
            };
            after = (t.clone(), id.clone());
            for (t, id, body) in &page {
                let index = index_of_body(t, body)?;
                write_index(&tx, t, id, None, Some(&index))?;
            }
            tx.commit()?;
            done += page.len();
            if done % 100_000 < REBUILD_BATCH as usize {
                tracing::info!(resources = done, "rebuilding the search index");
            }
        }
        tracing::info!(resources = done, "search index rebuilt");
    }
    conn.execute(
        "INSERT INTO index_state (id, generation) VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET generation = excluded.generation",
        [INDEX_GENERATION],
    )?;
    Ok(())
}

/// Resources per commit of an index rebuild.
const REBUILD_BATCH: i64 = 1000;

#[async_trait]
impl WriteTxn for SqliteWriteTxn<'_> {
    fn set_trace(&mut self, traceparent: Option<String>) {
        self.trace = traceparent;
    }

    async fn replace_index(
        &mut self,
        resource_type: &str,
        id: &str,
        index: &Index,
    ) -> Result<(), StorageError> {
        // Every row of the current body goes and every row of `index` is written (not only
        // the difference): after a restore the rows of the current body are not there yet.
        let (_, old) = current_index(self.conn, resource_type, id)?;
        write_index(self.conn, resource_type, id, old.as_ref(), None)?;
        write_index(self.conn, resource_type, id, None, Some(index))
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
            Dialect::Sqlite,
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

    async fn restore_version(&mut self, v: &StoredVersion) -> Result<(), StorageError> {
        self.conn
            .prepare_cached(
                "INSERT INTO resource_version (seq, res_type, res_id, version, last_updated, last_updated_us, deleted, body, site, traceparent) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, NULL)",
            )?
            .execute(params![v.seq, v.resource_type, v.id, v.version, v.last_updated, v.last_updated_us, i64::from(v.deleted), v.body, v.site])?;
        self.conn
            .prepare_cached(
                "INSERT INTO resource_current (res_type, res_id, seq, deleted, site) VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (res_type, res_id) DO UPDATE SET seq = excluded.seq, deleted = excluded.deleted, site = excluded.site",
            )?
            .execute(params![v.resource_type, v.id, v.seq, i64::from(v.deleted), v.site])?;
        self.last_us = self.last_us.max(v.last_updated_us);
        Ok(())
    }

    async fn restore_audit(
        &mut self,
        a: &StoredAudit,
        entities: &[String],
    ) -> Result<(), StorageError> {
        self.conn
            .prepare_cached("INSERT INTO audit_event (seq, recorded_us, site, batch, body, prev_hash, hash, hash_version) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)")?
            .execute(params![a.seq, a.recorded_us, a.site, i64::from(a.batch), a.body, a.prev_hash, a.hash, a.hash_version])?;
        let mut e = self.conn.prepare_cached(
            "INSERT INTO audit_entity (entity, seq) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        )?;
        for entity in entities {
            e.execute(params![entity, a.seq])?;
        }
        self.chain_end = Some((a.seq, a.hash.clone()));
        Ok(())
    }

    async fn append(&mut self, new: NewVersion<'_>) -> Result<StoredVersion, StorageError> {
        self.appended += 1;
        let conn = &*self.conn;
        let (previous, old_index) = current_index(conn, new.resource_type, new.id)?;
        let version = previous.unwrap_or(0) + 1;
        // lastUpdated strictly increases with seq, so `_since` never skips a late commit.
        let us = now_us().max(self.last_us + 1);
        self.last_us = us;
        let last_updated = instant_text(us)?;
        let body = (!new.deleted).then(|| (new.body)(version, &last_updated));
        let seq: i64 = conn
            .prepare_cached(
                "INSERT INTO resource_version (res_type, res_id, version, last_updated, last_updated_us, deleted, body, site, traceparent) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) RETURNING seq",
            )?
            .query_row(params![new.resource_type, new.id, version, last_updated, us, i64::from(new.deleted), body, new.site, self.trace], |r| r.get(0))?;
        conn.prepare_cached(
            "INSERT INTO resource_current (res_type, res_id, seq, deleted, site) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (res_type, res_id) DO UPDATE SET seq = excluded.seq, deleted = excluded.deleted, site = excluded.site",
        )?
        .execute(params![new.resource_type, new.id, seq, i64::from(new.deleted), new.site])?;
        write_index(
            conn,
            new.resource_type,
            new.id,
            old_index.as_ref(),
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
            traceparent: self.trace.clone(),
        })
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

fn history_page(
    conn: &Connection,
    sites: Option<&[String]>,
    q: &HistoryQuery,
) -> Result<HistoryPage, StorageError> {
    let (sql, args) = history_sql(sites, q);
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt
        .query_map(params_from_iter(args), |r| {
            Ok((version_from_row(r)?, r.get::<_, i64>(VERSION_COLUMN_COUNT)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let head = match rows.first() {
        Some((_, head)) => *head,
        None => conn.query_row(HEAD_SEQ, [], |r| r.get(0))?,
    };
    let versions = rows.into_iter().map(|(v, _)| v).collect();
    Ok(crate::sql::history_page(q, versions, head))
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
        let phases = search_phases(
            Dialect::Sqlite,
            limited(ctx),
            resource_type,
            request,
            after,
            count + 1,
        );
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
        let (sql, args) = search_sql(
            Dialect::Sqlite,
            limited(ctx),
            resource_type,
            request,
            None,
            None,
            "COUNT(*)",
        );
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
        self.blocking(|c| Ok(c.query_row(HEAD_SEQ, [], |r| r.get(0))?))
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
                // The owner index's condition, so that the planner may (and must) use it.
                let sql = format!(
                    "SELECT res_id, value FROM search_index INDEXED BY search_index_owner \
                     WHERE res_type = ? AND res_id IN ({marks}) AND param = ? AND {}",
                    Dialect::Sqlite.unmodified_param("search_index")
                );
                let mut args: Vec<Arg> = vec![rt.clone().into()];
                args.extend(chunk.iter().map(|i| Arg::from(i.clone())));
                args.push(param.clone().into());
                let mut stmt = c.prepare_cached(&sql)?;
                let rows = stmt.query_map(params_from_iter(args), |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })?;
                for row in rows {
                    out.push(row?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn audit(&self, record: AuditRecord) -> Result<(), StorageError> {
        self.pending_audit.queue(record, &self.jobs).await
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
        // Monitors read the changes of their sites' data, not other callers' access events.
        let monitor = ctx.role == crate::Role::Monitor;
        self.blocking(move |c| {
            let a = c
                .prepare_cached(&format!(
                    "SELECT {AUDIT_COLUMNS} FROM audit_event WHERE seq = ?1"
                ))?
                .query_row(params![seq], audit_from_row)
                .optional()?;
            Ok(a.filter(|a| sites.sees(a.site.as_deref()) && (!a.batch || !monitor)))
        })
        .await
    }

    async fn audit_entities(
        &self,
        from_seq: i64,
        to_seq: i64,
    ) -> Result<Vec<(i64, String)>, StorageError> {
        self.blocking(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT seq, entity FROM audit_entity WHERE seq BETWEEN ?1 AND ?2 ORDER BY seq, entity",
            )?;
            let rows = stmt
                .query_map(params![from_seq, to_seq], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
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
        let changes_only = ctx.role == crate::Role::Monitor;
        self.blocking(move |c| {
            let (sql, args) = audit_search_sql(sites.as_deref(), changes_only, &q);
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

    async fn space(&self, detail: bool) -> Result<StoreSpace, StorageError> {
        self.blocking(move |c| {
            let total: i64 = c.query_row(
                "SELECT (page_count - freelist_count) * page_size \
                 FROM pragma_page_count(), pragma_freelist_count(), pragma_page_size()",
                [],
                |r| r.get(0),
            )?;
            let resources: i64 =
                c.query_row("SELECT COUNT(*) FROM resource_current", [], |r| r.get(0))?;
            let parts = if detail {
                let mut stmt = c.prepare(
                    "SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC, 1",
                )?;
                let rows = stmt
                    .query_map([], |r| {
                        Ok(SpaceUse {
                            name: r.get(0)?,
                            bytes: r.get::<_, i64>(1)?.max(0) as u64,
                        })
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                rows
            } else {
                Vec::new()
            };
            Ok(StoreSpace {
                total: total.max(0) as u64,
                resources: resources.max(0) as u64,
                parts,
            })
        })
        .await
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
    use crate::{write, HistoryOrder, HistoryScope, SiteScope};
    use trialbridge_fhir::index::extract;

    /// A database written before index keys were cut: its long keys are cut by the migration
    /// as the indexer cuts them now, rows that become equal kept once, short ones untouched.
    #[test]
    fn the_migration_cuts_index_keys_written_before() {
        let mut conn = Connection::open_in_memory().unwrap();
        for sql in &MIGRATIONS[..INDEX_KEYS_CUT as usize - 1] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", INDEX_KEYS_CUT - 1)
            .unwrap();
        let long = format!("{}ä{}", "a".repeat(999), "b".repeat(3000));
        let longer = format!("{long}c");
        for value in [&long, &longer, &"short".to_string()] {
            conn.execute(
                "INSERT INTO search_index (res_type, param, value, system, res_id) VALUES ('Patient', 'family', ?1, ?1, 'p')",
                [value],
            )
            .unwrap();
        }
        conn.execute(
            "INSERT INTO search_range (res_type, param, token_code, low, high, res_id) VALUES ('Observation', 'code-value-quantity', ?1, 1, 1, 'o')",
            [&long],
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let keys: Vec<(String, String)> = conn
            .prepare("SELECT value, system FROM search_index ORDER BY value")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let cut = index_key(&long).to_string();
        assert_eq!(cut.len(), 999);
        assert_eq!(
            keys,
            [(cut.clone(), cut.clone()), ("short".into(), "short".into())]
        );
        let code: String = conn
            .query_row("SELECT token_code FROM search_range", [], |r| r.get(0))
            .unwrap();
        assert_eq!(code, cut);
    }

    /// The writer's savepoint journals spill to a file (its release is then a truncate, not a
    /// walk of an in-memory chunk list); readers sort in memory.
    #[test]
    fn the_writer_journals_to_a_file_and_readers_sort_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let temp_store = |c: &Connection| -> i64 {
            c.pragma_query_value(None, "temp_store", |r| r.get(0))
                .unwrap()
        };
        let writer = open_connection(&path, false).unwrap();
        assert_eq!(temp_store(&writer), 1, "FILE");
        let reader = open_connection(&path, true).unwrap();
        assert_eq!(temp_store(&reader), 2, "MEMORY");
    }

    /// SQLite's `EXPLAIN QUERY PLAN` of `sql`, one step a line.
    fn query_plan(conn: &Connection, sql: &str, args: &[Arg]) -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let plan: Vec<String> = stmt
            .query_map(rusqlite::params_from_iter(args.iter()), |r| r.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        plan.join("\n")
    }

    /// The page queries of the search suites read the lookup indexes and only the page's
    /// rows, in id order: no scan, no walk of an owner index over every row of the type, no
    /// sort of all matches (the planner has no statistics; these plans are what it picks).
    #[test]
    fn search_pages_are_planned_on_the_lookup_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open_connection(&dir.path().join("t.db"), false).unwrap();
        migrate(&mut conn).unwrap();
        for query in [
            vec![("subject", "Patient/p00123")],
            vec![("code", "http://loinc.org|8867-4")],
            vec![("date", "ge2021-01-01"), ("date", "lt2021-02-01")],
            vec![("code-value-quantity", "http://loinc.org|8867-4$gt50")],
        ] {
            let params: Vec<(String, String)> = query
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let request = trialbridge_fhir::search::parse("Observation", &params, true).unwrap();
            let (sql, args) = search_sql(
                Dialect::Sqlite,
                None,
                "Observation",
                &request,
                None,
                Some(21),
                VERSION_COLUMNS,
            );
            let plan = query_plan(&conn, &sql, &args);
            for bad in ["SCAN", "_owner", "TEMP B-TREE"] {
                assert!(!plan.contains(bad), "{query:?}: {bad}\n{plan}");
            }
        }
    }

    /// A type's history page walks the (type, seq) index in either order: no scan of the
    /// change sequence over other types' versions, no sort.
    #[test]
    fn a_type_history_page_is_planned_on_the_type_index() {
        use crate::sql::tests::observation_history;
        use crate::HistoryOrder;
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open_connection(&dir.path().join("t.db"), false).unwrap();
        migrate(&mut conn).unwrap();
        for order in [HistoryOrder::NewestFirst, HistoryOrder::OldestFirst] {
            let (sql, args) = history_sql(None, &observation_history(order, Some(10)));
            let plan = query_plan(&conn, &sql, &args);
            assert!(
                plan.contains("resource_version_type_seq"),
                "{order:?}: {plan}"
            );
            assert!(!plan.contains("TEMP B-TREE"), "{order:?}: {plan}");
        }
    }

    #[tokio::test]
    async fn space_names_every_table_and_counts_current_resources() {
        let (_dir, store) = store().await;
        for i in 0..30 {
            let p = serde_json::json!({"resourceType":"Patient","gender":"male"});
            put_at(&store, None, "Patient", &format!("p{i}"), p)
                .await
                .unwrap();
        }
        let brief = store.space(false).await.unwrap();
        assert_eq!(brief.resources, 30);
        assert!(brief.parts.is_empty());
        let full = store.space(true).await.unwrap();
        assert!(full.total > 0 && full.total == brief.total, "{full:?}");
        for table in [
            "resource_version",
            "resource_current",
            "search_index",
            "audit_event",
        ] {
            assert!(
                full.parts.iter().any(|p| p.name == table),
                "{table}: {full:?}"
            );
        }
        assert!(
            full.parts.windows(2).all(|w| w[0].bytes >= w[1].bytes),
            "largest first"
        );
    }

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(SqliteOptions {
            path: dir.path().join("t.db"),
            readers: 2,
            statement_timeout: crate::DEFAULT_STATEMENT_TIMEOUT,
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
        let entities = s.audit_entities(1, chain.len() as i64).await.unwrap();
        let mut prev = AUDIT_GENESIS.to_string();
        for (i, a) in chain.iter().enumerate() {
            assert_eq!(a.seq, i as i64 + 1);
            assert_eq!(a.prev_hash, prev);
            assert_eq!(a.hash_version, 2);
            let mine: Vec<String> = entities
                .iter()
                .filter(|(seq, _)| *seq == a.seq)
                .map(|(_, e)| e.clone())
                .collect();
            let row = AuditRow {
                prev_hash: &prev,
                seq: a.seq,
                recorded_us: a.recorded_us,
                site: a.site.as_deref(),
                batch: a.batch,
                body: &a.body,
                entities: &audit_entities_of(&mine),
            };
            assert_eq!(a.hash, audit_hash_v2(&row));
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

    /// The index rows of each resource, read by scanning both tables (no index needed).
    fn rows_of(path: &std::path::Path, t: &str, id: &str) -> (Vec<String>, Vec<String>) {
        let c = Connection::open(path).unwrap();
        let text = c
            .prepare("SELECT param || '|' || system || '|' || value FROM search_index WHERE res_type = ?1 AND res_id = ?2 ORDER BY 1")
            .unwrap()
            .query_map(params![t, id], |r| r.get(0))
            .unwrap()
            .collect::<Result<Vec<String>, _>>()
            .unwrap();
        let ranges = c
            .prepare("SELECT param || '|' || token_code || '|' || low || '|' || high || '|' || unit_code FROM search_range WHERE res_type = ?1 AND res_id = ?2 ORDER BY 1")
            .unwrap()
            .query_map(params![t, id], |r| r.get(0))
            .unwrap()
            .collect::<Result<Vec<String>, _>>()
            .unwrap();
        (text, ranges)
    }

    /// The rows `extract` gives for `body`, in the form of [`rows_of`].
    fn rows_for(t: &'static str, body: Option<&serde_json::Value>) -> (Vec<String>, Vec<String>) {
        let Some(body) = body else {
            return (vec![], vec![]);
        };
        let index = extract(t, body);
        let c = Connection::open_in_memory().unwrap();
        let mut text: Vec<String> = index
            .text
            .iter()
            .map(|e| {
                format!(
                    "{}|{}|{}",
                    e.param,
                    e.system.as_deref().unwrap_or(""),
                    e.value
                )
            })
            .collect();
        // Formatted by SQLite, as the rows read back are.
        let mut ranges: Vec<String> = index
            .ranges
            .iter()
            .map(|r| {
                c.query_row(
                    "SELECT ?1 || '|' || ?2 || '|' || ?3 || '|' || ?4 || '|' || ?5",
                    params![r.param, r.token_code, r.low, r.high, r.unit_code],
                    |row| row.get(0),
                )
                .unwrap()
            })
            .collect();
        text.sort();
        ranges.sort();
        (text, ranges)
    }

    async fn delete(s: &SqliteStore, t: &'static str, id: &str) {
        let id = id.to_string();
        write(s, &AccessContext::system("test"), move |txn| {
            Box::pin(async move {
                let render = |_v: i64, _t: &str| String::new();
                txn.append(NewVersion {
                    resource_type: t,
                    id: &id,
                    deleted: true,
                    index: &Default::default(),
                    body: &render,
                    site: None,
                })
                .await?;
                txn.audit(record(0)).await?;
                Ok::<_, StorageError>(())
            })
        })
        .await
        .unwrap();
    }

    /// One step of [`a_resource_has_exactly_the_rows_of_its_current_body`]: a write of an
    /// Observation (code, value, date and subject drawn from small sets, so that versions share
    /// some rows and differ in others) or a delete.
    #[derive(Debug, Clone)]
    enum Step {
        Put {
            id: usize,
            code: usize,
            value: Option<u8>,
            day: u8,
            subject: usize,
        },
        Delete {
            id: usize,
        },
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0..3usize, 0..3usize, proptest::option::of(0..4u8), 1..4u8, 0..2usize)
                .prop_map(|(id, code, value, day, subject)| Step::Put { id, code, value, day, subject }),
            1 => (0..3usize).prop_map(|id| Step::Delete { id }),
        ]
    }

    fn observation(code: usize, value: Option<u8>, day: u8, subject: usize) -> serde_json::Value {
        let codes = [
            ("8302-2", "Body height"),
            ("29463-7", "Body weight"),
            ("8302-2", "Height"),
        ];
        let (c, display) = codes[code];
        let mut o = serde_json::json!({
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": c, "display": display}]},
            "subject": {"reference": format!("Patient/p{subject}")},
            "effectiveDateTime": format!("2026-03-0{day}"),
        });
        if let Some(v) = value {
            o["valueQuantity"] = serde_json::json!({"value": v, "system": "http://unitsofmeasure.org", "code": "kg"});
        }
        o
    }

    // Old rows are found again by extracting them from the old body (the store keeps no index
    // by owner), so any sequence of writes and deletes must leave each resource with exactly
    // the rows of its current body: none left over from an older version, none missing.
    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        #[test]
        fn a_resource_has_exactly_the_rows_of_its_current_body(steps in proptest::collection::vec(step(), 1..12)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let (d, s) = store().await;
                let mut current: [Option<serde_json::Value>; 3] = Default::default();
                for st in &steps {
                    match *st {
                        Step::Put { id, code, value, day, subject } => {
                            let body = observation(code, value, day, subject);
                            put(&s, "Observation", &format!("o{id}"), body.clone()).await.unwrap();
                            current[id] = Some(body);
                        }
                        Step::Delete { id } => {
                            delete(&s, "Observation", &format!("o{id}")).await;
                            current[id] = None;
                        }
                    }
                }
                for (i, body) in current.iter().enumerate() {
                    assert_eq!(
                        rows_of(&d.path().join("t.db"), "Observation", &format!("o{i}")),
                        rows_for("Observation", body.as_ref()),
                        "o{i} after {steps:?}"
                    );
                }
            });
        }
    }

    /// `_sort` keys and `_include` references are read through the partial indexes by owner
    /// (SQLite refuses a query whose `INDEXED BY` index cannot serve it, so these fail if a
    /// query does not state the index's condition).
    #[tokio::test]
    async fn sort_keys_and_references_are_read_through_the_partial_owner_indexes() {
        let (_d, s) = store().await;
        let ctx = AccessContext::system("test");
        for (id, family, born, org) in [
            ("a", "Zeller", "1970-01-01", "o1"),
            ("b", "Adler", "1990-01-01", "o2"),
            ("c", "Maier", "1980-01-01", "o1"),
        ] {
            let body = serde_json::json!({
                "resourceType": "Patient",
                "name": [{"family": family}],
                "birthDate": born,
                "managingOrganization": {"reference": format!("Organization/{org}"), "display": "x"},
                "maritalStatus": {"text": "married"},
            });
            put(&s, "Patient", id, body).await.unwrap();
        }
        let ids = |q: &str| {
            let (k, v) = q.split_once('=').unwrap();
            trialbridge_fhir::search::parse("Patient", &[(k.into(), v.into())], true).unwrap()
        };
        for (q, want) in [
            ("_sort=family", ["b", "c", "a"]),
            ("_sort=-birthdate", ["b", "c", "a"]),
        ] {
            let page = s.search(&ctx, "Patient", &ids(q), None, 10).await.unwrap();
            let got: Vec<&str> = page.versions.iter().map(|v| v.id.as_str()).collect();
            assert_eq!(got, want, "{q}");
        }
        let mut refs = s
            .index_values(
                &ctx,
                "Patient",
                "organization",
                &["a".into(), "b".into(), "c".into()],
            )
            .await
            .unwrap();
        refs.sort();
        assert_eq!(
            refs,
            [
                ("a", "Organization/o1"),
                ("b", "Organization/o2"),
                ("c", "Organization/o1")
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
    }

    /// A store whose rows another extraction wrote (its recorded generation differs) cannot find
    /// them again from the bodies, so it rebuilds the whole index when it opens.
    #[tokio::test]
    async fn an_index_of_another_generation_is_rebuilt_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let opts = SqliteOptions {
            path: dir.path().join("g.db"),
            readers: 1,
            statement_timeout: crate::DEFAULT_STATEMENT_TIMEOUT,
        };
        let body = observation(0, Some(3), 1, 0);
        {
            let s = SqliteStore::open(opts.clone()).await.unwrap();
            put(&s, "Observation", "o", body.clone()).await.unwrap();
            put(
                &s,
                "Patient",
                "gone",
                serde_json::json!({"resourceType":"Patient","name":[{"family":"X"}]}),
            )
            .await
            .unwrap();
            delete(&s, "Patient", "gone").await;
        }
        let c = Connection::open(&opts.path).unwrap();
        // What an older extraction might have left: a row the current one does not write, and
        // one of the current rows missing.
        c.execute_batch(
            "INSERT INTO search_index (res_type, param, value, system, res_id) VALUES ('Observation', 'retired-param', 'x', '', 'o');
             DELETE FROM search_index WHERE res_type = 'Observation' AND param = 'status';
             UPDATE index_state SET generation = generation - 1;",
        )
        .unwrap();
        drop(c);
        let s = SqliteStore::open(opts.clone()).await.unwrap();
        assert_eq!(
            rows_of(&opts.path, "Observation", "o"),
            rows_for("Observation", Some(&body))
        );
        assert_eq!(rows_of(&opts.path, "Patient", "gone"), (vec![], vec![]));
        let c = Connection::open(&opts.path).unwrap();
        let generation: i64 = c
            .query_row("SELECT generation FROM index_state", [], |r| r.get(0))
            .unwrap();
        assert_eq!(generation, trialbridge_fhir::index::INDEX_GENERATION);
        drop(s);
    }

    #[tokio::test]
    async fn reopening_keeps_data_and_schema() {
        let dir = tempfile::tempdir().unwrap();
        let opts = SqliteOptions {
            path: dir.path().join("r.db"),
            readers: 1,
            statement_timeout: crate::DEFAULT_STATEMENT_TIMEOUT,
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
