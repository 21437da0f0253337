-- btree_gin lets one GIN index hold a plain column beside a text-search vector, so the gallery's search reads
-- only the member's matches (`20261208000018_member_prompt_search.sql`). A trusted extension shipped with
-- Postgres (contrib): the database's owner may create it, no superuser needed.
CREATE EXTENSION IF NOT EXISTS btree_gin;
