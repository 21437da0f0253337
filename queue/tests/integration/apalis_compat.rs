//! The storage is apalis-postgres' own: a job its `PostgresStorage` pushes is a job this runtime runs. (apalis'
//! `PostgresStorage` encodes with `apalis_codec::json::JsonCodec<Vec<u8>>`, i.e. `serde_json::to_vec` into the
//! `bytea` column `job`, the encoding this crate's enqueue writes and its registry decodes.)

use std::time::Duration;

use apalis::prelude::*;
use apalis_postgres::{Config, PostgresStorage};
use queue::{Job, JobState, QueueConfig};

use crate::support::{TestQueue, count_runs, eventually, kinds::Record, record, worker_listening};

#[tokio::test]
async fn a_job_pushed_with_apalis_postgres_own_storage_is_claimed_and_run_by_this_runtime() {
    let app = TestQueue::builder().without_worker().spawn().await;
    // A worker that polls once a minute: within the test's patience only the insert's notification can wake
    // it, so apalis' insert must reach the runtime the way this crate's own enqueue does.
    let worker = app
        .start_worker(
            &[(Record::NAME, 1)],
            QueueConfig {
                poll_interval: Duration::from_secs(60),
                ..QueueConfig::default()
            },
        )
        .await;
    eventually("the worker to listen", || worker_listening(&app.pool)).await;

    let job = record("pushed-by-apalis");
    let mut storage: PostgresStorage<Record> =
        PostgresStorage::new(&app.pool).with_config(Config::default().queue(Record::NAME));
    storage
        .push(job.clone())
        .await
        .expect("apalis-postgres pushes the job");

    // The row as apalis wrote it: the kind's queue name, and the payload as plain JSON bytes.
    let (id, job_type, payload): (String, String, Vec<u8>) =
        sqlx::query_as("SELECT id, job_type, job FROM apalis.jobs")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(job_type, Record::NAME);
    assert_eq!(
        payload,
        serde_json::to_vec(&job).unwrap(),
        "apalis' payload: {}",
        String::from_utf8_lossy(&payload)
    );

    app.drain().await;
    worker.stop().await;
    assert_eq!(count_runs(&app, "pushed-by-apalis").await, 1);
    let row = queue::ops::find_job(&app.pool, &id).await.unwrap().unwrap();
    assert_eq!(
        (row.status, row.attempts, row.last_error),
        (JobState::Done, 1, None)
    );
    app.finish().await;
}
