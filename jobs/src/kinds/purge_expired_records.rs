//! Applies the retention periods of README's retention table that are not owned by a more specific job:
//! expired sessions and sign-in tokens, sent e-mails after 30 days (they hold addresses), payment records
//! after 7 years (privacy policy §4), and the rate-limit bookkeeping.
//! Safe twice: every statement deletes by age.

use serde::{Deserialize, Serialize};

use crate::queue::{Job, JobContext, JobError, Outcome};

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
        "payments",
        "DELETE FROM payments WHERE paid_at < now() - interval '7 years'",
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
        Ok(Outcome::Done)
    }
}
