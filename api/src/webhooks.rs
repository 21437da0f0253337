//! `POST /webhooks/kie/{generation}/{secret}`: kie.ai's callback. A hint only: it is recorded and the
//! generation's poll job is made due now, in one transaction; the worker confirms with recordInfo before
//! anything is settled. Answers within milliseconds; duplicates and callbacks for unknown or finished
//! generations are harmless.

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State},
    http::HeaderMap,
};
use jobs::{
    generations,
    kinds::PollGeneration,
    queue::{Job as _, expedite},
};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::{AppError, AppState};

/// How far a signed callback's timestamp may be from now.
const SIGNATURE_TOLERANCE_SECS: i64 = 300;

pub async fn kie_callback(
    State(state): State<AppState>,
    Path((generation_id, secret)): Path<(Uuid, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let Some(generation) = generations::find(&state.pool, generation_id).await? else {
        return Ok(Json(json!({ "ok": true, "ignored": "unknown generation" })));
    };
    let expected = generation
        .callback_secret_hash
        .as_deref()
        .unwrap_or_default();
    let presented = jobs::accounts::hash_secret(&secret);
    if expected.is_empty() || !bool::from(presented.as_slice().ct_eq(expected)) {
        return Err(AppError::Unauthorized);
    }
    let payload: Value = serde_json::from_slice(&body).map_err(|error| AppError::Invalid {
        field: "body",
        message: format!("not JSON: {error}"),
    })?;
    let data = payload.get("data").unwrap_or(&payload);
    let task_id = data
        .get("taskId")
        .or_else(|| data.get("task_id"))
        .and_then(Value::as_str)
        .ok_or(AppError::Invalid {
            field: "taskId",
            message: "missing".into(),
        })?
        .to_owned();
    if let Some(pipeline) = &state.pipeline
        && let Some(key) = &pipeline.kie_webhook_hmac_key
    {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
        };
        let valid = jobs::kie::verify_callback_signature(
            key.expose_secret(),
            &task_id,
            header("x-webhook-timestamp"),
            header("x-webhook-signature"),
            chrono::Utc::now().timestamp(),
            SIGNATURE_TOLERANCE_SECS,
        );
        if !valid {
            return Err(AppError::Unauthorized);
        }
    }
    let state_reported = data.get("state").and_then(Value::as_str).map(str::to_owned);
    let mut tx = state.pool.begin().await?;
    sqlx::query("INSERT INTO upstream_callbacks (generation_id, upstream_task_id, state) VALUES ($1, $2, $3)")
        .bind(generation_id)
        .bind(&task_id)
        .bind(&state_reported)
        .execute(&mut *tx)
        .await?;
    let expedited = if generation.is_finished() {
        false
    } else {
        expedite(
            &mut tx,
            PollGeneration::NAME,
            &PollGeneration::key(generation_id, &task_id),
        )
        .await?
    };
    tx.commit().await?;
    tracing::info!(generation.id = %generation_id, trace_id = %generation.trace_id, upstream.task_id = %task_id, expedited, "kie callback");
    Ok(Json(json!({ "ok": true })))
}
