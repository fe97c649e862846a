//! The gateway's own database (SQLite, WAL, `synchronous=FULL`): received messages with their
//! dedup key, state and acknowledgement (the outbox and the dead-letter queue are states of
//! it), the key list (MRN to pseudonymous subject), and counters. A message is acknowledged
//! only after its row is committed.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};

use crate::pseudonym::Enrolment;

/// A failure of the gateway database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite failed.
    #[error("site-gateway database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The blocking task was lost.
    #[error("site-gateway database task failed: {0}")]
    Task(String),
    /// A write did not commit.
    #[error("site-gateway database write failed: {0}")]
    Write(String),
}

/// State of a received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting to be forwarded.
    Outbox,
    /// In the trial store.
    Forwarded,
    /// Nothing to forward (not enrolled, outside the dataset, a merge).
    Done,
    /// In the dead-letter queue.
    Dead,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            Self::Outbox => "outbox",
            Self::Forwarded => "forwarded",
            Self::Done => "done",
            Self::Dead => "dead",
        }
    }
}

/// A message row to insert.
#[derive(Debug, Clone)]
pub struct NewMessage<'a> {
    /// MSH-3^MSH-4.
    pub sender: &'a str,
    /// MSH-10.
    pub control_id: &'a str,
    /// Received time (FHIR instant).
    pub received: &'a str,
    /// The message bytes; `None` when the patient is not enrolled (nothing of them is kept).
    pub raw: Option<&'a [u8]>,
    /// State.
    pub state: State,
    /// Why (dead letters, drops).
    pub reason: Option<&'a str>,
    /// The transaction Bundle to forward.
    pub bundle: Option<&'a str>,
    /// The acknowledgement sent (re-sent for a duplicate).
    pub ack: &'a str,
}

/// A dead letter as listed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetter {
    /// Row id.
    pub id: i64,
    /// MSH-3^MSH-4.
    pub sender: String,
    /// MSH-10.
    pub control_id: String,
    /// Received time.
    pub received: String,
    /// Why it is here.
    pub reason: String,
    /// The message (only when one is inspected).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A message waiting in the outbox: its id, its transaction Bundle, and the W3C traceparent of
/// its receipt (when traced).
pub type Outgoing = (i64, String, Option<String>);

/// The SQL of a write job, run inside its own savepoint.
type Work = Box<dyn FnOnce(&Connection) -> Result<(), rusqlite::Error> + Send>;

/// A write job for the writer thread: its SQL, and where to say whether it committed.
struct Job {
    work: Work,
    done: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// The gateway database: one writer thread that commits every queued write together (group
/// commit: one fsync for all messages that arrived meanwhile, each in its own savepoint), and
/// a read connection.
#[derive(Clone)]
pub struct Db {
    reader: Arc<Mutex<Connection>>,
    writer: std::sync::mpsc::Sender<Job>,
}

/// Runs jobs in batches until every sender is gone.
fn writer_loop(conn: Connection, jobs: std::sync::mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < 512 {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            for j in batch {
                let _ = j.done.send(Err(e.to_string()));
            }
            continue;
        }
        let mut results = Vec::with_capacity(batch.len());
        for j in batch {
            let outcome = conn
                .execute_batch("SAVEPOINT job")
                .and_then(|_| (j.work)(&conn));
            match outcome {
                Ok(()) => {
                    let _ = conn.execute_batch("RELEASE job");
                    results.push((j.done, Ok(())));
                }
                Err(e) => {
                    let _ = conn.execute_batch("ROLLBACK TO job; RELEASE job");
                    results.push((j.done, Err(e.to_string())));
                }
            }
        }
        match conn.execute_batch("COMMIT") {
            Ok(()) => {
                for (done, r) in results {
                    let _ = done.send(r);
                }
            }
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                for (done, _) in results {
                    let _ = done.send(Err(format!("commit failed: {e}")));
                }
            }
        }
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS message (
    id INTEGER PRIMARY KEY,
    sender TEXT NOT NULL,
    control_id TEXT NOT NULL,
    received TEXT NOT NULL,
    raw BLOB,
    state TEXT NOT NULL CHECK (state IN ('outbox','forwarded','done','dead')),
    reason TEXT,
    bundle TEXT,
    ack TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    UNIQUE (sender, control_id)
);
CREATE INDEX IF NOT EXISTS message_outbox ON message (state, id);
CREATE TABLE IF NOT EXISTS enrolment (
    authority TEXT NOT NULL,
    mrn TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    site_study TEXT NOT NULL,
    enrolled TEXT NOT NULL,
    PRIMARY KEY (authority, mrn)
);
CREATE INDEX IF NOT EXISTS enrolment_subject ON enrolment (subject_id);
CREATE TABLE IF NOT EXISTS counter (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS cursor (name TEXT PRIMARY KEY, value TEXT NOT NULL);
";

impl Db {
    /// Opens (creating) the database file.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        // Databases created before trace context was kept gain its column.
        let has_trace: bool = conn
            .prepare("SELECT 1 FROM pragma_table_info('message') WHERE name = 'traceparent'")?
            .exists([])?;
        if !has_trace {
            conn.execute_batch("ALTER TABLE message ADD COLUMN traceparent TEXT")?;
        }
        let reader = Connection::open(path)?;
        reader.busy_timeout(std::time::Duration::from_secs(5))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("gateway-db-writer".into())
            .spawn(move || writer_loop(conn, rx))
            .map_err(|e| DbError::Task(e.to_string()))?;
        Ok(Self {
            reader: Arc::new(Mutex::new(reader)),
            writer: tx,
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    ) -> Result<T, DbError> {
        let conn = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut c)
        })
        .await
        .map_err(|e| DbError::Task(e.to_string()))?
        .map_err(DbError::from)
    }

    /// A write through the writer thread; returns once it is committed (fsynced).
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    ) -> Result<T, DbError> {
        let slot: Arc<Mutex<Option<T>>> = Arc::new(Mutex::new(None));
        let out = slot.clone();
        let (done, committed) = tokio::sync::oneshot::channel();
        let work = Box::new(move |c: &Connection| {
            let v = f(c)?;
            *out.lock().unwrap_or_else(|p| p.into_inner()) = Some(v);
            Ok(())
        });
        self.writer
            .send(Job { work, done })
            .map_err(|_| DbError::Task("the writer thread is gone".into()))?;
        committed
            .await
            .map_err(|_| DbError::Task("the writer thread is gone".into()))?
            .map_err(DbError::Write)?;
        let v = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        v.ok_or_else(|| DbError::Task("a committed write left no result".into()))
    }

    /// The acknowledgement already sent for this message, if it was received before.
    pub async fn previous_ack(
        &self,
        sender: &str,
        control_id: &str,
    ) -> Result<Option<String>, DbError> {
        let (s, c) = (sender.to_string(), control_id.to_string());
        self.run(move |conn| {
            conn.query_row(
                "SELECT ack FROM message WHERE sender = ?1 AND control_id = ?2",
                params![s, c],
                |r| r.get(0),
            )
            .optional()
        })
        .await
    }

    /// Records a message durably; `Err` if the same (sender, control id) raced in first, with
    /// that message's acknowledgement.
    pub async fn record(
        &self,
        m: NewMessage<'_>,
        counter: Option<(&str, i64)>,
    ) -> Result<Result<i64, String>, DbError> {
        let (sender, control_id, received) = (
            m.sender.to_string(),
            m.control_id.to_string(),
            m.received.to_string(),
        );
        let raw = m.raw.map(<[u8]>::to_vec);
        let (state, reason, bundle, ack) = (
            m.state.as_str(),
            m.reason.map(String::from),
            m.bundle.map(String::from),
            m.ack.to_string(),
        );
        let counter = counter.map(|(n, v)| (n.to_string(), v));
        // The trace of the message being received, continued by the forwarder.
        let trace = trialbridge_telemetry::traceparent();
        self.write(move |tx| {
            let existing: Option<String> = tx
                .query_row("SELECT ack FROM message WHERE sender = ?1 AND control_id = ?2", params![sender, control_id], |r| r.get(0))
                .optional()?;
            if let Some(a) = existing {
                return Ok(Err(a));
            }
            tx.execute(
                "INSERT INTO message (sender, control_id, received, raw, state, reason, bundle, ack, traceparent) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![sender, control_id, received, raw, state, reason, bundle, ack, trace],
            )?;
            let id = tx.last_insert_rowid();
            if let Some((name, v)) = counter {
                tx.execute("INSERT INTO counter (name, value) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET value = value + ?2", params![name, v])?;
            }
            Ok(Ok(id))
        })
        .await
    }

    /// Adds to a counter.
    pub async fn bump(&self, name: &str, by: i64) -> Result<(), DbError> {
        let name = name.to_string();
        self.write(move |conn| {
            conn.execute("INSERT INTO counter (name, value) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET value = value + ?2", params![name, by])
                .map(|_| ())
        })
        .await
    }

    /// A poll cursor (the newest `meta.lastUpdated` stored), if set.
    pub async fn cursor(&self, name: &str) -> Result<Option<String>, DbError> {
        let name = name.to_string();
        self.run(move |conn| {
            conn.query_row(
                "SELECT value FROM cursor WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()
        })
        .await
    }

    /// Moves a poll cursor.
    pub async fn set_cursor(&self, name: &str, value: &str) -> Result<(), DbError> {
        let (name, value) = (name.to_string(), value.to_string());
        self.write(move |conn| {
            conn.execute("INSERT INTO cursor (name, value) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET value = ?2", params![name, value]).map(|_| ())
        })
        .await
    }

    /// Every counter, and the outbox and dead-letter depths.
    pub async fn status(&self) -> Result<serde_json::Value, DbError> {
        self.run(|conn| {
            let mut m = serde_json::Map::new();
            let mut q = conn.prepare("SELECT name, value FROM counter ORDER BY name")?;
            for row in q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
                let (n, v) = row?;
                m.insert(n, v.into());
            }
            let mut q = conn.prepare("SELECT state, count(*) FROM message GROUP BY state")?;
            for row in q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
                let (n, v) = row?;
                m.insert(format!("messages_{n}"), v.into());
            }
            Ok(serde_json::Value::Object(m))
        })
        .await
    }

    /// Enrols a patient: each of their identifiers points at the subject.
    pub async fn enrol(
        &self,
        identifiers: Vec<(String, String)>,
        who: Enrolment,
        when: String,
    ) -> Result<(), DbError> {
        self.write(move |tx| {
            for (authority, mrn) in identifiers {
                tx.execute(
                    "INSERT INTO enrolment (authority, mrn, subject_id, patient_id, site_study, enrolled) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT(authority, mrn) DO UPDATE SET subject_id = ?3, patient_id = ?4, site_study = ?5",
                    params![authority, mrn, who.subject_id, who.patient_id, who.site_study, when],
                )?;
            }
            Ok(())
        })
        .await
    }

    /// The enrolment of any of these identifiers. An identifier without an assigning
    /// authority matches on the number alone.
    pub async fn enrolment_of(
        &self,
        identifiers: &[(String, String)],
    ) -> Result<Option<Enrolment>, DbError> {
        let ids = identifiers.to_vec();
        self.run(move |conn| {
            for (authority, mrn) in ids {
                let row = conn
                    .query_row(
                        "SELECT subject_id, patient_id, site_study FROM enrolment WHERE mrn = ?2 AND (authority = ?1 OR ?1 = '' OR authority = '') LIMIT 1",
                        params![authority, mrn],
                        |r| Ok(Enrolment { subject_id: r.get(0)?, patient_id: r.get(1)?, site_study: r.get(2)? }),
                    )
                    .optional()?;
                if row.is_some() {
                    return Ok(row);
                }
            }
            Ok(None)
        })
        .await
    }

    /// The key list: (authority, MRN, subject id).
    pub async fn enrolments(&self) -> Result<Vec<(String, String, String)>, DbError> {
        self.run(|conn| {
            let mut q = conn.prepare("SELECT authority, mrn, subject_id FROM enrolment ORDER BY subject_id, authority, mrn")?;
            let rows = q.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect()
        })
        .await
    }

    /// The oldest messages waiting in the outbox: id, transaction Bundle, and the trace
    /// context of their receipt.
    pub async fn outbox(&self, limit: usize) -> Result<Vec<Outgoing>, DbError> {
        self.run(move |conn| {
            let mut q = conn.prepare(
                "SELECT id, bundle, traceparent FROM message WHERE state = 'outbox' ORDER BY id LIMIT ?1",
            )?;
            let rows = q.query_map(params![limit as i64], |r| {
                Ok((
                    r.get(0)?,
                    r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                    r.get(2)?,
                ))
            })?;
            rows.collect()
        })
        .await
    }

    /// Moves a message to a state (with a reason for dead letters).
    pub async fn set_state(
        &self,
        id: i64,
        state: State,
        reason: Option<String>,
    ) -> Result<(), DbError> {
        self.write(move |conn| {
            conn.execute(
                "UPDATE message SET state = ?2, reason = ?3, attempts = attempts + 1 WHERE id = ?1",
                params![id, state.as_str(), reason],
            )
            .map(|_| ())
        })
        .await
    }

    /// Moves several messages to a state in one commit.
    pub async fn set_states(&self, ids: Vec<i64>, state: State) -> Result<(), DbError> {
        self.write(move |conn| {
            let mut q = conn
                .prepare("UPDATE message SET state = ?2, attempts = attempts + 1 WHERE id = ?1")?;
            for id in ids {
                q.execute(params![id, state.as_str()])?;
            }
            Ok(())
        })
        .await
    }

    /// Replaces what a message forwards (after a replay).
    pub async fn requeue(
        &self,
        id: i64,
        state: State,
        reason: Option<String>,
        bundle: Option<String>,
    ) -> Result<(), DbError> {
        self.write(move |conn| {
            conn.execute(
                "UPDATE message SET state = ?2, reason = ?3, bundle = ?4 WHERE id = ?1",
                params![id, state.as_str(), reason, bundle],
            )
            .map(|_| ())
        })
        .await
    }

    /// The dead-letter queue.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, DbError> {
        self.run(|conn| {
            let mut q = conn.prepare("SELECT id, sender, control_id, received, coalesce(reason, '') FROM message WHERE state = 'dead' ORDER BY id")?;
            let rows = q.query_map([], |r| Ok(DeadLetter { id: r.get(0)?, sender: r.get(1)?, control_id: r.get(2)?, received: r.get(3)?, reason: r.get(4)?, message: None }))?;
            rows.collect()
        })
        .await
    }

    /// One dead letter with its message.
    pub async fn dead_letter(&self, id: i64) -> Result<Option<(DeadLetter, Vec<u8>)>, DbError> {
        self.run(move |conn| {
            conn.query_row(
                "SELECT id, sender, control_id, received, coalesce(reason, ''), raw FROM message WHERE state = 'dead' AND id = ?1",
                params![id],
                |r| {
                    let raw: Vec<u8> = r.get::<_, Option<Vec<u8>>>(5)?.unwrap_or_default();
                    let d = DeadLetter {
                        id: r.get(0)?,
                        sender: r.get(1)?,
                        control_id: r.get(2)?,
                        received: r.get(3)?,
                        reason: r.get(4)?,
                        message: Some(String::from_utf8_lossy(&raw).replace('\r', "\n")),
                    };
                    Ok((d, raw))
                },
            )
            .optional()
        })
        .await
    }

    /// Discards a dead letter (its row stays as `done`, with the reason, for the record).
    pub async fn discard(&self, id: i64) -> Result<bool, DbError> {
        self.write(move |conn| {
            conn.execute("UPDATE message SET state = 'done', reason = 'discarded: ' || coalesce(reason, ''), raw = NULL, bundle = NULL WHERE id = ?1 AND state = 'dead'", params![id])
                .map(|n| n > 0)
        })
        .await
    }
}
