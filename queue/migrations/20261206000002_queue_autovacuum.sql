-- Autovacuum for the queue's hot table, whatever the size of the history it keeps.
--
-- Every job leaves an entry in the claim index (`createimage2_jobs_claim_idx`, rows while `Pending`) that stays
-- after the job is claimed: the first claim to pass it marks it dead, but only VACUUM takes it out of the page,
-- and each later claim reads every page of such entries before the first pending row (about seven index pages
-- per thousand jobs finished since the last vacuum: an idle start measured 4.1 ms right after a burn-down of
-- 100,000 jobs and 1.8 ms once vacuumed; `loadtest/README.md`). PostgreSQL's defaults tie autovacuum to the size of
-- the table: it waits for 20% of the rows to be dead, and with the finished rows kept for a week
-- (`QueueConfig::finished_job_retention`) that is days of jobs. So, on this table only:
--   autovacuum_vacuum_threshold = 10000, scale_factor = 0 — vacuum once 10,000 row versions are dead (5,000 jobs:
--       a claim and a completion each leave one), however many finished rows are kept; autovacuum looks at each
--       database once per `autovacuum_naptime` (a minute by default), which bounds how soon it comes;
--   vacuum_index_cleanup = on — since PostgreSQL 14 a vacuum skips the index pass when the dead rows sit on
--       fewer than 2% of the table's pages, which a long history makes the usual case, and that pass is the one
--       that takes the claim index's dead entries out.
-- A vacuum reads only the heap pages changed since the last one (the visibility map) and each index once.
-- `ALTER TABLE … SET` takes a SHARE UPDATE EXCLUSIVE lock, which does not block the queue's reads and writes;
-- it runs only when the table's options differ.
DO $$
BEGIN
    IF NOT (coalesce((SELECT reloptions FROM pg_class WHERE oid = 'apalis.jobs'::regclass), '{}')
            @> ARRAY['autovacuum_vacuum_threshold=10000', 'autovacuum_vacuum_scale_factor=0',
                     'vacuum_index_cleanup=on']) THEN
        ALTER TABLE apalis.jobs SET (
            autovacuum_vacuum_threshold = 10000,
            autovacuum_vacuum_scale_factor = 0,
            vacuum_index_cleanup = on
        );
    END IF;
END
$$;
