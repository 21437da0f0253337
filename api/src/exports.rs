//! GDPR export endpoints (placeholder until the export work lands).

use axum::{
    extract::{Path, State},
    http::StatusCode,
};
use uuid::Uuid;

use crate::{AppError, AppState, routes::ApiUser};

/// `POST /api/v1/exports`.
pub async fn request_export(
    State(_state): State<AppState>,
    ApiUser(_user): ApiUser,
) -> Result<StatusCode, AppError> {
    Ok(StatusCode::NOT_IMPLEMENTED)
}

/// `GET /api/v1/exports/{id}`.
pub async fn get_export(
    State(_state): State<AppState>,
    ApiUser(_user): ApiUser,
    Path(_id): Path<Uuid>,
) -> Result<StatusCode, AppError> {
    Ok(StatusCode::NOT_IMPLEMENTED)
}

/// `GET /api/v1/exports/{id}/download`.
pub async fn download_export(
    State(_state): State<AppState>,
    ApiUser(_user): ApiUser,
    Path(_id): Path<Uuid>,
) -> Result<StatusCode, AppError> {
    Ok(StatusCode::NOT_IMPLEMENTED)
}
