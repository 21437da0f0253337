//! GDPR export endpoints: request a bundle, see its state, download it (a redirect to a presigned URL valid
//! five minutes, only for the signed-in owner).

use std::time::Duration;

use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};
use chrono::{DateTime, Utc};
use jobs::export_requests::{self, Download, ExportStatus};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{AppError, AppState, caller::ApiUser, error::ErrorBody, extract::ApiPath};

const DOWNLOAD_TTL: Duration = Duration::from_secs(300);

/// A GDPR export of everything the service holds about the member.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Export)]
pub struct ExportOut {
    pub id: Uuid,
    /// `pending`, `running`, `ready`, `failed` or `expired`.
    #[schema(value_type = String, example = "ready")]
    pub status: ExportStatus,
    pub byte_size: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// The bundle is deleted then.
    pub expires_at: Option<DateTime<Utc>>,
    pub status_url: String,
    /// Once ready: a redirect to a five-minute link.
    pub download_url: Option<String>,
}

/// `POST /api/v1/exports`.
#[utoipa::path(
    post, path = "/v1/exports", tag = "account",
    summary = "Export your data",
    description = "Prepares a ZIP of everything the service holds about you (account, generations with their images, uploads, credits, payments, consents). One at a time, three a day; an e-mail says when it is ready.",
    responses(
        (status = 202, description = "Being prepared; an e-mail says when it is ready", body = ExportOut),
        (status = 409, description = "One is already being prepared", body = ErrorBody),
    ),
)]
pub async fn request_export(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
) -> Result<Response, AppError> {
    let id = export_requests::request(&state.pool, user).await?;
    let view = view(&state, user, id).await?;
    Ok((StatusCode::ACCEPTED, Json(view)).into_response())
}

async fn view(state: &AppState, user: Uuid, id: Uuid) -> Result<ExportOut, AppError> {
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
    Ok(ExportOut {
        id: request.id,
        status: request.status,
        byte_size: request.byte_size,
        created_at: request.created_at,
        completed_at: request.completed_at,
        expires_at: request.expires_at,
        status_url: format!("/api/v1/exports/{}", request.id),
        download_url,
    })
}

/// `GET /api/v1/exports/{id}`.
#[utoipa::path(
    get, path = "/v1/exports/{id}", tag = "account",
    summary = "Read an export",
    description = "Its status and, once ready, where to download it.",
    params(("id" = Uuid, Path, description = "The export's id")),
    responses(
        (status = 200, description = "The export", body = ExportOut),
        (status = 404, description = "No such export", body = ErrorBody),
    ),
)]
pub async fn get_export(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<ExportOut>, AppError> {
    Ok(Json(view(&state, user, id).await?))
}

/// `GET /api/v1/exports/{id}/download`: 303 to a presigned URL valid five minutes.
#[utoipa::path(
    get, path = "/v1/exports/{id}/download", tag = "account",
    summary = "Download an export",
    description = "Redirects to a link valid five minutes. Bundles are deleted seven days after they are made.",
    params(("id" = Uuid, Path, description = "The export's id")),
    responses(
        (status = 303, description = "To a five-minute link to the ZIP bundle", headers(("Location" = String, description = "The link"))),
        (status = 404, description = "No such export", body = ErrorBody),
        (status = 409, description = "Not ready yet", body = ErrorBody),
        (status = 410, description = "Expired: request a new one", body = ErrorBody),
    ),
)]
pub async fn download_export(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Response, AppError> {
    match download(&state, user, id).await? {
        Download::Link(url) => Ok(Redirect::to(&url).into_response()),
        Download::Expired => Err(AppError::Expired(
            "this export has expired; request a new one".into(),
        )),
    }
}

/// A five-minute link to the member's ready export ([`export_requests::download`]).
pub async fn download(state: &AppState, user: Uuid, id: Uuid) -> Result<Download, AppError> {
    let storage = &crate::generations::pipeline(state)?.storage;
    Ok(export_requests::download(&state.pool, storage, user, id, DOWNLOAD_TTL).await?)
}
