//! The trial database: append-only resource versions, a global change sequence and the search
//! index, behind one storage trait.
//!
//! Services never write SQL of their own: they read through [`ResourceStore`] and write through
//! [`write`], which runs a closure against a [`WriteTxn`] inside one database transaction. The
//! SQLite backend batches concurrent write closures into one commit (group commit), each inside
//! its own savepoint, so a failing closure leaves nothing behind and a 2xx is only sent once the
//! commit (and its fsync) is done.
//!
//! Every call takes an [`AccessContext`] first so that no query can run unscoped.

use async_trait::async_trait;
use futures::future::BoxFuture;

pub use trialbridge_fhir::index::{Index, IndexEntry, RangeEntry};
pub use trialbridge_fhir::search::{Cursor, SearchRequest};

mod checkpoint;
mod current_cache;
mod postgres;
mod sql;
mod sqlite;
mod writer;
pub use postgres::{PostgresStore, CHANGE_SEQUENCE_LOCK};
pub use sqlite::{SqliteOptions, SqliteStore};

/// Who is asking, and for which study and sites. Every read query is limited to the sites the
/// context sees (shared resources, those without a site, are seen by everyone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessContext {
    /// The overall study the caller works in, if scoped.
    pub study: Option<String>,
    /// The site studies the caller sees.
    pub sites: SiteScope,
    /// The caller's trial role.
    pub role: Role,
    /// Who is asking (the token's `sub`, or the trialbridge command), for the audit trail.
    pub agent: String,
}

/// The site studies (`mesemcart-site-01`) a caller sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SiteScope {
    /// Every site (warehouse, admin, trialbridge itself).
    All,
    /// Only these sites, plus shared resources.
    Only(Vec<String>),
}

impl SiteScope {
    /// Whether a resource of `site` (`None`: shared) is visible.
    pub fn sees(&self, site: Option<&str>) -> bool {
        match (self, site) {
            (SiteScope::All, _) | (_, None) => true,
            (SiteScope::Only(sites), Some(s)) => sites.iter().any(|x| x == s),
        }
    }
}

/// Trial roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// trialbridge itself (start-up loading, CLI): unrestricted.
    System,
    /// A site's integration: its own site study only.
    Site,
    /// A monitor: read-only, assigned sites only.
    Monitor,
    /// The sponsor warehouse: read and export across sites.
    Warehouse,
    /// Study administration.
    Admin,
}

impl AccessContext {
    /// The unrestricted context of trialbridge itself, acting as `agent` (the command or
    /// component, for the audit trail).
    pub fn system(agent: &str) -> Self {
        Self {
            study: None,
            sites: SiteScope::All,
            role: Role::System,
            agent: agent.into(),
        }
    }
}

/// Storage failures. None of these is the client's fault; the HTTP edge maps them to 500/503
/// with an OperationOutcome.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// SQLite reported an error.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL reported an error or could not be reached.
    #[error("database error: {0}")]
    Postgres(#[from] sqlx::Error),
    /// The database file or its directory could not be used.
    #[error("database file: {0}")]
    Io(#[from] std::io::Error),
    /// Migrations could not be applied.
    #[error("database migration failed: {0}")]
    Migration(String),
    /// The writer task has stopped (shutting down).
    #[error("the storage writer has stopped")]
    WriterGone,
    /// The batch transaction this write was part of did not commit; nothing of it was stored.
    #[error("the write was not committed: {0}")]
    CommitFailed(String),
    /// A stored row could not be understood.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// A write job changed data without recording an audit event; it was rolled back.
    #[error("a change without an audit event was refused")]
    Unaudited,
    /// The database URL is not usable.
    #[error("unsupported database URL '{0}' (expected sqlite://path or postgres://user@host/db)")]
    UnsupportedUrl(String),
}

/// One stored version of a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredVersion {
    /// Resource type.
    pub resource_type: String,
    /// Logical id.
    pub id: String,
    /// Version number, 1-based.
    pub version: i64,
    /// Global change sequence number.
    pub seq: i64,
    /// `meta.lastUpdated` as a FHIR instant.
    pub last_updated: String,
    /// Microseconds since the epoch of `last_updated`.
    pub last_updated_us: i64,
    /// True for a delete (tombstone).
    pub deleted: bool,
    /// The resource JSON as stored (with `id` and `meta`); `None` for a tombstone.
    pub body: Option<String>,
    /// The site study the resource belongs to; `None` for shared resources.
    pub site: Option<String>,
    /// The W3C `traceparent` of the request that wrote it, when it was traced.
    pub traceparent: Option<String>,
}

/// Which versions a history request covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryScope {
    /// All resources.
    System,
    /// All resources of one type.
    Type(String),
    /// One resource.
    Instance(String, String),
}

/// History order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryOrder {
    /// Newest first (the FHIR default).
    NewestFirst,
    /// Oldest first (change-feed consumers).
    OldestFirst,
}

/// A history page request. Paging is by change sequence, never by offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Which versions.
    pub scope: HistoryScope,
    /// Only versions with `lastUpdated` at or after this (microseconds).
    pub since_us: Option<i64>,
    /// Only versions with `lastUpdated` at or before this (microseconds).
    pub at_or_before_us: Option<i64>,
    /// Order.
    pub order: HistoryOrder,
    /// Continue after this sequence number (exclusive, in the page direction).
    pub after_seq: Option<i64>,
    /// Ignore versions above this sequence number (the first page's snapshot).
    pub snapshot_seq: Option<i64>,
    /// Page size.
    pub count: usize,
}

impl HistoryQuery {
    /// Versions after change sequence `after_seq`, oldest first, without time bounds (a change
    /// feed's page).
    pub fn oldest_first(scope: HistoryScope, after_seq: i64, count: usize) -> Self {
        Self {
            scope,
            since_us: None,
            at_or_before_us: None,
            order: HistoryOrder::OldestFirst,
            after_seq: Some(after_seq),
            snapshot_seq: None,
            count,
        }
    }
}

/// A page of history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// Versions in the requested order.
    pub versions: Vec<StoredVersion>,
    /// The highest committed sequence number when the page was read.
    pub snapshot_seq: i64,
    /// Whether more versions follow.
    pub has_more: bool,
}

/// A page of search results in `_sort` order (then by id), for stable keyset paging.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchPage {
    /// The current versions that match.
    pub versions: Vec<StoredVersion>,
    /// Where the next page starts, if more results follow.
    pub next: Option<Cursor>,
}

/// A version about to be appended.
pub struct NewVersion<'a> {
    /// Resource type.
    pub resource_type: &'a str,
    /// Logical id.
    pub id: &'a str,
    /// True to write a tombstone.
    pub deleted: bool,
    /// Index rows of the new content (ignored for tombstones).
    pub index: &'a Index,
    /// Renders the body once the version number and `lastUpdated` instant are known.
    pub body: &'a (dyn Fn(i64, &str) -> String + Sync),
    /// The site study the resource belongs to (`None`: shared).
    pub site: Option<&'a str>,
}

/// One entry of the audit trail, as the trial store built it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// When it was recorded, microseconds since the epoch.
    pub recorded_us: i64,
    /// The site the event concerns, for monitors' access (`None`: not site-specific).
    pub site: Option<String>,
    /// `Type/id` of every resource the event is about, for lookup by entity.
    pub entities: Vec<String>,
    /// The AuditEvent JSON, without an id (its id is its place in the chain).
    pub body: String,
}

/// A stored row of the audit trail with its place in the hash chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAudit {
    /// Position in the chain, from 1.
    pub seq: i64,
    /// Microseconds since the epoch (of the first event of a batch).
    pub recorded_us: i64,
    /// The site the events concern.
    pub site: Option<String>,
    /// Whether `body` is a JSON array of AuditEvents (requests that changed nothing, written
    /// together) rather than one.
    pub batch: bool,
    /// The JSON as recorded.
    pub body: String,
    /// The previous event's hash (64 zeros for the first).
    pub prev_hash: String,
    /// The chain hash, hex: version 1 over `prev_hash`, `seq` and `body`; version 2
    /// ([`audit_hash_v2`]) over every column and the row's entities.
    pub hash: String,
    /// Which of the two hashes the row carries.
    pub hash_version: i64,
}

/// What a version-2 chain hash covers: every column of an audit row and its entities.
#[derive(Debug, Clone, Copy)]
pub struct AuditRow<'a> {
    /// The previous row's hash.
    pub prev_hash: &'a str,
    /// The row's position.
    pub seq: i64,
    /// When it was recorded.
    pub recorded_us: i64,
    /// The site it concerns.
    pub site: Option<&'a str>,
    /// Whether it is a batch of queued events.
    pub batch: bool,
    /// The JSON as recorded.
    pub body: &'a str,
    /// Its `audit_entity` rows, sorted and without repeats ([`audit_entities_of`]).
    pub entities: &'a [String],
}

/// The entities of a row as the chain hashes and stores them: sorted, without repeats.
pub fn audit_entities_of(entities: &[String]) -> Vec<String> {
    let mut e = entities.to_vec();
    e.sort();
    e.dedup();
    e
}

/// The version-2 chain hash: SHA-256 over every column and the entity rows, each field on a
/// line of its own (length-prefixed where it could hold a newline), so that an edit to any
/// column, or a deleted or added entity row, changes it.
pub fn audit_hash_v2(r: &AuditRow<'_>) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut field = |name: &str, value: &str| {
        h.update(format!("{name}:{}:", value.len()).as_bytes());
        h.update(value.as_bytes());
        h.update(b"\n");
    };
    field("v", "2");
    field("prev", r.prev_hash);
    field("seq", &r.seq.to_string());
    field("recorded_us", &r.recorded_us.to_string());
    field("site", r.site.unwrap_or(""));
    field("site_null", if r.site.is_none() { "1" } else { "0" });
    field("batch", if r.batch { "1" } else { "0" });
    field("body", r.body);
    for e in r.entities {
        field("entity", e);
    }
    hex::encode(h.finalize())
}

/// The chain hash of an audit event: SHA-256 of the previous hash, the sequence number and
/// the body, each followed by a newline.
pub fn audit_hash(prev_hash: &str, seq: i64, body: &str) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(seq.to_string().as_bytes());
    h.update(b"\n");
    h.update(body.as_bytes());
    h.update(b"\n");
    hex::encode(h.finalize())
}

/// The hash before the first audit event.
pub const AUDIT_GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An audit-trail query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only events about this `Type/id`.
    pub entity: Option<String>,
    /// Only events recorded at or after this (microseconds).
    pub since_us: Option<i64>,
    /// Only events recorded before this (microseconds).
    pub before_us: Option<i64>,
    /// Only events about this site's data.
    pub site: Option<String>,
    /// Continue after this chain position (oldest first).
    pub after_seq: Option<i64>,
    /// Page size.
    pub count: usize,
}

/// What a write closure can do inside the write transaction.
#[async_trait]
pub trait WriteTxn: Send {
    /// The trace context the versions appended next are recorded with (set by [`write`]).
    fn set_trace(&mut self, traceparent: Option<String>);
    /// The current version (tombstones included) of a resource.
    async fn current(
        &mut self,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<StoredVersion>, StorageError>;
    /// One version of a resource, as this transaction sees it.
    async fn version(
        &mut self,
        resource_type: &str,
        id: &str,
        version: i64,
    ) -> Result<Option<StoredVersion>, StorageError>;
    /// The current version number of a resource, whether it is a tombstone, and its site,
    /// without its body.
    async fn current_version(
        &mut self,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<(i64, bool, Option<String>)>, StorageError>;
    /// Ids of current resources matching a search that `ctx` sees, at most `limit`.
    async fn search_ids(
        &mut self,
        ctx: &AccessContext,
        resource_type: &str,
        request: &SearchRequest,
        limit: usize,
    ) -> Result<Vec<String>, StorageError>;
    /// Replaces the search-index rows of a current resource without writing a version (after
    /// the search-parameter definitions changed).
    async fn replace_index(
        &mut self,
        resource_type: &str,
        id: &str,
        index: &Index,
    ) -> Result<(), StorageError>;
    /// Appends a version (number = current + 1), moves the current pointer and replaces the
    /// search index rows, all in this transaction.
    async fn append(&mut self, new: NewVersion<'_>) -> Result<StoredVersion, StorageError>;
    /// Appends an audit event to the chain, in this transaction. A job that appends versions
    /// without recording an audit event is rolled back: no change goes unaudited.
    async fn audit(&mut self, record: AuditRecord) -> Result<(), StorageError>;
    /// Saves (or, with `None`, removes) the state of a background job (an export).
    async fn put_job(&mut self, id: &str, state: Option<&str>) -> Result<(), StorageError>;
    /// Inserts a version as another store recorded it (an archive restored into an empty
    /// store): its change sequence, number, time and site kept, the current pointer moved.
    /// No search index is written: the restore rebuilds it afterwards, as `reindex` does.
    async fn restore_version(&mut self, v: &StoredVersion) -> Result<(), StorageError>;
    /// Inserts an audit event as another store recorded it: its position, hashes and
    /// `audit_entity` rows kept, so that the chain verifies as it did there.
    async fn restore_audit(
        &mut self,
        a: &StoredAudit,
        entities: &[String],
    ) -> Result<(), StorageError>;
}

/// A type-erased write closure; see [`write`].
pub type WriteJob =
    Box<dyn for<'a> FnOnce(&'a mut dyn WriteTxn) -> BoxFuture<'a, JobOutcome> + Send>;

/// Called once the commit result of a job's batch is known.
pub type JobFinish = Box<dyn FnOnce(Result<(), StorageError>) + Send>;

/// What a write job reports back to the writer: whether to keep its changes, and what to do
/// once the commit result is known.
pub struct JobOutcome {
    /// False rolls the job's savepoint back.
    pub keep: bool,
    /// Called with the commit result (or `Ok` for a job that was rolled back).
    pub finish: JobFinish,
}

/// The storage trait: one implementation per database engine.
#[async_trait]
pub trait ResourceStore: Send + Sync + 'static {
    /// The current version of a resource (a tombstone if deleted), or `None`.
    async fn read(
        &self,
        ctx: &AccessContext,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<StoredVersion>, StorageError>;
    /// The current versions (tombstones included) of several resources of one type, in no
    /// particular order; ids that do not exist or that the caller may not see are left out.
    /// One query where a read is a round trip (PostgreSQL), point reads where it is not.
    async fn read_many(
        &self,
        ctx: &AccessContext,
        resource_type: &str,
        ids: &[String],
    ) -> Result<Vec<StoredVersion>, StorageError> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.extend(self.read(ctx, resource_type, id).await?);
        }
        Ok(out)
    }
    /// One version of a resource.
    async fn vread(
        &self,
        ctx: &AccessContext,
        resource_type: &str,
        id: &str,
        version: i64,
    ) -> Result<Option<StoredVersion>, StorageError>;
    /// A page of history.
    async fn history(
        &self,
        ctx: &AccessContext,
        query: &HistoryQuery,
    ) -> Result<HistoryPage, StorageError>;
    /// A page of search results, starting after `after` (the previous page's cursor).
    async fn search(
        &self,
        ctx: &AccessContext,
        resource_type: &str,
        request: &SearchRequest,
        after: Option<&Cursor>,
        count: usize,
    ) -> Result<SearchPage, StorageError>;
    /// The indexed values of `param` (e.g. `Type/id` references; not a modified parameter such
    /// as `code:text`) of the current versions of `ids`, as `(id, value)` pairs.
    async fn index_values(
        &self,
        ctx: &AccessContext,
        resource_type: &str,
        param: &str,
        ids: &[String],
    ) -> Result<Vec<(String, String)>, StorageError>;
    /// Current, non-deleted resources of every type in (type, id) order, after `after`.
    async fn current_page(
        &self,
        ctx: &AccessContext,
        after: Option<(String, String)>,
        limit: usize,
    ) -> Result<Vec<StoredVersion>, StorageError>;
    /// The highest committed change sequence (0 for an empty store).
    async fn last_seq(&self, ctx: &AccessContext) -> Result<i64, StorageError>;
    /// The resources of one type as they stood at change sequence `as_of`: for each id the
    /// newest version with `seq <= as_of`, unless that is a delete; ordered by id, after
    /// `after`. Writes committed later do not change the answer (a consistent export).
    async fn snapshot_page(
        &self,
        ctx: &AccessContext,
        resource_type: &str,
        as_of: i64,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<StoredVersion>, StorageError>;
    /// Counts current resources matching a search.
    async fn count(
        &self,
        ctx: &AccessContext,
        resource_type: &str,
        request: &SearchRequest,
    ) -> Result<u64, StorageError>;
    /// Records an audit event of a request that changed nothing (a read, a search, a refusal).
    /// It is queued and written with the others queued meanwhile, in one row of the chain per
    /// site; the caller does not wait for it.
    async fn audit(&self, record: AuditRecord) -> Result<(), StorageError>;
    /// The `audit_entity` rows of chain positions `from_seq..=to_seq`, ordered (for
    /// verifying the chain; no access check).
    async fn audit_entities(
        &self,
        from_seq: i64,
        to_seq: i64,
    ) -> Result<Vec<(i64, String)>, StorageError>;
    /// One row of the audit trail by its chain position, if `ctx` sees its site (a monitor
    /// sees the changes of its sites' data, not the queued access events).
    async fn audit_read(
        &self,
        ctx: &AccessContext,
        seq: i64,
    ) -> Result<Option<StoredAudit>, StorageError>;
    /// Audit events in chain order.
    async fn audit_search(
        &self,
        ctx: &AccessContext,
        query: &AuditQuery,
    ) -> Result<Vec<StoredAudit>, StorageError>;
    /// The state of one background job (an export), if it exists.
    async fn job(&self, id: &str) -> Result<Option<String>, StorageError>;
    /// Every background job's id and state.
    async fn jobs(&self) -> Result<Vec<(String, String)>, StorageError>;
    /// Queues a write job; it reports its own result through [`JobOutcome::finish`].
    async fn submit(&self, ctx: &AccessContext, job: WriteJob) -> Result<(), StorageError>;
    /// Whether the database answers.
    async fn is_ready(&self) -> bool;
    /// Renews the planner's statistics now (after a bulk load; PostgreSQL: `VACUUM (ANALYZE)`,
    /// which also marks the new pages all-visible for index-only scans). The default does
    /// nothing: SQLite's plans are pinned by index hints and need no statistics.
    async fn refresh_statistics(&self) -> Result<(), StorageError> {
        Ok(())
    }
    /// Disk space the store uses, with `detail` per table and index (reading every page, so
    /// seconds at millions of resources).
    async fn space(&self, detail: bool) -> Result<StoreSpace, StorageError>;
}

/// Disk space the database takes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreSpace {
    /// Bytes of the whole database, free pages excluded.
    pub total: u64,
    /// Current resources (tombstones included).
    pub resources: u64,
    /// Each table and index, largest first (empty unless asked for).
    pub parts: Vec<SpaceUse>,
}

/// Bytes one table or index takes on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpaceUse {
    /// The table or index.
    pub name: String,
    /// Bytes.
    pub bytes: u64,
}

tokio::task_local! {
    /// The W3C `traceparent` of the request a task serves; [`write`] records it with the
    /// versions the write appends (the trial store sets it per request when tracing is on).
    pub static TRACE_CONTEXT: Option<String>;
}

/// Runs `f` inside a write transaction and returns its result once the transaction has
/// committed durably. If `f` fails, its changes are rolled back and its error returned.
pub async fn write<T, E, F>(
    store: &(impl ResourceStore + ?Sized),
    ctx: &AccessContext,
    f: F,
) -> Result<T, E>
where
    T: Send + 'static,
    E: From<StorageError> + Send + 'static,
    F: for<'a> FnOnce(&'a mut dyn WriteTxn) -> BoxFuture<'a, Result<T, E>> + Send + 'static,
{
    use tracing::Instrument;
    let (tx, rx) = tokio::sync::oneshot::channel::<Result<T, E>>();
    let trace = TRACE_CONTEXT.try_with(Clone::clone).ok().flatten();
    let job: WriteJob = Box::new(move |txn| {
        Box::pin(async move {
            txn.set_trace(trace);
            match f(txn).await {
                Ok(v) => JobOutcome {
                    keep: true,
                    finish: Box::new(move |commit| {
                        let _ = tx.send(commit.map(|()| v).map_err(E::from));
                    }),
                },
                Err(e) => JobOutcome {
                    keep: false,
                    finish: Box::new(move |_| {
                        let _ = tx.send(Err(e));
                    }),
                },
            }
        })
    });
    async move {
        store.submit(ctx, job).await.map_err(E::from)?;
        rx.await.map_err(|_| E::from(StorageError::WriterGone))?
    }
    .instrument(tracing::info_span!("db.write", otel.kind = "client"))
    .await
}

/// Saves (or, with `None`, removes) a background job's state, durably.
pub async fn put_job(
    store: &(impl ResourceStore + ?Sized),
    id: &str,
    state: Option<String>,
) -> Result<(), StorageError> {
    let id = id.to_string();
    write(
        store,
        &AccessContext::system("background job"),
        move |txn| Box::pin(async move { txn.put_job(&id, state.as_deref()).await }),
    )
    .await
}

/// A database URL fit for logs and messages: a password in the user part
/// (`postgres://user:secret@host/db`) or in the query (`?password=secret`) becomes `***`.
pub fn redacted_url(url: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let mut out = match head.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = match rest.find('/') {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            let authority = match authority.rsplit_once('@') {
                Some((user, host)) => match user.split_once(':') {
                    Some((name, _)) => format!("{name}:***@{host}"),
                    None => authority.to_string(),
                },
                None => authority.to_string(),
            };
            format!("{scheme}://{authority}{path}")
        }
        None => head.to_string(),
    };
    if let Some(q) = query {
        let pairs: Vec<String> = q
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => p.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
    out
}

/// How long one read statement may run unless configured otherwise.
pub const DEFAULT_STATEMENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How much memory a PostgreSQL replica gives the current versions it has read, unless
/// configured otherwise.
pub const DEFAULT_READ_CACHE_BYTES: u64 = 64 << 20;

/// How a store is opened, beyond its URL.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// How long one read statement may run (PostgreSQL's `statement_timeout`, SQLite's
    /// progress handler); see [`StorageError::is_too_costly`].
    pub statement_timeout: std::time::Duration,
    /// Bytes of current versions a PostgreSQL replica keeps for reads by id, coherent with
    /// the other replicas' writes through the change sequence; 0 turns it off. SQLite reads
    /// its own pages in process and has none.
    pub read_cache_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            statement_timeout: DEFAULT_STATEMENT_TIMEOUT,
            read_cache_bytes: DEFAULT_READ_CACHE_BYTES,
        }
    }
}

/// Opens the store named by a database URL: `sqlite://path` (embedded, created if missing)
/// or `postgres://user[:password]@host[:port]/database` (`postgresql://` too; migrations are
/// applied at start-up), with the default options.
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn ResourceStore>, StorageError> {
    open_with(url, StoreOptions::default()).await
}

/// As [`open`], with `options`.
pub async fn open_with(
    url: &str,
    options: StoreOptions,
) -> Result<std::sync::Arc<dyn ResourceStore>, StorageError> {
    match Backend::of(url)? {
        Backend::Sqlite => {
            let mut sqlite = SqliteOptions::from_url(url)?;
            sqlite.statement_timeout = options.statement_timeout;
            Ok(std::sync::Arc::new(SqliteStore::open(sqlite).await?))
        }
        Backend::Postgres => Ok(std::sync::Arc::new(
            PostgresStore::open_with(url, options).await?,
        )),
    }
}

impl StorageError {
    /// Whether the database cancelled the statement for running past the statement timeout
    /// (PostgreSQL `query_canceled`, SQLite interrupted by the progress handler).
    pub fn is_too_costly(&self) -> bool {
        match self {
            StorageError::Postgres(sqlx::Error::Database(d)) => {
                d.code().as_deref() == Some("57014")
            }
            StorageError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                e.code == rusqlite::ErrorCode::OperationInterrupted
            }
            _ => false,
        }
    }
}

/// The database engine a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite (`sqlite://path`).
    Sqlite,
    /// A PostgreSQL server (`postgres://...`).
    Postgres,
}

impl Backend {
    /// The engine of a database URL, checked for its form (not for reachability).
    pub fn of(url: &str) -> Result<Self, StorageError> {
        if url.starts_with("sqlite:") {
            SqliteOptions::from_url(url)?;
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            url.parse::<sqlx::postgres::PgConnectOptions>()
                .map_err(|_| StorageError::UnsupportedUrl(url.to_string()))?;
            Ok(Backend::Postgres)
        } else {
            Err(StorageError::UnsupportedUrl(url.to_string()))
        }
    }
}

/// Where files that belong with a database live (exports, the development signing key, the
/// site gateway's own database): beside an SQLite file, else `data/`.
pub fn default_data_dir(url: &str) -> std::path::PathBuf {
    match SqliteOptions::from_url(url) {
        Ok(o) => o
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| ".".into(), std::path::Path::to_path_buf),
        Err(_) => "data".into(),
    }
}

#[cfg(test)]
mod redaction_tests {
    use super::redacted_url;

    #[test]
    fn passwords_never_reach_a_log() {
        assert_eq!(
            redacted_url("postgres://tb:s3cr:et@db.example:5432/trial?sslmode=require"),
            "postgres://tb:***@db.example:5432/trial?sslmode=require"
        );
        assert_eq!(
            redacted_url("postgresql://tb@db/trial?password=s3cret&sslmode=verify-full"),
            "postgresql://tb@db/trial?password=***&sslmode=verify-full"
        );
        assert_eq!(
            redacted_url("sqlite://data/trialbridge.db"),
            "sqlite://data/trialbridge.db"
        );
        assert!(!redacted_url("postgres://u:p%40ss@h/d").contains("p%40ss"));
    }
}
