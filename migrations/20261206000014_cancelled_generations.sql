-- A member can cancel a generation while it is still queued (before anything was asked of kie.ai): `cancelled`
-- is a final status beside `succeeded` and `failed`, its reservation refunded in the same transaction.
-- The two checks that list the statuses were created unnamed; they are found by what they say, replaced by
-- named ones, and validated without blocking writes (NOT VALID, then VALIDATE).
DO $$
DECLARE
    old record;
BEGIN
    FOR old IN
        SELECT conname FROM pg_constraint
         WHERE conrelid = 'generations'::regclass AND contype = 'c'
           AND pg_get_constraintdef(oid) LIKE '%succeeded%'
    LOOP
        EXECUTE format('ALTER TABLE generations DROP CONSTRAINT %I', old.conname);
    END LOOP;
END
$$;

ALTER TABLE generations
    ADD CONSTRAINT generations_status_known
        CHECK (status IN ('queued', 'submitting', 'generating', 'storing', 'succeeded', 'failed', 'cancelled'))
        NOT VALID,
    ADD CONSTRAINT generations_finished_once_final
        CHECK ((status IN ('succeeded', 'failed', 'cancelled')) = (finished_at IS NOT NULL))
        NOT VALID;
ALTER TABLE generations VALIDATE CONSTRAINT generations_status_known;
ALTER TABLE generations VALIDATE CONSTRAINT generations_finished_once_final;
