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
    /// A JSON body that does not parse or does not fit the request's type, naming where (`prompt`,
    /// `reference_upload_ids[0]`, or `body` when the document as a whole is broken).
    #[error("{field}: {message}")]
    InvalidBody { field: String, message: String },
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
            Self::Invalid { .. } | Self::InvalidBody { .. } => StatusCode::UNPROCESSABLE_ENTITY,
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
            Self::InvalidBody { field, message } => (
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

impl From<jobs::limits::Limited> for AppError {
    fn from(limited: jobs::limits::Limited) -> Self {
        Self::TooManyRequests {
            retry_after_secs: limited.retry_after.as_secs_f64().ceil() as u64,
        }
    }
}

impl From<jobs::limits::TakeError> for AppError {
    fn from(error: jobs::limits::TakeError) -> Self {
        match error {
            jobs::limits::TakeError::Limited(limited) => limited.into(),
            jobs::limits::TakeError::Database(error) => error.into(),
        }
    }
}

// The domain's refusals, each mapped to the API's answer. The site maps the same errors to its pages.

impl From<jobs::generations::CreateError> for AppError {
    fn from(error: jobs::generations::CreateError) -> Self {
        use jobs::generations::CreateError;
        match error {
            CreateError::Invalid(invalid) => invalid.into(),
            CreateError::RateLimited { retry_after } => {
                jobs::limits::Limited { retry_after }.into()
            }
            // The trial page answers this one in its own words; here it is a plain 429 for a day.
            CreateError::TrialUsed => Self::TooManyRequests {
                retry_after_secs: 24 * 3600,
            },
            CreateError::UnknownUpload => Self::Invalid {
                field: "reference_upload_ids",
                message: error.to_string(),
            },
            CreateError::InsufficientCredits { balance, cost } => {
                Self::PaymentRequired { balance, cost }
            }
            CreateError::PaymentOwing | CreateError::KeyInFlight => {
                Self::Conflict(error.to_string())
            }
            CreateError::KeyReused => Self::Invalid {
                field: "Idempotency-Key",
                message: error.to_string(),
            },
            CreateError::Database(error) => error.into(),
        }
    }
}

impl From<jobs::generations::DeleteError> for AppError {
    fn from(error: jobs::generations::DeleteError) -> Self {
        match error {
            jobs::generations::DeleteError::InProgress => Self::Conflict(error.to_string()),
            jobs::generations::DeleteError::Database(error) => error.into(),
        }
    }
}

impl From<jobs::uploads::UploadError> for AppError {
    fn from(error: jobs::uploads::UploadError) -> Self {
        use jobs::uploads::UploadError;
        match error {
            UploadError::Invalid(invalid) => invalid.into(),
            UploadError::Limited(limited) => limited.into(),
            UploadError::NoSuchImage => Self::NotFound,
            UploadError::Storage(error) => Self::Internal(error),
            UploadError::Database(error) => error.into(),
        }
    }
}

impl From<jobs::export_requests::RequestError> for AppError {
    fn from(error: jobs::export_requests::RequestError) -> Self {
        use jobs::export_requests::RequestError;
        match error {
            RequestError::InProgress => Self::Conflict(error.to_string()),
            RequestError::Limited(limited) => limited.into(),
            RequestError::Database(error) => error.into(),
        }
    }
}

/// `Json<T>` whose refusals are the API's own: a body that is not JSON, or JSON that does not fit `T` (a wrong
/// type, a lone surrogate in a string, a missing field), is a 422 naming the field as every other invalid input
/// is; other refusals (no JSON content type, an unreadable body) keep axum's status.
pub struct ApiJson<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = Response;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, Response> {
        use axum::extract::rejection::JsonRejection;
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(
                rejection @ (JsonRejection::JsonDataError(_) | JsonRejection::JsonSyntaxError(_)),
            ) => {
                let (field, message) = located(&rejection)
                    .unwrap_or_else(|| ("body".to_owned(), rejection.body_text()));
                Err(AppError::InvalidBody { field, message }.into_response())
            }
            Err(other) => Err(other.into_response()),
        }
    }
}

/// Where in the document deserializing stopped, and why (serde_path_to_error's path and error, which axum keeps
/// as the rejection's source).
fn located(rejection: &(dyn std::error::Error + 'static)) -> Option<(String, String)> {
    let mut source = Some(rejection);
    while let Some(error) = source {
        if let Some(located) = error.downcast_ref::<serde_path_to_error::Error<serde_json::Error>>()
        {
            let path = located.path().to_string();
            let field = if path == "." { "body".to_owned() } else { path };
            return Some((field, located.inner().to_string()));
        }
        source = error.source();
    }
    None
}

impl From<jobs::export_requests::DownloadError> for AppError {
    fn from(error: jobs::export_requests::DownloadError) -> Self {
        use jobs::export_requests::DownloadError;
        match error {
            DownloadError::NotFound => Self::NotFound,
            DownloadError::NotReady => Self::Conflict(error.to_string()),
            DownloadError::Storage(error) => Self::Internal(error),
            DownloadError::Database(error) => error.into(),
        }
    }
}
