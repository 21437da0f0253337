-- What this crate's runtime adds to apalis-postgres' schema (created by `PostgresStorage::setup` first).
--
-- Every statement is idempotent: createimage2 created these objects with its own migrations (numbers 4, 5, 9
-- and 10 of its `migrations/`) before the queue was a crate of its own, and those stay applied, so on such a
-- database this migration changes nothing. The objects keep the names they were created with there, so the
-- two never build a second copy of an index or a trigger.

-- Operator pauses: a paused queue's runners claim nothing until it is resumed.
CREATE TABLE IF NOT EXISTS public.queue_pauses (
    queue      text PRIMARY KEY,
    paused_at  timestamptz NOT NULL DEFAULT now(),
    reason     text NOT NULL DEFAULT ''
);

-- Each statement below that would lock `apalis.jobs` runs only when there is something to do, so on a database
-- where this schema exists already (createimage2's) the migration takes no lock on the live table.

-- The claim only takes `Pending` rows (a retry is a `Pending` row with a later run_at; `Failed` always means
-- dead). This partial index matches the claim's WHERE and ORDER BY exactly.
DO $$
BEGIN
    IF to_regclass('apalis.createimage2_jobs_claim_idx') IS NULL THEN
        CREATE INDEX createimage2_jobs_claim_idx
            ON apalis.jobs (job_type, priority DESC, run_at ASC, id)
            WHERE status = 'Pending';
    END IF;
    -- The reaper and the queue gauges look at running rows per queue.
    IF to_regclass('apalis.createimage2_jobs_running_idx') IS NULL THEN
        CREATE INDEX createimage2_jobs_running_idx
            ON apalis.jobs (job_type, lock_at)
            WHERE status IN ('Queued', 'Running');
    END IF;
    -- Pruning finished rows by age.
    IF to_regclass('apalis.createimage2_jobs_done_idx') IS NULL THEN
        CREATE INDEX createimage2_jobs_done_idx
            ON apalis.jobs (done_at)
            WHERE status IN ('Done', 'Killed', 'Failed');
    END IF;
    -- Only unfinished rows are looked up by worker (hand-back, worker pruning, the console's running count).
    IF to_regclass('apalis.createimage2_jobs_lock_by_idx') IS NULL THEN
        CREATE INDEX createimage2_jobs_lock_by_idx
            ON apalis.jobs (lock_by)
            WHERE status IN ('Queued', 'Running');
    END IF;
    -- Enqueue's `ON CONFLICT (job_type, idempotency_key) WHERE idempotency_key IS NOT NULL` names this predicate.
    IF to_regclass('apalis.createimage2_jobs_idempotency_key_idx') IS NULL THEN
        CREATE UNIQUE INDEX createimage2_jobs_idempotency_key_idx
            ON apalis.jobs (job_type, idempotency_key)
            WHERE idempotency_key IS NOT NULL;
    END IF;
END
$$;

-- Fewer writes per job on the hot table: each job is updated twice (claim, completion), never HOT, so every
-- index is written each time. apalis' indexes this runtime never reads go:
--   unique_job_id                  — a second unique index on `id`, beside the primary key;
--   lidx, idx_apalis_jobs_lock_by  — full indexes on `lock_by`, replaced by the partial one above;
--   idx_apalis_jobs_fetch_partial  — apalis' own fetch order;
--   idx_jobs_idempotency_key       — covered keyless rows too; replaced by the partial one above.
DROP INDEX IF EXISTS apalis.unique_job_id;
DROP INDEX IF EXISTS apalis.lidx;
DROP INDEX IF EXISTS apalis.idx_apalis_jobs_fetch_partial;
DROP INDEX IF EXISTS apalis.idx_apalis_jobs_lock_by;
DROP INDEX IF EXISTS apalis.idx_jobs_idempotency_key;

-- One notification per queue per inserting statement, on apalis' channel, instead of apalis' one per row.
CREATE OR REPLACE FUNCTION public.createimage2_notify_inserted_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('apalis::job::insert', json_build_object('job_type', job_type)::text)
       FROM (SELECT DISTINCT job_type FROM inserted WHERE run_at <= now()) AS due;
    RETURN NULL;
END;
$$;

DO $$
BEGIN
    -- apalis' foreign key jobs.lock_by → workers.id costs a lookup and a row lock per claimed row; the reaper and
    -- the gauges treat a `lock_by` without a worker row as a dead worker, so nothing depends on it.
    IF EXISTS (SELECT 1 FROM pg_constraint
                WHERE conname = 'fk_worker_lock_by' AND conrelid = 'apalis.jobs'::regclass) THEN
        ALTER TABLE apalis.jobs DROP CONSTRAINT fk_worker_lock_by;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_trigger
                WHERE tgname = 'notify_workers' AND tgrelid = 'apalis.jobs'::regclass) THEN
        DROP TRIGGER notify_workers ON apalis.jobs;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                    WHERE tgname = 'createimage2_notify_inserted_jobs' AND tgrelid = 'apalis.jobs'::regclass) THEN
        CREATE TRIGGER createimage2_notify_inserted_jobs
            AFTER INSERT ON apalis.jobs
            REFERENCING NEW TABLE AS inserted
            FOR EACH STATEMENT EXECUTE FUNCTION public.createimage2_notify_inserted_jobs();
    END IF;
END
$$;
