//! The SQL both backends share: search conditions over the index tables, `_sort` keys and
//! keyset cursors, with the few places where SQLite and PostgreSQL differ behind [`Dialect`].
//! Queries are written with `?` placeholders; [`Dialect::placeholders`] numbers them for
//! PostgreSQL.

use trialbridge_fhir::index::{index_key, normalize_string};
use trialbridge_fhir::search::{
    Criterion, Cursor, Match, Prefix, RangeKind, SearchRequest, SortKey, SortValue,
};
use trialbridge_fhir::search_param::SearchParamKind;

use crate::{AccessContext, SiteScope};

/// Range rows at most this wide (in their unit: a day in microseconds for dates; numbers are
/// points, width 0) are "short": a search can bound their `low` and read one index range.
pub(crate) const SHORT_SPAN: f64 = 86_400_000_000.0;

/// Whose SQL a query is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// SQLite 3 (bundled).
    Sqlite,
    /// PostgreSQL 13 or newer.
    Postgres,
}

impl Dialect {
    /// The column that names a physical row, for picking one row per resource.
    fn row_id(self) -> &'static str {
        match self {
            Dialect::Sqlite => "rowid",
            Dialect::Postgres => "ctid",
        }
    }

    /// SQLite's planner needs a nudge to some indexes; PostgreSQL has no such syntax.
    fn index_hint(self, index: &str) -> String {
        match self {
            Dialect::Sqlite => format!("INDEXED BY {index}"),
            Dialect::Postgres => String::new(),
        }
    }

    /// The condition that a `search_index` row (of `table`, or its alias) belongs to a
    /// parameter without a modifier: the rows SQLite's `search_index_owner` keeps, stated in
    /// each query that reads it (always true of the parameters such queries name).
    pub(crate) fn unmodified_param(self, table: &str) -> String {
        match self {
            Dialect::Sqlite => format!("{table}.param NOT GLOB '*:*'"),
            Dialect::Postgres => format!("{table}.param NOT LIKE '%:%'"),
        }
    }

    /// The query with its `?` placeholders numbered `$1, $2, ...` for PostgreSQL. The
    /// generated SQL has no `?` inside string literals; values are always bound.
    pub(crate) fn placeholders(self, sql: &str) -> String {
        match self {
            Dialect::Sqlite => sql.to_string(),
            Dialect::Postgres => {
                let mut out = String::with_capacity(sql.len() + 16);
                let mut n = 0;
                for ch in sql.chars() {
                    if ch == '?' {
                        n += 1;
                        out.push('$');
                        out.push_str(&n.to_string());
                    } else {
                        out.push(ch);
                    }
                }
                out
            }
        }
    }
}

/// A value bound to a placeholder.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Arg {
    /// TEXT.
    Text(String),
    /// INTEGER / BIGINT.
    Int(i64),
    /// REAL / DOUBLE PRECISION.
    Real(f64),
}

impl From<String> for Arg {
    fn from(v: String) -> Self {
        Arg::Text(v)
    }
}

impl From<&str> for Arg {
    fn from(v: &str) -> Self {
        Arg::Text(v.to_string())
    }
}

impl From<i64> for Arg {
    fn from(v: i64) -> Self {
        Arg::Int(v)
    }
}

impl From<f64> for Arg {
    fn from(v: f64) -> Self {
        Arg::Real(v)
    }
}

impl rusqlite::ToSql for Arg {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Arg::Text(s) => ValueRef::Text(s.as_bytes()),
            Arg::Int(n) => ValueRef::Integer(*n),
            Arg::Real(f) => ValueRef::Real(*f),
        }))
    }
}

/// Escapes LIKE metacharacters (with `\` as the escape character).
fn like_literal(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

pub(crate) const VERSION_COLUMNS: &str =
    "v.res_type, v.res_id, v.version, v.seq, v.last_updated, v.last_updated_us, v.deleted, v.body, v.site, v.traceparent";
/// The number of columns in [`VERSION_COLUMNS`]; sort keys follow them.
pub(crate) const VERSION_COLUMN_COUNT: usize = 10;

/// ` AND (col IS NULL OR col IN (...))` for a caller limited to some sites; nothing otherwise.
pub(crate) fn push_site_scope(
    sql: &mut String,
    args: &mut Vec<Arg>,
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
    args.extend(sites.iter().map(|s| Arg::from(s.clone())));
}

/// The sites a context is limited to, `None` when it sees every site.
pub(crate) fn limited(ctx: &AccessContext) -> Option<&[String]> {
    match &ctx.sites {
        SiteScope::All => None,
        SiteScope::Only(s) => Some(s),
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
/// it selects `columns` without order or limit (for counting and for `_sort`'s inner query).
///
/// On PostgreSQL a page is cut from ids before any body is read: the inner query picks the page's ids, the
/// outer one joins their current rows and versions. For a caller who sees every site the ids
/// come straight from the index rows of the most selective criterion (index rows exist only
/// for current, non-deleted versions), so a page of a criterion with 14,000 matches reads
/// 14,000 index entries and 21 resources, not 14,000 resources. A caller limited to some
/// sites needs each match's current row for its site, and a `_lastUpdated` criterion its
/// version; those inner queries start from `resource_current`. On SQLite a page whose
/// criteria include a token with its system (or an `:exact` string) walks that criterion's
/// index rows in id order from the cursor; any other page is one query over current rows.
pub(crate) fn search_sql(
    dialect: Dialect,
    sites: Option<&[String]>,
    resource_type: &str,
    request: &SearchRequest,
    after_id: Option<&str>,
    limit: Option<usize>,
    columns: &str,
) -> (String, Vec<Arg>) {
    let mut q = SqlBuilder {
        sql: String::new(),
        args: Vec::new(),
        sites: sites.map(<[String]>::to_vec),
        dialect,
    };
    let clauses = clauses(request);
    // SQLite keeps one query: it runs `c.res_id IN (...)` as an ephemeral b-tree of the
    // matches in id order and reads only the page's rows, while the ids-first form, without
    // statistics, is flattened into a walk of the owner index over every row of the type (a
    // `subject=` page at 100,000 Observations went from 2,600 to 12 per second).
    let page = limit.filter(|_| dialect == Dialect::Postgres);
    if let (Dialect::Sqlite, Some(limit), Some((k, criterion, m))) =
        (dialect, limit, id_ordered_driver(&clauses))
    {
        // A criterion that pins every index key column before `res_id` (a token with its
        // system, an `:exact` string) has its index rows in id order, one per resource: the
        // page walks them from the cursor and stops after `limit`, instead of collecting every
        // match first (4,000 per page of a token at a million Observations).
        q.push(&format!("SELECT {columns} FROM search_index i JOIN resource_current c ON c.res_type = i.res_type AND c.res_id = i.res_id JOIN resource_version v ON v.seq = c.seq WHERE i.res_type = ?"), resource_type.to_string());
        q.push(" AND i.param = ?", criterion.param.clone());
        q.text_condition(m);
        if matches!(m, Match::Reference { .. } | Match::Uri(_)) {
            // Their rows carry no system; saying so lets the key order show.
            q.sql.push_str(" AND i.system = ''");
        }
        q.sql.push_str(" AND c.deleted = 0");
        q.site_scope();
        q.clauses(resource_type, &clauses, Some(k));
        if let Some(after) = after_id {
            q.push(" AND i.res_id > ?", after.to_string());
        }
        q.push(" ORDER BY i.res_id LIMIT ?", limit as i64);
        return (q.sql, q.args);
    }
    let Some(limit) = page else {
        q.push(&format!("SELECT {columns} FROM resource_current c JOIN resource_version v ON v.seq = c.seq WHERE c.res_type = ? AND c.deleted = 0"), resource_type.to_string());
        q.site_scope();
        q.clauses(resource_type, &clauses, None);
        if let Some(after) = after_id {
            q.push(" AND c.res_id > ?", after.to_string());
        }
        if let Some(limit) = limit {
            q.push(" ORDER BY c.res_id LIMIT ?", limit as i64);
        }
        return (q.sql, q.args);
    };
    q.push(&format!("SELECT {columns} FROM resource_current c JOIN resource_version v ON v.seq = c.seq WHERE c.res_type = ? AND c.deleted = 0 AND c.res_id IN ("), resource_type.to_string());
    let reads_version = request.criteria.iter().any(reads_version);
    let driver = if sites.is_none() && !reads_version {
        clauses
            .iter()
            .enumerate()
            .filter_map(|(k, c)| c.source_rank().map(|r| (r, k)))
            .min()
            .map(|(_, k)| k)
    } else {
        None
    };
    match driver {
        Some(k) => {
            q.sql.push_str("SELECT DISTINCT c.res_id FROM (");
            q.source(resource_type, &clauses[k]);
            q.sql.push_str(") AS c WHERE 1 = 1");
        }
        None => {
            let join = if reads_version {
                " JOIN resource_version v ON v.seq = c.seq"
            } else {
                ""
            };
            q.push(&format!("SELECT c.res_id FROM resource_current c{join} WHERE c.res_type = ? AND c.deleted = 0"), resource_type.to_string());
            q.site_scope();
        }
    }
    q.clauses(resource_type, &clauses, driver);
    if let Some(after) = after_id {
        q.push(" AND c.res_id > ?", after.to_string());
    }
    q.push(" ORDER BY c.res_id LIMIT ?)", limit as i64);
    q.sql.push_str(" ORDER BY c.res_id");
    (q.sql, q.args)
}

/// The first clause whose index rows are in id order and one per resource: a single token
/// with a code and a system (`|code` included), or an `:exact` string, both of which pin
/// `value` and `system`, the key columns before `res_id`; or a reference with its type, or a
/// uri, whose rows are indexed without a system (`''`), so that pinning it is no filter.
fn id_ordered_driver<'a>(clauses: &[Clause<'a>]) -> Option<(usize, &'a Criterion, &'a Match)> {
    clauses.iter().enumerate().find_map(|(k, c)| match c {
        Clause::Criterion(criterion) => match criterion.any_of.as_slice() {
            [m @ (Match::Token {
                code: Some(_),
                system: Some(_),
            }
            | Match::Exact(_)
            | Match::Reference {
                target_type: Some(_),
                ..
            }
            | Match::Uri(_))] => Some((k, *criterion, m)),
            _ => None,
        },
        Clause::RangeGroup(..) => None,
    })
}

/// One ANDed condition of a search.
enum Clause<'a> {
    /// ANDed single-value range criteria of one parameter (`date=ge..&date=lt..`), evaluated
    /// together on the same value so that the index reads only the rows between both bounds.
    /// (For an element that repeats, each criterion could otherwise be met by a different
    /// value.)
    RangeGroup(&'a str, Vec<&'a Match>),
    /// Any other criterion: one of its values matches.
    Criterion(&'a Criterion),
}

impl Clause<'_> {
    /// How selective this clause usually is when its ids are read straight from the index
    /// (lower first), or `None` when its matches are not all index rows of current resources
    /// (`_id`, `:missing`, `:not`, `_has`, `_lastUpdated`, `_filter`-style alternatives).
    fn source_rank(&self) -> Option<u8> {
        match self {
            Clause::RangeGroup(..) => Some(1),
            Clause::Criterion(c) if c.param == "_lastUpdated" => None,
            Clause::Criterion(c) => c
                .any_of
                .iter()
                .map(|m| match m {
                    Match::Token { code: Some(_), .. }
                    | Match::Reference {
                        target_type: Some(_),
                        ..
                    }
                    | Match::Uri(_)
                    | Match::Exact(_) => Some(0),
                    Match::Range { .. } => Some(1),
                    Match::StartsWith(_) => Some(2),
                    Match::Chain { .. } => Some(3),
                    Match::Token { code: None, .. }
                    | Match::Reference {
                        target_type: None, ..
                    }
                    | Match::Contains(_) => Some(4),
                    Match::Id(_)
                    | Match::Missing(_)
                    | Match::Not(_)
                    | Match::AnyOf(_)
                    | Match::Has { .. } => None,
                })
                .try_fold(0, |worst, r| r.map(|r| worst.max(r))),
        }
    }
}

/// The request's criteria as ANDed clauses, in request order.
fn clauses(request: &SearchRequest) -> Vec<Clause<'_>> {
    let single_range = |c: &Criterion| {
        c.param != "_lastUpdated"
            && matches!(c.any_of.as_slice(), [Match::Range { token: None, .. }])
    };
    let mut out = Vec::new();
    let mut grouped: Vec<&str> = Vec::new();
    for criterion in &request.criteria {
        if !single_range(criterion) {
            out.push(Clause::Criterion(criterion));
            continue;
        }
        if grouped.contains(&criterion.param.as_str()) {
            continue;
        }
        grouped.push(&criterion.param);
        let group = request
            .criteria
            .iter()
            .filter(|c| c.param == criterion.param && single_range(c))
            .map(|c| &c.any_of[0])
            .collect();
        out.push(Clause::RangeGroup(&criterion.param, group));
    }
    out
}

/// Whether a criterion compares the version row itself (`_lastUpdated`, also inside a
/// `_filter`-style alternative).
fn reads_version(c: &Criterion) -> bool {
    c.param == "_lastUpdated"
        || c.any_of.iter().any(|m| match m {
            Match::AnyOf(inner) => inner.iter().any(reads_version),
            _ => false,
        })
}

/// SQL text with its bound values.
struct SqlBuilder {
    sql: String,
    args: Vec<Arg>,
    /// The caller's sites when limited: every `resource_current c` the query reads, nested
    /// ones (chains, `_has`) included, is filtered by them.
    sites: Option<Vec<String>>,
    /// Whose SQL to write.
    dialect: Dialect,
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

    fn arg(&mut self, v: impl Into<Arg>) {
        self.args.push(v.into());
    }

    fn push(&mut self, sql: &str, v: impl Into<Arg>) {
        self.sql.push_str(sql);
        self.arg(v);
    }

    /// ` AND (...)` for each clause but `skip` (the one the ids already come from).
    fn clauses(&mut self, rt: &str, clauses: &[Clause], skip: Option<usize>) {
        for (k, clause) in clauses.iter().enumerate() {
            if Some(k) == skip {
                continue;
            }
            self.sql.push_str(" AND (");
            match clause {
                Clause::RangeGroup(param, group) => {
                    self.sql.push_str("c.res_id IN (");
                    self.range_rows_source(rt, param, group);
                    self.sql.push(')');
                }
                Clause::Criterion(criterion) => {
                    for (i, m) in criterion.any_of.iter().enumerate() {
                        if i > 0 {
                            self.sql.push_str(" OR ");
                        }
                        self.condition(rt, criterion, m);
                    }
                }
            }
            self.sql.push(')');
        }
    }

    /// A SELECT of the ids (column `res_id`, repeats possible) of the resources matching a
    /// clause whose [`Clause::source_rank`] is some.
    fn source(&mut self, rt: &str, clause: &Clause) {
        match clause {
            Clause::RangeGroup(param, group) => self.range_rows_source(rt, param, group),
            Clause::Criterion(criterion) => {
                for (i, m) in criterion.any_of.iter().enumerate() {
                    if i > 0 {
                        self.sql.push_str(" UNION ALL ");
                    }
                    self.match_source(rt, criterion, m);
                }
            }
        }
    }

    /// A SELECT of the ids of the resources with an index row of `criterion` that matches
    /// `m`: a token, string, reference or URI value, a range value or a chain.
    fn match_source(&mut self, rt: &str, criterion: &Criterion, m: &Match) {
        match m {
            Match::Chain {
                target_type,
                criterion: inner,
            } => {
                // Nested SELECTs reuse the aliases c and v: SQL resolves them to the nearest one.
                self.push(
                    "SELECT i.res_id FROM search_index i WHERE i.res_type = ?",
                    rt.to_string(),
                );
                self.push(" AND i.param = ?", criterion.param.clone());
                self.push(
                    " AND i.value IN (SELECT ? || '/' || c.res_id FROM ",
                    target_type.clone(),
                );
                self.matching_ids_tail(target_type, inner);
                self.sql.push(')');
            }
            Match::Range { .. } => self.range_rows_source(rt, &criterion.param, &[m]),
            _ => {
                self.push(
                    "SELECT i.res_id FROM search_index i WHERE i.res_type = ?",
                    rt.to_string(),
                );
                self.push(" AND i.param = ?", criterion.param.clone());
                self.text_condition(m);
            }
        }
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
                self.push("c.res_id IN (SELECT substr(i.value, CAST(? AS INTEGER)) FROM search_index i WHERE i.res_type = ?", prefix.len() as i64 + 1);
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
            _ => {
                self.sql.push_str("c.res_id IN (");
                self.match_source(rt, criterion, m);
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
            // Index keys are cut at INDEX_KEY_MAX_BYTES; so is what they are compared with.
            Match::Token { system, code } => {
                if let Some(code) = code {
                    self.push(" AND i.value = ?", index_key(code).to_string());
                }
                match system {
                    None => {}
                    Some(None) => self.sql.push_str(" AND i.system = ''"),
                    Some(Some(s)) => self.push(" AND i.system = ?", index_key(s).to_string()),
                }
            }
            Match::StartsWith(prefix) => {
                let prefix = index_key(prefix);
                self.push(" AND i.value >= ?", prefix.to_string());
                self.push(" AND i.value < ?", format!("{prefix}\u{10FFFF}"));
            }
            Match::Exact(text) => {
                self.push(
                    " AND i.value = ?",
                    index_key(&normalize_string(text)).to_string(),
                );
                self.push(" AND i.system = ?", index_key(text).to_string());
            }
            Match::Contains(part) => {
                // SQLite's LIKE ignores ASCII case; PostgreSQL's ILIKE does the same.
                let like = match self.dialect {
                    Dialect::Sqlite => "LIKE",
                    Dialect::Postgres => "ILIKE",
                };
                self.push(
                    &format!(" AND i.value {like} ? ESCAPE '\\'"),
                    format!("%{}%", like_literal(part)),
                );
            }
            Match::Reference {
                target_type: Some(t),
                id,
            } => self.push(" AND i.value = ?", format!("{t}/{id}")),
            Match::Reference {
                target_type: None,
                id,
            } => match self.dialect {
                Dialect::Sqlite => {
                    self.push(" AND i.value GLOB ?", format!("*/{}", glob_literal(id)))
                }
                Dialect::Postgres => self.push(
                    " AND i.value LIKE ? ESCAPE '\\'",
                    format!("%/{}", like_literal(id)),
                ),
            },
            Match::Uri(u) => self.push(" AND i.value = ?", index_key(u).to_string()),
            Match::Id(_)
            | Match::Range { .. }
            | Match::Missing(_)
            | Match::Not(_)
            | Match::Chain { .. }
            | Match::AnyOf(_)
            | Match::Has { .. } => {}
        }
    }

    /// A SELECT of the ids of the resources with one `param` row that satisfies every match of
    /// `group` (ANDed range criteria of one parameter are evaluated on the same value). Short
    /// rows are bounded on `low` so the lookup index reads one range; long rows come from their
    /// own index.
    fn range_rows_source(&mut self, rt: &str, param: &str, group: &[&Match]) {
        let (mut lb, mut ub) = (f64::MIN, f64::MAX);
        for m in group {
            let (l, u) = short_row_bounds(m);
            lb = lb.max(l);
            ub = ub.min(u);
        }
        for long in [false, true] {
            if long {
                self.sql.push_str(" UNION ALL ");
            }
            // The planner would otherwise scan the lookup index for the few long rows.
            let table = if long && self.dialect == Dialect::Sqlite {
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
                    self.push(" AND r.token_code = ?", index_key(code).to_string());
                    if let Some(s) = system {
                        self.push(" AND r.token_system = ?", index_key(s).to_string());
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

/// The queries that deliver a page, run in order until the page is full. A search with no
/// criteria sorted by one date, number or quantity parameter reads the range index in order
/// (rows with a value), then the resources without one; anything else is one query.
pub(crate) fn search_phases(
    dialect: Dialect,
    sites: Option<&[String]>,
    resource_type: &str,
    request: &SearchRequest,
    after: Option<&Cursor>,
    limit: usize,
) -> Vec<(String, Vec<Arg>)> {
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
            dialect,
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
             AND r.{rowid} = (SELECT r2.{rowid} FROM search_range r2 {hint} WHERE r2.res_type = r.res_type AND r2.res_id = r.res_id \
             AND r2.param = r.param AND r2.token_code = '' ORDER BY r2.low {order}, r2.{rowid} LIMIT 1)",
            rowid = dialect.row_id(),
            hint = dialect.index_hint("search_range_owner"),
        );
        let mut args: Vec<Arg> = vec![resource_type.to_string().into(), key.param.clone().into()];
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
    let mut args: Vec<Arg> = vec![
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
    dialect: Dialect,
    sites: Option<&[String]>,
    resource_type: &str,
    request: &SearchRequest,
    after: Option<&Cursor>,
    limit: usize,
) -> (String, Vec<Arg>) {
    if request.sort.is_empty() {
        return search_sql(
            dialect,
            sites,
            resource_type,
            request,
            after.map(|c| c.id.as_str()),
            Some(limit),
            VERSION_COLUMNS,
        );
    }
    let mut key_exprs = String::new();
    let mut key_args: Vec<Arg> = Vec::new();
    for (k, key) in request.sort.iter().enumerate() {
        let agg = if key.descending { "MAX" } else { "MIN" };
        let expr = match (key.param.as_str(), key.kind) {
            ("_id", _) => "c.res_id".to_string(),
            ("_lastUpdated", _) => "v.last_updated_us".to_string(),
            // The owner indexes: without statistics SQLite chose the lookup index by
            // (type, param) and scanned every value of the parameter for each matching
            // resource (a `subject=` page sorted by date over 20,000 Observations ran past 30 s).
            (_, SearchParamKind::Date | SearchParamKind::Number | SearchParamKind::Quantity) => {
                key_args.push(key.param.clone().into());
                // `token_code = ''`: not a composite's row, as SQLite's owner index.
                let hint = dialect.index_hint("search_range_owner");
                format!("(SELECT {agg}(r.low) FROM search_range r {hint} WHERE r.res_type = c.res_type AND r.res_id = c.res_id AND r.param = ? AND r.token_code = '')")
            }
            _ => {
                key_args.push(key.param.clone().into());
                let hint = dialect.index_hint("search_index_owner");
                let own = dialect.unmodified_param("i");
                format!("(SELECT {agg}(i.value) FROM search_index i {hint} WHERE i.res_type = c.res_type AND i.res_id = c.res_id AND i.param = ? AND {own})")
            }
        };
        key_exprs.push_str(&format!(", {expr} AS k{k}"));
    }
    let (inner, inner_args) = search_sql(
        dialect,
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
    args: &mut Vec<Arg>,
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
    let value: Option<Arg> = match cursor.keys.get(j) {
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

/// The highest committed change sequence (0 for an empty store).
pub(crate) const HEAD_SEQ: &str = "SELECT COALESCE(MAX(seq), 0) FROM resource_version";

/// The page query of a history request: the versions up to the query's snapshot (all when it
/// has none), with one row more than the page to tell whether more follow. Each row carries,
/// after the version's columns, the change sequence's head as the same statement sees it: one
/// statement, so one snapshot and (on PostgreSQL) one round trip for the page and its bound.
pub(crate) fn history_sql(sites: Option<&[String]>, q: &crate::HistoryQuery) -> (String, Vec<Arg>) {
    use crate::{HistoryOrder, HistoryScope};
    let mut sql =
        format!("SELECT {VERSION_COLUMNS}, ({HEAD_SEQ}) FROM resource_version v WHERE v.seq <= ?");
    let mut args: Vec<Arg> = vec![q.snapshot_seq.unwrap_or(i64::MAX).into()];
    push_site_scope(&mut sql, &mut args, sites, "v.site");
    let (cmp, order) = match q.order {
        HistoryOrder::NewestFirst => ("<", "DESC"),
        HistoryOrder::OldestFirst => (">", "ASC"),
    };
    let by = match &q.scope {
        HistoryScope::System => format!("v.seq {order}"),
        HistoryScope::Type(t) => {
            // The type as a range of one value, not an equality, and the order the (type, seq)
            // index's: with `=` PostgreSQL drops the type from the ORDER BY (it is constant)
            // and walks the change sequence's own index, stepping over every version of other
            // types written after the page (a load's 1,000 Patients before each page of
            // Observations). This way the page reads the type's versions only.
            sql.push_str(" AND v.res_type >= ? AND v.res_type <= ?");
            args.push(t.clone().into());
            args.push(t.clone().into());
            format!("v.res_type {order}, v.seq {order}")
        }
        HistoryScope::Instance(t, id) => {
            sql.push_str(" AND v.res_type = ? AND v.res_id = ?");
            args.push(t.clone().into());
            args.push(id.clone().into());
            format!("v.seq {order}")
        }
    };
    if let Some(since) = q.since_us {
        sql.push_str(" AND v.last_updated_us >= ?");
        args.push(since.into());
    }
    if let Some(at) = q.at_or_before_us {
        sql.push_str(" AND v.last_updated_us <= ?");
        args.push(at.into());
    }
    if let Some(after) = q.after_seq {
        sql.push_str(&format!(" AND v.seq {cmp} ?"));
        args.push(after.into());
    }
    sql.push_str(&format!(" ORDER BY {by} LIMIT ?"));
    args.push((q.count as i64 + 1).into());
    (sql, args)
}

/// A history page from the versions [`history_sql`] read and `head`, the change sequence's head
/// its rows carried (read alone when there was none). Every version the statement saw is at or
/// below that head, and since commits are serialised in seq order every version at or below it
/// was committed: next pages bounded by it list exactly what this one could see.
pub(crate) fn history_page(
    q: &crate::HistoryQuery,
    mut versions: Vec<crate::StoredVersion>,
    head: i64,
) -> crate::HistoryPage {
    let has_more = versions.len() > q.count;
    versions.truncate(q.count);
    crate::HistoryPage {
        versions,
        snapshot_seq: q.snapshot_seq.unwrap_or(i64::MAX).min(head),
        has_more,
    }
}

/// The audit-trail query: rows after `after_seq` in chain order, within the caller's sites.
pub(crate) fn audit_search_sql(
    sites: Option<&[String]>,
    changes_only: bool,
    q: &crate::AuditQuery,
) -> (String, Vec<Arg>) {
    let mut sql = format!("SELECT {AUDIT_COLUMNS} FROM audit_event a WHERE a.seq > ?");
    let mut args: Vec<Arg> = vec![q.after_seq.unwrap_or(0).into()];
    push_site_scope(&mut sql, &mut args, sites, "a.site");
    if changes_only {
        sql.push_str(" AND a.batch = 0");
    }
    if let Some(e) = &q.entity {
        sql.push_str(" AND a.seq IN (SELECT seq FROM audit_entity WHERE entity = ?)");
        args.push(e.clone().into());
    }
    if let Some(t) = q.since_us {
        sql.push_str(" AND a.recorded_us >= ?");
        args.push(t.into());
    }
    if let Some(t) = q.before_us {
        sql.push_str(" AND a.recorded_us < ?");
        args.push(t.into());
    }
    if let Some(site) = &q.site {
        sql.push_str(" AND a.site = ?");
        args.push(site.clone().into());
    }
    sql.push_str(" ORDER BY a.seq LIMIT ?");
    args.push((q.count as i64).into());
    (sql, args)
}

/// The columns of an audit row, in [`crate::StoredAudit`] order.
pub(crate) const AUDIT_COLUMNS: &str =
    "seq, recorded_us, site, batch, body, prev_hash, hash, hash_version";

/// Now, in microseconds since the epoch.
pub(crate) fn now_us() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64
}

/// `lastUpdated` text of an instant in microseconds.
pub(crate) fn instant_text(us: i64) -> Result<String, crate::StorageError> {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .map_err(|e| crate::StorageError::Corrupt(e.to_string()))?;
    Ok(trialbridge_fhir::instant::format(t))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A page of 50 of the Observations' history in `order`, after `after_seq`.
    pub(crate) fn observation_history(
        order: crate::HistoryOrder,
        after_seq: Option<i64>,
    ) -> crate::HistoryQuery {
        crate::HistoryQuery {
            scope: crate::HistoryScope::Type("Observation".into()),
            since_us: None,
            at_or_before_us: None,
            order,
            after_seq,
            snapshot_seq: None,
            count: 50,
        }
    }

    fn request(query: &[(&str, &str)]) -> SearchRequest {
        let params: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        trialbridge_fhir::search::parse("Observation", &params, true).unwrap()
    }

    /// The page's inner query (its ids) and what follows it (the bodies' join).
    fn page_sql(sites: Option<&[String]>, query: &[(&str, &str)]) -> (String, String) {
        let (sql, args) = search_sql(
            Dialect::Postgres,
            sites,
            "Observation",
            &request(query),
            None,
            Some(21),
            VERSION_COLUMNS,
        );
        assert_eq!(sql.matches('?').count(), args.len(), "{sql}");
        let start = sql.find("c.res_id IN (").unwrap() + "c.res_id IN (".len();
        let end = sql.rfind(" ORDER BY c.res_id LIMIT ?)").unwrap();
        (sql[start..end].to_string(), sql[end..].to_string())
    }

    /// On SQLite a page of a token with its system (or an `:exact` string) walks that
    /// criterion's index rows in id order and stops at the page's end; anything whose rows are
    /// not one per resource in id order keeps the query that collects the matches first.
    #[test]
    fn an_sqlite_page_walks_index_rows_in_id_order_only_when_they_are_in_id_order() {
        let walks = |query: &[(&str, &str)]| {
            let (sql, args) = search_sql(
                Dialect::Sqlite,
                None,
                "Observation",
                &request(query),
                Some("gen-0000100"),
                Some(21),
                VERSION_COLUMNS,
            );
            assert_eq!(sql.matches('?').count(), args.len(), "{sql}");
            let walk = sql.contains("FROM search_index i JOIN resource_current c");
            if walk {
                assert!(
                    sql.ends_with(" AND i.res_id > ? ORDER BY i.res_id LIMIT ?"),
                    "{sql}"
                );
            }
            walk
        };
        assert!(walks(&[("code", "http://loinc.org|8867-4")]));
        assert!(walks(&[("code", "|8867-4")]));
        assert!(walks(&[
            ("status", "final"),
            ("code", "http://loinc.org|8867-4")
        ]));
        assert!(
            !walks(&[("code", "8867-4")]),
            "any system: rows of several systems"
        );
        assert!(!walks(&[(
            "code",
            "http://loinc.org|8867-4,http://loinc.org|8310-5"
        )]));
        assert!(!walks(&[("code", "http://loinc.org|")]), "a system alone");
        assert!(!walks(&[("date", "ge2021-01-01")]));
        assert!(walks(&[("subject", "Patient/p1")]));
        assert!(
            !walks(&[("subject", "p1")]),
            "any type: rows of several types"
        );
        assert!(!walks(&[("subject:missing", "true")]));
    }

    #[test]
    fn an_unlimited_page_takes_its_ids_from_the_most_selective_index_rows() {
        let (ids, _) = page_sql(
            None,
            &[
                ("date", "ge2021-01-01"),
                ("date", "lt2021-02-01"),
                ("subject", "Patient/p1"),
            ],
        );
        // The reference's rows are the source; the date range (both bounds on one value) is a
        // condition on them; no current row or body is read before the LIMIT.
        assert!(
            ids.starts_with("SELECT DISTINCT c.res_id FROM (SELECT i.res_id FROM search_index i"),
            "{ids}"
        );
        assert_eq!(ids.matches("search_range r WHERE").count(), 2, "{ids}");
        assert!(!ids.contains("resource_current"), "{ids}");
        assert!(!ids.contains("resource_version"), "{ids}");
        let (ids, _) = page_sql(None, &[("date", "ge2021-01-01"), ("date", "lt2021-02-01")]);
        assert!(
            ids.starts_with("SELECT DISTINCT c.res_id FROM (SELECT r.res_id FROM search_range r"),
            "{ids}"
        );
    }

    /// SQLite plans the one-query form well and the ids-first form badly (see `search_sql`);
    /// a criterion whose index rows are not in id order (a code of any system) keeps it.
    #[test]
    fn an_sqlite_page_is_one_query_over_current_rows() {
        let (sql, args) = search_sql(
            Dialect::Sqlite,
            None,
            "Observation",
            &request(&[("code", "8867-4")]),
            Some("o1"),
            Some(21),
            VERSION_COLUMNS,
        );
        assert_eq!(sql.matches('?').count(), args.len(), "{sql}");
        assert!(
            sql.starts_with(&format!(
                "SELECT {VERSION_COLUMNS} FROM resource_current c JOIN resource_version v"
            )),
            "{sql}"
        );
        assert!(!sql.contains("DISTINCT"), "{sql}");
        assert!(
            sql.ends_with(" AND c.res_id > ? ORDER BY c.res_id LIMIT ?"),
            "{sql}"
        );
    }

    #[test]
    fn pages_of_site_limited_callers_and_of_criteria_on_the_version_start_from_current_rows() {
        let sites = vec!["site-a".to_string()];
        let (ids, _) = page_sql(Some(&sites), &[("subject", "Patient/p1")]);
        assert!(
            ids.starts_with("SELECT c.res_id FROM resource_current c WHERE"),
            "{ids}"
        );
        assert!(ids.contains("c.site"), "{ids}");
        assert!(!ids.contains("resource_version"), "{ids}");
        // `_lastUpdated` compares the version; `_id` and `:missing` need every current row.
        let (ids, _) = page_sql(None, &[("_lastUpdated", "ge2021-01-01")]);
        assert!(
            ids.starts_with("SELECT c.res_id FROM resource_current c JOIN resource_version v"),
            "{ids}"
        );
        for query in [[("_id", "a")], [("subject:missing", "true")]] {
            let (ids, _) = page_sql(None, &query);
            assert!(
                ids.starts_with("SELECT c.res_id FROM resource_current c"),
                "{ids}"
            );
        }
    }
}
