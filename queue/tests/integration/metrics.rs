//! The runtime's series and the queue gauges, registered on the harness's own registry under the namespace
//! `queue` (an application passes its own, e.g. `createimage2`).

use std::time::Duration;

use queue::EnqueueOptions;

use crate::support::{TestQueue, record};

#[tokio::test]
async fn queue_gauges_match_a_known_queue_state_and_job_metrics_are_recorded() {
    let mut app = TestQueue::builder().without_worker().spawn().await;
    for label in ["a", "b", "c"] {
        app.enqueue(&record(label)).await;
    }
    app.enqueue_with(
        &record("later"),
        EnqueueOptions::delayed(Duration::from_secs(3600)),
    )
    .await;
    sqlx::query(
        "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, done_at)
         VALUES ('dead-one', 'test_record', '\\x7b7d', 'Failed', 5, 5, now(), now())",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO apalis.workers (id, worker_type, storage_name, layers, last_seen)
         VALUES ('silent', 'test_record', 'createimage2', '', now() - interval '5 minutes')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, lock_by, lock_at)
         VALUES ('stuck-one', 'test_record', '\\x7b7d', 'Running', 1, 5, now(), 'silent', now())",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query("UPDATE apalis.jobs SET run_at = now() - interval '90 seconds' WHERE job = convert_to('{\"label\":\"a\"}', 'UTF8')")
        .execute(&app.pool)
        .await
        .unwrap();
    // What an application's /metrics handler does before it renders: one grouped query into the gauges.
    let known: Vec<&str> = app.registry.queues().collect();
    app.metrics
        .refresh_queue_gauges(&app.pool, &known)
        .await
        .unwrap();
    let text = app.metrics_text();
    for line in [
        "queue_jobs{queue=\"test_record\",state=\"waiting\"} 3",
        "queue_jobs{queue=\"test_record\",state=\"scheduled\"} 1",
        "queue_jobs{queue=\"test_record\",state=\"running\"} 1",
        "queue_jobs_stuck{queue=\"test_record\"} 1",
        "queue_jobs{queue=\"test_record\",state=\"dead\"} 1",
        // A known queue without jobs reads zero rather than vanishing.
        "queue_jobs{queue=\"test_slow\",state=\"waiting\"} 0",
    ] {
        assert!(text.contains(line), "missing {line}");
    }
    let age_line = text
        .lines()
        .find(|l| l.starts_with("queue_job_oldest_waiting_age_seconds{queue=\"test_record\"}"))
        .unwrap();
    let age: f64 = age_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((90.0..100.0).contains(&age), "{age_line}");
    app.discard_unrun_jobs().await;
    app.expect_dead(0);
    app.finish().await;
}

#[tokio::test]
async fn completed_jobs_are_counted_and_their_wait_and_duration_observed() {
    let app = TestQueue::spawn().await;
    for i in 0..5 {
        app.enqueue(&record(&format!("m{i}"))).await;
    }
    app.drain().await;
    let text = app.metrics_text();
    assert!(
        text.contains("queue_jobs_completed_total{queue=\"test_record\"} 5"),
        "{text}"
    );
    assert!(text.contains("queue_job_wait_seconds_count{queue=\"test_record\"} 5"));
    assert!(
        text.contains("queue_job_duration_seconds_count{outcome=\"done\",queue=\"test_record\"} 5")
    );
    assert!(text.contains("queue_workers_alive{queue=\"test_record\"} 1"));
    app.finish().await;
}
