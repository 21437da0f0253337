//! Applies one recorded Stripe event: grants packs and plan allowances, mirrors subscriptions, claws back
//! refunds, freezes and settles disputes (`billing::process`).
//!
//! Why: the webhook only records the event and answers at once; effects happen here, retried on failure.
//! Safe twice (and with two workers at once): the event row is locked while it is applied and marked
//! processed in the same transaction, and every credit effect has a unique business key in the ledger.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use queue::{Job, JobError, Outcome, RetryPolicy};

use crate::billing::{self, Effect, ProcessError};
use crate::services::JobContext;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessStripeEvent {
    pub event_id: String,
}

impl Job for ProcessStripeEvent {
    const NAME: &'static str = "process_stripe_event";
    type Context = std::sync::Arc<crate::services::Services>;
    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 25,
        base: Duration::from_secs(1),
        cap: Duration::from_secs(3600),
        timeout: Duration::from_secs(60),
    };

    /// One job per Stripe event, however often Stripe delivers it.
    fn unique_key(&self) -> Option<String> {
        Some(format!("stripe_event:{}", self.event_id))
    }

    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        let stripe = ctx.app.pipeline.as_ref().and_then(|p| p.stripe.as_ref());
        match billing::process(&ctx.pool, stripe, &self.event_id).await {
            Ok(Some(outcome)) => {
                tracing::info!(event = %self.event_id, outcome = %outcome.0, "Stripe event applied");
                if let Some(effect) = outcome.1 {
                    count(&ctx, effect);
                }
                Ok(Outcome::Done)
            }
            Ok(None) => Ok(Outcome::Done),
            Err(
                error @ (ProcessError::Database(_)
                | ProcessError::Stripe(_)
                | ProcessError::PaymentNotRecorded(_)),
            ) => {
                let kind = billing::event_type(&ctx.pool, &self.event_id)
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                ctx.app
                    .metrics
                    .stripe_event_failures_total
                    .with_label_values(&[&kind])
                    .inc();
                Err(JobError::Retryable(error.into()))
            }
            Err(ProcessError::UnreadableVersion { kind, version }) => {
                // Not retried: the same bytes will not read differently. The event stays unprocessed (its
                // outcome says why) for a deploy that reads the version; the metric pages someone.
                ctx.app
                    .metrics
                    .stripe_events_refused_total
                    .with_label_values(&[&kind, &version])
                    .inc();
                tracing::error!(
                    event = %self.event_id,
                    r#type = %kind,
                    api_version = %version,
                    "Stripe event refused: its API version is not one this code reads"
                );
                Ok(Outcome::Done)
            }
        }
    }
}

/// Counts what an applied event changed.
fn count(ctx: &JobContext, effect: Effect) {
    let metrics = &ctx.app.metrics;
    match effect {
        Effect::Purchase { subscription } => metrics
            .stripe_purchases_total
            .with_label_values(&[if subscription { "subscription" } else { "pack" }])
            .inc(),
        Effect::Refund => metrics
            .stripe_refunds_total
            .with_label_values(&[] as &[&str])
            .inc(),
        Effect::DisputeCreated => metrics
            .stripe_disputes_total
            .with_label_values(&["created"])
            .inc(),
        Effect::DisputeClosed => metrics
            .stripe_disputes_total
            .with_label_values(&["closed"])
            .inc(),
    }
}
