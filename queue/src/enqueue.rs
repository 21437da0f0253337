//! Putting jobs on a queue, inside the caller's transaction.
//!
//! `job.enqueue(&mut *tx)` (or [`enqueue_with`] for a delay or a priority) writes one row to `apalis.jobs` with the
//! same connection as the caller's state change, so both commit or neither does. The kind's
//! [`Job::unique_key`] (or an explicit [`EnqueueOptions::idempotency_key`]) turns a duplicate into
//! [`Enqueued::AlreadyQueued`] through `ON CONFLICT DO NOTHING` — never an error that would abort the caller's
//! transaction (apalis' own push raises a unique violation there).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use crate::job::Job;

/// Identifies one job row.
pub type JobId = String;

/// The result of an enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// A new row was written.
    New(JobId),
    /// A job of this kind with the same idempotency key exists already (queued, running or finished and not
    /// yet pruned); nothing was written.
    AlreadyQueued,
}

impl Enqueued {
    pub fn is_new(&self) -> bool {
        matches!(self, Self::New(_))
    }
}

/// Options for one enqueue.
#[derive(Debug, Clone, Default)]
pub struct EnqueueOptions {
    /// Do not start before this instant.
    pub run_at: Option<DateTime<Utc>>,
    /// Deduplicates per job kind, for as long as the row is kept ([`QueueConfig::finished_job_retention`]).
    /// When absent, the kind's [`Job::unique_key`] is used.
    ///
    /// [`QueueConfig::finished_job_retention`]: crate::QueueConfig::finished_job_retention
    pub idempotency_key: Option<String>,
    /// Higher runs first among due jobs of the same queue.
    pub priority: i32,
}

impl EnqueueOptions {
    pub fn key(key: impl Into<String>) -> Self {
        Self {
            idempotency_key: Some(key.into()),
            ..Self::default()
        }
    }

    pub fn delayed(delay: Duration) -> Self {
        Self {
            run_at: Some(Utc::now() + delay),
            ..Self::default()
        }
    }

    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }
}

/// A job serialized and ready to insert; built by [`NewJob::of`], used for bulk inserts.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub queue: &'static str,
    pub payload: Vec<u8>,
    pub max_attempts: i32,
    pub options: EnqueueOptions,
}

impl NewJob {
    /// `job` with `options`; the kind's [`Job::unique_key`] applies unless `options` names a key.
    pub fn of<J: Job>(job: &J, mut options: EnqueueOptions) -> Self {
        if options.idempotency_key.is_none() {
            options.idempotency_key = job.unique_key();
        }
        Self {
            queue: J::NAME,
            // Serializing a plain data struct to JSON cannot fail.
            payload: serde_json::to_vec(job).expect("job payloads serialize to JSON"),
            max_attempts: J::POLICY.max_attempts,
            options,
        }
    }
}

pub(crate) fn new_job_id() -> JobId {
    // Time-ordered, so ids sort like insertion order (as apalis' ULIDs do).
    uuid::Uuid::now_v7().to_string()
}

/// Enqueues `job` to run as soon as a worker is free (the same as `job.enqueue(conn)`).
pub async fn enqueue<'e, J: Job>(conn: impl PgExecutor<'e>, job: &J) -> sqlx::Result<Enqueued> {
    enqueue_with(conn, job, EnqueueOptions::default()).await
}

/// Enqueues `job` with options (delay, priority, a key other than the kind's own).
pub async fn enqueue_with<'e, J: Job>(
    conn: impl PgExecutor<'e>,
    job: &J,
    options: EnqueueOptions,
) -> sqlx::Result<Enqueued> {
    enqueue_new(conn, NewJob::of(job, options)).await
}

/// Enqueues a prepared job (used by the scheduler).
pub async fn enqueue_new<'e>(conn: impl PgExecutor<'e>, job: NewJob) -> sqlx::Result<Enqueued> {
    let id: Option<String> = sqlx::query_scalar(
        "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, priority, idempotency_key)
         VALUES ($1, $2, $3, 'Pending', 0, $4, COALESCE($5, now()), $6, $7)
         ON CONFLICT (job_type, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
         RETURNING id",
    )
    .bind(new_job_id())
    .bind(job.queue)
    .bind(job.payload)
    .bind(job.max_attempts)
    .bind(job.options.run_at)
    .bind(job.options.priority)
    .bind(job.options.idempotency_key)
    .fetch_optional(conn)
    .await?;
    Ok(id.map_or(Enqueued::AlreadyQueued, Enqueued::New))
}

/// Enqueues many jobs in one statement (`unnest` arrays). Returns how many rows were written (duplicates by
/// idempotency key are skipped).
pub async fn enqueue_many<'e>(conn: impl PgExecutor<'e>, jobs: Vec<NewJob>) -> sqlx::Result<u64> {
    let mut ids = Vec::with_capacity(jobs.len());
    let mut queues = Vec::with_capacity(jobs.len());
    let mut payloads = Vec::with_capacity(jobs.len());
    let mut max_attempts = Vec::with_capacity(jobs.len());
    let mut run_ats = Vec::with_capacity(jobs.len());
    let mut priorities = Vec::with_capacity(jobs.len());
    let mut keys = Vec::with_capacity(jobs.len());
    for job in jobs {
        ids.push(new_job_id());
        queues.push(job.queue.to_owned());
        payloads.push(job.payload);
        max_attempts.push(job.max_attempts);
        run_ats.push(job.options.run_at);
        priorities.push(job.options.priority);
        keys.push(job.options.idempotency_key);
    }
    let result = sqlx::query(
        "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, priority, idempotency_key)
         SELECT id, job_type, job, 'Pending', 0, max_attempts, COALESCE(run_at, now()), priority, idempotency_key
           FROM unnest($1::text[], $2::text[], $3::bytea[], $4::int[], $5::timestamptz[], $6::int[], $7::text[])
                AS t(id, job_type, job, max_attempts, run_at, priority, idempotency_key)
         ON CONFLICT (job_type, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
    )
    .bind(ids)
    .bind(queues)
    .bind(payloads)
    .bind(max_attempts)
    .bind(run_ats)
    .bind(priorities)
    .bind(keys)
    .execute(conn)
    .await?;
    Ok(result.rows_affected())
}

/// Makes a scheduled (snoozed or delayed) job of `queue` with `idempotency_key` due now and wakes its workers.
/// Returns whether such a job was waiting. A callback uses this to turn the next poll into an immediate one.
pub async fn expedite(
    conn: &mut sqlx::PgConnection,
    queue: &str,
    idempotency_key: &str,
) -> sqlx::Result<bool> {
    let moved = sqlx::query(
        "UPDATE apalis.jobs SET run_at = now()
          WHERE job_type = $1 AND idempotency_key = $2 AND status = 'Pending' AND run_at > now()",
    )
    .bind(queue)
    .bind(idempotency_key)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if moved > 0 {
        sqlx::query("SELECT pg_notify($1, json_build_object('job_type', $2::text)::text)")
            .bind(crate::runtime::INSERT_CHANNEL)
            .bind(queue)
            .execute(&mut *conn)
            .await?;
    }
    Ok(moved > 0)
}
