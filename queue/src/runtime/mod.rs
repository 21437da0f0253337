//! The worker runtime: claims jobs from `apalis.jobs`, runs them, records outcomes, hands back what it cannot
//! finish. One runner per queue a process serves, each with its own concurrency.
//!
//! Guard rails (each against a sharp edge of apalis' own worker; see the crate docs):
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
//!
//! The seams: [`runner`] claims and runs one queue's jobs; [`completer`] writes their completions in batches;
//! [`reaper`] registers and heartbeats this process's workers and hands back what dead ones left; [`listener`]
//! holds the LISTEN connection that wakes runners. This module starts them together and stops them in order.

pub mod completer;
pub mod listener;
pub mod reaper;
pub mod runner;

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use chrono::Utc;
use sqlx::PgPool;
use tokio::{sync::Notify, task::JoinSet};
use tokio_util::sync::CancellationToken;

pub use completer::COMPLETE_SQL;
pub use listener::INSERT_CHANNEL;
pub use runner::{CLAIM_BATCH_MAX, CLAIM_SQL};

/// The `apalis.workers.storage_name` of workers whose application names none ([`Worker::storage_name`]).
pub const DEFAULT_STORAGE_NAME: &str = "queue";
pub use reaper::{Reaped, reap_queue};

use crate::{QueueConfig, QueueMetrics, Registry};
use runner::Runner;

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

/// A worker process's runtime, before it starts: the registry of kinds, the application context every job
/// receives, settings and metrics.
pub struct Worker<C> {
    pool: PgPool,
    registry: Registry<C>,
    app: C,
    config: QueueConfig,
    metrics: Option<QueueMetrics>,
    storage_name: String,
    listen_pool: Option<PgPool>,
}

impl<C: Clone + Send + Sync + 'static> Worker<C> {
    /// A worker for the kinds in `registry`, each attempt receiving `app`, with [`QueueConfig::default`] and
    /// metrics on a registry of its own until [`Worker::metrics`] names one.
    pub fn new(pool: PgPool, registry: Registry<C>, app: C) -> Self {
        Self {
            pool,
            registry,
            app,
            config: QueueConfig::default(),
            metrics: None,
            storage_name: DEFAULT_STORAGE_NAME.to_owned(),
            listen_pool: None,
        }
    }

    /// LISTENs for new jobs through a connection made with `pool`'s options rather than the worker's own pool's:
    /// for a worker whose queries go through a transaction-mode pooler (PgBouncer), which cannot hold a LISTEN,
    /// `pool` names the database directly. Only its connect options are used; it lends no connection.
    pub fn listen_via(mut self, pool: PgPool) -> Self {
        self.listen_pool = Some(pool);
        self
    }

    /// The name this application's workers are listed under in `apalis.workers.storage_name` (what
    /// [`crate::ops::workers`] selects by), so operators see this fleet's workers and no one else's.
    pub fn storage_name(mut self, name: impl Into<String>) -> Self {
        self.storage_name = name.into();
        self
    }

    pub fn config(mut self, config: QueueConfig) -> Self {
        self.config = config;
        self
    }

    /// Records into `metrics` (registered on the application's `/metrics` registry).
    pub fn metrics(mut self, metrics: QueueMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Starts runners for `plans` (each queue must be in the registry) and returns at once. Cancelling
    /// `shutdown` begins the drain; [`RunningWorker::wait`] returns when it is over.
    pub async fn start(
        self,
        plans: Vec<QueuePlan>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<RunningWorker> {
        let Self {
            pool,
            registry,
            app,
            config,
            metrics,
            storage_name,
            listen_pool,
        } = self;
        let metrics = match metrics {
            Some(metrics) => metrics,
            None => QueueMetrics::register(&prometheus::Registry::new(), "queue")?,
        };
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
            runners.push(Arc::new(Runner::new(runner::Setup {
                handler,
                concurrency: plan.concurrency,
                health: Arc::new(QueueHealth::new(&plan.queue, worker_id.clone())),
                worker_id,
                pool: pool.clone(),
                app: app.clone(),
                wake,
                config: config.clone(),
                metrics: &metrics,
            })));
        }
        let health = Arc::new(WorkerHealth {
            queues: runners.iter().map(|r| r.health.clone()).collect(),
            draining: AtomicBool::new(false),
            stale_after: (config.poll_interval * 10).max(Duration::from_secs(15)),
        });

        // Register before the first claim, so the reaper and the gauges see a live worker behind each claimed row.
        // If the database is down now, the heartbeat task keeps trying and the runners report not-ready until it
        // answers.
        let registration = reaper::Registration {
            workers: runners
                .iter()
                .map(|r| (r.worker_id.clone(), r.queue.to_owned()))
                .collect(),
            storage_name,
        };
        if let Err(error) = reaper::register_workers(&pool, &registration).await {
            tracing::warn!(error = %error, "could not register workers yet; will retry");
        }

        let worker_ids: Vec<String> = registration
            .workers
            .iter()
            .map(|(id, _)| id.clone())
            .collect();
        let deregister_pool = pool.clone();
        let background = CancellationToken::new();
        let mut tasks = JoinSet::new();
        tasks.spawn(listener::listen_for_inserts(
            listen_pool.unwrap_or_else(|| pool.clone()),
            wakers,
            background.clone(),
        ));
        tasks.spawn(reaper::heartbeat(
            pool.clone(),
            registration,
            config.heartbeat_interval,
            background.clone(),
        ));
        let queues: Vec<(String, Duration)> = runners
            .iter()
            .map(|r| (r.queue.to_owned(), r.timeout()))
            .collect();
        tasks.spawn(reaper::reap(
            pool.clone(),
            queues,
            config.clone(),
            metrics.clone(),
            background.clone(),
        ));

        let health_for_task = health.clone();
        let handle = tokio::spawn(async move {
            let mut supervised = JoinSet::new();
            for runner in runners {
                supervised.spawn(supervise(runner, metrics.clone(), shutdown.clone()));
            }
            shutdown.cancelled().await;
            health_for_task.draining.store(true, Ordering::Relaxed);
            while supervised.join_next().await.is_some() {}
            background.cancel();
            while tasks.join_next().await.is_some() {}
            // A clean stop leaves no worker behind in the console or the gauges: its rows go, unless a job is
            // still locked by one (a hand-back that failed), which the reaper must then see.
            if let Err(error) = reaper::deregister_workers(&deregister_pool, &worker_ids).await {
                tracing::warn!(error = %error, "could not deregister workers; they age out");
            }
        });
        Ok(RunningWorker { health, handle })
    }
}

/// Keeps a runner going: a runner that panics is started again after a pause, and counted.
async fn supervise<C: Clone + Send + Sync + 'static>(
    runner: Arc<Runner<C>>,
    metrics: QueueMetrics,
    shutdown: CancellationToken,
) {
    let queue = runner.queue;
    metrics.touch(queue);
    metrics.workers_alive.with_label_values(&[queue]).inc();
    loop {
        let result = tokio::spawn(runner.clone().run(shutdown.clone())).await;
        match result {
            Ok(()) => break,
            Err(error) => {
                runner.health.running.store(false, Ordering::Relaxed);
                runner.health.restarts.fetch_add(1, Ordering::Relaxed);
                metrics
                    .job_runner_restarts_total
                    .with_label_values(&[queue])
                    .inc();
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

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}
