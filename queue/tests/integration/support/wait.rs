//! Waiting for a condition rather than sleeping for a guessed time: a test that sleeps and then asserts
//! passes or fails with the machine's load, one that waits for the condition only with the code under test.

use std::{future::Future, time::Duration};

/// How long [`eventually`] waits before it fails the test. Generous: under CI's load a step that takes
/// milliseconds on a quiet machine can take seconds, and a correct run never waits this long.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Polls `condition` every 10 ms until it holds; fails the test, naming `what` it waited for, after
/// [`PATIENCE`].
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited {PATIENCE:?} for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether a statement containing `needle` is waiting for a lock in this pool's database: how a test knows
/// that the code under test has reached a statement the test is holding back.
pub async fn blocked_on_lock(pool: &sqlx::PgPool, needle: &str) -> bool {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                         WHERE datname = current_database() AND wait_event_type = 'Lock'
                           AND strpos(query, $1) > 0)",
    )
    .bind(needle)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Whether a worker in this pool's database is listening for apalis' insert notifications: a job enqueued
/// after this wakes it. (Before, the insert can fall between a runner's first claim and its LISTEN, and then
/// waits for the poll.)
pub async fn worker_listening(pool: &sqlx::PgPool) -> bool {
    let statement = format!("LISTEN \"{}\"", queue::runtime::INSERT_CHANNEL);
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                         WHERE datname = current_database() AND state = 'idle' AND strpos(query, $1) = 1)",
    )
    .bind(statement)
    .fetch_one(pool)
    .await
    .unwrap()
}
