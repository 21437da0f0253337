//! Live status (server-sent events) fed by the api's one LISTEN connection: what a stream does when that
//! connection is lost and notifications with it.

use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::PgPool;
use testkit::TestApp;

/// Reads server-sent-event text from `response` until it ends or `within` passes; returns the text and
/// whether it ended.
async fn read_to_end(response: &mut reqwest::Response, within: Duration) -> (String, bool) {
    let mut text = String::new();
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, response.chunk()).await {
            Ok(Ok(Some(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            Ok(Ok(None)) => return (text, true),
            Ok(Err(_)) | Err(_) => return (text, false),
        }
    }
}

/// Reads until the first blank line: the stream's first event.
async fn first_event(response: &mut reqwest::Response) -> String {
    let mut text = String::new();
    while !text.contains("\n\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk())
            .await
            .expect("the first event arrives")
            .unwrap()
            .expect("the stream is open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    text
}

/// The backend of the api's LISTEN for status changes, once it listens.
async fn events_listener(pool: &PgPool) -> Option<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity
          WHERE datname = current_database() AND strpos(query, $1) = 1",
    )
    .bind(format!("LISTEN \"{}\"", jobs::generations::EVENTS_CHANNEL))
    .fetch_optional(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_stream_that_missed_its_last_change_while_the_listen_connection_was_lost_reads_its_row_again_and_ends()
 {
    // No worker: nothing moves the generation but this test.
    let app = TestApp::builder().without_worker().spawn().await;
    let user = app.create_user(100).await;
    let (status, created) = app
        .create_generation(&user, json!({"prompt": "a lighthouse"}))
        .await;
    assert_eq!(status, 202, "{created}");
    let id: uuid::Uuid = created["id"].as_str().unwrap().parse().unwrap();
    testkit::eventually("the api to LISTEN", || async {
        events_listener(&app.pool).await.is_some()
    })
    .await;
    let mut stream = app
        .get_with_key(&format!("/api/v1/generations/{id}/events"), &user.api_key)
        .await;
    assert_eq!(stream.status(), 200);
    let first = first_event(&mut stream).await;
    assert!(first.contains(r#""status":"queued""#), "{first}");

    // The generation fails with its announcement lost (no NOTIFY), as one made while the api's LISTEN
    // connection is down would be; then that connection drops.
    sqlx::query(
        "UPDATE generations SET status = 'failed', finished_at = now(), updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .execute(&app.pool)
    .await
    .unwrap();
    let listener = events_listener(&app.pool).await.expect("the api listens");
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(listener)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(terminated);

    // The api listens again, and the stream, told it may have missed changes, reads its row and ends.
    let (rest, ended) = read_to_end(&mut stream, Duration::from_secs(30)).await;
    assert!(rest.contains(r#""status":"failed""#), "{rest}");
    assert!(ended, "the stream ends after its final status: {rest}");
    testkit::eventually("the api to LISTEN again", || async {
        events_listener(&app.pool)
            .await
            .is_some_and(|pid| pid != listener)
    })
    .await;
    app.discard_unrun_jobs().await;
    app.finish().await;
}

#[tokio::test]
async fn streams_hold_no_database_connection_while_they_wait() {
    // No worker: the generations stay queued and their streams open.
    let app = TestApp::builder().without_worker().spawn().await;
    let user = app.create_user(1000).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let (status, created) = app
            .create_generation(&user, json!({"prompt": format!("picture {n}")}))
            .await;
        assert_eq!(status, 202, "{created}");
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    // More streams than the pool has connections (testkit's pool: 30).
    let mut streams = Vec::new();
    for n in 0..45 {
        let id = &ids[n % ids.len()];
        let mut stream = app
            .get_with_key(&format!("/api/v1/generations/{id}/events"), &user.api_key)
            .await;
        assert_eq!(stream.status(), 200);
        first_event(&mut stream).await;
        streams.push(stream);
    }
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("createimage2_sse_streams{route=\"/api/v1/generations/{id}/events\"} 45"),
        "{metrics}"
    );
    // The JSON API still answers at once: no stream holds a pooled connection.
    let (status, _) = app.generation(&user, &ids[0]).await;
    assert_eq!(status, 200);
    drop(streams);
    app.discard_unrun_jobs().await;
    app.finish().await;
}
