-- The gallery's search by prompt (Postgres full-text search, English stemming: "lighthouses" finds
-- "lighthouse"). The expression must match `generations::gallery_page`'s exactly for the index to serve it.
CREATE INDEX generations_prompt_search_idx ON generations USING gin (to_tsvector('english', prompt));
