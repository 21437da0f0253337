//! Periodic work, declared in one place: a name, a cron expression (UTC), and the job each tick enqueues.
//!
//! The scheduler role only enqueues. Each tick is enqueued with the idempotency key `<name>:<tick time>`, so
//! any number of scheduler replicas produce exactly one job per tick. After downtime only the latest missed
//! tick is enqueued (once), never a replay of every tick missed.

use chrono::{DateTime, Utc};
use croner::Cron;
use sqlx::PgExecutor;

use queue::{EnqueueOptions, Enqueued, NewJob, enqueue_new};

use crate::kinds::{
    ExpireExports, ExpireTrialFingerprints, ProbeUpstreams, PruneFinishedJobs, PurgeExpiredRecords,
    ReconcileStripeEvents, RotateHashPepper,
};

/// One periodic job.
pub struct Schedule {
    pub name: &'static str,
    pub cron: Cron,
    make_job: fn() -> NewJob,
}

impl std::fmt::Debug for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schedule")
            .field("name", &self.name)
            .field("cron", &self.cron.as_str())
            .finish()
    }
}

impl Schedule {
    /// Panics on an invalid expression: schedules are constants, checked by a test.
    pub fn new(name: &'static str, expression: &str, make_job: fn() -> NewJob) -> Self {
        let cron = expression
            .parse()
            .unwrap_or_else(|error| panic!("schedule {name}: bad cron {expression:?}: {error}"));
        Self {
            name,
            cron,
            make_job,
        }
    }

    /// The most recent tick at or before `now`.
    pub fn latest_tick(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_previous_occurrence(&now, true).ok()
    }

    /// The first tick after `now`.
    pub fn next_tick(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&now, false).ok()
    }

    /// The idempotency key of one tick.
    pub fn tick_key(&self, tick: DateTime<Utc>) -> String {
        format!(
            "{}:{}",
            self.name,
            tick.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
    }

    /// Enqueues the job for `tick`; `AlreadyQueued` when any replica did so before.
    pub async fn enqueue_tick<'e>(
        &self,
        conn: impl PgExecutor<'e>,
        tick: DateTime<Utc>,
    ) -> sqlx::Result<Enqueued> {
        let mut job = (self.make_job)();
        job.options = EnqueueOptions {
            run_at: Some(tick),
            ..EnqueueOptions::key(self.tick_key(tick))
        };
        enqueue_new(conn, job).await
    }
}

/// Every periodic job of the system.
pub fn schedules() -> Vec<Schedule> {
    vec![
        Schedule::new("prune_finished_jobs", "17 * * * *", || {
            NewJob::of(&PruneFinishedJobs {}, EnqueueOptions::default())
        }),
        Schedule::new("probe_upstreams", "* * * * *", || {
            NewJob::of(&ProbeUpstreams {}, EnqueueOptions::default())
        }),
        Schedule::new("expire_trial_fingerprints", "5 * * * *", || {
            NewJob::of(&ExpireTrialFingerprints {}, EnqueueOptions::default())
        }),
        Schedule::new("rotate_hash_pepper", "0 0 * * *", || {
            NewJob::of(&RotateHashPepper {}, EnqueueOptions::default())
        }),
        Schedule::new("purge_expired_records", "35 * * * *", || {
            NewJob::of(&PurgeExpiredRecords {}, EnqueueOptions::default())
        }),
        Schedule::new("expire_exports", "45 * * * *", || {
            NewJob::of(&ExpireExports {}, EnqueueOptions::default())
        }),
        Schedule::new("reconcile_stripe_events", "*/15 * * * *", || {
            NewJob::of(&ReconcileStripeEvents {}, EnqueueOptions::default())
        }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_declared_schedule_parses_and_has_a_unique_name() {
        let schedules = schedules();
        let names: std::collections::HashSet<_> = schedules.iter().map(|s| s.name).collect();
        assert_eq!(names.len(), schedules.len());
        for schedule in &schedules {
            assert!(
                schedule.next_tick(Utc::now()).is_some(),
                "{schedule:?} never fires"
            );
        }
    }

    #[test]
    fn the_latest_tick_is_the_last_occurrence_at_or_before_now() {
        let schedule = Schedule::new("t", "17 * * * *", || {
            NewJob::of(&PruneFinishedJobs {}, Default::default())
        });
        let now: DateTime<Utc> = "2026-11-24T10:30:00Z".parse().unwrap();
        assert_eq!(
            schedule.latest_tick(now).unwrap(),
            "2026-11-24T10:17:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(
            schedule.next_tick(now).unwrap(),
            "2026-11-24T11:17:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(
            schedule.tick_key(schedule.latest_tick(now).unwrap()),
            "t:2026-11-24T10:17:00Z"
        );
    }
}
