-- The job queue lives in apalis-postgres' schema (`apalis.jobs`, `apalis.workers`), created by
-- `PostgresStorage::setup` before these migrations run. This migration adds what the project's queue layer
-- (jobs/src/queue) needs on top of it.

-- Claim: the queue layer only claims `Pending` rows (a retry is a `Pending` row with a later run_at; `Failed`
-- always means dead). This partial index matches the claim's WHERE and ORDER BY exactly.
CREATE INDEX IF NOT EXISTS createimage2_jobs_claim_idx
    ON apalis.jobs (job_type, priority DESC, run_at ASC, id)
    WHERE status = 'Pending';

-- The reaper and the queue gauges look at running and dead rows per queue.
CREATE INDEX IF NOT EXISTS createimage2_jobs_running_idx
    ON apalis.jobs (job_type, lock_at)
    WHERE status IN ('Queued', 'Running');

-- Pruning finished rows by age.
CREATE INDEX IF NOT EXISTS createimage2_jobs_done_idx
    ON apalis.jobs (done_at)
    WHERE status IN ('Done', 'Killed', 'Failed');
