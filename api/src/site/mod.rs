//! The server-rendered site: pages, sign-in, the no-signup trial, consent.
//!
//! Every core action works without JavaScript (forms post and redirect); `static/app.js` adds live status,
//! reference uploads straight to the bucket, and the consent banner's analytics loader. Handlers load data
//! and call `views`; views only render.
//!
//! Invariants: no page calls kie.ai, Stripe or SMTP (e-mails are outbox rows, payments are intents for the
//! worker); every state-changing form is CSRF-checked ([`session::CsrfForm`]); the client IP is used only
//! inside the trial fingerprint's keyed hash and per-client rate-limit keys, both hashed, never stored raw.

mod account;
mod assets;
mod auth;
mod billing;
mod google;
mod pages;
mod redirect;
pub mod session;
mod trial;
mod views;

pub use account::LEDGER_LINES;

use std::net::{IpAddr, SocketAddr};

use axum::{
    Router,
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use jobs::config::SiteConfig;

use crate::{AppError, AppState};

/// Settings and clients of the site.
pub struct SiteState {
    pub config: SiteConfig,
    /// Links in e-mails and OIDC redirects are built from this, never from the Host header.
    pub public_base_url: url::Url,
    /// HTTPS: cookies get `Secure` and the `__Host-` prefix, responses HSTS.
    pub secure_cookies: bool,
    csp: HeaderValue,
    /// For Turnstile's siteverify and Google's token endpoint. Never follows redirects (OIDC requires it).
    pub http: reqwest::Client,
    google: google::Google,
    /// Purchases are possible (a Stripe key is configured for the workers).
    pub billing: bool,
}

impl SiteState {
    /// `storage_origin` is where images and presigned uploads live (the bucket's S3 endpoint).
    pub fn new(
        config: SiteConfig,
        public_base_url: url::Url,
        storage_origin: &str,
        billing: bool,
    ) -> Self {
        let secure_cookies = public_base_url.scheme() == "https";
        let origin = |url: &url::Url| url.origin().ascii_serialization();
        let mut script = vec!["'self'".to_owned()];
        let mut frame = vec![];
        let mut connect = vec!["'self'".to_owned(), storage_origin.to_owned()];
        if let Some(turnstile) = &config.turnstile {
            script.push(origin(&turnstile.script_url));
            frame.push(origin(&turnstile.script_url));
            connect.push(origin(&turnstile.script_url));
        }
        if config.ga4_measurement_id.is_some() {
            script.push(origin(&config.ga4_script_url));
            connect.push(origin(&config.ga4_script_url));
            connect.push("https://*.google-analytics.com".into());
        }
        let frame_src = if frame.is_empty() {
            "'none'".to_owned()
        } else {
            frame.join(" ")
        };
        let csp = format!(
            "default-src 'self'; script-src {}; style-src 'self'; img-src 'self' data: blob: {storage_origin}; \
             connect-src {}; frame-src {frame_src}; font-src 'self'; object-src 'none'; base-uri 'none'; \
             form-action 'self'; frame-ancestors 'none'",
            script.join(" "),
            connect.join(" "),
        );
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .expect("a reqwest client with a timeout builds");
        Self {
            google: google::Google::new(config.google.clone(), &public_base_url),
            config,
            public_base_url,
            secure_cookies,
            csp: HeaderValue::from_str(&csp).expect("the CSP is ASCII"),
            http,
            billing,
        }
    }

    /// An absolute URL on this site.
    pub fn url(&self, path: &str) -> String {
        let mut base = self
            .public_base_url
            .as_str()
            .trim_end_matches('/')
            .to_owned();
        base.push_str(path);
        base
    }
}

/// The site's routes, mounted on the api router (which adds metrics and the 404 fallback).
pub fn router(state: &AppState) -> Router<AppState> {
    let mut router = Router::new()
        .route("/", get(pages::home))
        .route("/generate", post(pages::generate))
        .route("/uploads", post(pages::create_upload))
        .route("/gallery", get(pages::gallery))
        .route(
            "/gallery/delete",
            get(pages::confirm_bulk_delete).post(pages::bulk_delete),
        )
        .route("/generations/{id}", get(pages::generation))
        .route(
            crate::events::SITE_GENERATION_ROUTE,
            get(pages::generation_events),
        )
        .route("/generations/{id}/download", get(pages::download))
        .route("/generations/{id}/reference", post(pages::use_as_reference))
        .route("/generations/{id}/cancel", post(pages::cancel))
        .route(
            "/generations/{id}/delete",
            get(pages::confirm_delete).post(pages::delete),
        )
        .route("/trial", post(trial::start))
        .route("/pricing", get(billing::pricing))
        .route("/billing/checkout", post(billing::checkout))
        .route("/billing/portal", post(billing::portal))
        .route("/billing/intents/{id}", get(billing::intent))
        .route("/billing/intents/{id}/done", get(billing::done))
        .route(crate::events::INTENT_ROUTE, get(billing::intent_events))
        .route("/privacy-policy", get(pages::privacy_policy))
        .route("/terms", get(pages::terms))
        .route("/consent", post(pages::consent))
        .route("/sign-in", get(auth::sign_in_page))
        .route("/sign-in/email", post(auth::request_link))
        .route("/sign-in/check-email", get(auth::check_email))
        .route(
            "/sign-in/link",
            get(auth::link_landing).post(auth::redeem_link),
        )
        .route("/sign-out", post(auth::sign_out))
        .route("/auth/google", get(auth::google_start))
        .route("/auth/google/callback", get(auth::google_callback))
        .route("/account", get(account::page))
        .route("/account/profile", post(account::update_profile))
        .route(
            "/account/email/confirm",
            get(account::email_landing).post(account::confirm_email),
        )
        .route("/account/api-keys", post(account::create_api_key))
        .route(
            "/account/api-keys/{id}/revoke",
            post(account::revoke_api_key),
        )
        .route(
            "/account/sessions/revoke",
            post(account::sign_out_everywhere),
        )
        .route("/account/export", post(account::request_export))
        .route(
            "/account/exports/{id}/download",
            get(account::download_export),
        )
        .route(
            "/account/delete",
            get(account::confirm_delete).post(account::delete),
        )
        .route("/static/{file}", get(assets::serve));
    if state.site.as_ref().is_some_and(|s| s.config.dev_pages) {
        router = router
            .route("/dev/outbox", get(pages::dev_outbox))
            .route("/dev/outbox/{id}", get(pages::dev_outbox_message));
    }
    router
}

/// Adds the site's middleware (sessions, security headers) around `router`.
pub fn layers(router: Router<AppState>, state: &AppState) -> Router<AppState> {
    router
        .layer(middleware::from_fn_with_state(
            state.clone(),
            session::layer,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            security_headers,
        ))
}

/// CSP without inline script, HSTS on HTTPS, no framing, no sniffing, a strict referrer policy.
async fn security_headers(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    if let Some(site) = &state.site {
        headers.insert(header::CONTENT_SECURITY_POLICY, site.csp.clone());
        if site.secure_cookies {
            headers.insert(
                header::STRICT_TRANSPORT_SECURITY,
                HeaderValue::from_static("max-age=63072000; includeSubDomains"),
            );
        }
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("strict-origin-when-cross-origin"),
    );
    headers.insert(
        "permissions-policy",
        HeaderValue::from_static("camera=(), microphone=(), geolocation=()"),
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// The TCP peer of the request, when the server was started with connect info.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub Option<SocketAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
        ))
    }
}

/// The client's address: the configured header (e.g. `CF-Connecting-IP`) when the peer is a trusted proxy,
/// otherwise the peer. Used only inside keyed hashes and rate-limit keys; never stored or logged.
pub fn client_ip(site: &SiteState, headers: &HeaderMap, peer: Peer) -> String {
    let peer_ip: Option<IpAddr> = peer.0.map(|p| p.ip());
    if let (Some(name), Some(ip)) = (&site.config.client_ip_header, peer_ip)
        && site
            .config
            .trusted_proxies
            .iter()
            .any(|net| net.contains(&ip))
        && let Some(value) = headers.get(name.as_str()).and_then(|v| v.to_str().ok())
        && let Ok(client) = value.trim().parse::<IpAddr>()
    {
        return client.to_string();
    }
    peer_ip.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
}

/// The cache-busting URL of one of the site's assets (also for pages outside the site, such as the API
/// reference).
pub fn asset_url(name: &str) -> String {
    assets::url(name)
}

/// The client's address of any request (the JSON API's too): [`client_ip`] where the site is configured (its
/// trusted proxies), else the TCP peer. Used only inside keyed hashes; never stored or logged.
pub fn client_address(
    state: &AppState,
    headers: &HeaderMap,
    extensions: &axum::http::Extensions,
) -> String {
    let peer = Peer(
        extensions
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
            .map(|c| c.0),
    );
    match &state.site {
        Some(site) => client_ip(site, headers, peer),
        None => peer
            .0
            .map_or_else(|| "unknown".to_owned(), |p| p.ip().to_string()),
    }
}

/// Path parameters of a page: one that does not parse (`/generations/not-a-uuid`) is the site's own 404 page,
/// like any other address that names nothing.
pub struct PagePath<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for PagePath<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned + Send,
{
    type Rejection = PageError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, PageError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Self(value))
            .map_err(|_| PageError::NotFound)
    }
}

/// An error on a page: rendered as a page of the site, never as JSON.
#[derive(Debug)]
pub enum PageError {
    NotFound,
    /// A missing or wrong CSRF token, or a cross-site form.
    Forbidden,
    BadRequest(String),
    App(AppError),
}

impl PageError {
    pub fn internal(message: &str) -> Self {
        Self::App(AppError::Internal(anyhow::anyhow!(message.to_owned())))
    }
}

impl From<sqlx::Error> for PageError {
    fn from(error: sqlx::Error) -> Self {
        Self::App(error.into())
    }
}

impl From<anyhow::Error> for PageError {
    fn from(error: anyhow::Error) -> Self {
        Self::App(AppError::Internal(error))
    }
}

impl From<jobs::limits::TakeError> for PageError {
    fn from(error: jobs::limits::TakeError) -> Self {
        AppError::from(error).into()
    }
}

impl From<AppError> for PageError {
    fn from(error: AppError) -> Self {
        match error {
            AppError::NotFound => Self::NotFound,
            other => Self::App(other),
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, title, message) = match self {
            Self::NotFound => return not_found().into_response(),
            Self::Forbidden => (
                StatusCode::FORBIDDEN,
                "This form has expired",
                "For your security the form could not be accepted. Go back, reload the page and try again."
                    .to_owned(),
            ),
            Self::BadRequest(message) => (StatusCode::BAD_REQUEST, "Something is not right", message),
            Self::App(AppError::Internal(error)) => {
                tracing::error!(error = format!("{error:#}"), "page failed");
                return (StatusCode::INTERNAL_SERVER_ERROR, views::error_page(
                    "Something went wrong",
                    "We could not finish this request. Nothing was lost; please try again in a moment.",
                ))
                    .into_response();
            }
            Self::App(AppError::Unauthorized) => {
                return axum::response::Redirect::to("/sign-in").into_response();
            }
            Self::App(AppError::TooManyRequests { retry_after_secs }) => (
                StatusCode::TOO_MANY_REQUESTS,
                "Slow down a little",
                format!("Too many requests. Try again in {retry_after_secs} seconds."),
            ),
            Self::App(other) => {
                let status = other.status();
                (status, "That did not work", other.to_string())
            }
        };
        (status, views::error_page(title, &message)).into_response()
    }
}

/// The site's 404 page.
pub fn not_found() -> (StatusCode, maud::Markup) {
    (
        StatusCode::NOT_FOUND,
        views::error_page(
            "Page not found",
            "There is nothing here. It may have been deleted, or the link is mistyped.",
        ),
    )
}
