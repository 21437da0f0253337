//! `loadtest sse`: live status at scale (issue 19, target 3). One api process — this binary re-executed as
//! `loadtest createimage2 api`, the production command line unchanged, so its `VmRSS` is the api's alone —
//! holds `--streams` server-sent-event streams open at once: most are the JSON API's
//! `GET /api/v1/generations/{id}/events` (API keys of `--users` members), the rest the site status page's
//! `GET /generations/{id}/events` (session cookies of `--members` members signed in through the e-mailed link).
//! Each stream watches a generation of its own. Once every stream has its first event, generations move at
//! `--rate` changes per second through `jobs::generations::transition` — the function the worker moves them
//! with, so the notification is the real one — and each change is timed from just before its commit to the
//! moment its watcher reads the event. Meanwhile `--api-clients` clients read `GET /api/v1/generations/{id}`
//! and the list, timed. The clients are tokio tasks in this process (its own open-files limit raised too).
//!
//! Generations cycle queued → submitting → generating → queued (the moves a retry makes), so they never finish
//! and no stream ends during a run.

use std::{
    collections::HashMap,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use futures::StreamExt as _;
use jobs::generations::{self, NewGeneration, Owner, Status};
use rand::Rng as _;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    report::{Row, Spread, percentile, print_table, print_verdicts, verdict},
    stack::{self, Database},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Repetitions (each with a fresh api process); the table shows medians with min–max.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Event streams open at once, each watching a generation of its own.
    #[arg(long, default_value_t = 10_000)]
    streams: usize,
    /// Of them, the site status page's streams (with a member's session cookie); the rest are the JSON API's.
    #[arg(long, default_value_t = 1_000)]
    site_streams: usize,
    /// Members with an API key the JSON API's streams are spread over.
    #[arg(long, default_value_t = 1_000)]
    users: usize,
    /// Members signed in on the site the site's streams are spread over.
    #[arg(long, default_value_t = 10)]
    members: usize,
    /// Status changes per second, across the watched generations.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Seconds of status changes and JSON API requests per run, once every stream is open.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Streams being opened at once while ramping up.
    #[arg(long, default_value_t = 200)]
    open_concurrency: usize,
    /// JSON API clients during the changes (closed loop, status and list in turn).
    #[arg(long, default_value_t = 4)]
    api_clients: usize,
    /// The api's pool size (`DATABASE_MAX_CONNECTIONS`).
    #[arg(long, default_value_t = 20)]
    api_connections: u32,
    /// Also write the numbers as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Who may watch a generation.
#[derive(Debug, Clone, Copy)]
enum Watcher {
    /// A JSON API member, by index into the API keys.
    Key(usize),
    /// A site member, by index into the signed-in browsers.
    Member(usize),
}

#[derive(Debug, Clone, Copy)]
struct Target {
    id: Uuid,
    watcher: Watcher,
}

/// One run's numbers.
#[derive(Debug, Clone, Copy)]
struct RunResult {
    opened: usize,
    failed: usize,
    ended_early: usize,
    ramp_seconds: f64,
    idle_rss_mib: f64,
    peak_rss_mib: f64,
    open_files: f64,
    sse_streams_counted: f64,
    pool_in_use: f64,
    changes: usize,
    changes_per_second: f64,
    delivered: usize,
    delivery_p50_ms: f64,
    delivery_p99_ms: f64,
    delivery_max_ms: f64,
    api_requests: usize,
    api_errors: usize,
    api_p50_ms: f64,
    api_p99_ms: f64,
    api_cpu_percent: f64,
    client_rss_mib: f64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.site_streams <= args.streams,
        "--site-streams is more than --streams"
    );
    // The clients hold one descriptor per stream, like the api.
    let (soft, _) = api::raise_open_files_limit().context("reading the open-files limit")?;
    anyhow::ensure!(
        soft as usize > args.streams + 1000,
        "this process may open {soft} files: too few for {} streams (raise the hard limit: ulimit -Hn)",
        args.streams
    );
    let database = Database::create().await?;
    let result = measure(&args, &database).await;
    database.drop().await?;
    result
}

async fn measure(args: &Args, database: &Database) -> anyhow::Result<()> {
    let pool = database.pool(16)?;
    let ports = (free_port()?, free_port()?);
    eprintln!(
        "sse: {} streams ({} site), {} changes/s for {} s per run, {} runs; load average {}",
        args.streams,
        args.site_streams,
        args.rate,
        args.seconds,
        args.runs,
        stack::load_average()
    );

    // Members and their generations, through the project's own functions (and, for the site's members, the
    // sign-in pages of an api process started for it).
    let users = stack::create_users(&pool, args.users.max(1), 1_000_000).await?;
    let setup = ApiProcess::start(database, ports, args.api_connections).await?;
    let mut browsers = Vec::new();
    let mut member_ids = Vec::new();
    for n in 0..args.members.max(1).min(args.site_streams.max(1)) {
        let email = format!("sse-member-{n}@example.com");
        let browser = sign_in(&setup.base, &pool, &email).await?;
        let id: Uuid = sqlx::query_scalar("SELECT id FROM users WHERE email = $1")
            .bind(&email)
            .fetch_one(&pool)
            .await?;
        let mut tx = pool.begin().await?;
        jobs::credits::apply(
            &mut tx,
            id,
            jobs::credits::Kind::Grant,
            1_000_000,
            &format!("loadtest-sse-grant:{id}"),
            serde_json::Value::Null,
        )
        .await?;
        tx.commit().await?;
        browsers.push(browser);
        member_ids.push(id);
    }
    setup.stop()?;
    let watchers: Vec<Watcher> = (0..args.streams)
        .map(|n| {
            if n < args.site_streams {
                Watcher::Member(n % member_ids.len())
            } else {
                Watcher::Key(n % users.len())
            }
        })
        .collect();
    let started = Instant::now();
    let config = jobs::config::GenerationConfig {
        per_user_per_minute: 100_000_000,
        ..jobs::config::GenerationConfig::default()
    };
    let metrics = jobs::telemetry::Metrics::new("loadtest");
    let targets: Vec<Target> = futures::stream::iter(watchers)
        .map(|watcher| {
            let (pool, config, metrics) = (&pool, &config, &metrics);
            let owner = match watcher {
                Watcher::Key(n) => users[n].id,
                Watcher::Member(n) => member_ids[n],
            };
            async move {
                let created = generations::create(
                    pool,
                    config,
                    metrics,
                    NewGeneration {
                        owner: Owner::User(owner),
                        prompt: "a lighthouse at dawn, watched live",
                        aspect_ratio: None,
                        resolution: None,
                        reference_upload_ids: &[],
                        variations: None,
                        idempotency_key: None,
                    },
                )
                .await
                .map_err(|error| anyhow::anyhow!("recording a generation: {error}"))?;
                anyhow::Ok(Target {
                    id: created[0].id,
                    watcher,
                })
            }
        })
        .buffer_unordered(12)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    eprintln!(
        "recorded {} generations in {:.1} s",
        targets.len(),
        started.elapsed().as_secs_f64()
    );
    let mut statuses: Vec<(Uuid, Status)> =
        targets.iter().map(|t| (t.id, Status::Queued)).collect();
    let keys: Vec<Arc<str>> = users
        .iter()
        .map(|u| Arc::from(u.api_key.as_str()))
        .collect();

    let mut results = Vec::new();
    for run in 1..=args.runs {
        let result = one_run(
            args,
            database,
            ports,
            &pool,
            &targets,
            &keys,
            &browsers,
            &mut statuses,
        )
        .await?;
        eprintln!(
            "run {run}: {} streams open in {:.1} s ({} refused, {} ended early); api RSS {:.0} MiB idle, {:.0} MiB peak; \
             {} open files; delivery p50 {:.1} ms p99 {:.1} ms max {:.1} ms ({} of {} changes); api p99 {:.1} ms ({} requests)",
            result.opened,
            result.ramp_seconds,
            result.failed,
            result.ended_early,
            result.idle_rss_mib,
            result.peak_rss_mib,
            result.open_files,
            result.delivery_p50_ms,
            result.delivery_p99_ms,
            result.delivery_max_ms,
            result.delivered,
            result.changes,
            result.api_p99_ms,
            result.api_requests,
        );
        results.push(result);
    }
    pool.close().await;
    report(args, &results)
}

#[expect(clippy::too_many_arguments)]
async fn one_run(
    args: &Args,
    database: &Database,
    ports: (u16, u16),
    pool: &PgPool,
    targets: &[Target],
    keys: &[Arc<str>],
    browsers: &[testkit::Browser],
    statuses: &mut [(Uuid, Status)],
) -> anyhow::Result<RunResult> {
    let api = ApiProcess::start(database, ports, args.api_connections).await?;
    let idle_rss_mib = rss_mib(api.pid);
    let sampling = CancellationToken::new();
    let sampler = tokio::spawn(sample_rss(api.pid, sampling.clone()));

    // Every stream, opened `--open-concurrency` at a time; a stream counts as open at its first event.
    let streams_client = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        .build()?;
    let ramp = Arc::new(Ramp::default());
    let gate = Arc::new(Semaphore::new(args.open_concurrency.max(1)));
    let stop = CancellationToken::new();
    let ramp_started = Instant::now();
    let mut watches = Vec::with_capacity(targets.len());
    for target in targets {
        let (url, client, key) = match target.watcher {
            Watcher::Key(n) => (
                format!("{}/api/v1/generations/{}/events", api.base, target.id),
                streams_client.clone(),
                Some(keys[n].clone()),
            ),
            Watcher::Member(n) => (
                format!("{}/generations/{}/events", api.base, target.id),
                browsers[n].client().clone(),
                None,
            ),
        };
        watches.push(tokio::spawn(watch(
            client,
            url,
            key,
            gate.clone(),
            ramp.clone(),
            stop.clone(),
        )));
    }
    ramp.wait_for(targets.len(), Duration::from_secs(600)).await;
    let ramp_seconds = ramp_started.elapsed().as_secs_f64();
    let all_open = Instant::now();

    // The window: status changes and JSON API requests.
    let window = Duration::from_secs(args.seconds);
    let cpu_before = crate::stack::process_cpu_seconds(&api.pid.to_string());
    let window_started = Instant::now();
    let readers_client = stack::http_client()?;
    let readers: Vec<_> = (0..args.api_clients)
        .map(|n| {
            tokio::spawn(read_api(
                readers_client.clone(),
                api.base.clone(),
                targets.to_vec(),
                keys.to_vec(),
                n,
                window_started + window,
            ))
        })
        .collect();
    let scrape = {
        let url = api.metrics.clone();
        tokio::spawn(async move {
            tokio::time::sleep(window / 2).await;
            scrape_metrics(&url).await
        })
    };
    let open_files_probe = {
        let pid = api.pid;
        tokio::spawn(async move {
            tokio::time::sleep(window / 2).await;
            open_files(pid)
        })
    };
    let sends = progress(pool, statuses, args.rate, window).await;
    let changes_per_second = sends.len() as f64 / window_started.elapsed().as_secs_f64();
    // The last changes' events are on their way.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let api_cpu_percent = (crate::stack::process_cpu_seconds(&api.pid.to_string()) - cpu_before)
        / window_started.elapsed().as_secs_f64()
        * 100.0;
    let client_rss_mib = stack::rss_mib();
    sampling.cancel();
    let samples = sampler.await?;
    stop.cancel();
    let mut seen = Vec::new();
    let (mut failed, mut ended_early) = (0, 0);
    for watch in watches {
        match watch.await? {
            Ok(outcome) => {
                ended_early += usize::from(outcome.ended_early);
                seen.extend(outcome.seen);
            }
            Err(_) => failed += 1,
        }
    }
    let (mut api_latencies, mut api_errors) = (Vec::new(), 0);
    for reader in readers {
        let (latencies, errors) = reader.await?;
        api_latencies.extend(latencies);
        api_errors += errors;
    }
    let (sse_streams_counted, pool_in_use) = scrape.await?.unwrap_or((f64::NAN, f64::NAN));
    let open_files = open_files_probe.await?;
    api.stop()?;

    let peak_rss_mib = samples
        .iter()
        .filter(|(at, _)| *at >= all_open)
        .map(|(_, mib)| *mib)
        .fold(f64::NAN, f64::max);
    let delays = delivery_delays(&sends, &seen);
    Ok(RunResult {
        opened: ramp.opened.load(Ordering::Relaxed),
        failed,
        ended_early,
        ramp_seconds,
        idle_rss_mib,
        peak_rss_mib,
        open_files,
        sse_streams_counted,
        pool_in_use,
        changes: sends.len(),
        changes_per_second,
        delivered: delays.len(),
        delivery_p50_ms: percentile(&delays, 0.5),
        delivery_p99_ms: percentile(&delays, 0.99),
        delivery_max_ms: delays.iter().copied().fold(f64::NAN, f64::max),
        api_requests: api_latencies.len(),
        api_errors,
        api_p50_ms: percentile(&api_latencies, 0.5),
        api_p99_ms: percentile(&api_latencies, 0.99),
        api_cpu_percent,
        client_rss_mib,
    })
}

/// How many streams have their first event (or were refused); wakes the ramp's waiter.
#[derive(Default)]
struct Ramp {
    opened: AtomicUsize,
    failed: AtomicUsize,
    changed: Notify,
}

impl Ramp {
    fn opened(&self) {
        self.opened.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_one();
    }

    fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_one();
    }

    async fn wait_for(&self, total: usize, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        let mut reported = Instant::now();
        loop {
            let (opened, failed) = (
                self.opened.load(Ordering::Relaxed),
                self.failed.load(Ordering::Relaxed),
            );
            if opened + failed >= total {
                return;
            }
            if reported.elapsed() > Duration::from_secs(10) {
                eprintln!("  {opened} of {total} streams open, {failed} refused");
                reported = Instant::now();
            }
            if tokio::time::timeout_at(deadline, self.changed.notified())
                .await
                .is_err()
            {
                eprintln!("  gave up waiting: {opened} of {total} streams open");
                return;
            }
        }
    }
}

/// What one stream saw after its first event: each status change and when it was read.
struct Outcome {
    seen: Vec<(Uuid, Status, Instant)>,
    /// The server ended the stream before the run did.
    ended_early: bool,
}

#[derive(serde::Deserialize)]
struct WireEvent {
    id: Uuid,
    status: Status,
}

/// Opens one stream and reads it until `stop`. The gate's permit is held until the first event.
async fn watch(
    client: reqwest::Client,
    url: String,
    key: Option<Arc<str>>,
    gate: Arc<Semaphore>,
    ramp: Arc<Ramp>,
    stop: CancellationToken,
) -> Result<Outcome, ()> {
    let mut permit = Some(gate.acquire_owned().await.map_err(drop)?);
    let mut request = client.get(url);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = tokio::select! {
        () = stop.cancelled() => None,
        response = request.send() => Some(response),
    };
    let mut response = match response {
        None => {
            ramp.failed();
            return Err(());
        }
        Some(Ok(response)) if response.status().is_success() => response,
        Some(Ok(response)) => {
            eprintln!("  a stream was refused: {}", response.status());
            ramp.failed();
            return Err(());
        }
        Some(Err(error)) => {
            eprintln!("  a stream failed to open: {error}");
            ramp.failed();
            return Err(());
        }
    };
    let (mut seen, mut buffer, mut first) = (Vec::new(), Vec::new(), true);
    let ended_early = loop {
        let chunk = tokio::select! {
            () = stop.cancelled() => break false,
            chunk = response.chunk() => chunk,
        };
        let received = Instant::now();
        match chunk {
            Ok(Some(bytes)) => buffer.extend_from_slice(&bytes),
            Ok(None) | Err(_) => break true,
        }
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            if let Some(data) = buffer[..end].strip_prefix(b"data: ")
                && let Ok(event) = serde_json::from_slice::<WireEvent>(data)
            {
                if first {
                    first = false;
                    permit.take();
                    ramp.opened();
                } else {
                    seen.push((event.id, event.status, received));
                }
            }
            buffer.drain(..=end);
        }
    };
    if first {
        ramp.failed();
        return Err(());
    }
    Ok(Outcome { seen, ended_early })
}

/// Moves random generations at `rate` per second for `duration`, each in a transaction of its own through
/// `jobs::generations::transition`; returns each change with the time just before its commit.
async fn progress(
    pool: &PgPool,
    statuses: &mut [(Uuid, Status)],
    rate: f64,
    duration: Duration,
) -> Vec<(Uuid, Status, Instant)> {
    let sends = Arc::new(Mutex::new(Vec::new()));
    let in_flight = Arc::new(Semaphore::new(32));
    // Generations with a change in flight are not picked again until it commits: a second change could
    // otherwise run first and find the row not yet moved.
    let moving = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.001)));
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    while Instant::now() < deadline {
        ticks.tick().await;
        let index = loop {
            let index = rand::rng().random_range(0..statuses.len());
            if lock(&moving).insert(index) {
                break index;
            }
        };
        let (id, from) = statuses[index];
        let to = match from {
            Status::Queued => Status::Submitting,
            Status::Submitting => Status::Generating,
            _ => Status::Queued,
        };
        statuses[index].1 = to;
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let (pool, sends, moving) = (pool.clone(), sends.clone(), moving.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let moved = async {
                let mut tx = pool.begin().await?;
                let moved = generations::transition(&mut tx, id, &[from], to).await?;
                let at = Instant::now();
                tx.commit().await?;
                anyhow::Ok(moved.then_some(at))
            };
            let moved = moved.await;
            lock(&moving).remove(&index);
            match moved {
                Ok(Some(at)) => lock(&sends).push((id, to, at)),
                Ok(None) => eprintln!("  {id} did not move from {from} to {to}"),
                Err(error) => eprintln!("  a status change failed: {error:#}"),
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    std::mem::take(&mut *lock(&sends))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Milliseconds from each change's commit to its watcher's read: a received event is matched to the latest
/// change of that generation to that status sent before it was read (a generation comes back to a status
/// only after two more changes, which at these rates are seconds apart).
fn delivery_delays(
    sends: &[(Uuid, Status, Instant)],
    seen: &[(Uuid, Status, Instant)],
) -> Vec<f64> {
    let mut by_change: HashMap<(Uuid, Status), Vec<Instant>> = HashMap::new();
    for &(id, status, at) in sends {
        by_change.entry((id, status)).or_default().push(at);
    }
    for times in by_change.values_mut() {
        times.sort();
    }
    seen.iter()
        .filter_map(|&(id, status, read)| {
            let times = by_change.get(&(id, status))?;
            let before = times.partition_point(|sent| *sent <= read);
            let sent = times.get(before.checked_sub(1)?)?;
            Some((read - *sent).as_secs_f64() * 1000.0)
        })
        .collect()
}

/// One JSON API client until `deadline`: a generation's status and a member's list in turn. Returns the
/// latencies (ms) of the successful requests and the count of the others.
async fn read_api(
    client: reqwest::Client,
    base: String,
    targets: Vec<Target>,
    keys: Vec<Arc<str>>,
    seed: usize,
    deadline: Instant,
) -> (Vec<f64>, usize) {
    let api_targets: Vec<(Uuid, usize)> = targets
        .iter()
        .filter_map(|t| match t.watcher {
            Watcher::Key(n) => Some((t.id, n)),
            Watcher::Member(_) => None,
        })
        .collect();
    let (mut latencies, mut errors) = (Vec::new(), 0);
    let mut list = seed % 2 == 1;
    while Instant::now() < deadline && !api_targets.is_empty() {
        let (id, key) = api_targets[rand::rng().random_range(0..api_targets.len())];
        let url = if list {
            format!("{base}/api/v1/generations?limit=20")
        } else {
            format!("{base}/api/v1/generations/{id}")
        };
        list = !list;
        let sent = Instant::now();
        let answered = async {
            let response = client.get(url).bearer_auth(&keys[key]).send().await?;
            let ok = response.status().is_success();
            response.bytes().await?;
            anyhow::Ok(ok)
        };
        match answered.await {
            Ok(true) => latencies.push(sent.elapsed().as_secs_f64() * 1000.0),
            _ => errors += 1,
        }
    }
    (latencies, errors)
}

/// Signs `email` in through the site's pages and the e-mailed link (read from the outbox), as
/// `testkit::TestApp::sign_in` does; the browser then holds a member session.
async fn sign_in(base: &str, pool: &PgPool, email: &str) -> anyhow::Result<testkit::Browser> {
    let browser = testkit::Browser::new(base);
    let form = browser.visit("/sign-in").await;
    let sent = browser
        .submit(
            "/sign-in/email",
            &[("csrf", &form.csrf()), ("email", email)],
        )
        .await;
    anyhow::ensure!(
        sent.contains("Check your e-mail"),
        "the sign-in form answered {}",
        sent.status
    );
    let mails = jobs::email::sent_to(pool, email).await?;
    let mail = mails.last().context("no sign-in e-mail was queued")?;
    let link = testkit::find_link(&mail.body_text, &format!("{base}/sign-in/link"))
        .context("the e-mail holds no sign-in link")?;
    let landing = browser.visit(&link).await;
    let token = landing
        .field("token")
        .context("the landing page carries no token")?;
    let next = landing.field("next").unwrap_or_else(|| "/".into());
    let home = browser
        .submit(
            "/sign-in/link",
            &[
                ("csrf", &landing.csrf()),
                ("token", &token),
                ("next", &next),
            ],
        )
        .await;
    anyhow::ensure!(home.status == 200, "signing in answered {}", home.status);
    Ok(browser)
}

/// The api as a process of its own: `loadtest createimage2 api` with its configuration in the environment.
struct ApiProcess {
    child: Child,
    pid: u32,
    /// `http://127.0.0.1:PORT`.
    base: String,
    /// Its `/metrics`.
    metrics: String,
}

impl ApiProcess {
    async fn start(
        database: &Database,
        (port, metrics_port): (u16, u16),
        connections: u32,
    ) -> anyhow::Result<Self> {
        let base = format!("http://127.0.0.1:{port}");
        let exe = std::env::current_exe().context("locating this binary")?;
        let child = Command::new(exe)
            .arg("createimage2")
            .arg("api")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &database.url)
            .env("DATABASE_MAX_CONNECTIONS", connections.to_string())
            .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("METRICS_LISTEN_ADDR", format!("127.0.0.1:{metrics_port}"))
            .env("PUBLIC_BASE_URL", &base)
            // Unused: no request of this benchmark reaches the object store or kie.ai.
            .env("S3_ENDPOINT", "http://127.0.0.1:9")
            .env("S3_BUCKET", "loadtest")
            .env("S3_ACCESS_KEY_ID", "loadtest")
            .env("S3_SECRET_ACCESS_KEY", "loadtest")
            .env("KIE_API_KEY", "loadtest")
            // Signing the site's members in from one address.
            .env("SIGN_IN_EMAILS_PER_CLIENT_PER_HOUR", "10000")
            .env("DRAIN_READINESS_SECONDS", "0")
            .env("HTTP_SHUTDOWN_GRACE_SECONDS", "2")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .context("starting the api process")?;
        let pid = child.id();
        let process = Self {
            child,
            pid,
            metrics: format!("http://127.0.0.1:{metrics_port}/metrics"),
            base,
        };
        let client = stack::http_client()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(response) = client.get(format!("{}/healthz", process.base)).send().await
                && response.status().is_success()
            {
                return Ok(process);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the api process did not answer /healthz"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM (the production drain, here without a readiness window), then waits for it.
    fn stop(mut self) -> anyhow::Result<()> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A port free right now on 127.0.0.1 (the api processes of every run bind it, so the site's members' session
/// cookies stay valid from one to the next).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `VmRSS` of `pid` in MiB, NaN if unreadable.
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix("VmRSS:")
                    .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            })
        })
        .map_or(f64::NAN, |kib: f64| kib / 1024.0)
}

/// Samples `rss_mib(pid)` every 100 ms until `stop`.
async fn sample_rss(pid: u32, stop: CancellationToken) -> Vec<(Instant, f64)> {
    let mut samples = Vec::new();
    let mut every = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            () = stop.cancelled() => {
                samples.push((Instant::now(), rss_mib(pid)));
                return samples;
            }
            _ = every.tick() => samples.push((Instant::now(), rss_mib(pid))),
        }
    }
}

/// Descriptors `pid` has open.
fn open_files(pid: u32) -> f64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(f64::NAN, |dir| dir.count() as f64)
}

/// The api's own count of open streams (`createimage2_sse_streams`, all routes) and its query pool's
/// connections in use.
async fn scrape_metrics(url: &str) -> Option<(f64, f64)> {
    let text = reqwest::get(url).await.ok()?.text().await.ok()?;
    let value = |line: &str| {
        line.rsplit_once(' ')
            .and_then(|(_, v)| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let streams = text
        .lines()
        .filter(|line| line.starts_with("createimage2_sse_streams{"))
        .map(value)
        .sum();
    let in_use = text
        .lines()
        .filter(|line| {
            line.starts_with("createimage2_db_pool_connections{") && line.contains("in_use")
        })
        .map(value)
        .sum();
    Some((streams, in_use))
}

fn report(args: &Args, results: &[RunResult]) -> anyhow::Result<()> {
    let spread = |f: &dyn Fn(&RunResult) -> f64| Spread::of(results.iter().map(f));
    let per_stream_kib =
        |r: &RunResult| (r.peak_rss_mib - r.idle_rss_mib) * 1024.0 / (r.opened.max(1) as f64);
    let rows = [
        Row::new("streams open", spread(&|r| r.opened as f64), ""),
        Row::new("streams refused", spread(&|r| r.failed as f64), ""),
        Row::new("streams ended early", spread(&|r| r.ended_early as f64), ""),
        Row::new("ramp to all open", spread(&|r| r.ramp_seconds), "s"),
        Row::new("api RSS idle", spread(&|r| r.idle_rss_mib), "MiB"),
        Row::new("api RSS peak, all open", spread(&|r| r.peak_rss_mib), "MiB"),
        Row::new("api RSS per stream", spread(&per_stream_kib), "KiB"),
        Row::new("api open files", spread(&|r| r.open_files), ""),
        Row::new(
            "api's sse_streams gauge",
            spread(&|r| r.sse_streams_counted),
            "",
        ),
        Row::new("api pool in use", spread(&|r| r.pool_in_use), ""),
        Row::new("status changes", spread(&|r| r.changes as f64), ""),
        Row::new("status changes/s", spread(&|r| r.changes_per_second), "/s"),
        Row::new("changes delivered", spread(&|r| r.delivered as f64), ""),
        Row::new("delivery p50", spread(&|r| r.delivery_p50_ms), "ms"),
        Row::new("delivery p99", spread(&|r| r.delivery_p99_ms), "ms"),
        Row::new("delivery max", spread(&|r| r.delivery_max_ms), "ms"),
        Row::new("JSON API requests", spread(&|r| r.api_requests as f64), ""),
        Row::new("JSON API errors", spread(&|r| r.api_errors as f64), ""),
        Row::new("JSON API p50", spread(&|r| r.api_p50_ms), "ms"),
        Row::new("JSON API p99", spread(&|r| r.api_p99_ms), "ms"),
        Row::new("api CPU in the window", spread(&|r| r.api_cpu_percent), "%"),
        Row::new("client RSS", spread(&|r| r.client_rss_mib), "MiB"),
    ];
    print_table(&rows);
    let opened = spread(&|r| r.opened as f64).median;
    let rss = spread(&|r| r.peak_rss_mib).median;
    let delivery = spread(&|r| r.delivery_p99_ms).median;
    let api_p99 = spread(&|r| r.api_p99_ms).median;
    let lost = results
        .iter()
        .map(|r| r.changes.saturating_sub(r.delivered))
        .sum::<usize>();
    println!("targets (issue 19, target 3):");
    print_verdicts(&[
        (
            format!("{} streams open at once: {opened:.0}", args.streams),
            verdict(opened, |v| v >= args.streams as f64),
        ),
        (
            format!("api RSS < 300 MB with every stream open: {rss:.0} MiB"),
            verdict(rss, |v| v * 1.048_576 < 300.0),
        ),
        (
            format!("status change to client p99 < 100 ms: {delivery:.1} ms"),
            verdict(delivery, |v| v < 100.0),
        ),
        (
            format!("JSON API p99 < 50 ms meanwhile: {api_p99:.1} ms"),
            verdict(api_p99, |v| v < 50.0),
        ),
        (
            format!("every change reaches its watcher: {lost} lost over all runs"),
            Some(lost == 0),
        ),
    ]);
    if let Some(path) = &args.json {
        let numbers = json!({
            "runs": args.runs, "streams": args.streams, "site_streams": args.site_streams,
            "rate": args.rate, "seconds": args.seconds,
            "opened": spread(&|r| r.opened as f64).json(),
            "ramp_seconds": spread(&|r| r.ramp_seconds).json(),
            "rss_idle_mib": spread(&|r| r.idle_rss_mib).json(),
            "rss_peak_mib": spread(&|r| r.peak_rss_mib).json(),
            "rss_per_stream_kib": spread(&per_stream_kib).json(),
            "open_files": spread(&|r| r.open_files).json(),
            "changes_per_second": spread(&|r| r.changes_per_second).json(),
            "delivery_p50_ms": spread(&|r| r.delivery_p50_ms).json(),
            "delivery_p99_ms": spread(&|r| r.delivery_p99_ms).json(),
            "delivery_max_ms": spread(&|r| r.delivery_max_ms).json(),
            "api_p50_ms": spread(&|r| r.api_p50_ms).json(),
            "api_p99_ms": spread(&|r| r.api_p99_ms).json(),
            "api_cpu_percent": spread(&|r| r.api_cpu_percent).json(),
            "lost": lost,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&numbers)?)?;
    }
    println!(
        "sse: {opened:.0} streams, RSS {:.0} MB, delivery p99 {delivery:.1} ms, api p99 {api_p99:.1} ms",
        rss * 1.048_576
    );
    Ok(())
}
