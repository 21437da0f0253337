//! GDPR export endpoints: request a bundle, see its state, download it (a redirect to a presigned URL valid
//! five minutes, only for the signed-in owner).

use std::time::Duration;

use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};
use jobs::export_requests::{self, Download, ExportStatus};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{AppError, AppState, caller::ApiUser, extract::ApiPath};

const DOWNLOAD_TTL: Duration = Duration::from_secs(300);

/// `POST /api/v1/exports`.
pub async fn request_export(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
) -> Result<Response, AppError> {
    let id = export_requests::request(&state.pool, user).await?;
    let view = view(&state, user, id).await?;
    Ok((StatusCode::ACCEPTED, Json(view)).into_response())
}

async fn view(state: &AppState, user: Uuid, id: Uuid) -> Result<Value, AppError> {
    let request = export_requests::find_owned(&state.pool, user, id)
        .await?
        .ok_or(AppError::NotFound)?;
    let download_url = match request.status {
        ExportStatus::Ready => Some(format!("/api/v1/exports/{}/download", request.id)),
        ExportStatus::Pending
        | ExportStatus::Running
        | ExportStatus::Failed
        | ExportStatus::Expired => None,
    };
    Ok(json!({
        "id": request.id,
        "status": request.status,
        "byte_size": request.byte_size,
        "created_at": request.created_at,
        "completed_at": request.completed_at,
        "expires_at": request.expires_at,
        "status_url": format!("/api/v1/exports/{}", request.id),
        "download_url": download_url,
    }))
}

/// `GET /api/v1/exports/{id}`.
pub async fn get_export(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<Value>, AppError> {
    Ok(Json(view(&state, user, id).await?))
}

/// `GET /api/v1/exports/{id}/download`: 303 to a presigned URL valid five minutes.
pub async fn download_export(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Response, AppError> {
    match download(&state, user, id).await? {
        Download::Link(url) => Ok(Redirect::to(&url).into_response()),
        Download::Expired => Ok((StatusCode::GONE, Json(json!({"error": "expired", "message": "this export has expired; request a new one"}))).into_response()),
    }
}

/// A five-minute link to the member's ready export ([`export_requests::download`]).
pub async fn download(state: &AppState, user: Uuid, id: Uuid) -> Result<Download, AppError> {
    let storage = &crate::generations::pipeline(state)?.storage;
    Ok(export_requests::download(&state.pool, storage, user, id, DOWNLOAD_TTL).await?)
}
