//! The SQLite backend: WAL, `synchronous=FULL`, one writer task with group commit, a pool of
//! read connections.
//!
//! Gap-safety of the change sequence: `seq` is assigned inside the write transaction and SQLite
//! admits one writer at a time (across processes too), so commits happen in `seq` order and a
//! reader that sees `seq = n` also sees every version below `n`.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, Executor, QueryBuilder, Row, Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::mpsc;

use trialbridge_fhir::search::{Match, SearchRequest};

use crate::{
    AccessContext, HistoryOrder, HistoryPage, HistoryQuery, HistoryScope, JobFinish, JobOutcome,
    NewVersion, ResourceStore, SearchPage, StorageError, StoredVersion, WriteJob, WriteTxn,
};

/// How many queued write jobs one commit may take at most.
const MAX_BATCH: usize = 256;

/// Where and how to open the SQLite database.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// The database file.
    pub path: PathBuf,
    /// Read connections in the pool.
    pub readers: u32,
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
            readers: 4,
        })
    }
}

/// The SQLite implementation of [`ResourceStore`].
pub struct SqliteStore {
    readers: SqlitePool,
    jobs: mpsc::Sender<WriteJob>,
}

const VERSION_COLUMNS: &str =
    "v.res_type, v.res_id, v.version, v.seq, v.last_updated, v.last_updated_us, v.deleted, v.body";

fn version_from_row(row: &SqliteRow) -> Result<StoredVersion, StorageError> {
    Ok(StoredVersion {
        resource_type: row.try_get(0)?,
        id: row.try_get(1)?,
        version: row.try_get(2)?,
        seq: row.try_get(3)?,
        last_updated: row.try_get(4)?,
        last_updated_us: row.try_get(5)?,
        deleted: row.try_get::<i64, _>(6)? != 0,
        body: row.try_get(7)?,
    })
}

impl SqliteStore {
    /// Opens (creating if needed) the database, applies migrations and starts the writer.
    pub async fn open(options: SqliteOptions) -> Result<Self, StorageError> {
        if let Some(dir) = options.path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| StorageError::Database(sqlx::Error::Io(e)))?;
            }
        }
        let connect = SqliteConnectOptions::from_str("sqlite://")?
            .filename(&options.path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: the WAL is fsynced at every commit, so a 2xx survives a crash of the machine,
            // not only of the process.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .pragma("cache_size", "-65536")
            .pragma("temp_store", "memory");
        let mut writer = SqliteConnection::connect_with(&connect).await?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&mut writer)
            .await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(options.readers.max(1))
            .min_connections(1)
            .connect_with(connect.read_only(true))
            .await?;
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(writer_loop(writer, rx));
        Ok(Self { readers, jobs: tx })
    }
}

async fn writer_loop(mut conn: SqliteConnection, mut rx: mpsc::Receiver<WriteJob>) {
    let mut batch: Vec<WriteJob> = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut finishers = Vec::with_capacity(batch.len());
        let result = run_batch(&mut conn, &mut batch, &mut finishers).await;
        if let Err(e) = &result {
            tracing::error!(error = %e, "write batch failed; rolling back");
            let _ = conn.execute("ROLLBACK").await;
        }
        let msg = result.as_ref().err().map(ToString::to_string);
        for f in finishers {
            f(match &msg {
                None => Ok(()),
                Some(m) => Err(StorageError::Corrupt(format!("commit failed: {m}"))),
            });
        }
        // Jobs not reached because the batch failed early are dropped, which tells their
        // callers that the writer could not run them.
        batch.clear();
    }
}

async fn run_batch(
    conn: &mut SqliteConnection,
    batch: &mut Vec<WriteJob>,
    finishers: &mut Vec<JobFinish>,
) -> Result<(), StorageError> {
    conn.execute("BEGIN IMMEDIATE").await?;
    let last_us: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(last_updated_us), 0) FROM resource_version")
            .fetch_one(&mut *conn)
            .await?;
    let mut txn = SqliteWriteTxn { conn, last_us };
    for job in batch.drain(..) {
        txn.conn.execute("SAVEPOINT job").await?;
        // A panicking job must not take the writer down: its savepoint is rolled back and its
        // caller sees the writer's error.
        match std::panic::AssertUnwindSafe(job(&mut txn))
            .catch_unwind()
            .await
        {
            Ok(JobOutcome { keep: true, finish }) => {
                txn.conn.execute("RELEASE job").await?;
                finishers.push(finish);
            }
            Ok(JobOutcome {
                keep: false,
                finish,
            }) => {
                txn.conn.execute("ROLLBACK TO job").await?;
                txn.conn.execute("RELEASE job").await?;
                finishers.push(finish);
            }
            Err(_) => {
                tracing::error!("a write job panicked; its changes were rolled back");
                txn.conn.execute("ROLLBACK TO job").await?;
                txn.conn.execute("RELEASE job").await?;
            }
        }
    }
    txn.conn.execute("COMMIT").await?;
    Ok(())
}

struct SqliteWriteTxn<'c> {
    conn: &'c mut SqliteConnection,
    last_us: i64,
}

fn now_us() -> i64 {
    let t = time::OffsetDateTime::now_utc();
    (t.unix_timestamp_nanos() / 1000) as i64
}

#[async_trait]
impl WriteTxn for SqliteWriteTxn<'_> {
    async fn current(
        &mut self,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<StoredVersion>, StorageError> {
        read_current(&mut *self.conn, resource_type, id).await
    }

    async fn search_ids(
        &mut self,
        resource_type: &str,
        request: &SearchRequest,
        limit: usize,
    ) -> Result<Vec<String>, StorageError> {
        let mut qb = search_query(resource_type, request, None, Some(limit), "c.res_id");
        let rows = qb.build().fetch_all(&mut *self.conn).await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>(0).map_err(StorageError::from))
            .collect()
    }

    async fn append(&mut self, new: NewVersion<'_>) -> Result<StoredVersion, StorageError> {
        let previous: Option<i64> = sqlx::query_scalar(
            "SELECT v.version FROM resource_current c JOIN resource_version v ON v.seq = c.seq WHERE c.res_type = ?1 AND c.res_id = ?2",
        )
        .bind(new.resource_type)
        .bind(new.id)
        .fetch_optional(&mut *self.conn)
        .await?;
        let version = previous.unwrap_or(0) + 1;
        // lastUpdated strictly increases with seq, so `_since` never skips a late commit.
        let us = now_us().max(self.last_us + 1);
        self.last_us = us;
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
            .map_err(|e| StorageError::Corrupt(e.to_string()))?;
        let last_updated = trialbridge_fhir::instant::format(t);
        let body = (!new.deleted).then(|| (new.body)(version, &last_updated));
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO resource_version (res_type, res_id, version, last_updated, last_updated_us, deleted, body) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING seq",
        )
        .bind(new.resource_type)
        .bind(new.id)
        .bind(version)
        .bind(&last_updated)
        .bind(us)
        .bind(i64::from(new.deleted))
        .bind(body.as_deref())
        .fetch_one(&mut *self.conn)
        .await?;
        sqlx::query(
            "INSERT INTO resource_current (res_type, res_id, seq, deleted) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (res_type, res_id) DO UPDATE SET seq = excluded.seq, deleted = excluded.deleted",
        )
        .bind(new.resource_type)
        .bind(new.id)
        .bind(seq)
        .bind(i64::from(new.deleted))
        .execute(&mut *self.conn)
        .await?;
        if previous.is_some() {
            sqlx::query("DELETE FROM search_index WHERE res_type = ?1 AND res_id = ?2")
                .bind(new.resource_type)
                .bind(new.id)
                .execute(&mut *self.conn)
                .await?;
        }
        if !new.deleted {
            // 5 bound values per row; SQLite allows 32,766 per statement.
            for chunk in new.index.chunks(1000) {
                let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
                    "INSERT INTO search_index (res_type, param, value, system, res_id) ",
                );
                qb.push_values(chunk, |mut b, e| {
                    b.push_bind(new.resource_type)
                        .push_bind(e.param)
                        .push_bind(&e.value)
                        .push_bind(e.system.as_deref())
                        .push_bind(new.id);
                });
                qb.build().execute(&mut *self.conn).await?;
            }
        }
        Ok(StoredVersion {
            resource_type: new.resource_type.to_string(),
            id: new.id.to_string(),
            version,
            seq,
            last_updated,
            last_updated_us: us,
            deleted: new.deleted,
            body,
        })
    }
}

async fn read_current<'e, E: Executor<'e, Database = Sqlite>>(
    ex: E,
    resource_type: &str,
    id: &str,
) -> Result<Option<StoredVersion>, StorageError> {
    let sql = format!(
        "SELECT {VERSION_COLUMNS} FROM resource_current c JOIN resource_version v ON v.seq = c.seq WHERE c.res_type = ?1 AND c.res_id = ?2"
    );
    let row = sqlx::query(&sql)
        .bind(resource_type)
        .bind(id)
        .fetch_optional(ex)
        .await?;
    row.as_ref().map(version_from_row).transpose()
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

/// Builds the search SELECT over current, non-deleted resources, ordered by id; with `limit` `None` it counts them instead.
fn search_query<'q>(
    resource_type: &'q str,
    request: &'q SearchRequest,
    after_id: Option<&'q str>,
    limit: Option<usize>,
    columns: &str,
) -> QueryBuilder<'q, Sqlite> {
    let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(format!(
        "SELECT {columns} FROM resource_current c JOIN resource_version v ON v.seq = c.seq WHERE c.res_type = "
    ));
    qb.push_bind(resource_type).push(" AND c.deleted = 0");
    for criterion in &request.criteria {
        qb.push(" AND (");
        for (i, m) in criterion.any_of.iter().enumerate() {
            if i > 0 {
                qb.push(" OR ");
            }
            if let Match::Id(id) = m {
                qb.push("c.res_id = ").push_bind(id.as_str());
                continue;
            }
            qb.push("c.res_id IN (SELECT i.res_id FROM search_index i WHERE i.res_type = ")
                .push_bind(resource_type)
                .push(" AND i.param = ")
                .push_bind(criterion.param.as_str());
            match m {
                Match::Id(_) => {}
                Match::Token { system, code } => {
                    if let Some(code) = code {
                        qb.push(" AND i.value = ").push_bind(code.as_str());
                    }
                    match system {
                        None => {}
                        Some(None) => {
                            qb.push(" AND i.system IS NULL");
                        }
                        Some(Some(s)) => {
                            qb.push(" AND i.system = ").push_bind(s.as_str());
                        }
                    }
                }
                Match::StartsWith(prefix) => {
                    qb.push(" AND i.value >= ")
                        .push_bind(prefix.as_str())
                        .push(" AND i.value < ")
                        .push_bind(format!("{prefix}\u{10FFFF}"));
                }
                Match::Reference {
                    target_type: Some(t),
                    id,
                } => {
                    qb.push(" AND i.value = ").push_bind(format!("{t}/{id}"));
                }
                Match::Reference {
                    target_type: None,
                    id,
                } => {
                    qb.push(" AND i.value GLOB ")
                        .push_bind(format!("*/{}", glob_literal(id)));
                }
                Match::Uri(u) => {
                    qb.push(" AND i.value = ").push_bind(u.as_str());
                }
            }
            qb.push(")");
        }
        qb.push(")");
    }
    if let Some(after) = after_id {
        qb.push(" AND c.res_id > ").push_bind(after);
    }
    if let Some(limit) = limit {
        qb.push(" ORDER BY c.res_id LIMIT ").push_bind(limit as i64);
    }
    qb
}

#[async_trait]
impl ResourceStore for SqliteStore {
    async fn read(
        &self,
        _ctx: &AccessContext,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<StoredVersion>, StorageError> {
        read_current(&self.readers, resource_type, id).await
    }

    async fn vread(
        &self,
        _ctx: &AccessContext,
        resource_type: &str,
        id: &str,
        version: i64,
    ) -> Result<Option<StoredVersion>, StorageError> {
        let sql = format!("SELECT {VERSION_COLUMNS} FROM resource_version v WHERE v.res_type = ?1 AND v.res_id = ?2 AND v.version = ?3");
        let row = sqlx::query(&sql)
            .bind(resource_type)
            .bind(id)
            .bind(version)
            .fetch_optional(&self.readers)
            .await?;
        row.as_ref().map(version_from_row).transpose()
    }

    async fn history(
        &self,
        _ctx: &AccessContext,
        q: &HistoryQuery,
    ) -> Result<HistoryPage, StorageError> {
        let mut conn = self.readers.acquire().await?;
        // One read transaction: the snapshot bound and the page come from the same snapshot.
        conn.execute("BEGIN").await?;
        let result = async {
            let max_seq: i64 =
                sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM resource_version")
                    .fetch_one(&mut *conn)
                    .await?;
            let snapshot = q.snapshot_seq.unwrap_or(max_seq).min(max_seq);
            let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(format!(
                "SELECT {VERSION_COLUMNS} FROM resource_version v WHERE v.seq <= "
            ));
            qb.push_bind(snapshot);
            match &q.scope {
                HistoryScope::System => {}
                HistoryScope::Type(t) => {
                    qb.push(" AND v.res_type = ").push_bind(t.as_str());
                }
                HistoryScope::Instance(t, id) => {
                    qb.push(" AND v.res_type = ")
                        .push_bind(t.as_str())
                        .push(" AND v.res_id = ")
                        .push_bind(id.as_str());
                }
            }
            if let Some(since) = q.since_us {
                qb.push(" AND v.last_updated_us >= ").push_bind(since);
            }
            if let Some(at) = q.at_or_before_us {
                qb.push(" AND v.last_updated_us <= ").push_bind(at);
            }
            let (cmp, order) = match q.order {
                HistoryOrder::NewestFirst => ("<", "DESC"),
                HistoryOrder::OldestFirst => (">", "ASC"),
            };
            if let Some(after) = q.after_seq {
                qb.push(format!(" AND v.seq {cmp} ")).push_bind(after);
            }
            qb.push(format!(" ORDER BY v.seq {order} LIMIT "))
                .push_bind(q.count as i64 + 1);
            let rows = qb.build().fetch_all(&mut *conn).await?;
            let mut versions = rows
                .iter()
                .map(version_from_row)
                .collect::<Result<Vec<_>, _>>()?;
            let has_more = versions.len() > q.count;
            versions.truncate(q.count);
            Ok::<_, StorageError>(HistoryPage {
                versions,
                snapshot_seq: snapshot,
                has_more,
            })
        }
        .await;
        let _ = conn.execute("COMMIT").await;
        result
    }

    async fn search(
        &self,
        _ctx: &AccessContext,
        resource_type: &str,
        request: &SearchRequest,
        after_id: Option<&str>,
        count: usize,
    ) -> Result<SearchPage, StorageError> {
        let mut qb = search_query(
            resource_type,
            request,
            after_id,
            Some(count + 1),
            VERSION_COLUMNS,
        );
        let rows = qb.build().fetch_all(&self.readers).await?;
        let mut versions = rows
            .iter()
            .map(version_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let has_more = versions.len() > count;
        versions.truncate(count);
        Ok(SearchPage { versions, has_more })
    }

    async fn count(
        &self,
        _ctx: &AccessContext,
        resource_type: &str,
        request: &SearchRequest,
    ) -> Result<u64, StorageError> {
        let mut qb = search_query(resource_type, request, None, None, "COUNT(*)");
        let n: i64 = qb.build_query_scalar().fetch_one(&self.readers).await?;
        Ok(n.max(0) as u64)
    }

    async fn submit(&self, _ctx: &AccessContext, job: WriteJob) -> Result<(), StorageError> {
        self.jobs
            .send(job)
            .await
            .map_err(|_| StorageError::WriterGone)
    }

    async fn is_ready(&self) -> bool {
        sqlx::query_scalar::<_, i64>("SELECT 1")
            .fetch_one(&self.readers)
            .await
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
        let id = id.to_string();
        write(s, &AccessContext::system(), move |txn| {
            Box::pin(async move {
                let index = extract(t, &body);
                let text = body.to_string();
                let render = move |_v: i64, _t: &str| text.clone();
                txn.append(NewVersion {
                    resource_type: t,
                    id: &id,
                    deleted: false,
                    index: &index,
                    body: &render,
                })
                .await
            })
        })
        .await
    }

    #[tokio::test]
    async fn versions_sequence_and_index() {
        let (_d, s) = store().await;
        let ctx = AccessContext::system();
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
        let ctx = AccessContext::system();
        let failing = write::<(), StorageError, _>(&s, &ctx, |txn| {
            Box::pin(async move {
                let render = |_: i64, _: &str| "{}".to_string();
                txn.append(NewVersion {
                    resource_type: "Patient",
                    id: "x",
                    deleted: false,
                    index: &[],
                    body: &render,
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
        let mut c =
            SqliteConnection::connect(&format!("sqlite://{}", d.path().join("t.db").display()))
                .await
                .unwrap();
        assert!(c
            .execute("UPDATE resource_version SET body = '{}'")
            .await
            .is_err());
        assert!(c.execute("DELETE FROM resource_version").await.is_err());
    }
}
