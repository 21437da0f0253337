//! GDPR export requests (table `export_requests` in `migrations/*_billing_privacy_ops.sql`): a member asks, the
//! `build_export` job writes the bundle ([`crate::exports`]) and marks the request ready, `expire_exports` deletes
//! the bundle after [`crate::exports::BUNDLE_TTL_DAYS`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use queue::Job as _;

use crate::{
    kinds::BuildExport,
    limits::Limited,
    rate_limit::{self, Take},
    text_enum::text_enum,
};

/// Exports a member may request per day.
pub const PER_DAY: u32 = 3;

text_enum! {
    /// Where an export request is.
    pub enum ExportStatus {
        /// Recorded; the build job is queued.
        Pending = "pending",
        Running = "running",
        /// The bundle is in the bucket until `expires_at`.
        Ready = "ready",
        Failed = "failed",
        /// The bundle was deleted after its time.
        Expired = "expired",
    }
}

impl ExportStatus {
    /// Whether a build is still to come (one at a time per member).
    pub fn in_progress(self) -> bool {
        match self {
            Self::Pending | Self::Running => true,
            Self::Ready | Self::Failed | Self::Expired => false,
        }
    }
}

/// One request.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ExportRequest {
    pub id: Uuid,
    pub user_id: Uuid,
    pub status: ExportStatus,
    pub byte_size: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub object_key: Option<String>,
}

/// Why an export was not requested.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("an export is already being prepared")]
    InProgress,
    #[error(transparent)]
    Limited(#[from] Limited),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Records an export request and enqueues its build: one in progress per member, [`PER_DAY`] a day. A repeat
/// while one is being prepared (a double click, a retry) is refused before the budget is taken: it costs no
/// work, and a member's three a day are not spent on it.
pub async fn request(pool: &PgPool, user: Uuid) -> Result<Uuid, RequestError> {
    let in_progress: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM export_requests WHERE user_id = $1 AND status = ANY($2))",
    )
    .bind(user)
    .bind([ExportStatus::Pending, ExportStatus::Running])
    .fetch_one(pool)
    .await?;
    if in_progress {
        return Err(RequestError::InProgress);
    }
    if let Take::RetryAfter(retry_after) = rate_limit::take(
        pool,
        &format!("exports:user:{user}"),
        PER_DAY,
        Duration::from_secs(86_400),
    )
    .await?
    {
        return Err(Limited { retry_after }.into());
    }
    let id = Uuid::now_v7();
    let mut tx = pool.begin().await?;
    // The partial unique index on (user_id) of unfinished requests makes a second one a no-op.
    let inserted = sqlx::query(
        "INSERT INTO export_requests (id, user_id) VALUES ($1, $2)
         ON CONFLICT (user_id) WHERE status IN ('pending', 'running') DO NOTHING",
    )
    .bind(id)
    .bind(user)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Err(RequestError::InProgress);
    }
    BuildExport { export_id: id }.enqueue(&mut *tx).await?;
    tx.commit().await?;
    Ok(id)
}

const COLUMNS: &str =
    "id, user_id, status, byte_size, created_at, completed_at, expires_at, object_key";

/// The request, whoever's it is (for the build job).
pub async fn find(pool: &PgPool, id: Uuid) -> sqlx::Result<Option<ExportRequest>> {
    // Only a constant column list is interpolated.
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM export_requests WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// The member's request (`None` for another member's).
pub async fn find_owned(
    pool: &PgPool,
    user: Uuid,
    id: Uuid,
) -> sqlx::Result<Option<ExportRequest>> {
    Ok(find(pool, id).await?.filter(|e| e.user_id == user))
}

/// The member's latest requests, newest first.
pub async fn recent(pool: &PgPool, user: Uuid, limit: i64) -> sqlx::Result<Vec<ExportRequest>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM export_requests WHERE user_id = $1 ORDER BY created_at DESC LIMIT $2"
    )))
    .bind(user)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// A pending request's build has started.
pub async fn mark_running(pool: &PgPool, id: Uuid) -> sqlx::Result<()> {
    sqlx::query("UPDATE export_requests SET status = $2 WHERE id = $1 AND status = $3")
        .bind(id)
        .bind(ExportStatus::Running)
        .bind(ExportStatus::Pending)
        .execute(pool)
        .await
        .map(drop)
}

/// The build gave up, with the reason kept for an operator.
pub async fn mark_failed(pool: &PgPool, id: Uuid, error: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE export_requests SET status = $3, error = $2 WHERE id = $1")
        .bind(id)
        .bind(error)
        .bind(ExportStatus::Failed)
        .execute(pool)
        .await
        .map(drop)
}

/// The bundle is written: the request is ready until the returned instant.
pub async fn mark_ready(
    tx: &mut PgConnection,
    id: Uuid,
    object_key: &str,
    byte_size: i64,
    ttl_days: i32,
) -> sqlx::Result<DateTime<Utc>> {
    sqlx::query_scalar(
        "UPDATE export_requests
            SET status = $5, object_key = $2, byte_size = $3, completed_at = now(),
                expires_at = now() + make_interval(days => $4)
          WHERE id = $1 RETURNING expires_at",
    )
    .bind(id)
    .bind(object_key)
    .bind(byte_size)
    .bind(ttl_days)
    .bind(ExportStatus::Ready)
    .fetch_one(tx)
    .await
}

/// Ready requests past their time (at most `limit`): (id, object key).
pub async fn due_to_expire(pool: &PgPool, limit: i64) -> sqlx::Result<Vec<(Uuid, String)>> {
    sqlx::query_as(
        "SELECT id, object_key FROM export_requests WHERE status = $2 AND expires_at < now() LIMIT $1",
    )
    .bind(limit)
    .bind(ExportStatus::Ready)
    .fetch_all(pool)
    .await
}

/// Their bundles are deleted.
pub async fn mark_expired(pool: &PgPool, ids: &[Uuid]) -> sqlx::Result<()> {
    sqlx::query("UPDATE export_requests SET status = $2 WHERE id = ANY($1)")
        .bind(ids)
        .bind(ExportStatus::Expired)
        .execute(pool)
        .await
        .map(drop)
}

/// What a member's download of an export finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Download {
    /// A presigned link to the bundle.
    Link(String),
    /// The bundle was deleted after its time; a new export must be requested.
    Expired,
}

/// Why an export cannot be downloaded.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("no such export")]
    NotFound,
    #[error("the export is not ready yet")]
    NotReady,
    #[error(transparent)]
    Storage(anyhow::Error),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// A link to the member's ready export, valid `ttl`.
pub async fn download(
    pool: &PgPool,
    storage: &crate::storage::Storage,
    user: Uuid,
    id: Uuid,
    ttl: Duration,
) -> Result<Download, DownloadError> {
    let request = find_owned(pool, user, id)
        .await?
        .ok_or(DownloadError::NotFound)?;
    match (request.status, request.object_key) {
        (ExportStatus::Ready, Some(key)) => storage
            .presign_get(&key, ttl)
            .await
            .map(Download::Link)
            .map_err(DownloadError::Storage),
        (ExportStatus::Expired, _) => Ok(Download::Expired),
        (
            ExportStatus::Pending
            | ExportStatus::Running
            | ExportStatus::Failed
            | ExportStatus::Ready,
            _,
        ) => Err(DownloadError::NotReady),
    }
}
