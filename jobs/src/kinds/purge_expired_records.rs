//! Applies the retention periods of README's retention table that are not owned by a more specific job:
//! expired sessions and sign-in tokens, sent e-mails after 30 days (they hold addresses), payment records
//! after 7 years (privacy policy §4), processed Stripe events after 35 days, the rate-limit bookkeeping, and
//! trial images whose browser session has ended without a sign-up (the visitor can no longer see them).
//! Safe twice: every statement deletes by age; trial generations are handed to `delete_generation` by key.

use serde::{Deserialize, Serialize};

use uuid::Uuid;

use queue::{Job, JobError, Outcome};

use crate::kinds::DeleteGeneration;
use crate::services::JobContext;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PurgeExpiredRecords {}

/// (what, statement). Each statement deletes by age only.
pub const RETENTION_RULES: &[(&str, &str)] = &[
    (
        "sessions",
        "DELETE FROM sessions WHERE LEAST(idle_expires_at, absolute_expires_at) < now() OR revoked_at < now() - interval '1 day'",
    ),
    (
        "sign_in_tokens",
        "DELETE FROM sign_in_tokens WHERE expires_at < now() - interval '1 day'",
    ),
    (
        "sent e-mails",
        "DELETE FROM email_outbox WHERE sent_at < now() - interval '30 days'",
    ),
    (
        "refunds of expired payments",
        "DELETE FROM payment_refunds WHERE payment_id IN (SELECT id FROM payments WHERE paid_at < now() - interval '7 years')",
    ),
    (
        "disputes of expired payments",
        "DELETE FROM payment_disputes WHERE payment_id IN (SELECT id FROM payments WHERE paid_at < now() - interval '7 years')",
    ),
    (
        "payments",
        "DELETE FROM payments WHERE paid_at < now() - interval '7 years'",
    ),
    (
        // Raw events can hold a customer's e-mail; what billing must keep is in `payments`. Reconciliation
        // looks back 3 days, so 35 days leaves a wide margin.
        "processed Stripe events",
        "DELETE FROM stripe_events WHERE processed_at < now() - interval '35 days'",
    ),
    (
        // Events never processed (refused for an API version the code does not read, or of no known payment)
        // go 35 days after Stripe created them: Stripe itself lists events for 30 days.
        "unprocessed Stripe events",
        "DELETE FROM stripe_events WHERE processed_at IS NULL AND created < now() - interval '35 days'",
    ),
    (
        "rate-limit events",
        "DELETE FROM rate_limit_events WHERE at < now() - interval '1 day'",
    ),
    (
        "rate-limit windows",
        "DELETE FROM rate_limit_windows WHERE window_start < now() - interval '1 day'",
    ),
];

impl Job for PurgeExpiredRecords {
    const NAME: &'static str = "purge_expired_records";
    type Context = std::sync::Arc<crate::services::Services>;

    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        for (what, statement) in RETENTION_RULES {
            let deleted = sqlx::query(*statement)
                .execute(&ctx.pool)
                .await?
                .rows_affected();
            if deleted > 0 {
                tracing::info!(what, deleted, "purged expired records");
            }
        }
        let mut tx = ctx.pool.begin().await?;
        let orphaned: Vec<Uuid> = sqlx::query_scalar(
            "UPDATE generations g SET deleted_at = now()
              WHERE g.user_id IS NULL AND g.deleted_at IS NULL AND g.finished_at IS NOT NULL
                AND g.created_at < now() - interval '1 day'
                AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.id_hash = g.trial_session_hash)
          RETURNING g.id",
        )
        .fetch_all(&mut *tx)
        .await?;
        for id in &orphaned {
            DeleteGeneration { generation_id: *id }
                .enqueue(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        if !orphaned.is_empty() {
            tracing::info!(deleted = orphaned.len(), "removed trial images nobody kept");
        }
        Ok(Outcome::Done)
    }
}
