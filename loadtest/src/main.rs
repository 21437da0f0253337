//! Load and benchmark programs: `cargo run --release -p loadtest -- <scenario>`. Each scenario prints a table
//! (median and min–max over `--runs`) and one final summary line, and can write its numbers as JSON.

mod apalis_defaults;
mod queue;

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
    Queue(queue::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.scenario {
        Scenario::Queue(args) => runtime.block_on(queue::run(args)),
    }
}
