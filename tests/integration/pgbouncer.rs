//! Managed Postgres as the seed runs it (Neon's pooled endpoint is PgBouncer in transaction mode): the api and
//! a worker, as separate processes, send every query through a PgBouncer this test starts, and LISTEN on a
//! direct connection (`DATABASE_LISTEN_URL`). Generations go end to end through them, live status arrives over
//! server-sent events, and the timeouts `createimage2 migrate` set as the role's defaults hold on the pooler's
//! shared sessions.
//!
//! PgBouncer must be 1.21 or newer (`max_prepared_statements`: it tracks the named prepared statements sqlx
//! caches per connection across the server sessions it shares). Debian bookworm ships 1.18, which cannot;
//! `scripts/install-pgbouncer` builds Debian's own source package of 1.24 (trixie's) into
//! `/var/tmp/pgbouncer-1.24.1`, and `.ci/run` runs it. `PGBOUNCER` names another binary.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use testkit::{KIE_HMAC_KEY, TestApp};

use super::{binary, free_port, terminate, wait_for_200};

/// Where `scripts/install-pgbouncer` puts Debian's 1.24 build.
const BUILT: &str = "/var/tmp/pgbouncer-1.24.1/bin/pgbouncer";

fn pgbouncer_binary() -> PathBuf {
    let candidates = std::env::var_os("PGBOUNCER")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from(BUILT), PathBuf::from("pgbouncer")]);
    for candidate in candidates {
        let Ok(output) = Command::new(&candidate).arg("--version").output() else {
            continue;
        };
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        // "PgBouncer 1.24.1" on the first line.
        let version: Vec<u32> = text
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .split('.')
            .filter_map(|part| part.parse().ok())
            .collect();
        if version.as_slice() >= [1, 21].as_slice() {
            return candidate;
        }
    }
    panic!(
        "no PgBouncer 1.21 or newer: run scripts/install-pgbouncer (it builds Debian's 1.24 source into \
         /var/tmp/pgbouncer-1.24.1), or set PGBOUNCER to one"
    );
}

/// A PgBouncer in transaction mode in front of 127.0.0.1:5432, with a small server pool so many client
/// connections share few server sessions. Killed on drop.
struct PgBouncer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl PgBouncer {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("users.txt"), "\"postgres\" \"\"\n").unwrap();
        std::fs::write(
            path("pgbouncer.ini"),
            format!(
                "[databases]\n* = host=127.0.0.1 port=5432\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
                 listen_port = {port}\nunix_socket_dir =\nauth_type = trust\nauth_file = {users}\n\
                 pool_mode = transaction\ndefault_pool_size = 3\nmax_client_conn = 200\n\
                 max_prepared_statements = 200\nignore_startup_parameters = extra_float_digits\n",
                users = path("users.txt").display(),
            ),
        )
        .unwrap();
        let mut command = Command::new(pgbouncer_binary());
        // PgBouncer refuses to run as root; CI runs as root.
        if nix::unistd::geteuid().is_root() {
            make_readable(dir.path());
            command.args(["-u", "postgres"]);
        }
        let child = command
            .arg(path("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting pgbouncer");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "pgbouncer did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            port,
            _dir: dir,
        }
    }

    /// `database` on this pooler.
    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn make_readable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        std::fs::set_permissions(
            entry.unwrap().path(),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
    }
}

/// The environment a role gets behind the pooler: queries through it, LISTEN and migrations direct.
fn pooled_env(command: &mut Command, app: &TestApp, pooled: &str, direct: &str) {
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", pooled)
        .env("DATABASE_POOL_MODE", "transaction")
        .env("DATABASE_LISTEN_URL", direct)
        .env("DATABASE_MAX_CONNECTIONS", "8")
        .env("DATABASE_STATEMENT_TIMEOUT_MS", "4321")
        .env("S3_ENDPOINT", app.s3_endpoint())
        .env("S3_BUCKET", "test-bucket")
        .env("S3_ACCESS_KEY_ID", "testkey")
        .env("S3_SECRET_ACCESS_KEY", "testsecret")
        .env("KIE_BASE_URL", app.kie.base_url())
        .env("KIE_API_KEY", "test-kie-key")
        .env("KIE_WEBHOOK_HMAC_KEY", KIE_HMAC_KEY)
        .env("QUEUE_POLL_INTERVAL_MS", "500")
        .env("QUEUE_SHUTDOWN_GRACE_SECONDS", "5")
        .env("DRAIN_READINESS_SECONDS", "0")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
}

/// Asks the api at `api_url` for a generation of `prompt`; returns its id.
async fn create_generation(
    client: &reqwest::Client,
    api_url: &str,
    key: &str,
    prompt: &str,
) -> String {
    let created: Value = client
        .post(format!("{api_url}/api/v1/generations"))
        .bearer_auth(key)
        .json(&json!({ "prompt": prompt }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    created["id"].as_str().expect("an id").to_owned()
}

#[tokio::test]
async fn the_api_and_workers_run_through_pgbouncer_in_transaction_mode_and_listen_directly() {
    let app = TestApp::builder().without_worker().spawn().await;
    let bouncer = PgBouncer::start();
    let database = app.db.name.clone();
    let pooled = bouncer.url(&database);
    let direct = app.db.url.clone();

    // Migrations run direct (a session's advisory lock), and make the timeouts the role's defaults here.
    let mut migrate = binary();
    pooled_env(&mut migrate, &app, &direct, &direct);
    let migrated = migrate.arg("migrate").status().unwrap();
    assert!(migrated.success());

    let (api_port, api_metrics, worker_metrics) = (free_port(), free_port(), free_port());
    let mut api = binary();
    pooled_env(&mut api, &app, &pooled, &direct);
    api.env("PUBLIC_BASE_URL", format!("http://127.0.0.1:{api_port}"))
        .env("LISTEN_ADDR", format!("127.0.0.1:{api_port}"))
        .env("METRICS_LISTEN_ADDR", format!("127.0.0.1:{api_metrics}"))
        .env("ADMIN_LISTEN_ADDR", format!("127.0.0.1:{}", free_port()));
    let mut api = api.arg("api").spawn().unwrap();
    let mut worker = binary();
    pooled_env(&mut worker, &app, &pooled, &direct);
    worker
        .env("PUBLIC_BASE_URL", format!("http://127.0.0.1:{api_port}"))
        .env("METRICS_LISTEN_ADDR", format!("127.0.0.1:{worker_metrics}"));
    let mut worker = worker
        .args([
            "worker",
            "--queues",
            "submit_generation,poll_generation,store_generation",
        ])
        .spawn()
        .unwrap();
    wait_for_200(&format!("http://127.0.0.1:{api_metrics}/readyz")).await;
    wait_for_200(&format!("http://127.0.0.1:{worker_metrics}/readyz")).await;

    // Each connection through the pooler starts with the role's defaults that migrate set.
    let through_pooler = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&pooled)
        .await
        .unwrap();
    let timeout: String = sqlx::query_scalar("SHOW statement_timeout")
        .fetch_one(&through_pooler)
        .await
        .unwrap();
    assert_eq!(timeout, "4321ms");

    // Many generations at once: their requests, jobs and callbacks share three server sessions.
    let api_url = format!("http://127.0.0.1:{api_port}");
    let client = reqwest::Client::new();
    let user = app.create_user(1000).await;
    let first_id = create_generation(&client, &api_url, &user.api_key, "the first of many").await;
    // Its live status comes over the api's direct LISTEN connection.
    let mut events = client
        .get(format!("{api_url}/api/v1/generations/{first_id}/events"))
        .bearer_auth(&user.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    let mut ids = vec![first_id.clone()];
    let posts = (0..15).map(|n| {
        let (client, url, key) = (&client, &api_url, &user.api_key);
        async move { create_generation(client, url, key, &format!("generation {n}")).await }
    });
    ids.extend(futures::future::join_all(posts).await);

    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !seen.contains("succeeded") && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), events.chunk()).await {
            Ok(Ok(Some(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            _ => break,
        }
    }
    assert!(
        seen.contains("\"status\":\"succeeded\""),
        "the stream saw: {seen}"
    );
    for id in &ids {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let generation: Value = client
                .get(format!("{api_url}/api/v1/generations/{id}"))
                .bearer_auth(&user.api_key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if generation["status"] == "succeeded" {
                break;
            }
            assert_ne!(generation["status"], "failed", "{generation}");
            assert!(Instant::now() < deadline, "{generation}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert_eq!(app.balance(&user).await, 1000 - 16 * 10);

    assert!(terminate(&mut worker, nix::sys::signal::Signal::SIGTERM).success());
    assert!(terminate(&mut api, nix::sys::signal::Signal::SIGTERM).success());
    through_pooler.close().await;
    drop(bouncer);
    app.finish().await;
}
