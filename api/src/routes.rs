//! The router: pages, the JSON API, health, and the HTTP metrics middleware.

use std::time::Instant;

use axum::{
    Router,
    extract::{MatchedPath, Request, State},
    http::{Method, StatusCode, Uri},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use maud::Markup;

use crate::{AppError, AppState, caller, site, views, webhooks};

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
        .nest(crate::events::API_PREFIX, api(&state))
        .route("/docs/api", get(crate::openapi::reference))
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

/// Everything under `/api`: JSON in and out, every answer (a 404 or 405 too) in the API's error shape and
/// counted against the caller's request budget ([`caller::count_request`]). The routes are the OpenAPI
/// document's ([`crate::openapi::routes`]).
fn api(state: &AppState) -> Router<AppState> {
    let (router, _) = crate::openapi::routes().split_for_parts();
    router
        .fallback(api_no_route)
        .method_not_allowed_fallback(api_method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            caller::count_request,
        ))
}

async fn api_no_route(uri: Uri) -> AppError {
    AppError::NoRoute {
        path: uri.path().to_owned(),
    }
}

async fn api_method_not_allowed(method: Method) -> AppError {
    AppError::MethodNotAllowed {
        method: method.to_string(),
    }
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
