-- The trial database on PostgreSQL: the same tables as on SQLite (see migrations/sqlite/), in
-- one migration. Text columns compare byte-wise (COLLATE "C") so that id order, keyset
-- cursors and prefix ranges (`value >= 'Patient/' AND value < 'Patient0'`) mean the same
-- as on SQLite. The resource body is stored as its exact text: jsonb would reorder members
-- and respell numbers (1E-22), which FHIR clients see; `resource_json` offers it as jsonb for
-- ad-hoc SQL.

-- Every committed version of every resource; `seq` is the global change sequence, assigned
-- by the writer that holds the change-sequence lock (see postgres.rs), so that commit order is
-- seq order across every store replica. Rows are only ever inserted.
CREATE TABLE resource_version (
    seq             BIGINT  PRIMARY KEY,
    res_type        TEXT    COLLATE "C" NOT NULL,
    res_id          TEXT    COLLATE "C" NOT NULL,
    version         BIGINT  NOT NULL,
    last_updated    TEXT    NOT NULL,
    last_updated_us BIGINT  NOT NULL,
    deleted         INTEGER NOT NULL,
    body            TEXT,
    site            TEXT    COLLATE "C",
    UNIQUE (res_type, res_id, version)
);
CREATE INDEX resource_version_type_seq ON resource_version (res_type, seq);
CREATE INDEX resource_version_time ON resource_version (last_updated_us);

-- Pointer to the current version of each resource.
CREATE TABLE resource_current (
    res_type TEXT    COLLATE "C" NOT NULL,
    res_id   TEXT    COLLATE "C" NOT NULL,
    seq      BIGINT  NOT NULL,
    deleted  INTEGER NOT NULL,
    site     TEXT    COLLATE "C",
    PRIMARY KEY (res_type, res_id)
);

-- Search index of current, non-deleted versions; `system` is '' when a token has no system.
CREATE TABLE search_index (
    res_type TEXT COLLATE "C" NOT NULL,
    param    TEXT COLLATE "C" NOT NULL,
    value    TEXT COLLATE "C" NOT NULL,
    system   TEXT COLLATE "C" NOT NULL DEFAULT '',
    res_id   TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (res_type, param, value, system, res_id)
);
CREATE INDEX search_index_owner ON search_index (res_type, res_id, param);

-- Date, number and quantity values (and token composites), as on SQLite.
CREATE TABLE search_range (
    res_type     TEXT COLLATE "C" NOT NULL,
    param        TEXT COLLATE "C" NOT NULL,
    token_code   TEXT COLLATE "C" NOT NULL DEFAULT '',
    low          DOUBLE PRECISION NOT NULL,
    high         DOUBLE PRECISION NOT NULL,
    token_system TEXT COLLATE "C" NOT NULL DEFAULT '',
    unit_system  TEXT COLLATE "C" NOT NULL DEFAULT '',
    unit_code    TEXT COLLATE "C" NOT NULL DEFAULT '',
    long         INTEGER NOT NULL DEFAULT 0,
    res_id       TEXT COLLATE "C" NOT NULL
);
CREATE INDEX search_range_lookup ON search_range (res_type, param, token_code, low, high, res_id);
CREATE INDEX search_range_long ON search_range (res_type, param, token_code) WHERE long = 1;
CREATE INDEX search_range_owner ON search_range (res_type, res_id, param);

-- The audit trail, hash-chained, as on SQLite.
CREATE TABLE audit_event (
    seq         BIGINT  PRIMARY KEY,
    recorded_us BIGINT  NOT NULL,
    site        TEXT    COLLATE "C",
    batch       INTEGER NOT NULL,
    body        TEXT    NOT NULL,
    prev_hash   TEXT    NOT NULL,
    hash        TEXT    NOT NULL
);
CREATE INDEX audit_event_time ON audit_event (recorded_us);

CREATE TABLE audit_entity (
    entity TEXT   COLLATE "C" NOT NULL,
    seq    BIGINT NOT NULL,
    PRIMARY KEY (entity, seq)
);

-- State of background jobs (Bulk Data exports).
CREATE TABLE job (
    id    TEXT COLLATE "C" PRIMARY KEY,
    state TEXT NOT NULL
);

-- Append-only tables refuse UPDATE and DELETE (TRUNCATE too).
CREATE FUNCTION trialbridge_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END;
$$;
CREATE TRIGGER resource_version_append_only BEFORE UPDATE OR DELETE ON resource_version
    FOR EACH ROW EXECUTE FUNCTION trialbridge_append_only();
CREATE TRIGGER resource_version_no_truncate BEFORE TRUNCATE ON resource_version
    FOR EACH STATEMENT EXECUTE FUNCTION trialbridge_append_only();
CREATE TRIGGER audit_event_append_only BEFORE UPDATE OR DELETE ON audit_event
    FOR EACH ROW EXECUTE FUNCTION trialbridge_append_only();
CREATE TRIGGER audit_event_no_truncate BEFORE TRUNCATE ON audit_event
    FOR EACH STATEMENT EXECUTE FUNCTION trialbridge_append_only();
CREATE TRIGGER audit_entity_append_only BEFORE UPDATE OR DELETE ON audit_entity
    FOR EACH ROW EXECUTE FUNCTION trialbridge_append_only();

-- The current resources as jsonb, for operators' ad-hoc queries (never read by trialbridge).
CREATE VIEW resource_json AS
SELECT c.res_type, c.res_id, v.version, v.seq, v.last_updated, c.site, v.body::jsonb AS content
FROM resource_current c JOIN resource_version v ON v.seq = c.seq
WHERE c.deleted = 0;
