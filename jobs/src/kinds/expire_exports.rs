//! Deletes export bundles past their 7 days (the link in the e-mail then says the export expired).
//! Safe twice: deleting missing objects is not an error; rows already expired are skipped.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use queue::{Job, JobError, Outcome};

use crate::{export_requests, services::JobContext};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExpireExports {}

impl Job for ExpireExports {
    const NAME: &'static str = "expire_exports";
    type Context = std::sync::Arc<crate::services::Services>;

    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        let storage = &ctx.app.pipeline()?.storage;
        let due = export_requests::due_to_expire(&ctx.pool, 1000).await?;
        let keys: Vec<String> = due.iter().map(|(_, key)| key.clone()).collect();
        storage.delete_many(&keys).await?;
        let ids: Vec<Uuid> = due.iter().map(|(id, _)| *id).collect();
        export_requests::mark_expired(&ctx.pool, &ids).await?;
        if !ids.is_empty() {
            tracing::info!(expired = ids.len(), "expired export bundles");
        }
        Ok(Outcome::Done)
    }
}
