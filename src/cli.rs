//! Subcommands: `api`, `worker`, `scheduler`, `migrate`, `dev`, and the operator commands under `jobs`.

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use jobs::{
    config::{Config, DatabaseConfig, Env, LogFormat, PoolMode},
    operator::{Operator, Via},
    telemetry,
};
use queue::ops::{self, DeadJobFilter};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "createimage2",
    version,
    about = "Image generation with gpt-image-2: web tier, workers, scheduler."
)]
pub struct Cli {
    /// Who is acting, for the operators' audit trail (`createimage2 audit`); defaults to $SUDO_USER, then $USER.
    #[arg(long, global = true, env = "OPERATOR_NAME")]
    pub actor: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the site and the JSON API (LISTEN_ADDR), /metrics, /healthz, /readyz (METRICS_LISTEN_ADDR) and,
    /// when OPERATOR_TOKEN is set, the ops console (ADMIN_LISTEN_ADDR).
    /// Records intents and enqueues jobs; never calls an external service on a request path.
    Api,
    /// Print the JSON API's OpenAPI 3.1 document (what `/api/v1/openapi.json` serves), for client generators and
    /// validators. Needs no configuration.
    Openapi,
    /// Run background jobs from the given queues. Start several workers with different queues and
    /// concurrency to scale each queue independently. SIGTERM drains: no new jobs are claimed, running ones get
    /// QUEUE_SHUTDOWN_GRACE_SECONDS to finish, the rest are handed back to the queue.
    Worker {
        /// Comma-separated queue names, or `all`.
        #[arg(long, default_value = "all")]
        queues: String,
        /// Jobs run at once per queue, as queue=N (repeatable or comma-separated); unnamed queues get 10.
        #[arg(long, value_name = "QUEUE=N")]
        concurrency: Vec<String>,
    },
    /// Enqueue periodic work at its ticks (idempotent per tick, safe with any number of replicas), and export
    /// the database-derived queue gauges on /metrics.
    Scheduler,
    /// Apply database migrations (apalis-postgres' queue schema, then the application's) and exit.
    Migrate,
    /// Run the whole stack in one process on local defaults: Postgres (DATABASE_URL, else 127.0.0.1:5432,
    /// else a private throwaway cluster), an in-process S3 server, the stand-ins, api + all workers +
    /// scheduler. Prints the site URL, the metrics URL and a demo API key. Ctrl-C drains and exits.
    #[cfg(feature = "dev")]
    Dev {
        /// Site and JSON API address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// /metrics, /healthz and /readyz address.
        #[arg(long, default_value = "127.0.0.1:9090")]
        metrics_listen: std::net::SocketAddr,
        /// The ops console's address (its password is printed, or OPERATOR_TOKEN).
        #[arg(long, default_value = "127.0.0.1:9091")]
        console_listen: std::net::SocketAddr,
    },
    /// Operator commands on the job queue.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// Operator commands on accounts (deletion on request by e-mail, or of a child's account).
    Accounts {
        #[command(subcommand)]
        command: AccountsCommand,
    },
    /// Publish a new privacy-policy version (policy §9): registered users are e-mailed once, at least 30 days
    /// before it takes effect.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Operator commands on upstreams (kie.ai): submissions pause fleet-wide on account-level errors.
    Upstream {
        #[command(subcommand)]
        command: UpstreamCommand,
    },
    /// The operators' audit trail: who did what, to what, when and why (CLI and console), newest first.
    Audit {
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum AccountsCommand {
    /// Close an account at once and delete its data (the same job as a user's own deletion). Only the fact
    /// and the reason of the deletion are kept.
    Delete {
        #[arg(long)]
        email: String,
        /// `child` for an account reported as belonging to a child under 13, `request` for a deletion asked
        /// for by e-mail, `operator` otherwise.
        #[arg(long, value_parser = ["child", "request", "operator"])]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Publish `version`, in force from `effective` (YYYY-MM-DD, UTC, at least 30 days ahead; refused otherwise).
    Publish {
        #[arg(long)]
        version: String,
        #[arg(long, value_name = "YYYY-MM-DD")]
        effective: chrono::NaiveDate,
        /// What changes, in a sentence or two, for the e-mail.
        #[arg(long)]
        summary: String,
    },
    /// The version in force and the upcoming one.
    Status,
}

#[derive(Debug, Subcommand)]
pub enum UpstreamCommand {
    /// Paused upstreams: who paused them (operator or automatic), since when, why.
    Status,
    /// Stop submitting to an upstream (e.g. `kie`) fleet-wide, until an operator resumes it (the automatic
    /// probe lifts only automatic pauses).
    Pause {
        upstream: String,
        /// Why, for the audit trail (required).
        #[arg(long)]
        reason: String,
    },
    /// Resume submitting to a paused upstream (whoever paused it).
    Resume {
        upstream: String,
        /// Why, for the audit trail (required).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Every queue with its depth by state and the age of its oldest waiting job.
    Stats,
    /// Dead jobs (failed permanently or out of attempts) with their last error.
    Dead {
        #[arg(long)]
        queue: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Run a dead or cancelled job again from its first attempt.
    Retry {
        id: String,
        /// Why, for the audit trail (required).
        #[arg(long)]
        reason: String,
    },
    /// Cancel a job that has not started.
    Cancel {
        id: String,
        /// Why, for the audit trail (required).
        #[arg(long)]
        reason: String,
    },
    /// Delete a dead job for good.
    Discard {
        id: String,
        /// Why, for the audit trail (required).
        #[arg(long)]
        reason: String,
    },
    /// Run a queue's dead jobs again (those whose last error contains a text, or all), at most --limit.
    RetryDead(DeadJobs),
    /// Delete a queue's dead jobs for good (those whose last error contains a text, or all), at most --limit.
    DiscardDead(DeadJobs),
    /// Stop workers claiming from a queue (running jobs finish). Unknown queue names are refused.
    Pause {
        queue: String,
        /// Why, for the audit trail (required).
        #[arg(long)]
        reason: String,
    },
    /// Let workers claim from a paused queue again.
    Resume {
        queue: String,
        /// Why, for the audit trail (required).
        #[arg(long)]
        reason: String,
    },
}

/// The dead jobs a bulk action takes.
#[derive(Debug, Args)]
pub struct DeadJobs {
    #[arg(long)]
    queue: String,
    /// Only jobs whose last error contains this text (case-insensitive).
    #[arg(long)]
    error_contains: Option<String>,
    #[arg(long, default_value_t = 1000)]
    limit: i64,
    /// Why, for the audit trail (required).
    #[arg(long)]
    reason: String,
}

impl DeadJobs {
    fn filter(&self) -> DeadJobFilter<'_> {
        DeadJobFilter {
            queue: &self.queue,
            error_contains: self.error_contains.as_deref(),
            limit: self.limit,
        }
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let operator = || {
        let name = cli
            .actor
            .clone()
            .or_else(|| std::env::var("SUDO_USER").ok())
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_default();
        Operator::new(name, Via::Cli).context("name yourself with --actor (or OPERATOR_NAME)")
    };
    match cli.command {
        Command::Api => {
            let config = load()?;
            let api = api::Api::build(&config).await?;
            tracing::info!(addr = %api.addr(), metrics = ?api.ops_addr(), "api listening");
            api.run_until_stopped(shutdown_signal()).await
        }
        Command::Openapi => {
            println!("{}", api::openapi::DOCUMENT.to_pretty_json()?);
            Ok(())
        }
        Command::Worker {
            queues,
            concurrency,
        } => {
            let config = load()?;
            let registry = jobs::kinds::registry();
            let plans = worker::plans(&registry, &queues, &concurrency)?;
            tracing::info!(?plans, "worker starting");
            worker::Worker::build(&config, registry, plans)
                .await?
                .run_until_stopped(shutdown_signal())
                .await
        }
        Command::Scheduler => {
            let config = load()?;
            scheduler::Scheduler::build(&config)
                .await?
                .run_until_stopped(shutdown_signal())
                .await
        }
        Command::Migrate => {
            // Run by people and by deploys (init containers, a Job): the deploy's LOG_FORMAT when it sets one.
            let format = std::env::var("LOG_FORMAT")
                .ok()
                .and_then(|f| f.parse().ok())
                .unwrap_or(LogFormat::Pretty);
            telemetry::init_logging(format);
            let database = DatabaseConfig::from_source(&Env)?;
            // A direct connection: the migrator's advisory lock is a session's.
            let pool = jobs::db::migration_pool(&database)?;
            jobs::db::migrate(&pool).await?;
            if database.pool_mode == PoolMode::Transaction {
                jobs::db::set_role_timeouts(&pool, &database).await?;
                println!("statement and idle-in-transaction timeouts set as the role's defaults");
            }
            println!("migrations applied");
            Ok(())
        }
        #[cfg(feature = "dev")]
        Command::Dev {
            listen,
            metrics_listen,
            console_listen,
        } => crate::dev::run(listen, metrics_listen, console_listen, shutdown_signal()).await,
        Command::Jobs { command } => {
            let pool = jobs::db::pool(&DatabaseConfig::from_source(&Env)?)?;
            jobs_command(&pool, command, operator).await
        }
        Command::Audit { limit } => {
            let pool = jobs::db::pool(&DatabaseConfig::from_source(&Env)?)?;
            for a in jobs::operator::recent_actions(&pool, limit).await? {
                println!(
                    "{}  {} ({})  {} {}  reason: {}  {}",
                    a.at.format("%Y-%m-%d %H:%M:%S"),
                    a.actor,
                    a.via,
                    a.action,
                    a.target,
                    if a.reason.is_empty() { "-" } else { &a.reason },
                    a.detail
                );
            }
            Ok(())
        }
        Command::Accounts {
            command: AccountsCommand::Delete { email, reason },
        } => {
            let pool = jobs::db::pool(&DatabaseConfig::from_source(&Env)?)?;
            let reason = match reason.as_str() {
                "child" => jobs::accounts::DeletionReason::ChildAccount,
                "request" => jobs::accounts::DeletionReason::UserRequest,
                _ => jobs::accounts::DeletionReason::Operator,
            };
            let user = jobs::accounts::find_user_by_email(&pool, &email)
                .await?
                .with_context(|| format!("no account with the e-mail {email}"))?;
            let operator = operator()?;
            let mut tx = pool.begin().await?;
            let deletion = jobs::accounts::request_deletion(&mut tx, user, reason).await?;
            // The deletion's id, never the address: only the fact and reason of a deletion are kept.
            operator
                .record(
                    &mut tx,
                    "accounts.delete",
                    &deletion
                        .map_or_else(|| "already being deleted".to_owned(), |id| id.to_string()),
                    reason.as_str(),
                    serde_json::json!({}),
                )
                .await?;
            tx.commit().await?;
            match deletion {
                Some(id) => println!("account closed; deletion {id} queued"),
                None => println!("that account is already being deleted"),
            }
            Ok(())
        }
        Command::Policy { command } => {
            let pool = jobs::db::pool(&DatabaseConfig::from_source(&Env)?)?;
            match command {
                PolicyCommand::Publish {
                    version,
                    effective,
                    summary,
                } => {
                    let effective_at = effective
                        .and_hms_opt(0, 0, 0)
                        .expect("midnight exists")
                        .and_utc();
                    jobs::policy::publish(&pool, &version, effective_at, &summary).await?;
                    let mut tx = pool.begin().await?;
                    operator()?
                        .record(
                            &mut tx,
                            "policy.publish",
                            &version,
                            &summary,
                            serde_json::json!({ "effective": effective.to_string() }),
                        )
                        .await?;
                    tx.commit().await?;
                    println!("published {version}, effective {effective}; notices are being sent");
                }
                PolicyCommand::Status => {
                    match jobs::policy::current(&pool).await? {
                        Some(p) => println!(
                            "in force: {} since {}",
                            p.version,
                            p.effective_at.date_naive()
                        ),
                        None => println!("in force: the built-in policy"),
                    }
                    if let Some(p) = jobs::policy::upcoming(&pool).await? {
                        println!(
                            "upcoming: {} from {} ({})",
                            p.version,
                            p.effective_at.date_naive(),
                            p.summary
                        );
                    }
                }
            }
            Ok(())
        }
        Command::Upstream { command } => {
            let pool = jobs::db::pool(&DatabaseConfig::from_source(&Env)?)?;
            match command {
                UpstreamCommand::Status => {
                    let paused = jobs::upstream::paused(&pool).await?;
                    for name in jobs::upstream::KNOWN {
                        match paused.iter().find(|p| p.upstream == *name) {
                            Some(p) => println!(
                                "{name}: paused ({}) since {}: {}",
                                p.kind, p.paused_at, p.reason
                            ),
                            None => println!("{name}: submitting"),
                        }
                    }
                }
                UpstreamCommand::Pause { upstream, reason } => {
                    let changed = operator()?
                        .pause_upstream(&pool, &upstream, &reason)
                        .await?;
                    println!(
                        "{}",
                        if changed {
                            format!("paused {upstream} until an operator resumes it")
                        } else {
                            format!("{upstream} was paused by an operator already")
                        }
                    );
                }
                UpstreamCommand::Resume { upstream, reason } => {
                    let was = operator()?
                        .resume_upstream(&pool, &upstream, &reason)
                        .await?;
                    println!(
                        "{}",
                        if was {
                            format!("resumed {upstream}")
                        } else {
                            format!("{upstream} was not paused")
                        }
                    );
                }
            }
            Ok(())
        }
    }
}

fn load() -> anyhow::Result<Config> {
    let config = Config::from_env().context("configuration")?;
    telemetry::init_logging(config.log_format);
    Ok(config)
}

async fn jobs_command(
    pool: &sqlx::PgPool,
    command: JobsCommand,
    operator: impl Fn() -> anyhow::Result<Operator>,
) -> anyhow::Result<()> {
    match command {
        JobsCommand::Stats => {
            println!(
                "{:<28} {:>8} {:>9} {:>8} {:>6} {:>12} paused",
                "queue", "waiting", "scheduled", "running", "dead", "oldest_s"
            );
            let known: Vec<&str> = jobs::kinds::registry().queues().collect();
            for s in ops::queue_stats_with_idle(pool, &known).await? {
                println!(
                    "{:<28} {:>8} {:>9} {:>8} {:>6} {:>12.1} {}",
                    s.queue,
                    s.waiting,
                    s.scheduled,
                    s.running,
                    s.dead,
                    s.oldest_waiting_age_seconds,
                    s.paused
                );
            }
        }
        JobsCommand::Dead { queue, limit } => {
            for job in ops::dead_jobs(pool, queue.as_deref(), limit).await? {
                println!(
                    "{}  {}  attempts {}/{}  died {}\n    error: {}\n    payload: {}",
                    job.id,
                    job.queue,
                    job.attempts,
                    job.max_attempts,
                    job.done_at.map(|d| d.to_rfc3339()).unwrap_or_default(),
                    job.last_error.unwrap_or_default(),
                    job.payload
                );
            }
        }
        JobsCommand::Retry { id, reason } => {
            operator()?.retry_job(pool, &id, &reason).await?;
            println!("retrying {id}");
        }
        JobsCommand::Cancel { id, reason } => {
            operator()?.cancel_job(pool, &id, &reason).await?;
            println!("cancelled {id}");
        }
        JobsCommand::Discard { id, reason } => {
            operator()?.discard_job(pool, &id, &reason).await?;
            println!("discarded {id}");
        }
        JobsCommand::RetryDead(dead) => {
            let count = operator()?
                .retry_dead(pool, &dead.filter(), &dead.reason)
                .await?;
            println!("retrying {count} dead jobs of {}", dead.queue);
        }
        JobsCommand::DiscardDead(dead) => {
            let count = operator()?
                .discard_dead(pool, &dead.filter(), &dead.reason)
                .await?;
            println!("discarded {count} dead jobs of {}", dead.queue);
        }
        JobsCommand::Pause { queue, reason } => {
            let changed = operator()?.pause_queue(pool, &queue, &reason).await?;
            println!(
                "{}",
                if changed {
                    format!("paused {queue}")
                } else {
                    format!("{queue} was paused already")
                }
            );
        }
        JobsCommand::Resume { queue, reason } => {
            let changed = operator()?.resume_queue(pool, &queue, &reason).await?;
            println!(
                "{}",
                if changed {
                    format!("resumed {queue}")
                } else {
                    format!("{queue} was not paused")
                }
            );
        }
    }
    Ok(())
}

/// A token cancelled on SIGINT (Ctrl-C) or SIGTERM.
pub fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("shutdown signal received; draining");
        cancel.cancel();
    });
    token
}
