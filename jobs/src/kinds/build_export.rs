//! Builds a GDPR export bundle (owner: export work).
//! Placeholder until its implementation lands: fails permanently so a queued job is visible, never silently done.

use serde::{Deserialize, Serialize};

use crate::queue::{Job, JobContext, JobError, Outcome};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BuildExport {
    pub export_id: uuid::Uuid,
}

impl Job for BuildExport {
    const NAME: &'static str = "build_export";

    async fn run(self, _ctx: JobContext) -> Result<Outcome, JobError> {
        Err(JobError::permanent(anyhow::anyhow!(
            "build_export is not implemented yet"
        )))
    }
}
