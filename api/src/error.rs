//! The one error type of the web tier. Each variant maps to one status; internal errors are logged once here
//! and shown as an opaque message.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
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
    /// Not enough credits.
    #[error("this needs {cost} credits; the balance is {balance}")]
    PaymentRequired { balance: i64, cost: i64 },
    /// Over a rate limit; retry after this many seconds.
    #[error("too many requests; retry in {retry_after_secs} s")]
    TooManyRequests { retry_after_secs: u64 },
    /// The resource is in a state that does not allow this.
    #[error("{0}")]
    Conflict(String),
    /// Anything else: logged, shown as an opaque 500.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for AppError {
    fn from(error: sqlx::Error) -> Self {
        Self::Internal(error.into())
    }
}

impl AppError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::PaymentRequired { .. } => StatusCode::PAYMENT_REQUIRED,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        let (status, body) = match &self {
            Self::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                json!({"error": "unauthorized", "message": message}),
            ),
            Self::NotFound => (
                StatusCode::NOT_FOUND,
                json!({"error": "not_found", "message": "not found"}),
            ),
            Self::Invalid { field, message } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"error": "invalid", "field": field, "message": message}),
            ),
            Self::PaymentRequired { balance, cost } => (
                StatusCode::PAYMENT_REQUIRED,
                json!({"error": "insufficient_credits", "message": message, "balance": balance, "cost": cost}),
            ),
            Self::TooManyRequests { retry_after_secs } => {
                let mut response = (
                    StatusCode::TOO_MANY_REQUESTS,
                    Json(json!({"error": "rate_limited", "message": message, "retry_after": retry_after_secs})),
                )
                    .into_response();
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
                return response;
            }
            Self::Conflict(_) => (
                StatusCode::CONFLICT,
                json!({"error": "conflict", "message": message}),
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

impl From<jobs::generations::Invalid> for AppError {
    fn from(invalid: jobs::generations::Invalid) -> Self {
        Self::Invalid {
            field: invalid.field,
            message: invalid.message,
        }
    }
}
