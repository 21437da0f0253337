//! The reaper: jobs of a worker that stopped heartbeating (or has no row), and attempts stuck far past their
//! timeout, are handed back — or are dead, if out of attempts.

use std::time::Duration;

use queue::{JobState, QueueConfig, ops, runtime};

use crate::support::{TestQueue, count_runs};

#[tokio::test]
async fn the_reaper_hands_back_jobs_of_a_worker_that_stopped_heartbeating_or_has_no_row() {
    let mut app = TestQueue::builder().without_worker().spawn().await;
    sqlx::query(
        "INSERT INTO apalis.workers (id, worker_type, storage_name, layers, last_seen)
         VALUES ('dead-worker', 'test_record', 'createimage2', '', now() - interval '10 minutes')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    // `lock_by` references no table (a foreign key would cost a lookup per claimed row), so a worker row
    // deleted by hand, or lost, reads as a dead worker too.
    for (id, attempts, worker) in [
        ("orphan", 1, "dead-worker"),
        ("orphan-out-of-attempts", 5, "dead-worker"),
        ("orphan-of-a-vanished-worker", 1, "vanished-worker"),
    ] {
        sqlx::query(
            "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, lock_by, lock_at)
             VALUES ($1, 'test_record', convert_to('{\"label\": \"orphan\"}', 'UTF8'), 'Running', $2, 5, now(),
                     $3, now() - interval '10 minutes')",
        )
        .bind(id)
        .bind(attempts)
        .bind(worker)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    let reaped = runtime::reap_queue(
        &app.pool,
        "test_record",
        Duration::from_secs(60),
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
    assert_eq!(
        reaped,
        runtime::Reaped {
            handed_back: 2,
            dead: 1
        }
    );
    assert_eq!(app.job_status("orphan").await, JobState::Pending);
    assert_eq!(
        app.job_status("orphan-of-a-vanished-worker").await,
        JobState::Pending
    );
    let dead = ops::find_job(&app.pool, "orphan-out-of-attempts")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(dead.status, JobState::Failed);
    assert!(
        dead.last_error
            .unwrap()
            .contains("abandoned by worker dead-worker")
    );

    // A live worker then runs the handed-back jobs (both carry the label "orphan").
    app.expect_dead(1);
    let worker = app
        .start_worker(&[("test_record", 2)], QueueConfig::default())
        .await;
    app.drain().await;
    worker.stop().await;
    assert_eq!(count_runs(&app, "orphan").await, 2);
    app.finish().await;
}

#[tokio::test]
async fn a_job_running_far_past_its_timeout_is_reaped_even_if_its_worker_heartbeats() {
    let app = TestQueue::builder().without_worker().spawn().await;
    sqlx::query(
        "INSERT INTO apalis.workers (id, worker_type, storage_name, layers, last_seen)
         VALUES ('live-but-stuck', 'test_record', 'createimage2', '', now())",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, lock_by, lock_at)
         VALUES ('stuck', 'test_record', convert_to('{\"label\": \"stuck\"}', 'UTF8'), 'Running', 1, 5, now(),
                 'live-but-stuck', now() - interval '2 hours')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let reaped = runtime::reap_queue(
        &app.pool,
        "test_record",
        Duration::from_secs(60),
        Duration::from_secs(90),
    )
    .await
    .unwrap();
    assert_eq!(
        reaped,
        runtime::Reaped {
            handed_back: 1,
            dead: 0
        }
    );
    assert_eq!(app.job_status("stuck").await, JobState::Pending);
    app.discard_unrun_jobs().await;
    app.finish().await;
}

#[tokio::test]
async fn a_workers_reaper_counts_the_jobs_it_hands_back_and_those_it_declares_dead() {
    let mut app = TestQueue::builder().without_worker().spawn().await;
    for (id, attempts) in [("abandoned", 1), ("abandoned-out-of-attempts", 5)] {
        sqlx::query(
            "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, lock_by, lock_at)
             VALUES ($1, 'test_record', convert_to('{\"label\": \"reaped\"}', 'UTF8'), 'Running', $2, 5,
                     now(), 'vanished-worker', now() - interval '10 minutes')",
        )
        .bind(id)
        .bind(attempts)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    app.expect_dead(1);
    let worker = app
        .start_worker(
            &[("test_record", 2)],
            QueueConfig {
                heartbeat_interval: Duration::from_millis(200),
                ..QueueConfig::default()
            },
        )
        .await;
    until_dead(&app, "abandoned-out-of-attempts").await;
    app.drain().await;
    worker.stop().await;
    let text = app.metrics_text();
    for line in [
        "queue_jobs_reaped_total{outcome=\"handed_back\",queue=\"test_record\"} 1",
        "queue_jobs_reaped_total{outcome=\"dead\",queue=\"test_record\"} 1",
        // A job the reaper finds out of attempts died: it is counted where every death is.
        "queue_jobs_dead_total{queue=\"test_record\"} 1",
    ] {
        assert!(text.contains(line), "missing {line}:\n{text}");
    }
    assert_eq!(count_runs(&app, "reaped").await, 1);
    app.finish().await;
}

/// Waits until the job `id` is dead.
async fn until_dead(app: &TestQueue, id: &str) {
    queue::testing::eventually("the reaper to declare the job dead", || async {
        app.job_status(id).await == JobState::Failed
    })
    .await;
}
