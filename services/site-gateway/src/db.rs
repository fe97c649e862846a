//! The gateway's own database (SQLite, WAL, `synchronous=FULL`): received messages with their
//! dedup key (sender, control id, content fingerprint), state and acknowledgement (the outbox
//! and the dead-letter queue are states of it), the key list ((authority, MRN) to
//! pseudonymous subject) with what is known of each subject (gender, birth year), the
//! gateway's own audit log (key-list changes and reads, dead-letter decisions, refused
//! calls), and counters. A message is acknowledged only after its row is committed.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};

use crate::identity::Enrolment;
use crate::identity::KeyRow;

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
    /// The state by its name in the database and the API.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Outbox, Self::Forwarded, Self::Done, Self::Dead]
            .into_iter()
            .find(|s| s.as_str() == name)
    }

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
    /// What it is, for people searching the message list: `ORU^R01` (MSH-9), `FHIR
    /// Observation` for an EHR version.
    pub kind: &'a str,
    /// SHA-256 of the message text (segments joined by CR); empty for rows whose control id
    /// is unique by construction (enrolments, EHR versions).
    pub fingerprint: &'a str,
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
    /// The acknowledgement if the control id turns out to be reused with other content (the
    /// message then goes to the dead-letter queue instead).
    pub reused_ack: Option<&'a str>,
}

/// What else commits with a message row.
#[derive(Debug, Clone, Default)]
pub struct Effects {
    /// Counters to add to.
    pub counters: Vec<(&'static str, i64)>,
    /// Key-list entries to point at a subject (a merge), with who made the change.
    pub key_changes: Vec<KeyChange>,
    /// What the message says of the subject: merged into what is known, and the Patient of
    /// the queued Bundle rewritten to the merged facts.
    pub facts: Option<(Enrolment, SubjectFacts)>,
}

/// One key-list entry pointed at a subject.
#[derive(Debug, Clone)]
pub struct KeyChange {
    /// Assigning authority.
    pub authority: String,
    /// MRN.
    pub mrn: String,
    /// The subject.
    pub subject: Enrolment,
    /// Who or what made the change (a token subject, `hl7 SENDER|CONTROL`).
    pub who: String,
}

/// A fact of the subject's pseudonymous Patient: left as known, cleared, or set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Fact {
    /// Not named: keep what is known.
    #[default]
    Keep,
    /// Named as empty (HL7's `""`).
    Clear,
    /// Named.
    Set(String),
}

impl Fact {
    fn merge(&self, known: Option<String>) -> Option<String> {
        match self {
            Fact::Keep => known,
            Fact::Clear => None,
            Fact::Set(v) => Some(v.clone()),
        }
    }

    /// Whether the fact is named at all.
    pub fn given(&self) -> bool {
        *self != Fact::Keep
    }
}

/// What a message or an enrolment says of a subject's pseudonymous Patient.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectFacts {
    /// FHIR administrative gender.
    pub gender: Fact,
    /// Birth year (`1988`).
    pub birth_year: Fact,
}

/// How a message row was recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// A new row with this id.
    Stored(i64),
    /// The same message (sender, control id, content) was recorded before: its ACK.
    Duplicate(String),
    /// The sender used the control id before for other content: this one is in the
    /// dead-letter queue (row id) and gets `reused_ack`.
    Reused(i64),
}

/// A message received before with the same sender and control id.
#[derive(Debug, Clone)]
pub struct Previous {
    /// Its content fingerprint.
    pub fingerprint: String,
    /// The acknowledgement it got.
    pub ack: String,
}

/// Why an enrolment was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrolConflict {
    /// The identifier belongs to another subject.
    #[error("{authority}^{mrn} already belongs to {subject}; remove that entry of the key list first (DELETE /enrolments?authority=...&mrn=... with a reason)")]
    Taken {
        /// Assigning authority.
        authority: String,
        /// MRN.
        mrn: String,
        /// The subject it belongs to.
        subject: String,
    },
}

/// One entry of the gateway's audit log.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditEntry {
    /// Position.
    pub id: i64,
    /// When (FHIR instant).
    pub at: String,
    /// Who (token subject, `hl7 SENDER|CONTROL`, `site-gateway`).
    pub who: String,
    /// What (`enrol`, `unenrol`, `merge`, `read-key-list`, `read-dead-letter`, `replay`,
    /// `discard`, `refused`).
    pub action: String,
    /// Details (old and new values, reasons).
    pub detail: serde_json::Value,
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
    /// The message's content fingerprint.
    #[serde(skip)]
    pub fingerprint: String,
    /// The message (only when one is inspected).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Which messages a console lists: newest first, at most `limit`, older than `before`.
#[derive(Debug, Clone, Default)]
pub struct MessageFilter {
    /// Only this state.
    pub state: Option<State>,
    /// Text found in the control id, sender, kind or reason, or a subject id.
    pub text: Option<String>,
    /// Only rows with a smaller id (the next page).
    pub before: Option<i64>,
    /// Most rows.
    pub limit: usize,
}

/// A message as the console lists it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageRow {
    /// Row id.
    pub id: i64,
    /// `outbox`, `forwarded`, `done` or `dead`.
    pub state: &'static str,
    /// MSH-9 (`ORU^R01`), `enrolment`, `FHIR Observation`.
    #[serde(rename = "type")]
    pub kind: String,
    /// MSH-3^MSH-4.
    pub sender: String,
    /// MSH-10.
    pub control_id: String,
    /// Received time.
    pub received: String,
    /// Why it is dead, dropped or discarded.
    pub reason: String,
    /// The subjects its FHIR is about (`MC-01-001`).
    pub subjects: Vec<String>,
    /// Whether it was about a patient who is not enrolled (nothing of it is kept).
    pub not_enrolled: bool,
    /// Forwarding attempts.
    pub attempts: i64,
}

/// One message with what it became.
#[derive(Debug, Clone)]
pub struct MessageRecord {
    /// As listed.
    pub row: MessageRow,
    /// The message as received (`None` when not kept).
    pub raw: Option<Vec<u8>>,
    /// The transaction Bundle for the trial store.
    pub bundle: Option<String>,
    /// The acknowledgement sent.
    pub ack: String,
}

/// The subjects a Bundle's resources point at: the pseudonymous Patient ids (`mc-01-001`) as
/// subject ids. A scan for `"Patient/` rather than a parse: the list shows up to a page of
/// Bundles at a time.
pub fn subjects_of(bundle: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (i, _) in bundle.match_indices("\"Patient/") {
        let id: String = bundle[i + 9..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
            .collect();
        let subject = id.to_ascii_uppercase();
        if !id.is_empty() && !out.contains(&subject) {
            out.push(subject);
        }
    }
    out
}

const MESSAGE_COLUMNS: &str = "id, state, coalesce(kind, ''), sender, control_id, received, coalesce(reason, ''), attempts, bundle";

fn message_row(r: &rusqlite::Row<'_>) -> Result<(MessageRow, Option<String>), rusqlite::Error> {
    let state: String = r.get(1)?;
    let reason: String = r.get(6)?;
    let bundle: Option<String> = r.get(8)?;
    Ok((
        MessageRow {
            id: r.get(0)?,
            state: State::parse(&state).map_or("unknown", State::as_str),
            kind: r.get(2)?,
            sender: r.get(3)?,
            control_id: r.get(4)?,
            received: r.get(5)?,
            not_enrolled: reason == "not enrolled",
            reason,
            subjects: bundle.as_deref().map(subjects_of).unwrap_or_default(),
            attempts: r.get(7)?,
        },
        bundle,
    ))
}

/// A visit's Encounter as it stands after `new`: what `new` says replaces what was known, what
/// it does not say stays (an A08 without a discharge time leaves the A03's end), a time `new`
/// clears (HL7's `""`, marked by the mapping) is removed, and a finished visit stays finished
/// unless `new` clears its end (no other trigger the gateway takes reopens one).
fn merged_visit(known: &serde_json::Value, new: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    let mut out = known.clone();
    let (Some(o), Some(n)) = (out.as_object_mut(), new.as_object()) else {
        return new.clone();
    };
    let reopens = new
        .pointer("/period/_end")
        .is_some_and(crate::mapping::is_cleared);
    for (k, v) in n {
        match (k.as_str(), o.get_mut(k)) {
            ("period", Some(Value::Object(p))) => {
                for (pk, pv) in v.as_object().into_iter().flatten() {
                    p.insert(pk.clone(), pv.clone());
                }
            }
            ("status", Some(Value::String(s))) if s == "finished" && !reopens => {}
            _ => {
                o.insert(k.clone(), v.clone());
            }
        }
    }
    // The clear marks: each removes its element, then itself.
    if let Some(Value::Object(p)) = o.get_mut("period") {
        let cleared: Vec<String> = p
            .iter()
            .filter(|(k, v)| k.starts_with('_') && crate::mapping::is_cleared(v))
            .map(|(k, _)| k.clone())
            .collect();
        for k in cleared {
            p.remove(&k);
            p.remove(&k[1..]);
        }
        if p.is_empty() {
            o.remove("period");
        }
    }
    out
}

/// Merges every Encounter of `bundle` with what the gateway knows of that visit, stores the
/// result and writes it into the bundle: the visit's messages tell its story together.
fn merge_visits(conn: &Connection, bundle: &mut String, at: &str) -> Result<(), rusqlite::Error> {
    // Most messages are results without a visit: no parse on the writer thread for them (the
    // outbox Bundles are written by serde_json, compact).
    if !bundle.contains("\"resourceType\":\"Encounter\"") {
        return Ok(());
    }
    let Ok(mut b) = serde_json::from_str::<serde_json::Value>(bundle) else {
        return Ok(());
    };
    let mut changed = false;
    for e in b["entry"].as_array_mut().into_iter().flatten() {
        if e["resource"]["resourceType"] != "Encounter" {
            continue;
        }
        let Some(id) = e["resource"]["id"].as_str().map(String::from) else {
            continue;
        };
        let known: Option<String> = conn
            .prepare_cached("SELECT resource FROM visit WHERE encounter_id = ?1")?
            .query_row(params![id], |r| r.get(0))
            .optional()?;
        // The first message of a visit is merged into nothing, which removes its clear marks.
        let known = known
            .and_then(|k| serde_json::from_str::<serde_json::Value>(&k).ok())
            .unwrap_or_else(|| serde_json::json!({}));
        let merged = merged_visit(&known, &e["resource"]);
        conn.prepare_cached(
            "INSERT INTO visit (encounter_id, resource, updated) VALUES (?1, ?2, ?3)
             ON CONFLICT(encounter_id) DO UPDATE SET resource = ?2, updated = ?3",
        )?
        .execute(params![id, merged.to_string(), at])?;
        if merged != e["resource"] {
            e["resource"] = merged;
            changed = true;
        }
    }
    if changed {
        *bundle = b.to_string();
    }
    Ok(())
}

/// `bundle` with its Patient entry replaced by `patient` (same id).
fn with_patient(bundle: &str, patient: &serde_json::Value) -> String {
    let Ok(mut b) = serde_json::from_str::<serde_json::Value>(bundle) else {
        return bundle.to_string();
    };
    for e in b["entry"].as_array_mut().into_iter().flatten() {
        if e["resource"]["resourceType"] == "Patient" && e["resource"]["id"] == patient["id"] {
            e["resource"] = patient.clone();
        }
    }
    b.to_string()
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
/// commit: one fsync for all messages that arrived meanwhile, each in its own savepoint), a
/// read connection for reads of any size (on the blocking pool), and one for the indexed
/// point lookups every message makes (on the caller's thread).
#[derive(Clone)]
pub struct Db {
    reader: Arc<Mutex<Connection>>,
    lookup: Arc<Mutex<Connection>>,
    writer: std::sync::mpsc::Sender<Job>,
}

/// Runs one statement of the writer's hot path from the connection's statement cache: a
/// message's commit is a dozen statements, and parsing each anew was 3.5 % of the gateway's CPU.
fn run_cached(conn: &Connection, sql: &str) -> Result<(), rusqlite::Error> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
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
        if let Err(e) = run_cached(&conn, "BEGIN IMMEDIATE") {
            for j in batch {
                let _ = j.done.send(Err(e.to_string()));
            }
            continue;
        }
        let mut results = Vec::with_capacity(batch.len());
        for j in batch {
            let outcome = run_cached(&conn, "SAVEPOINT job").and_then(|_| (j.work)(&conn));
            match outcome {
                Ok(()) => {
                    let _ = run_cached(&conn, "RELEASE job");
                    results.push((j.done, Ok(())));
                }
                Err(e) => {
                    let _ = conn.execute_batch("ROLLBACK TO job; RELEASE job");
                    results.push((j.done, Err(e.to_string())));
                }
            }
        }
        match run_cached(&conn, "COMMIT") {
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
    fingerprint TEXT NOT NULL DEFAULT '',
    received TEXT NOT NULL,
    raw BLOB,
    state TEXT NOT NULL CHECK (state IN ('outbox','forwarded','done','dead')),
    reason TEXT,
    bundle TEXT,
    ack TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    traceparent TEXT,
    kind TEXT,
    UNIQUE (sender, control_id, fingerprint)
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
CREATE INDEX IF NOT EXISTS enrolment_mrn ON enrolment (mrn);
CREATE TABLE IF NOT EXISTS subject (
    subject_id TEXT PRIMARY KEY,
    patient_id TEXT NOT NULL,
    site_study TEXT NOT NULL,
    gender TEXT,
    birth_year TEXT,
    updated TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    who TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS visit (
    encounter_id TEXT PRIMARY KEY,
    resource TEXT NOT NULL,
    updated TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counter (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS cursor (name TEXT PRIMARY KEY, value TEXT NOT NULL);
";

/// Databases made before messages had a fingerprint: the dedup key becomes (sender, control
/// id, fingerprint), which SQLite changes only by copying the table.
fn upgrade(conn: &Connection) -> Result<(), rusqlite::Error> {
    let has = |column: &str| -> Result<bool, rusqlite::Error> {
        conn.prepare("SELECT 1 FROM pragma_table_info('message') WHERE name = ?1")?
            .exists([column])
    };
    if !has("id")? || has("fingerprint")? {
        return Ok(());
    }
    if !has("traceparent")? {
        conn.execute_batch("ALTER TABLE message ADD COLUMN traceparent TEXT")?;
    }
    conn.execute_batch(
        "BEGIN;
         ALTER TABLE message RENAME TO message_before_fingerprints;
         DROP INDEX IF EXISTS message_outbox;",
    )?;
    conn.execute_batch(SCHEMA)?;
    conn.execute_batch(
        "INSERT INTO message (id, sender, control_id, fingerprint, received, raw, state, reason, bundle, ack, attempts, traceparent)
         SELECT id, sender, control_id, '', received, raw, state, reason, bundle, ack, attempts, traceparent FROM message_before_fingerprints;
         DROP TABLE message_before_fingerprints;
         COMMIT;",
    )
}

/// Databases made before the message list: a `kind` column (MSH-9), empty for older rows.
fn add_kind(conn: &Connection) -> Result<(), rusqlite::Error> {
    let has = conn
        .prepare("SELECT 1 FROM pragma_table_info('message') WHERE name = 'kind'")?
        .exists([])?;
    if !has {
        conn.execute_batch("ALTER TABLE message ADD COLUMN kind TEXT")?;
    }
    Ok(())
}

/// A key-list row of `SELECT authority, mrn, subject_id, patient_id, site_study`.
fn key_row(r: &rusqlite::Row<'_>) -> Result<KeyRow, rusqlite::Error> {
    Ok(KeyRow {
        authority: r.get(0)?,
        mrn: r.get(1)?,
        subject: Enrolment {
            subject_id: r.get(2)?,
            patient_id: r.get(3)?,
            site_study: r.get(4)?,
        },
    })
}

fn audit_row(
    conn: &Connection,
    at: &str,
    who: &str,
    action: &str,
    detail: &serde_json::Value,
) -> Result<(), rusqlite::Error> {
    conn.execute(
        "INSERT INTO audit (at, who, action, detail) VALUES (?1, ?2, ?3, ?4)",
        params![at, who, action, detail.to_string()],
    )
    .map(|_| ())
}

/// The counters the gateway keeps (`bump`, `Effects::counters`), shown as `NAME_total` even
/// before they first count.
pub const COUNTERS: &[&str] = &[
    "control_ids_reused",
    "dead_letters",
    "duplicates",
    "enrolments",
    "frames_too_large",
    "identity_problems",
    "merges",
    "not_enrolled",
    "observations_outside_the_dataset",
    "queued",
];

fn bump_in(conn: &Connection, name: &str, by: i64) -> Result<(), rusqlite::Error> {
    conn.prepare_cached("INSERT INTO counter (name, value) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET value = value + ?2")?
        .execute(params![name, by])
        .map(|_| ())
}

/// Merges `facts` into the subject's row; returns the merged (gender, birth year).
fn merge_facts(
    conn: &Connection,
    who: &Enrolment,
    facts: &SubjectFacts,
    at: &str,
) -> Result<(Option<String>, Option<String>), rusqlite::Error> {
    let known: Option<(Option<String>, Option<String>)> = conn
        .prepare_cached("SELECT gender, birth_year FROM subject WHERE subject_id = ?1")?
        .query_row(params![who.subject_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let (g, y) = known.unwrap_or_default();
    let merged = (facts.gender.merge(g), facts.birth_year.merge(y));
    conn.prepare_cached(
        "INSERT INTO subject (subject_id, patient_id, site_study, gender, birth_year, updated) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(subject_id) DO UPDATE SET gender = ?4, birth_year = ?5, updated = ?6",
    )?
    .execute(params![who.subject_id, who.patient_id, who.site_study, merged.0, merged.1, at],
    )?;
    Ok(merged)
}

/// The pseudonymous Patient of a subject from its merged facts.
pub fn patient_resource(
    who: &Enrolment,
    gender: Option<&str>,
    birth_year: Option<&str>,
) -> serde_json::Value {
    let mut p = serde_json::json!({"resourceType": "Patient", "id": who.patient_id});
    if let Some(g) = gender {
        p["gender"] = serde_json::json!(g);
    }
    if let Some(y) = birth_year {
        p["birthDate"] = serde_json::json!(y);
    }
    p
}

/// Points key-list entries at subjects, auditing each change (old and new subject).
fn apply_key_changes(
    conn: &Connection,
    changes: &[KeyChange],
    at: &str,
    action: &str,
) -> Result<(), rusqlite::Error> {
    for k in changes {
        let old: Option<String> = conn
            .query_row(
                "SELECT subject_id FROM enrolment WHERE authority = ?1 AND mrn = ?2",
                params![k.authority, k.mrn],
                |r| r.get(0),
            )
            .optional()?;
        if old.as_deref() == Some(k.subject.subject_id.as_str()) {
            continue;
        }
        conn.execute(
            "INSERT INTO enrolment (authority, mrn, subject_id, patient_id, site_study, enrolled) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(authority, mrn) DO UPDATE SET subject_id = ?3, patient_id = ?4, site_study = ?5",
            params![k.authority, k.mrn, k.subject.subject_id, k.subject.patient_id, k.subject.site_study, at],
        )?;
        audit_row(
            conn,
            at,
            &k.who,
            action,
            &serde_json::json!({"authority": k.authority, "mrn": k.mrn, "old": old, "new": k.subject.subject_id}),
        )?;
    }
    Ok(())
}

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
        // Room for every statement of a message's commit (see `run_cached`).
        conn.set_prepared_statement_cache_capacity(64);
        upgrade(&conn)?;
        conn.execute_batch(SCHEMA)?;
        add_kind(&conn)?;
        let reader = Connection::open(path)?;
        reader.busy_timeout(std::time::Duration::from_secs(5))?;
        let lookup = Connection::open(path)?;
        lookup.busy_timeout(std::time::Duration::from_secs(5))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("gateway-db-writer".into())
            .spawn(move || writer_loop(conn, rx))
            .map_err(|e| DbError::Task(e.to_string()))?;
        Ok(Self {
            reader: Arc::new(Mutex::new(reader)),
            lookup: Arc::new(Mutex::new(lookup)),
            writer: tx,
        })
    }

    /// A read bounded by an index lookup (a few rows by key), run on the caller's thread: each
    /// received message makes two, and the hop to the blocking pool and back cost more than
    /// the read (8 % of the gateway's CPU at 2,000 enrolled messages/s). Anything that scans
    /// goes through [`Db::run`].
    fn lookup<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, rusqlite::Error>,
    ) -> Result<T, DbError> {
        let conn = self.lookup.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn).map_err(DbError::from)
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

    /// The messages received before from this sender with this control id.
    pub fn previous(&self, sender: &str, control_id: &str) -> Result<Vec<Previous>, DbError> {
        self.lookup(|conn| {
            let mut q = conn.prepare_cached(
                "SELECT fingerprint, ack FROM message WHERE sender = ?1 AND control_id = ?2 ORDER BY id",
            )?;
            let rows = q.query_map(params![sender, control_id], |r| {
                Ok(Previous {
                    fingerprint: r.get(0)?,
                    ack: r.get(1)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Records a message durably, with its effects, in one commit. The same message recorded
    /// meanwhile (a race with another connection) comes back as [`Recorded::Duplicate`]; a
    /// control id the sender used for other content as [`Recorded::Reused`] (the row is then
    /// a dead letter, and no effect is applied).
    pub async fn record(&self, m: NewMessage<'_>, effects: Effects) -> Result<Recorded, DbError> {
        let (sender, control_id, fingerprint, received, kind) = (
            m.sender.to_string(),
            m.control_id.to_string(),
            m.fingerprint.to_string(),
            m.received.to_string(),
            m.kind.to_string(),
        );
        let raw = m.raw.map(<[u8]>::to_vec);
        let (state, reason, mut bundle, ack) = (
            m.state.as_str(),
            m.reason.map(String::from),
            m.bundle.map(String::from),
            m.ack.to_string(),
        );
        let reused_ack = m.reused_ack.map(String::from);
        // The trace of the message being received, continued by the forwarder.
        let trace = trialbridge_telemetry::traceparent();
        self.write(move |tx| {
            let mut earlier = tx.prepare_cached(
                "SELECT fingerprint, ack FROM message WHERE sender = ?1 AND control_id = ?2",
            )?;
            let earlier: Vec<(String, String)> = earlier
                .query_map(params![sender, control_id], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            if let Some((_, a)) = earlier.iter().find(|(f, _)| *f == fingerprint) {
                return Ok(Recorded::Duplicate(a.clone()));
            }
            if let (Some(reused), false) = (&reused_ack, earlier.is_empty()) {
                tx.execute(
                    "INSERT INTO message (sender, control_id, fingerprint, received, raw, state, reason, ack, traceparent, kind) VALUES (?1, ?2, ?3, ?4, ?5, 'dead', ?6, ?7, ?8, ?9)",
                    params![sender, control_id, fingerprint, received, raw,
                        format!("the sender used control id {control_id} before for a message with other content; decide whether this is a new message (replay) or an error (discard)"),
                        reused, trace, kind],
                )?;
                let id = tx.last_insert_rowid();
                bump_in(tx, "control_ids_reused", 1)?;
                return Ok(Recorded::Reused(id));
            }
            if let Some((who, facts)) = &effects.facts {
                let (g, y) = merge_facts(tx, who, facts, &received)?;
                if let Some(b) = &mut bundle {
                    *b = with_patient(b, &patient_resource(who, g.as_deref(), y.as_deref()));
                }
            }
            if let Some(b) = &mut bundle {
                merge_visits(tx, b, &received)?;
            }
            apply_key_changes(tx, &effects.key_changes, &received, "merge")?;
            tx.prepare_cached(
                "INSERT INTO message (sender, control_id, fingerprint, received, raw, state, reason, bundle, ack, traceparent, kind) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?
            .execute(params![sender, control_id, fingerprint, received, raw, state, reason, bundle, ack, trace, kind],
            )?;
            let id = tx.last_insert_rowid();
            for (name, v) in &effects.counters {
                bump_in(tx, name, *v)?;
            }
            Ok(Recorded::Stored(id))
        })
        .await
    }

    /// Adds to a counter.
    pub async fn bump(&self, name: &str, by: i64) -> Result<(), DbError> {
        let name = name.to_string();
        self.write(move |conn| bump_in(conn, &name, by)).await
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

    /// What the gateway holds now and what it has counted: the current message states
    /// (`messages_outbox` .. `messages_dead`, and `outbox` and `dead_letters`, the two an
    /// integrator watches), what was taken in during the last hour (messages, enrolments, EHR
    /// versions: `received_last_hour`, and of those now dead letters), and every lifetime counter
    /// as `NAME_total` (0 when nothing was counted yet: "0" is an answer, a missing key is a
    /// question).
    pub async fn status(&self) -> Result<serde_json::Value, DbError> {
        self.run(|conn| {
            let mut m = serde_json::Map::new();
            for name in COUNTERS {
                m.insert(format!("{name}_total"), 0.into());
            }
            let mut q = conn.prepare("SELECT name, value FROM counter ORDER BY name")?;
            for row in q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
                let (n, v) = row?;
                m.insert(format!("{n}_total"), v.into());
            }
            for state in [State::Outbox, State::Forwarded, State::Done, State::Dead] {
                m.insert(format!("messages_{}", state.as_str()), 0.into());
            }
            let mut q = conn.prepare("SELECT state, count(*) FROM message GROUP BY state")?;
            for row in q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
                let (n, v) = row?;
                m.insert(format!("messages_{n}"), v.into());
            }
            m.insert("outbox".into(), m["messages_outbox"].clone());
            m.insert("dead_letters".into(), m["messages_dead"].clone());
            let hour_ago = trialbridge_fhir::instant::format(
                time::OffsetDateTime::now_utc() - time::Duration::hours(1),
            );
            let (received, dead): (i64, i64) = conn.query_row(
                "SELECT count(*), count(*) FILTER (WHERE state = 'dead') FROM message WHERE received >= ?1",
                params![hour_ago],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            m.insert("received_last_hour".into(), received.into());
            m.insert("dead_letters_last_hour".into(), dead.into());
            Ok(serde_json::Value::Object(m))
        })
        .await
    }

    /// Enrols identifiers for a subject and merges what is given of its Patient, in one
    /// commit with their audit entries; an identifier of another subject refuses the whole
    /// enrolment. When gender or birth year is given, the subject's Patient (with every fact
    /// known) is queued for the trial store. Returns the outbox row, if one was queued.
    pub async fn enrol(
        &self,
        identifiers: Vec<(String, String)>,
        who: Enrolment,
        facts: SubjectFacts,
        by: String,
        at: String,
    ) -> Result<Result<Option<i64>, EnrolConflict>, DbError> {
        self.write(move |tx| {
            for (authority, mrn) in &identifiers {
                let owner: Option<String> = tx
                    .query_row(
                        "SELECT subject_id FROM enrolment WHERE authority = ?1 AND mrn = ?2",
                        params![authority, mrn],
                        |r| r.get(0),
                    )
                    .optional()?;
                if let Some(owner) = owner.filter(|o| *o != who.subject_id) {
                    return Ok(Err(EnrolConflict::Taken {
                        authority: authority.clone(),
                        mrn: mrn.clone(),
                        subject: owner,
                    }));
                }
            }
            let changes: Vec<KeyChange> = identifiers
                .iter()
                .map(|(a, m)| KeyChange {
                    authority: a.clone(),
                    mrn: m.clone(),
                    subject: who.clone(),
                    who: by.clone(),
                })
                .collect();
            apply_key_changes(tx, &changes, &at, "enrol")?;
            let (g, y) = merge_facts(tx, &who, &facts, &at)?;
            if !(facts.gender.given() || facts.birth_year.given()) {
                return Ok(Ok(None));
            }
            audit_row(tx, &at, &by, "subject-facts", &serde_json::json!({"subject": who.subject_id, "gender": g, "birthYear": y}))?;
            let p = patient_resource(&who, g.as_deref(), y.as_deref());
            let bundle = serde_json::json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                {"resource": p, "request": {"method": "PUT", "url": format!("Patient/{}", who.patient_id)}}]});
            tx.execute(
                "INSERT INTO message (sender, control_id, fingerprint, received, state, bundle, ack, kind) VALUES ('site-gateway^enrolment', ?1, '', ?2, 'outbox', ?3, '', 'enrolment')",
                params![format!("enrolment-{}-{}", who.subject_id, at), at, bundle.to_string()],
            )?;
            let id = tx.last_insert_rowid();
            bump_in(tx, "enrolments", 1)?;
            Ok(Ok(Some(id)))
        })
        .await
    }

    /// Removes one entry of the key list (a mistaken enrolment), audited with the reason.
    pub async fn unenrol(
        &self,
        authority: String,
        mrn: String,
        by: String,
        reason: String,
        at: String,
    ) -> Result<Option<String>, DbError> {
        self.write(move |tx| {
            let old: Option<String> = tx
                .query_row(
                    "SELECT subject_id FROM enrolment WHERE authority = ?1 AND mrn = ?2",
                    params![authority, mrn],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(subject) = &old {
                tx.execute(
                    "DELETE FROM enrolment WHERE authority = ?1 AND mrn = ?2",
                    params![authority, mrn],
                )?;
                audit_row(tx, &at, &by, "unenrol", &serde_json::json!({"authority": authority, "mrn": mrn, "old": subject, "new": null, "reason": reason}))?;
            }
            Ok(old)
        })
        .await
    }

    /// The key-list rows whose MRN is one of `mrns` (the identity rule decides which apply).
    pub fn key_rows(&self, mrns: &[String]) -> Result<Vec<KeyRow>, DbError> {
        self.lookup(|conn| {
            let mut q = conn.prepare_cached(
                "SELECT authority, mrn, subject_id, patient_id, site_study FROM enrolment WHERE mrn = ?1 ORDER BY authority",
            )?;
            let mut out = Vec::new();
            for mrn in mrns {
                let rows = q.query_map(params![mrn], key_row)?;
                for row in rows {
                    let row = row?;
                    if !out.contains(&row) {
                        out.push(row);
                    }
                }
            }
            Ok(out)
        })
    }

    /// Appends to the gateway's audit log.
    pub async fn audit(
        &self,
        who: String,
        action: &'static str,
        detail: serde_json::Value,
    ) -> Result<(), DbError> {
        let at = crate::now_instant();
        self.write(move |tx| audit_row(tx, &at, &who, action, &detail))
            .await
    }

    /// The newest entries of the audit log, newest first.
    pub async fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, DbError> {
        self.run(move |conn| {
            let mut q = conn.prepare(
                "SELECT id, at, who, action, detail FROM audit ORDER BY id DESC LIMIT ?1",
            )?;
            let rows = q.query_map(params![limit as i64], |r| {
                let detail: String = r.get(4)?;
                Ok(AuditEntry {
                    id: r.get(0)?,
                    at: r.get(1)?,
                    who: r.get(2)?,
                    action: r.get(3)?,
                    detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
                })
            })?;
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

    /// Replaces what a dead letter becomes after a replay (its state, reason and Bundle),
    /// with the replay's effects, audited as `by`'s decision.
    pub async fn requeue(
        &self,
        id: i64,
        state: State,
        reason: Option<String>,
        bundle: Option<String>,
        effects: Effects,
        by: String,
    ) -> Result<(), DbError> {
        let at = crate::now_instant();
        self.write(move |conn| {
            let mut bundle = bundle;
            if let Some((who, facts)) = &effects.facts {
                let (g, y) = merge_facts(conn, who, facts, &at)?;
                if let Some(b) = &mut bundle {
                    *b = with_patient(b, &patient_resource(who, g.as_deref(), y.as_deref()));
                }
            }
            if let Some(b) = &mut bundle {
                merge_visits(conn, b, &at)?;
            }
            apply_key_changes(conn, &effects.key_changes, &at, "merge")?;
            for (name, v) in &effects.counters {
                bump_in(conn, name, *v)?;
            }
            conn.execute(
                "UPDATE message SET state = ?2, reason = ?3, bundle = ?4 WHERE id = ?1",
                params![id, state.as_str(), reason, bundle],
            )?;
            audit_row(
                conn,
                &at,
                &by,
                "replay",
                &serde_json::json!({"deadLetter": id, "result": state.as_str(), "reason": reason}),
            )
        })
        .await
    }

    /// Every entry of the key list.
    pub async fn key_list(&self) -> Result<Vec<KeyRow>, DbError> {
        self.run(|conn| {
            let mut q = conn.prepare(
                "SELECT authority, mrn, subject_id, patient_id, site_study FROM enrolment ORDER BY subject_id, authority, mrn",
            )?;
            let rows = q.query_map([], key_row)?;
            rows.collect()
        })
        .await
    }

    /// The dead-letter queue.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, DbError> {
        self.run(|conn| {
            let mut q = conn.prepare("SELECT id, sender, control_id, received, coalesce(reason, ''), fingerprint FROM message WHERE state = 'dead' ORDER BY id")?;
            let rows = q.query_map([], |r| Ok(DeadLetter { id: r.get(0)?, sender: r.get(1)?, control_id: r.get(2)?, received: r.get(3)?, reason: r.get(4)?, fingerprint: r.get(5)?, message: None }))?;
            rows.collect()
        })
        .await
    }

    /// One dead letter with its message.
    pub async fn dead_letter(&self, id: i64) -> Result<Option<(DeadLetter, Vec<u8>)>, DbError> {
        self.run(move |conn| {
            conn.query_row(
                "SELECT id, sender, control_id, received, coalesce(reason, ''), raw, fingerprint FROM message WHERE state = 'dead' AND id = ?1",
                params![id],
                |r| {
                    let raw: Vec<u8> = r.get::<_, Option<Vec<u8>>>(5)?.unwrap_or_default();
                    let d = DeadLetter {
                        id: r.get(0)?,
                        sender: r.get(1)?,
                        control_id: r.get(2)?,
                        received: r.get(3)?,
                        reason: r.get(4)?,
                        fingerprint: r.get(6)?,
                        message: Some(String::from_utf8_lossy(&raw).replace('\r', "\n")),
                    };
                    Ok((d, raw))
                },
            )
            .optional()
        })
        .await
    }

    /// The messages `filter` selects, newest first. The text search scans (control id, sender,
    /// kind, reason, the Bundle's Patient references): a console's query over a site's
    /// messages, not a hot path.
    pub async fn messages(&self, filter: MessageFilter) -> Result<Vec<MessageRow>, DbError> {
        self.run(move |conn| {
            let sql = format!(
                "SELECT {MESSAGE_COLUMNS} FROM message
                 WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR id < ?2)
                   AND (?3 IS NULL OR instr(lower(control_id), ?3) OR instr(lower(sender), ?3)
                        OR instr(lower(coalesce(kind, '')), ?3) OR instr(lower(coalesce(reason, '')), ?3)
                        OR instr(coalesce(bundle, ''), '\"Patient/' || ?3))
                 ORDER BY id DESC LIMIT ?4"
            );
            let mut q = conn.prepare_cached(&sql)?;
            let text = filter
                .text
                .map(|t| t.trim().to_lowercase())
                .filter(|t| !t.is_empty());
            let rows = q.query_map(
                params![
                    filter.state.map(State::as_str),
                    filter.before,
                    text,
                    filter.limit as i64
                ],
                |r| message_row(r).map(|(row, _)| row),
            )?;
            rows.collect()
        })
        .await
    }

    /// One message with its raw text, Bundle and acknowledgement.
    pub async fn message(&self, id: i64) -> Result<Option<MessageRecord>, DbError> {
        self.run(move |conn| {
            conn.query_row(
                &format!("SELECT {MESSAGE_COLUMNS}, raw, ack FROM message WHERE id = ?1"),
                params![id],
                |r| {
                    let (row, bundle) = message_row(r)?;
                    Ok(MessageRecord {
                        row,
                        bundle,
                        raw: r.get(9)?,
                        ack: r.get(10)?,
                    })
                },
            )
            .optional()
        })
        .await
    }

    /// Discards a dead letter (its row stays as `done`, with the reasons, for the record; the
    /// message itself is erased), audited.
    pub async fn discard(&self, id: i64, by: String, why: String) -> Result<bool, DbError> {
        let at = crate::now_instant();
        self.write(move |conn| {
            let n = conn.execute("UPDATE message SET state = 'done', reason = 'discarded (' || ?2 || '): ' || coalesce(reason, ''), raw = NULL, bundle = NULL WHERE id = ?1 AND state = 'dead'", params![id, why])?;
            if n > 0 {
                audit_row(conn, &at, &by, "discard", &serde_json::json!({"deadLetter": id, "reason": why}))?;
            }
            Ok(n > 0)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_bundles_subjects_are_its_patient_references() {
        let b = json!({"resourceType": "Bundle", "entry": [
            {"resource": {"resourceType": "Patient", "id": "mc-01-001"}, "request": {"url": "Patient/mc-01-001"}},
            {"resource": {"resourceType": "Observation", "subject": {"reference": "Patient/mc-01-001"}}},
            {"resource": {"resourceType": "Observation", "subject": {"reference": "Patient/mc-01-002"}}},
        ]});
        assert_eq!(subjects_of(&b.to_string()), ["MC-01-001", "MC-01-002"]);
        assert!(subjects_of("{}").is_empty());
        assert!(subjects_of("\"Patient/").is_empty());
    }

    #[tokio::test]
    async fn the_message_list_finds_by_text_state_and_subject_and_pages() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("g.db")).unwrap();
        let bundle =
            json!({"entry": [{"resource": {"subject": {"reference": "Patient/mc-01-007"}}}]})
                .to_string();
        for (i, (kind, state, reason)) in [
            ("ORU^R01", State::Outbox, None),
            ("ADT^A01", State::Done, Some("not enrolled")),
            (
                "ORU^R01",
                State::Dead,
                Some("OBX 1: local code KNIE-GR is not in the code map"),
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let control = format!("CTRL-{i}");
            let r = db
                .record(
                    NewMessage {
                        sender: "LAB^KH",
                        control_id: &control,
                        kind,
                        fingerprint: "f",
                        received: "2026-03-02T08:00:00Z",
                        raw: (reason != Some("not enrolled"))
                            .then_some(b"MSH|^~\\&|LAB|KH\r".as_slice()),
                        state,
                        reason,
                        bundle: (state == State::Outbox).then_some(bundle.as_str()),
                        ack: "MSH|^~\\&\rMSA|AA|x\r",
                        reused_ack: None,
                    },
                    Effects::default(),
                )
                .await
                .unwrap();
            assert!(matches!(r, Recorded::Stored(_)));
        }
        let list = |state: Option<State>, text: Option<&str>, before: Option<i64>| {
            let db = db.clone();
            let text = text.map(String::from);
            async move {
                db.messages(MessageFilter {
                    state,
                    text,
                    before,
                    limit: 2,
                })
                .await
                .unwrap()
                .into_iter()
                .map(|m| m.control_id)
                .collect::<Vec<_>>()
            }
        };
        assert_eq!(
            list(None, None, None).await,
            ["CTRL-2", "CTRL-1"],
            "newest first, a page of 2"
        );
        assert_eq!(list(None, None, Some(2)).await, ["CTRL-0"]);
        assert_eq!(list(Some(State::Dead), None, None).await, ["CTRL-2"]);
        assert_eq!(
            list(None, Some("knie-gr"), None).await,
            ["CTRL-2"],
            "reason, any case"
        );
        assert_eq!(list(None, Some("adt^a01"), None).await, ["CTRL-1"], "type");
        assert_eq!(
            list(None, Some("MC-01-007"), None).await,
            ["CTRL-0"],
            "subject"
        );
        assert_eq!(
            list(None, Some("ctrl-1"), None).await,
            ["CTRL-1"],
            "control id"
        );
        assert!(
            list(None, Some("%"), None).await.is_empty(),
            "no LIKE wildcards"
        );
        let all = db
            .messages(MessageFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(all[1].not_enrolled);
        assert_eq!(all[2].subjects, ["MC-01-007"]);
        assert_eq!(all[2].kind, "ORU^R01");
        let one = db.message(all[1].id).await.unwrap().unwrap();
        assert!(
            one.raw.is_none(),
            "nothing of a patient who is not enrolled is kept"
        );
        assert!(db.message(999).await.unwrap().is_none());
    }

    #[test]
    fn a_visit_is_merged_message_by_message() {
        let admitted = json!({"resourceType": "Encounter", "id": "e", "status": "in-progress",
            "class": {"code": "IMP"}, "period": {"start": "2026-03-02T08:15:00+01:00"}});
        let discharged = json!({"resourceType": "Encounter", "id": "e", "status": "finished",
            "class": {"code": "IMP"}, "period": {"end": "2026-03-05T12:00:00+01:00"}});
        let corrected = json!({"resourceType": "Encounter", "id": "e", "status": "in-progress",
            "class": {"code": "AMB"}});
        let v = merged_visit(&admitted, &discharged);
        assert_eq!(
            v["period"],
            json!({"start": "2026-03-02T08:15:00+01:00", "end": "2026-03-05T12:00:00+01:00"})
        );
        let v = merged_visit(&v, &corrected);
        assert_eq!(
            v["status"], "finished",
            "an A08 does not reopen a discharged visit"
        );
        assert_eq!(
            v["class"]["code"], "AMB",
            "what the A08 says replaces what was known"
        );
        assert_eq!(v["period"]["end"], "2026-03-05T12:00:00+01:00");
        // HL7's `""` in PV1-45 deletes the discharge time: the end goes, the visit reopens.
        let end_deleted = json!({"resourceType": "Encounter", "id": "e", "status": "in-progress",
            "period": {"_end": crate::mapping::cleared()}});
        let v = merged_visit(&v, &end_deleted);
        assert_eq!(v["period"], json!({"start": "2026-03-02T08:15:00+01:00"}));
        assert_eq!(v["status"], "in-progress");
        // A first message with a cleared time: nothing known, no mark left.
        let v = merged_visit(&json!({}), &end_deleted);
        assert!(v.get("period").is_none(), "{v}");
    }
}
