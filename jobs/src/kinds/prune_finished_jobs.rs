//! Deletes finished queue rows past their retention (apalis-postgres never deletes any).
//!
//! Why: the live job table must stay small, or claims slow down and vacuum falls behind.
//! Safe twice: deleting rows that are already gone deletes nothing.

use serde::{Deserialize, Serialize};

use queue::{Job, JobError, Outcome, RetryPolicy, ops};

use crate::services::JobContext;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PruneFinishedJobs {}

impl Job for PruneFinishedJobs {
    const NAME: &'static str = "prune_finished_jobs";
    type Context = std::sync::Arc<crate::services::Services>;
    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        ..RetryPolicy::DEFAULT
    };

    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        let config = &ctx.app.queue;
        let deleted = ops::prune_finished(
            &ctx.pool,
            config.finished_job_retention,
            config.dead_job_retention,
        )
        .await?;
        tracing::info!(deleted, "pruned finished jobs");
        Ok(Outcome::Done)
    }
}
