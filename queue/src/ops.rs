//! What operators see and do: queue depth and age, dead jobs, retry, cancel, discard, pause, resume.
//! An application's operator commands and console, its metrics exporter and tests stand on these.

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};

/// Depth of one queue by state, and how long its oldest due job has waited.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueStats {
    pub queue: String,
    /// Due now, not yet claimed.
    pub waiting: i64,
    /// Pending with a future `run_at` (delayed, retrying or snoozed).
    pub scheduled: i64,
    pub running: i64,
    /// Out of attempts or failed permanently; kept for an operator.
    pub dead: i64,
    /// Running, but its worker has not heartbeated for `STUCK_AFTER_SECONDS`: the reaper will hand it back.
    pub stuck: i64,
    /// Seconds since the oldest waiting job became due (0 when none waits).
    pub oldest_waiting_age_seconds: f64,
    pub paused: bool,
}

/// A running job whose worker has been silent this long counts as stuck (the default of
/// `QUEUE_DEAD_WORKER_SECONDS`).
pub const STUCK_AFTER_SECONDS: f64 = 60.0;

/// Every queue with unfinished or dead jobs (or a pause), from one grouped query.
pub async fn queue_stats(pool: &PgPool) -> sqlx::Result<Vec<QueueStats>> {
    #[derive(sqlx::FromRow)]
    struct Row {
        queue: String,
        waiting: i64,
        scheduled: i64,
        running: i64,
        dead: i64,
        stuck: i64,
        oldest: Option<f64>,
        paused: bool,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "WITH counts AS (
             SELECT job_type,
                    count(*) FILTER (WHERE status = 'Pending' AND run_at <= now()) AS waiting,
                    count(*) FILTER (WHERE status = 'Pending' AND run_at > now()) AS scheduled,
                    count(*) FILTER (WHERE status IN ('Queued', 'Running')) AS running,
                    count(*) FILTER (WHERE status = 'Failed') AS dead,
                    count(*) FILTER (WHERE status IN ('Queued', 'Running')
                                       AND (w.last_seen IS NULL OR w.last_seen < now() - make_interval(secs => $1)))
                        AS stuck,
                    EXTRACT(EPOCH FROM now() - min(run_at) FILTER (WHERE status = 'Pending' AND run_at <= now()))::float8
                        AS oldest
               FROM apalis.jobs j LEFT JOIN apalis.workers w ON w.id = j.lock_by
              WHERE status IN ('Pending', 'Queued', 'Running', 'Failed')
              GROUP BY job_type
         )
         SELECT coalesce(c.job_type, p.queue) AS queue, coalesce(c.waiting, 0) AS waiting,
                coalesce(c.scheduled, 0) AS scheduled, coalesce(c.running, 0) AS running,
                coalesce(c.dead, 0) AS dead, coalesce(c.stuck, 0) AS stuck, c.oldest, p.queue IS NOT NULL AS paused
           FROM counts c FULL JOIN queue_pauses p ON p.queue = c.job_type
          ORDER BY 1",
    )
    .bind(STUCK_AFTER_SECONDS)
    .fetch_all(pool)
    .await?;
    let stats: Vec<QueueStats> = rows
        .into_iter()
        .map(|row| QueueStats {
            queue: row.queue,
            waiting: row.waiting,
            scheduled: row.scheduled,
            running: row.running,
            dead: row.dead,
            stuck: row.stuck,
            oldest_waiting_age_seconds: row.oldest.unwrap_or(0.0).max(0.0),
            paused: row.paused,
        })
        .collect();
    Ok(stats)
}

/// As [`queue_stats`], with a row (at zero) for every one of `known_queues` that has nothing to show, so idle
/// queues are listed too.
pub async fn queue_stats_with_idle(
    pool: &PgPool,
    known_queues: &[&str],
) -> sqlx::Result<Vec<QueueStats>> {
    let mut stats = queue_stats(pool).await?;
    for queue in known_queues {
        if !stats.iter().any(|s| s.queue == *queue) {
            stats.push(QueueStats {
                queue: (*queue).to_owned(),
                ..QueueStats::default()
            });
        }
    }
    stats.sort_by(|a, b| a.queue.cmp(&b.queue));
    Ok(stats)
}

/// A job as operators see it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRow {
    pub id: String,
    pub queue: String,
    pub status: crate::JobState,
    pub attempts: i32,
    pub max_attempts: i32,
    pub run_at: DateTime<Utc>,
    pub done_at: Option<DateTime<Utc>>,
    pub lock_by: Option<String>,
    /// The last error, for failed attempts and dead jobs.
    pub last_error: Option<String>,
    pub payload: String,
}

const JOB_COLUMNS: &str =
    "id, job_type AS queue, status, attempts, max_attempts, run_at, done_at, lock_by,
     last_result ->> 'Err' AS last_error, convert_from(job, 'UTF8') AS payload";

/// Dead jobs, newest first, optionally of one queue.
pub async fn dead_jobs(
    pool: &PgPool,
    queue: Option<&str>,
    limit: i64,
) -> sqlx::Result<Vec<JobRow>> {
    // Only a constant column list is interpolated.
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {JOB_COLUMNS} FROM apalis.jobs
          WHERE status = 'Failed' AND ($1::text IS NULL OR job_type = $1)
          ORDER BY done_at DESC NULLS LAST LIMIT $2"
    )))
    .bind(queue)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// One job by id.
pub async fn find_job(pool: &PgPool, id: &str) -> sqlx::Result<Option<JobRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {JOB_COLUMNS} FROM apalis.jobs WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Re-runs a dead or cancelled job from scratch (attempts reset). Returns false when the job is not dead or
/// cancelled (it may be waiting, running or done).
pub async fn retry_job<'e>(conn: impl PgExecutor<'e>, id: &str) -> sqlx::Result<bool> {
    let result = sqlx::query(
        "UPDATE apalis.jobs
            SET status = 'Pending', attempts = 0, run_at = now(), done_at = NULL, lock_by = NULL, lock_at = NULL
          WHERE id = $1 AND status IN ('Failed', 'Killed')",
    )
    .bind(id)
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Cancels a job that has not started (waiting or scheduled): it will not run. Returns false otherwise.
pub async fn cancel_job<'e>(conn: impl PgExecutor<'e>, id: &str) -> sqlx::Result<bool> {
    let result = sqlx::query(
        "UPDATE apalis.jobs SET status = 'Killed', done_at = now(),
                last_result = jsonb_build_object('Err', 'cancelled by an operator')
          WHERE id = $1 AND status = 'Pending'",
    )
    .bind(id)
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Deletes a dead job for good. Returns false when the job is not dead.
pub async fn discard_job<'e>(conn: impl PgExecutor<'e>, id: &str) -> sqlx::Result<bool> {
    let result = sqlx::query("DELETE FROM apalis.jobs WHERE id = $1 AND status = 'Failed'")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(result.rows_affected() == 1)
}

/// Stops workers claiming from `queue` (running jobs finish). Returns false when it was paused already (the first
/// reason is kept).
pub async fn pause_queue<'e>(
    conn: impl PgExecutor<'e>,
    queue: &str,
    reason: &str,
) -> sqlx::Result<bool> {
    sqlx::query(
        "INSERT INTO queue_pauses (queue, reason) VALUES ($1, $2) ON CONFLICT (queue) DO NOTHING",
    )
    .bind(queue)
    .bind(reason)
    .execute(conn)
    .await
    .map(|r| r.rows_affected() == 1)
}

/// Lets workers claim from `queue` again, and wakes its idle workers now rather than at their next poll. Returns
/// false when it was not paused.
pub async fn resume_queue<'e>(conn: impl PgExecutor<'e>, queue: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "WITH resumed AS (DELETE FROM queue_pauses WHERE queue = $2 RETURNING queue)
         SELECT count(pg_notify($1, json_build_object('job_type', queue)::text)) FROM resumed",
    )
    .bind(crate::runtime::INSERT_CHANNEL)
    .bind(queue)
    .fetch_one(conn)
    .await
    .map(|resumed: i64| resumed > 0)
}

/// The queues an operator has paused.
pub async fn paused_queues<'e>(conn: impl PgExecutor<'e>) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("SELECT queue FROM queue_pauses ORDER BY queue")
        .fetch_all(conn)
        .await
}

/// Which dead jobs a bulk action takes: those of `queue` whose last error contains `error_contains` (any, when
/// `None`; case-insensitive), at most `limit` of them, newest first.
#[derive(Debug, Clone)]
pub struct DeadJobFilter<'a> {
    pub queue: &'a str,
    pub error_contains: Option<&'a str>,
    pub limit: i64,
}

const DEAD_MATCHING: &str = "SELECT id FROM apalis.jobs
          WHERE status = 'Failed' AND job_type = $1
            AND ($2::text IS NULL OR strpos(lower(coalesce(last_result ->> 'Err', '')), lower($2)) > 0)
          ORDER BY done_at DESC NULLS LAST LIMIT $3
          FOR UPDATE SKIP LOCKED";

/// Runs the dead jobs `filter` selects again from their first attempt. Returns how many.
pub async fn retry_dead<'e>(
    conn: impl PgExecutor<'e>,
    filter: &DeadJobFilter<'_>,
) -> sqlx::Result<u64> {
    on_dead_matching(
        conn,
        "UPDATE apalis.jobs
            SET status = 'Pending', attempts = 0, run_at = now(), done_at = NULL, lock_by = NULL, lock_at = NULL",
        filter,
    )
    .await
}

/// Deletes the dead jobs `filter` selects for good. Returns how many.
pub async fn discard_dead<'e>(
    conn: impl PgExecutor<'e>,
    filter: &DeadJobFilter<'_>,
) -> sqlx::Result<u64> {
    on_dead_matching(conn, "DELETE FROM apalis.jobs", filter).await
}

/// Runs `statement` (an UPDATE or DELETE of `apalis.jobs`, without its WHERE) on the rows `filter` selects.
async fn on_dead_matching<'e>(
    conn: impl PgExecutor<'e>,
    statement: &'static str,
    filter: &DeadJobFilter<'_>,
) -> sqlx::Result<u64> {
    // Only constant text is interpolated; the filter is bound.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "{statement} WHERE id IN ({DEAD_MATCHING})"
    )))
    .bind(filter.queue)
    .bind(filter.error_contains)
    .bind(filter.limit)
    .execute(conn)
    .await
    .map(|r| r.rows_affected())
}

/// Deletes finished rows past their retention, in batches so no statement holds locks for long. Returns the
/// number of rows deleted. Also forgets workers that have been silent for a day and hold no job rows.
pub async fn prune_finished(
    pool: &PgPool,
    finished_older_than: std::time::Duration,
    dead_older_than: std::time::Duration,
) -> sqlx::Result<u64> {
    let mut total = 0;
    loop {
        let deleted = sqlx::query(
            "DELETE FROM apalis.jobs WHERE id IN (
                 SELECT id FROM apalis.jobs
                  WHERE (status IN ('Done', 'Killed') AND done_at < now() - make_interval(secs => $1))
                     OR (status = 'Failed' AND done_at < now() - make_interval(secs => $2))
                  LIMIT 5000)",
        )
        .bind(finished_older_than.as_secs_f64())
        .bind(dead_older_than.as_secs_f64())
        .execute(pool)
        .await?
        .rows_affected();
        total += deleted;
        if deleted < 5000 {
            break;
        }
    }
    sqlx::query(
        "DELETE FROM apalis.workers w WHERE last_seen < now() - interval '1 day'
            AND NOT EXISTS (SELECT 1 FROM apalis.jobs j
                             WHERE j.lock_by = w.id AND j.status IN ('Queued', 'Running'))",
    )
    .execute(pool)
    .await?;
    Ok(total)
}

/// A live worker of this runtime as operators see it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WorkerRow {
    pub id: String,
    pub queue: String,
    pub seconds_since_seen: f64,
    /// Jobs it holds `Running` now.
    pub running: i64,
}

/// The workers of the fleet named `storage_name` ([`crate::Worker::storage_name`]) seen within `seen_within`, by
/// queue.
pub async fn workers(
    pool: &PgPool,
    storage_name: &str,
    seen_within: std::time::Duration,
) -> sqlx::Result<Vec<WorkerRow>> {
    sqlx::query_as(
        "SELECT w.id, w.worker_type AS queue, EXTRACT(EPOCH FROM now() - w.last_seen)::float8 AS seconds_since_seen,
                (SELECT count(*) FROM apalis.jobs j WHERE j.lock_by = w.id AND j.status = 'Running') AS running
           FROM apalis.workers w
          WHERE w.storage_name = $1 AND w.last_seen > now() - make_interval(secs => $2)
          ORDER BY w.worker_type, w.id",
    )
    .bind(storage_name)
    .bind(seen_within.as_secs_f64())
    .fetch_all(pool)
    .await
}
