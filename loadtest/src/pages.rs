//! `loadtest pages`: how long the site's server-rendered pages take, for a member signed in through the real
//! e-mailed-link flow whose gallery holds `--generations` finished images. One client, requests one after the
//! other over keep-alive loopback, so each time is the server's work (session lookup, queries, maud rendering,
//! URL signing) plus a loopback round trip. The stack is testkit's `TestApp` (api, worker, every stand-in).
//!
//! `--history N` plants, before those, months of history by SQL (`testkit::history`): N generations of the
//! member's own, `--other-members` others with N/4 each, and one more member with N that stopped 60 days ago
//! (whose rows everyone else's newer ones sit above), so the indexes on `user_id` are as selective as they are
//! with many members and a plan that walks everyone's newest rows shows. The gallery is also measured a deep
//! page down (9,000 cards, or the last page of a shorter gallery, reached by following its "Older" links),
//! searched and filtered; with a history, the quiet member's account and gallery too.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;

use crate::report::{Row, Spread, percentile, print_table, print_verdicts, verdict};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Finished generations in the member's gallery.
    #[arg(long, default_value_t = 100)]
    generations: usize,
    /// Generations planted by SQL before those, spread over 180 days (0: none).
    #[arg(long, default_value_t = 0)]
    history: i32,
    /// With `--history`: other members with a quarter of that history each.
    #[arg(long, default_value_t = 20)]
    other_members: usize,
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
/// With `--history`: a member with as long a history who stopped 60 days ago.
const QUIET_EMAIL: &str = "quiet@example.com";
/// How deep the deep gallery page is, in cards (it is reached by following "Older" links from the first).
const DEEP: usize = 9_000;

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
    // Signed in through the site like the member; its history planted with everyone's.
    let quiet_browser = if args.history > 0 {
        Some(plant(&app, user, &args).await?)
    } else {
        None
    };
    let mut made = Vec::with_capacity(args.generations);
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
        made.push(uuid::Uuid::parse_str(
            body["id"].as_str().unwrap_or_default(),
        )?);
    }
    app.drain().await;
    let succeeded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM generations WHERE id = ANY($1) AND status = 'succeeded'",
    )
    .bind(&made)
    .fetch_one(&app.pool)
    .await?;
    anyhow::ensure!(
        succeeded as usize == args.generations,
        "only {succeeded} of {} generations succeeded",
        args.generations
    );
    let generation = format!("/generations/{}", made.first().copied().unwrap_or_default());
    let (deep_path, depth) = deep_page(&browser, DEEP).await?;
    let deep_name = format!("gallery, {depth} cards down");
    let common = format!("/gallery?q={}", testkit::history::COMMON_WORD);
    let rare = format!("/gallery?q={}", testkit::history::RARE_WORD);
    let mut pages: Vec<(String, String, bool)> = [
        ("home (generator)", "/".to_owned()),
        ("gallery", "/gallery".to_owned()),
        (deep_name.as_str(), deep_path),
        ("gallery, search (common word)", common),
        ("gallery, search (rare word)", rare),
        ("gallery, failed", "/gallery?status=failed".to_owned()),
        ("gallery, cancelled", "/gallery?status=cancelled".to_owned()),
        (
            "gallery, in progress",
            "/gallery?status=in-progress".to_owned(),
        ),
        ("one generation", generation),
        ("account", "/account".to_owned()),
        ("pricing", "/pricing".to_owned()),
        ("privacy policy", "/privacy-policy".to_owned()),
    ]
    .into_iter()
    .map(|(name, path)| (name.to_owned(), path, false))
    .collect();
    if quiet_browser.is_some() {
        pages.push((
            "account, quiet 60 days".to_owned(),
            "/account".to_owned(),
            true,
        ));
        pages.push((
            "gallery, quiet 60 days".to_owned(),
            "/gallery".to_owned(),
            true,
        ));
    }

    // Per page: (p50s, p99s) over the runs.
    let mut results: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); pages.len()];
    for run in 1..=args.runs {
        for (index, (name, path, as_quiet)) in pages.iter().enumerate() {
            // Which browser asks: the member, or the one who stopped 60 days ago.
            let browser = match (&quiet_browser, as_quiet) {
                (Some(quiet), true) => quiet,
                _ => &browser,
            };
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
    for ((name, _, _), (p50s, p99s)) in pages.iter().zip(&results) {
        let (p50, p99) = (Spread::of(p50s.clone()), Spread::of(p99s.clone()));
        rows.push(Row::new(format!("{name}: p50"), p50, "ms"));
        rows.push(Row::new(format!("{name}: p99"), p99, "ms"));
        json_pages.insert(
            name.clone(),
            json!({"p50_ms": p50.json(), "p99_ms": p99.json()}),
        );
    }
    print_table(&rows);
    let gallery_p50 = Spread::of(results[1].0.clone()).median;
    let slowest_p50 = results
        .iter()
        .map(|(p50s, _)| Spread::of(p50s.clone()).median)
        .fold(0.0, f64::max);
    // Issue 19's pages: the generator, the gallery (every form of it) and the account, for either member.
    let (slowest_p99, slowest_name) = pages
        .iter()
        .zip(&results)
        .filter(|((name, _, _), _)| {
            name.starts_with("home") || name.starts_with("gallery") || name.starts_with("account")
        })
        .map(|((name, _, _), (_, p99s))| (Spread::of(p99s.clone()).median, name.as_str()))
        .fold((f64::NAN, ""), |slowest, page| {
            if slowest.0.is_nan() || page.0 > slowest.0 {
                page
            } else {
                slowest
            }
        });
    let history_p99 = if args.history > 0 {
        slowest_p99
    } else {
        f64::NAN
    };
    println!("targets:");
    print_verdicts(&[
        (
            format!("issue #4, every page's p50 under 5 ms: slowest {slowest_p50:.1} ms"),
            verdict(slowest_p50, |v| v < 5.0),
        ),
        (
            format!(
                "issue #19, gallery, account and generator p99 < 20 ms with {} generations: slowest {history_p99:.1} ms ({slowest_name})",
                args.history
            ),
            verdict(history_p99, |v| v < 20.0),
        ),
    ]);
    if let Some(path) = &args.json {
        let document = json!({"generations": args.generations, "history": args.history, "requests": args.requests, "pages": json_pages});
        std::fs::write(path, serde_json::to_vec_pretty(&document)?)?;
    }
    println!(
        "pages: gallery of {} (+{} planted) p50 {gallery_p50:.1} ms; slowest page p50 {slowest_p50:.1} ms; slowest p99 {slowest_p99:.1} ms ({slowest_name})",
        args.generations, args.history
    );
    Ok(())
}

/// Plants the member's history, the other members' and the quiet member's (who signs in through the site, as
/// the member did); returns the quiet member's browser.
async fn plant(
    app: &testkit::TestApp,
    user: uuid::Uuid,
    args: &Args,
) -> anyhow::Result<testkit::Browser> {
    use testkit::history::{self, Planting};
    let started = Instant::now();
    let quiet_browser = app.sign_in(QUIET_EMAIL).await;
    let quiet: uuid::Uuid = sqlx::query_scalar("SELECT id FROM users WHERE email = $1")
        .bind(QUIET_EMAIL)
        .fetch_one(&app.pool)
        .await?;
    let mut members = vec![
        Planting::recent(user, args.history, 180),
        Planting {
            ended_days_ago: 60,
            ..Planting::recent(quiet, args.history, 180)
        },
    ];
    for n in 0..args.other_members {
        let other = history::member(&app.pool, n).await?;
        members.push(Planting::recent(other, (args.history / 4).max(1), 180));
    }
    let planted = history::plant(&app.pool, &members, 0.42).await?;
    eprintln!(
        "planted {} generations, {} images, {} ledger rows, {} payments for {} members in {:.1} s",
        planted.generations,
        planted.images,
        planted.ledger_rows,
        planted.payments,
        members.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(quiet_browser)
}

/// The gallery page `depth` cards down (or the last, if fewer), reached as a member would: by following
/// "Older" from the first page. Returns its path and how many cards are above it.
async fn deep_page(browser: &testkit::Browser, depth: usize) -> anyhow::Result<(String, usize)> {
    let mut path = "/gallery".to_owned();
    let mut above = 0;
    loop {
        let page = browser.get(&path).await;
        anyhow::ensure!(page.status == 200, "{path} answered {}", page.status);
        let cards = page.body.matches("<li class=\"card\"").count();
        let Some(start) = page.body.find("href=\"/gallery?before=") else {
            return Ok((path, above));
        };
        if above + cards > depth {
            return Ok((path, above));
        }
        let href = &page.body[start + "href=\"".len()..];
        let end = href.find('"').context("the Older link ends")?;
        path = href[..end].replace("&amp;", "&");
        above += cards;
    }
}
