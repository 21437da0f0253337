-- Fewer writes per claimed and completed job (continues migration 9). Under a burn-down Postgres is the
-- bottleneck, and each claim and each completion is a non-HOT update that inserts an entry into every full
-- index of `apalis.jobs` and, for a claim, runs a foreign-key check per row.
--
-- 1. apalis' `fk_worker_lock_by` (jobs.lock_by → workers.id) runs a lookup and a row lock on
--    `apalis.workers` for every claimed row. The queue layer registers a worker before its first claim, and
--    nothing depends on the reference: the reaper and the gauges already treat a `lock_by` without a worker
--    row as a dead worker (LEFT JOIN … w.id IS NULL), and worker pruning only drops workers holding no
--    unfinished job.
-- 2. `idx_apalis_jobs_lock_by` held every row (done ones keep the worker that ran them, for the console);
--    only unfinished rows are looked up by worker (hand-back at shutdown, worker pruning, the console's
--    running count), so the index becomes partial on them: completions no longer write it.
-- 3. `idx_jobs_idempotency_key` held every row, keyless jobs included (NULL keys never conflict); it becomes
--    partial on keyed rows, so jobs without a key write it never. `ON CONFLICT` names the same predicate.
--
-- On a large table the index builds hold a write lock for their duration; finished rows are pruned, so the
-- table is small in a running system.
ALTER TABLE apalis.jobs DROP CONSTRAINT IF EXISTS fk_worker_lock_by;

DROP INDEX IF EXISTS apalis.idx_apalis_jobs_lock_by;
CREATE INDEX IF NOT EXISTS createimage2_jobs_lock_by_idx
    ON apalis.jobs (lock_by)
    WHERE status IN ('Queued', 'Running');

DROP INDEX IF EXISTS apalis.idx_jobs_idempotency_key;
CREATE UNIQUE INDEX IF NOT EXISTS createimage2_jobs_idempotency_key_idx
    ON apalis.jobs (job_type, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
