//! `loadtest api`: intent recording under concurrent clients — the real api (`api::Api::with_parts`, see
//! `stack.rs`) with NO worker, so only `POST /api/v1/generations` (auth, then one transaction: per-user rate
//! token, generations insert, ledger reservation, submit job) is measured — against pgbench running the same
//! SQL on the same database as the physical ceiling. Then the read side: `GET /api/v1/generations/{id}` (status)
//! and `GET /api/v1/generations?limit=20` (the JSON list, as the gallery's proxy: the HTML gallery needs a
//! browser session, and faking one by inserting a session row is not done here).
//!
//! The load clients are tokio tasks in this process (reqwest, keep-alive), so they share the machine's cores
//! with the api and Postgres; pgbench, a C client, shares them the same way.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use fakes::kie::FakeKieConfig;
use rand::Rng as _;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    pgbench::Bench,
    report::{Row, Spread, percentile, print_table, print_verdicts, verdict},
    stack::{self, Database, Stack, StackConfig, User},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Repetitions; the table shows medians with min–max.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Concurrent clients of each POST step (and pgbench's clients).
    #[arg(long, value_delimiter = ',', default_value = "8,32,64")]
    concurrency: Vec<usize>,
    /// Seconds per step (each concurrency, the half-rate step, each GET step, each pgbench run).
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    /// Users the requests are spread over (each with plenty of credits and its own API key).
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// Concurrent clients of the GET steps.
    #[arg(long, default_value_t = 32)]
    read_concurrency: usize,
    /// The api's pool size (`DATABASE_MAX_CONNECTIONS`, default 20).
    #[arg(long, default_value_t = 20)]
    api_connections: u32,
    /// pgbench binary (default: on PATH, else /usr/lib/postgresql/*/bin/pgbench); the ceiling is skipped
    /// when none is found.
    #[arg(long)]
    pgbench: Option<PathBuf>,
    /// Also write the numbers as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Requests/s and latency of one step.
#[derive(Debug, Clone, Copy)]
struct Step {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: usize,
}

impl Step {
    fn from(latencies: &[f64], errors: usize, elapsed: Duration) -> Self {
        Self {
            per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
            p50_ms: percentile(latencies, 0.5),
            p99_ms: percentile(latencies, 0.99),
            errors,
        }
    }
}

struct RunResult {
    /// One per `--concurrency`.
    posts: Vec<Step>,
    half_rate: f64,
    half: Step,
    status: Step,
    list: Step,
    /// One per `--concurrency` (NaN without pgbench).
    pgbench: Vec<Bench>,
    /// The whole request's SQL at the transaction script's best client count.
    pgbench_request: Bench,
    pgbench_request_clients: usize,
    /// The transaction without the rate token (the ceiling as measured before 2026-12-02), same clients.
    pgbench_intent_only: Bench,
}

#[derive(Clone, Copy)]
enum Request {
    Create,
    Status,
    List,
}

struct Load {
    client: reqwest::Client,
    base_url: String,
    users: Vec<User>,
    /// (user index, generation id) of every 202.
    created: Mutex<Vec<(usize, Uuid)>>,
}

impl Load {
    /// One request; `Ok(false)` is an unexpected status.
    async fn one(&self, request: Request) -> anyhow::Result<bool> {
        match request {
            Request::Create => {
                let index = rand::rng().random_range(0..self.users.len());
                let response = self
                    .client
                    .post(format!("{}/api/v1/generations", self.base_url))
                    .bearer_auth(&self.users[index].api_key)
                    .json(&json!({"prompt": "a lighthouse at dawn, load test"}))
                    .send()
                    .await?;
                if response.status().as_u16() != 202 {
                    return Ok(false);
                }
                let body: serde_json::Value = response.json().await?;
                let id = body["id"].as_str().and_then(|id| id.parse().ok());
                if let Some(id) = id {
                    self.created
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push((index, id));
                }
                Ok(id.is_some())
            }
            Request::Status => {
                let (index, id) = {
                    let created = self
                        .created
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    created[rand::rng().random_range(0..created.len())]
                };
                let response = self
                    .client
                    .get(format!("{}/api/v1/generations/{id}", self.base_url))
                    .bearer_auth(&self.users[index].api_key)
                    .send()
                    .await?;
                let ok = response.status().is_success();
                response.bytes().await?;
                Ok(ok)
            }
            Request::List => {
                let index = rand::rng().random_range(0..self.users.len());
                let response = self
                    .client
                    .get(format!("{}/api/v1/generations?limit=20", self.base_url))
                    .bearer_auth(&self.users[index].api_key)
                    .send()
                    .await?;
                let ok = response.status().is_success();
                response.bytes().await?;
                Ok(ok)
            }
        }
    }
}

/// `concurrency` clients, each sending its next request when the last one is answered, for `duration`.
async fn closed_loop(
    load: &Arc<Load>,
    request: Request,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Step> {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let load = load.clone();
        tasks.push(tokio::spawn(async move {
            let (mut latencies, mut errors) = (Vec::new(), 0);
            while Instant::now() < deadline {
                let sent = Instant::now();
                if load.one(request).await? {
                    latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                } else {
                    errors += 1;
                }
            }
            anyhow::Ok((latencies, errors))
        }));
    }
    let (mut latencies, mut errors) = (Vec::new(), 0);
    for task in tasks {
        let (l, e) = task.await??;
        latencies.extend(l);
        errors += e;
    }
    Ok(Step::from(&latencies, errors, started.elapsed()))
}

/// Requests started at a fixed `rate` regardless of answers (an open loop: no coordinated omission).
async fn open_loop(
    load: &Arc<Load>,
    request: Request,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<Step> {
    let count = (rate * duration.as_secs_f64()).round().max(1.0) as usize;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(count);
    for _ in 0..count {
        ticker.tick().await;
        let load = load.clone();
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let ok = load.one(request).await?;
            anyhow::Ok(ok.then(|| sent.elapsed().as_secs_f64() * 1000.0))
        }));
    }
    let (mut latencies, mut errors) = (Vec::new(), 0);
    for task in tasks {
        match task.await?? {
            Some(ms) => latencies.push(ms),
            None => errors += 1,
        }
    }
    Ok(Step::from(&latencies, errors, started.elapsed()))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.concurrency.is_empty(),
        "--concurrency names no client count"
    );
    let pgbench = args.pgbench.clone().or_else(crate::pgbench::find);
    if pgbench.is_none() {
        eprintln!(
            "pgbench not found (apt-get install postgresql-contrib): the ceiling is not measured"
        );
    }
    let mut results = Vec::new();
    for run in 1..=args.runs {
        eprintln!(
            "run {run}: load average at start {}",
            crate::stack::load_average()
        );
        let database = Database::create().await?;
        let result = one_run(&args, &database, pgbench.as_deref()).await;
        database.drop().await?;
        let result = result?;
        let best = result
            .posts
            .iter()
            .map(|s| s.per_second)
            .fold(0.0, f64::max);
        eprintln!(
            "run {run}: POST max {best:.0}/s; at half ({:.0}/s) p50 {:.1} ms p99 {:.1} ms; pgbench max {:.0} tps",
            result.half_rate,
            result.half.p50_ms,
            result.half.p99_ms,
            result
                .pgbench
                .iter()
                .map(|b| b.tps)
                .fold(f64::NAN, f64::max)
        );
        results.push(result);
    }
    report(&args, &results)
}

async fn one_run(
    args: &Args,
    database: &Database,
    pgbench: Option<&Path>,
) -> anyhow::Result<RunResult> {
    let step = Duration::from_secs(args.seconds);
    let mut config = StackConfig::lifted_limits(FakeKieConfig::default());
    config.api_connections = args.api_connections;
    config.worker_concurrency = None;
    let stack = Stack::start(database, config).await?;
    anyhow::ensure!(!stack.worker_running, "the api scenario runs no worker");
    let pool = database.pool(4)?;
    let users = stack::create_users(&pool, args.users.max(1), 1_000_000_000).await?;
    record_users_for_pgbench(&pool, &users).await?;
    let load = Arc::new(Load {
        client: stack::http_client()?,
        base_url: stack.base_url.clone(),
        users,
        created: Mutex::new(Vec::new()),
    });

    let scripts = tempfile::tempdir()?;
    let transaction = scripts.path().join("transaction.sql");
    let whole = scripts.path().join("request.sql");
    let intent_only = scripts.path().join("intent_only.sql");
    std::fs::write(&transaction, transaction_script(args.users))?;
    std::fs::write(&whole, request_script(args.users))?;
    std::fs::write(&intent_only, intent_only_script(args.users))?;
    let bench = |script: &Path, clients: usize| {
        let (url, name, script) = (
            database.url.clone(),
            database.name.clone(),
            script.to_path_buf(),
        );
        async move {
            match pgbench {
                Some(pgbench) => {
                    crate::pgbench::run(
                        pgbench,
                        &url,
                        &name,
                        &script,
                        clients,
                        crate::pgbench::Length::For(step),
                        &[],
                    )
                    .await
                }
                None => Ok(Bench {
                    tps: f64::NAN,
                    latency_ms: f64::NAN,
                }),
            }
        }
    };

    // Warm-up (connections, prepared statements), not counted.
    closed_loop(&load, Request::Create, 8, Duration::from_secs(2)).await?;
    // Each client count: the api, then pgbench with as many clients right after it (the api idles), so
    // both see the same machine and about the same table sizes.
    let mut posts = Vec::new();
    let mut benches = Vec::new();
    for &concurrency in &args.concurrency {
        posts.push(closed_loop(&load, Request::Create, concurrency, step).await?);
        benches.push(bench(&transaction, concurrency).await?);
    }
    let best = posts.iter().map(|s| s.per_second).fold(0.0, f64::max);
    let half_rate = best / 2.0;
    let half = open_loop(&load, Request::Create, half_rate, step).await?;
    anyhow::ensure!(
        !load
            .created
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_empty(),
        "no generation was created"
    );
    let status = closed_loop(&load, Request::Status, args.read_concurrency, step).await?;
    let list = closed_loop(&load, Request::List, args.read_concurrency, step).await?;
    drop(load);
    stack.stop().await?;
    let (best_index, _) = benches
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.tps.total_cmp(&b.1.tps))
        .context("no pgbench run")?;
    let request_clients = args.concurrency[best_index];
    let request = bench(&whole, request_clients).await?;
    let intent_only = bench(&intent_only, request_clients).await?;
    pool.close().await;
    Ok(RunResult {
        posts,
        half_rate,
        half,
        status,
        list,
        pgbench: benches,
        pgbench_request: request,
        pgbench_request_clients: request_clients,
        pgbench_intent_only: intent_only,
    })
}

/// pgbench picks users by number: `loadtest_users` maps 1..=N to the ids (and key hashes) made above.
async fn record_users_for_pgbench(pool: &PgPool, users: &[User]) -> anyhow::Result<()> {
    sqlx::query(
        "CREATE TABLE loadtest_users (n integer PRIMARY KEY, user_id uuid NOT NULL, key_hash bytea NOT NULL)",
    )
    .execute(pool)
    .await?;
    let ids: Vec<Uuid> = users.iter().map(|u| u.id).collect();
    let hashes: Vec<Vec<u8>> = users
        .iter()
        .map(|u| jobs::accounts::hash_secret(&u.api_key))
        .collect();
    sqlx::query(
        "INSERT INTO loadtest_users (n, user_id, key_hash)
         SELECT row_number() OVER (), id, hash FROM unnest($1::uuid[], $2::bytea[]) AS t(id, hash)",
    )
    .bind(&ids)
    .bind(&hashes)
    .execute(pool)
    .await?;
    Ok(())
}

/// A time-ordered id like `Uuid::now_v7()` (ms timestamp first), so index locality matches the api's.
const V7_LIKE: &str = "(lpad(to_hex((extract(epoch from clock_timestamp()) * 1000)::bigint), 12, '0') \
                       || '7' || substr(md5(random()::text), 1, 19))::uuid";

/// The SQL of `jobs::generations::create`'s transaction for a request without references (so without
/// the uploads ownership count), statement for statement: the per-user rate token (`jobs::rate_limit::take_in`), the generations insert (answered
/// with `RETURNING *`), the shortfall check, `jobs::credits::apply` (reserve) and `queue::enqueue_with`
/// (`enqueue_new`'s insert into `apalis.jobs`, firing its insert-notify trigger). Keep in step with them.
fn transaction_script(users: usize) -> String {
    format!(
        r#"\set n random(1, {users})
SELECT user_id AS uid, {V7_LIKE} AS gid, {V7_LIKE}::text AS jid FROM loadtest_users WHERE n = :n \gset
BEGIN;
{RATE}{INTENT}COMMIT;
"#
    )
}

/// The transaction the ceiling was measured with before 2026-12-02, when the rate token still had a
/// transaction of its own: the generations insert, the shortfall check, the reservation and the enqueue. Kept
/// so the ratio stays comparable with the earlier measurements.
fn intent_only_script(users: usize) -> String {
    format!(
        r#"\set n random(1, {users})
SELECT user_id AS uid, {V7_LIKE} AS gid, {V7_LIKE}::text AS jid FROM loadtest_users WHERE n = :n \gset
BEGIN;
{INTENT}COMMIT;
"#
    )
}

/// `rate_limit::take_in` (the key is spelled `'generations:' || 'user:'`
/// because pgbench would read `:user` inside a literal as a variable). The budget is lifted, so the token is
/// always granted.
const RATE: &str = r#"SELECT pg_advisory_xact_lock(hashtextextended('generations:' || 'user:' || :uid::text, 20261124));
DELETE FROM rate_limit_events WHERE key = 'generations:' || 'user:' || :uid::text AND at <= clock_timestamp() - make_interval(secs => 60);
SELECT count(*), EXTRACT(EPOCH FROM clock_timestamp() - min(at))::float8 FROM rate_limit_events WHERE key = 'generations:' || 'user:' || :uid::text;
INSERT INTO rate_limit_events (key) SELECT 'generations:' || 'user:' || :uid::text FROM generate_series(1, 1);
"#;

/// The generations insert, the shortfall check, the reservation and the enqueue.
const INTENT: &str = r#"INSERT INTO generations (id, user_id, trial_session_hash, prompt, aspect_ratio, resolution, model, reference_upload_ids, credits_reserved, idempotency_key, trace_id, batch_id, variation, variations) VALUES (:gid, :uid, NULL, 'a lighthouse at dawn, load test', 'auto', '1K', 'gpt-image-2-text-to-image', '{}', 10, NULL, md5(random()::text), :gid, 1, 1) ON CONFLICT (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING RETURNING *;
SELECT shortfall > 0 FROM credit_accounts WHERE user_id = :uid;
INSERT INTO credit_ledger (user_id, kind, amount, business_key, detail) SELECT :uid, 'reserve', -10, 'generation:' || :gid, jsonb_build_object('generation', :gid::text) WHERE (SELECT balance FROM credit_accounts WHERE user_id = :uid FOR UPDATE) + -10 >= 0 ON CONFLICT DO NOTHING;
INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, priority, idempotency_key) VALUES (:jid, 'submit_generation', convert_to('{"generation_id":"' || :gid || '"}', 'UTF8'), 'Pending', 0, 8, COALESCE(NULL, now()), 0, 'submit:' || :gid) ON CONFLICT (job_type, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING RETURNING id;
"#;

/// Every statement one `POST /api/v1/generations` (no idempotency key) sends: the API key lookup and request
/// count (`api_requests::take_for_key`, which writes `last_used_at` at most once a minute per key and counts the
/// request in `rate_limit_windows` with an asynchronous commit; its key spelled `'api:' || 'user:'`, as `RATE`'s
/// is, since pgbench reads `:user` inside a literal as a variable), then the one transaction above. The answer is built from the insert's `RETURNING *`; a new generation has no images,
/// so nothing is read after the commit.
fn request_script(users: usize) -> String {
    format!(
        r#"\set n random(1, {users})
SELECT key_hash AS kh, {V7_LIKE} AS gid, {V7_LIKE}::text AS jid FROM loadtest_users WHERE n = :n \gset
WITH key AS (SELECT k.id, k.user_id, k.last_used_at FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.key_hash = :kh AND k.revoked_at IS NULL AND u.deletion_requested_at IS NULL), touched AS (UPDATE api_keys SET last_used_at = now() FROM key WHERE api_keys.id = key.id AND (key.last_used_at IS NULL OR key.last_used_at < now() - interval '1 minute')), counted AS (INSERT INTO rate_limit_windows AS w (key, window_start, count) SELECT 'api:' || 'user:' || key.user_id, to_timestamp(floor(extract(epoch FROM now()) / 60) * 60), 1 FROM key ON CONFLICT (key, window_start) DO UPDATE SET count = w.count + 1 RETURNING w.count, w.window_start), relaxed AS (SELECT set_config('synchronous_commit', 'off', true)) SELECT key.user_id AS uid FROM key, counted, relaxed \gset
BEGIN;
{RATE}{INTENT}COMMIT;
"#
    )
}

fn report(args: &Args, results: &[RunResult]) -> anyhow::Result<()> {
    let spread = |f: &dyn Fn(&RunResult) -> f64| Spread::of(results.iter().map(f));
    let mut rows = Vec::new();
    for (i, clients) in args.concurrency.iter().enumerate() {
        rows.push(Row::new(
            format!("POST /generations, {clients} clients"),
            spread(&|r| r.posts[i].per_second),
            "req/s",
        ));
        rows.push(Row::new(
            format!("  {clients} clients: p50"),
            spread(&|r| r.posts[i].p50_ms),
            "ms",
        ));
        rows.push(Row::new(
            format!("  {clients} clients: p99"),
            spread(&|r| r.posts[i].p99_ms),
            "ms",
        ));
    }
    rows.push(Row::new(
        "POST at half the max rate (open loop)",
        spread(&|r| r.half.per_second),
        "req/s",
    ));
    rows.push(Row::new(
        "  half rate: p50",
        spread(&|r| r.half.p50_ms),
        "ms",
    ));
    rows.push(Row::new(
        "  half rate: p99",
        spread(&|r| r.half.p99_ms),
        "ms",
    ));
    for (i, clients) in args.concurrency.iter().enumerate() {
        rows.push(Row::new(
            format!("pgbench, the transaction, {clients} clients"),
            spread(&|r| r.pgbench[i].tps),
            "tps",
        ));
        rows.push(Row::new(
            format!("  {clients} clients: mean latency"),
            spread(&|r| r.pgbench[i].latency_ms),
            "ms",
        ));
    }
    rows.push(Row::new(
        "pgbench, all SQL of a request (best clients)",
        spread(&|r| r.pgbench_request.tps),
        "tps",
    ));
    rows.push(Row::new(
        "pgbench, transaction without rate token (best)",
        spread(&|r| r.pgbench_intent_only.tps),
        "tps",
    ));
    let api_max = |r: &RunResult| r.posts.iter().map(|s| s.per_second).fold(0.0, f64::max);
    let bench_max = |r: &RunResult| r.pgbench.iter().map(|b| b.tps).fold(f64::NAN, f64::max);
    rows.push(Row::new(
        "api max / pgbench transaction max",
        spread(&|r| 100.0 * api_max(r) / bench_max(r)),
        "%",
    ));
    rows.push(Row::new(
        "api max / pgbench whole-request SQL",
        spread(&|r| 100.0 * api_max(r) / r.pgbench_request.tps),
        "%",
    ));
    rows.push(Row::new(
        "api max / transaction without rate token",
        spread(&|r| 100.0 * api_max(r) / r.pgbench_intent_only.tps),
        "%",
    ));
    rows.push(Row::new(
        format!("GET /generations/{{id}}, {} clients", args.read_concurrency),
        spread(&|r| r.status.per_second),
        "req/s",
    ));
    rows.push(Row::new(
        "  status: p50",
        spread(&|r| r.status.p50_ms),
        "ms",
    ));
    rows.push(Row::new(
        "  status: p99",
        spread(&|r| r.status.p99_ms),
        "ms",
    ));
    rows.push(Row::new(
        format!(
            "GET /generations?limit=20, {} clients",
            args.read_concurrency
        ),
        spread(&|r| r.list.per_second),
        "req/s",
    ));
    rows.push(Row::new("  list: p50", spread(&|r| r.list.p50_ms), "ms"));
    rows.push(Row::new("  list: p99", spread(&|r| r.list.p99_ms), "ms"));
    print_table(&rows);
    let errors: usize = results
        .iter()
        .map(|r| {
            r.posts.iter().map(|s| s.errors).sum::<usize>()
                + r.half.errors
                + r.status.errors
                + r.list.errors
        })
        .sum();
    if errors > 0 {
        println!("  note: {errors} requests answered an unexpected status (not timed)");
    }
    let api = spread(&|r| api_max(r)).median;
    let ceiling = spread(&|r| bench_max(r)).median;
    let ratio = spread(&|r| api_max(r) / bench_max(r)).median;
    let intent_only = spread(&|r| r.pgbench_intent_only.tps).median;
    let ratio_intent_only = spread(&|r| api_max(r) / r.pgbench_intent_only.tps).median;
    let half_p99 = spread(&|r| r.half.p99_ms).median;
    let half_rate = spread(&|r| r.half_rate).median;
    println!("targets:");
    print_verdicts(&[
        (
            format!(
                "intent recording ≥ 50% of pgbench's ceiling for its transaction: {api:.0}/s vs {ceiling:.0} tps = {:.0}%",
                ratio * 100.0
            ),
            verdict(ratio, |v| v >= 0.5),
        ),
        (
            format!(
                "the same against the transaction without the rate token (the earlier ceiling): {api:.0}/s vs {intent_only:.0} tps = {:.0}%",
                ratio_intent_only * 100.0
            ),
            verdict(ratio_intent_only, |v| v >= 0.5),
        ),
        (
            format!("p99 < 50 ms at half the max rate ({half_rate:.0}/s): {half_p99:.1} ms"),
            verdict(half_p99, |v| v < 50.0),
        ),
    ]);
    println!(
        "api: POST {api:.0}/s max ({:.0}% of pgbench's {ceiling:.0} tps; {:.0}% of {intent_only:.0} tps without the rate token); \
         p99 {half_p99:.1} ms at {half_rate:.0}/s; status {:.0}/s p99 {:.1} ms; list {:.0}/s p99 {:.1} ms",
        ratio * 100.0,
        ratio_intent_only * 100.0,
        spread(&|r| r.status.per_second).median,
        spread(&|r| r.status.p99_ms).median,
        spread(&|r| r.list.per_second).median,
        spread(&|r| r.list.p99_ms).median,
    );
    if let Some(path) = &args.json {
        let step_json = |f: &dyn Fn(&RunResult) -> Step| {
            json!({
                "per_second": spread(&|r| f(r).per_second).json(),
                "p50_ms": spread(&|r| f(r).p50_ms).json(),
                "p99_ms": spread(&|r| f(r).p99_ms).json(),
            })
        };
        let posts: Vec<_> = args
            .concurrency
            .iter()
            .enumerate()
            .map(|(i, clients)| {
                json!({"clients": clients, "step": step_json(&|r: &RunResult| r.posts[i])})
            })
            .collect();
        let benches: Vec<_> = args
            .concurrency
            .iter()
            .enumerate()
            .map(|(i, clients)| {
                json!({
                    "clients": clients,
                    "tps": spread(&|r| r.pgbench[i].tps).json(),
                    "latency_ms": spread(&|r| r.pgbench[i].latency_ms).json(),
                })
            })
            .collect();
        let numbers = json!({
            "runs": args.runs, "seconds": args.seconds, "users": args.users,
            "read_concurrency": args.read_concurrency, "api_connections": args.api_connections,
            "post": posts,
            "post_half_rate": {"rate": spread(&|r| r.half_rate).json(), "step": step_json(&|r: &RunResult| r.half)},
            "pgbench_transaction": benches,
            "pgbench_request": {
                "clients": results.first().map(|r| r.pgbench_request_clients),
                "tps": spread(&|r| r.pgbench_request.tps).json(),
                "latency_ms": spread(&|r| r.pgbench_request.latency_ms).json(),
            },
            "pgbench_intent_only": {
                "tps": spread(&|r| r.pgbench_intent_only.tps).json(),
                "latency_ms": spread(&|r| r.pgbench_intent_only.latency_ms).json(),
            },
            "api_over_pgbench": spread(&|r| api_max(r) / bench_max(r)).json(),
            "status": step_json(&|r: &RunResult| r.status),
            "list": step_json(&|r: &RunResult| r.list),
        });
        std::fs::write(path, serde_json::to_string_pretty(&numbers)?)?;
    }
    Ok(())
}
