//! GDPR export endpoints: request a bundle, see its state, download it (a redirect to a presigned URL valid
//! five minutes, only for the signed-in owner).

use std::time::Duration;

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};
use queue::Job as _;

use jobs::{
    kinds::BuildExport,
    rate_limit::{self, Take},
};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{AppError, AppState, routes::ApiUser};

/// Exports a user may request per day.
const PER_DAY: u32 = 3;
const DOWNLOAD_TTL: Duration = Duration::from_secs(300);

/// `POST /api/v1/exports`.
pub async fn request_export(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
) -> Result<Response, AppError> {
    let id = start(&state, user).await?;
    let view = view(&state, user, id).await?;
    Ok((StatusCode::ACCEPTED, Json(view)).into_response())
}

/// Records an export request and enqueues its build (one in progress per user, three a day).
pub async fn start(state: &AppState, user: Uuid) -> Result<Uuid, AppError> {
    let running: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM export_requests WHERE user_id = $1 AND status IN ('pending', 'running'))",
    )
    .bind(user)
    .fetch_one(&state.pool)
    .await?;
    if running {
        return Err(AppError::Conflict(
            "an export is already being prepared".into(),
        ));
    }
    if let Take::RetryAfter(wait) = rate_limit::take(
        &state.pool,
        &format!("exports:user:{user}"),
        PER_DAY,
        Duration::from_secs(86_400),
    )
    .await?
    {
        return Err(AppError::TooManyRequests {
            retry_after_secs: wait.as_secs_f64().ceil() as u64,
        });
    }
    let id = Uuid::now_v7();
    let mut tx = state.pool.begin().await?;
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
        return Err(AppError::Conflict(
            "an export is already being prepared".into(),
        ));
    }
    BuildExport { export_id: id }
    .enqueue(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(id)
}

#[derive(sqlx::FromRow)]
struct ExportRow {
    id: Uuid,
    status: String,
    byte_size: Option<i64>,
    created_at: chrono::DateTime<chrono::Utc>,
    completed_at: Option<chrono::DateTime<chrono::Utc>>,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
    object_key: Option<String>,
}

async fn owned(state: &AppState, user: Uuid, id: Uuid) -> Result<ExportRow, AppError> {
    sqlx::query_as(
        "SELECT id, status, byte_size, created_at, completed_at, expires_at, object_key
           FROM export_requests WHERE id = $1 AND user_id = $2",
    )
    .bind(id)
    .bind(user)
    .fetch_optional(&state.pool)
    .await?
    .ok_or(AppError::NotFound)
}

async fn view(state: &AppState, user: Uuid, id: Uuid) -> Result<Value, AppError> {
    let row = owned(state, user, id).await?;
    Ok(json!({
        "id": row.id,
        "status": row.status,
        "byte_size": row.byte_size,
        "created_at": row.created_at,
        "completed_at": row.completed_at,
        "expires_at": row.expires_at,
        "status_url": format!("/api/v1/exports/{}", row.id),
        "download_url": (row.status == "ready").then(|| format!("/api/v1/exports/{}/download", row.id)),
    }))
}

/// `GET /api/v1/exports/{id}`.
pub async fn get_export(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Path(id): Path<Uuid>,
) -> Result<Json<Value>, AppError> {
    Ok(Json(view(&state, user, id).await?))
}

/// `GET /api/v1/exports/{id}/download`: 303 to a presigned URL valid five minutes.
pub async fn download_export(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Path(id): Path<Uuid>,
) -> Result<Response, AppError> {
    match download_url(&state, user, id).await? {
        Some(url) => Ok(Redirect::to(&url).into_response()),
        None => Ok((StatusCode::GONE, Json(json!({"error": "expired", "message": "this export has expired; request a new one"}))).into_response()),
    }
}

/// A five-minute link to the user's ready export; `None` once it has expired.
pub async fn download_url(
    state: &AppState,
    user: Uuid,
    id: Uuid,
) -> Result<Option<String>, AppError> {
    let row = owned(state, user, id).await?;
    match (row.status.as_str(), row.object_key) {
        ("ready", Some(key)) => {
            let pipeline = state
                .pipeline
                .as_deref()
                .ok_or_else(|| AppError::Internal(anyhow::anyhow!("storage not configured")))?;
            Ok(Some(
                pipeline.storage.presign_get(&key, DOWNLOAD_TTL).await?,
            ))
        }
        ("expired", _) => Ok(None),
        _ => Err(AppError::Conflict("the export is not ready yet".into())),
    }
}
