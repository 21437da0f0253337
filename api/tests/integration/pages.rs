//! The site's pages and forms: generator, status page, gallery, trial, account, consent, legal pages.

use jobs::generations::Status;
use testkit::{GA4_ID, TestApp, images};

use crate::support::{generation_id, sign_in, sign_in_with, wait_finished};

#[tokio::test]
async fn a_member_generates_an_image_watches_it_finish_and_downloads_it() {
    let app = TestApp::spawn().await;
    let browser = sign_in(&app, "ada@example.com").await;
    let home = browser.visit("/").await;
    assert!(home.contains("This costs"));
    let posted = browser
        .post(
            "/generate",
            &[
                ("csrf", &home.csrf()),
                ("idempotency_key", &home.field("idempotency_key").unwrap()),
                ("prompt", "a lighthouse at dawn"),
                ("aspect_ratio", "1:1"),
                ("resolution", "1K"),
            ],
        )
        .await;
    assert_eq!(posted.status, 303, "{}", posted.body);
    let location = posted.location().unwrap().to_owned();
    let id = generation_id(&location);
    let waiting = browser.visit(&location).await;
    assert!(waiting.contains("a lighthouse at dawn"));
    assert_eq!(wait_finished(&app, id).await, Status::Succeeded);
    let done = browser.visit(&location).await;
    assert!(done.contains("id=\"image-0\""), "{}", done.body);
    assert!(
        !done.contains("http-equiv=\"refresh\""),
        "a finished page stops refreshing"
    );
    let download = browser.get(&format!("/generations/{id}/download")).await;
    assert_eq!(download.status, 303);
    let file = app
        .client
        .get(download.location().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(file.status(), 200);
    assert!(
        file.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment"),
        "the original downloads as a file"
    );
    assert!(file.bytes().await.unwrap().starts_with(b"\x89PNG"));
    let gallery = browser.visit("/gallery").await;
    assert!(gallery.contains(&format!("/generations/{id}")));
    app.finish().await;
}

#[tokio::test]
async fn a_resubmitted_generator_form_creates_one_generation() {
    let app = TestApp::spawn().await;
    let browser = sign_in(&app, "ben@example.com").await;
    let home = browser.visit("/").await;
    let key = home.field("idempotency_key").unwrap();
    let fields = [
        ("csrf", home.csrf()),
        ("idempotency_key", key),
        ("prompt", "twice".to_owned()),
        ("resolution", "1K".to_owned()),
    ];
    let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let first = browser.post("/generate", &fields).await;
    let second = browser.post("/generate", &fields).await;
    assert_eq!(first.location(), second.location());
    wait_finished(&app, generation_id(first.location().unwrap())).await;
    app.finish().await;
}

#[tokio::test]
async fn the_generator_offers_each_models_own_resolutions_with_and_without_references() {
    let app = TestApp::spawn().await;
    let browser = sign_in(&app, "rules@example.com").await;
    let home = browser.visit("/").await;
    assert!(
        home.contains("data-allowed=\"auto=1K|2K|4K;1:1=1K|2K|4K;"),
        "text to image: {}",
        home.body
    );
    assert!(
        home.contains("data-allowed-with-references=\"auto=1K;1:1=1K|2K;"),
        "image to image: {}",
        home.body
    );
    assert!(home.contains(";5:4=1K;"));
    app.finish().await;
}

#[tokio::test]
async fn a_refused_generation_shows_the_form_again_with_the_reason_and_the_prompt_kept() {
    let app = TestApp::spawn().await;
    let browser = sign_in(&app, "cy@example.com").await;
    let home = browser.visit("/").await;
    let refused = browser
        .post(
            "/generate",
            &[
                ("csrf", &home.csrf()),
                ("prompt", "a castle in 4K"),
                ("aspect_ratio", "16:9"),
                ("resolution", "4K"),
            ],
        )
        .await;
    assert_eq!(refused.status, 402);
    assert!(
        refused.contains("This needs 40 credits and your balance is 20"),
        "{}",
        refused.body
    );
    assert!(refused.contains("a castle in 4K"));
    let invalid = browser
        .post(
            "/generate",
            &[
                ("csrf", &home.csrf()),
                ("prompt", "x"),
                ("aspect_ratio", "5:4"),
                ("resolution", "2K"),
            ],
        )
        .await;
    assert_eq!(invalid.status, 422);
    assert!(invalid.contains("2K is not available with aspect ratio 5:4"));
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM generations")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(count, 0);
    app.finish().await;
}

#[tokio::test]
async fn a_reference_uploaded_from_the_page_goes_to_the_bucket_and_into_the_generation() {
    let app = TestApp::spawn().await;
    let browser = sign_in(&app, "dee@example.com").await;
    let home = browser.visit("/").await;
    let png = images::png(8, 8);
    // What the page's script does: sign, PUT straight to the bucket, then post the form with the id.
    let signed: serde_json::Value = browser
        .client()
        .post(app.url("/uploads"))
        .header("x-csrf-token", home.csrf())
        .json(&serde_json::json!({"content_type": "image/png", "byte_size": png.len()}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let put = app
        .client
        .put(signed["upload_url"].as_str().unwrap())
        .header("content-type", "image/png")
        .body(png)
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success());
    let upload = signed["upload_id"].as_str().unwrap();
    let posted = browser
        .post(
            "/generate",
            &[
                ("csrf", &home.csrf()),
                ("prompt", "in this style"),
                ("reference_upload_ids", upload),
            ],
        )
        .await;
    let id = generation_id(posted.location().unwrap());
    let references: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT reference_upload_ids FROM generations WHERE id = $1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(references, vec![upload.parse::<uuid::Uuid>().unwrap()]);
    assert_eq!(wait_finished(&app, id).await, Status::Succeeded);
    app.finish().await;
}

#[tokio::test]
async fn the_upload_endpoint_wants_the_csrf_header() {
    let app = TestApp::spawn().await;
    let browser = sign_in(&app, "eli@example.com").await;
    let response = browser
        .client()
        .post(app.url("/uploads"))
        .json(&serde_json::json!({"content_type": "image/png", "byte_size": 10}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    app.finish().await;
}

#[tokio::test]
async fn another_members_generation_is_invisible_to_every_page() {
    let app = TestApp::spawn().await;
    let owner = sign_in(&app, "owner@example.com").await;
    let home = owner.visit("/").await;
    let posted = owner
        .post("/generate", &[("csrf", &home.csrf()), ("prompt", "mine")])
        .await;
    let id = generation_id(posted.location().unwrap());
    wait_finished(&app, id).await;
    let stranger = sign_in(&app, "stranger@example.com").await;
    for path in [
        format!("/generations/{id}"),
        format!("/generations/{id}/download"),
        format!("/generations/{id}/delete"),
        format!("/generations/{id}/events"),
    ] {
        assert_eq!(stranger.get(&path).await.status, 404, "{path}");
    }
    for path in [
        format!("/generations/{id}"),
        format!("/generations/{id}/download"),
        format!("/generations/{id}/events"),
    ] {
        assert_eq!(
            app.browser().get(&path).await.status,
            404,
            "{path} for a visitor"
        );
    }
    let csrf = stranger.visit("/").await.csrf();
    let delete = stranger
        .post(&format!("/generations/{id}/delete"), &[("csrf", &csrf)])
        .await;
    assert_eq!(delete.status, 404);
    assert!(!stranger.visit("/gallery").await.contains("mine"));
    app.finish().await;
}

#[tokio::test]
async fn deleting_asks_for_confirmation_then_removes_the_image() {
    let app = TestApp::spawn().await;
    let browser = sign_in(&app, "fay@example.com").await;
    let home = browser.visit("/").await;
    let posted = browser
        .post(
            "/generate",
            &[("csrf", &home.csrf()), ("prompt", "to delete")],
        )
        .await;
    let id = generation_id(posted.location().unwrap());
    wait_finished(&app, id).await;
    let confirm = browser.visit(&format!("/generations/{id}/delete")).await;
    assert!(confirm.contains("Delete this image?"));
    let gallery = browser
        .submit(
            &format!("/generations/{id}/delete"),
            &[("csrf", &confirm.csrf())],
        )
        .await;
    assert!(gallery.contains("The image was deleted."));
    assert!(!gallery.contains(&format!("/generations/{id}")));
    app.drain().await;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM generations WHERE id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "the job removed the rows and objects");
    app.finish().await;
}

#[tokio::test]
async fn use_as_reference_opens_the_generator_with_the_image_attached() {
    let app = TestApp::spawn().await;
    let browser = sign_in(&app, "gus@example.com").await;
    let home = browser.visit("/").await;
    let posted = browser
        .post("/generate", &[("csrf", &home.csrf()), ("prompt", "first")])
        .await;
    let id = generation_id(posted.location().unwrap());
    wait_finished(&app, id).await;
    let page = browser.visit(&format!("/generations/{id}")).await;
    let generator = browser
        .submit(
            &format!("/generations/{id}/reference"),
            &[("csrf", &page.csrf())],
        )
        .await;
    let upload = generator
        .field("reference_upload_ids")
        .expect("the reference is attached");
    let key: String = sqlx::query_scalar("SELECT object_key FROM uploads WHERE id = $1::uuid")
        .bind(&upload)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(
        app.storage.head(&key).await.unwrap().is_some(),
        "the copy exists in the bucket"
    );
    assert!(
        generator.contains(">first</textarea>"),
        "the prompt is kept: {}",
        generator.body
    );
    app.finish().await;
}

#[tokio::test]
async fn again_makes_the_same_generation_and_edit_prompt_opens_it_in_the_generator() {
    let app = TestApp::spawn().await;
    let browser = sign_in(&app, "iris@example.com").await;
    let user: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM users WHERE email = 'iris@example.com'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let mut conn = app.pool.acquire().await.unwrap();
    jobs::credits::apply(
        &mut conn,
        user,
        jobs::credits::Kind::Grant,
        100,
        "test:top-up",
        serde_json::json!({}),
    )
    .await
    .unwrap();
    drop(conn);
    let home = browser.visit("/").await;
    let reference = browser
        .client()
        .post(app.url("/uploads"))
        .header("x-csrf-token", home.csrf())
        .json(
            &serde_json::json!({"content_type": "image/png", "byte_size": images::png(8, 8).len()}),
        )
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let upload_url = reference["upload_url"].as_str().unwrap();
    let put = app
        .client
        .put(upload_url)
        .header("content-type", "image/png")
        .body(images::png(8, 8))
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success());
    let upload = reference["upload_id"].as_str().unwrap().to_owned();
    let posted = browser
        .post(
            "/generate",
            &[
                ("csrf", &home.csrf()),
                ("prompt", "a kite over dunes"),
                ("aspect_ratio", "16:9"),
                ("resolution", "2K"),
                ("reference_upload_ids", &upload),
            ],
        )
        .await;
    let first = generation_id(posted.location().unwrap());
    wait_finished(&app, first).await;
    let page = browser.visit(&format!("/generations/{first}")).await;
    assert!(
        page.contains("Made with 1 reference image"),
        "{}",
        page.body
    );

    // Again: the same request, from the page's own form.
    let again = browser
        .post(
            "/generate",
            &[
                ("csrf", &page.csrf()),
                ("idempotency_key", &page.field("idempotency_key").unwrap()),
                ("prompt", &page.field("prompt").unwrap()),
                ("aspect_ratio", &page.field("aspect_ratio").unwrap()),
                ("resolution", &page.field("resolution").unwrap()),
                (
                    "reference_upload_ids",
                    &page.field("reference_upload_ids").unwrap(),
                ),
            ],
        )
        .await;
    let second = generation_id(again.location().unwrap_or_else(|| panic!("{}", again.body)));
    assert_ne!(first, second);
    let settings = |id: uuid::Uuid| {
        sqlx::query_as::<_, (String, String, String, Vec<uuid::Uuid>)>(
            "SELECT prompt, aspect_ratio, resolution, reference_upload_ids FROM generations WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&app.pool)
    };
    assert_eq!(
        settings(first).await.unwrap(),
        settings(second).await.unwrap()
    );

    // Edit prompt: the generator, filled in.
    let edit = browser.visit(&format!("/?from={first}")).await;
    assert!(
        edit.contains(">a kite over dunes</textarea>"),
        "{}",
        edit.body
    );
    assert!(
        edit.contains(r#"id="ratio-16x9" name="aspect_ratio" value="16:9" checked"#),
        "{}",
        edit.body
    );
    assert!(
        edit.contains(r#"id="resolution-2K" name="resolution" value="2K" data-cost="20" checked"#)
    );
    assert_eq!(edit.field("reference_upload_ids"), Some(upload));
    // Another member's generation fills in nothing.
    let stranger = sign_in(&app, "jon@example.com").await;
    let blank = stranger.visit(&format!("/?from={first}")).await;
    assert!(!blank.contains("a kite over dunes"));
    wait_finished(&app, second).await;
    app.finish().await;
}

#[tokio::test]
async fn the_gallery_shows_newest_first_in_pages() {
    let app = TestApp::spawn().await;
    let browser = sign_in(&app, "hana@example.com").await;
    let user: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM users WHERE email = 'hana@example.com'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    for n in 0..30 {
        sqlx::query(
            "INSERT INTO generations (id, user_id, prompt, model, credits_reserved, trace_id, status, finished_at, created_at)
             VALUES (gen_random_uuid(), $1, $2, 'm', 0, 't', 'failed', now(), now() - make_interval(mins => $3))",
        )
        .bind(user)
        .bind(format!("prompt number {n:02}"))
        .bind(n)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    let first = browser.visit("/gallery").await;
    assert!(first.contains("prompt number 00") && first.contains("prompt number 23"));
    assert!(!first.contains("prompt number 24"));
    let newest = first.body.find("prompt number 00").unwrap();
    assert!(newest < first.body.find("prompt number 01").unwrap());
    let older = first.body.split("href=\"/gallery?before=").nth(1).unwrap();
    let cursor = &older[..older.find('"').unwrap()];
    let second = browser.visit(&format!("/gallery?before={cursor}")).await;
    assert!(second.contains("prompt number 24") && second.contains("prompt number 29"));
    assert!(!second.contains("prompt number 23"));
    app.finish().await;
}

#[tokio::test]
async fn a_visitor_gets_one_free_trial_and_a_second_is_refused() {
    let app = TestApp::spawn().await;
    let browser = app.browser();
    let landing = browser.visit("/").await;
    assert!(
        landing.contains("cf-turnstile"),
        "the landing page offers the trial"
    );
    let token = app.turnstile.issue_token();
    let started = browser
        .post(
            "/trial",
            &[
                ("csrf", &landing.csrf()),
                ("prompt", "a free cat"),
                ("cf-turnstile-response", &token),
            ],
        )
        .await;
    assert_eq!(started.status, 303, "{}", started.body);
    let id = generation_id(started.location().unwrap());
    assert_eq!(wait_finished(&app, id).await, Status::Succeeded);
    let page = browser.visit(&format!("/generations/{id}")).await;
    assert!(page.contains("Sign up to keep it") && page.contains("id=\"image-0\""));
    let sent = app.turnstile.last_request().unwrap();
    assert!(sent.remoteip.is_some() && sent.idempotency_key.is_some());

    // Another browser on the same machine (same IP and user agent) within 24 hours.
    let again = app.browser();
    let landing = again.visit("/").await;
    let refused = again
        .post(
            "/trial",
            &[
                ("csrf", &landing.csrf()),
                ("prompt", "another cat"),
                ("cf-turnstile-response", &app.turnstile.issue_token()),
            ],
        )
        .await;
    assert_eq!(refused.status, 429);
    assert!(refused.contains("already used today's free trial"));
    assert!(refused.contains("another cat"), "the prompt is kept");
    // Only a keyed hash is stored, never the address.
    let fingerprints: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT fingerprint FROM trial_fingerprints")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(fingerprints.len(), 1);
    assert_eq!(fingerprints[0].len(), 32);
    let leaked: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sessions WHERE data::text LIKE '%127.0.0.1%'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(leaked, 0);
    app.finish().await;
}

#[tokio::test]
async fn a_failed_bot_check_refuses_the_trial_and_uses_up_nothing() {
    let app = TestApp::spawn().await;
    let browser = app.browser();
    let landing = browser.visit("/").await;
    let refused = browser
        .post(
            "/trial",
            &[
                ("csrf", &landing.csrf()),
                ("prompt", "a dog"),
                ("cf-turnstile-response", "forged"),
            ],
        )
        .await;
    assert_eq!(refused.status, 403);
    assert!(refused.contains("bot check did not pass") && refused.contains("a dog"));
    let token = app.turnstile.issue_token();
    let spent = browser
        .post(
            "/trial",
            &[
                ("csrf", &landing.csrf()),
                ("prompt", "a dog"),
                ("cf-turnstile-response", &token),
            ],
        )
        .await;
    assert_eq!(spent.status, 303);
    // The same token again: Turnstile tokens are single use.
    let replay = app.browser();
    let page = replay.visit("/").await;
    let again = replay
        .post(
            "/trial",
            &[
                ("csrf", &page.csrf()),
                ("prompt", "a dog"),
                ("cf-turnstile-response", &token),
            ],
        )
        .await;
    assert_eq!(again.status, 403);
    wait_finished(&app, generation_id(spent.location().unwrap())).await;
    app.finish().await;
}

/// Cloudflare: "It is recommended to validate that the action matches an expected value." The widget asks for
/// `data-action="trial"`; a token solved for another action is not a trial token.
#[tokio::test]
async fn a_bot_check_token_made_for_another_action_refuses_the_trial() {
    let app = TestApp::spawn().await;
    let browser = app.browser();
    let landing = browser.visit("/").await;
    assert!(
        landing.contains("data-action=\"trial\""),
        "{}",
        landing.body
    );
    let refused = browser
        .post(
            "/trial",
            &[
                ("csrf", &landing.csrf()),
                ("prompt", "a cat"),
                (
                    "cf-turnstile-response",
                    &app.turnstile.issue_token_for_action("login"),
                ),
            ],
        )
        .await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.contains("bot check did not pass"));
    let claimed: i64 = sqlx::query_scalar("SELECT count(*) FROM trial_fingerprints")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(claimed, 0, "nothing used up");
    app.finish().await;
}

/// Cloudflare's test secret keys answer with the hostname `example.com`: a staging site using them names it in
/// `TURNSTILE_EXPECTED_HOSTNAME`, and its trial works.
#[tokio::test]
async fn with_cloudflares_test_secret_and_its_hostname_configured_the_trial_is_accepted() {
    let app = TestApp::builder()
        .turnstile(|turnstile| {
            turnstile.secret_key = fakes::turnstile::TEST_SECRET_PASS.to_owned().into();
            turnstile.expected_hostname = Some("example.com".into());
        })
        .spawn()
        .await;
    let browser = app.browser();
    let landing = browser.visit("/").await;
    let started = browser
        .post(
            "/trial",
            &[
                ("csrf", &landing.csrf()),
                ("prompt", "a staging cat"),
                ("cf-turnstile-response", fakes::turnstile::DUMMY_TOKEN),
            ],
        )
        .await;
    assert_eq!(started.status, 303, "{}", started.body);
    wait_finished(&app, generation_id(started.location().unwrap())).await;
    app.finish().await;
}

/// Without the setting, the hostname must be the site's own: the test secret's `example.com` is refused.
#[tokio::test]
async fn a_bot_check_answer_for_another_hostname_refuses_the_trial() {
    let app = TestApp::builder()
        .turnstile(|turnstile| {
            turnstile.secret_key = fakes::turnstile::TEST_SECRET_PASS.to_owned().into();
        })
        .spawn()
        .await;
    let browser = app.browser();
    let landing = browser.visit("/").await;
    let refused = browser
        .post(
            "/trial",
            &[
                ("csrf", &landing.csrf()),
                ("prompt", "a cat"),
                ("cf-turnstile-response", fakes::turnstile::DUMMY_TOKEN),
            ],
        )
        .await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    app.finish().await;
}

#[tokio::test]
async fn signing_up_after_a_trial_keeps_the_trial_image() {
    let app = TestApp::spawn().await;
    let browser = app.browser();
    let id = crate::support::start_trial(&app, &browser, "keep me").await;
    wait_finished(&app, id).await;
    sign_in_with(&app, &browser, "ivy@example.com").await;
    let owner: Option<uuid::Uuid> =
        sqlx::query_scalar("SELECT user_id FROM generations WHERE id = $1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(owner.is_some());
    assert!(browser.visit("/gallery").await.contains("keep me"));
    app.finish().await;
}

#[tokio::test]
async fn the_account_page_shows_credits_usage_and_keys_and_a_key_is_shown_once() {
    let app = TestApp::spawn().await;
    let browser = sign_in(&app, "jay@example.com").await;
    let page = browser.visit("/account").await;
    assert!(page.contains("id=\"balance\">20<"), "{}", page.body);
    assert!(
        page.contains("Welcome credits for signing up"),
        "the ledger lists the sign-up grant in words: {}",
        page.body
    );
    let created = browser
        .submit(
            "/account/api-keys",
            &[("csrf", &page.csrf()), ("name", "my script")],
        )
        .await;
    assert!(created.contains("id=\"new-api-key\""));
    let key = created.body.split("id=\"new-api-key\">").nth(1).unwrap();
    let key = &key[..key.find('<').unwrap()];
    let me = app.get_with_key("/api/v1/me", key).await;
    assert_eq!(me.status(), 200);
    let again = browser.visit("/account").await;
    assert!(!again.contains(key), "the key is shown only once");
    let key_id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM api_keys")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    browser
        .submit(
            &format!("/account/api-keys/{key_id}/revoke"),
            &[("csrf", &again.csrf())],
        )
        .await;
    assert_eq!(app.get_with_key("/api/v1/me", key).await.status(), 401);
    app.finish().await;
}

#[tokio::test]
async fn an_email_change_takes_effect_only_from_the_new_inbox() {
    let app = TestApp::spawn().await;
    let browser = sign_in(&app, "kim@example.com").await;
    let page = browser.visit("/account").await;
    let saved = browser
        .submit(
            "/account/profile",
            &[
                ("csrf", &page.csrf()),
                ("display_name", "Kim"),
                ("email", "kim@new.example.com"),
            ],
        )
        .await;
    assert!(saved.contains("We sent a confirmation link to kim@new.example.com"));
    let email: String = sqlx::query_scalar("SELECT email FROM users WHERE display_name = 'Kim'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(email, "kim@example.com", "unchanged until confirmed");
    let link =
        crate::support::latest_link(&app, "kim@new.example.com", "/account/email/confirm").await;
    let landing = browser.visit(&link).await;
    let done = browser
        .submit(
            "/account/email/confirm",
            &[
                ("csrf", &landing.csrf()),
                ("token", &landing.field("token").unwrap()),
            ],
        )
        .await;
    assert!(done.contains("Your e-mail address is now kim@new.example.com"));
    app.finish().await;
}

#[tokio::test]
async fn deleting_the_account_needs_the_address_typed_and_signs_out() {
    let app = TestApp::spawn().await;
    let browser = sign_in(&app, "lee@example.com").await;
    let confirm = browser.visit("/account/delete").await;
    let wrong = browser
        .post(
            "/account/delete",
            &[
                ("csrf", &confirm.csrf()),
                ("confirm_email", "other@example.com"),
            ],
        )
        .await;
    assert_eq!(wrong.status, 400);
    let done = browser
        .submit(
            "/account/delete",
            &[
                ("csrf", &confirm.csrf()),
                ("confirm_email", "LEE@example.com"),
            ],
        )
        .await;
    assert!(done.contains("Your account is closed"));
    assert_eq!(browser.get("/account").await.status, 303);
    app.drain().await;
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(users, 0, "the deletion job removed the account");
    app.finish().await;
}

#[tokio::test]
async fn an_export_is_requested_from_the_account_page() {
    let app = TestApp::spawn().await;
    let browser = sign_in(&app, "max@example.com").await;
    let page = browser.visit("/account").await;
    let after = browser
        .submit("/account/export", &[("csrf", &page.csrf())])
        .await;
    assert!(after.contains("Your export is being prepared"));
    app.drain().await;
    let after = browser.visit("/account").await;
    assert!(after.contains(": ready"), "{}", after.body);
    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM export_requests")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let download = browser
        .get(&format!("/account/exports/{id}/download"))
        .await;
    assert_eq!(download.status, 303);
    app.finish().await;
}

#[tokio::test]
async fn analytics_load_only_after_consent_and_stop_when_it_is_withdrawn() {
    let app = TestApp::spawn().await;
    let browser = app.browser();
    let first = browser.visit("/").await;
    assert!(first.contains("id=\"consent-banner\""));
    assert!(
        !first.contains(GA4_ID),
        "nothing about analytics before consent"
    );
    let accepted = browser
        .submit(
            "/consent",
            &[
                ("csrf", &first.csrf()),
                ("analytics", "yes"),
                ("next", "/pricing"),
            ],
        )
        .await;
    assert!(accepted.contains(&format!("data-ga-id=\"{GA4_ID}\"")));
    assert!(!accepted.contains("id=\"consent-banner\""));
    let withdrawn = browser
        .submit(
            "/consent",
            &[
                ("csrf", &accepted.csrf()),
                ("analytics", "no"),
                ("next", "/"),
            ],
        )
        .await;
    assert!(!withdrawn.contains(GA4_ID));
    let records: Vec<bool> =
        sqlx::query_scalar("SELECT analytics FROM consent_records ORDER BY id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(records, [true, false]);
    app.finish().await;
}

#[tokio::test]
async fn do_not_track_and_global_privacy_control_keep_analytics_off_even_with_consent() {
    let app = TestApp::spawn().await;
    for (header, value) in [("dnt", "1"), ("sec-gpc", "1")] {
        let browser = testkit::Browser::with_header(&app.url(""), header, value);
        let page = browser.visit("/").await;
        assert!(!page.contains("id=\"consent-banner\""), "{header}");
        let after = browser
            .submit(
                "/consent",
                &[("csrf", &page.csrf()), ("analytics", "yes"), ("next", "/")],
            )
            .await;
        assert!(!after.contains(GA4_ID), "{header}");
    }
    app.finish().await;
}

#[tokio::test]
async fn the_public_pages_render_in_the_site_layout() {
    let app = TestApp::spawn().await;
    let browser = app.browser();
    for (path, text) in [
        ("/", "Generate images with gpt-image-2"),
        ("/pricing", "Credit packs"),
        ("/privacy-policy", "Last updated: 2026-04-29"),
        ("/terms", "Terms of service"),
        ("/sign-in", "Sign in or sign up"),
    ] {
        let page = browser.visit(path).await;
        assert_eq!(page.status, 200, "{path}");
        assert!(page.contains(text), "{path}: {text}");
        assert!(
            page.contains("href=\"/privacy-policy\""),
            "{path}: the footer links the policy"
        );
    }
    let policy = browser.visit("/privacy-policy").await;
    assert!(
        policy.contains("Free-trial fingerprints: Rotated/expired automatically after 24 hours.")
    );
    assert!(
        !policy.contains("Apr 29, 2026"),
        "the date is shown once, as Last updated"
    );
    assert!(
        policy.contains("<ol><li>Account information."),
        "numbered items are an ordered list, numbered once"
    );
    assert!(!policy.contains("<li>1. "), "no second number in the text");
    let missing = browser.get("/nothing/here").await;
    assert_eq!(missing.status, 404);
    assert!(missing.contains("Page not found") && missing.contains("site-header"));
    app.finish().await;
}

#[tokio::test]
async fn an_announced_policy_change_shows_on_the_policy_page() {
    let app = TestApp::spawn().await;
    let effective = chrono::Utc::now() + chrono::Duration::days(40);
    jobs::policy::publish(
        &app.pool,
        "2027-01",
        effective,
        "A new processor for e-mail",
    )
    .await
    .unwrap();
    let page = app.browser().visit("/privacy-policy").await;
    assert!(page.contains("A new processor for e-mail"), "{}", page.body);
    app.drain().await;
    app.finish().await;
}

#[tokio::test]
async fn static_assets_are_served_by_the_app_with_long_cache_headers() {
    let app = TestApp::spawn().await;
    let page = app.browser().visit("/").await;
    let href = page.body.split("href=\"/static/app.css?v=").nth(1).unwrap();
    let version = &href[..href.find('"').unwrap()];
    let css = app.get(&format!("/static/app.css?v={version}")).await;
    assert_eq!(css.status(), 200);
    assert_eq!(
        css.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert!(
        css.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );
    assert_eq!(app.get("/static/app.js").await.status(), 200);
    assert_eq!(app.get("/static/nope.js").await.status(), 404);
    app.finish().await;
}

#[tokio::test]
async fn the_dev_outbox_page_lists_what_would_have_been_mailed() {
    let app = TestApp::spawn().await;
    sign_in(&app, "ned@example.com").await;
    let outbox = app.browser().visit("/dev/outbox").await;
    assert!(outbox.contains("ned@example.com") && outbox.contains("Your sign-in link"));
    app.finish().await;
}

#[tokio::test]
async fn a_queued_generation_is_cancelled_from_its_page_and_the_credits_come_back() {
    let app = TestApp::builder().without_worker().spawn().await;
    let browser = sign_in(&app, "cal@example.com").await;
    let home = browser.visit("/").await;
    let posted = browser
        .post(
            "/generate",
            &[
                ("csrf", &home.csrf()),
                ("idempotency_key", &home.field("idempotency_key").unwrap()),
                ("prompt", "not this one"),
                ("resolution", "1K"),
            ],
        )
        .await;
    let location = posted.location().unwrap().to_owned();
    let id = generation_id(&location);
    let waiting = browser.visit(&location).await;
    assert!(waiting.contains("id=\"cancel\""), "{}", waiting.body);
    let user_id: uuid::Uuid = sqlx::query_scalar("SELECT user_id FROM generations WHERE id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let balance = || async { jobs::credits::balance(&app.pool, user_id).await.unwrap() };
    let reserved = balance().await;
    let cancelled = browser
        .post(
            &format!("/generations/{id}/cancel"),
            &[("csrf", &waiting.csrf())],
        )
        .await;
    assert_eq!(cancelled.status, 303, "{}", cancelled.body);
    assert_eq!(cancelled.location(), Some(location.as_str()));
    let page = browser.visit(&location).await;
    assert!(
        page.contains("You cancelled this generation"),
        "{}",
        page.body
    );
    assert!(page.contains("10 credits reserved for it were returned"));
    assert!(!page.contains("id=\"cancel\""), "nothing left to cancel");
    assert_eq!(balance().await, reserved + 10);
    app.discard_unrun_jobs().await;
    app.finish().await;
}

#[tokio::test]
async fn an_address_with_a_malformed_id_is_the_sites_own_not_found_page() {
    let app = TestApp::spawn().await;
    let browser = sign_in(&app, "dee@example.com").await;
    for path in ["/generations/not-a-uuid", "/generations/42/delete"] {
        let page = browser.visit(path).await;
        assert_eq!(page.status, 404, "{path}");
        assert!(page.contains("<html"), "{path}: {}", page.body);
        assert!(page.contains("app.css"), "{path}: a page of the site");
    }
    app.finish().await;
}
