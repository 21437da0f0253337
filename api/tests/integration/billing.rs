//! Billing through the Stripe stand-in: checkout, signed webhooks, event processing, reconciliation,
//! refunds and disputes. Every credit effect must happen exactly once.

use fakes::stripe::{DISPUTE_CARD, DeliveryFaults, DisputeClose, INQUIRY_CARD};
use queue::{EnqueueOptions, enqueue_with};
use testkit::{Browser, STRIPE_WEBHOOK_SECRET, TestApp};

use crate::support::{metric, sign_in};

async fn balance(app: &TestApp, email: &str) -> (i64, i64) {
    sqlx::query_as(
        "SELECT a.balance, a.shortfall FROM credit_accounts a JOIN users u ON u.id = a.user_id WHERE u.email = $1",
    )
    .bind(email)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

/// Clicks "Buy" for `product` on the pricing page and returns the Stripe Checkout Session id the waiting page
/// sends the browser to.
async fn start_checkout(app: &TestApp, browser: &Browser, product: &str) -> String {
    let pricing = browser.visit("/pricing").await;
    let waiting = browser
        .post(
            "/billing/checkout",
            &[("csrf", &pricing.csrf()), ("product", product)],
        )
        .await;
    assert_eq!(waiting.status, 303, "{}", waiting.body);
    let intent_path = waiting.location().unwrap().to_owned();
    app.drain().await;
    let ready = browser.get(&intent_path).await;
    assert_eq!(
        ready.status, 303,
        "the intent has its Stripe URL: {}",
        ready.body
    );
    let url = ready.location().unwrap();
    assert!(url.starts_with(&app.stripe.base_url()), "{url}");
    url.rsplit('/').next().unwrap().to_owned()
}

/// The intent behind the checkout the browser last started.
async fn last_intent(app: &TestApp) -> uuid::Uuid {
    sqlx::query_scalar("SELECT id FROM checkout_intents ORDER BY created_at DESC LIMIT 1")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// Waits for the stand-in's webhooks, then runs the queue dry.
async fn settle(app: &TestApp) {
    app.stripe.wait_for_deliveries().await;
    app.drain().await;
}

#[tokio::test]
async fn buying_a_pack_grants_its_credits_once_however_often_the_event_arrives() {
    let app = TestApp::spawn().await;
    let browser = sign_in(&app, "ann@example.com").await;
    let session = start_checkout(&app, &browser, "pack_100").await;
    app.stripe.pay_session(&session).unwrap();
    settle(&app).await;
    assert_eq!(balance(&app, "ann@example.com").await, (120, 0));
    // Redelivery of every event, as Stripe does after a timeout.
    for event in app.stripe.events() {
        app.stripe.redeliver(event["id"].as_str().unwrap()).unwrap();
    }
    settle(&app).await;
    assert_eq!(balance(&app, "ann@example.com").await, (120, 0));
    assert_eq!(
        metric(&app, "createimage2_stripe_purchases_total{kind=\"pack\"}").await,
        1.0,
        "counted once, however often the event came"
    );
    let (product, amount, credits): (String, i64, i64) =
        sqlx::query_as("SELECT product_id, amount_minor, credits FROM payments")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!((product.as_str(), amount, credits), ("pack_100", 500, 100));
    let page = browser.visit("/account").await;
    let payment: uuid::Uuid = sqlx::query_scalar("SELECT id FROM payments")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(
        page.contains(&format!(
            r##"<a href="#purchase-{payment}">Bought Starter pack</a>"##
        )),
        "the ledger says what was bought, linked to the purchase: {}",
        page.body
    );
    assert!(page.contains(&format!(r#"id="purchase-{payment}""#)));
    assert!(page.contains("Welcome credits for signing up"));
    // One customer per user, reused.
    start_checkout(&app, &browser, "pack_500").await;
    let customers: i64 = sqlx::query_scalar("SELECT count(*) FROM stripe_customers")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(customers, 1);
    app.finish().await;
}

#[tokio::test]
async fn a_plan_starts_renews_and_cancels() {
    let app = TestApp::spawn().await;
    let browser = sign_in(&app, "bea@example.com").await;
    let session = start_checkout(&app, &browser, "plan_monthly").await;
    app.stripe.pay_session(&session).unwrap();
    settle(&app).await;
    assert_eq!(balance(&app, "bea@example.com").await, (320, 0));
    let (subscription, status): (String, String) =
        sqlx::query_as("SELECT stripe_subscription_id, status FROM subscriptions")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(status, "active");
    app.stripe.renew_subscription(&subscription).unwrap();
    settle(&app).await;
    assert_eq!(
        balance(&app, "bea@example.com").await,
        (620, 0),
        "each paid month grants the allowance"
    );
    let account = browser.visit("/account").await;
    assert!(
        account.contains("Plan: <strong>Monthly</strong> (active)"),
        "the plan by its name from PLANS: {}",
        account.body
    );
    assert!(
        account.contains("Monthly: a paid month"),
        "each paid month in the ledger: {}",
        account.body
    );
    app.stripe.cancel_subscription(&subscription).unwrap();
    settle(&app).await;
    let status: String = sqlx::query_scalar("SELECT status FROM subscriptions")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(status, "canceled");
    app.finish().await;
}

#[tokio::test]
async fn duplicated_and_reordered_webhooks_grant_once_and_keep_the_newest_state() {
    let app = TestApp::spawn().await;
    app.stripe.set_delivery(DeliveryFaults {
        duplicate: true,
        reorder: true,
        ..DeliveryFaults::default()
    });
    let browser = sign_in(&app, "cal@example.com").await;
    let session = start_checkout(&app, &browser, "plan_monthly").await;
    app.stripe.pay_session(&session).unwrap();
    settle(&app).await;
    assert_eq!(balance(&app, "cal@example.com").await, (320, 0));
    let status: String = sqlx::query_scalar("SELECT status FROM subscriptions")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(status, "active", "an older 'incomplete' event does not win");
    let grants: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM credit_ledger WHERE business_key LIKE 'invoice:%'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(grants, 1);
    app.finish().await;
}

#[tokio::test]
async fn bad_and_stale_signatures_are_refused_and_nothing_is_recorded() {
    let app = TestApp::spawn().await;
    let body = r#"{"id":"evt_1","object":"event","type":"charge.refunded","created":1,"data":{"object":{}}}"#;
    let now = chrono::Utc::now().timestamp();
    let post = |signature: String| {
        let app = &app;
        async move {
            app.client
                .post(app.url("/webhooks/stripe"))
                .header("stripe-signature", signature)
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(
        post(fakes::stripe::sign(body, "whsec_wrong", now)).await,
        400
    );
    assert_eq!(
        post(fakes::stripe::sign(body, STRIPE_WEBHOOK_SECRET, now - 600)).await,
        400
    );
    assert_eq!(post("t=1,v1=zz".into()).await, 400);
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM stripe_events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(events, 0);
    let metrics = app.metrics.render();
    assert!(
        metrics.contains("createimage2_stripe_webhooks_total{outcome=\"bad_signature\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("createimage2_stripe_webhooks_total{outcome=\"stale\"} 1"));
    // A good signature (one of two v1 values, as during secret rotation) is accepted.
    let good = fakes::stripe::sign(body, STRIPE_WEBHOOK_SECRET, now);
    let rotated = format!("{good},v1={}", "ab".repeat(32));
    assert_eq!(post(rotated).await, 200);
    app.drain().await;
    app.finish().await;
}

#[tokio::test]
async fn a_missed_webhook_is_healed_by_reconciliation() {
    let app = TestApp::spawn().await;
    let browser = sign_in(&app, "dot@example.com").await;
    let session = start_checkout(&app, &browser, "pack_100").await;
    app.stripe.set_delivery(DeliveryFaults {
        drop_next: 100,
        ..DeliveryFaults::default()
    });
    app.stripe.pay_session(&session).unwrap();
    settle(&app).await;
    assert_eq!(
        balance(&app, "dot@example.com").await,
        (20, 0),
        "the webhook never came"
    );
    enqueue_with(
        &app.pool,
        &jobs::kinds::ReconcileStripeEvents {},
        EnqueueOptions::default(),
    )
    .await
    .unwrap();
    app.drain().await;
    assert_eq!(balance(&app, "dot@example.com").await, (120, 0));
    assert!(metric(&app, "createimage2_stripe_reconciliation_recoveries_total").await >= 1.0);
    app.finish().await;
}

/// Buys pack_100 for `email` and spends `spent` credits (as reservations would).
async fn buy_and_spend(app: &TestApp, email: &str, spent: i64) -> String {
    let browser = sign_in(app, email).await;
    let session = start_checkout(app, &browser, "pack_100").await;
    app.stripe.pay_session(&session).unwrap();
    settle(app).await;
    let user: uuid::Uuid = sqlx::query_scalar("SELECT id FROM users WHERE email = $1")
        .bind(email)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    if spent > 0 {
        let mut tx = app.pool.begin().await.unwrap();
        jobs::credits::apply(
            &mut tx,
            user,
            jobs::credits::Kind::Reserve,
            -spent,
            "test:spent",
            serde_json::json!({}),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }
    app.stripe
        .session_charge(&session)
        .expect("the payment's charge")
}

#[tokio::test]
async fn a_refund_after_the_credits_were_spent_leaves_a_visible_shortfall_that_pauses_generation() {
    let app = TestApp::spawn().await;
    let charge = buy_and_spend(&app, "eva@example.com", 110).await;
    assert_eq!(balance(&app, "eva@example.com").await, (10, 0));
    app.stripe.refund(&charge, 500).unwrap();
    settle(&app).await;
    assert_eq!(
        balance(&app, "eva@example.com").await,
        (0, 90),
        "10 clawed back, 90 owed, never negative"
    );
    let browser = sign_in(&app, "eva@example.com").await;
    let account = browser.visit("/account").await;
    assert!(account.contains("id=\"shortfall\""), "the user sees why");
    let home = browser.visit("/").await;
    let refused = browser
        .post("/generate", &[("csrf", &home.csrf()), ("prompt", "x")])
        .await;
    assert_eq!(refused.status, 409);
    assert!(refused.contains("paused until it is settled"));
    // A new purchase settles the debt first, and the notice says so.
    let session = start_checkout(&app, &browser, "pack_100").await;
    app.stripe.pay_session(&session).unwrap();
    settle(&app).await;
    assert_eq!(balance(&app, "eva@example.com").await, (10, 0));
    let notice = browser
        .visit(&format!(
            "/billing/intents/{}/done",
            last_intent(&app).await
        ))
        .await;
    assert!(
        notice.contains("<strong>10 credits</strong> were added to your balance. The other 90 settled credits owed"),
        "{}",
        notice.body
    );
    app.finish().await;
}

#[tokio::test]
async fn a_partial_refund_claws_back_in_proportion() {
    let app = TestApp::spawn().await;
    let charge = buy_and_spend(&app, "fox@example.com", 0).await;
    app.stripe.refund(&charge, 250).unwrap();
    settle(&app).await;
    assert_eq!(
        balance(&app, "fox@example.com").await,
        (70, 0),
        "half the pack (50) is taken back"
    );
    assert_eq!(metric(&app, "createimage2_stripe_refunds_total").await, 1.0);
    app.finish().await;
}

#[tokio::test]
async fn a_dispute_freezes_the_purchase_and_winning_releases_it_while_losing_keeps_it_removed() {
    let app = TestApp::spawn().await;
    let won = buy_and_spend(&app, "gil@example.com", 0).await;
    let dispute = app.stripe.open_dispute(&won).unwrap();
    settle(&app).await;
    assert_eq!(
        balance(&app, "gil@example.com").await,
        (20, 0),
        "the 100 purchased credits are frozen"
    );
    app.stripe
        .close_dispute(&dispute, DisputeClose::Won)
        .unwrap();
    settle(&app).await;
    assert_eq!(balance(&app, "gil@example.com").await, (120, 0));

    let lost = buy_and_spend(&app, "hub@example.com", 50).await;
    let dispute = app.stripe.open_dispute(&lost).unwrap();
    settle(&app).await;
    assert_eq!(balance(&app, "hub@example.com").await, (0, 30));
    app.stripe
        .close_dispute(&dispute, DisputeClose::Lost)
        .unwrap();
    settle(&app).await;
    assert_eq!(balance(&app, "hub@example.com").await, (0, 30));
    for event in ["created", "closed"] {
        assert_eq!(
            metric(
                &app,
                &format!("createimage2_stripe_disputes_total{{event=\"{event}\"}}")
            )
            .await,
            2.0,
            "{event}"
        );
    }
    app.finish().await;
}

/// Buys pack_100 for `email` paying with one of Stripe's test cards; returns the dispute the card brings.
async fn buy_with_card(app: &TestApp, email: &str, card: &str) -> String {
    let browser = sign_in(app, email).await;
    let session = start_checkout(app, &browser, "pack_100").await;
    app.stripe.pay_session_with_card(&session, card).unwrap();
    settle(app).await;
    let charge = app.stripe.session_charge(&session).unwrap();
    app.stripe
        .events()
        .iter()
        .find(|event| {
            event["type"] == "charge.dispute.created" && event["data"]["object"]["charge"] == charge
        })
        .and_then(|event| event["data"]["object"]["id"].as_str())
        .expect("the test card opened a dispute")
        .to_owned()
}

async fn dispute_status(app: &TestApp, dispute: &str) -> String {
    sqlx::query_scalar("SELECT status FROM payment_disputes WHERE dispute_id = $1")
        .bind(dispute)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn every_way_a_dispute_closes_has_its_credit_effect() {
    let app = TestApp::spawn().await;
    // Stripe's dispute test card: paid, then a fraudulent chargeback.
    let won = buy_with_card(&app, "ida@example.com", DISPUTE_CARD).await;
    let lost = buy_with_card(&app, "jon@example.com", DISPUTE_CARD).await;
    let inquiry = buy_with_card(&app, "kim@example.com", INQUIRY_CARD).await;
    let prevented = buy_with_card(&app, "lou@example.com", DISPUTE_CARD).await;
    for email in ["ida", "jon", "kim", "lou"] {
        assert_eq!(
            balance(&app, &format!("{email}@example.com")).await,
            (20, 0),
            "{email}: the disputed purchase is frozen"
        );
    }
    app.stripe.close_dispute(&won, DisputeClose::Won).unwrap();
    app.stripe.close_dispute(&lost, DisputeClose::Lost).unwrap();
    app.stripe
        .close_dispute(&inquiry, DisputeClose::WarningClosed)
        .unwrap();
    // Prevented (Visa RDR): the cardholder is refunded, so the money is gone once, not twice.
    app.stripe
        .close_dispute(&prevented, DisputeClose::Prevented { refund: true })
        .unwrap();
    settle(&app).await;
    assert_eq!(
        balance(&app, "ida@example.com").await,
        (120, 0),
        "won: back"
    );
    assert_eq!(
        balance(&app, "jon@example.com").await,
        (20, 0),
        "lost: gone"
    );
    assert_eq!(
        balance(&app, "kim@example.com").await,
        (120, 0),
        "an inquiry closed without a chargeback gives the credits back"
    );
    assert_eq!(
        balance(&app, "lou@example.com").await,
        (20, 0),
        "prevented and refunded: removed once"
    );
    assert_eq!(dispute_status(&app, &won).await, "won");
    assert_eq!(dispute_status(&app, &lost).await, "lost");
    assert_eq!(dispute_status(&app, &inquiry).await, "warning_closed");
    assert_eq!(dispute_status(&app, &prevented).await, "prevented");
    let removed: i64 = sqlx::query_scalar(
        "SELECT (-sum(l.amount))::bigint FROM credit_ledger l JOIN users u ON u.id = l.user_id
          WHERE u.email = 'lou@example.com' AND l.amount < 0",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(removed, 100, "the freeze became the refund's clawback");
    app.finish().await;
}

#[tokio::test]
async fn a_prevented_dispute_without_a_refund_keeps_the_credits_removed() {
    let app = TestApp::spawn().await;
    let dispute = buy_with_card(&app, "max@example.com", DISPUTE_CARD).await;
    app.stripe
        .close_dispute(&dispute, DisputeClose::Prevented { refund: false })
        .unwrap();
    settle(&app).await;
    assert_eq!(
        balance(&app, "max@example.com").await,
        (20, 0),
        "whichever way Stripe settles a prevented dispute, the money is gone"
    );
    app.finish().await;
}

#[tokio::test]
async fn a_plans_refunded_and_disputed_invoice_charges_are_matched_through_its_invoice_payments() {
    let app = TestApp::spawn().await;
    let browser = sign_in(&app, "ned@example.com").await;
    let session = start_checkout(&app, &browser, "plan_monthly").await;
    app.stripe.pay_session(&session).unwrap();
    settle(&app).await;
    assert_eq!(balance(&app, "ned@example.com").await, (320, 0));
    let intent: Option<String> =
        sqlx::query_scalar("SELECT stripe_payment_intent FROM payments WHERE kind = 'plan'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let charge = app.stripe.session_charge(&session).unwrap();
    assert_eq!(
        intent.as_deref(),
        app.stripe.charge(&charge).unwrap()["payment_intent"].as_str(),
        "invoice.paid carries no payments; the invoice payments list names the intent"
    );
    let amount = app.stripe.charge(&charge).unwrap()["amount"]
        .as_i64()
        .unwrap();
    app.stripe.refund(&charge, amount).unwrap();
    settle(&app).await;
    assert_eq!(
        balance(&app, "ned@example.com").await,
        (20, 0),
        "the period's credits are clawed back"
    );

    let (subscription,): (String,) =
        sqlx::query_as("SELECT stripe_subscription_id FROM subscriptions")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let renewal = app
        .stripe
        .renew_subscription(&subscription)
        .unwrap()
        .unwrap();
    settle(&app).await;
    assert_eq!(balance(&app, "ned@example.com").await, (320, 0));
    let dispute = app
        .stripe
        .open_dispute(&app.stripe.invoice_charge(&renewal).unwrap())
        .unwrap();
    settle(&app).await;
    assert_eq!(
        balance(&app, "ned@example.com").await,
        (20, 0),
        "the renewal's credits are frozen"
    );
    app.stripe
        .close_dispute(&dispute, DisputeClose::Won)
        .unwrap();
    settle(&app).await;
    assert_eq!(balance(&app, "ned@example.com").await, (320, 0));
    app.finish().await;
}

#[tokio::test]
async fn a_refund_seen_only_through_its_refund_event_still_claws_back_once() {
    let app = TestApp::spawn().await;
    let charge = buy_and_spend(&app, "ola@example.com", 0).await;
    // Only the refund's own event arrives (as when charge.refunded is late or lost): the refund emits
    // charge.refunded first, and that one delivery is dropped.
    app.stripe.set_delivery(DeliveryFaults {
        drop_next: 1,
        ..DeliveryFaults::default()
    });
    let refund = app.stripe.refund(&charge, 500).unwrap();
    settle(&app).await;
    let kinds: Vec<String> = sqlx::query_scalar(
        "SELECT type FROM stripe_events WHERE type IN ('charge.refunded', 'refund.created')",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(kinds, ["refund.created"], "charge.refunded never arrived");
    assert_eq!(balance(&app, "ola@example.com").await, (20, 0));
    // Then charge.refunded arrives after all: the refund was applied already.
    for event in app.stripe.events() {
        app.stripe.redeliver(event["id"].as_str().unwrap()).unwrap();
    }
    settle(&app).await;
    assert_eq!(balance(&app, "ola@example.com").await, (20, 0));
    let clawbacks: i64 =
        sqlx::query_scalar("SELECT count(*) FROM credit_ledger WHERE business_key = $1")
            .bind(format!("refund:{refund}"))
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(clawbacks, 1);
    app.finish().await;
}

#[tokio::test]
async fn reconciliation_refuses_an_event_in_an_api_version_it_cannot_read_instead_of_granting_nothing()
 {
    let app = TestApp::spawn().await;
    let browser = sign_in(&app, "pia@example.com").await;
    let session = start_checkout(&app, &browser, "plan_monthly").await;
    app.stripe.pay_session(&session).unwrap();
    settle(&app).await;
    let (subscription,): (String,) =
        sqlx::query_as("SELECT stripe_subscription_id FROM subscriptions")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    // The account's default version is older than the code's; the webhooks of the renewal are lost.
    app.stripe.set_account_api_version("2024-06-20");
    app.stripe.set_delivery(DeliveryFaults {
        drop_next: 100,
        ..DeliveryFaults::default()
    });
    let invoice = app
        .stripe
        .renew_subscription(&subscription)
        .unwrap()
        .unwrap();
    settle(&app).await;
    enqueue_with(
        &app.pool,
        &jobs::kinds::ReconcileStripeEvents {},
        EnqueueOptions::default(),
    )
    .await
    .unwrap();
    app.drain().await;
    let (processed, outcome): (bool, Option<String>) = sqlx::query_as(
        "SELECT processed_at IS NOT NULL, outcome FROM stripe_events
          WHERE type = 'invoice.paid' AND payload #>> '{data,object,id}' = $1",
    )
    .bind(&invoice)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(!processed, "left for a version of the code that reads it");
    let outcome = outcome.unwrap();
    assert!(outcome.contains("2024-06-20"), "{outcome}");
    assert_eq!(
        balance(&app, "pia@example.com").await,
        (320, 0),
        "nothing granted, not 0 granted and marked done"
    );
    let metrics = app.metrics.render();
    assert!(
        metrics.contains(
            r#"createimage2_stripe_events_refused_total{api_version="2024-06-20",type="invoice.paid"} 1"#
        ),
        "{metrics}"
    );
    app.finish().await;
}

#[tokio::test]
async fn two_workers_processing_the_same_event_at_once_grant_once() {
    let app = TestApp::builder().without_worker().spawn().await;
    let user = app.create_user(0).await;
    let event = serde_json::json!({
        "id": "evt_concurrent", "object": "event", "type": "checkout.session.completed", "created": 1_700_000_000,
        "api_version": jobs::stripe::API_VERSION,
        "data": {"object": {
            "id": "cs_test_concurrent", "object": "checkout.session", "mode": "payment", "payment_status": "paid",
            "client_reference_id": user.id.to_string(), "amount_total": 500, "currency": "usd",
            "payment_intent": "pi_concurrent", "customer": "cus_concurrent",
            "metadata": {"product": "pack_100", "credits": "100", "user": user.id.to_string()}
        }}
    });
    assert!(
        jobs::billing::record_event(&app.pool, &event)
            .await
            .unwrap()
    );
    assert!(
        !jobs::billing::record_event(&app.pool, &event)
            .await
            .unwrap(),
        "recorded once"
    );
    let (a, b) = tokio::join!(
        jobs::billing::process(&app.pool, None, "evt_concurrent"),
        jobs::billing::process(&app.pool, None, "evt_concurrent"),
    );
    let applied = [a.unwrap(), b.unwrap()].into_iter().flatten().count();
    assert_eq!(applied, 1);
    let balance: i64 = sqlx::query_scalar("SELECT balance FROM credit_accounts WHERE user_id = $1")
        .bind(user.id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(balance, 100);
    // The processing job queued with the event finds it done.
    let worker = app
        .start_worker(
            &[("process_stripe_event", 1)],
            jobs::config::QueueConfig::default(),
        )
        .await;
    app.drain().await;
    worker.stop().await;
    app.finish().await;
}

#[tokio::test]
async fn a_failed_delayed_payment_grants_nothing_and_tells_the_user() {
    let app = TestApp::spawn().await;
    let browser = sign_in(&app, "ira@example.com").await;
    let session = start_checkout(&app, &browser, "pack_100").await;
    app.stripe.pay_session_async(&session).unwrap();
    settle(&app).await;
    assert_eq!(
        balance(&app, "ira@example.com").await,
        (20, 0),
        "unpaid: nothing yet"
    );
    app.stripe.settle_async_payment(&session, false).unwrap();
    settle(&app).await;
    assert_eq!(balance(&app, "ira@example.com").await, (20, 0));
    let mails = jobs::email::sent_to(&app.pool, "ira@example.com")
        .await
        .unwrap();
    assert!(mails.iter().any(|m| m.template == "payment_failed"));
    app.finish().await;
}

#[tokio::test]
async fn the_billing_portal_opens_for_a_customer() {
    let app = TestApp::spawn().await;
    let browser = sign_in(&app, "jo@example.com").await;
    let session = start_checkout(&app, &browser, "plan_monthly").await;
    app.stripe.pay_session(&session).unwrap();
    settle(&app).await;
    let account = browser.visit("/account").await;
    let waiting = browser
        .post("/billing/portal", &[("csrf", &account.csrf())])
        .await;
    let intent = waiting.location().unwrap().to_owned();
    app.drain().await;
    let portal = browser.get(&intent).await;
    assert!(
        portal.location().unwrap().contains("/portal/"),
        "{:?}",
        portal.location()
    );
    app.finish().await;
}

#[tokio::test]
async fn a_portal_stripe_refuses_because_its_settings_were_never_saved_tells_the_user_their_plan_is_unchanged()
 {
    let app = TestApp::spawn().await;
    let browser = sign_in(&app, "lia@example.com").await;
    let session = start_checkout(&app, &browser, "plan_monthly").await;
    app.stripe.pay_session(&session).unwrap();
    settle(&app).await;
    app.stripe.set_portal_configured(false);
    let account = browser.visit("/account").await;
    let waiting = browser
        .post("/billing/portal", &[("csrf", &account.csrf())])
        .await;
    let intent = waiting.location().unwrap().to_owned();
    app.drain().await;
    let page = browser.visit(&intent).await;
    assert!(
        page.contains("The billing portal could not be opened"),
        "{}",
        page.body
    );
    assert!(page.contains("Your plan and payments are unchanged"));
    assert!(page.contains(r#"href="/account#credits""#));
    assert!(!page.contains("Checkout could not be opened"));
    app.finish().await;
}

#[tokio::test]
async fn the_waiting_page_hears_the_checkout_url_as_a_server_sent_event() {
    let app = TestApp::spawn().await;
    let browser = sign_in(&app, "kai@example.com").await;
    // Hold the job back until the page is listening.
    queue::ops::pause_queue(&app.pool, "open_checkout", "test")
        .await
        .unwrap();
    let pricing = browser.visit("/pricing").await;
    let waiting = browser
        .post(
            "/billing/checkout",
            &[("csrf", &pricing.csrf()), ("product", "pack_100")],
        )
        .await;
    let intent_path = waiting.location().unwrap().to_owned();
    let page = browser.get(&intent_path).await;
    assert!(page.contains("Opening secure checkout"), "{}", page.body);
    let stream = browser
        .client()
        .get(app.url(&format!("{intent_path}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    queue::ops::resume_queue(&app.pool, "open_checkout")
        .await
        .unwrap();
    let body = tokio::time::timeout(std::time::Duration::from_secs(20), stream.text())
        .await
        .expect("the stream ends once the URL is known")
        .unwrap();
    assert!(body.contains("event: intent"), "{body}");
    assert!(
        body.contains(&format!("{}/checkout/pay/", app.stripe.base_url())),
        "{body}"
    );
    app.stripe.wait_for_deliveries().await;
    app.drain().await;
    app.finish().await;
}

#[tokio::test]
async fn a_dispute_applied_before_its_payment_waits_for_the_payment_instead_of_being_dropped() {
    let app = TestApp::spawn().await;
    let browser = sign_in(&app, "quin@example.com").await;
    let session = start_checkout(&app, &browser, "pack_100").await;
    app.stripe.set_delivery(DeliveryFaults {
        drop_next: 100,
        ..DeliveryFaults::default()
    });
    app.stripe
        .pay_session_with_card(&session, DISPUTE_CARD)
        .unwrap();
    app.stripe.wait_for_deliveries().await;
    let event = |kind: &str| {
        app.stripe
            .events()
            .into_iter()
            .find(|event| event["type"] == kind)
            .unwrap()
    };
    let (dispute, payment) = (
        event("charge.dispute.created"),
        event("checkout.session.completed"),
    );
    let stripe = app.services.pipeline.as_ref().unwrap().stripe.as_ref();
    jobs::billing::record_event(&app.pool, &dispute)
        .await
        .unwrap();
    let early = jobs::billing::process(&app.pool, stripe, dispute["id"].as_str().unwrap()).await;
    assert!(
        matches!(
            early,
            Err(jobs::billing::ProcessError::PaymentNotRecorded(_))
        ),
        "retried, not dropped: {early:?}"
    );
    jobs::billing::record_event(&app.pool, &payment)
        .await
        .unwrap();
    app.drain().await;
    assert_eq!(
        balance(&app, "quin@example.com").await,
        (20, 0),
        "the retried dispute froze the purchase once it was recorded"
    );
    app.finish().await;
}

#[tokio::test]
async fn after_checkout_the_page_says_what_was_bought_and_the_new_balance_arrives_live() {
    let app = TestApp::spawn().await;
    let browser = sign_in(&app, "notice@example.com").await;
    let session = start_checkout(&app, &browser, "pack_500").await;
    let intent = last_intent(&app).await;
    let object = app.stripe.checkout_session(&session).unwrap();
    assert_eq!(
        object["success_url"],
        format!("{}/billing/intents/{intent}/done", app.url("")),
        "Stripe sends the member back to the notice"
    );

    let waiting = browser
        .visit(&format!("/billing/intents/{intent}/done"))
        .await;
    assert_eq!(waiting.status, 200, "{}", waiting.body);
    assert!(
        waiting.contains("You bought <strong>Studio pack</strong>: 500 credits for 20.00 USD."),
        "{}",
        waiting.body
    );
    assert!(waiting.contains("Stripe is confirming the payment"));
    assert!(
        waiting.contains(r#"id="live-balance">20<"#),
        "{}",
        waiting.body
    );
    assert!(waiting.contains(&format!(
        r#"data-events="/billing/intents/{intent}/events?follow=purchase""#
    )));

    // The page's stream is open before the payment: the grant reaches it.
    let stream = browser
        .client()
        .get(app.url(&format!("/billing/intents/{intent}/events?follow=purchase")))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    app.stripe.pay_session(&session).unwrap();
    settle(&app).await;
    let text = tokio::time::timeout(std::time::Duration::from_secs(20), stream.text())
        .await
        .expect("the stream ends with the purchase")
        .unwrap();
    assert!(text.contains("event: purchase"), "{text}");
    assert!(
        text.contains(r#""balance":520"#) && text.contains(r#""credits":500"#),
        "{text}"
    );

    let arrived = browser
        .visit(&format!("/billing/intents/{intent}/done"))
        .await;
    assert!(
        arrived.contains("<strong>500 credits</strong> were added to your balance."),
        "{}",
        arrived.body
    );
    assert!(arrived.contains(r#"id="live-balance">520<"#));
    assert!(
        !arrived.contains("data-events="),
        "nothing left to wait for"
    );
    assert!(!arrived.contains(r#"http-equiv="refresh""#));

    // Another member's intent is not found.
    let other = sign_in(&app, "nosy@example.com").await;
    let peek = other.get(&format!("/billing/intents/{intent}/done")).await;
    assert_eq!(peek.status, 404);
    app.finish().await;
}

#[tokio::test]
async fn a_notice_rendered_while_the_credits_arrive_shows_the_balance_that_includes_them() {
    let app = TestApp::spawn().await;
    let browser = sign_in(&app, "racing@example.com").await;
    let session = start_checkout(&app, &browser, "pack_100").await;
    let intent = last_intent(&app).await;
    let user: uuid::Uuid = sqlx::query_scalar("SELECT id FROM users WHERE email = $1")
        .bind("racing@example.com")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    // Hold the ledger so the page stops at its question "were the credits granted?", after it has read who is
    // signed in (and their balance then).
    let mut grant = app.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE credit_ledger IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *grant)
        .await
        .unwrap();
    let path = format!("/billing/intents/{intent}/done");
    let (page, ()) = tokio::join!(browser.visit(&path), async {
        testkit::eventually("the notice waits on the ledger", || {
            testkit::blocked_on_lock(&app.pool, "kind = 'grant'")
        })
        .await;
        // The payment's credits arrive meanwhile (as the worker grants a pack: under the session's key).
        jobs::credits::apply(
            &mut grant,
            user,
            jobs::credits::Kind::Grant,
            100,
            &format!("pack:{session}"),
            serde_json::json!({"product": "pack_100"}),
        )
        .await
        .unwrap();
        grant.commit().await.unwrap();
    });
    assert!(
        page.contains("<strong>100 credits</strong> were added to your balance."),
        "{}",
        page.body
    );
    assert!(
        page.contains(r#"id="live-balance">120<"#),
        "the balance shown with the credits includes them: {}",
        page.body
    );
    app.finish().await;
}
