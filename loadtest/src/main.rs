//! Load, chaos and benchmark programs (`cargo run --release -p loadtest -- <scenario>`). Scenarios arrive with
//! the load-test issue; until then this binary says so rather than pretending to measure.

fn main() -> std::process::ExitCode {
    let scenario = std::env::args().nth(1).unwrap_or_default();
    eprintln!(
        "loadtest: scenario {scenario:?} is not implemented yet (see the load, chaos and benchmarks issue)"
    );
    std::process::ExitCode::FAILURE
}
