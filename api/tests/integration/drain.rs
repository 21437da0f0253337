//! The api's drain on SIGTERM: `/readyz` answers 503 for the readiness window while everything else is still
//! served; then open event streams get a final `shutdown` event and end, and the listener closes.

use std::time::{Duration, Instant};

use serde_json::json;
use testkit::TestApp;

/// Reads server-sent-event text from `response` until `until` appears in it or `within` passes.
async fn read_until(response: &mut reqwest::Response, until: &str, within: Duration) -> String {
    let mut text = String::new();
    let deadline = Instant::now() + within;
    while !text.contains(until) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, response.chunk()).await {
            Ok(Ok(Some(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            Ok(Ok(None)) | Ok(Err(_)) | Err(_) => break,
        }
    }
    text
}

#[tokio::test]
async fn a_draining_api_is_unready_first_then_ends_open_streams_with_a_shutdown_event() {
    let window = Duration::from_millis(1500);
    // No worker: the generation stays queued, so its stream stays open until the drain ends it.
    let app = TestApp::builder()
        .without_worker()
        .drain(window, Duration::from_secs(5))
        .spawn()
        .await;
    let user = app.create_user(100).await;
    let (status, created) = app
        .create_generation(&user, json!({"prompt": "a lighthouse"}))
        .await;
    assert_eq!(status, 202, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let mut stream = app
        .get_with_key(&format!("/api/v1/generations/{id}/events"), &user.api_key)
        .await;
    assert_eq!(stream.status(), 200);
    let first = read_until(&mut stream, "\n\n", Duration::from_secs(5)).await;
    assert!(first.contains("event: status"), "{first}");
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("createimage2_sse_streams{route=\"/api/v1/generations/{id}/events\"} 1"),
        "{metrics}"
    );

    let readyz = format!("http://{}/readyz", app.ops_addr);
    assert_eq!(app.client.get(&readyz).send().await.unwrap().status(), 200);
    let signalled = Instant::now();
    app.begin_shutdown();
    // Within the window: not ready, but still serving, and the stream is still open.
    let answer = app.client.get(&readyz).send().await.unwrap();
    assert_eq!(answer.status(), 503);
    assert!(answer.text().await.unwrap().contains("draining"));
    let (still, _) = app.generation(&user, &id).await;
    assert_eq!(still, 200, "requests are still served during the window");

    // After the window: a final event, then the end of the stream.
    let rest = read_until(&mut stream, "event: shutdown", Duration::from_secs(10)).await;
    assert!(rest.contains("event: shutdown"), "{rest}");
    assert!(
        signalled.elapsed() >= window,
        "streams end after the readiness window, not before ({:?})",
        signalled.elapsed()
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(5), stream.chunk())
            .await
            .expect("the stream ends")
            .map_or(true, |chunk| chunk.is_none()),
        "nothing follows the shutdown event"
    );
    // The listener is closed: new connections are refused.
    testkit::eventually("the listener to close", || async {
        reqwest::Client::new()
            .get(app.url("/healthz"))
            .send()
            .await
            .is_err()
    })
    .await;
    app.discard_unrun_jobs().await;
    app.finish().await;
}
