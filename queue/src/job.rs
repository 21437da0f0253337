//! What a job is: a payload with a stable name, a retry policy, a unique key and an async body.

use std::{future::Future, time::Duration};

use serde::{Serialize, de::DeserializeOwned};
use sqlx::{PgExecutor, PgPool};

use crate::enqueue::{self, EnqueueOptions, Enqueued};

/// A kind of background work. Each kind is its own queue, named by [`Job::NAME`].
///
/// Delivery is at-least-once: `run` must be safe to call twice with the same payload (an implementation's doc
/// comment should say why it is).
pub trait Job: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The persisted queue name (`apalis.jobs.job_type`). Stable forever: renaming it orphans queued jobs.
    const NAME: &'static str;

    /// Attempts, backoff and timeout for this kind.
    const POLICY: RetryPolicy = RetryPolicy::DEFAULT;

    /// What the application hands every attempt: its clients and settings ([`JobContext::app`]). Every kind
    /// in one [`Registry`](crate::Registry) shares one context type.
    type Context: Clone + Send + Sync + 'static;

    /// Does the work. `Ok(Outcome::Done)` finishes the job; `Ok(Outcome::Snooze(d))` asks to run again after
    /// `d` without counting an attempt; an error is retried with backoff or, if permanent, kills the job.
    fn run(
        self,
        ctx: JobContext<Self::Context>,
    ) -> impl Future<Output = Result<Outcome, JobError>> + Send;

    /// The key that makes this job unique among its kind while its row is kept: a second enqueue with the same
    /// key writes nothing and reports [`Enqueued::AlreadyQueued`]. `None` (the default): every enqueue is a
    /// new job. A kind whose work must happen once per thing (an order, a message) names that thing here,
    /// so no caller can forget the key.
    fn unique_key(&self) -> Option<String> {
        None
    }

    /// Enqueues this job to run as soon as a worker is free, with the connection (or transaction) given: it
    /// exists exactly when the caller's transaction commits.
    fn enqueue<'e>(
        &self,
        conn: impl PgExecutor<'e>,
    ) -> impl Future<Output = sqlx::Result<Enqueued>> + Send
    where
        Self: Sized,
    {
        enqueue::enqueue_with(conn, self, EnqueueOptions::default())
    }
}

/// How often and how patiently a job kind is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts before the job is dead (kept with its last error for an operator).
    pub max_attempts: i32,
    /// Delay before the first retry; doubles with each attempt.
    pub base: Duration,
    /// Upper bound of the delay.
    pub cap: Duration,
    /// One attempt may run this long; then it is cancelled and counts as a failed attempt.
    pub timeout: Duration,
}

impl RetryPolicy {
    pub const DEFAULT: Self = Self {
        max_attempts: 10,
        base: Duration::from_secs(2),
        cap: Duration::from_secs(600),
        timeout: Duration::from_secs(60),
    };

    /// Delay before the retry that follows failed attempt number `attempt` (1-based): exponential in the
    /// attempt, capped, with "equal jitter" (half fixed, half random) so a burst of failures spreads out.
    pub fn backoff(&self, attempt: i32) -> Duration {
        let exponent = attempt.clamp(1, 31) as u32 - 1;
        let uncapped = self.base.saturating_mul(2u32.saturating_pow(exponent));
        let full = uncapped.min(self.cap);
        let half = full / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

/// What a finished attempt asks of the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The work is complete.
    Done,
    /// Run again after this long. Does not count as an attempt and holds no worker slot meanwhile: the row goes
    /// back to `Pending` with a later `run_at`. (Polling an upstream is built on this.)
    Snooze(Duration),
}

/// Why an attempt failed. Any error converts into `Retryable` with `?`; say `JobError::permanent(e)` for
/// failures that can never succeed. (Deliberately not `std::error::Error`, so that blanket conversion exists.)
#[derive(Debug)]
pub enum JobError {
    /// Worth trying again later (network, 5xx, a lock, a timeout).
    Retryable(anyhow::Error),
    /// Will never succeed: the job is dead at once, with this error kept.
    Permanent(anyhow::Error),
}

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Retryable(error) | Self::Permanent(error) => write!(f, "{error:#}"),
        }
    }
}

impl JobError {
    pub fn permanent(error: impl Into<anyhow::Error>) -> Self {
        Self::Permanent(error.into())
    }
}

impl<E: Into<anyhow::Error>> From<E> for JobError {
    fn from(error: E) -> Self {
        Self::Retryable(error.into())
    }
}

/// Everything an attempt may use. Cheap to clone when `C` is.
#[derive(Clone, Debug)]
pub struct JobContext<C> {
    pub pool: PgPool,
    /// The application's context ([`Job::Context`]).
    pub app: C,
    /// The row id of the job being run.
    pub job_id: String,
    /// This attempt's number, from 1.
    pub attempt: i32,
    /// The job's attempt budget.
    pub max_attempts: i32,
}

impl<C> JobContext<C> {
    /// Whether a retryable failure now would make the job dead: jobs that own a user-visible outcome (a
    /// reservation to refund) settle it themselves on their last attempt instead of dying silently.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_within_jitter_and_stops_at_the_cap() {
        let policy = RetryPolicy {
            max_attempts: 20,
            base: Duration::from_secs(2),
            cap: Duration::from_secs(60),
            timeout: Duration::from_secs(1),
        };
        for _ in 0..200 {
            let first = policy.backoff(1);
            assert!(
                first >= Duration::from_secs(1) && first <= Duration::from_secs(2),
                "{first:?}"
            );
            let third = policy.backoff(3);
            assert!(
                third >= Duration::from_secs(4) && third <= Duration::from_secs(8),
                "{third:?}"
            );
            let late = policy.backoff(30);
            assert!(
                late >= Duration::from_secs(30) && late <= Duration::from_secs(60),
                "{late:?}"
            );
        }
    }

    #[test]
    fn backoff_is_jittered() {
        let policy = RetryPolicy::DEFAULT;
        let delays: std::collections::HashSet<_> = (0..50).map(|_| policy.backoff(4)).collect();
        assert!(
            delays.len() > 10,
            "50 draws gave only {} distinct delays",
            delays.len()
        );
    }
}
