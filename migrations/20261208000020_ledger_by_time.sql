-- no-transaction
-- The account page's ledger: the member's latest movements, newest first (`site/account.rs`, `LEDGER_LINES`).
-- With `(user_id, id DESC)` the planner could also read the primary key backwards and skip other members' rows,
-- and chose to for a member with a large share of the ledger: for one whose 10,000 generations ended 60 days
-- ago, it read every newer row of everyone (20 ms among 20 members; seconds in a large ledger). Ordered by
-- `created_at`, only this index gives the order. Built CONCURRENTLY, alone: the ledger takes a row per
-- reservation, settle and refund, and must not wait for the build.
CREATE INDEX CONCURRENTLY IF NOT EXISTS credit_ledger_user_created_idx
    ON credit_ledger (user_id, created_at DESC, id DESC);
