//! `TestQueue`: a worker serving every test kind against a fresh database, with the helpers the tests share:
//! `drain()` to run the queue dry, extra workers (a second process, as it were), the metrics, and `finish()`
//! that fails a test leaving jobs unrun or dead unless it said it expects them.

use std::{sync::Arc, time::Duration};

use prometheus::Encoder as _;
use queue::{
    EnqueueOptions, Enqueued, Job, QueueConfig, QueueMetrics, QueuePlan, Registry, RunningWorker,
    Worker, WorkerHealth, testing,
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::{TestDb, kinds};

/// Options for a [`TestQueue`].
pub struct TestQueueBuilder {
    registry: Registry<()>,
    queue_config: QueueConfig,
    concurrency: usize,
    start_worker: bool,
}

impl TestQueueBuilder {
    pub fn queue_config(mut self, config: QueueConfig) -> Self {
        self.queue_config = config;
        self
    }

    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// Start without a worker (to look at queued rows before anything runs them).
    pub fn without_worker(mut self) -> Self {
        self.start_worker = false;
        self
    }

    pub async fn spawn(self) -> TestQueue {
        let db = TestDb::new().await;
        let pool = db.pool.clone();
        kinds::create_table(&pool).await;
        let prometheus = prometheus::Registry::new();
        let metrics = QueueMetrics::register(&prometheus, "queue").unwrap();
        let shutdown = CancellationToken::new();
        let worker = if self.start_worker {
            let plans = self
                .registry
                .queues()
                .map(|queue| QueuePlan {
                    queue: queue.to_owned(),
                    concurrency: self.concurrency,
                })
                .collect();
            let worker = Worker::new(pool.clone(), self.registry.clone(), ())
                .config(self.queue_config.clone())
                .metrics(metrics.clone())
                .start(plans, shutdown.clone())
                .await
                .expect("the worker starts");
            Some(worker)
        } else {
            None
        };
        TestQueue {
            pool,
            metrics,
            prometheus,
            registry: self.registry,
            worker_health: worker.as_ref().map(|w| w.health.clone()),
            worker,
            shutdown,
            expected_dead: 0,
            finished: false,
            db,
        }
    }
}

/// Runners started by [`TestQueue::start_worker`].
pub struct ExtraWorker {
    running: RunningWorker,
    stop: CancellationToken,
}

impl ExtraWorker {
    pub fn health(&self) -> &Arc<WorkerHealth> {
        &self.running.health
    }

    /// Signals shutdown without waiting for the drain.
    pub fn begin_shutdown(&self) {
        self.stop.cancel();
    }

    /// Shuts down and waits for the drain.
    pub async fn stop(self) {
        self.stop.cancel();
        self.running.wait().await;
    }
}

/// A fresh database with the queue's schema, and (unless built [`without_worker`](TestQueueBuilder::without_worker))
/// a worker serving every test kind.
pub struct TestQueue {
    pub pool: PgPool,
    /// The runtime's series, recorded by the worker and every extra worker.
    pub metrics: QueueMetrics,
    /// The registry [`metrics`](Self::metrics) is registered on (namespace `queue`).
    pub prometheus: prometheus::Registry,
    pub registry: Registry<()>,
    pub worker_health: Option<Arc<WorkerHealth>>,
    worker: Option<RunningWorker>,
    shutdown: CancellationToken,
    expected_dead: i64,
    finished: bool,
    pub db: TestDb,
}

impl TestQueue {
    /// The default: every test kind, concurrency 10, a 200 ms poll.
    pub fn builder() -> TestQueueBuilder {
        TestQueueBuilder {
            registry: kinds::registry(),
            queue_config: QueueConfig {
                poll_interval: Duration::from_millis(200),
                ..QueueConfig::default()
            },
            concurrency: 10,
            start_worker: true,
        }
    }

    pub async fn spawn() -> Self {
        Self::builder().spawn().await
    }

    /// The harness's metrics registry in Prometheus' text format (the queue gauges as last refreshed).
    pub fn metrics_text(&self) -> String {
        let mut text = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.prometheus.gather(), &mut text)
            .unwrap();
        String::from_utf8(text).unwrap()
    }

    pub async fn enqueue<J: Job>(&self, job: &J) -> Enqueued {
        queue::enqueue(&self.pool, job).await.unwrap()
    }

    pub async fn enqueue_with<J: Job>(&self, job: &J, options: EnqueueOptions) -> Enqueued {
        queue::enqueue_with(&self.pool, job, options).await.unwrap()
    }

    /// Waits until no job is waiting, scheduled or running (retries and snoozes included).
    pub async fn drain(&self) {
        testing::drain(&self.pool).await;
    }

    /// Starts another worker's runners on this database (its own worker ids, as a second process would have),
    /// serving `queues` as (name, concurrency), with `config`, recording into [`metrics`](Self::metrics).
    pub async fn start_worker(&self, queues: &[(&str, usize)], config: QueueConfig) -> ExtraWorker {
        let plans = queues
            .iter()
            .map(|(queue, concurrency)| QueuePlan {
                queue: (*queue).to_owned(),
                concurrency: *concurrency,
            })
            .collect();
        let stop = CancellationToken::new();
        let running = Worker::new(self.pool.clone(), self.registry.clone(), ())
            .config(config)
            .metrics(self.metrics.clone())
            .start(plans, stop.clone())
            .await
            .expect("the extra worker starts");
        ExtraWorker { running, stop }
    }

    /// Declares that this test leaves `n` dead jobs on purpose.
    pub fn expect_dead(&mut self, n: i64) {
        self.expected_dead = n;
    }

    /// Status of one job row.
    pub async fn job_status(&self, id: &str) -> queue::JobState {
        testing::job_status(&self.pool, id).await
    }

    /// Deletes every job row: for a test that deliberately leaves work unrun (jobs behind a stopped worker,
    /// rows it wrote by hand), which [`finish`](Self::finish) would otherwise report.
    pub async fn discard_unrun_jobs(&self) {
        testing::discard_unrun_jobs(&self.pool).await;
    }

    /// Stops the worker (draining), then fails if jobs were left unrun, running or dead beyond those declared
    /// with [`expect_dead`](Self::expect_dead).
    pub async fn finish(mut self) {
        if self.worker.is_some() {
            testing::settle_due_jobs(&self.pool).await;
        }
        self.stop().await;
        testing::assert_nothing_left(&self.pool, self.expected_dead).await;
        self.finished = true;
    }

    /// Stops the worker (draining) without checking the queue.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(worker) = self.worker.take() {
            worker.wait().await;
        }
    }
}

impl Drop for TestQueue {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if !self.finished && !std::thread::panicking() {
            panic!(
                "TestQueue dropped without finish(): call app.finish().await so leftover jobs fail the test"
            );
        }
    }
}
