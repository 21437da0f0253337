//! Billing through the Stripe stand-in: checkout, signed webhooks, event processing, reconciliation,
//! refunds and disputes. Every credit effect must happen exactly once.

use fakes::stripe::DeliveryFaults;
use jobs::queue::{EnqueueOptions, enqueue_with};
use testkit::{Browser, STRIPE_WEBHOOK_SECRET, TestApp};

use crate::support::sign_in;

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
    let (product, amount, credits): (String, i64, i64) =
        sqlx::query_as("SELECT product_id, amount_minor, credits FROM payments")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!((product.as_str(), amount, credits), ("pack_100", 500, 100));
    let page = browser.visit("/account").await;
    assert!(page.contains("pack:"), "the ledger shows the purchase");
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
        account.contains("plan_monthly") && account.contains("(active)"),
        "{}",
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
    // A new purchase settles the debt first.
    let session = start_checkout(&app, &browser, "pack_100").await;
    app.stripe.pay_session(&session).unwrap();
    settle(&app).await;
    assert_eq!(balance(&app, "eva@example.com").await, (10, 0));
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
    app.stripe.close_dispute(&dispute, true).unwrap();
    settle(&app).await;
    assert_eq!(balance(&app, "gil@example.com").await, (120, 0));

    let lost = buy_and_spend(&app, "hub@example.com", 50).await;
    let dispute = app.stripe.open_dispute(&lost).unwrap();
    settle(&app).await;
    assert_eq!(balance(&app, "hub@example.com").await, (0, 30));
    app.stripe.close_dispute(&dispute, false).unwrap();
    settle(&app).await;
    assert_eq!(balance(&app, "hub@example.com").await, (0, 30));
    app.finish().await;
}

#[tokio::test]
async fn two_workers_processing_the_same_event_at_once_grant_once() {
    let app = TestApp::builder().without_worker().spawn().await;
    let user = app.create_user(0).await;
    let event = serde_json::json!({
        "id": "evt_concurrent", "object": "event", "type": "checkout.session.completed", "created": 1_700_000_000,
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
async fn the_waiting_page_hears_the_checkout_url_as_a_server_sent_event() {
    let app = TestApp::spawn().await;
    let browser = sign_in(&app, "kai@example.com").await;
    // Hold the job back until the page is listening.
    jobs::queue::ops::pause_queue(&app.pool, "open_checkout", "test")
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
    jobs::queue::ops::resume_queue(&app.pool, "open_checkout")
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
