//! `loadtest queue`: the project's queue layer with no-op jobs, against a fresh database per run.
//!
//! 1. bulk enqueue rate (`enqueue_many`, 5,000 per statement, `--producers` statements at once);
//! 2. burn-down of the backlog by one worker process with production settings, and by `--processes` of them
//!    (this binary's hidden `queue-worker`), each started while the queue is paused and timed from its resumption;
//! 3. the SQL ceiling: pgbench running the runtime's own claim and completion statements on the same backlog;
//!    2 and 3 are taken `--rounds` times, in turn, and compared within each round (this machine kind's speed moves
//!    by ±15% from one measurement to the next: a share is a ratio of two measurements taken seconds apart, and a
//!    run reports the median of its rounds);
//! 4. insert→start latency of single jobs into an idle worker (from just before the INSERT to the job's start),
//!    right after the burn-downs and again once autovacuum has been through the table (the queue's migrations
//!    set it to come once 5,000 jobs have finished; it looks once per `autovacuum_naptime`).

use std::{
    sync::OnceLock,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use jobs::config::DatabaseConfig;
use queue::{EnqueueOptions, Job, JobContext, JobError, NewJob, Outcome, QueuePlan, Registry};
use serde::{Deserialize, Serialize};
use sqlx::{Connection, Executor, PgConnection};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::report::{Row, Spread, percentile, print_table, print_verdicts, verdict};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Backlog size for the burn-down.
    #[arg(long, default_value_t = 100_000)]
    jobs: usize,
    /// Repetitions; the table shows medians with min–max.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Rounds of the three throughput measurements in each run (one process, `--processes` processes, the SQL
    /// ceiling), taken in turn with their order rotated; a run reports the median of each and of the rounds'
    /// own ratios.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Worker concurrency ("production settings").
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// Worker processes for the second burn-down (each with `--concurrency`).
    #[arg(long, default_value_t = 2)]
    processes: usize,
    /// Bulk enqueue: statements of 5,000 jobs in flight at once (producers, each on its own connection).
    #[arg(long, default_value_t = 2)]
    producers: usize,
    /// Single jobs timed into an idle worker.
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// Backlog for apalis-postgres at its defaults (it burns ~1,000 jobs/s; the ratio is per second).
    #[arg(long, default_value_t = 20_000)]
    apalis_jobs: usize,
    /// Single jobs timed into the idle apalis worker (each may wait up to its ~30 s heartbeat poll).
    #[arg(long, default_value_t = 5)]
    apalis_samples: usize,
    /// pgbench client counts for the SQL ceiling (the runtime's own claim and completion statements at its batch
    /// size); the ceiling is the one with the best median over a run's rounds.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pgbench_clients: Vec<usize>,
    /// pgbench binary (default: on PATH, else /usr/lib/postgresql/*/bin/pgbench); the ceiling is skipped
    /// without one.
    #[arg(long)]
    pgbench: Option<std::path::PathBuf>,
    /// Finished rows added to the table before the idle measurements: the history a deployment keeps (a week
    /// of finished rows, `QueueConfig::finished_job_retention`; the default is a week at ~140,000 jobs a day).
    #[arg(long, default_value_t = 1_000_000)]
    history: usize,
    /// How long the idle measurement waits for autovacuum before it measures anyway.
    #[arg(long, default_value_t = 150)]
    autovacuum_wait_seconds: u64,
    /// Give the queue's table PostgreSQL's own autovacuum settings instead of the queue migrations' (the
    /// comparison for those settings).
    #[arg(long)]
    autovacuum_defaults: bool,
    /// Also write the numbers as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

static STARTS: OnceLock<mpsc::UnboundedSender<(u64, Instant)>> = OnceLock::new();

/// Does nothing; a timed one reports when it started.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Noop {
    timed: Option<u64>,
}

impl Job for Noop {
    const NAME: &'static str = "loadtest_noop";
    type Context = ();

    async fn run(self, _ctx: JobContext<()>) -> Result<Outcome, JobError> {
        if let (Some(sequence), Some(starts)) = (self.timed, STARTS.get()) {
            let _ = starts.send((sequence, Instant::now()));
        }
        Ok(Outcome::Done)
    }
}

struct RunResult {
    enqueue_per_second: f64,
    /// Each number the median of the run's rounds.
    burn_down: BurnDown,
    processes_burn_down: BurnDown,
    /// pgbench with the runtime's claim and completion SQL (NaN without pgbench).
    ceiling_per_second: f64,
    /// Postgres's CPU time per job under pgbench, µs.
    ceiling_postgres_cpu_us: f64,
    /// Medians of the rounds' own ratios, %: one process's burn-down to the same round's ceiling; the processes'.
    share_percent: f64,
    processes_share_percent: f64,
    /// Median of the rounds' own ratios: the processes' burn-down to one process's.
    processes_against_one: f64,
    start_p50_ms: f64,
    start_p99_ms: f64,
    /// The same once autovacuum has been through the table.
    autovacuumed_p50_ms: f64,
    autovacuumed_p99_ms: f64,
    /// What autovacuum did after the burn-downs.
    autovacuum: Autovacuum,
    apalis_enqueue_per_second: f64,
    apalis_burn_down_per_second: f64,
    apalis_start_p50_ms: f64,
}

pub(crate) fn admin_url() -> String {
    let configured = std::env::var("DATABASE_URL")
        .ok()
        .and_then(|u| url::Url::parse(&u).ok());
    let mut url = configured
        .unwrap_or_else(|| url::Url::parse("postgres://postgres@127.0.0.1:5432/postgres").unwrap());
    url.set_path("/postgres");
    url.to_string()
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let (sender, mut starts) = mpsc::unbounded_channel();
    STARTS.set(sender).ok();
    let pgbench = args.pgbench.clone().or_else(crate::pgbench::find);
    if pgbench.is_none() {
        eprintln!(
            "pgbench not found (apt-get install postgresql-contrib): the SQL ceiling is not measured"
        );
    }
    let mut results = Vec::new();
    for run in 1..=args.runs {
        let name = format!("loadtest_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url())
            .await
            .context("connecting to Postgres")?;
        for database in [name.clone(), format!("{name}_apalis")] {
            admin
                .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
                .await?;
        }
        let result = one_run(&args, &name, pgbench.as_deref(), &mut starts).await;
        for database in [name.clone(), format!("{name}_apalis")] {
            admin
                .execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {database} WITH (FORCE)"
                )))
                .await?;
        }
        let result = result?;
        eprintln!(
            "run {run}: enqueue {:.0}/s, burn-down {:.0}/s ({:.1}% of the SQL ceiling {:.0}/s; {} processes {:.0}/s, {:.2}× one), start p50 {:.1} ms p99 {:.1} ms\n  one process per job: worker CPU {:.1} µs, Postgres CPU {:.1} µs, {:.1} transactions per 1,000 jobs; pgbench: Postgres CPU {:.1} µs",
            result.enqueue_per_second,
            result.burn_down.per_second,
            result.share_percent,
            result.ceiling_per_second,
            args.processes,
            result.processes_burn_down.per_second,
            result.processes_against_one,
            result.start_p50_ms,
            result.start_p99_ms,
            result.burn_down.worker_cpu_us,
            result.burn_down.postgres_cpu_us,
            result.burn_down.transactions_per_thousand,
            result.ceiling_postgres_cpu_us,
        );
        results.push(result);
    }
    report(&args, &results)
}

fn report(args: &Args, results: &[RunResult]) -> anyhow::Result<()> {
    let spread = |f: &dyn Fn(&RunResult) -> f64| Spread::of(results.iter().map(f));
    let enqueue = spread(&|r| r.enqueue_per_second);
    let burn = spread(&|r| r.burn_down.per_second);
    let burn_processes = spread(&|r| r.processes_burn_down.per_second);
    let ceiling = spread(&|r| r.ceiling_per_second);
    let share = spread(&|r| r.share_percent);
    let busy = spread(&|r| r.burn_down.busy_per_second);
    let share_processes = spread(&|r| r.processes_share_percent);
    let processes_against_one = spread(&|r| r.processes_against_one);
    let worker_cpu = spread(&|r| r.burn_down.worker_cpu_us);
    let postgres_cpu = spread(&|r| r.burn_down.postgres_cpu_us);
    let transactions = spread(&|r| r.burn_down.transactions_per_thousand);
    let processes_worker_cpu = spread(&|r| r.processes_burn_down.worker_cpu_us);
    let processes_postgres_cpu = spread(&|r| r.processes_burn_down.postgres_cpu_us);
    let ceiling_postgres_cpu = spread(&|r| r.ceiling_postgres_cpu_us);
    let p50 = spread(&|r| r.start_p50_ms);
    let p99 = spread(&|r| r.start_p99_ms);
    let autovacuumed_p50 = spread(&|r| r.autovacuumed_p50_ms);
    let autovacuumed_p99 = spread(&|r| r.autovacuumed_p99_ms);
    let autovacuum_after = spread(&|r| r.autovacuum.came_after_s);
    let dead_rows = spread(&|r| r.autovacuum.dead_rows);
    let autovacuum_threshold = spread(&|r| r.autovacuum.threshold);
    let apalis_enqueue = spread(&|r| r.apalis_enqueue_per_second);
    let apalis_burn = spread(&|r| r.apalis_burn_down_per_second);
    let apalis_p50 = spread(&|r| r.apalis_start_p50_ms);
    let ratio = spread(&|r| r.burn_down.per_second / r.apalis_burn_down_per_second);
    let clients = args
        .pgbench_clients
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    print_table(&[
        Row::new("bulk enqueue", enqueue, "jobs/s"),
        Row::new(
            format!(
                "burn-down of {} (concurrency {})",
                args.jobs, args.concurrency
            ),
            burn,
            "jobs/s",
        ),
        Row::new(
            format!("burn-down by {} processes", args.processes),
            burn_processes,
            "jobs/s",
        ),
        Row::new(
            format!("SQL ceiling (pgbench, best median of {clients} clients)"),
            ceiling,
            "jobs/s",
        ),
        Row::new("  one process: share of ceiling (paired)", share, "%"),
        Row::new(
            "  one process, first claim to last completion",
            busy,
            "jobs/s",
        ),
        Row::new(
            format!("  {} processes: share of ceiling (paired)", args.processes),
            share_processes,
            "%",
        ),
        Row::new(
            format!("  {} processes against one (paired)", args.processes),
            spread(&|r| r.processes_against_one * 100.0),
            "%",
        ),
        Row::new("one process: worker CPU per job", worker_cpu, "µs"),
        Row::new("one process: Postgres CPU per job", postgres_cpu, "µs"),
        Row::new("one process: transactions per 1,000 jobs", transactions, ""),
        Row::new(
            format!("{} processes: worker CPU per job", args.processes),
            processes_worker_cpu,
            "µs",
        ),
        Row::new(
            format!("{} processes: Postgres CPU per job", args.processes),
            processes_postgres_cpu,
            "µs",
        ),
        Row::new(
            "SQL ceiling: Postgres CPU per job",
            ceiling_postgres_cpu,
            "µs",
        ),
        Row::new("idle insert→start p50, after the burn-downs", p50, "ms"),
        Row::new("idle insert→start p99, after the burn-downs", p99, "ms"),
        Row::new("dead rows after the burn-downs", dead_rows, ""),
        Row::new(
            "autovacuum's threshold for the table",
            autovacuum_threshold,
            "",
        ),
        Row::new(
            "autovacuum came, after the burn-downs",
            autovacuum_after,
            "s",
        ),
        Row::new(
            "idle insert→start p50, autovacuumed",
            autovacuumed_p50,
            "ms",
        ),
        Row::new(
            "idle insert→start p99, autovacuumed",
            autovacuumed_p99,
            "ms",
        ),
        Row::new(
            "apalis-postgres defaults: enqueue",
            apalis_enqueue,
            "jobs/s",
        ),
        Row::new(
            format!("apalis defaults: burn-down of {}", args.apalis_jobs),
            apalis_burn,
            "jobs/s",
        ),
        Row::new("apalis defaults: insert→start p50", apalis_p50, "ms"),
        Row::new("burn-down ratio (same run)", ratio, "×"),
    ]);
    println!("targets (issue #19):");
    print_verdicts(&[
        (
            format!(
                "idle insert→start p50 ≤ 2.5 ms (autovacuumed): {:.1} ms ({:.1} ms right after the burn-downs)",
                autovacuumed_p50.median, p50.median
            ),
            verdict(autovacuumed_p50.median, |v| v <= 2.5),
        ),
        (
            format!(
                "idle insert→start p99 ≤ 5 ms (autovacuumed): {:.1} ms ({:.1} ms right after the burn-downs)",
                autovacuumed_p99.median, p99.median
            ),
            verdict(autovacuumed_p99.median, |v| v <= 5.0),
        ),
        (
            format!(
                "one process burns down at ≥ 80% of the SQL ceiling: {:.1}%",
                share.median
            ),
            verdict(share.median, |v| v >= 80.0),
        ),
        (
            format!(
                "{} processes not slower than one: {:.2}× (paired; {:.0} against {:.0} jobs/s)",
                args.processes, processes_against_one.median, burn_processes.median, burn.median
            ),
            verdict(processes_against_one.median, |v| v >= 1.0),
        ),
    ]);
    println!(
        "queue: burn-down {:.0} jobs/s ({:.0}% of the SQL ceiling {:.0}), p50 start {:.1} ms, p99 {:.1} ms (autovacuumed {:.1} / {:.1} ms); apalis-postgres defaults: {:.0} jobs/s (ratio {:.1}); {} processes: {:.0} jobs/s",
        burn.median,
        share.median,
        ceiling.median,
        p50.median,
        p99.median,
        autovacuumed_p50.median,
        autovacuumed_p99.median,
        apalis_burn.median,
        ratio.median,
        args.processes,
        burn_processes.median
    );
    if let Some(path) = &args.json {
        let numbers = serde_json::json!({
            "runs": args.runs, "jobs": args.jobs, "concurrency": args.concurrency,
            "bulk_enqueue_per_second": enqueue.json(),
            "burn_down_per_second": burn.json(),
            "processes": args.processes,
            "processes_burn_down_per_second": burn_processes.json(),
            "pgbench_clients": args.pgbench_clients,
            "sql_ceiling_per_second": ceiling.json(),
            "rounds": args.rounds,
            "share_of_ceiling_percent": share.json(),
            "processes_against_one": processes_against_one.json(),
            "burn_down_first_claim_to_last_completion_per_second": busy.json(),
            "worker_cpu_us_per_job": worker_cpu.json(),
            "postgres_cpu_us_per_job": postgres_cpu.json(),
            "transactions_per_thousand_jobs": transactions.json(),
            "processes_worker_cpu_us_per_job": processes_worker_cpu.json(),
            "processes_postgres_cpu_us_per_job": processes_postgres_cpu.json(),
            "sql_ceiling_postgres_cpu_us_per_job": ceiling_postgres_cpu.json(),
            "processes_share_of_ceiling_percent": share_processes.json(),
            "start_p50_ms": p50.json(),
            "start_p99_ms": p99.json(),
            "autovacuumed_start_p50_ms": autovacuumed_p50.json(),
            "autovacuumed_start_p99_ms": autovacuumed_p99.json(),
            "autovacuum_after_s": autovacuum_after.json(),
            "dead_rows_after_burn_downs": dead_rows.json(),
            "autovacuum_threshold": autovacuum_threshold.json(),
            "apalis_defaults": {
                "bulk_enqueue_per_second": apalis_enqueue.json(),
                "burn_down_per_second": apalis_burn.json(),
                "start_p50_ms": apalis_p50.json(),
            },
            "burn_down_ratio": ratio.json(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&numbers)?)?;
    }
    Ok(())
}

async fn one_run(
    args: &Args,
    database: &str,
    pgbench: Option<&std::path::Path>,
    starts: &mut mpsc::UnboundedReceiver<(u64, Instant)>,
) -> anyhow::Result<RunResult> {
    let mut url = url::Url::parse(&admin_url())?;
    url.set_path(&format!("/{database}"));
    // A worker's pool: the idle starts are timed into a runner in this process.
    let pool = jobs::db::worker_pool(&DatabaseConfig::direct(url.to_string(), 40))?;
    jobs::db::migrate(&pool).await?;
    if args.autovacuum_defaults {
        sqlx::query(
            "ALTER TABLE apalis.jobs RESET (autovacuum_vacuum_threshold, autovacuum_vacuum_scale_factor,
                                             vacuum_index_cleanup)",
        )
        .execute(&pool)
        .await?;
    }

    // 1. Bulk enqueue.
    let started = Instant::now();
    enqueue_backlog(&pool, args.jobs, args.producers).await?;
    let enqueue_per_second = args.jobs as f64 / started.elapsed().as_secs_f64();

    // 2. Burn-down by one worker process and by several, each of the same backlog on the same emptied, vacuumed
    // and analysed table, and their SQL ceiling: pgbench running the runtime's own claim and completion
    // statements. Taken in rounds, the order turned each round so that a drift of the machine's speed falls on
    // each measurement alike; each round's ratios are its own.
    let round_count = args.rounds.max(1);
    let mut rounds = Vec::with_capacity(round_count);
    for round in 0..round_count {
        let (mut one, mut many, mut ceilings) = (None, None, Vec::new());
        for step in 0..3 {
            match (step + round) % 3 {
                0 => one = Some(burn_down_by_processes(&pool, url.as_str(), args, 1).await?),
                1 => {
                    many = Some(
                        burn_down_by_processes(&pool, url.as_str(), args, args.processes).await?,
                    )
                }
                _ => {
                    if let Some(pgbench) = pgbench {
                        ceilings =
                            sql_ceiling(&pool, url.as_str(), database, args, pgbench).await?;
                    }
                }
            }
        }
        let (one, many) = (one.expect("measured"), many.expect("measured"));
        eprintln!(
            "  round {}: one process {:.0}/s, {} processes {:.0}/s ({:.2}× one)",
            round + 1,
            one.per_second,
            args.processes,
            many.per_second,
            many.per_second / one.per_second,
        );
        rounds.push((one, many, ceilings));
    }
    // The ceiling is pgbench with the client count whose median over the rounds is highest, compared with the
    // burn-downs of each round: not the best draw of each round, which would take the luckiest of several noisy
    // measurements for the ceiling.
    let measured = if pgbench.is_some() {
        args.pgbench_clients.len()
    } else {
        0
    };
    let best_clients = (0..measured).max_by(|&a, &b| {
        let median_of = |i: usize| Spread::of(rounds.iter().map(|r| r.2[i].per_second)).median;
        median_of(a).total_cmp(&median_of(b))
    });
    let rounds: Vec<(BurnDown, BurnDown, Ceiling)> = rounds
        .into_iter()
        .map(|(one, many, ceilings)| {
            let ceiling = best_clients
                .and_then(|i| ceilings.get(i).copied())
                .unwrap_or(Ceiling {
                    per_second: f64::NAN,
                    postgres_cpu_us: f64::NAN,
                });
            (one, many, ceiling)
        })
        .collect();
    if let Some(i) = best_clients {
        eprintln!(
            "  SQL ceiling: pgbench with {} clients (best median over the rounds); one process's share by round: {}",
            args.pgbench_clients[i],
            rounds
                .iter()
                .map(|r| format!("{:.1}%", r.0.per_second / r.2.per_second * 100.0))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let median =
        |f: &dyn Fn(&(BurnDown, BurnDown, Ceiling)) -> f64| Spread::of(rounds.iter().map(f)).median;
    let of_rounds = |pick: fn(&(BurnDown, BurnDown, Ceiling)) -> &BurnDown| BurnDown {
        per_second: median(&|r| pick(r).per_second),
        busy_per_second: median(&|r| pick(r).busy_per_second),
        worker_cpu_us: median(&|r| pick(r).worker_cpu_us),
        postgres_cpu_us: median(&|r| pick(r).postgres_cpu_us),
        transactions_per_thousand: median(&|r| pick(r).transactions_per_thousand),
    };
    let burn_down = of_rounds(|r| &r.0);
    let processes_burn_down = of_rounds(|r| &r.1);
    let ceiling_per_second = median(&|r| r.2.per_second);
    let ceiling_postgres_cpu_us = median(&|r| r.2.postgres_cpu_us);
    let share_percent = median(&|r| r.0.per_second / r.2.per_second * 100.0);
    let processes_share_percent = median(&|r| r.1.per_second / r.2.per_second * 100.0);
    let processes_against_one = median(&|r| r.1.per_second / r.0.per_second);

    // 3. Idle insert→start, into a worker in this process, beside a history of finished rows: first right after
    // the burn-downs (the claim index still holds an entry for every row claimed since the last vacuum, which
    // each claim reads past), then once autovacuum has been through the table, with nothing but the table's own
    // settings to bring it (or once `--autovacuum-wait-seconds` have passed without it).
    let burn_downs_ended = Instant::now();
    add_history(&pool, args.history).await?;
    let (worker, stop) = start_noop_worker(&pool, args.concurrency).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    while starts.try_recv().is_ok() {}
    let (start_p50_ms, start_p99_ms) = idle_starts(&pool, starts, args.samples, 0).await?;
    let autovacuum = autovacuum_after(
        &pool,
        burn_downs_ended,
        Duration::from_secs(args.autovacuum_wait_seconds),
    )
    .await?;
    let (autovacuumed_p50_ms, autovacuumed_p99_ms) =
        idle_starts(&pool, starts, args.samples, args.samples as u64).await?;
    stop.cancel();
    worker.wait().await;

    pool.close().await;

    // The same with apalis-postgres at its defaults, in the same run, in a database holding only apalis' own
    // schema (`PostgresStorage::setup`: its indexes and per-row insert trigger, none of this project's changes).
    url.set_path(&format!("/{database}_apalis"));
    let apalis_pool = jobs::db::pool(&DatabaseConfig::direct(url.to_string(), 40))?;
    apalis_postgres::PostgresStorage::<()>::setup(&apalis_pool).await?;
    let apalis =
        crate::apalis_defaults::measure(&apalis_pool, args.apalis_jobs, args.apalis_samples)
            .await?;
    apalis_pool.close().await;
    let mut apalis_starts = apalis.starts_ms;
    apalis_starts.sort_by(f64::total_cmp);
    Ok(RunResult {
        enqueue_per_second,
        burn_down,
        processes_burn_down,
        ceiling_per_second,
        ceiling_postgres_cpu_us,
        share_percent,
        processes_share_percent,
        processes_against_one,
        start_p50_ms,
        start_p99_ms,
        autovacuumed_p50_ms,
        autovacuumed_p99_ms,
        autovacuum,
        apalis_enqueue_per_second: apalis.enqueue_per_second,
        apalis_burn_down_per_second: apalis.burn_down_per_second,
        apalis_start_p50_ms: apalis_starts[apalis_starts.len() / 2],
    })
}

/// `history` finished rows of the no-op queue, finished a day ago, analysed as autovacuum would have: what a
/// deployment keeps for a week. Their pages are new to vacuum, as a week of a real table's mostly are not.
async fn add_history(pool: &sqlx::PgPool, history: usize) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO apalis.jobs (job, id, job_type, status, attempts, run_at, lock_by, lock_at, done_at, last_result)
         SELECT j.job, 'history-' || n, j.job_type, 'Done', 1, now() - interval '1 day', 'gone',
                now() - interval '1 day', now() - interval '1 day', '{\"Ok\": null}'
           FROM generate_series(1, $1) AS n,
                (SELECT job, job_type FROM apalis.jobs WHERE job_type = $2 LIMIT 1) AS j",
    )
    .bind(history as i64)
    .bind(Noop::NAME)
    .execute(pool)
    .await?;
    sqlx::query("ANALYZE apalis.jobs").execute(pool).await?;
    Ok(())
}

/// What autovacuum did for `apalis.jobs` after the burn-downs.
#[derive(Debug, Clone, Copy)]
struct Autovacuum {
    /// Dead rows in the table once the burn-downs were over (Postgres's statistics).
    dead_rows: f64,
    /// How many dead rows bring autovacuum to the table: its threshold plus its scale factor times its rows, from
    /// the table's own settings where it has them.
    threshold: f64,
    /// Seconds from the end of the burn-downs until autovacuum had been through the table; NaN when it did not
    /// come within the wait, or when the server runs without autovacuum and the loadtest ran the vacuum itself.
    came_after_s: f64,
}

/// Lets autovacuum do what it would for the idle queue after the burn-downs: waits up to `wait` until it has been
/// through `apalis.jobs` since `since` and left fewer dead rows than would bring it back (a vacuum already running
/// at `since` leaves the rows that died after it began, and the next one comes for them). On a server with
/// autovacuum off (this project's CI machines set `autovacuum = off`), runs the plain `VACUUM` autovacuum would
/// run (it follows the table's `vacuum_index_cleanup`) if the dead rows are past autovacuum's threshold for the
/// table, and nothing if not.
async fn autovacuum_after(
    pool: &sqlx::PgPool,
    since: Instant,
    wait: Duration,
) -> anyhow::Result<Autovacuum> {
    const STATE: &str = "SELECT s.n_dead_tup::float8,
              coalesce((SELECT option_value FROM pg_options_to_table(c.reloptions)
                         WHERE option_name = 'autovacuum_vacuum_threshold')::float8,
                       current_setting('autovacuum_vacuum_threshold')::float8)
            + coalesce((SELECT option_value FROM pg_options_to_table(c.reloptions)
                         WHERE option_name = 'autovacuum_vacuum_scale_factor')::float8,
                       current_setting('autovacuum_vacuum_scale_factor')::float8) * greatest(c.reltuples, 0),
              coalesce(s.last_autovacuum > now() - make_interval(secs => $1), false),
              current_setting('autovacuum')::bool
         FROM pg_class c JOIN pg_stat_user_tables s ON s.relid = c.oid
        WHERE c.oid = 'apalis.jobs'::regclass";
    let state = || async {
        sqlx::query_as::<_, (f64, f64, bool, bool)>(STATE)
            .bind(since.elapsed().as_secs_f64())
            .fetch_one(pool)
            .await
    };
    let (dead_rows, threshold, _, autovacuum_on) = state().await?;
    let mut result = Autovacuum {
        dead_rows,
        threshold,
        came_after_s: f64::NAN,
    };
    if !autovacuum_on {
        if dead_rows > threshold {
            eprintln!(
                "  autovacuum is off on this server: running the VACUUM it would run ({dead_rows:.0} dead rows, threshold {threshold:.0})"
            );
            sqlx::query("VACUUM apalis.jobs").execute(pool).await?;
        } else {
            eprintln!(
                "  autovacuum is off on this server, and would not come: {dead_rows:.0} dead rows, threshold {threshold:.0}"
            );
        }
        return Ok(result);
    }
    let deadline = Instant::now() + wait;
    loop {
        let (dead, now_threshold, came, _) = state().await?;
        if came && dead <= now_threshold {
            result.came_after_s = since.elapsed().as_secs_f64();
            return Ok(result);
        }
        if Instant::now() >= deadline {
            eprintln!(
                "  autovacuum did not come to apalis.jobs within {} s of the burn-downs ({dead_rows:.0} dead rows then, threshold {threshold:.0})",
                wait.as_secs()
            );
            return Ok(result);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Enqueues `jobs` no-op jobs, 5,000 per statement, `producers` statements in flight at once.
async fn enqueue_backlog(pool: &sqlx::PgPool, jobs: usize, producers: usize) -> anyhow::Result<()> {
    use futures::{StreamExt as _, TryStreamExt as _};

    futures::stream::iter((0..jobs).step_by(5_000))
        .map(|first| async move {
            let batch = (first..jobs.min(first + 5_000))
                .map(|_| NewJob::of(&Noop { timed: None }, EnqueueOptions::default()))
                .collect();
            queue::enqueue_many(pool, batch).await
        })
        .buffer_unordered(producers.max(1))
        .try_collect::<Vec<u64>>()
        .await?;
    Ok(())
}

/// Insert→start of `samples` single jobs, 20 ms apart, into the idle worker: (p50, p99) in ms.
async fn idle_starts(
    pool: &sqlx::PgPool,
    starts: &mut mpsc::UnboundedReceiver<(u64, Instant)>,
    samples: usize,
    first: u64,
) -> anyhow::Result<(f64, f64)> {
    let mut latencies = Vec::with_capacity(samples);
    for sequence in first..first + samples as u64 {
        let sent = Instant::now();
        queue::enqueue(
            pool,
            &Noop {
                timed: Some(sequence),
            },
        )
        .await?;
        let (seen, at) = tokio::time::timeout(Duration::from_secs(10), starts.recv())
            .await?
            .context("worker gone")?;
        anyhow::ensure!(seen == sequence, "job {seen} started instead of {sequence}");
        latencies.push((at - sent).as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((percentile(&latencies, 0.5), percentile(&latencies, 0.99)))
}

/// The burn-down's SQL ceiling in jobs/s: pgbench, a C client with no job to run, executing the runtime's own
/// claim ([`queue::runtime::CLAIM_SQL`]) and completion ([`queue::runtime::COMPLETE_SQL`]) statements at the
/// runner's batch size, on the same backlog the burn-downs start from (emptied, vacuumed table; 100,000 jobs
/// enqueued and analysed), with each of `--pgbench-clients`: for each, jobs/s and the CPU time Postgres spent per
/// job. Each script run claims a batch and completes it, so a client does what a runner and its completer do,
/// without the job.
async fn sql_ceiling(
    pool: &sqlx::PgPool,
    database_url: &str,
    database: &str,
    args: &Args,
    pgbench: &std::path::Path,
) -> anyhow::Result<Vec<Ceiling>> {
    let batch = args.concurrency.min(queue::runtime::CLAIM_BATCH_MAX);
    let parameters = |sql: &str, names: &[&str]| {
        names
            .iter()
            .enumerate()
            .rev()
            .fold(sql.to_owned(), |sql, (i, name)| {
                sql.replace(&format!("${}", i + 1), &format!(":{name}"))
            })
    };
    let script = format!(
        "WITH claimed AS ({claim}) SELECT coalesce(array_agg(id), '{{}}') AS ids FROM claimed \\gset\n{complete};\n",
        claim = parameters(queue::runtime::CLAIM_SQL, &["queue", "worker", "limit"]),
        complete = parameters(queue::runtime::COMPLETE_SQL, &["ids", "worker"]),
    );
    let path = std::env::temp_dir().join(format!("{database}_ceiling.sql"));
    std::fs::write(&path, script)?;
    // (jobs/s, Postgres CPU µs per job) of the best client count.
    let mut ceilings = Vec::with_capacity(args.pgbench_clients.len());
    for &clients in &args.pgbench_clients {
        paused_backlog(pool, args, "loadtest: backlog for pgbench").await?;
        queue::ops::resume_queue(pool, Noop::NAME).await?;
        let transactions = args.jobs.div_ceil(batch).div_ceil(clients);
        let limit = batch.to_string();
        let postgres_before = crate::stack::cpu_by_command("postgres");
        let bench = crate::pgbench::run(
            pgbench,
            database_url,
            database,
            &path,
            clients,
            crate::pgbench::Length::Transactions(transactions),
            &[
                ("queue", Noop::NAME),
                ("worker", "pgbench"),
                ("limit", &limit),
            ],
        )
        .await?;
        let postgres_cpu_us =
            crate::stack::cpu_since("postgres", &postgres_before) / args.jobs as f64 * 1e6;
        let done: i64 =
            sqlx::query_scalar("SELECT count(*) FROM apalis.jobs WHERE status = 'Done'")
                .fetch_one(pool)
                .await?;
        anyhow::ensure!(
            done == args.jobs as i64,
            "pgbench with {clients} clients left {} of {} jobs undone",
            args.jobs as i64 - done,
            args.jobs
        );
        let per_second = done as f64 / ((transactions * clients) as f64 / bench.tps);
        eprintln!(
            "  pgbench ceiling, {clients} clients: {per_second:.0} jobs/s, Postgres CPU {postgres_cpu_us:.1} µs/job"
        );
        ceilings.push(Ceiling {
            per_second,
            postgres_cpu_us,
        });
    }
    std::fs::remove_file(&path).ok();
    Ok(ceilings)
}

/// Waits until the no-op queue holds no waiting and no running job, then checks that all `jobs` are `Done`;
/// returns when it saw the queue idle, and how many statements it ran.
/// The poll (every 20 ms) reads the head of the claim index and of the running-rows index, each ordered as
/// its index so the planner walks it; a `count(*)` would scan the whole table 50 times a second and take CPU
/// from the burn-down it times.
async fn wait_until_done(pool: &sqlx::PgPool, jobs: usize) -> anyhow::Result<(Instant, usize)> {
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut polls = 0;
    let finished = loop {
        polls += 1;
        let idle: bool = sqlx::query_scalar(
            "SELECT (SELECT id FROM apalis.jobs WHERE job_type = $1 AND status = 'Pending'
                      ORDER BY priority DESC, run_at, id LIMIT 1) IS NULL
                AND (SELECT id FROM apalis.jobs WHERE job_type = $1 AND status IN ('Queued', 'Running')
                      ORDER BY lock_at LIMIT 1) IS NULL",
        )
        .bind(Noop::NAME)
        .fetch_one(pool)
        .await?;
        if idle {
            break Instant::now();
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "burn-down did not finish in 15 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let done: i64 = sqlx::query_scalar("SELECT count(*) FROM apalis.jobs WHERE status = 'Done'")
        .fetch_one(pool)
        .await?;
    anyhow::ensure!(
        done == jobs as i64,
        "the burn-down ended with {done} of {jobs} jobs done"
    );
    Ok((finished, polls + 1))
}

/// The state every burn-down and the SQL ceiling start from: an emptied, vacuumed table holding `--jobs` no-op
/// jobs, enqueued while the queue is paused (`reason`) and analysed, as autovacuum would have by the time a real
/// backlog is served. The queue stays paused.
async fn paused_backlog(pool: &sqlx::PgPool, args: &Args, reason: &str) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM apalis.jobs").execute(pool).await?;
    sqlx::query("VACUUM ANALYZE apalis.jobs")
        .execute(pool)
        .await?;
    queue::ops::pause_queue(pool, Noop::NAME, reason).await?;
    enqueue_backlog(pool, args.jobs, args.producers).await?;
    sqlx::query("ANALYZE apalis.jobs").execute(pool).await?;
    Ok(())
}

/// pgbench with one client count: its rate, and Postgres's CPU time per job (µs).
#[derive(Debug, Clone, Copy)]
struct Ceiling {
    per_second: f64,
    postgres_cpu_us: f64,
}

/// One burn-down: its rate, and what each job cost on both sides.
#[derive(Debug, Clone, Copy)]
struct BurnDown {
    per_second: f64,
    /// The same over the span the database saw, from the first claim's transaction to the last completion's:
    /// without the wake-up, the first connections and the clock's poll at either end.
    busy_per_second: f64,
    /// CPU time of the worker processes per job, µs.
    worker_cpu_us: f64,
    /// CPU time of all of Postgres's processes per job, µs.
    postgres_cpu_us: f64,
    /// Transactions the workers committed per 1,000 jobs (claims, completions and their heartbeats).
    transactions_per_thousand: f64,
}

/// Enqueues the backlog on an emptied, vacuumed table while the queue is paused and analyses it (as autovacuum
/// would have by the time a real backlog is served), starts `processes` worker processes, waits until each says
/// it is ready, then resumes the queue and times the burn-down.
async fn burn_down_by_processes(
    pool: &sqlx::PgPool,
    database_url: &str,
    args: &Args,
    processes: usize,
) -> anyhow::Result<BurnDown> {
    use tokio::io::AsyncBufReadExt as _;

    paused_backlog(pool, args, "loadtest: workers starting").await?;
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for _ in 0..processes {
        let mut child = tokio::process::Command::new(&exe)
            .args(["queue-worker", "--database-url", database_url])
            .args(["--concurrency", &args.concurrency.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting a queue-worker process")?;
        let stdout = child.stdout.take().context("child stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("a queue-worker process did not get ready in 30 s")??;
        anyhow::ensure!(
            ready.as_deref() == Some("ready"),
            "queue-worker said {ready:?} instead of ready"
        );
        children.push(child);
    }
    // Each listener subscribes as its runner starts; let them settle before waking them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pids: Vec<String> = children
        .iter()
        .filter_map(|child| child.id().map(|pid| pid.to_string()))
        .collect();
    let workers_cpu = || -> f64 {
        pids.iter()
            .map(|pid| crate::stack::process_cpu_seconds(pid))
            .sum()
    };
    let (workers_before, postgres_before) =
        (workers_cpu(), crate::stack::cpu_by_command("postgres"));
    let commits_before = crate::stack::commits(pool).await?;
    let started = Instant::now();
    queue::ops::resume_queue(pool, Noop::NAME).await?;
    let (finished, polls) = wait_until_done(pool, args.jobs).await?;
    let per_second = args.jobs as f64 / (finished - started).as_secs_f64();
    let per_job_us = |seconds: f64| seconds / args.jobs as f64 * 1e6;
    let worker_cpu_us = per_job_us(workers_cpu() - workers_before);
    let postgres_cpu_us = per_job_us(crate::stack::cpu_since("postgres", &postgres_before));
    for mut child in children {
        drop(child.stdin.take());
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .context("a queue-worker process did not stop in 30 s")??;
        anyhow::ensure!(
            status.success(),
            "a queue-worker process exited with {status}"
        );
    }
    // The workers' backends reported their commits as they closed; this process's backends report theirs
    // within a second. Its own are taken off: the resume, the polls and the final count, and the first read of
    // the counter (the second reads before its own commit).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let commits = crate::stack::commits(pool).await? - commits_before - polls as f64 - 2.0;
    // The database's own span of the burn-down: from the first claim's transaction to the last completion's.
    let busy_seconds: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM max(done_at) - min(lock_at))::float8 FROM apalis.jobs WHERE job_type = $1",
    )
    .bind(Noop::NAME)
    .fetch_one(pool)
    .await?;
    Ok(BurnDown {
        per_second,
        busy_per_second: args.jobs as f64 / busy_seconds,
        worker_cpu_us,
        postgres_cpu_us,
        transactions_per_thousand: commits / args.jobs as f64 * 1000.0,
    })
}

/// The production runner serving the no-op queue, with default `QueueConfig`; cancel the token to drain it.
async fn start_noop_worker(
    pool: &sqlx::PgPool,
    concurrency: usize,
) -> anyhow::Result<(queue::RunningWorker, CancellationToken)> {
    let registry = Registry::new().register::<Noop>();
    let stop = CancellationToken::new();
    let plans = vec![QueuePlan {
        queue: Noop::NAME.into(),
        concurrency,
    }];
    let worker = queue::Worker::new(pool.clone(), registry, ())
        .start(plans, stop.clone())
        .await?;
    Ok((worker, stop))
}

/// The hidden `queue-worker` scenario: one worker process for the burn-down by several processes.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    #[arg(long)]
    database_url: String,
    #[arg(long)]
    concurrency: usize,
}

/// Serves the no-op queue with the production runner, says `ready` on stdout once its runners are started, and
/// stops (draining) when stdin closes.
pub async fn serve(args: WorkerArgs) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt as _;

    let pool = jobs::db::worker_pool(&DatabaseConfig::direct(args.database_url, 40))?;
    let (worker, stop) = start_noop_worker(&pool, args.concurrency).await?;
    println!("ready");
    let mut sink = Vec::new();
    tokio::io::stdin().read_to_end(&mut sink).await?;
    stop.cancel();
    worker.wait().await;
    pool.close().await;
    Ok(())
}
