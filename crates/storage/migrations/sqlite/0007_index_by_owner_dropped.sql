-- A resource's old index rows are found again by extracting them from its old body (the body
-- holds every value the rows hold): writes no longer read the indexes by owner. What still
-- reads a resource's own rows is a `_sort` key and the references `_include` and `$export`
-- follow, never a row of a modified parameter (`code:text`, the longest rows, a third of them)
-- nor a composite's range row; the indexes by owner keep only the rows such reads can want
-- (their queries state the same condition, so that SQLite may use them).
--
-- Finding old rows from the old body finds exactly the rows written only while extraction is
-- unchanged: `index_state` records the generation of the extraction that wrote the rows
-- (trialbridge_fhir::index::INDEX_GENERATION), and a store whose recorded generation differs,
-- or is missing as after this migration, rebuilds its index when it opens.
DROP INDEX search_index_owner;
DROP INDEX search_range_owner;
CREATE INDEX search_index_owner ON search_index (res_type, res_id, param)
    WHERE param NOT GLOB '*:*';
CREATE INDEX search_range_owner ON search_range (res_type, res_id, param)
    WHERE token_code = '';
CREATE TABLE index_state (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    generation INTEGER NOT NULL
);
