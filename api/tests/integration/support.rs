//! Helpers for the site's tests: signing in through the real e-mailed-link flow.

use jobs::generations::Status;
use testkit::{Browser, Page, TestApp};

/// Signs `email` in through the real e-mailed-link flow ([`TestApp::sign_in`]).
pub async fn sign_in(app: &TestApp, email: &str) -> Browser {
    app.sign_in(email).await
}

/// Signs in within an existing browser ([`TestApp::sign_in_with`]).
pub async fn sign_in_with(app: &TestApp, browser: &Browser, email: &str) -> Page {
    app.sign_in_with(browser, email).await
}

/// The newest link to `path` e-mailed to `address`.
pub async fn latest_link(app: &TestApp, address: &str, path: &str) -> String {
    app.latest_link(address, path).await
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

/// Waits until the generation has succeeded or failed; returns which.
pub async fn wait_finished(app: &TestApp, id: uuid::Uuid) -> Status {
    for _ in 0..300 {
        let status: Status = sqlx::query_scalar("SELECT status FROM generations WHERE id = $1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
        if status.is_final() {
            return status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("generation {id} did not finish")
}

/// The value of one series (`name{labels}` exactly as exposed) on the app's `/metrics`; 0 when absent.
pub async fn metric(app: &TestApp, series: &str) -> f64 {
    let text = app.metrics_text().await;
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}
