//! The kie.ai fake speaks the protocol of shared/docs/kie-api.md: these tests talk to it over HTTP exactly as the
//! production client does, so a wrong fake cannot silently make a wrong client pass.

use std::time::{Duration, Instant};

use axum::{Router, http::HeaderMap, routing::post};
use base64::Engine as _;
use fakes::kie::{CallbackMode, FailCodes, FakeKieConfig, KieFake};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::mpsc;

const KEY: &str = "test-kie-key";

fn quick() -> FakeKieConfig {
    FakeKieConfig {
        latency: (Duration::from_millis(50), Duration::from_millis(100)),
        image_max_side: 64,
        ..FakeKieConfig::default()
    }
}

fn text(prompt: &str, aspect_ratio: &str, resolution: &str) -> Value {
    json!({
        "model": "gpt-image-2-text-to-image",
        "input": { "prompt": prompt, "aspect_ratio": aspect_ratio, "resolution": resolution },
    })
}

async fn post_json(fake: &KieFake, path: &str, key: &str, body: &Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", fake.base_url()))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn create(fake: &KieFake, body: &Value) -> Value {
    let (status, body) = post_json(fake, "/api/v1/jobs/createTask", KEY, body).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn create_ok(fake: &KieFake, body: &Value) -> String {
    let answer = create(fake, body).await;
    assert_eq!(answer["code"], 200, "{answer}");
    answer["data"]["taskId"].as_str().unwrap().to_owned()
}

async fn record_info(fake: &KieFake, task_id: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{}/api/v1/jobs/recordInfo", fake.base_url()))
        .query(&[("taskId", task_id)])
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// kie's envelope carries its message as `msg` or `message`.
fn message(envelope: &Value) -> &str {
    envelope["msg"]
        .as_str()
        .or_else(|| envelope["message"].as_str())
        .unwrap()
}

async fn poll_until_done(fake: &KieFake, task_id: &str) -> Value {
    // Generous for a loaded CI machine: the loop ends as soon as the task does.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = record_info(fake, task_id).await;
        assert_eq!(answer["code"], 200, "{answer}");
        assert_eq!(message(&answer), "success");
        let state = answer["data"]["state"].as_str().unwrap();
        if state == "success" || state == "fail" {
            return answer;
        }
        assert!(Instant::now() < deadline, "task never finished: {answer}");
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
}

fn result_urls(data: &Value) -> Vec<String> {
    let result: Value = serde_json::from_str(data["resultJson"].as_str().unwrap()).unwrap();
    result["resultUrls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|url| url.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_task_created_and_polled_until_success_yields_a_png_of_the_requested_aspect_ratio() {
    let fake = KieFake::start(quick()).await.unwrap();
    let task_id = create_ok(&fake, &text("a red fox", "16:9", "2K")).await;
    assert!(task_id.starts_with("task_"));

    let early = record_info(&fake, &task_id).await;
    let state = early["data"]["state"].as_str().unwrap();
    assert!(state == "waiting" || state == "generating", "{early}");
    assert_eq!(early["data"]["resultJson"], "");
    assert!(early["data"].get("completeTime").is_none());

    let done = poll_until_done(&fake, &task_id).await;
    let data = &done["data"];
    assert_eq!(data["state"], "success");
    assert_eq!(data["taskId"], task_id.as_str());
    assert_eq!(data["model"], "gpt-image-2-text-to-image");
    assert_eq!(data["progress"], 100);
    let param: Value = serde_json::from_str(data["param"].as_str().unwrap()).unwrap();
    assert_eq!(param["input"]["prompt"], "a red fox");
    let created = data["createTime"].as_u64().unwrap();
    let completed = data["completeTime"].as_u64().unwrap();
    assert!(created > 1_600_000_000_000, "epoch ms");
    assert_eq!(completed - created, data["costTime"].as_u64().unwrap());

    let urls = result_urls(data);
    assert_eq!(urls.len(), 1);
    assert!(urls[0].starts_with(&format!(
        "{}/files/{task_id}/0.png?expires=",
        fake.base_url()
    )));
    let response = reqwest::get(&urls[0]).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/png");
    let bytes = response.bytes().await.unwrap();
    let info = png::Decoder::new(&bytes[..])
        .read_info()
        .unwrap()
        .info()
        .clone();
    assert_eq!((info.width, info.height), (64, 36));

    let (_, link) = post_json(
        &fake,
        "/api/v1/common/download-url",
        KEY,
        &json!({ "url": urls[0] }),
    )
    .await;
    assert_eq!(link["code"], 200, "{link}");
    let direct = link["data"].as_str().unwrap();
    assert!(direct.contains("direct=1"), "{direct}");
    let again = reqwest::get(direct).await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(
        again.bytes().await.unwrap(),
        bytes,
        "the file is cached per task"
    );

    let stats = fake.stats();
    assert_eq!((stats.tasks_created, stats.downloads), (1, 2));
    let tasks = fake.tasks();
    assert_eq!(tasks.len(), 1);
    assert_eq!(
        (tasks[0].aspect_ratio.as_str(), tasks[0].resolution.as_str()),
        ("16:9", "2K")
    );
    assert_eq!(tasks[0].state, "success");
}

#[tokio::test]
async fn portrait_and_auto_ratios_give_matching_image_sizes() {
    let fake = KieFake::start(quick()).await.unwrap();
    for (ratio, size) in [
        ("9:16", (36, 64)),
        ("auto", (64, 64)),
        ("1:1", (64, 64)),
        ("3:2", (64, 43)),
    ] {
        let task_id = create_ok(&fake, &text("a cat", ratio, "1K")).await;
        let done = poll_until_done(&fake, &task_id).await;
        let bytes = reqwest::get(&result_urls(&done["data"])[0])
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let info = png::Decoder::new(&bytes[..])
            .read_info()
            .unwrap()
            .info()
            .clone();
        assert_eq!((info.width, info.height), size, "{ratio}");
    }
}

#[tokio::test]
async fn the_21st_create_within_10_seconds_is_rate_limited_and_not_created() {
    let fake = KieFake::start(quick()).await.unwrap();
    for _ in 0..20 {
        create_ok(&fake, &text("a tree", "1:1", "1K")).await;
    }
    let refused = create(&fake, &text("a tree", "1:1", "1K")).await;
    assert_eq!(refused["code"], 429, "{refused}");
    assert_eq!(message(&refused), "rate limited");

    assert_eq!(fake.tasks().len(), 20);
    let stats = fake.stats();
    assert_eq!(stats.create_calls, 21);
    assert_eq!(stats.tasks_created, 20);
    assert_eq!(stats.rate_limited_creates, 1);
    assert_eq!(stats.max_creates_in_window, 20);
}

#[tokio::test]
async fn max_creates_in_window_is_measured_even_without_a_limit() {
    let fake = KieFake::start(FakeKieConfig {
        create_limit: None,
        ..quick()
    })
    .await
    .unwrap();
    for _ in 0..25 {
        create_ok(&fake, &text("a tree", "1:1", "1K")).await;
    }
    assert_eq!(fake.stats().max_creates_in_window, 25);
}

#[tokio::test]
async fn invalid_combinations_are_rejected_with_422() {
    // Rejected creates still count against the create window: more of them than it allows are sent here.
    let fake = KieFake::start(FakeKieConfig {
        create_limit: None,
        ..quick()
    })
    .await
    .unwrap();
    let i2i = |urls: Value| json!({ "model": "gpt-image-2-image-to-image", "input": { "prompt": "make it blue", "input_urls": urls } });
    let long_prompt = "x".repeat(20_001);
    let i2i_at = |aspect_ratio: &str, resolution: &str| json!({ "model": "gpt-image-2-image-to-image", "input": { "prompt": "a", "aspect_ratio": aspect_ratio, "resolution": resolution, "input_urls": ["https://example.com/a.png"] } });
    let cases = [
        i2i_at("1:1", "4K"),
        i2i_at("auto", "2K"),
        i2i_at("5:4", "2K"),
        i2i_at("9:21", "4K"),
        json!({ "model": "gpt-image-2-image-to-image", "input": { "prompt": "a", "resolution": "2K", "input_urls": ["https://example.com/a.png"] } }),
        text("a", "5:4", "2K"),
        text("a", "4:5", "4K"),
        text("a", "3:1", "2K"),
        text("a", "1:3", "2K"),
        text("a", "9:21", "4K"),
        text("a", "7:3", "1K"),
        text("a", "1:1", "8K"),
        text("", "1:1", "1K"),
        text(&long_prompt, "1:1", "1K"),
        json!({ "model": "gpt-image-1", "input": { "prompt": "a" } }),
        json!({ "model": "gpt-image-2-text-to-image" }),
        i2i(json!([])),
        json!({ "model": "gpt-image-2-image-to-image", "input": { "prompt": "a" } }),
        i2i(json!(vec!["https://example.com/a.png"; 17])),
        i2i(json!(["ftp://example.com/a.png"])),
        i2i(json!([format!(
            "{}/files/task_missing/0.png?expires=99999999999",
            fake.base_url()
        )])),
    ];
    for body in &cases {
        let answer = create(&fake, body).await;
        assert_eq!(answer["code"], 422, "{body} -> {answer}");
        assert!(!message(&answer).is_empty());
    }
    assert!(fake.tasks().is_empty());

    // Allowed edge cases, and an image-to-image whose input really can be fetched. The text-to-image page forbids
    // only the five ratios above 1K: 4K at 1:1 and auto above 1K are image-to-image rules.
    create_ok(&fake, &text("a", "1:1", "2K")).await;
    create_ok(&fake, &text("a", "1:1", "4K")).await;
    create_ok(&fake, &text("a", "auto", "2K")).await;
    create_ok(&fake, &text("a", "9:21", "1K")).await;
    create_ok(&fake, &text("a", "16:9", "4K")).await;
    create_ok(&fake, &text(&"x".repeat(20_000), "auto", "1K")).await;
    create_ok(
        &fake,
        &json!({ "model": "gpt-image-2-text-to-image", "input": { "prompt": "a" } }),
    )
    .await;
    let source = create_ok(&fake, &text("source", "1:1", "1K")).await;
    let url = result_urls(&poll_until_done(&fake, &source).await["data"]).remove(0);
    let edit = create_ok(&fake, &i2i(json!([url]))).await;
    let tasks = fake.tasks();
    let edit = tasks.iter().find(|task| task.task_id == edit).unwrap();
    assert_eq!(edit.input_urls, vec![url]);
    assert_eq!(edit.aspect_ratio, "auto");
    let defaulted = &tasks[6];
    assert_eq!(
        (
            defaulted.aspect_ratio.as_str(),
            defaulted.resolution.as_str()
        ),
        ("auto", "1K")
    );
}

#[tokio::test]
async fn a_wrong_or_missing_key_gets_401() {
    let fake = KieFake::start(quick()).await.unwrap();
    let (status, answer) = post_json(
        &fake,
        "/api/v1/jobs/createTask",
        "wrong",
        &text("a", "1:1", "1K"),
    )
    .await;
    assert_eq!((status, answer["code"].as_u64()), (200, Some(401)));

    let client = reqwest::Client::new();
    for path in [
        "/api/v1/jobs/recordInfo?taskId=task_1",
        "/api/v1/chat/credit",
    ] {
        let answer: Value = client
            .get(format!("{}{path}", fake.base_url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["code"], 401, "{path}");
    }
    assert!(fake.tasks().is_empty());
    assert_eq!(fake.stats().create_calls, 1);

    let credit: Value = client
        .get(format!("{}/api/v1/chat/credit", fake.base_url()))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        credit,
        json!({ "code": 200, "msg": "success", "data": 100 })
    );
}

#[tokio::test]
async fn a_refused_prompt_fails_with_the_content_policy_message() {
    let fake = KieFake::start(quick()).await.unwrap();
    let task_id = create_ok(&fake, &text("something [refuse]", "1:1", "1K")).await;
    let done = poll_until_done(&fake, &task_id).await;
    assert_eq!(done["data"]["state"], "fail");
    assert_eq!(done["data"]["failCode"], "422");
    assert_eq!(
        done["data"]["failMsg"],
        "Invalid prompt: prompt contains prohibited content"
    );
    assert_eq!(done["data"]["resultJson"], "");

    let task_id = create_ok(&fake, &text("something [fail500]", "1:1", "1K")).await;
    let done = poll_until_done(&fake, &task_id).await;
    assert_eq!(
        (
            done["data"]["state"].as_str(),
            done["data"]["failCode"].as_str()
        ),
        (Some("fail"), Some("500"))
    );
}

/// Polls until the task is done, whatever the envelope code of its answers.
async fn poll_until_finished_answering(fake: &KieFake, task_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = record_info(fake, task_id).await;
        let state = answer["data"]["state"].as_str().unwrap();
        if state == "success" || state == "fail" {
            return answer;
        }
        assert!(Instant::now() < deadline, "task never finished: {answer}");
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
}

#[tokio::test]
async fn in_the_501_mode_a_failed_task_is_answered_with_code_501_and_its_data() {
    let fake = KieFake::start(FakeKieConfig {
        failed_task_code: 501,
        ..quick()
    })
    .await
    .unwrap();
    let task_id = create_ok(&fake, &text("something [fail500]", "1:1", "1K")).await;
    let done = poll_until_finished_answering(&fake, &task_id).await;
    assert_eq!(done["code"], 501, "{done}");
    assert_eq!(message(&done), "internal error");
    assert_eq!(done["data"]["taskId"], task_id.as_str());
    assert_eq!(
        (
            done["data"]["failCode"].as_str(),
            done["data"]["failMsg"].as_str()
        ),
        (Some("500"), Some("internal error"))
    );
    let fine = create_ok(&fake, &text("a", "1:1", "1K")).await;
    assert_eq!(
        poll_until_done(&fake, &fine).await["code"],
        200,
        "successes stay 200"
    );
}

#[tokio::test]
async fn named_fail_codes_are_generation_failed_and_null_while_not_failed() {
    let fake = KieFake::start(FakeKieConfig {
        fail_codes: FailCodes::Named,
        ..quick()
    })
    .await
    .unwrap();
    let failed = create_ok(&fake, &text("[refuse]", "1:1", "1K")).await;
    let done = poll_until_done(&fake, &failed).await;
    assert_eq!(done["data"]["failCode"], "GENERATION_FAILED");
    assert_eq!(
        done["data"]["failMsg"],
        "Invalid prompt: prompt contains prohibited content"
    );
    let fine = create_ok(&fake, &text("a", "1:1", "1K")).await;
    let done = poll_until_done(&fake, &fine).await;
    assert!(done["data"]["failCode"].is_null(), "{done}");
}

#[tokio::test]
async fn a_failure_callback_carries_code_501_with_the_task_data() {
    let fake = KieFake::start(quick()).await.unwrap();
    let (url, mut received) = receiver(200).await;
    let mut body = text("[refuse]", "1:1", "1K");
    body["callBackUrl"] = json!(url);
    let task_id = create_ok(&fake, &body).await;
    let (_, callback) = next(&mut received).await;
    assert_eq!(callback["code"], 501, "{callback}");
    assert_eq!(callback["data"]["taskId"], task_id.as_str());
    assert_eq!(callback["data"]["state"], "fail");
    assert_eq!(callback["data"]["failCode"], "422");
}

#[tokio::test]
async fn unknown_tasks_are_404() {
    let fake = KieFake::start(quick()).await.unwrap();
    let answer = record_info(&fake, "task_nope").await;
    assert_eq!(answer["code"], 404);
    assert_eq!(message(&answer), "task not found");
    let status = reqwest::get(format!("{}/api/v2/anything", fake.base_url()))
        .await
        .unwrap()
        .status();
    assert_eq!(status, 404);
}

/// A webhook receiver on a free port that forwards each delivery's headers and JSON body.
async fn receiver(status: u16) -> (String, mpsc::UnboundedReceiver<(HeaderMap, Value)>) {
    let (sender, received) = mpsc::unbounded_channel();
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: String| {
            let sender = sender.clone();
            async move {
                sender
                    .send((headers, serde_json::from_str(&body).unwrap()))
                    .unwrap();
                axum::http::StatusCode::from_u16(status).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

async fn next(received: &mut mpsc::UnboundedReceiver<(HeaderMap, Value)>) -> (HeaderMap, Value) {
    tokio::time::timeout(Duration::from_secs(5), received.recv())
        .await
        .expect("no callback arrived")
        .unwrap()
}

/// The signature as kie's "Webhook Security Verification" page defines it (docs/kie-api.md, "Callbacks"):
/// base64(HMAC-SHA256(key, taskId + "." + timestamp)), recomputed here from that formula rather than with the
/// stand-in's `webhook_signature`, which the api's callback tests borrow to sign forged callbacks.
#[tokio::test]
async fn callbacks_arrive_signed_with_a_valid_hmac() {
    let fake = KieFake::start(FakeKieConfig {
        hmac_key: Some("webhook-secret".to_owned()),
        callbacks: CallbackMode::Duplicated,
        ..quick()
    })
    .await
    .unwrap();
    let (url, mut received) = receiver(200).await;
    let mut body = text("a lighthouse", "4:3", "1K");
    body["callBackUrl"] = json!(url);
    let task_id = create_ok(&fake, &body).await;

    for _ in 0..2 {
        let (headers, callback) = next(&mut received).await;
        assert_eq!(callback["code"], 200);
        assert_eq!(callback["msg"], "success");
        assert_eq!(callback["data"]["taskId"], task_id.as_str());
        assert_eq!(callback["data"]["state"], "success");
        assert_eq!(result_urls(&callback["data"]).len(), 1);

        let timestamp = headers["x-webhook-timestamp"].to_str().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(
            now.abs_diff(timestamp.parse().unwrap()) < 10,
            "fresh unix seconds"
        );
        let signature = base64::engine::general_purpose::STANDARD
            .decode(headers["x-webhook-signature"].to_str().unwrap())
            .unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(b"webhook-secret").unwrap();
        mac.update(format!("{task_id}.{timestamp}").as_bytes());
        mac.verify_slice(&signature).expect("valid signature");
    }
    // The fake counts a delivery once the receiver's answer is back, just after the receiver saw it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while fake.stats().callbacks_sent < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fake.stats().callbacks_sent, 2);
    assert_eq!(fake.tasks()[0].callback_url.as_deref(), Some(url.as_str()));
}

#[tokio::test]
async fn failed_callbacks_are_retried_and_lost_ones_never_sent() {
    let fake = KieFake::start(quick()).await.unwrap();
    let (url, mut received) = receiver(503).await;
    let mut body = text("[refuse]", "1:1", "1K");
    body["callBackUrl"] = json!(url);
    create_ok(&fake, &body).await;
    for _ in 0..4 {
        let (headers, callback) = next(&mut received).await;
        assert!(
            headers.get("x-webhook-signature").is_none(),
            "unsigned without a key"
        );
        assert_eq!(callback["data"]["state"], "fail");
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(received.try_recv().is_err(), "1 try + 3 retries");
    assert_eq!(fake.stats().callbacks_sent, 0);

    fake.update(|config| config.callbacks = CallbackMode::Lost);
    let (url, mut received) = receiver(200).await;
    let mut body = text("a", "1:1", "1K");
    body["callBackUrl"] = json!(url);
    let task_id = create_ok(&fake, &body).await;
    poll_until_done(&fake, &task_id).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(received.try_recv().is_err());
}

#[tokio::test]
async fn an_expired_result_url_is_refused_by_download_url_and_files() {
    let fake = KieFake::start(quick()).await.unwrap();
    let task_id = create_ok(&fake, &text("a", "1:1", "1K")).await;
    let url = result_urls(&poll_until_done(&fake, &task_id).await["data"]).remove(0);
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 200);

    fake.update(|config| config.result_url_ttl = Duration::ZERO);
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 403);
    let (_, answer) = post_json(
        &fake,
        "/api/v1/common/download-url",
        KEY,
        &json!({ "url": url }),
    )
    .await;
    assert_eq!(answer["code"], 422);
    assert_eq!(message(&answer), "url expired or unknown");

    // An `expires` in the past is refused whatever the ttl; so are URLs that are not ours.
    fake.update(|config| config.result_url_ttl = Duration::from_secs(3600));
    let stale = format!("{}/files/{task_id}/0.png?expires=1000", fake.base_url());
    assert_eq!(reqwest::get(&stale).await.unwrap().status(), 403);
    for url in [stale.as_str(), "https://tempfile.example.com/x.png"] {
        let (_, answer) = post_json(
            &fake,
            "/api/v1/common/download-url",
            KEY,
            &json!({ "url": url }),
        )
        .await;
        assert_eq!(answer["code"], 422, "{url}");
    }
    assert_eq!(fake.stats().downloads, 1);
}

#[tokio::test]
async fn a_lost_create_response_still_creates_the_task_but_answers_500() {
    let fake = KieFake::start(FakeKieConfig {
        lose_create_responses: 1,
        ..quick()
    })
    .await
    .unwrap();
    let (status, answer) = post_json(
        &fake,
        "/api/v1/jobs/createTask",
        KEY,
        &text("a", "1:1", "1K"),
    )
    .await;
    assert_eq!((status, answer["code"].as_u64()), (500, Some(500)));
    let tasks = fake.tasks();
    assert_eq!(tasks.len(), 1);
    assert_eq!(
        poll_until_done(&fake, &tasks[0].task_id).await["data"]["state"],
        "success"
    );
    // Only the next N are lost.
    create_ok(&fake, &text("a", "1:1", "1K")).await;
}

#[tokio::test]
async fn injected_create_faults_apply_in_order_and_create_nothing() {
    let fake = KieFake::start(FakeKieConfig {
        fail_creates: 1,
        rate_limit_creates: 1,
        ..quick()
    })
    .await
    .unwrap();
    let body = text("a", "1:1", "1K");
    let (status, answer) = post_json(&fake, "/api/v1/jobs/createTask", KEY, &body).await;
    assert_eq!((status, answer["code"].as_u64()), (500, Some(500)));
    assert_eq!(create(&fake, &body).await["code"], 429);
    fake.update(|config| config.account_error = Some(402));
    assert_eq!(create(&fake, &body).await["code"], 402);
    fake.update(|config| config.account_error = None);
    create_ok(&fake, &body).await;
    assert_eq!(fake.tasks().len(), 1);
    let stats = fake.stats();
    assert_eq!((stats.create_calls, stats.rate_limited_creates), (4, 1));
}

#[tokio::test]
async fn malformed_and_url_less_answers_happen_once() {
    let fake = KieFake::start(FakeKieConfig {
        malformed_record_info: 1,
        ..quick()
    })
    .await
    .unwrap();
    let task_id = create_ok(&fake, &text("a [no-urls-once]", "1:1", "1K")).await;
    let raw = reqwest::Client::new()
        .get(format!(
            "{}/api/v1/jobs/recordInfo?taskId={task_id}",
            fake.base_url()
        ))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 200);
    assert!(serde_json::from_str::<Value>(&raw.text().await.unwrap()).is_err());

    let first = poll_until_done(&fake, &task_id).await;
    assert_eq!(first["data"]["state"], "success");
    assert!(result_urls(&first["data"]).is_empty());
    let second = record_info(&fake, &task_id).await;
    assert_eq!(result_urls(&second["data"]).len(), 1);
}

#[tokio::test]
async fn the_11th_record_info_within_a_second_is_rate_limited() {
    let fake = KieFake::start(quick()).await.unwrap();
    let task_id = create_ok(&fake, &text("a", "1:1", "1K")).await;
    for _ in 0..10 {
        assert_eq!(record_info(&fake, &task_id).await["code"], 200);
    }
    assert_eq!(record_info(&fake, &task_id).await["code"], 429);
    let stats = fake.stats();
    assert_eq!(
        (stats.record_info_calls, stats.rate_limited_record_infos),
        (11, 1)
    );
}

#[tokio::test]
async fn slow_prompts_take_three_times_the_maximum_latency() {
    let fake = KieFake::start(quick()).await.unwrap();
    let started = Instant::now();
    let task_id = create_ok(&fake, &text("a [slow]", "1:1", "1K")).await;
    poll_until_done(&fake, &task_id).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn stalled_answers_come_only_after_the_stall_and_a_stalled_create_still_creates_its_task() {
    let fake = KieFake::start(FakeKieConfig {
        stall_creates: 1,
        stall_record_infos: 1,
        stall: Duration::from_millis(1500),
        ..quick()
    })
    .await
    .unwrap();
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let timed_out = impatient
        .post(format!("{}/api/v1/jobs/createTask", fake.base_url()))
        .bearer_auth(KEY)
        .json(&text("a", "1:1", "1K"))
        .send()
        .await
        .unwrap_err();
    assert!(timed_out.is_timeout(), "{timed_out}");
    let tasks = fake.tasks();
    assert_eq!(
        tasks.len(),
        1,
        "the task exists although its answer is late"
    );

    let timed_out = impatient
        .get(format!(
            "{}/api/v1/jobs/recordInfo?taskId={}",
            fake.base_url(),
            tasks[0].task_id
        ))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap_err();
    assert!(timed_out.is_timeout(), "{timed_out}");

    // Only the next N stall.
    create_ok(&fake, &text("b", "1:1", "1K")).await;
    assert_eq!(
        poll_until_done(&fake, &tasks[0].task_id).await["data"]["state"],
        "success"
    );
    assert_eq!(fake.stats().stalled_answers, 2);
}

// ---- fidelity to kie's documented examples ----

/// kie's Get Task Details example (<https://docs.kie.ai/market/common/get-task-detail>, read 2026-12-06 through
/// the search tool's copy of the page), as published: a Market model's task, so its `model` is not ours.
const DOCUMENTED_RECORD_INFO: &str = r#"{
  "code": 200,
  "message": "success",
  "data": {
    "taskId": "task_12345678",
    "model": "grok-imagine/text-to-image",
    "state": "success",
    "param": "{\"model\":\"grok-imagine/text-to-image\",\"callBackUrl\":\"https://your-domain.com/api/callback\",\"input\":{\"prompt\":\"Cinematic portrait...\",\"aspect_ratio\":\"3:2\"}}",
    "resultJson": "{\"resultUrls\":[\"https://example.com/generated-content.jpg\"]}",
    "failCode": "",
    "failMsg": "",
    "completeTime": 1698765432000,
    "createTime": 1698765400000,
    "updateTime": 1698765432000
  }
}"#;

/// kie's Common API examples (<https://docs.kie.ai/common-api>, "Get Download URL" and "Get Remaining Credits",
/// read 2026-12-06).
const DOCUMENTED_DOWNLOAD_URL: &str = r#"{"code": 200, "msg": "success", "data": "https://tempfile.1f6cxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxbd98"}"#;
const DOCUMENTED_CREDIT: &str = r#"{"code": 200, "msg": "success", "data": 100}"#;

/// The JSON type of a value, for comparing shapes.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The envelope as `jobs::kie` reads it: a numeric `code`, a message under `msg` or `message`.
fn assert_envelope(answer: &Value) {
    assert_eq!(kind(&answer["code"]), "number", "{answer}");
    assert!(
        answer["msg"].is_string() || answer["message"].is_string(),
        "{answer}"
    );
}

#[tokio::test]
async fn every_field_the_client_reads_is_in_kies_documented_examples_and_the_stand_in_answers_in_their_shape()
 {
    let documented: Value = serde_json::from_str(DOCUMENTED_RECORD_INFO).unwrap();
    assert_envelope(&documented);
    let data = &documented["data"];
    // What jobs/src/kie.rs (TaskInfo::from_data) and api/src/webhooks.rs read.
    for field in ["taskId", "state", "resultJson", "failCode", "failMsg"] {
        assert!(data.get(field).is_some(), "{field} is not in kie's example");
    }
    // `resultJson` is a JSON string holding `resultUrls`.
    assert!(!result_urls(data).is_empty());
    // `costTime` is read when present; kie's example does not have it, so the client must not need it.
    assert!(data.get("costTime").is_none());

    // The stand-in's answer for a finished task has every documented field, with the same JSON type.
    let fake = KieFake::start(quick()).await.unwrap();
    let task_id = create_ok(&fake, &text("a lighthouse", "3:2", "1K")).await;
    let answer = poll_until_done(&fake, &task_id).await;
    assert_envelope(&answer);
    for (field, value) in data.as_object().unwrap() {
        assert_eq!(
            kind(&answer["data"][field]),
            kind(value),
            "data.{field}: {answer}"
        );
    }
    let param: Value = serde_json::from_str(answer["data"]["param"].as_str().unwrap()).unwrap();
    assert_eq!(
        param["input"]["aspect_ratio"], "3:2",
        "param echoes the request"
    );
    assert!(!result_urls(&answer["data"]).is_empty());

    for (documented, path, body) in [
        (
            DOCUMENTED_DOWNLOAD_URL,
            "/api/v1/common/download-url",
            Some(json!({ "url": result_urls(&answer["data"])[0] })),
        ),
        (DOCUMENTED_CREDIT, "/api/v1/chat/credit", None),
    ] {
        let documented: Value = serde_json::from_str(documented).unwrap();
        assert_envelope(&documented);
        let client = reqwest::Client::new();
        let request = match &body {
            Some(body) => client.post(format!("{}{path}", fake.base_url())).json(body),
            None => client.get(format!("{}{path}", fake.base_url())),
        };
        let answer: Value = request
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_envelope(&answer);
        assert_eq!(answer["code"], 200, "{answer}");
        assert_eq!(
            kind(&answer["data"]),
            kind(&documented["data"]),
            "{path}: {answer}"
        );
    }
}
