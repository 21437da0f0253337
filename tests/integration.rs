//! The `createimage2` binary as people run it: subcommands as separate processes, `dev`, and `dev`'s
//! private Postgres cluster.

#[path = "integration/deploy_examples.rs"]
mod deploy_examples;
#[path = "integration/pgbouncer.rs"]
mod pgbouncer;

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use jobs::kinds::PruneFinishedJobs;
use queue::JobState;
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
        let status: JobState = sqlx::query_scalar("SELECT status FROM apalis.jobs WHERE id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        if status == JobState::Done {
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

/// The chaos audit in CI form (`testkit::chaos`, the same code as `loadtest chaos`): 300 generations through the
/// real api, three `createimage2 worker` *processes* SIGKILLed at random moments and restarted, the private
/// Postgres cluster under it all restarted once, and the stand-ins injecting faults (kie.ai 5xx, 429, lost and
/// garbled answers, refusals, duplicated then lost callbacks; Stripe webhooks doubled and dropped). Afterwards
/// every generation must be settled or refunded exactly once and every purchase granted exactly once.
#[tokio::test]
async fn under_worker_kills_a_postgres_restart_and_upstream_faults_every_credit_is_accounted_for() {
    let data = tempfile::tempdir().unwrap();
    let cluster = Arc::new(
        createimage2::dev::postgres::PrivateCluster::start(data.path())
            .await
            .expect("a private cluster for the restart"),
    );
    let restartable = cluster.clone();
    let plan = testkit::chaos::ChaosPlan {
        generations: 300,
        users: 10,
        workers: 3,
        kills: 8,
        kill_every: Duration::from_millis(1500),
        post_rate: 100.0,
        kie_limit: 100,
        worker_command: Box::new(binary),
        postgres: Some(testkit::chaos::RestartablePostgres {
            admin_url: cluster.admin_url(),
            restart: Box::new(move || restartable.restart()),
        }),
        deadline: Duration::from_secs(300),
        seed: testkit::chaos::seed_from_env(),
    };
    let mut app = testkit::chaos::app(&plan).await;
    let report = testkit::chaos::run(&app, plan).await;
    eprintln!("{}{}", report.table(), report.summary());
    assert!(
        report.violations.is_empty(),
        "the chaos audit found violations:\n{}",
        report.violations.join("\n")
    );
    assert_eq!(report.kills, 8);
    assert_eq!(report.postgres_restarts, 1);
    assert!(
        report.stalled_answers > 0,
        "kie answered after the workers' timeout at least once"
    );
    assert!(
        report.refunds >= 2 && report.disputes >= 4,
        "refunds and disputes (won and lost) happened among the faults, and were audited above"
    );
    assert!(
        report.reconciliations >= 1,
        "two webhooks were dropped: only reconciliation can have granted those purchases"
    );
    // Jobs that died of injected faults (their generations failed and were refunded, audited above).
    app.expect_dead(report.dead_jobs);
    app.finish().await;
}

#[tokio::test]
async fn the_jobs_operator_commands_show_and_change_job_state_as_they_say_and_are_audited() {
    let db = TestDb::new().await;
    sqlx::query(
        "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, done_at, last_result)
         VALUES ('dead-1', 'prune_finished_jobs', '\\x7b7d', 'Failed', 3, 3, now(), now(), '{\"Err\": \"boom\"}'),
                ('dead-2', 'send_email', '\\x7b7d', 'Failed', 3, 3, now(), now(), '{\"Err\": \"SMTP 421 try later\"}'),
                ('dead-3', 'send_email', '\\x7b7d', 'Failed', 3, 3, now(), now(), '{\"Err\": \"mailbox unknown\"}'),
                ('waiting-1', 'prune_finished_jobs', '\\x7b7d', 'Pending', 0, 3, now() + interval '1 hour', NULL, NULL)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let command = |args: &[&str]| {
        binary()
            .args(args)
            .env_clear()
            .env("DATABASE_URL", &db.url)
            .env("OPERATOR_NAME", "carol")
            .output()
            .unwrap()
    };
    let run = |args: &[&str]| {
        let output = command(args);
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
            sqlx::query_scalar::<_, JobState>("SELECT status FROM apalis.jobs WHERE id = $1")
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
    assert!(
        stats.contains("reconcile_stripe_events"),
        "idle queues are listed too: {stats}"
    );
    run(&["jobs", "retry", "dead-1", "--reason", "transient"]);
    assert_eq!(status("dead-1").await, JobState::Pending);
    run(&["jobs", "cancel", "waiting-1", "--reason", "not needed"]);
    assert_eq!(status("waiting-1").await, JobState::Killed);
    let bulk = run(&[
        "jobs",
        "retry-dead",
        "--queue",
        "send_email",
        "--error-contains",
        "smtp 421",
        "--reason",
        "relay back",
    ]);
    assert!(
        bulk.contains("retrying 1 dead jobs of send_email"),
        "{bulk}"
    );
    assert_eq!(status("dead-2").await, JobState::Pending);
    assert_eq!(status("dead-3").await, JobState::Failed);
    run(&[
        "jobs",
        "pause",
        "prune_finished_jobs",
        "--reason",
        "db maintenance",
    ]);
    assert!(
        run(&["jobs", "stats"])
            .lines()
            .any(|l| l.starts_with("prune_finished_jobs") && l.ends_with("true"))
    );
    run(&["jobs", "resume", "prune_finished_jobs", "--reason", "done"]);
    let paused: i64 = sqlx::query_scalar("SELECT count(*) FROM queue_pauses")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(paused, 0);
    // A queue name the registry does not know is refused with the ones it knows.
    let unexplained = command(&["jobs", "pause", "prune_finished_jobs"]);
    assert!(!unexplained.status.success(), "a pause needs a reason");
    let typo = command(&["jobs", "pause", "prune_finshed_jobs", "--reason", "x"]);
    assert!(!typo.status.success());
    let said = String::from_utf8_lossy(&typo.stderr);
    assert!(
        said.contains("unknown queue \"prune_finshed_jobs\"")
            && said.contains("prune_finished_jobs"),
        "{said}"
    );
    run(&["upstream", "pause", "kie", "--reason", "kie incident"]);
    assert!(run(&["upstream", "status"]).contains("kie: paused (operator)"));
    run(&["upstream", "resume", "kie", "--reason", "over"]);
    let failed = command(&["jobs", "discard", "waiting-1", "--reason", "x"]);
    assert!(!failed.status.success(), "only dead jobs can be discarded");

    let audit = run(&["audit"]);
    let lines: Vec<&str> = audit.lines().collect();
    for (line, (action, target, reason)) in lines.iter().zip([
        ("upstream.resume", "kie", "over"),
        ("upstream.pause", "kie", "kie incident"),
        ("jobs.resume", "prune_finished_jobs", "done"),
        ("jobs.pause", "prune_finished_jobs", "db maintenance"),
        ("jobs.retry_dead", "send_email", "relay back"),
        ("jobs.cancel", "waiting-1", "not needed"),
        ("jobs.retry", "dead-1", "transient"),
    ]) {
        assert!(
            line.contains("carol (cli)")
                && line.contains(&format!("{action} {target}"))
                && line.contains(&format!("reason: {reason}")),
            "{line:?} is not {action} {target} ({reason}):\n{audit}"
        );
    }
    assert_eq!(
        lines.len(),
        7,
        "refused commands are not recorded:\n{audit}"
    );
}
