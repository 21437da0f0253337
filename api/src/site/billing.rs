//! Pricing, and the way to Stripe: the page records a checkout (or portal) intent and enqueues the job that
//! creates the Stripe session; the browser waits on `/billing/intents/{id}` and is sent on once the URL exists.

use axum::{
    Json,
    extract::{Query, State},
    http::{HeaderMap, header},
    response::{IntoResponse, Redirect, Response},
};
use jobs::checkout::{self, IntentKind, IntentStatus};
use maud::Markup;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::{
    PageError, PagePath,
    pages::{Empty, chrome},
    session::{CsrfForm, Member, Visitor},
    views,
};
use crate::AppState;

/// Whether purchases can be made (a Stripe key is configured).
fn billing_enabled(state: &AppState) -> bool {
    state.site.as_ref().is_some_and(|s| s.billing)
}

/// `GET /pricing`.
pub async fn pricing(
    State(state): State<AppState>,
    visitor: Visitor,
    headers: HeaderMap,
) -> Result<Markup, PageError> {
    let site = state
        .site
        .clone()
        .ok_or_else(|| PageError::internal("site not configured"))?;
    let chrome = chrome(&state, &visitor, &headers, "/pricing").await?;
    let csrf = chrome
        .member
        .is_some()
        .then(|| chrome.csrf.clone())
        .flatten();
    Ok(views::pricing(
        &chrome,
        csrf.as_deref(),
        &site.config.packs,
        &site.config.plans,
        billing_enabled(&state),
    ))
}

#[derive(Debug, Deserialize)]
pub struct CheckoutForm {
    product: String,
}

/// `POST /billing/checkout`: records the intent and its job in one transaction.
pub async fn checkout(
    State(state): State<AppState>,
    member: Member,
    CsrfForm(form): CsrfForm<CheckoutForm>,
) -> Result<Response, PageError> {
    let site = state
        .site
        .clone()
        .ok_or_else(|| PageError::internal("site not configured"))?;
    if !billing_enabled(&state) {
        return Err(PageError::BadRequest(
            "Payments are not available right now.".into(),
        ));
    }
    let (kind, product) =
        if let Some(pack) = site.config.packs.iter().find(|p| p.id == form.product) {
            (IntentKind::Pack, pack)
        } else if let Some(plan) = site.config.plans.iter().find(|p| p.id == form.product) {
            (IntentKind::Plan, plan)
        } else {
            return Err(PageError::BadRequest("There is no such product.".into()));
        };
    let id = checkout::record_intent(&state.pool, member.user_id, kind, Some(product)).await?;
    Ok(Redirect::to(&format!("/billing/intents/{id}")).into_response())
}

/// `POST /billing/portal`: Stripe's customer portal (manage or cancel a plan, invoices).
pub async fn portal(
    State(state): State<AppState>,
    member: Member,
    CsrfForm(_): CsrfForm<Empty>,
) -> Result<Response, PageError> {
    if !billing_enabled(&state) {
        return Err(PageError::BadRequest(
            "Payments are not available right now.".into(),
        ));
    }
    let id = checkout::record_intent(&state.pool, member.user_id, IntentKind::Portal, None).await?;
    Ok(Redirect::to(&format!("/billing/intents/{id}")).into_response())
}

#[derive(Debug, Deserialize)]
pub struct IntentEventsQuery {
    /// `purchase`: follow the payment's credits instead of the session's opening.
    follow: Option<String>,
}

/// `GET /billing/intents/{id}/events`: one server-sent event `intent` (`{"status", "url"}`) as soon as the
/// worker has opened the Stripe session (or failed to), then the stream ends. With `?follow=purchase` (the
/// post-checkout notice): one event `purchase` (`{"credits", "balance"}`) once the payment's credits are
/// granted.
pub async fn intent_events(
    State(state): State<AppState>,
    member: Member,
    PagePath(id): PagePath<Uuid>,
    Query(query): Query<IntentEventsQuery>,
) -> Result<Response, PageError> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    if query.follow.as_deref() == Some("purchase") {
        return purchase_events(state, member, id).await;
    }
    // Subscribe before reading, so a change in between is not missed (the intent's changes are announced on
    // its id).
    let mut subscription = state.events.subscribe([id]);
    let user = member.user_id;
    let read = move |pool: sqlx::PgPool| async move {
        checkout::find_owned(&pool, user, id)
            .await
            .map(|intent| intent.map(|intent| (intent.status, intent.url)))
    };
    let (status, url) = read(state.pool.clone()).await?.ok_or(PageError::NotFound)?;
    let pool = state.pool.clone();
    let stream = async_stream::stream! {
        let (mut status, mut url) = (status, url);
        while status == IntentStatus::Pending {
            // A change of the intent, or a resync: read it again either way.
            subscription.recv().await;
            match read(pool.clone()).await {
                Ok(Some(row)) => (status, url) = row,
                _ => return,
            }
        }
        let data = json!({"status": status, "url": url}).to_string();
        yield Ok::<_, std::convert::Infallible>(Event::default().event("intent").data(data));
    };
    Ok(Sse::new(crate::events::supervised(
        &state,
        crate::events::INTENT_ROUTE,
        stream,
    ))
    .keep_alive(KeepAlive::default())
    .into_response())
}

/// How long one purchase stream waits for the credits before it ends (the page's script opens another while the
/// notice still waits, see [`PURCHASE_PATIENCE`]).
const PURCHASE_STREAM_LIMIT: std::time::Duration = std::time::Duration::from_secs(10 * 60);
/// How long after the checkout the notice keeps waiting for its credits; after that it says they will show in
/// the account once Stripe confirms the payment (some payment methods take days).
const PURCHASE_PATIENCE: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// The post-checkout notice's stream: waits for the grant (announced on the member's id), then sends what it
/// added and the balance once. Ends at once for an intent no payment can follow (a portal, a checkout that
/// never opened), and after [`PURCHASE_STREAM_LIMIT`] in any case.
async fn purchase_events(state: AppState, member: Member, id: Uuid) -> Result<Response, PageError> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    // A grant is announced on the member's id.
    let user = member.user_id;
    let mut subscription = state.events.subscribe([user]);
    let intent = checkout::find_owned(&state.pool, user, id)
        .await?
        .ok_or(PageError::NotFound)?;
    let payable = intent.kind != IntentKind::Portal && intent.status == IntentStatus::Ready;
    let pool = state.pool.clone();
    let stream = async_stream::stream! {
        if !payable {
            return;
        }
        let deadline = tokio::time::Instant::now() + PURCHASE_STREAM_LIMIT;
        loop {
            match checkout::credited(&pool, &intent).await {
                Ok(Some(credited)) => {
                    let balance = match jobs::credits::balance(&pool, user).await {
                        Ok(balance) => balance,
                        Err(_) => return,
                    };
                    let data = json!({
                        "credits": credited.added,
                        "granted": credited.granted,
                        "balance": balance,
                    })
                    .to_string();
                    yield Ok::<_, std::convert::Infallible>(Event::default().event("purchase").data(data));
                    return;
                }
                Ok(None) => {}
                Err(_) => return,
            }
            // Wait for a grant to this member (or a resync: read again either way), until the deadline.
            if tokio::time::timeout_at(deadline, subscription.recv()).await.is_err() {
                return;
            }
        }
    };
    Ok(Sse::new(crate::events::supervised(
        &state,
        crate::events::INTENT_ROUTE,
        stream,
    ))
    .keep_alive(KeepAlive::default())
    .into_response())
}

/// `GET /billing/intents/{id}/done`: where Stripe sends the member after paying. Says what was bought and
/// shows the balance; until the worker has granted the credits, the page's script follows them in live (and
/// without JavaScript the page refreshes itself).
pub async fn done(
    State(state): State<AppState>,
    member: Member,
    headers: HeaderMap,
    PagePath(id): PagePath<Uuid>,
) -> Result<Response, PageError> {
    let intent = checkout::find_owned(&state.pool, member.user_id, id)
        .await?
        .ok_or(PageError::NotFound)?;
    if intent.kind == IntentKind::Portal {
        return Ok(Redirect::to("/account#credits").into_response());
    }
    let site = state
        .site
        .clone()
        .ok_or_else(|| PageError::internal("site not configured"))?;
    let product = intent
        .product_id
        .as_deref()
        .and_then(|id| site.config.product(id))
        .cloned();
    let credited = checkout::credited(&state.pool, &intent).await?;
    let waiting = credited.is_none() && chrono::Utc::now() - intent.created_at < PURCHASE_PATIENCE;
    let mut chrome = chrome(&state, &member.visitor, &headers, "/account").await?;
    chrome.refresh = waiting;
    // The balance as the chrome read it, after `credited`: a grant that landed since the request began (the
    // member's own balance was read before) is in it, so the notice never shows the credits without them.
    let balance = chrome
        .member
        .as_ref()
        .map_or(member.balance, |(_, balance)| *balance);
    Ok(views::checkout_done(
        &chrome,
        &views::Purchase {
            intent: id,
            plan: intent.kind == IntentKind::Plan,
            name: product.as_ref().map_or_else(
                || intent.product_id.clone().unwrap_or_default(),
                |p| p.name.clone(),
            ),
            credits: intent.credits.unwrap_or_default(),
            price: product.as_ref().map(|p| p.price_label()),
            credited,
            waiting,
            balance,
        },
    )
    .into_response())
}

/// `GET /billing/intents/{id}`: 303 to Stripe once the worker has the URL; until then a waiting page (whose
/// script follows `/events`, and which refreshes itself without JavaScript), or JSON when asked for it.
pub async fn intent(
    State(state): State<AppState>,
    member: Member,
    headers: HeaderMap,
    PagePath(id): PagePath<Uuid>,
) -> Result<Response, PageError> {
    let intent = checkout::find_owned(&state.pool, member.user_id, id)
        .await?
        .ok_or(PageError::NotFound)?;
    let (status, url, error, kind) = (intent.status, intent.url, intent.error, intent.kind);
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    if wants_json {
        return Ok(Json(json!({"status": status, "url": url})).into_response());
    }
    if let Some(url) = url {
        return Ok(Redirect::to(&url).into_response());
    }
    let mut chrome = chrome(&state, &member.visitor, &headers, "/pricing").await?;
    let failed = match status {
        IntentStatus::Failed => {
            Some(error.unwrap_or_else(|| "Stripe could not be reached. Please try again.".into()))
        }
        IntentStatus::Pending | IntentStatus::Ready => None,
    };
    chrome.refresh = failed.is_none();
    let portal = match kind {
        IntentKind::Portal => true,
        IntentKind::Pack | IntentKind::Plan => false,
    };
    Ok(views::checkout_waiting(&chrome, id, portal, failed.as_deref()).into_response())
}
