//! Writes the completions of a runner's successful jobs, many per statement.

use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::mpsc;

/// Most ids marked done in one statement.
const COMPLETE_BATCH_MAX: usize = 1000;
/// How long the completer keeps trying to write a batch through a database outage before it leaves the rows
/// `Running` to the reaper (their jobs then run again, as at-least-once delivery allows).
const COMPLETE_RETRY_FOR: Duration = Duration::from_secs(10);

/// Marks a worker's successful jobs done: `$1` the job ids, `$2` the worker id.
///
/// The guard is written `(lock_by, status) IS NOT DISTINCT FROM ($2, 'Running')` (here and in
/// `Transition::write` in the runner) so that the only index the planner can use is the primary key. Written as
/// `lock_by = $2 AND status = 'Running'`, the generic plan of the prepared statement scanned the whole of
/// the running-rows index (or the index on `lock_by`) and filtered on the ids: statistics taken
/// while a backlog was `Pending` say almost nothing runs, but under a burn-down those indexes hold an entry for
/// every row claimed since the last vacuum, so each completion cost 0.5–2 s and a 100,000-job burn-down fell to
/// about 1,300 jobs/s (measured with `auto_explain`, see loadtest/README.md).
///
/// Like the claim ([`super::runner::CLAIM_SQL`]) it commits without waiting for the disk (`synchronous_commit =
/// off` for its own transaction): a completion lost in a crash of Postgres leaves the row `Running`, the reaper
/// hands it back once its attempt is past the queue's timeout (or its worker stopped heartbeating), and the job
/// runs again — at-least-once delivery, which every job tolerates; what the job wrote was committed durably in
/// its own transaction.
pub const COMPLETE_SQL: &str = "UPDATE apalis.jobs
    SET status = 'Done', done_at = now(), last_result = '{\"Ok\": null}'::jsonb
   FROM (SELECT set_config('synchronous_commit', 'off', true)) AS relaxed
  WHERE id = ANY($1) AND (lock_by, status) IS NOT DISTINCT FROM ($2, 'Running')";

/// Marks successful jobs done, many per statement: whatever has arrived since the last flush.
pub(super) async fn complete_in_batches(
    pool: PgPool,
    worker_id: String,
    queue: &'static str,
    mut done: mpsc::UnboundedReceiver<String>,
) {
    let mut batch = Vec::with_capacity(COMPLETE_BATCH_MAX);
    while let Some(first) = done.recv().await {
        batch.push(first);
        while batch.len() < COMPLETE_BATCH_MAX {
            match done.try_recv() {
                Ok(id) => batch.push(id),
                Err(_) => break,
            }
        }
        let mut delay = Duration::from_millis(50);
        let first_try = Instant::now();
        loop {
            let result = sqlx::query(COMPLETE_SQL)
                .bind(&batch)
                .bind(&worker_id)
                .execute(&pool)
                .await;
            match result {
                Ok(_) => break,
                // Bounded in time, not in tries: each try may wait out the pool's acquire timeout.
                Err(error) if first_try.elapsed() + delay > COMPLETE_RETRY_FOR => {
                    // The rows stay Running; the reaper hands them back and they run again (at-least-once).
                    tracing::error!(job.queue = queue, count = batch.len(), error = %error, "could not mark jobs done");
                    break;
                }
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
        batch.clear();
    }
}
