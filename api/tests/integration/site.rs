//! The web tier over HTTP against a real database.

use testkit::TestApp;

async fn demo_key(app: &TestApp) -> (uuid::Uuid, String) {
    let mut tx = app.pool.begin().await.unwrap();
    let user = jobs::accounts::create_user(&mut tx, "Someone@Example.com", Some("Someone"))
        .await
        .unwrap();
    jobs::credits::apply(
        &mut tx,
        user,
        jobs::credits::Kind::Grant,
        40,
        "test-grant",
        serde_json::json!({}),
    )
    .await
    .unwrap();
    let key = jobs::accounts::issue_api_key(&mut *tx, user, "test")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    (user, key.secret)
}

#[tokio::test]
async fn health_and_readiness_answer_ok_when_the_database_is_up() {
    let app = TestApp::spawn().await;
    let health = app.healthz().await;
    assert_eq!(health.status(), 200);
    let ready = app.readyz().await;
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.text().await.unwrap(), "ready\n");
    app.finish().await;
}

#[tokio::test]
async fn the_home_page_is_server_rendered_html() {
    let app = TestApp::spawn().await;
    let response = app.get("/").await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let body = response.text().await.unwrap();
    assert!(body.starts_with("<!DOCTYPE html>"));
    assert!(body.contains("<title>Generate images with gpt-image-2 · createimage2</title>"));
    app.finish().await;
}

#[tokio::test]
async fn an_unknown_path_gets_the_site_404_page() {
    let app = TestApp::spawn().await;
    let response = app.get("/no/such/page").await;
    assert_eq!(response.status(), 404);
    assert!(response.text().await.unwrap().contains("Page not found"));
    app.finish().await;
}

#[tokio::test]
async fn the_json_api_requires_a_valid_unrevoked_api_key() {
    let app = TestApp::spawn().await;
    assert_eq!(app.get("/api/v1/me").await.status(), 401);
    assert_eq!(
        app.get_with_key("/api/v1/me", "ci2_not-a-key")
            .await
            .status(),
        401
    );

    let (user, key) = demo_key(&app).await;
    let response = app.get_with_key("/api/v1/me", &key).await;
    assert_eq!(response.status(), 200);
    let me: serde_json::Value = response.json().await.unwrap();
    assert_eq!(me["id"], user.to_string());
    assert_eq!(me["email"], "someone@example.com");
    assert_eq!(me["credits"], 40);

    sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE user_id = $1")
        .bind(user)
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(app.get_with_key("/api/v1/me", &key).await.status(), 401);
    app.finish().await;
}

#[tokio::test]
async fn api_keys_are_stored_only_as_hashes() {
    let app = TestApp::spawn().await;
    let (_, key) = demo_key(&app).await;
    let stored: Vec<u8> = sqlx::query_scalar("SELECT key_hash FROM api_keys")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, jobs::accounts::hash_secret(&key));
    let dump: String = sqlx::query_scalar("SELECT row_to_json(k)::text FROM api_keys k")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(
        !dump.contains(&key[4..]),
        "the key itself is not in the row"
    );
    app.finish().await;
}

#[tokio::test]
async fn http_metrics_are_labelled_by_route_template_not_raw_path() {
    let app = TestApp::spawn().await;
    app.get("/").await;
    app.get("/api/v1/me").await;
    app.get("/no/such/page").await;
    let text = app.metrics_text().await;
    assert!(
        text.contains(r#"http_requests_total{method="GET",route="/",status="200"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"http_requests_total{method="GET",route="/api/v1/me",status="401"} 1"#),
        "{text}"
    );
    assert!(
        !text.contains("/no/such/page"),
        "raw paths never become labels"
    );
    assert!(text.contains("http_request_duration_seconds_bucket"));
    app.finish().await;
}

#[tokio::test]
async fn an_api_keys_last_use_is_recorded_at_most_once_a_minute() {
    let app = TestApp::spawn().await;
    let (_, key) = demo_key(&app).await;
    let last_used = || async {
        sqlx::query_scalar::<_, Option<chrono::DateTime<chrono::Utc>>>(
            "SELECT last_used_at FROM api_keys",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap()
    };
    assert_eq!(last_used().await, None);
    assert_eq!(app.get_with_key("/api/v1/me", &key).await.status(), 200);
    let first = last_used().await.expect("the first use is recorded");
    assert_eq!(app.get_with_key("/api/v1/me", &key).await.status(), 200);
    assert_eq!(
        last_used().await,
        Some(first),
        "a use within the minute writes nothing"
    );
    sqlx::query("UPDATE api_keys SET last_used_at = now() - interval '2 minutes'")
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(app.get_with_key("/api/v1/me", &key).await.status(), 200);
    assert!(last_used().await.unwrap() > first - chrono::Duration::seconds(1));
    app.finish().await;
}
