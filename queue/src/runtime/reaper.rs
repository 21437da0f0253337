//! Worker registration and heartbeats in `apalis.workers`, the hand-back of a draining worker's unfinished
//! jobs, and the reaper that hands back what dead workers and stuck attempts left.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::{QueueConfig, QueueMetrics};

/// Returns this worker's unfinished jobs to `Pending` (the interrupted attempt does not count).
pub(super) async fn hand_back(pool: &PgPool, worker_id: &str) -> sqlx::Result<u64> {
    sqlx::query(
        "UPDATE apalis.jobs
            SET status = 'Pending', run_at = now(), attempts = GREATEST(attempts - 1, 0), lock_by = NULL, lock_at = NULL
          WHERE lock_by = $1 AND status IN ('Queued', 'Running')",
    )
    .bind(worker_id)
    .execute(pool)
    .await
    .map(|r| r.rows_affected())
}

/// This process's workers as `apalis.workers` lists them: (worker id, queue), and the application's name for
/// its fleet (`storage_name`).
#[derive(Debug, Clone)]
pub(super) struct Registration {
    pub workers: Vec<(String, String)>,
    pub storage_name: String,
}

pub(super) async fn register_workers(
    pool: &PgPool,
    registration: &Registration,
) -> sqlx::Result<()> {
    let workers = &registration.workers;
    let (ids, queues): (Vec<String>, Vec<String>) = workers.iter().cloned().unzip();
    sqlx::query(
        "INSERT INTO apalis.workers (id, worker_type, storage_name, layers, last_seen)
         SELECT id, queue, $3, '', now() FROM unnest($1::text[], $2::text[]) AS t(id, queue)
         ON CONFLICT (id) DO UPDATE SET last_seen = now()",
    )
    .bind(ids)
    .bind(queues)
    .bind(&registration.storage_name)
    .execute(pool)
    .await
    .map(drop)
}

/// Removes this process's worker rows after a drain, except those still holding a job.
pub(super) async fn deregister_workers(pool: &PgPool, ids: &[String]) -> sqlx::Result<()> {
    sqlx::query(
        "DELETE FROM apalis.workers w WHERE w.id = ANY($1)
            AND NOT EXISTS (SELECT 1 FROM apalis.jobs j WHERE j.lock_by = w.id AND j.status IN ('Queued', 'Running'))",
    )
    .bind(ids)
    .execute(pool)
    .await
    .map(drop)
}

pub(super) async fn heartbeat(
    pool: PgPool,
    registration: Registration,
    every: Duration,
    stop: CancellationToken,
) {
    let mut interval = tokio::time::interval(every);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        // Every database call of a background task gives way to `stop`: with the database gone, each would
        // otherwise hold the worker's exit for the pool's acquire timeout.
        match stop
            .run_until_cancelled(register_workers(&pool, &registration))
            .await
        {
            None => return,
            Some(Err(error)) => tracing::warn!(error = %error, "worker heartbeat failed"),
            Some(Ok(())) => {}
        }
    }
}

/// Hands back jobs whose worker stopped heartbeating, and attempts running far past their timeout (a runner
/// that died mid-attempt). A job out of attempts is dead instead, with the reason kept.
pub(super) async fn reap(
    pool: PgPool,
    queues: Vec<(String, Duration)>,
    config: QueueConfig,
    metrics: QueueMetrics,
    stop: CancellationToken,
) {
    let mut interval = tokio::time::interval(config.heartbeat_interval.max(Duration::from_secs(1)));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        for (queue, timeout) in &queues {
            // Allow the in-runner timeout to fire and its outcome to be written first. `lock_at` is the claim,
            // and a job claimed ahead may wait in the local buffer for one attempt's length before it starts.
            let stuck_after = *timeout * 2 + Duration::from_secs(30);
            let reaped = reap_queue(&pool, queue, config.dead_worker_after, stuck_after);
            match stop.run_until_cancelled(reaped).await {
                None => return,
                Some(Ok(reaped)) if reaped.handed_back + reaped.dead == 0 => {}
                Some(Ok(reaped)) => {
                    metrics.record_reaped(queue, reaped);
                    tracing::warn!(
                        job.queue = %queue,
                        handed_back = reaped.handed_back,
                        dead = reaped.dead,
                        "reaped abandoned jobs"
                    )
                }
                Some(Err(error)) => {
                    tracing::warn!(job.queue = %queue, error = %error, "reaping failed")
                }
            }
        }
    }
}

/// What one reaper pass did: jobs handed back to run again, and jobs out of attempts declared dead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reaped {
    pub handed_back: u64,
    pub dead: u64,
}

/// One reaper pass over a queue. Public for tests and the ops command.
pub async fn reap_queue(
    pool: &PgPool,
    queue: &str,
    dead_worker_after: Duration,
    stuck_after: Duration,
) -> sqlx::Result<Reaped> {
    let (handed_back, dead): (i64, i64) = sqlx::query_as(
        "WITH abandoned AS (
             SELECT j.id FROM apalis.jobs j
               LEFT JOIN apalis.workers w ON w.id = j.lock_by
              WHERE j.job_type = $1 AND j.status IN ('Queued', 'Running')
                AND (w.id IS NULL
                     OR w.last_seen < now() - make_interval(secs => $2)
                     OR j.lock_at < now() - make_interval(secs => $3))
                FOR UPDATE OF j SKIP LOCKED
         )
         , reaped AS (
         UPDATE apalis.jobs j
            SET status = CASE WHEN j.attempts >= j.max_attempts THEN 'Failed' ELSE 'Pending' END,
                done_at = CASE WHEN j.attempts >= j.max_attempts THEN now() END,
                run_at = now(),
                lock_by = CASE WHEN j.attempts >= j.max_attempts THEN j.lock_by END,
                lock_at = CASE WHEN j.attempts >= j.max_attempts THEN j.lock_at END,
                last_result = jsonb_build_object('Err', 'abandoned by worker ' || coalesce(j.lock_by, '?')
                                                 || ' (stopped heartbeating or exceeded its timeout)')
           FROM abandoned
          WHERE j.id = abandoned.id
      RETURNING j.status
         )
         SELECT count(*) FILTER (WHERE status = 'Pending'), count(*) FILTER (WHERE status = 'Failed') FROM reaped",
    )
    .bind(queue)
    .bind(dead_worker_after.as_secs_f64())
    .bind(stuck_after.as_secs_f64())
    .fetch_one(pool)
    .await?;
    Ok(Reaped {
        handed_back: handed_back as u64,
        dead: dead as u64,
    })
}
