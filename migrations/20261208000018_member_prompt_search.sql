-- no-transaction
-- The gallery's search by prompt, per member: `user_id` and the prompt's words in one GIN index (btree_gin), so
-- a search reads the member's matches only. The prompt-only index it replaces answered with every member's
-- matches (for a common word, most of the table's), or the planner walked all of the member's rows newest first,
-- computing each prompt's vector, until it had a page: 12.7 ms for one page of a 10,000-generation history,
-- 1.9 ms with this index (loadtest/README.md, `pages`). The expression must match
-- `generations::gallery_query`'s exactly. Built CONCURRENTLY, alone, like `…000016_prompt_search.sql`; if the
-- build is interrupted, drop the INVALID index it leaves (`DROP INDEX CONCURRENTLY
-- generations_user_prompt_search_idx`) and run the migration again.
CREATE INDEX CONCURRENTLY IF NOT EXISTS generations_user_prompt_search_idx
    ON generations USING gin (user_id, to_tsvector('english', prompt));
