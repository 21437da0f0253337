//! The runtime's Prometheus series and the queue gauges, registered on the application's registry under its
//! namespace (`{namespace}_jobs_completed_total`, …), so one `/metrics` page serves both.

use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    core::Collector,
};
use sqlx::PgPool;

/// Latency buckets for jobs and waits: 1 ms to 10 min.
pub const JOB_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];

/// The queue's series. Cheap to clone (each field is a handle to the registered metric).
#[derive(Clone, Debug)]
pub struct QueueMetrics {
    /// Time from a job's `run_at` to the start of its attempt, by queue.
    pub job_wait_seconds: HistogramVec,
    /// Duration of one attempt, by queue and outcome (`done`, `snoozed`, `failed`).
    pub job_duration_seconds: HistogramVec,
    pub jobs_completed_total: IntCounterVec,
    pub jobs_retried_total: IntCounterVec,
    pub jobs_snoozed_total: IntCounterVec,
    /// Jobs that died: out of attempts or failed permanently in a runner, or out of attempts when the reaper found
    /// them abandoned.
    pub jobs_dead_total: IntCounterVec,
    /// Abandoned jobs the reaper found, by queue and outcome (`handed_back`, `dead`).
    pub jobs_reaped_total: IntCounterVec,
    /// Unfinished jobs a draining worker handed back to the queue.
    pub jobs_handed_back_total: IntCounterVec,
    /// Attempts that panicked (caught; the job is retried).
    pub job_panics_total: IntCounterVec,
    /// Queue runners that died and were restarted by their supervisor.
    pub job_runner_restarts_total: IntCounterVec,
    /// Queue runners alive in this process.
    pub workers_alive: IntGaugeVec,
    /// Jobs by queue and state (`waiting`, `scheduled`, `running`, `dead`), read from the database.
    pub jobs: IntGaugeVec,
    /// Jobs running on a worker that stopped heartbeating.
    pub jobs_stuck: IntGaugeVec,
    /// How long the oldest due, unclaimed job of a queue has waited.
    pub job_oldest_waiting_age_seconds: GaugeVec,
}

fn register<M: Collector + Clone + 'static>(
    registry: &Registry,
    metric: M,
) -> prometheus::Result<M> {
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

impl QueueMetrics {
    /// Creates the series as `{namespace}_…` and registers them on `registry`. Fails if they are registered
    /// there already.
    pub fn register(registry: &Registry, namespace: &str) -> prometheus::Result<Self> {
        let name = |suffix: &str| format!("{namespace}_{suffix}");
        let histogram = |suffix: &str, help: &str, labels: &[&str]| {
            register(
                registry,
                HistogramVec::new(
                    HistogramOpts::new(name(suffix), help).buckets(JOB_BUCKETS.to_vec()),
                    labels,
                )?,
            )
        };
        let counter = |suffix: &str, help: &str| {
            register(
                registry,
                IntCounterVec::new(Opts::new(name(suffix), help), &["queue"])?,
            )
        };
        let gauge = |suffix: &str, help: &str, labels: &[&str]| {
            register(
                registry,
                IntGaugeVec::new(Opts::new(name(suffix), help), labels)?,
            )
        };
        Ok(Self {
            job_wait_seconds: histogram(
                "job_wait_seconds",
                "Time from a job's run_at to the start of its attempt.",
                &["queue"],
            )?,
            job_duration_seconds: histogram(
                "job_duration_seconds",
                "Duration of one job attempt, by outcome (done, snoozed, failed).",
                &["queue", "outcome"],
            )?,
            jobs_completed_total: counter("jobs_completed_total", "Jobs finished successfully.")?,
            jobs_retried_total: counter(
                "jobs_retried_total",
                "Failed attempts that were scheduled to retry.",
            )?,
            jobs_snoozed_total: counter(
                "jobs_snoozed_total",
                "Attempts that asked to run again later (e.g. polling).",
            )?,
            jobs_dead_total: counter(
                "jobs_dead_total",
                "Jobs that failed permanently or ran out of attempts (in a runner or found abandoned by the reaper).",
            )?,
            jobs_reaped_total: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        name("jobs_reaped_total"),
                        "Abandoned jobs (worker silent, or attempt far past its timeout) found by the reaper, by outcome (handed_back, dead).",
                    ),
                    &["queue", "outcome"],
                )?,
            )?,
            jobs_handed_back_total: counter(
                "jobs_handed_back_total",
                "Unfinished jobs a draining worker handed back to the queue.",
            )?,
            job_panics_total: counter(
                "job_panics_total",
                "Attempts that panicked (caught, and retried).",
            )?,
            job_runner_restarts_total: counter(
                "job_runner_restarts_total",
                "Queue runners that died and were restarted by their supervisor.",
            )?,
            workers_alive: gauge(
                "workers_alive",
                "Queue runners alive in this process.",
                &["queue"],
            )?,
            jobs: gauge(
                "jobs",
                "Jobs by queue and state (waiting, scheduled, running, dead).",
                &["queue", "state"],
            )?,
            jobs_stuck: gauge(
                "jobs_stuck",
                "Jobs running on a worker that stopped heartbeating (the reaper hands them back).",
                &["queue"],
            )?,
            job_oldest_waiting_age_seconds: register(
                registry,
                GaugeVec::new(
                    Opts::new(
                        name("job_oldest_waiting_age_seconds"),
                        "How long the oldest due, unclaimed job of a queue has waited.",
                    ),
                    &["queue"],
                )?,
            )?,
        })
    }

    /// Makes every per-queue counter of `queue` exist at zero, so rates and alerts see "nothing failed" rather
    /// than "no data".
    pub fn touch(&self, queue: &str) {
        for counter in [
            &self.jobs_completed_total,
            &self.jobs_retried_total,
            &self.jobs_snoozed_total,
            &self.jobs_dead_total,
            &self.jobs_handed_back_total,
            &self.job_panics_total,
            &self.job_runner_restarts_total,
        ] {
            counter.with_label_values(&[queue]);
        }
        for outcome in ["handed_back", "dead"] {
            self.jobs_reaped_total.with_label_values(&[queue, outcome]);
        }
    }

    /// Counts one reaper pass: abandoned jobs handed back, and those out of attempts as dead (every way a job dies
    /// is in `jobs_dead_total`).
    pub fn record_reaped(&self, queue: &str, reaped: crate::runtime::Reaped) {
        self.jobs_reaped_total
            .with_label_values(&[queue, "handed_back"])
            .inc_by(reaped.handed_back);
        self.jobs_reaped_total
            .with_label_values(&[queue, "dead"])
            .inc_by(reaped.dead);
        self.jobs_dead_total
            .with_label_values(&[queue])
            .inc_by(reaped.dead);
    }

    /// Reads queue depth by state and the oldest waiting age from the database (one grouped query) into the
    /// gauges. `known_queues` read zero when empty, rather than keep their last value or vanish.
    ///
    /// These gauges describe the shared database, not this process: exactly one role of a fleet should refresh
    /// and export them, or every scrape multiplies them.
    pub async fn refresh_queue_gauges(
        &self,
        pool: &PgPool,
        known_queues: &[&str],
    ) -> sqlx::Result<()> {
        let stats = crate::ops::queue_stats(pool).await?;
        self.jobs.reset();
        self.jobs_stuck.reset();
        self.job_oldest_waiting_age_seconds.reset();
        for queue in known_queues {
            for state in ["waiting", "scheduled", "running", "dead"] {
                self.jobs.with_label_values(&[queue, state]).set(0);
            }
            self.job_oldest_waiting_age_seconds
                .with_label_values(&[queue])
                .set(0.0);
            self.jobs_stuck.with_label_values(&[queue]).set(0);
        }
        for s in stats {
            let q = s.queue.as_str();
            self.jobs.with_label_values(&[q, "waiting"]).set(s.waiting);
            self.jobs
                .with_label_values(&[q, "scheduled"])
                .set(s.scheduled);
            self.jobs.with_label_values(&[q, "running"]).set(s.running);
            self.jobs.with_label_values(&[q, "dead"]).set(s.dead);
            self.jobs_stuck.with_label_values(&[q]).set(s.stuck);
            self.job_oldest_waiting_age_seconds
                .with_label_values(&[q])
                .set(s.oldest_waiting_age_seconds);
        }
        Ok(())
    }
}
