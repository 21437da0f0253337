//! The runtime's settings. The application reads them from its own configuration (environment, files) and
//! hands them over; [`QueueConfig::default`] holds the values the runtime was tuned with.

use std::time::Duration;

/// How a worker process claims, heartbeats, reaps and drains, and how long finished rows are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// Fallback poll when no notification arrives (default 1 s); bounds how late a delayed job of another
    /// process starts.
    pub poll_interval: Duration,
    /// How often a worker refreshes `apalis.workers.last_seen` (default 5 s).
    pub heartbeat_interval: Duration,
    /// A worker silent this long is dead and its jobs are handed back (default 60 s).
    pub dead_worker_after: Duration,
    /// On shutdown, started jobs get this long to finish before they are handed back (default 30 s).
    pub shutdown_grace: Duration,
    /// A runner claims a batch beyond its free slots (under a backlog) only while its queue's attempts average at
    /// most this long (default 20 ms): a claimed-ahead job then waits for a slot about as long as a peer would
    /// need to claim it, so no replica sits idle beside a buffer.
    pub claim_ahead_max_attempt: Duration,
    /// Finished (done, cancelled) rows are pruned after this age (default 7 days).
    pub finished_job_retention: Duration,
    /// Dead rows are kept this long for operators (default 30 days).
    pub dead_job_retention: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(1),
            heartbeat_interval: Duration::from_secs(5),
            dead_worker_after: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
            claim_ahead_max_attempt: Duration::from_millis(20),
            finished_job_retention: Duration::from_secs(168 * 3600),
            dead_job_retention: Duration::from_secs(720 * 3600),
        }
    }
}
