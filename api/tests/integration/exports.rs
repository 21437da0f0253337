//! GDPR export bundles: contents, bounded memory, access, expiry.

use std::{io::Read, time::Duration};

use jobs::exports::{self, MEMORY_BOUND};
use serde_json::{Value, json};
use testkit::{TestApp, TestUser, images};
use uuid::Uuid;

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn request_export(app: &TestApp, user: &TestUser) -> (u16, Value) {
    let response = app.post_json("/api/v1/exports", user, &json!({})).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn unzip(bytes: &[u8]) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    (0..archive.len())
        .map(|i| {
            let mut file = archive.by_index(i).unwrap();
            let mut content = Vec::new();
            file.read_to_end(&mut content).unwrap();
            (file.name().unwrap().to_string(), content)
        })
        .collect()
}

#[tokio::test]
async fn the_bundle_matches_the_database_and_the_bucket_byte_for_byte() {
    let app = TestApp::spawn().await;
    let user = app.create_user(100).await;
    let reference = images::png(12, 9);
    let upload = app
        .upload_reference(&user, reference.clone(), "image/png")
        .await;
    let mut generation_ids = Vec::new();
    for prompt in ["a red fox", "a blue whale"] {
        let (_, created) = app
            .create_generation(
                &user,
                json!({"prompt": prompt, "reference_upload_ids": [upload]}),
            )
            .await;
        let id = created["id"].as_str().unwrap().to_owned();
        app.wait_until_finished(&user, &id).await;
        generation_ids.push(id);
    }
    let (status, export) = request_export(&app, &user).await;
    assert_eq!(status, 202, "{export}");
    app.drain().await;
    let id = export["id"].as_str().unwrap();
    let view: Value = app
        .get_with_key(&format!("/api/v1/exports/{id}"), &user.api_key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(view["status"], "ready", "{view}");

    let redirect = no_redirects()
        .get(app.url(&format!("/api/v1/exports/{id}/download")))
        .bearer_auth(&user.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), 303);
    let bundle = reqwest::get(redirect.headers()["location"].to_str().unwrap())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let files = unzip(&bundle);

    let account: Value = serde_json::from_slice(&files["account.json"]).unwrap();
    let email: String = sqlx::query_scalar("SELECT email FROM users WHERE id = $1")
        .bind(user.id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(account["email"], email);
    let generations: Vec<Value> = serde_json::from_slice(&files["generations.json"]).unwrap();
    let prompts: Vec<&str> = generations
        .iter()
        .map(|g| g["prompt"].as_str().unwrap())
        .collect();
    assert_eq!(prompts, ["a red fox", "a blue whale"]);
    let ledger: Vec<Value> = serde_json::from_slice(&files["credit_ledger.json"]).unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM credit_ledger WHERE user_id = $1")
        .bind(user.id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(ledger.len() as i64, rows);
    let usage: Vec<Value> = serde_json::from_slice(&files["usage_log.json"]).unwrap();
    assert_eq!(usage.len(), 2);
    for name in ["payments.json", "consents.json", "README.txt"] {
        assert!(files.contains_key(name), "{name} missing");
    }
    // Every image and reference, byte for byte as in the bucket.
    let objects: Vec<(String, Uuid, i32)> = sqlx::query_as(
        "SELECT i.object_key, i.generation_id, i.n FROM generated_images i JOIN generations g ON g.id = i.generation_id
          WHERE g.user_id = $1",
    )
    .bind(user.id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(objects.len(), 2);
    for (key, generation, n) in objects {
        let in_zip = &files[&format!("images/{generation}/{n}.png")];
        assert_eq!(in_zip, &app.storage.get_bytes(&key).await.unwrap());
    }
    assert_eq!(files[&format!("references/{upload}.png")], reference);
    // The user was told.
    let mail: String = sqlx::query_scalar("SELECT template FROM email_outbox WHERE user_id = $1")
        .bind(user.id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(mail, "export_ready");
    assert_eq!(
        crate::support::metric(&app, "createimage2_exports_built_total").await,
        1.0
    );
    // The e-mail went out (the test transport is the outbox row itself) and was counted.
    testkit::eventually("the export e-mail to be sent", || async {
        crate::support::metric(&app, "createimage2_emails_total{outcome=\"sent\"}").await >= 1.0
    })
    .await;
    app.finish().await;
}

/// A succeeded generation of `user` with one image of `size` random (incompressible) bytes, written straight to
/// the bucket with its rows.
async fn store_random_image(app: &TestApp, user: &TestUser, size: usize) {
    let generation = Uuid::now_v7();
    sqlx::query(
            "INSERT INTO generations (id, user_id, prompt, model, credits_reserved, trace_id, status, finished_at)
             VALUES ($1, $2, 'bulk', 'gpt-image-2-text-to-image', 0, 't', 'succeeded', now())",
        )
        .bind(generation)
        .bind(user.id)
        .execute(&app.pool)
        .await
        .unwrap();
    let key = format!("users/{}/generations/{generation}/0.png", user.id);
    let bytes: Vec<u8> = (0..size).map(|_| rand::random::<u8>()).collect();
    app.storage.put(&key, bytes, "image/png").await.unwrap();
    sqlx::query(
        "INSERT INTO generated_images (id, generation_id, n, object_key, byte_size, content_type)
         VALUES ($1, $2, 0, $3, $4, 'image/png')",
    )
    .bind(Uuid::now_v7())
    .bind(generation)
    .bind(&key)
    .bind(size as i64)
    .execute(&app.pool)
    .await
    .unwrap();
}

/// R2 refuses a multipart upload whose parts but the last differ in size; the S3 stand-in enforces it.
#[tokio::test]
async fn a_bundle_spanning_several_parts_is_accepted_under_r2s_equal_part_rule() {
    let app = TestApp::builder().without_worker().spawn().await;
    let user = app.create_user(0).await;
    for _ in 0..3 {
        store_random_image(&app, &user, 6 * 1024 * 1024).await;
    }
    let key = exports::bundle_key(user.id, Uuid::now_v7());
    let stats = exports::build_bundle(&app.pool, &app.storage, user.id, &key)
        .await
        .unwrap();
    assert_eq!(
        stats.parts, 3,
        "two full parts and a shorter last one: {stats:?}"
    );
    assert_eq!(
        app.storage.head(&key).await.unwrap().unwrap().byte_size as u64,
        stats.bytes
    );
    app.finish().await;
}

#[tokio::test]
async fn memory_stays_bounded_while_bundling_many_images() {
    let app = TestApp::builder().without_worker().spawn().await;
    let user = app.create_user(0).await;
    // 40 images of 1 MiB of random bytes (incompressible).
    for _ in 0..40 {
        store_random_image(&app, &user, 1024 * 1024).await;
    }
    let key = exports::bundle_key(user.id, Uuid::now_v7());
    let stats = exports::build_bundle(&app.pool, &app.storage, user.id, &key)
        .await
        .unwrap();
    assert!(
        stats.bytes > 40 * 1024 * 1024,
        "the bundle holds every image: {stats:?}"
    );
    assert!(stats.parts >= 5, "{stats:?}");
    assert!(
        stats.peak_buffered <= MEMORY_BOUND,
        "buffered {} bytes at once, over the bound of {MEMORY_BOUND}",
        stats.peak_buffered
    );
    assert_eq!(
        app.storage.head(&key).await.unwrap().unwrap().byte_size as u64,
        stats.bytes
    );
    app.finish().await;
}

#[tokio::test]
async fn a_second_request_while_one_is_being_prepared_is_refused() {
    let app = TestApp::builder().without_worker().spawn().await;
    let user = app.create_user(0).await;
    assert_eq!(request_export(&app, &user).await.0, 202);
    let (status, body) = request_export(&app, &user).await;
    assert_eq!(status, 409, "{body}");
    app.discard_unrun_jobs().await;
    app.finish().await;
}

#[tokio::test]
async fn another_user_can_neither_see_nor_download_an_export() {
    let app = TestApp::spawn().await;
    let (owner, stranger) = (app.create_user(0).await, app.create_user(0).await);
    let (_, export) = request_export(&app, &owner).await;
    app.drain().await;
    let id = export["id"].as_str().unwrap();
    assert_eq!(
        app.get_with_key(&format!("/api/v1/exports/{id}"), &stranger.api_key)
            .await
            .status(),
        404
    );
    let download = no_redirects()
        .get(app.url(&format!("/api/v1/exports/{id}/download")))
        .bearer_auth(&stranger.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(download.status(), 404);
    let anonymous = no_redirects()
        .get(app.url(&format!("/api/v1/exports/{id}/download")))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    app.finish().await;
}

#[tokio::test]
async fn an_expired_link_is_refused_by_the_bucket_and_old_bundles_are_deleted() {
    let app = TestApp::spawn().await;
    let user = app.create_user(0).await;
    let (_, export) = request_export(&app, &user).await;
    app.drain().await;
    let id: Uuid = export["id"].as_str().unwrap().parse().unwrap();
    let key = exports::bundle_key(user.id, id);
    let short = app
        .storage
        .presign_get(&key, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(reqwest::get(&short).await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        reqwest::get(&short).await.unwrap().status(),
        403,
        "s3s-fs enforces the expiry"
    );

    sqlx::query(
        "UPDATE export_requests SET expires_at = now() - interval '1 minute' WHERE id = $1",
    )
    .bind(id)
    .execute(&app.pool)
    .await
    .unwrap();
    app.enqueue(&jobs::kinds::ExpireExports {}).await;
    app.drain().await;
    assert!(app.storage.head(&key).await.unwrap().is_none());
    let gone = no_redirects()
        .get(app.url(&format!("/api/v1/exports/{id}/download")))
        .bearer_auth(&user.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 410);
    app.finish().await;
}
