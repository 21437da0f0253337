//! The generation pipeline end to end: JSON API → queue → kie.ai stand-in → S3 stand-in → ledger.

use std::time::Duration;

use fakes::kie::{CallbackMode, FailCodes};
use jobs::config::GenerationConfig;
use jobs::operator::{Operator, Via};
use jobs::upstream::PauseKind;
use serde_json::{Value, json};
use testkit::{TestApp, TestUser, images};

async fn ledger(app: &TestApp, user: &TestUser) -> Vec<(String, i64)> {
    sqlx::query_as(
        "SELECT kind, amount FROM credit_ledger WHERE user_id = $1 AND kind <> 'grant' ORDER BY id",
    )
    .bind(user.id)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

fn id_of(body: &Value) -> String {
    body["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {body}"))
        .to_owned()
}

#[tokio::test]
async fn a_text_to_image_generation_is_stored_in_the_bucket_and_its_credits_settled() {
    let app = TestApp::spawn().await;
    let user = app.create_user(100).await;
    let (status, created) = app
        .create_generation(
            &user,
            json!({"prompt": "a lighthouse at dawn", "aspect_ratio": "16:9"}),
        )
        .await;
    assert_eq!(status, 202, "{created}");
    assert_eq!(created["credits_reserved"], 10);
    assert_eq!(
        created["status_url"],
        format!("/api/v1/generations/{}", id_of(&created))
    );
    assert_eq!(app.balance(&user).await, 90, "reserved at once");

    let done = app.wait_until_finished(&user, &id_of(&created)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let image = &done["images"][0];
    assert_eq!(
        (image["width"].as_i64(), image["height"].as_i64()),
        (Some(64), Some(36)),
        "16:9 at the stand-in's 64 px"
    );
    assert_eq!(image["content_type"], "image/png");
    let downloaded = reqwest::get(image["url"].as_str().unwrap())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        downloaded.len() as i64,
        image["byte_size"].as_i64().unwrap()
    );
    assert_eq!(&downloaded[1..4], b"PNG");
    let key: String = sqlx::query_scalar("SELECT object_key FROM generated_images")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        key,
        format!("users/{}/generations/{}/0.png", user.id, id_of(&created))
    );
    assert_eq!(
        app.storage.get_bytes(&key).await.unwrap(),
        downloaded.to_vec()
    );

    assert_eq!(
        ledger(&app, &user).await,
        vec![("reserve".into(), -10), ("settle".into(), 0)]
    );
    assert_eq!(app.balance(&user).await, 90);
    let (task, model, succeeded): (Option<String>, String, bool) =
        sqlx::query_as("SELECT task_id, model, succeeded FROM usage_log")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(task, Some(app.kie.tasks()[0].task_id.clone()));
    assert_eq!(
        (model.as_str(), succeeded),
        ("gpt-image-2-text-to-image", true)
    );
    app.finish().await;
}

#[tokio::test]
async fn an_image_to_image_generation_hands_kie_working_presigned_urls_of_the_references() {
    let app = TestApp::spawn().await;
    let user = app.create_user(100).await;
    let first = app
        .upload_reference(&user, images::png(20, 10), "image/png")
        .await;
    let second = app
        .upload_reference(&user, images::png(8, 8), "image/png")
        .await;
    let (status, created) = app
        .create_generation(
            &user,
            json!({"prompt": "make it blue", "reference_upload_ids": [first, second]}),
        )
        .await;
    assert_eq!(status, 202, "{created}");
    let done = app.wait_until_finished(&user, &id_of(&created)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let task = &app.kie.tasks()[0];
    assert_eq!(task.model, "gpt-image-2-image-to-image");
    // The stand-in fetched each URL before accepting the task.
    assert_eq!(task.input_urls.len(), 2);
    assert!(
        task.input_urls
            .iter()
            .all(|u| u.contains("X-Amz-Signature"))
    );
    app.finish().await;
}

#[tokio::test]
async fn without_callbacks_polling_alone_finishes_the_generation() {
    let app = TestApp::builder()
        .kie(|k| k.callbacks = CallbackMode::Lost)
        .spawn()
        .await;
    let user = app.create_user(100).await;
    let (_, created) = app
        .create_generation(&user, json!({"prompt": "no callback"}))
        .await;
    let done = app.wait_until_finished(&user, &id_of(&created)).await;
    assert_eq!(done["status"], "succeeded");
    let callbacks: i64 = sqlx::query_scalar("SELECT count(*) FROM upstream_callbacks")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(callbacks, 0);
    app.finish().await;
}

/// Waits for the generation to succeed; returns how long after its submission to kie it finished.
async fn succeeded_ms_after_submission(app: &TestApp, user: &TestUser, id: &str) -> i64 {
    let done = app.wait_until_finished(user, id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let (submitted, finished): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as("SELECT submitted_at, finished_at FROM generations WHERE id = $1::uuid")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    (finished - submitted).num_milliseconds()
}

#[tokio::test]
async fn a_callback_that_arrives_before_the_first_poll_finishes_the_generation_at_once() {
    let app = TestApp::spawn().await;
    let user = app.create_user(100).await;
    let (_, created) = app
        .create_generation(&user, json!({"prompt": "fast path"}))
        .await;
    let waited = succeeded_ms_after_submission(&app, &user, &id_of(&created)).await;
    // The first poll is 2.5 s after submission; the stand-in calls back after at most 150 ms.
    assert!(
        waited < 2000,
        "finished {waited} ms after submission: the callback did not expedite the poll"
    );
    app.finish().await;
}

#[tokio::test]
async fn a_callback_that_arrives_before_the_task_id_is_even_recorded_is_not_lost() {
    // The stand-in finishes at once and calls back before createTask even answers, so the callback always
    // arrives before the submit job has recorded the task id (and its poll job).
    let app = TestApp::builder()
        .kie(|k| {
            k.latency = (Duration::ZERO, Duration::ZERO);
            k.callbacks = fakes::kie::CallbackMode::BeforeResponse;
        })
        .spawn()
        .await;
    let user = app.create_user(100).await;
    let mut ids = vec![];
    for n in 0..5 {
        let (_, created) = app
            .create_generation(&user, json!({"prompt": format!("instant {n}")}))
            .await;
        ids.push(id_of(&created));
    }
    for id in &ids {
        let waited = succeeded_ms_after_submission(&app, &user, id).await;
        assert!(
            waited < 2000,
            "finished {waited} ms after submission: the early callback was lost and the 2.5 s poll found it"
        );
    }
    app.finish().await;
}

#[tokio::test]
async fn a_callback_that_arrives_between_polls_makes_the_next_check_immediate() {
    let app = TestApp::builder()
        .kie(|k| k.latency = (Duration::from_millis(3000), Duration::from_millis(3100)))
        .spawn()
        .await;
    let user = app.create_user(100).await;
    let (_, created) = app
        .create_generation(&user, json!({"prompt": "after a poll"}))
        .await;
    let waited = succeeded_ms_after_submission(&app, &user, &id_of(&created)).await;
    // Polls come at 2.5 s and then 2–3 s later (≥ 4.5 s); the callback comes at ~3.1 s.
    assert!(
        waited < 4300,
        "finished {waited} ms after submission: the next poll was not made immediate"
    );
    assert!(
        app.kie.stats().record_info_calls >= 2,
        "one poll before the task finished, one after the callback"
    );
    app.finish().await;
}

#[tokio::test]
async fn a_duplicated_callback_is_recorded_once_and_is_harmless() {
    let app = TestApp::builder()
        .kie(|k| k.callbacks = CallbackMode::Duplicated)
        .spawn()
        .await;
    let user = app.create_user(100).await;
    let (_, created) = app
        .create_generation(&user, json!({"prompt": "twice"}))
        .await;
    let done = app.wait_until_finished(&user, &id_of(&created)).await;
    assert_eq!(done["status"], "succeeded");
    app.drain().await;
    let callbacks: i64 = sqlx::query_scalar("SELECT count(*) FROM upstream_callbacks")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        callbacks, 1,
        "kie delivered it twice; the copy is recognised"
    );
    assert_eq!(
        ledger(&app, &user).await,
        vec![("reserve".into(), -10), ("settle".into(), 0)]
    );
    app.finish().await;
}

#[tokio::test]
async fn a_content_policy_refusal_fails_the_generation_and_refunds_it_once() {
    let app = TestApp::builder()
        .kie(|k| k.callbacks = CallbackMode::Duplicated)
        .spawn()
        .await;
    let user = app.create_user(100).await;
    let (_, created) = app.create_generation(&user, json!({"prompt": "[refuse] something forbidden", "resolution": "2K", "aspect_ratio": "1:1"})).await;
    let done = app.wait_until_finished(&user, &id_of(&created)).await;
    assert_eq!(done["status"], "failed");
    assert!(
        done["failure_reason"]
            .as_str()
            .unwrap()
            .contains("content policy"),
        "{done}"
    );
    app.drain().await;
    assert_eq!(
        ledger(&app, &user).await,
        vec![("reserve".into(), -20), ("refund".into(), 20)]
    );
    assert_eq!(app.balance(&user).await, 100);
    let succeeded: bool = sqlx::query_scalar("SELECT succeeded FROM usage_log")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(!succeeded);
    // Counted once by its reason (duplicated callbacks and all), so the failure-ratio alert can tell the user's
    // refusals from the service's failures.
    let text = app.metrics_text().await;
    assert!(
        text.contains("createimage2_generation_failures_total{reason=\"content_policy\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("createimage2_generation_failures_total{reason=\"generation_failed\"} 0")
    );
    app.finish().await;
}

#[tokio::test]
async fn transient_5xx_and_429_answers_are_retried_until_the_task_is_created() {
    let app = TestApp::builder()
        .kie(|k| {
            k.fail_creates = 2;
            k.rate_limit_creates = 1;
        })
        .spawn()
        .await;
    let user = app.create_user(100).await;
    let (_, created) = app
        .create_generation(&user, json!({"prompt": "bumpy road"}))
        .await;
    let done = app.wait_until_finished(&user, &id_of(&created)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let stats = app.kie.stats();
    assert_eq!((stats.create_calls, stats.tasks_created), (4, 1));
    assert_eq!(
        ledger(&app, &user).await,
        vec![("reserve".into(), -10), ("settle".into(), 0)]
    );
    app.finish().await;
}

#[tokio::test]
async fn a_generation_past_its_deadline_is_failed_and_refunded_once() {
    let app = TestApp::builder()
        .kie(|k| {
            k.latency = (Duration::from_secs(20), Duration::from_secs(21));
            k.callbacks = CallbackMode::Lost;
        })
        .generation_config(GenerationConfig {
            deadline: Duration::from_secs(2),
            per_user_per_minute: 100,
        })
        .spawn()
        .await;
    let user = app.create_user(100).await;
    let (_, created) = app
        .create_generation(&user, json!({"prompt": "never ready"}))
        .await;
    let done = app.wait_until_finished(&user, &id_of(&created)).await;
    assert_eq!(done["status"], "failed");
    assert!(
        done["failure_reason"]
            .as_str()
            .unwrap()
            .contains("took too long"),
        "{done}"
    );
    assert_eq!(
        ledger(&app, &user).await,
        vec![("reserve".into(), -10), ("refund".into(), 10)]
    );
    app.finish().await;
}

#[tokio::test]
async fn a_submit_rerun_after_a_lost_answer_adopts_the_task_kie_reported_instead_of_creating_another()
 {
    let app = TestApp::builder()
        .kie(|k| k.lose_create_responses = 1)
        .spawn()
        .await;
    let user = app.create_user(100).await;
    let (_, created) = app
        .create_generation(&user, json!({"prompt": "lost answer"}))
        .await;
    let done = app.wait_until_finished(&user, &id_of(&created)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let stats = app.kie.stats();
    assert_eq!(
        (stats.create_calls, stats.tasks_created),
        (1, 1),
        "the callback's task was adopted"
    );
    assert_eq!(
        ledger(&app, &user).await,
        vec![("reserve".into(), -10), ("settle".into(), 0)]
    );
    app.finish().await;
}

#[tokio::test]
async fn answers_from_kie_that_time_out_are_retried_and_the_generation_is_made_and_charged_once() {
    // createTask's answer and the first recordInfo's arrive after the client gave up; no callback helps. The
    // timeout is far above an answer's time even on a loaded machine, so only the stalled answers time out.
    let app = TestApp::builder()
        .kie_timeout(Duration::from_secs(2))
        .kie(|k| {
            k.stall_creates = 1;
            k.stall_record_infos = 1;
            k.stall = Duration::from_secs(6);
            k.callbacks = CallbackMode::Lost;
        })
        .spawn()
        .await;
    let user = app.create_user(100).await;
    let (_, created) = app
        .create_generation(&user, json!({"prompt": "slow answers"}))
        .await;
    let done = app.wait_until_finished(&user, &id_of(&created)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let stats = app.kie.stats();
    assert_eq!(stats.stalled_answers, 2, "both faults were hit");
    assert_eq!(
        stats.tasks_created, 2,
        "the timed-out call's task is never known, so the rerun creates one more"
    );
    assert_eq!(
        ledger(&app, &user).await,
        vec![("reserve".into(), -10), ("settle".into(), 0)]
    );
    app.finish().await;
}

#[tokio::test]
async fn a_submit_rerun_after_a_crash_with_no_word_from_kie_creates_one_more_task_and_charges_once()
{
    let app = TestApp::builder()
        .kie(|k| {
            k.lose_create_responses = 1;
            k.callbacks = CallbackMode::Lost;
        })
        .spawn()
        .await;
    let user = app.create_user(100).await;
    let (_, created) = app
        .create_generation(&user, json!({"prompt": "crash between call and commit"}))
        .await;
    let done = app.wait_until_finished(&user, &id_of(&created)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let attempts: i32 = sqlx::query_scalar("SELECT submit_attempts FROM generations")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(attempts, 2);
    assert_eq!(
        app.kie.stats().tasks_created,
        2,
        "at most one duplicate upstream task per lost answer"
    );
    assert_eq!(
        ledger(&app, &user).await,
        vec![("reserve".into(), -10), ("settle".into(), 0)]
    );
    app.finish().await;
}

#[tokio::test]
async fn a_500_class_upstream_failure_is_retried_once_with_a_new_task_then_refunded() {
    let app = TestApp::spawn().await;
    let user = app.create_user(100).await;
    let (_, created) = app
        .create_generation(&user, json!({"prompt": "[fail500] unlucky"}))
        .await;
    let done = app.wait_until_finished(&user, &id_of(&created)).await;
    assert_eq!(done["status"], "failed");
    assert_eq!(app.kie.stats().tasks_created, 2);
    assert_eq!(
        ledger(&app, &user).await,
        vec![("reserve".into(), -10), ("refund".into(), 10)]
    );
    app.finish().await;
}

/// Whether kie's recordInfo answers `code: 501` for a failed task is not documented (its code table lists 501,
/// "generation failed", and failure callbacks carry it): the task's data is read either way.
#[tokio::test]
async fn a_failed_task_answered_with_code_501_is_retried_once_then_refunded_with_kies_reason() {
    let app = TestApp::builder()
        .kie(|k| k.failed_task_code = 501)
        .spawn()
        .await;
    let user = app.create_user(100).await;
    let (_, created) = app
        .create_generation(&user, json!({"prompt": "[fail500] unlucky"}))
        .await;
    let done = app.wait_until_finished(&user, &id_of(&created)).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert!(
        done["failure_reason"]
            .as_str()
            .unwrap()
            .contains("internal error"),
        "kie's failMsg reaches the user, not status_unavailable: {done}"
    );
    assert_eq!(app.kie.stats().tasks_created, 2, "retried once");

    let (_, refused) = app
        .create_generation(&user, json!({"prompt": "[refuse] something forbidden"}))
        .await;
    let done = app.wait_until_finished(&user, &id_of(&refused)).await;
    assert!(
        done["failure_reason"]
            .as_str()
            .unwrap()
            .contains("content policy"),
        "{done}"
    );
    assert_eq!(app.kie.stats().tasks_created, 3, "a refusal is not retried");
    assert_eq!(
        ledger(&app, &user).await,
        vec![
            ("reserve".into(), -10),
            ("refund".into(), 10),
            ("reserve".into(), -10),
            ("refund".into(), 10)
        ]
    );
    app.finish().await;
}

/// Newer kie Market schemas name their fail codes (`"GENERATION_FAILED"`, `null` on success).
#[tokio::test]
async fn a_named_generation_failed_code_is_retried_once_and_a_refusal_under_it_never() {
    let app = TestApp::builder()
        .kie(|k| k.fail_codes = FailCodes::Named)
        .spawn()
        .await;
    let user = app.create_user(100).await;
    let (_, created) = app
        .create_generation(&user, json!({"prompt": "[fail500] unlucky"}))
        .await;
    let done = app.wait_until_finished(&user, &id_of(&created)).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(app.kie.stats().tasks_created, 2, "retried once");

    let (_, refused) = app
        .create_generation(&user, json!({"prompt": "[refuse] something forbidden"}))
        .await;
    let done = app.wait_until_finished(&user, &id_of(&refused)).await;
    assert!(
        done["failure_reason"]
            .as_str()
            .unwrap()
            .contains("content policy"),
        "{done}"
    );
    assert_eq!(app.kie.stats().tasks_created, 3, "a refusal is not retried");

    let (_, fine) = app
        .create_generation(&user, json!({"prompt": "a calm sea"}))
        .await;
    let done = app.wait_until_finished(&user, &id_of(&fine)).await;
    assert_eq!(
        done["status"], "succeeded",
        "a null failCode is no failure: {done}"
    );
    app.finish().await;
}

#[tokio::test]
async fn insufficient_credits_answer_402_with_the_balance_and_record_nothing() {
    let app = TestApp::spawn().await;
    let user = app.create_user(15).await;
    let (status, body) = app
        .create_generation(
            &user,
            json!({"prompt": "big", "resolution": "2K", "aspect_ratio": "16:9"}),
        )
        .await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(
        (body["balance"].as_i64(), body["cost"].as_i64()),
        (Some(15), Some(20))
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM generations")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM apalis.jobs")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!((rows, jobs), (0, 0));
    assert_eq!(app.balance(&user).await, 15);
    app.finish().await;
}

#[tokio::test]
async fn invalid_requests_get_422_naming_the_field_and_spend_nothing() {
    let app = TestApp::spawn().await;
    let user = app.create_user(100).await;
    let too_many: Vec<String> = (0..17).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    for (body, field) in [
        (json!({"prompt": ""}), "prompt"),
        (json!({"prompt": "x".repeat(20_001)}), "prompt"),
        (
            json!({"prompt": "ok", "aspect_ratio": "7:5"}),
            "aspect_ratio",
        ),
        (
            json!({"prompt": "ok", "aspect_ratio": "5:4", "resolution": "2K"}),
            "resolution",
        ),
        (
            json!({"prompt": "ok", "aspect_ratio": "1:1", "resolution": "4K", "reference_upload_ids": [uuid::Uuid::new_v4()]}),
            "resolution",
        ),
        (
            json!({"prompt": "ok", "reference_upload_ids": too_many}),
            "reference_upload_ids",
        ),
        (
            json!({"prompt": "ok", "reference_upload_ids": [uuid::Uuid::new_v4()]}),
            "reference_upload_ids",
        ),
    ] {
        let (status, answer) = app.create_generation(&user, body).await;
        assert_eq!(
            (status, answer["field"].as_str()),
            (422, Some(field)),
            "{answer}"
        );
    }
    assert_eq!(app.balance(&user).await, 100);
    app.finish().await;
}

/// kie's text-to-image page forbids only 2K/4K with 5:4, 4:5, 3:1, 1:3, 9:21; "no 4K at 1:1" and "auto only
/// at 1K" are on the image-to-image page, which a generation with references uses.
#[tokio::test]
async fn four_k_at_1_1_and_auto_at_2k_are_made_without_references_and_refused_with_them() {
    let app = TestApp::spawn().await;
    let user = app.create_user(200).await;
    for (aspect_ratio, resolution) in [("1:1", "4K"), ("auto", "2K")] {
        let (status, created) = app
            .create_generation(
                &user,
                json!({"prompt": "a square lighthouse", "aspect_ratio": aspect_ratio, "resolution": resolution}),
            )
            .await;
        assert_eq!(status, 202, "{created}");
        let done = app.wait_until_finished(&user, &id_of(&created)).await;
        assert_eq!(done["status"], "succeeded", "{done}");
    }
    let reference = app
        .upload_reference(&user, images::png(8, 8), "image/png")
        .await;
    for (aspect_ratio, resolution) in [("1:1", "4K"), ("auto", "2K")] {
        let (status, answer) = app
            .create_generation(
                &user,
                json!({"prompt": "make it square", "aspect_ratio": aspect_ratio, "resolution": resolution,
                       "reference_upload_ids": [reference]}),
            )
            .await;
        assert_eq!(
            (status, answer["field"].as_str()),
            (422, Some("resolution")),
            "{answer}"
        );
    }
    assert_eq!(app.kie.tasks().len(), 2);
    assert_eq!(app.balance(&user).await, 200 - 40 - 20);
    app.finish().await;
}

#[tokio::test]
async fn a_reference_upload_that_is_too_large_or_not_an_image_is_refused() {
    let app = TestApp::spawn().await;
    let user = app.create_user(100).await;
    let too_big = app
        .post_json(
            "/api/v1/uploads",
            &user,
            &json!({"content_type": "image/png", "byte_size": 10 * 1024 * 1024 + 1}),
        )
        .await;
    assert_eq!(too_big.status(), 422);
    assert_eq!(too_big.json::<Value>().await.unwrap()["field"], "byte_size");
    let wrong_type = app
        .post_json(
            "/api/v1/uploads",
            &user,
            &json!({"content_type": "image/gif", "byte_size": 100}),
        )
        .await;
    assert_eq!(
        wrong_type.json::<Value>().await.unwrap()["field"],
        "content_type"
    );
    // The length is signed: a presigned PUT for 100 bytes does not take 5,000.
    let upload: Value = app
        .post_json(
            "/api/v1/uploads",
            &user,
            &json!({"content_type": "image/png", "byte_size": 100}),
        )
        .await
        .json()
        .await
        .unwrap();
    let put = app
        .client
        .put(upload["upload_url"].as_str().unwrap())
        .header("content-type", "image/png")
        .body(vec![0u8; 5000])
        .send()
        .await
        .unwrap();
    assert!(
        !put.status().is_success(),
        "a PUT with another length was accepted"
    );
    app.finish().await;
}

#[tokio::test]
async fn another_users_generation_is_invisible() {
    let app = TestApp::spawn().await;
    let (owner, stranger) = (app.create_user(100).await, app.create_user(100).await);
    let (_, created) = app
        .create_generation(&owner, json!({"prompt": "mine"}))
        .await;
    let id = id_of(&created);
    assert_eq!(app.generation(&stranger, &id).await.0, 404);
    assert_eq!(
        app.delete(&format!("/api/v1/generations/{id}"), &stranger)
            .await
            .status(),
        404
    );
    let events = app
        .get_with_key(
            &format!("/api/v1/generations/{id}/events"),
            &stranger.api_key,
        )
        .await;
    assert_eq!(events.status(), 404);
    let list: Value = app
        .get_with_key("/api/v1/generations", &stranger.api_key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"], json!([]));
    app.wait_until_finished(&owner, &id).await;
    app.finish().await;
}

#[tokio::test]
async fn a_retried_post_with_the_same_idempotency_key_returns_the_same_generation() {
    let app = TestApp::spawn().await;
    let user = app.create_user(100).await;
    let post = || {
        app.client
            .post(app.url("/api/v1/generations"))
            .bearer_auth(&user.api_key)
            .header("Idempotency-Key", "req-42")
            .json(&json!({"prompt": "once"}))
            .send()
    };
    let (first, second) = tokio::join!(post(), post());
    let first: Value = first.unwrap().json().await.unwrap();
    let second: Value = second.unwrap().json().await.unwrap();
    assert_eq!(id_of(&first), id_of(&second));
    assert_eq!(app.balance(&user).await, 90, "charged once");
    app.wait_until_finished(&user, &id_of(&first)).await;
    app.finish().await;
}

#[tokio::test]
async fn a_user_over_the_generation_rate_gets_429_with_retry_after() {
    let app = TestApp::builder()
        .generation_config(GenerationConfig {
            deadline: Duration::from_secs(60),
            per_user_per_minute: 2,
        })
        .spawn()
        .await;
    let user = app.create_user(100).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (status, body) = app
            .create_generation(&user, json!({"prompt": "quick"}))
            .await;
        assert_eq!(status, 202);
        ids.push(id_of(&body));
    }
    let response = app
        .post_json(
            "/api/v1/generations",
            &user,
            &json!({"prompt": "one too many"}),
        )
        .await;
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after));
    for id in ids {
        app.wait_until_finished(&user, &id).await;
    }
    assert_eq!(app.balance(&user).await, 80);
    app.finish().await;
}

/// What POSTs have recorded for `user`: generations, ledger rows (grants aside), submit jobs and rate events.
async fn recorded(app: &TestApp, user: &TestUser) -> (i64, Vec<(String, i64)>, i64, i64) {
    let generations: i64 =
        sqlx::query_scalar("SELECT count(*) FROM generations WHERE user_id = $1")
            .bind(user.id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let jobs: i64 =
        sqlx::query_scalar("SELECT count(*) FROM apalis.jobs WHERE job_type = 'submit_generation'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let rate_events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM rate_limit_events WHERE key = $1")
            .bind(format!("generations:user:{}", user.id))
            .fetch_one(&app.pool)
            .await
            .unwrap();
    (generations, ledger(app, user).await, jobs, rate_events)
}

fn one_per_minute() -> GenerationConfig {
    GenerationConfig {
        deadline: Duration::from_secs(60),
        per_user_per_minute: 1,
    }
}

#[tokio::test]
async fn a_post_refused_by_the_rate_limit_records_nothing() {
    let app = TestApp::builder()
        .generation_config(one_per_minute())
        .spawn()
        .await;
    let user = app.create_user(100).await;
    let (status, first) = app
        .create_generation(&user, json!({"prompt": "the only one this minute"}))
        .await;
    assert_eq!(status, 202, "{first}");
    app.wait_until_finished(&user, &id_of(&first)).await;
    app.drain().await;
    let before = recorded(&app, &user).await;
    assert_eq!(
        (before.0, before.3),
        (1, 1),
        "one generation, one rate event"
    );

    let response = app
        .post_json(
            "/api/v1/generations",
            &user,
            &json!({"prompt": "one too many"}),
        )
        .await;
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(recorded(&app, &user).await, before);
    assert_eq!(app.balance(&user).await, 90);
    app.finish().await;
}

#[tokio::test]
async fn a_post_refused_for_want_of_credits_still_spends_a_rate_token_so_refusals_cannot_be_hammered()
 {
    let app = TestApp::builder()
        .generation_config(one_per_minute())
        .spawn()
        .await;
    let user = app.create_user(5).await;
    let (status, body) = app
        .create_generation(&user, json!({"prompt": "too dear"}))
        .await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(
        recorded(&app, &user).await,
        (0, vec![], 0, 1),
        "nothing recorded but the rate event"
    );
    let (status, body) = app
        .create_generation(&user, json!({"prompt": "too dear, again"}))
        .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(recorded(&app, &user).await, (0, vec![], 0, 1));
    app.finish().await;
}

#[tokio::test]
async fn the_answer_to_a_post_is_the_generation_as_the_database_stored_it() {
    let app = TestApp::spawn().await;
    let user = app.create_user(100).await;
    let (status, created) = app
        .create_generation(&user, json!({"prompt": "as stored", "aspect_ratio": "1:1"}))
        .await;
    assert_eq!(status, 202, "{created}");
    assert_eq!(
        (&created["status"], &created["images"]),
        (&json!("queued"), &json!([]))
    );
    let same_time: bool = sqlx::query_scalar(
        "SELECT created_at = $2::timestamptz AND aspect_ratio = '1:1' FROM generations WHERE id = $1",
    )
    .bind(id_of(&created).parse::<uuid::Uuid>().unwrap())
    .bind(created["timings"]["created_at"].as_str().unwrap())
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(same_time, "{created}");
    app.wait_until_finished(&user, &id_of(&created)).await;
    app.finish().await;
}

/// `GET /api/v1/generations?limit=3`, then the page its `next_cursor` points to.
async fn first_two_pages_of_three(app: &TestApp, user: &TestUser) -> (Value, Value) {
    let first: Value = app
        .get_with_key("/api/v1/generations?limit=3", &user.api_key)
        .await
        .json()
        .await
        .unwrap();
    let cursor = first["next_cursor"].as_str().unwrap();
    let second: Value = app
        .get_with_key(
            &format!("/api/v1/generations?limit=3&cursor={cursor}"),
            &user.api_key,
        )
        .await
        .json()
        .await
        .unwrap();
    (first, second)
}

#[tokio::test]
async fn a_listed_page_shows_each_generation_with_its_own_images_in_order() {
    let app = TestApp::builder().without_worker().spawn().await;
    let user = app.create_user(0).await;
    let other = app.create_user(0).await;
    // Finished generations, oldest first, with 2, 0, 1 and 3 images, and another user's with 1.
    let mut expected = Vec::new();
    for (owner, images) in [(&user, 2), (&user, 0), (&user, 1), (&user, 3), (&other, 1)] {
        let generation = uuid::Uuid::now_v7();
        sqlx::query(
            "INSERT INTO generations (id, user_id, prompt, model, credits_reserved, trace_id, status, finished_at)
             VALUES ($1, $2, 'listed', 'gpt-image-2-text-to-image', 10, 't', 'succeeded', now())",
        )
        .bind(generation)
        .bind(owner.id)
        .execute(&app.pool)
        .await
        .unwrap();
        let keys: Vec<String> = (0..images)
            .map(|n| format!("users/{}/generations/{generation}/{n}.png", owner.id))
            .collect();
        // Last image first, so only the order by `n` puts them right.
        for n in (0..images).rev() {
            sqlx::query(
                "INSERT INTO generated_images (id, generation_id, n, object_key, byte_size, content_type, width, height)
                 VALUES ($1, $2, $3, $4, $5, 'image/png', $6, $7)",
            )
            .bind(uuid::Uuid::now_v7())
            .bind(generation)
            .bind(n)
            .bind(&keys[n as usize])
            .bind(1000 + i64::from(n))
            .bind(10 + n)
            .bind(20 + n)
            .execute(&app.pool)
            .await
            .unwrap();
        }
        if owner.id == user.id {
            expected.push((generation.to_string(), keys));
        }
    }
    expected.reverse();

    let (first, second) = first_two_pages_of_three(&app, &user).await;
    let items: Vec<&Value> = first["items"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["items"].as_array().unwrap())
        .collect();
    assert_eq!(items.len(), expected.len(), "{first} {second}");
    for (item, (id, keys)) in items.iter().zip(&expected) {
        assert_eq!(item["id"], id.as_str());
        let images = item["images"].as_array().unwrap();
        assert_eq!(images.len(), keys.len(), "{item}");
        for (n, (image, key)) in images.iter().zip(keys).enumerate() {
            let url = image["url"].as_str().unwrap();
            assert!(url.contains(key.as_str()), "image {n} of {id}: {url}");
            assert_eq!(
                (
                    image["width"].as_i64(),
                    image["height"].as_i64(),
                    image["byte_size"].as_i64()
                ),
                (
                    Some(10 + n as i64),
                    Some(20 + n as i64),
                    Some(1000 + n as i64)
                )
            );
        }
    }
    app.finish().await;
}

#[tokio::test]
async fn the_event_stream_delivers_each_status_change_in_order_and_ends() {
    let app = TestApp::spawn().await;
    let user = app.create_user(100).await;
    let (_, created) = app
        .create_generation(&user, json!({"prompt": "watch me"}))
        .await;
    let response = app
        .get_with_key(
            &format!("/api/v1/generations/{}/events", id_of(&created)),
            &user.api_key,
        )
        .await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = tokio::time::timeout(Duration::from_secs(30), response.text())
        .await
        .unwrap()
        .unwrap();
    let statuses: Vec<String> = text
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .map(|data| {
            serde_json::from_str::<Value>(data).unwrap()["status"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let order = ["queued", "submitting", "generating", "storing", "succeeded"];
    let first = order.iter().position(|s| *s == statuses[0]).unwrap();
    assert_eq!(statuses, order[first..].to_vec(), "{text}");
    assert!(first <= 1, "the stream started late: {statuses:?}");
    app.finish().await;
}

#[tokio::test]
async fn generations_are_listed_newest_first_with_a_cursor() {
    let app = TestApp::spawn().await;
    let user = app.create_user(1000).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let (_, created) = app
            .create_generation(&user, json!({"prompt": format!("number {n}")}))
            .await;
        ids.push(id_of(&created));
    }
    let (first, second) = first_two_pages_of_three(&app, &user).await;
    let listed: Vec<String> = first["items"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["items"].as_array().unwrap())
        .map(id_of)
        .collect();
    ids.reverse();
    assert_eq!(listed, ids);
    assert!(second["next_cursor"].is_null());
    for id in &ids {
        app.wait_until_finished(&user, id).await;
    }
    app.finish().await;
}

#[tokio::test]
async fn deleting_a_generation_hides_it_at_once_and_a_job_removes_its_rows_and_objects() {
    let app = TestApp::spawn().await;
    let user = app.create_user(100).await;
    let (_, created) = app
        .create_generation(&user, json!({"prompt": "temporary"}))
        .await;
    let id = id_of(&created);
    app.wait_until_finished(&user, &id).await;
    let key: String = sqlx::query_scalar("SELECT object_key FROM generated_images")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let response = app
        .delete(&format!("/api/v1/generations/{id}"), &user)
        .await;
    assert_eq!(response.status(), 202);
    assert_eq!(app.generation(&user, &id).await.0, 404);
    app.drain().await;
    assert!(
        app.storage.head(&key).await.unwrap().is_none(),
        "object deleted"
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM generations")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
    app.finish().await;
}

#[tokio::test]
async fn an_account_level_error_pauses_submissions_without_failing_users_until_resumed() {
    let app = TestApp::builder()
        .kie(|k| k.account_error = Some(402))
        .spawn()
        .await;
    let user = app.create_user(100).await;
    let (_, created) = app
        .create_generation(&user, json!({"prompt": "kie is out of credits"}))
        .await;
    let id = id_of(&created);
    testkit::eventually("submissions to be paused", || async {
        jobs::upstream::is_paused(&app.pool, "kie").await.unwrap()
    })
    .await;
    assert!(
        app.metrics_text()
            .await
            .contains("createimage2_upstream_paused{kind=\"automatic\",upstream=\"kie\"} 1")
    );
    let (_, waiting) = app.generation(&user, &id).await;
    assert_eq!(waiting["status"], "submitting", "not failed: {waiting}");
    assert_eq!(app.balance(&user).await, 90, "still reserved, not refunded");

    // The account is fixed; an operator resumes (the probe would too).
    app.kie.update(|k| k.account_error = None);
    jobs::upstream::resume(&app.pool, "kie").await.unwrap();
    sqlx::query("UPDATE apalis.jobs SET run_at = now() WHERE job_type = 'submit_generation' AND status = 'Pending'")
        .execute(&app.pool)
        .await
        .unwrap();
    let done = app.wait_until_finished(&user, &id).await;
    assert_eq!(done["status"], "succeeded");
    app.finish().await;
}

#[tokio::test]
async fn callbacks_with_a_wrong_secret_or_signature_or_for_an_unknown_generation_are_refused_alike()
{
    let app = TestApp::builder().without_worker().spawn().await;
    let unknown = app
        .client
        .post(app.url(&format!("/webhooks/kie/{}/whatever", uuid::Uuid::new_v4())))
        .json(&json!({"code": 200, "data": {"taskId": "task_x", "state": "success"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        unknown.status(),
        401,
        "the same answer as a wrong secret: which generations exist does not leak"
    );
    let unknown_body = unknown.text().await.unwrap();
    let user = app.create_user(100).await;
    let (_, created) = app.create_generation(&user, json!({"prompt": "p"})).await;
    let id = id_of(&created);
    let secret = "known-secret";
    sqlx::query("UPDATE generations SET callback_secret_hash = $2 WHERE id = $1::uuid")
        .bind(&id)
        .bind(jobs::accounts::hash_secret(secret))
        .execute(&app.pool)
        .await
        .unwrap();
    let body = json!({"code": 200, "data": {"taskId": "task_x", "state": "success"}});
    let wrong_secret = app
        .client
        .post(app.url(&format!("/webhooks/kie/{id}/guess")))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_secret.status(), 401);
    assert_eq!(wrong_secret.text().await.unwrap(), unknown_body);
    let unsigned = app
        .client
        .post(app.url(&format!("/webhooks/kie/{id}/{secret}")))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        unsigned.status(),
        401,
        "HMAC is configured: an unsigned callback is refused"
    );
    let callbacks: i64 = sqlx::query_scalar("SELECT count(*) FROM upstream_callbacks")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(callbacks, 0);
    app.discard_unrun_jobs().await;
    app.finish().await;
}

#[tokio::test]
async fn many_generations_from_three_worker_processes_stay_within_kies_rate_limit_and_all_settle() {
    let app = TestApp::spawn().await;
    // Two more worker processes on the same database.
    let pipeline_queues = [
        ("submit_generation", 10),
        ("poll_generation", 10),
        ("store_generation", 10),
    ];
    let extra = [
        app.start_worker(&pipeline_queues, Default::default()).await,
        app.start_worker(&pipeline_queues, Default::default()).await,
    ];
    let user = app.create_user(10_000).await;
    let mut ids = Vec::new();
    for n in 0..30 {
        let (status, created) = app
            .create_generation(&user, json!({"prompt": format!("crowd {n}")}))
            .await;
        assert_eq!(status, 202);
        ids.push(id_of(&created));
    }
    for id in &ids {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (_, body) = app.generation(&user, id).await;
            if body["status"] == "succeeded" {
                break;
            }
            assert_ne!(body["status"], "failed", "{body}");
            assert!(tokio::time::Instant::now() < deadline, "{body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for worker in extra {
        worker.stop().await;
    }
    let stats = app.kie.stats();
    assert_eq!(
        stats.rate_limited_creates, 0,
        "the fleet never hit kie's limit"
    );
    assert!(
        stats.max_creates_in_window <= 20,
        "{} creates within 10 s",
        stats.max_creates_in_window
    );
    assert_eq!(stats.tasks_created, 30);
    let settled: i64 =
        sqlx::query_scalar("SELECT count(*) FROM credit_ledger WHERE kind = 'settle'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(settled, 30);
    assert_eq!(app.balance(&user).await, 10_000 - 300);
    app.finish().await;
}

#[tokio::test]
async fn every_pipeline_queue_and_kie_operation_shows_up_in_the_worker_metrics_after_one_generation()
 {
    let app = TestApp::spawn().await;
    let user = app.create_user(100).await;
    let (_, created) = app
        .create_generation(&user, json!({"prompt": "observable"}))
        .await;
    app.wait_until_finished(&user, &id_of(&created)).await;
    app.drain().await;
    let url = format!("http://{}/metrics", app.worker_ops_addr.unwrap());
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    for queue in ["submit_generation", "poll_generation", "store_generation"] {
        assert!(
            text.contains(&format!(
                "createimage2_jobs_completed_total{{queue=\"{queue}\"}} 1"
            )),
            "{queue}:\n{text}"
        );
        assert!(
            text.contains(&format!(
                "createimage2_workers_alive{{queue=\"{queue}\"}} 1"
            )),
            "{queue}"
        );
    }
    for operation in ["create_task", "download_url", "fetch_result"] {
        let line = format!(
            "createimage2_upstream_requests_total{{operation=\"{operation}\",outcome=\"ok\",upstream=\"kie\"}} 1"
        );
        assert!(text.contains(&line), "missing {line}");
    }
    assert!(
        text.contains("createimage2_generations_total{outcome=\"succeeded\",resolution=\"1K\"} 1")
    );
    assert!(text.contains("createimage2_credits_total{kind=\"settled\"} 10"));
    app.finish().await;
}

#[tokio::test]
async fn the_automatic_probe_resumes_paused_submissions_once_kie_answers_again() {
    let app = TestApp::spawn().await;
    jobs::upstream::pause(
        &app.pool,
        "kie",
        PauseKind::Automatic,
        "kie.ai answered code 402: out of credits",
    )
    .await
    .unwrap();
    // Not due yet: the probe leaves it paused (and reads the balance, which the fleet exports).
    app.enqueue(&jobs::kinds::ProbeUpstreams {}).await;
    app.drain().await;
    assert!(jobs::upstream::is_paused(&app.pool, "kie").await.unwrap());
    let text = app.metrics_text().await;
    assert!(
        text.contains("createimage2_upstream_paused{kind=\"automatic\",upstream=\"kie\"} 1"),
        "{text}"
    );
    assert!(text.contains("createimage2_upstream_credit_balance{upstream=\"kie\"}"));
    // Due: the stand-in's credit endpoint answers, so submissions resume.
    sqlx::query("UPDATE upstream_pauses SET probe_after = now() - interval '1 second'")
        .execute(&app.pool)
        .await
        .unwrap();
    app.enqueue_with(
        &jobs::kinds::ProbeUpstreams {},
        queue::EnqueueOptions::key("second probe"),
    )
    .await;
    app.drain().await;
    assert!(!jobs::upstream::is_paused(&app.pool, "kie").await.unwrap());
    assert!(
        app.metrics_text()
            .await
            .contains("createimage2_upstream_paused{kind=\"automatic\",upstream=\"kie\"} 0")
    );
    app.finish().await;
}

#[tokio::test]
async fn an_operators_pause_holds_through_the_probe_until_an_operator_resumes_it() {
    let app = TestApp::spawn().await;
    let operator = Operator::new("alice", Via::Cli).unwrap();
    // An automatic pause is taken over by the operator's; a later automatic pause does not weaken it.
    jobs::upstream::pause(&app.pool, "kie", PauseKind::Automatic, "code 402")
        .await
        .unwrap();
    assert!(
        operator
            .pause_upstream(&app.pool, "kie", "kie incident INC-42")
            .await
            .unwrap()
    );
    assert!(
        !jobs::upstream::pause(&app.pool, "kie", PauseKind::Automatic, "code 401")
            .await
            .unwrap()
    );
    // The probe is due by any clock and kie's credit endpoint answers: an automatic pause would be lifted.
    sqlx::query("UPDATE upstream_pauses SET probe_after = now() - interval '1 hour'")
        .execute(&app.pool)
        .await
        .unwrap();
    for key in ["probe 1", "probe 2"] {
        app.enqueue_with(
            &jobs::kinds::ProbeUpstreams {},
            queue::EnqueueOptions::key(key),
        )
        .await;
        app.drain().await;
    }
    let pauses = jobs::upstream::paused(&app.pool).await.unwrap();
    assert_eq!(pauses.len(), 1);
    assert_eq!(pauses[0].kind, PauseKind::Operator);
    assert_eq!(pauses[0].reason, "kie incident INC-42");
    let text = app.metrics_text().await;
    assert!(
        text.contains("createimage2_upstream_paused{kind=\"operator\",upstream=\"kie\"} 1"),
        "{text}"
    );
    assert!(text.contains("createimage2_upstream_paused{kind=\"automatic\",upstream=\"kie\"} 0"));

    assert!(
        operator
            .resume_upstream(&app.pool, "kie", "incident over")
            .await
            .unwrap()
    );
    assert!(!jobs::upstream::is_paused(&app.pool, "kie").await.unwrap());
    let actions = jobs::operator::recent_actions(&app.pool, 10).await.unwrap();
    let done: Vec<(&str, &str, &str)> = actions
        .iter()
        .map(|a| (a.actor.as_str(), a.action.as_str(), a.reason.as_str()))
        .collect();
    assert_eq!(
        done,
        [
            ("alice", "upstream.resume", "incident over"),
            ("alice", "upstream.pause", "kie incident INC-42"),
        ]
    );
    app.finish().await;
}

/// Posts a kie callback for `generation` with its URL secret, signed as kie signs (the stand-in's signer).
async fn signed_callback(
    app: &TestApp,
    generation: &str,
    secret: &str,
    task_id: &str,
    state: &str,
    timestamp: u64,
) -> reqwest::Response {
    app.client
        .post(app.url(&format!("/webhooks/kie/{generation}/{secret}")))
        .header("x-webhook-timestamp", timestamp.to_string())
        .header(
            "x-webhook-signature",
            fakes::kie::webhook_signature(testkit::KIE_HMAC_KEY, task_id, timestamp),
        )
        .json(&json!({"code": 200, "data": {"taskId": task_id, "state": state}}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_signed_callback_for_another_task_is_refused_and_a_replay_is_not_stored_again() {
    let app = TestApp::builder().without_worker().spawn().await;
    let user = app.create_user(100).await;
    let (_, created) = app.create_generation(&user, json!({"prompt": "p"})).await;
    let id = id_of(&created);
    let secret = "known-secret";
    sqlx::query(
        "UPDATE generations SET callback_secret_hash = $2, upstream_task_id = 'task_own' WHERE id = $1::uuid",
    )
    .bind(&id)
    .bind(jobs::accounts::hash_secret(secret))
    .execute(&app.pool)
    .await
    .unwrap();
    let now = u64::try_from(chrono::Utc::now().timestamp()).unwrap();
    // Validly signed by kie — but for a task that is not this generation's.
    let foreign = signed_callback(&app, &id, secret, "task_someone_elses", "success", now).await;
    assert_eq!(foreign.status(), 401);
    let own = signed_callback(&app, &id, secret, "task_own", "success", now).await;
    assert_eq!(own.status(), 200);
    let replay = signed_callback(&app, &id, secret, "task_own", "success", now).await;
    assert_eq!(
        replay.status(),
        200,
        "kie's retries must not be told to retry again"
    );
    assert_eq!(
        replay.json::<serde_json::Value>().await.unwrap()["duplicate"],
        true
    );
    let stored: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT upstream_task_id, state FROM upstream_callbacks")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        stored,
        [("task_own".to_owned(), Some("success".to_owned()))]
    );
    app.discard_unrun_jobs().await;
    app.finish().await;
}

#[tokio::test]
async fn an_idempotency_key_reused_with_a_different_request_is_refused_naming_the_key() {
    let app = TestApp::builder().without_worker().spawn().await;
    let user = app.create_user(100).await;
    let post = |body: serde_json::Value| {
        app.client
            .post(app.url("/api/v1/generations"))
            .bearer_auth(&user.api_key)
            .header("idempotency-key", "order-17")
            .json(&body)
            .send()
    };
    let first = post(json!({"prompt": "a red fox"})).await.unwrap();
    assert_eq!(first.status(), 202);
    let charged = app.balance(&user).await;
    assert!(charged < 100);
    let first: serde_json::Value = first.json().await.unwrap();
    let repeat = post(json!({"prompt": "a red fox"})).await.unwrap();
    assert_eq!(
        repeat.status(),
        202,
        "the same request again is answered with the same generation"
    );
    assert_eq!(
        repeat.json::<serde_json::Value>().await.unwrap()["id"],
        first["id"]
    );
    for different in [
        json!({"prompt": "a blue fox"}),
        json!({"prompt": "a red fox "}),
        json!({"prompt": "a red fox", "aspect_ratio": "1:1"}),
    ] {
        let refused = post(different.clone()).await.unwrap();
        assert_eq!(refused.status(), 422, "{different}");
        let body: serde_json::Value = refused.json().await.unwrap();
        assert_eq!(body["field"], "Idempotency-Key", "{body}");
    }
    let generations: i64 = sqlx::query_scalar("SELECT count(*) FROM generations")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(generations, 1);
    assert_eq!(app.balance(&user).await, charged, "charged once");
    app.discard_unrun_jobs().await;
    app.finish().await;
}

#[tokio::test]
async fn a_queued_generation_is_cancelled_refunded_at_once_and_never_sent_to_kie() {
    let app = TestApp::builder().without_worker().spawn().await;
    let user = app.create_user(100).await;
    let (_, created) = app
        .create_generation(
            &user,
            json!({"prompt": "changed my mind", "resolution": "2K"}),
        )
        .await;
    let id = id_of(&created);
    assert_eq!(app.balance(&user).await, 80);
    let cancel = format!("/api/v1/generations/{id}/cancel");
    let response = app.post_json(&cancel, &user, &json!({})).await;
    assert_eq!(response.status(), 200);
    let cancelled: Value = response.json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    assert!(
        cancelled["timings"]["finished_at"].is_string(),
        "{cancelled}"
    );
    assert_eq!(app.balance(&user).await, 100, "refunded at once");

    let again = app.post_json(&cancel, &user, &json!({})).await;
    assert_eq!(again.status(), 200, "cancelling twice is the same cancel");
    assert_eq!(
        ledger(&app, &user).await,
        [("reserve".to_owned(), -20), ("refund".to_owned(), 20)],
        "one reservation, one refund"
    );
    let events = app
        .get_with_key(&format!("/api/v1/generations/{id}/events"), &user.api_key)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        events.contains(&format!(r#"{{"id":"{id}","status":"cancelled"}}"#)),
        "the stream says so and ends: {events}"
    );

    // The submit job was already queued: when a worker runs it, it finds nothing to do.
    let worker = app
        .start_worker(&[("submit_generation", 1)], Default::default())
        .await;
    app.drain().await;
    worker.stop().await;
    assert_eq!(app.kie.stats().create_calls, 0, "kie was never asked");
    assert_eq!(app.generation(&user, &id).await.1["status"], "cancelled");
    app.finish().await;
}

#[tokio::test]
async fn a_generation_that_has_started_cannot_be_cancelled() {
    let app = TestApp::spawn().await;
    let user = app.create_user(100).await;
    let (_, created) = app
        .create_generation(&user, json!({"prompt": "too late"}))
        .await;
    let id = id_of(&created);
    app.wait_until_finished(&user, &id).await;
    let response = app
        .post_json(
            &format!("/api/v1/generations/{id}/cancel"),
            &user,
            &json!({}),
        )
        .await;
    assert_eq!(response.status(), 409);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "conflict", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("succeeded"),
        "{body}"
    );
    assert_eq!(app.balance(&user).await, 90, "still charged for the image");
    app.finish().await;
}
