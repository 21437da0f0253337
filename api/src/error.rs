//! The one error type of the web tier. Each variant maps to one status; internal errors are logged once here
//! and shown as an opaque message.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Missing or invalid credentials.
    #[error("authentication required")]
    Unauthorized,
    /// Not found — also what another user's resource looks like (never 403).
    #[error("not found")]
    NotFound,
    /// Invalid input, naming the field.
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// Anything else: logged, shown as an opaque 500.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for AppError {
    fn from(error: sqlx::Error) -> Self {
        Self::Internal(error.into())
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, body) = match &self {
            Self::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                json!({"error": "unauthorized", "message": self.to_string()}),
            ),
            Self::NotFound => (
                StatusCode::NOT_FOUND,
                json!({"error": "not_found", "message": "not found"}),
            ),
            Self::Invalid { field, message } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"error": "invalid", "field": field, "message": message}),
            ),
            Self::Internal(error) => {
                tracing::error!(error = format!("{error:#}"), "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": "internal", "message": "something went wrong"}),
                )
            }
        };
        (status, Json(body)).into_response()
    }
}
