//! The ops console on its admin listener.

use queue::{Enqueued, ops};
use testkit::{OPERATOR_TOKEN, TestApp, test_jobs::AlwaysFails};

fn console_url(app: &TestApp, path: &str) -> String {
    format!("http://{}{}", app.console_addr, path)
}

/// The console's page at `path`, as the operator `user` sees it.
async fn console_page(app: &TestApp, user: &str, path: &str) -> String {
    app.client
        .get(console_url(app, path))
        .basic_auth(user, Some(OPERATOR_TOKEN))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The CSRF token the console's own pages put in their forms (the upstream's page has one).
async fn form_token(app: &TestApp) -> String {
    let page = console_page(app, "ops", "/upstreams/kie").await;
    let field = "name=\"csrf\" value=\"";
    let start = page.find(field).expect("a form with a token") + field.len();
    page[start..start + 64].to_owned()
}

#[tokio::test]
async fn the_console_requires_the_operator_token() {
    let app = TestApp::spawn().await;
    let anonymous = app.client.get(console_url(&app, "/")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert!(
        anonymous.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    let wrong = app
        .client
        .get(console_url(&app, "/"))
        .basic_auth("ops", Some("wrong-token"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let right = app
        .client
        .get(console_url(&app, "/"))
        .basic_auth("ops", Some(OPERATOR_TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    let page = right.text().await.unwrap();
    for section in ["Queues", "Workers", "Upstreams", "Dead jobs"] {
        assert!(
            page.contains(&format!("<h2>{section}</h2>")),
            "missing {section}"
        );
    }
    app.finish().await;
}

#[tokio::test]
async fn the_console_shows_a_dead_job_and_its_retry_button_runs_it_again() {
    let mut app = TestApp::spawn().await;
    let Enqueued::New(id) = app
        .enqueue(&AlwaysFails {
            label: "console".into(),
        })
        .await
    else {
        panic!()
    };
    app.drain().await;
    let page = console_page(&app, "ops", "/").await;
    assert!(
        page.contains(&id) && page.contains("upstream said no (attempt 3)"),
        "dead job not shown"
    );

    let cross_site = app
        .client
        .post(console_url(&app, &format!("/jobs/{id}/retry")))
        .basic_auth("ops", Some(OPERATOR_TOKEN))
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(
        cross_site.status(),
        403,
        "a cross-site form post is refused"
    );
    assert_eq!(app.job_status(&id).await, queue::JobState::Failed);

    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let retried = no_redirects
        .post(console_url(&app, &format!("/jobs/{id}/retry")))
        .basic_auth("ops", Some(OPERATOR_TOKEN))
        .form(&[
            ("csrf", form_token(&app).await),
            ("reason", "the upstream is back".into()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(retried.status(), 303);
    app.drain().await;
    let job = ops::find_job(&app.pool, &id).await.unwrap().unwrap();
    assert_eq!(
        (job.status, job.attempts),
        (queue::JobState::Failed, 3),
        "ran its three attempts again"
    );
    let runs = testkit::test_jobs::runs(&app.pool, "console").await;
    assert_eq!(runs.len(), 6);
    app.expect_dead(1);
    app.finish().await;
}

#[tokio::test]
async fn pausing_a_queue_from_the_console_stops_claims_until_resumed() {
    let app = TestApp::spawn().await;
    let token = form_token(&app).await;
    let post = |path: String| {
        app.client
            .post(console_url(&app, &path))
            .basic_auth("ops", Some(OPERATOR_TOKEN))
            .form(&[("csrf", token.as_str()), ("reason", "maintenance")])
            .send()
    };
    assert!(
        post("/queues/test_record/pause".into())
            .await
            .unwrap()
            .status()
            .is_success()
    );
    let stats = ops::queue_stats(&app.pool).await.unwrap();
    assert!(stats.iter().any(|s| s.queue == "test_record" && s.paused));
    assert!(
        post("/queues/test_record/resume".into())
            .await
            .unwrap()
            .status()
            .is_success()
    );
    assert!(
        ops::queue_stats(&app.pool)
            .await
            .unwrap()
            .iter()
            .all(|s| !s.paused)
    );
    assert!(
        post("/upstreams/kie/pause".into())
            .await
            .unwrap()
            .status()
            .is_success()
    );
    assert!(jobs::upstream::is_paused(&app.pool, "kie").await.unwrap());
    assert!(
        post("/upstreams/kie/resume".into())
            .await
            .unwrap()
            .status()
            .is_success()
    );
    assert!(!jobs::upstream::is_paused(&app.pool, "kie").await.unwrap());
    app.finish().await;
}

#[tokio::test]
async fn the_console_cannot_be_framed_sniffed_or_cached() {
    let app = TestApp::spawn().await;
    for path in [
        "/",
        "/jobs/no-such-job",
        "/queues/test_record",
        "/upstreams/kie",
    ] {
        let response = app
            .client
            .get(console_url(&app, path))
            .basic_auth("ops", Some(OPERATOR_TOKEN))
            .send()
            .await
            .unwrap();
        let header = |name: &str| response.headers()[name].to_str().unwrap().to_owned();
        assert!(
            header("content-security-policy").contains("frame-ancestors 'none'"),
            "{path}"
        );
        assert_eq!(header("x-frame-options"), "DENY", "{path}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header("cache-control"), "no-store", "{path}");
    }
    app.finish().await;
}

#[tokio::test]
async fn a_console_form_needs_its_token_and_a_foreign_origin_is_refused_without_fetch_metadata() {
    let app = TestApp::spawn().await;
    let token = form_token(&app).await;
    let pause = |csrf: Option<&str>, origin: Option<&str>| {
        let mut request = app
            .client
            .post(console_url(&app, "/queues/test_record/pause"))
            .basic_auth("ops", Some(OPERATOR_TOKEN));
        if let Some(csrf) = csrf {
            request = request.form(&[("csrf", csrf), ("reason", "maintenance")]);
        }
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send()
    };
    let paused = || async {
        ops::queue_stats(&app.pool)
            .await
            .unwrap()
            .iter()
            .any(|s| s.queue == "test_record" && s.paused)
    };
    // An old browser (no Sec-Fetch-Site) posting from another site, even with a token it somehow has.
    let foreign = pause(Some(&token), Some("https://evil.example"))
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403);
    let missing = pause(None, None).await.unwrap();
    assert_eq!(missing.status(), 403, "no token");
    let wrong = pause(Some(&"0".repeat(64)), None).await.unwrap();
    assert_eq!(wrong.status(), 403, "a made-up token");
    assert!(!paused().await, "nothing refused changed anything");
    let own_origin = format!("http://{}", app.console_addr);
    let accepted = pause(Some(&token), Some(&own_origin)).await.unwrap();
    assert!(accepted.status().is_success(), "{}", accepted.status());
    assert!(paused().await);
    app.finish().await;
}

/// Inserts a dead `test_record` job whose last error is `error`.
async fn dead_job(app: &TestApp, id: &str, error: &str) {
    sqlx::query(
        "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, done_at, last_result)
         VALUES ($1, 'test_record', convert_to('{\"label\": \"bulk\"}', 'UTF8'), 'Failed', 5, 5, now(), now(),
                 jsonb_build_object('Err', $2::text))",
    )
    .bind(id)
    .bind(error)
    .execute(&app.pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn console_actions_are_recorded_with_who_and_why_and_unknown_queues_are_refused() {
    let app = TestApp::spawn().await;
    dead_job(&app, "dead-timeout-1", "kie.ai timed out after 30 s").await;
    dead_job(&app, "dead-timeout-2", "kie.ai TIMED OUT after 30 s").await;
    dead_job(&app, "dead-invalid", "payload did not decode").await;
    let token = form_token(&app).await;
    let post = |path: &str, fields: &[(&str, &str)]| {
        let mut form = vec![("csrf", token.as_str())];
        form.extend_from_slice(fields);
        app.client
            .post(console_url(&app, path))
            .basic_auth("bob", Some(OPERATOR_TOKEN))
            .form(&form)
            .send()
    };

    // Bulk retry of one queue's dead jobs whose error says "timed out" (any case), then discard of the rest.
    let retried = post(
        "/queues/test_record/retry-dead",
        &[("error_contains", "timed out"), ("reason", "kie recovered")],
    )
    .await
    .unwrap();
    assert!(retried.status().is_success(), "{}", retried.status());
    app.drain().await;
    assert_eq!(testkit::test_jobs::runs(&app.pool, "bulk").await.len(), 2);
    assert_eq!(
        app.job_status("dead-invalid").await,
        queue::JobState::Failed
    );
    let discarded = post(
        "/queues/test_record/discard-dead",
        &[("reason", "bad payload, reported in #123")],
    )
    .await
    .unwrap();
    assert!(discarded.status().is_success());
    assert!(
        ops::find_job(&app.pool, "dead-invalid")
            .await
            .unwrap()
            .is_none()
    );

    // A queue the registry does not know is refused with a page naming the ones it knows, an action without a
    // reason too, and nothing is recorded for either.
    let unknown = post("/queues/no_such_queue/pause", &[("reason", "typo")])
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let said = unknown.text().await.unwrap();
    assert!(
        said.contains("<!DOCTYPE html>")
            && said.contains("no_such_queue")
            && said.contains("test_record"),
        "{said}"
    );
    let unexplained = post("/queues/test_record/pause", &[("reason", "  ")])
        .await
        .unwrap();
    assert_eq!(unexplained.status(), 422);
    assert!(
        unexplained
            .text()
            .await
            .unwrap()
            .contains("a reason is required")
    );
    assert!(
        !ops::paused_queues(&app.pool)
            .await
            .unwrap()
            .contains(&"no_such_queue".to_owned())
    );

    let actions = jobs::operator::recent_actions(&app.pool, 10).await.unwrap();
    let seen: Vec<(&str, &str, &str, &str, &str)> = actions
        .iter()
        .map(|a| {
            (
                a.actor.as_str(),
                a.via.as_str(),
                a.action.as_str(),
                a.target.as_str(),
                a.reason.as_str(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (
                "bob",
                "console",
                "jobs.discard_dead",
                "test_record",
                "bad payload, reported in #123"
            ),
            (
                "bob",
                "console",
                "jobs.retry_dead",
                "test_record",
                "kie recovered"
            ),
        ]
    );
    assert_eq!(actions[1].detail["jobs"], 2);
    assert_eq!(actions[1].detail["error_contains"], "timed out");
    assert_eq!(actions[0].detail["jobs"], 1);

    // The page shows the trail, idle queues too, and is laid out for a phone.
    let page = console_page(&app, "bob", "/").await;
    assert!(page.contains("Recent operator actions") && page.contains("kie recovered"));
    assert!(
        page.contains("href=\"/queues/reconcile_stripe_events\""),
        "an idle queue is listed"
    );
    assert!(page.contains("name=\"viewport\" content=\"width=device-width, initial-scale=1\""));
    // The overview refreshes itself, so it holds no form a refresh could wipe; each queue's page has them.
    assert!(page.contains("http-equiv=\"refresh\"") && !page.contains("<form"));
    let queue_page = console_page(&app, "bob", "/queues/test_record").await;
    assert!(!queue_page.contains("http-equiv=\"refresh\""));
    assert!(queue_page.contains("action=\"/queues/test_record/pause\""));
    assert!(queue_page.contains("name=\"reason\" required"));
    app.finish().await;
}
