//! The queue as the product runs it. The runtime's own guard rails are tested in the `queue` crate
//! (`queue/tests/integration/`) against a database of the queue alone; here are what the product adds: the
//! pruning kind with its configured retention, and the queue series on the api's `/metrics` page.

use std::time::Duration;

use queue::EnqueueOptions;
use testkit::{TestApp, test_jobs::Record};

fn record(label: &str) -> Record {
    Record {
        label: label.into(),
    }
}

#[tokio::test]
async fn pruning_deletes_finished_jobs_past_their_retention_and_keeps_the_rest() {
    let app = TestApp::spawn().await;
    for (id, status, age_hours) in [
        ("old-done", "Done", 200),
        ("new-done", "Done", 1),
        ("old-dead", "Failed", 200),
        ("ancient-dead", "Failed", 800),
    ] {
        sqlx::query(
            "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, done_at)
             VALUES ($1, 'test_record', '\\x7b7d', $2, 1, 5, now(), now() - make_interval(hours => $3))",
        )
        .bind(id)
        .bind(status)
        .bind(age_hours)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    app.enqueue(&jobs::kinds::PruneFinishedJobs {}).await;
    app.drain().await;
    let left: Vec<String> =
        sqlx::query_scalar("SELECT id FROM apalis.jobs WHERE job_type = 'test_record' ORDER BY id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    // Defaults: done rows kept 168 h, dead rows 720 h.
    assert_eq!(left, vec!["new-done", "old-dead"]);
    sqlx::query("DELETE FROM apalis.jobs WHERE id = 'old-dead'")
        .execute(&app.pool)
        .await
        .unwrap();
    app.finish().await;
}

#[tokio::test]
async fn queue_gauges_match_a_known_queue_state_and_job_metrics_are_recorded() {
    let mut app = TestApp::builder().without_worker().spawn().await;
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
    let text = app.metrics_text().await;
    for line in [
        "createimage2_jobs{queue=\"test_record\",state=\"waiting\"} 3",
        "createimage2_jobs{queue=\"test_record\",state=\"scheduled\"} 1",
        "createimage2_jobs{queue=\"test_record\",state=\"running\"} 1",
        "createimage2_jobs_stuck{queue=\"test_record\"} 1",
        "createimage2_jobs{queue=\"test_record\",state=\"dead\"} 1",
    ] {
        assert!(text.contains(line), "missing {line}");
    }
    let age_line = text
        .lines()
        .find(|l| {
            l.starts_with("createimage2_job_oldest_waiting_age_seconds{queue=\"test_record\"}")
        })
        .unwrap();
    let age: f64 = age_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((90.0..100.0).contains(&age), "{age_line}");
    app.discard_unrun_jobs().await;
    app.expect_dead(0);
    app.finish().await;
}
