//! `loadtest chaos`: the long form of the chaos audit (`testkit::chaos`, whose short form runs in CI) — thousands
//! of generations through the real api while worker processes are SIGKILLed, a private Postgres cluster is
//! restarted once and the stand-ins inject faults; then the audit. Any violation exits non-zero.
//!
//! The worker processes are this binary re-executed as `loadtest createimage2 worker …`, which runs the
//! production `createimage2` command line (`createimage2::cli`) unchanged.

use std::{process::Command, sync::Arc, time::Duration};

use anyhow::Context as _;
use createimage2::dev::postgres::PrivateCluster;
use testkit::chaos::{ChaosPlan, RestartablePostgres};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Generations requested through the api.
    #[arg(long, default_value_t = 2000)]
    generations: usize,
    /// Users they are spread over (each also buys one credit pack).
    #[arg(long, default_value_t = 50)]
    users: usize,
    /// Worker processes alive at once.
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// Worker processes killed with SIGKILL (each replaced by a new one).
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// Seconds between kills; by default the kills are spread over the run's expected length.
    #[arg(long)]
    kill_every_secs: Option<f64>,
    /// Requests per second.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// kie's createTask limit per 10 s (the stand-in's and the fleet's budget).
    #[arg(long, default_value_t = 100)]
    kie_limit: u32,
    /// Give up after this many seconds (a violation).
    #[arg(long, default_value_t = 1800)]
    deadline_secs: u64,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let data = tempfile::tempdir().context("a directory for the private cluster")?;
    let cluster = Arc::new(
        PrivateCluster::start(data.path())
            .await
            .context("starting a private Postgres cluster (it is restarted during the run)")?,
    );
    let restartable = cluster.clone();
    // The upstream admits kie_limit per 10.5 s (the fleet's budget); the kills are spread over that span.
    let expected = args.generations as f64 / (f64::from(args.kie_limit) / 10.5).min(args.rate);
    let kill_every = args
        .kill_every_secs
        .unwrap_or((expected * 0.8 / args.kills.max(1) as f64).max(1.0));
    let exe = std::env::current_exe().context("locating this binary")?;
    let plan = ChaosPlan {
        generations: args.generations,
        users: args.users,
        workers: args.workers,
        kills: args.kills,
        kill_every: Duration::from_secs_f64(kill_every),
        post_rate: args.rate,
        kie_limit: args.kie_limit,
        worker_command: Box::new(move || {
            let mut command = Command::new(&exe);
            command.arg("createimage2");
            command
        }),
        postgres: Some(RestartablePostgres {
            admin_url: cluster.admin_url(),
            restart: Box::new(move || restartable.restart()),
        }),
        deadline: Duration::from_secs(args.deadline_secs),
        seed: testkit::chaos::seed_from_env(),
    };
    eprintln!(
        "chaos: {} generations at {}/s over {} users, {} worker processes, {} kills every {:.1} s, Postgres restarted once (expected ~{:.0} s)",
        args.generations, args.rate, args.users, args.workers, args.kills, kill_every, expected
    );
    let mut app = testkit::chaos::app(&plan).await;
    let report = testkit::chaos::run(&app, plan).await;
    println!("\n{}", report.table());
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "generations": report.generations,
            "succeeded": report.succeeded,
            "failed_refunded": report.failed_refunded,
            "kills": report.kills,
            "seed": report.seed,
            "postgres_restarts": report.postgres_restarts,
            "requests_retried": report.requests_retried,
            "upstream_tasks": report.upstream_tasks,
            "callbacks_sent": report.callbacks_sent,
            "max_creates_in_window": report.max_creates_in_window,
            "kie_limit": report.kie_limit,
            "purchases": report.purchases,
            "reconciliations": report.reconciliations,
            "dead_jobs": report.dead_jobs,
            "seconds": report.elapsed.as_secs_f64(),
            "violations": report.violations,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&json)?)?;
    }
    println!("{}", report.summary());
    // Dead jobs died of injected faults; their generations are in the audit above.
    app.expect_dead(report.dead_jobs);
    if report.violations.is_empty() {
        app.finish().await;
    } else {
        // Leftover jobs are already reported as violations; `finish` would panic on them.
        app.stop().await;
        std::mem::forget(app);
    }
    anyhow::ensure!(
        report.violations.is_empty(),
        "{} audit violations",
        report.violations.len()
    );
    Ok(())
}
