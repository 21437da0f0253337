//! Variations: one request for several images makes one generation each, each with its own kie.ai task and
//! its own reservation, charge or refund; the site shows them as a set.

use std::time::Duration;

use jobs::generations::Status;
use serde_json::{Value, json};
use testkit::{TestApp, TestUser};

use crate::support::{generation_id, sign_in, wait_finished};

/// Each ledger row of the member's generations: (kind, amount, business key), in order.
async fn ledger(app: &TestApp, user: &TestUser) -> Vec<(String, i64, String)> {
    sqlx::query_as(
        "SELECT kind, amount, business_key FROM credit_ledger
          WHERE user_id = $1 AND kind <> 'grant' ORDER BY id",
    )
    .bind(user.id)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

/// `POST /api/v1/generations` with an `Idempotency-Key`.
async fn create_with_key(
    app: &TestApp,
    user: &TestUser,
    body: &Value,
    key: &str,
) -> reqwest::Response {
    app.client
        .post(app.url("/api/v1/generations"))
        .bearer_auth(&user.api_key)
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .unwrap()
}

fn ids_of(batch: &Value) -> Vec<String> {
    batch
        .as_array()
        .unwrap_or_else(|| panic!("no batch: {batch}"))
        .iter()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_request_for_three_images_makes_three_generations_each_with_its_own_task_and_charge() {
    let app = TestApp::spawn().await;
    let user = app.create_user(100).await;
    let (status, created) = app
        .create_generation(&user, json!({"prompt": "three lighthouses", "n": 3}))
        .await;
    assert_eq!(status, 202, "{created}");
    let batch = ids_of(&created["batch"]);
    assert_eq!(batch.len(), 3, "{created}");
    assert_eq!(created["id"], batch[0].as_str(), "the answer is the first");
    assert_eq!(created["batch_id"], batch[0].as_str());
    assert_eq!(created["variation"], 1);
    assert_eq!(
        created["credits_reserved"], 10,
        "each image holds its own price"
    );
    assert_eq!(app.balance(&user).await, 70, "all three reserved at once");

    for (n, id) in batch.iter().enumerate() {
        let done = app.wait_until_finished(&user, id).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(done["variation"], n as i64 + 1);
        assert_eq!(done["batch"], created["batch"], "every one lists the set");
        assert_eq!(done["images"].as_array().unwrap().len(), 1);
    }
    let tasks = app.kie.tasks();
    assert_eq!(tasks.len(), 3, "one kie.ai task per image");
    let mut task_ids: Vec<&str> = tasks.iter().map(|t| t.task_id.as_str()).collect();
    task_ids.sort();
    task_ids.dedup();
    assert_eq!(task_ids.len(), 3);
    let rows = ledger(&app, &user).await;
    for id in &batch {
        let key = format!("generation:{id}");
        let own: Vec<(&str, i64)> = rows
            .iter()
            .filter(|(_, _, k)| *k == key)
            .map(|(kind, amount, _)| (kind.as_str(), *amount))
            .collect();
        assert_eq!(own, vec![("reserve", -10), ("settle", 0)], "{id}: {rows:?}");
    }
    assert_eq!(app.balance(&user).await, 70);
    // The list shows each as a generation of its own.
    let listed: Value = app
        .get_with_key("/api/v1/generations", &user.api_key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 3);
    app.finish().await;
}

#[tokio::test]
async fn a_request_the_balance_cannot_cover_in_full_records_nothing() {
    let app = TestApp::spawn().await;
    let user = app.create_user(30).await;
    let (status, refused) = app
        .create_generation(&user, json!({"prompt": "four cats", "n": 4}))
        .await;
    assert_eq!(status, 402, "{refused}");
    assert_eq!(refused["cost"], 40, "the whole request's price: {refused}");
    assert_eq!(
        refused["balance"], 30,
        "the balance before the request: {refused}"
    );
    let generations: i64 = sqlx::query_scalar("SELECT count(*) FROM generations")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(generations, 0);
    assert!(ledger(&app, &user).await.is_empty());
    assert_eq!(app.balance(&user).await, 30);
    // Three of them it can pay for.
    let (status, created) = app
        .create_generation(&user, json!({"prompt": "three cats", "n": 3}))
        .await;
    assert_eq!(status, 202, "{created}");
    assert_eq!(app.balance(&user).await, 0);
    app.drain().await;
    app.finish().await;
}

#[tokio::test]
async fn a_number_of_images_outside_one_to_four_is_refused_naming_n() {
    let app = TestApp::spawn().await;
    let user = app.create_user(1000).await;
    for n in [json!(0), json!(5), json!(-1), json!("two"), json!(2.5)] {
        let (status, refused) = app
            .create_generation(&user, json!({"prompt": "a cat", "n": n}))
            .await;
        assert_eq!(status, 422, "n = {n}: {refused}");
        assert_eq!(refused["field"], "n", "n = {n}: {refused}");
    }
    assert_eq!(app.balance(&user).await, 1000, "nothing was reserved");
    app.finish().await;
}

#[tokio::test]
async fn one_image_of_a_request_is_cancelled_and_refunded_on_its_own_while_the_others_are_made() {
    let app = TestApp::builder().without_worker().spawn().await;
    let user = app.create_user(100).await;
    let (status, created) = app
        .create_generation(
            &user,
            json!({"prompt": "three boats", "n": 3, "resolution": "2K"}),
        )
        .await;
    assert_eq!(status, 202, "{created}");
    let batch = ids_of(&created["batch"]);
    assert_eq!(app.balance(&user).await, 40);
    let cancelled = app
        .post_json(
            &format!("/api/v1/generations/{}/cancel", batch[1]),
            &user,
            &json!({}),
        )
        .await;
    assert_eq!(cancelled.status(), 200);
    assert_eq!(
        app.balance(&user).await,
        60,
        "only the cancelled one came back"
    );

    let worker = app
        .start_worker(
            &[
                ("submit_generation", 3),
                ("poll_generation", 3),
                ("store_generation", 3),
            ],
            Default::default(),
        )
        .await;
    for id in [&batch[0], &batch[2]] {
        let done = app.wait_until_finished(&user, id).await;
        assert_eq!(done["status"], "succeeded", "{done}");
    }
    app.drain().await;
    worker.stop().await;
    let (_, cancelled) = app.generation(&user, &batch[1]).await;
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(
        app.kie.tasks().len(),
        2,
        "kie.ai never saw the cancelled one"
    );
    let rows = ledger(&app, &user).await;
    let of = |id: &str| -> Vec<(String, i64)> {
        rows.iter()
            .filter(|(_, _, key)| *key == format!("generation:{id}"))
            .map(|(kind, amount, _)| (kind.clone(), *amount))
            .collect()
    };
    assert_eq!(
        of(&batch[0]),
        [("reserve".into(), -20), ("settle".into(), 0)]
    );
    assert_eq!(
        of(&batch[1]),
        [("reserve".into(), -20), ("refund".into(), 20)]
    );
    assert_eq!(
        of(&batch[2]),
        [("reserve".into(), -20), ("settle".into(), 0)]
    );
    assert_eq!(app.balance(&user).await, 60);
    app.finish().await;
}

#[tokio::test]
async fn a_retried_request_with_its_key_returns_the_same_images_and_the_key_with_another_number_is_refused()
 {
    let app = TestApp::spawn().await;
    let user = app.create_user(100).await;
    let body = json!({"prompt": "twin peaks", "n": 2});
    let first = create_with_key(&app, &user, &body, "retry-me").await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let again = create_with_key(&app, &user, &body, "retry-me").await;
    assert_eq!(again.status(), 202);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["batch"], first["batch"]);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM generations")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(count, 2, "two images, once");
    assert_eq!(app.balance(&user).await, 80);
    let other = create_with_key(
        &app,
        &user,
        &json!({"prompt": "twin peaks", "n": 3}),
        "retry-me",
    )
    .await;
    assert_eq!(other.status(), 422);
    app.drain().await;
    app.finish().await;
}

#[tokio::test]
async fn the_generator_makes_several_images_and_each_ones_page_shows_the_set_live() {
    let app = TestApp::spawn().await;
    let browser = sign_in(&app, "many@example.com").await;
    let home = browser.visit("/").await;
    for n in 1..=4 {
        assert!(
            home.contains(&format!(r#"id="n-{n}" name="n" value="{n}""#)),
            "{}",
            home.body
        );
    }
    let posted = browser
        .post(
            "/generate",
            &[
                ("csrf", &home.csrf()),
                ("idempotency_key", &home.field("idempotency_key").unwrap()),
                ("prompt", "a pair of herons"),
                ("aspect_ratio", "3:2"),
                ("resolution", "1K"),
                ("n", "2"),
            ],
        )
        .await;
    assert_eq!(posted.status, 303, "{}", posted.body);
    let first = generation_id(posted.location().unwrap());
    let generation = jobs::generations::find(&app.pool, first)
        .await
        .unwrap()
        .unwrap();
    let batch = jobs::generations::batch_of(&app.pool, &generation)
        .await
        .unwrap();
    assert_eq!(batch.len(), 2);
    assert_eq!(batch[0].id, first, "the redirect goes to the first");

    // The page's stream carries both images' statuses.
    let events = browser
        .client()
        .get(app.url(&format!("/generations/{first}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    let text = tokio::time::timeout(Duration::from_secs(30), events.text())
        .await
        .expect("the stream ends once both have finished")
        .unwrap();
    for member in &batch {
        assert!(text.contains(&format!(r#""id":"{}""#, member.id)), "{text}");
    }
    assert_eq!(
        text.matches(r#""status":"succeeded""#).count(),
        2,
        "each one's end: {text}"
    );

    for member in &batch {
        assert_eq!(wait_finished(&app, member.id).await, Status::Succeeded);
    }
    let page = browser
        .visit(&format!("/generations/{}", batch[1].id))
        .await;
    assert!(page.contains("Image 2 of 2"), "{}", page.body);
    assert!(page.contains(r#"id="set""#));
    for member in &batch {
        assert!(page.contains(&format!(r#"data-generation="{}""#, member.id)));
    }
    assert!(
        page.contains(&format!(
            r#"href="/generations/{}" aria-current="page""#,
            batch[1].id
        )),
        "the set marks the image shown: {}",
        page.body
    );
    assert_eq!(
        page.body.matches("alt=\"Image ").count(),
        2,
        "each tile shows its picture once made"
    );
    // Again asks for the same number of images.
    assert!(page.contains(r#"type="hidden" name="n" value="2""#));
    let member = sqlx::query_scalar::<_, i64>(
        "SELECT a.balance FROM credit_accounts a JOIN users u ON u.id = a.user_id WHERE u.email = $1",
    )
    .bind("many@example.com")
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(member, 0, "20 free credits, two 1K images");
    app.finish().await;
}

#[tokio::test]
async fn the_per_minute_generation_budget_counts_every_image_of_a_request() {
    let app = TestApp::builder()
        .generation_config(jobs::config::GenerationConfig {
            deadline: Duration::from_secs(60),
            per_user_per_minute: 5,
        })
        .spawn()
        .await;
    let user = app.create_user(1000).await;
    let (status, created) = app
        .create_generation(&user, json!({"prompt": "four at once", "n": 4}))
        .await;
    assert_eq!(status, 202, "{created}");
    // One left in the minute: a request for two is refused whole, one for one is taken.
    let (status, refused) = app
        .create_generation(&user, json!({"prompt": "two more", "n": 2}))
        .await;
    assert_eq!(status, 429, "{refused}");
    let (status, last) = app
        .create_generation(&user, json!({"prompt": "the fifth"}))
        .await;
    assert_eq!(status, 202, "{last}");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM generations")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(count, 5);
    app.drain().await;
    app.finish().await;
}

#[tokio::test]
async fn a_retry_after_the_first_image_was_deleted_still_finds_the_request_and_charges_nothing_new()
{
    let app = TestApp::spawn().await;
    let user = app.create_user(100).await;
    let body = json!({"prompt": "keep the rest", "n": 2});
    let first: Value = create_with_key(&app, &user, &body, "once-only")
        .await
        .json()
        .await
        .unwrap();
    let batch = ids_of(&first["batch"]);
    for id in &batch {
        app.wait_until_finished(&user, id).await;
    }
    // The first image, which held the key, is deleted and its row removed by the job.
    let deleted = app
        .client
        .delete(app.url(&format!("/api/v1/generations/{}", batch[0])))
        .bearer_auth(&user.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 202);
    app.drain().await;
    let gone: i64 = sqlx::query_scalar("SELECT count(*) FROM generations WHERE id = $1::uuid")
        .bind(&batch[0])
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(gone, 0, "the row is removed");
    let again = create_with_key(&app, &user, &body, "once-only").await;
    assert_eq!(again.status(), 202);
    let again: Value = again.json().await.unwrap();
    assert_eq!(
        again["id"],
        batch[1].as_str(),
        "the image still there answers"
    );
    assert_eq!(ids_of(&again["batch"]), [batch[1].clone()]);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM generations")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(count, 1, "nothing new was made");
    assert_eq!(app.balance(&user).await, 80, "nor charged");
    app.finish().await;
}
