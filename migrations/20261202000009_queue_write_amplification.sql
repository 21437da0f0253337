-- Fewer writes per job on `apalis.jobs` (the queue's hot table). Each job is updated twice (claim, completion);
-- with a status change those updates are never HOT, so every index is written each time. apalis-postgres'
-- schema carries indexes this project's queue layer never reads:
--   unique_job_id                  — a second unique index on `id`, beside the primary key;
--   lidx                           — a second index on `lock_by`, beside idx_apalis_jobs_lock_by;
--   idx_apalis_jobs_fetch_partial  — apalis' own fetch order; claims here use createimage2_jobs_claim_idx.
DROP INDEX IF EXISTS apalis.unique_job_id;
DROP INDEX IF EXISTS apalis.lidx;
DROP INDEX IF EXISTS apalis.idx_apalis_jobs_fetch_partial;

-- apalis' insert trigger sends one NOTIFY per row; a bulk enqueue of 5,000 jobs sent 5,000. Workers only need
-- to know that a queue has due work: one notification per queue per statement says the same.
DROP TRIGGER IF EXISTS notify_workers ON apalis.jobs;

CREATE FUNCTION createimage2_notify_inserted_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('apalis::job::insert', json_build_object('job_type', job_type)::text)
       FROM (SELECT DISTINCT job_type FROM inserted WHERE run_at <= now()) AS due;
    RETURN NULL;
END;
$$;

CREATE TRIGGER createimage2_notify_inserted_jobs
    AFTER INSERT ON apalis.jobs
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION createimage2_notify_inserted_jobs();
