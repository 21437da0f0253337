//! Waiting for a condition rather than sleeping for a guessed time: the queue's own helpers
//! (`queue::testing`), which the queue's tests use too.

pub use queue::testing::{blocked_on_lock, eventually, worker_listening};
