-- no-transaction
-- The prompt-only search index is replaced by the member's (`…000018`); no query reads it, and every new or
-- changed prompt paid for it.
DROP INDEX CONCURRENTLY IF EXISTS generations_prompt_search_idx;
