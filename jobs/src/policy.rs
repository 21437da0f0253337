//! Privacy-policy versions (policy §9): an operator publishes a new version with an effective date at least 30
//! days ahead; every registered user is e-mailed about it once; the site shows the version in force and
//! announces an upcoming one.

use chrono::{DateTime, Duration, Utc};
use sqlx::PgPool;

use queue::Job as _;

use crate::kinds::SendPolicyNotices;

/// The notice period the policy promises.
pub const NOTICE_DAYS: i64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(
        "the effective date must be at least {NOTICE_DAYS} days ahead (the earliest allowed is {earliest})"
    )]
    TooSoon { earliest: DateTime<Utc> },
    #[error("version {0} exists already")]
    Exists(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// A published version.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PolicyVersion {
    pub version: String,
    pub published_at: DateTime<Utc>,
    pub effective_at: DateTime<Utc>,
    pub summary: String,
}

/// Publishes `version` and enqueues the notices to every registered user, in one transaction.
pub async fn publish(
    pool: &PgPool,
    version: &str,
    effective_at: DateTime<Utc>,
    summary: &str,
) -> Result<(), PublishError> {
    let earliest = Utc::now() + Duration::days(NOTICE_DAYS);
    if effective_at < earliest {
        return Err(PublishError::TooSoon { earliest });
    }
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO policy_versions (version, effective_at, summary) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(version)
    .bind(effective_at)
    .bind(summary)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Err(PublishError::Exists(version.to_owned()));
    }
    SendPolicyNotices {
        version: version.to_owned(),
    }
    .enqueue(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The version in force now, if any was published (the site falls back to the built-in policy's date).
pub async fn current(pool: &PgPool) -> sqlx::Result<Option<PolicyVersion>> {
    sqlx::query_as("SELECT * FROM policy_versions WHERE effective_at <= now() ORDER BY effective_at DESC LIMIT 1")
        .fetch_optional(pool)
        .await
}

/// The next version, published but not yet in force (the site announces it).
pub async fn upcoming(pool: &PgPool) -> sqlx::Result<Option<PolicyVersion>> {
    sqlx::query_as(
        "SELECT * FROM policy_versions WHERE effective_at > now() ORDER BY effective_at LIMIT 1",
    )
    .fetch_optional(pool)
    .await
}
