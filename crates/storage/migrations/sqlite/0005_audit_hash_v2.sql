-- Hash version 2 covers every column of a row and its audit_entity rows (version 1 covered the
-- previous hash, seq and body only). Rows keep the version they were written with.
ALTER TABLE audit_event ADD COLUMN hash_version INTEGER NOT NULL DEFAULT 1;
