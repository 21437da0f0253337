-- The generation pipeline's working state (expand-only: new columns have defaults, old code ignores them).

ALTER TABLE generations
    -- createTask calls started for this generation. Committed *before* each call, so a submit job re-run after
    -- a crash between the call and its commit knows a task may exist upstream (see submit_generation.rs).
    ADD COLUMN submit_attempts integer NOT NULL DEFAULT 0,
    -- Result URLs reported by kie.ai, copied to the bucket by store_generation.
    ADD COLUMN result_urls text[] NOT NULL DEFAULT '{}',
    -- Set when the user deletes it: hidden at once; rows and objects are removed by delete_generation.
    ADD COLUMN deleted_at timestamptz,
    -- A 500-class upstream failure is retried once with a new task; this records that it was.
    ADD COLUMN upstream_retried boolean NOT NULL DEFAULT false;

-- Sliding-window rate limits shared by the whole fleet (the kie.ai task budget, per-user generation rate):
-- one row per permitted event, taken under a transaction-scoped advisory lock on the key.
CREATE TABLE rate_limit_events (
    key  text NOT NULL,
    at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX rate_limit_events_key_at_idx ON rate_limit_events (key, at);
