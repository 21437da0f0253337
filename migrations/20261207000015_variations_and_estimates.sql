-- Variations: one request can ask for 1–4 images. Each is a generation of its own (its own kie.ai task, its own
-- reservation, charge or refund under its own ledger key), and all of one request share `batch_id`, the id of
-- its first. `variation` is its place in the request (1-based), `variations` how many the request made.
-- Rows from before this migration are requests of one: `batch_id` NULL stands for the generation's own id.
-- The idempotency key is kept on one variation only, the first (its unique index is unchanged); when
-- `delete_generation` removes the row holding it, it hands the key on to the next variation still there.
ALTER TABLE generations
    ADD COLUMN batch_id uuid,
    ADD COLUMN variation smallint NOT NULL DEFAULT 1,
    ADD COLUMN variations smallint NOT NULL DEFAULT 1,
    ADD CONSTRAINT generations_variation_in_request
        CHECK (variations BETWEEN 1 AND 4 AND variation BETWEEN 1 AND variations);
-- A request's variations, read together by its pages.
CREATE INDEX generations_batch_idx ON generations (batch_id, variation) WHERE batch_id IS NOT NULL;

-- A waiting page's estimate: the recent successes at its resolution, newest first (`generations::typical_wait`).
CREATE INDEX generations_recent_successes_idx ON generations (resolution, finished_at DESC)
    WHERE status = 'succeeded';
