//! The same queue measurements with apalis-postgres 1.0 at its defaults (batch 10, no pubsub, polling on its
//! heartbeat), one worker with concurrency 50 — the configuration of the shared doc's table — for a ratio
//! measured in the same run.

use std::{
    sync::OnceLock,
    time::{Duration, Instant},
};

use apalis::prelude::*;
use apalis_postgres::{Config, PostgresStorage};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::sync::mpsc;

pub const QUEUE: &str = "loadtest_apalis";

static STARTS: OnceLock<mpsc::UnboundedSender<(u64, Instant)>> = OnceLock::new();

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApalisNoop {
    timed: Option<u64>,
}

async fn handle(job: ApalisNoop) -> Result<(), BoxDynError> {
    if let (Some(sequence), Some(starts)) = (job.timed, STARTS.get()) {
        let _ = starts.send((sequence, Instant::now()));
    }
    Ok(())
}

pub struct Measured {
    pub enqueue_per_second: f64,
    pub burn_down_per_second: f64,
    /// Insert→start of single jobs into the idle worker (ms), each capped at 40 s.
    pub starts_ms: Vec<f64>,
}

pub async fn measure(pool: &PgPool, jobs: usize, samples: usize) -> anyhow::Result<Measured> {
    let (sender, mut starts) = mpsc::unbounded_channel();
    STARTS.set(sender).ok();
    let storage: PostgresStorage<ApalisNoop> =
        PostgresStorage::new(pool).with_config(Config::default().queue(QUEUE));

    let started = Instant::now();
    let mut sink = storage.clone();
    let mut tasks = futures::stream::iter(
        (0..jobs).map(|_| TaskBuilder::new(ApalisNoop { timed: None }).build()),
    );
    sink.push_all(&mut tasks)
        .await
        .map_err(|e| anyhow::anyhow!("apalis push_all: {e:?}"))?;
    let enqueue_per_second = jobs as f64 / started.elapsed().as_secs_f64();
    // Statistics for the backlog, as for ours.
    sqlx::query("ANALYZE apalis.jobs").execute(pool).await?;

    let worker = WorkerBuilder::new(format!("loadtest-{}", uuid::Uuid::new_v4().simple()))
        .backend(storage.clone())
        .concurrency(50)
        .build(handle);
    let started = Instant::now();
    let running = tokio::spawn(async move { worker.run().await });
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM apalis.jobs WHERE job_type = $1 AND status <> 'Done'",
        )
        .bind(QUEUE)
        .fetch_one(pool)
        .await?;
        if left == 0 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "apalis burn-down did not finish in 10 minutes ({left} left)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let burn_down_per_second = jobs as f64 / started.elapsed().as_secs_f64();

    let mut starts_ms = Vec::new();
    for sequence in 0..samples as u64 {
        let sent = Instant::now();
        sink.push(ApalisNoop {
            timed: Some(sequence),
        })
        .await
        .map_err(|e| anyhow::anyhow!("apalis push: {e:?}"))?;
        match tokio::time::timeout(Duration::from_secs(40), starts.recv()).await {
            Ok(Some((_, at))) => starts_ms.push((at - sent).as_secs_f64() * 1000.0),
            _ => starts_ms.push(40_000.0),
        }
    }
    running.abort();
    Ok(Measured {
        enqueue_per_second,
        burn_down_per_second,
        starts_ms,
    })
}
