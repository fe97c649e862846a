-- State of background jobs (Bulk Data exports), so that a restart finds and resumes them.
CREATE TABLE job (
    id    TEXT PRIMARY KEY,
    state TEXT NOT NULL
) WITHOUT ROWID;
