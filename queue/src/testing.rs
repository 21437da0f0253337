//! Helpers for tests of code that runs on this queue (the `testing` feature; never in a production build):
//! waiting for conditions instead of sleeping, draining the queue, and the end-of-test check that no job was
//! left unrun or died unexpectedly. The queue's own tests and the application's harness share them.
//!
//! A test that sleeps and then asserts passes or fails with the machine's load; one that waits for its
//! condition only with the code under test. Every helper here panics (fails the test) with what it waited for.

use std::{future::Future, time::Duration};

use sqlx::PgPool;

use crate::{JobState, ops};

/// How long [`eventually`] and [`drain`] wait before they fail the test. Generous: under CI's load a step that
/// takes milliseconds on a quiet machine can take seconds, and a correct run never waits this long.
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
pub async fn blocked_on_lock(pool: &PgPool, needle: &str) -> bool {
    waiting_on_lock(pool, needle).await > 0
}

/// How many statements containing `needle` are waiting for a lock in this pool's database.
pub async fn waiting_on_lock(pool: &PgPool, needle: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
          WHERE datname = current_database() AND wait_event_type = 'Lock' AND strpos(query, $1) > 0",
    )
    .bind(needle)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Whether a worker in this pool's database is listening for apalis' insert notifications: a job enqueued
/// after this wakes it. (Before, the insert can fall between a runner's first claim and its LISTEN, and then
/// waits for the poll.)
pub async fn worker_listening(pool: &PgPool) -> bool {
    let statement = format!("LISTEN \"{}\"", crate::runtime::INSERT_CHANNEL);
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                         WHERE datname = current_database() AND state = 'idle' AND strpos(query, $1) = 1)",
    )
    .bind(statement)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Waits until no job is waiting, scheduled or running (retries and snoozes included); fails the test after
/// [`PATIENCE`].
pub async fn drain(pool: &PgPool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let unfinished: i64 =
            sqlx::query_scalar("SELECT count(*) FROM apalis.jobs WHERE status = ANY($1)")
                .bind([JobState::Pending, JobState::Queued, JobState::Running])
                .fetch_one(pool)
                .await
                .unwrap();
        if unfinished == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue did not drain in {PATIENCE:?}: {unfinished} jobs left"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Gives running workers up to 10 s to run the jobs already due (a test's last step may have enqueued one a
/// moment ago), so that stopping them does not leave those waiting. Paused queues are not waited for.
pub async fn settle_due_jobs(pool: &PgPool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        let stats = ops::queue_stats(pool).await.unwrap();
        if stats.iter().all(|s| s.paused || s.waiting + s.running == 0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The end-of-test check, once the workers have stopped: fails the test if a job was left waiting, scheduled
/// or running, or if the number of dead jobs is not `expected_dead` (listing them).
pub async fn assert_nothing_left(pool: &PgPool, expected_dead: i64) {
    let stats = ops::queue_stats(pool).await.unwrap();
    let unrun: Vec<_> = stats
        .iter()
        .filter(|s| s.waiting + s.scheduled + s.running > 0)
        .collect();
    assert!(unrun.is_empty(), "test left jobs unrun: {unrun:?}");
    let dead: i64 = stats.iter().map(|s| s.dead).sum();
    let dead_jobs = ops::dead_jobs(pool, None, 20).await.unwrap();
    assert_eq!(dead, expected_dead, "unexpected dead jobs: {dead_jobs:#?}");
}

/// The state of one job row; fails the test if there is none.
pub async fn job_status(pool: &PgPool, id: &str) -> JobState {
    ops::find_job(pool, id)
        .await
        .unwrap()
        .expect("job exists")
        .status
}

/// Deletes every job row: for a test that deliberately leaves work unrun (jobs behind a stopped worker, rows
/// it wrote by hand), which [`assert_nothing_left`] would otherwise report.
pub async fn discard_unrun_jobs(pool: &PgPool) {
    sqlx::query("DELETE FROM apalis.jobs")
        .execute(pool)
        .await
        .unwrap();
}
