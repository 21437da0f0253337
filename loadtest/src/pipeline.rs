//! `loadtest pipeline`: whole generations through the running stack — `POST /api/v1/generations` with an API
//! key → submit_generation (createTask) → kie's signed callback + poll_generation (recordInfo) →
//! store_generation (download, put in the bucket) → settle — with the project's api, worker, queue and kie
//! client in this process and the kie.ai and S3 stand-ins answering (see `stack.rs`). Every phase gets a
//! fresh database and stack.
//!
//! 1. memory: `--polling` generations submitted (limits lifted) against a slow upstream, so all of them sit in
//!    `generating` and are polled; this process's VmRSS is sampled (first run only, while the process is
//!    fresh: api, worker, both stand-ins and the load client all count, so it is an upper bound for a worker).
//! 2. throughput: `--generations` POSTed at once by `--clients`, the upstream answering after `--upstream-ms`
//!    (0: at once) with both sides' limits lifted: generations/s and intent→stored.
//! 3. paced: `--paced` generations at `--paced-rate`/s into the same stack: intent→stored and the pipeline's
//!    overhead (intent→stored minus the upstream's own time) without a backlog.
//! 4. limited: `--limited` generations at once with kie's real limit (the stand-in's 20 per 10 s, the
//!    project's default budget) and 2–5 s upstream latency: createTask calls per sliding 10 s window, from
//!    the stand-in's own count and from `generations.submitted_at`.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use fakes::kie::FakeKieConfig;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    report::{Row, Spread, percentile, print_table, print_verdicts, verdict},
    stack::{self, Database, Stack, StackConfig, User},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Repetitions; the table shows medians with min–max.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Throughput phase: generations POSTed at once (limits lifted).
    #[arg(long, default_value_t = 1000)]
    generations: usize,
    /// Throughput phase: concurrent HTTP clients posting them.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Upstream's own time in the throughput and paced phases, ms (fixed; 0 answers at once).
    #[arg(long, default_value_t = 0)]
    upstream_ms: u64,
    /// Paced phase: generations, one every 1/--paced-rate s.
    #[arg(long, default_value_t = 200)]
    paced: usize,
    /// Paced phase: generations per second.
    #[arg(long, default_value_t = 10.0)]
    paced_rate: f64,
    /// Limited phase: generations POSTed at once against kie's real limit (0 skips the phase).
    #[arg(long, default_value_t = 60)]
    limited: usize,
    /// Limited phase: upstream latency range, ms.
    #[arg(long, default_value = "2000-5000")]
    limited_latency_ms: String,
    /// Memory phase (first run only): generations polling while RSS is sampled (0 skips the phase).
    #[arg(long, default_value_t = 500)]
    polling: usize,
    /// Memory phase: seconds of RSS sampling once all of them poll.
    #[arg(long, default_value_t = 15)]
    memory_seconds: u64,
    /// Worker concurrency per queue, as `createimage2 worker --concurrency` takes it (other queues: 10).
    #[arg(
        long,
        default_value = "submit_generation=50,poll_generation=100,store_generation=50"
    )]
    concurrency: String,
    /// Also write the numbers as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Where a generation's time went, from the `generations` row (ms).
#[derive(Default)]
struct Timings {
    succeeded: usize,
    failed: usize,
    unfinished: usize,
    /// created_at → stored_at.
    intent_to_stored: Vec<f64>,
    /// intent→stored minus the upstream's own (configured, fixed) time.
    overhead: Vec<f64>,
    /// intent→stored minus (upstream_finished_at − submitted_at): the columns' view, which counts the time to
    /// notice the upstream finished (callback → poll) as upstream time.
    overhead_columns: Vec<f64>,
    /// created_at → submitted_at: queue wait, submit job, createTask.
    to_submitted: Vec<f64>,
    /// submitted_at → upstream_finished_at: upstream time plus callback → poll → recordInfo.
    to_upstream_finished: Vec<f64>,
    /// upstream_finished_at → stored_at: store job (download-url, download, put, settle).
    to_stored: Vec<f64>,
    /// First created_at to last finished_at, s.
    span_s: f64,
    /// Every finished_at (epoch s).
    finished: Vec<f64>,
    /// Generations with a callback recorded, and those whose first callback arrived before the task id was
    /// (`received_at` < `submitted_at`): then no poll job exists yet for the callback to make due.
    with_callback: usize,
    callback_first: usize,
}

async fn timings(pool: &PgPool, ids: &[Uuid], upstream_ms: Option<f64>) -> anyhow::Result<Timings> {
    type Row = (
        jobs::generations::Status,
        f64,
        Option<f64>,
        Option<f64>,
        Option<f64>,
        Option<f64>,
        Option<f64>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT status, EXTRACT(EPOCH FROM created_at)::float8, EXTRACT(EPOCH FROM submitted_at)::float8,
                EXTRACT(EPOCH FROM upstream_finished_at)::float8, EXTRACT(EPOCH FROM stored_at)::float8,
                EXTRACT(EPOCH FROM finished_at)::float8,
                (SELECT EXTRACT(EPOCH FROM min(c.received_at))::float8 FROM upstream_callbacks c
                  WHERE c.generation_id = g.id)
           FROM generations g WHERE id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    let mut t = Timings::default();
    let (mut first, mut last) = (f64::INFINITY, f64::NEG_INFINITY);
    for (status, created, submitted, upstream_finished, stored, finished, callback) in rows {
        if let (Some(callback), Some(submitted)) = (callback, submitted) {
            t.with_callback += 1;
            if callback < submitted {
                t.callback_first += 1;
            }
        }
        first = first.min(created);
        match status {
            jobs::generations::Status::Succeeded => t.succeeded += 1,
            jobs::generations::Status::Failed => t.failed += 1,
            _ => t.unfinished += 1,
        }
        if let Some(finished) = finished {
            last = last.max(finished);
            t.finished.push(finished);
        }
        let ms = |from: f64, to: f64| (to - from) * 1000.0;
        if let (Some(submitted), Some(upstream_finished), Some(stored)) =
            (submitted, upstream_finished, stored)
        {
            let total = ms(created, stored);
            t.intent_to_stored.push(total);
            if let Some(upstream) = upstream_ms {
                t.overhead.push(total - upstream);
            }
            t.overhead_columns
                .push(total - ms(submitted, upstream_finished));
            t.to_submitted.push(ms(created, submitted));
            t.to_upstream_finished
                .push(ms(submitted, upstream_finished));
            t.to_stored.push(ms(upstream_finished, stored));
        }
    }
    t.span_s = last - first;
    Ok(t)
}

/// Completions per second between the 10th and the 90th percentile of finish times: the pipeline's rate
/// once it is full, without the ramp-up and the tail of the burst.
fn steady_rate(finished: &[f64]) -> f64 {
    let (t10, t90) = (percentile(finished, 0.1), percentile(finished, 0.9));
    let inside = finished.iter().filter(|&&t| t >= t10 && t <= t90).count();
    if t90 > t10 {
        (inside.saturating_sub(1)) as f64 / (t90 - t10)
    } else {
        f64::NAN
    }
}

/// Share (%) of generations whose finished task was noticed ≥ 2 s after the upstream finished: by the first
/// timed poll (2.5 s after submission) rather than through the callback.
fn late_share(timings: &Timings, upstream_ms: u64) -> f64 {
    let late = timings
        .to_upstream_finished
        .iter()
        .filter(|&&ms| ms - upstream_ms as f64 >= 2000.0)
        .count();
    100.0 * late as f64 / timings.to_upstream_finished.len().max(1) as f64
}

/// `POST /api/v1/generations`; the new generation's id and the request's time (ms).
async fn post_generation(
    client: &reqwest::Client,
    base_url: &str,
    user: &User,
    n: usize,
) -> anyhow::Result<(Uuid, f64)> {
    let started = Instant::now();
    let response = client
        .post(format!("{base_url}/api/v1/generations"))
        .bearer_auth(&user.api_key)
        .json(&json!({"prompt": format!("a lighthouse at dawn, load test #{n}")}))
        .send()
        .await?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let elapsed = started.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(
        status.as_u16() == 202,
        "POST /api/v1/generations answered {status}: {body}"
    );
    let id = body["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .context("202 without an id")?;
    Ok((id, elapsed))
}

/// POSTs `count` generations with `clients` concurrent clients, round-robin over `users`.
async fn post_burst(
    client: &reqwest::Client,
    base_url: &str,
    users: &[User],
    count: usize,
    clients: usize,
) -> anyhow::Result<Vec<Uuid>> {
    let next = Arc::new(AtomicUsize::new(0));
    let users = Arc::new(users.to_vec());
    let mut tasks = Vec::new();
    for _ in 0..clients.max(1) {
        let (client, base_url, users, next) = (
            client.clone(),
            base_url.to_owned(),
            users.clone(),
            next.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    return anyhow::Ok(ids);
                }
                let user = &users[n % users.len()];
                ids.push(post_generation(&client, &base_url, user, n).await?.0);
            }
        }));
    }
    let mut ids = Vec::with_capacity(count);
    for task in tasks {
        ids.extend(task.await??);
    }
    Ok(ids)
}

/// Waits until none of `ids` is unfinished.
async fn wait_finished(pool: &PgPool, ids: &[Uuid], limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM generations WHERE id = ANY($1) AND finished_at IS NULL",
        )
        .bind(ids)
        .fetch_one(pool)
        .await?;
        if left == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{left} generations unfinished after {} s",
            limit.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn fixed_latency(ms: u64) -> FakeKieConfig {
    let latency = Duration::from_millis(ms);
    FakeKieConfig {
        latency: (latency, latency),
        ..FakeKieConfig::default()
    }
}

fn parse_range_ms(raw: &str) -> anyhow::Result<(Duration, Duration)> {
    let (low, high) = raw
        .split_once('-')
        .context("a latency range looks like 2000-5000")?;
    let (low, high): (u64, u64) = (low.trim().parse()?, high.trim().parse()?);
    anyhow::ensure!(low <= high, "latency range: min above max");
    Ok((Duration::from_millis(low), Duration::from_millis(high)))
}

/// One run's numbers (NaN where a phase was skipped).
#[derive(Default)]
struct RunResult {
    rss_baseline_mib: f64,
    rss_peak_mib: f64,
    rss_mean_mib: f64,
    polling_record_info_per_second: f64,
    generations_per_second: f64,
    steady_generations_per_second: f64,
    /// Postgres transactions (all sessions of the database) per generation during the burst.
    burst_commits_per_generation: f64,
    /// This process's CPU (api, worker, stand-ins, client) per generation during the burst.
    burst_cpu_ms_per_generation: f64,
    burst_intent_to_stored_p50: f64,
    burst_intent_to_stored_p99: f64,
    burst_failed: usize,
    burst_to_submitted_p50: f64,
    burst_to_upstream_finished_p50: f64,
    burst_to_stored_p50: f64,
    /// Share of the burst whose finished task was noticed only by the first timed poll (≥ 2 s after
    /// submission although the upstream answered at once), not by its callback.
    burst_late_share: f64,
    /// Share whose callback arrived before `submitted_at`.
    burst_callback_first_share: f64,
    paced_intent_to_stored_p50: f64,
    paced_intent_to_stored_p99: f64,
    paced_overhead_p50: f64,
    paced_overhead_p99: f64,
    paced_overhead_columns_p50: f64,
    paced_overhead_columns_p99: f64,
    paced_to_submitted_p50: f64,
    paced_to_upstream_finished_p50: f64,
    paced_to_stored_p50: f64,
    paced_failed: usize,
    paced_late_share: f64,
    paced_callback_first_share: f64,
    limited_max_in_window_kie: f64,
    limited_max_in_window_db: f64,
    limited_rate: f64,
    limited_rejected_by_kie: f64,
    limited_duration_s: f64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut results = Vec::new();
    for run in 1..=args.runs {
        eprintln!(
            "run {run}: load average at start {}",
            crate::stack::load_average()
        );
        let mut result = RunResult::default();
        // Only while the process is fresh: the allocator keeps what later phases used, so a second memory
        // phase would measure the earlier runs' high-water mark.
        if args.polling > 0 && run == 1 {
            memory_phase(&args, &mut result).await?;
        } else {
            result.rss_baseline_mib = f64::NAN;
            result.rss_peak_mib = f64::NAN;
            result.rss_mean_mib = f64::NAN;
            result.polling_record_info_per_second = f64::NAN;
        }
        throughput_phases(&args, &mut result).await?;
        if args.limited > 0 {
            limited_phase(&args, &mut result).await?;
        } else {
            result.limited_max_in_window_kie = f64::NAN;
            result.limited_max_in_window_db = f64::NAN;
            result.limited_rate = f64::NAN;
            result.limited_rejected_by_kie = f64::NAN;
            result.limited_duration_s = f64::NAN;
        }
        eprintln!(
            "run {run}: {:.1} generations/s; paced overhead p50 {:.0} ms p99 {:.0} ms; limited: max {} per 10 s \
             (kie's count), {:.2}/s sustained; RSS {:.0} MiB with {} polling",
            result.generations_per_second,
            result.paced_overhead_p50,
            result.paced_overhead_p99,
            result.limited_max_in_window_kie,
            result.limited_rate,
            result.rss_peak_mib,
            args.polling
        );
        results.push(result);
    }
    report(&args, &results)
}

/// Phase 1: RSS with `--polling` generations in `generating`, polled against a slow upstream.
async fn memory_phase(args: &Args, result: &mut RunResult) -> anyhow::Result<()> {
    let database = Database::create().await?;
    let outcome = async {
        let mut config = StackConfig::lifted_limits(fixed_latency(600_000));
        config.worker_concurrency = Some(args.concurrency.clone());
        let stack = Stack::start(&database, config).await?;
        let pool = database.pool(4)?;
        let users = stack::create_users(&pool, 50, 1_000_000).await?;
        let client = stack::http_client()?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        result.rss_baseline_mib = stack::rss_mib();
        let ids = post_burst(&client, &stack.base_url, &users, args.polling, 16).await?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let generating: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM generations WHERE id = ANY($1) AND status = 'generating'",
            )
            .bind(&ids)
            .fetch_one(&pool)
            .await?;
            if generating as usize == ids.len() {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "only {generating} of {} generations reached `generating` in 120 s",
                ids.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let calls_before = stack.kie.stats().record_info_calls;
        let started = Instant::now();
        let mut samples = Vec::new();
        while started.elapsed() < Duration::from_secs(args.memory_seconds) {
            samples.push(stack::rss_mib());
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let calls = stack.kie.stats().record_info_calls - calls_before;
        result.polling_record_info_per_second = calls as f64 / started.elapsed().as_secs_f64();
        result.rss_peak_mib = samples.iter().copied().fold(f64::NAN, f64::max);
        result.rss_mean_mib = samples.iter().sum::<f64>() / samples.len() as f64;
        let still: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM generations WHERE id = ANY($1) AND status = 'generating'",
        )
        .bind(&ids)
        .fetch_one(&pool)
        .await?;
        anyhow::ensure!(
            still as usize == ids.len(),
            "{} generations left `generating` during the memory phase",
            ids.len() - still as usize
        );
        drop(client);
        pool.close().await;
        stack.stop().await
    }
    .await;
    database.drop().await?;
    outcome
}

/// Phases 2 and 3: a burst with limits lifted, then a paced stream into the same stack.
async fn throughput_phases(args: &Args, result: &mut RunResult) -> anyhow::Result<()> {
    let database = Database::create().await?;
    let outcome = async {
        let mut config = StackConfig::lifted_limits(fixed_latency(args.upstream_ms));
        config.worker_concurrency = Some(args.concurrency.clone());
        let stack = Stack::start(&database, config).await?;
        let pool = database.pool(4)?;
        let users = stack::create_users(&pool, args.clients.max(1), 1_000_000).await?;
        let client = stack::http_client()?;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (commits_before, cpu_before) = (stack::commits(&pool).await?, stack::cpu_seconds());

        let ids = post_burst(
            &client,
            &stack.base_url,
            &users,
            args.generations,
            args.clients,
        )
        .await?;
        wait_finished(&pool, &ids, Duration::from_secs(600)).await?;
        let cpu = stack::cpu_seconds() - cpu_before;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let commits = stack::commits(&pool).await? - commits_before;
        result.burst_commits_per_generation = commits / ids.len() as f64;
        result.burst_cpu_ms_per_generation = cpu * 1000.0 / ids.len() as f64;
        let burst = timings(&pool, &ids, Some(args.upstream_ms as f64)).await?;
        result.generations_per_second = (burst.succeeded + burst.failed) as f64 / burst.span_s;
        result.steady_generations_per_second = steady_rate(&burst.finished);
        result.burst_intent_to_stored_p50 = percentile(&burst.intent_to_stored, 0.5);
        result.burst_intent_to_stored_p99 = percentile(&burst.intent_to_stored, 0.99);
        result.burst_failed = burst.failed;
        result.burst_to_submitted_p50 = percentile(&burst.to_submitted, 0.5);
        result.burst_to_upstream_finished_p50 = percentile(&burst.to_upstream_finished, 0.5);
        result.burst_to_stored_p50 = percentile(&burst.to_stored, 0.5);
        result.burst_late_share = late_share(&burst, args.upstream_ms);
        result.burst_callback_first_share =
            100.0 * burst.callback_first as f64 / burst.with_callback.max(1) as f64;

        // Paced: an open loop (each POST on its own task at its scheduled time), so a slow answer does not
        // delay the next request.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let interval = Duration::from_secs_f64(1.0 / args.paced_rate.max(0.01));
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut posts = Vec::with_capacity(args.paced);
        for n in 0..args.paced {
            ticker.tick().await;
            let (client, base_url, user) = (
                client.clone(),
                stack.base_url.clone(),
                users[n % users.len()].clone(),
            );
            posts.push(tokio::spawn(async move {
                post_generation(&client, &base_url, &user, n).await
            }));
        }
        let mut paced_ids = Vec::with_capacity(args.paced);
        for post in posts {
            paced_ids.push(post.await??.0);
        }
        wait_finished(&pool, &paced_ids, Duration::from_secs(300)).await?;
        let paced = timings(&pool, &paced_ids, Some(args.upstream_ms as f64)).await?;
        result.paced_intent_to_stored_p50 = percentile(&paced.intent_to_stored, 0.5);
        result.paced_intent_to_stored_p99 = percentile(&paced.intent_to_stored, 0.99);
        result.paced_overhead_p50 = percentile(&paced.overhead, 0.5);
        result.paced_overhead_p99 = percentile(&paced.overhead, 0.99);
        result.paced_overhead_columns_p50 = percentile(&paced.overhead_columns, 0.5);
        result.paced_overhead_columns_p99 = percentile(&paced.overhead_columns, 0.99);
        result.paced_to_submitted_p50 = percentile(&paced.to_submitted, 0.5);
        result.paced_to_upstream_finished_p50 = percentile(&paced.to_upstream_finished, 0.5);
        result.paced_to_stored_p50 = percentile(&paced.to_stored, 0.5);
        result.paced_failed = paced.failed;
        result.paced_late_share = late_share(&paced, args.upstream_ms);
        result.paced_callback_first_share =
            100.0 * paced.callback_first as f64 / paced.with_callback.max(1) as f64;
        drop(client);
        pool.close().await;
        stack.stop().await
    }
    .await;
    database.drop().await?;
    outcome
}

/// Phase 4: kie's real limit, realistic latency; how fast the fleet submits.
async fn limited_phase(args: &Args, result: &mut RunResult) -> anyhow::Result<()> {
    let latency = parse_range_ms(&args.limited_latency_ms)?;
    let database = Database::create().await?;
    let outcome = async {
        let kie = FakeKieConfig {
            latency,
            ..FakeKieConfig::default()
        };
        let kie_limit = kie.create_limit;
        let mut config = StackConfig::production_limits(kie);
        config.generation.per_user_per_minute = 1_000_000;
        config.worker_concurrency = Some(args.concurrency.clone());
        let budget = config.create_budget;
        let stack = Stack::start(&database, config).await?;
        let pool = database.pool(4)?;
        let users = stack::create_users(&pool, 8, 1_000_000).await?;
        let client = stack::http_client()?;
        let ids = post_burst(&client, &stack.base_url, &users, args.limited, 8).await?;
        wait_finished(&pool, &ids, Duration::from_secs(600)).await?;
        let stats = stack.kie.stats();
        let window = kie_limit.map_or(Duration::from_secs(10), |(_, w)| w);
        let mut submitted: Vec<f64> = sqlx::query_scalar(
            "SELECT EXTRACT(EPOCH FROM submitted_at)::float8 FROM generations
              WHERE id = ANY($1) AND submitted_at IS NOT NULL",
        )
        .bind(&ids)
        .fetch_all(&pool)
        .await?;
        submitted.sort_by(f64::total_cmp);
        let window_s = window.as_secs_f64();
        let max_in_window = (0..submitted.len())
            .map(|i| {
                submitted[i..]
                    .iter()
                    .take_while(|&&t| t - submitted[i] < window_s)
                    .count()
            })
            .max()
            .unwrap_or(0);
        // Sustained rate: after the first full budget, each further task waits for the window to refill.
        let first_budget = budget.0 as usize;
        let sustained = if submitted.len() > first_budget {
            (submitted.len() - first_budget) as f64
                / (submitted[submitted.len() - 1] - submitted[0])
        } else {
            f64::NAN
        };
        result.limited_max_in_window_kie = f64::from(stats.max_creates_in_window);
        result.limited_max_in_window_db = max_in_window as f64;
        result.limited_rate = sustained;
        result.limited_rejected_by_kie = stats.rate_limited_creates as f64;
        result.limited_duration_s = timings(&pool, &ids, None).await?.span_s;
        drop(client);
        pool.close().await;
        stack.stop().await
    }
    .await;
    database.drop().await?;
    outcome
}

fn report(args: &Args, results: &[RunResult]) -> anyhow::Result<()> {
    let spread = |f: fn(&RunResult) -> f64| Spread::of(results.iter().map(f));
    let budget = stack::production_create_budget();
    let limit_rate = 20.0 / 10.0;
    let budget_rate = f64::from(budget.0) / budget.1.as_secs_f64();
    let rows = vec![
        Row::new(
            format!(
                "burst of {} ({} clients): throughput",
                args.generations, args.clients
            ),
            spread(|r| r.generations_per_second),
            "gen/s",
        ),
        Row::new(
            "burst: steady rate (10th–90th pct of finishes)",
            spread(|r| r.steady_generations_per_second),
            "gen/s",
        ),
        Row::new(
            "burst: Postgres transactions per generation",
            spread(|r| r.burst_commits_per_generation),
            "tx",
        ),
        Row::new(
            "burst: this process's CPU per generation",
            spread(|r| r.burst_cpu_ms_per_generation),
            "ms",
        ),
        Row::new(
            "burst: intent→stored p50",
            spread(|r| r.burst_intent_to_stored_p50),
            "ms",
        ),
        Row::new(
            "burst: intent→stored p99",
            spread(|r| r.burst_intent_to_stored_p99),
            "ms",
        ),
        Row::new(
            "burst p50: created→submitted",
            spread(|r| r.burst_to_submitted_p50),
            "ms",
        ),
        Row::new(
            "burst p50: submitted→upstream_finished",
            spread(|r| r.burst_to_upstream_finished_p50),
            "ms",
        ),
        Row::new(
            "burst p50: upstream_finished→stored",
            spread(|r| r.burst_to_stored_p50),
            "ms",
        ),
        Row::new(
            "burst: noticed by the timed poll, not the callback",
            spread(|r| r.burst_late_share),
            "%",
        ),
        Row::new(
            "burst: callback received before submitted_at",
            spread(|r| r.burst_callback_first_share),
            "%",
        ),
        Row::new(
            format!("paced {}/s: intent→stored p50", args.paced_rate),
            spread(|r| r.paced_intent_to_stored_p50),
            "ms",
        ),
        Row::new(
            "paced: intent→stored p99",
            spread(|r| r.paced_intent_to_stored_p99),
            "ms",
        ),
        Row::new(
            format!("paced: overhead p50 (− {} ms upstream)", args.upstream_ms),
            spread(|r| r.paced_overhead_p50),
            "ms",
        ),
        Row::new(
            "paced: overhead p99",
            spread(|r| r.paced_overhead_p99),
            "ms",
        ),
        Row::new(
            "paced: overhead by columns p50",
            spread(|r| r.paced_overhead_columns_p50),
            "ms",
        ),
        Row::new(
            "paced: overhead by columns p99",
            spread(|r| r.paced_overhead_columns_p99),
            "ms",
        ),
        Row::new(
            "paced p50: created→submitted",
            spread(|r| r.paced_to_submitted_p50),
            "ms",
        ),
        Row::new(
            "paced p50: submitted→upstream_finished",
            spread(|r| r.paced_to_upstream_finished_p50),
            "ms",
        ),
        Row::new(
            "paced p50: upstream_finished→stored",
            spread(|r| r.paced_to_stored_p50),
            "ms",
        ),
        Row::new(
            "paced: noticed by the timed poll, not the callback",
            spread(|r| r.paced_late_share),
            "%",
        ),
        Row::new(
            "paced: callback received before submitted_at",
            spread(|r| r.paced_callback_first_share),
            "%",
        ),
        Row::new(
            format!(
                "limited ({}): max tasks per 10 s, kie's count",
                args.limited
            ),
            spread(|r| r.limited_max_in_window_kie),
            "tasks",
        ),
        Row::new(
            "limited: max per 10 s from submitted_at",
            spread(|r| r.limited_max_in_window_db),
            "tasks",
        ),
        Row::new(
            "limited: sustained submission rate",
            spread(|r| r.limited_rate),
            "/s",
        ),
        Row::new(
            "limited: createTask calls kie refused (429)",
            spread(|r| r.limited_rejected_by_kie),
            "calls",
        ),
        Row::new(
            "limited: first intent → last finished",
            spread(|r| r.limited_duration_s),
            "s",
        ),
        Row::new(
            "process RSS, stack idle (baseline)",
            spread(|r| r.rss_baseline_mib),
            "MiB",
        ),
        Row::new(
            format!("process RSS, {} polling (peak)", args.polling),
            spread(|r| r.rss_peak_mib),
            "MiB",
        ),
        Row::new(
            "process RSS growth over baseline",
            spread(|r| r.rss_peak_mib - r.rss_baseline_mib),
            "MiB",
        ),
        Row::new(
            "recordInfo calls while polling",
            spread(|r| r.polling_record_info_per_second),
            "/s",
        ),
    ];
    print_table(&rows);
    let failed: usize = results
        .iter()
        .map(|r| r.burst_failed + r.paced_failed)
        .sum();
    if failed > 0 {
        println!("  note: {failed} generations failed (counted in throughput, not in latencies)");
    }
    let overhead_p50 = spread(|r| r.paced_overhead_p50).median;
    let overhead_p99 = spread(|r| r.paced_overhead_p99).median;
    let rss = spread(|r| r.rss_peak_mib).median;
    let max_window = spread(|r| r.limited_max_in_window_kie).median;
    let sustained = spread(|r| r.limited_rate).median;
    println!(
        "targets (RSS is this whole process: api, worker, both stand-ins and the load client):"
    );
    print_verdicts(&[
        (
            format!("pipeline overhead p50 < 250 ms: {overhead_p50:.0} ms"),
            verdict(overhead_p50, |v| v < 250.0),
        ),
        (
            format!("pipeline overhead p99 < 1000 ms (with callbacks): {overhead_p99:.0} ms"),
            verdict(overhead_p99, |v| v < 1000.0),
        ),
        (
            format!(
                "worker RSS < 100 MB with {} generations polling: {rss:.0} MiB (in-process upper bound)",
                args.polling
            ),
            verdict(rss, |v| v * 1.048_576 < 100.0),
        ),
        (
            format!("never above kie's 20 per 10 s: max {max_window:.0} in any 10 s window"),
            verdict(max_window, |v| v <= 20.0),
        ),
        (
            format!(
                "submission rate equals the limit: {sustained:.2}/s sustained vs kie's {limit_rate:.2}/s \
                 (the project's budget, {} per {:.1} s, allows {budget_rate:.2}/s)",
                budget.0,
                budget.1.as_secs_f64()
            ),
            verdict(sustained, |v| (v - budget_rate).abs() / budget_rate < 0.05),
        ),
    ]);
    let late = spread(|r| r.paced_late_share).median;
    if late > 0.0 {
        println!(
            "  note: {late:.1}% of the paced generations were noticed by the first timed poll (2.5 s after \
             submission), not by their callback; at least {:.1}% (received before `submitted_at`) had their callback \
             arrive before the task id and the poll job were committed, so it had no poll job to make due\n",
            spread(|r| r.paced_callback_first_share).median
        );
    }
    println!(
        "pipeline: {:.1} generations/s; overhead p50 {overhead_p50:.0} ms, p99 {overhead_p99:.0} ms; \
         {max_window:.0} tasks max per 10 s at {sustained:.2}/s; RSS {rss:.0} MiB with {} polling",
        spread(|r| r.generations_per_second).median,
        args.polling
    );
    if let Some(path) = &args.json {
        let numbers = json!({
            "runs": args.runs,
            "generations": args.generations, "clients": args.clients, "upstream_ms": args.upstream_ms,
            "paced": args.paced, "paced_rate": args.paced_rate, "limited": args.limited,
            "limited_latency_ms": args.limited_latency_ms, "polling": args.polling,
            "concurrency": args.concurrency,
            "generations_per_second": spread(|r| r.generations_per_second).json(),
            "steady_generations_per_second": spread(|r| r.steady_generations_per_second).json(),
            "burst_transactions_per_generation": spread(|r| r.burst_commits_per_generation).json(),
            "burst_process_cpu_ms_per_generation": spread(|r| r.burst_cpu_ms_per_generation).json(),
            "burst_intent_to_stored_ms": {
                "p50": spread(|r| r.burst_intent_to_stored_p50).json(),
                "p99": spread(|r| r.burst_intent_to_stored_p99).json(),
            },
            "paced_intent_to_stored_ms": {
                "p50": spread(|r| r.paced_intent_to_stored_p50).json(),
                "p99": spread(|r| r.paced_intent_to_stored_p99).json(),
            },
            "paced_overhead_ms": {
                "p50": spread(|r| r.paced_overhead_p50).json(),
                "p99": spread(|r| r.paced_overhead_p99).json(),
            },
            "paced_overhead_by_columns_ms": {
                "p50": spread(|r| r.paced_overhead_columns_p50).json(),
                "p99": spread(|r| r.paced_overhead_columns_p99).json(),
            },
            "burst_stage_p50_ms": {
                "created_to_submitted": spread(|r| r.burst_to_submitted_p50).json(),
                "submitted_to_upstream_finished": spread(|r| r.burst_to_upstream_finished_p50).json(),
                "upstream_finished_to_stored": spread(|r| r.burst_to_stored_p50).json(),
            },
            "noticed_by_timed_poll_percent": {
                "burst": spread(|r| r.burst_late_share).json(),
                "paced": spread(|r| r.paced_late_share).json(),
            },
            "callback_before_task_recorded_percent": {
                "burst": spread(|r| r.burst_callback_first_share).json(),
                "paced": spread(|r| r.paced_callback_first_share).json(),
            },
            "paced_stage_p50_ms": {
                "created_to_submitted": spread(|r| r.paced_to_submitted_p50).json(),
                "submitted_to_upstream_finished": spread(|r| r.paced_to_upstream_finished_p50).json(),
                "upstream_finished_to_stored": spread(|r| r.paced_to_stored_p50).json(),
            },
            "limited": {
                "max_tasks_per_10s_kie": spread(|r| r.limited_max_in_window_kie).json(),
                "max_tasks_per_10s_submitted_at": spread(|r| r.limited_max_in_window_db).json(),
                "sustained_per_second": spread(|r| r.limited_rate).json(),
                "refused_by_kie": spread(|r| r.limited_rejected_by_kie).json(),
                "duration_s": spread(|r| r.limited_duration_s).json(),
            },
            "rss_mib": {
                "baseline": spread(|r| r.rss_baseline_mib).json(),
                "peak_polling": spread(|r| r.rss_peak_mib).json(),
                "mean_polling": spread(|r| r.rss_mean_mib).json(),
            },
            "polling_record_info_per_second": spread(|r| r.polling_record_info_per_second).json(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&numbers)?)?;
    }
    Ok(())
}
