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
