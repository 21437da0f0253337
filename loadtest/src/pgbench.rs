//! pgbench, PostgreSQL's own C benchmark client: the ceiling the scenarios compare the project's SQL paths with.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;

/// pgbench's answer for one script and client count.
#[derive(Debug, Clone, Copy)]
pub struct Bench {
    /// Transactions (script runs) per second, without the initial connection time.
    pub tps: f64,
    pub latency_ms: f64,
}

/// How long a pgbench run lasts.
#[derive(Debug, Clone, Copy)]
pub enum Length {
    /// `-T`: this long.
    For(Duration),
    /// `-t`: this many script runs per client.
    Transactions(usize),
}

/// pgbench on PATH, else the newest under /usr/lib/postgresql/*/bin.
pub fn find() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("pgbench");
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| entry.ok().map(|e| e.path().join("bin/pgbench")))
        .filter(|p| p.is_file())
        .collect();
    versions.sort();
    versions.pop()
}

/// `pgbench -n -M prepared` (the project's driver prepares its statements too) of one script, with `defines`
/// as `-D name=value` variables.
pub async fn run(
    pgbench: &Path,
    database_url: &str,
    database_name: &str,
    script: &Path,
    clients: usize,
    length: Length,
    defines: &[(&str, &str)],
) -> anyhow::Result<Bench> {
    let url = url::Url::parse(database_url)?;
    let mut command = tokio::process::Command::new(pgbench);
    command
        .args(["-n", "-M", "prepared", "-f"])
        .arg(script)
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(2).to_string(),
        ]);
    match length {
        Length::For(duration) => command.args(["-T", &duration.as_secs().to_string()]),
        Length::Transactions(count) => command.args(["-t", &count.to_string()]),
    };
    for (name, value) in defines {
        command.arg("-D").arg(format!("{name}={value}"));
    }
    command
        .args([
            "-h",
            url.host_str().unwrap_or("127.0.0.1"),
            "-p",
            &url.port().unwrap_or(5432).to_string(),
            "-U",
            if url.username().is_empty() {
                "postgres"
            } else {
                url.username()
            },
        ])
        .arg(database_name);
    if let Some(password) = url.password() {
        command.env("PGPASSWORD", password);
    }
    let output = command.output().await.context("running pgbench")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "pgbench failed: {}{}",
        stdout,
        String::from_utf8_lossy(&output.stderr)
    );
    let number_after = |prefix: &str| {
        stdout.lines().find_map(|line| {
            line.trim()
                .strip_prefix(prefix)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<f64>().ok())
        })
    };
    let failed = number_after("number of failed transactions:").unwrap_or(0.0);
    anyhow::ensure!(
        failed == 0.0,
        "pgbench: {failed} failed transactions\n{stdout}"
    );
    Ok(Bench {
        tps: number_after("tps =").context("pgbench printed no tps")?,
        latency_ms: number_after("latency average =").unwrap_or(f64::NAN),
    })
}
