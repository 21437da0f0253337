//! E-mails every registered user about a new privacy-policy version, once per user (policy §9: "we email
//! registered users 30 days before the change takes effect").
//!
//! Resumable and exactly-once per user: each batch queues one outbox e-mail per user with the idempotency key
//! `policy_notice:<version>:<user>`, and picks users that have no such e-mail yet — so after a crash the next
//! run continues where the last committed batch ended, and a user is never mailed twice. Delivery itself is
//! throttled to the provider's rate by `send_email`. The job snoozes between batches to let mail drain.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use queue::{Job, JobError, Outcome, RetryPolicy};

use crate::services::JobContext;

/// Users per batch (one transaction each).
pub const BATCH: i64 = 500;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SendPolicyNotices {
    pub version: String,
}

impl Job for SendPolicyNotices {
    const NAME: &'static str = "send_policy_notices";
    type Context = std::sync::Arc<crate::services::Services>;
    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 20,
        timeout: Duration::from_secs(300),
        ..RetryPolicy::DEFAULT
    };

    /// One mailing per policy version.
    fn unique_key(&self) -> Option<String> {
        Some(format!("policy_notices:{}", self.version))
    }

    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        let Some(policy) = sqlx::query_as::<_, crate::policy::PolicyVersion>(
            "SELECT * FROM policy_versions WHERE version = $1",
        )
        .bind(&self.version)
        .fetch_optional(&ctx.pool)
        .await?
        else {
            return Err(JobError::permanent(anyhow::anyhow!(
                "policy version {} does not exist",
                self.version
            )));
        };
        let policy_url = ctx
            .app
            .pipeline()?
            .public_base_url
            .join("/privacy-policy")
            .map_err(JobError::permanent)?;
        let mut tx = ctx.pool.begin().await?;
        let recipients: Vec<(Uuid, String)> = sqlx::query_as(
            "SELECT u.id, u.email FROM users u
              WHERE u.deletion_requested_at IS NULL AND u.created_at < $2
                AND NOT EXISTS (SELECT 1 FROM email_outbox o
                                 WHERE o.idempotency_key = 'policy_notice:' || $1 || ':' || u.id::text)
              ORDER BY u.id
              LIMIT $3",
        )
        .bind(&self.version)
        .bind(policy.published_at)
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
        let effective = policy.effective_at.format("%B %-d, %Y").to_string();
        for (user_id, email) in &recipients {
            let message = mail::policy_notice(
                &policy.version,
                &effective,
                &policy.summary,
                policy_url.as_str(),
            );
            crate::email::queue(
                &mut tx,
                crate::email::Outgoing {
                    to: email,
                    user_id: Some(*user_id),
                    idempotency_key: format!("policy_notice:{}:{user_id}", self.version),
                    message,
                },
            )
            .await?;
        }
        tx.commit().await?;
        tracing::info!(version = %self.version, queued = recipients.len(), "queued policy notices");
        if recipients.len() as i64 == BATCH {
            // More to do: continue shortly, without holding a worker slot meanwhile.
            return Ok(Outcome::Snooze(Duration::from_secs(1)));
        }
        Ok(Outcome::Done)
    }
}
