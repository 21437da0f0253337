//! Deletes an account and everything of it (privacy policy §5 "Delete your account", §8 children's accounts).
//!
//! Steps, each idempotent, so a re-run after a crash at any point completes the deletion:
//! 1. every bucket object under the user's prefixes (`users/<id>/`, `exports/<id>/`), in batches, and the
//!    images of trial generations adopted at sign-up (kept under `trials/`);
//! 2. the Stripe customer redacted (deleted at Stripe; "no such customer" counts as done);
//! 3. payment records pseudonymised: the link to the user is cut (`user_id = NULL`); they keep only the
//!    random pseudonym, product, amount, currency and date, for the 7-year tax period;
//! 4. the user row deleted in one transaction, which cascades to sessions, API keys, sign-in tokens, consents,
//!    generations and their images, uploads, usage log, credit account and ledger, exports, outbox rows;
//! 5. the `account_deletions` record completed — it holds only the reason and the times.
//!
//! The same address can then sign up again as a new account.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use queue::{Job, JobError, Outcome, RetryPolicy};

use crate::services::JobContext;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeleteAccount {
    pub user_id: Uuid,
    pub deletion_id: Uuid,
}

impl Job for DeleteAccount {
    const NAME: &'static str = "delete_account";
    type Context = std::sync::Arc<crate::services::Services>;
    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 20,
        base: Duration::from_secs(10),
        cap: Duration::from_secs(3600),
        timeout: Duration::from_secs(600),
    };

    /// One deletion per account, however often it is asked for.
    fn unique_key(&self) -> Option<String> {
        Some(format!("delete_account:{}", self.user_id))
    }

    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        let pipeline = ctx.app.pipeline()?;
        // 1. Bucket objects.
        for prefix in [
            format!("users/{}/", self.user_id),
            format!("exports/{}/", self.user_id),
        ] {
            let keys = list_keys(&pipeline.storage, &prefix).await?;
            pipeline.storage.delete_many(&keys).await?;
        }
        // Images of trial generations adopted at sign-up live under `trials/`: delete them by their rows.
        let adopted: Vec<String> = sqlx::query_scalar(
            "SELECT i.object_key FROM generated_images i JOIN generations g ON g.id = i.generation_id
              WHERE g.user_id = $1 AND i.object_key NOT LIKE 'users/%'",
        )
        .bind(self.user_id)
        .fetch_all(&ctx.pool)
        .await?;
        pipeline.storage.delete_many(&adopted).await?;
        // 2. Stripe.
        let customer: Option<String> =
            sqlx::query_scalar("SELECT customer_id FROM stripe_customers WHERE user_id = $1")
                .bind(self.user_id)
                .fetch_optional(&ctx.pool)
                .await?;
        if let Some(customer) = customer {
            let stripe = pipeline.stripe.as_ref().ok_or_else(|| {
                JobError::Retryable(anyhow::anyhow!(
                    "the account has a Stripe customer but Stripe is not configured"
                ))
            })?;
            stripe.delete_customer(&customer).await?;
        }
        // 3–4. Pseudonymise payments, then delete the user and everything cascading from it.
        let mut tx = ctx.pool.begin().await?;
        sqlx::query("UPDATE payments SET user_id = NULL WHERE user_id = $1")
            .bind(self.user_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE subscriptions SET user_id = NULL WHERE user_id = $1")
            .bind(self.user_id)
            .execute(&mut *tx)
            .await?;
        // Raw Stripe events about this user can carry their e-mail address; processed ones go now (the
        // payment records above are what the tax period needs).
        sqlx::query(
            "DELETE FROM stripe_events WHERE processed_at IS NOT NULL
               AND (payload #>> '{data,object,client_reference_id}' = $1
                    OR payload #>> '{data,object,metadata,user}' = $1)",
        )
        .bind(self.user_id.to_string())
        .execute(&mut *tx)
        .await?;
        // The ledger is append-only; this transaction is the one place allowed to remove a user's rows.
        sqlx::query("SELECT set_config('createimage2.ledger_delete', 'allowed', true)")
            .execute(&mut *tx)
            .await?;
        let deleted = sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(self.user_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        // 5. Record that a deletion happened, and nothing else.
        sqlx::query("UPDATE account_deletions SET completed_at = coalesce(completed_at, now()) WHERE id = $1")
            .bind(self.deletion_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        if deleted > 0 {
            ctx.app
                .metrics
                .accounts_deleted_total
                .with_label_values(&[] as &[&str])
                .inc();
        }
        tracing::info!(deletion.id = %self.deletion_id, rows = deleted, "account deleted");
        Ok(Outcome::Done)
    }
}

async fn list_keys(storage: &crate::storage::Storage, prefix: &str) -> anyhow::Result<Vec<String>> {
    let mut keys = Vec::new();
    let mut token = None;
    loop {
        let page = storage
            .client
            .list_objects_v2()
            .bucket(&storage.bucket)
            .prefix(prefix)
            .set_continuation_token(token)
            .send()
            .await
            .map_err(|error| {
                anyhow::anyhow!(
                    "listing {prefix}: {}",
                    aws_sdk_s3::error::DisplayErrorContext(error)
                )
            })?;
        keys.extend(
            page.contents()
                .iter()
                .filter_map(|object| object.key().map(str::to_owned)),
        );
        match page.next_continuation_token() {
            Some(next) if page.is_truncated().unwrap_or(false) => token = Some(next.to_owned()),
            _ => return Ok(keys),
        }
    }
}
