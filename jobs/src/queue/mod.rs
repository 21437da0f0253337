//! The queue layer every producer and worker uses, over apalis-postgres' storage (`apalis.jobs`).
//!
//! - [`job`]: the [`Job`] trait (stable name, retry policy, body), outcomes and errors.
//! - [`enqueue`]: enqueue inside the caller's transaction; idempotency keys report "already queued".
//! - [`registry`]: type-erased handlers; payloads decoded inside the handler.
//! - [`runtime`]: claim, run, retry with persisted backoff, snooze, timeouts, panics, heartbeats, reaper, drain.
//! - [`ops`]: stats, dead jobs, retry/cancel/discard, pause/resume, pruning.
//!
//! Row states (`apalis.jobs.status`): `Pending` (waiting, or scheduled when `run_at` is in the future —
//! including retries and snoozes) → `Running` → `Done`; `Failed` means dead (never picked up again until an
//! operator retries it); `Killed` means cancelled by an operator.

pub mod enqueue;
pub mod job;
pub mod ops;
pub mod registry;
pub mod runtime;

pub use enqueue::{
    EnqueueOptions, Enqueued, JobId, NewJob, enqueue, enqueue_many, enqueue_with, expedite,
};
pub use job::{Job, JobContext, JobError, Outcome, Pipeline, RetryPolicy, Services};
pub use registry::Registry;
pub use runtime::{QueuePlan, RunningWorker, WorkerHealth, start};
