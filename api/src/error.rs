//! The one error type of the web tier. Each variant maps to one status; internal errors are logged once here
//! and shown as an opaque message.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Missing or invalid credentials of a webhook or the site's script.
    #[error("authentication required")]
    Unauthorized,
    /// The JSON API without an API key (`invalid_token`: one was sent, and it is not a live key). Answered with
    /// `WWW-Authenticate: Bearer` (RFC 6750 §3).
    #[error("{}", if *invalid_token { "the API key is not valid (revoked, mistyped, or its account deleted)" } else { "send an API key: Authorization: Bearer <key>" })]
    BearerRequired { invalid_token: bool },
    /// Not found — also what another user's resource looks like (never 403).
    #[error("not found")]
    NotFound,
    /// Invalid input, naming the field.
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// A JSON body or query string that does not parse or does not fit the request's type, naming where
    /// (`prompt`, `reference_upload_ids[0]`, `limit`, or `body` when the document as a whole is broken).
    #[error("{field}: {message}")]
    InvalidBody { field: String, message: String },
    /// Fields (or query parameters) the request does not take, by path.
    #[error("{}: not a field of this request", .0.join(", "))]
    UnknownFields(Vec<String>),
    /// A path parameter that cannot name anything (`/generations/not-a-uuid`).
    #[error("{field}: {message}")]
    NoSuchId { field: String, message: String },
    /// A body that is not declared as JSON.
    #[error("send the body as JSON, with Content-Type: application/json")]
    UnsupportedMediaType,
    /// A body over the route's limit.
    #[error("the body is too large")]
    PayloadTooLarge,
    /// A body that could not be read.
    #[error("{0}")]
    BadRequest(String),
    /// A route that exists, with another method.
    #[error("{method} is not allowed here")]
    MethodNotAllowed { method: String },
    /// No route.
    #[error("no such endpoint: {path}")]
    NoRoute { path: String },
    /// Not enough credits.
    #[error("this needs {cost} credits; the balance is {balance}")]
    PaymentRequired { balance: i64, cost: i64 },
    /// Over a rate limit; retry after this many seconds.
    #[error("too many requests; retry in {retry_after_secs} s")]
    TooManyRequests { retry_after_secs: u64 },
    /// The resource is in a state that does not allow this.
    #[error("{0}")]
    Conflict(String),
    /// The resource existed and has expired.
    #[error("{0}")]
    Expired(String),
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
            Self::Unauthorized | Self::BearerRequired { .. } => StatusCode::UNAUTHORIZED,
            Self::NotFound | Self::NoSuchId { .. } | Self::NoRoute { .. } => StatusCode::NOT_FOUND,
            Self::Invalid { .. } | Self::InvalidBody { .. } | Self::UnknownFields(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::PaymentRequired { .. } => StatusCode::PAYMENT_REQUIRED,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Expired(_) => StatusCode::GONE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The JSON body of every error the API answers with (and what its OpenAPI document shows).
#[derive(Debug, Default, serde::Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    /// What went wrong, as a stable code: `unauthorized`, `not_found`, `method_not_allowed`, `conflict`,
    /// `expired`, `too_large`, `unsupported_media_type`, `bad_request`, `invalid`, `insufficient_credits`, `rate_limited`,
    /// `internal`.
    pub error: &'static str,
    /// The same in words for a person.
    pub message: String,
    /// The field, query parameter, path parameter or header at fault, by its path (`reference_upload_ids[0]`;
    /// `body` for a document that does not parse).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Every field the request does not take (`invalid`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown_fields: Option<Vec<String>>,
    /// The spendable credits (`insufficient_credits`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balance: Option<i64>,
    /// What the request would cost (`insufficient_credits`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<i64>,
    /// Seconds to wait before trying again (`rate_limited`; also in `Retry-After`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

impl AppError {
    /// The JSON body this error answers with. Internal errors are logged here, once, and shown opaque.
    fn body(&self) -> ErrorBody {
        let message = self.to_string();
        let plain = |error| ErrorBody {
            error,
            message: message.clone(),
            ..ErrorBody::default()
        };
        let naming = |error, field: &str, message: &str| ErrorBody {
            error,
            message: message.to_owned(),
            field: Some(field.to_owned()),
            ..ErrorBody::default()
        };
        match self {
            Self::Unauthorized | Self::BearerRequired { .. } => plain("unauthorized"),
            Self::NotFound => ErrorBody {
                error: "not_found",
                message: "not found".into(),
                ..ErrorBody::default()
            },
            Self::NoSuchId { field, .. } => naming("not_found", field, &message),
            Self::NoRoute { .. } => plain("not_found"),
            Self::UnknownFields(fields) => ErrorBody {
                field: fields.first().cloned(),
                unknown_fields: Some(fields.clone()),
                ..plain("invalid")
            },
            Self::UnsupportedMediaType => plain("unsupported_media_type"),
            Self::PayloadTooLarge => plain("too_large"),
            Self::BadRequest(_) => plain("bad_request"),
            Self::MethodNotAllowed { .. } => plain("method_not_allowed"),
            Self::Invalid { field, message } => naming("invalid", field, message),
            Self::InvalidBody { field, message } => naming("invalid", field, message),
            Self::PaymentRequired { balance, cost } => ErrorBody {
                balance: Some(*balance),
                cost: Some(*cost),
                ..plain("insufficient_credits")
            },
            Self::TooManyRequests { retry_after_secs } => ErrorBody {
                retry_after: Some(*retry_after_secs),
                ..plain("rate_limited")
            },
            Self::Conflict(_) => plain("conflict"),
            Self::Expired(_) => plain("expired"),
            Self::Internal(error) => {
                tracing::error!(error = format!("{error:#}"), "request failed");
                ErrorBody {
                    error: "internal",
                    message: "something went wrong".into(),
                    ..ErrorBody::default()
                }
            }
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), Json(self.body())).into_response();
        if let Self::TooManyRequests { retry_after_secs } = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        if let Self::BearerRequired { invalid_token } = self {
            let challenge = if invalid_token {
                r#"Bearer realm="createimage2", error="invalid_token""#
            } else {
                r#"Bearer realm="createimage2""#
            };
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
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

impl From<jobs::generations::CancelError> for AppError {
    fn from(error: jobs::generations::CancelError) -> Self {
        match error {
            jobs::generations::CancelError::Started(_) => Self::Conflict(error.to_string()),
            jobs::generations::CancelError::Database(error) => error.into(),
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
