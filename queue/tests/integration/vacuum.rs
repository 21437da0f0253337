//! Vacuum keeps the claim cheap: every finished job leaves a dead entry in the claim index that each claim reads
//! past until a vacuum takes it out, and the queue's table is set so a vacuum does that however long the
//! history of finished rows it keeps (`queue/migrations/20261206000002_queue_autovacuum.sql`).

use queue::{EnqueueOptions, runtime};

use crate::support::{TestQueue, record};

/// Runs one statement of the test's own (setup, a vacuum).
async fn execute(app: &TestQueue, sql: &'static str) {
    sqlx::query(sql).execute(&app.pool).await.unwrap();
}

/// Pages (shared buffers) an idle claim of `queue` reads: the plan of the runtime's own claim statement, run.
async fn pages_read_by_a_claim(app: &TestQueue, queue: &str) -> i64 {
    let plan: serde_json::Value = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {}",
        runtime::CLAIM_SQL
    )))
    .bind(queue)
    .bind("vacuum-test")
    .bind(32_i64)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let top = &plan[0]["Plan"];
    assert_eq!(top["Actual Rows"], 0, "the queue is idle: {plan}");
    top["Shared Hit Blocks"].as_i64().unwrap() + top["Shared Read Blocks"].as_i64().unwrap()
}

#[tokio::test]
async fn a_vacuum_takes_finished_jobs_out_of_the_claim_index_even_beside_a_long_history() {
    let app = TestQueue::spawn().await;
    // Autovacuum would clean up at a moment of its own choosing; here the test runs the vacuum it would run.
    execute(
        &app,
        "ALTER TABLE apalis.jobs SET (autovacuum_enabled = false)",
    )
    .await;
    // A long history of finished rows (a week's worth, kept for deduplication and the console), vacuumed.
    execute(
        &app,
        "INSERT INTO apalis.jobs (job, id, job_type, status, attempts, run_at, lock_by, lock_at, done_at)
         SELECT '\\x00', 'history-' || n, 'test_record', 'Done', 1, now() - interval '1 day', 'gone',
                now() - interval '1 day', now() - interval '1 day'
           FROM generate_series(1, 200000) AS n",
    )
    .await;
    execute(&app, "VACUUM ANALYZE apalis.jobs").await;
    let clean = pages_read_by_a_claim(&app, "test_record").await;

    // A thousand jobs run and finish: each leaves its entry in the claim index, read past by every claim.
    let jobs: Vec<_> = (0..1000)
        .map(|i| queue::NewJob::of(&record(&format!("burst-{i}")), EnqueueOptions::default()))
        .collect();
    assert_eq!(queue::enqueue_many(&app.pool, jobs).await.unwrap(), 1000);
    app.drain().await;
    let after_the_burst = pages_read_by_a_claim(&app, "test_record").await;
    assert!(
        after_the_burst > clean,
        "an idle claim reads past the finished jobs' entries: {after_the_burst} pages, {clean} before them"
    );

    // Their dead rows sit on about 1% of the table's pages, and PostgreSQL's default (`INDEX_CLEANUP AUTO`)
    // skips the index pass under 2%: the entries stay.
    execute(&app, "VACUUM (INDEX_CLEANUP AUTO) apalis.jobs").await;
    let after_the_default_vacuum = pages_read_by_a_claim(&app, "test_record").await;
    assert!(
        after_the_default_vacuum > clean,
        "PostgreSQL's default vacuum left the finished jobs' entries in the claim index: \
         {after_the_default_vacuum} pages, {clean} before them"
    );
    // The table's own setting (`vacuum_index_cleanup = on`, which autovacuum follows too) takes them out.
    execute(&app, "VACUUM apalis.jobs").await;
    let vacuumed = pages_read_by_a_claim(&app, "test_record").await;
    assert!(
        vacuumed <= clean,
        "after a vacuum an idle claim reads no more than before the burst: {vacuumed} pages, {clean} before"
    );
    app.finish().await;
}
