//! Helpers for the site's tests: signing in through the real e-mailed-link flow.

use testkit::{Browser, Page, TestApp, find_link};

/// Signs `email` in (creating the account if needed) through the sign-in page, the outbox and the link's
/// landing page, as a person would. Returns the browser, now holding a member session.
pub async fn sign_in(app: &TestApp, email: &str) -> Browser {
    let browser = app.browser();
    sign_in_with(app, &browser, email).await;
    browser
}

/// Signs in within an existing browser (keeping what its session held, such as a trial image). Returns the
/// page the sign-in lands on.
pub async fn sign_in_with(app: &TestApp, browser: &Browser, email: &str) -> Page {
    let form = browser.visit("/sign-in").await;
    let sent = browser
        .submit(
            "/sign-in/email",
            &[("csrf", &form.csrf()), ("email", email)],
        )
        .await;
    assert!(sent.contains("Check your e-mail"), "{}", sent.body);
    let link = latest_link(app, email, "/sign-in/link").await;
    let landing = browser.visit(&link).await;
    let token = landing
        .field("token")
        .expect("the landing page carries the token");
    let next = landing.field("next").unwrap_or_else(|| "/".into());
    let home = browser
        .submit(
            "/sign-in/link",
            &[
                ("csrf", &landing.csrf()),
                ("token", &token),
                ("next", &next),
            ],
        )
        .await;
    assert_eq!(home.status, 200, "{}", home.body);
    home
}

/// The newest link to `path` e-mailed to `address`.
pub async fn latest_link(app: &TestApp, address: &str, path: &str) -> String {
    let mails = jobs::email::sent_to(&app.pool, address).await.unwrap();
    let mail = mails.last().expect("an e-mail was queued");
    find_link(&mail.body_text, &app.url(path)).expect("the e-mail holds the link")
}

/// The id in a `/generations/{id}` location.
pub fn generation_id(location: &str) -> uuid::Uuid {
    location
        .trim_start_matches("/generations/")
        .parse()
        .expect("a generation location")
}

/// Starts the free trial in `browser` with a fresh Turnstile token; returns the trial generation's id.
pub async fn start_trial(app: &TestApp, browser: &Browser, prompt: &str) -> uuid::Uuid {
    let landing = browser.visit("/").await;
    let started = browser
        .post(
            "/trial",
            &[
                ("csrf", &landing.csrf()),
                ("prompt", prompt),
                ("cf-turnstile-response", &app.turnstile.issue_token()),
            ],
        )
        .await;
    assert_eq!(started.status, 303, "{}", started.body);
    generation_id(started.location().unwrap())
}
