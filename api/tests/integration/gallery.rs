//! Finding and waiting: the gallery's search, status filter, shapes and bulk delete; recent images and the
//! pickers beside the generator; what a waiting page says about the wait.

use jobs::generations::Status;
use serde_json::{Value, json};
use testkit::{Browser, TestApp, TestUser};

use crate::support::sign_in;

/// The member behind a signed-in browser, as the API sees it (a key of their own).
async fn member(app: &TestApp, email: &str) -> TestUser {
    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM users WHERE email = $1")
        .bind(email)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    app.api_key_for(id).await
}

/// Makes a generation through the API and waits for its end; returns its id.
async fn made(app: &TestApp, user: &TestUser, body: Value) -> String {
    let (status, created) = app.create_generation(user, body).await;
    assert_eq!(status, 202, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    app.wait_until_finished(user, &id).await;
    id
}

/// The generation ids a gallery page links to, in order.
fn cards(page: &testkit::Page) -> Vec<String> {
    page.body
        .split("<li class=\"card\"")
        .skip(1)
        .filter_map(|card| {
            let start = card.find("href=\"/generations/")? + "href=\"/generations/".len();
            Some(card[start..start + 36].to_owned())
        })
        .collect()
}

async fn gallery(browser: &Browser, query: &str) -> testkit::Page {
    let page = browser.visit(&format!("/gallery{query}")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    page
}

#[tokio::test]
async fn the_gallery_finds_prompts_by_their_words_and_filters_by_status() {
    let app = TestApp::spawn().await;
    let browser = sign_in(&app, "finder@example.com").await;
    let user = member(&app, "finder@example.com").await;
    app.grant(&user, 200).await;
    let red = made(&app, &user, json!({"prompt": "a red lighthouse at dawn"})).await;
    let blue = made(&app, &user, json!({"prompt": "Blue lighthouses at night"})).await;
    let cat = made(&app, &user, json!({"prompt": "a sleeping cat"})).await;
    let refused = made(
        &app,
        &user,
        json!({"prompt": "[refuse] a lighthouse on fire"}),
    )
    .await;

    let everything = gallery(&browser, "").await;
    assert_eq!(
        cards(&everything),
        [refused.as_str(), cat.as_str(), blue.as_str(), red.as_str()]
    );

    // English stemming: "lighthouse" finds "lighthouses"; case does not matter.
    let found = gallery(&browser, "?q=Lighthouse").await;
    assert_eq!(
        cards(&found),
        [refused.as_str(), blue.as_str(), red.as_str()],
        "{}",
        found.body
    );
    assert!(found.contains("3 matches"), "{}", found.body);
    assert!(
        found.contains(r#"value="Lighthouse""#),
        "the box keeps the words"
    );
    // Web-search syntax: a minus leaves a word out, quotes keep a phrase.
    assert_eq!(
        cards(&gallery(&browser, "?q=lighthouse+-night").await),
        [refused.as_str(), red.as_str()]
    );
    assert_eq!(
        cards(&gallery(&browser, "?q=%22red+lighthouse%22").await),
        [red.as_str()]
    );
    let nothing = gallery(&browser, "?q=submarine").await;
    assert!(cards(&nothing).is_empty());
    assert!(nothing.contains("Nothing matches"), "{}", nothing.body);

    assert_eq!(
        cards(&gallery(&browser, "?status=failed").await),
        [refused.as_str()]
    );
    assert_eq!(
        cards(&gallery(&browser, "?q=lighthouse&status=ready").await),
        [blue.as_str(), red.as_str()]
    );
    assert!(cards(&gallery(&browser, "?status=cancelled").await).is_empty());
    let bad = browser.get("/gallery?status=sideways").await;
    assert_eq!(bad.status, 400);
    assert!(bad.contains("Show: pick"), "{}", bad.body);
    app.finish().await;
}

#[tokio::test]
async fn a_searched_gallery_pages_on_with_its_search_kept() {
    let app = TestApp::spawn().await;
    let browser = sign_in(&app, "pager@example.com").await;
    let user = member(&app, "pager@example.com").await;
    app.grant(&user, 300).await;
    // 26 matching generations (a gallery page holds 24) and one that does not match, finished at once.
    let mut ids = vec![];
    for n in 0..27 {
        let prompt = if n == 5 {
            "an owl".to_owned()
        } else {
            format!("a kite number {n}")
        };
        let (status, created) = app
            .create_generation(&user, json!({"prompt": prompt}))
            .await;
        assert_eq!(status, 202, "{created}");
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    app.drain().await;
    let first = gallery(&browser, "?q=kite").await;
    assert_eq!(cards(&first).len(), 24);
    let older = first
        .body
        .split("id=\"older\"")
        .next()
        .and_then(|head| head.rsplit("href=\"").next())
        .map(|href| href.split('"').next().unwrap().replace("&amp;", "&"))
        .unwrap();
    assert!(older.contains("&q=kite"), "{older}");
    let second = gallery(&browser, older.trim_start_matches("/gallery")).await;
    assert_eq!(cards(&second).len(), 2, "{}", second.body);
    assert!(!cards(&second).contains(&ids[5]), "the owl never matches");
    app.finish().await;
}

#[tokio::test]
async fn gallery_cards_keep_each_images_own_shape() {
    let app = TestApp::spawn().await;
    let browser = sign_in(&app, "shapes@example.com").await;
    let user = member(&app, "shapes@example.com").await;
    let wide = made(
        &app,
        &user,
        json!({"prompt": "wide", "aspect_ratio": "16:9"}),
    )
    .await;
    let tall = made(
        &app,
        &user,
        json!({"prompt": "tall", "aspect_ratio": "9:16"}),
    )
    .await;
    let page = gallery(&browser, "").await;
    let card_of = |id: &str| {
        page.body
            .split("<li class=\"card\"")
            .find(|card| card.contains(id))
            .unwrap()
            .to_owned()
    };
    assert!(
        card_of(&wide).contains(r#"width="64" height="36""#),
        "{}",
        card_of(&wide)
    );
    assert!(
        card_of(&tall).contains(r#"width="36" height="64""#),
        "{}",
        card_of(&tall)
    );
    app.finish().await;
}

#[tokio::test]
async fn several_images_are_deleted_at_once_after_one_confirmation_and_nothing_else_is_touched() {
    let app = TestApp::spawn().await;
    let browser = sign_in(&app, "tidy@example.com").await;
    let user = member(&app, "tidy@example.com").await;
    app.grant(&user, 100).await;
    let keep = made(&app, &user, json!({"prompt": "keep me"})).await;
    let first = made(&app, &user, json!({"prompt": "drop one"})).await;
    let second = made(&app, &user, json!({"prompt": "drop two"})).await;
    let stranger = app.create_user(100).await;
    let theirs = made(&app, &stranger, json!({"prompt": "not yours"})).await;

    let page = gallery(&browser, "").await;
    assert!(page.contains(&format!(r#"name="id" value="{first}" form="bulk""#)));
    let confirm = browser
        .visit(&format!(
            "/gallery/delete?id={first}&id={second}&id={theirs}"
        ))
        .await;
    assert_eq!(confirm.status, 200, "{}", confirm.body);
    assert!(
        confirm.contains("Delete these 2 images?"),
        "{}",
        confirm.body
    );
    assert!(confirm.contains("1 of the selection cannot be deleted"));
    assert!(
        !confirm.contains("not yours"),
        "another member's prompt never shows"
    );
    let fields: Vec<(String, String)> = confirm.hidden_fields();
    let ids: Vec<&str> = fields
        .iter()
        .filter(|(name, _)| name == "id")
        .map(|(_, value)| value.as_str())
        .collect();
    assert_eq!(ids.len(), 2);

    // The form as a browser sends it, plus another member's id slipped in.
    let csrf = confirm.csrf();
    let mut form: Vec<(&str, &str)> = vec![("csrf", &csrf)];
    form.extend(ids.iter().map(|id| ("id", *id)));
    form.push(("id", &theirs));
    let done = browser.post("/gallery/delete", &form).await;
    assert_eq!(done.status, 303, "{}", done.body);
    let after = browser.follow(done).await;
    assert!(after.contains("2 images were deleted."), "{}", after.body);
    assert_eq!(cards(&after), [keep.as_str()]);
    app.drain().await;
    let left: Vec<String> = sqlx::query_scalar(
        "SELECT id::text FROM generations WHERE deleted_at IS NULL ORDER BY created_at",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(left, [keep.as_str(), theirs.as_str()]);
    // A selection without any finished image of theirs deletes nothing.
    let empty = browser.get("/gallery/delete").await;
    assert_eq!(empty.status, 303);
    let malformed = browser.get("/gallery/delete?id=not-an-id").await;
    assert_eq!(malformed.status, 400);
    let unsigned = browser.post("/gallery/delete", &[("id", &first)]).await;
    assert_eq!(unsigned.status, 403, "the CSRF token is required");
    app.finish().await;
}

#[tokio::test]
async fn the_generator_shows_recent_images_and_pickers_for_ratio_resolution_and_count() {
    let app = TestApp::spawn().await;
    let browser = sign_in(&app, "recent@example.com").await;
    let empty = browser.visit("/").await;
    assert!(empty.contains("Your images will appear here."));
    let user = member(&app, "recent@example.com").await;
    let last = made(&app, &user, json!({"prompt": "the latest one"})).await;
    let home = browser.visit("/").await;
    let recent = home
        .body
        .split("aria-labelledby=\"recent-title\"")
        .nth(1)
        .unwrap();
    assert!(recent.contains(&format!("/generations/{last}")), "{recent}");
    assert!(recent.contains("the latest one"));
    assert!(recent.contains("All in the gallery"));

    // Every ratio is a shape to pick, every resolution a choice with its price; the defaults are checked.
    for ratio in jobs::generations::AspectRatio::ALL {
        let id = format!("ratio-{}", ratio.as_str().replace(':', "x"));
        assert!(
            home.contains(&format!(r#"id="{id}" name="aspect_ratio" value="{ratio}""#)),
            "{ratio}: {}",
            home.body
        );
        assert!(
            home.contains(&format!(r#"id="{id}-why""#)),
            "a place to say why"
        );
    }
    assert!(home.contains(r#"id="ratio-auto" name="aspect_ratio" value="auto" checked"#));
    assert!(home.contains(r#"id="resolution-4K" name="resolution" value="4K" data-cost="40""#));
    assert!(
        home.contains(r#"id="resolution-1K" name="resolution" value="1K" data-cost="10" checked"#)
    );
    assert!(home.contains(r#"id="n-1" name="n" value="1" checked"#));
    app.finish().await;
}

#[tokio::test]
async fn a_waiting_page_counts_the_wait_says_how_long_such_images_take_and_its_place_in_line() {
    // No worker: everything stays queued, as when the fleet is at its kie.ai budget.
    let app = TestApp::builder().without_worker().spawn().await;
    let earlier = app.create_user(1000).await;
    let mut queued = vec![];
    for n in 0..7 {
        let (status, created) = app
            .create_generation(&earlier, json!({"prompt": format!("earlier {n}")}))
            .await;
        assert_eq!(status, 202, "{created}");
        queued.push(
            created["id"]
                .as_str()
                .unwrap()
                .parse::<uuid::Uuid>()
                .unwrap(),
        );
    }
    // Five of them finished lately, in 30 to 50 seconds: a 1K image takes about 40 s.
    for (n, id) in queued.drain(..5).enumerate() {
        sqlx::query(
            "UPDATE generations SET status = 'succeeded', finished_at = created_at + make_interval(secs => $2)
              WHERE id = $1",
        )
        .bind(id)
        .bind(30.0 + 5.0 * n as f64)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    let browser = sign_in(&app, "waiter@example.com").await;
    let home = browser.visit("/").await;
    let posted = browser
        .post(
            "/generate",
            &[
                ("csrf", &home.csrf()),
                ("idempotency_key", &home.field("idempotency_key").unwrap()),
                ("prompt", "patience"),
            ],
        )
        .await;
    let location = posted.location().unwrap().to_owned();
    let page = browser.visit(&location).await;
    assert!(
        page.contains(r#"id="elapsed" data-seconds=""#),
        "{}",
        page.body
    );
    assert!(page.contains("Waiting for"));
    assert!(
        page.contains(r#"1K images take about <strong id="typical">40 s</strong> lately"#),
        "{}",
        page.body
    );
    assert!(
        page.contains("2 requests are ahead of this one"),
        "the two still queued before it: {}",
        page.body
    );
    // Once the earlier ones have left the queue, it is first in line.
    for id in &queued {
        sqlx::query("UPDATE generations SET status = 'failed', finished_at = now() WHERE id = $1")
            .bind(id)
            .execute(&app.pool)
            .await
            .unwrap();
    }
    let first = browser.visit(&location).await;
    assert!(!first.contains("ahead of this one"), "{}", first.body);
    let id = crate::support::generation_id(&location);
    let row = jobs::generations::find(&app.pool, id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.status, Status::Queued);
    app.discard_unrun_jobs().await;
    app.finish().await;
}
