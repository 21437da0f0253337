//! The worker role: runs the queue layer's runners for the queues it is told to serve, and its ops listener.
//!
//! `build(config, registry, plans)` → [`Worker::run_until_stopped`]. Ops scale each queue independently by
//! starting workers with different `--queues` and `--concurrency`.

use std::{collections::HashMap, sync::Arc};

use anyhow::Context as _;
use jobs::{
    config::Config,
    services::{Pipeline, Services},
    telemetry::{self, Metrics, OpsProbe},
};
use queue::{QueuePlan, WorkerHealth};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The job kinds a worker can run, all taking this application's [`Services`].
pub type Registry = queue::Registry<Arc<Services>>;

/// Default concurrency of a queue when `--concurrency` does not name it.
pub const DEFAULT_CONCURRENCY: usize = 10;

/// Turns `--queues a,b` (or `all`) and `--concurrency a=50,b=5` into plans, checking every name against the
/// registry so a typo fails start-up instead of serving nothing.
pub fn plans(
    registry: &Registry,
    queues: &str,
    concurrency: &[String],
) -> anyhow::Result<Vec<QueuePlan>> {
    let mut limits = HashMap::new();
    for item in concurrency
        .iter()
        .flat_map(|c| c.split(','))
        .filter(|c| !c.is_empty())
    {
        let (queue, n) = item
            .split_once('=')
            .with_context(|| format!("--concurrency expects queue=N, got {item:?}"))?;
        let n: usize = n
            .parse()
            .with_context(|| format!("--concurrency {item:?}: N must be a positive number"))?;
        anyhow::ensure!(n > 0, "--concurrency {item:?}: N must be at least 1");
        limits.insert(queue.trim().to_owned(), n);
    }
    let selected: Vec<String> = if queues.trim() == "all" {
        registry.queues().map(str::to_owned).collect()
    } else {
        queues
            .split(',')
            .map(|q| q.trim().to_owned())
            .filter(|q| !q.is_empty())
            .collect()
    };
    let known: Vec<&str> = registry.queues().collect();
    for queue in selected.iter().chain(limits.keys()) {
        anyhow::ensure!(
            known.contains(&queue.as_str()),
            "unknown queue {queue:?}; known queues: {}",
            known.join(", ")
        );
    }
    anyhow::ensure!(!selected.is_empty(), "--queues names no queue");
    Ok(selected
        .into_iter()
        .map(|queue| QueuePlan {
            concurrency: limits.get(&queue).copied().unwrap_or(DEFAULT_CONCURRENCY),
            queue,
        })
        .collect())
}

/// The generation pipeline's clients, from configuration.
pub fn pipeline(config: &Config, metrics: Metrics) -> Pipeline {
    Pipeline {
        storage: jobs::storage::Storage::new(&config.storage).with_metrics(metrics.clone()),
        kie: jobs::kie::KieClient::new(&config.kie, metrics.clone()),
        kie_config: config.kie.clone(),
        generation: config.generation.clone(),
        public_base_url: config.http.public_base_url.clone(),
        stripe: config
            .stripe
            .clone()
            .map(|stripe| jobs::stripe::StripeClient::new(stripe, metrics.clone())),
    }
}

/// A worker ready to run.
pub struct Worker {
    pool: PgPool,
    registry: Registry,
    services: Arc<Services>,
    plans: Vec<QueuePlan>,
    ops_listener: Option<TcpListener>,
    listen_pool: Option<PgPool>,
}

impl Worker {
    /// Builds a worker with its own pool, metrics and ops listener (`METRICS_LISTEN_ADDR`; port 0 in tests).
    pub async fn build(
        config: &Config,
        registry: Registry,
        plans: Vec<QueuePlan>,
    ) -> anyhow::Result<Self> {
        let pool = jobs::db::worker_pool(&config.database)?;
        let metrics = Metrics::new("worker");
        metrics.watch_pool(&pool);
        let services = Arc::new(
            Services::new(config.queue.clone(), metrics.clone())
                .with_pipeline(pipeline(config, metrics)),
        );
        let listener = telemetry::bind(config.http.metrics_listen).await?;
        Ok(
            Self::with_parts(pool, registry, services, plans, Some(listener))
                .listen_via(jobs::db::listen_pool(&config.database)?),
        )
    }

    /// LISTENs through `pool` (a direct connection) rather than the query pool.
    pub fn listen_via(mut self, pool: PgPool) -> Self {
        self.listen_pool = Some(pool);
        self
    }

    /// Builds from shared parts (the `dev` command runs every role in one process). Without a listener the
    /// caller serves metrics and health.
    pub fn with_parts(
        pool: PgPool,
        registry: Registry,
        services: Arc<Services>,
        plans: Vec<QueuePlan>,
        ops_listener: Option<TcpListener>,
    ) -> Self {
        Self {
            pool,
            registry,
            services,
            plans,
            ops_listener,
            listen_pool: None,
        }
    }

    pub fn ops_addr(&self) -> Option<std::net::SocketAddr> {
        self.ops_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Starts the runners and returns their health handle together with a future that drains them once
    /// `shutdown` fires.
    pub async fn start(self, shutdown: CancellationToken) -> anyhow::Result<StartedWorker> {
        let mut worker =
            queue::Worker::new(self.pool.clone(), self.registry, self.services.clone());
        if let Some(listen_pool) = self.listen_pool {
            worker = worker.listen_via(listen_pool);
        }
        let running = worker
            .config(self.services.queue.clone())
            .metrics(self.services.metrics.queue.clone())
            .storage_name(jobs::services::WORKER_STORAGE_NAME)
            .start(self.plans, shutdown.clone())
            .await?;
        let health = running.health.clone();
        let ops_stop = CancellationToken::new();
        if let Some(listener) = self.ops_listener {
            let probe = Arc::new(WorkerProbe {
                metrics: self.services.metrics.clone(),
                health: health.clone(),
            });
            // The ops listener outlives `shutdown`: while draining, /readyz answers 503 ("draining") rather than
            // refusing connections; it closes once the drain is over.
            tokio::spawn(telemetry::serve_ops(listener, probe, ops_stop.clone()));
        }
        Ok(StartedWorker {
            health,
            running,
            ops_stop,
        })
    }

    /// Runs until `shutdown`, then drains: no new claims; in-flight jobs finish within the grace period or are
    /// handed back.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.start(shutdown).await?.wait().await;
        Ok(())
    }
}

/// A worker whose runners are going.
pub struct StartedWorker {
    pub health: Arc<WorkerHealth>,
    running: queue::RunningWorker,
    ops_stop: CancellationToken,
}

impl StartedWorker {
    /// Waits for the drain that follows shutdown.
    pub async fn wait(self) {
        self.running.wait().await;
        self.ops_stop.cancel();
    }
}

struct WorkerProbe {
    metrics: Metrics,
    health: Arc<WorkerHealth>,
}

impl OpsProbe for WorkerProbe {
    fn metrics(&self) -> std::pin::Pin<Box<dyn Future<Output = String> + Send>> {
        let metrics = self.metrics.clone();
        Box::pin(async move { metrics.render() })
    }

    fn ready(&self) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>> {
        let health = self.health.clone();
        Box::pin(async move { health.readiness() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_take_per_queue_concurrency_and_default_the_rest() {
        let registry = jobs::kinds::registry();
        let plans = plans(
            &registry,
            "prune_finished_jobs",
            &["prune_finished_jobs=3".into()],
        )
        .unwrap();
        assert_eq!(
            plans,
            vec![QueuePlan {
                queue: "prune_finished_jobs".into(),
                concurrency: 3
            }]
        );
        let all = super::plans(&registry, "all", &[]).unwrap();
        assert_eq!(all.len(), registry.queues().count());
        assert!(all.iter().all(|p| p.concurrency == DEFAULT_CONCURRENCY));
    }

    #[test]
    fn an_unknown_queue_name_is_refused_with_the_known_ones() {
        let registry = jobs::kinds::registry();
        let error = plans(&registry, "submitt", &[]).unwrap_err().to_string();
        assert!(
            error.contains("unknown queue \"submitt\"") && error.contains("prune_finished_jobs"),
            "{error}"
        );
        assert!(plans(&registry, "all", &["prune_finished_jobs=0".into()]).is_err());
    }
}
