-- Index keys are cut at 1,000 bytes (trialbridge_fhir::index::INDEX_KEY_MAX_BYTES), and so are
-- the search values they meet. Longer keys could be stored before only when PostgreSQL could
-- compress them below its b-tree limit; they are cut here as the indexer cuts them: the longest
-- prefix of whole characters that fits in 1,000 bytes. (One scan of each index table.)
CREATE FUNCTION pg_temp.index_key(t text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN octet_length(t) <= 1000 THEN t
           ELSE (SELECT left(t, n) FROM generate_series(1000, 0, -1) AS n
                 WHERE octet_length(left(t, n)) <= 1000 LIMIT 1) END
$$;

-- A cut key has both columns within the bound, so it never equals a row being deleted here;
-- keys that become equal are kept once.
WITH long AS (
    DELETE FROM search_index
    WHERE octet_length(value) > 1000 OR octet_length(system) > 1000
    RETURNING res_type, param, value, system, res_id
)
INSERT INTO search_index (res_type, param, value, system, res_id)
SELECT res_type, param, pg_temp.index_key(value), pg_temp.index_key(system), res_id FROM long
ON CONFLICT DO NOTHING;

UPDATE search_range
SET token_code = pg_temp.index_key(token_code), token_system = pg_temp.index_key(token_system)
WHERE octet_length(token_code) > 1000 OR octet_length(token_system) > 1000;
