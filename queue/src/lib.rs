//! A durable job queue in Postgres that knows nothing of the application it runs.
//!
//! The application defines job kinds ([`Job`]: a payload with a stable name, a retry policy, a unique key and an
//! async body) and the context its jobs need ([`Job::Context`], handed to every attempt in a [`JobContext`]); this
//! crate stores, claims, runs, retries, reaps and drains them. Delivery is at-least-once: every job body must be
//! safe to run twice.
//!
//! # Codemap
//! - [`job`]: the [`Job`] trait, [`RetryPolicy`], [`Outcome`], [`JobError`], [`JobContext`].
//! - [`enqueue`]: writes a job inside the caller's transaction (`job.enqueue(&mut *tx)`), so the job exists
//!   exactly when the caller's state change commits. A kind's [`Job::unique_key`] turns a second enqueue of the
//!   same work into [`Enqueued::AlreadyQueued`] (`ON CONFLICT DO NOTHING`), never an error that would abort the
//!   caller's transaction.
//! - [`registry`]: the kinds a process knows, type-erased; a payload is decoded inside its handler.
//! - [`runtime`]: a worker process — one runner per queue ([`runtime::runner`]), batched completions
//!   ([`runtime::completer`]), the heartbeat and reaper ([`runtime::reaper`]), the LISTEN connection that wakes
//!   runners ([`runtime::listener`]) — and its drain on shutdown.
//! - [`ops`]: what operators see and do: depth and age per queue, dead jobs, retry, cancel, discard, pause,
//!   resume, pruning.
//! - [`metrics`]: the Prometheus series of the runtime and the queue gauges, registered on the caller's
//!   registry.
//! - [`schema`]: the indexes, trigger and pause table this crate adds to the `apalis` schema.
//! - [`config`]: the runtime's settings ([`QueueConfig`]); the application reads them from its own config.
//! - [`state`]: a row's [`JobState`].
//! - `testing` (feature `testing`): waits, drain and the end-of-test check for tests of code on this queue.
//!
//! # Storage: apalis-postgres' table, this crate's runtime
//! Jobs live in apalis-postgres 1.0's `apalis.jobs` and `apalis.workers` tables, created by its
//! `PostgresStorage::setup` (the application runs it before [`schema::migrate`]). Compatibility is a tested
//! property: a job pushed with apalis-postgres' own `PostgresStorage` is run by this runtime
//! (`tests/integration/apalis_compat.rs`). What is taken from apalis-postgres: the schema, its insert channel
//! (`apalis::job::insert`), its status names (`Pending`, `Running`, `Done`, `Failed`, `Killed`) and its payload
//! encoding (JSON in a `bytea`).
//!
//! The runtime is this crate's own because apalis' worker, measured on this project's machines
//! (`docs/apalis-postgres.md`), has sharp edges a production queue cannot have — a timeout or a panic leaves a
//! row `Running` forever, a failed job is retried 25 times within 60 ms, a deferred job hot-loops, one payload
//! that fails to decode stops the worker, delayed jobs wait up to 30 s, a database outage ends the worker — and
//! burned down a backlog 15× slower than this runtime (`loadtest/README.md`). The guard rail for each is in
//! [`runtime`].
//!
//! # Invariants
//! - A job row is written only through [`enqueue`] (in the caller's transaction) and changed only by the runtime,
//!   [`expedite`] and [`ops`]; every state change is guarded by the row's current state (and worker), so a late
//!   or duplicate writer changes nothing.
//! - No attempt leaves its row `Running`: timeouts and panics are caught inside the runner, a runner that dies is
//!   restarted, and the reaper hands back rows of workers that stopped heartbeating.
//! - Nothing in this crate's code names an application's table, job kind or service. (Its schema objects keep
//!   the `createimage2_` names they were first created with, before the queue was a crate of its own: renaming
//!   them would rebuild the indexes of a live table. See `queue/migrations/`.)

pub mod config;
pub mod enqueue;
pub mod job;
pub mod metrics;
pub mod ops;
pub mod registry;
pub mod runtime;
pub mod schema;
pub mod state;
#[cfg(feature = "testing")]
pub mod testing;

pub use config::QueueConfig;
pub use enqueue::{
    EnqueueOptions, Enqueued, JobId, NewJob, enqueue, enqueue_many, enqueue_new, enqueue_with,
    expedite,
};
pub use job::{Job, JobContext, JobError, Outcome, RetryPolicy};
pub use metrics::QueueMetrics;
pub use registry::Registry;
pub use runtime::{QueueHealth, QueuePlan, RunningWorker, Worker, WorkerHealth};
pub use state::JobState;
