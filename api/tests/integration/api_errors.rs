//! The JSON API's answers as a client sees them: every refusal under `/api` — bad credentials, bodies, ids,
//! query strings, unknown fields, routes and methods — is the documented JSON error, and every answer carries
//! the caller's request budget (`RateLimit-Policy`, `RateLimit`).

use std::time::Duration;

use api::ApiBudgets;
use jobs::api_requests::Budget;
use reqwest::{Method, RequestBuilder, Response, header};
use serde_json::{Value, json};
use testkit::{TestApp, TestUser};

/// One request a client might make, and what the API must answer.
struct Case {
    what: &'static str,
    request: RequestBuilder,
    status: u16,
    error: &'static str,
    field: Option<&'static str>,
}

/// The answer's JSON body, after checking it is JSON in the documented shape (`error`, `message`, and `field`
/// when given).
async fn json_error(what: &str, response: Response) -> (u16, header::HeaderMap, Value) {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = response.text().await.unwrap();
    assert_eq!(content_type, "application/json", "{what}: {status} {text}");
    let body: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"));
    assert!(body["error"].is_string(), "{what}: {body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {body}"
    );
    (status, headers, body)
}

fn key(request: RequestBuilder, user: &TestUser) -> RequestBuilder {
    request.bearer_auth(&user.api_key)
}

#[tokio::test]
async fn every_refusal_under_the_api_is_json_naming_what_is_wrong() {
    let app = TestApp::builder().without_worker().spawn().await;
    let user = app.create_user(100).await;
    let other = app.create_user(100).await;
    let (_, theirs) = app
        .create_generation(&other, json!({"prompt": "theirs"}))
        .await;
    let client = &app.client;
    let url = |path: &str| app.url(path);
    let generations = url("/api/v1/generations");
    let cases = vec![
        Case {
            what: "no key",
            request: client.get(url("/api/v1/me")),
            status: 401,
            error: "unauthorized",
            field: None,
        },
        Case {
            what: "a key that does not exist",
            request: client.get(url("/api/v1/me")).bearer_auth("ci2_not_a_key"),
            status: 401,
            error: "unauthorized",
            field: None,
        },
        Case {
            what: "another scheme",
            request: client
                .get(url("/api/v1/me"))
                .header(header::AUTHORIZATION, "Basic dXNlcjpwYXNz"),
            status: 401,
            error: "unauthorized",
            field: None,
        },
        Case {
            what: "a body that is not JSON",
            request: key(client.post(&generations), &user)
                .header(header::CONTENT_TYPE, "application/json")
                .body("prompt=a cat"),
            status: 422,
            error: "invalid",
            field: Some("body"),
        },
        Case {
            what: "trailing characters after the document",
            request: key(client.post(&generations), &user)
                .header(header::CONTENT_TYPE, "application/json")
                .body(r#"{"prompt": "a cat"} {}"#),
            status: 422,
            error: "invalid",
            field: Some("body"),
        },
        Case {
            what: "a field of the wrong type",
            request: key(client.post(&generations), &user).json(&json!({"prompt": 5})),
            status: 422,
            error: "invalid",
            field: Some("prompt"),
        },
        Case {
            what: "an element of the wrong type",
            request: key(client.post(&generations), &user)
                .json(&json!({"prompt": "a cat", "reference_upload_ids": ["not-a-uuid"]})),
            status: 422,
            error: "invalid",
            field: Some("reference_upload_ids[0]"),
        },
        Case {
            what: "an unknown field",
            request: key(client.post(&generations), &user)
                .json(&json!({"prompt": "a cat", "count": 4})),
            status: 422,
            error: "invalid",
            field: Some("count"),
        },
        Case {
            what: "more images than a request makes",
            request: key(client.post(&generations), &user)
                .json(&json!({"prompt": "a cat", "n": 9})),
            status: 422,
            error: "invalid",
            field: Some("n"),
        },
        Case {
            what: "no content type",
            request: key(client.post(&generations), &user).body(r#"{"prompt": "a cat"}"#),
            status: 415,
            error: "unsupported_media_type",
            field: None,
        },
        Case {
            what: "a form instead of JSON",
            request: key(client.post(&generations), &user).form(&[("prompt", "a cat")]),
            status: 415,
            error: "unsupported_media_type",
            field: None,
        },
        Case {
            what: "a body over the limit",
            request: key(client.post(&generations), &user)
                .header(header::CONTENT_TYPE, "application/json")
                .body(format!(r#"{{"prompt": "{}"}}"#, "a".repeat(3 << 20))),
            status: 413,
            error: "too_large",
            field: None,
        },
        Case {
            what: "an id that is not a UUID",
            request: key(client.get(url("/api/v1/generations/not-a-uuid")), &user),
            status: 404,
            error: "not_found",
            field: Some("id"),
        },
        Case {
            what: "an export id that is not a UUID",
            request: key(client.get(url("/api/v1/exports/42")), &user),
            status: 404,
            error: "not_found",
            field: Some("id"),
        },
        Case {
            what: "an id that names nothing",
            request: key(
                client.get(url(&format!(
                    "/api/v1/generations/{}",
                    uuid::Uuid::new_v4()
                ))),
                &user,
            ),
            status: 404,
            error: "not_found",
            field: None,
        },
        Case {
            what: "another member's generation",
            request: key(
                client.post(url(&format!(
                    "/api/v1/generations/{}/cancel",
                    theirs["id"].as_str().unwrap()
                ))),
                &user,
            ),
            status: 404,
            error: "not_found",
            field: None,
        },
        Case {
            what: "a query value of the wrong type",
            request: key(client.get(url("/api/v1/generations?limit=ten")), &user),
            status: 422,
            error: "invalid",
            field: Some("limit"),
        },
        Case {
            what: "a misspelt query parameter",
            request: key(client.get(url("/api/v1/generations?limt=5")), &user),
            status: 422,
            error: "invalid",
            field: Some("limt"),
        },
        Case {
            what: "a malformed cursor",
            request: key(client.get(url("/api/v1/generations?cursor=%21%21")), &user),
            status: 422,
            error: "invalid",
            field: Some("cursor"),
        },
        Case {
            what: "an unknown path under /api/v1",
            request: key(client.get(url("/api/v1/images")), &user),
            status: 404,
            error: "not_found",
            field: None,
        },
        Case {
            what: "an unknown version",
            request: client.get(url("/api/v2/generations")),
            status: 404,
            error: "not_found",
            field: None,
        },
        Case {
            what: "a method the route does not take",
            request: key(client.put(&generations), &user).json(&json!({})),
            status: 405,
            error: "method_not_allowed",
            field: None,
        },
        Case {
            what: "deleting the caller",
            request: key(client.request(Method::DELETE, url("/api/v1/me")), &user),
            status: 405,
            error: "method_not_allowed",
            field: None,
        },
    ];
    for case in cases {
        let response = case.request.send().await.unwrap();
        let (status, headers, body) = json_error(case.what, response).await;
        assert_eq!(status, case.status, "{}: {body}", case.what);
        assert_eq!(body["error"], case.error, "{}: {body}", case.what);
        if let Some(field) = case.field {
            assert_eq!(body["field"], field, "{}: {body}", case.what);
        }
        assert!(
            headers.contains_key("ratelimit") && headers.contains_key("ratelimit-policy"),
            "{}: every answer carries the budget: {headers:?}",
            case.what
        );
        if status == 405 {
            assert!(headers.contains_key(header::ALLOW), "{}", case.what);
        }
    }
    assert_eq!(
        app.balance(&user).await,
        100,
        "no refused request reserved anything"
    );
    let created: i64 = sqlx::query_scalar("SELECT count(*) FROM generations WHERE user_id = $1")
        .bind(user.id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(created, 0, "no refused request created a generation");
    app.discard_unrun_jobs().await;
    app.finish().await;
}

#[tokio::test]
async fn a_401_says_how_to_authenticate() {
    let app = TestApp::spawn().await;
    let challenge = |response: &Response| {
        response.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .to_owned()
    };
    let missing = app.get("/api/v1/me").await;
    assert_eq!(missing.status(), 401);
    assert_eq!(challenge(&missing), r#"Bearer realm="createimage2""#);
    let wrong = app
        .get_with_key("/api/v1/me", "ci2_revoked_or_mistyped")
        .await;
    assert_eq!(wrong.status(), 401);
    assert_eq!(
        challenge(&wrong),
        r#"Bearer realm="createimage2", error="invalid_token""#
    );
    app.finish().await;
}

#[tokio::test]
async fn unknown_fields_are_refused_not_charged_as_one_image() {
    let app = TestApp::builder().without_worker().spawn().await;
    let user = app.create_user(100).await;
    let (status, body) = app
        .create_generation(
            &user,
            json!({"prompt": "four cats", "num_images": 4, "style": {"seed": 1}}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        body["unknown_fields"],
        json!(["num_images", "style"]),
        "{body}"
    );
    assert_eq!(app.balance(&user).await, 100);
    app.finish().await;
}

/// The fields `RateLimit` carries: (remaining, seconds to reset), of the policy `requests`.
fn standing(response: &Response) -> (u64, u64) {
    let value = response.headers()["ratelimit"].to_str().unwrap();
    let mut remaining = None;
    let mut reset = None;
    let params = value
        .strip_prefix("\"requests\";")
        .unwrap_or_else(|| panic!("not the requests policy: {value}"));
    for param in params.split(';') {
        match param.split_once('=') {
            Some(("r", n)) => remaining = n.parse().ok(),
            Some(("t", n)) => reset = n.parse().ok(),
            _ => panic!("unexpected parameter in {value}"),
        }
    }
    (remaining.unwrap(), reset.unwrap())
}

/// Budgets with a day-long window: a test never straddles two windows, but at midnight UTC.
fn small_budgets(member: u32, anonymous: u32) -> ApiBudgets {
    let day = Duration::from_secs(24 * 3600);
    ApiBudgets {
        member: Budget {
            limit: member,
            window: day,
        },
        anonymous: Budget {
            limit: anonymous,
            window: day,
        },
    }
}

#[tokio::test]
async fn a_member_sees_their_budget_on_every_answer_and_is_refused_past_it() {
    let app = TestApp::builder()
        .api_budgets(small_budgets(3, 50))
        .spawn()
        .await;
    let user = app.create_user(100).await;
    let other = app.create_user(100).await;
    let mut left = Vec::new();
    for _ in 0..3 {
        let response = app.get_with_key("/api/v1/me", &user.api_key).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["ratelimit-policy"],
            r#""requests";q=3;w=86400"#
        );
        let (remaining, reset) = standing(&response);
        assert!(reset <= 86400);
        left.push(remaining);
    }
    assert_eq!(left, [2, 1, 0]);
    let refused = app.get_with_key("/api/v1/me", &user.api_key).await;
    assert_eq!(standing(&refused).0, 0);
    let retry_after: u64 = refused.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=86400).contains(&retry_after), "{retry_after}");
    let (status, _, body) = json_error("over the budget", refused).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("rate_limited"))
    );
    let (status, created) = app
        .create_generation(&user, json!({"prompt": "refused before its handler"}))
        .await;
    assert_eq!(status, 429, "{created}");
    assert_eq!(app.balance(&user).await, 100, "nothing was reserved");

    let theirs = app.get_with_key("/api/v1/me", &other.api_key).await;
    assert_eq!(
        theirs.status(),
        200,
        "each member has a budget of their own"
    );
    assert_eq!(standing(&theirs).0, 2);
    app.finish().await;
}

#[tokio::test]
async fn requests_without_a_live_key_share_their_addresss_budget() {
    let app = TestApp::builder()
        .api_budgets(small_budgets(100, 2))
        .spawn()
        .await;
    let first = app.get_with_key("/api/v1/me", "ci2_guess_1").await;
    assert_eq!(first.status(), 401);
    assert_eq!(
        first.headers()["ratelimit-policy"],
        r#""requests";q=2;w=86400"#
    );
    assert_eq!(standing(&first).0, 1);
    let second = app.get("/api/v1/me").await;
    assert_eq!((second.status().as_u16(), standing(&second).0), (401, 0));
    let third = app.get_with_key("/api/v1/me", "ci2_guess_3").await;
    assert_eq!(third.status(), 429, "guessing keys is bounded per address");
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT key FROM rate_limit_windows WHERE key LIKE 'api:anonymous:%'")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert!(
        !stored[0].contains("127.0.0.1"),
        "the address is kept only as a keyed hash: {stored:?}"
    );
    app.finish().await;
}
