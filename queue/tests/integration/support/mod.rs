//! The harness of the queue's own tests: nothing of an application, only this crate, apalis-postgres' schema
//! and Postgres.
//!
//! - [`TestDb`]: a fresh database per test, copied from a template with the queue's schema, dropped afterwards.
//! - [`TestQueue`]: a worker serving the test kinds against it, `drain()` to run the queue dry, extra workers,
//!   the metrics, and `finish()` that fails a test leaving jobs unrun or dead unless it said it expects them.
//! - [`kinds`]: job kinds that succeed, fail, panic, hang, snooze or wait for a gate on demand.
//! - [`eventually`], [`blocked_on_lock`], [`worker_listening`] (from `queue::testing`): waiting for a
//!   condition instead of sleeping for a guessed time.

mod app;
pub mod db;
pub mod kinds;

pub use app::TestQueue;
pub use db::TestDb;
pub use queue::testing::{blocked_on_lock, eventually, worker_listening};

use kinds::Record;

/// A job that succeeds at once, recording `label`.
pub fn record(label: &str) -> Record {
    Record {
        label: label.into(),
    }
}

/// How often jobs labelled `label` ran.
pub async fn count_runs(app: &TestQueue, label: &str) -> usize {
    kinds::runs(&app.pool, label).await.len()
}
