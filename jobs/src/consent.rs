//! Analytics consent (table `consent_records` in `migrations/*_billing_privacy_ops.sql`): every choice is kept
//! with the policy version it was made under (privacy policy §4), for a member by account, for a visitor by
//! the browser session's id hash. The newest record is the choice in force.

use sqlx::PgPool;
use uuid::Uuid;

/// Records a choice: for a member (`user`), or for a visitor's session (`session_hash`).
pub async fn record(
    pool: &PgPool,
    user: Option<Uuid>,
    session_hash: Option<&[u8]>,
    analytics: bool,
    policy_version: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO consent_records (user_id, session_hash, analytics, policy_version) VALUES ($1, $2, $3, $4)",
    )
    .bind(user)
    .bind(session_hash)
    .bind(analytics)
    .bind(policy_version)
    .execute(pool)
    .await
    .map(drop)
}

/// The member's choice in force, if they made one.
pub async fn analytics_for_user(pool: &PgPool, user: Uuid) -> sqlx::Result<Option<bool>> {
    sqlx::query_scalar(
        "SELECT analytics FROM consent_records WHERE user_id = $1 ORDER BY created_at DESC, id DESC LIMIT 1",
    )
    .bind(user)
    .fetch_optional(pool)
    .await
}
