-- Index keys are cut at 1,000 bytes (trialbridge_fhir::index::INDEX_KEY_MAX_BYTES), and so are
-- the search values they meet. Rows written before, with longer keys, are cut by the Rust step
-- that runs with this migration (`cut_long_index_keys` in sqlite.rs): the cut falls on a
-- character boundary, which SQL's substr on bytes cannot find.
SELECT 1;
