//! Claiming and completing: workers sharing a queue never run a job twice, long jobs are not claimed ahead (so
//! a second worker takes what the first cannot start), and a completion finds its rows by id.

use std::time::Duration;

use queue::{EnqueueOptions, QueueConfig, runtime};

use crate::support::{TestQueue, eventually, kinds::Gate, record};

#[tokio::test]
async fn two_workers_share_a_queue_without_running_any_job_twice() {
    let app = TestQueue::builder().without_worker().spawn().await;
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

/// Rows of `queue` that workers hold, started or waiting in a local buffer.
async fn held_jobs(app: &TestQueue, queue: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM apalis.jobs WHERE job_type = $1 AND status = 'Running'",
    )
    .bind(queue)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

/// How many `Gated` jobs have started, whatever their label.
async fn started_gated_jobs(app: &TestQueue) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM test_job_runs WHERE label LIKE '%:started'")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn long_jobs_are_not_claimed_ahead_so_a_second_worker_takes_what_the_first_cannot_start() {
    let app = TestQueue::builder().without_worker().spawn().await;
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

#[tokio::test]
async fn completing_jobs_looks_them_up_by_id_whatever_the_statistics_say() {
    let app = TestQueue::builder().without_worker().spawn().await;
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
async fn claims_and_completions_commit_without_waiting_for_the_disk_and_leave_the_connection_durable()
 {
    let app = TestQueue::builder().without_worker().spawn().await;
    queue::enqueue(&app.pool, &record("relaxed")).await.unwrap();
    let mut connection = app.pool.acquire().await.unwrap();

    // The claim turns synchronous commit off for its own transaction only.
    let mut claim = sqlx::Connection::begin(&mut *connection).await.unwrap();
    assert_eq!(setting(&mut claim).await, "on");
    let claimed: Vec<String> = sqlx::query(runtime::CLAIM_SQL)
        .bind("test_record")
        .bind("relaxed-worker")
        .bind(10_i64)
        .fetch_all(&mut *claim)
        .await
        .unwrap()
        .iter()
        .map(|row| sqlx::Row::get(row, "id"))
        .collect();
    assert_eq!(claimed.len(), 1);
    assert_eq!(setting(&mut claim).await, "off");
    claim.commit().await.unwrap();
    assert_eq!(
        setting(&mut connection).await,
        "on",
        "a job handler's transaction on this connection is durable again"
    );

    // So does the completion.
    let mut complete = sqlx::Connection::begin(&mut *connection).await.unwrap();
    let done = sqlx::query(runtime::COMPLETE_SQL)
        .bind(&claimed)
        .bind("relaxed-worker")
        .execute(&mut *complete)
        .await
        .unwrap();
    assert_eq!(done.rows_affected(), 1);
    assert_eq!(setting(&mut complete).await, "off");
    complete.commit().await.unwrap();
    assert_eq!(setting(&mut connection).await, "on");
    drop(connection);
    app.finish().await;
}

/// The connection's `synchronous_commit` as its current transaction sees it.
async fn setting(connection: &mut sqlx::PgConnection) -> String {
    sqlx::query_scalar("SELECT current_setting('synchronous_commit')")
        .fetch_one(connection)
        .await
        .unwrap()
}

/// Claim statements of this database waiting for a lock.
async fn claims_waiting(app: &TestQueue) -> i64 {
    queue::testing::waiting_on_lock(&app.pool, runtime::CLAIM_SQL).await
}

#[tokio::test]
async fn under_a_backlog_of_short_jobs_a_runner_with_a_full_batch_of_slots_keeps_two_claims_on_their_way()
 {
    let app = TestQueue::builder().without_worker().spawn().await;
    let jobs: Vec<_> = (0..5_000)
        .map(|i| queue::NewJob::of(&record(&format!("ahead-{i}")), EnqueueOptions::default()))
        .collect();
    queue::enqueue_many(&app.pool, jobs).await.unwrap();
    let worker = app
        .start_worker(
            &[("test_record", runtime::CLAIM_BATCH_MAX)],
            // Each job writes a row through the test pool; under CI's load that may take longer than the default
            // threshold for a "short" attempt, which is not what this test is about.
            QueueConfig {
                claim_ahead_max_attempt: Duration::from_secs(5),
                ..QueueConfig::default()
            },
        )
        .await;
    // Full claims have come back and attempts were short: the runner is claiming ahead.
    eventually("the runner to finish a few hundred jobs", || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM apalis.jobs WHERE job_type = 'test_record' AND status = 'Done'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap()
            >= 400
    })
    .await;
    // From now on every claim waits on the table.
    let mut hold = app.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE apalis.jobs IN SHARE MODE")
        .execute(&mut *hold)
        .await
        .unwrap();
    eventually("two claims on their way", || async {
        claims_waiting(&app).await == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(claims_waiting(&app).await, 2, "and never a third");
    hold.rollback().await.unwrap();
    app.drain().await;
    worker.stop().await;
    let runs: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT label) FROM test_job_runs WHERE label LIKE 'ahead-%'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(runs, 5_000, "every job ran");
    app.finish().await;
}
