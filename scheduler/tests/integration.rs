//! The scheduler against real Postgres: replicas agree on one job per tick; downtime is caught up once.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use jobs::{kinds::PruneFinishedJobs, schedule::Schedule, telemetry::Metrics};
use queue::{EnqueueOptions, NewJob};
use scheduler::Scheduler;
use testkit::TestDb;
use tokio_util::sync::CancellationToken;

fn every_five_minutes() -> Vec<Schedule> {
    vec![Schedule::new("prune_every_5m", "*/5 * * * *", || {
        NewJob::of(&PruneFinishedJobs {}, EnqueueOptions::default())
    })]
}

async fn scheduled_jobs(db: &TestDb) -> Vec<String> {
    sqlx::query_scalar("SELECT idempotency_key FROM apalis.jobs WHERE job_type = 'prune_finished_jobs' ORDER BY run_at")
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

fn at(time: &str) -> DateTime<Utc> {
    time.parse().unwrap()
}

#[tokio::test]
async fn three_schedulers_running_at_once_enqueue_exactly_one_job_per_tick() {
    let db = TestDb::new().await;
    let stop = CancellationToken::new();
    let replicas: Vec<_> = (0..3)
        .map(|_| {
            let replica = Scheduler::with_parts(
                db.pool.clone(),
                jobs::schedule::schedules(),
                Metrics::new("scheduler"),
                None,
            );
            tokio::spawn(replica.run_until_stopped(stop.clone()))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    for replica in replicas {
        replica.await.unwrap().unwrap();
    }
    let now = Utc::now();
    let mut expected: Vec<String> = jobs::schedule::schedules()
        .iter()
        .map(|s| s.tick_key(s.latest_tick(now).unwrap()))
        .collect();
    expected.sort();
    let mut enqueued: Vec<String> = sqlx::query_scalar("SELECT idempotency_key FROM apalis.jobs")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    enqueued.sort();
    assert_eq!(
        enqueued, expected,
        "one job per schedule for its latest tick, whatever the number of replicas"
    );
}

#[tokio::test]
async fn replicas_racing_on_the_same_tick_produce_one_job() {
    let db = TestDb::new().await;
    let barrier = Arc::new(tokio::sync::Barrier::new(3));
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let (pool, barrier) = (db.pool.clone(), barrier.clone());
            tokio::spawn(async move {
                let replica = Scheduler::with_parts(
                    pool,
                    every_five_minutes(),
                    Metrics::new("scheduler"),
                    None,
                );
                barrier.wait().await;
                replica.tick_at(at("2026-11-24T10:32:00Z")).await.unwrap()
            })
        })
        .collect();
    let mut new = 0;
    for task in tasks {
        new += task.await.unwrap();
    }
    assert_eq!(new, 1);
    assert_eq!(
        scheduled_jobs(&db).await,
        vec!["prune_every_5m:2026-11-24T10:30:00Z"]
    );
}

#[tokio::test]
async fn ticks_missed_during_downtime_are_caught_up_once_not_replayed() {
    let db = TestDb::new().await;
    let scheduler = Scheduler::with_parts(
        db.pool.clone(),
        every_five_minutes(),
        Metrics::new("scheduler"),
        None,
    );
    assert_eq!(
        scheduler.tick_at(at("2026-11-24T10:32:00Z")).await.unwrap(),
        1
    );
    assert_eq!(
        scheduler.tick_at(at("2026-11-24T10:33:00Z")).await.unwrap(),
        0,
        "same tick again"
    );
    // Down from 10:33 until 11:12: seven ticks were missed; only the latest is enqueued.
    assert_eq!(
        scheduler.tick_at(at("2026-11-24T11:12:00Z")).await.unwrap(),
        1
    );
    assert_eq!(
        scheduled_jobs(&db).await,
        vec![
            "prune_every_5m:2026-11-24T10:30:00Z",
            "prune_every_5m:2026-11-24T11:10:00Z"
        ]
    );
}

#[tokio::test]
async fn the_scheduler_exports_queue_gauges_on_its_metrics_listener() {
    let db = TestDb::new().await;
    let listener = jobs::telemetry::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let scheduler = Scheduler::with_parts(
        db.pool.clone(),
        every_five_minutes(),
        Metrics::new("scheduler"),
        Some(listener),
    );
    let addr = scheduler.ops_addr().unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(scheduler.run_until_stopped(stop.clone()));
    // The first loop iteration enqueues the latest tick, due in the past: one waiting job.
    let mut text = String::new();
    for _ in 0..50 {
        text = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains("createimage2_jobs{queue=\"prune_finished_jobs\",state=\"waiting\"} 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        text.contains("createimage2_jobs{queue=\"prune_finished_jobs\",state=\"waiting\"} 1"),
        "{text}"
    );
    assert!(text.contains("createimage2_build_info{role=\"scheduler\""));
    let ready = reqwest::get(format!("http://{addr}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    stop.cancel();
    task.await.unwrap().unwrap();
}
