//! Job kinds for product tests that need a job to succeed or die on demand (the queue runtime's own tests, with
//! their kinds, live in `queue/tests`). Each records its runs in `test_job_runs` (created by [`create_table`]) so
//! a test can assert what ran, how often, and when.

use std::{sync::Arc, time::Duration};

use jobs::services::{JobContext, Services};
use queue::{Job, JobError, Outcome, Registry, RetryPolicy};
use serde::{Deserialize, Serialize};

/// The production registry plus the test kinds.
pub fn registry() -> Registry<Arc<Services>> {
    jobs::kinds::registry()
        .register::<Record>()
        .register::<AlwaysFails>()
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
    type Context = Arc<Services>;
    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        record(&ctx, &self.label).await?;
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
    type Context = Arc<Services>;
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
