//! Delivers one outbox e-mail (see `jobs/src/email.rs`).
//!
//! Why: producers (sign-in links, export notices, policy notices) only write the outbox row in their own
//! transaction; delivery, retries and the provider's rate belong here.
//! Safe twice: a row with `sent_at` set is not sent again. (A crash between the SMTP answer and the commit can
//! send one duplicate — the usual at-least-once edge of e-mail.)

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use queue::{Job, JobError, Outcome, RetryPolicy};

use crate::{
    email::{self, DeliveryError},
    rate_limit::{self, Take},
    services::JobContext,
};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SendEmail {
    pub email_id: uuid::Uuid,
}

impl Job for SendEmail {
    const NAME: &'static str = "send_email";
    type Context = std::sync::Arc<crate::services::Services>;
    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 8,
        base: Duration::from_secs(30),
        cap: Duration::from_secs(3600),
        timeout: Duration::from_secs(60),
    };

    /// One delivery job per outbox row.
    fn unique_key(&self) -> Option<String> {
        Some(format!("send_email:{}", self.email_id))
    }

    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        let Some(row) = email::find(&ctx.pool, self.email_id).await? else {
            return Ok(Outcome::Done);
        };
        if row.sent_at.is_some() {
            return Ok(Outcome::Done);
        }
        let config =
            email::mail_config().map_err(|error| JobError::Retryable(anyhow::anyhow!(error)))?;
        if let Take::RetryAfter(wait) = rate_limit::take(
            &ctx.pool,
            "smtp",
            config.per_second.max(1),
            Duration::from_secs(1),
        )
        .await?
        {
            return Ok(Outcome::Snooze(wait));
        }
        let started = Instant::now();
        let result = email::deliver(config, &row).await;
        let outcome = match &result {
            Ok(()) => "ok",
            Err(DeliveryError::Transient(_)) => "transient_error",
            Err(DeliveryError::Permanent(_)) => "permanent_error",
        };
        ctx.app
            .metrics
            .observe_upstream("smtp", "send", outcome, started);
        let error = result.as_ref().err().map(ToString::to_string);
        sqlx::query(
            "UPDATE email_outbox SET attempts = attempts + 1, last_error = $2,
                    sent_at = CASE WHEN $2::text IS NULL THEN now() END
              WHERE id = $1 AND sent_at IS NULL",
        )
        .bind(self.email_id)
        .bind(&error)
        .execute(&ctx.pool)
        .await?;
        let counted = match &result {
            Ok(()) => Some("sent"),
            Err(DeliveryError::Permanent(_)) => Some("failed"),
            Err(DeliveryError::Transient(_)) if ctx.is_last_attempt() => Some("failed"),
            Err(DeliveryError::Transient(_)) => None,
        };
        if let Some(outcome) = counted {
            ctx.app
                .metrics
                .emails_total
                .with_label_values(&[outcome])
                .inc();
        }
        match result {
            Ok(()) => Ok(Outcome::Done),
            Err(DeliveryError::Permanent(reason)) => {
                Err(JobError::permanent(anyhow::anyhow!(reason)))
            }
            Err(DeliveryError::Transient(reason)) => {
                Err(JobError::Retryable(anyhow::anyhow!(reason)))
            }
        }
    }
}
