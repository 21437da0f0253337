//! Billing: checkout and portal intents (table `checkout_intents`), Stripe customers, and the effects of
//! Stripe events on the credit ledger.
//!
//! The api records an intent and enqueues [`OpenCheckout`] in one transaction; the worker creates the Stripe
//! session (idempotency key derived from the intent) and stores its URL for the waiting page.
//!
//! Stripe events: the webhook (or reconciliation) records each event once ([`record_event`]) with its
//! processing job; [`process`] applies it. Every credit effect is a ledger row keyed by Stripe's business id
//! (checkout session, invoice, refund, dispute), so redelivery, reordering and concurrent workers apply each
//! effect once. Subscription state is read from the API rather than taken from the event, so an older event
//! never overwrites newer state.

use chrono::{DateTime, TimeZone, Utc};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use queue::Job as _;
use stripe_checkout::CheckoutSessionPaymentStatus;

use crate::{
    credits::{self, Applied, Kind},
    email::{self, Outgoing},
    kinds::ProcessStripeEvent,
    stripe::{API_VERSION, StripeClient, StripeError},
    text_enum::text_enum,
};

text_enum! {
    /// A refund's `status` (Stripe's Refund object: "pending, requires_action, succeeded, failed, or canceled";
    /// async-stripe keeps it a string).
    enum RefundStatus {
        Pending = "pending",
        RequiresAction = "requires_action",
        Succeeded = "succeeded",
        Failed = "failed",
        Canceled = "canceled",
    }
}

text_enum! {
    /// An invoice payment's `status` (Stripe's InvoicePayment object: "one of open, paid, or canceled";
    /// async-stripe keeps it a string).
    enum InvoicePaymentStatus {
        Open = "open",
        Paid = "paid",
        Canceled = "canceled",
    }
}

/// How old a webhook's signed timestamp may be.
pub const SIGNATURE_TOLERANCE_SECS: i64 = 300;

/// Why a webhook was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("no valid Stripe-Signature header")]
    Malformed,
    #[error("no v1 signature matches")]
    Mismatch,
    #[error("the signed timestamp is outside the tolerance")]
    Stale,
}

/// Verifies `Stripe-Signature: t=…,v1=…[,v1=…]` over the raw body: any v1 may match (secret rotation), and
/// |now − t| ≤ 300 s.
pub fn verify_signature(
    payload: &[u8],
    header: &str,
    secret: &str,
    now: i64,
) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut signatures = vec![];
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => timestamp = value.parse::<i64>().ok(),
            Some(("v1", value)) => {
                if let Ok(bytes) = hex::decode(value) {
                    signatures.push(bytes);
                }
            }
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    let matches = signatures.iter().any(|signature| {
        let mut mac =
            Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(payload);
        mac.verify_slice(signature).is_ok()
    });
    if !matches {
        return Err(SignatureError::Mismatch);
    }
    if (now - timestamp).abs() > SIGNATURE_TOLERANCE_SECS {
        return Err(SignatureError::Stale);
    }
    Ok(())
}

/// Records an event (once) and enqueues its processing in the same transaction. Returns whether it was new.
pub async fn record_event(pool: &PgPool, event: &Value) -> anyhow::Result<bool> {
    let id = event["id"]
        .as_str()
        .filter(|id| id.starts_with("evt_"))
        .ok_or_else(|| anyhow::anyhow!("the event has no id"))?;
    let kind = event["type"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("the event has no type"))?;
    let created = event["created"]
        .as_i64()
        .and_then(|t| Utc.timestamp_opt(t, 0).single())
        .ok_or_else(|| anyhow::anyhow!("the event has no created time"))?;
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO stripe_events (id, type, created, payload) VALUES ($1, $2, $3, $4)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(id)
    .bind(kind)
    .bind(created)
    .bind(event)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 1 {
        ProcessStripeEvent {
            event_id: id.to_owned(),
        }
        .enqueue(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(inserted == 1)
}

/// What processing did with an event: its words (stored in `stripe_events.outcome`) and, when it moved money or
/// credits, the effect counted in the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome(pub String, pub Option<Effect>);

/// A change worth counting (`createimage2_stripe_purchases_total`, `_refunds_total`, `_disputes_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// A payment granted credits: a pack, or a subscription's period.
    Purchase {
        subscription: bool,
    },
    /// A refund took credits back.
    Refund,
    DisputeCreated,
    DisputeClosed,
}

fn outcome(text: impl Into<String>) -> Outcome {
    Outcome(text.into(), None)
}

fn with_effect(text: impl Into<String>, effect: Effect) -> Outcome {
    Outcome(text.into(), Some(effect))
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer).and_then(Value::as_str)
}

fn user_of(object: &Value) -> Option<Uuid> {
    str_at(object, "/client_reference_id")
        .or_else(|| str_at(object, "/metadata/user"))
        .and_then(|u| u.parse().ok())
}

fn credits_of(metadata: &Value) -> i64 {
    str_at(metadata, "/credits")
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Applies one recorded event. Runs in its own transaction with the event row locked, so two workers handed
/// the same event serialise; every effect is keyed anyway.
pub async fn process(
    pool: &PgPool,
    stripe: Option<&StripeClient>,
    event_id: &str,
) -> Result<Option<Outcome>, ProcessError> {
    let row: Option<(String, Value, Option<DateTime<Utc>>)> =
        sqlx::query_as("SELECT type, payload, processed_at FROM stripe_events WHERE id = $1")
            .bind(event_id)
            .fetch_optional(pool)
            .await?;
    let Some((kind, event, processed)) = row else {
        return Ok(None);
    };
    if processed.is_some() {
        return Ok(None);
    }
    let object = &event["data"]["object"];
    let version = event["api_version"].as_str().unwrap_or_default();
    if acts_on(&kind) && !readable_version(version) {
        // Read with the wrong shapes, an invoice would grant 0 and be marked done. Refused instead, the event
        // waits (unprocessed, its outcome saying why) for code that reads its version.
        sqlx::query("UPDATE stripe_events SET outcome = $2 WHERE id = $1 AND processed_at IS NULL")
            .bind(event_id)
            .bind(format!(
                "refused: API version {version:?} is not one this code reads (2025-03-31.basil to {API_VERSION})"
            ))
            .execute(pool)
            .await?;
        return Err(ProcessError::UnreadableVersion {
            kind,
            version: version.to_owned(),
        });
    }
    // Stripe does not deliver in order: a refund or dispute can come before the payment's own event is
    // applied. For an hour it is retried; after that the payment is taken to be none of this app's.
    if matches!(
        kind.as_str(),
        "charge.refunded"
            | "refund.created"
            | "refund.updated"
            | "charge.dispute.created"
            | "charge.dispute.closed"
    ) && let Some(intent) = str_at(object, "/payment_intent")
    {
        let known: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM payments WHERE stripe_payment_intent = $1)",
        )
        .bind(intent)
        .fetch_one(pool)
        .await?;
        let age = Utc::now().timestamp() - event["created"].as_i64().unwrap_or_default();
        if !known && age < PAYMENT_WAIT_SECS {
            return Err(ProcessError::PaymentNotRecorded(intent.to_owned()));
        }
    }
    // Reads from the Stripe API happen before the transaction, so no lock is held across the network.
    let refunds = match kind.as_str() {
        "charge.refunded" => refunds_of_charge(stripe, object).await?,
        "charge.dispute.closed" if str_at(object, "/status") == Some("prevented") => {
            let charge = json!({"id": str_at(object, "/charge")});
            refunds_of_charge(stripe, &charge).await?
        }
        _ => vec![],
    };
    let invoice_intent = match kind.as_str() {
        "invoice.paid" => invoice_payment_intent(stripe, object).await?,
        _ => None,
    };
    let subscription = match kind.as_str() {
        "customer.subscription.created"
        | "customer.subscription.updated"
        | "customer.subscription.deleted" => {
            let id = str_at(object, "/id").unwrap_or_default().to_owned();
            Some(current_subscription(stripe, &id, object).await?)
        }
        "checkout.session.completed" if str_at(object, "/mode") == Some("subscription") => {
            match str_at(object, "/subscription") {
                Some(id) => Some(current_subscription(stripe, id, &Value::Null).await?),
                None => None,
            }
        }
        _ => None,
    };
    let mut tx = pool.begin().await?;
    let locked: Option<Option<DateTime<Utc>>> =
        sqlx::query_scalar("SELECT processed_at FROM stripe_events WHERE id = $1 FOR UPDATE")
            .bind(event_id)
            .fetch_optional(&mut *tx)
            .await?;
    if !matches!(locked, Some(None)) {
        return Ok(None);
    }
    let created = event["created"].as_i64().unwrap_or_default();
    let result = match kind.as_str() {
        "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
            checkout_completed(&mut tx, object, created, subscription.as_ref()).await?
        }
        "checkout.session.async_payment_failed" => {
            notify_payment_failed(&mut tx, user_of(object), event_id).await?;
            outcome("async payment failed; user notified")
        }
        "invoice.paid" => invoice_paid(&mut tx, object, invoice_intent.as_deref(), created).await?,
        "invoice.payment_failed" => {
            let user = invoice_user(&mut tx, object).await?;
            notify_payment_failed(&mut tx, user, event_id).await?;
            outcome("invoice payment failed; user notified")
        }
        "customer.subscription.created"
        | "customer.subscription.updated"
        | "customer.subscription.deleted" => {
            mirror_subscription(&mut tx, subscription.as_ref().unwrap_or(object)).await?
        }
        "charge.refunded" => charge_refunded(&mut tx, object, &refunds).await?,
        "refund.created" | "refund.updated" => match apply_refund(&mut tx, object, None).await? {
            Some(refund) => with_effect(format!("clawed back for {refund}"), Effect::Refund),
            None => outcome("refund already applied, not applicable, or of an unknown payment"),
        },
        "charge.dispute.created" => dispute_created(&mut tx, object).await?,
        "charge.dispute.closed" => dispute_closed(&mut tx, object, &refunds).await?,
        other => outcome(format!("ignored ({other})")),
    };
    sqlx::query("UPDATE stripe_events SET processed_at = now(), outcome = $2 WHERE id = $1")
        .bind(event_id)
        .bind(&result.0)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Some(result))
}

/// A failed processing attempt.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Stripe(#[from] StripeError),
    /// A refund or dispute of a payment whose own event is not applied yet: retry.
    #[error("payment {0} is not recorded yet")]
    PaymentNotRecorded(String),
    /// The event is rendered in an API version whose shapes this code does not read (events listed by
    /// reconciliation come in the version they were created with). Retrying will not help; a deploy will.
    #[error("a {kind} event in API version {version:?}, which this code does not read")]
    UnreadableVersion { kind: String, version: String },
}

/// The type of a recorded event (`checkout.session.completed`, …), for metrics.
pub async fn event_type(pool: &PgPool, event_id: &str) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT type FROM stripe_events WHERE id = $1")
        .bind(event_id)
        .fetch_optional(pool)
        .await
}

/// How long a refund or dispute waits for its payment's event to be applied before the payment is taken to be
/// none of this app's.
const PAYMENT_WAIT_SECS: i64 = 3600;

/// The event types [`process`] acts on (the rest are recorded and ignored).
fn acts_on(kind: &str) -> bool {
    matches!(
        kind,
        "checkout.session.completed"
            | "checkout.session.async_payment_succeeded"
            | "checkout.session.async_payment_failed"
            | "invoice.paid"
            | "invoice.payment_failed"
            | "customer.subscription.created"
            | "customer.subscription.updated"
            | "customer.subscription.deleted"
            | "charge.refunded"
            | "refund.created"
            | "refund.updated"
            | "charge.dispute.created"
            | "charge.dispute.closed"
    )
}

/// Whether events of API `version` have the shapes this code reads: from 2025-03-31.basil (an invoice's
/// subscription under `parent.subscription_details`, periods on subscription items) to the pinned
/// [`API_VERSION`]. Stripe's versions start with their release date, so dates order them.
pub fn readable_version(version: &str) -> bool {
    let Some(date) = version.get(..10) else {
        return false;
    };
    ("2025-03-31"..=&API_VERSION[..10]).contains(&date)
}

/// Every refund of a charge: Stripe's refund list (a charge carries its refunds only when expanded, and
/// webhooks never expand, since API 2022-11-15). Without a client, what the object itself carries.
async fn refunds_of_charge(
    stripe: Option<&StripeClient>,
    charge: &Value,
) -> Result<Vec<Value>, StripeError> {
    let (Some(stripe), Some(id)) = (stripe, str_at(charge, "/id")) else {
        return Ok(charge
            .pointer("/refunds/data")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default());
    };
    let mut refunds = vec![];
    let mut starting_after: Option<String> = None;
    loop {
        let mut path = format!("/v1/refunds?charge={id}&limit=100");
        if let Some(after) = &starting_after {
            path.push_str(&format!("&starting_after={after}"));
        }
        let page = stripe.get(&path, "list_refunds").await?;
        let data = page["data"].as_array().cloned().unwrap_or_default();
        starting_after = data
            .last()
            .and_then(|r| r["id"].as_str())
            .map(str::to_owned);
        refunds.extend(data);
        if page["has_more"].as_bool() != Some(true) || starting_after.is_none() {
            return Ok(refunds);
        }
    }
}

/// The payment intent that paid an invoice: `invoice.payments` is includable only (never in a webhook), so it
/// comes from Stripe's invoice payments list; without a client, from the object if it carries them.
async fn invoice_payment_intent(
    stripe: Option<&StripeClient>,
    invoice: &Value,
) -> Result<Option<String>, StripeError> {
    let paid_intent = |payments: &Value| {
        payments
            .as_array()?
            .iter()
            .filter(|payment| {
                str_at(payment, "/status").and_then(|s| s.parse().ok())
                    == Some(InvoicePaymentStatus::Paid)
            })
            .find_map(|payment| str_at(payment, "/payment/payment_intent"))
            .map(str::to_owned)
    };
    match (stripe, str_at(invoice, "/id")) {
        (Some(stripe), Some(id)) => {
            let page = stripe
                .get(
                    &format!("/v1/invoice_payments?invoice={id}&status=paid&limit=100"),
                    "list_invoice_payments",
                )
                .await?;
            Ok(paid_intent(&page["data"]))
        }
        _ => Ok(invoice.pointer("/payments/data").and_then(paid_intent)),
    }
}

/// The subscription as Stripe has it now (falls back to the event's copy when no client is configured).
async fn current_subscription(
    stripe: Option<&StripeClient>,
    id: &str,
    from_event: &Value,
) -> Result<Value, StripeError> {
    match stripe {
        Some(stripe) if !id.is_empty() => {
            stripe
                .get(&format!("/v1/subscriptions/{id}"), "retrieve_subscription")
                .await
        }
        _ => Ok(from_event.clone()),
    }
}

async fn link_customer(
    tx: &mut PgConnection,
    user: Uuid,
    customer: Option<&str>,
) -> sqlx::Result<()> {
    if let Some(customer) = customer {
        sqlx::query(
            "INSERT INTO stripe_customers (user_id, customer_id) SELECT $1, $2
              WHERE EXISTS (SELECT 1 FROM users WHERE id = $1)
             ON CONFLICT DO NOTHING",
        )
        .bind(user)
        .bind(customer)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// The status word announced on the user's id when a payment's credits arrive (`generations::EVENTS_CHANNEL`).
pub const CREDITED: &str = "credited";

/// Grants `credits` for a payment, paying off any shortfall first. Returns false if granted before.
async fn grant(
    tx: &mut PgConnection,
    user: Uuid,
    credits: i64,
    key: &str,
    detail: Value,
) -> sqlx::Result<bool> {
    if credits <= 0 {
        return Ok(false);
    }
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM credit_accounts WHERE user_id = $1)")
            .bind(user)
            .fetch_one(&mut *tx)
            .await?;
    if !exists {
        return Ok(false);
    }
    if credits::apply(tx, user, Kind::Grant, credits, key, detail).await? != Applied::Yes {
        return Ok(false);
    }
    // A page waiting for the purchase (the post-checkout notice) reads the new balance at commit.
    crate::generations::announce(tx, user, CREDITED).await?;
    let owed: i64 =
        sqlx::query_scalar("SELECT shortfall FROM credit_accounts WHERE user_id = $1 FOR UPDATE")
            .bind(user)
            .fetch_one(&mut *tx)
            .await?;
    let pay = owed.min(credits);
    if pay > 0 {
        credits::apply(
            tx,
            user,
            Kind::Clawback,
            -pay,
            &format!("shortfall:{key}"),
            json!({"reason": "settles credits owed after a refund or dispute"}),
        )
        .await?;
        sqlx::query("UPDATE credit_accounts SET shortfall = shortfall - $2, updated_at = now() WHERE user_id = $1")
            .bind(user)
            .bind(pay)
            .execute(&mut *tx)
            .await?;
    }
    Ok(true)
}

#[allow(clippy::too_many_arguments)]
async fn record_payment(
    tx: &mut PgConnection,
    user: Uuid,
    kind: &str,
    object_id: &str,
    payment_intent: Option<&str>,
    customer: Option<&str>,
    product: &str,
    amount: i64,
    currency: &str,
    credits: i64,
    paid_at: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO payments (id, user_id, pseudonym, stripe_customer_id, stripe_object_id, product_id, amount_minor,
                               currency, paid_at, kind, credits, stripe_payment_intent)
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12
          WHERE EXISTS (SELECT 1 FROM users WHERE id = $2)
         ON CONFLICT (stripe_object_id) DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(user)
    .bind(format!("p_{}", Uuid::new_v4().simple()))
    .bind(customer)
    .bind(object_id)
    .bind(product)
    .bind(amount)
    .bind(currency.to_lowercase())
    .bind(Utc.timestamp_opt(paid_at, 0).single().unwrap_or_else(Utc::now))
    .bind(kind)
    .bind(credits)
    .bind(payment_intent)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn checkout_completed(
    tx: &mut PgConnection,
    session: &Value,
    created: i64,
    subscription: Option<&Value>,
) -> sqlx::Result<Outcome> {
    let Some(user) = user_of(session) else {
        return Ok(outcome("no user on the session"));
    };
    let session_id = str_at(session, "/id").unwrap_or_default();
    let customer = str_at(session, "/customer");
    link_customer(tx, user, customer).await?;
    if str_at(session, "/mode") == Some("subscription") {
        if let Some(subscription) = subscription {
            mirror_subscription(tx, subscription).await?;
        }
        return Ok(outcome("subscription linked"));
    }
    let payment_status = str_at(session, "/payment_status").map(|s| {
        s.parse::<CheckoutSessionPaymentStatus>()
            .unwrap_or_else(|never| match never {})
    });
    if !matches!(payment_status, Some(CheckoutSessionPaymentStatus::Paid)) {
        return Ok(outcome("awaiting payment"));
    }
    let metadata = &session["metadata"];
    let credits = credits_of(metadata);
    let product = str_at(metadata, "/product").unwrap_or("unknown");
    record_payment(
        tx,
        user,
        "pack",
        session_id,
        str_at(session, "/payment_intent"),
        customer,
        product,
        session["amount_total"].as_i64().unwrap_or(0),
        str_at(session, "/currency").unwrap_or("usd"),
        credits,
        created,
    )
    .await?;
    let granted = grant(
        tx,
        user,
        credits,
        &format!("pack:{session_id}"),
        json!({"product": product, "checkout_session": session_id}),
    )
    .await?;
    Ok(if granted {
        with_effect(
            format!("granted {credits} credits"),
            Effect::Purchase {
                subscription: false,
            },
        )
    } else {
        outcome("already granted")
    })
}

async fn invoice_user(tx: &mut PgConnection, invoice: &Value) -> sqlx::Result<Option<Uuid>> {
    if let Some(user) =
        str_at(invoice, "/parent/subscription_details/metadata/user").and_then(|u| u.parse().ok())
    {
        return Ok(Some(user));
    }
    let subscription =
        str_at(invoice, "/parent/subscription_details/subscription").unwrap_or_default();
    let by_subscription: Option<Uuid> =
        sqlx::query_scalar("SELECT user_id FROM subscriptions WHERE stripe_subscription_id = $1")
            .bind(subscription)
            .fetch_optional(&mut *tx)
            .await?
            .flatten();
    if by_subscription.is_some() {
        return Ok(by_subscription);
    }
    sqlx::query_scalar("SELECT user_id FROM stripe_customers WHERE customer_id = $1")
        .bind(str_at(invoice, "/customer").unwrap_or_default())
        .fetch_optional(&mut *tx)
        .await
}

async fn invoice_paid(
    tx: &mut PgConnection,
    invoice: &Value,
    payment_intent: Option<&str>,
    created: i64,
) -> sqlx::Result<Outcome> {
    let Some(user) = invoice_user(tx, invoice).await? else {
        return Ok(outcome("no user for the invoice"));
    };
    let invoice_id = str_at(invoice, "/id").unwrap_or_default();
    let metadata = &invoice["parent"]["subscription_details"]["metadata"];
    let credits = credits_of(metadata);
    let product = str_at(metadata, "/product").unwrap_or("unknown");
    record_payment(
        tx,
        user,
        "plan",
        invoice_id,
        payment_intent,
        str_at(invoice, "/customer"),
        product,
        invoice["amount_paid"].as_i64().unwrap_or(0),
        str_at(invoice, "/currency").unwrap_or("usd"),
        credits,
        created,
    )
    .await?;
    let granted = grant(
        tx,
        user,
        credits,
        &format!("invoice:{invoice_id}"),
        json!({"product": product, "invoice": invoice_id}),
    )
    .await?;
    Ok(if granted {
        with_effect(
            format!("granted the period's {credits} credits"),
            Effect::Purchase { subscription: true },
        )
    } else {
        outcome("already granted")
    })
}

/// Mirrors a subscription as read from Stripe: plan, status, period end.
async fn mirror_subscription(tx: &mut PgConnection, subscription: &Value) -> sqlx::Result<Outcome> {
    let Some(id) = str_at(subscription, "/id") else {
        return Ok(outcome("no subscription id"));
    };
    let user: Option<Uuid> =
        match str_at(subscription, "/metadata/user").and_then(|u| u.parse().ok()) {
            Some(user) => Some(user),
            None => {
                sqlx::query_scalar("SELECT user_id FROM stripe_customers WHERE customer_id = $1")
                    .bind(str_at(subscription, "/customer").unwrap_or_default())
                    .fetch_optional(&mut *tx)
                    .await?
            }
        };
    let user = match user {
        Some(user) => {
            sqlx::query_scalar::<_, Uuid>("SELECT id FROM users WHERE id = $1")
                .bind(user)
                .fetch_optional(&mut *tx)
                .await?
        }
        None => None,
    };
    let plan = str_at(subscription, "/metadata/product").unwrap_or("unknown");
    let status = str_at(subscription, "/status").unwrap_or("unknown");
    let period_end = subscription
        .pointer("/items/data/0/current_period_end")
        .and_then(Value::as_i64)
        .and_then(|t| Utc.timestamp_opt(t, 0).single());
    sqlx::query(
        "INSERT INTO subscriptions (stripe_subscription_id, user_id, plan_id, status, current_period_end, source_created_at)
         VALUES ($1, $2, $3, $4, $5, now())
         ON CONFLICT (stripe_subscription_id) DO UPDATE
            SET user_id = coalesce(EXCLUDED.user_id, subscriptions.user_id), plan_id = EXCLUDED.plan_id,
                status = EXCLUDED.status, current_period_end = EXCLUDED.current_period_end,
                source_created_at = EXCLUDED.source_created_at, updated_at = now()
          WHERE subscriptions.source_created_at <= EXCLUDED.source_created_at",
    )
    .bind(id)
    .bind(user)
    .bind(plan)
    .bind(status)
    .bind(period_end)
    .execute(&mut *tx)
    .await?;
    Ok(outcome(format!("subscription {status}")))
}

/// The payment a payment intent paid, locked.
async fn payment_of_intent(
    tx: &mut PgConnection,
    intent: Option<&str>,
) -> sqlx::Result<Option<(Uuid, Option<Uuid>, i64, i64)>> {
    let Some(intent) = intent else {
        return Ok(None);
    };
    sqlx::query_as(
        "SELECT id, user_id, amount_minor, credits FROM payments WHERE stripe_payment_intent = $1 FOR UPDATE",
    )
    .bind(intent)
    .fetch_optional(&mut *tx)
    .await
}

/// Takes up to `credits` off the balance with `kind` under `key`; what is not there becomes shortfall.
/// Returns `(taken, shortfall)`.
async fn take_back(
    tx: &mut PgConnection,
    user: Uuid,
    kind: Kind,
    credits: i64,
    key: &str,
    detail: Value,
) -> sqlx::Result<(i64, i64)> {
    let balance: i64 =
        sqlx::query_scalar("SELECT balance FROM credit_accounts WHERE user_id = $1 FOR UPDATE")
            .bind(user)
            .fetch_optional(&mut *tx)
            .await?
            .unwrap_or(0);
    let taken = balance.min(credits);
    if taken > 0 {
        credits::apply(tx, user, kind, -taken, key, detail).await?;
    }
    let shortfall = credits - taken;
    if shortfall > 0 {
        sqlx::query("UPDATE credit_accounts SET shortfall = shortfall + $2, updated_at = now() WHERE user_id = $1")
            .bind(user)
            .bind(shortfall)
            .execute(&mut *tx)
            .await?;
    }
    Ok((taken, shortfall))
}

async fn charge_refunded(
    tx: &mut PgConnection,
    charge: &Value,
    refunds: &[Value],
) -> sqlx::Result<Outcome> {
    let mut applied = vec![];
    for refund in refunds {
        if let Some(refund) = apply_refund(tx, refund, str_at(charge, "/payment_intent")).await? {
            applied.push(refund);
        }
    }
    Ok(if applied.is_empty() {
        outcome("refunds already applied (or none that take credits back)")
    } else {
        with_effect(
            format!("clawed back for {}", applied.join(", ")),
            Effect::Refund,
        )
    })
}

/// Applies one refund, once per refund id: the payment's credits in proportion to the amount refunded,
/// rounded up. A refund of a disputed payment takes first what the dispute froze (so the credits leave once),
/// then from the balance; what was spent becomes shortfall. Returns the refund id if it was applied now.
async fn apply_refund(
    tx: &mut PgConnection,
    refund: &Value,
    charge_intent: Option<&str>,
) -> sqlx::Result<Option<String>> {
    let (Some(refund_id), Some(refund_amount)) = (str_at(refund, "/id"), refund["amount"].as_i64())
    else {
        return Ok(None);
    };
    // `pending` and `requires_action` refunds are on their way (taken back now); `failed` and `canceled`
    // ones return nothing to the cardholder.
    let status = str_at(refund, "/status").and_then(|s| s.parse::<RefundStatus>().ok());
    if refund_amount <= 0 || matches!(status, Some(RefundStatus::Failed | RefundStatus::Canceled)) {
        return Ok(None);
    }
    let intent = str_at(refund, "/payment_intent").or(charge_intent);
    let Some((payment, user, amount, credits)) = payment_of_intent(tx, intent).await? else {
        return Ok(None);
    };
    let share = if amount > 0 {
        // Proportional, rounded up: a refund never leaves paid-for credits behind.
        (credits * refund_amount + amount - 1) / amount
    } else {
        credits
    };
    let inserted = sqlx::query(
        "INSERT INTO payment_refunds (refund_id, payment_id, amount_minor, credits, clawed_back, shortfall)
         VALUES ($1, $2, $3, $4, 0, 0) ON CONFLICT (refund_id) DO NOTHING",
    )
    .bind(refund_id)
    .bind(payment)
    .bind(refund_amount)
    .bind(share)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(None);
    }
    sqlx::query("UPDATE payments SET refunded_minor = refunded_minor + $2 WHERE id = $1")
        .bind(payment)
        .bind(refund_amount)
        .execute(&mut *tx)
        .await?;
    let Some(user) = user else {
        return Ok(Some(refund_id.to_owned()));
    };
    // What a dispute on this payment already holds (frozen, or owed as shortfall) is the refund's first.
    let held: Option<(String, i64, i64)> = sqlx::query_as(
        "SELECT dispute_id, frozen, shortfall FROM payment_disputes
          WHERE payment_id = $1 AND status IN ('open', 'lost', 'prevented') AND frozen + shortfall > 0
          ORDER BY created_at LIMIT 1 FOR UPDATE",
    )
    .bind(payment)
    .fetch_optional(&mut *tx)
    .await?;
    let (from_frozen, from_owed) = match &held {
        Some((dispute, frozen, owed)) => {
            let from_frozen = share.min(*frozen);
            let from_owed = (share - from_frozen).min(*owed);
            sqlx::query(
                "UPDATE payment_disputes SET frozen = frozen - $2, shortfall = shortfall - $3 WHERE dispute_id = $1",
            )
            .bind(dispute)
            .bind(from_frozen)
            .bind(from_owed)
            .execute(&mut *tx)
            .await?;
            (from_frozen, from_owed)
        }
        None => (0, 0),
    };
    let (taken, shortfall) = take_back(
        tx,
        user,
        Kind::Clawback,
        share - from_frozen - from_owed,
        &format!("refund:{refund_id}"),
        json!({"refund": refund_id}),
    )
    .await?;
    sqlx::query("UPDATE payment_refunds SET clawed_back = $2, shortfall = $3 WHERE refund_id = $1")
        .bind(refund_id)
        .bind(taken + from_frozen)
        .bind(shortfall + from_owed)
        .execute(&mut *tx)
        .await?;
    Ok(Some(refund_id.to_owned()))
}

/// Records a dispute once and freezes the credits its payment bought (what was spent becomes shortfall).
/// Chargebacks and inquiries alike: an inquiry that becomes a chargeback withdraws the money without another
/// event this code acts on. Returns `None` for a payment this code does not know.
async fn record_dispute(tx: &mut PgConnection, dispute: &Value) -> sqlx::Result<Option<Outcome>> {
    let dispute_id = str_at(dispute, "/id").unwrap_or_default();
    let Some((payment, user, _, credits)) =
        payment_of_intent(tx, str_at(dispute, "/payment_intent")).await?
    else {
        return Ok(None);
    };
    let inserted = sqlx::query(
        "INSERT INTO payment_disputes (dispute_id, payment_id, frozen, shortfall, status) VALUES ($1, $2, 0, 0, 'open')
         ON CONFLICT (dispute_id) DO NOTHING",
    )
    .bind(dispute_id)
    .bind(payment)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(Some(outcome("dispute already recorded")));
    }
    sqlx::query("UPDATE payments SET disputed_at = now() WHERE id = $1")
        .bind(payment)
        .execute(&mut *tx)
        .await?;
    let Some(user) = user else {
        return Ok(Some(with_effect(
            "dispute recorded",
            Effect::DisputeCreated,
        )));
    };
    // Credits a refund of this payment already took back are not frozen again.
    let refunded: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(credits), 0)::bigint FROM payment_refunds WHERE payment_id = $1",
    )
    .bind(payment)
    .fetch_one(&mut *tx)
    .await?;
    let (frozen, shortfall) = take_back(
        tx,
        user,
        Kind::Freeze,
        (credits - refunded).max(0),
        &format!("dispute:{dispute_id}"),
        json!({"dispute": dispute_id}),
    )
    .await?;
    sqlx::query("UPDATE payment_disputes SET frozen = $2, shortfall = $3 WHERE dispute_id = $1")
        .bind(dispute_id)
        .bind(frozen)
        .bind(shortfall)
        .execute(&mut *tx)
        .await?;
    Ok(Some(with_effect(
        format!("froze {frozen} credits, {shortfall} owed"),
        Effect::DisputeCreated,
    )))
}

async fn dispute_created(tx: &mut PgConnection, dispute: &Value) -> sqlx::Result<Outcome> {
    Ok(record_dispute(tx, dispute)
        .await?
        .unwrap_or_else(|| outcome("dispute on an unknown payment")))
}

/// What a closed dispute's status means for the credits it froze (async-stripe-shared's `DisputeStatus`;
/// Stripe's dispute object reference).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DisputeEnd {
    /// `won`: the money came back. `warning_closed`: an inquiry closed without a chargeback, no money left.
    Release,
    /// `lost`: the cardholder kept the money.
    Keep,
    /// `prevented` (Visa RDR): the cardholder was refunded instead. Stripe does not say whether a refund object
    /// appears: refunds found take back their share from the freeze and the rest is released; with none, the
    /// credits stay removed, since the money is gone either way.
    Prevented,
}

fn dispute_end(status: &str) -> Option<DisputeEnd> {
    use stripe_core::DisputeStatus;
    match status
        .parse::<DisputeStatus>()
        .unwrap_or_else(|never| match never {})
    {
        DisputeStatus::Won | DisputeStatus::WarningClosed => Some(DisputeEnd::Release),
        DisputeStatus::Lost => Some(DisputeEnd::Keep),
        DisputeStatus::Prevented => Some(DisputeEnd::Prevented),
        // needs_response, under_review, warning_needs_response, warning_under_review: still open; a status
        // Stripe adds later (the SDK's enum is non-exhaustive) is treated as open too, and logged by the SDK.
        _ => None,
    }
}

async fn dispute_closed(
    tx: &mut PgConnection,
    dispute: &Value,
    refunds: &[Value],
) -> sqlx::Result<Outcome> {
    let dispute_id = str_at(dispute, "/id").unwrap_or_default();
    let status = str_at(dispute, "/status").unwrap_or_default();
    let Some(end) = dispute_end(status) else {
        return Ok(outcome(format!("dispute still open ({status})")));
    };
    // Stripe does not promise order: a close that arrives first records the dispute as its creation would.
    if record_dispute(tx, dispute).await?.is_none() {
        return Ok(outcome("dispute on an unknown payment"));
    }
    let mut applied = vec![];
    for refund in refunds {
        if let Some(refund) = apply_refund(tx, refund, None).await? {
            applied.push(refund);
        }
    }
    let release = match end {
        DisputeEnd::Release => true,
        DisputeEnd::Keep => false,
        DisputeEnd::Prevented => {
            let refunded: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM payment_refunds r JOIN payment_disputes d USING (payment_id)
                                 WHERE d.dispute_id = $1)",
            )
            .bind(dispute_id)
            .fetch_one(&mut *tx)
            .await?;
            refunded
        }
    };
    let closed: Option<(Uuid, i64, i64)> = sqlx::query_as(
        "UPDATE payment_disputes SET status = $2, closed_at = now() WHERE dispute_id = $1 AND status = 'open'
         RETURNING payment_id, frozen, shortfall",
    )
    .bind(dispute_id)
    .bind(status)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((payment, frozen, shortfall)) = closed else {
        return Ok(outcome("dispute already closed"));
    };
    if !release {
        return Ok(with_effect(
            format!("dispute {status}; frozen credits stay removed"),
            Effect::DisputeClosed,
        ));
    }
    let user: Option<Uuid> = sqlx::query_scalar("SELECT user_id FROM payments WHERE id = $1")
        .bind(payment)
        .fetch_one(&mut *tx)
        .await?;
    if let Some(user) = user {
        if frozen > 0 {
            credits::apply(
                tx,
                user,
                Kind::Release,
                frozen,
                &format!("dispute:{dispute_id}"),
                json!({"dispute": dispute_id, "status": status}),
            )
            .await?;
        }
        if shortfall > 0 {
            sqlx::query(
                "UPDATE credit_accounts SET shortfall = GREATEST(shortfall - $2, 0), updated_at = now() WHERE user_id = $1",
            )
            .bind(user)
            .bind(shortfall)
            .execute(&mut *tx)
            .await?;
        }
    }
    Ok(with_effect(
        format!(
            "dispute {status}; released {frozen} credits{}",
            if applied.is_empty() {
                String::new()
            } else {
                format!(" after refunds {}", applied.join(", "))
            }
        ),
        Effect::DisputeClosed,
    ))
}

async fn notify_payment_failed(
    tx: &mut PgConnection,
    user: Option<Uuid>,
    event_id: &str,
) -> sqlx::Result<()> {
    let Some(user) = user else { return Ok(()) };
    let email: Option<String> = sqlx::query_scalar("SELECT email FROM users WHERE id = $1")
        .bind(user)
        .fetch_optional(&mut *tx)
        .await?;
    if let Some(email) = email {
        email::queue(
            tx,
            Outgoing {
                to: &email,
                user_id: Some(user),
                idempotency_key: format!("payment_failed:{event_id}"),
                message: mail::payment_failed(),
            },
        )
        .await?;
    }
    Ok(())
}

/// Lists recent events from Stripe (the API keeps 30 days; `since` bounds the look-back) and records any the
/// webhook missed. Returns how many were new.
pub async fn reconcile(
    pool: &PgPool,
    stripe: &StripeClient,
    since: DateTime<Utc>,
) -> Result<usize, ProcessError> {
    let mut starting_after: Option<String> = None;
    let mut recorded = 0;
    loop {
        let mut path = format!("/v1/events?limit=100&created[gte]={}", since.timestamp());
        if let Some(after) = &starting_after {
            path.push_str(&format!("&starting_after={after}"));
        }
        let page = stripe.get(&path, "list_events").await?;
        let events = page["data"].as_array().cloned().unwrap_or_default();
        for event in &events {
            match record_event(pool, event).await {
                Ok(true) => recorded += 1,
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(error = %error, "an event from the list could not be recorded")
                }
            }
        }
        if page["has_more"].as_bool() != Some(true) || events.is_empty() {
            return Ok(recorded);
        }
        starting_after = events
            .last()
            .and_then(|e| e["id"].as_str())
            .map(str::to_owned);
    }
}
