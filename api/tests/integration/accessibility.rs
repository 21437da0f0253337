//! Every page in a real browser — desktop and phone, light and dark — checked by axe-core (the accessibility
//! engine, from npm): no serious or critical violation anywhere, and no page scrolls sideways on the phone.

use std::time::Duration;

use testkit::{
    TestApp, find_link,
    webdriver::{Chrome, Scheme},
};

const SLOW: Duration = Duration::from_secs(30);
const WIDTHS: [(&str, u32); 2] = [("desktop", 1280), ("phone", 390)];

/// Checks the page at `path` at both widths; returns what failed.
async fn check(chrome: &Chrome, app: &TestApp, label: &str, path: &str) -> Vec<String> {
    let mut failures = Vec::new();
    for (device, width) in WIDTHS {
        chrome.viewport_width(width).await;
        chrome.goto(&app.url(path)).await;
        let scheme = if chrome.prefers_dark().await {
            "dark"
        } else {
            "light"
        };
        chrome
            .screenshot(&format!("a11y-{scheme}-{device}-{label}"))
            .await;
        for violation in chrome.axe().await {
            if matches!(violation.impact.as_deref(), Some("serious" | "critical")) {
                failures.push(format!(
                    "{path} ({scheme}, {device}): {} [{}] {} at {:?}",
                    violation.id,
                    violation.impact.unwrap_or_default(),
                    violation.help,
                    violation.targets
                ));
            }
        }
        if width < 500 {
            let overflow = chrome.sideways_overflow().await;
            if overflow > 0.0 {
                failures.push(format!(
                    "{path} ({scheme}, {device}): scrolls sideways by {overflow} px"
                ));
            }
        }
    }
    failures
}

async fn every_page_in(scheme: Scheme) {
    let app = TestApp::spawn().await;
    let chrome = Chrome::start_in(scheme).await;
    chrome.goto(&app.url("/")).await;
    assert_eq!(
        chrome.prefers_dark().await,
        scheme == Scheme::Dark,
        "the browser asks for the {scheme:?} scheme"
    );
    let mut failures = Vec::new();
    for (label, path) in [
        ("landing", "/"),
        ("sign-in", "/sign-in"),
        ("pricing", "/pricing"),
        ("privacy-policy", "/privacy-policy"),
        ("terms", "/terms"),
        ("api-reference", "/docs/api"),
        ("not-found", "/no/such/page"),
    ] {
        failures.extend(check(&chrome, &app, label, path).await);
    }

    // The trial: its live page and its result.
    chrome.viewport_width(1280).await;
    chrome.goto(&app.url("/")).await;
    chrome
        .wait_for("input[name=cf-turnstile-response]", SLOW)
        .await;
    chrome.fill("#trial-prompt", "a paper boat").await;
    chrome.click("#trial-generate").await;
    chrome.wait_for("#image-0", SLOW).await;
    let trial = chrome.path().await;
    failures.extend(check(&chrome, &app, "trial-result", &trial).await);

    // The sign-in flow's own pages, then every member page.
    let address = format!("{scheme:?}@example.com").to_lowercase();
    chrome.viewport_width(1280).await;
    chrome.goto(&app.url("/sign-in")).await;
    chrome.fill("#email", &address).await;
    chrome.click("#send-link").await;
    chrome.wait_for("#check-email", SLOW).await;
    let check_email = chrome.path().await;
    failures.extend(check(&chrome, &app, "check-email", &check_email).await);
    let mails = jobs::email::sent_to(&app.pool, &address).await.unwrap();
    let link = find_link(
        &mails.last().expect("a mail").body_text,
        &app.url("/sign-in/link"),
    )
    .expect("a sign-in link");
    let link_url = url::Url::parse(&link).unwrap();
    let link_path = format!(
        "{}?{}",
        link_url.path(),
        link_url.query().unwrap_or_default()
    );
    failures.extend(check(&chrome, &app, "confirm-link", &link_path).await);
    chrome.viewport_width(1280).await;
    chrome.goto(&link).await;
    chrome.click("#confirm-link").await;
    chrome.wait_for_text("Generate an image", SLOW).await;
    // Two images at once (the new member's 20 credits): the result page shows them as a set.
    chrome.fill("#prompt", "a harbour in the rain").await;
    chrome.click("label[for=n-2]").await;
    chrome.click("#generate").await;
    chrome.wait_for("#image-0", SLOW).await;
    let generation = chrome.path().await;
    let id = generation.trim_start_matches("/generations/").to_owned();
    // A checkout the member has not paid yet: its notice page waits for the credits.
    chrome.goto(&app.url("/pricing")).await;
    chrome.click("#buy-pack_100").await;
    chrome
        .wait_for_explained("#pay", SLOW, app.checkout_report())
        .await;
    let intent: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM checkout_intents ORDER BY created_at DESC LIMIT 1")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    for (label, path) in [
        ("generator", "/".to_owned()),
        ("result", generation.clone()),
        ("confirm-delete", format!("{generation}/delete")),
        ("gallery", "/gallery".to_owned()),
        (
            "gallery-search",
            "/gallery?q=harbour&status=ready".to_owned(),
        ),
        ("confirm-bulk-delete", format!("/gallery/delete?id={id}")),
        ("purchase-notice", format!("/billing/intents/{intent}/done")),
        ("account", "/account".to_owned()),
        ("pricing-member", "/pricing".to_owned()),
        ("edit-prompt", format!("/?from={id}")),
    ] {
        failures.extend(check(&chrome, &app, label, &path).await);
    }
    chrome.close().await;
    app.drain().await;
    app.finish().await;
    assert!(
        failures.is_empty(),
        "{} accessibility failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn every_page_passes_axe_on_desktop_and_phone_in_the_light_scheme() {
    every_page_in(Scheme::Light).await;
}

#[tokio::test]
async fn every_page_passes_axe_on_desktop_and_phone_in_the_dark_scheme() {
    every_page_in(Scheme::Dark).await;
}
