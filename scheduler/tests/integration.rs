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
    let started = Utc::now();
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
    // The latest tick at the start, and any tick that fell while they ran (a minute may turn meanwhile; a tick in
    // the last second may or may not have been reached before they stopped).
    let ended = Utc::now();
    let ticks_within = |until: DateTime<Utc>| -> Vec<String> {
        let mut keys: Vec<String> = jobs::schedule::schedules()
            .iter()
            .flat_map(|s| {
                let first = s.latest_tick(started).unwrap();
                s.recent_ticks(until, 3)
                    .into_iter()
                    .filter(move |tick| *tick >= first)
                    .map(|tick| s.tick_key(tick))
                    .collect::<Vec<_>>()
            })
            .collect();
        keys.sort();
        keys
    };
    let (certain, possible) = (
        ticks_within(ended - chrono::Duration::seconds(1)),
        ticks_within(ended),
    );
    let enqueued: Vec<(String, i64)> =
        sqlx::query_as("SELECT idempotency_key, count(*) FROM apalis.jobs GROUP BY 1 ORDER BY 1")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    for (key, count) in &enqueued {
        assert_eq!(*count, 1, "{key} enqueued {count} times");
        assert!(possible.contains(key), "{key} is not a tick of the run");
    }
    for key in &certain {
        assert!(
            enqueued.iter().any(|(k, _)| k == key),
            "one job per schedule for its latest tick, whatever the number of replicas: {key} missing"
        );
    }
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

#[tokio::test]
async fn the_scheduler_exports_the_fleets_pauses_schedules_and_its_own_pool_once() {
    let db = TestDb::new().await;
    let listener = jobs::telemetry::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let metrics = Metrics::new("scheduler");
    metrics.watch_pool(&db.pool);
    let scheduler = Scheduler::with_parts(
        db.pool.clone(),
        every_five_minutes(),
        metrics,
        Some(listener),
    );
    let addr = scheduler.ops_addr().unwrap();
    let scrape = || async move {
        reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(scheduler.run_until_stopped(stop.clone()));
    testkit::eventually("the tick to be enqueued", || async {
        scheduled_jobs(&db).await.len() == 1
    })
    .await;
    let text = scrape().await;
    for line in [
        // No tick has succeeded yet.
        "createimage2_schedule_last_success_timestamp_seconds{schedule=\"prune_every_5m\"} 0",
        "createimage2_schedule_interval_seconds{schedule=\"prune_every_5m\"} 300",
        "createimage2_queue_paused{queue=\"prune_finished_jobs\"} 0",
        "createimage2_upstream_paused{kind=\"operator\",upstream=\"kie\"} 0",
        "createimage2_upstream_paused{kind=\"automatic\",upstream=\"kie\"} 0",
        "createimage2_db_pool_max_connections ",
        "createimage2_db_pool_connections{state=\"in_use\"}",
        "process_resident_memory_bytes ",
    ] {
        assert!(text.contains(line), "missing {line}:\n{text}");
    }

    // The tick's job finishes; an operator pauses a queue and kie; the next scrape says so.
    sqlx::query("UPDATE apalis.jobs SET status = 'Done', done_at = now() WHERE job_type = 'prune_finished_jobs'")
        .execute(&db.pool)
        .await
        .unwrap();
    let operator = jobs::operator::Operator::new("dana", jobs::operator::Via::Cli).unwrap();
    operator
        .pause_queue(&db.pool, "prune_finished_jobs", "maintenance")
        .await
        .unwrap();
    operator
        .pause_upstream(&db.pool, "kie", "incident")
        .await
        .unwrap();
    let text = scrape().await;
    assert!(text.contains("createimage2_queue_paused{queue=\"prune_finished_jobs\"} 1"));
    assert!(text.contains("createimage2_upstream_paused{kind=\"operator\",upstream=\"kie\"} 1"));
    let last: f64 = text
        .lines()
        .find(|l| {
            l.starts_with(
                "createimage2_schedule_last_success_timestamp_seconds{schedule=\"prune_every_5m\"}",
            )
        })
        .and_then(|l| l.rsplit(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    let now = Utc::now().timestamp() as f64;
    assert!(
        (now - 60.0..=now + 1.0).contains(&last),
        "{last} is not about {now}"
    );
    stop.cancel();
    task.await.unwrap().unwrap();
}
