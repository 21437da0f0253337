//! Deletes trial fingerprints older than 24 hours (privacy policy §4: "rotated/expired automatically after 24
//! hours"). Scheduled hourly, so none outlives 25 hours; the trial check itself ignores any older than 24 h.
//! Safe twice: deleting what is already gone deletes nothing.

use serde::{Deserialize, Serialize};

use queue::{Job, JobError, Outcome};

use crate::services::JobContext;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExpireTrialFingerprints {}

impl Job for ExpireTrialFingerprints {
    const NAME: &'static str = "expire_trial_fingerprints";
    type Context = std::sync::Arc<crate::services::Services>;

    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        let deleted = sqlx::query(
            "DELETE FROM trial_fingerprints WHERE created_at < now() - interval '24 hours'",
        )
        .execute(&ctx.pool)
        .await?
        .rows_affected();
        tracing::info!(deleted, "expired trial fingerprints");
        Ok(Outcome::Done)
    }
}
