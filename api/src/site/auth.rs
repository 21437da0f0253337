//! Sign-in without passwords: e-mailed single-use links and Google (OpenID Connect). Sign-out.
//!
//! E-mailed links: a 256-bit token, stored as its SHA-256, valid `SIGN_IN_LINK_MINUTES`, consumed by one
//! atomic UPDATE on POST (never on GET: mail scanners prefetch links). A newer link voids older ones. The
//! response is the same whether or not the address has an account, and requests are limited per address
//! (fleet-wide, in Postgres) and per client (by a hash of the client address, also in Postgres).

use axum::{
    extract::{Query, State},
    http::HeaderMap,
    response::{IntoResponse, Redirect, Response},
};
use jobs::{
    accounts::{self, Proof, SignIn},
    sign_in_tokens::{self, LinkError, LinkPolicy, Purpose},
};
use maud::Markup;
use serde::Deserialize;

use super::{
    PageError, Peer, client_ip,
    google::Pending,
    pages::chrome,
    redirect::local_path,
    session::{CsrfForm, Visitor},
    views,
};
use crate::AppState;

#[derive(Debug, Deserialize)]
pub struct NextQuery {
    next: Option<String>,
    error: Option<String>,
}

/// `GET /sign-in`.
pub async fn sign_in_page(
    State(state): State<AppState>,
    visitor: Visitor,
    headers: HeaderMap,
    Query(query): Query<NextQuery>,
) -> Result<Response, PageError> {
    let next = local_path(query.next.as_deref());
    if visitor.user_id().await.is_some() {
        return Ok(Redirect::to(&next).into_response());
    }
    let chrome = chrome(&state, &visitor, &headers, "/sign-in").await?;
    let csrf = chrome.csrf.clone().unwrap_or_default();
    let google = state.site.as_ref().is_some_and(|s| s.google.enabled());
    let error = query.error.as_deref().map(|code| match code {
        "google" => "Google sign-in did not complete. Please try again.",
        "deleting" => "This account is being deleted and cannot sign in.",
        "unverified" => "Google has not verified this address, and it belongs to an account here. Sign in with an e-mailed link instead.",
        _ => "Sign-in did not complete. Please try again.",
    });
    Ok(views::sign_in(&chrome, &csrf, &next, google, error).into_response())
}

#[derive(Debug, Deserialize)]
pub struct EmailForm {
    email: String,
    next: Option<String>,
}

/// `POST /sign-in/email`: queues a link (identical response whether or not the address has an account).
pub async fn request_link(
    State(state): State<AppState>,
    visitor: Visitor,
    headers: HeaderMap,
    peer: Peer,
    CsrfForm(form): CsrfForm<EmailForm>,
) -> Result<Response, PageError> {
    let site = state
        .site
        .as_ref()
        .ok_or_else(|| PageError::internal("site not configured"))?;
    let address = form.email.trim().to_lowercase();
    let next = local_path(form.next.as_deref());
    if !sign_in_tokens::plausible_email(&address) {
        let chrome = chrome(&state, &visitor, &headers, "/sign-in").await?;
        let csrf = chrome.csrf.clone().unwrap_or_default();
        let google = site.google.enabled();
        return Ok((
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            views::sign_in(
                &chrome,
                &csrf,
                &next,
                google,
                Some("That does not look like an e-mail address."),
            ),
        )
            .into_response());
    }
    let ip = client_ip(site, &headers, peer);
    let links = LinkPolicy {
        ttl: site.config.sign_in_link_ttl,
        per_address_per_hour: site.config.sign_in_per_address_per_hour,
    };
    let requested = sign_in_tokens::request_sign_in(
        &state.pool,
        &ip,
        site.config.sign_in_per_client_per_hour,
        &address,
        links,
        |token| {
            site.url(&format!(
                "/sign-in/link?token={token}&next={}",
                views::urlencode(&next)
            ))
        },
    )
    .await;
    match requested {
        Ok(()) => {}
        // Checked above, in the page's own words.
        Err(LinkError::Invalid(invalid)) => return Err(crate::AppError::from(invalid).into()),
        Err(LinkError::Limited(limited)) => return Err(crate::AppError::from(limited).into()),
        Err(LinkError::Database(error)) => return Err(error.into()),
    }
    Ok(Redirect::to("/sign-in/check-email").into_response())
}

pub async fn check_email(
    State(state): State<AppState>,
    visitor: Visitor,
    headers: HeaderMap,
) -> Result<Markup, PageError> {
    let minutes = state
        .site
        .as_ref()
        .map_or(15, |s| s.config.sign_in_link_ttl.as_secs() / 60);
    Ok(views::check_email(
        &chrome(&state, &visitor, &headers, "/sign-in").await?,
        minutes,
    ))
}

#[derive(Debug, Deserialize)]
pub struct TokenQuery {
    token: Option<String>,
    next: Option<String>,
}

/// `GET /sign-in/link?token=…`: a page whose button signs in. Reading it consumes nothing.
pub async fn link_landing(
    State(state): State<AppState>,
    visitor: Visitor,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
) -> Result<Markup, PageError> {
    let chrome = chrome(&state, &visitor, &headers, "/sign-in").await?;
    let csrf = chrome.csrf.clone().unwrap_or_default();
    Ok(views::link_landing(
        &chrome,
        &csrf,
        "/sign-in/link",
        query.token.as_deref().unwrap_or_default(),
        &local_path(query.next.as_deref()),
        "Sign in to createimage2",
    ))
}

#[derive(Debug, Deserialize)]
pub struct TokenForm {
    token: String,
    next: Option<String>,
}

/// `POST /sign-in/link`: consumes the token (once), finds or creates the account, starts a new session.
pub async fn redeem_link(
    State(state): State<AppState>,
    visitor: Visitor,
    CsrfForm(form): CsrfForm<TokenForm>,
) -> Result<Response, PageError> {
    let site = state
        .site
        .as_ref()
        .ok_or_else(|| PageError::internal("site not configured"))?;
    let mut tx = state.pool.begin().await?;
    let email = sign_in_tokens::redeem(&mut tx, Purpose::SignIn, &form.token, None).await?;
    let Some(email) = email else {
        return Err(PageError::BadRequest(
            "This sign-in link has expired or was already used. Ask for a new one on the sign-in page.".into(),
        ));
    };
    let outcome =
        accounts::sign_in_or_up(&mut tx, Proof::Email(&email), site.config.signup_credits).await?;
    let user = match outcome {
        SignIn::Existing(user) | SignIn::Created(user) => user,
        SignIn::BeingDeleted | SignIn::Unverified => {
            tx.rollback().await?;
            return Ok(Redirect::to("/sign-in?error=deleting").into_response());
        }
    };
    tx.commit().await?;
    finish_sign_in(&state, &visitor, user, outcome, form.next.as_deref()).await
}

async fn finish_sign_in(
    state: &AppState,
    visitor: &Visitor,
    user: uuid::Uuid,
    outcome: SignIn,
    next: Option<&str>,
) -> Result<Response, PageError> {
    visitor.sign_in(user).await?;
    state
        .metrics
        .sign_ins_total
        .with_label_values(&[match outcome {
            SignIn::Created(_) => "sign_up",
            _ => "sign_in",
        }])
        .inc();
    if let SignIn::Created(_) = outcome {
        let credits = state.site.as_ref().map_or(0, |s| s.config.signup_credits);
        visitor
            .flash(&format!(
                "Welcome to createimage2! Your account starts with {credits} credits."
            ))
            .await?;
    }
    Ok(Redirect::to(&local_path(next)).into_response())
}

/// `POST /sign-out`.
pub async fn sign_out(
    visitor: Visitor,
    CsrfForm(_): CsrfForm<super::pages::Empty>,
) -> Result<Response, PageError> {
    visitor.sign_out().await?;
    Ok(Redirect::to("/").into_response())
}

/// `GET /auth/google`: to Google's consent screen, with state, nonce and PKCE kept in the session.
pub async fn google_start(
    State(state): State<AppState>,
    visitor: Visitor,
    Query(query): Query<NextQuery>,
) -> Result<Response, PageError> {
    let site = state
        .site
        .as_ref()
        .ok_or_else(|| PageError::internal("site not configured"))?;
    if !site.google.enabled() {
        return Err(PageError::NotFound);
    }
    let (url, pending) = site
        .google
        .start(&local_path(query.next.as_deref()))
        .await?;
    visitor
        .set(
            "oidc",
            serde_json::to_value(&pending).map_err(anyhow::Error::from)?,
        )
        .await?;
    Ok(Redirect::to(&url).into_response())
}

#[derive(Debug, Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// How long a Google sign-in may take between leaving and coming back.
const OIDC_PATIENCE_SECS: i64 = 600;

/// `GET /auth/google/callback`.
pub async fn google_callback(
    State(state): State<AppState>,
    visitor: Visitor,
    Query(query): Query<CallbackQuery>,
) -> Result<Response, PageError> {
    let site = state
        .site
        .as_ref()
        .ok_or_else(|| PageError::internal("site not configured"))?;
    let pending: Option<Pending> = visitor
        .take("oidc")
        .await?
        .and_then(|v| serde_json::from_value(v).ok());
    let failed = || Ok(Redirect::to("/sign-in?error=google").into_response());
    let Some(pending) = pending else {
        return failed();
    };
    let fresh = chrono::Utc::now().timestamp() - pending.started_at <= OIDC_PATIENCE_SECS;
    let state_matches = query.state.as_deref().is_some_and(|s| {
        use subtle::ConstantTimeEq;
        s.len() == pending.state.len() && bool::from(s.as_bytes().ct_eq(pending.state.as_bytes()))
    });
    let (Some(code), None, true, true) = (
        query.code.as_deref(),
        query.error.as_deref(),
        fresh,
        state_matches,
    ) else {
        return failed();
    };
    let identity = match site.google.finish(code, &pending).await {
        Ok(identity) => identity,
        Err(error) => {
            tracing::warn!(error = format!("{error:#}"), "Google sign-in failed");
            return failed();
        }
    };
    let Some(email) = identity.email.as_deref() else {
        return failed();
    };
    let mut tx = state.pool.begin().await?;
    let outcome = accounts::sign_in_or_up(
        &mut tx,
        Proof::Google {
            sub: &identity.sub,
            email,
            email_verified: identity.email_verified,
            name: identity.name.as_deref(),
        },
        site.config.signup_credits,
    )
    .await?;
    let user = match outcome {
        SignIn::Existing(user) | SignIn::Created(user) => user,
        SignIn::BeingDeleted => return Ok(Redirect::to("/sign-in?error=deleting").into_response()),
        SignIn::Unverified => return Ok(Redirect::to("/sign-in?error=unverified").into_response()),
    };
    tx.commit().await?;
    finish_sign_in(&state, &visitor, user, outcome, Some(&pending.next)).await
}
