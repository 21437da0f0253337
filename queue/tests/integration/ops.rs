//! What operators do: pause and resume a queue, cancel a waiting job, discard a dead one, prune finished rows
//! and silent workers.

use std::time::Duration;

use queue::{Enqueued, JobState, QueueConfig, ops};

use crate::support::{TestQueue, count_runs, record};

#[tokio::test]
async fn a_paused_queue_is_not_claimed_until_it_is_resumed() {
    let app = TestQueue::spawn().await;
    ops::pause_queue(&app.pool, "test_record", "maintenance")
        .await
        .unwrap();
    let Enqueued::New(id) = app.enqueue(&record("paused")).await else {
        panic!()
    };
    // An absence needs a window to look in: a correct runner never claims it, however long this is.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(app.job_status(&id).await, JobState::Pending);
    let stats = ops::queue_stats(&app.pool).await.unwrap();
    let paused = stats.iter().find(|s| s.queue == "test_record").unwrap();
    assert!(paused.paused && paused.waiting == 1);
    ops::resume_queue(&app.pool, "test_record").await.unwrap();
    app.drain().await;
    assert_eq!(count_runs(&app, "paused").await, 1);
    app.finish().await;
}

#[tokio::test]
async fn an_operator_can_cancel_a_waiting_job_and_discard_a_dead_one() {
    let mut app = TestQueue::builder().without_worker().spawn().await;
    let Enqueued::New(waiting) = app.enqueue(&record("never")).await else {
        panic!()
    };
    assert!(ops::cancel_job(&app.pool, &waiting).await.unwrap());
    assert_eq!(app.job_status(&waiting).await, JobState::Killed);
    assert!(
        !ops::discard_job(&app.pool, &waiting).await.unwrap(),
        "only dead jobs are discarded"
    );
    sqlx::query("UPDATE apalis.jobs SET status = 'Failed', done_at = now() WHERE id = $1")
        .bind(&waiting)
        .execute(&app.pool)
        .await
        .unwrap();
    assert!(ops::discard_job(&app.pool, &waiting).await.unwrap());
    assert!(ops::find_job(&app.pool, &waiting).await.unwrap().is_none());
    app.expect_dead(0);
    app.finish().await;
}

#[tokio::test]
async fn pruning_deletes_finished_jobs_past_their_retention_and_keeps_the_rest() {
    let app = TestQueue::builder().without_worker().spawn().await;
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
    // The default retentions: done rows kept 168 h, dead rows 720 h.
    let config = QueueConfig::default();
    let deleted = ops::prune_finished(
        &app.pool,
        config.finished_job_retention,
        config.dead_job_retention,
    )
    .await
    .unwrap();
    assert_eq!(deleted, 2);
    let left: Vec<String> =
        sqlx::query_scalar("SELECT id FROM apalis.jobs WHERE job_type = 'test_record' ORDER BY id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(left, vec!["new-done", "old-dead"]);
    sqlx::query("DELETE FROM apalis.jobs WHERE id = 'old-dead'")
        .execute(&app.pool)
        .await
        .unwrap();
    app.finish().await;
}

#[tokio::test]
async fn pruning_forgets_silent_workers_unless_they_hold_an_unfinished_job() {
    let app = TestQueue::builder().without_worker().spawn().await;
    sqlx::query(
        "INSERT INTO apalis.workers (id, worker_type, storage_name, layers, last_seen)
         VALUES ('silent-done', 'test_record', 'createimage2', '', now() - interval '2 days'),
                ('silent-running', 'test_record', 'createimage2', '', now() - interval '2 days'),
                ('recent', 'test_record', 'createimage2', '', now())",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    // A finished job keeps the worker that ran it (the console shows it); it does not keep the worker row.
    sqlx::query(
        "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, lock_by, lock_at, done_at)
         VALUES ('finished', 'test_record', '\\x7b7d', 'Done', 1, 5, now(), 'silent-done', now(), now()),
                ('unfinished', 'test_record', '\\x7b7d', 'Running', 1, 5, now(), 'silent-running', now(), NULL)",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    ops::prune_finished(
        &app.pool,
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
    let workers: Vec<String> = sqlx::query_scalar("SELECT id FROM apalis.workers ORDER BY id")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(workers, ["recent", "silent-running"]);
    let finished_by: Option<String> =
        sqlx::query_scalar("SELECT lock_by FROM apalis.jobs WHERE id = 'finished'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(finished_by.as_deref(), Some("silent-done"));
    app.discard_unrun_jobs().await;
    app.finish().await;
}
