//! The scheduler role: enqueues periodic work at its ticks, and nothing else.
//!
//! Invariant: the scheduler only enqueues. Every tick is enqueued with the idempotency key
//! `<schedule>:<tick>`, so N replicas produce one job per tick; after downtime only the latest missed tick is
//! enqueued. It also exports the database-derived queue gauges (`createimage2_jobs`,
//! `createimage2_job_oldest_waiting_age_seconds`): one small role owns them, so scraping many workers does not
//! multiply them or the query behind them.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use jobs::{
    config::Config,
    schedule::Schedule,
    telemetry::{self, Metrics, OpsProbe},
};
use queue::Enqueued;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The longest the scheduler sleeps between checks, so clock jumps and new ticks are noticed.
const MAX_SLEEP: Duration = Duration::from_secs(30);

pub struct Scheduler {
    pool: PgPool,
    schedules: Arc<[Schedule]>,
    metrics: Metrics,
    ops_listener: Option<TcpListener>,
}

impl Scheduler {
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let pool = jobs::db::pool(&config.database)?;
        let listener = telemetry::bind(config.http.metrics_listen).await?;
        let metrics = Metrics::new("scheduler");
        metrics.watch_pool(&pool);
        Ok(Self::with_parts(
            pool,
            jobs::schedule::schedules(),
            metrics,
            Some(listener),
        ))
    }

    pub fn with_parts(
        pool: PgPool,
        schedules: Vec<Schedule>,
        metrics: Metrics,
        ops_listener: Option<TcpListener>,
    ) -> Self {
        Self {
            pool,
            schedules: schedules.into(),
            metrics,
            ops_listener,
        }
    }

    pub fn ops_addr(&self) -> Option<std::net::SocketAddr> {
        self.ops_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Enqueues the latest due tick of every schedule (idempotently). Returns how many were new.
    pub async fn tick_once(&self) -> anyhow::Result<usize> {
        tick_all(&self.pool, &self.schedules, Utc::now()).await
    }

    /// As [`tick_once`](Self::tick_once), as if the clock said `now`.
    pub async fn tick_at(&self, now: chrono::DateTime<Utc>) -> anyhow::Result<usize> {
        tick_all(&self.pool, &self.schedules, now).await
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        if let Some(listener) = self.ops_listener {
            let probe = Arc::new(QueueGaugeProbe {
                pool: self.pool.clone(),
                metrics: self.metrics.clone(),
                schedules: self.schedules.clone(),
            });
            tokio::spawn(telemetry::serve_ops(listener, probe, shutdown.clone()));
        }
        loop {
            if let Err(error) = tick_all(&self.pool, &self.schedules, Utc::now()).await {
                tracing::warn!(error = %error, "enqueueing scheduled ticks failed; will retry");
            }
            let now = Utc::now();
            let next = self.schedules.iter().filter_map(|s| s.next_tick(now)).min();
            let sleep = next
                .and_then(|n| (n - now).to_std().ok())
                .unwrap_or(MAX_SLEEP)
                .min(MAX_SLEEP);
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                // A little past the tick, so `latest_tick` sees it.
                () = tokio::time::sleep(sleep + Duration::from_millis(50)) => {}
            }
        }
    }
}

async fn tick_all(
    pool: &PgPool,
    schedules: &[Schedule],
    now: chrono::DateTime<Utc>,
) -> anyhow::Result<usize> {
    let mut new = 0;
    for schedule in schedules {
        let Some(tick) = schedule.latest_tick(now) else {
            continue;
        };
        if let Enqueued::New(id) = schedule.enqueue_tick(pool, tick).await? {
            tracing::info!(schedule = schedule.name, tick = %tick, job.id = %id, "enqueued scheduled job");
            new += 1;
        }
    }
    Ok(new)
}

/// The ops probe of a role that owns the database-derived queue gauges (scheduler, dev).
pub struct QueueGaugeProbe {
    pub pool: PgPool,
    pub metrics: Metrics,
    pub schedules: Arc<[Schedule]>,
}

impl OpsProbe for QueueGaugeProbe {
    fn metrics(&self) -> std::pin::Pin<Box<dyn Future<Output = String> + Send>> {
        let (pool, metrics, schedules) = (
            self.pool.clone(),
            self.metrics.clone(),
            self.schedules.clone(),
        );
        Box::pin(async move {
            let queues: Vec<&str> = jobs::kinds::registry().queues().collect();
            metrics
                .refresh_database_gauges(&pool, &queues, &schedules)
                .await;
            metrics.render()
        })
    }

    fn ready(&self) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>> {
        let pool = self.pool.clone();
        Box::pin(async move {
            if jobs::db::is_reachable(&pool).await {
                Ok(())
            } else {
                Err("database unreachable".into())
            }
        })
    }
}
