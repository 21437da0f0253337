//! Creates today's trial-fingerprint pepper and deletes peppers older than two days (privacy policy §1.4:
//! salted hashes, rotated daily). Without yesterday's pepper nobody, not even us, can link a visitor to an
//! older fingerprint. Safe twice: one pepper per day (UNIQUE valid_on), deletion is idempotent.

use chrono::Utc;
use serde::{Deserialize, Serialize};

use queue::{Job, JobError, Outcome};

use crate::services::JobContext;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RotateHashPepper {}

impl Job for RotateHashPepper {
    const NAME: &'static str = "rotate_hash_pepper";
    type Context = std::sync::Arc<crate::services::Services>;

    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        crate::trial::pepper_for(&ctx.pool, Utc::now().date_naive()).await?;
        let deleted = sqlx::query(
            "DELETE FROM hash_peppers WHERE valid_on < (now() AT TIME ZONE 'UTC')::date - 1",
        )
        .execute(&ctx.pool)
        .await?
        .rows_affected();
        tracing::info!(deleted, "rotated the trial pepper");
        Ok(Outcome::Done)
    }
}
