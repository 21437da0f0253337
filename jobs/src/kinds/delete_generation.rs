//! Removes a generation the user deleted: its images from the bucket, then its rows.
//!
//! Why: the api only hides the generation (`deleted_at`) so the request returns at once; the slow part
//! (bucket deletes) happens here.
//! Safe twice: deleting missing objects is not an error; a missing row is success.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use queue::{Job, JobError, Outcome, RetryPolicy};

use crate::services::JobContext;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeleteGeneration {
    pub generation_id: Uuid,
}

impl Job for DeleteGeneration {
    const NAME: &'static str = "delete_generation";
    type Context = std::sync::Arc<crate::services::Services>;
    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 10,
        base: Duration::from_secs(5),
        cap: Duration::from_secs(600),
        timeout: Duration::from_secs(120),
    };

    /// One deletion per generation.
    fn unique_key(&self) -> Option<String> {
        Some(format!("delete:{}", self.generation_id))
    }

    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        let storage = &ctx.app.pipeline()?.storage;
        let keys: Vec<String> =
            sqlx::query_scalar("SELECT object_key FROM generated_images WHERE generation_id = $1")
                .bind(self.generation_id)
                .fetch_all(&ctx.pool)
                .await?;
        storage.delete_many(&keys).await?;
        // Rows go last, so a crash before this point leaves the keys to delete on the next run.
        let mut tx = ctx.pool.begin().await?;
        let removed: Option<(Option<Uuid>, Option<Uuid>, Option<String>)> = sqlx::query_as(
            "DELETE FROM generations WHERE id = $1 AND deleted_at IS NOT NULL
             RETURNING batch_id, user_id, idempotency_key",
        )
        .bind(self.generation_id)
        .fetch_optional(&mut *tx)
        .await?;
        // A request's idempotency key outlives the variation that held it: the next one still there takes it,
        // so a retry of the request still finds its images instead of making (and charging) new ones.
        if let Some((Some(batch), Some(user), Some(key))) = removed {
            sqlx::query(
                "UPDATE generations SET idempotency_key = $3
                  WHERE id = (SELECT id FROM generations WHERE batch_id = $1 AND user_id = $2
                               ORDER BY variation LIMIT 1)",
            )
            .bind(batch)
            .bind(user)
            .bind(key)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Outcome::Done)
    }
}
