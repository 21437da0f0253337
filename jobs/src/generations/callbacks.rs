//! kie.ai's task callbacks (table `upstream_callbacks` in `migrations/*_pipeline.sql`): each one a generation
//! receives is recorded once and turns the next poll into an immediate one; the submit job reads them to adopt
//! a task whose creation it could not confirm, and to poll at once when kie called back before it committed.

use sqlx::{PgConnection, PgPool};

use queue::{Job as _, expedite};

use super::Generation;
use crate::kinds::PollGeneration;

/// What became of a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Stored; `expedited` says whether a waiting poll now runs at once.
    New { expedited: bool },
    /// The same task reported the same state before: nothing changed.
    Duplicate,
}

/// Why a callback was refused.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    /// The callback names a task that is not the generation's own (a replay of someone else's under a leaked
    /// URL).
    #[error("the callback is for another task")]
    ForeignTask,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Records a verified callback of `task_id` (reporting `state`) for `generation`, and makes its waiting poll due
/// now, in one transaction. Takes the generation's row lock, so it serialises with the submit job recording the
/// task: whichever commits second sees the other's work (the poll job to expedite here, this callback there),
/// and a fast upstream's callback is never lost.
pub async fn record(
    pool: &PgPool,
    generation: &Generation,
    task_id: &str,
    state: Option<&str>,
) -> Result<Recorded, CallbackError> {
    let mut tx = pool.begin().await?;
    let recorded_task: Option<String> =
        sqlx::query_scalar("SELECT upstream_task_id FROM generations WHERE id = $1 FOR UPDATE")
            .bind(generation.id)
            .fetch_one(&mut *tx)
            .await?;
    // Before the submit job has recorded the task, the callback is only a hint that the worker confirms with
    // recordInfo.
    if recorded_task
        .as_deref()
        .is_some_and(|recorded| recorded != task_id)
    {
        return Err(CallbackError::ForeignTask);
    }
    let stored = sqlx::query(
        "INSERT INTO upstream_callbacks (generation_id, upstream_task_id, state) VALUES ($1, $2, $3)
         ON CONFLICT (generation_id, upstream_task_id, (coalesce(state, ''))) DO NOTHING",
    )
    .bind(generation.id)
    .bind(task_id)
    .bind(state)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if stored == 0 {
        return Ok(Recorded::Duplicate);
    }
    let expedited = if generation.is_finished() {
        false
    } else {
        expedite(
            &mut tx,
            PollGeneration::NAME,
            &PollGeneration::key(generation.id, task_id),
        )
        .await?
    };
    tx.commit().await?;
    Ok(Recorded::New { expedited })
}

/// Whether kie called back about `task_id` of the generation already.
pub async fn exists(
    conn: &mut PgConnection,
    generation: uuid::Uuid,
    task_id: &str,
) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM upstream_callbacks WHERE generation_id = $1 AND upstream_task_id = $2)",
    )
    .bind(generation)
    .bind(task_id)
    .fetch_one(conn)
    .await
}

/// The first task kie reported by callback for the generation, if any.
pub async fn first_reported_task(
    pool: &PgPool,
    generation: uuid::Uuid,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar(
        "SELECT upstream_task_id FROM upstream_callbacks
          WHERE generation_id = $1 AND upstream_task_id IS NOT NULL ORDER BY id LIMIT 1",
    )
    .bind(generation)
    .fetch_optional(pool)
    .await
}
