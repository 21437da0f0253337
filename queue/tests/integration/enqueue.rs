//! Enqueueing: in the caller's transaction, deduplicated without aborting it, one notification per statement.

use std::time::Duration;

use queue::{EnqueueOptions, Enqueued, QueueConfig, runtime};

use crate::support::{TestQueue, count_runs, kinds, record};

#[tokio::test]
async fn a_job_enqueued_in_a_rolled_back_transaction_never_exists() {
    let app = TestQueue::builder().without_worker().spawn().await;
    let mut tx = app.pool.begin().await.unwrap();
    let enqueued = queue::enqueue(&mut *tx, &record("rolled-back"))
        .await
        .unwrap();
    assert!(enqueued.is_new());
    tx.rollback().await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM apalis.jobs")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
    app.finish().await;
}

#[tokio::test]
async fn a_duplicate_idempotency_key_reports_already_queued_and_leaves_the_transaction_usable() {
    let app = TestQueue::spawn().await;
    let mut tx = app.pool.begin().await.unwrap();
    let first = queue::enqueue_with(&mut *tx, &record("dup"), EnqueueOptions::key("k1"))
        .await
        .unwrap();
    let second = queue::enqueue_with(&mut *tx, &record("dup"), EnqueueOptions::key("k1"))
        .await
        .unwrap();
    assert!(first.is_new());
    assert_eq!(second, Enqueued::AlreadyQueued);
    // The transaction was not aborted by the duplicate: more work in it commits.
    queue::enqueue(&mut *tx, &record("after-dup"))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    app.drain().await;
    assert_eq!(count_runs(&app, "dup").await, 1);
    assert_eq!(count_runs(&app, "after-dup").await, 1);
    app.finish().await;
}

#[tokio::test]
async fn a_bulk_enqueue_wakes_workers_with_one_notification_per_queue_not_one_per_row() {
    let app = TestQueue::builder().without_worker().spawn().await;
    let mut listener = sqlx::postgres::PgListener::connect_with(&app.pool)
        .await
        .unwrap();
    listener.listen(runtime::INSERT_CHANNEL).await.unwrap();
    let jobs: Vec<_> = (0..1000)
        .map(|i| queue::NewJob::of(&record(&format!("bulk-{i}")), EnqueueOptions::default()))
        .collect();
    assert_eq!(queue::enqueue_many(&app.pool, jobs).await.unwrap(), 1000);
    let first = listener.recv().await.unwrap();
    assert_eq!(first.payload(), r#"{"job_type" : "test_record"}"#);
    let more = tokio::time::timeout(Duration::from_millis(300), listener.recv()).await;
    assert!(more.is_err(), "a second notification arrived: {more:?}");
    // Delayed jobs notify nobody: the poll picks them up when due.
    queue::enqueue_with(
        &app.pool,
        &record("later"),
        EnqueueOptions {
            run_at: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
            ..EnqueueOptions::default()
        },
    )
    .await
    .unwrap();
    let delayed = tokio::time::timeout(Duration::from_millis(300), listener.recv()).await;
    assert!(delayed.is_err(), "a delayed job notified: {delayed:?}");
    let worker = app
        .start_worker(&[("test_record", 50)], QueueConfig::default())
        .await;
    for _ in 0..200 {
        if kinds::runs(&app.pool, "bulk-999").await.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.stop().await;
    sqlx::query("DELETE FROM apalis.jobs WHERE status = 'Pending'")
        .execute(&app.pool)
        .await
        .unwrap();
    app.finish().await;
}
