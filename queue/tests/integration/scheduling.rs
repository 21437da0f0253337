//! When a job starts: a snoozed job later without spending attempts, a delayed job not before its time, an
//! idle worker at once on an insert's notification (also one that arrives while a claim is on its way), and
//! snoozed or retried jobs when due, not at the next poll.

use std::time::Duration;

use queue::{EnqueueOptions, Enqueued, JobState, QueueConfig};

use crate::support::{
    TestQueue, blocked_on_lock, count_runs, eventually,
    kinds::{self, FailTimes, Gate, SnoozeTimes},
    record, worker_listening,
};

#[tokio::test]
async fn a_snoozed_job_runs_again_later_without_spending_attempts() {
    let app = TestQueue::spawn().await;
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
    let runs = kinds::runs(&app.pool, "poller").await;
    assert_eq!(runs.len(), 4);
    assert!(
        runs.iter().all(|(attempt, _)| *attempt == 1),
        "snoozes are not attempts: {runs:?}"
    );
    for pair in runs.windows(2) {
        let gap = (pair[1].1 - pair[0].1).num_milliseconds();
        assert!(gap >= 290, "snoozed for {gap} ms, asked for 300");
    }
    assert_eq!(app.job_status(&id).await, JobState::Done);
    app.finish().await;
}

#[tokio::test]
async fn an_idle_worker_is_woken_by_notify_without_waiting_for_its_poll() {
    // A 60 s poll: only LISTEN/NOTIFY can start the job within the test's patience.
    let config = QueueConfig {
        poll_interval: Duration::from_secs(60),
        ..QueueConfig::default()
    };
    let app = TestQueue::builder().queue_config(config).spawn().await;
    eventually("the worker to listen", || worker_listening(&app.pool)).await;
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
    let app = TestQueue::spawn().await;
    let options = EnqueueOptions::delayed(Duration::from_millis(800));
    let Enqueued::New(id) = app.enqueue_with(&record("delayed"), options).await else {
        panic!()
    };
    let run_at: kinds::Timestamp =
        sqlx::query_scalar("SELECT run_at FROM apalis.jobs WHERE id = $1")
            .bind(&id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    app.drain().await;
    let runs = kinds::runs(&app.pool, "delayed").await;
    assert_eq!(runs.len(), 1);
    assert!(
        runs[0].1 >= run_at,
        "started at {} before its run_at {run_at}",
        runs[0].1
    );
    app.finish().await;
}

#[tokio::test]
async fn snoozed_and_retried_jobs_start_when_due_without_waiting_for_the_poll() {
    // A 60 s poll: delayed rows send no notification, so only the runner's own wake-up can start them in time.
    let config = QueueConfig {
        poll_interval: Duration::from_secs(60),
        ..QueueConfig::default()
    };
    let app = TestQueue::builder().queue_config(config).spawn().await;
    eventually("the worker to listen", || worker_listening(&app.pool)).await;
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

#[tokio::test]
async fn an_expedited_job_runs_now_instead_of_at_its_scheduled_time() {
    // A 60 s poll and an hour's delay: only expedite, with its notification, can start the job in time.
    let config = QueueConfig {
        poll_interval: Duration::from_secs(60),
        ..QueueConfig::default()
    };
    let app = TestQueue::builder().queue_config(config).spawn().await;
    eventually("the worker to listen", || worker_listening(&app.pool)).await;
    app.enqueue_with(
        &record("expedited"),
        EnqueueOptions::delayed(Duration::from_secs(3600)).with_key("later"),
    )
    .await;
    let queue_name = <kinds::Record as queue::Job>::NAME;
    let mut conn = app.pool.acquire().await.unwrap();
    assert!(
        queue::expedite(&mut conn, queue_name, "later")
            .await
            .unwrap()
    );
    eventually("the expedited job to run", || async {
        count_runs(&app, "expedited").await == 1
    })
    .await;
    // Nothing waits under that key any more, and an unknown key names nothing: neither call moves a job.
    assert!(
        !queue::expedite(&mut conn, queue_name, "later")
            .await
            .unwrap()
    );
    assert!(
        !queue::expedite(&mut conn, queue_name, "no such key")
            .await
            .unwrap()
    );
    drop(conn);
    app.finish().await;
}

#[tokio::test]
async fn a_notification_that_arrives_while_a_claim_is_on_its_way_is_not_lost_when_that_claim_comes_back_short()
 {
    // The CI flake of stop 28: a runner's claim, sent before a job was due, came back empty after the job's
    // notification had arrived, and the empty answer cleared the runner's wish to claim; the job then waited for
    // the poll. A 60 s poll here: only the notification can start the second job in time.
    let config = QueueConfig {
        poll_interval: Duration::from_secs(60),
        ..QueueConfig::default()
    };
    let app = TestQueue::builder()
        .queue_config(config)
        .concurrency(4)
        .spawn()
        .await;
    eventually("the worker to listen", || worker_listening(&app.pool)).await;
    let claims = Gate::closed(&app.pool).await;
    kinds::hold_claim_of(&app.pool, "first", &claims).await;
    app.enqueue(&record("first")).await;
    eventually("the claim of the first job to be held back", || {
        blocked_on_lock(&app.pool, "FOR UPDATE SKIP LOCKED")
    })
    .await;
    // Due now, but the held claim chose its rows before this insert: only the insert's notification, which
    // reaches the runner while that claim is on its way, can start it. The pause lets the listener hand the
    // notification on before the claim answers (with less, the test could pass without the fix, never fail
    // with it).
    app.enqueue(&record("second")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The claim answers with one row of the four it asked for: short, so nothing more seemed due.
    claims.open().await;
    eventually("the second job to run", || async {
        count_runs(&app, "second").await == 1
    })
    .await;
    assert_eq!(count_runs(&app, "first").await, 1);
    app.finish().await;
}
