//! Load and benchmark programs: `cargo run --release -p loadtest -- <scenario>`. Each scenario prints a table
//! (median and min–max over `--runs`) and one final summary line, and can write its numbers as JSON.

mod apalis_defaults;
mod api_load;
mod chaos;
mod pages;
mod pgbench;
mod pipeline;
mod queue_load;
mod report;
mod sse;
mod stack;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "loadtest",
    about = "Benchmarks of createimage2 on one machine."
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// The queue layer with no-op jobs: bulk enqueue, burn-down of a backlog, idle insert→start latency.
    Queue(queue_load::Args),
    /// Whole generations through api + worker + the kie.ai and S3 stand-ins: throughput, intent→stored and
    /// the pipeline's overhead, kie's 20-per-10 s limit held, memory with hundreds polling.
    Pipeline(pipeline::Args),
    /// Intent recording (POST /api/v1/generations, no worker) against pgbench's ceiling for the same SQL;
    /// the status and list endpoints.
    Api(api_load::Args),
    /// Thousands of generations while worker processes are SIGKILLed, Postgres restarts once and the stand-ins
    /// inject faults; then the audit of every credit. Exits non-zero on any violation.
    Chaos(chaos::Args),
    /// The site's HTML pages for a signed-in member with a full gallery: time per request.
    Pages(pages::Args),
    /// Live status at scale: thousands of server-sent-event streams on one api process while generations
    /// move: the api's memory, change-to-client latency, and the JSON API's latency meanwhile.
    Sse(sse::Args),
    /// One no-op worker process for `queue`'s burn-down by several processes.
    #[command(hide = true)]
    QueueWorker(queue_load::WorkerArgs),
    /// Runs the `createimage2` command line in this process: how `chaos` starts its worker processes.
    #[command(hide = true)]
    Createimage2 {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.scenario {
        Scenario::Queue(args) => runtime.block_on(queue_load::run(args)),
        Scenario::Pipeline(args) => runtime.block_on(pipeline::run(args)),
        Scenario::Api(args) => runtime.block_on(api_load::run(args)),
        Scenario::Chaos(args) => runtime.block_on(chaos::run(args)),
        Scenario::Pages(args) => runtime.block_on(pages::run(args)),
        Scenario::Sse(args) => runtime.block_on(sse::run(args)),
        Scenario::QueueWorker(args) => runtime.block_on(queue_load::serve(args)),
        Scenario::Createimage2 { args } => {
            let cli = createimage2::cli::Cli::parse_from(
                std::iter::once("createimage2".to_owned()).chain(args),
            );
            runtime.block_on(createimage2::cli::run(cli))
        }
    }
}
