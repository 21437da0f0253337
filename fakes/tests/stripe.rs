//! The Stripe stand-in is checked against the app's real Stripe crates: every webhook it delivers is verified and
//! parsed with `stripe_webhook::Webhook::construct_event` (the app's parser), every non-null field it sends must
//! survive a round trip through async-stripe's typed object (so no field name is misspelled or mistyped), and the
//! real async-stripe client talks to its API. A wrong stand-in therefore cannot make a wrong app pass.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Router,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use fakes::stripe::{
    API_VERSION, DISPUTE_CARD, DeliveryFaults, DisputeClose, INQUIRY_CARD, Interval,
    PortalCancelMode, PriceSpec, StripeFake, sign,
};
use serde_json::Value;
use stripe::{IdempotencyKey, RequestStrategy, StripeError, StripeRequest as _};
use stripe_webhook::{EventObject, Webhook, WebhookError};

const KEY: &str = "sk_test_standin_key";
const SECRET: &str = "whsec_test_standin_secret";
const PACK: &str = "price_pack_100";
const PLAN: &str = "price_plan_monthly";

// ---- a tiny webhook endpoint ----

struct Received {
    signature: String,
    body: String,
}

/// Records what the stand-in POSTs; answers 500 to the first `fail_first` requests, then 200.
struct Endpoint {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
    fail_first: Arc<AtomicUsize>,
}

async fn endpoint() -> Endpoint {
    let received = Arc::new(Mutex::new(Vec::new()));
    let fail_first = Arc::new(AtomicUsize::new(0));
    let app = Router::new().route(
        "/webhooks/stripe",
        post({
            let received = received.clone();
            let fail_first = fail_first.clone();
            move |headers: HeaderMap, body: String| async move {
                let signature = headers
                    .get("stripe-signature")
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                received.lock().unwrap().push(Received { signature, body });
                let failing = fail_first
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                        left.checked_sub(1)
                    })
                    .is_ok();
                if failing {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/webhooks/stripe", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Endpoint {
        url,
        received,
        fail_first,
    }
}

/// A delivered event: the raw JSON and what the app's parser made of it.
struct Delivered {
    raw: Value,
    event: stripe_webhook::Event,
}

impl Endpoint {
    /// Everything received so far, each verified and parsed as the app does, and checked for faithfulness.
    fn delivered(&self) -> Vec<Delivered> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(|received| parse(&received.body, &received.signature))
            .collect()
    }

    fn clear(&self) {
        self.received.lock().unwrap().clear();
    }
}

fn parse(body: &str, signature: &str) -> Delivered {
    let raw: Value = serde_json::from_str(body).unwrap();
    let event = Webhook::construct_event(body, signature, SECRET).unwrap_or_else(|error| {
        // miniserde (the app's path) gives no field path; serde with `detailed-errors` does.
        let detail = serde_json::from_str::<stripe_webhook::Event>(body).err();
        panic!(
            "async-stripe rejected a {} event: {error:?} ({detail:?})",
            raw["type"]
        )
    });
    let typed = serde_json::to_value(&event.data.object).unwrap();
    assert_faithful(
        &raw["data"]["object"],
        &typed,
        raw["type"].as_str().unwrap(),
    );
    assert_eq!(raw["api_version"], API_VERSION);
    assert_eq!(raw["object"], "event");
    Delivered { raw, event }
}

/// Every non-null field sent is a field of async-stripe's type (a misspelled name would be silently dropped by
/// the parser and come back missing).
fn assert_faithful(sent: &Value, typed: &Value, path: &str) {
    match sent {
        Value::Object(fields) => {
            for (name, value) in fields {
                // Stripe's embedded lists carry `total_count`, which async-stripe's `List` drops.
                let list_count =
                    name == "total_count" && fields.get("object") == Some(&Value::from("list"));
                if value.is_null() || list_count {
                    continue;
                }
                let round_tripped = &typed[name];
                assert!(
                    !round_tripped.is_null(),
                    "{path}.{name} = {value} is not a field of async-stripe's type (got {typed})"
                );
                assert_faithful(value, round_tripped, &format!("{path}.{name}"));
            }
        }
        Value::Array(items) => {
            let typed_items = typed.as_array().map(Vec::as_slice).unwrap_or_default();
            assert_eq!(
                items.len(),
                typed_items.len(),
                "{path}: list lengths differ"
            );
            for (index, (item, typed_item)) in items.iter().zip(typed_items).enumerate() {
                assert_faithful(item, typed_item, &format!("{path}[{index}]"));
            }
        }
        _ => {}
    }
}

fn of_type<'a>(delivered: &'a [Delivered], kind: &str) -> Vec<&'a Delivered> {
    delivered
        .iter()
        .filter(|delivered| delivered.raw["type"] == kind)
        .collect()
}

fn one<'a>(delivered: &'a [Delivered], kind: &str) -> &'a Delivered {
    let found = of_type(delivered, kind);
    let types: Vec<&Value> = delivered
        .iter()
        .map(|delivered| &delivered.raw["type"])
        .collect();
    assert_eq!(found.len(), 1, "expected one {kind} among {types:?}");
    found[0]
}

// ---- the stand-in and plain HTTP helpers ----

async fn fake_with_endpoint() -> (StripeFake, Endpoint) {
    let fake = StripeFake::start(KEY).await.unwrap();
    fake.add_price(PriceSpec {
        id: PACK.to_owned(),
        unit_amount: 500,
        currency: "eur".to_owned(),
        recurring: None,
    });
    fake.add_price_with_product(
        PriceSpec {
            id: PLAN.to_owned(),
            unit_amount: 1000,
            currency: "eur".to_owned(),
            recurring: Some(Interval::Month),
        },
        "Pro plan",
    );
    fake.set_retry_policy(4, Duration::from_millis(10));
    let endpoint = endpoint().await;
    fake.set_webhook_endpoint(&endpoint.url, SECRET);
    (fake, endpoint)
}

async fn post_form(
    fake: &StripeFake,
    path: &str,
    idempotency_key: Option<&str>,
    form: &[(&str, &str)],
) -> (u16, HeaderMap, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{}{path}", fake.base_url()))
        .bearer_auth(KEY)
        .form(form);
    if let Some(key) = idempotency_key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.json().await.unwrap())
}

/// async-stripe's own client, pointed at the stand-in.
fn typed_client(fake: &StripeFake) -> stripe::Client {
    // The workspace links both of rustls' crypto providers; a client must be told which one to use.
    let _ = rustls::crypto::ring::default_provider().install_default();
    stripe::ClientBuilder::new(KEY)
        .url(fake.base_url())
        .build()
        .unwrap()
}

async fn get_json(fake: &StripeFake, path_and_query: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(format!("{}{path_and_query}", fake.base_url()))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn create_session(fake: &StripeFake, form: &[(&str, &str)]) -> Value {
    let (status, _, session) = post_form(fake, "/v1/checkout/sessions", None, form).await;
    assert_eq!(status, 200, "{session}");
    session
}

async fn pack_session(fake: &StripeFake, customer: &str) -> String {
    let session = create_session(
        fake,
        &[
            ("mode", "payment"),
            ("customer", customer),
            ("line_items[0][price]", PACK),
            ("line_items[0][quantity]", "1"),
            (
                "success_url",
                "https://app.test/billing/done?session={CHECKOUT_SESSION_ID}",
            ),
        ],
    )
    .await;
    session["id"].as_str().unwrap().to_owned()
}

async fn plan_session(fake: &StripeFake, customer: &str) -> String {
    let session = create_session(
        fake,
        &[
            ("mode", "subscription"),
            ("customer", customer),
            ("client_reference_id", "user-42"),
            ("line_items[0][price]", PLAN),
            ("line_items[0][quantity]", "1"),
            ("subscription_data[metadata][user_id]", "42"),
            (
                "success_url",
                "https://app.test/billing/done?session={CHECKOUT_SESSION_ID}",
            ),
        ],
    )
    .await;
    session["id"].as_str().unwrap().to_owned()
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn unix_now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

// ---- tests ----

#[tokio::test]
async fn a_paid_payment_mode_session_is_delivered_as_a_completed_event_that_async_stripe_parses_as_paid()
 {
    let (fake, endpoint) = fake_with_endpoint().await;
    let customer = fake.add_customer("ada@example.com");
    let session = create_session(
        &fake,
        &[
            ("mode", "payment"),
            ("customer", &customer),
            ("client_reference_id", "user-7"),
            ("line_items[0][price]", PACK),
            ("line_items[0][quantity]", "2"),
            ("metadata[purchase]", "p-1"),
            ("payment_intent_data[metadata][purchase]", "p-1"),
            (
                "success_url",
                "https://app.test/billing/done?session={CHECKOUT_SESSION_ID}",
            ),
            ("cancel_url", "https://app.test/billing"),
        ],
    )
    .await;
    let id = session["id"].as_str().unwrap();
    assert!(id.starts_with("cs_test_"), "{id}");
    assert_eq!(session["object"], "checkout.session");
    assert_eq!(session["status"], "open");
    assert_eq!(session["payment_status"], "unpaid");
    assert_eq!(session["amount_total"], 1000);
    assert_eq!(session["currency"], "eur");
    assert_eq!(
        session["url"],
        format!("{}/checkout/pay/{id}", fake.base_url())
    );
    assert!(session["expires_at"].as_i64().unwrap() > session["created"].as_i64().unwrap());

    let redirect = fake.pay_session(id).unwrap();
    assert_eq!(
        redirect,
        format!("https://app.test/billing/done?session={id}")
    );
    fake.wait_for_deliveries().await;
    let delivered = endpoint.delivered();

    let completed = one(&delivered, "checkout.session.completed");
    let EventObject::CheckoutSessionCompleted(parsed) = &completed.event.data.object else {
        panic!("not a CheckoutSessionCompleted");
    };
    assert_eq!(parsed.id.as_str(), id);
    assert_eq!(parsed.payment_status.as_str(), "paid");
    assert_eq!(parsed.mode.as_str(), "payment");
    assert_eq!(parsed.status.as_ref().unwrap().as_str(), "complete");
    assert_eq!(parsed.client_reference_id.as_deref(), Some("user-7"));
    assert_eq!(parsed.metadata.as_ref().unwrap()["purchase"], "p-1");
    assert_eq!(parsed.customer.as_ref().unwrap().id().as_str(), customer);
    assert_eq!(parsed.amount_total, Some(1000));
    let payment_intent = parsed
        .payment_intent
        .as_ref()
        .unwrap()
        .id()
        .as_str()
        .to_owned();
    assert!(payment_intent.starts_with("pi_"));
    assert!(parsed.url.is_none());
    assert_eq!(completed.event.type_.as_str(), "checkout.session.completed");
    assert!(completed.event.request.is_some());

    let charge = one(&delivered, "charge.succeeded");
    let EventObject::ChargeSucceeded(charge) = &charge.event.data.object else {
        panic!("not a ChargeSucceeded");
    };
    assert_eq!(charge.amount, 1000);
    assert_eq!(charge.status.as_str(), "succeeded");
    assert_eq!(
        charge.payment_intent.as_ref().unwrap().id().as_str(),
        payment_intent
    );
    assert_eq!(charge.metadata["purchase"], "p-1");
    assert_eq!(fake.session_charge(id).as_deref(), Some(charge.id.as_str()));

    let (status, retrieved) = get_json(&fake, &format!("/v1/checkout/sessions/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(retrieved["payment_status"], "paid");
    assert!(
        fake.deliveries()
            .iter()
            .all(|delivery| delivery.succeeded())
    );
}

#[tokio::test]
async fn a_paid_subscription_session_delivers_subscription_created_completed_and_invoice_paid() {
    let (fake, endpoint) = fake_with_endpoint().await;
    let customer = fake.add_customer("grace@example.com");
    let id = plan_session(&fake, &customer).await;
    fake.pay_session(&id).unwrap();
    fake.wait_for_deliveries().await;
    let delivered = endpoint.delivered();

    let created = one(&delivered, "customer.subscription.created");
    let EventObject::CustomerSubscriptionCreated(subscription) = &created.event.data.object else {
        panic!("not a CustomerSubscriptionCreated");
    };
    // Checkout creates the subscription incomplete and activates it once the first invoice is paid.
    assert_eq!(subscription.status.as_str(), "incomplete");
    assert_eq!(subscription.customer.id().as_str(), customer);
    assert_eq!(subscription.metadata["user_id"], "42");
    let item = &subscription.items.data[0];
    assert_eq!(item.price.id.as_str(), PLAN);
    assert_eq!(
        item.price.recurring.as_ref().unwrap().interval.as_str(),
        "month"
    );
    assert!(item.current_period_end > item.current_period_start);
    let subscription_id = subscription.id.as_str().to_owned();

    let updated = one(&delivered, "customer.subscription.updated");
    let EventObject::CustomerSubscriptionUpdated(active) = &updated.event.data.object else {
        panic!("not a CustomerSubscriptionUpdated");
    };
    assert_eq!(active.status.as_str(), "active");
    assert_eq!(
        updated.raw["data"]["previous_attributes"]["status"],
        "incomplete"
    );
    assert!(updated.event.data.previous_attributes.is_some());

    let completed = one(&delivered, "checkout.session.completed");
    let EventObject::CheckoutSessionCompleted(session) = &completed.event.data.object else {
        panic!("not a CheckoutSessionCompleted");
    };
    assert_eq!(session.mode.as_str(), "subscription");
    assert_eq!(session.payment_status.as_str(), "paid");
    assert_eq!(
        session.subscription.as_ref().unwrap().id().as_str(),
        subscription_id
    );
    assert_eq!(session.client_reference_id.as_deref(), Some("user-42"));

    let paid = one(&delivered, "invoice.paid");
    let EventObject::InvoicePaid(invoice) = &paid.event.data.object else {
        panic!("not an InvoicePaid");
    };
    assert_eq!(
        invoice.billing_reason.as_ref().unwrap().as_str(),
        "subscription_create"
    );
    assert_eq!(invoice.status.as_ref().unwrap().as_str(), "paid");
    assert_eq!(invoice.amount_paid, 1000);
    assert_eq!(invoice.customer.as_ref().unwrap().id().as_str(), customer);
    let parent = invoice
        .parent
        .as_ref()
        .unwrap()
        .subscription_details
        .as_ref()
        .unwrap();
    assert_eq!(parent.subscription.id().as_str(), subscription_id);
    assert_eq!(parent.metadata.as_ref().unwrap()["user_id"], "42");
    let line = &invoice.lines.data[0];
    let price = &line
        .pricing
        .as_ref()
        .unwrap()
        .price_details
        .as_ref()
        .unwrap()
        .price;
    assert_eq!(price.id().as_str(), PLAN);
    assert_eq!(line.period.start, item.current_period_start);
    assert_eq!(line.period.end, item.current_period_end);
    // `payments` is includable only (Stripe's invoice reference; "List all payments for an invoice"): a webhook
    // never carries it, the invoice payments list does.
    assert!(
        invoice.payments.is_none(),
        "invoice.payments is sent only when expanded"
    );
    let client = typed_client(&fake);
    let payments = stripe_billing::invoice_payment::ListInvoicePayment::new()
        .invoice(invoice.id.as_ref().unwrap().as_str())
        .send(&client)
        .await
        .unwrap();
    assert_eq!(payments.data.len(), 1);
    let intent = payments.data[0]
        .payment
        .payment_intent
        .as_ref()
        .unwrap()
        .id()
        .as_str()
        .to_owned();
    let charge = fake.session_charge(&id).unwrap();
    assert_eq!(fake.charge(&charge).unwrap()["payment_intent"], intent);
    let expanded =
        stripe_billing::invoice::RetrieveInvoice::new(invoice.id.as_ref().unwrap().as_str())
            .expand(vec!["payments".to_owned()])
            .send(&client)
            .await
            .unwrap();
    assert_eq!(
        expanded.payments.unwrap().data[0].id.as_str(),
        payments.data[0].id.as_str(),
        "expand[]=payments includes them"
    );
    assert_eq!(
        session
            .invoice
            .as_ref()
            .unwrap()
            .id()
            .as_ref()
            .unwrap()
            .as_str(),
        invoice.id.as_ref().unwrap().as_str()
    );
    assert_eq!(of_type(&delivered, "invoice.payment_succeeded").len(), 1);
    assert_eq!(of_type(&delivered, "charge.succeeded").len(), 1);

    let (status, retrieved) =
        get_json(&fake, &format!("/v1/subscriptions/{subscription_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(retrieved["status"], "active");
    assert_eq!(
        retrieved["latest_invoice"],
        paid.raw["data"]["object"]["id"]
    );
}

#[tokio::test]
async fn renewals_failed_payments_refunds_and_disputes_parse_as_their_typed_events() {
    let (fake, endpoint) = fake_with_endpoint().await;
    let customer = fake.add_customer("alan@example.com");
    let id = plan_session(&fake, &customer).await;
    fake.pay_session(&id).unwrap();
    fake.wait_for_deliveries().await;
    let session = fake.checkout_session(&id).unwrap();
    let subscription_id = session["subscription"].as_str().unwrap().to_owned();
    let first_period = fake.subscription(&subscription_id).unwrap()["items"]["data"][0].clone();
    endpoint.clear();

    let renewal_invoice = fake.renew_subscription(&subscription_id).unwrap().unwrap();
    fake.wait_for_deliveries().await;
    let delivered = endpoint.delivered();
    let EventObject::InvoicePaid(invoice) = &one(&delivered, "invoice.paid").event.data.object
    else {
        panic!("not an InvoicePaid");
    };
    assert_eq!(invoice.id.as_ref().unwrap().as_str(), renewal_invoice);
    assert_eq!(
        invoice.billing_reason.as_ref().unwrap().as_str(),
        "subscription_cycle"
    );
    // The paid-for period is on the lines; the invoice's own period is the previous one (Stripe's quirk).
    assert_eq!(
        invoice.lines.data[0].period.start,
        first_period["current_period_end"].as_i64().unwrap()
    );
    assert_eq!(
        invoice.period_end,
        first_period["current_period_end"].as_i64().unwrap()
    );
    let EventObject::CustomerSubscriptionUpdated(renewed) =
        &one(&delivered, "customer.subscription.updated")
            .event
            .data
            .object
    else {
        panic!("not a CustomerSubscriptionUpdated");
    };
    assert_eq!(
        renewed.items.data[0].current_period_start,
        first_period["current_period_end"].as_i64().unwrap()
    );
    endpoint.clear();

    let failed_invoice = fake.fail_invoice(&subscription_id).unwrap();
    fake.wait_for_deliveries().await;
    let delivered = endpoint.delivered();
    let EventObject::InvoicePaymentFailed(invoice) =
        &one(&delivered, "invoice.payment_failed").event.data.object
    else {
        panic!("not an InvoicePaymentFailed");
    };
    assert_eq!(invoice.id.as_ref().unwrap().as_str(), failed_invoice);
    assert_eq!(invoice.amount_paid, 0);
    assert_eq!(invoice.amount_remaining, 1000);
    assert_eq!(invoice.status.as_ref().unwrap().as_str(), "open");
    let EventObject::CustomerSubscriptionUpdated(past_due) =
        &one(&delivered, "customer.subscription.updated")
            .event
            .data
            .object
    else {
        panic!("not a CustomerSubscriptionUpdated");
    };
    assert_eq!(past_due.status.as_str(), "past_due");
    endpoint.clear();

    fake.pay_invoice(&failed_invoice).unwrap();
    fake.wait_for_deliveries().await;
    let delivered = endpoint.delivered();
    assert!(matches!(
        one(&delivered, "invoice.paid").event.data.object,
        EventObject::InvoicePaid(_)
    ));
    assert_eq!(
        fake.subscription(&subscription_id).unwrap()["status"],
        "active"
    );
    endpoint.clear();

    let charge_id = fake.session_charge(&id).unwrap();
    let refund_id = fake.refund(&charge_id, 300).unwrap();
    assert!(refund_id.starts_with("re_"));
    assert!(
        fake.refund(&charge_id, 800).is_err(),
        "more than the unrefunded amount"
    );
    fake.wait_for_deliveries().await;
    let delivered = endpoint.delivered();
    let refunded = one(&delivered, "charge.refunded");
    let EventObject::ChargeRefunded(charge) = &refunded.event.data.object else {
        panic!("not a ChargeRefunded");
    };
    assert_eq!(charge.id.as_str(), charge_id);
    assert_eq!(charge.amount_refunded, 300);
    assert!(!charge.refunded);
    // Since API 2022-11-15 a charge carries its refunds only when expanded, and webhooks never expand
    // (docs.stripe.com/changelog/2022-11-15/deprecates-charges-auto-expand); the refunds list has them.
    assert!(
        charge.refunds.is_none(),
        "charge.refunded does not embed the refunds"
    );
    let client = typed_client(&fake);
    let listed = stripe_core::refund::ListRefund::new()
        .charge(charge_id.as_str())
        .send(&client)
        .await
        .unwrap();
    assert_eq!(listed.data.len(), 1);
    assert_eq!(listed.data[0].id.as_str(), refund_id);
    assert_eq!(listed.data[0].amount, 300);
    let expanded = stripe_core::charge::RetrieveCharge::new(charge_id.as_str())
        .expand(vec!["refunds".to_owned()])
        .send(&client)
        .await
        .unwrap();
    assert_eq!(expanded.refunds.unwrap().data[0].id.as_str(), refund_id);
    let plain = stripe_core::charge::RetrieveCharge::new(charge_id.as_str())
        .send(&client)
        .await
        .unwrap();
    assert!(plain.refunds.is_none(), "not included unless expanded");
    assert_eq!(
        refunded.raw["data"]["previous_attributes"]["amount_refunded"],
        0
    );
    let EventObject::RefundCreated(refund) = &one(&delivered, "refund.created").event.data.object
    else {
        panic!("not a RefundCreated");
    };
    assert_eq!(refund.amount, 300);
    endpoint.clear();

    let dispute_id = fake.open_dispute(&charge_id).unwrap();
    fake.close_dispute(&dispute_id, DisputeClose::Won).unwrap();
    fake.wait_for_deliveries().await;
    let delivered = endpoint.delivered();
    let EventObject::ChargeDisputeCreated(dispute) =
        &one(&delivered, "charge.dispute.created").event.data.object
    else {
        panic!("not a ChargeDisputeCreated");
    };
    assert_eq!(dispute.id.as_str(), dispute_id);
    assert_eq!(dispute.charge.id().as_str(), charge_id);
    assert_eq!(dispute.status.as_str(), "needs_response");
    assert_eq!(dispute.amount, 1000);
    let EventObject::ChargeDisputeClosed(closed) =
        &one(&delivered, "charge.dispute.closed").event.data.object
    else {
        panic!("not a ChargeDisputeClosed");
    };
    assert_eq!(closed.status.as_str(), "won");
    assert_eq!(
        of_type(&delivered, "charge.dispute.funds_withdrawn").len(),
        1
    );
    assert_eq!(
        of_type(&delivered, "charge.dispute.funds_reinstated").len(),
        1
    );
    endpoint.clear();

    let pack = pack_session(&fake, &customer).await;
    fake.pay_session(&pack).unwrap();
    let lost = fake
        .open_dispute(&fake.session_charge(&pack).unwrap())
        .unwrap();
    fake.close_dispute(&lost, DisputeClose::Lost).unwrap();
    fake.wait_for_deliveries().await;
    let delivered = endpoint.delivered();
    let EventObject::ChargeDisputeClosed(closed) =
        &one(&delivered, "charge.dispute.closed").event.data.object
    else {
        panic!("not a ChargeDisputeClosed");
    };
    assert_eq!(closed.status.as_str(), "lost");
}

#[tokio::test]
async fn checkout_session_creation_is_idempotent_per_key_and_parameters() {
    let (fake, _endpoint) = fake_with_endpoint().await;
    let customer = fake.add_customer("idem@example.com");
    let form = [
        ("mode", "payment"),
        ("customer", customer.as_str()),
        ("line_items[0][price]", PACK),
        ("line_items[0][quantity]", "1"),
    ];
    let (status, first_headers, first) =
        post_form(&fake, "/v1/checkout/sessions", Some("attempt-1"), &form).await;
    assert_eq!(status, 200, "{first}");
    assert!(first_headers.get("idempotent-replayed").is_none());
    let (status, headers, again) =
        post_form(&fake, "/v1/checkout/sessions", Some("attempt-1"), &form).await;
    assert_eq!(status, 200);
    assert_eq!(again, first);
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(headers["request-id"], first_headers["request-id"]);

    let mut changed = form;
    changed[3] = ("line_items[0][quantity]", "2");
    let (status, _, error) =
        post_form(&fake, "/v1/checkout/sessions", Some("attempt-1"), &changed).await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["error"]["type"], "idempotency_error");

    let (status, _, other) =
        post_form(&fake, "/v1/checkout/sessions", Some("attempt-2"), &form).await;
    assert_eq!(status, 200);
    assert_ne!(other["id"], first["id"]);
    assert_eq!(fake.checkout_sessions().len(), 2);
}

#[tokio::test]
async fn bad_requests_get_stripe_errors() {
    let (fake, _endpoint) = fake_with_endpoint().await;
    let expect =
        async |form: &[(&str, &str)], status: u16, code: Option<&str>, param: Option<&str>| {
            let (actual, _, body) = post_form(&fake, "/v1/checkout/sessions", None, form).await;
            assert_eq!(actual, status, "{body}");
            assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
            assert_eq!(body["error"]["code"].as_str(), code, "{body}");
            assert_eq!(body["error"]["param"].as_str(), param, "{body}");
            assert!(body["error"]["message"].as_str().is_some());
        };
    let pack = [
        ("mode", "payment"),
        ("line_items[0][price]", "price_nope"),
        ("line_items[0][quantity]", "1"),
    ];
    expect(
        &pack,
        400,
        Some("resource_missing"),
        Some("line_items[0][price]"),
    )
    .await;
    expect(
        &[("mode", "payment"), ("line_items[0][price]", PACK)],
        400,
        Some("parameter_missing"),
        Some("line_items[0][quantity]"),
    )
    .await;
    expect(
        &[
            ("mode", "payment"),
            ("line_items[0][price]", PLAN),
            ("line_items[0][quantity]", "1"),
        ],
        400,
        None,
        Some("line_items[0][price]"),
    )
    .await;
    expect(
        &[
            ("mode", "subscription"),
            ("line_items[0][price]", PACK),
            ("line_items[0][quantity]", "1"),
        ],
        400,
        None,
        Some("line_items"),
    )
    .await;
    expect(
        &[("mode", "payment"), ("colour", "blue")],
        400,
        Some("parameter_unknown"),
        Some("colour"),
    )
    .await;
    expect(
        &[("line_items[0][price]", PACK)],
        400,
        Some("parameter_missing"),
        Some("mode"),
    )
    .await;
    expect(
        &[
            ("mode", "payment"),
            ("customer", "cus_nope"),
            ("line_items[0][price]", PACK),
            ("line_items[0][quantity]", "1"),
        ],
        400,
        Some("resource_missing"),
        Some("customer"),
    )
    .await;

    let (status, missing) = get_json(&fake, "/v1/checkout/sessions/cs_test_nope").await;
    assert_eq!(status, 404);
    assert_eq!(missing["error"]["code"], "resource_missing");

    let unauthenticated = reqwest::Client::new()
        .post(format!("{}/v1/checkout/sessions", fake.base_url()))
        .form(&[("mode", "payment")])
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
    let wrong_key = reqwest::Client::new()
        .get(format!("{}/v1/events", fake.base_url()))
        .bearer_auth("sk_test_wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_key.status(), 401);
    let (status, unknown) = get_json(&fake, "/v1/payment_intents").await;
    assert_eq!(status, 404);
    assert_eq!(unknown["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn the_real_async_stripe_client_drives_customers_checkout_portal_subscriptions_and_events() {
    // The workspace links both of rustls' crypto providers; a client must be told which one to use.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (fake, _endpoint) = fake_with_endpoint().await;
    // With and without a trailing slash: async-stripe appends `v1/...` to the base.
    let client = stripe::ClientBuilder::new(KEY)
        .url(fake.base_url())
        .build()
        .unwrap();
    let slashed = stripe::ClientBuilder::new(KEY)
        .url(format!("{}/", fake.base_url()))
        .build()
        .unwrap();

    let customer = stripe_core::customer::CreateCustomer::new()
        .email("client@example.com")
        .metadata(HashMap::from([("user_id".to_owned(), "9".to_owned())]))
        .send(&client)
        .await
        .unwrap();
    assert_eq!(customer.email.as_deref(), Some("client@example.com"));
    assert_eq!(
        fake.customer(customer.id.as_str()).unwrap()["metadata"]["user_id"],
        "9"
    );

    let create = stripe_checkout::checkout_session::CreateCheckoutSession::new()
        .mode(stripe_checkout::CheckoutSessionMode::Subscription)
        .customer(customer.id.as_str())
        .client_reference_id("user-9")
        .line_items(vec![
            stripe_checkout::checkout_session::CreateCheckoutSessionLineItems {
                price: Some(PLAN.to_owned()),
                quantity: Some(1),
                ..Default::default()
            },
        ])
        .metadata(HashMap::from([("user_id".to_owned(), "9".to_owned())]))
        .subscription_data(
            stripe_checkout::checkout_session::CreateCheckoutSessionSubscriptionData {
                metadata: Some(HashMap::from([("user_id".to_owned(), "9".to_owned())])),
                ..Default::default()
            },
        )
        .success_url("https://app.test/billing/done?session={CHECKOUT_SESSION_ID}")
        .cancel_url("https://app.test/billing");
    let key =
        || RequestStrategy::Idempotent(IdempotencyKey::new("checkout-user-9-attempt-1").unwrap());
    let session = create
        .customize()
        .request_strategy(key())
        .send(&client)
        .await
        .unwrap();
    let replayed = create
        .customize()
        .request_strategy(key())
        .send(&slashed)
        .await
        .unwrap();
    assert_eq!(replayed.id, session.id);
    assert_eq!(session.mode.as_str(), "subscription");
    assert_eq!(session.status.as_ref().unwrap().as_str(), "open");
    assert_eq!(session.amount_total, Some(1000));
    assert_eq!(session.metadata.as_ref().unwrap()["user_id"], "9");
    assert!(session.url.as_ref().unwrap().starts_with(&fake.base_url()));
    assert_eq!(fake.checkout_sessions().len(), 1);

    let other = create
        .clone()
        .client_reference_id("someone-else")
        .customize()
        .request_strategy(key())
        .send(&client)
        .await;
    match other {
        Err(StripeError::Stripe(error, 400)) => {
            assert_eq!(error.type_.as_str(), "idempotency_error")
        }
        other => panic!("expected an idempotency error, got {other:?}"),
    }
    let unknown_price = stripe_checkout::checkout_session::CreateCheckoutSession::new()
        .mode(stripe_checkout::CheckoutSessionMode::Payment)
        .line_items(vec![
            stripe_checkout::checkout_session::CreateCheckoutSessionLineItems {
                price: Some("price_nope".to_owned()),
                quantity: Some(1),
                ..Default::default()
            },
        ])
        .send(&client)
        .await;
    match unknown_price {
        Err(StripeError::Stripe(error, 400)) => {
            assert_eq!(error.code.as_ref().unwrap().as_str(), "resource_missing");
            assert_eq!(error.param.as_deref(), Some("line_items[0][price]"));
        }
        other => panic!("expected resource_missing, got {other:?}"),
    }

    fake.pay_session(session.id.as_str()).unwrap();
    let paid = stripe_checkout::checkout_session::RetrieveCheckoutSession::new(session.id.clone())
        .expand(vec!["line_items".to_owned()])
        .send(&client)
        .await
        .unwrap();
    assert_eq!(paid.payment_status.as_str(), "paid");
    let line_items = paid.line_items.as_ref().unwrap();
    assert_eq!(line_items.data[0].price.as_ref().unwrap().id.as_str(), PLAN);
    let subscription_id = paid.subscription.as_ref().unwrap().id().clone();
    let subscription =
        stripe_billing::subscription::RetrieveSubscription::new(subscription_id.clone())
            .send(&client)
            .await
            .unwrap();
    assert_eq!(subscription.status.as_str(), "active");
    assert_eq!(subscription.metadata["user_id"], "9");
    assert!(!subscription.cancel_at_period_end);

    let portal = stripe_billing::billing_portal_session::CreateBillingPortalSession::new()
        .customer(customer.id.as_str())
        .return_url("https://app.test/account")
        .send(&client)
        .await
        .unwrap();
    assert!(portal.id.as_str().starts_with("bps_"));
    assert_eq!(
        portal.url,
        format!("{}/portal/{}", fake.base_url(), portal.id.as_str())
    );
    assert_eq!(
        portal.return_url.as_deref(),
        Some("https://app.test/account")
    );

    // Reconciliation as the app would do it: page through /v1/events, newest first.
    let mut listed = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut request = stripe_core::event::ListEvent::new().limit(2);
        if let Some(cursor) = &cursor {
            request = request.starting_after(cursor.clone());
        }
        let page = request.send(&client).await.unwrap();
        listed.extend(page.data.iter().map(|event| event.id.as_str().to_owned()));
        cursor = page.data.last().map(|event| event.id.as_str().to_owned());
        if !page.has_more {
            break;
        }
    }
    let mut all: Vec<String> = fake
        .events()
        .iter()
        .map(|event| event["id"].as_str().unwrap().to_owned())
        .collect();
    all.reverse();
    assert_eq!(listed, all);
    let completed = stripe_core::event::ListEvent::new()
        .type_("checkout.session.completed")
        .send(&client)
        .await
        .unwrap();
    assert_eq!(completed.data.len(), 1);
    assert_eq!(completed.data[0].api_version.as_deref(), Some(API_VERSION));
    let event = stripe_core::event::RetrieveEvent::new(completed.data[0].id.clone())
        .send(&client)
        .await
        .unwrap();
    assert_eq!(event.type_.as_str(), "checkout.session.completed");

    let deleted = stripe_core::customer::DeleteCustomer::new(customer.id.clone())
        .send(&client)
        .await
        .unwrap();
    assert_eq!(deleted.id, customer.id);
    assert_eq!(
        fake.deleted_customers(),
        vec![customer.id.as_str().to_owned()]
    );
    assert_eq!(
        fake.subscription(subscription_id.as_str()).unwrap()["status"],
        "canceled"
    );
}

#[tokio::test]
async fn events_are_listed_newest_first_with_cursors_filters_and_a_thirty_day_window() {
    let (fake, _endpoint) = fake_with_endpoint().await;
    for email in ["a@example.com", "b@example.com", "c@example.com"] {
        let (status, _, _) = post_form(&fake, "/v1/customers", None, &[("email", email)]).await;
        assert_eq!(status, 200);
    }
    let customer = fake.add_customer("d@example.com");
    let session = pack_session(&fake, &customer).await;
    fake.pay_session(&session).unwrap();
    let all: Vec<String> = fake
        .events()
        .iter()
        .rev()
        .map(|event| event["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        all.len(),
        5,
        "3 customer.created, charge.succeeded, checkout.session.completed"
    );

    let (status, first) = get_json(&fake, "/v1/events?limit=2").await;
    assert_eq!(status, 200);
    assert_eq!(first["object"], "list");
    assert_eq!(first["url"], "/v1/events");
    assert_eq!(first["has_more"], true);
    assert_eq!(first["data"][0]["id"], all[0].as_str());
    assert_eq!(first["data"][1]["id"], all[1].as_str());
    let (_, second) = get_json(
        &fake,
        &format!("/v1/events?limit=2&starting_after={}", all[1]),
    )
    .await;
    assert_eq!(second["data"][0]["id"], all[2].as_str());
    assert_eq!(second["has_more"], true);
    let (_, last) = get_json(
        &fake,
        &format!("/v1/events?limit=2&starting_after={}", all[3]),
    )
    .await;
    assert_eq!(last["data"].as_array().unwrap().len(), 1);
    assert_eq!(last["has_more"], false);
    let (_, before) = get_json(
        &fake,
        &format!("/v1/events?limit=2&ending_before={}", all[3]),
    )
    .await;
    assert_eq!(before["data"][0]["id"], all[1].as_str());
    assert_eq!(before["data"][1]["id"], all[2].as_str());

    let (_, customers) = get_json(&fake, "/v1/events?type=customer.created").await;
    assert_eq!(customers["data"].as_array().unwrap().len(), 3);
    let (_, wildcard) = get_json(&fake, "/v1/events?type=checkout.session.*").await;
    assert_eq!(wildcard["data"].as_array().unwrap().len(), 1);
    let (_, several) = get_json(
        &fake,
        "/v1/events?types[]=charge.succeeded&types[]=checkout.session.completed",
    )
    .await;
    assert_eq!(several["data"].as_array().unwrap().len(), 2);
    let (_, future) = get_json(
        &fake,
        &format!("/v1/events?created[gte]={}", unix_now() + 60),
    )
    .await;
    assert!(future["data"].as_array().unwrap().is_empty());
    let (status, bad_cursor) = get_json(&fake, "/v1/events?starting_after=evt_nope").await;
    assert_eq!(status, 400);
    assert_eq!(bad_cursor["error"]["code"], "resource_missing");

    let oldest = all.last().unwrap();
    fake.backdate_event(oldest, Duration::from_secs(31 * 24 * 60 * 60))
        .unwrap();
    let (_, recent) = get_json(&fake, "/v1/events?limit=100").await;
    assert_eq!(recent["data"].as_array().unwrap().len(), 4);
    let (status, _) = get_json(&fake, &format!("/v1/events/{oldest}")).await;
    assert_eq!(status, 404);
    let (status, newest) = get_json(&fake, &format!("/v1/events/{}", all[0])).await;
    assert_eq!(status, 200);
    assert_eq!(newest["type"], "checkout.session.completed");
}

#[tokio::test]
async fn a_dropped_event_is_never_delivered_but_reconciliation_through_the_events_list_finds_it() {
    let (fake, endpoint) = fake_with_endpoint().await;
    let customer = fake.add_customer("drop@example.com");
    let session = pack_session(&fake, &customer).await;
    fake.set_delivery(DeliveryFaults {
        drop_next: 2,
        ..DeliveryFaults::default()
    });
    fake.pay_session(&session).unwrap();
    fake.wait_for_deliveries().await;
    assert!(endpoint.delivered().is_empty());
    assert!(fake.deliveries().is_empty());

    let (_, listed) = get_json(&fake, "/v1/events?type=checkout.session.completed").await;
    let event = &listed["data"][0];
    assert_eq!(event["data"]["object"]["id"], session.as_str());
    assert_eq!(event["data"]["object"]["payment_status"], "paid");
    assert_eq!(event["pending_webhooks"], 1);

    // The knob is used up: the next action is delivered again.
    let second = pack_session(&fake, &customer).await;
    fake.pay_session(&second).unwrap();
    fake.wait_for_deliveries().await;
    assert_eq!(endpoint.delivered().len(), 2);
    let (_, listed) = get_json(&fake, "/v1/events?type=checkout.session.completed&limit=1").await;
    assert_eq!(listed["data"][0]["pending_webhooks"], 0);
}

#[tokio::test]
async fn duplicate_delivery_posts_every_event_twice_with_the_same_id() {
    let (fake, endpoint) = fake_with_endpoint().await;
    let customer = fake.add_customer("dup@example.com");
    let session = pack_session(&fake, &customer).await;
    fake.set_delivery(DeliveryFaults {
        duplicate: true,
        ..DeliveryFaults::default()
    });
    fake.pay_session(&session).unwrap();
    fake.wait_for_deliveries().await;
    let delivered = endpoint.delivered();
    assert_eq!(delivered.len(), 4);
    let completed = of_type(&delivered, "checkout.session.completed");
    assert_eq!(completed.len(), 2);
    assert_eq!(completed[0].event.id, completed[1].event.id);
    let deliveries = fake.deliveries();
    assert_eq!(
        deliveries
            .iter()
            .filter(|delivery| delivery.duplicate)
            .count(),
        2
    );
}

#[tokio::test]
async fn reorder_delivers_the_events_of_one_action_in_reverse() {
    let (fake, endpoint) = fake_with_endpoint().await;
    let customer = fake.add_customer("reorder@example.com");
    let session = plan_session(&fake, &customer).await;
    fake.set_delivery(DeliveryFaults {
        reorder: true,
        ..DeliveryFaults::default()
    });
    fake.pay_session(&session).unwrap();
    fake.wait_for_deliveries().await;
    let received: Vec<Value> = endpoint
        .delivered()
        .iter()
        .map(|delivered| delivered.raw["id"].clone())
        .collect();
    let mut recorded: Vec<Value> = fake
        .events()
        .iter()
        .map(|event| event["id"].clone())
        .collect();
    recorded.reverse();
    assert_eq!(received, recorded);
    // So `customer.subscription.updated` (active) arrives before `customer.subscription.created` (incomplete).
    let types: Vec<String> = endpoint
        .delivered()
        .iter()
        .map(|delivered| delivered.raw["type"].as_str().unwrap().to_owned())
        .collect();
    let updated = types
        .iter()
        .position(|kind| kind == "customer.subscription.updated")
        .unwrap();
    let created = types
        .iter()
        .position(|kind| kind == "customer.subscription.created")
        .unwrap();
    assert!(updated < created, "{types:?}");
}

#[tokio::test]
async fn a_delay_holds_delivery_back() {
    let (fake, endpoint) = fake_with_endpoint().await;
    // Two seconds: far more than the steps between the answer and the check below take, even on a loaded machine.
    fake.set_delivery(DeliveryFaults {
        delay: Some(Duration::from_secs(2)),
        ..DeliveryFaults::default()
    });
    let (status, _, _) = post_form(
        &fake,
        "/v1/customers",
        None,
        &[("email", "late@example.com")],
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        endpoint.delivered().is_empty(),
        "delivered before its delay"
    );
    fake.wait_for_deliveries().await;
    assert_eq!(endpoint.delivered().len(), 1);
}

#[tokio::test]
async fn failed_deliveries_are_retried_until_the_endpoint_answers_2xx() {
    let (fake, endpoint) = fake_with_endpoint().await;
    endpoint.fail_first.store(2, Ordering::SeqCst);
    let (status, _, customer) = post_form(
        &fake,
        "/v1/customers",
        Some("signup-1"),
        &[("email", "retry@example.com")],
    )
    .await;
    assert_eq!(status, 200);
    fake.wait_for_deliveries().await;
    let deliveries = fake.deliveries();
    let statuses: Vec<Option<u16>> = deliveries.iter().map(|delivery| delivery.status).collect();
    assert_eq!(statuses, vec![Some(500), Some(500), Some(200)]);
    let attempts: Vec<u32> = deliveries.iter().map(|delivery| delivery.attempt).collect();
    assert_eq!(attempts, vec![1, 2, 3]);
    let delivered = endpoint.delivered();
    assert_eq!(delivered.len(), 3);
    let EventObject::CustomerCreated(created) = &delivered[2].event.data.object else {
        panic!("not a CustomerCreated");
    };
    assert_eq!(created.id.as_str(), customer["id"].as_str().unwrap());
    let request = delivered[2].event.request.as_ref().unwrap();
    assert_eq!(request.idempotency_key.as_deref(), Some("signup-1"));
    assert!(request.id.as_deref().unwrap().starts_with("req_"));

    // An endpoint that never answers 2xx gets the bounded number of attempts.
    endpoint.fail_first.store(100, Ordering::SeqCst);
    fake.redeliver(deliveries[0].event_id.as_str()).unwrap();
    fake.wait_for_deliveries().await;
    assert_eq!(fake.deliveries().len(), 3 + 4);
}

#[tokio::test]
async fn signatures_verify_and_the_bad_signature_knob_and_stale_timestamps_are_rejected() {
    let (fake, endpoint) = fake_with_endpoint().await;
    let (status, _, _) = post_form(
        &fake,
        "/v1/customers",
        None,
        &[("email", "sig@example.com")],
    )
    .await;
    assert_eq!(status, 200);
    fake.wait_for_deliveries().await;
    let good = fake.deliveries().pop().unwrap();
    assert!(good.signature.starts_with("t="));
    assert!(
        good.payload.contains('\n'),
        "Stripe sends pretty-printed JSON"
    );
    Webhook::construct_event(&good.payload, &good.signature, SECRET).unwrap();

    // The public helper makes the same header format for crafted requests.
    let now = unix_now();
    let crafted = sign(&good.payload, SECRET, now);
    assert_eq!(
        crafted,
        Webhook::generate_test_header(&good.payload, SECRET, Some(now))
    );
    Webhook::construct_event(&good.payload, &crafted, SECRET).unwrap();
    let stale = sign(&good.payload, SECRET, now - 301);
    assert!(matches!(
        Webhook::construct_event(&good.payload, &stale, SECRET),
        Err(WebhookError::BadTimestamp(_))
    ));
    let reserialized =
        serde_json::to_string(&serde_json::from_str::<Value>(&good.payload).unwrap()).unwrap();
    assert!(matches!(
        Webhook::construct_event(&reserialized, &good.signature, SECRET),
        Err(WebhookError::BadSignature)
    ));

    fake.set_delivery(DeliveryFaults {
        bad_signature: true,
        ..DeliveryFaults::default()
    });
    fake.redeliver(good.event_id.as_str()).unwrap();
    fake.wait_for_deliveries().await;
    let bad = fake.deliveries().pop().unwrap();
    assert_eq!(bad.event_id, good.event_id);
    assert!(matches!(
        Webhook::construct_event(&bad.payload, &bad.signature, SECRET),
        Err(WebhookError::BadSignature)
    ));
    assert_eq!(endpoint.received.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn the_hosted_checkout_page_pays_and_redirects_to_the_success_url() {
    let (fake, endpoint) = fake_with_endpoint().await;
    let session = create_session(
        &fake,
        &[
            ("mode", "payment"),
            ("customer_creation", "always"),
            ("line_items[0][price]", PACK),
            ("line_items[0][quantity]", "1"),
            (
                "success_url",
                "https://app.test/billing/done?session={CHECKOUT_SESSION_ID}",
            ),
            ("cancel_url", "https://app.test/billing"),
        ],
    )
    .await;
    let id = session["id"].as_str().unwrap();
    let browser = no_redirects();
    let page = browser
        .get(session["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("pack 100"), "{html}");
    assert!(html.contains("€5.00"), "{html}");
    assert!(html.contains(r#"id="pay""#), "{html}");
    assert!(
        html.contains(r#"id="cancel" href="https://app.test/billing""#),
        "{html}"
    );
    assert!(html.contains(r#"<label for="email">"#), "{html}");

    let paid = browser
        .post(session["url"].as_str().unwrap())
        .form(&[("method", "card"), ("email", "walk-in@example.com")])
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status(), 303);
    assert_eq!(
        paid.headers()["location"],
        format!("https://app.test/billing/done?session={id}").as_str()
    );
    fake.wait_for_deliveries().await;
    let delivered = endpoint.delivered();
    let EventObject::CheckoutSessionCompleted(completed) =
        &one(&delivered, "checkout.session.completed")
            .event
            .data
            .object
    else {
        panic!("not a CheckoutSessionCompleted");
    };
    assert_eq!(completed.payment_status.as_str(), "paid");
    let details = completed.customer_details.as_ref().unwrap();
    assert_eq!(details.email.as_deref(), Some("walk-in@example.com"));
    let EventObject::CustomerCreated(customer) =
        &one(&delivered, "customer.created").event.data.object
    else {
        panic!("not a CustomerCreated");
    };
    assert_eq!(completed.customer.as_ref().unwrap().id(), &customer.id);

    let again = browser
        .get(session["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert!(again.text().await.unwrap().contains("no longer active"));
    let twice = browser
        .post(session["url"].as_str().unwrap())
        .form(&[("method", "card")])
        .send()
        .await
        .unwrap();
    assert_eq!(twice.status(), 409);
}

#[tokio::test]
async fn a_delayed_payment_completes_unpaid_then_succeeds_or_fails() {
    let (fake, endpoint) = fake_with_endpoint().await;
    let customer = fake.add_customer("bank@example.com");
    let succeeding = pack_session(&fake, &customer).await;
    let page_url = fake.checkout_session(&succeeding).unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let html = no_redirects()
        .get(&page_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains(r#"id="pay-later""#), "{html}");
    let paid = no_redirects()
        .post(&page_url)
        .form(&[("method", "bank_debit")])
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status(), 303);
    fake.wait_for_deliveries().await;
    let delivered = endpoint.delivered();
    let EventObject::CheckoutSessionCompleted(completed) =
        &one(&delivered, "checkout.session.completed")
            .event
            .data
            .object
    else {
        panic!("not a CheckoutSessionCompleted");
    };
    assert_eq!(completed.payment_status.as_str(), "unpaid");
    assert_eq!(completed.status.as_ref().unwrap().as_str(), "complete");
    assert!(of_type(&delivered, "charge.succeeded").is_empty());
    endpoint.clear();

    fake.settle_async_payment(&succeeding, true).unwrap();
    fake.wait_for_deliveries().await;
    let delivered = endpoint.delivered();
    let EventObject::CheckoutSessionAsyncPaymentSucceeded(settled) =
        &one(&delivered, "checkout.session.async_payment_succeeded")
            .event
            .data
            .object
    else {
        panic!("not a CheckoutSessionAsyncPaymentSucceeded");
    };
    assert_eq!(settled.payment_status.as_str(), "paid");
    assert!(fake.session_charge(&succeeding).is_some());
    assert!(fake.settle_async_payment(&succeeding, true).is_err());
    endpoint.clear();

    let failing = pack_session(&fake, &customer).await;
    fake.pay_session_async(&failing).unwrap();
    fake.settle_async_payment(&failing, false).unwrap();
    fake.wait_for_deliveries().await;
    let delivered = endpoint.delivered();
    let EventObject::CheckoutSessionAsyncPaymentFailed(failed) =
        &one(&delivered, "checkout.session.async_payment_failed")
            .event
            .data
            .object
    else {
        panic!("not a CheckoutSessionAsyncPaymentFailed");
    };
    assert_eq!(failed.payment_status.as_str(), "unpaid");
    assert!(fake.session_charge(&failing).is_none());
}

#[tokio::test]
async fn an_expired_session_can_no_longer_be_paid() {
    let (fake, endpoint) = fake_with_endpoint().await;
    let customer = fake.add_customer("late@example.com");
    let session = pack_session(&fake, &customer).await;
    fake.expire_session(&session).unwrap();
    assert!(fake.pay_session(&session).is_err());
    fake.wait_for_deliveries().await;
    let delivered = endpoint.delivered();
    let EventObject::CheckoutSessionExpired(expired) = &one(&delivered, "checkout.session.expired")
        .event
        .data
        .object
    else {
        panic!("not a CheckoutSessionExpired");
    };
    assert_eq!(expired.status.as_ref().unwrap().as_str(), "expired");

    let other = pack_session(&fake, &customer).await;
    let (status, _, expired) = post_form(
        &fake,
        &format!("/v1/checkout/sessions/{other}/expire"),
        None,
        &[],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(expired["status"], "expired");
}

#[tokio::test]
async fn the_portal_cancel_button_emits_the_subscription_event() {
    let (fake, endpoint) = fake_with_endpoint().await;
    let customer = fake.add_customer("portal@example.com");
    let session = plan_session(&fake, &customer).await;
    fake.pay_session(&session).unwrap();
    fake.wait_for_deliveries().await;
    let subscription = fake.checkout_session(&session).unwrap()["subscription"]
        .as_str()
        .unwrap()
        .to_owned();
    endpoint.clear();

    let (status, _, portal) = post_form(
        &fake,
        "/v1/billing_portal/sessions",
        None,
        &[
            ("customer", &customer),
            ("return_url", "https://app.test/account"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{portal}");
    assert_eq!(portal["object"], "billing_portal.session");
    let portal_url = portal["url"].as_str().unwrap().to_owned();
    let browser = no_redirects();
    let html = browser
        .get(&portal_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("Pro plan"), "{html}");
    assert!(
        html.contains(&format!(r#"id="cancel-{subscription}""#)),
        "{html}"
    );
    assert!(
        html.contains(r#"id="return" href="https://app.test/account""#),
        "{html}"
    );

    let cancelled = browser
        .post(format!("{portal_url}/subscriptions/{subscription}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), 303);
    fake.wait_for_deliveries().await;
    let delivered = endpoint.delivered();
    let updated = one(&delivered, "customer.subscription.updated");
    let EventObject::CustomerSubscriptionUpdated(parsed) = &updated.event.data.object else {
        panic!("not a CustomerSubscriptionUpdated");
    };
    assert!(parsed.cancel_at_period_end);
    assert_eq!(parsed.status.as_str(), "active");
    assert_eq!(
        parsed.cancel_at,
        Some(parsed.items.data[0].current_period_end)
    );
    assert_eq!(
        parsed
            .cancellation_details
            .as_ref()
            .unwrap()
            .reason
            .as_ref()
            .unwrap()
            .as_str(),
        "cancellation_requested"
    );
    assert_eq!(
        updated.raw["data"]["previous_attributes"]["cancel_at_period_end"],
        false
    );
    let html = browser
        .get(&portal_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("Cancels on"), "{html}");
    endpoint.clear();

    // At the end of the period the subscription ends instead of renewing.
    assert_eq!(fake.renew_subscription(&subscription).unwrap(), None);
    fake.wait_for_deliveries().await;
    let delivered = endpoint.delivered();
    let EventObject::CustomerSubscriptionDeleted(ended) =
        &one(&delivered, "customer.subscription.deleted")
            .event
            .data
            .object
    else {
        panic!("not a CustomerSubscriptionDeleted");
    };
    assert_eq!(ended.status.as_str(), "canceled");
    endpoint.clear();

    // With immediate cancellation configured, the button deletes the subscription.
    fake.set_portal_cancel_mode(PortalCancelMode::Immediately);
    let second = plan_session(&fake, &customer).await;
    fake.pay_session(&second).unwrap();
    let second_subscription = fake.checkout_session(&second).unwrap()["subscription"]
        .as_str()
        .unwrap()
        .to_owned();
    fake.wait_for_deliveries().await;
    endpoint.clear();
    let cancelled = browser
        .post(format!(
            "{portal_url}/subscriptions/{second_subscription}/cancel"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), 303);
    fake.wait_for_deliveries().await;
    let delivered = endpoint.delivered();
    assert!(matches!(
        one(&delivered, "customer.subscription.deleted")
            .event
            .data
            .object,
        EventObject::CustomerSubscriptionDeleted(_)
    ));
}

#[tokio::test]
async fn customers_are_created_read_and_deleted_as_before() {
    let (fake, endpoint) = fake_with_endpoint().await;
    let (status, _, created) = post_form(
        &fake,
        "/v1/customers",
        None,
        &[
            ("email", "old@example.com"),
            ("name", "Old Friend"),
            ("metadata[user_id]", "3"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("cus_"));
    assert_eq!(fake.customer(&id).unwrap()["email"], "old@example.com");
    let (status, read) = get_json(&fake, &format!("/v1/customers/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(read["name"], "Old Friend");

    let session = plan_session(&fake, &id).await;
    fake.pay_session(&session).unwrap();
    let delete = |id: String| {
        let url = format!("{}/v1/customers/{id}", fake.base_url());
        async move {
            reqwest::Client::new()
                .delete(url)
                .bearer_auth(KEY)
                .send()
                .await
                .unwrap()
        }
    };
    let deleted = delete(id.clone()).await;
    assert_eq!(deleted.status(), 200);
    let body: Value = deleted.json().await.unwrap();
    assert_eq!(body["deleted"], true);
    assert_eq!(fake.deleted_customers(), vec![id.clone()]);
    assert!(fake.customer(&id).is_none());
    assert_eq!(delete(id.clone()).await.status(), 404);
    let (status, stub) = get_json(&fake, &format!("/v1/customers/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(stub["deleted"], true);
    fake.wait_for_deliveries().await;
    let delivered = endpoint.delivered();
    assert!(matches!(
        one(&delivered, "customer.deleted").event.data.object,
        EventObject::CustomerDeleted(_)
    ));
    assert!(matches!(
        one(&delivered, "customer.subscription.deleted")
            .event
            .data
            .object,
        EventObject::CustomerSubscriptionDeleted(_)
    ));
}

#[tokio::test]
async fn refunds_are_made_by_charge_or_payment_intent_and_listed_but_never_embedded_in_the_charge()
{
    let (fake, endpoint) = fake_with_endpoint().await;
    let customer = fake.add_customer("rita@example.com");
    let pack = pack_session(&fake, &customer).await;
    fake.pay_session(&pack).unwrap();
    let charge = fake.session_charge(&pack).unwrap();
    let intent = fake.charge(&charge).unwrap()["payment_intent"]
        .as_str()
        .unwrap()
        .to_owned();
    fake.wait_for_deliveries().await;
    endpoint.clear();

    // As an operator refunding from the dashboard: part by charge, then the rest by payment intent.
    let (status, _, partial) = post_form(
        &fake,
        "/v1/refunds",
        Some("refund-1"),
        &[("charge", &charge), ("amount", "200")],
    )
    .await;
    assert_eq!(status, 200, "{partial}");
    assert_eq!(partial["amount"], 200);
    assert_eq!(partial["status"], "succeeded");
    let (status, _, rest) = post_form(
        &fake,
        "/v1/refunds",
        None,
        &[
            ("payment_intent", &intent),
            ("reason", "requested_by_customer"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{rest}");
    assert_eq!(rest["amount"], 300, "without an amount, all that is left");
    assert_eq!(fake.charge(&charge).unwrap()["refunded"], true);

    let (status, _, again) = post_form(&fake, "/v1/refunds", None, &[("charge", &charge)]).await;
    assert_eq!(status, 400);
    assert_eq!(again["error"]["code"], "charge_already_refunded");
    let (status, _, neither) = post_form(&fake, "/v1/refunds", None, &[("amount", "1")]).await;
    assert_eq!(status, 400);
    assert_eq!(neither["error"]["type"], "invalid_request_error");

    fake.wait_for_deliveries().await;
    let delivered = endpoint.delivered();
    assert_eq!(of_type(&delivered, "refund.created").len(), 2);
    for refunded in of_type(&delivered, "charge.refunded") {
        assert!(
            refunded.raw["data"]["object"].get("refunds").is_none(),
            "a webhook's charge carries no refunds list"
        );
        assert!(
            refunded.raw["data"]["previous_attributes"]
                .get("refunds")
                .is_none()
        );
    }
    let client = typed_client(&fake);
    let by_intent = stripe_core::refund::ListRefund::new()
        .payment_intent(intent.as_str())
        .limit(1)
        .send(&client)
        .await
        .unwrap();
    assert_eq!(by_intent.data.len(), 1, "one page of one");
    assert!(by_intent.has_more);
    assert_eq!(
        by_intent.data[0].id.as_str(),
        rest["id"].as_str().unwrap(),
        "newest first"
    );
    let next = stripe_core::refund::ListRefund::new()
        .payment_intent(intent.as_str())
        .starting_after(by_intent.data[0].id.as_str())
        .send(&client)
        .await
        .unwrap();
    assert_eq!(next.data[0].id.as_str(), partial["id"].as_str().unwrap());
    assert!(!next.has_more);
}

#[tokio::test]
async fn stripes_test_cards_open_a_chargeback_or_an_inquiry_and_disputes_close_with_every_status_stripe_has()
 {
    let (fake, endpoint) = fake_with_endpoint().await;
    let customer = fake.add_customer("dora@example.com");
    let browser = no_redirects();
    let mut opened = Vec::new();
    for card in [DISPUTE_CARD, INQUIRY_CARD, DISPUTE_CARD, DISPUTE_CARD] {
        let pack = pack_session(&fake, &customer).await;
        let url = fake.checkout_session(&pack).unwrap()["url"]
            .as_str()
            .unwrap()
            .to_owned();
        let page = browser
            .get(&url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(page.contains(r#"name="card""#), "{page}");
        let paid = browser
            .post(&url)
            .form(&[("method", "card"), ("card", card)])
            .send()
            .await
            .unwrap();
        assert_eq!(paid.status(), 303);
        fake.wait_for_deliveries().await;
        let delivered = endpoint.delivered();
        let EventObject::ChargeDisputeCreated(dispute) =
            &one(&delivered, "charge.dispute.created").event.data.object
        else {
            panic!("not a ChargeDisputeCreated");
        };
        assert_eq!(
            dispute.charge.id().as_str(),
            fake.session_charge(&pack).unwrap()
        );
        let withdrawn = of_type(&delivered, "charge.dispute.funds_withdrawn").len();
        if card == INQUIRY_CARD {
            assert_eq!(dispute.status.as_str(), "warning_needs_response");
            assert_eq!(withdrawn, 0, "an inquiry withdraws nothing");
        } else {
            assert_eq!(dispute.status.as_str(), "needs_response");
            assert_eq!(withdrawn, 1);
        }
        opened.push(dispute.id.as_str().to_owned());
        endpoint.clear();
    }

    let closes = [
        DisputeClose::Lost,
        DisputeClose::WarningClosed,
        DisputeClose::Won,
        DisputeClose::Prevented { refund: true },
    ];
    assert!(
        fake.close_dispute(&opened[1], DisputeClose::Won).is_err(),
        "an inquiry does not close as won"
    );
    assert!(
        fake.close_dispute(&opened[0], DisputeClose::WarningClosed)
            .is_err(),
        "a chargeback does not close as warning_closed"
    );
    for (dispute, how) in opened.iter().zip(closes) {
        fake.close_dispute(dispute, how).unwrap();
        fake.wait_for_deliveries().await;
        let delivered = endpoint.delivered();
        let EventObject::ChargeDisputeClosed(closed) =
            &one(&delivered, "charge.dispute.closed").event.data.object
        else {
            panic!("not a ChargeDisputeClosed");
        };
        let expected = match how {
            DisputeClose::Won => "won",
            DisputeClose::Lost => "lost",
            DisputeClose::WarningClosed => "warning_closed",
            DisputeClose::Prevented { .. } => "prevented",
        };
        assert_eq!(closed.status.as_str(), expected);
        assert!(
            !matches!(closed.status, stripe_core::DisputeStatus::Unknown(_)),
            "async-stripe knows {expected}"
        );
        let refunds = of_type(&delivered, "refund.created").len();
        assert_eq!(
            refunds,
            usize::from(expected == "prevented"),
            "a prevented dispute is settled by refunding the cardholder"
        );
        assert!(
            fake.close_dispute(dispute, DisputeClose::Lost).is_err(),
            "closed once"
        );
        endpoint.clear();
    }
}

#[tokio::test]
async fn events_are_listed_in_the_api_version_they_were_created_with_and_delivered_in_the_endpoints()
 {
    let (fake, endpoint) = fake_with_endpoint().await;
    let customer = fake.add_customer("olga@example.com");
    let id = plan_session(&fake, &customer).await;
    fake.pay_session(&id).unwrap();
    let subscription = fake.checkout_session(&id).unwrap()["subscription"]
        .as_str()
        .unwrap()
        .to_owned();
    fake.wait_for_deliveries().await;
    endpoint.clear();

    fake.set_account_api_version("2024-06-20");
    let invoice = fake.renew_subscription(&subscription).unwrap().unwrap();
    fake.wait_for_deliveries().await;
    let delivered = endpoint.delivered();
    let paid = one(&delivered, "invoice.paid");
    assert_eq!(
        paid.raw["api_version"], API_VERSION,
        "the endpoint's version"
    );
    assert_eq!(
        paid.raw["data"]["object"]["parent"]["subscription_details"]["subscription"],
        subscription.as_str()
    );

    let (status, listed) = get_json(&fake, "/v1/events?type=invoice.paid&limit=1").await;
    assert_eq!(status, 200);
    let event = &listed["data"][0];
    assert_eq!(event["data"]["object"]["id"], invoice.as_str());
    assert_eq!(
        event["api_version"], "2024-06-20",
        "the version it was created with"
    );
    let object = &event["data"]["object"];
    assert!(object.get("parent").is_none(), "no parent before basil");
    assert_eq!(object["subscription"], subscription.as_str());
    let (_, one_event) = get_json(
        &fake,
        &format!("/v1/events/{}", event["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(one_event["api_version"], "2024-06-20");
}

/// Whether `pointer` names a field present in `value` (a `null` value counts: the field exists).
fn has_path(value: &Value, pointer: &str) -> bool {
    let mut here = value;
    for segment in pointer.trim_start_matches('/').split('/') {
        here = match here {
            Value::Object(fields) => match fields.get(segment) {
                Some(next) => next,
                None => return false,
            },
            Value::Array(items) => match segment.parse::<usize>().ok().and_then(|i| items.get(i)) {
                Some(next) => next,
                None => return false,
            },
            // A nullable parent (e.g. `metadata: null` in an example) still has the field.
            Value::Null => return true,
            _ => return false,
        };
    }
    true
}

/// Every field `jobs/src/billing.rs` reads, by object (keep in step with it, and with docs/contracts.md).
const FIELDS_THE_APP_READS: &[(&str, &str)] = &[
    ("event", "/id"),
    ("event", "/type"),
    ("event", "/created"),
    ("event", "/api_version"),
    ("event", "/data/object"),
    ("checkout.session", "/id"),
    ("checkout.session", "/mode"),
    ("checkout.session", "/subscription"),
    ("checkout.session", "/client_reference_id"),
    ("checkout.session", "/metadata"),
    ("checkout.session", "/customer"),
    ("checkout.session", "/payment_status"),
    ("checkout.session", "/amount_total"),
    ("checkout.session", "/currency"),
    ("checkout.session", "/payment_intent"),
    ("invoice", "/id"),
    ("invoice", "/customer"),
    ("invoice", "/amount_paid"),
    ("invoice", "/currency"),
    ("invoice", "/parent/subscription_details/metadata"),
    ("invoice", "/parent/subscription_details/subscription"),
    ("invoice_payment", "/status"),
    ("invoice_payment", "/payment/type"),
    ("subscription", "/id"),
    ("subscription", "/metadata"),
    ("subscription", "/customer"),
    ("subscription", "/status"),
    ("subscription", "/items/data/0/current_period_end"),
    ("charge", "/id"),
    ("charge", "/payment_intent"),
    ("refund", "/id"),
    ("refund", "/amount"),
    ("refund", "/status"),
    ("refund", "/payment_intent"),
    ("refund", "/charge"),
    ("dispute", "/id"),
    ("dispute", "/status"),
    ("dispute", "/payment_intent"),
    ("dispute", "/charge"),
];

#[tokio::test]
async fn every_field_the_app_reads_is_in_stripes_published_objects_and_in_the_stand_ins() {
    // Stripe's own example objects (stripe/openapi fixtures3.json; provenance inside the file).
    let published: Value =
        serde_json::from_str(include_str!("fixtures/stripe-objects.json")).unwrap();
    let published = &published["resources"];
    for (object, pointer) in FIELDS_THE_APP_READS {
        assert!(
            has_path(&published[object], pointer),
            "{object}{pointer} is not in Stripe's published {object}"
        );
    }
    // `invoice_payment.payment.payment_intent` is null in the fixture and so left out of it; Stripe's reference
    // ("List all payments for an invoice", docs.stripe.com/api/invoice-payment/list, read 2026-12-06) shows
    // `"payment": {"type": "payment_intent", "payment_intent": "pi_…"}`, and async-stripe types it.

    // The stand-in's objects, as the app receives them, carry the same fields.
    let (fake, endpoint) = fake_with_endpoint().await;
    let customer = fake.add_customer("fay@example.com");
    let plan = plan_session(&fake, &customer).await;
    fake.pay_session(&plan).unwrap();
    let pack = pack_session(&fake, &customer).await;
    fake.pay_session_with_card(&pack, DISPUTE_CARD).unwrap();
    let charge = fake.session_charge(&pack).unwrap();
    let dispute = fake.events().iter().find_map(|event| {
        (event["type"] == "charge.dispute.created")
            .then(|| event["data"]["object"]["id"].as_str().unwrap().to_owned())
    });
    fake.close_dispute(&dispute.unwrap(), DisputeClose::Lost)
        .unwrap();
    let plan_charge = fake.session_charge(&plan).unwrap();
    fake.refund(&plan_charge, 100).unwrap();
    fake.wait_for_deliveries().await;
    let delivered = endpoint.delivered();
    let object_of = |kind: &str| one_object(&delivered, kind);
    let mut objects: Vec<(&str, Value)> = vec![
        ("event", one(&delivered, "invoice.paid").raw.clone()),
        (
            "checkout.session",
            of_type(&delivered, "checkout.session.completed")[0].raw["data"]["object"].clone(),
        ),
        ("invoice", object_of("invoice.paid")),
        ("subscription", object_of("customer.subscription.created")),
        ("charge", object_of("charge.refunded")),
        ("refund", object_of("refund.created")),
        ("dispute", object_of("charge.dispute.closed")),
    ];
    let invoice = object_of("invoice.paid");
    let (_, payments) = get_json(
        &fake,
        &format!(
            "/v1/invoice_payments?invoice={}",
            invoice["id"].as_str().unwrap()
        ),
    )
    .await;
    objects.push(("invoice_payment", payments["data"][0].clone()));
    for (object, pointer) in FIELDS_THE_APP_READS {
        let (_, value) = objects.iter().find(|(name, _)| name == object).unwrap();
        assert!(
            has_path(value, pointer),
            "the stand-in's {object} lacks {pointer}: {value}"
        );
    }
    assert!(
        payments["data"][0]["payment"]["payment_intent"]
            .as_str()
            .is_some_and(|intent| intent.starts_with("pi_"))
    );

    // Includable fields (Stripe's reference: "includable"; not sent unless expanded) never arrive unasked.
    for (object, field) in [
        ("charge", "refunds"),
        ("invoice", "payments"),
        ("checkout.session", "line_items"),
    ] {
        let (_, value) = objects.iter().find(|(name, _)| *name == object).unwrap();
        assert!(
            value.get(field).is_none(),
            "{object}.{field} is sent only when expanded"
        );
    }
    let (_, plain) = get_json(&fake, &format!("/v1/charges/{charge}")).await;
    assert!(plain.get("refunds").is_none());
    let (_, expanded) = get_json(&fake, &format!("/v1/charges/{charge}?expand[]=refunds")).await;
    assert_eq!(expanded["refunds"]["object"], "list");
}

fn one_object(delivered: &[Delivered], kind: &str) -> Value {
    one(delivered, kind).raw["data"]["object"].clone()
}
