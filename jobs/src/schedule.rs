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
    /// The queue its ticks go to.
    pub queue: &'static str,
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
            queue: make_job().queue,
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

    /// The `n` most recent ticks at or before `now`, newest first.
    pub fn recent_ticks(&self, now: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut ticks = Vec::with_capacity(n);
        let mut from = now;
        while ticks.len() < n {
            let Ok(tick) = self.cron.find_previous_occurrence(&from, ticks.is_empty()) else {
                break;
            };
            ticks.push(tick);
            from = tick;
        }
        ticks
    }

    /// The period between the ticks around `now`.
    pub fn interval(&self, now: DateTime<Utc>) -> std::time::Duration {
        match (self.latest_tick(now), self.next_tick(now)) {
            (Some(last), Some(next)) => (next - last).to_std().unwrap_or_default(),
            _ => std::time::Duration::ZERO,
        }
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

/// How many recent ticks [`last_successes`] looks through.
pub const TICKS_LOOKED_BACK: usize = 10;

/// For each schedule, when one of its last [`TICKS_LOOKED_BACK`] ticks most recently finished successfully
/// (`None`: none of them did). Each tick's job row is found by its idempotency key (an index lookup), so the cost
/// does not grow with the queue; finished rows are kept for days (`JOB_RETENTION_HOURS`), longer than any
/// schedule's ten periods but the daily one's, whose alert threshold is three periods.
pub async fn last_successes<'a>(
    pool: &sqlx::PgPool,
    schedules: &'a [Schedule],
    now: DateTime<Utc>,
) -> sqlx::Result<Vec<(&'a Schedule, Option<DateTime<Utc>>)>> {
    // One statement for every schedule: (schedule, queue, key) of their recent ticks, each an index lookup.
    let (mut owners, mut queues, mut keys) = (Vec::new(), Vec::new(), Vec::new());
    for (n, schedule) in schedules.iter().enumerate() {
        let queue = schedule.queue;
        for tick in schedule.recent_ticks(now, TICKS_LOOKED_BACK) {
            owners.push(n as i32);
            queues.push(queue);
            keys.push(schedule.tick_key(tick));
        }
    }
    let done: Vec<(i32, DateTime<Utc>)> = sqlx::query_as(
        "SELECT t.owner, max(j.done_at)
           FROM unnest($1::int[], $2::text[], $3::text[]) AS t(owner, queue, key)
           JOIN apalis.jobs j ON j.job_type = t.queue AND j.idempotency_key = t.key
          WHERE j.status = 'Done'
          GROUP BY t.owner",
    )
    .bind(&owners)
    .bind(&queues)
    .bind(&keys)
    .fetch_all(pool)
    .await?;
    Ok(schedules
        .iter()
        .enumerate()
        .map(|(n, schedule)| {
            let last = done
                .iter()
                .find(|(owner, _)| *owner as usize == n)
                .map(|(_, at)| *at);
            (schedule, last)
        })
        .collect())
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
