//! The `createimage2` binary as people run it: subcommands as separate processes, `dev`, and `dev`'s
//! private Postgres cluster.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use jobs::{kinds::PruneFinishedJobs, queue};
use testkit::TestDb;

fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_createimage2"))
}

/// Environment for a production role against `db` (S3 settings are required but unused by these roles yet).
fn role_env(command: &mut Command, db: &TestDb, listen: u16, metrics: u16) {
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &db.url)
        .env("S3_ENDPOINT", "http://127.0.0.1:1")
        .env("S3_BUCKET", "unused")
        .env("S3_ACCESS_KEY_ID", "unused")
        .env("S3_SECRET_ACCESS_KEY", "unused")
        .env("KIE_API_KEY", "unused")
        .env("LISTEN_ADDR", format!("127.0.0.1:{listen}"))
        .env("METRICS_LISTEN_ADDR", format!("127.0.0.1:{metrics}"))
        .env("QUEUE_SHUTDOWN_GRACE_SECONDS", "5");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_for_200(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(response) = reqwest::get(url).await
            && response.status() == 200
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url} did not answer 200 within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn terminate(child: &mut Child, signal: nix::sys::signal::Signal) -> std::process::ExitStatus {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "process did not exit within 30 s of {signal}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn wait_until_done(db: &TestDb, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status: String = sqlx::query_scalar("SELECT status FROM apalis.jobs WHERE id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        if status == "Done" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} is still {status} after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn help_explains_every_subcommand() {
    let output = binary().arg("--help").output().unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    for subcommand in ["api", "worker", "scheduler", "migrate", "dev", "jobs"] {
        assert!(
            help.contains(&format!("  {subcommand} ")),
            "--help lacks {subcommand}:\n{help}"
        );
    }
    let worker_help =
        String::from_utf8(binary().args(["worker", "--help"]).output().unwrap().stdout).unwrap();
    assert!(
        worker_help.contains("--queues") && worker_help.contains("--concurrency"),
        "{worker_help}"
    );
}

#[test]
fn a_missing_variable_stops_start_up_with_its_name() {
    let output = binary().arg("api").env_clear().output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
}

#[tokio::test]
async fn api_and_worker_run_as_separate_processes_against_one_database_and_drain_on_sigterm() {
    let db = TestDb::new().await;
    let (api_port, api_metrics, worker_metrics) = (free_port(), free_port(), free_port());
    let mut api = binary();
    role_env(&mut api, &db, api_port, api_metrics);
    let mut api = api
        .arg("api")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut worker = binary();
    role_env(&mut worker, &db, free_port(), worker_metrics);
    let mut worker = worker
        .args([
            "worker",
            "--queues",
            "prune_finished_jobs",
            "--concurrency",
            "prune_finished_jobs=2",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    wait_for_200(&format!("http://127.0.0.1:{api_port}/healthz")).await;
    wait_for_200(&format!("http://127.0.0.1:{api_metrics}/readyz")).await;
    wait_for_200(&format!("http://127.0.0.1:{worker_metrics}/readyz")).await;
    let queue::Enqueued::New(id) = queue::enqueue(&db.pool, &PruneFinishedJobs {})
        .await
        .unwrap()
    else {
        panic!()
    };
    wait_until_done(&db, &id).await;
    let metrics = reqwest::get(format!("http://127.0.0.1:{worker_metrics}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("createimage2_jobs_completed_total{queue=\"prune_finished_jobs\"} 1"),
        "{metrics}"
    );

    assert!(terminate(&mut worker, nix::sys::signal::Signal::SIGTERM).success());
    assert!(terminate(&mut api, nix::sys::signal::Signal::SIGTERM).success());
}

#[tokio::test]
async fn dev_serves_health_readiness_and_metrics_runs_jobs_and_exits_cleanly_on_ctrl_c() {
    let db = TestDb::new().await;
    let dev_files = tempfile::tempdir().unwrap();
    let mut dev = binary()
        .args([
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .env("DATABASE_URL", &db.url)
        .env("CARGO_TARGET_DIR", dev_files.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(dev.stdout.take().unwrap()).lines();
    let (mut site, mut metrics, mut key) = (None, None, None);
    while let Some(line) = lines.next().transpose().unwrap() {
        let value = line
            .split(" : ")
            .nth(1)
            .map(|v| v.split_whitespace().next().unwrap_or("").to_owned());
        if line.contains("site and API") {
            site = value;
        } else if line.contains("metrics      :") {
            metrics = value;
        } else if line.contains("demo API key") {
            key = value;
            break;
        }
    }
    let (site, metrics, key) = (site.unwrap(), metrics.unwrap(), key.unwrap());
    wait_for_200(&format!("{site}healthz")).await;
    wait_for_200(&format!("{site}readyz")).await;
    let metrics_page = reqwest::get(&metrics).await.unwrap();
    assert_eq!(metrics_page.status(), 200);
    assert!(
        metrics_page
            .text()
            .await
            .unwrap()
            .contains("createimage2_build_info{role=\"dev\"")
    );

    let me: serde_json::Value = reqwest::Client::new()
        .get(format!("{site}api/v1/me"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["email"], "demo@createimage2.local");
    assert_eq!(me["credits"], 1000);

    let queue::Enqueued::New(id) = queue::enqueue(&db.pool, &PruneFinishedJobs {})
        .await
        .unwrap()
    else {
        panic!()
    };
    wait_until_done(&db, &id).await;
    assert!(
        terminate(&mut dev, nix::sys::signal::Signal::SIGINT).success(),
        "Ctrl-C exits 0"
    );
}

#[tokio::test]
async fn dev_starts_a_private_cluster_when_no_server_is_reachable() {
    let root = tempfile::tempdir().unwrap();
    // Nothing listens on port 1: the fallback must start a cluster of its own.
    let resolved = createimage2::dev::postgres::resolve(
        None,
        "postgres://postgres@127.0.0.1:1/postgres",
        root.path(),
    )
    .await
    .expect("a private cluster starts from the machine's PostgreSQL binaries");
    assert!(resolved.is_private_cluster());
    let pool = sqlx::PgPool::connect(&resolved.url).await.unwrap();
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(name, "createimage2_dev");
    jobs::db::migrate(&pool).await.unwrap();
    pool.close().await;
    let url = resolved.url.clone();
    drop(resolved);
    assert!(
        sqlx::PgPool::connect(&url).await.is_err(),
        "the private cluster stops with dev"
    );
}

/// Environment for a `createimage2 worker` process serving `app`'s database, bucket and kie stand-in.
fn worker_env(command: &mut Command, app: &testkit::TestApp) {
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
        .env("KIE_WEBHOOK_HMAC_KEY", testkit::KIE_HMAC_KEY)
        .env("KIE_CREATE_TASKS_PER_WINDOW", "100")
        .env("KIE_CREATE_WINDOW_MS", "10500")
        .env("KIE_RECORD_INFO_PER_SECOND", "50")
        .env("STRIPE_SECRET_KEY", testkit::STRIPE_SECRET_KEY)
        .env("STRIPE_API_BASE", app.stripe.base_url())
        .env("PUBLIC_BASE_URL", format!("http://{}", app.api_addr))
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("METRICS_LISTEN_ADDR", "127.0.0.1:0")
        .env("QUEUE_HEARTBEAT_SECONDS", "1")
        .env("QUEUE_DEAD_WORKER_SECONDS", "3")
        .env("QUEUE_POLL_INTERVAL_MS", "500")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "warn");
}

fn spawn_worker(app: &testkit::TestApp) -> Child {
    let mut command = binary();
    worker_env(&mut command, app);
    command
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
        .unwrap()
}

/// The chaos audit in CI form: a few hundred generations through the real api, three worker *processes*
/// killed with SIGKILL at random moments and restarted, and the kie.ai stand-in injecting 5xx, 429, garbled
/// answers, content-policy refusals, duplicated and lost callbacks; meanwhile every user buys a credit pack through
/// the Stripe stand-in, which delivers every webhook twice. Afterwards every credit must be accounted for.
#[tokio::test]
async fn under_worker_kills_and_upstream_faults_every_generation_ends_settled_or_refunded_exactly_once()
 {
    use fakes::kie::CallbackMode;
    use rand::Rng;
    use serde_json::json;

    let app = testkit::TestApp::builder()
        .without_worker()
        .kie(|k| {
            k.create_limit = Some((100, Duration::from_secs(10)));
            k.record_info_limit = Some((50, Duration::from_secs(1)));
            k.latency = (Duration::from_millis(200), Duration::from_millis(1500));
            k.callbacks = CallbackMode::Duplicated;
            k.fail_creates = 5;
            k.rate_limit_creates = 5;
            k.malformed_record_info = 5;
            k.lose_create_responses = 3;
        })
        .spawn()
        .await;
    let mut workers: Vec<Child> = (0..3).map(|_| spawn_worker(&app)).collect();

    let users: Vec<_> = futures::future::join_all((0..10).map(|_| app.create_user(1_000))).await;
    let mut generations = Vec::new();
    for n in 0..300 {
        let user = &users[n % users.len()];
        let prompt = if n % 10 == 3 {
            format!("[refuse] chaos {n}")
        } else {
            format!("chaos {n}")
        };
        let (status, body) = app.create_generation(user, json!({"prompt": prompt})).await;
        assert_eq!(status, 202, "{body}");
        generations.push((n % users.len(), body["id"].as_str().unwrap().to_owned()));
    }

    // Purchases while the workers die: one pack per user, every webhook delivered twice.
    app.stripe.set_delivery(fakes::stripe::DeliveryFaults {
        duplicate: true,
        ..Default::default()
    });
    let pack = jobs::config::SiteConfig::default().packs[0].clone();
    for user in &users {
        jobs::billing::record_intent(
            &app.pool,
            user.id,
            jobs::billing::IntentKind::Pack,
            Some(&pack),
        )
        .await
        .unwrap();
    }
    let mut paid = std::collections::HashSet::new();

    // Chaos: kill a random worker with SIGKILL every ~1.5 s and start a new one; switch callbacks to lost.
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let ready: Vec<String> = sqlx::query_scalar(
            "SELECT stripe_session_id FROM checkout_intents WHERE status = 'ready'",
        )
        .fetch_all(&app.pool)
        .await
        .unwrap();
        for session in ready {
            if paid.insert(session.clone()) {
                app.stripe.pay_session(&session).unwrap();
            }
        }
        let unfinished: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM generations WHERE finished_at IS NULL)
                  + (SELECT count(*) FROM stripe_events WHERE processed_at IS NULL)",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if unfinished == 0 && paid.len() == users.len() {
            app.stripe.wait_for_deliveries().await;
            let late: i64 =
                sqlx::query_scalar("SELECT count(*) FROM stripe_events WHERE processed_at IS NULL")
                    .fetch_one(&app.pool)
                    .await
                    .unwrap();
            if late == 0 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{unfinished} generations unfinished after 240 s"
        );
        if kills < 8 {
            let victim = rand::rng().random_range(0..workers.len());
            workers[victim].kill().unwrap(); // SIGKILL
            workers[victim].wait().unwrap();
            workers[victim] = spawn_worker(&app);
            kills += 1;
            if kills == 4 {
                app.kie.update(|k| k.callbacks = CallbackMode::Lost);
            }
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    for worker in &mut workers {
        assert!(terminate(worker, nix::sys::signal::Signal::SIGTERM).success());
    }

    // The audit.
    let mut succeeded = 0;
    for (user_index, id) in &generations {
        let row: (String, i32) =
            sqlx::query_as("SELECT status, credits_reserved FROM generations WHERE id = $1::uuid")
                .bind(id)
                .fetch_one(&app.pool)
                .await
                .unwrap();
        let kinds: Vec<String> = sqlx::query_scalar(
            "SELECT kind FROM credit_ledger WHERE business_key = $1 ORDER BY id",
        )
        .bind(format!("generation:{id}"))
        .fetch_all(&app.pool)
        .await
        .unwrap();
        match row.0.as_str() {
            "succeeded" => {
                succeeded += 1;
                assert_eq!(kinds, ["reserve", "settle"], "generation {id}");
                let keys: Vec<String> = sqlx::query_scalar(
                    "SELECT object_key FROM generated_images WHERE generation_id = $1::uuid",
                )
                .bind(id)
                .fetch_all(&app.pool)
                .await
                .unwrap();
                assert_eq!(keys.len(), 1, "generation {id} has its image row");
                assert!(
                    app.storage.head(&keys[0]).await.unwrap().is_some(),
                    "image of {id} is in the bucket"
                );
            }
            "failed" => assert_eq!(
                kinds,
                ["reserve", "refund"],
                "generation {id} (user {user_index})"
            ),
            other => panic!("generation {id} ended {other}"),
        }
    }
    for user in &users {
        let (ledger_sum, balance): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT coalesce(sum(amount), 0)::bigint FROM credit_ledger WHERE user_id = $1), balance
               FROM credit_accounts WHERE user_id = $1",
        )
        .bind(user.id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert_eq!(ledger_sum, balance, "the ledger sums to the balance");
        let grants: Vec<i64> = sqlx::query_scalar(
            "SELECT amount FROM credit_ledger WHERE user_id = $1 AND business_key LIKE 'pack:%'",
        )
        .bind(user.id)
        .fetch_all(&app.pool)
        .await
        .unwrap();
        assert_eq!(
            grants,
            [pack.credits],
            "each purchase is granted exactly once"
        );
    }
    let payments: i64 = sqlx::query_scalar("SELECT count(*) FROM payments")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(payments, users.len() as i64);
    let unfinished_jobs: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM apalis.jobs WHERE status IN ('Pending', 'Queued', 'Running')",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(unfinished_jobs, 0, "no job left running or lost");
    let stats = app.kie.stats();
    assert!(
        stats.max_creates_in_window <= 100,
        "the fleet exceeded the upstream limit: {}",
        stats.max_creates_in_window
    );
    assert!(succeeded >= 250, "only {succeeded} of 300 succeeded");
    eprintln!(
        "chaos: {} generations, {succeeded} succeeded, {kills} worker kills, {} upstream tasks, {} callbacks, {} purchases (webhooks duplicated)",
        generations.len(),
        stats.tasks_created,
        stats.callbacks_sent,
        paid.len()
    );
    app.finish().await;
}

#[tokio::test]
async fn the_jobs_operator_commands_show_and_change_job_state_as_they_say() {
    let db = TestDb::new().await;
    sqlx::query(
        "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, done_at, last_result)
         VALUES ('dead-1', 'prune_finished_jobs', '\\x7b7d', 'Failed', 3, 3, now(), now(), '{\"Err\": \"boom\"}'),
                ('waiting-1', 'prune_finished_jobs', '\\x7b7d', 'Pending', 0, 3, now() + interval '1 hour', NULL, NULL)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let run = |args: &[&str]| {
        let output = binary()
            .args(args)
            .env_clear()
            .env("DATABASE_URL", &db.url)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let status = |id: &str| {
        let pool = db.pool.clone();
        let id = id.to_owned();
        async move {
            sqlx::query_scalar::<_, String>("SELECT status FROM apalis.jobs WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let dead = run(&["jobs", "dead"]);
    assert!(
        dead.contains("dead-1") && dead.contains("error: boom"),
        "{dead}"
    );
    let stats = run(&["jobs", "stats"]);
    assert!(stats.contains("prune_finished_jobs"), "{stats}");
    run(&["jobs", "retry", "dead-1"]);
    assert_eq!(status("dead-1").await, "Pending");
    run(&["jobs", "cancel", "waiting-1"]);
    assert_eq!(status("waiting-1").await, "Killed");
    run(&["jobs", "pause", "prune_finished_jobs"]);
    assert!(
        run(&["jobs", "stats"])
            .lines()
            .any(|l| l.starts_with("prune_finished_jobs") && l.ends_with("true"))
    );
    run(&["jobs", "resume", "prune_finished_jobs"]);
    let paused: i64 = sqlx::query_scalar("SELECT count(*) FROM queue_pauses")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(paused, 0);
    run(&["upstream", "pause", "kie"]);
    assert!(run(&["upstream", "status"]).contains("kie: paused"));
    run(&["upstream", "resume", "kie"]);
    let failed = binary()
        .args(["jobs", "discard", "waiting-1"])
        .env_clear()
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(!failed.status.success(), "only dead jobs can be discarded");
}
