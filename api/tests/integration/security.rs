//! What an attacker's afternoon tried, each class refused: open redirects, input the database cannot hold,
//! unlimited actions, hashes that give a person's identifiers back.

use jobs::generations::Status;
use std::collections::{BTreeSet, HashSet};

use serde_json::json;
use testkit::{Browser, TestApp};

use crate::support::{sign_in, start_trial, wait_finished};

/// `next` values that leave the site in a browser (or broke the header), as they appear in a query string.
const OFFSITE: &[&str] = &[
    "/%09/evil.example/",
    "%2F%09%2Fevil.example",
    "//evil.example/",
    "/%5Cevil.example",
    "/%2F/evil.example",
    "https://evil.example/",
    "/%0A/evil.example",
    "/%0D%0ASet-Cookie:%20x=1",
    "/%00",
    "/%E2%80%83/evil.example",
];

#[tokio::test]
async fn no_next_value_sends_a_visitor_off_the_site_or_breaks_the_page() {
    let app = TestApp::spawn().await;
    let visitor = app.browser();
    let member = sign_in(&app, "next@example.com").await;
    for next in OFFSITE {
        // Signed in, `/sign-in?next=` goes straight to `next`.
        let page = member.get(&format!("/sign-in?next={next}")).await;
        assert_eq!(page.status, 303, "{next}: {}", page.body);
        assert_eq!(page.location(), Some("/"), "{next}");
        // Signed out, the forms carry it on: what they carry is the safe one.
        for path in [
            format!("/sign-in?next={next}"),
            format!("/sign-in/link?token=unknown&next={next}"),
        ] {
            let page = visitor.get(&path).await;
            assert!(page.status.as_u16() < 500, "{path}: {}", page.status);
            assert!(!page.contains("evil.example"), "{path}");
        }
        let google = visitor.get(&format!("/auth/google?next={next}")).await;
        assert!(google.status.as_u16() < 500, "{next}: {}", google.status);
        let home = visitor.visit("/").await;
        let decoded: String = url::form_urlencoded::parse(format!("n={next}").as_bytes())
            .next()
            .unwrap()
            .1
            .into_owned();
        let consent = visitor
            .post(
                "/consent",
                &[
                    ("csrf", &home.csrf()),
                    ("analytics", "denied"),
                    ("next", &decoded),
                ],
            )
            .await;
        assert_eq!(consent.status, 303, "{next}: {}", consent.body);
        assert_eq!(consent.location(), Some("/"), "{next}");
    }
    // And a path on the site is kept.
    let page = member.get("/sign-in?next=/gallery%3Fbefore%3Dx").await;
    assert_eq!(page.location(), Some("/gallery?before=x"));
    app.finish().await;
}

#[tokio::test]
async fn a_nul_byte_in_any_text_field_is_refused_naming_the_field_and_uses_up_nothing() {
    let app = TestApp::spawn().await;
    // The API.
    let user = app.create_user(100).await;
    let (status, body) = app
        .create_generation(&user, json!({"prompt": "a\u{0}cat"}))
        .await;
    assert_eq!((status, &body["field"]), (422, &json!("prompt")), "{body}");
    assert_eq!(app.balance(&user).await, 100);

    // The generator.
    let member = sign_in(&app, "nul@example.com").await;
    let home = member.visit("/").await;
    let page = member
        .post("/generate", &[("csrf", &home.csrf()), ("prompt", "a\0cat")])
        .await;
    assert_eq!(page.status, 422, "{}", page.body);
    assert!(page.contains("U+0000"), "the page says what is wrong");

    // The profile and API keys.
    let account = member.visit("/account").await;
    let page = member
        .post(
            "/account/profile",
            &[
                ("csrf", &account.csrf()),
                ("display_name", "Ada\0"),
                ("email", "nul@example.com"),
            ],
        )
        .await;
    assert_eq!(page.status, 422, "{}", page.body);
    let name: Option<String> =
        sqlx::query_scalar("SELECT display_name FROM users WHERE email = 'nul@example.com'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(name, None);
    let page = member
        .post(
            "/account/api-keys",
            &[("csrf", &account.csrf()), ("name", "ci\0")],
        )
        .await;
    assert_eq!(page.status, 422, "{}", page.body);
    let stranger = app.browser();
    let form = stranger.visit("/sign-in").await;
    let page = stranger
        .post(
            "/sign-in/email",
            &[("csrf", &form.csrf()), ("email", "a\0@example.com")],
        )
        .await;
    assert!(page.status.as_u16() < 500, "{}", page.status);

    // The trial: refused before the fingerprint is claimed, so the visitor's one trial is still there.
    let visitor = app.browser();
    let landing = visitor.visit("/").await;
    let refused = visitor
        .post(
            "/trial",
            &[
                ("csrf", &landing.csrf()),
                ("prompt", "a\0cat"),
                ("cf-turnstile-response", &app.turnstile.issue_token()),
            ],
        )
        .await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    let claimed: i64 = sqlx::query_scalar("SELECT count(*) FROM trial_fingerprints")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(claimed, 0);
    let id = start_trial(&app, &visitor, "a cat").await;
    wait_finished(&app, id).await;
    app.finish().await;
}

#[tokio::test]
async fn address_changes_are_limited_per_member_and_per_inbox() {
    let app = TestApp::spawn().await;
    let member = sign_in(&app, "changer@example.com").await;
    let mut statuses = Vec::new();
    for n in 0..6 {
        let account = member.visit("/account").await;
        let page = member
            .post(
                "/account/profile",
                &[
                    ("csrf", &account.csrf()),
                    ("display_name", ""),
                    ("email", &format!("new{n}@example.com")),
                ],
            )
            .await;
        statuses.push(page.status.as_u16());
    }
    assert_eq!(statuses, [303, 303, 303, 303, 303, 429]);

    // Six members aim at one victim: the inbox gets the address's budget (5 an hour), sign-in links included.
    for n in 0..6 {
        let attacker = sign_in(&app, &format!("attacker{n}@example.com")).await;
        let account = attacker.visit("/account").await;
        let page = attacker
            .post(
                "/account/profile",
                &[
                    ("csrf", &account.csrf()),
                    ("display_name", ""),
                    ("email", "victim@example.com"),
                ],
            )
            .await;
        assert_eq!(
            page.status, 303,
            "the answer does not tell the budget is spent"
        );
    }
    let mailed = jobs::email::sent_to(&app.pool, "victim@example.com")
        .await
        .unwrap();
    assert_eq!(mailed.len(), 5);
    // The outbox is what this test reads; its deliveries are throttled into the future.
    app.discard_unrun_jobs().await;
    app.finish().await;
}

/// Every value in every table of the app's database, as text, and the hex runs (16 or more hex digits: hashes,
/// keys, `bytea`) found in them.
async fn hex_runs(app: &TestApp) -> HashSet<String> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_schema || '.' || table_name FROM information_schema.tables
          WHERE table_schema IN ('public', 'apalis') AND table_type = 'BASE TABLE'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let mut runs = HashSet::new();
    for table in tables {
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT row_to_json(t)::text FROM {table} t"
        )))
        .fetch_all(&app.pool)
        .await
        .unwrap();
        for row in rows {
            let mut run = String::new();
            for c in row.chars().chain(std::iter::once(' ')) {
                if c.is_ascii_hexdigit() {
                    run.push(c.to_ascii_lowercase());
                } else {
                    if run.len() >= 16 {
                        runs.insert(std::mem::take(&mut run));
                    }
                    run.clear();
                }
            }
        }
    }
    runs
}

/// One deployment of the service, visited by one person (client address, browser, e-mail address): they ask for
/// a sign-in link and start the trial. Returns what the database holds afterwards.
async fn traces_of(ip: &'static str, user_agent: &'static str, email: &str) -> HashSet<String> {
    let app = TestApp::builder()
        .site(|site| {
            site.client_ip_header = Some("x-client-ip".into());
            site.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        })
        .spawn()
        .await;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("x-client-ip", ip.parse().unwrap());
    headers.insert("user-agent", user_agent.parse().unwrap());
    let browser = Browser::with_headers(&app.url(""), headers);
    let form = browser.visit("/sign-in").await;
    let sent = browser
        .post(
            "/sign-in/email",
            &[("csrf", &form.csrf()), ("email", email)],
        )
        .await;
    assert_eq!(sent.status, 303, "{}", sent.body);
    let id = start_trial(&app, &browser, "a lighthouse").await;
    wait_finished(&app, id).await;
    let runs = hex_runs(&app).await;
    // No raw identifier anywhere, in any column.
    let everything: Vec<String> = sqlx::query_scalar::<_, Option<String>>(
        "SELECT string_agg(row_to_json(t)::text, ' ') FROM sessions t
         UNION ALL SELECT string_agg(row_to_json(t)::text, ' ') FROM rate_limit_events t
         UNION ALL SELECT string_agg(row_to_json(t)::text, ' ') FROM trial_fingerprints t",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap()
    .into_iter()
    .flatten()
    .collect();
    assert!(
        everything.iter().all(|text| !text.contains(ip)),
        "the IP address is stored"
    );
    app.finish().await;
    runs
}

/// A value two independent deployments both store for the same person, and do not store for another person, is
/// computed from that person's identifiers without any secret of the deployment: whoever reads it can test
/// guesses against it (every IPv4 address takes seconds). A keyed hash under a deployment's own pepper differs
/// between deployments, so only unkeyed derivations survive this comparison.
#[tokio::test]
async fn every_stored_trace_of_a_persons_address_browser_or_email_is_keyed_by_a_secret() {
    let person = ("203.0.113.9", "Firefox/140.0", "person@example.com");
    let other = ("198.51.100.4", "Chrome/150.0", "other@example.com");
    let first = traces_of(person.0, person.1, person.2).await;
    let second = traces_of(person.0, person.1, person.2).await;
    let third = traces_of(other.0, other.1, other.2).await;
    let derivable: BTreeSet<&String> = first
        .intersection(&second)
        .filter(|run| !third.contains(*run))
        .collect();
    assert!(
        derivable.is_empty(),
        "stored values computable from the person's identifiers without a secret: {derivable:?}"
    );
    // The comparison sees what it is meant to: the same person's identifiers leave hashes in each deployment.
    assert!(first.len() > 3 && second.len() > 3);
}

/// Values an attacker types into every field: a NUL, an escaped NUL, terminal and bidi controls, a very long
/// string, path traversal, SQL and markup.
fn hostile_values() -> Vec<String> {
    vec![
        "\0".into(),
        "%00".into(),
        "\u{1b}[31m".into(),
        "\u{202e}txt.exe".into(),
        "x".repeat(20_000),
        "../../etc/passwd".into(),
        "' OR 1=1 --".into(),
        "<script>alert(1)</script>".into(),
        "\u{fffe}".into(),
    ]
}

#[tokio::test]
async fn no_hostile_input_in_any_field_gets_a_500() {
    let app = TestApp::spawn().await;
    let user = app.create_user(1_000).await;
    let member = sign_in(&app, "hostile@example.com").await;
    let mut failures = Vec::new();
    let mut check = |what: String, status: u16| {
        if status >= 500 {
            failures.push(format!("{status} {what}"));
        }
    };
    for value in hostile_values() {
        let encoded: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
        let short: String = value.chars().take(20).collect();
        // Paths and query strings, on the site and the API.
        for path in [
            format!("/gallery?before={encoded}"),
            format!("/generations/{encoded}"),
            format!("/generations/{encoded}/download"),
            format!("/billing/intents/{encoded}"),
            format!("/sign-in/link?token={encoded}&next={encoded}"),
            format!("/account/email/confirm?token={encoded}"),
            format!("/auth/google/callback?state={encoded}&code={encoded}"),
            format!("/sign-in?next={encoded}&error={encoded}"),
            format!("/?{encoded}"),
        ] {
            let page = member.get(&path).await;
            check(
                format!("GET {}", path.chars().take(60).collect::<String>()),
                page.status.as_u16(),
            );
        }
        for path in [
            format!("/api/v1/generations?cursor={encoded}"),
            format!("/api/v1/generations/{encoded}"),
            format!("/api/v1/generations/{encoded}/events"),
            format!("/api/v1/exports/{encoded}"),
        ] {
            let response = app.get_with_key(&path, &user.api_key).await;
            check(
                format!("GET {}", path.chars().take(60).collect::<String>()),
                response.status().as_u16(),
            );
        }
        // Every field of the JSON API.
        for body in [
            json!({"prompt": value}),
            json!({"prompt": "p", "aspect_ratio": value}),
            json!({"prompt": "p", "resolution": value}),
            json!({"prompt": "p", "reference_upload_ids": [value]}),
        ] {
            let response = app.post_json("/api/v1/generations", &user, &body).await;
            check(
                format!("POST /api/v1/generations {short:?}"),
                response.status().as_u16(),
            );
        }
        let response = app
            .post_json(
                "/api/v1/uploads",
                &user,
                &json!({"content_type": value, "byte_size": 10}),
            )
            .await;
        check(
            format!("POST /api/v1/uploads {short:?}"),
            response.status().as_u16(),
        );
        if let Ok(header) = reqwest::header::HeaderValue::from_str(&value) {
            let response = app
                .client
                .post(app.url("/api/v1/generations"))
                .bearer_auth(&user.api_key)
                .header("idempotency-key", header)
                .json(&json!({"prompt": "p"}))
                .send()
                .await
                .unwrap();
            check(
                format!("Idempotency-Key {short:?}"),
                response.status().as_u16(),
            );
        }
        let response = app
            .client
            .delete(app.url("/api/v1/account"))
            .bearer_auth(&user.api_key)
            .json(&json!({"confirm": value}))
            .send()
            .await
            .unwrap();
        check(
            format!("DELETE /api/v1/account {short:?}"),
            response.status().as_u16(),
        );
        // Webhooks.
        let response = app
            .client
            .post(app.url(&format!("/webhooks/kie/{}/{encoded}", uuid::Uuid::new_v4())))
            .body(value.clone())
            .send()
            .await
            .unwrap();
        check(
            format!("kie callback {short:?}"),
            response.status().as_u16(),
        );
        let response = app
            .client
            .post(app.url("/webhooks/stripe"))
            .header("stripe-signature", format!("t=1,v1={encoded}"))
            .body(value.clone())
            .send()
            .await
            .unwrap();
        check(
            format!("stripe webhook {short:?}"),
            response.status().as_u16(),
        );
        // Every field of every form, the others plausible.
        let forms: &[(&str, &[(&str, &str)])] = &[
            (
                "/generate",
                &[
                    ("prompt", "p"),
                    ("aspect_ratio", "auto"),
                    ("resolution", "1K"),
                    ("idempotency_key", "k"),
                ],
            ),
            (
                "/account/profile",
                &[("display_name", "Ada"), ("email", "hostile@example.com")],
            ),
            ("/account/api-keys", &[("name", "ci")]),
            ("/billing/checkout", &[("product", "pack_100")]),
            ("/consent", &[("analytics", "denied"), ("next", "/")]),
            (
                "/sign-in/email",
                &[("email", "x@example.com"), ("next", "/")],
            ),
            (
                "/account/delete",
                &[("confirm_email", "nobody@example.com")],
            ),
        ];
        for (path, fields) in forms {
            for hostile_field in 0..fields.len() {
                let home = member.visit("/account").await;
                let csrf = home.csrf();
                let mut form: Vec<(&str, &str)> = vec![("csrf", &csrf)];
                for (n, (name, plausible)) in fields.iter().enumerate() {
                    form.push((
                        name,
                        if n == hostile_field {
                            &value
                        } else {
                            plausible
                        },
                    ));
                }
                let page = member.post(path, &form).await;
                check(
                    format!("POST {path} {}={short:?}", fields[hostile_field].0),
                    page.status.as_u16(),
                );
            }
        }
    }
    assert!(
        failures.is_empty(),
        "answered 5xx:\n{}",
        failures.join("\n")
    );
    app.discard_unrun_jobs().await;
    app.finish().await;
}

#[tokio::test]
async fn trial_attempts_are_limited_per_client_whatever_their_outcome() {
    let app = TestApp::spawn().await;
    let mut statuses = Vec::new();
    for _ in 0..21 {
        let visitor = app.browser();
        let landing = visitor.visit("/").await;
        let page = visitor
            .post(
                "/trial",
                &[
                    ("csrf", &landing.csrf()),
                    ("prompt", "a cat"),
                    ("cf-turnstile-response", "forged"),
                ],
            )
            .await;
        statuses.push(page.status.as_u16());
    }
    assert_eq!(&statuses[..20], [403; 20], "each refused by the bot check");
    assert_eq!(statuses[20], 429, "the 21st in an hour is not even checked");
    assert_eq!(app.turnstile.calls(), 20, "no siteverify call for it");
    app.finish().await;
}

#[tokio::test]
async fn a_trial_whose_generation_cannot_be_recorded_is_not_used_up() {
    let app = TestApp::spawn().await;
    // The database refuses the trial's generation row, after the bot check and the fingerprint.
    for statement in [
        "CREATE FUNCTION test_refuse_generation() RETURNS trigger LANGUAGE plpgsql
            AS $$ BEGIN RAISE EXCEPTION 'the disk is full'; END $$",
        "CREATE TRIGGER test_refuse_generation BEFORE INSERT ON generations
            FOR EACH ROW EXECUTE FUNCTION test_refuse_generation()",
    ] {
        sqlx::query(statement).execute(&app.pool).await.unwrap();
    }
    let visitor = app.browser();
    let landing = visitor.visit("/").await;
    let failed = visitor
        .post(
            "/trial",
            &[
                ("csrf", &landing.csrf()),
                ("prompt", "a cat"),
                ("cf-turnstile-response", &app.turnstile.issue_token()),
            ],
        )
        .await;
    assert_eq!(failed.status, 500);
    let claimed: i64 = sqlx::query_scalar("SELECT count(*) FROM trial_fingerprints")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        claimed, 0,
        "the fingerprint rolled back with the generation"
    );
    sqlx::query("DROP TRIGGER test_refuse_generation ON generations")
        .execute(&app.pool)
        .await
        .unwrap();
    let id = start_trial(&app, &visitor, "a cat").await;
    assert_eq!(wait_finished(&app, id).await, Status::Succeeded);
    app.finish().await;
}

#[tokio::test]
async fn issuing_api_keys_and_signing_uploads_have_budgets_that_refusals_spend_too() {
    let app = TestApp::spawn().await;
    let member = sign_in(&app, "keys@example.com").await;
    let mut statuses = Vec::new();
    for n in 0..21 {
        let account = member.visit("/account").await;
        let page = member
            .post(
                "/account/api-keys",
                &[("csrf", &account.csrf()), ("name", &format!("key {n}"))],
            )
            .await;
        statuses.push(page.status.as_u16());
    }
    assert_eq!(&statuses[..20], [303; 20]);
    assert_eq!(statuses[20], 429, "the 21st key in an hour");

    let user = app.create_user(0).await;
    let mut last = 0;
    for n in 0..301 {
        // Refused uploads (a type the service does not take) count like accepted ones.
        let content_type = if n % 2 == 0 { "image/png" } else { "text/html" };
        let response = app
            .post_json(
                "/api/v1/uploads",
                &user,
                &json!({"content_type": content_type, "byte_size": 10}),
            )
            .await;
        last = response.status().as_u16();
        assert!(n == 300 || last != 429, "refused early, at {n}");
    }
    assert_eq!(last, 429, "the 301st upload in an hour");
    app.finish().await;
}

#[tokio::test]
async fn a_json_body_that_does_not_fit_is_refused_with_422_naming_the_field() {
    let app = TestApp::builder().without_worker().spawn().await;
    let user = app.create_user(100).await;
    let post = |raw: &'static str| {
        app.client
            .post(app.url("/api/v1/generations"))
            .bearer_auth(&user.api_key)
            .header("content-type", "application/json")
            .body(raw)
            .send()
    };
    for (raw, field) in [
        // An unpaired surrogate cannot be text in Postgres or anywhere else.
        (r#"{"prompt": "a\ud800cat"}"#, Some("prompt")),
        (r#"{"prompt": 7}"#, Some("prompt")),
        (
            r#"{"prompt": "p", "reference_upload_ids": ["x"]}"#,
            Some("reference_upload_ids[0]"),
        ),
        (r#"{"prompt": "#, None),
    ] {
        let response = post(raw).await.unwrap();
        assert_eq!(response.status(), 422, "{raw}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "invalid", "{raw}: {body}");
        match field {
            Some(field) => assert_eq!(body["field"], field, "{raw}: {body}"),
            None => assert!(body["field"].is_string(), "{raw}: {body}"),
        }
    }
    assert_eq!(app.balance(&user).await, 100);
    app.finish().await;
}
