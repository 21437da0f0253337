//! Every job kind, one per file, and the one list that registers them.
//!
//! Each file holds one payload struct implementing [`Job`](crate::queue::Job) with a stable `NAME` (the
//! persisted queue name: never rename it) and a doc comment saying why it exists and why running it twice is
//! safe.

pub mod prune_finished_jobs;

use crate::queue::Registry;

pub use prune_finished_jobs::PruneFinishedJobs;

/// The registration list: every job kind the workers run.
pub fn registry() -> Registry {
    Registry::new().register::<PruneFinishedJobs>()
}
