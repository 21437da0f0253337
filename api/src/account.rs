//! Account endpoints of the JSON API: deletion (the site's account page offers the same with a form).

use axum::{Json, extract::State, http::StatusCode};
use jobs::accounts::{self, DeletionReason};
use serde::Deserialize;

use crate::{AppError, AppState, caller::ApiUser};

/// The caller's account.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Me {
    pub id: uuid::Uuid,
    pub email: String,
    /// Spendable credits.
    pub credits: i64,
}

/// `GET /api/v1/me`: the caller's account: id, e-mail and spendable credits.
#[utoipa::path(
    get, path = "/v1/me", tag = "account",
    summary = "Your account",
    description = "Your id, e-mail address and spendable credits.",
    responses((status = 200, description = "The caller's account", body = Me)),
)]
pub async fn me(
    State(state): State<AppState>,
    ApiUser(user_id): ApiUser,
) -> Result<Json<Me>, AppError> {
    let (email, credits) = accounts::email_and_balance(&state.pool, user_id)
        .await?
        .ok_or(AppError::NotFound)?;
    Ok(Json(Me {
        id: user_id,
        email,
        credits,
    }))
}

/// What the user must type to confirm.
pub const DELETE_CONFIRMATION: &str = "delete my account";

/// The confirmation that deletes the account.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct DeleteAccountRequest {
    /// Exactly `delete my account`.
    #[schema(example = "delete my account")]
    pub confirm: Option<String>,
}

/// What happens to a deleted account.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct AccountDeletion {
    /// `deleting`.
    pub status: &'static str,
    pub message: &'static str,
}

/// `DELETE /api/v1/account` `{"confirm": "delete my account"}`: the account is unusable at once (sessions and
/// keys revoked); a job deletes its data.
#[utoipa::path(
    delete, path = "/v1/account", tag = "account",
    summary = "Delete your account",
    description = "Closes the account at once: every session and API key stops working. A job then deletes its images, generations and uploads; payment records are kept, pseudonymised, as the law requires.",
    request_body = DeleteAccountRequest,
    responses(
        (status = 202, description = "Closed at once (sessions and keys revoked); a job deletes its data", body = AccountDeletion),
        (status = 422, description = "The confirmation is missing or different", body = crate::error::ErrorBody),
    ),
)]
pub async fn delete_account(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    crate::extract::ApiJson(body): crate::extract::ApiJson<DeleteAccountRequest>,
) -> Result<(StatusCode, Json<AccountDeletion>), AppError> {
    if body.confirm.as_deref().map(str::trim) != Some(DELETE_CONFIRMATION) {
        return Err(AppError::Invalid {
            field: "confirm",
            message: format!("type \"{DELETE_CONFIRMATION}\" to confirm"),
        });
    }
    let mut tx = state.pool.begin().await?;
    let deletion = accounts::request_deletion(&mut tx, user, DeletionReason::UserRequest).await?;
    tx.commit().await?;
    tracing::info!(deletion.id = ?deletion, "account deletion requested");
    Ok((
        StatusCode::ACCEPTED,
        Json(AccountDeletion {
            status: "deleting",
            message: "Your account is closed; its data is being deleted.",
        }),
    ))
}
