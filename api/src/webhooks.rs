//! `POST /webhooks/kie/{generation}/{secret}`: kie.ai's callback. A hint only: it is recorded and the
//! generation's poll job is made due now, in one transaction; the worker confirms with recordInfo before
//! anything is settled. Answers within milliseconds. An unknown generation answers like a wrong secret (401);
//! a callback for a task that is not the generation's is refused; a replayed one is recognised and not stored
//! again.

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State},
    http::HeaderMap,
};
use jobs::generations::{
    self,
    callbacks::{self, CallbackError},
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
    // An unknown generation and a wrong secret get the same answer, so the endpoint tells no one which
    // generation ids exist.
    let generation = generations::find(&state.pool, generation_id).await?;
    let presented = jobs::accounts::hash_secret(&secret);
    let authentic = generation
        .as_ref()
        .and_then(|g| g.callback_secret_hash.as_deref())
        .is_some_and(|expected| {
            !expected.is_empty() && bool::from(presented.as_slice().ct_eq(expected))
        });
    let Some(generation) = generation.filter(|_| authentic) else {
        return Err(AppError::Unauthorized);
    };
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
    let state_reported = data.get("state").and_then(Value::as_str);
    let expedited = match callbacks::record(&state.pool, &generation, &task_id, state_reported)
        .await
    {
        Ok(callbacks::Recorded::New { expedited }) => expedited,
        Ok(callbacks::Recorded::Duplicate) => {
            return Ok(Json(json!({ "ok": true, "duplicate": true })));
        }
        Err(CallbackError::ForeignTask) => {
            tracing::warn!(generation.id = %generation_id, upstream.task_id = %task_id, "kie callback for another task refused");
            return Err(AppError::Unauthorized);
        }
        Err(CallbackError::Database(error)) => return Err(error.into()),
    };
    tracing::info!(generation.id = %generation_id, trace_id = %generation.trace_id, upstream.task_id = %task_id, expedited, "kie callback");
    Ok(Json(json!({ "ok": true })))
}

/// Largest Stripe webhook body accepted (Stripe's events are well under this).
pub const STRIPE_BODY_LIMIT: usize = 256 * 1024;

/// `POST /webhooks/stripe`: the raw body's signature is verified (any matching `v1`, 300 s tolerance), the
/// event is recorded once with its processing job in one transaction, and 200 goes back at once. Bad or stale
/// signatures get 400 and a metric, and nothing is recorded. No session, no CSRF: the signature is the proof.
pub async fn stripe(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    use axum::{http::StatusCode, response::IntoResponse};
    let count = |outcome: &str| {
        state
            .metrics
            .stripe_webhooks_total
            .with_label_values(&[outcome])
            .inc();
    };
    let Some(secret) = &state.stripe_webhook_secret else {
        count("unconfigured");
        tracing::error!("a Stripe webhook arrived but STRIPE_WEBHOOK_SECRET is not set");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "webhooks are not configured\n",
        )
            .into_response();
    };
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let now = chrono::Utc::now().timestamp();
    if let Err(error) =
        jobs::billing::verify_signature(&body, signature, secret.expose_secret(), now)
    {
        let outcome = match error {
            jobs::billing::SignatureError::Stale => "stale",
            _ => "bad_signature",
        };
        count(outcome);
        tracing::warn!(error = %error, "Stripe webhook refused");
        return (StatusCode::BAD_REQUEST, format!("{error}\n")).into_response();
    }
    let event: Value = match serde_json::from_slice(&body) {
        Ok(event) => event,
        Err(error) => {
            count("malformed");
            return (
                StatusCode::BAD_REQUEST,
                format!("malformed event: {error}\n"),
            )
                .into_response();
        }
    };
    match jobs::billing::record_event(&state.pool, &event).await {
        Ok(true) => count("recorded"),
        Ok(false) => count("duplicate"),
        Err(error) => {
            // Database trouble: 500 makes Stripe retry; reconciliation is the second net.
            tracing::error!(
                error = format!("{error:#}"),
                "could not record a Stripe event"
            );
            return (StatusCode::INTERNAL_SERVER_ERROR, "retry later\n").into_response();
        }
    }
    Json(json!({"received": true})).into_response()
}
