//! Each guard rail of the queue layer (see docs/apalis-postgres.md), shown against real Postgres.

use std::time::Duration;

use jobs::{
    config::QueueConfig,
    queue::{self, EnqueueOptions, Enqueued, ops, runtime},
};
use testkit::{
    TestApp, blocked_on_lock, eventually,
    test_jobs::{
        self, AlwaysFails, FailTimes, Gate, Hangs, Panics, Permanent, Record, Slow, SnoozeTimes,
    },
};

fn record(label: &str) -> Record {
    Record {
        label: label.into(),
    }
}

async fn count_runs(app: &TestApp, label: &str) -> usize {
    test_jobs::runs(&app.pool, label).await.len()
}

#[tokio::test]
async fn a_job_enqueued_in_a_rolled_back_transaction_never_exists() {
    let app = TestApp::builder().without_worker().spawn().await;
    let mut tx = app.pool.begin().await.unwrap();
    let enqueued = queue::enqueue(&mut *tx, &record("rolled-back"))
        .await
        .unwrap();
    assert!(enqueued.is_new());
    tx.rollback().await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM apalis.jobs")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
    app.finish().await;
}

#[tokio::test]
async fn a_duplicate_idempotency_key_reports_already_queued_and_leaves_the_transaction_usable() {
    let app = TestApp::spawn().await;
    let mut tx = app.pool.begin().await.unwrap();
    let first = queue::enqueue_with(&mut *tx, &record("dup"), EnqueueOptions::key("k1"))
        .await
        .unwrap();
    let second = queue::enqueue_with(&mut *tx, &record("dup"), EnqueueOptions::key("k1"))
        .await
        .unwrap();
    assert!(first.is_new());
    assert_eq!(second, Enqueued::AlreadyQueued);
    // The transaction was not aborted by the duplicate: more work in it commits.
    queue::enqueue(&mut *tx, &record("after-dup"))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    app.drain().await;
    assert_eq!(count_runs(&app, "dup").await, 1);
    assert_eq!(count_runs(&app, "after-dup").await, 1);
    app.finish().await;
}

#[tokio::test]
async fn a_failed_job_is_retried_later_with_backoff_and_then_succeeds() {
    let app = TestApp::spawn().await;
    app.enqueue(&FailTimes {
        label: "flaky".into(),
        failures: 2,
    })
    .await;
    app.drain().await;
    let runs = test_jobs::runs(&app.pool, "flaky").await;
    assert_eq!(runs.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2, 3]);
    // Policy: base 400 ms with equal jitter -> at least 200 ms, then at least 400 ms.
    let first_gap = (runs[1].1 - runs[0].1).num_milliseconds();
    let second_gap = (runs[2].1 - runs[1].1).num_milliseconds();
    assert!(first_gap >= 190, "first retry came after {first_gap} ms");
    assert!(second_gap >= 390, "second retry came after {second_gap} ms");
    app.finish().await;
}

#[tokio::test]
async fn a_job_waiting_for_its_retry_holds_no_worker_slot() {
    let app = TestApp::builder().concurrency(1).spawn().await;
    app.enqueue(&FailTimes {
        label: "retrying".into(),
        failures: 1,
    })
    .await;
    // Wait for the first failure to be recorded, then queue other work.
    while count_runs(&app, "retrying").await == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    app.enqueue(&record("meanwhile")).await;
    app.drain().await;
    let retry = test_jobs::runs(&app.pool, "retrying").await;
    let meanwhile = test_jobs::runs(&app.pool, "meanwhile").await;
    assert!(
        meanwhile[0].1 < retry[1].1,
        "with one slot, other work ran while the failed job waited to retry"
    );
    app.finish().await;
}

#[tokio::test]
async fn a_job_out_of_attempts_is_dead_with_its_last_error_and_an_operator_can_run_it_again() {
    let mut app = TestApp::spawn().await;
    let Enqueued::New(id) = app
        .enqueue(&AlwaysFails {
            label: "doomed".into(),
        })
        .await
    else {
        panic!()
    };
    app.drain().await;
    assert_eq!(count_runs(&app, "doomed").await, 3, "max_attempts is 3");
    let dead = ops::dead_jobs(&app.pool, Some("test_always_fails"), 10)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, id);
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(
        dead[0].last_error.as_deref(),
        Some("upstream said no (attempt 3)")
    );

    assert!(ops::retry_job(&app.pool, &id).await.unwrap());
    app.drain().await;
    assert_eq!(
        count_runs(&app, "doomed").await,
        6,
        "retried from its first attempt"
    );
    app.expect_dead(1);
    app.finish().await;
}

#[tokio::test]
async fn a_permanent_error_kills_the_job_after_one_attempt() {
    let mut app = TestApp::spawn().await;
    let Enqueued::New(id) = app
        .enqueue(&Permanent {
            label: "refused".into(),
        })
        .await
    else {
        panic!()
    };
    app.drain().await;
    assert_eq!(count_runs(&app, "refused").await, 1);
    let job = ops::find_job(&app.pool, &id).await.unwrap().unwrap();
    assert_eq!(job.status, "Failed");
    assert_eq!(job.last_error.as_deref(), Some("content policy refusal"));
    app.expect_dead(1);
    app.finish().await;
}

#[tokio::test]
async fn a_panicking_job_fails_that_job_with_the_panic_kept_and_the_worker_keeps_working() {
    let mut app = TestApp::builder().concurrency(1).spawn().await;
    let Enqueued::New(id) = app
        .enqueue(&Panics {
            label: "buggy".into(),
        })
        .await
    else {
        panic!()
    };
    app.drain().await;
    app.enqueue(&record("after-panic")).await;
    app.drain().await;
    let job = ops::find_job(&app.pool, &id).await.unwrap().unwrap();
    assert_eq!(job.status, "Failed");
    assert_eq!(job.attempts, 2);
    assert_eq!(
        job.last_error.as_deref(),
        Some("attempt panicked: bug in job buggy")
    );
    assert_eq!(count_runs(&app, "after-panic").await, 1);
    assert!(app.worker_health.as_ref().unwrap().readiness().is_ok());
    app.expect_dead(1);
    app.finish().await;
}

#[tokio::test]
async fn an_attempt_past_its_timeout_is_cancelled_and_never_left_running() {
    let mut app = TestApp::spawn().await;
    let Enqueued::New(id) = app
        .enqueue(&Hangs {
            label: "hung".into(),
        })
        .await
    else {
        panic!()
    };
    app.drain().await;
    let job = ops::find_job(&app.pool, &id).await.unwrap().unwrap();
    assert_eq!(job.status, "Failed");
    assert_eq!(
        job.last_error.as_deref(),
        Some("attempt timed out after 300ms")
    );
    app.expect_dead(1);
    app.finish().await;
}

#[tokio::test]
async fn an_undecodable_payload_fails_that_job_only_and_the_worker_runs_the_rest() {
    let mut app = TestApp::builder().concurrency(1).spawn().await;
    sqlx::query(
        "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at)
         VALUES ('bad-payload', 'test_record', convert_to('{\"labl\": 1}', 'UTF8'), 'Pending', 0, 5, now())",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    app.enqueue(&record("good")).await;
    app.drain().await;
    let job = ops::find_job(&app.pool, "bad-payload")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.status, "Failed");
    assert_eq!(job.attempts, 1, "a decode error is permanent");
    assert!(
        job.last_error
            .unwrap()
            .starts_with("payload of test_record could not be decoded: missing field `label`")
    );
    assert_eq!(count_runs(&app, "good").await, 1);
    app.expect_dead(1);
    app.finish().await;
}

#[tokio::test]
async fn a_snoozed_job_runs_again_later_without_spending_attempts() {
    let app = TestApp::spawn().await;
    let Enqueued::New(id) = app
        .enqueue(&SnoozeTimes {
            label: "poller".into(),
            times: 3,
            snooze_ms: 300,
        })
        .await
    else {
        panic!()
    };
    app.drain().await;
    let runs = test_jobs::runs(&app.pool, "poller").await;
    assert_eq!(runs.len(), 4);
    assert!(
        runs.iter().all(|(attempt, _)| *attempt == 1),
        "snoozes are not attempts: {runs:?}"
    );
    for pair in runs.windows(2) {
        let gap = (pair[1].1 - pair[0].1).num_milliseconds();
        assert!(gap >= 290, "snoozed for {gap} ms, asked for 300");
    }
    assert_eq!(app.job_status(&id).await, "Done");
    app.finish().await;
}

#[tokio::test]
async fn an_idle_worker_is_woken_by_notify_without_waiting_for_its_poll() {
    // A 60 s poll: only LISTEN/NOTIFY can start the job within the test's patience.
    let config = QueueConfig {
        poll_interval: Duration::from_secs(60),
        ..QueueConfig::default()
    };
    let app = TestApp::builder().queue_config(config).spawn().await;
    eventually("the worker to listen", || {
        testkit::worker_listening(&app.pool)
    })
    .await;
    app.enqueue(&record("notified")).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while count_runs(&app, "notified").await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "an idle worker was not woken by the insert notification"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    app.drain().await;
    app.finish().await;
}

#[tokio::test]
async fn a_delayed_job_does_not_start_before_its_time_and_the_poll_starts_it_after() {
    let app = TestApp::spawn().await;
    let options = EnqueueOptions::delayed(Duration::from_millis(800));
    let Enqueued::New(id) = app.enqueue_with(&record("delayed"), options).await else {
        panic!()
    };
    let run_at: test_jobs::chrono_like::Timestamp =
        sqlx::query_scalar("SELECT run_at FROM apalis.jobs WHERE id = $1")
            .bind(&id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    app.drain().await;
    let runs = test_jobs::runs(&app.pool, "delayed").await;
    assert_eq!(runs.len(), 1);
    assert!(
        runs[0].1 >= run_at,
        "started at {} before its run_at {run_at}",
        runs[0].1
    );
    app.finish().await;
}

#[tokio::test]
async fn the_reaper_hands_back_jobs_of_a_worker_that_stopped_heartbeating_or_has_no_row() {
    let mut app = TestApp::builder().without_worker().spawn().await;
    sqlx::query(
        "INSERT INTO apalis.workers (id, worker_type, storage_name, layers, last_seen)
         VALUES ('dead-worker', 'test_record', 'createimage2', '', now() - interval '10 minutes')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    // `lock_by` references no table (a foreign key would cost a lookup per claimed row), so a worker row
    // deleted by hand, or lost, reads as a dead worker too.
    for (id, attempts, worker) in [
        ("orphan", 1, "dead-worker"),
        ("orphan-out-of-attempts", 5, "dead-worker"),
        ("orphan-of-a-vanished-worker", 1, "vanished-worker"),
    ] {
        sqlx::query(
            "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, lock_by, lock_at)
             VALUES ($1, 'test_record', convert_to('{\"label\": \"orphan\"}', 'UTF8'), 'Running', $2, 5, now(),
                     $3, now() - interval '10 minutes')",
        )
        .bind(id)
        .bind(attempts)
        .bind(worker)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    let reaped = runtime::reap_queue(
        &app.pool,
        "test_record",
        Duration::from_secs(60),
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
    assert_eq!(reaped, 3);
    assert_eq!(app.job_status("orphan").await, "Pending");
    assert_eq!(
        app.job_status("orphan-of-a-vanished-worker").await,
        "Pending"
    );
    let dead = ops::find_job(&app.pool, "orphan-out-of-attempts")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(dead.status, "Failed");
    assert!(
        dead.last_error
            .unwrap()
            .contains("abandoned by worker dead-worker")
    );

    // A live worker then runs the handed-back jobs (both carry the label "orphan").
    app.expect_dead(1);
    let worker = app
        .start_worker(&[("test_record", 2)], QueueConfig::default())
        .await;
    app.drain().await;
    worker.stop().await;
    assert_eq!(count_runs(&app, "orphan").await, 2);
    app.finish().await;
}

#[tokio::test]
async fn pruning_forgets_silent_workers_unless_they_hold_an_unfinished_job() {
    let app = TestApp::builder().without_worker().spawn().await;
    sqlx::query(
        "INSERT INTO apalis.workers (id, worker_type, storage_name, layers, last_seen)
         VALUES ('silent-done', 'test_record', 'createimage2', '', now() - interval '2 days'),
                ('silent-running', 'test_record', 'createimage2', '', now() - interval '2 days'),
                ('recent', 'test_record', 'createimage2', '', now())",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    // A finished job keeps the worker that ran it (the console shows it); it does not keep the worker row.
    sqlx::query(
        "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, lock_by, lock_at, done_at)
         VALUES ('finished', 'test_record', '\\x7b7d', 'Done', 1, 5, now(), 'silent-done', now(), now()),
                ('unfinished', 'test_record', '\\x7b7d', 'Running', 1, 5, now(), 'silent-running', now(), NULL)",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    ops::prune_finished(
        &app.pool,
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
    let workers: Vec<String> = sqlx::query_scalar("SELECT id FROM apalis.workers ORDER BY id")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(workers, ["recent", "silent-running"]);
    let finished_by: Option<String> =
        sqlx::query_scalar("SELECT lock_by FROM apalis.jobs WHERE id = 'finished'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(finished_by.as_deref(), Some("silent-done"));
    app.discard_unrun_jobs().await;
    app.finish().await;
}

#[tokio::test]
async fn a_job_running_far_past_its_timeout_is_reaped_even_if_its_worker_heartbeats() {
    let app = TestApp::builder().without_worker().spawn().await;
    sqlx::query(
        "INSERT INTO apalis.workers (id, worker_type, storage_name, layers, last_seen)
         VALUES ('live-but-stuck', 'test_record', 'createimage2', '', now())",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, lock_by, lock_at)
         VALUES ('stuck', 'test_record', convert_to('{\"label\": \"stuck\"}', 'UTF8'), 'Running', 1, 5, now(),
                 'live-but-stuck', now() - interval '2 hours')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let reaped = runtime::reap_queue(
        &app.pool,
        "test_record",
        Duration::from_secs(60),
        Duration::from_secs(90),
    )
    .await
    .unwrap();
    assert_eq!(reaped, 1);
    assert_eq!(app.job_status("stuck").await, "Pending");
    app.discard_unrun_jobs().await;
    app.finish().await;
}

#[tokio::test]
async fn workers_keep_working_after_their_database_connections_are_killed() {
    let app = TestApp::spawn().await;
    app.enqueue(&record("before-outage")).await;
    app.drain().await;
    // Every connection of this database is cut, as in a failover or a restart of the server.
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
        .bind(&app.db.name)
        .execute(&app.pool)
        .await
        .unwrap();
    app.enqueue(&record("after-outage")).await;
    app.drain().await;
    assert_eq!(count_runs(&app, "after-outage").await, 1);
    app.finish().await;
}

#[tokio::test]
async fn a_worker_that_cannot_reach_the_database_reports_not_ready() {
    let app = TestApp::builder().without_worker().spawn().await;
    // A worker whose pool points at a port where nothing listens; each call gives up after 300 ms rather than
    // production's 5 s, so the test (start, refused claims, drain) is quick.
    let unreachable = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_millis(300))
        .connect_lazy("postgres://postgres@127.0.0.1:1/none")
        .unwrap();
    let services = std::sync::Arc::new(jobs::queue::Services::new(
        QueueConfig {
            poll_interval: Duration::from_millis(100),
            ..QueueConfig::default()
        },
        jobs::telemetry::Metrics::new("t"),
    ));
    let stop = tokio_util::sync::CancellationToken::new();
    let plans = vec![jobs::queue::QueuePlan {
        queue: "test_record".into(),
        concurrency: 1,
    }];
    let running = queue::start(
        unreachable,
        &test_jobs::registry(),
        services,
        plans,
        stop.clone(),
    )
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Err(reason) = running.health.readiness() {
            assert!(reason.contains("test_record"), "{reason}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "worker kept reporting ready without a database"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    running.wait().await;
    app.finish().await;
}

// The drain's contract (see `Runner::run`): no job starts once it has begun; a started job runs on for the
// grace period; a finished job's completion is written before anything is handed back. Each test holds the
// runtime at the exact point it is about (a gate inside the job, a lock on the row or table the runtime's
// next statement needs), so none depends on timing.

#[tokio::test]
async fn shutdown_lets_a_started_job_finish_within_the_grace_period_and_records_it_done() {
    let app = TestApp::builder().without_worker().spawn().await;
    let worker = app.start_worker(&[("test_gated", 1)], grace(10_000)).await;
    let gate = Gate::closed(&app.pool).await;
    let Enqueued::New(id) = app.enqueue(&gate.job("finishing")).await else {
        panic!()
    };
    test_jobs::started(&app.pool, "finishing").await;
    worker.begin_shutdown();
    eventually("the drain to begin", || async {
        worker.health().is_draining()
    })
    .await;
    gate.open().await;
    worker.stop().await;
    assert_eq!(app.job_status(&id).await, "Done");
    assert_eq!(count_runs(&app, "finishing").await, 1);
    app.finish().await;
}

#[tokio::test]
async fn the_drain_writes_a_finished_jobs_completion_before_the_worker_reports_stopped() {
    let app = TestApp::builder().without_worker().spawn().await;
    let worker = app.start_worker(&[("test_gated", 1)], grace(10_000)).await;
    let gate = Gate::closed(&app.pool).await;
    let Enqueued::New(id) = app.enqueue(&gate.job("finishing")).await else {
        panic!()
    };
    test_jobs::started(&app.pool, "finishing").await;
    // Hold back the completion statement, and only it: a hand-back could still go through.
    let completions = Gate::closed(&app.pool).await;
    test_jobs::hold_job_updates(&app.pool, "SET status = 'Done'", &completions).await;
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
        "Done",
        "the completion was written, not handed back"
    );
    assert_eq!(count_runs(&app, "finishing").await, 1);
    app.finish().await;
}

#[tokio::test]
async fn a_claim_that_lands_after_the_drain_began_is_handed_back_without_starting_its_job() {
    // The race behind the CI flake of issue 20: the database shows a claimed row `Running` before the runner
    // has the claim's answer, so a drain that begins in between hands back a job that looked in flight.
    let app = TestApp::builder().without_worker().spawn().await;
    let worker = app
        .start_worker(&[("test_record", 1)], QueueConfig::default())
        .await;
    // Hold back the claim that takes the job, after it marked the row `Running` and before the runner has its
    // answer: the moment the flaky test used to stop the worker in.
    let claims = Gate::closed(&app.pool).await;
    test_jobs::hold_claim_of(&app.pool, "late", &claims).await;
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
    let released_at: test_jobs::chrono_like::Timestamp =
        sqlx::query_scalar("SELECT clock_timestamp()")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    claims.open().await;
    worker.stop().await;

    let job = ops::find_job(&app.pool, &id).await.unwrap().unwrap();
    assert_eq!(
        (job.status.as_str(), job.attempts, job.lock_by),
        ("Pending", 0, None),
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

fn grace(ms: u64) -> QueueConfig {
    QueueConfig {
        shutdown_grace: Duration::from_millis(ms),
        ..QueueConfig::default()
    }
}

#[tokio::test]
async fn shutdown_hands_back_jobs_that_cannot_finish_within_the_grace_period() {
    let config = QueueConfig {
        shutdown_grace: Duration::from_millis(200),
        ..QueueConfig::default()
    };
    let mut app = TestApp::builder().queue_config(config).spawn().await;
    let Enqueued::New(id) = app
        .enqueue(&Slow {
            label: "long".into(),
            ms: 30_000,
        })
        .await
    else {
        panic!()
    };
    while app.job_status(&id).await != "Running" {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    app.stop().await;
    let job = ops::find_job(&app.pool, &id).await.unwrap().unwrap();
    assert_eq!(
        (job.status.as_str(), job.attempts, job.lock_by),
        ("Pending", 0, None),
        "handed back, attempt not counted"
    );
    app.discard_unrun_jobs().await;
    app.finish().await;
}

#[tokio::test]
async fn two_workers_share_a_queue_without_running_any_job_twice() {
    let app = TestApp::builder().without_worker().spawn().await;
    // Two worker processes on the same database, 8 slots each (a waiting job holds one of the test pool's 30
    // connections).
    let first = app
        .start_worker(&[("test_gated", 8)], QueueConfig::default())
        .await;
    let second = app
        .start_worker(&[("test_gated", 8)], QueueConfig::default())
        .await;
    let gate = Gate::closed(&app.pool).await;
    let jobs: Vec<_> = (0..500)
        .map(|i| queue::NewJob::of(&gate.job(&format!("shared-{i}")), EnqueueOptions::default()))
        .collect();
    assert_eq!(queue::enqueue_many(&app.pool, jobs).await.unwrap(), 500);
    // While the gate is shut each worker can have only 8 jobs started, so 16 started means both took part,
    // however the claims raced.
    eventually("both workers to fill their slots", || async {
        let started: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM test_job_runs WHERE label LIKE 'shared-%:started'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        started == 16
    })
    .await;
    let holders: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT lock_by) FROM apalis.jobs WHERE job_type = 'test_gated' AND status = 'Running'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(holders, 2, "both workers hold jobs of the one queue");
    gate.open().await;
    app.drain().await;
    first.stop().await;
    second.stop().await;
    let (runs, distinct): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT label) FROM test_job_runs
          WHERE label LIKE 'shared-%' AND label NOT LIKE '%:started'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((runs, distinct), (500, 500), "every job ran exactly once");
    let started: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM test_job_runs WHERE label LIKE 'shared-%:started'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(started, 500, "no job was started twice");
    app.finish().await;
}

#[tokio::test]
async fn a_paused_queue_is_not_claimed_until_it_is_resumed() {
    let app = TestApp::spawn().await;
    ops::pause_queue(&app.pool, "test_record", "maintenance")
        .await
        .unwrap();
    let Enqueued::New(id) = app.enqueue(&record("paused")).await else {
        panic!()
    };
    // An absence needs a window to look in: a correct runner never claims it, however long this is.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(app.job_status(&id).await, "Pending");
    let stats = ops::queue_stats(&app.pool).await.unwrap();
    let paused = stats.iter().find(|s| s.queue == "test_record").unwrap();
    assert!(paused.paused && paused.waiting == 1);
    ops::resume_queue(&app.pool, "test_record").await.unwrap();
    app.drain().await;
    assert_eq!(count_runs(&app, "paused").await, 1);
    app.finish().await;
}

#[tokio::test]
async fn an_operator_can_cancel_a_waiting_job_and_discard_a_dead_one() {
    let mut app = TestApp::builder().without_worker().spawn().await;
    let Enqueued::New(waiting) = app.enqueue(&record("never")).await else {
        panic!()
    };
    assert!(ops::cancel_job(&app.pool, &waiting).await.unwrap());
    assert_eq!(app.job_status(&waiting).await, "Killed");
    assert!(
        !ops::discard_job(&app.pool, &waiting).await.unwrap(),
        "only dead jobs are discarded"
    );
    sqlx::query("UPDATE apalis.jobs SET status = 'Failed', done_at = now() WHERE id = $1")
        .bind(&waiting)
        .execute(&app.pool)
        .await
        .unwrap();
    assert!(ops::discard_job(&app.pool, &waiting).await.unwrap());
    assert!(ops::find_job(&app.pool, &waiting).await.unwrap().is_none());
    app.expect_dead(0);
    app.finish().await;
}

#[tokio::test]
async fn pruning_deletes_finished_jobs_past_their_retention_and_keeps_the_rest() {
    let app = TestApp::spawn().await;
    for (id, status, age_hours) in [
        ("old-done", "Done", 200),
        ("new-done", "Done", 1),
        ("old-dead", "Failed", 200),
        ("ancient-dead", "Failed", 800),
    ] {
        sqlx::query(
            "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, done_at)
             VALUES ($1, 'test_record', '\\x7b7d', $2, 1, 5, now(), now() - make_interval(hours => $3))",
        )
        .bind(id)
        .bind(status)
        .bind(age_hours)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    app.enqueue(&jobs::kinds::PruneFinishedJobs {}).await;
    app.drain().await;
    let left: Vec<String> =
        sqlx::query_scalar("SELECT id FROM apalis.jobs WHERE job_type = 'test_record' ORDER BY id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    // Defaults: done rows kept 168 h, dead rows 720 h.
    assert_eq!(left, vec!["new-done", "old-dead"]);
    sqlx::query("DELETE FROM apalis.jobs WHERE id = 'old-dead'")
        .execute(&app.pool)
        .await
        .unwrap();
    app.finish().await;
}

#[tokio::test]
async fn queue_gauges_match_a_known_queue_state_and_job_metrics_are_recorded() {
    let mut app = TestApp::builder().without_worker().spawn().await;
    for label in ["a", "b", "c"] {
        app.enqueue(&record(label)).await;
    }
    app.enqueue_with(
        &record("later"),
        EnqueueOptions::delayed(Duration::from_secs(3600)),
    )
    .await;
    sqlx::query(
        "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, done_at)
         VALUES ('dead-one', 'test_record', '\\x7b7d', 'Failed', 5, 5, now(), now())",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO apalis.workers (id, worker_type, storage_name, layers, last_seen)
         VALUES ('silent', 'test_record', 'createimage2', '', now() - interval '5 minutes')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, lock_by, lock_at)
         VALUES ('stuck-one', 'test_record', '\\x7b7d', 'Running', 1, 5, now(), 'silent', now())",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query("UPDATE apalis.jobs SET run_at = now() - interval '90 seconds' WHERE job = convert_to('{\"label\":\"a\"}', 'UTF8')")
        .execute(&app.pool)
        .await
        .unwrap();
    let text = app.metrics_text().await;
    for line in [
        "createimage2_jobs{queue=\"test_record\",state=\"waiting\"} 3",
        "createimage2_jobs{queue=\"test_record\",state=\"scheduled\"} 1",
        "createimage2_jobs{queue=\"test_record\",state=\"running\"} 1",
        "createimage2_jobs_stuck{queue=\"test_record\"} 1",
        "createimage2_jobs{queue=\"test_record\",state=\"dead\"} 1",
    ] {
        assert!(text.contains(line), "missing {line}");
    }
    let age_line = text
        .lines()
        .find(|l| {
            l.starts_with("createimage2_job_oldest_waiting_age_seconds{queue=\"test_record\"}")
        })
        .unwrap();
    let age: f64 = age_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((90.0..100.0).contains(&age), "{age_line}");
    app.discard_unrun_jobs().await;
    app.expect_dead(0);
    app.finish().await;
}

#[tokio::test]
async fn completed_jobs_are_counted_and_their_wait_and_duration_observed() {
    let app = TestApp::spawn().await;
    for i in 0..5 {
        app.enqueue(&record(&format!("m{i}"))).await;
    }
    app.drain().await;
    let text = app.metrics_text().await;
    assert!(
        text.contains("createimage2_jobs_completed_total{queue=\"test_record\"} 5"),
        "{text}"
    );
    assert!(text.contains("createimage2_job_wait_seconds_count{queue=\"test_record\"} 5"));
    assert!(text.contains(
        "createimage2_job_duration_seconds_count{outcome=\"done\",queue=\"test_record\"} 5"
    ));
    assert!(text.contains("createimage2_workers_alive{queue=\"test_record\"} 1"));
    app.finish().await;
}

#[tokio::test]
async fn readiness_turns_false_while_a_worker_drains() {
    let config = QueueConfig {
        shutdown_grace: Duration::from_secs(10),
        ..QueueConfig::default()
    };
    let app = TestApp::builder().without_worker().spawn().await;
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
    assert_eq!(app.job_status(&id).await, "Running");
    assert!(worker.health().readiness().is_ok());
    worker.begin_shutdown();
    eventually("the worker to report draining", || async {
        worker.health().readiness() == Err("draining".to_owned())
    })
    .await;
    worker.stop().await;
    assert_eq!(
        app.job_status(&id).await,
        "Done",
        "the in-flight job finished during the drain"
    );
    app.finish().await;
}

#[tokio::test]
async fn a_bulk_enqueue_wakes_workers_with_one_notification_per_queue_not_one_per_row() {
    let app = TestApp::builder().without_worker().spawn().await;
    let mut listener = sqlx::postgres::PgListener::connect_with(&app.pool)
        .await
        .unwrap();
    listener.listen(runtime::INSERT_CHANNEL).await.unwrap();
    let jobs: Vec<_> = (0..1000)
        .map(|i| queue::NewJob::of(&record(&format!("bulk-{i}")), EnqueueOptions::default()))
        .collect();
    assert_eq!(queue::enqueue_many(&app.pool, jobs).await.unwrap(), 1000);
    let first = listener.recv().await.unwrap();
    assert_eq!(first.payload(), r#"{"job_type" : "test_record"}"#);
    let more = tokio::time::timeout(Duration::from_millis(300), listener.recv()).await;
    assert!(more.is_err(), "a second notification arrived: {more:?}");
    // Delayed jobs notify nobody: the poll picks them up when due.
    queue::enqueue_with(
        &app.pool,
        &record("later"),
        EnqueueOptions {
            run_at: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
            ..EnqueueOptions::default()
        },
    )
    .await
    .unwrap();
    let delayed = tokio::time::timeout(Duration::from_millis(300), listener.recv()).await;
    assert!(delayed.is_err(), "a delayed job notified: {delayed:?}");
    let worker = app
        .start_worker(&[("test_record", 50)], QueueConfig::default())
        .await;
    for _ in 0..200 {
        if test_jobs::runs(&app.pool, "bulk-999").await.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.stop().await;
    sqlx::query("DELETE FROM apalis.jobs WHERE status = 'Pending'")
        .execute(&app.pool)
        .await
        .unwrap();
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

/// Rows of `queue` that workers hold, started or waiting in a local buffer.
async fn held_jobs(app: &TestApp, queue: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM apalis.jobs WHERE job_type = $1 AND status = 'Running'",
    )
    .bind(queue)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

/// Rows of `test_slow` labelled `long-…` that workers hold, started or waiting in a local buffer.
async fn held_long_jobs(app: &TestApp) -> i64 {
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
    let app = TestApp::builder().without_worker().spawn().await;
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

    let long: Vec<(String, i32)> = sqlx::query_as(
        "SELECT status, attempts FROM apalis.jobs WHERE job_type = 'test_slow'
            AND convert_from(job, 'UTF8')::jsonb->>'label' LIKE 'long-%'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(long.len(), 6);
    assert!(
        long.iter()
            .all(|(status, attempts)| status == "Pending" && *attempts == 0),
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
async fn long_jobs_are_not_claimed_ahead_so_a_second_worker_takes_what_the_first_cannot_start() {
    let app = TestApp::builder().without_worker().spawn().await;
    let first = app
        .start_worker(&[("test_gated", 2)], QueueConfig::default())
        .await;
    // Four jobs that run until the test opens the gate: none finishes while the workers are watched.
    let gate = Gate::closed(&app.pool).await;
    let jobs: Vec<_> = (0..4)
        .map(|i| queue::NewJob::of(&gate.job(&format!("long-{i}")), EnqueueOptions::default()))
        .collect();
    queue::enqueue_many(&app.pool, jobs).await.unwrap();
    eventually("the first worker to fill its two slots", || async {
        started_gated_jobs(&app).await == 2
    })
    .await;
    // It claims nothing more, however long we look.
    let mut most = 0;
    for _ in 0..25 {
        most = most.max(held_jobs(&app, "test_gated").await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        most, 2,
        "the first worker held more jobs than it could start"
    );
    let second = app
        .start_worker(&[("test_gated", 2)], QueueConfig::default())
        .await;
    eventually("the second worker to start the other two", || async {
        started_gated_jobs(&app).await == 4
    })
    .await;
    let workers: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT lock_by) FROM apalis.jobs WHERE job_type = 'test_gated' AND status = 'Running'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(workers, 2, "the four long jobs run on both workers at once");
    gate.open().await;
    app.drain().await;
    first.stop().await;
    second.stop().await;
    app.finish().await;
}

/// How many `Gated` jobs have started, whatever their label.
async fn started_gated_jobs(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM test_job_runs WHERE label LIKE '%:started'")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn completing_jobs_looks_them_up_by_id_whatever_the_statistics_say() {
    let app = TestApp::builder().without_worker().spawn().await;
    // A backlog analysed while every row was Pending, then a burn-down's worth of rows claimed and finished by
    // one worker without a vacuum in between: the statistics say nothing runs, the indexes on running rows and
    // on lock_by hold an entry for every one of them.
    let backlog: Vec<_> = (0..30_000)
        .map(|i| queue::NewJob::of(&record(&format!("backlog-{i}")), EnqueueOptions::default()))
        .collect();
    queue::enqueue_many(&app.pool, backlog).await.unwrap();
    sqlx::raw_sql(
        "ANALYZE apalis.jobs;
         INSERT INTO apalis.workers (id, worker_type, storage_name, layers, last_seen)
              VALUES ('plan-test', 'test_record', 'createimage2', '', now());
         UPDATE apalis.jobs SET status = 'Running', lock_by = 'plan-test', lock_at = now()
          WHERE id IN (SELECT id FROM apalis.jobs ORDER BY id LIMIT 20500);
         UPDATE apalis.jobs SET status = 'Done', done_at = now()
          WHERE id IN (SELECT id FROM apalis.jobs WHERE status = 'Running' ORDER BY id LIMIT 20000);",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let running: Vec<String> =
        sqlx::query_scalar("SELECT id FROM apalis.jobs WHERE status = 'Running' LIMIT 500")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    let ids = format!("{{{}}}", running.join(","));

    // The plan a worker's prepared statement settles on (its generic plan).
    let mut connection = app.pool.acquire().await.unwrap();
    let plan: String = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET plan_cache_mode = force_generic_plan;
         PREPARE complete(text[], text) AS {};
         EXPLAIN (FORMAT JSON, COSTS OFF) EXECUTE complete('{ids}', 'plan-test');",
        runtime::COMPLETE_SQL
    )))
    .fetch_all(&mut *connection)
    .await
    .unwrap()
    .last()
    .map(|row| sqlx::Row::get::<serde_json::Value, _>(row, 0).to_string())
    .unwrap();
    sqlx::raw_sql("DEALLOCATE complete; RESET plan_cache_mode")
        .execute(&mut *connection)
        .await
        .unwrap();
    drop(connection);
    let indexes: Vec<&str> = plan
        .split("\"Index Name\":\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap())
        .collect();
    assert_eq!(indexes, ["jobs_pkey"], "completion plan: {plan}");

    // And it does complete exactly those rows.
    sqlx::query(runtime::COMPLETE_SQL)
        .bind(&running)
        .bind("plan-test")
        .execute(&app.pool)
        .await
        .unwrap();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM apalis.jobs WHERE status = 'Running'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    sqlx::query("DELETE FROM apalis.jobs WHERE status = 'Pending'")
        .execute(&app.pool)
        .await
        .unwrap();
    app.finish().await;
}

#[tokio::test]
async fn snoozed_and_retried_jobs_start_when_due_without_waiting_for_the_poll() {
    // A 60 s poll: delayed rows send no notification, so only the runner's own wake-up can start them in time.
    let config = QueueConfig {
        poll_interval: Duration::from_secs(60),
        ..QueueConfig::default()
    };
    let app = TestApp::builder().queue_config(config).spawn().await;
    eventually("the worker to listen", || {
        testkit::worker_listening(&app.pool)
    })
    .await;
    app.enqueue(&SnoozeTimes {
        label: "snoozer".into(),
        times: 2,
        snooze_ms: 300,
    })
    .await;
    app.enqueue(&FailTimes {
        label: "failer".into(),
        failures: 1,
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while count_runs(&app, "snoozer").await < 3 || count_runs(&app, "failer").await < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "snoozed or retried jobs waited for the 60 s poll: snoozer ran {} times, failer {}",
            count_runs(&app, "snoozer").await,
            count_runs(&app, "failer").await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.drain().await;
    app.finish().await;
}
