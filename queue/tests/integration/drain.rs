//! The drain's contract (see `Runner::run` in `queue/src/runtime/runner.rs`, which cites this file): no job
//! starts once it has begun — rows claimed but not started (the claim-ahead buffer, a claim that lands after the
//! drain began) are handed back with the attempt not counted; a started job runs on for the grace period, then
//! is handed back; a finished job's completion is written before anything is handed back and before the worker
//! reports stopped. Readiness turns false while it drains.
//!
//! Each test holds the runtime at the exact point it is about (a gate inside the job, a lock on the row or table
//! the runtime's next statement needs), so none depends on timing.

use std::time::Duration;

use queue::{EnqueueOptions, Enqueued, JobState, QueueConfig, ops};

use crate::support::{
    TestQueue, blocked_on_lock, count_runs, eventually,
    kinds::{self, Gate, Slow},
    record,
};

fn grace(ms: u64) -> QueueConfig {
    QueueConfig {
        shutdown_grace: Duration::from_millis(ms),
        ..QueueConfig::default()
    }
}

#[tokio::test]
async fn shutdown_lets_a_started_job_finish_within_the_grace_period_and_records_it_done() {
    let app = TestQueue::builder().without_worker().spawn().await;
    let worker = app.start_worker(&[("test_gated", 1)], grace(10_000)).await;
    let gate = Gate::closed(&app.pool).await;
    let Enqueued::New(id) = app.enqueue(&gate.job("finishing")).await else {
        panic!()
    };
    kinds::started(&app.pool, "finishing").await;
    worker.begin_shutdown();
    eventually("the drain to begin", || async {
        worker.health().is_draining()
    })
    .await;
    gate.open().await;
    worker.stop().await;
    assert_eq!(app.job_status(&id).await, JobState::Done);
    assert_eq!(count_runs(&app, "finishing").await, 1);
    app.finish().await;
}

#[tokio::test]
async fn the_drain_writes_a_finished_jobs_completion_before_the_worker_reports_stopped() {
    let app = TestQueue::builder().without_worker().spawn().await;
    let worker = app.start_worker(&[("test_gated", 1)], grace(10_000)).await;
    let gate = Gate::closed(&app.pool).await;
    let Enqueued::New(id) = app.enqueue(&gate.job("finishing")).await else {
        panic!()
    };
    kinds::started(&app.pool, "finishing").await;
    // Hold back the completion statement, and only it: a hand-back could still go through.
    let completions = Gate::closed(&app.pool).await;
    kinds::hold_job_updates(&app.pool, "SET status = 'Done'", &completions).await;
    worker.begin_shutdown();
    gate.open().await;
    eventually("the completion to be held back", || {
        blocked_on_lock(&app.pool, "SET status = 'Done'")
    })
    .await;
    let stopping = worker.stop();
    tokio::pin!(stopping);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut stopping)
            .await
            .is_err(),
        "the worker reported stopped while a finished job's completion was unwritten"
    );
    completions.open().await;
    stopping.await;
    assert_eq!(
        app.job_status(&id).await,
        JobState::Done,
        "the completion was written, not handed back"
    );
    assert_eq!(count_runs(&app, "finishing").await, 1);
    app.finish().await;
}

#[tokio::test]
async fn a_claim_that_lands_after_the_drain_began_is_handed_back_without_starting_its_job() {
    // The race behind the CI flake of issue 20: the database shows a claimed row `Running` before the runner
    // has the claim's answer, so a drain that begins in between hands back a job that looked in flight.
    let app = TestQueue::builder().without_worker().spawn().await;
    let worker = app
        .start_worker(&[("test_record", 1)], QueueConfig::default())
        .await;
    // Hold back the claim that takes the job, after it marked the row `Running` and before the runner has its
    // answer: the moment the flaky test used to stop the worker in.
    let claims = Gate::closed(&app.pool).await;
    kinds::hold_claim_of(&app.pool, "late", &claims).await;
    let Enqueued::New(id) = app.enqueue(&record("late")).await else {
        panic!()
    };
    eventually("the claim to be held back", || {
        blocked_on_lock(&app.pool, "FOR UPDATE SKIP LOCKED")
    })
    .await;
    worker.begin_shutdown();
    eventually("the drain to begin", || async {
        worker.health().is_draining()
    })
    .await;
    let released_at: kinds::Timestamp = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    claims.open().await;
    worker.stop().await;

    let job = ops::find_job(&app.pool, &id).await.unwrap().unwrap();
    assert_eq!(
        (job.status, job.attempts, job.lock_by),
        (JobState::Pending, 0, None),
        "handed back with the attempt not counted"
    );
    assert!(
        job.run_at >= released_at,
        "the claim landed and the drain handed the row back (run_at {}, lock released at {released_at})",
        job.run_at
    );
    assert_eq!(count_runs(&app, "late").await, 0, "the drain started it");

    let next = app
        .start_worker(&[("test_record", 1)], QueueConfig::default())
        .await;
    app.drain().await;
    next.stop().await;
    assert_eq!(count_runs(&app, "late").await, 1);
    app.finish().await;
}

#[tokio::test]
async fn shutdown_hands_back_jobs_that_cannot_finish_within_the_grace_period() {
    let config = QueueConfig {
        shutdown_grace: Duration::from_millis(200),
        ..QueueConfig::default()
    };
    let mut app = TestQueue::builder().queue_config(config).spawn().await;
    let Enqueued::New(id) = app
        .enqueue(&Slow {
            label: "long".into(),
            ms: 30_000,
        })
        .await
    else {
        panic!()
    };
    while app.job_status(&id).await != JobState::Running {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    app.stop().await;
    let job = ops::find_job(&app.pool, &id).await.unwrap().unwrap();
    assert_eq!(
        (job.status, job.attempts, job.lock_by),
        (JobState::Pending, 0, None),
        "handed back, attempt not counted"
    );
    assert!(
        app.metrics_text()
            .contains("queue_jobs_handed_back_total{queue=\"test_slow\"} 1"),
        "{}",
        app.metrics_text()
    );
    app.discard_unrun_jobs().await;
    app.finish().await;
}

#[tokio::test]
async fn readiness_turns_false_while_a_worker_drains() {
    let config = QueueConfig {
        shutdown_grace: Duration::from_secs(10),
        ..QueueConfig::default()
    };
    let app = TestQueue::builder().without_worker().spawn().await;
    let worker = app.start_worker(&[("test_slow", 1)], config).await;
    let Enqueued::New(id) = app
        .enqueue(&Slow {
            label: "draining".into(),
            ms: 1500,
        })
        .await
    else {
        panic!()
    };
    // Started, not only claimed: a claimed job the runner has not started when the drain begins is handed back.
    let started = app
        .metrics
        .job_wait_seconds
        .with_label_values(&["test_slow"]);
    while started.get_sample_count() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(app.job_status(&id).await, JobState::Running);
    assert!(worker.health().readiness().is_ok());
    worker.begin_shutdown();
    eventually("the worker to report draining", || async {
        worker.health().readiness() == Err("draining".to_owned())
    })
    .await;
    worker.stop().await;
    assert_eq!(
        app.job_status(&id).await,
        JobState::Done,
        "the in-flight job finished during the drain"
    );
    app.finish().await;
}

fn slow(label: &str, ms: u64) -> queue::NewJob {
    queue::NewJob::of(
        &Slow {
            label: label.into(),
            ms,
        },
        EnqueueOptions::default(),
    )
}

/// Rows of `test_slow` labelled `long-…` that workers hold, started or waiting in a local buffer.
async fn held_long_jobs(app: &TestQueue) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM apalis.jobs WHERE job_type = 'test_slow' AND status = 'Running'
            AND convert_from(job, 'UTF8')::jsonb->>'label' LIKE 'long-%'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_backlog_of_short_jobs_is_claimed_ahead_and_unstarted_ones_are_handed_back_on_shutdown() {
    let app = TestQueue::builder().without_worker().spawn().await;
    // Forty short jobs teach the runner that this queue's attempts are short; six long ones follow in order.
    // "Short" is up to 5 s here: under CI's load a job that takes 1 ms on a quiet machine can average more than
    // production's 20 ms, and the test is about what claiming ahead does, not about the threshold.
    let mut jobs: Vec<_> = (0..40).map(|i| slow(&format!("short-{i}"), 0)).collect();
    jobs.extend((0..6).map(|i| slow(&format!("long-{i}"), 60_000)));
    queue::enqueue_many(&app.pool, jobs).await.unwrap();
    let worker = app
        .start_worker(
            &[("test_slow", 2)],
            QueueConfig {
                shutdown_grace: Duration::from_millis(300),
                claim_ahead_max_attempt: Duration::from_secs(5),
                ..QueueConfig::default()
            },
        )
        .await;
    // Two slots run long jobs; a batch of two more waits in the local buffer, claimed ahead. (Short jobs are
    // not counted: finished ones stay 'Running' until their batched completion is written.)
    eventually("a batch to be claimed ahead", || async {
        held_long_jobs(&app).await >= 4
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(held_long_jobs(&app).await, 4, "at most one batch ahead");
    worker.stop().await;

    let long: Vec<(JobState, i32)> = sqlx::query_as(
        "SELECT status, attempts FROM apalis.jobs WHERE job_type = 'test_slow'
            AND convert_from(job, 'UTF8')::jsonb->>'label' LIKE 'long-%'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(long.len(), 6);
    assert!(
        long.iter()
            .all(|(status, attempts)| *status == JobState::Pending && *attempts == 0),
        "running and buffered jobs are handed back with the attempt not counted: {long:?}"
    );
    assert_eq!(count_runs(&app, "short-0").await, 1);
    sqlx::query("DELETE FROM apalis.jobs WHERE job_type = 'test_slow' AND status = 'Pending'")
        .execute(&app.pool)
        .await
        .unwrap();
    app.finish().await;
}

#[tokio::test]
async fn a_worker_that_stopped_cleanly_leaves_no_row_for_the_console_to_list() {
    let app = TestQueue::builder().without_worker().spawn().await;
    let worker = app
        .start_worker(&[("test_record", 2)], QueueConfig::default())
        .await;
    let listed = || async {
        ops::workers(
            &app.pool,
            queue::runtime::DEFAULT_STORAGE_NAME,
            Duration::from_secs(3600),
        )
        .await
        .unwrap()
        .len()
    };
    assert_eq!(listed().await, 1);
    worker.stop().await;
    assert_eq!(listed().await, 0, "deregistered once drained");
    app.finish().await;
}
