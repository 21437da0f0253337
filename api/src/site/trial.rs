//! The no-signup trial: one free 1K generation per visitor per 24 hours.
//!
//! A Cloudflare Turnstile check (siteverify, with the client address and an idempotency key so an
//! `internal-error` can be retried safely; the answer's `hostname` and `action` must be the site's) comes first, so bots cannot burn fingerprints; then the fingerprint
//! (a keyed hash of IP address and user agent under a daily pepper: `jobs::trial`) is claimed. The generation
//! belongs to the browser session; signing up moves it into the new account.

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use jobs::generations as domain;
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::{
    PageError, Peer, SiteState, client_ip,
    pages::{chrome, trial_widget},
    session::{CsrfForm, Visitor},
    views::{self, GeneratorForm},
};
use crate::{AppState, generations};

#[derive(Debug, Deserialize)]
pub struct TrialForm {
    #[serde(default)]
    prompt: String,
    aspect_ratio: Option<String>,
    #[serde(rename = "cf-turnstile-response", default)]
    turnstile: String,
}

/// Turnstile's verdict on one token.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Human,
    Refused(Vec<String>),
    /// Turnstile could not be asked or kept failing: the visitor may retry.
    Unavailable,
}

/// Trial attempts one client address may make in an hour (a trial is one a day; the rest is retries).
const TRIAL_ATTEMPTS_PER_HOUR: u32 = 20;

/// The trial widget's `data-action`; siteverify reports it back and a token made for another action is refused.
pub const TRIAL_ACTION: &str = "trial";

/// Cloudflare's documented test secret keys (always pass, always fail, already spent). With them siteverify
/// vouches for nothing: any token passes, and what `action` they report is not documented, so it is not
/// compared; their fixed `hostname` (`example.com`) still is, against `TURNSTILE_EXPECTED_HOSTNAME`.
const TEST_SECRETS: [&str; 3] = [
    "1x0000000000000000000000000000000AA",
    "2x0000000000000000000000000000000AA",
    "3x0000000000000000000000000000000AA",
];

#[derive(Debug, Deserialize)]
struct SiteverifyResponse {
    success: bool,
    #[serde(rename = "error-codes", default)]
    error_codes: Vec<String>,
    hostname: Option<String>,
    action: Option<String>,
}

/// Asks siteverify about `token`. One retry with the same idempotency key on `internal-error`.
pub async fn verify(site: &SiteState, token: &str, ip: &str) -> Verdict {
    let Some(turnstile) = &site.config.turnstile else {
        return Verdict::Unavailable;
    };
    if token.is_empty() || token.len() > 2048 {
        return Verdict::Refused(vec!["missing-input-response".into()]);
    }
    let idempotency_key = uuid::Uuid::new_v4().to_string();
    for _attempt in 0..2 {
        let response = site
            .http
            .post(turnstile.verify_url.clone())
            .form(&[
                ("secret", turnstile.secret_key.expose_secret()),
                ("response", token),
                ("remoteip", ip),
                ("idempotency_key", idempotency_key.as_str()),
            ])
            .send()
            .await;
        let body: SiteverifyResponse = match response {
            Ok(response) if response.status().is_success() => match response.json().await {
                Ok(body) => body,
                Err(error) => {
                    tracing::warn!(error = %error, "Turnstile answered with an unreadable body");
                    return Verdict::Unavailable;
                }
            },
            Ok(response) => {
                tracing::warn!(status = %response.status(), "Turnstile siteverify failed");
                return Verdict::Unavailable;
            }
            Err(error) => {
                tracing::warn!(error = %error, "Turnstile siteverify unreachable");
                return Verdict::Unavailable;
            }
        };
        if body.success {
            let expected = turnstile
                .expected_hostname
                .as_deref()
                .or(site.public_base_url.host_str())
                .unwrap_or_default();
            if let Some(host) = body.hostname.as_deref()
                && !host.eq_ignore_ascii_case(expected)
                && !expected.is_empty()
            {
                return Verdict::Refused(vec![format!("hostname-mismatch:{host}")]);
            }
            let test_secret = TEST_SECRETS.contains(&turnstile.secret_key.expose_secret());
            let action = body.action.as_deref().unwrap_or_default();
            if !test_secret && action != TRIAL_ACTION {
                return Verdict::Refused(vec![format!("action-mismatch:{action}")]);
            }
            return Verdict::Human;
        }
        if body.error_codes.iter().any(|c| c == "internal-error") {
            continue;
        }
        return Verdict::Refused(body.error_codes);
    }
    Verdict::Unavailable
}

/// `POST /trial`.
pub async fn start(
    State(state): State<AppState>,
    visitor: Visitor,
    headers: HeaderMap,
    peer: Peer,
    CsrfForm(form): CsrfForm<TrialForm>,
) -> Result<Response, PageError> {
    let site = state
        .site
        .clone()
        .ok_or_else(|| PageError::internal("site not configured"))?;
    if visitor.user_id().await.is_some() {
        return Ok(Redirect::to("/").into_response());
    }
    if site.config.turnstile.is_none() {
        return Err(PageError::NotFound);
    }
    let aspect_ratio = form.aspect_ratio.clone().unwrap_or_else(|| "auto".into());
    let refuse = |status: StatusCode, message: String| {
        let state = state.clone();
        let visitor = visitor.clone();
        let headers = headers.clone();
        let form_prompt = form.prompt.clone();
        let aspect_ratio = aspect_ratio.clone();
        async move {
            let chrome = chrome(&state, &visitor, &headers, "/").await?;
            let csrf = chrome.csrf.clone().unwrap_or_default();
            let page = views::landing(
                &chrome,
                &csrf,
                trial_widget(&state),
                &GeneratorForm {
                    prompt: form_prompt,
                    aspect_ratio,
                    error: Some(message),
                    ..GeneratorForm::default()
                },
            );
            Ok::<Response, PageError>((status, page).into_response())
        }
    };
    // Checked before the bot check and the fingerprint, so a typo costs neither (create checks again).
    if let Err(invalid) = domain::validate(&form.prompt, Some(&aspect_ratio), None, 0) {
        return refuse(StatusCode::UNPROCESSABLE_ENTITY, invalid.message).await;
    }
    let ip = client_ip(&site, &headers, peer);
    let metric = |outcome: &str| {
        state
            .metrics
            .trial_checks_total
            .with_label_values(&[outcome])
            .inc();
    };
    // Each attempt costs a siteverify call and a fingerprint: a client address gets TRIAL_ATTEMPTS_PER_HOUR,
    // whatever their outcome (keyed by an HMAC of the address, like every identifier-keyed budget).
    if let jobs::rate_limit::Take::RetryAfter(wait) = jobs::rate_limit::take_for_identifier(
        &state.pool,
        "trial",
        &ip,
        TRIAL_ATTEMPTS_PER_HOUR,
        std::time::Duration::from_secs(3600),
    )
    .await?
    {
        metric("rate_limited");
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "Too many attempts from your network. Please try again in {} minutes.",
                wait.as_secs().div_ceil(60)
            ),
        )
        .await;
    }
    match verify(&site, &form.turnstile, &ip).await {
        Verdict::Human => {}
        Verdict::Refused(codes) => {
            metric("turnstile_failed");
            tracing::info!(codes = ?codes, "trial refused by Turnstile");
            return refuse(
                StatusCode::FORBIDDEN,
                "The bot check did not pass. Please complete it again and resubmit.".into(),
            )
            .await;
        }
        Verdict::Unavailable => {
            metric("turnstile_error");
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "The bot check is unavailable right now. Please try again in a minute.".into(),
            )
            .await;
        }
    }
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let fingerprints = jobs::trial::Fingerprints::of(&state.pool, &ip, user_agent).await?;
    let session = visitor.ensure().await?;
    let generation_config = &generations::pipeline(&state)?.generation;
    let created = domain::create(
        &state.pool,
        generation_config,
        &state.metrics,
        domain::NewGeneration {
            owner: domain::Owner::Trial {
                session: session.id_hash.clone(),
                fingerprints,
            },
            prompt: &form.prompt,
            aspect_ratio: Some(&aspect_ratio),
            resolution: None,
            reference_upload_ids: &[],
            variations: None,
            idempotency_key: None,
        },
    )
    .await;
    let generation = match created {
        Ok(mut generations) if !generations.is_empty() => generations.swap_remove(0),
        Ok(_) => {
            return Err(PageError::App(crate::AppError::Internal(anyhow::anyhow!(
                "the trial recorded no generation"
            ))));
        }
        Err(domain::CreateError::TrialUsed) => {
            metric("refused_repeat");
            return refuse(
                StatusCode::TOO_MANY_REQUESTS,
                "You have already used today's free trial. Sign up to keep generating — new accounts start with free credits."
                    .into(),
            )
            .await;
        }
        Err(domain::CreateError::Invalid(invalid)) => {
            return refuse(StatusCode::UNPROCESSABLE_ENTITY, invalid.message).await;
        }
        Err(other) => return Err(PageError::App(other.into())),
    };
    metric("started");
    Ok(Redirect::to(&format!("/generations/{}", generation.id)).into_response())
}
