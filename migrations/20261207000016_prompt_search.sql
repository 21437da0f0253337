-- no-transaction
-- The gallery's search by prompt (Postgres full-text search, English stemming: "lighthouses" finds
-- "lighthouse"). The expression must match `generations::gallery_page`'s exactly for the index to serve it.
-- Built CONCURRENTLY (hence outside a transaction, and the only statement here): a GIN index over every prompt
-- takes a while on a large table, and a plain CREATE INDEX would block new generations for all of it. If the
-- build is interrupted it leaves an INVALID index that IF NOT EXISTS would keep: drop it
-- (`DROP INDEX CONCURRENTLY generations_prompt_search_idx`) and run the migration again.
CREATE INDEX CONCURRENTLY IF NOT EXISTS generations_prompt_search_idx
    ON generations USING gin (to_tsvector('english', prompt));
