//! A database that goes away: workers reconnect and carry on, and report not-ready while they cannot reach it.

use std::time::Duration;

use queue::{QueueConfig, QueuePlan, Worker};
use tokio_util::sync::CancellationToken;

use crate::support::{TestQueue, count_runs, kinds, record};

#[tokio::test]
async fn workers_keep_working_after_their_database_connections_are_killed() {
    let app = TestQueue::spawn().await;
    app.enqueue(&record("before-outage")).await;
    app.drain().await;
    // Every connection of this database is cut, as in a failover or a restart of the server.
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
        .bind(&app.db.name)
        .execute(&app.pool)
        .await
        .unwrap();
    app.enqueue(&record("after-outage")).await;
    app.drain().await;
    assert_eq!(count_runs(&app, "after-outage").await, 1);
    app.finish().await;
}

#[tokio::test]
async fn a_worker_that_cannot_reach_the_database_reports_not_ready() {
    let app = TestQueue::builder().without_worker().spawn().await;
    // A worker whose pool points at a port where nothing listens; each call gives up after 300 ms rather than
    // production's 5 s, so the test (start, refused claims, drain) is quick.
    let unreachable = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_millis(300))
        .connect_lazy("postgres://postgres@127.0.0.1:1/none")
        .unwrap();
    let stop = CancellationToken::new();
    let plans = vec![QueuePlan {
        queue: "test_record".into(),
        concurrency: 1,
    }];
    let running = Worker::new(unreachable, kinds::registry(), ())
        .config(QueueConfig {
            poll_interval: Duration::from_millis(100),
            ..QueueConfig::default()
        })
        .start(plans, stop.clone())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Err(reason) = running.health.readiness() {
            assert!(reason.contains("test_record"), "{reason}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "worker kept reporting ready without a database"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    running.wait().await;
    app.finish().await;
}
