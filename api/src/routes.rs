//! The router: pages, the JSON API, health, and the HTTP metrics middleware.

use std::time::Instant;

use axum::{
    Json, Router,
    extract::{FromRequestParts, MatchedPath, Request, State},
    http::{StatusCode, request::Parts},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use maud::Markup;
use serde_json::json;
use uuid::Uuid;

use crate::{AppError, AppState, account, exports, generations, site, views, webhooks};

pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    if state.site.is_some() {
        router = router.merge(site::router(&state));
    } else {
        router = router.route("/", get(home));
    }
    let router = router
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/api/v1/me", get(me))
        .route(
            "/api/v1/account",
            axum::routing::delete(account::delete_account),
        )
        .route("/api/v1/uploads", post(generations::create_upload))
        .route(
            "/api/v1/generations",
            post(generations::create_generation).get(generations::list_generations),
        )
        .route(
            "/api/v1/generations/{id}",
            get(generations::get_generation).delete(generations::delete_generation),
        )
        .route(
            crate::events::API_GENERATION_ROUTE,
            get(generations::generation_events),
        )
        .route("/api/v1/exports", post(exports::request_export))
        .route("/api/v1/exports/{id}", get(exports::get_export))
        .route(
            "/api/v1/exports/{id}/download",
            get(exports::download_export),
        )
        .route(
            "/webhooks/kie/{generation}/{secret}",
            post(webhooks::kie_callback),
        )
        .route(
            "/webhooks/stripe",
            post(webhooks::stripe).layer(axum::extract::DefaultBodyLimit::max(
                webhooks::STRIPE_BODY_LIMIT,
            )),
        )
        .fallback(not_found);
    let router = if state.site.is_some() {
        site::layers(router, &state)
    } else {
        router
    };
    router
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            record_http_metrics,
        ))
        .with_state(state)
}

async fn home() -> Markup {
    views::home()
}

async fn not_found() -> (StatusCode, Markup) {
    site::not_found()
}

async fn ready(State(state): State<AppState>) -> Response {
    match crate::readiness(&state).await {
        Ok(()) => "ready\n".into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

/// The caller of the JSON API, from `Authorization: Bearer <API key>`.
pub struct ApiUser(pub Uuid);

impl FromRequestParts<AppState> for ApiUser {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let key = header
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or(AppError::Unauthorized)?;
        let user = jobs::accounts::user_for_api_key(&state.pool, key.trim()).await?;
        user.map(ApiUser).ok_or(AppError::Unauthorized)
    }
}

/// The caller's account: id, e-mail and spendable credits.
async fn me(
    State(state): State<AppState>,
    ApiUser(user_id): ApiUser,
) -> Result<Json<serde_json::Value>, AppError> {
    let (email, balance) = jobs::accounts::email_and_balance(&state.pool, user_id)
        .await?
        .ok_or(AppError::NotFound)?;
    Ok(Json(
        json!({"id": user_id, "email": email, "credits": balance}),
    ))
}

/// Counts and times every request by method, route template (never the raw path) and status.
async fn record_http_metrics(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    // A route layer runs after routing, so the template is known.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let labels = [method.as_str(), route.as_str(), status.as_str()];
    state
        .metrics
        .http_requests_total
        .with_label_values(&labels)
        .inc();
    state
        .metrics
        .http_request_duration_seconds
        .with_label_values(&labels)
        .observe(started.elapsed().as_secs_f64());
    response
}
