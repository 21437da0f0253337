//! Account endpoints of the JSON API: deletion (the site's account page offers the same with a form).

use axum::{Json, extract::State, http::StatusCode};
use jobs::accounts::{self, DeletionReason};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{AppError, AppState, caller::ApiUser};

/// What the user must type to confirm.
pub const DELETE_CONFIRMATION: &str = "delete my account";

#[derive(Debug, Deserialize)]
pub struct DeleteAccountRequest {
    pub confirm: Option<String>,
}

/// `DELETE /api/v1/account` `{"confirm": "delete my account"}`: the account is unusable at once (sessions and
/// keys revoked); a job deletes its data.
pub async fn delete_account(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    crate::extract::ApiJson(body): crate::extract::ApiJson<DeleteAccountRequest>,
) -> Result<(StatusCode, Json<Value>), AppError> {
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
        Json(
            json!({"status": "deleting", "message": "Your account is closed; its data is being deleted."}),
        ),
    ))
}
