//! README's JSON API examples, run as written (bash, curl, jq) against a running stack: only the key and the
//! address are the test's own.

use testkit::{TestApp, images};

/// The README's example script: from the `KEY=` line to the end of its code block.
fn readme_examples() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let start = readme
        .find("KEY=ci2_")
        .expect("README has the API examples");
    let end = start + readme[start..].find("```").expect("the block ends");
    readme[start..end].to_owned()
}

#[tokio::test]
async fn the_readmes_api_examples_run_as_written() {
    let app = TestApp::spawn().await;
    let user = app.create_user(100).await;
    let script = readme_examples();
    let script: String = script
        .lines()
        .map(|line| {
            if line.starts_with("KEY=") {
                format!("KEY={}", user.api_key)
            } else if line.starts_with("API=") {
                format!("API={}", app.url("/api/v1"))
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ref.png"), images::png(32, 32)).unwrap();
    let run = tokio::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(dir.path())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(120), run)
        .await
        .expect("the examples finish (the event stream ends with the generation)")
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!(r#""id":"{}""#, user.id)),
        "/me answered: {stdout}"
    );
    assert!(
        stdout.contains(r#","status":"succeeded"}"#),
        "the event stream followed the generation to its end: {stdout}"
    );
    let image = std::fs::read(dir.path().join("image.png")).unwrap();
    assert!(image.starts_with(b"\x89PNG"), "image.png is the image");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last == "cancelled" || last.contains("only a queued generation can be cancelled"),
        "the cancel answered in words: {last}"
    );
    let references: Vec<Vec<uuid::Uuid>> = sqlx::query_scalar(
        "SELECT reference_upload_ids FROM generations WHERE user_id = $1 ORDER BY created_at",
    )
    .bind(user.id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(references.len(), 2);
    assert_eq!(references[1].len(), 1, "the second went with the reference");
    app.drain().await;
    app.finish().await;
}
