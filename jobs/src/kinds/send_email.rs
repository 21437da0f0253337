//! Delivers one outbox e-mail (owner: e-mail work).
//! Placeholder until its implementation lands: fails permanently so a queued job is visible, never silently done.

use serde::{Deserialize, Serialize};

use crate::queue::{Job, JobContext, JobError, Outcome};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SendEmail {
    pub email_id: uuid::Uuid,
}

impl Job for SendEmail {
    const NAME: &'static str = "send_email";

    async fn run(self, _ctx: JobContext) -> Result<Outcome, JobError> {
        Err(JobError::permanent(anyhow::anyhow!("send_email is not implemented yet")))
    }
}
