//! Checks paused upstreams and resumes them when they work again (the automatic half of "resume"; operators
//! have `createimage2 upstream resume`).
//!
//! Why: an account-level error (out of credits, bad key) pauses kie.ai submissions for the whole fleet; once
//! the account is fixed, work should continue without waiting for a person.
//! Safe twice: resuming an upstream that is not paused does nothing.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use queue::{Job, JobError, Outcome, RetryPolicy};

use crate::services::JobContext;
use crate::upstream;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProbeUpstreams {}

impl Job for ProbeUpstreams {
    const NAME: &'static str = "probe_upstreams";
    type Context = std::sync::Arc<crate::services::Services>;
    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 2,
        timeout: Duration::from_secs(30),
        ..RetryPolicy::DEFAULT
    };

    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        let metrics = &ctx.app.metrics;
        let paused = upstream::paused(&ctx.pool).await?;
        // Keep the gauge true in this process also after an operator resumed an upstream elsewhere.
        if !paused.iter().any(|(name, ..)| name == upstream::KIE) {
            metrics
                .upstream_paused
                .with_label_values(&[upstream::KIE])
                .set(0);
        }
        for (name, reason, _, probe_due) in paused {
            metrics.upstream_paused.with_label_values(&[&name]).set(1);
            if name != upstream::KIE || !probe_due {
                continue;
            }
            // The credit endpoint answers 401 for a bad key; a positive balance means tasks can be created.
            match ctx.app.pipeline()?.kie.credit().await {
                Ok(balance) if balance > 0.0 => {
                    upstream::resume(&ctx.pool, &name).await?;
                    metrics.upstream_paused.with_label_values(&[&name]).set(0);
                    tracing::info!(upstream = %name, was = %reason, balance, "upstream works again; submissions resumed");
                }
                outcome => {
                    tracing::warn!(upstream = %name, ?outcome, "upstream still unusable; staying paused");
                    upstream::probe_later(&ctx.pool, &name, 5).await?;
                }
            }
        }
        Ok(Outcome::Done)
    }
}
