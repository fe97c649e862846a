//! The PostgreSQL backend: a pool of read connections and, per process, one writer task with
//! group commit on its own connection. Several store replicas may write to one database.
//!
//! Gap-safety of the change sequence across replicas: every write transaction first takes one
//! transaction-level advisory lock ([`CHANGE_SEQUENCE_LOCK`]), then reads the highest `seq`
//! and `lastUpdated` and numbers its versions after them. The lock is released only after the
//! commit is visible, so commits happen in `seq` order and a reader that sees `seq = n` also
//! sees every version below `n`, whichever replica wrote it. Audit-chain positions are taken
//! under the same lock. Writes of one replica still go out in batches (one transaction, one
//! WAL flush, many jobs), so the lock is held once per batch, not once per write.
//!
//! Schema in `migrations/postgres/`, applied at start-up with sqlx's migrator (the same files
//! `sqlx migrate run` applies), which serialises concurrent replicas on its own lock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{
    AssertSqlSafe, ConnectOptions as _, Connection as _, Executor as _, Postgres, Row as _,
};
use tokio::sync::mpsc;

use trialbridge_fhir::search::{Cursor, SearchRequest, SortValue};

use crate::current_cache::{CurrentCache, Fresh};
use crate::sql::{
    audit_search_sql, history_page, history_sql, instant_text, limited, now_us, search_phases,
    search_sql, Arg, Dialect, AUDIT_COLUMNS, HEAD_SEQ, SHORT_SPAN, VERSION_COLUMNS,
    VERSION_COLUMN_COUNT,
};
use crate::writer::{gather, report, settle, PendingAudit, Settlement, MAX_BATCH};
use crate::{
    audit_entities_of, audit_hash_v2, AccessContext, AuditQuery, AuditRecord, AuditRow,
    HistoryPage, HistoryQuery, Index, JobFinish, NewVersion, ResourceStore, SearchPage, SpaceUse,
    StorageError, StoreOptions, StoreSpace, StoredAudit, StoredVersion, WriteJob, WriteTxn,
    AUDIT_GENESIS,
};

/// The advisory lock every write transaction holds from its start to its commit (an arbitrary
/// constant: "trialbri" in ASCII).
pub const CHANGE_SEQUENCE_LOCK: i64 = 0x7472_6961_6c62_7269;

/// The migrations in `migrations/postgres/`, built into the binary.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// A pooled connection idle this long is pinged before a read uses it; one in steady use is not.
const IDLE_BEFORE_PING: Duration = Duration::from_secs(1);

/// The PostgreSQL implementation of [`crate::ResourceStore`].
pub struct PostgresStore {
    pool: PgPool,
    /// Current versions read by id, coherent through the change sequence (none if configured
    /// to 0 bytes).
    current: Option<CurrentCache>,
    jobs: mpsc::Sender<WriteJob>,
    pending_audit: Arc<PendingAudit>,
}

/// A query with its arguments bound in order. The SQL text is trialbridge's own (the search
/// builder's fragments); every value from a request is bound, never spliced in.
fn bound<'q>(sql: &str, args: &'q [Arg]) -> sqlx::query::Query<'q, Postgres, PgArguments> {
    let mut q = sqlx::query(AssertSqlSafe(sql));
    for a in args {
        q = match a {
            // PostgreSQL text cannot hold NUL; such a value can match nothing stored anyway.
            Arg::Text(s) if s.contains('\0') => q.bind(s.replace('\0', "\u{FFFD}")),
            Arg::Text(s) => q.bind(s.as_str()),
            Arg::Int(n) => q.bind(*n),
            Arg::Real(f) => q.bind(*f),
        };
    }
    q
}

/// Text as PostgreSQL can store it (NUL replaced).
fn pg_text(s: &str) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s.to_string()
    }
}

fn version_from_row(row: &PgRow) -> Result<StoredVersion, sqlx::Error> {
    Ok(StoredVersion {
        resource_type: row.try_get(0)?,
        id: row.try_get(1)?,
        version: row.try_get(2)?,
        seq: row.try_get(3)?,
        last_updated: row.try_get(4)?,
        last_updated_us: row.try_get(5)?,
        deleted: row.try_get::<i32, _>(6)? != 0,
        body: row.try_get(7)?,
        site: row.try_get(8)?,
        traceparent: row.try_get(9)?,
    })
}

fn audit_from_row(row: &PgRow) -> Result<StoredAudit, sqlx::Error> {
    Ok(StoredAudit {
        seq: row.try_get(0)?,
        recorded_us: row.try_get(1)?,
        site: row.try_get(2)?,
        batch: row.try_get::<i32, _>(3)? != 0,
        body: row.try_get(4)?,
        prev_hash: row.try_get(5)?,
        hash: row.try_get(6)?,
        hash_version: i64::from(row.try_get::<i32, _>(7)?),
    })
}

/// A `_sort` key column: a number (range `low`, `lastUpdated`), text, or none.
fn sort_value(row: &PgRow, i: usize) -> SortValue {
    if let Ok(v) = row.try_get::<Option<f64>, _>(i) {
        return v.map_or(SortValue::Null, SortValue::Number);
    }
    if let Ok(v) = row.try_get::<Option<i64>, _>(i) {
        return v.map_or(SortValue::Null, |n| SortValue::Number(n as f64));
    }
    match row.try_get::<Option<String>, _>(i) {
        Ok(Some(t)) => SortValue::Text(t),
        _ => SortValue::Null,
    }
}

impl PostgresStore {
    /// Connects to the database named by `url` (`postgres://user@host:port/db`), applies the
    /// migrations and starts the writer.
    pub async fn open(url: &str) -> Result<Self, StorageError> {
        Self::open_with(url, StoreOptions::default()).await
    }

    /// As [`PostgresStore::open`], with the server cancelling any read statement that runs
    /// longer than `options.statement_timeout` (the session's `statement_timeout`), so that no
    /// query holds a connection and a CPU for as long as it likes, and a read cache of
    /// `options.read_cache_bytes`.
    pub async fn open_with(url: &str, store: StoreOptions) -> Result<Self, StorageError> {
        let statement_timeout = store.statement_timeout;
        let options: PgConnectOptions = url
            .parse()
            .map_err(|_| StorageError::UnsupportedUrl(url.to_string()))?;
        let options = options.application_name("trialbridge");
        // The budget is the readers': the writer's statements are its own small inserts, and
        // a batch is not to fail half-way for a slow disk.
        let read_options = options.clone().options([(
            "statement_timeout",
            format!("{}ms", statement_timeout.as_millis().max(1)),
        )]);
        let mut writer = PgConnection::connect_with(&options).await?;
        MIGRATOR
            .run(&mut writer)
            .await
            .map_err(|e| StorageError::Migration(e.to_string()))?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            // sqlx pings every connection it hands out: one more round trip (and wake-up of
            // a PostgreSQL backend) per read, about as costly as the read itself. A connection
            // in steady use is known alive; one idle for a while (the server may have
            // restarted or a proxy dropped it) is still checked before use.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= IDLE_BEFORE_PING {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(read_options.clone())
            .await?;
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        let pending_audit = Arc::new(PendingAudit::default());
        // On the writer's connection, outside the readers' budget: with a budget of a few
        // milliseconds a busy server cancelled this first query, and the store did not open.
        let last_seq: i64 = sqlx::query_scalar(HEAD_SEQ).fetch_one(&mut writer).await?;
        let current = (store.read_cache_bytes > 0)
            .then(|| CurrentCache::start(read_options.clone(), last_seq, store.read_cache_bytes));
        tokio::spawn(writer_loop(writer, options, rx, pending_audit.clone()));
        Ok(Self {
            pool,
            current,
            jobs: tx,
            pending_audit,
        })
    }

    /// The read cache once a poll that started now has ended (`None`: no cache, or the poll
    /// failed and the database is read directly).
    async fn fresh_cache(&self) -> Option<(&CurrentCache, Fresh)> {
        let cache = self.current.as_ref()?;
        Some((cache, cache.fresh().await?))
    }

    async fn versions(&self, sql: &str, args: &[Arg]) -> Result<Vec<StoredVersion>, StorageError> {
        let sql = Dialect::Postgres.placeholders(sql);
        let rows = bound(&sql, args).fetch_all(&self.pool).await?;
        Ok(rows
            .iter()
            .map(version_from_row)
            .collect::<Result<_, _>>()?)
    }
}

/// The writer: takes every queued job into one transaction. A broken connection is replaced
/// before the next batch.
async fn writer_loop(
    conn: PgConnection,
    options: PgConnectOptions,
    mut rx: mpsc::Receiver<WriteJob>,
    pending: Arc<PendingAudit>,
) {
    let mut conn = Some(conn);
    let mut batch: Vec<WriteJob> = Vec::with_capacity(MAX_BATCH);
    let mut statistics = Statistics::new(options.clone());
    while let Some(first) = rx.recv().await {
        gather(first, &mut rx, &mut batch);
        let mut finishers = Vec::with_capacity(batch.len());
        if conn.is_none() {
            match PgConnection::connect_with(&options).await {
                Ok(c) => conn = Some(c),
                Err(e) => tracing::error!(error = %e, "the storage writer cannot reconnect"),
            }
        }
        let result = match conn.as_mut() {
            Some(c) => run_batch(c, &mut batch, &mut finishers, &pending).await,
            None => Err(StorageError::CommitFailed(
                "the database is not reachable".into(),
            )),
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, "write batch failed; rolling back");
            let rolled_back = match conn.as_mut() {
                Some(c) => c.execute("ROLLBACK").await.is_ok(),
                None => false,
            };
            if !rolled_back {
                conn = None;
            }
        }
        let written = result.as_ref().map_or(0, |n| *n);
        report(finishers, &result.map(|_| ()));
        // Jobs not reached because the batch failed early are dropped, which tells their
        // callers that the writer could not run them.
        batch.clear();
        statistics.after_commit(written);
    }
}

/// Runs maintenance statements one by one on a connection opened for them (beside the pool and
/// the writer, so that neither waits for them), then closes it.
async fn on_own_connection(
    options: &PgConnectOptions,
    statements: &[&'static str],
) -> Result<(), sqlx::Error> {
    // sqlx would warn of every ANALYZE as a slow statement; the callers log their own line
    // with its duration.
    let options = options.clone().disable_statement_logging();
    let mut conn = PgConnection::connect_with(&options).await?;
    for statement in statements {
        conn.execute(*statement).await?;
    }
    conn.close().await
}

/// When the planner's statistics are renewed. A bulk load (`trialbridge load`, large
/// transactions) fills the tables faster than autovacuum's autoanalyze looks at them, and a
/// planner that believes a table empty picks nested loops: one `_sort` page took 48 s at 20,000
/// Observations without statistics and 3 ms with them. So the writer starts `ANALYZE` itself
/// whenever the versions written since the last one reach a fifth of those there were then
/// (at least 1,000), the rule autoanalyze follows with its default scale factor of 0.1-0.2.
/// It runs on a connection of its own, one at a time, beside the writer: on the writer's
/// connection each ANALYZE (1-3 s at a million Observations) stalled every write queued
/// behind it, the PUT p99 of 16 clients was its duration.
#[derive(Debug)]
struct Statistics {
    /// Versions written since the last ANALYZE was started.
    since: i64,
    /// Versions in the store at the last ANALYZE (as far as this writer knows).
    at_last: i64,
    /// Whether an ANALYZE is running.
    running: Arc<std::sync::atomic::AtomicBool>,
    /// Where to connect for it.
    options: PgConnectOptions,
}

impl Statistics {
    const MIN_ROWS: i64 = 1_000;

    fn new(options: PgConnectOptions) -> Self {
        Self {
            since: 0,
            at_last: 0,
            running: Arc::default(),
            options,
        }
    }

    fn after_commit(&mut self, written: i64) {
        use std::sync::atomic::Ordering;
        self.since += written;
        if self.since < Self::MIN_ROWS.max(self.at_last / 5)
            || self.running.swap(true, Ordering::AcqRel)
        {
            return;
        }
        self.at_last += self.since;
        self.since = 0;
        let (running, options, versions) =
            (self.running.clone(), self.options.clone(), self.at_last);
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let analyzed = on_own_connection(&options, &["ANALYZE"]).await;
            running.store(false, Ordering::Release);
            match analyzed {
                Ok(()) => tracing::info!(
                    versions,
                    ms = started.elapsed().as_millis() as u64,
                    "planner statistics renewed (ANALYZE)"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "ANALYZE failed; autovacuum will renew the statistics")
                }
            }
        });
    }
}

/// Runs the queued jobs in one transaction; returns how many versions it wrote.
///
/// A kept job's rows wait in memory ([`PgWriteTxn::waiting`]) and go in together with the
/// batch's others, in one statement before `COMMIT` (or earlier, when a job is about to read or
/// delete what they change, or when too much waits): one insert per batch instead of one per
/// job is what lifts PUT with 16 clients by about half. If PostgreSQL refuses rows written
/// together, they are written again job by job ([`PgWriteTxn::isolate`]): the jobs before the
/// one refused keep their writes, that one and the ones after it (whose change sequence numbers
/// and audit chain follow from its) are refused, and none of them is acknowledged.
async fn run_batch(
    conn: &mut PgConnection,
    batch: &mut Vec<WriteJob>,
    finishers: &mut Vec<JobFinish>,
    pending: &PendingAudit,
) -> Result<i64, StorageError> {
    // One round trip for the three statements that open a batch. They stay three: at READ
    // COMMITTED each statement takes its own snapshot, so the highest `seq` is read after the
    // lock is granted (one statement would read it from before the wait).
    let opened = sqlx::raw_sql(AssertSqlSafe(format!(
        "BEGIN; SELECT pg_advisory_xact_lock({CHANGE_SEQUENCE_LOCK}); \
         SELECT COALESCE(MAX(seq), 0)::bigint, COALESCE(MAX(last_updated_us), 0)::bigint FROM resource_version"
    )))
    .fetch_all(&mut *conn)
    .await?;
    let highest = opened.last().ok_or_else(|| {
        StorageError::Corrupt("opening a write transaction returned no row".into())
    })?;
    let (last_seq, last_us): (i64, i64) = (highest.try_get(0)?, highest.try_get(1)?);
    let mut txn = PgWriteTxn {
        conn,
        last_us,
        trace: None,
        last_seq,
        appended: 0,
        audited: 0,
        chain_end: None,
        queued: JobRows::default(),
        known: HashMap::new(),
        known_before: Vec::new(),
        waiting: Vec::new(),
        written: 0,
        wrote_in_job: false,
        refused: None,
    };
    // The savepoint of the last job kept, released with the next one's start (one round trip
    // for both; COMMIT releases the last).
    let mut kept_open = false;
    for job in batch.drain(..) {
        if txn.waiting_rows() >= MAX_WAITING_ROWS {
            let chain_end = txn.chain_end.clone();
            txn.write_outside_jobs(&mut kept_open, chain_end, false)
                .await?;
        }
        txn.conn
            .execute(if kept_open {
                "RELEASE SAVEPOINT job; SAVEPOINT job"
            } else {
                "SAVEPOINT job"
            })
            .await?;
        kept_open = false;
        txn.appended = 0;
        txn.audited = 0;
        txn.trace = None;
        txn.wrote_in_job = false;
        txn.known_before.clear();
        // Restored when the job is rolled back, with its rows.
        let chain_before = txn.chain_end.clone();
        let seq_before = txn.last_seq;
        let written_before = txn.written;
        // A panicking job must not take the writer down: its savepoint is rolled back and its
        // caller sees the writer's error.
        let outcome = std::panic::AssertUnwindSafe(job(&mut txn))
            .catch_unwind()
            .await;
        let mut settled = settle(outcome, txn.appended, txn.audited);
        let refused = txn.refused.take();
        let rows_refused = refused.is_some();
        if let Some(e) = refused {
            // Rows written during this job were refused: the transaction is aborted until the
            // savepoint is rolled back, whatever the job made of the error.
            settled = match settled {
                Settlement::Keep(f) | Settlement::Discard(f) | Settlement::Refuse(f, _) => {
                    Settlement::Refuse(f, e)
                }
                Settlement::Panicked => Settlement::Panicked,
            };
        }
        match settled {
            Settlement::Keep(finish) => {
                kept_open = true;
                txn.waiting.push(WaitingJob {
                    rows: std::mem::take(&mut txn.queued),
                    finish,
                    chain_before,
                    seq_before,
                    partly_written: txn.wrote_in_job,
                });
            }
            discarded => {
                txn.queued.clear();
                txn.forget_job_known();
                txn.conn
                    .execute("ROLLBACK TO SAVEPOINT job; RELEASE SAVEPOINT job")
                    .await?;
                txn.chain_end = chain_before;
                txn.last_seq = seq_before;
                // The rollback took out again what the job wrote of the rows waiting; they
                // go in later (or, if PostgreSQL refused them, job by job now).
                txn.written = written_before;
                match discarded {
                    Settlement::Discard(finish) => finishers.push(finish),
                    Settlement::Refuse(finish, e) => finish(Err(e)),
                    Settlement::Keep(_) | Settlement::Panicked => {}
                }
                if rows_refused {
                    txn.isolate().await?;
                }
            }
        }
    }
    // The queued audit events of requests that changed nothing ride along with this commit,
    // in one statement with the rows waiting.
    let audit_rows = pending.take_rows();
    let chain_before = txn.chain_end.clone();
    for row in &audit_rows {
        insert_audit(txn.conn, &mut txn.chain_end, &mut txn.queued, row, true).await?;
    }
    if !txn
        .write_outside_jobs(&mut kept_open, chain_before, true)
        .await?
    {
        // Refused together: the waiting jobs went in one by one (or failed); the events follow
        // the chain as it ends now.
        for row in &audit_rows {
            insert_audit(txn.conn, &mut txn.chain_end, &mut txn.queued, row, true).await?;
        }
        let queued = std::mem::take(&mut txn.queued);
        queued.insert(txn.conn).await?;
    }
    for w in txn.waiting.drain(..) {
        finishers.push(w.finish);
    }
    // synchronous_commit (on by default): COMMIT returns once the WAL is flushed.
    txn.conn.execute("COMMIT").await?;
    Ok(txn.last_seq - last_seq)
}

/// The rows not written yet, in order: the waiting jobs', then the queued ones.
fn unwritten<'a>(waiting: &'a [WaitingJob], queued: &'a JobRows) -> Vec<&'a JobRows> {
    waiting
        .iter()
        .map(|w| &w.rows)
        .chain(std::iter::once(queued))
        .collect()
}

/// Rows of kept jobs beyond which they are written before the next job starts (a bulk load's
/// 500-resource transactions would otherwise hold a batch's bodies and index rows in memory).
const MAX_WAITING_ROWS: usize = 2_000;

/// A kept job whose rows wait for the batch's insert, and what its rollback would restore.
struct WaitingJob {
    rows: JobRows,
    finish: JobFinish,
    chain_before: Option<(i64, String)>,
    seq_before: i64,
    /// Whether some of its rows went in already (with the ones waiting before it), when it read
    /// or replaced index rows; its savepoint is released, so those cannot be taken back alone.
    partly_written: bool,
}

struct PgWriteTxn<'c> {
    conn: &'c mut PgConnection,
    last_us: i64,
    /// The trace context of the job being run, recorded with its versions.
    trace: Option<String>,
    /// The highest change sequence number used so far (under the change-sequence lock).
    last_seq: i64,
    /// Versions the current job appended.
    appended: usize,
    /// Audit events the current job recorded.
    audited: usize,
    /// The audit chain's last position and hash in this transaction, once read.
    chain_end: Option<(i64, String)>,
    /// The current job's rows not written yet.
    queued: JobRows,
    /// Version, deletion and site of the resources this transaction has read or written, as
    /// they stand with its rows (written or waiting): what `current_version` and `append` would
    /// otherwise ask the database for once more.
    known: HashMap<(String, String), Known>,
    /// What the current job changed in `known`, with what was there before, so that its
    /// rollback restores exactly that (a resource a kept job wrote stays known as written:
    /// its rows may still be waiting, and the database does not have them yet).
    known_before: Vec<((String, String), Option<Known>)>,
    /// Kept jobs of this batch, in order, with their rows.
    waiting: Vec<WaitingJob>,
    /// How many of `waiting` have their rows in the database.
    written: usize,
    /// Whether rows went in during the current job.
    wrote_in_job: bool,
    /// Why PostgreSQL refused rows written during the current job (the transaction is aborted
    /// until the job's savepoint is rolled back).
    refused: Option<StorageError>,
}

/// A resource's current version number, whether it is deleted, and its site.
type CurrentState = (i64, bool, Option<String>);

/// What a write transaction knows of a resource, so that it asks the database once.
#[derive(Clone)]
enum Known {
    /// As the database has it (read in this transaction and not written since): its current
    /// version, or that there is none. An update reads it to check the version and again to
    /// compare the content; a create reads it twice (is it new, which version is next).
    Read(Option<StoredVersion>),
    /// Written in this transaction (its rows may still be waiting).
    Written(CurrentState),
}

impl PgWriteTxn<'_> {
    /// Rows of kept jobs not written yet.
    fn waiting_rows(&self) -> usize {
        self.waiting[self.written..]
            .iter()
            .map(|w| w.rows.len())
            .sum()
    }

    /// Whether no rows wait to be written (the kept jobs' or the queued ones).
    fn nothing_waits(&self) -> bool {
        unwritten(&self.waiting[self.written..], &self.queued)
            .iter()
            .all(|p| p.is_empty())
    }

    /// Records what `known` held for `key` before the current job changes it.
    fn remember_known(&mut self, key: &(String, String)) {
        let before = self.known.get(key).cloned();
        self.known_before.push((key.clone(), before));
    }

    /// Forgets everything known (all rows written), as the current job's rollback would put
    /// it back.
    fn forget_all_known(&mut self) {
        for (key, k) in self.known.drain() {
            self.known_before.push((key, Some(k)));
        }
    }

    /// Puts back what the current job changed in `known`.
    fn forget_job_known(&mut self) {
        while let Some((key, before)) = self.known_before.pop() {
            match before {
                Some(k) => self.known.insert(key, k),
                None => self.known.remove(&key),
            };
        }
    }

    /// Writes the rows waiting and the current job's, in one statement, before the job reads
    /// or deletes what they may change. If PostgreSQL refuses them, the job fails with the
    /// error and the writer sorts the waiting jobs out once its savepoint is rolled back.
    async fn write_waiting(&mut self) -> Result<(), StorageError> {
        if self.nothing_waits() {
            return Ok(());
        }
        let parts = unwritten(&self.waiting[self.written..], &self.queued);
        match JobRows::insert_all(self.conn, &parts).await {
            Ok(()) => {
                self.written = self.waiting.len();
                self.queued.clear();
                self.wrote_in_job = true;
                Ok(())
            }
            Err(e) => {
                self.refused = Some(StorageError::CommitFailed(e.to_string()));
                Err(e)
            }
        }
    }

    /// Writes the rows waiting and the queued ones together outside any job (the last kept
    /// job's savepoint released), under a savepoint of their own, so that a refusal can be
    /// sorted out job by job: then the queued rows are dropped, the audit chain goes back to
    /// `chain_before` (its end before the queued rows), the waiting jobs are written one by one
    /// ([`Self::isolate`]), and the answer is false. Before `COMMIT` the savepoint is left for
    /// the commit to release.
    async fn write_outside_jobs(
        &mut self,
        kept_open: &mut bool,
        chain_before: Option<(i64, String)>,
        before_commit: bool,
    ) -> Result<bool, StorageError> {
        if self.nothing_waits() {
            return Ok(true);
        }
        self.conn
            .execute(if std::mem::take(kept_open) {
                "RELEASE SAVEPOINT job; SAVEPOINT rows"
            } else {
                "SAVEPOINT rows"
            })
            .await?;
        let parts = unwritten(&self.waiting[self.written..], &self.queued);
        match JobRows::insert_all(self.conn, &parts).await {
            Ok(()) => {
                if !before_commit {
                    self.conn.execute("RELEASE SAVEPOINT rows").await?;
                }
                self.written = self.waiting.len();
                self.queued.clear();
                Ok(true)
            }
            Err(e) => {
                tracing::warn!(error = %e, "rows written together refused; writing them job by job");
                self.conn
                    .execute("ROLLBACK TO SAVEPOINT rows; RELEASE SAVEPOINT rows")
                    .await?;
                self.queued.clear();
                self.chain_end = chain_before;
                self.isolate().await?;
                Ok(false)
            }
        }
    }

    /// Writes the waiting jobs' rows one job at a time. The first job whose rows PostgreSQL
    /// refuses is refused, and so is every job after it: their change sequence numbers and
    /// audit hashes follow from its. If that job had rows written already, they cannot be taken
    /// back alone, and the batch fails (nothing in it is acknowledged).
    async fn isolate(&mut self) -> Result<(), StorageError> {
        while self.written < self.waiting.len() {
            self.conn.execute("SAVEPOINT rows").await?;
            let inserted = self.waiting[self.written].rows.insert(self.conn).await;
            match inserted {
                Ok(()) => {
                    self.conn.execute("RELEASE SAVEPOINT rows").await?;
                    self.written += 1;
                }
                Err(e) => {
                    self.conn
                        .execute("ROLLBACK TO SAVEPOINT rows; RELEASE SAVEPOINT rows")
                        .await?;
                    if self.waiting[self.written].partly_written {
                        return Err(e);
                    }
                    tracing::warn!(error = %e, "a write job's rows were refused; it and the jobs after it in its batch fail");
                    let mut refused = self.waiting.split_off(self.written);
                    let first = &refused[0];
                    self.chain_end = first.chain_before.clone();
                    self.last_seq = first.seq_before;
                    // What the refused jobs wrote is not there; everything else is written.
                    self.known.clear();
                    let why = e.to_string();
                    for (k, w) in refused.drain(..).enumerate() {
                        (w.finish)(Err(StorageError::CommitFailed(if k == 0 {
                            why.clone()
                        } else {
                            format!("an earlier write of the same batch was refused: {why}")
                        })));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Appends one row to the audit chain (under the change-sequence lock, so the chain's end,
/// read once per transaction, stays true across replicas); the row is queued with the job's.
async fn insert_audit(
    conn: &mut PgConnection,
    chain_end: &mut Option<(i64, String)>,
    queued: &mut JobRows,
    r: &AuditRecord,
    batch: bool,
) -> Result<(), StorageError> {
    let (last_seq, prev) = match chain_end.take() {
        Some(end) => end,
        None => sqlx::query_as::<_, (i64, String)>(
            "SELECT seq, hash FROM audit_event ORDER BY seq DESC LIMIT 1",
        )
        .fetch_optional(&mut *conn)
        .await?
        .unwrap_or((0, AUDIT_GENESIS.to_string())),
    };
    let seq = last_seq + 1;
    let body = pg_text(&r.body);
    let site = r.site.as_deref().map(pg_text);
    let entities: Vec<String> = audit_entities_of(&r.entities)
        .iter()
        .map(|e| pg_text(e))
        .collect();
    let hash = audit_hash_v2(&AuditRow {
        prev_hash: &prev,
        seq,
        recorded_us: r.recorded_us,
        site: site.as_deref(),
        batch,
        body: &body,
        entities: &entities,
    });
    let a = &mut queued.audit;
    a.seq.push(seq);
    a.recorded_us.push(r.recorded_us);
    a.site.push(site);
    a.batch.push(i32::from(batch));
    a.body.push(body);
    a.prev_hash.push(prev);
    a.hash.push(hash.clone());
    for e in entities {
        queued.entities.entity.push(e);
        queued.entities.seq.push(seq);
    }
    *chain_end = Some((seq, hash));
    Ok(())
}

async fn read_current(
    conn: &mut PgConnection,
    resource_type: &str,
    id: &str,
) -> Result<Option<StoredVersion>, StorageError> {
    let sql = format!(
        "SELECT {VERSION_COLUMNS} FROM resource_current c JOIN resource_version v ON v.seq = c.seq WHERE c.res_type = $1 AND c.res_id = $2"
    );
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(resource_type)
        .bind(pg_text(id))
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.as_ref().map(version_from_row).transpose()?)
}

async fn read_version(
    conn: &mut PgConnection,
    resource_type: &str,
    id: &str,
    version: i64,
) -> Result<Option<StoredVersion>, StorageError> {
    let sql = format!(
        "SELECT {VERSION_COLUMNS} FROM resource_version v WHERE v.res_type = $1 AND v.res_id = $2 AND v.version = $3"
    );
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(resource_type)
        .bind(pg_text(id))
        .bind(version)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.as_ref().map(version_from_row).transpose()?)
}

/// The rows a job writes, sent with the other kept jobs' of its batch (see [`run_batch`]):
/// one statement, every table bound as column arrays, instead of six to eight round trips per
/// resource on the writer's one connection. A bulk load's 500-resource commit sends one
/// insert, not thousands; a PUT costs two round trips of its own (savepoint, current version).
#[derive(Debug, Default)]
struct JobRows {
    versions: VersionRows,
    current: CurrentRows,
    audit: AuditRows,
    entities: EntityRows,
    text: TextRows,
    ranges: RangeRows,
}

/// `resource_version` rows as columns.
#[derive(Debug, Default)]
struct VersionRows {
    seq: Vec<i64>,
    res_type: Vec<String>,
    res_id: Vec<String>,
    version: Vec<i64>,
    last_updated: Vec<String>,
    last_updated_us: Vec<i64>,
    deleted: Vec<i32>,
    body: Vec<Option<String>>,
    site: Vec<Option<String>>,
    traceparent: Vec<Option<String>>,
}

/// `resource_current` rows as columns, one per resource (a later version replaces the row of
/// an earlier one: one INSERT may not update a row twice).
#[derive(Debug, Default)]
struct CurrentRows {
    at: HashMap<(String, String), usize>,
    res_type: Vec<String>,
    res_id: Vec<String>,
    seq: Vec<i64>,
    deleted: Vec<i32>,
    site: Vec<Option<String>>,
}

/// `audit_event` rows as columns.
#[derive(Debug, Default)]
struct AuditRows {
    seq: Vec<i64>,
    recorded_us: Vec<i64>,
    site: Vec<Option<String>>,
    batch: Vec<i32>,
    body: Vec<String>,
    prev_hash: Vec<String>,
    hash: Vec<String>,
}

/// `audit_entity` rows as columns.
#[derive(Debug, Default)]
struct EntityRows {
    entity: Vec<String>,
    seq: Vec<i64>,
}

/// `search_index` rows as columns (bound as arrays).
#[derive(Debug, Default)]
struct TextRows {
    res_type: Vec<String>,
    param: Vec<String>,
    value: Vec<String>,
    system: Vec<String>,
    res_id: Vec<String>,
}

/// `search_range` rows as columns (bound as arrays).
#[derive(Debug, Default)]
struct RangeRows {
    res_type: Vec<String>,
    param: Vec<String>,
    token_code: Vec<String>,
    low: Vec<f64>,
    high: Vec<f64>,
    token_system: Vec<String>,
    unit_system: Vec<String>,
    unit_code: Vec<String>,
    long: Vec<i32>,
    res_id: Vec<String>,
}

impl CurrentRows {
    fn set(&mut self, res_type: &str, res_id: &str, seq: i64, deleted: bool, site: Option<&str>) {
        let key = (res_type.to_string(), res_id.to_string());
        let deleted = i32::from(deleted);
        let site = site.map(String::from);
        if let Some(&k) = self.at.get(&key) {
            (self.seq[k], self.deleted[k], self.site[k]) = (seq, deleted, site);
            return;
        }
        self.at.insert(key, self.res_id.len());
        self.res_type.push(res_type.to_string());
        self.res_id.push(res_id.to_string());
        self.seq.push(seq);
        self.deleted.push(deleted);
        self.site.push(site);
    }
}

impl JobRows {
    /// Rows to insert (a current row goes with each version).
    fn len(&self) -> usize {
        self.versions.seq.len()
            + self.audit.seq.len()
            + self.entities.seq.len()
            + self.text.res_id.len()
            + self.ranges.res_id.len()
    }

    fn is_empty(&self) -> bool {
        self.versions.seq.is_empty()
            && self.audit.seq.is_empty()
            && self.text.res_id.is_empty()
            && self.ranges.res_id.is_empty()
    }

    fn add_version(&mut self, v: &StoredVersion) {
        let r = &mut self.versions;
        r.seq.push(v.seq);
        r.res_type.push(v.resource_type.clone());
        r.res_id.push(v.id.clone());
        r.version.push(v.version);
        r.last_updated.push(v.last_updated.clone());
        r.last_updated_us.push(v.last_updated_us);
        r.deleted.push(i32::from(v.deleted));
        r.body.push(v.body.clone());
        r.site.push(v.site.clone());
        r.traceparent.push(v.traceparent.clone());
        self.current
            .set(&v.resource_type, &v.id, v.seq, v.deleted, v.site.as_deref());
    }

    fn add_index(&mut self, resource_type: &str, id: &str, index: &Index) {
        let t = &mut self.text;
        for e in &index.text {
            t.res_type.push(resource_type.to_string());
            t.param.push(e.param.to_string());
            t.value.push(pg_text(&e.value));
            t.system.push(pg_text(e.system.as_deref().unwrap_or("")));
            t.res_id.push(id.to_string());
        }
        let r = &mut self.ranges;
        for e in &index.ranges {
            r.res_type.push(resource_type.to_string());
            r.param.push(e.param.to_string());
            r.token_code.push(pg_text(&e.token_code));
            r.low.push(e.low);
            r.high.push(e.high);
            r.token_system.push(pg_text(&e.token_system));
            r.unit_system.push(pg_text(&e.unit_system));
            r.unit_code.push(pg_text(&e.unit_code));
            r.long.push(i32::from(e.high - e.low > SHORT_SPAN));
            r.res_id.push(id.to_string());
        }
    }

    fn clear(&mut self) {
        *self = Self::default();
    }

    /// Appends `other`'s rows after this one's (a later current row replaces an earlier one of
    /// the same resource, as in one job).
    fn extend_from(&mut self, other: &JobRows) {
        let v = &other.versions;
        let mine = &mut self.versions;
        mine.seq.extend_from_slice(&v.seq);
        mine.res_type.extend_from_slice(&v.res_type);
        mine.res_id.extend_from_slice(&v.res_id);
        mine.version.extend_from_slice(&v.version);
        mine.last_updated.extend_from_slice(&v.last_updated);
        mine.last_updated_us.extend_from_slice(&v.last_updated_us);
        mine.deleted.extend_from_slice(&v.deleted);
        mine.body.extend_from_slice(&v.body);
        mine.site.extend_from_slice(&v.site);
        mine.traceparent.extend_from_slice(&v.traceparent);
        let c = &other.current;
        for k in 0..c.res_id.len() {
            self.current.set(
                &c.res_type[k],
                &c.res_id[k],
                c.seq[k],
                c.deleted[k] != 0,
                c.site[k].as_deref(),
            );
        }
        let (a, mine) = (&other.audit, &mut self.audit);
        mine.seq.extend_from_slice(&a.seq);
        mine.recorded_us.extend_from_slice(&a.recorded_us);
        mine.site.extend_from_slice(&a.site);
        mine.batch.extend_from_slice(&a.batch);
        mine.body.extend_from_slice(&a.body);
        mine.prev_hash.extend_from_slice(&a.prev_hash);
        mine.hash.extend_from_slice(&a.hash);
        self.entities
            .entity
            .extend_from_slice(&other.entities.entity);
        self.entities.seq.extend_from_slice(&other.entities.seq);
        let (t, mine) = (&other.text, &mut self.text);
        mine.res_type.extend_from_slice(&t.res_type);
        mine.param.extend_from_slice(&t.param);
        mine.value.extend_from_slice(&t.value);
        mine.system.extend_from_slice(&t.system);
        mine.res_id.extend_from_slice(&t.res_id);
        let (r, mine) = (&other.ranges, &mut self.ranges);
        mine.res_type.extend_from_slice(&r.res_type);
        mine.param.extend_from_slice(&r.param);
        mine.token_code.extend_from_slice(&r.token_code);
        mine.low.extend_from_slice(&r.low);
        mine.high.extend_from_slice(&r.high);
        mine.token_system.extend_from_slice(&r.token_system);
        mine.unit_system.extend_from_slice(&r.unit_system);
        mine.unit_code.extend_from_slice(&r.unit_code);
        mine.long.extend_from_slice(&r.long);
        mine.res_id.extend_from_slice(&r.res_id);
    }

    /// Writes the rows of `parts`, in order, in one statement; they stay where they are, so that
    /// the parts can be written one by one if PostgreSQL refuses them together.
    async fn insert_all(conn: &mut PgConnection, parts: &[&JobRows]) -> Result<(), StorageError> {
        let parts: Vec<&JobRows> = parts.iter().copied().filter(|p| !p.is_empty()).collect();
        match parts.as_slice() {
            [] => Ok(()),
            [one] => one.insert(conn).await,
            many => {
                let mut all = JobRows::default();
                for p in many {
                    all.extend_from(p);
                }
                all.insert(conn).await
            }
        }
    }

    /// Writes these rows in one statement. The data-modifying CTEs see one snapshot and
    /// touch different tables; the ids and texts were made PostgreSQL-safe (`pg_text`) when
    /// queued.
    async fn insert(&self, conn: &mut PgConnection) -> Result<(), StorageError> {
        let JobRows {
            versions: v,
            current: c,
            audit: a,
            entities: e,
            text: t,
            ranges: r,
        } = self;
        sqlx::query(
            "WITH v AS (INSERT INTO resource_version (seq, res_type, res_id, version, last_updated, last_updated_us, deleted, body, site, traceparent) \
               SELECT * FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::int8[], $7::int4[], $8::text[], $9::text[], $10::text[])), \
             c AS (INSERT INTO resource_current (res_type, res_id, seq, deleted, site) \
               SELECT * FROM UNNEST($11::text[], $12::text[], $13::int8[], $14::int4[], $15::text[]) \
               ON CONFLICT (res_type, res_id) DO UPDATE SET seq = excluded.seq, deleted = excluded.deleted, site = excluded.site), \
             a AS (INSERT INTO audit_event (seq, recorded_us, site, batch, body, prev_hash, hash, hash_version) \
               SELECT *, 2 FROM UNNEST($16::int8[], $17::int8[], $18::text[], $19::int4[], $20::text[], $21::text[], $22::text[])), \
             e AS (INSERT INTO audit_entity (entity, seq) SELECT * FROM UNNEST($23::text[], $24::int8[]) ON CONFLICT DO NOTHING), \
             i AS (INSERT INTO search_index (res_type, param, value, system, res_id) \
               SELECT * FROM UNNEST($25::text[], $26::text[], $27::text[], $28::text[], $29::text[]) ON CONFLICT DO NOTHING) \
             INSERT INTO search_range (res_type, param, token_code, low, high, token_system, unit_system, unit_code, long, res_id) \
               SELECT * FROM UNNEST($30::text[], $31::text[], $32::text[], $33::float8[], $34::float8[], $35::text[], $36::text[], $37::text[], $38::int4[], $39::text[])",
        )
        .bind(&v.seq)
        .bind(&v.res_type)
        .bind(&v.res_id)
        .bind(&v.version)
        .bind(&v.last_updated)
        .bind(&v.last_updated_us)
        .bind(&v.deleted)
        .bind(&v.body)
        .bind(&v.site)
        .bind(&v.traceparent)
        .bind(&c.res_type)
        .bind(&c.res_id)
        .bind(&c.seq)
        .bind(&c.deleted)
        .bind(&c.site)
        .bind(&a.seq)
        .bind(&a.recorded_us)
        .bind(&a.site)
        .bind(&a.batch)
        .bind(&a.body)
        .bind(&a.prev_hash)
        .bind(&a.hash)
        .bind(&e.entity)
        .bind(&e.seq)
        .bind(&t.res_type)
        .bind(&t.param)
        .bind(&t.value)
        .bind(&t.system)
        .bind(&t.res_id)
        .bind(&r.res_type)
        .bind(&r.param)
        .bind(&r.token_code)
        .bind(&r.low)
        .bind(&r.high)
        .bind(&r.token_system)
        .bind(&r.unit_system)
        .bind(&r.unit_code)
        .bind(&r.long)
        .bind(&r.res_id)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

impl PgWriteTxn<'_> {
    /// Replaces the index rows of one resource: the old ones deleted (one statement), the new
    /// ones queued with the job's rows.
    async fn write_index(
        &mut self,
        resource_type: &str,
        id: &str,
        had_rows: bool,
        index: Option<&Index>,
    ) -> Result<(), StorageError> {
        if had_rows {
            // Rows waiting may be this resource's own: they go in first, then all of its go.
            self.write_waiting().await?;
            sqlx::query(
                "WITH i AS (DELETE FROM search_index WHERE res_type = $1 AND res_id = $2) \
                 DELETE FROM search_range WHERE res_type = $1 AND res_id = $2",
            )
            .bind(resource_type)
            .bind(id)
            .execute(&mut *self.conn)
            .await?;
        }
        if let Some(index) = index {
            self.queued.add_index(resource_type, id, index);
        }
        Ok(())
    }
}

#[async_trait]
impl WriteTxn for PgWriteTxn<'_> {
    fn set_trace(&mut self, traceparent: Option<String>) {
        self.trace = traceparent;
    }

    async fn replace_index(
        &mut self,
        resource_type: &str,
        id: &str,
        index: &Index,
    ) -> Result<(), StorageError> {
        self.write_index(resource_type, id, true, Some(index)).await
    }

    async fn current(
        &mut self,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<StoredVersion>, StorageError> {
        let key = (resource_type.to_string(), pg_text(id));
        if let Some(Known::Read(v)) = self.known.get(&key) {
            return Ok(v.clone());
        }
        self.write_waiting().await?;
        let v = read_current(self.conn, resource_type, id).await?;
        if !self.known.contains_key(&key) {
            self.remember_known(&key);
            self.known.insert(key, Known::Read(v.clone()));
        }
        Ok(v)
    }

    async fn version(
        &mut self,
        resource_type: &str,
        id: &str,
        version: i64,
    ) -> Result<Option<StoredVersion>, StorageError> {
        self.write_waiting().await?;
        read_version(self.conn, resource_type, id, version).await
    }

    async fn current_version(
        &mut self,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<(i64, bool, Option<String>)>, StorageError> {
        self.known_version(resource_type, &pg_text(id)).await
    }

    async fn search_ids(
        &mut self,
        ctx: &AccessContext,
        resource_type: &str,
        request: &SearchRequest,
        limit: usize,
    ) -> Result<Vec<String>, StorageError> {
        let (sql, args) = search_sql(
            Dialect::Postgres,
            limited(ctx),
            resource_type,
            request,
            None,
            Some(limit),
            "c.res_id",
        );
        let sql = Dialect::Postgres.placeholders(&sql);
        self.write_waiting().await?;
        let rows = bound(&sql, &args).fetch_all(&mut *self.conn).await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<Result<_, _>>()?)
    }

    async fn put_job(&mut self, id: &str, state: Option<&str>) -> Result<(), StorageError> {
        match state {
            Some(st) => sqlx::query("INSERT INTO job (id, state) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET state = excluded.state")
                .bind(id)
                .bind(pg_text(st))
                .execute(&mut *self.conn)
                .await?,
            None => sqlx::query("DELETE FROM job WHERE id = $1")
                .bind(id)
                .execute(&mut *self.conn)
                .await?,
        };
        Ok(())
    }

    async fn audit(&mut self, record: AuditRecord) -> Result<(), StorageError> {
        insert_audit(
            self.conn,
            &mut self.chain_end,
            &mut self.queued,
            &record,
            false,
        )
        .await?;
        self.audited += 1;
        Ok(())
    }

    async fn restore_version(&mut self, v: &StoredVersion) -> Result<(), StorageError> {
        self.write_waiting().await?;
        self.forget_all_known();
        let id = pg_text(&v.id);
        let body = v.body.as_deref().map(pg_text);
        sqlx::query(
            "INSERT INTO resource_version (seq, res_type, res_id, version, last_updated, last_updated_us, deleted, body, site, traceparent) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL)",
        )
        .bind(v.seq)
        .bind(&v.resource_type)
        .bind(&id)
        .bind(v.version)
        .bind(&v.last_updated)
        .bind(v.last_updated_us)
        .bind(i32::from(v.deleted))
        .bind(body.as_deref())
        .bind(v.site.as_deref())
        .execute(&mut *self.conn)
        .await?;
        sqlx::query(
            "INSERT INTO resource_current (res_type, res_id, seq, deleted, site) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (res_type, res_id) DO UPDATE SET seq = excluded.seq, deleted = excluded.deleted, site = excluded.site",
        )
        .bind(&v.resource_type)
        .bind(&id)
        .bind(v.seq)
        .bind(i32::from(v.deleted))
        .bind(v.site.as_deref())
        .execute(&mut *self.conn)
        .await?;
        self.last_seq = self.last_seq.max(v.seq);
        self.last_us = self.last_us.max(v.last_updated_us);
        Ok(())
    }

    async fn restore_audit(
        &mut self,
        a: &StoredAudit,
        entities: &[String],
    ) -> Result<(), StorageError> {
        self.write_waiting().await?;
        sqlx::query("INSERT INTO audit_event (seq, recorded_us, site, batch, body, prev_hash, hash, hash_version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
            .bind(a.seq)
            .bind(a.recorded_us)
            .bind(a.site.as_deref())
            .bind(i32::from(a.batch))
            .bind(&a.body)
            .bind(&a.prev_hash)
            .bind(&a.hash)
            .bind(a.hash_version as i32)
            .execute(&mut *self.conn)
            .await?;
        if !entities.is_empty() {
            sqlx::query("INSERT INTO audit_entity (entity, seq) SELECT e, $2 FROM UNNEST($1::text[]) AS t(e) ON CONFLICT DO NOTHING")
                .bind(entities)
                .bind(a.seq)
                .execute(&mut *self.conn)
                .await?;
        }
        self.chain_end = Some((a.seq, a.hash.clone()));
        Ok(())
    }

    async fn append(&mut self, new: NewVersion<'_>) -> Result<StoredVersion, StorageError> {
        self.appended += 1;
        let id = pg_text(new.id);
        let previous = self
            .known_version(new.resource_type, &id)
            .await?
            .map(|(v, ..)| v);
        let version = previous.unwrap_or(0) + 1;
        // lastUpdated strictly increases with seq, so `_since` never skips a late commit.
        let us = now_us().max(self.last_us + 1);
        self.last_us = us;
        let last_updated = instant_text(us)?;
        let body = (!new.deleted).then(|| pg_text(&(new.body)(version, &last_updated)));
        self.last_seq += 1;
        self.write_index(
            new.resource_type,
            &id,
            previous.is_some(),
            (!new.deleted).then_some(new.index),
        )
        .await?;
        let stored = StoredVersion {
            resource_type: new.resource_type.to_string(),
            id,
            version,
            seq: self.last_seq,
            last_updated,
            last_updated_us: us,
            deleted: new.deleted,
            body,
            site: new.site.map(String::from),
            traceparent: self.trace.clone(),
        };
        self.queued.add_version(&stored);
        let key = (stored.resource_type.clone(), stored.id.clone());
        self.remember_known(&key);
        self.known.insert(
            key,
            Known::Written((version, new.deleted, stored.site.clone())),
        );
        Ok(StoredVersion {
            id: new.id.to_string(),
            ..stored
        })
    }
}

impl PgWriteTxn<'_> {
    /// The current version, deletion and site of a resource (`id` PostgreSQL-safe) as this
    /// transaction stands: from what it has read or written, else from the database.
    async fn known_version(
        &mut self,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<CurrentState>, StorageError> {
        let key = (resource_type.to_string(), id.to_string());
        if !self.known.contains_key(&key) {
            // Not written in this transaction (it would be known, whether its rows went in or
            // wait), so the database has it as is; no other writer runs while this one holds
            // the change-sequence lock.
            let v = read_current(self.conn, resource_type, id).await?;
            self.remember_known(&key);
            self.known.insert(key.clone(), Known::Read(v));
        }
        let known = &self.known[&key];
        Ok(match known {
            Known::Read(v) => v.as_ref().map(|v| (v.version, v.deleted, v.site.clone())),
            Known::Written(state) => Some(state.clone()),
        })
    }
}

#[async_trait]
impl ResourceStore for PostgresStore {
    async fn read(
        &self,
        ctx: &AccessContext,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<StoredVersion>, StorageError> {
        let fresh = self.fresh_cache().await;
        let cached = fresh
            .as_ref()
            .and_then(|(cache, _)| cache.get(resource_type, id));
        let v = match cached {
            Some(v) => Some(StoredVersion::clone(&v)),
            None => {
                let mut conn = self.pool.acquire().await?;
                let v = read_current(&mut conn, resource_type, id).await?;
                if let (Some((cache, fresh)), Some(v)) = (&fresh, &v) {
                    cache.offer(fresh, v);
                }
                v
            }
        };
        Ok(v.filter(|v| ctx.sites.sees(v.site.as_deref())))
    }

    async fn read_many(
        &self,
        ctx: &AccessContext,
        resource_type: &str,
        ids: &[String],
    ) -> Result<Vec<StoredVersion>, StorageError> {
        // The read cache first (an `_include` names the same Patients page after page), then
        // one query for the rest.
        let fresh = self.fresh_cache().await;
        // Each resource once, as `= ANY(ids)` answers.
        let mut asked: Vec<&String> = ids.iter().collect();
        asked.sort_unstable();
        asked.dedup();
        let mut out = Vec::with_capacity(asked.len());
        let mut missing = Vec::with_capacity(asked.len());
        for id in asked {
            match fresh
                .as_ref()
                .and_then(|(cache, _)| cache.get(resource_type, id))
            {
                Some(v) => out.push(StoredVersion::clone(&v)),
                None => missing.push(pg_text(id)),
            }
        }
        if !missing.is_empty() {
            let sql = format!(
                "SELECT {VERSION_COLUMNS} FROM resource_current c JOIN resource_version v ON v.seq = c.seq WHERE c.res_type = $1 AND c.res_id = ANY($2)"
            );
            let rows = sqlx::query(AssertSqlSafe(sql))
                .bind(resource_type)
                .bind(missing)
                .fetch_all(&self.pool)
                .await?;
            for row in &rows {
                let v = version_from_row(row)?;
                if let Some((cache, fresh)) = &fresh {
                    cache.offer(fresh, &v);
                }
                out.push(v);
            }
        }
        out.retain(|v| ctx.sites.sees(v.site.as_deref()));
        Ok(out)
    }

    async fn vread(
        &self,
        ctx: &AccessContext,
        resource_type: &str,
        id: &str,
        version: i64,
    ) -> Result<Option<StoredVersion>, StorageError> {
        let mut conn = self.pool.acquire().await?;
        let v = read_version(&mut conn, resource_type, id, version).await?;
        Ok(v.filter(|v| ctx.sites.sees(v.site.as_deref())))
    }

    async fn history(
        &self,
        ctx: &AccessContext,
        q: &HistoryQuery,
    ) -> Result<HistoryPage, StorageError> {
        let (sql, args) = history_sql(limited(ctx), q);
        let rows = bound(&Dialect::Postgres.placeholders(&sql), &args)
            .fetch_all(&self.pool)
            .await?;
        let head = match rows.first() {
            Some(row) => row.try_get(VERSION_COLUMN_COUNT)?,
            None => sqlx::query_scalar(HEAD_SEQ).fetch_one(&self.pool).await?,
        };
        let versions = rows
            .iter()
            .map(version_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(history_page(q, versions, head))
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
            Dialect::Postgres,
            limited(ctx),
            resource_type,
            request,
            after,
            count + 1,
        );
        let keys = request.sort.len();
        let mut versions: Vec<StoredVersion> = Vec::new();
        let mut last_keys = Vec::new();
        for (sql, args) in phases {
            let sql = Dialect::Postgres.placeholders(&sql);
            let rows = bound(&sql, &args).fetch_all(&self.pool).await?;
            for row in &rows {
                if versions.len() == count {
                    // One more row exists: the page ends at the previous one.
                    let id = versions.last().map(|v| v.id.clone()).unwrap_or_default();
                    return Ok(SearchPage {
                        next: Some(Cursor {
                            keys: last_keys,
                            id,
                        }),
                        versions,
                    });
                }
                versions.push(version_from_row(row)?);
                last_keys = (0..keys)
                    .map(|k| sort_value(row, VERSION_COLUMN_COUNT + k))
                    .collect();
            }
        }
        Ok(SearchPage {
            versions,
            next: None,
        })
    }

    async fn count(
        &self,
        ctx: &AccessContext,
        resource_type: &str,
        request: &SearchRequest,
    ) -> Result<u64, StorageError> {
        let (sql, args) = search_sql(
            Dialect::Postgres,
            limited(ctx),
            resource_type,
            request,
            None,
            None,
            "COUNT(*)",
        );
        let sql = Dialect::Postgres.placeholders(&sql);
        let n: i64 = bound(&sql, &args).fetch_one(&self.pool).await?.try_get(0)?;
        Ok(n.max(0) as u64)
    }

    async fn current_page(
        &self,
        ctx: &AccessContext,
        after: Option<(String, String)>,
        limit: usize,
    ) -> Result<Vec<StoredVersion>, StorageError> {
        let (t, i) = after.unwrap_or_default();
        let rows = self
            .versions(
                &format!(
                    "SELECT {VERSION_COLUMNS} FROM resource_current c JOIN resource_version v ON v.seq = c.seq \
                     WHERE c.deleted = 0 AND (c.res_type > ? OR (c.res_type = ? AND c.res_id > ?)) ORDER BY c.res_type, c.res_id LIMIT ?"
                ),
                &[t.clone().into(), t.into(), i.into(), (limit as i64).into()],
            )
            .await?;
        // A page may come back short for a limited caller; callers page until empty.
        Ok(rows
            .into_iter()
            .filter(|v| ctx.sites.sees(v.site.as_deref()))
            .collect())
    }

    async fn last_seq(&self, _ctx: &AccessContext) -> Result<i64, StorageError> {
        Ok(sqlx::query_scalar(HEAD_SEQ).fetch_one(&self.pool).await?)
    }

    async fn snapshot_page(
        &self,
        ctx: &AccessContext,
        resource_type: &str,
        as_of: i64,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<StoredVersion>, StorageError> {
        // As on SQLite: page over the current versions by id; a resource changed after `as_of`
        // is read at its newest version up to `as_of`.
        let current = format!(
            "SELECT {VERSION_COLUMNS} FROM resource_current c JOIN resource_version v ON v.seq = c.seq \
             WHERE c.res_type = ? AND c.res_id > ? ORDER BY c.res_id LIMIT ?"
        );
        let older = format!(
            "SELECT {VERSION_COLUMNS} FROM resource_version v WHERE v.res_type = ? AND v.res_id = ? AND v.seq <= ? ORDER BY v.version DESC LIMIT 1"
        );
        let mut out = Vec::new();
        let mut after = after.unwrap_or_default();
        loop {
            let page = self
                .versions(
                    &current,
                    &[
                        resource_type.into(),
                        after.clone().into(),
                        (limit as i64).into(),
                    ],
                )
                .await?;
            let Some(last) = page.last().map(|v| v.id.clone()) else {
                break;
            };
            for v in page {
                let v = if v.seq <= as_of {
                    Some(v)
                } else {
                    self.versions(
                        &older,
                        &[resource_type.into(), v.id.clone().into(), as_of.into()],
                    )
                    .await?
                    .pop()
                };
                if let Some(v) = v.filter(|v| !v.deleted && ctx.sites.sees(v.site.as_deref())) {
                    out.push(v);
                    if out.len() == limit {
                        return Ok(out);
                    }
                }
            }
            after = last;
        }
        Ok(out)
    }

    async fn index_values(
        &self,
        _ctx: &AccessContext,
        resource_type: &str,
        param: &str,
        ids: &[String],
    ) -> Result<Vec<(String, String)>, StorageError> {
        let ids: Vec<String> = ids.iter().map(|i| pg_text(i)).collect();
        Ok(sqlx::query_as(
            "SELECT res_id, value FROM search_index WHERE res_type = $1 AND res_id = ANY($2) AND param = $3",
        )
        .bind(resource_type)
        .bind(ids)
        .bind(param)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn audit(&self, record: AuditRecord) -> Result<(), StorageError> {
        self.pending_audit.queue(record, &self.jobs).await
    }

    async fn audit_read(
        &self,
        ctx: &AccessContext,
        seq: i64,
    ) -> Result<Option<StoredAudit>, StorageError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_event WHERE seq = $1"
        )))
        .bind(seq)
        .fetch_optional(&self.pool)
        .await?;
        let a = row.as_ref().map(audit_from_row).transpose()?;
        // Monitors read the changes of their sites' data, not other callers' access events.
        let monitor = ctx.role == crate::Role::Monitor;
        Ok(a.filter(|a| ctx.sites.sees(a.site.as_deref()) && (!a.batch || !monitor)))
    }

    async fn audit_entities(
        &self,
        from_seq: i64,
        to_seq: i64,
    ) -> Result<Vec<(i64, String)>, StorageError> {
        Ok(sqlx::query_as(
            "SELECT seq, entity FROM audit_entity WHERE seq BETWEEN $1 AND $2 ORDER BY seq, entity",
        )
        .bind(from_seq)
        .bind(to_seq)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn audit_search(
        &self,
        ctx: &AccessContext,
        q: &AuditQuery,
    ) -> Result<Vec<StoredAudit>, StorageError> {
        let changes_only = ctx.role == crate::Role::Monitor;
        let (sql, args) = audit_search_sql(limited(ctx), changes_only, q);
        let sql = Dialect::Postgres.placeholders(&sql);
        let rows = bound(&sql, &args).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(audit_from_row).collect::<Result<_, _>>()?)
    }

    async fn job(&self, id: &str) -> Result<Option<String>, StorageError> {
        Ok(sqlx::query_scalar("SELECT state FROM job WHERE id = $1")
            .bind(pg_text(id))
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn jobs(&self) -> Result<Vec<(String, String)>, StorageError> {
        Ok(sqlx::query_as("SELECT id, state FROM job ORDER BY id")
            .fetch_all(&self.pool)
            .await?)
    }

    async fn submit(&self, _ctx: &AccessContext, job: WriteJob) -> Result<(), StorageError> {
        self.jobs
            .send(job)
            .await
            .map_err(|_| StorageError::WriterGone)
    }

    async fn refresh_statistics(&self) -> Result<(), StorageError> {
        // VACUUM as well as ANALYZE: it sets the visibility map of the pages just written, so
        // that the index-only scans of search read no heap (a one-month date range at a million
        // Observations: 2,483 heap fetches and 25-29 ms before, none and 13-19 ms after). On a
        // connection of its own without the read budget: at a million it takes seconds, and a
        // load that ends must leave the planner informed. (VACUUM cannot share a statement
        // string with SET, so three statements.)
        on_own_connection(
            &self.pool.connect_options(),
            &["SET statement_timeout = 0", "VACUUM (ANALYZE)"],
        )
        .await?;
        Ok(())
    }

    async fn space(&self, detail: bool) -> Result<StoreSpace, StorageError> {
        let (total, resources): (i64, i64) = sqlx::query_as(
            "SELECT pg_database_size(current_database()), (SELECT COUNT(*) FROM resource_current)",
        )
        .fetch_one(&self.pool)
        .await?;
        let parts: Vec<(String, i64)> = if detail {
            // Tables with their TOAST (large bodies), indexes on their own.
            sqlx::query_as(
                "SELECT c.relname::text, CASE WHEN c.relkind = 'r' THEN pg_table_size(c.oid) ELSE pg_relation_size(c.oid) END \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'i') ORDER BY 2 DESC, 1",
            )
            .fetch_all(&self.pool)
            .await?
        } else {
            Vec::new()
        };
        Ok(StoreSpace {
            total: total.max(0) as u64,
            resources: resources.max(0) as u64,
            parts: parts
                .into_iter()
                .map(|(name, bytes)| SpaceUse {
                    name,
                    bytes: bytes.max(0) as u64,
                })
                .collect(),
        })
    }

    async fn is_ready(&self) -> bool {
        // Reachable, and every migration this build knows is applied (a replica of an older
        // build beside a newer schema, or the reverse, is not ready).
        let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        let applied: Result<Option<i64>, _> =
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&self.pool)
                .await;
        matches!(applied, Ok(Some(v)) if v == latest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{IndexEntry, RangeEntry};

    #[test]
    fn a_job_queues_its_resources_rows_as_columns_and_a_flush_empties_them() {
        let index = Index {
            text: vec![IndexEntry {
                param: "code",
                value: "8302-2".into(),
                system: Some("http://loinc.org".into()),
            }],
            ranges: vec![RangeEntry {
                param: "value-quantity",
                low: 172.0,
                high: 172.0,
                unit_system: "http://unitsofmeasure.org".into(),
                unit_code: "cm".into(),
                token_system: String::new(),
                token_code: String::new(),
            }],
        };
        let mut rows = JobRows::default();
        rows.add_index("Observation", "o1", &index);
        rows.add_index("Observation", "o\0-2", &index);
        assert_eq!(rows.text.res_id, ["o1", "o\0-2"]);
        assert_eq!(rows.ranges.low, [172.0, 172.0]);
        assert_eq!(rows.ranges.long, [0, 0]);
        rows.clear();
        assert!(rows.text.res_id.is_empty() && rows.ranges.res_id.is_empty());
    }

    /// One INSERT may not update a row twice: a resource written twice in one job (a load
    /// file that repeats an id) keeps one current row, the later version's.
    #[test]
    fn a_resource_written_twice_in_a_job_has_one_current_row_the_later() {
        let version = |v: i64, seq: i64, deleted: bool| StoredVersion {
            resource_type: "Observation".into(),
            id: "o1".into(),
            version: v,
            seq,
            last_updated: String::new(),
            last_updated_us: seq,
            deleted,
            body: (!deleted).then(|| "{}".into()),
            site: Some("site-a".into()),
            traceparent: None,
        };
        let mut rows = JobRows::default();
        assert!(rows.is_empty());
        rows.add_version(&version(1, 10, false));
        rows.add_version(&StoredVersion {
            id: "o2".into(),
            ..version(1, 11, false)
        });
        rows.add_version(&version(2, 12, true));
        assert!(!rows.is_empty());
        assert_eq!(rows.versions.seq, [10, 11, 12]);
        assert_eq!(rows.current.res_id, ["o1", "o2"]);
        assert_eq!(rows.current.seq, [12, 11]);
        assert_eq!(rows.current.deleted, [1, 0]);
        assert_eq!(rows.versions.body[2], None);
    }
}

/// The PostgreSQL queries' plans and the read pool, on a real server
/// (TRIALBRIDGE_TEST_POSTGRES_URL, which `scripts/test.sh` starts).
#[cfg(test)]
mod server_tests {
    use super::*;
    use crate::sql::tests::observation_history;
    use crate::HistoryOrder;

    /// The URL of a fresh, empty database on the test server.
    async fn database_url(name: &str) -> String {
        let server = std::env::var("TRIALBRIDGE_TEST_POSTGRES_URL").expect(
            "TRIALBRIDGE_TEST_POSTGRES_URL names no PostgreSQL: run the tests with `bash scripts/test.sh`",
        );
        let admin = PgPool::connect(&server).await.unwrap();
        sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}")))
            .execute(&admin)
            .await
            .unwrap();
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .unwrap();
        let (base, _) = server.rsplit_once('/').unwrap();
        format!("{base}/{name}")
    }

    /// A fresh database on the test server, migrated.
    async fn database(name: &str) -> PgPool {
        let pool = PgPool::connect(&database_url(name).await).await.unwrap();
        MIGRATOR.run(&pool).await.unwrap();
        pool
    }

    /// The read pool does not ping a connection it hands out in steady use, so it must still
    /// notice one the server has dropped while it sat idle (a restart of PostgreSQL, a proxy's
    /// idle timeout): the next read gets a working connection, not the dead one's error.
    #[tokio::test]
    async fn a_read_after_the_server_dropped_the_idle_connections_succeeds() {
        let name = format!("tb_pool_idle_{}", std::process::id());
        let url = database_url(&name).await;
        let options = StoreOptions {
            read_cache_bytes: 0,
            ..StoreOptions::default()
        };
        let store = PostgresStore::open_with(&url, options).await.unwrap();
        let ctx = AccessContext::system("test");
        let read = || store.read(&ctx, "Patient", "p1");
        // Several reads at once, so that the pool holds several connections.
        let first = futures::future::join_all((0..4).map(|_| read())).await;
        assert!(first.iter().all(|r| matches!(r, Ok(None))), "{first:?}");
        let admin = PgPool::connect(&url).await.unwrap();
        let dropped: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()
               AND application_name = 'trialbridge') AS t",
        )
        .fetch_one(&admin)
        .await
        .unwrap();
        assert!(dropped >= 2, "{dropped} connections dropped");
        tokio::time::sleep(IDLE_BEFORE_PING + Duration::from_millis(200)).await;
        for _ in 0..8 {
            let r = read().await;
            assert!(matches!(r, Ok(None)), "{r:?}");
        }
    }

    /// Rows a plan read and threw away (`Rows Removed by Filter`, over every node).
    fn removed_by_filter(plan: &serde_json::Value) -> i64 {
        let own = plan["Rows Removed by Filter"].as_i64().unwrap_or(0);
        own + plan["Plans"]
            .as_array()
            .into_iter()
            .flatten()
            .map(removed_by_filter)
            .sum::<i64>()
    }

    /// A type's history reads that type's versions only: 2,000 Observations written first and
    /// 1,000 Patients after them (as a load of the results, then of their Patients, leaves a
    /// store) must not make the newest page of Observations step over the Patients.
    #[tokio::test]
    async fn a_type_history_page_reads_only_that_types_versions() {
        let pool = database(&format!("tb_plan_history_{}", std::process::id())).await;
        sqlx::query(
            "INSERT INTO resource_version (seq, res_type, res_id, version, last_updated, last_updated_us, deleted, body)
             SELECT g, CASE WHEN g <= 2000 THEN 'Observation' ELSE 'Patient' END, 'r' || g, 1,
                    '2026-01-01T00:00:00Z', g, 0, '{}'
             FROM generate_series(1, 3000) AS g",
        )
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query("ANALYZE resource_version")
            .execute(&pool)
            .await
            .unwrap();
        for order in [HistoryOrder::NewestFirst, HistoryOrder::OldestFirst] {
            let (sql, args) = history_sql(None, &observation_history(order, None));
            let sql = Dialect::Postgres.placeholders(&sql);
            let explain = format!("EXPLAIN (ANALYZE, FORMAT JSON) {sql}");
            let plan: serde_json::Value = bound(&explain, &args)
                .fetch_one(&pool)
                .await
                .unwrap()
                .try_get(0)
                .unwrap();
            let root = &plan[0]["Plan"];
            assert_eq!(root["Actual Rows"], 51, "{plan}");
            assert_eq!(removed_by_filter(root), 0, "{order:?}: {plan}");
            let rows = bound(&sql, &args).fetch_all(&pool).await.unwrap();
            let seqs: Vec<i64> = rows.iter().map(|r| r.get::<i64, _>(3)).collect();
            let expected: Vec<i64> = match order {
                HistoryOrder::NewestFirst => (1950..=2000).rev().collect(),
                HistoryOrder::OldestFirst => (1..=51).collect(),
            };
            assert_eq!(seqs, expected, "{order:?}");
        }
    }
}
