//! Sign-in (e-mailed links, Google), sessions, CSRF and security headers, through real HTTP.

use reqwest::header::{HeaderMap, HeaderValue};
use testkit::{Browser, GOOGLE_EMAIL, GOOGLE_SUB, TestApp};

use crate::support::{latest_link, sign_in, sign_in_with};

async fn user_by_email(app: &TestApp, email: &str) -> Option<(uuid::Uuid, i64, Option<String>)> {
    sqlx::query_as(
        "SELECT u.id, a.balance, u.google_sub FROM users u JOIN credit_accounts a ON a.user_id = u.id WHERE u.email = $1",
    )
    .bind(email)
    .fetch_optional(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_visitor_signs_up_with_an_emailed_link_and_starts_with_free_credits() {
    let app = TestApp::spawn().await;
    let browser = app.browser();
    let home = sign_in_with(&app, &browser, "ada@example.com").await;
    assert!(home.contains("Generate an image"), "{}", home.body);
    assert!(home.contains("Welcome to createimage2"));
    let (_, balance, _) = user_by_email(&app, "ada@example.com").await.unwrap();
    assert_eq!(balance, 20);
    let mail = &jobs::email::sent_to(&app.pool, "ada@example.com")
        .await
        .unwrap()[0];
    assert_eq!(mail.template, "sign_in_link");
    app.finish().await;
}

#[tokio::test]
async fn opening_a_link_consumes_nothing_until_the_button_is_pressed() {
    let app = TestApp::spawn().await;
    let browser = app.browser();
    let form = browser.visit("/sign-in").await;
    browser
        .submit(
            "/sign-in/email",
            &[("csrf", &form.csrf()), ("email", "bob@example.com")],
        )
        .await;
    let link = latest_link(&app, "bob@example.com", "/sign-in/link").await;
    // A mail scanner fetches the link first (GET and HEAD); the person's click still works.
    app.client.get(&link).send().await.unwrap();
    app.client.head(&link).send().await.unwrap();
    let landing = browser.visit(&link).await;
    let signed_in = browser
        .submit(
            "/sign-in/link",
            &[
                ("csrf", &landing.csrf()),
                ("token", &landing.field("token").unwrap()),
                ("next", "/"),
            ],
        )
        .await;
    assert!(
        signed_in.contains("Generate an image"),
        "{}",
        signed_in.body
    );
    app.finish().await;
}

#[tokio::test]
async fn a_sign_in_link_works_only_once() {
    let app = TestApp::spawn().await;
    let browser = app.browser();
    let form = browser.visit("/sign-in").await;
    browser
        .submit(
            "/sign-in/email",
            &[("csrf", &form.csrf()), ("email", "carol@example.com")],
        )
        .await;
    let landing = browser
        .visit(&latest_link(&app, "carol@example.com", "/sign-in/link").await)
        .await;
    let fields = [
        ("csrf", landing.csrf()),
        ("token", landing.field("token").unwrap()),
        ("next", "/".to_owned()),
    ];
    let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let first = browser.post("/sign-in/link", &fields).await;
    assert_eq!(first.status, 303);
    let other = app.browser();
    let other_landing = other.visit("/sign-in").await;
    let mut replay = fields.clone();
    let csrf = other_landing.csrf();
    replay[0] = ("csrf", csrf.as_str());
    let second = other.post("/sign-in/link", &replay).await;
    assert_eq!(second.status, 400);
    assert!(second.contains("expired or was already used"));
    app.finish().await;
}

async fn ask_for_link(browser: &Browser, email: &str) {
    let form = browser.visit("/sign-in").await;
    browser
        .submit(
            "/sign-in/email",
            &[("csrf", &form.csrf()), ("email", email)],
        )
        .await;
}

#[tokio::test]
async fn an_expired_link_and_a_superseded_link_are_refused() {
    let app = TestApp::spawn().await;
    let browser = app.browser();
    ask_for_link(&browser, "dan@example.com").await;
    let older = latest_link(&app, "dan@example.com", "/sign-in/link").await;
    ask_for_link(&browser, "dan@example.com").await;
    let newer = latest_link(&app, "dan@example.com", "/sign-in/link").await;
    assert_ne!(older, newer);
    let redeem = |link: String| {
        let browser = &browser;
        async move {
            let landing = browser.visit(&link).await;
            browser
                .post(
                    "/sign-in/link",
                    &[
                        ("csrf", &landing.csrf()),
                        ("token", &landing.field("token").unwrap()),
                        ("next", "/"),
                    ],
                )
                .await
        }
    };
    assert_eq!(
        redeem(older).await.status,
        400,
        "a newer link voids the older one"
    );
    sqlx::query(
        "UPDATE sign_in_tokens SET expires_at = now() - interval '1 second' WHERE used_at IS NULL",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        redeem(newer).await.status,
        400,
        "an expired link is refused"
    );
    assert!(user_by_email(&app, "dan@example.com").await.is_none());
    app.finish().await;
}

#[tokio::test]
async fn the_answer_is_the_same_whether_or_not_the_address_has_an_account() {
    let app = TestApp::spawn().await;
    sign_in(&app, "known@example.com").await;
    let ask = |email: &'static str| {
        let app = &app;
        async move {
            let browser = app.browser();
            let form = browser.visit("/sign-in").await;
            let response = browser
                .post(
                    "/sign-in/email",
                    &[("csrf", &form.csrf()), ("email", email)],
                )
                .await;
            let followed = browser.follow(response.clone()).await;
            // Each browser has its own session, so only its CSRF token may differ.
            let body = followed.body.replace(&followed.csrf(), "TOKEN");
            (
                response.status,
                response.location().map(str::to_owned),
                body,
            )
        }
    };
    let known = ask("known@example.com").await;
    let unknown = ask("unknown@example.com").await;
    assert_eq!(known, unknown);
    app.finish().await;
}

#[tokio::test]
async fn sign_in_links_are_limited_per_address_without_telling_the_requester() {
    let app = TestApp::builder()
        .site(|site| site.sign_in_per_address_per_hour = 2)
        .spawn()
        .await;
    for _ in 0..3 {
        let browser = app.browser();
        let form = browser.visit("/sign-in").await;
        let page = browser
            .submit(
                "/sign-in/email",
                &[("csrf", &form.csrf()), ("email", "eve@example.com")],
            )
            .await;
        assert!(page.contains("Check your e-mail"));
    }
    assert_eq!(
        jobs::email::sent_to(&app.pool, "eve@example.com")
            .await
            .unwrap()
            .len(),
        2
    );
    app.finish().await;
}

#[tokio::test]
async fn sign_in_requests_are_limited_per_client() {
    let app = TestApp::builder()
        .site(|site| site.sign_in_per_client_per_hour = 2)
        .spawn()
        .await;
    let browser = app.browser();
    let mut statuses = vec![];
    for n in 0..3 {
        let form = browser.visit("/sign-in").await;
        let email = format!("client{n}@example.com");
        let page = browser
            .post(
                "/sign-in/email",
                &[("csrf", &form.csrf()), ("email", &email)],
            )
            .await;
        statuses.push(page.status.as_u16());
    }
    assert_eq!(statuses, [303, 303, 429]);
    // The limit's key is a hash: no client address is stored.
    let keys: Vec<String> = sqlx::query_scalar("SELECT DISTINCT key FROM rate_limit_events")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert!(keys.iter().all(|k| !k.contains("127.0.0.1")), "{keys:?}");
    app.finish().await;
}

#[tokio::test]
async fn an_address_that_is_not_one_is_refused_with_the_form_again() {
    let app = TestApp::spawn().await;
    let browser = app.browser();
    let form = browser.visit("/sign-in").await;
    let page = browser
        .post(
            "/sign-in/email",
            &[("csrf", &form.csrf()), ("email", "not-an-address")],
        )
        .await;
    assert_eq!(page.status, 422);
    assert!(page.contains("does not look like an e-mail address"));
    app.finish().await;
}

fn session_cookie(page: &testkit::Page) -> Option<String> {
    page.headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("ci2_session="))
        .map(str::to_owned)
}

#[tokio::test]
async fn signing_in_rotates_the_session_id_and_the_old_one_stops_working() {
    let app = TestApp::spawn().await;
    let browser = app.browser();
    let first = browser.get("/sign-in").await;
    let anonymous = session_cookie(&first).expect("a form page starts a session");
    assert!(
        anonymous.contains("HttpOnly") && anonymous.contains("SameSite=Lax"),
        "{anonymous}"
    );
    sign_in_with(&app, &browser, "frank@example.com").await;
    let old_value = anonymous.split(';').next().unwrap().to_owned();
    let sessions: Vec<Option<uuid::Uuid>> = sqlx::query_scalar("SELECT user_id FROM sessions")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    // The anonymous session is gone; the member's session is new.
    assert!(sessions.iter().all(Option::is_some), "{sessions:?}");
    let replay = app
        .client
        .get(app.url("/account"))
        .header("cookie", old_value)
        .send()
        .await
        .unwrap();
    assert!(
        replay.url().path().starts_with("/sign-in"),
        "the old id must not sign anyone in"
    );
    app.finish().await;
}

#[tokio::test]
async fn a_form_without_its_csrf_token_or_from_another_site_is_refused() {
    let app = TestApp::spawn().await;
    let browser = sign_in(&app, "gina@example.com").await;
    let missing = browser.post("/account/api-keys", &[("name", "x")]).await;
    assert_eq!(missing.status, 403);
    assert!(missing.contains("This form has expired"));
    let wrong = browser
        .post("/account/api-keys", &[("csrf", "00ff"), ("name", "x")])
        .await;
    assert_eq!(wrong.status, 403);
    let page = browser.visit("/account").await;
    let mut headers = HeaderMap::new();
    headers.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
    let cross_site = browser
        .post_with(
            "/account/api-keys",
            &[("csrf", &page.csrf()), ("name", "x")],
            headers,
        )
        .await;
    assert_eq!(cross_site.status, 403);
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(keys, 0);
    let good = browser
        .post(
            "/account/api-keys",
            &[("csrf", &page.csrf()), ("name", "x")],
        )
        .await;
    assert_eq!(good.status, 303);
    app.finish().await;
}

#[tokio::test]
async fn pages_carry_the_security_headers() {
    let app = TestApp::spawn().await;
    let page = app.browser().get("/").await;
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.contains("object-src 'none'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert_eq!(
        page.header("referrer-policy"),
        Some("strict-origin-when-cross-origin")
    );
    // No inline script anywhere: every <script> has a src.
    assert!(!page.body.contains("<script>"), "inline script found");
    app.finish().await;
}

#[tokio::test]
async fn member_pages_send_visitors_to_sign_in_and_back() {
    let app = TestApp::spawn().await;
    let browser = app.browser();
    for path in ["/gallery", "/account", "/account/delete"] {
        let page = browser.get(path).await;
        assert_eq!(page.status, 303, "{path}");
        assert_eq!(
            page.location().unwrap(),
            format!("/sign-in?next={}", path.replace('/', "%2F"))
        );
    }
    app.finish().await;
}

#[tokio::test]
async fn signing_out_ends_the_session_and_sign_out_everywhere_ends_them_all() {
    let app = TestApp::spawn().await;
    let laptop = sign_in(&app, "hal@example.com").await;
    let phone = sign_in(&app, "hal@example.com").await;
    let page = laptop.visit("/account").await;
    assert!(page.contains("Signed in on 2 browser(s)"), "{}", page.body);
    laptop
        .submit("/account/sessions/revoke", &[("csrf", &page.csrf())])
        .await;
    assert_eq!(
        phone.get("/account").await.status,
        303,
        "the phone is signed out too"
    );
    assert_eq!(laptop.get("/account").await.status, 303);

    let tablet = sign_in(&app, "hal@example.com").await;
    let home = tablet.visit("/").await;
    tablet.submit("/sign-out", &[("csrf", &home.csrf())]).await;
    assert_eq!(tablet.get("/account").await.status, 303);
    app.finish().await;
}

/// Goes through Google's (stand-in) consent page as a person would, returning the page after the callback.
async fn google_sign_in(app: &TestApp, browser: &Browser) -> testkit::Page {
    let start = browser.get("/auth/google?next=/gallery").await;
    assert_eq!(start.status, 303);
    let authorize = start.location().unwrap().to_owned();
    assert!(authorize.starts_with(&app.oidc.base_url()), "{authorize}");
    assert!(authorize.contains("code_challenge_method=S256") && authorize.contains("nonce="));
    let consent = browser.get(&authorize).await;
    let mut fields = consent.hidden_fields();
    fields.push(("account".into(), GOOGLE_SUB.into()));
    let fields: Vec<(&str, &str)> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let back = browser
        .post(
            &format!("{}{}", app.oidc.base_url(), fakes::oidc::CONSENT_PATH),
            &fields,
        )
        .await;
    assert_eq!(back.status, 303);
    let callback = back.location().unwrap().to_owned();
    assert!(
        callback.starts_with(&app.url("/auth/google/callback")),
        "{callback}"
    );
    browser.get(&callback).await
}

#[tokio::test]
async fn a_visitor_signs_up_with_google_and_the_account_is_keyed_on_sub() {
    let app = TestApp::spawn().await;
    let browser = app.browser();
    let done = google_sign_in(&app, &browser).await;
    assert_eq!(done.status, 303);
    assert_eq!(done.location(), Some("/gallery"));
    let (_, balance, sub) = user_by_email(&app, GOOGLE_EMAIL).await.unwrap();
    assert_eq!(sub.as_deref(), Some(GOOGLE_SUB));
    assert_eq!(balance, 20);
    assert!(browser.visit("/gallery").await.contains("Your gallery"));
    // Signing in again finds the same account.
    let again = app.browser();
    google_sign_in(&app, &again).await;
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(users, 1);
    app.finish().await;
}

#[tokio::test]
async fn a_google_sign_in_links_to_the_existing_account_of_its_verified_address() {
    let app = TestApp::spawn().await;
    sign_in(&app, GOOGLE_EMAIL).await;
    google_sign_in(&app, &app.browser()).await;
    let (_, _, sub) = user_by_email(&app, GOOGLE_EMAIL).await.unwrap();
    assert_eq!(sub.as_deref(), Some(GOOGLE_SUB));
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(users, 1);
    app.finish().await;
}

#[tokio::test]
async fn an_id_token_that_does_not_verify_signs_nobody_in() {
    let app = TestApp::spawn().await;
    for fault in [
        fakes::oidc::IdTokenFault::WrongNonce,
        fakes::oidc::IdTokenFault::WrongAudience,
        fakes::oidc::IdTokenFault::BadSignature,
        fakes::oidc::IdTokenFault::UnknownKey,
        fakes::oidc::IdTokenFault::Expired,
    ] {
        app.oidc.set_fault(Some(fault));
        let done = google_sign_in(&app, &app.browser()).await;
        assert_eq!(done.location(), Some("/sign-in?error=google"), "{fault:?}");
    }
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(users, 0);
    app.finish().await;
}

#[tokio::test]
async fn google_sign_in_keeps_working_after_google_rotates_its_signing_key() {
    let app = TestApp::spawn().await;
    google_sign_in(&app, &app.browser()).await;
    let fetched = app.oidc.stats().jwks_requests;
    app.oidc.rotate_key();
    let done = google_sign_in(&app, &app.browser()).await;
    assert_eq!(
        done.location(),
        Some("/gallery"),
        "signed in with a token under the new key"
    );
    assert_eq!(
        app.oidc.stats().jwks_requests,
        fetched + 1,
        "the keys were fetched once more, for the unknown key id"
    );
    app.finish().await;
}

#[tokio::test]
async fn google_signing_keys_are_kept_as_long_as_their_max_age_says_and_no_longer() {
    let app = TestApp::spawn().await;
    let fetches = || app.oidc.stats().jwks_requests;
    app.oidc.set_jwks_max_age(Some(0));
    google_sign_in(&app, &app.browser()).await;
    let first = fetches();
    google_sign_in(&app, &app.browser()).await;
    assert!(
        fetches() > first,
        "keys past their max-age are fetched again"
    );
    app.oidc.set_jwks_max_age(Some(3600));
    google_sign_in(&app, &app.browser()).await;
    let kept = fetches();
    google_sign_in(&app, &app.browser()).await;
    google_sign_in(&app, &app.browser()).await;
    assert_eq!(fetches(), kept, "keys within their max-age are not fetched");
    app.finish().await;
}

#[tokio::test]
async fn a_google_callback_with_a_forged_state_is_refused() {
    let app = TestApp::spawn().await;
    let browser = app.browser();
    browser.get("/auth/google").await;
    let forged = browser
        .get("/auth/google/callback?code=abc&state=forged")
        .await;
    assert_eq!(forged.location(), Some("/sign-in?error=google"));
    let page = browser.visit("/sign-in?error=google").await;
    assert!(page.contains("Google sign-in did not complete"));
    app.finish().await;
}
