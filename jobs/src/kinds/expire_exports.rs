//! Deletes export bundles past their 7 days (owner: export work).
//! Placeholder until its implementation lands: fails permanently so a queued job is visible, never silently done.

use serde::{Deserialize, Serialize};

use crate::queue::{Job, JobContext, JobError, Outcome};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExpireExports {}

impl Job for ExpireExports {
    const NAME: &'static str = "expire_exports";

    async fn run(self, _ctx: JobContext) -> Result<Outcome, JobError> {
        Err(JobError::permanent(anyhow::anyhow!(
            "expire_exports is not implemented yet"
        )))
    }
}
