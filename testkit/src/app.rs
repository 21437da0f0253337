//! `TestApp`: the stack on port 0 against a fresh database.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use jobs::{
    config::{QueueConfig, StorageConfig},
    queue::{
        self, EnqueueOptions, Enqueued, Job, QueuePlan, Registry, Services, WorkerHealth, ops,
    },
    storage::Storage,
    telemetry::{self, Metrics},
};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{TestDb, test_jobs};

/// Options for a [`TestApp`].
pub struct TestAppBuilder {
    registry: Registry,
    queue_config: QueueConfig,
    concurrency: usize,
    start_worker: bool,
}

impl TestAppBuilder {
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

    pub async fn spawn(self) -> TestApp {
        let db = TestDb::new().await;
        let pool = db.pool.clone();
        test_jobs::create_table(&pool).await;
        let temp = tempfile::tempdir().unwrap();
        let s3 = fakes::s3::S3Server::start(
            temp.path(),
            "127.0.0.1:0".parse().unwrap(),
            "testkey",
            "testsecret",
        )
        .await
        .unwrap();
        let storage = Storage::new(&StorageConfig {
            endpoint: s3.endpoint(),
            region: "auto".into(),
            bucket: "test-bucket".into(),
            access_key_id: "testkey".into(),
            secret_access_key: "testsecret".to_owned().into(),
        });
        storage.ensure_bucket().await.unwrap();

        let shutdown = CancellationToken::new();
        let metrics = Metrics::new("test");
        let services = Arc::new(Services::new(self.queue_config.clone(), metrics.clone()));
        let worker = if self.start_worker {
            let plans = self
                .registry
                .queues()
                .map(|queue| QueuePlan {
                    queue: queue.to_owned(),
                    concurrency: self.concurrency,
                })
                .collect();
            let ops = telemetry::bind("127.0.0.1:0".parse().unwrap())
                .await
                .unwrap();
            let worker = worker::Worker::with_parts(
                pool.clone(),
                self.registry.clone(),
                services,
                plans,
                Some(ops),
            );
            let worker_ops_addr = worker.ops_addr();
            Some((
                worker.start(shutdown.clone()).await.unwrap(),
                worker_ops_addr,
            ))
        } else {
            None
        };
        let state = api::AppState {
            pool: pool.clone(),
            metrics: metrics.clone(),
            worker_health: None,
            owns_queue_gauges: true,
        };
        let listener = telemetry::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let ops_listener = telemetry::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let api = api::Api::with_parts(state, listener, Some(ops_listener));
        let (api_addr, ops_addr) = (api.addr(), api.ops_addr().unwrap());
        let api_task = tokio::spawn(api.run_until_stopped(shutdown.clone()));
        let (worker, worker_ops_addr) = match worker {
            Some((started, addr)) => (Some(started), addr),
            None => (None, None),
        };
        TestApp {
            pool,
            api_addr,
            ops_addr,
            worker_ops_addr,
            client: reqwest::Client::new(),
            storage,
            metrics,
            registry: self.registry,
            worker_health: worker.as_ref().map(|w| w.health.clone()),
            worker,
            api_task: Some(api_task),
            shutdown,
            expected_dead: 0,
            finished: false,
            _s3: s3,
            _temp: temp,
            db,
        }
    }
}

/// The stack on port 0: api, a worker serving every queue of its registry, the S3 stand-in.
pub struct TestApp {
    pub pool: PgPool,
    pub api_addr: SocketAddr,
    /// The api's `/metrics`, `/healthz`, `/readyz` listener.
    pub ops_addr: SocketAddr,
    /// The worker's ops listener.
    pub worker_ops_addr: Option<SocketAddr>,
    pub client: reqwest::Client,
    pub storage: Storage,
    pub metrics: Metrics,
    pub registry: Registry,
    pub worker_health: Option<Arc<WorkerHealth>>,
    worker: Option<worker::StartedWorker>,
    api_task: Option<JoinHandle<anyhow::Result<()>>>,
    shutdown: CancellationToken,
    expected_dead: i64,
    finished: bool,
    _s3: fakes::s3::S3Server,
    _temp: tempfile::TempDir,
    pub db: TestDb,
}

impl TestApp {
    /// The default app: the production registry plus test jobs, concurrency 10, a 200 ms poll.
    pub fn builder() -> TestAppBuilder {
        TestAppBuilder {
            registry: test_jobs::registry(),
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

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.api_addr, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request reaches the api")
    }

    pub async fn get_with_key(&self, path: &str, api_key: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(api_key)
            .send()
            .await
            .expect("request reaches the api")
    }

    pub async fn healthz(&self) -> reqwest::Response {
        self.get("/healthz").await
    }

    pub async fn readyz(&self) -> reqwest::Response {
        self.get("/readyz").await
    }

    /// The api's metrics page.
    pub async fn metrics_text(&self) -> String {
        let url = format!("http://{}/metrics", self.ops_addr);
        self.client
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn enqueue<J: Job>(&self, job: &J) -> Enqueued {
        queue::enqueue(&self.pool, job).await.unwrap()
    }

    pub async fn enqueue_with<J: Job>(&self, job: &J, options: EnqueueOptions) -> Enqueued {
        queue::enqueue_with(&self.pool, job, options).await.unwrap()
    }

    /// Waits until no job is waiting, scheduled or running (retries and snoozes included). Panics after 30 s.
    pub async fn drain(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let unfinished: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM apalis.jobs WHERE status IN ('Pending', 'Queued', 'Running')",
            )
            .fetch_one(&self.pool)
            .await
            .unwrap();
            if unfinished == 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "queue did not drain in 30 s: {unfinished} jobs left"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Declares that this test leaves `n` dead jobs on purpose.
    pub fn expect_dead(&mut self, n: i64) {
        self.expected_dead = n;
    }

    /// Status of one job row.
    pub async fn job_status(&self, id: &str) -> String {
        ops::find_job(&self.pool, id)
            .await
            .unwrap()
            .expect("job exists")
            .status
    }

    /// Stops api and worker (draining), then fails if jobs were left unrun, running or dead beyond those
    /// declared with [`expect_dead`](Self::expect_dead).
    pub async fn finish(mut self) {
        self.stop().await;
        let stats = ops::queue_stats(&self.pool).await.unwrap();
        let unrun: Vec<_> = stats
            .iter()
            .filter(|s| s.waiting + s.scheduled + s.running > 0)
            .collect();
        assert!(unrun.is_empty(), "test left jobs unrun: {unrun:?}");
        let dead: i64 = stats.iter().map(|s| s.dead).sum();
        let dead_jobs = ops::dead_jobs(&self.pool, None, 20).await.unwrap();
        assert_eq!(
            dead, self.expected_dead,
            "unexpected dead jobs: {dead_jobs:#?}"
        );
        self.finished = true;
    }

    /// Stops api and worker (draining) without checking the queue.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(worker) = self.worker.take() {
            worker.wait().await;
        }
        if let Some(api) = self.api_task.take() {
            api.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if !self.finished && !std::thread::panicking() {
            panic!(
                "TestApp dropped without finish(): call app.finish().await so leftover jobs fail the test"
            );
        }
    }
}
