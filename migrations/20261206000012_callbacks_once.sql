-- A kie callback is stored once per generation, task and reported state: a replay is recognised by this key
-- (the handler inserts with ON CONFLICT DO NOTHING) instead of piling up rows.
DELETE FROM upstream_callbacks a
 USING upstream_callbacks b
 WHERE a.generation_id = b.generation_id
   AND a.upstream_task_id IS NOT DISTINCT FROM b.upstream_task_id
   AND coalesce(a.state, '') = coalesce(b.state, '')
   AND a.id > b.id;
CREATE UNIQUE INDEX upstream_callbacks_once ON upstream_callbacks (generation_id, upstream_task_id, (coalesce(state, '')));
DROP INDEX upstream_callbacks_generation_idx;
