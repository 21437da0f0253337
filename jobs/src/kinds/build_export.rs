//! Builds a GDPR export bundle (see `jobs/src/exports.rs`) and tells the user it is ready.
//!
//! Why: the policy promises an answer within 30 days; this answers within minutes, without a person.
//! Safe twice: a bundle already ready is left alone; a re-run rebuilds the same key; the e-mail is keyed by the
//! export.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use queue::{Job, JobError, Outcome, RetryPolicy};

use crate::{
    accounts, email,
    export_requests::{self, ExportStatus},
    exports,
    services::JobContext,
};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BuildExport {
    pub export_id: uuid::Uuid,
}

impl Job for BuildExport {
    const NAME: &'static str = "build_export";
    type Context = std::sync::Arc<crate::services::Services>;
    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 6,
        base: Duration::from_secs(30),
        cap: Duration::from_secs(1800),
        timeout: Duration::from_secs(1800),
    };

    /// One build per export request.
    fn unique_key(&self) -> Option<String> {
        Some(format!("build_export:{}", self.export_id))
    }

    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        let pipeline = ctx.app.pipeline()?;
        let Some(request) = export_requests::find(&ctx.pool, self.export_id).await? else {
            return Ok(Outcome::Done);
        };
        match request.status {
            ExportStatus::Pending | ExportStatus::Running => {}
            ExportStatus::Ready | ExportStatus::Failed | ExportStatus::Expired => {
                return Ok(Outcome::Done);
            }
        }
        let user_id = request.user_id;
        let Some(address) = accounts::email_of(&ctx.pool, user_id).await? else {
            // The account was deleted meanwhile (its requests with it): nothing to build or tell.
            return Ok(Outcome::Done);
        };
        export_requests::mark_running(&ctx.pool, self.export_id).await?;
        let key = exports::bundle_key(user_id, self.export_id);
        let stats = match exports::build_bundle(&ctx.pool, &pipeline.storage, user_id, &key).await {
            Ok(stats) => stats,
            Err(error) if ctx.is_last_attempt() => {
                export_requests::mark_failed(&ctx.pool, self.export_id, &format!("{error:#}"))
                    .await?;
                return Ok(Outcome::Done);
            }
            Err(error) => return Err(JobError::Retryable(error)),
        };
        let mut tx = ctx.pool.begin().await?;
        let expires_at = export_requests::mark_ready(
            &mut tx,
            self.export_id,
            &key,
            stats.bytes as i64,
            exports::BUNDLE_TTL_DAYS as i32,
        )
        .await?;
        let page = pipeline
            .public_base_url
            .join(&format!("/api/v1/exports/{}", self.export_id))
            .map_err(JobError::permanent)?;
        let expires = expires_at.format("%B %-d, %Y %H:%M UTC").to_string();
        email::queue(
            &mut tx,
            email::Outgoing {
                to: &address,
                user_id: Some(user_id),
                idempotency_key: format!("export_ready:{}", self.export_id),
                message: mail::export_ready(page.as_str(), &expires),
            },
        )
        .await?;
        tx.commit().await?;
        ctx.app
            .metrics
            .exports_built_total
            .with_label_values(&[] as &[&str])
            .inc();
        tracing::info!(export.id = %self.export_id, bytes = stats.bytes, files = stats.files, peak_buffered = stats.peak_buffered, "export ready");
        Ok(Outcome::Done)
    }
}
