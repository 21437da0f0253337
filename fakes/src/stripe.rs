//! A Stripe stand-in: a real HTTP server speaking Stripe's wire protocol for the calls the app makes, plus the hosted
//! pages (Checkout, customer portal) a browser test clicks through, plus signed webhook delivery.
//!
//! Wire format, as Stripe: form-encoded requests with bracket notation (`line_items[0][price]=…`),
//! `Authorization: Bearer sk_…`, `Idempotency-Key`, JSON objects with `id` and `object`, errors as
//! `{"error": {"type", "code", "message", "param"}}`. Objects use the field names and JSON types of API version
//! [`API_VERSION`], the version async-stripe 1.0.0-rc.10 pins, so the app's real parser reads them; the tests in
//! `fakes/tests/stripe.rs` parse every object with async-stripe to keep it so.
//!
//! What happens later in Stripe (renewals, failed payments, refunds, disputes) is driven by test methods on
//! [`StripeFake`]; every state change records the events Stripe would emit, lists them on `GET /v1/events` (last
//! 30 days only) and POSTs them to the webhook endpoint, signed, asynchronously, with retries and fault knobs
//! ([`DeliveryFaults`]) for the at-least-once, unordered delivery Stripe promises.
//!
//! Driver methods spawn delivery tasks, so call them inside a tokio runtime.

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Json, Router,
    extract::{Path, RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use maud::{DOCTYPE, Markup, html};
use rand::{Rng as _, distr::Alphanumeric};
use serde_json::{Map, Value, json};
use sha2::Sha256;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The Stripe API version whose object shapes the stand-in serves (pinned by async-stripe 1.0.0-rc.10).
pub const API_VERSION: &str = "2026-09-30.endive";

/// Stripe's test card that simply pays.
pub const TEST_CARD: &str = "4242424242424242";
/// Stripe's test card whose payment succeeds and is then disputed as fraudulent (a chargeback).
pub const DISPUTE_CARD: &str = "4000000000000259";
/// Stripe's test card whose payment succeeds and then meets an inquiry (`warning_needs_response`).
pub const INQUIRY_CARD: &str = "4000000000001976";

/// How long Stripe keeps events listable on `GET /v1/events`.
const EVENT_RETENTION_SECONDS: i64 = 30 * 24 * 60 * 60;
/// Checkout Sessions expire after 24 hours unless `expires_at` says otherwise.
const SESSION_LIFETIME_SECONDS: i64 = 24 * 60 * 60;
/// Stripe's dispute fee, withdrawn with the disputed amount.
const DISPUTE_FEE: i64 = 1500;

/// A billing interval of a recurring price.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interval {
    Day,
    Week,
    Month,
    Year,
}

impl Interval {
    pub fn as_str(self) -> &'static str {
        match self {
            Interval::Day => "day",
            Interval::Week => "week",
            Interval::Month => "month",
            Interval::Year => "year",
        }
    }

    /// The end of a period starting at `start` (calendar months, as Stripe bills).
    fn advance(self, start: i64) -> i64 {
        let Some(from) = chrono::DateTime::from_timestamp(start, 0) else {
            return start;
        };
        let next = match self {
            Interval::Day => from.checked_add_days(chrono::Days::new(1)),
            Interval::Week => from.checked_add_days(chrono::Days::new(7)),
            Interval::Month => from.checked_add_months(chrono::Months::new(1)),
            Interval::Year => from.checked_add_months(chrono::Months::new(12)),
        };
        next.map_or(start, |next| next.timestamp())
    }
}

/// A price registered on the stand-in, as if created in the Stripe dashboard. `recurring: None` is a one-time
/// price (payment mode); `Some(interval)` a licensed per-unit subscription price.
#[derive(Clone, Debug)]
pub struct PriceSpec {
    pub id: String,
    pub unit_amount: i64,
    /// Lower-case ISO code, e.g. `eur`.
    pub currency: String,
    pub recurring: Option<Interval>,
}

/// How a dispute ends (`dispute.status` values of a closed dispute: async-stripe-shared's `DisputeStatus`, Stripe's
/// dispute object reference).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisputeClose {
    /// The merchant's evidence won: the funds come back (`charge.dispute.funds_reinstated`).
    Won,
    /// The cardholder won: the funds stay withdrawn.
    Lost,
    /// An inquiry closed without becoming a chargeback: no funds were ever withdrawn.
    WarningClosed,
    /// A chargeback stopped before it was filed (Visa RDR). Stripe does not say whether a refund object appears;
    /// `refund` chooses the reading (RDR resolves by refunding the cardholder).
    Prevented { refund: bool },
}

impl DisputeClose {
    fn status(self) -> &'static str {
        match self {
            Self::Won => "won",
            Self::Lost => "lost",
            Self::WarningClosed => "warning_closed",
            Self::Prevented { .. } => "prevented",
        }
    }
}

/// A chargeback withdraws the funds at once; an inquiry (`warning_*` statuses) withdraws nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DisputeKind {
    Chargeback,
    Inquiry,
}

/// Webhook delivery faults. The default delivers every event once, in order, promptly, correctly signed.
#[derive(Clone, Debug, Default)]
pub struct DeliveryFaults {
    /// POST every event twice.
    pub duplicate: bool,
    /// Deliver the events of one action (one batch) in reverse order.
    pub reorder: bool,
    /// Record the next this-many events (listable on `/v1/events`) but never deliver them.
    pub drop_next: usize,
    /// Wait this long before delivering each batch.
    pub delay: Option<Duration>,
    /// Sign with the wrong secret, so signature verification must reject the delivery.
    pub bad_signature: bool,
}

/// What the customer portal's "Cancel plan" does (a portal configuration setting in Stripe).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PortalCancelMode {
    /// Stripe's default: `cancel_at_period_end` → `customer.subscription.updated`.
    #[default]
    AtPeriodEnd,
    /// Cancel now → `customer.subscription.deleted`.
    Immediately,
}

/// One webhook POST (or failed attempt) the stand-in made.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub event_id: String,
    pub event_type: String,
    /// 1 for the first attempt, then counting retries. A duplicate (fault knob) repeats the attempt number.
    pub attempt: u32,
    pub duplicate: bool,
    /// The HTTP status the endpoint answered; `None` if the request failed.
    pub status: Option<u16>,
    pub error: Option<String>,
    /// The raw body as sent (Stripe sends pretty-printed JSON) and its `Stripe-Signature` header.
    pub payload: String,
    pub signature: String,
}

impl Delivery {
    pub fn succeeded(&self) -> bool {
        self.status
            .is_some_and(|status| (200..300).contains(&status))
    }
}

/// Stripe's webhook signature header for `payload`: `t=<timestamp>,v1=<hex HMAC-SHA256(secret, "{t}.{payload}")>`.
/// Public so app tests can craft signed, wrongly signed and stale requests.
pub fn sign(payload: &str, secret: &str, timestamp: i64) -> String {
    format!(
        "t={timestamp},v1={}",
        hmac_hex(secret, &format!("{timestamp}.{payload}"))
    )
}

fn hmac_hex(secret: &str, message: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// A running Stripe stand-in on 127.0.0.1.
pub struct StripeFake {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    stop: CancellationToken,
}

impl StripeFake {
    pub async fn start(secret_key: &str) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (in_flight, _) = watch::channel(0usize);
        let inner = Arc::new(Inner {
            state: Mutex::new(Shared {
                secret_key: secret_key.to_owned(),
                base_url: format!("http://{addr}"),
                ..Shared::default()
            }),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()?,
            in_flight,
        });
        let app = Router::new()
            .route("/v1/customers", post(create_customer))
            .route(
                "/v1/customers/{id}",
                get(get_customer).delete(delete_customer),
            )
            .route("/v1/checkout/sessions", post(create_checkout_session))
            .route("/v1/checkout/sessions/{id}", get(get_checkout_session))
            .route(
                "/v1/checkout/sessions/{id}/expire",
                post(expire_checkout_session),
            )
            .route("/v1/billing_portal/sessions", post(create_portal_session))
            .route(
                "/v1/subscriptions/{id}",
                get(get_subscription).delete(delete_subscription),
            )
            .route("/v1/invoices/{id}", get(get_invoice))
            .route("/v1/charges/{id}", get(get_charge))
            .route("/v1/refunds", get(list_refunds).post(create_refund))
            .route("/v1/refunds/{id}", get(get_refund))
            .route("/v1/invoice_payments", get(list_invoice_payments))
            .route("/v1/invoice_payments/{id}", get(get_invoice_payment))
            .route("/v1/events", get(list_events))
            .route("/v1/events/{id}", get(get_event))
            .route("/checkout/pay/{id}", get(checkout_page).post(checkout_pay))
            .route("/checkout/done/{id}", get(checkout_done_page))
            .route("/portal/{id}", get(portal_page))
            .route(
                "/portal/{id}/subscriptions/{subscription}/cancel",
                post(portal_cancel),
            )
            .route(
                "/portal/{id}/subscriptions/{subscription}/renew",
                post(portal_renew),
            )
            .fallback(unknown_route)
            .with_state(inner.clone());
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stopped.cancelled_owned())
                .await;
        });
        Ok(Self { addr, inner, stop })
    }

    /// `http://127.0.0.1:<port>` (async-stripe's `ClientBuilder::url` accepts it with or without a trailing slash).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds a customer as if created earlier (no event); returns its id.
    pub fn add_customer(&self, email: &str) -> String {
        let mut state = self.inner.lock();
        let customer = customer_json(&new_id("cus_"), Some(email), None, Map::new());
        let id = string(&customer["id"]);
        state.customers.insert(id.clone(), customer);
        id
    }

    /// Customers deleted (redacted) through the API.
    pub fn deleted_customers(&self) -> Vec<String> {
        self.inner.lock().deleted.clone()
    }

    pub fn customer(&self, id: &str) -> Option<Value> {
        self.inner.lock().customers.get(id).cloned()
    }

    /// Registers a price (its product is named after the price id).
    pub fn add_price(&self, spec: PriceSpec) {
        let name = spec
            .id
            .trim_start_matches("price_")
            .replace(['_', '-'], " ");
        self.add_price_with_product(spec, &name);
    }

    /// Registers a price whose product the hosted pages show as `product_name`.
    pub fn add_price_with_product(&self, spec: PriceSpec, product_name: &str) {
        let record = PriceRecord {
            product: format!("prod_{}", random_alphanumeric(14)),
            product_name: product_name.to_owned(),
            created: now(),
            spec,
        };
        self.inner
            .lock()
            .prices
            .insert(record.spec.id.clone(), record);
    }

    /// Where events are POSTed from now on, and the endpoint's signing secret (`whsec_…`).
    pub fn set_webhook_endpoint(&self, url: &str, signing_secret: &str) {
        self.inner.lock().endpoint = Some(Endpoint {
            url: url.to_owned(),
            secret: signing_secret.to_owned(),
        });
    }

    pub fn set_delivery(&self, faults: DeliveryFaults) {
        self.inner.lock().faults = faults;
    }

    /// Retries of a delivery answered with a non-2xx status (or not at all): up to `max_attempts` in all, the
    /// first retry after `first_backoff`, doubling. Default: 4 attempts from 50 ms (Stripe: 3 days, hours apart).
    pub fn set_retry_policy(&self, max_attempts: u32, first_backoff: Duration) {
        self.inner.lock().retry = RetryPolicy {
            max_attempts: max_attempts.max(1),
            first_backoff,
        };
    }

    pub fn set_portal_cancel_mode(&self, mode: PortalCancelMode) {
        self.inner.lock().portal_cancel_mode = mode;
    }

    /// Pays an open Checkout Session by card, as the hosted page's "Pay" button does; returns where the browser
    /// would be redirected (the success URL with `{CHECKOUT_SESSION_ID}` replaced).
    pub fn pay_session(&self, session_id: &str) -> anyhow::Result<String> {
        self.pay_session_with_card(session_id, TEST_CARD)
    }

    /// Pays by card with one of Stripe's test card numbers, as typed on the hosted page. Stripe's test cards for
    /// disputes (docs.stripe.com/testing#disputes) pay and are then disputed: [`DISPUTE_CARD`] opens a
    /// fraudulent chargeback, [`INQUIRY_CARD`] an inquiry; any other number just pays.
    pub fn pay_session_with_card(&self, session_id: &str, card: &str) -> anyhow::Result<String> {
        let card = card.to_owned();
        self.run(move |state| state.complete_session(session_id, PaymentMethod::Card, None, &card))
    }

    /// Completes a payment-mode session with a delayed payment method (bank debit): `checkout.session.completed`
    /// with `payment_status: "unpaid"`; settle it later with [`Self::settle_async_payment`].
    pub fn pay_session_async(&self, session_id: &str) -> anyhow::Result<String> {
        self.run(|state| {
            state.complete_session(session_id, PaymentMethod::BankDebit, None, TEST_CARD)
        })
    }

    /// Settles a delayed payment: `checkout.session.async_payment_succeeded` (and a charge) or `_failed`.
    pub fn settle_async_payment(&self, session_id: &str, succeeded: bool) -> anyhow::Result<()> {
        self.run(|state| state.settle_async_payment(session_id, succeeded))
    }

    /// Expires an open session now (`checkout.session.expired`), as Stripe does after `expires_at`.
    pub fn expire_session(&self, session_id: &str) -> anyhow::Result<()> {
        self.run(|state| {
            state
                .expire_session(session_id, &Origin::none())
                .map(|(_, events)| ((), events))
                .map_err(|error| error.message)
        })
    }

    /// The next billing period starts and its invoice is paid (`invoice.paid`, `customer.subscription.updated`);
    /// returns the invoice id. A subscription set to cancel at period end ends instead
    /// (`customer.subscription.deleted`) and this returns `None`.
    pub fn renew_subscription(&self, subscription_id: &str) -> anyhow::Result<Option<String>> {
        self.run(|state| state.renew_subscription(subscription_id))
    }

    /// The next billing period starts but its payment fails: `invoice.payment_failed`, subscription `past_due`.
    /// Returns the open invoice's id (pay it later with [`Self::pay_invoice`]).
    pub fn fail_invoice(&self, subscription_id: &str) -> anyhow::Result<String> {
        self.run(|state| state.fail_invoice(subscription_id))
    }

    /// A retry of an open invoice's payment succeeds: `invoice.paid`, subscription back to `active`. Returns the
    /// charge id.
    pub fn pay_invoice(&self, invoice_id: &str) -> anyhow::Result<String> {
        self.run(|state| state.pay_invoice(invoice_id))
    }

    /// Cancels a subscription now (`customer.subscription.deleted`).
    pub fn cancel_subscription(&self, subscription_id: &str) -> anyhow::Result<()> {
        self.run(|state| {
            state
                .cancel_now(subscription_id, &Origin::none())
                .map(|(_, events)| ((), events))
                .map_err(|error| error.message)
        })
    }

    /// Sets a subscription to cancel at the end of its period (`customer.subscription.updated`).
    pub fn cancel_subscription_at_period_end(&self, subscription_id: &str) -> anyhow::Result<()> {
        self.run(|state| state.set_cancel_at_period_end(subscription_id, true))
    }

    /// Refunds `amount` (smallest currency unit) of a charge, as an operator does from Stripe's dashboard (the
    /// same as `POST /v1/refunds`): `charge.refunded` (the charge, without its refunds) and `refund.created`.
    /// Returns the refund id (`re_…`).
    pub fn refund(&self, charge_id: &str, amount: i64) -> anyhow::Result<String> {
        self.run(|state| {
            state
                .refund(charge_id, Some(amount), None)
                .map(|(refund, events)| (string(&refund["id"]), events))
                .map_err(|error| error.message)
        })
    }

    /// The cardholder disputes a charge (a chargeback): `charge.dispute.created` and
    /// `charge.dispute.funds_withdrawn`. Returns the dispute id (`du_…`).
    pub fn open_dispute(&self, charge_id: &str) -> anyhow::Result<String> {
        self.run(|state| state.open_dispute(charge_id, DisputeKind::Chargeback))
    }

    /// The card issuer asks about a charge (an inquiry, status `warning_needs_response`): `charge.dispute.created`
    /// only, no funds are withdrawn. Returns the dispute id.
    pub fn open_inquiry(&self, charge_id: &str) -> anyhow::Result<String> {
        self.run(|state| state.open_dispute(charge_id, DisputeKind::Inquiry))
    }

    /// The dispute ends with `how`: `charge.dispute.closed` (and `charge.dispute.funds_reinstated` when won).
    pub fn close_dispute(&self, dispute_id: &str, how: DisputeClose) -> anyhow::Result<()> {
        self.run(|state| state.close_dispute(dispute_id, how))
    }

    /// Sets the account's default API version: events created from now on carry it, and `GET /v1/events` returns
    /// them rendered in it (webhooks still arrive in the endpoint's version, [`API_VERSION`]).
    pub fn set_account_api_version(&self, version: &str) {
        self.inner.lock().account_api_version = version.to_owned();
    }

    /// Whether the customer portal's settings have been saved in the dashboard (the default here). Until they are,
    /// Stripe refuses portal sessions created without an explicit `configuration`.
    pub fn set_portal_configured(&self, configured: bool) {
        self.inner.lock().portal_unconfigured = !configured;
    }

    /// Every event created, oldest first, as listed by the API (`pending_webhooks` is current).
    pub fn events(&self) -> Vec<Value> {
        self.inner.lock().events.clone()
    }

    /// Every webhook POST made so far, in the order they were answered.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.inner.lock().deliveries.clone()
    }

    /// POSTs an event to the endpoint again (the dashboard's "Resend"), with retries; faults other than
    /// `bad_signature` do not apply.
    pub fn redeliver(&self, event_id: &str) -> anyhow::Result<()> {
        let endpoint = {
            let state = self.inner.lock();
            if state.event(event_id).is_none() {
                anyhow::bail!("no such event: {event_id}");
            }
            state
                .endpoint
                .clone()
                .ok_or_else(|| anyhow::anyhow!("no webhook endpoint is set"))?
        };
        let inner = self.inner.clone();
        let event_id = event_id.to_owned();
        self.inner.track(async move {
            inner.deliver_with_retries(&endpoint, &event_id, 1).await;
        });
        Ok(())
    }

    /// Waits until no delivery is in flight (including delays and pending retries).
    pub async fn wait_for_deliveries(&self) {
        let mut in_flight = self.inner.in_flight.subscribe();
        let _ = in_flight.wait_for(|count| *count == 0).await;
    }

    /// Makes an event look `by` older (to test the 30-day window of `/v1/events`).
    pub fn backdate_event(&self, event_id: &str, by: Duration) -> anyhow::Result<()> {
        let mut state = self.inner.lock();
        let event = state
            .event_mut(event_id)
            .ok_or_else(|| anyhow::anyhow!("no such event: {event_id}"))?;
        let created = event["created"].as_i64().unwrap_or_default();
        event["created"] = json!(created - i64::try_from(by.as_secs()).unwrap_or(i64::MAX / 2));
        Ok(())
    }

    pub fn checkout_session(&self, id: &str) -> Option<Value> {
        self.inner
            .lock()
            .sessions
            .get(id)
            .map(|session| session.object.clone())
    }

    pub fn checkout_sessions(&self) -> Vec<Value> {
        let state = self.inner.lock();
        let mut sessions: Vec<Value> = state
            .sessions
            .values()
            .map(|session| session.object.clone())
            .collect();
        sessions.sort_by_key(|session| session["created"].as_i64());
        sessions
    }

    pub fn subscription(&self, id: &str) -> Option<Value> {
        self.inner.lock().subscriptions.get(id).cloned()
    }

    pub fn invoice(&self, id: &str) -> Option<Value> {
        self.inner.lock().invoices.get(id).cloned()
    }

    pub fn charge(&self, id: &str) -> Option<Value> {
        self.inner.lock().charges.get(id).cloned()
    }

    pub fn dispute(&self, id: &str) -> Option<Value> {
        self.inner.lock().disputes.get(id).cloned()
    }

    /// The charge that paid a session: its own (payment mode) or its first invoice's (subscription mode).
    pub fn session_charge(&self, session_id: &str) -> Option<String> {
        let state = self.inner.lock();
        let session = state.sessions.get(session_id)?;
        if let Some(charge) = &session.charge {
            return Some(charge.clone());
        }
        let invoice = state.invoices.get(session.object["invoice"].as_str()?)?;
        state.invoice_charge(invoice)
    }

    /// The charge that paid an invoice.
    pub fn invoice_charge(&self, invoice_id: &str) -> Option<String> {
        let state = self.inner.lock();
        state.invoice_charge(state.invoices.get(invoice_id)?)
    }

    /// Runs a state change and delivers the events it recorded.
    fn run<T>(
        &self,
        change: impl FnOnce(&mut Shared) -> Result<(T, Vec<String>), String>,
    ) -> anyhow::Result<T> {
        let (value, events) = {
            let mut state = self.inner.lock();
            change(&mut state).map_err(anyhow::Error::msg)?
        };
        self.inner.dispatch(events);
        Ok(value)
    }
}

impl Drop for StripeFake {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Inner {
    state: Mutex<Shared>,
    http: reqwest::Client,
    /// Delivery tasks (batches, retries) not yet finished.
    in_flight: watch::Sender<usize>,
}

#[derive(Clone)]
struct Endpoint {
    url: String,
    secret: String,
}

#[derive(Clone, Copy)]
struct RetryPolicy {
    max_attempts: u32,
    first_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            first_backoff: Duration::from_millis(50),
        }
    }
}

struct PriceRecord {
    spec: PriceSpec,
    product: String,
    product_name: String,
    created: i64,
}

impl PriceRecord {
    fn price_json(&self) -> Value {
        json!({
            "id": self.spec.id,
            "object": "price",
            "active": true,
            "billing_scheme": "per_unit",
            "created": self.created,
            "currency": self.spec.currency,
            "custom_unit_amount": null,
            "livemode": false,
            "lookup_key": null,
            "metadata": {},
            "nickname": null,
            "product": self.product,
            "recurring": self.spec.recurring.map(|interval| json!({
                "interval": interval.as_str(),
                "interval_count": 1,
                "meter": null,
                "trial_period_days": null,
                "usage_type": "licensed",
            })),
            "tax_behavior": "unspecified",
            "tiers_mode": null,
            "transform_quantity": null,
            "type": if self.spec.recurring.is_some() { "recurring" } else { "one_time" },
            "unit_amount": self.spec.unit_amount,
            "unit_amount_decimal": self.spec.unit_amount.to_string(),
        })
    }

    /// The legacy `plan` twin of a recurring price, still present on subscription items.
    fn plan_json(&self) -> Value {
        json!({
            "id": self.spec.id,
            "object": "plan",
            "active": true,
            "amount": self.spec.unit_amount,
            "amount_decimal": self.spec.unit_amount.to_string(),
            "billing_scheme": "per_unit",
            "created": self.created,
            "currency": self.spec.currency,
            "interval": self.spec.recurring.unwrap_or(Interval::Month).as_str(),
            "interval_count": 1,
            "livemode": false,
            "metadata": {},
            "meter": null,
            "nickname": null,
            "product": self.product,
            "tiers_mode": null,
            "transform_usage": null,
            "trial_period_days": null,
            "usage_type": "licensed",
        })
    }
}

#[derive(Clone)]
struct Line {
    price: String,
    quantity: i64,
}

struct Session {
    object: Value,
    lines: Vec<Line>,
    subscription_metadata: Map<String, Value>,
    payment_intent_metadata: Map<String, Value>,
    /// The charge of a paid payment-mode session.
    charge: Option<String>,
}

struct SavedResponse {
    path: String,
    fingerprint: Vec<(String, String)>,
    request_id: String,
    body: Value,
}

/// What caused an event: an API request (with its idempotency key) or nothing the app sent.
struct Origin {
    request_id: Option<String>,
    idempotency_key: Option<String>,
}

impl Origin {
    fn none() -> Self {
        Self {
            request_id: None,
            idempotency_key: None,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PaymentMethod {
    Card,
    BankDebit,
}

#[derive(Default)]
struct Shared {
    secret_key: String,
    base_url: String,
    customers: HashMap<String, Value>,
    deleted: Vec<String>,
    prices: HashMap<String, PriceRecord>,
    sessions: HashMap<String, Session>,
    portal_sessions: HashMap<String, Value>,
    subscriptions: HashMap<String, Value>,
    invoices: HashMap<String, Value>,
    charges: HashMap<String, Value>,
    /// Refunds by id. A charge does not carry them (API 2022-11-15 and later) unless `expand[]=refunds` asks.
    refunds: HashMap<String, Value>,
    /// Refund ids, oldest first (Stripe lists newest first; many share a `created` second).
    refund_order: Vec<String>,
    /// Invoice payments by id. An invoice does not carry them unless `expand[]=payments` asks.
    invoice_payments: HashMap<String, Value>,
    /// Invoice payment ids, oldest first.
    invoice_payment_order: Vec<String>,
    disputes: HashMap<String, Value>,
    /// Whether the customer portal's settings were saved in the dashboard (see [`StripeFake::set_portal_configured`]).
    portal_unconfigured: bool,
    /// The account's default API version: events are created in it (see [`StripeFake::set_account_api_version`]).
    /// Empty means [`API_VERSION`].
    account_api_version: String,
    /// Oldest first.
    events: Vec<Value>,
    idempotency: HashMap<String, SavedResponse>,
    endpoint: Option<Endpoint>,
    faults: DeliveryFaults,
    retry: RetryPolicy,
    portal_cancel_mode: PortalCancelMode,
    deliveries: Vec<Delivery>,
    invoice_sequence: u64,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.state.lock().expect("stripe stand-in state")
    }

    /// Delivers the events of one action (a batch), applying the fault knobs.
    fn dispatch(self: &Arc<Self>, event_ids: Vec<String>) {
        if event_ids.is_empty() {
            return;
        }
        let (endpoint, mut batch, faults) = {
            let mut state = self.lock();
            let Some(endpoint) = state.endpoint.clone() else {
                return;
            };
            let mut batch = Vec::new();
            for id in event_ids {
                if state.faults.drop_next > 0 {
                    state.faults.drop_next -= 1;
                } else {
                    batch.push(id);
                }
            }
            (endpoint, batch, state.faults.clone())
        };
        if faults.reorder {
            batch.reverse();
        }
        let inner = self.clone();
        self.track(async move {
            if let Some(delay) = faults.delay {
                tokio::time::sleep(delay).await;
            }
            for event_id in batch {
                let delivered = inner.attempt(&endpoint, &event_id, 1, false).await;
                if faults.duplicate {
                    inner.attempt(&endpoint, &event_id, 1, true).await;
                }
                if !delivered {
                    let retrying = inner.clone();
                    let endpoint = endpoint.clone();
                    inner.track(async move {
                        retrying.deliver_with_retries(&endpoint, &event_id, 2).await;
                    });
                }
            }
        });
    }

    /// Attempts from `first_attempt` on until one succeeds or the policy's attempts are used up.
    async fn deliver_with_retries(&self, endpoint: &Endpoint, event_id: &str, first_attempt: u32) {
        let policy = self.lock().retry;
        for attempt in first_attempt..=policy.max_attempts {
            if attempt > 1 {
                let backoff = policy
                    .first_backoff
                    .saturating_mul(2u32.saturating_pow(attempt - 2));
                tokio::time::sleep(backoff).await;
            }
            if self.attempt(endpoint, event_id, attempt, false).await {
                return;
            }
        }
    }

    /// One signed POST of an event; records it and reports whether the endpoint answered 2xx.
    async fn attempt(
        &self,
        endpoint: &Endpoint,
        event_id: &str,
        attempt: u32,
        duplicate: bool,
    ) -> bool {
        let (payload, event_type, bad_signature) = {
            let state = self.lock();
            let Some(event) = state.event(event_id) else {
                return false;
            };
            // The endpoint was created with the pinned version, so its payloads are rendered in it.
            let payload =
                serde_json::to_string_pretty(&render_event(event, API_VERSION)).unwrap_or_default();
            (payload, string(&event["type"]), state.faults.bad_signature)
        };
        let secret = if bad_signature {
            format!("{}_not_the_endpoint_secret", endpoint.secret)
        } else {
            endpoint.secret.clone()
        };
        let timestamp = now();
        // Test-mode deliveries also carry a legacy `v0` scheme signature, which verifiers ignore.
        let signature = format!(
            "{},v0={}",
            sign(&payload, &secret, timestamp),
            hmac_hex("v0", &payload)
        );
        let result = self
            .http
            .post(&endpoint.url)
            .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
            .header(
                header::USER_AGENT,
                "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            )
            .header("stripe-signature", &signature)
            .body(payload.clone())
            .send()
            .await;
        let (status, error) = match result {
            Ok(response) => (Some(response.status().as_u16()), None),
            Err(error) => (None, Some(error.to_string())),
        };
        let delivery = Delivery {
            event_id: event_id.to_owned(),
            event_type,
            attempt,
            duplicate,
            status,
            error,
            payload,
            signature,
        };
        let succeeded = delivery.succeeded();
        let mut state = self.lock();
        state.deliveries.push(delivery);
        if succeeded && let Some(event) = state.event_mut(event_id) {
            event["pending_webhooks"] = json!(0);
        }
        succeeded
    }

    /// Spawns delivery work, counted in `in_flight` until it finishes.
    fn track(self: &Arc<Self>, work: impl Future<Output = ()> + Send + 'static) {
        self.in_flight.send_modify(|count| *count += 1);
        let guard = InFlight(self.clone());
        tokio::spawn(async move {
            let _guard = guard;
            work.await;
        });
    }
}

struct InFlight(Arc<Inner>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.send_modify(|count| *count -= 1);
    }
}

/// A Stripe API error response.
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    code: Option<&'static str>,
    message: String,
    param: Option<String>,
}

impl ApiError {
    fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code: None,
            message: message.into(),
            param: param.map(str::to_owned),
        }
    }

    fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    fn missing_param(param: &str) -> Self {
        Self::invalid(format!("Missing required param: {param}."), Some(param))
            .with_code("parameter_missing")
    }

    fn unknown_param(param: &str) -> Self {
        Self::invalid(format!("Received unknown parameter: {param}"), Some(param))
            .with_code("parameter_unknown")
    }

    /// `No such <kind>: '<id>'`: 404 for the object in the path, 400 for one named by a parameter.
    fn no_such(kind: &str, id: &str, param: Option<&str>) -> Self {
        let mut error =
            Self::invalid(format!("No such {kind}: '{id}'"), param).with_code("resource_missing");
        if param.is_none() {
            error.status = StatusCode::NOT_FOUND;
        }
        error
    }

    fn unauthorized(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            ..Self::invalid(message, None)
        }
    }

    fn into_response(self, request_id: &str) -> Response {
        let mut error = json!({
            "type": self.kind,
            "message": self.message,
            "request_log_url": format!("https://dashboard.stripe.com/test/logs/{request_id}"),
        });
        if let Some(code) = self.code {
            error["code"] = json!(code);
            error["doc_url"] = json!(format!(
                "https://stripe.com/docs/error-codes/{}",
                code.replace('_', "-")
            ));
        }
        if let Some(param) = self.param {
            error["param"] = json!(param);
        }
        let mut response = (self.status, Json(json!({ "error": error }))).into_response();
        set_request_id(&mut response, request_id);
        response
    }
}

fn set_request_id(response: &mut Response, request_id: &str) {
    if let Ok(value) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert("request-id", value);
    }
}

/// Form or query parameters in Stripe's bracket notation (`a[b][0][c]=v`), kept as the flat pairs sent.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(raw: &str) -> Self {
        Self(
            url::form_urlencoded::parse(raw.as_bytes())
                .into_owned()
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
            .filter(|value| !value.is_empty())
    }

    /// `prefix[key]=value` pairs, e.g. `metadata[user_id]=7` for prefix `metadata` (empty values unset a key).
    fn map(&self, prefix: &str) -> Map<String, Value> {
        let mut map = Map::new();
        for (name, value) in &self.0 {
            if let Some(key) = name
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_prefix('['))
                .and_then(|rest| rest.strip_suffix(']'))
                .filter(|key| !key.contains('['))
            {
                if value.is_empty() {
                    map.remove(key);
                } else {
                    map.insert(key.to_owned(), json!(value));
                }
            }
        }
        map
    }

    /// Scalar lists: `prefix[]=a&prefix[]=b` or `prefix[0]=a&prefix[1]=b`.
    fn list(&self, prefix: &str) -> Vec<String> {
        let mut indexed = BTreeMap::new();
        let mut appended = Vec::new();
        for (name, value) in &self.0 {
            let Some(index) = name
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_prefix('['))
                .and_then(|rest| rest.strip_suffix(']'))
            else {
                continue;
            };
            if index.is_empty() {
                appended.push(value.clone());
            } else if let Ok(index) = index.parse::<usize>() {
                indexed.insert(index, value.clone());
            }
        }
        indexed.into_values().chain(appended).collect()
    }

    /// Lists of objects: `prefix[0][field]=v` → index 0 → {field: v} (deeper keys keep their brackets).
    fn objects(&self, prefix: &str) -> BTreeMap<usize, BTreeMap<String, String>> {
        let mut objects: BTreeMap<usize, BTreeMap<String, String>> = BTreeMap::new();
        for (name, value) in &self.0 {
            let Some(rest) = name
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_prefix('['))
            else {
                continue;
            };
            let Some((index, field)) = rest.split_once("][") else {
                continue;
            };
            let Ok(index) = index.parse::<usize>() else {
                continue;
            };
            let field = field.strip_suffix(']').unwrap_or(field);
            objects
                .entry(index)
                .or_default()
                .insert(field.replacen("][", "[", 1), value.clone());
        }
        objects
    }

    /// The top-level parameter names (`line_items` for `line_items[0][price]`).
    fn top_level(&self) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .map(|(name, _)| name.split('[').next().unwrap_or(name))
    }

    /// What an idempotent replay must match: the parameters, order-insensitively.
    fn fingerprint(&self) -> Vec<(String, String)> {
        let mut pairs = self.0.clone();
        pairs.sort();
        pairs
    }

    fn check_known(&self, known: &[&str]) -> Result<(), ApiError> {
        match self.top_level().find(|name| !known.contains(name)) {
            Some(unknown) => Err(ApiError::unknown_param(unknown)),
            None => Ok(()),
        }
    }
}

/// Stripe's metadata limits: 50 keys, keys up to 40 characters, values up to 500.
fn checked_metadata(params: &Params, prefix: &str) -> Result<Map<String, Value>, ApiError> {
    let metadata = params.map(prefix);
    if metadata.len() > 50 {
        return Err(ApiError::invalid(
            "Invalid metadata: metadata can have at most 50 keys.",
            Some(prefix),
        ));
    }
    for (key, value) in &metadata {
        if key.chars().count() > 40 {
            return Err(ApiError::invalid(
                format!("Invalid metadata: keys can be at most 40 characters long ('{key}')."),
                Some(prefix),
            ));
        }
        if value
            .as_str()
            .is_some_and(|value| value.chars().count() > 500)
        {
            return Err(ApiError::invalid(
                format!(
                    "Invalid metadata: values can be at most 500 characters long (key '{key}')."
                ),
                Some(prefix),
            ));
        }
    }
    Ok(metadata)
}

const CHECKOUT_SESSION_PARAMS: &[&str] = &[
    "adaptive_pricing",
    "after_expiration",
    "allow_promotion_codes",
    "allowed_payment_method_types",
    "automatic_tax",
    "billing_address_collection",
    "branding_settings",
    "cancel_url",
    "client_reference_id",
    "consent_collection",
    "currency",
    "custom_fields",
    "custom_text",
    "customer",
    "customer_account",
    "customer_creation",
    "customer_email",
    "customer_update",
    "discounts",
    "excluded_payment_method_types",
    "expand",
    "expires_at",
    "integration_identifier",
    "invoice_creation",
    "line_items",
    "locale",
    "managed_payments",
    "metadata",
    "mode",
    "name_collection",
    "optional_items",
    "origin_context",
    "payment_intent_data",
    "payment_method_collection",
    "payment_method_configuration",
    "payment_method_data",
    "payment_method_options",
    "payment_method_types",
    "permissions",
    "phone_number_collection",
    "redirect_on_completion",
    "return_url",
    "saved_payment_method_options",
    "setup_intent_data",
    "shipping_address_collection",
    "shipping_options",
    "submit_type",
    "subscription_data",
    "success_url",
    "tax_id_collection",
    "ui_mode",
    "wallet_options",
];

const LINE_ITEM_PARAMS: &[&str] = &[
    "adjustable_quantity",
    "dynamic_tax_rates",
    "metadata",
    "price",
    "price_data",
    "quantity",
    "tax_rates",
];

const PORTAL_SESSION_PARAMS: &[&str] = &[
    "configuration",
    "customer",
    "customer_account",
    "expand",
    "flow_data",
    "locale",
    "on_behalf_of",
    "return_url",
];

const CUSTOMER_PARAMS: &[&str] = &[
    "address",
    "balance",
    "business_name",
    "cash_balance",
    "description",
    "email",
    "expand",
    "individual_name",
    "invoice_prefix",
    "invoice_settings",
    "metadata",
    "name",
    "next_invoice_sequence",
    "payment_method",
    "phone",
    "preferred_locales",
    "shipping",
    "source",
    "tax",
    "tax_exempt",
    "tax_id_data",
    "test_clock",
    "validate",
];

impl Shared {
    fn event(&self, id: &str) -> Option<&Value> {
        self.events.iter().find(|event| event["id"] == id)
    }

    fn event_mut(&mut self, id: &str) -> Option<&mut Value> {
        self.events.iter_mut().find(|event| event["id"] == id)
    }

    /// Records an event (a snapshot of `object`) and returns its id for delivery.
    fn emit(
        &mut self,
        kind: &str,
        object: &Value,
        previous_attributes: Option<Value>,
        origin: &Origin,
    ) -> String {
        let id = new_id("evt_");
        let mut data = json!({ "object": object });
        if let Some(previous_attributes) = previous_attributes {
            data["previous_attributes"] = previous_attributes;
        }
        self.events.push(json!({
            "id": id,
            "object": "event",
            "api_version": self.account_api_version(),
            "created": now(),
            "data": data,
            "livemode": false,
            "pending_webhooks": u8::from(self.endpoint.is_some()),
            "request": { "id": origin.request_id, "idempotency_key": origin.idempotency_key },
            "type": kind,
        }));
        id
    }

    fn account_api_version(&self) -> &str {
        if self.account_api_version.is_empty() {
            API_VERSION
        } else {
            &self.account_api_version
        }
    }

    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(value) = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
        else {
            return Err(ApiError::unauthorized(
                "You did not provide an API key. You need to provide your API key in the Authorization header, \
                 using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
            ));
        };
        let key = if let Some(token) = value.strip_prefix("Bearer ") {
            token.to_owned()
        } else if let Some(basic) = value.strip_prefix("Basic ") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(basic)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .unwrap_or_default();
            decoded.split(':').next().unwrap_or_default().to_owned()
        } else {
            String::new()
        };
        if key == self.secret_key {
            Ok(())
        } else {
            let shown: String = key
                .chars()
                .rev()
                .take(4)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            Err(ApiError::unauthorized(format!(
                "Invalid API Key provided: sk_test_****{shown}"
            )))
        }
    }

    fn price(&self, id: &str) -> Option<&PriceRecord> {
        self.prices.get(id)
    }

    fn product_name(&self, price_id: &str) -> String {
        self.price(price_id)
            .map_or_else(|| price_id.to_owned(), |price| price.product_name.clone())
    }

    fn create_customer(
        &mut self,
        params: &Params,
        origin: &Origin,
    ) -> Result<(Value, Vec<String>), ApiError> {
        params.check_known(CUSTOMER_PARAMS)?;
        let metadata = checked_metadata(params, "metadata")?;
        let mut customer = customer_json(
            &new_id("cus_"),
            params.get("email"),
            params.get("name"),
            metadata,
        );
        if let Some(description) = params.get("description") {
            customer["description"] = json!(description);
        }
        if let Some(phone) = params.get("phone") {
            customer["phone"] = json!(phone);
        }
        self.customers
            .insert(string(&customer["id"]), customer.clone());
        let event = self.emit("customer.created", &customer, None, origin);
        Ok((customer, vec![event]))
    }

    /// Stripe's delete: cancels the customer's subscriptions now, then the customer is gone.
    fn delete_customer(
        &mut self,
        id: &str,
        origin: &Origin,
    ) -> Result<(Value, Vec<String>), ApiError> {
        if !self.customers.contains_key(id) {
            return Err(ApiError::no_such("customer", id, None));
        }
        let mut events = Vec::new();
        let live: Vec<String> = self
            .subscriptions
            .values()
            .filter(|subscription| {
                subscription["customer"] == id && subscription["status"] != "canceled"
            })
            .map(|subscription| string(&subscription["id"]))
            .collect();
        for subscription in live {
            if let Ok((_, mut cancelled)) = self.cancel_now(&subscription, origin) {
                events.append(&mut cancelled);
            }
        }
        let customer = self.customers.remove(id).unwrap_or_default();
        self.deleted.push(id.to_owned());
        events.push(self.emit("customer.deleted", &customer, None, origin));
        Ok((
            json!({"id": id, "object": "customer", "deleted": true}),
            events,
        ))
    }

    fn create_checkout_session(
        &mut self,
        params: &Params,
        _origin: &Origin,
    ) -> Result<(Value, Vec<String>), ApiError> {
        params.check_known(CHECKOUT_SESSION_PARAMS)?;
        let mode = params
            .get("mode")
            .ok_or_else(|| ApiError::missing_param("mode"))?;
        if !matches!(mode, "payment" | "subscription") {
            return Err(ApiError::invalid(
                format!(
                    "Invalid mode: must be one of payment or subscription (the stand-in has no `{mode}` mode)"
                ),
                Some("mode"),
            ));
        }
        let customer = params.get("customer");
        if let Some(customer) = customer
            && !self.customers.contains_key(customer)
        {
            return Err(ApiError::no_such("customer", customer, Some("customer")));
        }
        let customer_email = params.get("customer_email");
        if customer.is_some() && customer_email.is_some() {
            return Err(ApiError::invalid(
                "You may only specify one of these parameters: customer, customer_email.",
                Some("customer_email"),
            ));
        }
        let customer_creation = params.get("customer_creation");
        if let Some(value) = customer_creation {
            if mode != "payment" {
                return Err(ApiError::invalid(
                    "`customer_creation` can only be used in `payment` mode.",
                    Some("customer_creation"),
                ));
            }
            if !matches!(value, "always" | "if_required") {
                return Err(ApiError::invalid(
                    "Invalid customer_creation: must be one of always or if_required",
                    Some("customer_creation"),
                ));
            }
            if customer.is_some() {
                return Err(ApiError::invalid(
                    "You may only specify one of these parameters: customer, customer_creation.",
                    Some("customer_creation"),
                ));
            }
        }
        let lines = self.checked_lines(params, mode)?;
        let metadata = checked_metadata(params, "metadata")?;
        let subscription_metadata = checked_metadata(params, "subscription_data[metadata]")?;
        let payment_intent_metadata = checked_metadata(params, "payment_intent_data[metadata]")?;
        let created = now();
        let expires_at = match params.get("expires_at") {
            None => created + SESSION_LIFETIME_SECONDS,
            Some(value) => {
                let expires_at = value.parse::<i64>().map_err(|_| {
                    ApiError::invalid(format!("Invalid integer: {value}"), Some("expires_at"))
                })?;
                if expires_at < created + 30 * 60 || expires_at > created + SESSION_LIFETIME_SECONDS
                {
                    return Err(ApiError::invalid(
                        "The `expires_at` timestamp must be between 30 minutes and 24 hours from Checkout Session creation.",
                        Some("expires_at"),
                    ));
                }
                expires_at
            }
        };
        let currency = self
            .price(&lines[0].price)
            .map(|price| price.spec.currency.clone())
            .unwrap_or_default();
        let amount: i64 = lines.iter().map(|line| self.line_amount(line)).sum();
        let id = format!("cs_test_{}", random_alphanumeric(58));
        let payment_mode = mode == "payment";
        let session = json!({
            "id": id,
            "object": "checkout.session",
            "adaptive_pricing": if payment_mode { json!({"enabled": false}) } else { Value::Null },
            "after_expiration": null,
            "allow_promotion_codes": null,
            "amount_subtotal": amount,
            "amount_total": amount,
            "automatic_tax": {"enabled": false, "liability": null, "provider": null, "status": null},
            "billing_address_collection": null,
            "cancel_url": params.get("cancel_url"),
            "client_reference_id": params.get("client_reference_id"),
            "client_secret": null,
            "collected_information": null,
            "consent": null,
            "consent_collection": null,
            "created": created,
            "currency": currency,
            "currency_conversion": null,
            "custom_fields": [],
            "custom_text": {
                "after_submit": null,
                "shipping_address": null,
                "submit": null,
                "terms_of_service_acceptance": null,
            },
            "customer": customer,
            "customer_account": null,
            "customer_creation": match (customer, payment_mode) {
                (Some(_), _) => Value::Null,
                (None, true) => json!(customer_creation.unwrap_or("if_required")),
                (None, false) => json!("always"),
            },
            // Filled in when the customer pays.
            "customer_details": null,
            "customer_email": customer_email,
            "discounts": [],
            "expires_at": expires_at,
            "invoice": null,
            "invoice_creation": if payment_mode {
                json!({
                    "enabled": false,
                    "invoice_data": {
                        "account_tax_ids": null,
                        "custom_fields": null,
                        "description": null,
                        "footer": null,
                        "issuer": null,
                        "metadata": {},
                        "rendering_options": null,
                    },
                })
            } else {
                Value::Null
            },
        });
        // Split in two: one `json!` of all fields exceeds the macro recursion limit.
        let rest = json!({
            "livemode": false,
            "locale": null,
            "metadata": metadata,
            "mode": mode,
            "origin_context": null,
            "payment_intent": null,
            "payment_link": null,
            "payment_method_collection": "always",
            "payment_method_configuration_details": null,
            "payment_method_options": {"card": {"request_three_d_secure": "automatic"}},
            "payment_method_types": ["card"],
            "payment_status": "unpaid",
            "phone_number_collection": {"enabled": false},
            "recovered_from": null,
            "saved_payment_method_options": null,
            "setup_intent": null,
            "shipping_address_collection": null,
            "shipping_cost": null,
            "shipping_options": [],
            "status": "open",
            "submit_type": null,
            "subscription": null,
            "success_url": params.get("success_url"),
            "tax_id_collection": {"enabled": false, "required": "never"},
            "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
            "ui_mode": "hosted_page",
            "url": format!("{}/checkout/pay/{id}", self.base_url),
            "wallet_options": null,
        });
        let session = merged(session, rest);
        self.sessions.insert(
            id.clone(),
            Session {
                object: session,
                lines,
                subscription_metadata,
                payment_intent_metadata,
                charge: None,
            },
        );
        Ok((self.session_view(&id, params), Vec::new()))
    }

    /// The session as the API returns it, with `line_items` when `expand[]=line_items` asks for it.
    fn session_view(&self, id: &str, params: &Params) -> Value {
        let Some(session) = self.sessions.get(id) else {
            return Value::Null;
        };
        let mut object = session.object.clone();
        if params
            .list("expand")
            .iter()
            .any(|field| field == "line_items")
        {
            let data: Vec<Value> = session
                .lines
                .iter()
                .map(|line| {
                    let amount = self.line_amount(line);
                    json!({
                        "id": format!("li_{}", random_alphanumeric(24)),
                        "object": "item",
                        "amount_discount": 0,
                        "amount_subtotal": amount,
                        "amount_tax": 0,
                        "amount_total": amount,
                        "currency": object["currency"],
                        "description": self.product_name(&line.price),
                        "metadata": {},
                        "price": self.price(&line.price).map(PriceRecord::price_json),
                        "quantity": line.quantity,
                    })
                })
                .collect();
            object["line_items"] =
                list_json(data, &format!("/v1/checkout/sessions/{id}/line_items"));
        }
        object
    }

    fn line_amount(&self, line: &Line) -> i64 {
        self.price(&line.price)
            .map_or(0, |price| price.spec.unit_amount * line.quantity)
    }

    fn checked_lines(&self, params: &Params, mode: &str) -> Result<Vec<Line>, ApiError> {
        let objects = params.objects("line_items");
        if objects.is_empty() {
            return Err(ApiError::invalid(
                format!("You must provide `line_items` in `{mode}` mode."),
                Some("line_items"),
            )
            .with_code("parameter_missing"));
        }
        let mut lines = Vec::new();
        let mut currency: Option<String> = None;
        let mut interval: Option<Interval> = None;
        for (index, fields) in &objects {
            for field in fields.keys() {
                let name = field.split('[').next().unwrap_or(field);
                if !LINE_ITEM_PARAMS.contains(&name) {
                    return Err(ApiError::unknown_param(&format!(
                        "line_items[{index}][{name}]"
                    )));
                }
            }
            if fields.keys().any(|field| field.starts_with("price_data")) {
                return Err(ApiError::invalid(
                    "The Stripe stand-in supports only registered prices (`line_items[][price]`), not `price_data`.",
                    Some(&format!("line_items[{index}][price_data]")),
                ));
            }
            let price_param = format!("line_items[{index}][price]");
            let price_id = fields
                .get("price")
                .ok_or_else(|| ApiError::missing_param(&price_param))?;
            let price = self
                .price(price_id)
                .ok_or_else(|| ApiError::no_such("price", price_id, Some(&price_param)))?;
            let quantity_param = format!("line_items[{index}][quantity]");
            let quantity = fields
                .get("quantity")
                .ok_or_else(|| {
                    ApiError::invalid(
                        format!("Quantity is required. Add `quantity` to `line_items[{index}]`"),
                        Some(&quantity_param),
                    )
                    .with_code("parameter_missing")
                })?
                .parse::<i64>()
                .ok()
                .filter(|quantity| *quantity > 0)
                .ok_or_else(|| {
                    ApiError::invalid(
                        "Quantity must be a positive integer.",
                        Some(&quantity_param),
                    )
                })?;
            if mode == "payment" && price.spec.recurring.is_some() {
                return Err(ApiError::invalid(
                    "You specified `payment` mode but passed a recurring price. Either switch to `subscription` \
                     mode or use only one-time prices.",
                    Some(&price_param),
                ));
            }
            if let Some(expected) = &currency
                && *expected != price.spec.currency
            {
                return Err(ApiError::invalid(
                    "All prices in a Checkout Session must have the same currency.",
                    Some(&price_param),
                ));
            }
            currency = Some(price.spec.currency.clone());
            if let Some(recurring) = price.spec.recurring {
                if interval.is_some_and(|interval| interval != recurring) {
                    return Err(ApiError::invalid(
                        "All recurring prices in a subscription must have the same billing interval.",
                        Some(&price_param),
                    ));
                }
                interval = Some(recurring);
            }
            lines.push(Line {
                price: price_id.clone(),
                quantity,
            });
        }
        if mode == "subscription" && interval.is_none() {
            return Err(ApiError::invalid(
                "You must provide at least one recurring price in `subscription` mode when using prices.",
                Some("line_items"),
            ));
        }
        Ok(lines)
    }

    fn expire_session(
        &mut self,
        id: &str,
        origin: &Origin,
    ) -> Result<(Value, Vec<String>), ApiError> {
        let session = self
            .sessions
            .get_mut(id)
            .ok_or_else(|| ApiError::no_such("checkout.session", id, None))?;
        if session.object["status"] != "open" {
            return Err(ApiError::invalid(
                format!(
                    "Only Checkout Sessions with a status in [\"open\"] can be expired. This Checkout Session has a status of \"{}\".",
                    string(&session.object["status"])
                ),
                None,
            ));
        }
        session.object["status"] = json!("expired");
        session.object["url"] = Value::Null;
        let object = session.object.clone();
        let event = self.emit("checkout.session.expired", &object, None, origin);
        Ok((object, vec![event]))
    }

    /// The Pay button: payment, customer, subscription and invoice as Stripe creates them, and their events.
    fn complete_session(
        &mut self,
        id: &str,
        method: PaymentMethod,
        email: Option<&str>,
        card: &str,
    ) -> Result<(String, Vec<String>), String> {
        let origin = Origin::none();
        let session = self
            .sessions
            .get(id)
            .ok_or_else(|| format!("no such checkout session: {id}"))?;
        if session.object["status"] != "open" {
            return Err(format!(
                "checkout session {id} is {}, not open",
                string(&session.object["status"])
            ));
        }
        if session.object["expires_at"]
            .as_i64()
            .is_some_and(|expires_at| expires_at < now())
        {
            return Err(format!("checkout session {id} has expired"));
        }
        let subscription_mode = session.object["mode"] == "subscription";
        if subscription_mode && method == PaymentMethod::BankDebit {
            return Err(
                "the stand-in offers delayed payment methods in payment mode only".to_owned(),
            );
        }
        let mut events = Vec::new();
        let existing_customer = session.object["customer"].as_str().map(str::to_owned);
        let email = existing_customer
            .as_deref()
            .and_then(|customer| self.customers.get(customer))
            .and_then(|customer| customer["email"].as_str())
            .or(email)
            .or(session.object["customer_email"].as_str())
            .unwrap_or("buyer@example.com")
            .to_owned();
        let create_customer = existing_customer.is_none()
            && (subscription_mode || session.object["customer_creation"] == "always");
        let customer = if create_customer {
            let customer = customer_json(&new_id("cus_"), Some(&email), None, Map::new());
            let customer_id = string(&customer["id"]);
            self.customers.insert(customer_id.clone(), customer.clone());
            events.push(self.emit("customer.created", &customer, None, &origin));
            Some(customer_id)
        } else {
            existing_customer
        };
        let customer_details = json!({
            "address": {"city": null, "country": "DE", "line1": null, "line2": null, "postal_code": null, "state": null},
            "business_name": null,
            "email": email,
            "individual_name": null,
            "name": "Test Buyer",
            "phone": null,
            "tax_exempt": "none",
            "tax_ids": [],
        });
        let mut session = self.sessions.remove(id).ok_or("session vanished")?;
        session.object["customer"] = json!(customer);
        session.object["customer_details"] = customer_details;
        session.object["status"] = json!("complete");
        session.object["url"] = Value::Null;
        let result = if subscription_mode {
            self.start_subscription(
                &mut session,
                customer.as_deref().unwrap_or_default(),
                &email,
                &mut events,
            )
        } else {
            let payment_intent = new_id("pi_");
            session.object["payment_intent"] = json!(payment_intent);
            if method == PaymentMethod::Card {
                let charge = self.new_charge(ChargeSpec {
                    amount: session.object["amount_total"].as_i64().unwrap_or_default(),
                    currency: string(&session.object["currency"]),
                    customer: customer.clone(),
                    email: email.clone(),
                    payment_intent,
                    metadata: session.payment_intent_metadata.clone(),
                    description: None,
                });
                session.charge = Some(string(&charge["id"]));
                events.push(self.emit("charge.succeeded", &charge, None, &origin));
                session.object["payment_status"] = json!("paid");
            }
            Ok(())
        };
        let object = session.object.clone();
        let redirect = match object["success_url"].as_str() {
            Some(url) => url.replace("{CHECKOUT_SESSION_ID}", id),
            None => format!("{}/checkout/done/{id}", self.base_url),
        };
        let paid_charge = session.charge.clone().or_else(|| {
            let invoice = self.invoices.get(object["invoice"].as_str()?)?;
            self.invoice_charge(invoice)
        });
        self.sessions.insert(id.to_owned(), session);
        result?;
        events.push(self.emit("checkout.session.completed", &object, None, &origin));
        let dispute = match card {
            DISPUTE_CARD => Some(DisputeKind::Chargeback),
            INQUIRY_CARD => Some(DisputeKind::Inquiry),
            _ => None,
        };
        if let (Some(kind), Some(charge)) = (dispute, paid_charge)
            && method == PaymentMethod::Card
        {
            let (_, dispute_events) = self.open_dispute(&charge, kind)?;
            events.extend(dispute_events);
        }
        Ok((redirect, events))
    }

    /// Subscription mode: the subscription (created `incomplete`, then `active` once its first invoice is paid),
    /// the first invoice and its charge.
    fn start_subscription(
        &mut self,
        session: &mut Session,
        customer: &str,
        email: &str,
        events: &mut Vec<String>,
    ) -> Result<(), String> {
        let origin = Origin::none();
        let start = now();
        let subscription_id = new_id("sub_");
        let mut items = Vec::new();
        for line in session.lines.iter().filter(|line| {
            self.price(&line.price)
                .is_some_and(|price| price.spec.recurring.is_some())
        }) {
            let price = self.price(&line.price).ok_or("price vanished")?;
            let interval = price.spec.recurring.unwrap_or(Interval::Month);
            items.push(json!({
                "id": new_id("si_"),
                "object": "subscription_item",
                "billing_thresholds": null,
                "created": start,
                "current_period_end": interval.advance(start),
                "current_period_start": start,
                "discounts": [],
                "metadata": {},
                "plan": price.plan_json(),
                "price": price.price_json(),
                "quantity": line.quantity,
                "subscription": subscription_id,
                "tax_rates": [],
            }));
        }
        let subscription = json!({
            "id": subscription_id,
            "object": "subscription",
            "application": null,
            "application_fee_percent": null,
            "automatic_tax": {"disabled_reason": null, "enabled": false, "liability": null},
            "billing_cycle_anchor": start,
            "billing_cycle_anchor_config": null,
            "billing_mode": {"flexible": null, "type": "classic"},
            "billing_schedules": [],
            "billing_thresholds": null,
            "cancel_at": null,
            "cancel_at_period_end": false,
            "canceled_at": null,
            "cancellation_details": {"comment": null, "feedback": null, "reason": null},
            "collection_method": "charge_automatically",
            "created": start,
            "currency": session.object["currency"],
            "customer": customer,
            "days_until_due": null,
            "default_payment_method": new_id("pm_"),
            "default_source": null,
            "default_tax_rates": [],
            "description": null,
            "discounts": [],
            "ended_at": null,
            "invoice_settings": {"account_tax_ids": null, "issuer": {"type": "self"}},
        });
        let subscription_rest = json!({
            "items": list_json(items, &format!("/v1/subscription_items?subscription={subscription_id}")),
            "latest_invoice": null,
            "livemode": false,
            "metadata": session.subscription_metadata,
            "next_pending_invoice_item_invoice": null,
            "on_behalf_of": null,
            "pause_collection": null,
            "payment_settings": {
                "payment_method_options": null,
                "payment_method_types": null,
                "save_default_payment_method": "off",
            },
            "pending_invoice_item_interval": null,
            "pending_setup_intent": null,
            "pending_update": null,
            "schedule": null,
            "start_date": start,
            "status": "incomplete",
            "test_clock": null,
            "transfer_data": null,
            "trial_end": null,
            "trial_settings": {"end_behavior": {"missing_payment_method": "create_invoice"}},
            "trial_start": null,
        });
        let mut subscription = merged(subscription, subscription_rest);
        events.push(self.emit(
            "customer.subscription.created",
            &subscription,
            None,
            &origin,
        ));
        let invoice = self.new_invoice(InvoiceSpec {
            subscription: &subscription,
            billing_reason: "subscription_create",
            period: (start, start),
            paid: true,
            email,
        });
        let invoice_id = string(&invoice["id"]);
        let charge = self
            .invoice_charge(&invoice)
            .and_then(|charge| self.charges.get(&charge).cloned());
        if let Some(charge) = &charge {
            events.push(self.emit("charge.succeeded", charge, None, &origin));
        }
        events.push(self.emit("invoice.paid", &invoice, None, &origin));
        events.push(self.emit("invoice.payment_succeeded", &invoice, None, &origin));
        subscription["status"] = json!("active");
        subscription["latest_invoice"] = json!(invoice_id);
        events.push(self.emit(
            "customer.subscription.updated",
            &subscription,
            Some(json!({"status": "incomplete", "latest_invoice": null})),
            &origin,
        ));
        self.subscriptions
            .insert(subscription_id.clone(), subscription);
        session.object["subscription"] = json!(subscription_id);
        session.object["invoice"] = json!(invoice_id);
        session.object["payment_status"] = json!("paid");
        Ok(())
    }

    fn settle_async_payment(
        &mut self,
        id: &str,
        succeeded: bool,
    ) -> Result<((), Vec<String>), String> {
        let origin = Origin::none();
        let session = self
            .sessions
            .get(id)
            .ok_or_else(|| format!("no such checkout session: {id}"))?;
        if session.object["status"] != "complete" || session.object["payment_status"] != "unpaid" {
            return Err(format!(
                "checkout session {id} has no payment awaiting settlement"
            ));
        }
        let mut events = Vec::new();
        if succeeded {
            let spec = ChargeSpec {
                amount: session.object["amount_total"].as_i64().unwrap_or_default(),
                currency: string(&session.object["currency"]),
                customer: session.object["customer"].as_str().map(str::to_owned),
                email: string(&session.object["customer_details"]["email"]),
                payment_intent: string(&session.object["payment_intent"]),
                metadata: session.payment_intent_metadata.clone(),
                description: None,
            };
            let charge = self.new_charge(spec);
            events.push(self.emit("charge.succeeded", &charge, None, &origin));
            let session = self.sessions.get_mut(id).ok_or("session vanished")?;
            session.charge = Some(string(&charge["id"]));
            session.object["payment_status"] = json!("paid");
            let object = session.object.clone();
            events.push(self.emit(
                "checkout.session.async_payment_succeeded",
                &object,
                None,
                &origin,
            ));
        } else {
            let object = session.object.clone();
            events.push(self.emit(
                "checkout.session.async_payment_failed",
                &object,
                None,
                &origin,
            ));
        }
        Ok(((), events))
    }

    fn new_charge(&mut self, spec: ChargeSpec) -> Value {
        let id = new_id("ch_");
        let created = now();
        let charge = json!({
            "id": id,
            "object": "charge",
            "amount": spec.amount,
            "amount_captured": spec.amount,
            "amount_refunded": 0,
            "application": null,
            "application_fee": null,
            "application_fee_amount": null,
            "balance_transaction": new_id("txn_"),
            "billing_details": {
                "address": {"city": null, "country": "DE", "line1": null, "line2": null, "postal_code": null, "state": null},
                "email": spec.email,
                "name": "Test Buyer",
                "phone": null,
                "tax_id": null,
            },
            "calculated_statement_descriptor": "CREATEIMAGE2",
            "captured": true,
            "created": created,
            "currency": spec.currency,
            "customer": spec.customer,
            "description": spec.description,
            "disputed": false,
            "failure_balance_transaction": null,
            "failure_code": null,
            "failure_message": null,
            "fraud_details": {},
        });
        let charge_rest = json!({
            "livemode": false,
            "metadata": spec.metadata,
            "on_behalf_of": null,
            "outcome": {
                "advice_code": null,
                "network_advice_code": null,
                "network_decline_code": null,
                "network_status": "approved_by_network",
                "reason": null,
                "risk_level": "normal",
                "risk_score": 21,
                "seller_message": "Payment complete.",
                "type": "authorized",
            },
            "paid": true,
            "payment_intent": spec.payment_intent,
            "payment_method": new_id("pm_"),
            "payment_method_details": {
                "card": {
                    "amount_authorized": spec.amount,
                    "authorization_code": null,
                    "brand": "visa",
                    "country": "US",
                    "exp_month": 12,
                    "exp_year": 2034,
                    "fingerprint": random_alphanumeric(16),
                    "funding": "credit",
                    "last4": "4242",
                    "network": "visa",
                    "network_transaction_id": random_alphanumeric(15),
                    "three_d_secure": null,
                    "wallet": null,
                },
                "type": "card",
            },
            "radar_options": {},
            "receipt_email": null,
            "receipt_number": null,
            "receipt_url": format!("https://pay.stripe.com/receipts/payment/{}", random_alphanumeric(40)),
            "refunded": false,
            "review": null,
            "shipping": null,
            "source": null,
            "source_transfer": null,
            "statement_descriptor": null,
            "statement_descriptor_suffix": null,
            "status": "succeeded",
            "transfer_data": null,
            "transfer_group": null,
        });
        let charge = merged(charge, charge_rest);
        self.charges.insert(id, charge.clone());
        charge
    }

    /// A subscription invoice for the subscription's current items. `period` is the invoice's own
    /// `period_start`/`period_end`, which Stripe sets to the *previous* period on renewals (the lines carry the
    /// period being paid for).
    fn new_invoice(&mut self, spec: InvoiceSpec<'_>) -> Value {
        let id = new_id("in_");
        let created = now();
        let subscription_id = string(&spec.subscription["id"]);
        let currency = string(&spec.subscription["currency"]);
        let empty = Vec::new();
        let items = spec.subscription["items"]["data"]
            .as_array()
            .unwrap_or(&empty);
        let mut total = 0;
        let lines: Vec<Value> = items
            .iter()
            .map(|item| {
                let price_id = string(&item["price"]["id"]);
                let unit_amount = item["price"]["unit_amount"].as_i64().unwrap_or_default();
                let quantity = item["quantity"].as_i64().unwrap_or(1);
                let amount = unit_amount * quantity;
                total += amount;
                json!({
                    "id": new_id("il_"),
                    "object": "line_item",
                    "amount": amount,
                    "currency": currency,
                    "description": format!(
                        "{quantity} × {} (at {} / {})",
                        self.product_name(&price_id),
                        money(unit_amount, &currency),
                        item["price"]["recurring"]["interval"].as_str().unwrap_or("month"),
                    ),
                    "discount_amounts": [],
                    "discountable": true,
                    "discounts": [],
                    "invoice": id,
                    "livemode": false,
                    "metadata": spec.subscription["metadata"],
                    "parent": {
                        "invoice_item_details": null,
                        "subscription_item_details": {
                            "invoice_item": null,
                            "proration": false,
                            "proration_details": {"credited_items": null},
                            "subscription": subscription_id,
                            "subscription_item": item["id"],
                        },
                        "type": "subscription_item_details",
                    },
                    "period": {"end": item["current_period_end"], "start": item["current_period_start"]},
                    "pretax_credit_amounts": [],
                    "pricing": {
                        "price_details": {"price": price_id, "product": item["price"]["product"]},
                        "type": "price_details",
                        "unit_amount_decimal": unit_amount.to_string(),
                    },
                    "quantity": quantity,
                    "subtotal": amount,
                    "taxes": [],
                })
            })
            .collect();
        self.invoice_sequence += 1;
        let customer = string(&spec.subscription["customer"]);
        let invoice = json!({
            "id": id,
            "object": "invoice",
            "account_country": "DE",
            "account_name": "createimage2",
            "account_tax_ids": null,
            "amount_due": total,
            "amount_overpaid": 0,
            "amount_paid": 0,
            "amount_remaining": total,
            "amount_shipping": 0,
            "application": null,
            "attempt_count": 1,
            "attempted": true,
            "auto_advance": true,
            "automatic_tax": {"disabled_reason": null, "enabled": false, "liability": null, "provider": null, "status": null},
            "automatically_finalizes_at": null,
            "billing_reason": spec.billing_reason,
            "collection_method": "charge_automatically",
            "created": created,
            "currency": currency,
            "custom_fields": null,
            "customer": customer,
            "customer_account": null,
            "customer_address": null,
            "customer_email": spec.email,
            "customer_name": null,
            "customer_phone": null,
            "customer_shipping": null,
            "customer_tax_exempt": "none",
            "customer_tax_ids": [],
        });
        let invoice_rest = json!({
            "default_payment_method": null,
            "default_source": null,
            "default_tax_rates": [],
            "description": null,
            "discounts": [],
            "due_date": null,
            "effective_at": created,
            "ending_balance": 0,
            "footer": null,
            "from_invoice": null,
            "hosted_invoice_url": format!("https://invoice.stripe.com/i/acct_standin/test_{}", random_alphanumeric(40)),
            "invoice_pdf": format!("https://pay.stripe.com/invoice/acct_standin/test_{}/pdf", random_alphanumeric(40)),
            "issuer": {"type": "self"},
            "last_finalization_error": null,
            "latest_revision": null,
            "lines": list_json(lines, &format!("/v1/invoices/{id}/lines")),
            "livemode": false,
            "metadata": {},
            "next_payment_attempt": created + 3 * 24 * 60 * 60,
            "number": format!("CI2-{:04}", self.invoice_sequence),
            "on_behalf_of": null,
            "parent": {
                "quote_details": null,
                "subscription_details": {"metadata": spec.subscription["metadata"], "subscription": subscription_id},
                "type": "subscription_details",
            },
            "payment_settings": {"default_mandate": null, "payment_method_options": null, "payment_method_types": null},
        });
        let invoice_rest = merged(
            invoice_rest,
            json!({
                "period_end": spec.period.1,
                "period_start": spec.period.0,
                "post_payment_credit_notes_amount": 0,
                "pre_payment_credit_notes_amount": 0,
                "receipt_number": null,
                "rendering": null,
                "shipping_cost": null,
                "shipping_details": null,
                "starting_balance": 0,
                "statement_descriptor": null,
                "status": "open",
                "status_transitions": {
                    "finalized_at": created,
                    "marked_uncollectible_at": null,
                    "paid_at": null,
                    "voided_at": null,
                },
                "subtotal": total,
                "subtotal_excluding_tax": total,
                "test_clock": null,
                "total": total,
                "total_discount_amounts": [],
                "total_excluding_tax": total,
                "total_pretax_credit_amounts": [],
                "total_taxes": [],
                "webhooks_delivered_at": created,
            }),
        );
        let mut invoice = merged(invoice, invoice_rest);
        if spec.paid {
            self.mark_invoice_paid(&mut invoice, spec.email);
        }
        self.invoices.insert(id, invoice.clone());
        invoice
    }

    /// Pays an invoice with a new charge; records the payment on the invoice.
    fn mark_invoice_paid(&mut self, invoice: &mut Value, email: &str) -> String {
        let payment_intent = new_id("pi_");
        let total = invoice["total"].as_i64().unwrap_or_default();
        let charge = self.new_charge(ChargeSpec {
            amount: total,
            currency: string(&invoice["currency"]),
            customer: invoice["customer"].as_str().map(str::to_owned),
            email: email.to_owned(),
            payment_intent: payment_intent.clone(),
            metadata: Map::new(),
            description: Some(
                if invoice["billing_reason"] == "subscription_create" {
                    "Subscription creation"
                } else {
                    "Subscription update"
                }
                .to_owned(),
            ),
        });
        let paid_at = now();
        invoice["amount_paid"] = json!(total);
        invoice["amount_remaining"] = json!(0);
        invoice["auto_advance"] = json!(false);
        invoice["next_payment_attempt"] = Value::Null;
        invoice["status"] = json!("paid");
        invoice["status_transitions"]["paid_at"] = json!(paid_at);
        let invoice_id = string(&invoice["id"]);
        // Stripe's list example (API reference, "List all payments for an invoice") names only the payment
        // intent under `payment` for `type: payment_intent`.
        let payment_id = new_id("inpay_");
        self.invoice_payment_order.push(payment_id.clone());
        self.invoice_payments.insert(
            payment_id.clone(),
            json!({
                "id": payment_id,
                "object": "invoice_payment",
                "amount_paid": total,
                "amount_requested": total,
                "created": paid_at,
                "currency": invoice["currency"],
                "invoice": invoice_id,
                "is_default": true,
                "livemode": false,
                "payment": {"payment_intent": payment_intent, "type": "payment_intent"},
                "status": "paid",
                "status_transitions": {"canceled_at": null, "paid_at": paid_at},
            }),
        );
        string(&charge["id"])
    }

    /// The charge that paid an invoice: its paid invoice payment names the payment intent the charge belongs to.
    fn invoice_charge(&self, invoice: &Value) -> Option<String> {
        let intent = self.invoice_payments.values().find_map(|payment| {
            (payment["invoice"] == invoice["id"] && payment["status"] == "paid")
                .then(|| payment["payment"]["payment_intent"].as_str())
                .flatten()
        })?;
        self.charges
            .values()
            .find(|charge| charge["payment_intent"] == intent)
            .map(|charge| string(&charge["id"]))
    }

    fn live_subscription(&self, id: &str) -> Result<Value, String> {
        let subscription = self
            .subscriptions
            .get(id)
            .ok_or_else(|| format!("no such subscription: {id}"))?;
        if subscription["status"] == "canceled" {
            return Err(format!("subscription {id} is canceled"));
        }
        Ok(subscription.clone())
    }

    fn customer_email(&self, customer: &Value) -> String {
        customer
            .as_str()
            .and_then(|id| self.customers.get(id))
            .and_then(|customer| customer["email"].as_str())
            .unwrap_or("buyer@example.com")
            .to_owned()
    }

    /// Moves every item to its next period; returns the previous items list (for `previous_attributes`) and
    /// the previous period.
    fn advance_period(subscription: &mut Value) -> (Value, (i64, i64)) {
        let previous_items = subscription["items"].clone();
        let mut previous_period = (0, 0);
        if let Some(items) = subscription["items"]["data"].as_array_mut() {
            for item in items {
                let start = item["current_period_start"].as_i64().unwrap_or_default();
                let end = item["current_period_end"].as_i64().unwrap_or_default();
                let interval = match item["price"]["recurring"]["interval"].as_str() {
                    Some("day") => Interval::Day,
                    Some("week") => Interval::Week,
                    Some("year") => Interval::Year,
                    _ => Interval::Month,
                };
                previous_period = (start, end);
                item["current_period_start"] = json!(end);
                item["current_period_end"] = json!(interval.advance(end));
            }
        }
        (previous_items, previous_period)
    }

    fn renew_subscription(&mut self, id: &str) -> Result<(Option<String>, Vec<String>), String> {
        let origin = Origin::none();
        let mut subscription = self.live_subscription(id)?;
        if subscription["cancel_at_period_end"] == true {
            let (_, events) = self
                .cancel_now(id, &origin)
                .map_err(|error| error.to_string())?;
            return Ok((None, events));
        }
        let (previous_items, previous_period) = Self::advance_period(&mut subscription);
        let email = self.customer_email(&subscription["customer"]);
        let invoice = self.new_invoice(InvoiceSpec {
            subscription: &subscription,
            billing_reason: "subscription_cycle",
            period: previous_period,
            paid: true,
            email: &email,
        });
        let invoice_id = string(&invoice["id"]);
        let mut previous =
            json!({"items": previous_items, "latest_invoice": subscription["latest_invoice"]});
        if subscription["status"] != "active" {
            previous["status"] = subscription["status"].clone();
            subscription["status"] = json!("active");
        }
        subscription["latest_invoice"] = json!(invoice_id);
        self.subscriptions
            .insert(id.to_owned(), subscription.clone());
        let mut events = vec![self.emit(
            "customer.subscription.updated",
            &subscription,
            Some(previous),
            &origin,
        )];
        if let Some(charge) = self
            .invoice_charge(&invoice)
            .and_then(|charge| self.charges.get(&charge).cloned())
        {
            events.push(self.emit("charge.succeeded", &charge, None, &origin));
        }
        events.push(self.emit("invoice.paid", &invoice, None, &origin));
        events.push(self.emit("invoice.payment_succeeded", &invoice, None, &origin));
        Ok((Some(invoice_id), events))
    }

    fn fail_invoice(&mut self, id: &str) -> Result<(String, Vec<String>), String> {
        let origin = Origin::none();
        let mut subscription = self.live_subscription(id)?;
        let (previous_items, previous_period) = Self::advance_period(&mut subscription);
        let email = self.customer_email(&subscription["customer"]);
        let invoice = self.new_invoice(InvoiceSpec {
            subscription: &subscription,
            billing_reason: "subscription_cycle",
            period: previous_period,
            paid: false,
            email: &email,
        });
        let invoice_id = string(&invoice["id"]);
        let mut previous =
            json!({"items": previous_items, "latest_invoice": subscription["latest_invoice"]});
        if subscription["status"] != "past_due" {
            previous["status"] = subscription["status"].clone();
            subscription["status"] = json!("past_due");
        }
        subscription["latest_invoice"] = json!(invoice_id);
        self.subscriptions
            .insert(id.to_owned(), subscription.clone());
        let events = vec![
            self.emit("invoice.payment_failed", &invoice, None, &origin),
            self.emit(
                "customer.subscription.updated",
                &subscription,
                Some(previous),
                &origin,
            ),
        ];
        Ok((invoice_id, events))
    }

    fn pay_invoice(&mut self, invoice_id: &str) -> Result<(String, Vec<String>), String> {
        let origin = Origin::none();
        let mut invoice = self
            .invoices
            .get(invoice_id)
            .cloned()
            .ok_or_else(|| format!("no such invoice: {invoice_id}"))?;
        if invoice["status"] != "open" {
            return Err(format!(
                "invoice {invoice_id} is {}, not open",
                string(&invoice["status"])
            ));
        }
        let email = string(&invoice["customer_email"]);
        let charge_id = self.mark_invoice_paid(&mut invoice, &email);
        invoice["attempt_count"] = json!(invoice["attempt_count"].as_i64().unwrap_or(1) + 1);
        self.invoices.insert(invoice_id.to_owned(), invoice.clone());
        let mut events = Vec::new();
        if let Some(charge) = self.charges.get(&charge_id).cloned() {
            events.push(self.emit("charge.succeeded", &charge, None, &origin));
        }
        events.push(self.emit("invoice.paid", &invoice, None, &origin));
        events.push(self.emit("invoice.payment_succeeded", &invoice, None, &origin));
        let subscription_id = string(&invoice["parent"]["subscription_details"]["subscription"]);
        if let Some(subscription) = self.subscriptions.get_mut(&subscription_id)
            && subscription["status"] == "past_due"
        {
            subscription["status"] = json!("active");
            let subscription = subscription.clone();
            events.push(self.emit(
                "customer.subscription.updated",
                &subscription,
                Some(json!({"status": "past_due"})),
                &origin,
            ));
        }
        Ok((charge_id, events))
    }

    fn cancel_now(&mut self, id: &str, origin: &Origin) -> Result<(Value, Vec<String>), ApiError> {
        let subscription = self
            .subscriptions
            .get_mut(id)
            .ok_or_else(|| ApiError::no_such("subscription", id, None))?;
        if subscription["status"] == "canceled" {
            return Err(ApiError::invalid(
                format!(
                    "A canceled subscription can only update its cancellation_details and metadata. ({id})"
                ),
                None,
            ));
        }
        let at = now();
        subscription["status"] = json!("canceled");
        subscription["canceled_at"] = json!(at);
        subscription["ended_at"] = json!(at);
        subscription["cancel_at"] = Value::Null;
        subscription["cancel_at_period_end"] = json!(false);
        subscription["cancellation_details"]["reason"] = json!("cancellation_requested");
        let subscription = subscription.clone();
        let event = self.emit("customer.subscription.deleted", &subscription, None, origin);
        Ok((subscription, vec![event]))
    }

    fn set_cancel_at_period_end(
        &mut self,
        id: &str,
        cancel: bool,
    ) -> Result<((), Vec<String>), String> {
        let origin = Origin::none();
        let mut subscription = self.live_subscription(id)?;
        if subscription["cancel_at_period_end"] == cancel {
            return Ok(((), Vec::new()));
        }
        let previous = json!({
            "cancel_at": subscription["cancel_at"],
            "cancel_at_period_end": subscription["cancel_at_period_end"],
            "canceled_at": subscription["canceled_at"],
            "cancellation_details": subscription["cancellation_details"],
        });
        let period_end = subscription["items"]["data"][0]["current_period_end"].clone();
        if cancel {
            subscription["cancel_at"] = period_end;
            subscription["cancel_at_period_end"] = json!(true);
            subscription["canceled_at"] = json!(now());
            subscription["cancellation_details"]["reason"] = json!("cancellation_requested");
        } else {
            subscription["cancel_at"] = Value::Null;
            subscription["cancel_at_period_end"] = json!(false);
            subscription["canceled_at"] = Value::Null;
            subscription["cancellation_details"] =
                json!({"comment": null, "feedback": null, "reason": null});
        }
        self.subscriptions
            .insert(id.to_owned(), subscription.clone());
        let event = self.emit(
            "customer.subscription.updated",
            &subscription,
            Some(previous),
            &origin,
        );
        Ok(((), vec![event]))
    }

    /// A refund of `amount` (all that is left when `None`) of a charge: `charge.refunded` and `refund.created`.
    fn refund(
        &mut self,
        charge_id: &str,
        amount: Option<i64>,
        reason: Option<&str>,
    ) -> Result<(Value, Vec<String>), ApiError> {
        let origin = Origin::none();
        let disputed = self.disputes.values().any(|dispute| {
            dispute["charge"] == charge_id
                && !string(&dispute["status"]).starts_with("warning_")
                && dispute["status"] != "prevented"
        });
        let charge = self
            .charges
            .get_mut(charge_id)
            .ok_or_else(|| ApiError::no_such("charge", charge_id, Some("charge")))?;
        if disputed {
            return Err(ApiError::invalid(
                format!("Charge {charge_id} has been charged back; cannot issue a refund."),
                None,
            )
            .with_code("charge_disputed"));
        }
        let captured = charge["amount"].as_i64().unwrap_or_default();
        let refunded = charge["amount_refunded"].as_i64().unwrap_or_default();
        if refunded >= captured {
            return Err(ApiError::invalid(
                format!("Charge {charge_id} has already been refunded."),
                None,
            )
            .with_code("charge_already_refunded"));
        }
        let amount = amount.unwrap_or(captured - refunded);
        if amount <= 0 || refunded + amount > captured {
            return Err(ApiError::invalid(
                format!(
                    "Refund amount ({}) is greater than unrefunded amount on charge ({})",
                    money(amount, &string(&charge["currency"])),
                    money(captured - refunded, &string(&charge["currency"]))
                ),
                Some("amount"),
            )
            .with_code("amount_too_large"));
        }
        let refund_id = new_id("re_");
        let refund = json!({
            "id": refund_id,
            "object": "refund",
            "amount": amount,
            "balance_transaction": new_id("txn_"),
            "charge": charge_id,
            "created": now(),
            "currency": charge["currency"],
            "destination_details": {"card": {"reference_status": "pending", "reference_type": "acquirer_reference_number", "type": "refund"}, "type": "card"},
            "metadata": {},
            "payment_intent": charge["payment_intent"],
            "reason": reason,
            "receipt_number": null,
            "source_transfer_reversal": null,
            "status": "succeeded",
            "transfer_reversal": null,
        });
        let previous = json!({"amount_refunded": refunded, "refunded": charge["refunded"]});
        charge["amount_refunded"] = json!(refunded + amount);
        charge["refunded"] = json!(refunded + amount == captured);
        let charge = charge.clone();
        self.refund_order.push(refund_id.clone());
        self.refunds.insert(refund_id, refund.clone());
        let events = vec![
            self.emit("charge.refunded", &charge, Some(previous), &origin),
            self.emit("refund.created", &refund, None, &origin),
        ];
        Ok((refund, events))
    }

    /// `POST /v1/refunds`: by `charge` or `payment_intent`, all or `amount` of what is left.
    fn create_refund(
        &mut self,
        params: &Params,
        _origin: &Origin,
    ) -> Result<(Value, Vec<String>), ApiError> {
        params.check_known(&[
            "charge",
            "payment_intent",
            "amount",
            "reason",
            "metadata",
            "expand",
        ])?;
        let charge = match (params.get("charge"), params.get("payment_intent")) {
            (Some(charge), None) => charge.to_owned(),
            (None, Some(intent)) => self
                .charges
                .values()
                .find(|charge| charge["payment_intent"] == intent)
                .map(|charge| string(&charge["id"]))
                .ok_or_else(|| {
                    ApiError::no_such("payment_intent", intent, Some("payment_intent"))
                })?,
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid(
                    "You cannot specify both `charge` and `payment_intent`.",
                    Some("payment_intent"),
                ));
            }
            (None, None) => {
                return Err(ApiError::invalid(
                    "One of the following params should be provided for this request: payment_intent or charge.",
                    None,
                ));
            }
        };
        let amount = match params.get("amount") {
            None => None,
            Some(raw) => Some(raw.parse::<i64>().map_err(|_| {
                ApiError::invalid(format!("Invalid integer: {raw}"), Some("amount"))
            })?),
        };
        let reason = params.get("reason");
        if let Some(reason) = reason
            && !["duplicate", "fraudulent", "requested_by_customer"].contains(&reason)
        {
            return Err(ApiError::invalid(
                format!(
                    "Invalid reason: must be one of duplicate, fraudulent, or requested_by_customer (got {reason})"
                ),
                Some("reason"),
            ));
        }
        self.refund(&charge, amount, reason)
    }

    /// `GET /v1/refunds?charge=…|payment_intent=…`: newest first, with `limit` and `starting_after`.
    fn list_refunds(&self, params: &Params) -> Result<Value, ApiError> {
        let refunds: Vec<&Value> = self
            .refund_order
            .iter()
            .rev()
            .filter_map(|id| self.refunds.get(id))
            .filter(|refund| {
                params
                    .get("charge")
                    .is_none_or(|charge| refund["charge"] == charge)
                    && params
                        .get("payment_intent")
                        .is_none_or(|intent| refund["payment_intent"] == intent)
            })
            .collect();
        page_of(refunds, params, "/v1/refunds", "refund")
    }

    /// `GET /v1/invoice_payments?invoice=…`: with `status`, `limit` and `starting_after`.
    fn list_invoice_payments(&self, params: &Params) -> Result<Value, ApiError> {
        let payments: Vec<&Value> = self
            .invoice_payment_order
            .iter()
            .rev()
            .filter_map(|id| self.invoice_payments.get(id))
            .filter(|payment| {
                params
                    .get("invoice")
                    .is_none_or(|invoice| payment["invoice"] == invoice)
                    && params
                        .get("status")
                        .is_none_or(|status| payment["status"] == status)
                    && params
                        .get("payment[payment_intent]")
                        .is_none_or(|intent| payment["payment"]["payment_intent"] == intent)
            })
            .collect();
        page_of(payments, params, "/v1/invoice_payments", "invoice_payment")
    }

    /// A charge as `GET /v1/charges/{id}` answers: `refunds` only when expanded.
    fn charge_view(&self, id: &str, params: &Params) -> Result<Value, ApiError> {
        let mut charge = lookup(&self.charges, "charge", id)?;
        if params.list("expand").iter().any(|field| field == "refunds") {
            let refunds: Vec<Value> = self
                .refund_order
                .iter()
                .rev()
                .filter_map(|refund| self.refunds.get(refund))
                .filter(|refund| refund["charge"] == id)
                .cloned()
                .collect();
            charge["refunds"] = list_json(refunds, &format!("/v1/charges/{id}/refunds"));
        }
        Ok(charge)
    }

    /// An invoice as `GET /v1/invoices/{id}` answers: `payments` only when expanded.
    fn invoice_view(&self, id: &str, params: &Params) -> Result<Value, ApiError> {
        let mut invoice = lookup(&self.invoices, "invoice", id)?;
        if params
            .list("expand")
            .iter()
            .any(|field| field == "payments")
        {
            let payments: Vec<Value> = self
                .invoice_payment_order
                .iter()
                .filter_map(|payment| self.invoice_payments.get(payment))
                .filter(|payment| payment["invoice"] == id)
                .cloned()
                .collect();
            invoice["payments"] =
                list_json(payments, &format!("/v1/invoice_payments?invoice={id}"));
        }
        Ok(invoice)
    }

    fn open_dispute(
        &mut self,
        charge_id: &str,
        kind: DisputeKind,
    ) -> Result<(String, Vec<String>), String> {
        let origin = Origin::none();
        let charge = self
            .charges
            .get_mut(charge_id)
            .ok_or_else(|| format!("no such charge: {charge_id}"))?;
        if charge["disputed"] == true {
            return Err(format!("charge {charge_id} is already disputed"));
        }
        charge["disputed"] = json!(true);
        let charge = charge.clone();
        let id = new_id("du_");
        let created = now();
        let amount = charge["amount"].as_i64().unwrap_or_default();
        let currency = string(&charge["currency"]);
        let chargeback = kind == DisputeKind::Chargeback;
        let balance_transactions = if chargeback {
            vec![balance_transaction(
                -amount,
                DISPUTE_FEE,
                &currency,
                &id,
                &format!("Chargeback withdrawal for {charge_id}"),
            )]
        } else {
            Vec::new()
        };
        let dispute = json!({
            "id": id,
            "object": "dispute",
            "amount": amount,
            "balance_transactions": balance_transactions,
            "charge": charge_id,
            "created": created,
            "currency": currency,
            "enhanced_eligibility_types": [],
            "evidence": dispute_evidence(),
            "evidence_details": {
                "due_by": created + 7 * 24 * 60 * 60,
                "enhanced_eligibility": {},
                "has_evidence": false,
                "past_due": false,
                "submission_count": 0,
            },
            "is_charge_refundable": !chargeback,
            "livemode": false,
            "metadata": {},
            "network_reason_code": "10.4",
            "payment_intent": charge["payment_intent"],
            "payment_method_details": {
                "card": {
                    "brand": "visa",
                    "case_type": if chargeback { "chargeback" } else { "inquiry" },
                    "network": "visa",
                    "network_reason_code": "10.4",
                },
                "type": "card",
            },
            "reason": "fraudulent",
            "status": if chargeback { "needs_response" } else { "warning_needs_response" },
        });
        self.disputes.insert(id.clone(), dispute.clone());
        let mut events = vec![self.emit("charge.dispute.created", &dispute, None, &origin)];
        if chargeback {
            events.push(self.emit("charge.dispute.funds_withdrawn", &dispute, None, &origin));
        }
        Ok((id, events))
    }

    fn close_dispute(&mut self, id: &str, how: DisputeClose) -> Result<((), Vec<String>), String> {
        let origin = Origin::none();
        let dispute = self
            .disputes
            .get_mut(id)
            .ok_or_else(|| format!("no such dispute: {id}"))?;
        let status = string(&dispute["status"]);
        let inquiry = status.starts_with("warning_");
        if !matches!(
            status.as_str(),
            "needs_response" | "under_review" | "warning_needs_response" | "warning_under_review"
        ) {
            return Err(format!("dispute {id} is already closed ({status})"));
        }
        match how {
            DisputeClose::WarningClosed if !inquiry => {
                return Err(format!(
                    "dispute {id} is a chargeback; only an inquiry closes as warning_closed"
                ));
            }
            DisputeClose::Won | DisputeClose::Lost if inquiry => {
                return Err(format!(
                    "dispute {id} is an inquiry; it closes as warning_closed (or escalates first)"
                ));
            }
            _ => {}
        }
        let previous = json!({"status": status});
        dispute["status"] = json!(how.status());
        dispute["is_charge_refundable"] = json!(false);
        if how == DisputeClose::Won {
            let amount = dispute["amount"].as_i64().unwrap_or_default();
            let currency = string(&dispute["currency"]);
            let reinstatement = balance_transaction(
                amount,
                -DISPUTE_FEE,
                &currency,
                id,
                &format!("Chargeback reversal for {}", string(&dispute["charge"])),
            );
            if let Some(transactions) = dispute["balance_transactions"].as_array_mut() {
                transactions.push(reinstatement);
            }
        }
        let dispute = dispute.clone();
        let mut events = Vec::new();
        if let DisputeClose::Prevented { refund: true } = how {
            let (_, refund_events) = self
                .refund(&string(&dispute["charge"]), None, Some("fraudulent"))
                .map_err(|error| error.message)?;
            events.extend(refund_events);
        }
        events.push(self.emit("charge.dispute.closed", &dispute, Some(previous), &origin));
        if how == DisputeClose::Won {
            events.push(self.emit("charge.dispute.funds_reinstated", &dispute, None, &origin));
        }
        Ok(((), events))
    }

    fn create_portal_session(
        &mut self,
        params: &Params,
        _origin: &Origin,
    ) -> Result<(Value, Vec<String>), ApiError> {
        params.check_known(PORTAL_SESSION_PARAMS)?;
        if self.portal_unconfigured && params.get("configuration").is_none() {
            // Stripe's answer until the portal's settings are saved once in the dashboard (the wording is as
            // developers report it; Stripe's reference does not print it, and the app does not match on it).
            return Err(ApiError::invalid(
                "No configuration provided and your test mode default configuration has not been created. Provide \
                 a configuration or create your default by saving your customer portal settings in test mode at \
                 https://dashboard.stripe.com/test/settings/billing/portal.",
                None,
            ));
        }
        let customer = params
            .get("customer")
            .ok_or_else(|| ApiError::missing_param("customer"))?;
        if !self.customers.contains_key(customer) {
            return Err(ApiError::no_such("customer", customer, Some("customer")));
        }
        let id = new_id("bps_");
        let session = json!({
            "id": id,
            "object": "billing_portal.session",
            "configuration": params.get("configuration").unwrap_or("bpc_standin_default"),
            "created": now(),
            "customer": customer,
            "customer_account": null,
            "flow": null,
            "livemode": false,
            "locale": null,
            "on_behalf_of": null,
            "return_url": params.get("return_url"),
            "url": format!("{}/portal/{id}", self.base_url),
        });
        self.portal_sessions.insert(id, session.clone());
        Ok((session, Vec::new()))
    }

    fn list_events(&self, params: &Params) -> Result<Value, ApiError> {
        let limit = match params.get("limit") {
            None => 10,
            Some(value) => value
                .parse::<usize>()
                .ok()
                .filter(|limit| (1..=100).contains(limit))
                .ok_or_else(|| {
                    ApiError::invalid(
                        format!(
                            "Invalid limit: must be an integer between 1 and 100 (got {value})"
                        ),
                        Some("limit"),
                    )
                })?,
        };
        let kind = params.get("type");
        let kinds = params.list("types");
        if kind.is_some() && !kinds.is_empty() {
            return Err(ApiError::invalid(
                "You may only specify one of these parameters: type, types.",
                Some("types"),
            ));
        }
        let created = CreatedFilter::parse(params)?;
        let cutoff = now() - EVENT_RETENTION_SECONDS;
        let matching: Vec<&Value> = self
            .events
            .iter()
            .rev()
            .filter(|event| {
                let at = event["created"].as_i64().unwrap_or_default();
                let event_type = event["type"].as_str().unwrap_or_default();
                at >= cutoff
                    && created.matches(at)
                    && kind.is_none_or(|kind| type_matches(kind, event_type))
                    && (kinds.is_empty() || kinds.iter().any(|kind| type_matches(kind, event_type)))
            })
            .collect();
        let position = |cursor: &str, param: &str| -> Result<Option<usize>, ApiError> {
            if self.event(cursor).is_none() {
                return Err(ApiError::no_such("event", cursor, Some(param)));
            }
            Ok(matching.iter().position(|event| event["id"] == cursor))
        };
        let (page, has_more) = if let Some(cursor) = params.get("starting_after") {
            let start = match position(cursor, "starting_after")? {
                Some(index) => index + 1,
                None => matching.len(),
            };
            let rest = &matching[start.min(matching.len())..];
            (
                rest.iter().take(limit).collect::<Vec<_>>(),
                rest.len() > limit,
            )
        } else if let Some(cursor) = params.get("ending_before") {
            let end = position(cursor, "ending_before")?.unwrap_or(0);
            let before = &matching[..end];
            let from = before.len().saturating_sub(limit);
            (before[from..].iter().collect::<Vec<_>>(), from > 0)
        } else {
            (
                matching.iter().take(limit).collect::<Vec<_>>(),
                matching.len() > limit,
            )
        };
        Ok(json!({
            "object": "list",
            // Each in the version it was created with, whatever the request's `Stripe-Version`.
            "data": page.into_iter().map(|event| render_event(event, &string(&event["api_version"]))).collect::<Vec<_>>(),
            "has_more": has_more,
            "url": "/v1/events",
        }))
    }
}

struct ChargeSpec {
    amount: i64,
    currency: String,
    customer: Option<String>,
    email: String,
    payment_intent: String,
    metadata: Map<String, Value>,
    description: Option<String>,
}

struct InvoiceSpec<'a> {
    subscription: &'a Value,
    billing_reason: &'a str,
    period: (i64, i64),
    paid: bool,
    email: &'a str,
}

/// `created=<ts>` or `created[gt|gte|lt|lte]=<ts>`.
#[derive(Default)]
struct CreatedFilter {
    exact: Option<i64>,
    gt: Option<i64>,
    gte: Option<i64>,
    lt: Option<i64>,
    lte: Option<i64>,
}

impl CreatedFilter {
    fn parse(params: &Params) -> Result<Self, ApiError> {
        let read = |name: &str| -> Result<Option<i64>, ApiError> {
            params
                .get(name)
                .map(|value| {
                    value.parse::<i64>().map_err(|_| {
                        ApiError::invalid(format!("Invalid integer: {value}"), Some(name))
                    })
                })
                .transpose()
        };
        Ok(Self {
            exact: read("created")?,
            gt: read("created[gt]")?,
            gte: read("created[gte]")?,
            lt: read("created[lt]")?,
            lte: read("created[lte]")?,
        })
    }

    fn matches(&self, at: i64) -> bool {
        self.exact.is_none_or(|exact| at == exact)
            && self.gt.is_none_or(|gt| at > gt)
            && self.gte.is_none_or(|gte| at >= gte)
            && self.lt.is_none_or(|lt| at < lt)
            && self.lte.is_none_or(|lte| at <= lte)
    }
}

/// Event type filters accept a trailing `*` wildcard (`checkout.session.*`).
/// The first API version (2025-03-31.basil) with the shapes the stand-in stores: an invoice's subscription under
/// `parent.subscription_details`, billing periods on subscription items.
const BASIL: &str = "2025-03-31";

/// An event as Stripe renders it in `version`: the events list and `GET /v1/events/{id}` use the version the event
/// was created with (the account's default then), webhooks the endpoint's version. Objects are stored in
/// [`API_VERSION`]'s shapes; for versions before basil the invoice and subscription fields the app reads are
/// moved back where those versions had them (Stripe's basil changelog: "invoice.subscription" moved to
/// `parent.subscription_details.subscription`, subscription `current_period_*` moved to the items).
fn render_event(event: &Value, version: &str) -> Value {
    let mut event = event.clone();
    event["api_version"] = json!(version);
    if version < BASIL {
        legacy_shapes(&mut event["data"]["object"]);
    }
    event
}

fn legacy_shapes(object: &mut Value) {
    match object["object"].as_str() {
        Some("invoice") => {
            let parent = object
                .as_object_mut()
                .and_then(|fields| fields.remove("parent"))
                .unwrap_or(Value::Null);
            let details = &parent["subscription_details"];
            object["subscription"] = details["subscription"].clone();
            object["subscription_details"] = json!({"metadata": details["metadata"]});
            object["paid"] = json!(object["status"] == "paid");
        }
        Some("subscription") => {
            let first = object["items"]["data"][0].clone();
            object["current_period_start"] = first["current_period_start"].clone();
            object["current_period_end"] = first["current_period_end"].clone();
            if let Some(items) = object["items"]["data"].as_array_mut() {
                for item in items.iter_mut().filter_map(Value::as_object_mut) {
                    item.remove("current_period_start");
                    item.remove("current_period_end");
                }
            }
        }
        _ => {}
    }
}

fn type_matches(pattern: &str, event_type: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => event_type.starts_with(prefix),
        None => pattern == event_type,
    }
}

fn customer_json(
    id: &str,
    email: Option<&str>,
    name: Option<&str>,
    metadata: Map<String, Value>,
) -> Value {
    json!({
        "id": id,
        "object": "customer",
        "address": null,
        "balance": 0,
        "created": now(),
        "currency": null,
        "default_source": null,
        "delinquent": false,
        "description": null,
        "discount": null,
        "email": email,
        "invoice_prefix": random_alphanumeric(8).to_uppercase(),
        "invoice_settings": {"custom_fields": null, "default_payment_method": null, "footer": null, "rendering_options": null},
        "livemode": false,
        "metadata": metadata,
        "name": name,
        "next_invoice_sequence": 1,
        "phone": null,
        "preferred_locales": [],
        "shipping": null,
        "tax_exempt": "none",
        "test_clock": null,
    })
}

/// The fields of both objects (for objects too big for one `json!`).
fn merged(mut first: Value, second: Value) -> Value {
    if let (Some(first), Value::Object(second)) = (first.as_object_mut(), second) {
        first.extend(second);
    }
    first
}

fn list_json(data: Vec<Value>, url: &str) -> Value {
    json!({
        "object": "list",
        "total_count": data.len(),
        "data": data,
        "has_more": false,
        "url": url,
    })
}

/// One page of a list endpoint (`items` already in the list's order): `limit` (1–100, default 10) and
/// `starting_after`, answered as `{object: "list", data, has_more, url}`.
fn page_of(items: Vec<&Value>, params: &Params, url: &str, kind: &str) -> Result<Value, ApiError> {
    let limit = match params.get("limit") {
        None => 10,
        Some(value) => value
            .parse::<usize>()
            .ok()
            .filter(|limit| (1..=100).contains(limit))
            .ok_or_else(|| {
                ApiError::invalid(
                    format!("Invalid limit: must be an integer between 1 and 100 (got {value})"),
                    Some("limit"),
                )
            })?,
    };
    let start = match params.get("starting_after") {
        None => 0,
        Some(cursor) => {
            items
                .iter()
                .position(|item| item["id"] == cursor)
                .ok_or_else(|| ApiError::no_such(kind, cursor, Some("starting_after")))?
                + 1
        }
    };
    let rest = &items[start..];
    Ok(json!({
        "object": "list",
        "data": rest.iter().take(limit).map(|item| (*item).clone()).collect::<Vec<_>>(),
        "has_more": rest.len() > limit,
        "url": url,
    }))
}

fn balance_transaction(
    amount: i64,
    fee: i64,
    currency: &str,
    source: &str,
    description: &str,
) -> Value {
    json!({
        "id": new_id("txn_"),
        "object": "balance_transaction",
        "amount": amount,
        "available_on": now(),
        "balance_type": "payments",
        "created": now(),
        "currency": currency,
        "description": description,
        "exchange_rate": null,
        "fee": fee,
        "fee_details": [{"amount": fee, "application": null, "currency": currency, "description": "Dispute fee", "type": "stripe_fee"}],
        "net": amount - fee,
        "reporting_category": "dispute",
        "source": source,
        "status": "available",
        "type": "adjustment",
    })
}

fn dispute_evidence() -> Value {
    let mut evidence = Map::new();
    for field in [
        "access_activity_log",
        "billing_address",
        "cancellation_policy",
        "cancellation_policy_disclosure",
        "cancellation_rebuttal",
        "customer_communication",
        "customer_email_address",
        "customer_name",
        "customer_purchase_ip",
        "customer_signature",
        "duplicate_charge_documentation",
        "duplicate_charge_explanation",
        "duplicate_charge_id",
        "product_description",
        "receipt",
        "refund_policy",
        "refund_policy_disclosure",
        "refund_refusal_explanation",
        "service_date",
        "service_documentation",
        "shipping_address",
        "shipping_carrier",
        "shipping_date",
        "shipping_documentation",
        "shipping_tracking_number",
        "uncategorized_file",
        "uncategorized_text",
    ] {
        evidence.insert(field.to_owned(), Value::Null);
    }
    evidence.insert("enhanced_evidence".to_owned(), json!({}));
    Value::Object(evidence)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
        })
}

fn random_alphanumeric(length: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(length)
        .map(char::from)
        .collect()
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", random_alphanumeric(24))
}

fn string(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

/// `€12.50`, `$3.00`, `500 JPY`.
fn money(amount: i64, currency: &str) -> String {
    let zero_decimal = matches!(
        currency,
        "bif"
            | "clp"
            | "djf"
            | "gnf"
            | "jpy"
            | "kmf"
            | "krw"
            | "mga"
            | "pyg"
            | "rwf"
            | "ugx"
            | "vnd"
            | "vuv"
            | "xaf"
            | "xof"
            | "xpf"
    );
    let number = if zero_decimal {
        amount.to_string()
    } else {
        format!("{}.{:02}", amount / 100, (amount % 100).abs())
    };
    match currency {
        "eur" => format!("€{number}"),
        "usd" => format!("${number}"),
        "gbp" => format!("£{number}"),
        _ => format!("{number} {}", currency.to_uppercase()),
    }
}

fn date(timestamp: i64) -> String {
    chrono::DateTime::from_timestamp(timestamp, 0)
        .map(|at| at.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

// ---- API handlers ----

type SharedState = Arc<Inner>;

/// A POST/DELETE API call: authorization, idempotent replay (same key + same parameters → the saved response;
/// same key + other parameters → 400 `idempotency_error`), the change, then delivery of its events.
fn api_call(
    inner: &SharedState,
    headers: &HeaderMap,
    path: &str,
    body: &str,
    change: impl FnOnce(&mut Shared, &Params, &Origin) -> Result<(Value, Vec<String>), ApiError>,
) -> Response {
    let request_id = new_id("req_");
    let params = Params::parse(body);
    let key = headers
        .get("idempotency-key")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let (value, events) = {
        let mut state = inner.lock();
        if let Err(error) = state.authorize(headers) {
            return error.into_response(&request_id);
        }
        if let Some(key) = &key {
            if key.len() > 255 {
                return ApiError::invalid(
                    "Idempotency keys can be at most 255 characters long.",
                    None,
                )
                .into_response(&request_id);
            }
            if let Some(saved) = state.idempotency.get(key) {
                if saved.path != path || saved.fingerprint != params.fingerprint() {
                    return ApiError {
                        status: StatusCode::BAD_REQUEST,
                        kind: "idempotency_error",
                        code: None,
                        message: format!(
                            "Keys for idempotent requests can only be used with the same parameters they were first \
                             used with. Try using a key other than '{key}' if you meant to execute a different request."
                        ),
                        param: None,
                    }
                    .into_response(&request_id);
                }
                let mut response = Json(saved.body.clone()).into_response();
                set_request_id(&mut response, &saved.request_id);
                response
                    .headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
                return response;
            }
        }
        let origin = Origin {
            request_id: Some(request_id.clone()),
            idempotency_key: key.clone(),
        };
        match change(&mut state, &params, &origin) {
            Ok((value, events)) => {
                if let Some(key) = key {
                    state.idempotency.insert(
                        key,
                        SavedResponse {
                            path: path.to_owned(),
                            fingerprint: params.fingerprint(),
                            request_id: request_id.clone(),
                            body: value.clone(),
                        },
                    );
                }
                (value, events)
            }
            Err(error) => return error.into_response(&request_id),
        }
    };
    inner.dispatch(events);
    let mut response = Json(value).into_response();
    set_request_id(&mut response, &request_id);
    response
}

/// A GET API call.
fn api_get(
    inner: &SharedState,
    headers: &HeaderMap,
    query: Option<String>,
    read: impl FnOnce(&Shared, &Params) -> Result<Value, ApiError>,
) -> Response {
    let request_id = new_id("req_");
    let params = Params::parse(query.as_deref().unwrap_or_default());
    let state = inner.lock();
    let result = state
        .authorize(headers)
        .and_then(|()| read(&state, &params));
    drop(state);
    match result {
        Ok(value) => {
            let mut response = Json(value).into_response();
            set_request_id(&mut response, &request_id);
            response
        }
        Err(error) => error.into_response(&request_id),
    }
}

fn lookup(map: &HashMap<String, Value>, kind: &str, id: &str) -> Result<Value, ApiError> {
    map.get(id)
        .cloned()
        .ok_or_else(|| ApiError::no_such(kind, id, None))
}

async fn create_customer(
    State(inner): State<SharedState>,
    headers: HeaderMap,
    body: String,
) -> Response {
    api_call(
        &inner,
        &headers,
        "/v1/customers",
        &body,
        |state, params, origin| state.create_customer(params, origin),
    )
}

async fn get_customer(
    State(inner): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    api_get(&inner, &headers, query, |state, _| {
        // Stripe still answers for a deleted customer, with a stub that says so.
        if state.deleted.contains(&id) {
            return Ok(json!({"id": id, "object": "customer", "deleted": true}));
        }
        lookup(&state.customers, "customer", &id)
    })
}

/// Stripe's delete: the customer is gone; a repeat answers 404 `resource_missing` (callers treat it as done).
async fn delete_customer(
    State(inner): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    // DELETE is idempotent by nature; Stripe ignores an idempotency key on it.
    let mut headers = headers;
    headers.remove("idempotency-key");
    api_call(
        &inner,
        &headers,
        "/v1/customers/{id}",
        "",
        |state, _, origin| state.delete_customer(&id, origin),
    )
}

async fn create_checkout_session(
    State(inner): State<SharedState>,
    headers: HeaderMap,
    body: String,
) -> Response {
    api_call(
        &inner,
        &headers,
        "/v1/checkout/sessions",
        &body,
        |state, params, origin| state.create_checkout_session(params, origin),
    )
}

async fn get_checkout_session(
    State(inner): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    api_get(&inner, &headers, query, |state, params| {
        if state.sessions.contains_key(&id) {
            Ok(state.session_view(&id, params))
        } else {
            Err(ApiError::no_such("checkout.session", &id, None))
        }
    })
}

async fn expire_checkout_session(
    State(inner): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: String,
) -> Response {
    let path = format!("/v1/checkout/sessions/{id}/expire");
    api_call(&inner, &headers, &path, &body, |state, _, origin| {
        state.expire_session(&id, origin)
    })
}

async fn create_portal_session(
    State(inner): State<SharedState>,
    headers: HeaderMap,
    body: String,
) -> Response {
    api_call(
        &inner,
        &headers,
        "/v1/billing_portal/sessions",
        &body,
        |state, params, origin| state.create_portal_session(params, origin),
    )
}

async fn get_subscription(
    State(inner): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    api_get(&inner, &headers, query, |state, _| {
        lookup(&state.subscriptions, "subscription", &id)
    })
}

async fn delete_subscription(
    State(inner): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: String,
) -> Response {
    let path = format!("/v1/subscriptions/{id}");
    api_call(&inner, &headers, &path, &body, |state, _, origin| {
        state.cancel_now(&id, origin)
    })
}

async fn get_invoice(
    State(inner): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    api_get(&inner, &headers, query, |state, params| {
        state.invoice_view(&id, params)
    })
}

async fn list_invoice_payments(
    State(inner): State<SharedState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    api_get(&inner, &headers, query, |state, params| {
        state.list_invoice_payments(params)
    })
}

async fn get_invoice_payment(
    State(inner): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    api_get(&inner, &headers, query, |state, _| {
        lookup(&state.invoice_payments, "invoice_payment", &id)
    })
}

async fn create_refund(
    State(inner): State<SharedState>,
    headers: HeaderMap,
    body: String,
) -> Response {
    api_call(
        &inner,
        &headers,
        "/v1/refunds",
        &body,
        |state, params, origin| state.create_refund(params, origin),
    )
}

async fn list_refunds(
    State(inner): State<SharedState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    api_get(&inner, &headers, query, |state, params| {
        state.list_refunds(params)
    })
}

async fn get_refund(
    State(inner): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    api_get(&inner, &headers, query, |state, _| {
        lookup(&state.refunds, "refund", &id)
    })
}

async fn get_charge(
    State(inner): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    api_get(&inner, &headers, query, |state, params| {
        state.charge_view(&id, params)
    })
}

async fn list_events(
    State(inner): State<SharedState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    api_get(&inner, &headers, query, |state, params| {
        state.list_events(params)
    })
}

async fn get_event(
    State(inner): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    api_get(&inner, &headers, query, |state, _| {
        state
            .event(&id)
            .filter(|event| {
                event["created"].as_i64().unwrap_or_default() >= now() - EVENT_RETENTION_SECONDS
            })
            .map(|event| render_event(event, &string(&event["api_version"])))
            .ok_or_else(|| ApiError::no_such("event", &id, None))
    })
}

async fn unknown_route(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    ApiError {
        status: StatusCode::NOT_FOUND,
        ..ApiError::invalid(
            format!(
                "Unrecognized request URL ({method}: {}). The Stripe stand-in serves only the calls the app makes.",
                uri.path()
            ),
            None,
        )
    }
    .into_response(&new_id("req_"))
}

// ---- Hosted pages ----

fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Stripe stand-in" }
                style {
                    "body{font-family:system-ui,sans-serif;max-width:36rem;margin:2rem auto;padding:0 1rem}"
                    "button{font-size:1rem;padding:.5rem 1rem;margin:.25rem 0}"
                    "li{margin:.75rem 0}"
                }
            }
            body {
                main { (body) }
            }
        }
    }
}

fn closed_page(status: StatusCode, message: &str) -> Response {
    (
        status,
        layout(
            "Checkout",
            html! {
                h1 { "Checkout" }
                p #session-closed role="alert" { (message) }
            },
        ),
    )
        .into_response()
}

async fn checkout_page(State(inner): State<SharedState>, Path(id): Path<String>) -> Response {
    let state = inner.lock();
    let Some(session) = state.sessions.get(&id) else {
        return closed_page(
            StatusCode::NOT_FOUND,
            "This checkout session does not exist.",
        );
    };
    if session.object["status"] != "open" {
        return closed_page(StatusCode::OK, "This checkout session is no longer active.");
    }
    let object = &session.object;
    let currency = string(&object["currency"]);
    let subscription_mode = object["mode"] == "subscription";
    let interval = session
        .lines
        .iter()
        .find_map(|line| state.price(&line.price)?.spec.recurring)
        .map(Interval::as_str);
    let total = money(
        object["amount_total"].as_i64().unwrap_or_default(),
        &currency,
    );
    let known_email = object["customer"]
        .as_str()
        .and_then(|customer| state.customers.get(customer))
        .and_then(|customer| customer["email"].as_str())
        .map(str::to_owned);
    let default_email = object["customer_email"]
        .as_str()
        .unwrap_or("buyer@example.com")
        .to_owned();
    let lines: Vec<(String, i64, String)> = session
        .lines
        .iter()
        .map(|line| {
            (
                state.product_name(&line.price),
                line.quantity,
                money(state.line_amount(line), &currency),
            )
        })
        .collect();
    let cancel_url = object["cancel_url"].as_str().map(str::to_owned);
    drop(state);
    layout(
        "Checkout",
        html! {
            h1 { "Checkout" }
            p #mode { @if subscription_mode { "Subscription" } @else { "One-time payment" } }
            ul #products aria-label="Order summary" {
                @for (name, quantity, amount) in &lines {
                    li .product { span .product-name { (name) } " × " (quantity) " — " span .line-amount { (amount) } }
                }
            }
            p { "Total: " strong #amount { (total) @if let Some(interval) = interval { " per " (interval) } } }
            form method="post" action=(format!("/checkout/pay/{id}")) {
                @if let Some(email) = &known_email {
                    p { "Paying as " span #customer-email { (email) } }
                } @else {
                    p {
                        label for="email" { "Email" }
                        " "
                        input #email type="email" name="email" autocomplete="email" required value=(default_email);
                    }
                }
                p {
                    label for="card" { "Card number" }
                    " "
                    input #card name="card" inputmode="numeric" autocomplete="cc-number" value="4242 4242 4242 4242";
                    " (a Stripe test card: 4000 0000 0000 0259 is paid, then disputed; 4000 0000 0000 1976 meets an inquiry)"
                }
                button #pay type="submit" name="method" value="card" { "Pay" }
                @if !subscription_mode {
                    " "
                    button #pay-later type="submit" name="method" value="bank_debit" { "Pay by bank debit (settles later)" }
                }
            }
            @if let Some(cancel_url) = &cancel_url {
                p { a #cancel href=(cancel_url) { "Cancel" } }
            }
        },
    )
    .into_response()
}

async fn checkout_pay(
    State(inner): State<SharedState>,
    Path(id): Path<String>,
    body: String,
) -> Response {
    let form = Params::parse(&body);
    let method = match form.get("method") {
        Some("bank_debit") => PaymentMethod::BankDebit,
        _ => PaymentMethod::Card,
    };
    let card: String = form
        .get("card")
        .unwrap_or(TEST_CARD)
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let result = {
        let mut state = inner.lock();
        state.complete_session(&id, method, form.get("email"), &card)
    };
    match result {
        Ok((redirect, events)) => {
            inner.dispatch(events);
            Redirect::to(&redirect).into_response()
        }
        Err(message) => closed_page(StatusCode::CONFLICT, &message),
    }
}

async fn checkout_done_page(Path(id): Path<String>) -> Markup {
    layout(
        "Checkout",
        html! {
            h1 { "Payment complete" }
            p #session-complete { "Checkout session " code { (id) } " is complete." }
        },
    )
}

struct PortalRow {
    id: String,
    name: String,
    amount: String,
    status: String,
    period_end: i64,
    cancel_at_period_end: bool,
}

async fn portal_page(State(inner): State<SharedState>, Path(id): Path<String>) -> Response {
    let state = inner.lock();
    let Some(session) = state.portal_sessions.get(&id) else {
        return (
            StatusCode::NOT_FOUND,
            layout(
                "Billing",
                html! { p role="alert" { "This portal session does not exist." } },
            ),
        )
            .into_response();
    };
    let customer = string(&session["customer"]);
    let return_url = session["return_url"].as_str().map(str::to_owned);
    let email = state
        .customers
        .get(&customer)
        .and_then(|customer| customer["email"].as_str())
        .unwrap_or_default()
        .to_owned();
    let mut rows: Vec<PortalRow> = state
        .subscriptions
        .values()
        .filter(|subscription| {
            subscription["customer"] == customer.as_str() && subscription["status"] != "canceled"
        })
        .map(|subscription| {
            let item = &subscription["items"]["data"][0];
            let price_id = string(&item["price"]["id"]);
            let currency = string(&subscription["currency"]);
            PortalRow {
                id: string(&subscription["id"]),
                name: state.product_name(&price_id),
                amount: format!(
                    "{} per {}",
                    money(
                        item["price"]["unit_amount"].as_i64().unwrap_or_default()
                            * item["quantity"].as_i64().unwrap_or(1),
                        &currency
                    ),
                    item["price"]["recurring"]["interval"]
                        .as_str()
                        .unwrap_or("month")
                ),
                status: string(&subscription["status"]),
                period_end: item["current_period_end"].as_i64().unwrap_or_default(),
                cancel_at_period_end: subscription["cancel_at_period_end"] == true,
            }
        })
        .collect();
    rows.sort_by(|left, right| left.id.cmp(&right.id));
    drop(state);
    layout(
        "Billing",
        html! {
            h1 { "Manage your billing" }
            p { "Signed in as " span #customer-email { (email) } }
            h2 { "Current plan" }
            @if rows.is_empty() {
                p #no-subscriptions { "You have no active subscriptions." }
            }
            ul #subscriptions {
                @for row in &rows {
                    li #(format!("subscription-{}", row.id)) .subscription data-subscription=(row.id) {
                        strong .plan-name { (row.name) } " — " (row.amount) " — "
                        span .status { (row.status) }
                        br;
                        @if row.cancel_at_period_end {
                            span .cancels-on { "Cancels on " (date(row.period_end)) }
                            form method="post" action=(format!("/portal/{id}/subscriptions/{}/renew", row.id)) {
                                button #(format!("renew-{}", row.id)) type="submit" { "Don't cancel" }
                            }
                        } @else {
                            span .renews-on { "Renews on " (date(row.period_end)) }
                            form method="post" action=(format!("/portal/{id}/subscriptions/{}/cancel", row.id)) {
                                button #(format!("cancel-{}", row.id)) .cancel-plan type="submit" { "Cancel plan" }
                            }
                        }
                    }
                }
            }
            @if let Some(return_url) = &return_url {
                p { a #return href=(return_url) { "Return to createimage2" } }
            }
        },
    )
    .into_response()
}

async fn portal_cancel(
    State(inner): State<SharedState>,
    Path((id, subscription)): Path<(String, String)>,
) -> Response {
    portal_change(&inner, &id, &subscription, true)
}

async fn portal_renew(
    State(inner): State<SharedState>,
    Path((id, subscription)): Path<(String, String)>,
) -> Response {
    portal_change(&inner, &id, &subscription, false)
}

fn portal_change(inner: &SharedState, id: &str, subscription: &str, cancel: bool) -> Response {
    let result = {
        let mut state = inner.lock();
        let owner = state
            .portal_sessions
            .get(id)
            .map(|session| string(&session["customer"]));
        let subscription_owner = state
            .subscriptions
            .get(subscription)
            .map(|subscription| string(&subscription["customer"]));
        if owner.is_none() || owner != subscription_owner {
            Err("This subscription cannot be managed from this portal session.".to_owned())
        } else if cancel && state.portal_cancel_mode == PortalCancelMode::Immediately {
            state
                .cancel_now(subscription, &Origin::none())
                .map(|(_, events)| events)
                .map_err(|error| error.message)
        } else {
            state
                .set_cancel_at_period_end(subscription, cancel)
                .map(|(_, events)| events)
        }
    };
    match result {
        Ok(events) => {
            inner.dispatch(events);
            Redirect::to(&format!("/portal/{id}")).into_response()
        }
        Err(message) => (
            StatusCode::CONFLICT,
            layout("Billing", html! { p role="alert" { (message) } }),
        )
            .into_response(),
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.message)
    }
}
