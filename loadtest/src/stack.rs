//! The real stack in this process, the way `createimage2 dev` and testkit's `TestApp` assemble it from the
//! project's crates: `api::Api::with_parts` (JSON API and kie's callback route), optionally
//! `worker::Worker::with_parts` serving every queue of `jobs::kinds::registry()`, the S3 stand-in
//! (`fakes::s3::S3Server`) and the kie.ai stand-in (`fakes::kie::KieFake`) — against a database created for
//! the run and dropped after it. Nothing of the pipeline is reimplemented here.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use fakes::kie::{FakeKieConfig, KieFake};
use jobs::{
    config::{DatabaseConfig, GenerationConfig, KieConfig, QueueConfig, StorageConfig},
    credits,
    kie::KieClient,
    services::{Pipeline, Services},
    storage::Storage,
    telemetry::{self, Metrics},
};
use sqlx::{Connection, Executor, PgConnection, PgPool};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const KIE_API_KEY: &str = "loadtest-kie-key";
const KIE_HMAC_KEY: &str = "loadtest-kie-hmac";

/// A database of its own for one run (or one phase), migrated; dropped by [`Database::drop`].
pub struct Database {
    pub name: String,
    pub url: String,
}

impl Database {
    pub async fn create() -> anyhow::Result<Self> {
        let name = format!("loadtest_{}", Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&crate::queue_load::admin_url())
            .await
            .context("connecting to Postgres")?;
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await?;
        let mut url = url::Url::parse(&crate::queue_load::admin_url())?;
        url.set_path(&format!("/{name}"));
        let database = Self {
            name,
            url: url.to_string(),
        };
        let pool = database.pool(2)?;
        let migrated = jobs::db::migrate(&pool).await;
        pool.close().await;
        if let Err(error) = migrated {
            database.drop().await?;
            return Err(error);
        }
        Ok(database)
    }

    /// A pool of the project's own kind (`jobs::db::pool`).
    pub fn pool(&self, max_connections: u32) -> anyhow::Result<PgPool> {
        Ok(jobs::db::pool(&DatabaseConfig::direct(
            self.url.clone(),
            max_connections,
        ))?)
    }

    pub async fn drop(self) -> anyhow::Result<()> {
        let mut admin = PgConnection::connect(&crate::queue_load::admin_url()).await?;
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .await?;
        Ok(())
    }
}

/// How to assemble the stack.
pub struct StackConfig {
    pub kie: FakeKieConfig,
    /// The project's fleet-wide createTask budget (`KIE_CREATE_TASKS_PER_WINDOW` / `KIE_CREATE_WINDOW_MS`).
    pub create_budget: (u32, Duration),
    pub record_info_per_second: u32,
    pub generation: GenerationConfig,
    /// `--concurrency` of the worker (`queue=N,…`, as `createimage2 worker` takes it); `None`: no worker.
    pub worker_concurrency: Option<String>,
    /// Pool sizes of the api and the worker (separate pools, as separate processes would have).
    pub api_connections: u32,
    pub worker_connections: u32,
}

impl StackConfig {
    /// The production limits (kie: 20 tasks per 10 s and 10 recordInfo per second on both sides).
    pub fn production_limits(kie: FakeKieConfig) -> Self {
        Self {
            kie: FakeKieConfig {
                api_key: KIE_API_KEY.into(),
                hmac_key: Some(KIE_HMAC_KEY.into()),
                // Small result files: the stand-in keeps every PNG in memory, which would count as "worker" RSS.
                image_max_side: 64,
                ..kie
            },
            create_budget: production_create_budget(),
            record_info_per_second: 10,
            // The per-user limit is not what is measured: the load comes from few users.
            generation: GenerationConfig {
                per_user_per_minute: 1_000_000,
                ..GenerationConfig::default()
            },
            worker_concurrency: None,
            api_connections: 20,
            worker_connections: 20,
        }
    }

    /// Both sides' kie limits lifted: the stand-in enforces none, the project's budgets are far above any
    /// rate reachable here (a 1 s window keeps the limiter's event rows few).
    pub fn lifted_limits(kie: FakeKieConfig) -> Self {
        let mut config = Self::production_limits(FakeKieConfig {
            create_limit: None,
            record_info_limit: None,
            ..kie
        });
        config.create_budget = (1_000_000, Duration::from_secs(1));
        config.record_info_per_second = 1_000_000;
        config
    }
}

/// The project's createTask budget at its defaults (`KIE_CREATE_TASKS_PER_WINDOW` / `KIE_CREATE_WINDOW_MS`),
/// read through its own configuration parser so a changed default shows up here.
pub fn production_create_budget() -> (u32, Duration) {
    let source: std::collections::HashMap<String, String> =
        [("KIE_API_KEY".to_owned(), "unused".to_owned())].into();
    KieConfig::from_source(&source).map_or((20, Duration::from_millis(10_500)), |c| c.create_budget)
}

/// The running stack.
pub struct Stack {
    /// `http://127.0.0.1:PORT` of the api.
    pub base_url: String,
    pub kie: KieFake,
    pub worker_running: bool,
    shutdown: CancellationToken,
    worker: Option<worker::StartedWorker>,
    api: JoinHandle<anyhow::Result<()>>,
    api_pool: PgPool,
    worker_pool: Option<PgPool>,
    _s3: fakes::s3::S3Server,
    _files: tempfile::TempDir,
}

impl Stack {
    pub async fn start(database: &Database, config: StackConfig) -> anyhow::Result<Self> {
        let files = tempfile::Builder::new()
            .prefix("loadtest-s3-")
            .tempdir_in(std::env::temp_dir())?;
        let s3 = fakes::s3::S3Server::start(
            files.path(),
            "127.0.0.1:0".parse()?,
            "loadtestkey",
            "loadtestsecret",
        )
        .await?;
        let storage = Storage::new(&StorageConfig {
            endpoint: s3.endpoint(),
            region: "auto".into(),
            bucket: "loadtest".into(),
            access_key_id: s3.access_key.clone(),
            secret_access_key: s3.secret_key.clone().into(),
        });
        storage.ensure_bucket().await?;
        let kie = KieFake::start(config.kie.clone()).await?;
        let listener = telemetry::bind("127.0.0.1:0".parse()?).await?;
        let site = listener.local_addr()?;
        let kie_config = KieConfig {
            base_url: kie.base_url().parse()?,
            api_key: config.kie.api_key.clone().into(),
            webhook_hmac_key: config.kie.hmac_key.clone().map(Into::into),
            create_budget: config.create_budget,
            record_info_per_second: config.record_info_per_second,
            request_timeout: Duration::from_secs(30),
        };
        let shutdown = CancellationToken::new();
        let api_metrics = Metrics::new("api");
        let (worker, worker_pool) = match &config.worker_concurrency {
            Some(concurrency) => {
                let metrics = Metrics::new("worker");
                let pipeline = Pipeline {
                    storage: storage.clone().with_metrics(metrics.clone()),
                    kie: KieClient::new(&kie_config, metrics.clone()),
                    kie_config: kie_config.clone(),
                    generation: config.generation.clone(),
                    public_base_url: format!("http://{site}").parse()?,
                    stripe: None,
                };
                let services = Arc::new(
                    Services::new(QueueConfig::default(), metrics).with_pipeline(pipeline),
                );
                let registry = jobs::kinds::registry();
                let plans = worker::plans(&registry, "all", std::slice::from_ref(concurrency))?;
                let pool = database.pool(config.worker_connections)?;
                let started =
                    worker::Worker::with_parts(pool.clone(), registry, services, plans, None)
                        .start(shutdown.clone())
                        .await?;
                (Some(started), Some(pool))
            }
            None => (None, None),
        };
        let api_pool = database.pool(config.api_connections)?;
        // A load test is many requests from few members: the request budget is counted (the same statement as
        // in production) but set high enough that it never refuses.
        let unlimited = jobs::api_requests::Budget {
            limit: u32::MAX,
            window: std::time::Duration::from_secs(60),
        };
        let state = api::AppState::new(api_pool.clone(), api_metrics)
            .with_api_budgets(api::ApiBudgets {
                member: unlimited,
                anonymous: unlimited,
            })
            .with_pipeline(api::ApiPipeline {
                storage,
                kie_webhook_hmac_key: kie_config.webhook_hmac_key.clone(),
                generation: config.generation.clone(),
            });
        let api = tokio::spawn(
            api::Api::with_parts(state, listener, None).run_until_stopped(shutdown.clone()),
        );
        Ok(Self {
            base_url: format!("http://{site}"),
            kie,
            worker_running: worker.is_some(),
            shutdown,
            worker,
            api,
            api_pool,
            worker_pool,
            _s3: s3,
            _files: files,
        })
    }

    /// Stops api and worker (the worker drains) and closes their pools.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        if let Some(worker) = self.worker {
            worker.wait().await;
        }
        self.api.await??;
        self.api_pool.close().await;
        if let Some(pool) = self.worker_pool {
            pool.close().await;
        }
        Ok(())
    }
}

/// A user of the JSON API.
#[derive(Debug, Clone)]
pub struct User {
    pub id: Uuid,
    pub api_key: String,
}

/// `count` users, each with `credits` and an API key, through the project's own account and ledger functions.
pub async fn create_users(pool: &PgPool, count: usize, credits: i64) -> anyhow::Result<Vec<User>> {
    let mut users = Vec::with_capacity(count);
    let mut tx = pool.begin().await?;
    for _ in 0..count {
        let email = format!("load-{}@example.com", Uuid::new_v4().simple());
        let id = jobs::accounts::create_user(&mut tx, &email, None).await?;
        credits::apply(
            &mut tx,
            id,
            credits::Kind::Grant,
            credits,
            &format!("loadtest-grant:{id}"),
            serde_json::json!({"reason": "loadtest"}),
        )
        .await?;
        let key = jobs::accounts::issue_api_key(&mut *tx, id, "loadtest").await?;
        users.push(User {
            id,
            api_key: key.secret,
        });
    }
    tx.commit().await?;
    Ok(users)
}

/// An HTTP client for many concurrent requests to one host (keep-alive, no proxy).
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// This process's resident set size in MiB (`VmRSS` of `/proc/self/status`).
pub fn rss_mib() -> f64 {
    proc_status_kib("VmRSS:").map_or(f64::NAN, |kib| kib / 1024.0)
}

fn proc_status_kib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU time (user + system) this process has used, in seconds.
pub fn cpu_seconds() -> f64 {
    process_cpu_seconds("self")
}

/// CPU time (user + system) process `pid` (or `self`) has used, in seconds (`/proc/<pid>/stat`, at the usual
/// 100 ticks/s); NaN when it cannot be read.
pub fn process_cpu_seconds(pid: &str) -> f64 {
    stat_seconds(pid, 11..=12)
}

/// The sum of the `/proc/<pid>/stat` tick counters at `fields` (counted after the parenthesised command name:
/// 11 utime, 12 stime, 13 cutime, 14 cstime), in seconds; NaN when they cannot be read.
fn stat_seconds(pid: &str, fields: std::ops::RangeInclusive<usize>) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return f64::NAN;
    };
    let counters: Vec<&str> = rest.split_whitespace().collect();
    fields
        .map(|i| counters.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum::<Option<f64>>()
        .map_or(f64::NAN, |ticks| ticks / 100.0)
}

/// CPU seconds used so far by each running process whose command is `command` (`postgres`: the server, its
/// backends and helpers), by pid, with what its exited children used (the postmaster's share holds the backends
/// that have disconnected, such as pgbench's).
pub fn cpu_by_command(command: &str) -> std::collections::HashMap<u32, f64> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Default::default();
    };
    entries
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            (comm.trim_end() == command)
                // With its exited children: utime, stime, cutime, cstime.
                .then(|| (pid, stat_seconds(&pid.to_string(), 11..=14)))
                .filter(|(_, seconds)| seconds.is_finite())
        })
        .collect()
}

/// CPU seconds `command`'s processes used since `before` was taken with [`cpu_by_command`]. A process that
/// started since counts from zero; one that exited since counts through its parent's children's time, its whole
/// life, so measure across work whose processes either live throughout or start within it.
pub fn cpu_since(command: &str, before: &std::collections::HashMap<u32, f64>) -> f64 {
    cpu_by_command(command)
        .into_iter()
        .map(|(pid, now)| now - before.get(&pid).copied().unwrap_or(0.0))
        .sum()
}

/// Transactions committed in this database so far (`pg_stat_database`; other backends report theirs at
/// most about once a second, so wait a moment after the work before reading).
pub async fn commits(pool: &PgPool) -> anyhow::Result<f64> {
    let commits: i64 = sqlx::query_scalar(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(pool)
    .await?;
    Ok(commits as f64)
}

/// The 1, 5 and 15 minute load averages (`/proc/loadavg`): other work on the machine skews every number.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}
