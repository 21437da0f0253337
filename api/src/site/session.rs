//! Browser sessions (table `sessions`), the signed-in member, and CSRF protection.
//!
//! A session id is 32 random bytes; the cookie holds it (base64url) and the database only its SHA-256.
//! Anonymous visitors get a session only when a page needs one (a form's CSRF token, the trial, sign-in
//! state). Signing in rotates the id. Cookies are `HttpOnly`, `SameSite=Lax`, and on HTTPS `Secure` with the
//! `__Host-` prefix. Sessions end after `SESSION_IDLE_HOURS` unused and `SESSION_ABSOLUTE_DAYS` at most.
//!
//! CSRF: every unsafe request must carry the session's token (form field `csrf` or header `X-CSRF-Token`), and
//! unsafe requests marked `Sec-Fetch-Site: cross-site` are refused outright.

use std::{sync::Arc, time::Duration};

use axum::{
    extract::{FromRequest, FromRequestParts, Request, State},
    http::{HeaderMap, HeaderValue, Method, header, request::Parts},
    middleware::Next,
    response::{IntoResponse, Redirect, Response},
};
use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use tokio::sync::Mutex;
use uuid::Uuid;

use super::{PageError, SiteState};
use crate::AppState;

/// Anonymous sessions live at most a day without use.
const ANONYMOUS_IDLE: Duration = Duration::from_secs(24 * 3600);
/// `last_seen_at` is refreshed at most this often, so browsing does not write on every request.
const TOUCH_EVERY: Duration = Duration::from_secs(300);

/// The session cookie's name: `__Host-` needs `Secure`, which needs HTTPS.
pub fn cookie_name(secure: bool) -> &'static str {
    if secure {
        "__Host-ci2_session"
    } else {
        "ci2_session"
    }
}

fn hash(id: &str) -> Vec<u8> {
    Sha256::digest(id.as_bytes()).to_vec()
}

/// The session row this request carries.
#[derive(Debug, Clone)]
pub struct Current {
    pub id_hash: Vec<u8>,
    pub user_id: Option<Uuid>,
    csrf_secret: Vec<u8>,
    pub data: Value,
}

#[derive(Debug, Clone)]
enum CookieAction {
    Keep,
    Set(String),
    Clear,
}

struct Inner {
    pool: PgPool,
    site: Arc<SiteState>,
    current: Option<Current>,
    cookie: CookieAction,
}

/// The visitor behind a request: their session if any, and the means to start, rotate and end one.
#[derive(Clone)]
pub struct Visitor(Arc<Mutex<Inner>>);

impl Visitor {
    pub async fn current(&self) -> Option<Current> {
        self.0.lock().await.current.clone()
    }

    pub async fn user_id(&self) -> Option<Uuid> {
        self.0.lock().await.current.as_ref().and_then(|c| c.user_id)
    }

    /// The session, created (anonymous) if there is none yet.
    pub async fn ensure(&self) -> sqlx::Result<Current> {
        let mut inner = self.0.lock().await;
        if let Some(current) = &inner.current {
            return Ok(current.clone());
        }
        let (id, current) = insert(
            &inner.pool,
            &inner.site,
            None,
            Value::Object(Default::default()),
        )
        .await?;
        inner.cookie = CookieAction::Set(id);
        inner.current = Some(current.clone());
        Ok(current)
    }

    /// The CSRF token for forms on this page (starts a session if needed).
    pub async fn csrf_token(&self) -> sqlx::Result<String> {
        Ok(hex::encode(self.ensure().await?.csrf_secret))
    }

    async fn csrf_matches(&self, token: &str) -> bool {
        let inner = self.0.lock().await;
        let Some(current) = &inner.current else {
            return false;
        };
        let Ok(given) = hex::decode(token.trim()) else {
            return false;
        };
        given.len() == current.csrf_secret.len() && bool::from(given.ct_eq(&current.csrf_secret))
    }

    /// Signs `user_id` in: a new session id (the old one is deleted), carrying over what the old session held
    /// except sign-in state; trial generations of the old session become the user's.
    pub async fn sign_in(&self, user_id: Uuid) -> sqlx::Result<()> {
        let mut inner = self.0.lock().await;
        let mut data = inner
            .current
            .as_ref()
            .map(|c| c.data.clone())
            .unwrap_or_else(|| Value::Object(Default::default()));
        if let Some(map) = data.as_object_mut() {
            map.remove("oidc");
        }
        let mut tx = inner.pool.begin().await?;
        if let Some(old) = &inner.current {
            sqlx::query(
                "UPDATE generations SET user_id = $1, trial_session_hash = NULL
                  WHERE trial_session_hash = $2 AND user_id IS NULL",
            )
            .bind(user_id)
            .bind(&old.id_hash)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
                .bind(&old.id_hash)
                .execute(&mut *tx)
                .await?;
        }
        let (id, current) = insert(&mut *tx, &inner.site, Some(user_id), data).await?;
        tx.commit().await?;
        inner.cookie = CookieAction::Set(id);
        inner.current = Some(current);
        Ok(())
    }

    /// Ends this session.
    pub async fn sign_out(&self) -> sqlx::Result<()> {
        let mut inner = self.0.lock().await;
        if let Some(current) = inner.current.take() {
            sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
                .bind(&current.id_hash)
                .execute(&inner.pool)
                .await?;
        }
        inner.cookie = CookieAction::Clear;
        Ok(())
    }

    /// Stores `value` under `key` in the session's data (starting a session if needed).
    pub async fn set(&self, key: &str, value: Value) -> sqlx::Result<()> {
        let current = self.ensure().await?;
        let mut inner = self.0.lock().await;
        let data: Value = sqlx::query_scalar(
            "UPDATE sessions SET data = jsonb_set(data, ARRAY[$2], $3) WHERE id_hash = $1 RETURNING data",
        )
        .bind(&current.id_hash)
        .bind(key)
        .bind(&value)
        .fetch_one(&inner.pool)
        .await?;
        if let Some(current) = inner.current.as_mut() {
            current.data = data;
        }
        Ok(())
    }

    /// Removes and returns the value under `key`.
    pub async fn take(&self, key: &str) -> sqlx::Result<Option<Value>> {
        let mut inner = self.0.lock().await;
        let pool = inner.pool.clone();
        let Some(current) = inner.current.as_mut() else {
            return Ok(None);
        };
        let value = current.data.get(key).cloned();
        if value.is_some() {
            current.data = sqlx::query_scalar(
                "UPDATE sessions SET data = data - $2 WHERE id_hash = $1 RETURNING data",
            )
            .bind(&current.id_hash)
            .bind(key)
            .fetch_one(&pool)
            .await?;
        }
        Ok(value)
    }

    /// A one-time message for the next page ("Signed out", "Link sent").
    pub async fn flash(&self, message: &str) -> sqlx::Result<()> {
        self.set("flash", Value::String(message.to_owned())).await
    }

    pub async fn take_flash(&self) -> sqlx::Result<Option<String>> {
        Ok(self
            .take("flash")
            .await?
            .and_then(|v| v.as_str().map(str::to_owned)))
    }
}

async fn insert<'e>(
    conn: impl sqlx::PgExecutor<'e>,
    site: &SiteState,
    user_id: Option<Uuid>,
    data: Value,
) -> sqlx::Result<(String, Current)> {
    let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let csrf_secret = rand::random::<[u8; 32]>().to_vec();
    let idle = if user_id.is_some() {
        site.config.session_idle
    } else {
        ANONYMOUS_IDLE
    };
    let id_hash = hash(&id);
    sqlx::query(
        "INSERT INTO sessions (id_hash, user_id, csrf_secret, data, idle_expires_at, absolute_expires_at)
         VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5), now() + make_interval(secs => $6))",
    )
    .bind(&id_hash)
    .bind(user_id)
    .bind(&csrf_secret)
    .bind(&data)
    .bind(idle.as_secs_f64())
    .bind(site.config.session_absolute.as_secs_f64())
    .execute(conn)
    .await?;
    Ok((
        id,
        Current {
            id_hash,
            user_id,
            csrf_secret,
            data,
        },
    ))
}

fn session_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

/// Loads the session (if the cookie names a live one) before the handler, and writes the cookie after it.
pub async fn layer(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let Some(site) = state.site.clone() else {
        return next.run(request).await;
    };
    let name = cookie_name(site.secure_cookies);
    let mut current = None;
    if let Some(id) = session_cookie(request.headers(), name) {
        match load(&state.pool, &site, &id).await {
            Ok(found) => current = found,
            Err(error) => return PageError::from(error).into_response(),
        }
    }
    let visitor = Visitor(Arc::new(Mutex::new(Inner {
        pool: state.pool.clone(),
        site: site.clone(),
        current,
        cookie: CookieAction::Keep,
    })));
    request.extensions_mut().insert(visitor.clone());
    let mut response = next.run(request).await;
    let action = visitor.0.lock().await.cookie.clone();
    let secure = if site.secure_cookies { "; Secure" } else { "" };
    let cookie = match action {
        CookieAction::Keep => None,
        CookieAction::Set(id) => Some(format!(
            "{name}={id}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
            site.config.session_absolute.as_secs()
        )),
        CookieAction::Clear => Some(format!(
            "{name}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0{secure}"
        )),
    };
    if let Some(cookie) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        response.headers_mut().append(header::SET_COOKIE, cookie);
        // A response that sets a session must never be cached by anyone.
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

async fn load(pool: &PgPool, site: &SiteState, id: &str) -> sqlx::Result<Option<Current>> {
    #[derive(sqlx::FromRow)]
    struct Row {
        id_hash: Vec<u8>,
        user_id: Option<Uuid>,
        csrf_secret: Vec<u8>,
        data: Value,
        stale: bool,
    }
    let row: Option<Row> = sqlx::query_as(
        "SELECT s.id_hash, s.user_id, s.csrf_secret, s.data,
                s.last_seen_at < now() - make_interval(secs => $2) AS stale
           FROM sessions s LEFT JOIN users u ON u.id = s.user_id
          WHERE s.id_hash = $1 AND s.revoked_at IS NULL
            AND s.idle_expires_at > now() AND s.absolute_expires_at > now()
            AND (s.user_id IS NULL OR u.deletion_requested_at IS NULL)",
    )
    .bind(hash(id))
    .bind(TOUCH_EVERY.as_secs_f64())
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    if row.stale {
        let idle = if row.user_id.is_some() {
            site.config.session_idle
        } else {
            ANONYMOUS_IDLE
        };
        sqlx::query(
            "UPDATE sessions SET last_seen_at = now(),
                    idle_expires_at = LEAST(absolute_expires_at, now() + make_interval(secs => $2))
              WHERE id_hash = $1",
        )
        .bind(&row.id_hash)
        .bind(idle.as_secs_f64())
        .execute(pool)
        .await?;
    }
    Ok(Some(Current {
        id_hash: row.id_hash,
        user_id: row.user_id,
        csrf_secret: row.csrf_secret,
        data: row.data,
    }))
}

impl<S: Send + Sync> FromRequestParts<S> for Visitor {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Visitor>()
            .cloned()
            .ok_or_else(|| PageError::internal("the session layer is not installed"))
    }
}

/// A signed-in member: pages that need one redirect others to the sign-in page.
#[derive(Clone)]
pub struct Member {
    pub user_id: Uuid,
    pub email: String,
    pub display_name: Option<String>,
    pub balance: i64,
    pub visitor: Visitor,
}

impl FromRequestParts<AppState> for Member {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let visitor = Visitor::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let Some(user_id) = visitor.user_id().await else {
            let next = parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            let target = format!(
                "/sign-in?next={}",
                url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
            );
            return Err(Redirect::to(&target).into_response());
        };
        let row: Option<(String, Option<String>, i64)> = sqlx::query_as(
            "SELECT u.email, u.display_name, coalesce(a.balance, 0)
               FROM users u LEFT JOIN credit_accounts a ON a.user_id = u.id WHERE u.id = $1",
        )
        .bind(user_id)
        .fetch_optional(&state.pool)
        .await
        .map_err(|e| PageError::from(e).into_response())?;
        let Some((email, display_name, balance)) = row else {
            return Err(Redirect::to("/sign-in").into_response());
        };
        Ok(Self {
            user_id,
            email,
            display_name,
            balance,
            visitor,
        })
    }
}

/// Rejects an unsafe request sent by another site, whatever its token.
fn cross_site(method: &Method, headers: &HeaderMap) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
        && headers
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"))
}

/// A form body (`application/x-www-form-urlencoded`, repeated keys allowed) whose `csrf` field (or
/// `X-CSRF-Token` header) matches the session's token.
pub struct CsrfForm<T>(pub T);

#[derive(serde::Deserialize)]
struct CsrfField {
    csrf: Option<String>,
}

impl<T: DeserializeOwned + Send> FromRequest<AppState> for CsrfForm<T> {
    type Rejection = PageError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = request.into_parts();
        let visitor = Visitor::from_request_parts(&mut parts, state).await?;
        if cross_site(&parts.method, &parts.headers) {
            return Err(PageError::Forbidden);
        }
        let bytes = axum::body::to_bytes(body, 256 * 1024)
            .await
            .map_err(|_| PageError::BadRequest("the form is too large".into()))?;
        let header_token = parts
            .headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let field: CsrfField =
            serde_html_form::from_bytes(&bytes).unwrap_or(CsrfField { csrf: None });
        let token = field.csrf.or(header_token).unwrap_or_default();
        if !visitor.csrf_matches(&token).await {
            return Err(PageError::Forbidden);
        }
        let value = serde_html_form::from_bytes(&bytes)
            .map_err(|error| PageError::BadRequest(format!("the form is malformed: {error}")))?;
        Ok(Self(value))
    }
}

/// A CSRF check for unsafe requests without a form body (JSON `fetch` calls from the site's script).
pub async fn check_header(
    visitor: &Visitor,
    headers: &HeaderMap,
    method: &Method,
) -> Result<(), PageError> {
    if cross_site(method, headers) {
        return Err(PageError::Forbidden);
    }
    let token = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if visitor.csrf_matches(token).await {
        Ok(())
    } else {
        Err(PageError::Forbidden)
    }
}

/// Signs every session of `user_id` out (all devices), including the caller's.
pub async fn revoke_all(pool: &PgPool, user_id: Uuid) -> sqlx::Result<u64> {
    Ok(sqlx::query("DELETE FROM sessions WHERE user_id = $1")
        .bind(user_id)
        .execute(pool)
        .await?
        .rows_affected())
}
