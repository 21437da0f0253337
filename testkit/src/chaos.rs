//! The chaos audit, shared by the CI test (a few hundred generations) and `loadtest chaos` (thousands).
//!
//! Load goes through the real api while the harness SIGKILLs worker *processes* at random moments and starts new
//! ones, restarts Postgres once (when the plan brings a server it may restart), and has the stand-ins inject
//! faults: kie.ai answers 5xx and 429, loses createTask answers, garbles recordInfo, answers after the client's
//! timeout, refuses prompts, duplicates and then loses callbacks; Stripe delivers every webhook twice, except one purchase's, which it never
//! delivers, so only the reconciliation job can grant it. Then an audit of every generation and every credit,
//! collected as violations rather than panics, so a long run reports all of them.

use jobs::generations::Status;
use std::{
    collections::{HashMap, HashSet},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use fakes::{
    kie::CallbackMode,
    stripe::{DISPUTE_CARD, DeliveryFaults, DisputeClose},
};
use rand::Rng as _;
use serde_json::json;
use sqlx::PgPool;

use crate::{TestApp, TestUser};

/// Builds the command that runs the production binary's entry point; the harness adds `worker …` and the
/// environment. For the CI test, `createimage2` itself; for `loadtest`, its pass-through subcommand.
pub type WorkerCommand = Box<dyn Fn() -> Command + Send + Sync>;

/// A Postgres server the harness may restart: its admin URL and how to restart it (blocking).
pub struct RestartablePostgres {
    pub admin_url: String,
    pub restart: Box<dyn Fn() -> anyhow::Result<()> + Send + Sync>,
}

/// What to do to the stack.
pub struct ChaosPlan {
    /// Generations requested through `POST /api/v1/generations`.
    pub generations: usize,
    /// Users they are spread over; each also buys one credit pack.
    pub users: usize,
    /// Worker processes alive at any time.
    pub workers: usize,
    /// SIGKILLs, one every `kill_every`, each followed by a fresh worker.
    pub kills: usize,
    pub kill_every: Duration,
    /// Requests per second (an open loop; a refused or failed request is retried with its idempotency key).
    pub post_rate: f64,
    /// kie's createTask limit per 10 s: the stand-in enforces it and the fleet's budget is set to it.
    pub kie_limit: u32,
    pub worker_command: WorkerCommand,
    /// Restarted once, a third of the way through the kills. `None`: the shared test server, never restarted.
    pub postgres: Option<RestartablePostgres>,
    /// Give up (a violation) if the work has not settled by then.
    pub deadline: Duration,
    /// Seeds the run's random choices: which worker each kill hits, and the kie stand-in's latency draws.
    /// [`seed_from_env`] gives one; the report prints it, and the same seed repeats the same choices (the
    /// interleaving of tasks and processes still varies from run to run).
    pub seed: u64,
}

/// The variable that fixes a chaos run's seed (`scripts/stress-tests` sets it and reports it with a failure).
pub const SEED_VARIABLE: &str = "CI2_TEST_SEED";

/// The seed in [`SEED_VARIABLE`], or a fresh one; printed either way so a failing run can be repeated.
pub fn seed_from_env() -> u64 {
    let seed = std::env::var(SEED_VARIABLE)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("chaos seed: {seed} (repeat with {SEED_VARIABLE}={seed})");
    seed
}

/// What happened, and every broken promise found by the audit.
#[derive(Debug, Default)]
pub struct ChaosReport {
    /// The plan's seed.
    pub seed: u64,
    pub generations: usize,
    pub succeeded: usize,
    pub failed_refunded: usize,
    pub kills: usize,
    pub postgres_restarts: usize,
    pub requests_retried: usize,
    pub upstream_tasks: u64,
    /// kie answers held back past the workers' timeout.
    pub stalled_answers: u64,
    pub callbacks_sent: u64,
    pub max_creates_in_window: u32,
    pub kie_limit: u32,
    pub purchases: usize,
    /// Purchases refunded (half) from the Stripe side while the workers die.
    pub refunds: usize,
    /// Purchases paid with Stripe's dispute test card, their disputes closed won or lost at once.
    pub disputes: usize,
    /// Reconciliation runs enqueued (the first purchase's webhooks are all dropped).
    pub reconciliations: usize,
    pub dead_jobs: i64,
    pub elapsed: Duration,
    pub violations: Vec<String>,
}

impl ChaosReport {
    /// A human-readable table of the run and the audit.
    pub fn table(&self) -> String {
        let rows: [(&str, String); 16] = [
            ("generations requested", self.generations.to_string()),
            (
                "  succeeded (image in the bucket)",
                self.succeeded.to_string(),
            ),
            (
                "  failed, reservation refunded",
                self.failed_refunded.to_string(),
            ),
            ("worker processes SIGKILLed", self.kills.to_string()),
            ("Postgres restarts", self.postgres_restarts.to_string()),
            (
                "requests retried by clients",
                self.requests_retried.to_string(),
            ),
            ("upstream tasks created", self.upstream_tasks.to_string()),
            (
                "callbacks sent (duplicated, then lost)",
                self.callbacks_sent.to_string(),
            ),
            (
                "kie answers after the timeout",
                self.stalled_answers.to_string(),
            ),
            (
                "most createTask in any 10 s",
                format!("{} (limit {})", self.max_creates_in_window, self.kie_limit),
            ),
            (
                "credit packs bought (webhooks doubled)",
                self.purchases.to_string(),
            ),
            ("  of them refunded by half", self.refunds.to_string()),
            (
                "  of them disputed (closed won or lost)",
                self.disputes.to_string(),
            ),
            (
                "reconciliation runs enqueued",
                self.reconciliations.to_string(),
            ),
            ("dead jobs (kept for operators)", self.dead_jobs.to_string()),
            ("wall time", format!("{:.1} s", self.elapsed.as_secs_f64())),
        ];
        let mut out = String::new();
        for (name, value) in rows {
            out.push_str(&format!("{name:<42} {value}\n"));
        }
        out.push_str(&format!(
            "{:<42} {}\n",
            "audit violations",
            self.violations.len()
        ));
        for violation in &self.violations {
            out.push_str(&format!("  VIOLATION: {violation}\n"));
        }
        out
    }

    /// The one closing line.
    pub fn summary(&self) -> String {
        format!(
            "chaos: {} generations ({} succeeded, {} failed and refunded), {} worker kills, {} Postgres restart(s), \
             {} purchases ({} refunded, {} disputed); {} violations (seed {})",
            self.generations,
            self.succeeded,
            self.failed_refunded,
            self.kills,
            self.postgres_restarts,
            self.purchases,
            self.refunds,
            self.disputes,
            self.violations.len(),
            self.seed
        )
    }
}

/// The stack for a plan: api and stand-ins in this process, no worker in it (the plan's processes are the fleet),
/// the database on the plan's restartable server if it has one, and the per-user request limit lifted (the load
/// is a few users' worth of thousands of requests).
pub async fn app(plan: &ChaosPlan) -> TestApp {
    let mut builder =
        TestApp::builder()
            .without_worker()
            .generation_config(jobs::config::GenerationConfig {
                per_user_per_minute: 100_000,
                ..jobs::config::GenerationConfig::default()
            });
    if let Some(postgres) = &plan.postgres {
        builder = builder.database_server(&postgres.admin_url);
    }
    let seed = plan.seed;
    builder.kie(|kie| kie.seed = Some(seed)).spawn().await
}

/// Runs the plan against `app` (made by [`app`]) and audits the outcome. The app is left running; the caller
/// finishes it.
pub async fn run(app: &TestApp, plan: ChaosPlan) -> ChaosReport {
    let started = Instant::now();
    let mut report = ChaosReport {
        generations: plan.generations,
        kie_limit: plan.kie_limit,
        seed: plan.seed,
        ..ChaosReport::default()
    };
    let mut rng: rand::rngs::StdRng = rand::SeedableRng::seed_from_u64(plan.seed);
    app.kie.update(|k| {
        k.create_limit = Some((plan.kie_limit, Duration::from_secs(10)));
        k.record_info_limit = Some((50, Duration::from_secs(1)));
        k.latency = (Duration::from_millis(200), Duration::from_millis(1500));
        k.callbacks = CallbackMode::Duplicated;
        k.stall = KIE_STALL;
    });
    arm_upstream_faults(app);
    let spawn = |plan: &ChaosPlan| spawn_worker(app, plan);
    let mut workers: Vec<Child> = (0..plan.workers).map(|_| spawn(&plan)).collect();

    let mut users = Vec::with_capacity(plan.users);
    for _ in 0..plan.users {
        users.push(app.create_user(1_000_000).await);
    }
    let users = Arc::new(users);

    // Purchases while the workers die: one pack per user, every webhook delivered twice; the first purchase's
    // events are never delivered at all (only reconciliation can grant it).
    let doubled = DeliveryFaults {
        duplicate: true,
        ..Default::default()
    };
    app.stripe.set_delivery(doubled.clone());
    let pack = jobs::config::SiteConfig::default().packs[0].clone();
    for user in users.iter() {
        jobs::checkout::record_intent(
            &app.pool,
            user.id,
            jobs::checkout::IntentKind::Pack,
            Some(&pack),
        )
        .await
        .expect("recording a checkout intent");
    }

    let retried = Arc::new(AtomicUsize::new(0));
    let posting = tokio::spawn(post_generations(
        app.client.clone(),
        app.url("/api/v1/generations"),
        users.clone(),
        plan.generations,
        plan.post_rate,
        retried.clone(),
    ));

    let mut paid = HashSet::new();
    let mut fates = HashMap::new();
    let mut last_kill = Instant::now();
    let mut last_reconcile: Option<Instant> = None;
    let restart_at = (plan.kills / 3).max(1);
    let mut posting = Some(posting);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Ok(ready) = sqlx::query_scalar::<_, String>(
            "SELECT stripe_session_id FROM checkout_intents WHERE status = 'ready'",
        )
        .fetch_all(&app.pool)
        .await
        {
            for session in ready {
                if paid.contains(&session) {
                    continue;
                }
                if paid.is_empty() {
                    app.stripe.set_delivery(DeliveryFaults {
                        drop_next: usize::MAX,
                        ..doubled.clone()
                    });
                }
                let fate = Fate::of(paid.len());
                let result = match fate {
                    Fate::DisputeWon | Fate::DisputeLost => {
                        app.stripe.pay_session_with_card(&session, DISPUTE_CARD)
                    }
                    Fate::Kept | Fate::RefundedHalf => app.stripe.pay_session(&session),
                };
                app.stripe.set_delivery(doubled.clone());
                if result.is_ok() {
                    if let Err(error) = befall(app, &session, fate) {
                        report.violations.push(format!(
                            "the stand-in refused {fate:?} of {session}: {error:#}"
                        ));
                    }
                    match fate {
                        Fate::RefundedHalf => report.refunds += 1,
                        Fate::DisputeWon | Fate::DisputeLost => report.disputes += 1,
                        Fate::Kept => {}
                    }
                    fates.insert(session.clone(), fate);
                    paid.insert(session);
                }
            }
        }

        if report.kills < plan.kills && last_kill.elapsed() >= plan.kill_every {
            last_kill = Instant::now();
            let victim = rng.random_range(0..workers.len());
            let _ = workers[victim].kill(); // SIGKILL
            let _ = workers[victim].wait();
            workers[victim] = spawn(&plan);
            report.kills += 1;
            arm_upstream_faults(app);
            if report.kills == plan.kills.div_ceil(2) {
                app.kie.update(|k| k.callbacks = CallbackMode::Lost);
            }
            if report.kills == restart_at
                && let Some(postgres) = &plan.postgres
            {
                match (postgres.restart)() {
                    Ok(()) => report.postgres_restarts += 1,
                    Err(error) => report
                        .violations
                        .push(format!("Postgres did not restart: {error:#}")),
                }
            }
        }

        let posted = match &posting {
            Some(task) if task.is_finished() => {
                let task = posting.take().expect("checked");
                if let Err(errors) = task.await.expect("the posting task does not panic") {
                    report.violations.extend(errors);
                }
                true
            }
            Some(_) => false,
            None => true,
        };
        if posted && report.kills >= plan.kills {
            let unfinished = count(
                &app.pool,
                "SELECT (SELECT count(*) FROM generations WHERE finished_at IS NULL)
                      + (SELECT count(*) FROM stripe_events WHERE processed_at IS NULL)",
            )
            .await;
            let payments = count(&app.pool, "SELECT count(*) FROM payments").await;
            if unfinished == Some(0) && paid.len() == plan.users {
                if payments == Some(plan.users as i64) {
                    app.stripe.wait_for_deliveries().await;
                    let late = count(
                        &app.pool,
                        "SELECT count(*) FROM stripe_events WHERE processed_at IS NULL",
                    )
                    .await;
                    if late == Some(0) {
                        break;
                    }
                } else if last_reconcile.is_none_or(|at| at.elapsed() > Duration::from_secs(5)) {
                    // What the scheduler does every 15 minutes: recover webhooks that never arrived.
                    app.stripe.wait_for_deliveries().await;
                    if queue::enqueue(&app.pool, &jobs::kinds::ReconcileStripeEvents {})
                        .await
                        .is_ok()
                    {
                        report.reconciliations += 1;
                        last_reconcile = Some(Instant::now());
                    }
                }
            }
        }
        if started.elapsed() > plan.deadline {
            let unfinished = count(
                &app.pool,
                "SELECT count(*) FROM generations WHERE finished_at IS NULL",
            )
            .await;
            report.violations.push(format!(
                "not settled after {:?}: {unfinished:?} generations unfinished, {} of {} purchases paid",
                plan.deadline,
                paid.len(),
                plan.users
            ));
            if let Some(task) = posting.take() {
                task.abort();
            }
            break;
        }
    }
    for worker in &mut workers {
        stop_gracefully(worker);
    }
    report.requests_retried = retried.load(Ordering::Relaxed);
    report.purchases = paid.len();
    let stats = app.kie.stats();
    report.upstream_tasks = stats.tasks_created;
    report.stalled_answers = stats.stalled_answers;
    report.callbacks_sent = stats.callbacks_sent;
    report.max_creates_in_window = stats.max_creates_in_window;
    audit(app, &plan, &users, pack.credits, &mut report).await;
    audit_fates(app, &fates, &pack, &mut report.violations).await;
    report.elapsed = started.elapsed();
    report
}

/// kie.ai's faults for the next stretch: a few 5xx and 429 answers, lost createTask answers, garbled recordInfo,
/// and answers that come after the workers' timeout ([`KIE_TIMEOUT_SECONDS`] against [`KIE_STALL`]).
fn arm_upstream_faults(app: &TestApp) {
    app.kie.update(|k| {
        k.fail_creates += 3;
        k.rate_limit_creates += 3;
        k.lose_create_responses += 2;
        k.malformed_record_info += 3;
        k.stall_creates += 1;
        k.stall_record_infos += 2;
    });
}

/// The worker processes' kie request timeout in a chaos run (production's is 30 s).
const KIE_TIMEOUT_SECONDS: u64 = 2;
/// How long a stalled kie answer takes: past [`KIE_TIMEOUT_SECONDS`].
const KIE_STALL: Duration = Duration::from_secs(4);

fn spawn_worker(app: &TestApp, plan: &ChaosPlan) -> Child {
    let mut command = (plan.worker_command)();
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &app.db.url)
        .env("DATABASE_MAX_CONNECTIONS", "10")
        .env("S3_ENDPOINT", app.s3_endpoint())
        .env("S3_BUCKET", "test-bucket")
        .env("S3_ACCESS_KEY_ID", "testkey")
        .env("S3_SECRET_ACCESS_KEY", "testsecret")
        .env("KIE_BASE_URL", app.kie.base_url())
        .env("KIE_API_KEY", "test-kie-key")
        .env("KIE_WEBHOOK_HMAC_KEY", crate::KIE_HMAC_KEY)
        .env("KIE_CREATE_TASKS_PER_WINDOW", plan.kie_limit.to_string())
        .env("KIE_CREATE_WINDOW_MS", "10500")
        .env("KIE_RECORD_INFO_PER_SECOND", "50")
        .env("KIE_TIMEOUT_SECONDS", KIE_TIMEOUT_SECONDS.to_string())
        .env("STRIPE_SECRET_KEY", crate::STRIPE_SECRET_KEY)
        .env("STRIPE_API_BASE", app.stripe.base_url())
        .env("PUBLIC_BASE_URL", format!("http://{}", app.api_addr))
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("METRICS_LISTEN_ADDR", "127.0.0.1:0")
        .env("QUEUE_HEARTBEAT_SECONDS", "1")
        .env("QUEUE_DEAD_WORKER_SECONDS", "3")
        .env("QUEUE_POLL_INTERVAL_MS", "500")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .args([
            "worker",
            "--queues",
            "all",
            "--concurrency",
            "poll_generation=50,submit_generation=20,store_generation=20",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting a worker process")
}

/// SIGTERM, then SIGKILL if the worker has not drained within 60 s.
fn stop_gracefully(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Requests `n` generations at `rate` per second, each retried with its idempotency key until the api accepts
/// it (connection errors, 5xx and 429 are retried; any other answer is a violation).
async fn post_generations(
    client: reqwest::Client,
    url: String,
    users: Arc<Vec<TestUser>>,
    n: usize,
    rate: f64,
    retried: Arc<AtomicUsize>,
) -> Result<(), Vec<String>> {
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let start = tokio::time::Instant::now();
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..n {
        tokio::time::sleep_until(start + interval * i as u32).await;
        let client = client.clone();
        let url = url.clone();
        let user = users[i % users.len()].clone();
        let retried = retried.clone();
        requests.spawn(async move {
            let prompt = if i % 10 == 3 {
                format!("[refuse] chaos {i}")
            } else {
                format!("chaos {i}")
            };
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let answer = client
                    .post(&url)
                    .bearer_auth(&user.api_key)
                    .header("Idempotency-Key", format!("chaos-{i}"))
                    .json(&json!({"prompt": prompt}))
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                let wait = match answer {
                    Ok(response) if response.status() == 202 => return Ok(()),
                    Ok(response) if response.status() == 429 => response
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok()?.parse().ok())
                        .map_or(Duration::from_secs(1), Duration::from_secs),
                    Ok(response) if response.status().is_server_error() => {
                        Duration::from_millis(200)
                    }
                    Ok(response) => {
                        let status = response.status();
                        let body = response.text().await.unwrap_or_default();
                        return Err(format!("request {i} was answered {status}: {body}"));
                    }
                    Err(_) => Duration::from_millis(200),
                };
                if Instant::now() > deadline {
                    return Err(format!("request {i} not accepted within 120 s"));
                }
                retried.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(wait).await;
            }
        });
    }
    let mut errors = Vec::new();
    while let Some(result) = requests.join_next().await {
        if let Err(error) = result.expect("a request task does not panic") {
            errors.push(error);
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// What happens to a purchase after it is paid, from Stripe's side (each while the workers are being killed and
/// the webhooks doubled): the first is kept (its webhooks are all dropped), then in turn refunded by half,
/// disputed and won, disputed and lost, kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Kept,
    RefundedHalf,
    DisputeWon,
    DisputeLost,
}

impl Fate {
    fn of(index: usize) -> Self {
        match index % 4 {
            1 => Self::RefundedHalf,
            2 => Self::DisputeWon,
            3 => Self::DisputeLost,
            _ => Self::Kept,
        }
    }
}

/// Refunds half the session's charge (as an operator would from the dashboard), or closes the dispute Stripe's
/// dispute test card opened on it.
fn befall(app: &TestApp, session: &str, fate: Fate) -> anyhow::Result<()> {
    let charge = app
        .stripe
        .session_charge(session)
        .ok_or_else(|| anyhow::anyhow!("no charge"))?;
    let dispute = || {
        app.stripe
            .events()
            .iter()
            .find(|event| {
                event["type"] == "charge.dispute.created"
                    && event["data"]["object"]["charge"] == charge.as_str()
            })
            .and_then(|event| event["data"]["object"]["id"].as_str().map(str::to_owned))
            .ok_or_else(|| anyhow::anyhow!("the dispute test card opened no dispute"))
    };
    match fate {
        Fate::Kept => Ok(()),
        Fate::RefundedHalf => {
            let amount = app.stripe.charge(&charge).expect("the charge")["amount"]
                .as_i64()
                .unwrap_or_default();
            app.stripe.refund(&charge, amount / 2).map(drop)
        }
        Fate::DisputeWon => app.stripe.close_dispute(&dispute()?, DisputeClose::Won),
        Fate::DisputeLost => app.stripe.close_dispute(&dispute()?, DisputeClose::Lost),
    }
}

/// Each purchase's refund or dispute took its effect once: half the credits (rounded up) clawed back for a
/// refund; the pack frozen for a dispute, and released only when won.
async fn audit_fates(
    app: &TestApp,
    fates: &HashMap<String, Fate>,
    pack: &jobs::config::Product,
    violations: &mut Vec<String>,
) {
    let pack_credits = pack.credits;
    // The refund's share, as billing computes it: in proportion to the amount, rounded up.
    let refunded_half =
        (pack_credits * (pack.amount_minor / 2) + pack.amount_minor - 1) / pack.amount_minor;
    for (session, fate) in fates {
        let effects: Option<(i64, i64, i64)> = sqlx::query_as(
            "SELECT coalesce(sum(l.amount) FILTER (WHERE l.business_key LIKE 'refund:%'), 0)::bigint,
                    coalesce(sum(l.amount) FILTER (WHERE l.kind = 'freeze'), 0)::bigint,
                    coalesce(sum(l.amount) FILTER (WHERE l.kind = 'release'), 0)::bigint
               FROM checkout_intents i JOIN credit_ledger l ON l.user_id = i.user_id
              WHERE i.stripe_session_id = $1",
        )
        .bind(session)
        .fetch_optional(&app.pool)
        .await
        .ok()
        .flatten();
        let expected = match fate {
            Fate::Kept => (0, 0, 0),
            Fate::RefundedHalf => (-refunded_half, 0, 0),
            Fate::DisputeWon => (0, -pack_credits, pack_credits),
            Fate::DisputeLost => (0, -pack_credits, 0),
        };
        if effects != Some(expected) {
            violations.push(format!(
                "purchase {session} ({fate:?}): refund, freeze and release sums {effects:?}, expected {expected:?}"
            ));
        }
    }
}

async fn count(pool: &PgPool, sql: &'static str) -> Option<i64> {
    sqlx::query_scalar(sql).fetch_one(pool).await.ok()
}

/// Every generation settled or refunded exactly once, every balance its ledger's sum, every purchase granted
/// once, no job left behind, the upstream's limit kept.
async fn audit(
    app: &TestApp,
    plan: &ChaosPlan,
    users: &[TestUser],
    pack_credits: i64,
    report: &mut ChaosReport,
) {
    let violations = &mut report.violations;
    let rows: Vec<(uuid::Uuid, Status, Vec<String>, Vec<String>)> = match sqlx::query_as(
        "SELECT g.id, g.status,
                coalesce((SELECT array_agg(l.kind ORDER BY l.id) FROM credit_ledger l
                           WHERE l.business_key = 'generation:' || g.id), '{}'),
                coalesce((SELECT array_agg(i.object_key ORDER BY i.n) FROM generated_images i
                           WHERE i.generation_id = g.id), '{}')
           FROM generations g",
    )
    .fetch_all(&app.pool)
    .await
    {
        Ok(rows) => rows,
        Err(error) => {
            violations.push(format!("the audit could not read generations: {error}"));
            return;
        }
    };
    if rows.len() != plan.generations {
        violations.push(format!(
            "{} generations recorded for {} requests (lost or duplicated intents)",
            rows.len(),
            plan.generations
        ));
    }
    for (id, status, kinds, images) in &rows {
        match status {
            Status::Succeeded => {
                report.succeeded += 1;
                if kinds != &["reserve", "settle"] {
                    violations.push(format!("succeeded generation {id} has ledger {kinds:?}"));
                }
                if images.len() != 1 {
                    violations.push(format!(
                        "succeeded generation {id} has {} images",
                        images.len()
                    ));
                } else if !matches!(app.storage.head(&images[0]).await, Ok(Some(_))) {
                    violations.push(format!("the image of generation {id} is not in the bucket"));
                }
            }
            Status::Failed => {
                report.failed_refunded += 1;
                if kinds != &["reserve", "refund"] {
                    violations.push(format!("failed generation {id} has ledger {kinds:?}"));
                }
            }
            other => violations.push(format!("generation {id} ended {other}")),
        }
    }
    if report.succeeded * 10 < rows.len() * 8 {
        violations.push(format!(
            "only {} of {} generations succeeded: the pipeline gave up on work it could have done",
            report.succeeded,
            rows.len()
        ));
    }
    let doubled: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT business_key, kind, count(*) FROM credit_ledger GROUP BY 1, 2 HAVING count(*) > 1",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap_or_default();
    for (key, kind, times) in doubled {
        violations.push(format!("credit effect {kind} {key} applied {times} times"));
    }
    for user in users {
        let sums: Option<(i64, i64)> = sqlx::query_as(
            "SELECT (SELECT coalesce(sum(amount), 0)::bigint FROM credit_ledger WHERE user_id = $1), balance
               FROM credit_accounts WHERE user_id = $1",
        )
        .bind(user.id)
        .fetch_optional(&app.pool)
        .await
        .ok()
        .flatten();
        match sums {
            Some((ledger, balance)) if ledger == balance => {}
            other => violations.push(format!(
                "user {}: ledger sum and balance disagree: {other:?}",
                user.id
            )),
        }
        let grants: Vec<i64> = sqlx::query_scalar(
            "SELECT amount FROM credit_ledger WHERE user_id = $1 AND business_key LIKE 'pack:%'",
        )
        .bind(user.id)
        .fetch_all(&app.pool)
        .await
        .unwrap_or_default();
        if grants != [pack_credits] {
            violations.push(format!(
                "user {}: credit pack granted {grants:?}, expected exactly [{pack_credits}]",
                user.id
            ));
        }
    }
    let payments = count(&app.pool, "SELECT count(*) FROM payments").await;
    if payments != Some(users.len() as i64) {
        violations.push(format!(
            "{payments:?} payments recorded for {} purchases",
            users.len()
        ));
    }
    let unfinished = count(
        &app.pool,
        "SELECT count(*) FROM apalis.jobs WHERE status IN ('Pending', 'Queued', 'Running')",
    )
    .await;
    if unfinished != Some(0) {
        violations.push(format!("{unfinished:?} jobs left pending or running"));
    }
    report.dead_jobs = count(
        &app.pool,
        "SELECT count(*) FROM apalis.jobs WHERE status = 'Failed'",
    )
    .await
    .unwrap_or(-1);
    if report.max_creates_in_window > plan.kie_limit {
        violations.push(format!(
            "the fleet exceeded kie's limit: {} createTask in 10 s (limit {})",
            report.max_creates_in_window, plan.kie_limit
        ));
    }
}
