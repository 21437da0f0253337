//! The account page and its forms: profile (an e-mail change is confirmed by a link to the new address),
//! credits and plan, usage log, API keys, sessions, consent, export and deletion.

use axum::{
    extract::{Query, State},
    http::HeaderMap,
    response::{IntoResponse, Redirect, Response},
};
use jobs::{
    accounts::{self, DeletionReason, EmailChangeError},
    accounts::{KeyError, ProfileSaved},
    export_requests::{self, Download, DownloadError, RequestError},
    sign_in_tokens::{LinkError, LinkPolicy},
};
use maud::Markup;
use serde::Deserialize;
use uuid::Uuid;

use super::{
    PageError, PagePath,
    pages::{Empty, analytics_consent, chrome, privacy_signal},
    session::{self, CsrfForm, Member},
    views::{self, AccountView},
};
use crate::{AppError, AppState};

/// The account page's single values, read in one query.
#[derive(sqlx::FromRow)]
struct AccountSummary {
    shortfall: i64,
    plan_id: Option<String>,
    plan_status: Option<String>,
    current_period_end: Option<chrono::DateTime<chrono::Utc>>,
    sessions: i64,
    has_customer: bool,
}

/// The account page's ledger: the member's (`$1`) 20 latest movements, each with what it was for (the
/// generation, unless deleted, or the payment). Ordered by time, so only `credit_ledger_user_created_idx`
/// gives the order: ordered by id, the primary key read backwards could give it too, and the planner chose
/// that for a member with a large share of the ledger, reading every newer row of everyone's when the member
/// had been quiet a while (`migrations/20261208000020_ledger_by_time.sql`). A test EXPLAINs this text.
pub const LEDGER_LINES: &str =
    "SELECT l.created_at, l.kind, l.amount, l.detail, p.id AS payment_id,
        g.id AS generation_id, g.prompt AS generation_prompt
   FROM credit_ledger l
   LEFT JOIN payments p
          ON p.stripe_object_id = coalesce(l.detail->>'checkout_session', l.detail->>'invoice')
         AND p.user_id = l.user_id
   LEFT JOIN generations g
          ON g.id = CASE WHEN l.detail ? 'generation' THEN (l.detail->>'generation')::uuid END
         AND g.user_id = l.user_id AND g.deleted_at IS NULL
  WHERE l.user_id = $1
  ORDER BY l.created_at DESC, l.id DESC LIMIT 20";

/// Everything the account page shows beyond the member itself. The queries go out together (one for the
/// single values, one per list, each on its own pooled connection), so the page waits for the slowest of them
/// rather than for their sum.
async fn load(
    state: &AppState,
    member: &Member,
    headers: &HeaderMap,
) -> Result<AccountView, PageError> {
    let pool = &state.pool;
    let user = member.user_id;
    let summary = sqlx::query_as::<_, AccountSummary>(
        "SELECT coalesce((SELECT shortfall FROM credit_accounts WHERE user_id = $1), 0) AS shortfall,
                plan.plan_id, plan.status AS plan_status, plan.current_period_end,
                (SELECT count(*) FROM sessions WHERE user_id = $1 AND revoked_at IS NULL
                    AND LEAST(idle_expires_at, absolute_expires_at) > now()) AS sessions,
                EXISTS (SELECT 1 FROM stripe_customers WHERE user_id = $1) AS has_customer
           FROM (SELECT 1) AS one
           LEFT JOIN LATERAL (
                SELECT plan_id, status, current_period_end FROM subscriptions WHERE user_id = $1
                 ORDER BY (status IN ('active', 'trialing', 'past_due')) DESC, updated_at DESC LIMIT 1
           ) AS plan ON true",
    )
    .bind(user)
    .fetch_one(pool);
    let ledger = sqlx::query_as::<_, views::LedgerLine>(LEDGER_LINES)
        .bind(user)
        .fetch_all(pool);
    let payments = sqlx::query_as::<_, views::PaymentLine>(
        "SELECT id, product_id, amount_minor, currency, paid_at, credits, refunded_minor, disputed_at IS NOT NULL AS disputed
           FROM payments WHERE user_id = $1 ORDER BY paid_at DESC LIMIT 20",
    )
    .bind(user)
    .fetch_all(pool);
    let usage = sqlx::query_as(
        "SELECT created_at, model, generation_ms, succeeded FROM usage_log WHERE user_id = $1
          ORDER BY created_at DESC LIMIT 20",
    )
    .bind(user)
    .fetch_all(pool);
    let api_keys = sqlx::query_as(
        "SELECT id, name, prefix, created_at, revoked_at FROM api_keys WHERE user_id = $1 ORDER BY created_at DESC",
    )
    .bind(user)
    .fetch_all(pool);
    let exports = async {
        let recent = jobs::export_requests::recent(pool, user, 3).await?;
        Ok::<_, sqlx::Error>(
            recent
                .into_iter()
                .map(|e| (e.id, e.status, e.created_at, e.expires_at))
                .collect::<Vec<_>>(),
        )
    };
    let (summary, ledger, payments, usage, api_keys, exports) =
        tokio::try_join!(summary, ledger, payments, usage, api_keys, exports)?;
    let product_names = state
        .site
        .as_ref()
        .map(|site| {
            site.config
                .packs
                .iter()
                .chain(&site.config.plans)
                .map(|p| (p.id.clone(), p.name.clone()))
                .collect()
        })
        .unwrap_or_default();
    Ok(AccountView {
        email: member.email.clone(),
        display_name: member.display_name.clone(),
        balance: member.balance,
        shortfall: summary.shortfall,
        ledger,
        payments,
        product_names,
        plan: summary
            .plan_id
            .zip(summary.plan_status)
            .map(|(id, status)| (id, status, summary.current_period_end)),
        usage,
        api_keys,
        new_key: None,
        analytics_consent: analytics_consent(state, &member.visitor).await?,
        privacy_signal: privacy_signal(headers),
        exports,
        sessions: summary.sessions,
        has_customer: summary.has_customer,
    })
}

/// `GET /account`.
pub async fn page(
    State(state): State<AppState>,
    member: Member,
    headers: HeaderMap,
) -> Result<Markup, PageError> {
    let mut view = load(&state, &member, &headers).await?;
    view.new_key = member
        .visitor
        .take("new_api_key")
        .await?
        .and_then(|v| v.as_str().map(str::to_owned));
    let chrome = chrome(&state, &member.visitor, &headers, "/account").await?;
    let csrf = chrome.csrf.clone().unwrap_or_default();
    Ok(views::account(&chrome, &csrf, &view))
}

#[derive(Debug, Deserialize)]
pub struct ProfileForm {
    display_name: Option<String>,
    email: String,
}

/// `POST /account/profile`: the name changes at once; a new e-mail address once confirmed from its inbox.
pub async fn update_profile(
    State(state): State<AppState>,
    member: Member,
    CsrfForm(form): CsrfForm<ProfileForm>,
) -> Result<Response, PageError> {
    let site = state
        .site
        .as_ref()
        .ok_or_else(|| PageError::internal("site not configured"))?;
    let links = LinkPolicy {
        ttl: site.config.sign_in_link_ttl,
        per_address_per_hour: site.config.sign_in_per_address_per_hour,
    };
    let saved = accounts::update_profile(
        &state.pool,
        member.user_id,
        &member.email,
        form.display_name.as_deref(),
        &form.email,
        links,
        |token| site.url(&format!("/account/email/confirm?token={token}")),
    )
    .await;
    let message = match saved {
        Ok(ProfileSaved::Saved) => "Your profile was saved.".to_owned(),
        Ok(ProfileSaved::ConfirmationSent(address)) => format!(
            "Saved. We sent a confirmation link to {address}; the new address is used once you open it."
        ),
        Err(LinkError::Invalid(invalid)) => return Err(AppError::from(invalid).into()),
        Err(LinkError::Limited(limited)) => return Err(AppError::from(limited).into()),
        Err(LinkError::Database(error)) => return Err(error.into()),
    };
    member.visitor.flash(&message).await?;
    Ok(Redirect::to("/account").into_response())
}

#[derive(Debug, Deserialize)]
pub struct TokenQuery {
    token: Option<String>,
}

/// `GET /account/email/confirm?token=…`: a button that confirms (a GET consumes nothing).
pub async fn email_landing(
    State(state): State<AppState>,
    member: Member,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
) -> Result<Markup, PageError> {
    let chrome = chrome(&state, &member.visitor, &headers, "/account").await?;
    let csrf = chrome.csrf.clone().unwrap_or_default();
    Ok(views::link_landing(
        &chrome,
        &csrf,
        "/account/email/confirm",
        query.token.as_deref().unwrap_or_default(),
        "/account",
        "Confirm your new e-mail address",
    ))
}

#[derive(Debug, Deserialize)]
pub struct TokenForm {
    token: String,
}

/// `POST /account/email/confirm`.
pub async fn confirm_email(
    State(state): State<AppState>,
    member: Member,
    CsrfForm(form): CsrfForm<TokenForm>,
) -> Result<Response, PageError> {
    let email = match accounts::confirm_email_change(&state.pool, member.user_id, &form.token).await
    {
        Ok(email) => email,
        Err(EmailChangeError::Database(error)) => return Err(error.into()),
        Err(refused) => return Err(PageError::BadRequest(refused.to_string())),
    };
    member
        .visitor
        .flash(&format!("Your e-mail address is now {email}."))
        .await?;
    Ok(Redirect::to("/account").into_response())
}

#[derive(Debug, Deserialize)]
pub struct KeyForm {
    name: String,
}

/// `POST /account/api-keys`: the key is shown once, on the next page view.
pub async fn create_api_key(
    State(state): State<AppState>,
    member: Member,
    CsrfForm(form): CsrfForm<KeyForm>,
) -> Result<Response, PageError> {
    let key = match accounts::create_api_key(&state.pool, member.user_id, &form.name).await {
        Ok(key) => key,
        Err(KeyError::Invalid(invalid)) => return Err(AppError::from(invalid).into()),
        Err(KeyError::Limited(limited)) => return Err(AppError::from(limited).into()),
        Err(KeyError::Database(error)) => return Err(error.into()),
    };
    member
        .visitor
        .set("new_api_key", serde_json::Value::String(key.secret))
        .await?;
    Ok(Redirect::to("/account#api-keys").into_response())
}

/// `POST /account/api-keys/{id}/revoke`.
pub async fn revoke_api_key(
    State(state): State<AppState>,
    member: Member,
    PagePath(id): PagePath<Uuid>,
    CsrfForm(_): CsrfForm<Empty>,
) -> Result<Response, PageError> {
    if !accounts::revoke_api_key(&state.pool, member.user_id, id).await? {
        return Err(PageError::NotFound);
    }
    member.visitor.flash("The key was revoked.").await?;
    Ok(Redirect::to("/account#api-keys").into_response())
}

/// `POST /account/sessions/revoke`: every session of the account ends, this one included.
pub async fn sign_out_everywhere(
    State(state): State<AppState>,
    member: Member,
    CsrfForm(_): CsrfForm<Empty>,
) -> Result<Response, PageError> {
    session::revoke_all(&state.pool, member.user_id).await?;
    member.visitor.sign_out().await?;
    Ok(Redirect::to("/sign-in").into_response())
}

/// `POST /account/export`.
pub async fn request_export(
    State(state): State<AppState>,
    member: Member,
    CsrfForm(_): CsrfForm<Empty>,
) -> Result<Response, PageError> {
    let message = match export_requests::request(&state.pool, member.user_id).await {
        Ok(_) => "Your export is being prepared. We will e-mail you when it is ready.".to_owned(),
        Err(RequestError::InProgress) => "An export is already being prepared.".to_owned(),
        Err(RequestError::Limited(_)) => {
            "You have asked for three exports today; please try again tomorrow.".to_owned()
        }
        Err(RequestError::Database(error)) => return Err(error.into()),
    };
    member.visitor.flash(&message).await?;
    Ok(Redirect::to("/account#privacy").into_response())
}

/// How long the link to an export bundle is valid.
const DOWNLOAD_TTL: std::time::Duration = std::time::Duration::from_secs(300);

/// `GET /account/exports/{id}/download`.
pub async fn download_export(
    State(state): State<AppState>,
    member: Member,
    PagePath(id): PagePath<Uuid>,
) -> Result<Response, PageError> {
    let storage = &crate::generations::pipeline(&state)?.storage;
    match export_requests::download(&state.pool, storage, member.user_id, id, DOWNLOAD_TTL).await {
        Ok(Download::Link(url)) => Ok(Redirect::to(&url).into_response()),
        Ok(Download::Expired) => Err(PageError::BadRequest(
            "This export has expired; request a new one.".into(),
        )),
        Err(DownloadError::NotReady) => {
            Err(PageError::BadRequest("The export is not ready yet.".into()))
        }
        Err(other) => Err(AppError::from(other).into()),
    }
}

/// `GET /account/delete`: the confirmation.
pub async fn confirm_delete(
    State(state): State<AppState>,
    member: Member,
    headers: HeaderMap,
) -> Result<Markup, PageError> {
    let chrome = chrome(&state, &member.visitor, &headers, "/account").await?;
    let csrf = chrome.csrf.clone().unwrap_or_default();
    Ok(views::confirm_account_delete(&chrome, &csrf, &member.email))
}

#[derive(Debug, Deserialize)]
pub struct DeleteForm {
    confirm_email: String,
}

/// `POST /account/delete`: closes the account at once; a job deletes its data.
pub async fn delete(
    State(state): State<AppState>,
    member: Member,
    CsrfForm(form): CsrfForm<DeleteForm>,
) -> Result<Response, PageError> {
    if form.confirm_email.trim().to_lowercase() != member.email {
        return Err(PageError::BadRequest(
            "The address you typed does not match your account's. Nothing was deleted.".into(),
        ));
    }
    let mut tx = state.pool.begin().await?;
    accounts::request_deletion(&mut tx, member.user_id, DeletionReason::UserRequest).await?;
    tx.commit().await?;
    member.visitor.sign_out().await?;
    member
        .visitor
        .flash("Your account is closed and its data is being deleted.")
        .await?;
    Ok(Redirect::to("/").into_response())
}
