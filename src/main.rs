//! The `createimage2` binary: reads configuration, wires a role, waits for a shutdown signal. Nothing else.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = createimage2::cli::Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(createimage2::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
