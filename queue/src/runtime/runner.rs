//! One queue's runner: claims due jobs in batches (claiming ahead under a backlog of short jobs), runs each
//! attempt under its timeout and panic capture, records snoozes, retries and deaths, and drains on shutdown.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, VecDeque},
    future::Future,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use futures::{FutureExt, StreamExt as _};
use sqlx::PgPool;
use tokio::{
    sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{QueueHealth, completer::complete_in_batches, reaper::hand_back};
use crate::{JobContext, JobError, Outcome, QueueConfig, QueueMetrics, registry::Handler};

/// Most rows claimed in one statement.
pub const CLAIM_BATCH_MAX: usize = 200;
/// Claims a runner has on their way at once under a backlog of short jobs: while one statement claims, the other's
/// rows are being started, as two pgbench clients run the same statements (loadtest/README.md, issue 19).
const CLAIMS_AHEAD: usize = 2;

/// Claims up to `$3` due jobs of queue `$1` for worker `$2`, in priority and `run_at` order, skipping rows another
/// worker is claiming and nothing while the queue is paused.
///
/// Its commit does not wait for the WAL to reach the disk (`synchronous_commit = off` for this statement's own
/// transaction, through `set_config(…, true)`; the job handlers' transactions on the same connections stay
/// durable). That is safe under at-least-once delivery: a claim lost in a crash of Postgres leaves the row
/// `Pending`, and its job runs (again) once the database is back, which every job tolerates. It takes a WAL
/// flush — one fsync, the largest part of an idle job's start — off the path from insert to start.
pub const CLAIM_SQL: &str =
    "WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true)),
 next AS (
     SELECT id FROM apalis.jobs
      WHERE job_type = $1 AND status = 'Pending' AND run_at <= now()
        AND NOT EXISTS (SELECT 1 FROM queue_pauses WHERE queue = $1)
      ORDER BY priority DESC, run_at ASC, id
      LIMIT $3
        FOR UPDATE SKIP LOCKED
 )
 UPDATE apalis.jobs AS j
    SET status = 'Running', lock_by = $2, lock_at = now(), attempts = j.attempts + 1
   FROM next, relaxed
  WHERE j.id = next.id
RETURNING j.id, j.job, j.attempts, j.max_attempts, j.run_at, j.lock_at AS started_at";
/// Most pending wake-ups a runner keeps for its own snoozed and retried jobs.
const WAKEUPS_MAX: usize = 4096;
/// A wake-up comes this long after the job's `run_at`, so the claim's `run_at <= now()` (the database's clock)
/// holds when it runs.
const WAKEUP_MARGIN: Duration = Duration::from_millis(10);

/// What a runner is built from.
pub(super) struct Setup<'a, C> {
    pub handler: Handler<C>,
    pub concurrency: usize,
    pub health: Arc<QueueHealth>,
    pub worker_id: String,
    pub pool: PgPool,
    pub app: C,
    pub wake: Arc<Notify>,
    pub config: QueueConfig,
    pub metrics: &'a QueueMetrics,
}

pub(super) struct Runner<C> {
    pub(super) queue: &'static str,
    handler: Handler<C>,
    concurrency: usize,
    pub(super) worker_id: String,
    pool: PgPool,
    app: C,
    /// Notified by the listener when a due job of this queue was inserted.
    wake: Arc<Notify>,
    config: QueueConfig,
    pub(super) health: Arc<QueueHealth>,
    metrics: RunnerMetrics,
    /// Moving average of attempt durations in µs; `u64::MAX` until the first attempt ends.
    mean_attempt_micros: AtomicU64,
    /// When jobs this runner snoozed or scheduled for retry fall due: the runner claims then rather than at its
    /// next poll (delayed rows send no notification). Bounded by [`WAKEUPS_MAX`]; past that the poll serves.
    wakeups: std::sync::Mutex<BinaryHeap<Reverse<tokio::time::Instant>>>,
    /// Tells the loop that `wakeups` gained an entry, so it sleeps until the earliest.
    rescheduled: Notify,
}

/// This queue's series, looked up once rather than per job (a label lookup takes a lock).
struct RunnerMetrics {
    wait: prometheus::Histogram,
    done: prometheus::Histogram,
    snoozed: prometheus::Histogram,
    failed: prometheus::Histogram,
    completed: prometheus::IntCounter,
    panics: prometheus::IntCounter,
    handed_back: prometheus::IntCounter,
    retried: prometheus::IntCounter,
    snoozes: prometheus::IntCounter,
    dead: prometheus::IntCounter,
}

impl RunnerMetrics {
    fn new(metrics: &QueueMetrics, queue: &str) -> Self {
        let duration = |outcome| {
            metrics
                .job_duration_seconds
                .with_label_values(&[queue, outcome])
        };
        Self {
            wait: metrics.job_wait_seconds.with_label_values(&[queue]),
            done: duration("done"),
            snoozed: duration("snoozed"),
            failed: duration("failed"),
            completed: metrics.jobs_completed_total.with_label_values(&[queue]),
            panics: metrics.job_panics_total.with_label_values(&[queue]),
            handed_back: metrics.jobs_handed_back_total.with_label_values(&[queue]),
            retried: metrics.jobs_retried_total.with_label_values(&[queue]),
            snoozes: metrics.jobs_snoozed_total.with_label_values(&[queue]),
            dead: metrics.jobs_dead_total.with_label_values(&[queue]),
        }
    }
}

/// A claim on its way: how many rows it asked for, and the answer.
type ClaimInFlight = Pin<Box<dyn Future<Output = (usize, sqlx::Result<Vec<ClaimedJob>>)> + Send>>;

/// A row this worker has claimed.
#[derive(Debug, sqlx::FromRow)]
struct ClaimedJob {
    id: String,
    job: Vec<u8>,
    attempts: i32,
    max_attempts: i32,
    run_at: DateTime<Utc>,
    started_at: DateTime<Utc>,
}

impl<C: Clone + Send + Sync + 'static> Runner<C> {
    pub(super) fn new(setup: Setup<'_, C>) -> Self {
        let queue = setup.handler.queue;
        Self {
            queue,
            metrics: RunnerMetrics::new(setup.metrics, queue),
            handler: setup.handler,
            concurrency: setup.concurrency,
            worker_id: setup.worker_id,
            pool: setup.pool,
            app: setup.app,
            wake: setup.wake,
            config: setup.config,
            health: setup.health,
            mean_attempt_micros: AtomicU64::new(u64::MAX),
            wakeups: std::sync::Mutex::new(BinaryHeap::new()),
            rescheduled: Notify::new(),
        }
    }

    /// How long one attempt of this queue may run.
    pub(super) fn timeout(&self) -> Duration {
        self.handler.policy.timeout
    }

    /// Claims and runs jobs until `shutdown`. Under a backlog (the last claim filled its batch) of short jobs the
    /// runner claims *ahead*: up to one batch more than its free slots (two, with two claims on their way, when it
    /// has a full batch of slots: [`CLAIMS_AHEAD`]), into a local buffer, and the next claim is
    /// already on its way while jobs run, so a slot never waits for a round trip. When the queue runs dry (a claim
    /// comes back short), or its jobs are slow, it claims only for free slots, so other replicas are not kept
    /// from work this one cannot start at once.
    pub(super) async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.concurrency));
        let mut in_flight = JoinSet::new();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let completer = tokio::spawn(complete_in_batches(
            self.pool.clone(),
            self.worker_id.clone(),
            self.queue,
            done_rx,
        ));
        let mut poll = tokio::time::interval(self.config.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut database_backoff = Duration::from_millis(100);
        let mut retry_database_at: Option<tokio::time::Instant> = None;
        let batch = self.concurrency.min(CLAIM_BATCH_MAX);
        let mut buffer: VecDeque<ClaimedJob> = VecDeque::with_capacity(batch * 2);
        // A notification, the poll or a wake-up asked for a claim that has not been sent since. Cleared when a
        // claim is sent, never by an answer: a claim sent before a job fell due can come back short after the
        // job's notification arrived, and that notification still wants a claim of its own.
        let mut want_claim = true;
        // Whether the last claim filled its batch, i.e. more jobs are probably due: claim again.
        let mut backlog = false;
        // Claims on their way (two at most, only under a backlog of short jobs), and the rows they asked for.
        // In the order they were sent, so a later claim's rows never start before an earlier one's.
        let mut claiming: futures::stream::FuturesOrdered<ClaimInFlight> =
            futures::stream::FuturesOrdered::new();
        let mut claiming_rows = 0;

        loop {
            self.health.tick();
            while let Some(result) = in_flight.try_join_next() {
                log_task_failure(self.queue, result);
            }
            if shutdown.is_cancelled() {
                break;
            }
            while !buffer.is_empty() {
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    break;
                };
                let job = buffer.pop_front().expect("buffer is not empty");
                in_flight.spawn(self.clone().execute(job, permit, done_tx.clone()));
            }
            let free = slots.available_permits();
            let ahead = backlog && self.attempts_are_short();
            // A second claim only for a runner with a full batch of slots: with fewer, its claims are small and
            // start order (priority, then run_at) is worth more than the overlap.
            let most_claims = if ahead && batch == CLAIM_BATCH_MAX {
                CLAIMS_AHEAD
            } else {
                1
            };
            if claiming.len() < most_claims
                && (want_claim || backlog)
                && retry_database_at.is_none_or(|at| tokio::time::Instant::now() >= at)
            {
                let (room, threshold) = if ahead {
                    // Claim ahead by up to CLAIMS_AHEAD batches, but only in worthwhile amounts.
                    (
                        (free + batch * most_claims).saturating_sub(buffer.len() + claiming_rows),
                        (batch / 4).max(1),
                    )
                } else {
                    (free.saturating_sub(buffer.len() + claiming_rows), 1)
                };
                if room >= threshold {
                    let wanted = room.min(batch);
                    let pool = self.pool.clone();
                    let queue = self.queue;
                    let worker_id = self.worker_id.clone();
                    claiming_rows += wanted;
                    want_claim = false;
                    claiming.push_back(Box::pin(async move {
                        (wanted, claim(&pool, queue, &worker_id, wanted).await)
                    }));
                }
            }
            let next_wakeup = self.next_wakeup();
            let wakeup = async {
                match next_wakeup {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let database_retry = async {
                match retry_database_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some((wanted, result)) = claiming.next(), if !claiming.is_empty() => {
                    claiming_rows -= wanted;
                    match result {
                        Ok(jobs) => {
                            self.health.database_ok.store(true, Ordering::Relaxed);
                            database_backoff = Duration::from_millis(100);
                            retry_database_at = None;
                            backlog = jobs.len() == wanted;
                            buffer.extend(jobs);
                        }
                        Err(error) => {
                            self.health.database_ok.store(false, Ordering::Relaxed);
                            tracing::warn!(job.queue = self.queue, error = %error, "claiming jobs failed; retrying");
                            want_claim = true;
                            retry_database_at = Some(tokio::time::Instant::now() + database_backoff);
                            database_backoff = (database_backoff * 2).min(Duration::from_secs(5));
                        }
                    }
                }
                Some(result) = in_flight.join_next(), if !in_flight.is_empty() => {
                    log_task_failure(self.queue, result);
                }
                () = self.wake.notified() => want_claim = true,
                _ = poll.tick() => want_claim = true,
                () = database_retry => retry_database_at = None,
                () = wakeup => {
                    self.forget_past_wakeups();
                    want_claim = true;
                }
                () = self.rescheduled.notified() => {}
            }
        }

        // The drain. Its contract, each clause tested in `queue/tests/integration/drain.rs`:
        // - no job starts once the drain has begun: rows claimed but not started (the claim-ahead buffer, and a
        //   claim that lands after the drain began, although the database already shows them `Running`) are
        //   handed back with the attempt not counted;
        // - a job that started runs on until the grace period (counted from the start of the drain) is over,
        //   then it is cancelled and handed back;
        // - the completion of every job that finished is written before its rows are handed back and before
        //   the runner reports stopped, so nothing a finished job did is handed back to run again.
        let deadline = tokio::time::Instant::now() + self.config.shutdown_grace;

        // Claims on their way are let finish, so their rows are handed back below rather than left to the reaper.
        while !claiming.is_empty() {
            match tokio::time::timeout_at(deadline, claiming.next()).await {
                Ok(Some((_, Ok(jobs)))) => buffer.extend(jobs),
                Ok(Some((_, Err(_)))) | Ok(None) => {}
                // Rows of a claim that commits later are the reaper's, once this worker stops heartbeating.
                Err(_) => {
                    tracing::warn!(
                        job.queue = self.queue,
                        "a claim did not answer within the grace period"
                    );
                    break;
                }
            }
        }
        let unstarted = buffer.len();
        drop(buffer);

        let drained = tokio::time::timeout_at(deadline, async {
            while let Some(result) = in_flight.join_next().await {
                log_task_failure(self.queue, result);
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                job.queue = self.queue,
                in_flight = in_flight.len(),
                "grace period over; handing jobs back"
            );
            in_flight.abort_all();
            while in_flight.join_next().await.is_some() {}
        }
        // Completions after the jobs: the completer ends once every sender (one per job task) is gone and it
        // has written what they sent.
        drop(done_tx);
        if let Err(error) = completer.await {
            tracing::error!(job.queue = self.queue, error = %error, "completion task failed");
        }
        match hand_back(&self.pool, &self.worker_id).await {
            Ok(0) => {}
            Ok(count) => {
                self.metrics.handed_back.inc_by(count);
                tracing::info!(
                    job.queue = self.queue,
                    count,
                    unstarted,
                    "handed unfinished jobs back to the queue"
                )
            }
            Err(error) => {
                tracing::error!(job.queue = self.queue, error = %error, "could not hand jobs back; the reaper will")
            }
        }
    }

    /// Remembers to claim when a job this runner just put back becomes due.
    fn wake_at(&self, at: tokio::time::Instant) {
        let mut wakeups = self.wakeups.lock().unwrap_or_else(|e| e.into_inner());
        if wakeups.len() < WAKEUPS_MAX {
            wakeups.push(Reverse(at));
            drop(wakeups);
            self.rescheduled.notify_one();
        }
    }

    fn next_wakeup(&self) -> Option<tokio::time::Instant> {
        let wakeups = self.wakeups.lock().unwrap_or_else(|e| e.into_inner());
        wakeups.peek().map(|Reverse(at)| *at)
    }

    fn forget_past_wakeups(&self) {
        let now = tokio::time::Instant::now();
        let mut wakeups = self.wakeups.lock().unwrap_or_else(|e| e.into_inner());
        while wakeups.peek().is_some_and(|Reverse(at)| *at <= now) {
            wakeups.pop();
        }
    }

    /// Whether recent attempts were short enough to claim ahead (see [`QueueConfig::claim_ahead_max_attempt`]).
    fn attempts_are_short(&self) -> bool {
        self.mean_attempt_micros.load(Ordering::Relaxed)
            <= self.config.claim_ahead_max_attempt.as_micros() as u64
    }

    fn observe_attempt(&self, took: Duration) {
        let micros = took.as_micros().min(u128::from(u64::MAX - 1)) as u64;
        let _ =
            self.mean_attempt_micros
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |mean| {
                    Some(if mean == u64::MAX {
                        micros
                    } else {
                        mean - mean / 8 + micros / 8
                    })
                });
    }

    async fn execute(
        self: Arc<Self>,
        job: ClaimedJob,
        _slot: OwnedSemaphorePermit,
        done: mpsc::UnboundedSender<String>,
    ) {
        let metrics = &self.metrics;
        let wait = (job.started_at - job.run_at).to_std().unwrap_or_default();
        metrics.wait.observe(wait.as_secs_f64());
        let span = tracing::info_span!("job", job.queue = self.queue, job.id = %job.id, job.attempt = job.attempts);
        let ctx = JobContext {
            pool: self.pool.clone(),
            app: self.app.clone(),
            job_id: job.id.clone(),
            attempt: job.attempts,
            max_attempts: job.max_attempts,
        };
        let started = Instant::now();
        let timeout = self.handler.policy.timeout;
        let attempt = AssertUnwindSafe(self.handler.call(job.job, ctx)).catch_unwind();
        let result = match tokio::time::timeout(timeout, attempt)
            .instrument(span.clone())
            .await
        {
            Err(_) => Err(JobError::Retryable(anyhow::anyhow!(
                "attempt timed out after {timeout:?}"
            ))),
            Ok(Err(panic)) => {
                self.metrics.panics.inc();
                Err(JobError::Retryable(anyhow::anyhow!(
                    "attempt panicked: {}",
                    panic_message(&*panic)
                )))
            }
            Ok(Ok(result)) => result,
        };
        let took = started.elapsed();
        self.observe_attempt(took);
        let elapsed = took.as_secs_f64();
        let _entered = span.enter();
        match result {
            Ok(Outcome::Done) => {
                metrics.done.observe(elapsed);
                metrics.completed.inc();
                tracing::debug!(duration_ms = elapsed * 1000.0, "job done");
                // The completer marks it done; if the process dies first, the job runs again (at-least-once).
                let _ = done.send(job.id);
            }
            Ok(Outcome::Snooze(delay)) => {
                metrics.snoozed.observe(elapsed);
                metrics.snoozes.inc();
                self.record(Transition::Snooze { delay }, &job.id).await;
            }
            Err(error) => {
                let permanent = matches!(error, JobError::Permanent(_));
                let dead = permanent || job.attempts >= job.max_attempts;
                let message = error.to_string();
                metrics.failed.observe(elapsed);
                if dead {
                    metrics.dead.inc();
                    tracing::error!(error = %message, permanent, attempts = job.attempts, "job is dead");
                    self.record(Transition::Dead { error: message }, &job.id)
                        .await;
                } else {
                    let delay = self.handler.policy.backoff(job.attempts);
                    metrics.retried.inc();
                    tracing::warn!(error = %message, retry_in_ms = delay.as_millis() as u64, "job failed; will retry");
                    self.record(
                        Transition::Retry {
                            delay,
                            error: message,
                        },
                        &job.id,
                    )
                    .await;
                }
            }
        }
    }

    /// Writes a non-success outcome, retrying briefly through a database blip. If it still fails, the row stays
    /// `Running` and the reaper hands it back later: the job runs again, which jobs are built to tolerate.
    async fn record(&self, transition: Transition, job_id: &str) {
        let mut delay = Duration::from_millis(50);
        for attempt in 1..=5 {
            match transition.write(&self.pool, job_id, &self.worker_id).await {
                Ok(()) => {
                    if let Transition::Snooze { delay } | Transition::Retry { delay, .. } =
                        &transition
                    {
                        self.wake_at(tokio::time::Instant::now() + *delay + WAKEUP_MARGIN);
                    }
                    return;
                }
                Err(error) if attempt == 5 => {
                    tracing::error!(job.id = job_id, error = %error, "could not record job outcome; the reaper will hand it back");
                }
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
    }
}

enum Transition {
    Snooze { delay: Duration },
    Retry { delay: Duration, error: String },
    Dead { error: String },
}

impl Transition {
    async fn write(&self, pool: &PgPool, job_id: &str, worker_id: &str) -> sqlx::Result<()> {
        let query = match self {
            // A snooze gives the attempt back: only failures count towards max_attempts.
            Self::Snooze { delay } => sqlx::query(
                "UPDATE apalis.jobs
                    SET status = 'Pending', run_at = now() + make_interval(secs => $3), attempts = attempts - 1,
                        lock_by = NULL, lock_at = NULL
                  WHERE id = $1 AND (lock_by, status) IS NOT DISTINCT FROM ($2, 'Running')",
            )
            .bind(job_id)
            .bind(worker_id)
            .bind(delay.as_secs_f64()),
            Self::Retry { delay, error } => sqlx::query(
                "UPDATE apalis.jobs
                    SET status = 'Pending', run_at = now() + make_interval(secs => $3),
                        last_result = jsonb_build_object('Err', $4::text), lock_by = NULL, lock_at = NULL
                  WHERE id = $1 AND (lock_by, status) IS NOT DISTINCT FROM ($2, 'Running')",
            )
            .bind(job_id)
            .bind(worker_id)
            .bind(delay.as_secs_f64())
            .bind(error),
            Self::Dead { error } => sqlx::query(
                "UPDATE apalis.jobs
                    SET status = 'Failed', done_at = now(), last_result = jsonb_build_object('Err', $3::text)
                  WHERE id = $1 AND (lock_by, status) IS NOT DISTINCT FROM ($2, 'Running')",
            )
            .bind(job_id)
            .bind(worker_id)
            .bind(error),
        };
        query.execute(pool).await.map(drop)
    }
}

async fn claim(
    pool: &PgPool,
    queue: &str,
    worker_id: &str,
    limit: usize,
) -> sqlx::Result<Vec<ClaimedJob>> {
    sqlx::query_as(CLAIM_SQL)
        .bind(queue)
        .bind(worker_id)
        .bind(limit as i64)
        .fetch_all(pool)
        .await
}

fn log_task_failure(queue: &str, result: Result<(), tokio::task::JoinError>) {
    if let Err(error) = result
        && !error.is_cancelled()
    {
        tracing::error!(job.queue = queue, error = %error, "job task failed outside its attempt");
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = panic.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
