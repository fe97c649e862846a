-- The site study each resource belongs to (NULL: shared, e.g. the study definition). Every
-- read of a caller limited to some sites filters on it.
ALTER TABLE resource_version ADD COLUMN site TEXT;
ALTER TABLE resource_current ADD COLUMN site TEXT;

-- The audit trail, hash-chained (hash = SHA-256 of the previous hash, seq and body). A row is
-- one AuditEvent (a change, written in the change's transaction) or, with batch = 1, a JSON
-- array of the AuditEvents of requests that changed nothing, queued and written together.
-- Rows are only ever inserted.
CREATE TABLE audit_event (
    seq         INTEGER PRIMARY KEY,
    recorded_us INTEGER NOT NULL,
    site        TEXT,
    batch       INTEGER NOT NULL,
    body        TEXT    NOT NULL,
    prev_hash   TEXT    NOT NULL,
    hash        TEXT    NOT NULL
);
CREATE INDEX audit_event_time ON audit_event (recorded_us);

-- What each event is about (`Type/id`), for the monitors' per-resource trail.
CREATE TABLE audit_entity (
    entity TEXT    NOT NULL,
    seq    INTEGER NOT NULL,
    PRIMARY KEY (entity, seq)
) WITHOUT ROWID;

CREATE TRIGGER audit_event_no_update BEFORE UPDATE ON audit_event
BEGIN SELECT RAISE(ABORT, 'audit_event is append-only'); END;
CREATE TRIGGER audit_event_no_delete BEFORE DELETE ON audit_event
BEGIN SELECT RAISE(ABORT, 'audit_event is append-only'); END;
CREATE TRIGGER audit_entity_no_update BEFORE UPDATE ON audit_entity
BEGIN SELECT RAISE(ABORT, 'audit_entity is append-only'); END;
CREATE TRIGGER audit_entity_no_delete BEFORE DELETE ON audit_entity
BEGIN SELECT RAISE(ABORT, 'audit_entity is append-only'); END;
