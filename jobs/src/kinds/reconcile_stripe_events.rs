//! Lists recent events from Stripe and records any the webhook missed, so a lost delivery heals without an
//! operator (Stripe keeps 30 days of events; we look back three days, its live-mode retry window).
//!
//! Why: webhooks are at-least-once only while the endpoint is reachable; an outage longer than Stripe's
//! retries, or a dropped delivery, would otherwise lose a purchase.
//! Safe twice: recording is `ON CONFLICT DO NOTHING` on the event id, and processing is keyed.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use queue::{Job, JobError, Outcome, RetryPolicy};

use crate::billing;
use crate::services::JobContext;

/// How far back reconciliation looks.
pub const LOOK_BACK: chrono::Duration = chrono::Duration::days(3);

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReconcileStripeEvents {}

impl Job for ReconcileStripeEvents {
    const NAME: &'static str = "reconcile_stripe_events";
    type Context = std::sync::Arc<crate::services::Services>;
    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        base: Duration::from_secs(30),
        cap: Duration::from_secs(300),
        timeout: Duration::from_secs(300),
    };

    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        let Some(stripe) = ctx.app.pipeline.as_ref().and_then(|p| p.stripe.as_ref()) else {
            return Ok(Outcome::Done);
        };
        let since = chrono::Utc::now() - LOOK_BACK;
        let recorded = billing::reconcile(&ctx.pool, stripe, since)
            .await
            .map_err(|error| JobError::Retryable(anyhow::anyhow!(error)))?;
        if recorded > 0 {
            ctx.app
                .metrics
                .stripe_reconciliation_recoveries_total
                .with_label_values(&[] as &[&str])
                .inc_by(recorded as u64);
            tracing::warn!(
                recorded,
                "reconciliation found Stripe events the webhook missed"
            );
        }
        Ok(Outcome::Done)
    }
}
