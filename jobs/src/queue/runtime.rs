//! The worker runtime: claims jobs from `apalis.jobs`, runs them, records outcomes, hands back what it cannot
//! finish. One [`Runner`] per queue a process serves, each with its own concurrency.
//!
//! Guard rails (see `docs/apalis-postgres.md` and ARCHITECTURE.md):
//! - claims are batched to the number of free slots (`FOR UPDATE SKIP LOCKED`), completions of successful jobs
//!   are batched into one `UPDATE … WHERE id = ANY($1)` per flush;
//! - a timeout and panic capture wrap every attempt *inside* the runner, so no attempt leaves its row `Running`;
//! - a failed attempt is retried by moving `run_at` (exponential backoff with jitter, persisted) — no attempt
//!   ever sleeps in a worker slot and nothing hot-loops;
//! - LISTEN on apalis' insert channel wakes a runner at once; a runner wakes itself when a job it snoozed or
//!   put back for retry falls due; a ≤ 1 s poll catches other delayed jobs;
//! - a database error never ends a runner: it reports not-ready, backs off and tries again; a runner that panics
//!   is restarted by its supervisor;
//! - heartbeats in `apalis.workers`, and a reaper that hands back jobs of silent workers and of attempts stuck
//!   past their timeout;
//! - on shutdown no job starts; started jobs get a grace period, then are handed back to `Pending`; every
//!   finished job's completion is written before anything is handed back (the contract in full is in
//!   `Runner::run`, beside the code that keeps it).

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, VecDeque},
    future::Future,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use futures::FutureExt;
use sqlx::{PgPool, postgres::PgListener};
use tokio::{
    sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{
    job::{JobContext, JobError, Outcome, Services},
    registry::{Handler, Registry},
};
use crate::config::QueueConfig;

/// The channel apalis-postgres' insert trigger notifies (payload: JSON with `job_type`).
pub const INSERT_CHANNEL: &str = "apalis::job::insert";

/// Most rows claimed in one statement.
const CLAIM_BATCH_MAX: usize = 200;
/// Most pending wake-ups a runner keeps for its own snoozed and retried jobs.
const WAKEUPS_MAX: usize = 4096;
/// A wake-up comes this long after the job's `run_at`, so the claim's `run_at <= now()` (the database's clock)
/// holds when it runs.
const WAKEUP_MARGIN: Duration = Duration::from_millis(10);
/// Most ids marked done in one statement.
const COMPLETE_BATCH_MAX: usize = 1000;
/// How long the completer keeps trying to write a batch through a database outage before it leaves the rows
/// `Running` to the reaper (their jobs then run again, as at-least-once delivery allows).
const COMPLETE_RETRY_FOR: Duration = Duration::from_secs(10);

/// Which queues a worker process serves, and how many jobs of each it runs at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuePlan {
    pub queue: String,
    pub concurrency: usize,
}

/// Liveness of one queue runner, read by `/readyz` and the metrics.
#[derive(Debug)]
pub struct QueueHealth {
    pub queue: String,
    pub worker_id: String,
    /// Unix milliseconds of the runner's last loop iteration.
    last_tick_ms: AtomicI64,
    database_ok: AtomicBool,
    running: AtomicBool,
    restarts: AtomicU64,
}

impl QueueHealth {
    fn new(queue: &str, worker_id: String) -> Self {
        Self {
            queue: queue.to_owned(),
            worker_id,
            last_tick_ms: AtomicI64::new(Utc::now().timestamp_millis()),
            database_ok: AtomicBool::new(true),
            running: AtomicBool::new(true),
            restarts: AtomicU64::new(0),
        }
    }

    fn tick(&self) {
        self.last_tick_ms
            .store(Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    /// The runner is looping (its last iteration is recent) and its last database call worked.
    pub fn is_healthy(&self, stale_after: Duration) -> bool {
        let age_ms = Utc::now().timestamp_millis() - self.last_tick_ms.load(Ordering::Relaxed);
        self.running.load(Ordering::Relaxed)
            && self.database_ok.load(Ordering::Relaxed)
            && age_ms <= stale_after.as_millis() as i64
    }

    /// How often the supervisor restarted this runner after it died.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }
}

/// Health of a whole worker process.
#[derive(Debug, Default)]
pub struct WorkerHealth {
    pub queues: Vec<Arc<QueueHealth>>,
    draining: AtomicBool,
    stale_after: Duration,
}

impl WorkerHealth {
    /// Ready: not draining, and every runner alive with a working database connection.
    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::Relaxed)
            && self.queues.iter().all(|q| q.is_healthy(self.stale_after))
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// `Ok` when the worker can take work; otherwise why not.
    pub fn readiness(&self) -> Result<(), String> {
        if self.is_draining() {
            return Err("draining".into());
        }
        let unhealthy = self.unhealthy_queues();
        if unhealthy.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "queue runners not healthy: {}",
                unhealthy.join(", ")
            ))
        }
    }

    /// Queues whose runner is not healthy.
    pub fn unhealthy_queues(&self) -> Vec<String> {
        self.queues
            .iter()
            .filter(|q| !q.is_healthy(self.stale_after))
            .map(|q| q.queue.clone())
            .collect()
    }
}

/// A started worker: its health and the task that ends when it has drained.
pub struct RunningWorker {
    pub health: Arc<WorkerHealth>,
    handle: tokio::task::JoinHandle<()>,
}

impl RunningWorker {
    /// Waits until every runner has drained and handed back its unfinished jobs.
    pub async fn wait(self) {
        if let Err(error) = self.handle.await {
            tracing::error!(error = %error, "worker task failed");
        }
    }
}

/// Starts runners for `plans` (each queue must be in `registry`) and returns at once.
pub async fn start(
    pool: PgPool,
    registry: &Registry,
    services: Arc<Services>,
    plans: Vec<QueuePlan>,
    shutdown: CancellationToken,
) -> anyhow::Result<RunningWorker> {
    let config = services.queue.clone();
    let host = hostname();
    let process_tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let mut runners = Vec::new();
    let mut wakers = HashMap::new();
    for plan in &plans {
        let handler = registry
            .get(&plan.queue)
            .with_context(|| format!("unknown queue {:?}", plan.queue))?
            .clone();
        anyhow::ensure!(
            plan.concurrency > 0,
            "concurrency of queue {} must be at least 1",
            plan.queue
        );
        let worker_id = format!("{host}:{}:{}:{process_tag}", std::process::id(), plan.queue);
        let wake = Arc::new(Notify::new());
        wakers.insert(plan.queue.clone(), wake.clone());
        let metrics = RunnerMetrics::new(&services.metrics, handler.queue);
        runners.push(Arc::new(Runner {
            health: Arc::new(QueueHealth::new(&plan.queue, worker_id.clone())),
            queue: handler.queue,
            handler,
            concurrency: plan.concurrency,
            worker_id,
            pool: pool.clone(),
            services: services.clone(),
            wake,
            config: config.clone(),
            metrics,
            mean_attempt_micros: AtomicU64::new(u64::MAX),
            wakeups: std::sync::Mutex::new(BinaryHeap::new()),
            rescheduled: Notify::new(),
        }));
    }
    let health = Arc::new(WorkerHealth {
        queues: runners.iter().map(|r| r.health.clone()).collect(),
        draining: AtomicBool::new(false),
        stale_after: (config.poll_interval * 10).max(Duration::from_secs(15)),
    });

    // Register before the first claim: `apalis.jobs.lock_by` references `apalis.workers.id`. If the database is
    // down now, the heartbeat task keeps trying and the runners report not-ready until it answers.
    let worker_ids: Vec<(String, String)> = runners
        .iter()
        .map(|r| (r.worker_id.clone(), r.queue.to_owned()))
        .collect();
    if let Err(error) = register_workers(&pool, &worker_ids).await {
        tracing::warn!(error = %error, "could not register workers yet; will retry");
    }

    let background = CancellationToken::new();
    let mut tasks = JoinSet::new();
    tasks.spawn(listen_for_inserts(pool.clone(), wakers, background.clone()));
    tasks.spawn(heartbeat(
        pool.clone(),
        worker_ids,
        config.heartbeat_interval,
        background.clone(),
    ));
    let queues: Vec<(String, Duration)> = runners
        .iter()
        .map(|r| (r.queue.to_owned(), r.handler.policy.timeout))
        .collect();
    tasks.spawn(reap(
        pool.clone(),
        queues,
        config.clone(),
        background.clone(),
    ));

    let health_for_task = health.clone();
    let handle = tokio::spawn(async move {
        let mut supervised = JoinSet::new();
        for runner in runners {
            supervised.spawn(supervise(
                runner,
                services.metrics.clone(),
                shutdown.clone(),
            ));
        }
        shutdown.cancelled().await;
        health_for_task.draining.store(true, Ordering::Relaxed);
        while supervised.join_next().await.is_some() {}
        background.cancel();
        while tasks.join_next().await.is_some() {}
    });
    Ok(RunningWorker { health, handle })
}

/// Keeps a runner going: a runner that panics is started again after a pause, and counted.
async fn supervise(
    runner: Arc<Runner>,
    metrics: crate::telemetry::Metrics,
    shutdown: CancellationToken,
) {
    let queue = runner.queue;
    // Every per-queue series exists from the start (at zero), so rates and alerts see "nothing failed" rather
    // than "no data".
    for counter in [
        &metrics.jobs_completed_total,
        &metrics.jobs_retried_total,
        &metrics.jobs_snoozed_total,
        &metrics.jobs_dead_total,
    ] {
        counter.with_label_values(&[queue]);
    }
    metrics.workers_alive.with_label_values(&[queue]).inc();
    loop {
        let result = tokio::spawn(runner.clone().run(shutdown.clone())).await;
        match result {
            Ok(()) => break,
            Err(error) => {
                runner.health.running.store(false, Ordering::Relaxed);
                runner.health.restarts.fetch_add(1, Ordering::Relaxed);
                tracing::error!(job.queue = queue, error = %error, "queue runner died; restarting it");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                runner.health.running.store(true, Ordering::Relaxed);
            }
        }
    }
    metrics.workers_alive.with_label_values(&[queue]).dec();
}

struct Runner {
    queue: &'static str,
    handler: Handler,
    concurrency: usize,
    worker_id: String,
    pool: PgPool,
    services: Arc<Services>,
    wake: Arc<Notify>,
    config: QueueConfig,
    health: Arc<QueueHealth>,
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
    retried: prometheus::IntCounter,
    snoozes: prometheus::IntCounter,
    dead: prometheus::IntCounter,
}

impl RunnerMetrics {
    fn new(metrics: &crate::telemetry::Metrics, queue: &str) -> Self {
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

impl Runner {
    /// Claims and runs jobs until `shutdown`. Under a backlog (the last claim filled its batch) of short jobs the
    /// runner claims *ahead*: up to one batch more than its free slots, into a local buffer, and the next claim is
    /// already on its way while jobs run, so a slot never waits for a round trip. When the queue runs dry (a claim
    /// comes back short), or its jobs are slow, it claims only for free slots, so other replicas are not kept
    /// from work this one cannot start at once.
    async fn run(self: Arc<Self>, shutdown: CancellationToken) {
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
        // Whether to claim at all: set by a notification, the poll or a full claim; cleared by a short one.
        let mut want_claim = true;
        // Whether the last claim filled its batch, i.e. more jobs are probably due.
        let mut backlog = false;
        let mut claiming: Option<ClaimInFlight> = None;

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
            if claiming.is_none()
                && want_claim
                && retry_database_at.is_none_or(|at| tokio::time::Instant::now() >= at)
            {
                let (room, threshold) = if backlog && self.attempts_are_short() {
                    // Claim ahead by a batch, but only in worthwhile amounts.
                    (
                        (free + batch).saturating_sub(buffer.len()),
                        (batch / 4).max(1),
                    )
                } else {
                    (free.saturating_sub(buffer.len()), 1)
                };
                if room >= threshold {
                    let wanted = room.min(batch);
                    let pool = self.pool.clone();
                    let queue = self.queue;
                    let worker_id = self.worker_id.clone();
                    claiming = Some(Box::pin(async move {
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
                (wanted, result) = async { claiming.as_mut().expect("guarded").await }, if claiming.is_some() => {
                    claiming = None;
                    match result {
                        Ok(jobs) => {
                            self.health.database_ok.store(true, Ordering::Relaxed);
                            database_backoff = Duration::from_millis(100);
                            retry_database_at = None;
                            backlog = jobs.len() == wanted;
                            want_claim = backlog;
                            buffer.extend(jobs);
                        }
                        Err(error) => {
                            self.health.database_ok.store(false, Ordering::Relaxed);
                            tracing::warn!(job.queue = self.queue, error = %error, "claiming jobs failed; retrying");
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

        // The drain. Its contract, each clause tested in `jobs/tests/integration/queue.rs`:
        // - no job starts once the drain has begun: rows claimed but not started (the claim-ahead buffer, and a
        //   claim that lands after the drain began, although the database already shows them `Running`) are
        //   handed back with the attempt not counted;
        // - a job that started runs on until the grace period (counted from the start of the drain) is over,
        //   then it is cancelled and handed back;
        // - the completion of every job that finished is written before its rows are handed back and before
        //   the runner reports stopped, so nothing a finished job did is handed back to run again.
        let deadline = tokio::time::Instant::now() + self.config.shutdown_grace;

        // A claim on its way is let finish, so its rows are handed back below rather than left to the reaper.
        if let Some(claiming) = claiming.take() {
            match tokio::time::timeout_at(deadline, claiming).await {
                Ok((_, Ok(jobs))) => buffer.extend(jobs),
                Ok((_, Err(_))) => {}
                // Rows of a claim that commits later are the reaper's, once this worker stops heartbeating.
                Err(_) => tracing::warn!(
                    job.queue = self.queue,
                    "a claim did not answer within the grace period"
                ),
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
            Ok(count) => tracing::info!(
                job.queue = self.queue,
                count,
                unstarted,
                "handed unfinished jobs back to the queue"
            ),
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
            services: self.services.clone(),
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
            Ok(Err(panic)) => Err(JobError::Retryable(anyhow::anyhow!(
                "attempt panicked: {}",
                panic_message(&*panic)
            ))),
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
    sqlx::query_as(
        "WITH next AS (
             SELECT id FROM apalis.jobs
              WHERE job_type = $1 AND status = 'Pending' AND run_at <= now()
                AND NOT EXISTS (SELECT 1 FROM queue_pauses WHERE queue = $1)
              ORDER BY priority DESC, run_at ASC, id
              LIMIT $3
                FOR UPDATE SKIP LOCKED
         )
         UPDATE apalis.jobs AS j
            SET status = 'Running', lock_by = $2, lock_at = now(), attempts = j.attempts + 1
           FROM next
          WHERE j.id = next.id
      RETURNING j.id, j.job, j.attempts, j.max_attempts, j.run_at, j.lock_at AS started_at",
    )
    .bind(queue)
    .bind(worker_id)
    .bind(limit as i64)
    .fetch_all(pool)
    .await
}

/// Marks a worker's successful jobs done: `$1` the job ids, `$2` the worker id.
///
/// The guard is written `(lock_by, status) IS NOT DISTINCT FROM ($2, 'Running')` (here and in
/// [`Transition::write`]) so that the only index the planner can use is the primary key. Written as
/// `lock_by = $2 AND status = 'Running'`, the generic plan of the prepared statement scanned the whole of
/// `createimage2_jobs_running_idx` (or the index on `lock_by`) and filtered on the ids: statistics taken
/// while a backlog was `Pending` say almost nothing runs, but under a burn-down those indexes hold an entry for
/// every row claimed since the last vacuum, so each completion cost 0.5–2 s and a 100,000-job burn-down fell to
/// about 1,300 jobs/s (measured with `auto_explain`, see loadtest/README.md).
pub const COMPLETE_SQL: &str = "UPDATE apalis.jobs
    SET status = 'Done', done_at = now(), last_result = '{\"Ok\": null}'::jsonb
  WHERE id = ANY($1) AND (lock_by, status) IS NOT DISTINCT FROM ($2, 'Running')";

/// Marks successful jobs done, many per statement: whatever has arrived since the last flush.
async fn complete_in_batches(
    pool: PgPool,
    worker_id: String,
    queue: &'static str,
    mut done: mpsc::UnboundedReceiver<String>,
) {
    let mut batch = Vec::with_capacity(COMPLETE_BATCH_MAX);
    while let Some(first) = done.recv().await {
        batch.push(first);
        while batch.len() < COMPLETE_BATCH_MAX {
            match done.try_recv() {
                Ok(id) => batch.push(id),
                Err(_) => break,
            }
        }
        let mut delay = Duration::from_millis(50);
        let first_try = Instant::now();
        loop {
            let result = sqlx::query(COMPLETE_SQL)
                .bind(&batch)
                .bind(&worker_id)
                .execute(&pool)
                .await;
            match result {
                Ok(_) => break,
                // Bounded in time, not in tries: each try may wait out the pool's acquire timeout.
                Err(error) if first_try.elapsed() + delay > COMPLETE_RETRY_FOR => {
                    // The rows stay Running; the reaper hands them back and they run again (at-least-once).
                    tracing::error!(job.queue = queue, count = batch.len(), error = %error, "could not mark jobs done");
                    break;
                }
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
        batch.clear();
    }
}

/// Returns this worker's unfinished jobs to `Pending` (the interrupted attempt does not count).
async fn hand_back(pool: &PgPool, worker_id: &str) -> sqlx::Result<u64> {
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

async fn register_workers(pool: &PgPool, workers: &[(String, String)]) -> sqlx::Result<()> {
    let (ids, queues): (Vec<String>, Vec<String>) = workers.iter().cloned().unzip();
    sqlx::query(
        "INSERT INTO apalis.workers (id, worker_type, storage_name, layers, last_seen)
         SELECT id, queue, 'createimage2', '', now() FROM unnest($1::text[], $2::text[]) AS t(id, queue)
         ON CONFLICT (id) DO UPDATE SET last_seen = now()",
    )
    .bind(ids)
    .bind(queues)
    .execute(pool)
    .await
    .map(drop)
}

async fn heartbeat(
    pool: PgPool,
    workers: Vec<(String, String)>,
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
            .run_until_cancelled(register_workers(&pool, &workers))
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
async fn reap(
    pool: PgPool,
    queues: Vec<(String, Duration)>,
    config: QueueConfig,
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
                Some(Ok(0)) => {}
                Some(Ok(count)) => {
                    tracing::warn!(job.queue = %queue, count, "reaped abandoned jobs")
                }
                Some(Err(error)) => {
                    tracing::warn!(job.queue = %queue, error = %error, "reaping failed")
                }
            }
        }
    }
}

/// One reaper pass over a queue. Public for tests and the ops command.
pub async fn reap_queue(
    pool: &PgPool,
    queue: &str,
    dead_worker_after: Duration,
    stuck_after: Duration,
) -> sqlx::Result<u64> {
    sqlx::query(
        "WITH abandoned AS (
             SELECT j.id FROM apalis.jobs j
               LEFT JOIN apalis.workers w ON w.id = j.lock_by
              WHERE j.job_type = $1 AND j.status IN ('Queued', 'Running')
                AND (w.id IS NULL
                     OR w.last_seen < now() - make_interval(secs => $2)
                     OR j.lock_at < now() - make_interval(secs => $3))
                FOR UPDATE OF j SKIP LOCKED
         )
         UPDATE apalis.jobs j
            SET status = CASE WHEN j.attempts >= j.max_attempts THEN 'Failed' ELSE 'Pending' END,
                done_at = CASE WHEN j.attempts >= j.max_attempts THEN now() END,
                run_at = now(),
                lock_by = CASE WHEN j.attempts >= j.max_attempts THEN j.lock_by END,
                lock_at = CASE WHEN j.attempts >= j.max_attempts THEN j.lock_at END,
                last_result = jsonb_build_object('Err', 'abandoned by worker ' || coalesce(j.lock_by, '?')
                                                 || ' (stopped heartbeating or exceeded its timeout)')
           FROM abandoned
          WHERE j.id = abandoned.id",
    )
    .bind(queue)
    .bind(dead_worker_after.as_secs_f64())
    .bind(stuck_after.as_secs_f64())
    .execute(pool)
    .await
    .map(|r| r.rows_affected())
}

/// Wakes the runner of a queue when apalis' trigger announces an immediate job for it. Reconnects after a
/// database outage; meanwhile the runners' poll keeps work moving.
async fn listen_for_inserts(
    pool: PgPool,
    wakers: HashMap<String, Arc<Notify>>,
    stop: CancellationToken,
) {
    #[derive(serde::Deserialize)]
    struct Insert {
        job_type: String,
    }
    loop {
        let connected = stop
            .run_until_cancelled(PgListener::connect_with(&pool))
            .await;
        let mut listener = match connected {
            None => return,
            Some(Ok(listener)) => listener,
            Some(Err(error)) => {
                tracing::warn!(error = %error, "LISTEN connection failed; retrying");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        match stop
            .run_until_cancelled(listener.listen(INSERT_CHANNEL))
            .await
        {
            None => return,
            Some(Ok(())) => {}
            Some(Err(error)) => {
                tracing::warn!(error = %error, "LISTEN failed; retrying");
                if stop
                    .run_until_cancelled(tokio::time::sleep(Duration::from_secs(1)))
                    .await
                    .is_none()
                {
                    return;
                }
                continue;
            }
        }
        loop {
            let notification = tokio::select! {
                () = stop.cancelled() => return,
                notification = listener.try_recv() => notification,
            };
            match notification {
                Ok(Some(notification)) => {
                    if let Ok(insert) = serde_json::from_str::<Insert>(notification.payload())
                        && let Some(wake) = wakers.get(&insert.job_type)
                    {
                        wake.notify_one();
                    }
                }
                Ok(None) => {
                    // Connection lost and re-established by sqlx: notifications may have been missed.
                    wakers.values().for_each(|wake| wake.notify_one());
                }
                Err(error) => {
                    tracing::warn!(error = %error, "LISTEN connection broke; reconnecting");
                    break;
                }
            }
        }
    }
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

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}
