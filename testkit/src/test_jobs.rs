//! Job kinds for testing the queue layer. Each records its runs in `test_job_runs` (created by
//! [`create_table`]) so a test can assert what ran, how often, and when.

use std::time::Duration;

use jobs::queue::{Job, JobContext, JobError, Outcome, Registry, RetryPolicy};
use serde::{Deserialize, Serialize};

/// The production registry plus every test kind.
pub fn registry() -> Registry {
    jobs::kinds::registry()
        .register::<Record>()
        .register::<FailTimes>()
        .register::<AlwaysFails>()
        .register::<Permanent>()
        .register::<Panics>()
        .register::<Hangs>()
        .register::<SnoozeTimes>()
        .register::<Slow>()
}

pub async fn create_table(pool: &sqlx::PgPool) {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS test_job_runs (
             label text NOT NULL, attempt int NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())",
    )
    .execute(pool)
    .await
    .unwrap();
}

async fn record(ctx: &JobContext, label: &str) -> Result<i64, JobError> {
    sqlx::query("INSERT INTO test_job_runs (label, attempt) VALUES ($1, $2)")
        .bind(label)
        .bind(ctx.attempt)
        .execute(&ctx.pool)
        .await?;
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM test_job_runs WHERE label = $1")
        .bind(label)
        .fetch_one(&ctx.pool)
        .await?;
    Ok(runs)
}

/// Runs the labelled runs of `label`, oldest first: (attempt, time).
pub async fn runs(pool: &sqlx::PgPool, label: &str) -> Vec<(i32, chrono_like::Timestamp)> {
    sqlx::query_as("SELECT attempt, at FROM test_job_runs WHERE label = $1 ORDER BY at")
        .bind(label)
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Timestamps without pulling chrono into every test crate's imports.
pub mod chrono_like {
    pub type Timestamp = sqlx::types::chrono::DateTime<sqlx::types::chrono::Utc>;
}

/// Succeeds at once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub label: String,
}

impl Job for Record {
    const NAME: &'static str = "test_record";
    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        record(&ctx, &self.label).await?;
        Ok(Outcome::Done)
    }
}

/// Fails its first `failures` attempts, then succeeds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailTimes {
    pub label: String,
    pub failures: i32,
}

impl Job for FailTimes {
    const NAME: &'static str = "test_fail_times";
    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 5,
        base: Duration::from_millis(400),
        cap: Duration::from_secs(2),
        timeout: Duration::from_secs(10),
    };
    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        record(&ctx, &self.label).await?;
        if ctx.attempt <= self.failures {
            return Err(
                anyhow::anyhow!("planned failure {} of {}", ctx.attempt, self.failures).into(),
            );
        }
        Ok(Outcome::Done)
    }
}

/// Fails every attempt (retryable), until it is dead.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AlwaysFails {
    pub label: String,
}

impl Job for AlwaysFails {
    const NAME: &'static str = "test_always_fails";
    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        base: Duration::from_millis(50),
        cap: Duration::from_millis(200),
        timeout: Duration::from_secs(10),
    };
    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        record(&ctx, &self.label).await?;
        Err(anyhow::anyhow!("upstream said no (attempt {})", ctx.attempt).into())
    }
}

/// Fails permanently on its first attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Permanent {
    pub label: String,
}

impl Job for Permanent {
    const NAME: &'static str = "test_permanent";
    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        record(&ctx, &self.label).await?;
        Err(JobError::permanent(anyhow::anyhow!(
            "content policy refusal"
        )))
    }
}

/// Panics on every attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Panics {
    pub label: String,
}

impl Job for Panics {
    const NAME: &'static str = "test_panics";
    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 2,
        base: Duration::from_millis(50),
        cap: Duration::from_millis(100),
        timeout: Duration::from_secs(10),
    };
    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        record(&ctx, &self.label).await?;
        panic!("bug in job {}", self.label);
    }
}

/// Never finishes; its timeout is 300 ms and it has one attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hangs {
    pub label: String,
}

impl Job for Hangs {
    const NAME: &'static str = "test_hangs";
    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 1,
        base: Duration::from_millis(50),
        cap: Duration::from_millis(100),
        timeout: Duration::from_millis(300),
    };
    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        record(&ctx, &self.label).await?;
        std::future::pending::<()>().await;
        Ok(Outcome::Done)
    }
}

/// Snoozes `times` times for `snooze_ms`, then succeeds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnoozeTimes {
    pub label: String,
    pub times: i64,
    pub snooze_ms: u64,
}

impl Job for SnoozeTimes {
    const NAME: &'static str = "test_snooze";
    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        let runs = record(&ctx, &self.label).await?;
        if runs <= self.times {
            return Ok(Outcome::Snooze(Duration::from_millis(self.snooze_ms)));
        }
        Ok(Outcome::Done)
    }
}

/// Sleeps `ms`, then records and succeeds (records nothing if cancelled first).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Slow {
    pub label: String,
    pub ms: u64,
}

impl Job for Slow {
    const NAME: &'static str = "test_slow";
    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        record(&ctx, &self.label).await?;
        Ok(Outcome::Done)
    }
}
