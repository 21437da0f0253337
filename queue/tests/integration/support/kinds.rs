//! Job kinds that succeed, fail, panic, hang, snooze, sleep or wait for a gate on demand. Each records its runs
//! in `test_job_runs` (created by [`create_table`]) so a test can assert what ran, how often, and when. They
//! need nothing from an application: their context is `()`.

use std::time::Duration;

use queue::{Job, JobError, Outcome, Registry, RetryPolicy};
use serde::{Deserialize, Serialize};

use queue::testing::eventually;

/// What every test kind's attempt receives.
pub type JobContext = queue::JobContext<()>;

/// A row's timestamp as the tests read it.
pub type Timestamp = chrono::DateTime<chrono::Utc>;

/// Every test kind.
pub fn registry() -> Registry<()> {
    Registry::new()
        .register::<Record>()
        .register::<FailTimes>()
        .register::<AlwaysFails>()
        .register::<Permanent>()
        .register::<Panics>()
        .register::<Hangs>()
        .register::<SnoozeTimes>()
        .register::<Slow>()
        .register::<Gated>()
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

/// The recorded runs of `label`, oldest first: (attempt, time).
pub async fn runs(pool: &sqlx::PgPool, label: &str) -> Vec<(i32, Timestamp)> {
    sqlx::query_as("SELECT attempt, at FROM test_job_runs WHERE label = $1 ORDER BY at")
        .bind(label)
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Succeeds at once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub label: String,
}

impl Job for Record {
    const NAME: &'static str = "test_record";
    type Context = ();
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
    type Context = ();
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
    type Context = ();
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
    type Context = ();
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
    type Context = ();
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
    type Context = ();
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
    type Context = ();
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
    type Context = ();
    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        record(&ctx, &self.label).await?;
        Ok(Outcome::Done)
    }
}

/// Records `"{label}:started"`, waits until its [`Gate`] opens, then records `label` and succeeds: a test
/// knows when the job has started and decides when it finishes, with no sleep in between.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Gated {
    pub label: String,
    /// The [`Gate::key`] it waits for.
    pub gate: i64,
}

impl Job for Gated {
    const NAME: &'static str = "test_gated";
    type Context = ();
    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        record(&ctx, &format!("{}:started", self.label)).await?;
        let mut tx = ctx.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
            .bind(self.gate)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        record(&ctx, &self.label).await?;
        Ok(Outcome::Done)
    }
}

/// Holds [`Gated`] jobs (and statements held with [`hold_job_updates`] or [`hold_claim_of`]) until
/// [`open`](Self::open)ed: an advisory lock held by a connection of its own.
pub struct Gate {
    pub key: i64,
    connection: sqlx::PgConnection,
}

impl Gate {
    pub async fn closed(pool: &sqlx::PgPool) -> Self {
        use sqlx::Connection as _;
        let mut connection = sqlx::PgConnection::connect_with(&pool.connect_options())
            .await
            .unwrap();
        let key = rand::random::<i64>();
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(key)
            .execute(&mut connection)
            .await
            .unwrap();
        Self { key, connection }
    }

    /// A job waiting for this gate.
    pub fn job(&self, label: &str) -> Gated {
        Gated {
            label: label.to_owned(),
            gate: self.key,
        }
    }

    pub async fn open(mut self) {
        use sqlx::Connection as _;
        let unlocked: bool = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
            .bind(self.key)
            .fetch_one(&mut self.connection)
            .await
            .unwrap();
        assert!(unlocked, "the gate was not closed");
        self.connection.close().await.unwrap();
    }
}

/// Waits until a [`Gated`] job labelled `label` has started.
pub async fn started(pool: &sqlx::PgPool, label: &str) {
    let started = format!("{label}:started");
    eventually(&format!("job {label} to start"), || async {
        !runs(pool, &started).await.is_empty()
    })
    .await;
}

/// Makes every statement that updates `apalis.jobs` and whose text contains `containing` wait for `gate`
/// before it touches a row: a test holds back one of the runtime's statements (a completion, say) while
/// letting the others (a hand-back) through. A statement-level trigger, so the held statement has locked no row
/// yet; [`blocked_on_lock`](super::blocked_on_lock) tells when one is waiting.
pub async fn hold_job_updates(pool: &sqlx::PgPool, containing: &str, gate: &Gate) {
    hold_statements(
        pool,
        "test_hold_job_updates",
        "strpos(current_query(), TG_ARGV[0]) > 0",
        "BEFORE UPDATE ON apalis.jobs",
        containing,
        gate,
    )
    .await;
}

/// Holds back the claim that takes the job labelled `label` until `gate` opens: the claim has marked the row
/// `Running` but not committed, so the runner has no answer yet. (A statement-level trigger after the update,
/// reading the rows it changed, so only a claim that really took the job is held, whatever its snapshot saw.)
pub async fn hold_claim_of(pool: &sqlx::PgPool, label: &str, gate: &Gate) {
    hold_statements(
        pool,
        "test_hold_claim",
        "EXISTS (SELECT 1 FROM claimed
                  WHERE status = 'Running' AND convert_from(job, 'UTF8')::jsonb->>'label' = TG_ARGV[0])",
        "AFTER UPDATE ON apalis.jobs REFERENCING NEW TABLE AS claimed",
        label,
        gate,
    )
    .await;
}

/// A statement-level trigger `function` (`timing`: when and on what) that makes each statement for which
/// `condition` holds (`TG_ARGV[0]` is `argument`) wait for `gate`.
async fn hold_statements(
    pool: &sqlx::PgPool,
    function: &'static str,
    condition: &'static str,
    timing: &'static str,
    argument: &str,
    gate: &Gate,
) {
    let literal = |text: &str| format!("'{}'", text.replace('\'', "''"));
    // Fixed text, the argument and key quoted as literals: nothing here comes from outside the test.
    let statements = [
        format!(
            "CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF {condition} THEN
                     PERFORM pg_advisory_xact_lock_shared(TG_ARGV[1]::bigint);
                 END IF;
                 RETURN NULL;
             END $$"
        ),
        format!(
            "CREATE TRIGGER {function}_{key} {timing} FOR EACH STATEMENT
             EXECUTE FUNCTION {function}({argument}, {key_text})",
            key = gate.key.unsigned_abs(),
            argument = literal(argument),
            key_text = literal(&gate.key.to_string()),
        ),
    ];
    for statement in statements {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(pool)
            .await
            .unwrap();
    }
}
