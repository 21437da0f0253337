//! End to end in a real headless Chromium (WebDriver): the site as people use it, JavaScript included.
//! Screenshots of every page land in `$CARGO_TARGET_DIR/browser-screenshots/` for review.

use std::time::Duration;

use testkit::{GOOGLE_SUB, TestApp, find_link, images, webdriver::Chrome};

const SLOW: Duration = Duration::from_secs(30);

async fn latest_mail_link(app: &TestApp, address: &str, path: &str) -> String {
    let mails = jobs::email::sent_to(&app.pool, address).await.unwrap();
    find_link(&mails.last().expect("a mail").body_text, &app.url(path)).expect("a link in the mail")
}

/// Signs `address` in through the e-mailed link, as a person would, and waits for the generator.
pub async fn sign_in_by_email(app: &TestApp, chrome: &Chrome, address: &str) {
    chrome.goto(&app.url("/sign-in")).await;
    chrome.fill("#email", address).await;
    chrome.click("#send-link").await;
    chrome.wait_for("#check-email", SLOW).await;
    chrome
        .goto(&latest_mail_link(app, address, "/sign-in/link").await)
        .await;
    chrome.click("#confirm-link").await;
    chrome.wait_for_text("Generate an image", SLOW).await;
}

#[tokio::test]
async fn a_visitor_tries_once_signs_up_by_email_generates_with_a_reference_downloads_and_deletes() {
    let app = TestApp::spawn().await;
    let chrome = Chrome::start().await;

    // The trial: Turnstile's widget (the stand-in's script) fills in its token; the image appears live.
    chrome.goto(&app.url("/")).await;
    chrome.screenshot("01-landing").await;
    chrome
        .wait_for("input[name=cf-turnstile-response]", SLOW)
        .await;
    chrome.fill("#trial-prompt", "a red fox in the snow").await;
    chrome.click("#trial-generate").await;
    chrome.wait_for("#image-0", SLOW).await;
    let trial_path = chrome.path().await;
    assert!(trial_path.starts_with("/generations/"), "{trial_path}");
    chrome.screenshot("02-trial-result").await;

    // A second trial from the same machine and browser within 24 h is refused.
    let second = Chrome::start().await;
    second.goto(&app.url("/")).await;
    second
        .wait_for("input[name=cf-turnstile-response]", SLOW)
        .await;
    second.fill("#trial-prompt", "another fox").await;
    second.click("#trial-generate").await;
    second.wait_for_text("already used today", SLOW).await;
    second.screenshot("03-second-trial-refused").await;
    second.close().await;

    // Sign up by e-mail link to keep the trial image.
    chrome.click("#trial-sign-up").await;
    chrome.fill("#email", "fox@example.com").await;
    chrome.screenshot("04-sign-in").await;
    chrome.click("#send-link").await;
    chrome.wait_for("#check-email", SLOW).await;
    chrome.screenshot("05-check-email").await;
    let link = latest_mail_link(&app, "fox@example.com", "/sign-in/link").await;
    chrome.goto(&link).await;
    chrome.click("#confirm-link").await;
    chrome.wait_for("#image-0", SLOW).await;
    assert_eq!(
        chrome.path().await,
        trial_path,
        "back at the trial image, now kept"
    );

    // Generate with a reference image uploaded straight to the bucket.
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("reference.png");
    std::fs::write(&reference, images::png(16, 16)).unwrap();
    chrome.goto(&app.url("/")).await;
    chrome.fill("#prompt", "the fox, as a watercolour").await;
    chrome
        .wait_for("#reference-files", SLOW)
        .await
        .send_keys(reference.to_str().unwrap())
        .await
        .unwrap();
    chrome.wait_for("#reference-previews img", SLOW).await;
    chrome
        .wait_for_text("1 reference image attached.", SLOW)
        .await;
    // A second one, counted, then removed again: the generation goes with the first only.
    let second = dir.path().join("second.png");
    std::fs::write(&second, images::png(24, 16)).unwrap();
    chrome
        .wait_for("#reference-files", SLOW)
        .await
        .send_keys(second.to_str().unwrap())
        .await
        .unwrap();
    chrome
        .wait_for_text("2 reference images attached.", SLOW)
        .await;
    chrome.screenshot("06-generator-with-two-references").await;
    chrome
        .click("#reference-previews figure:last-child button.remove")
        .await;
    chrome
        .wait_for_text("1 reference image attached.", SLOW)
        .await;
    chrome.screenshot("06-generator-with-reference").await;
    chrome.click("#generate").await;
    chrome.wait_for("#image-0", SLOW).await;
    chrome.screenshot("07-result").await;
    let generation: uuid::Uuid = chrome
        .path()
        .await
        .trim_start_matches("/generations/")
        .parse()
        .unwrap();
    let references: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT reference_upload_ids FROM generations WHERE id = $1")
            .bind(generation)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        references.len(),
        1,
        "the reference went with the generation"
    );

    // Download: the page's link gives the original file (checked with the browser's own session).
    let session = chrome
        .cookie("ci2_session")
        .await
        .expect("a session cookie");
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let download = no_redirects
        .get(app.url(&format!("/generations/{generation}/download")))
        .header("cookie", format!("ci2_session={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(download.status(), 303);
    let file = reqwest::get(download.headers()["location"].to_str().unwrap())
        .await
        .unwrap();
    assert!(file.bytes().await.unwrap().starts_with(b"\x89PNG"));

    // Both images are in the gallery; delete one.
    chrome.goto(&app.url("/gallery")).await;
    chrome.wait_for_text("a red fox in the snow", SLOW).await;
    chrome
        .wait_for_text("the fox, as a watercolour", SLOW)
        .await;
    chrome.screenshot("08-gallery").await;
    chrome
        .goto(&app.url(&format!("/generations/{generation}")))
        .await;
    chrome.click("#delete").await;
    chrome.screenshot("09-confirm-delete").await;
    chrome.click("#confirm-delete").await;
    chrome.wait_for_text("The image was deleted.", SLOW).await;
    let source = chrome.source().await;
    assert!(!source.contains(&generation.to_string()));
    assert!(source.contains("a red fox in the snow"));

    // The other pages, for review.
    for (name, path) in [
        ("10-account", "/account"),
        ("11-pricing", "/pricing"),
        ("12-privacy-policy", "/privacy-policy"),
        ("13-terms", "/terms"),
        ("14-not-found", "/no/such/page"),
        ("15-api-reference", "/docs/api"),
    ] {
        chrome.goto(&app.url(path)).await;
        chrome.screenshot(name).await;
    }
    chrome.close().await;
    app.drain().await;
    app.finish().await;
}

#[tokio::test]
async fn google_sign_in_and_analytics_consent_on_and_off_in_a_real_browser() {
    let app = TestApp::spawn().await;
    let chrome = Chrome::start().await;
    chrome.goto(&app.url("/")).await;
    chrome.wait_for("#consent-banner", SLOW).await;
    chrome.screenshot("20-consent-banner").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        app.analytics.hits(),
        0,
        "no analytics request before consent"
    );

    chrome.goto(&app.url("/sign-in")).await;
    chrome.click("#google-sign-in").await;
    chrome.screenshot("21-google-consent").await;
    chrome.click(&format!("#account-{GOOGLE_SUB}")).await;
    chrome.wait_for_text("Generate an image", SLOW).await;
    assert_eq!(app.analytics.hits(), 0);

    chrome.click("#consent-accept").await;
    let deadline = tokio::time::Instant::now() + SLOW;
    while app.analytics.hits() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "analytics never loaded after consent"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    chrome.goto(&app.url("/account")).await;
    chrome.screenshot("22-account-consent-given").await;
    chrome.click("#withdraw-consent").await;
    chrome.wait_for("#give-consent", SLOW).await;
    let after = app.analytics.hits();
    chrome.goto(&app.url("/gallery")).await;
    chrome.goto(&app.url("/")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        app.analytics.hits(),
        after,
        "withdrawal takes effect at once"
    );
    chrome.close().await;
    app.finish().await;
}

#[tokio::test]
async fn a_member_buys_a_pack_on_the_pricing_page_through_the_stand_in_checkout_and_sees_the_credits()
 {
    let app = TestApp::spawn().await;
    let chrome = Chrome::start().await;
    sign_in_by_email(&app, &chrome, "payer@example.com").await;

    chrome.goto(&app.url("/pricing")).await;
    chrome.screenshot("30-pricing-signed-in").await;
    chrome.click("#buy-pack_100").await;
    // The waiting page follows the worker's Checkout Session to the stand-in's hosted page.
    chrome
        .wait_for_explained("#pay", SLOW, app.checkout_report())
        .await;
    chrome.screenshot("31-checkout").await;
    chrome.click("#pay").await;
    // Back from Stripe: the notice says what was bought, and the credits arrive on the open page (the
    // intent's server-sent events), with no reload.
    chrome.wait_for("#purchase", SLOW).await;
    assert!(chrome.path().await.ends_with("/done"));
    let bought = chrome.wait_for("#bought", SLOW).await.text().await.unwrap();
    assert_eq!(bought, "You bought Starter pack: 100 credits for 5.00 USD.");
    chrome.screenshot("32-purchase-notice").await;
    chrome
        .client()
        .execute("document.body.dataset.sameDocument = 'yes'", Vec::new())
        .await
        .unwrap();
    chrome.wait_for("#credits-arrived", SLOW).await;
    let balance = chrome
        .wait_for("#live-balance", SLOW)
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(balance, "120");
    let header = chrome
        .wait_for(".balance .credits", SLOW)
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(header, "120", "the header's balance follows");
    let same = chrome
        .client()
        .execute(
            "return document.body.dataset.sameDocument || ''",
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(
        same, "yes",
        "the page was not reloaded: the event brought the balance"
    );
    chrome.screenshot("33-credits-arrived").await;
    chrome.close().await;
    app.stripe.wait_for_deliveries().await;
    app.drain().await;
    app.finish().await;
}

#[tokio::test]
async fn a_member_cancels_a_queued_generation_and_a_watched_page_follows_a_cancel_made_elsewhere() {
    // No worker: generations stay queued until cancelled.
    let app = TestApp::builder().without_worker().spawn().await;
    let chrome = Chrome::start().await;
    sign_in_by_email(&app, &chrome, "quitter@example.com").await;

    chrome.fill("#prompt", "a queue that never moves").await;
    chrome.click("#generate").await;
    chrome.wait_for("#cancel", SLOW).await;
    // The wait is counted on the open page, second by second, by its script.
    let elapsed = || async {
        chrome
            .wait_for("#elapsed", SLOW)
            .await
            .text()
            .await
            .unwrap()
    };
    let before = elapsed().await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let after = elapsed().await;
    assert_ne!(before, after, "the elapsed time moves on");
    assert!(after.ends_with(" s"), "{after}");
    chrome.screenshot("40-queued-with-cancel").await;
    chrome.click("#cancel").await;
    chrome
        .wait_for_text("You cancelled this generation", SLOW)
        .await;
    chrome.screenshot("41-cancelled").await;

    // A second one, cancelled behind the open page's back: the live status brings the page along.
    chrome.goto(&app.url("/")).await;
    chrome.fill("#prompt", "cancelled from elsewhere").await;
    chrome.click("#generate").await;
    chrome.wait_for("#cancel", SLOW).await;
    let id: uuid::Uuid = chrome
        .path()
        .await
        .trim_start_matches("/generations/")
        .parse()
        .unwrap();
    let generation = jobs::generations::find(&app.pool, id)
        .await
        .unwrap()
        .unwrap();
    jobs::generations::cancel(&app.pool, &app.metrics, &generation)
        .await
        .unwrap();
    chrome
        .wait_for_text("You cancelled this generation", SLOW)
        .await;
    assert!(!chrome.source().await.contains("id=\"cancel\""));
    chrome.close().await;
    app.discard_unrun_jobs().await;
    app.finish().await;
}

#[tokio::test]
async fn a_member_asks_for_two_images_at_once_and_watches_both_arrive_as_a_set() {
    let app = TestApp::spawn().await;
    let chrome = Chrome::start().await;
    sign_in_by_email(&app, &chrome, "pair@example.com").await;

    chrome.fill("#prompt", "two lanterns on a river").await;
    chrome.click("label[for=n-2]").await;
    let cost = chrome.wait_for("#cost", SLOW).await.text().await.unwrap();
    assert_eq!(cost, "20", "two 1K images");
    chrome.click("label[for=resolution-2K]").await;
    let cost = chrome.wait_for("#cost", SLOW).await.text().await.unwrap();
    assert_eq!(cost, "40", "two 2K images");
    chrome.click("label[for=resolution-1K]").await;
    chrome.screenshot("50-two-images-chosen").await;
    chrome.click("#generate").await;
    chrome.wait_for("#set", SLOW).await;
    // Both tiles reach Ready on the open page, each with its picture.
    let deadline = tokio::time::Instant::now() + SLOW;
    while chrome.count("#set li[data-status=succeeded] img").await < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the set never finished: {}",
            chrome.source().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    chrome.wait_for("#image-0", SLOW).await;
    chrome.screenshot("51-a-set-of-two").await;
    // The second tile opens the second image's page, which shows the same set.
    chrome.click("#set li:nth-child(2) a").await;
    chrome.wait_for_text("Image 2 of 2", SLOW).await;
    chrome.close().await;
    app.drain().await;
    app.finish().await;
}

#[tokio::test]
async fn the_pickers_disable_what_the_model_refuses_and_say_why() {
    let app = TestApp::spawn().await;
    let chrome = Chrome::start().await;
    sign_in_by_email(&app, &chrome, "shapes@example.com").await;

    let disabled = |id: &'static str| {
        let chrome = &chrome;
        async move {
            chrome
                .client()
                .execute(
                    &format!("return document.getElementById('{id}').disabled"),
                    Vec::new(),
                )
                .await
                .unwrap()
                .as_bool()
                .unwrap()
        }
    };
    let why = |id: &'static str| {
        let chrome = &chrome;
        async move {
            chrome
                .client()
                .execute(
                    &format!("return document.getElementById('{id}').textContent"),
                    Vec::new(),
                )
                .await
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    // 4K rules out the ratios text to image cannot make at 4K.
    chrome.click("label[for=resolution-4K]").await;
    assert!(disabled("ratio-5x4").await);
    assert_eq!(why("ratio-5x4-why").await, "Not at 4K");
    assert!(!disabled("ratio-16x9").await);
    assert_eq!(why("ratio-16x9-why").await, "");
    chrome.screenshot("52-ratios-at-4k").await;
    // Back to 1K, 5:4 can be picked; then 2K and 4K are the ones that say why.
    chrome.click("label[for=resolution-1K]").await;
    chrome.click("label[for=ratio-5x4]").await;
    assert!(disabled("resolution-4K").await);
    assert_eq!(why("resolution-4K-why").await, "Not at 5:4");
    assert_eq!(why("resolution-2K-why").await, "Not at 5:4");
    assert!(!disabled("resolution-1K").await);
    chrome.screenshot("53-resolutions-at-5x4").await;
    chrome.close().await;
    app.finish().await;
}

#[tokio::test]
async fn a_member_searches_the_gallery_and_deletes_two_images_at_once() {
    let app = TestApp::spawn().await;
    let chrome = Chrome::start().await;
    sign_in_by_email(&app, &chrome, "curator@example.com").await;
    let user: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM users WHERE email = 'curator@example.com'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let member = app.api_key_for(user).await;
    app.grant(&member, 100).await;
    for prompt in ["a green lighthouse", "a lighthouse in fog", "a teapot"] {
        let (status, created) = app
            .create_generation(&member, serde_json::json!({"prompt": prompt}))
            .await;
        assert_eq!(status, 202, "{created}");
        app.wait_until_finished(&member, created["id"].as_str().unwrap())
            .await;
    }
    chrome.goto(&app.url("/gallery")).await;
    chrome.fill("#q", "lighthouse").await;
    chrome.click("#apply-filters").await;
    chrome.wait_for("#filter-summary", SLOW).await;
    assert_eq!(chrome.count(".gallery li.card").await, 2);
    chrome.screenshot("54-gallery-search").await;
    chrome
        .click(".gallery li.card:nth-child(1) label.select")
        .await;
    chrome
        .click(".gallery li.card:nth-child(2) label.select")
        .await;
    chrome.click("#delete-selected").await;
    chrome.wait_for_text("Delete these 2 images?", SLOW).await;
    chrome.screenshot("55-confirm-bulk-delete").await;
    chrome.click("#confirm-bulk-delete").await;
    chrome.wait_for_text("2 images were deleted.", SLOW).await;
    assert_eq!(chrome.count(".gallery li.card").await, 1);
    assert!(chrome.source().await.contains("a teapot"));
    chrome.screenshot("56-after-bulk-delete").await;
    chrome.close().await;
    app.drain().await;
    app.finish().await;
}

#[tokio::test]
async fn a_member_runs_a_finished_generation_again_then_edits_its_prompt_in_the_generator() {
    let app = TestApp::spawn().await;
    let chrome = Chrome::start().await;
    sign_in_by_email(&app, &chrome, "again@example.com").await;

    chrome.fill("#prompt", "a windmill at dusk").await;
    chrome.click("label[for=ratio-16x9]").await;
    chrome.click("#generate").await;
    chrome.wait_for("#image-0", SLOW).await;
    let first = chrome.path().await;

    // Again: the same request once more, a new generation with the same prompt and settings.
    chrome.click("#again").await;
    chrome.wait_for("#image-0", SLOW).await;
    let second = chrome.path().await;
    assert_ne!(first, second, "a new generation");
    assert!(chrome.source().await.contains("a windmill at dusk"));
    assert!(chrome.source().await.contains("16:9"));
    chrome.screenshot("57-again").await;

    // Edit prompt: the generator, filled in with the prompt and the ratio picked.
    chrome.click("#edit-prompt").await;
    chrome.wait_for("#generator", SLOW).await;
    let prompt = chrome
        .client()
        .execute("return document.getElementById('prompt').value", Vec::new())
        .await
        .unwrap();
    assert_eq!(prompt, "a windmill at dusk");
    let ratio = chrome
        .client()
        .execute(
            "return document.querySelector('input[name=aspect_ratio]:checked').value",
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(ratio, "16:9");
    chrome.screenshot("58-edit-prompt").await;
    chrome.close().await;
    app.drain().await;
    app.finish().await;
}
