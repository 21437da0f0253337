//! The privacy policy's promises kept by code: account deletion, trial fingerprints, retention.

use std::sync::Arc;

use jobs::{
    accounts::{self, DeletionReason},
    kinds::{DeleteAccount, ExpireTrialFingerprints, PurgeExpiredRecords, RotateHashPepper},
    services::{JobContext, Services},
};
use queue::Job;
use serde_json::json;
use testkit::{TestApp, TestUser, images};
use uuid::Uuid;

/// Every table with a `user_id` column, and how many of its rows reference `user`.
async fn rows_referencing(app: &TestApp, user: Uuid) -> Vec<(String, i64)> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.columns
          WHERE table_schema = 'public' AND column_name = 'user_id' ORDER BY 1",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let mut found = Vec::new();
    for table in tables {
        let sql = format!("SELECT count(*) FROM {table} WHERE user_id = $1");
        let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(user)
            .fetch_one(&app.pool)
            .await
            .unwrap();
        if count > 0 {
            found.push((table, count));
        }
    }
    let user_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE id = $1")
        .bind(user)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    if user_rows > 0 {
        found.push(("users".into(), user_rows));
    }
    found
}

/// A user with a finished generation, a reference upload, a payment, a Stripe customer, a consent and a session.
async fn user_with_history(app: &TestApp) -> (TestUser, String) {
    let user = app.create_user(100).await;
    let upload = app
        .upload_reference(&user, images::png(16, 16), "image/png")
        .await;
    let (_, created) = app
        .create_generation(
            &user,
            json!({"prompt": "keep me", "reference_upload_ids": [upload]}),
        )
        .await;
    app.wait_until_finished(&user, created["id"].as_str().unwrap())
        .await;
    let customer = app.stripe.add_customer("someone@example.com");
    sqlx::query("INSERT INTO stripe_customers (user_id, customer_id) VALUES ($1, $2)")
        .bind(user.id)
        .bind(&customer)
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO payments (id, user_id, pseudonym, stripe_customer_id, stripe_object_id, product_id, amount_minor, currency, paid_at)
         VALUES (gen_random_uuid(), $1, 'p_7f3a', $2, 'cs_test_1', 'pack_100', 900, 'eur', now())",
    )
    .bind(user.id)
    .bind(&customer)
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO consent_records (user_id, analytics, policy_version) VALUES ($1, true, '2026-04-29')")
        .bind(user.id)
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO sessions (id_hash, user_id, csrf_secret, idle_expires_at, absolute_expires_at)
         VALUES (sha256(gen_random_uuid()::text::bytea), $1, '\\x00', now() + interval '1 hour', now() + interval '1 day')",
    )
    .bind(user.id)
    .execute(&app.pool)
    .await
    .unwrap();
    (user, customer)
}

async fn objects_under(app: &TestApp, prefix: &str) -> usize {
    let listed = app
        .storage
        .client
        .list_objects_v2()
        .bucket(&app.storage.bucket)
        .prefix(prefix)
        .send()
        .await
        .unwrap();
    listed.contents().len()
}

#[tokio::test]
async fn deleting_an_account_closes_it_at_once_and_leaves_nothing_but_pseudonymised_payments() {
    let app = TestApp::spawn().await;
    let (user, customer) = user_with_history(&app).await;
    assert!(
        objects_under(&app, &format!("users/{}/", user.id)).await >= 2,
        "an image and an upload exist"
    );

    let wrong = app
        .client
        .delete(app.url("/api/v1/account"))
        .bearer_auth(&user.api_key)
        .json(&json!({"confirm": "yes"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 422, "a typed confirmation is required");
    let response = app
        .client
        .delete(app.url("/api/v1/account"))
        .bearer_auth(&user.api_key)
        .json(&json!({"confirm": "delete my account"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    // Unusable at once, before the job has run.
    assert_eq!(
        app.get_with_key("/api/v1/me", &user.api_key).await.status(),
        401
    );

    app.drain().await;
    assert_eq!(
        rows_referencing(&app, user.id).await,
        vec![],
        "no row of the user remains"
    );
    assert_eq!(
        objects_under(&app, &format!("users/{}/", user.id)).await,
        0,
        "no object of the user remains"
    );
    assert_eq!(
        app.stripe.deleted_customers(),
        vec![customer.clone()],
        "the Stripe customer was redacted"
    );
    let payment: (Option<Uuid>, String, i64, String) =
        sqlx::query_as("SELECT user_id, pseudonym, amount_minor, currency FROM payments")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        payment,
        (None, "p_7f3a".into(), 900, "eur".into()),
        "kept for tax, unlinked from the person"
    );
    let record: (String, bool) =
        sqlx::query_as("SELECT reason, completed_at IS NOT NULL FROM account_deletions")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(record, ("user_request".into(), true));
    assert_eq!(
        crate::support::metric(&app, "createimage2_accounts_deleted_total").await,
        1.0
    );

    // The same address can sign up again.
    let mut tx = app.pool.begin().await.unwrap();
    let email: String = format!("user-{}@example.com", user.id.simple());
    accounts::create_user(&mut tx, &email, None).await.unwrap();
    tx.commit().await.unwrap();
    app.finish().await;
}

#[tokio::test]
async fn a_deletion_interrupted_midway_completes_when_the_job_runs_again() {
    let app = TestApp::builder().without_worker().spawn().await;
    let user = app.create_user(100).await;
    let key = format!("users/{}/uploads/x.png", user.id);
    app.storage
        .put(&key, images::png(4, 4), "image/png")
        .await
        .unwrap();
    let customer = app.stripe.add_customer("child@example.com");
    sqlx::query("INSERT INTO stripe_customers (user_id, customer_id) VALUES ($1, $2)")
        .bind(user.id)
        .bind(&customer)
        .execute(&app.pool)
        .await
        .unwrap();
    let mut tx = app.pool.begin().await.unwrap();
    let deletion = accounts::request_deletion(&mut tx, user.id, DeletionReason::ChildAccount)
        .await
        .unwrap()
        .unwrap();
    tx.commit().await.unwrap();
    let job = DeleteAccount {
        user_id: user.id,
        deletion_id: deletion,
    };

    // First attempt: the objects go, then Stripe cannot be reached (no client configured in this process).
    let mut without_stripe = app.services.pipeline.clone().unwrap();
    without_stripe.stripe = None;
    let crippled = Arc::new(
        Services::new(Default::default(), app.metrics.clone()).with_pipeline(without_stripe),
    );
    let ctx = |services: Arc<Services>| JobContext {
        pool: app.pool.clone(),
        app: services,
        job_id: "manual".into(),
        attempt: 1,
        max_attempts: 5,
    };
    assert!(job.clone().run(ctx(crippled)).await.is_err());
    assert!(
        app.storage.head(&key).await.unwrap().is_none(),
        "step 1 happened"
    );
    assert!(
        !rows_referencing(&app, user.id).await.is_empty(),
        "the rows are still there"
    );

    // The re-run completes; a third run changes nothing and succeeds.
    job.clone().run(ctx(app.services.clone())).await.unwrap();
    job.clone().run(ctx(app.services.clone())).await.unwrap();
    assert_eq!(rows_referencing(&app, user.id).await, vec![]);
    assert_eq!(app.stripe.deleted_customers(), vec![customer]);
    let reason: String = sqlx::query_scalar("SELECT reason FROM account_deletions")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(reason, "child_account");
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns WHERE table_name = 'account_deletions' ORDER BY 1",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        columns,
        ["completed_at", "id", "reason", "requested_at"],
        "only that a deletion happened"
    );
    app.discard_unrun_jobs().await;
    app.finish().await;
}

#[tokio::test]
async fn a_second_trial_from_the_same_visitor_within_24_hours_is_refused_and_no_ip_is_stored_anywhere()
 {
    let app = TestApp::spawn().await;
    let ip = "203.0.113.77";
    assert!(
        jobs::trial::claim_trial(&app.pool, ip, "Firefox/140")
            .await
            .unwrap()
    );
    assert!(
        !jobs::trial::claim_trial(&app.pool, ip, "Firefox/140")
            .await
            .unwrap(),
        "same visitor, same day"
    );
    assert!(
        jobs::trial::claim_trial(&app.pool, ip, "Chrome/150")
            .await
            .unwrap(),
        "another browser is another visitor"
    );

    // No table, in any column, holds the address.
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_schema || '.' || table_name FROM information_schema.tables
          WHERE table_schema IN ('public', 'apalis') AND table_type = 'BASE TABLE'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    for table in tables {
        let sql = format!(
            "SELECT count(*) FROM {table} t WHERE row_to_json(t)::text LIKE '%' || $1 || '%'"
        );
        let hits: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(ip)
            .fetch_one(&app.pool)
            .await
            .unwrap();
        assert_eq!(hits, 0, "{table} holds the IP address");
    }
    app.finish().await;
}

#[tokio::test]
async fn no_trial_fingerprint_survives_past_24_hours_and_peppers_rotate_daily() {
    let app = TestApp::spawn().await;
    jobs::trial::claim_trial(&app.pool, "198.51.100.1", "ua")
        .await
        .unwrap();
    sqlx::query("INSERT INTO trial_fingerprints (fingerprint, created_at) VALUES (sha256('old'), now() - interval '25 hours')")
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO hash_peppers (secret, valid_on) VALUES (sha256('p1'), current_date - 5), (sha256('p2'), current_date - 1)")
        .execute(&app.pool)
        .await
        .unwrap();
    app.enqueue(&ExpireTrialFingerprints {}).await;
    app.enqueue(&RotateHashPepper {}).await;
    app.drain().await;
    let oldest: Option<f64> = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM now() - min(created_at))::float8 FROM trial_fingerprints",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(
        oldest.unwrap() < 24.0 * 3600.0,
        "a fingerprint older than 24 h survived"
    );
    let days: Vec<i32> = sqlx::query_scalar(
        "SELECT (current_date - valid_on)::int FROM hash_peppers ORDER BY valid_on",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(days, vec![1, 0], "yesterday's and today's pepper only");
    app.finish().await;
}

#[tokio::test]
async fn expired_sessions_tokens_old_mail_and_payments_past_seven_years_are_purged() {
    let app = TestApp::spawn().await;
    let user = app.create_user(0).await;
    sqlx::query(
        "INSERT INTO sessions (id_hash, user_id, csrf_secret, idle_expires_at, absolute_expires_at) VALUES
           (sha256('expired'), $1, '\\x00', now() - interval '1 minute', now() + interval '1 day'),
           (sha256('live'), $1, '\\x00', now() + interval '1 hour', now() + interval '1 day')",
    )
    .bind(user.id)
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO sign_in_tokens (id, token_hash, purpose, email, expires_at) VALUES
           (gen_random_uuid(), sha256('old'), 'sign_in', 'a@b.c', now() - interval '2 days'),
           (gen_random_uuid(), sha256('new'), 'sign_in', 'a@b.c', now() + interval '10 minutes')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO payments (id, pseudonym, stripe_object_id, product_id, amount_minor, currency, paid_at) VALUES
           (gen_random_uuid(), 'p1', 'cs_old', 'pack', 100, 'eur', now() - interval '7 years 1 day'),
           (gen_random_uuid(), 'p2', 'cs_new', 'pack', 100, 'eur', now() - interval '6 years')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    // A refund of the old payment goes with it.
    sqlx::query(
        "INSERT INTO payment_refunds (refund_id, payment_id, amount_minor, credits, clawed_back, shortfall)
         SELECT 're_old', id, 100, 10, 10, 0 FROM payments WHERE stripe_object_id = 'cs_old'",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO stripe_events (id, type, created, payload, processed_at) VALUES
           ('evt_old', 'x', now(), '{}', now() - interval '36 days'),
           ('evt_new', 'x', now(), '{}', now() - interval '1 day'),
           ('evt_refused_old', 'x', now() - interval '36 days', '{}', NULL),
           ('evt_refused_new', 'x', now() - interval '1 day', '{}', NULL)",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    app.enqueue(&PurgeExpiredRecords {}).await;
    app.drain().await;
    let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let tokens: i64 = sqlx::query_scalar("SELECT count(*) FROM sign_in_tokens")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let payments: Vec<String> = sqlx::query_scalar("SELECT stripe_object_id FROM payments")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        (sessions, tokens, payments),
        (1, 1, vec!["cs_new".to_owned()])
    );
    let events: Vec<String> = sqlx::query_scalar("SELECT id FROM stripe_events ORDER BY id")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        events,
        ["evt_new", "evt_refused_new"],
        "raw events are kept 35 days after processing, or after Stripe created them if never processed"
    );
    app.finish().await;
}

#[tokio::test]
async fn a_trial_image_nobody_kept_is_deleted_a_day_after_its_session_ends() {
    let app = TestApp::spawn().await;
    let browser = app.browser();
    let id = crate::support::start_trial(&app, &browser, "left behind").await;
    app.drain().await;
    assert_eq!(objects_under(&app, "trials/").await, 1);
    // Still in a live session: kept, however old.
    sqlx::query("UPDATE generations SET created_at = now() - interval '2 days' WHERE id = $1")
        .bind(id)
        .execute(&app.pool)
        .await
        .unwrap();
    app.enqueue(&PurgeExpiredRecords {}).await;
    app.drain().await;
    assert_eq!(objects_under(&app, "trials/").await, 1);
    // The session ends (expired and purged): the image goes.
    sqlx::query("DELETE FROM sessions")
        .execute(&app.pool)
        .await
        .unwrap();
    app.enqueue(&PurgeExpiredRecords {}).await;
    app.drain().await;
    assert_eq!(objects_under(&app, "trials/").await, 0);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM generations")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
    app.finish().await;
}

#[tokio::test]
async fn deleting_an_account_removes_the_trial_image_it_adopted_and_its_raw_stripe_events() {
    let app = TestApp::spawn().await;
    let browser = app.browser();
    crate::support::start_trial(&app, &browser, "adopted").await;
    app.drain().await;
    crate::support::sign_in_with(&app, &browser, "adopter@example.com").await;
    let user: Uuid = sqlx::query_scalar("SELECT id FROM users")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO stripe_events (id, type, created, payload, processed_at)
         VALUES ('evt_mine', 'checkout.session.completed', now(), $1, now())",
    )
    .bind(json!({"data": {"object": {"client_reference_id": user.to_string(), "customer_details": {"email": "adopter@example.com"}}}}))
    .execute(&app.pool)
    .await
    .unwrap();
    assert_eq!(objects_under(&app, "trials/").await, 1);
    let confirm = browser.visit("/account/delete").await;
    browser
        .submit(
            "/account/delete",
            &[
                ("csrf", &confirm.csrf()),
                ("confirm_email", "adopter@example.com"),
            ],
        )
        .await;
    app.drain().await;
    assert_eq!(objects_under(&app, "trials/").await, 0);
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM stripe_events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(events, 0);
    app.finish().await;
}
