//! What becomes of an attempt that fails: a retry later with backoff and no slot held meanwhile, death with its
//! last error once out of attempts (or at once, for a permanent error, a panic's attempt budget, a timeout, a
//! payload that does not decode), and an operator's retry of a dead job.

use queue::{Enqueued, JobState, ops};

use crate::support::{
    TestQueue, count_runs,
    kinds::{self, AlwaysFails, FailTimes, Hangs, Panics, Permanent},
    record,
};

#[tokio::test]
async fn a_failed_job_is_retried_later_with_backoff_and_then_succeeds() {
    let app = TestQueue::spawn().await;
    app.enqueue(&FailTimes {
        label: "flaky".into(),
        failures: 2,
    })
    .await;
    app.drain().await;
    let runs = kinds::runs(&app.pool, "flaky").await;
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
    // One slot per queue, and the other work is of the same queue, so it competes for that slot. It is due
    // before the failed job's retry can be (enqueued after the failing job, claimed after it, and due long
    // before the retry's backoff of 200 ms or more), so with the slot free it runs first whatever the load.
    let app = TestQueue::builder().concurrency(1).spawn().await;
    app.enqueue(&FailTimes {
        label: "retrying".into(),
        failures: 1,
    })
    .await;
    app.enqueue(&FailTimes {
        label: "meanwhile".into(),
        failures: 0,
    })
    .await;
    app.drain().await;
    let retry = kinds::runs(&app.pool, "retrying").await;
    let meanwhile = kinds::runs(&app.pool, "meanwhile").await;
    assert_eq!((retry.len(), meanwhile.len()), (2, 1));
    assert!(
        retry[0].1 < meanwhile[0].1,
        "the failing job was claimed first"
    );
    assert!(
        meanwhile[0].1 < retry[1].1,
        "with one slot, other work ran while the failed job waited to retry"
    );
    app.finish().await;
}

#[tokio::test]
async fn a_job_out_of_attempts_is_dead_with_its_last_error_and_an_operator_can_run_it_again() {
    let mut app = TestQueue::spawn().await;
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
    let mut app = TestQueue::spawn().await;
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
    assert_eq!(job.status, JobState::Failed);
    assert_eq!(job.last_error.as_deref(), Some("content policy refusal"));
    app.expect_dead(1);
    app.finish().await;
}

#[tokio::test]
async fn a_panicking_job_fails_that_job_with_the_panic_kept_and_the_worker_keeps_working() {
    let mut app = TestQueue::builder().concurrency(1).spawn().await;
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
    assert_eq!(job.status, JobState::Failed);
    assert_eq!(job.attempts, 2);
    assert_eq!(
        job.last_error.as_deref(),
        Some("attempt panicked: bug in job buggy")
    );
    assert_eq!(count_runs(&app, "after-panic").await, 1);
    assert!(app.worker_health.as_ref().unwrap().readiness().is_ok());
    // Both attempts panicked, and are counted as such for the alerts.
    assert!(
        app.metrics_text()
            .contains("queue_job_panics_total{queue=\"test_panics\"} 2"),
        "{}",
        app.metrics_text()
    );
    app.expect_dead(1);
    app.finish().await;
}

#[tokio::test]
async fn an_attempt_past_its_timeout_is_cancelled_and_never_left_running() {
    let mut app = TestQueue::spawn().await;
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
    assert_eq!(job.status, JobState::Failed);
    assert_eq!(
        job.last_error.as_deref(),
        Some("attempt timed out after 300ms")
    );
    app.expect_dead(1);
    app.finish().await;
}

#[tokio::test]
async fn an_undecodable_payload_fails_that_job_only_and_the_worker_runs_the_rest() {
    let mut app = TestQueue::builder().concurrency(1).spawn().await;
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
    assert_eq!(job.status, JobState::Failed);
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
