//! `loadtest pages`: how long the site's server-rendered pages take, for a member signed in through the real
//! e-mailed-link flow whose gallery holds `--generations` finished images. One client, requests one after the
//! other over keep-alive loopback, so each time is the server's work (session lookup, queries, maud rendering,
//! URL signing) plus a loopback round trip. The stack is testkit's `TestApp` (api, worker, every stand-in).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;

use crate::report::{Row, Spread, percentile, print_table, print_verdicts, verdict};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Finished generations in the member's gallery.
    #[arg(long, default_value_t = 100)]
    generations: usize,
    /// Timed requests per page and run (after 20 untimed).
    #[arg(long, default_value_t = 300)]
    requests: usize,
    /// Repetitions; the table shows medians with min–max.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Also write the numbers as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

const EMAIL: &str = "bench@example.com";

pub async fn run(args: Args) -> anyhow::Result<()> {
    let app = testkit::TestApp::builder()
        .concurrency(20)
        .generation_config(jobs::config::GenerationConfig {
            per_user_per_minute: 100_000,
            ..jobs::config::GenerationConfig::default()
        })
        .kie(|k| {
            k.latency = (Duration::from_millis(5), Duration::from_millis(20));
            k.create_limit = None;
            k.record_info_limit = None;
        })
        // Production's 20 tasks per 10.5 s would take a minute to fill a gallery of 100.
        .kie_budget((1_000_000, Duration::from_secs(1)), 1_000_000)
        .spawn()
        .await;
    let browser = app.sign_in(EMAIL).await;
    let user: uuid::Uuid = sqlx::query_scalar("SELECT id FROM users WHERE email = $1")
        .bind(EMAIL)
        .fetch_one(&app.pool)
        .await
        .context("the signed-in member")?;
    let mut tx = app.pool.begin().await?;
    jobs::credits::apply(
        &mut tx,
        user,
        jobs::credits::Kind::Grant,
        1_000_000,
        "loadtest-pages-grant",
        serde_json::Value::Null,
    )
    .await?;
    let key = jobs::accounts::issue_api_key(&mut *tx, user, "loadtest").await?;
    tx.commit().await?;
    let mut first = None;
    for n in 0..args.generations {
        let response = app
            .client
            .post(app.url("/api/v1/generations"))
            .bearer_auth(&key.secret)
            .json(&json!({"prompt": format!("a gallery picture {n}")}))
            .send()
            .await?;
        anyhow::ensure!(
            response.status() == 202,
            "POST answered {}",
            response.status()
        );
        let body: serde_json::Value = response.json().await?;
        first.get_or_insert(body["id"].as_str().unwrap_or_default().to_owned());
    }
    app.drain().await;
    let succeeded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM generations WHERE user_id = $1 AND status = 'succeeded'",
    )
    .bind(user)
    .fetch_one(&app.pool)
    .await?;
    anyhow::ensure!(
        succeeded as usize == args.generations,
        "only {succeeded} of {} generations succeeded",
        args.generations
    );
    let generation = format!("/generations/{}", first.unwrap_or_default());
    let pages = [
        ("home (generator)", "/".to_owned()),
        ("gallery", "/gallery".to_owned()),
        ("one generation", generation),
        ("account", "/account".to_owned()),
        ("pricing", "/pricing".to_owned()),
        ("privacy policy", "/privacy-policy".to_owned()),
    ];

    // Per page: (p50s, p99s) over the runs.
    let mut results: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); pages.len()];
    for run in 1..=args.runs {
        for (index, (name, path)) in pages.iter().enumerate() {
            for _ in 0..20 {
                browser.get(path).await;
            }
            let mut times = Vec::with_capacity(args.requests);
            for _ in 0..args.requests {
                let started = Instant::now();
                let page = browser.get(path).await;
                times.push(started.elapsed().as_secs_f64() * 1000.0);
                anyhow::ensure!(page.status == 200, "{path} answered {}", page.status);
            }
            let (p50, p99) = (percentile(&times, 0.5), percentile(&times, 0.99));
            eprintln!("run {run}: {name}: p50 {p50:.2} ms, p99 {p99:.2} ms");
            results[index].0.push(p50);
            results[index].1.push(p99);
        }
    }
    app.finish().await;

    let mut rows = Vec::new();
    let mut json_pages = serde_json::Map::new();
    for ((name, _), (p50s, p99s)) in pages.iter().zip(&results) {
        let (p50, p99) = (Spread::of(p50s.clone()), Spread::of(p99s.clone()));
        rows.push(Row::new(format!("{name}: p50"), p50, "ms"));
        rows.push(Row::new(format!("{name}: p99"), p99, "ms"));
        json_pages.insert(
            (*name).to_owned(),
            json!({"p50_ms": p50.json(), "p99_ms": p99.json()}),
        );
    }
    print_table(&rows);
    let gallery_p50 = Spread::of(results[1].0.clone()).median;
    let slowest_p50 = results
        .iter()
        .map(|(p50s, _)| Spread::of(p50s.clone()).median)
        .fold(0.0, f64::max);
    println!("target (issue #4: pages render in a few milliseconds):");
    print_verdicts(&[(
        format!("every page's p50 under 5 ms: slowest {slowest_p50:.1} ms"),
        verdict(slowest_p50, |v| v < 5.0),
    )]);
    if let Some(path) = &args.json {
        let document = json!({"generations": args.generations, "requests": args.requests, "pages": json_pages});
        std::fs::write(path, serde_json::to_vec_pretty(&document)?)?;
    }
    println!(
        "pages: gallery of {} p50 {gallery_p50:.1} ms; slowest page p50 {slowest_p50:.1} ms",
        args.generations
    );
    Ok(())
}
