-- Every committed version of every resource; `seq` is the global change sequence.
-- Rows are only ever inserted (tombstones have deleted = 1 and no body).
CREATE TABLE resource_version (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    res_type        TEXT    NOT NULL,
    res_id          TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    last_updated    TEXT    NOT NULL,
    last_updated_us INTEGER NOT NULL,
    deleted         INTEGER NOT NULL,
    body            TEXT,
    UNIQUE (res_type, res_id, version)
);
CREATE INDEX resource_version_type_seq ON resource_version (res_type, seq);
CREATE INDEX resource_version_time ON resource_version (last_updated_us);

-- Pointer to the current version of each resource.
CREATE TABLE resource_current (
    res_type TEXT    NOT NULL,
    res_id   TEXT    NOT NULL,
    seq      INTEGER NOT NULL,
    deleted  INTEGER NOT NULL,
    PRIMARY KEY (res_type, res_id)
) WITHOUT ROWID;

-- Search index of current, non-deleted versions; the primary key is the lookup order, so a
-- search reads one range of one b-tree. `system` is '' when a token has no system.
CREATE TABLE search_index (
    res_type TEXT NOT NULL,
    param    TEXT NOT NULL,
    value    TEXT NOT NULL,
    system   TEXT NOT NULL DEFAULT '',
    res_id   TEXT NOT NULL,
    PRIMARY KEY (res_type, param, value, system, res_id)
) WITHOUT ROWID;
CREATE INDEX search_index_owner ON search_index (res_type, res_id, param);

-- Versions are append-only: the database refuses to change or remove one.
CREATE TRIGGER resource_version_no_update BEFORE UPDATE ON resource_version
BEGIN SELECT RAISE(ABORT, 'resource_version is append-only'); END;
CREATE TRIGGER resource_version_no_delete BEFORE DELETE ON resource_version
BEGIN SELECT RAISE(ABORT, 'resource_version is append-only'); END;

-- Date, number and quantity values of current versions, and composites of a token with one
-- of them: dates as microseconds since the epoch with an exclusive `high`, numbers as the
-- value itself (`low` = `high`) or a Range's bounds.
CREATE TABLE search_range (
    res_type     TEXT NOT NULL,
    param        TEXT NOT NULL,
    token_code   TEXT NOT NULL DEFAULT '',
    low          REAL NOT NULL,
    high         REAL NOT NULL,
    token_system TEXT NOT NULL DEFAULT '',
    unit_system  TEXT NOT NULL DEFAULT '',
    unit_code    TEXT NOT NULL DEFAULT '',
    -- 1 when the range is wider than SHORT_SPAN: such rows are few (open Periods, Ranges) and
    -- are searched through their own index, so that the short ones can be bounded on `low`.
    long         INTEGER NOT NULL DEFAULT 0,
    res_id       TEXT NOT NULL
);
-- Covering for range searches: the conditions and the result read only this index.
CREATE INDEX search_range_lookup ON search_range (res_type, param, token_code, low, high, res_id);
CREATE INDEX search_range_long ON search_range (res_type, param, token_code) WHERE long = 1;
CREATE INDEX search_range_owner ON search_range (res_type, res_id, param);
