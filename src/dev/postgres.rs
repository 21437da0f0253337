//! Finding a Postgres for `dev`: `DATABASE_URL` if set; else the server at 127.0.0.1:5432 (creating database
//! `createimage2_dev`); else a private throwaway cluster started from the PostgreSQL binaries on this machine
//! (data under the target directory; run as an unprivileged user when we are root).

use std::{
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail};
use sqlx::{Connection, PgConnection};

/// The database name `dev` uses on a shared server.
pub const DEV_DATABASE: &str = "createimage2_dev";

/// Where the database came from; a private cluster is stopped when this is dropped.
#[derive(Debug)]
pub struct DevPostgres {
    pub url: String,
    pub source: &'static str,
    cluster: Option<PrivateCluster>,
}

impl DevPostgres {
    pub fn is_private_cluster(&self) -> bool {
        self.cluster.is_some()
    }
}

/// Resolves the database in the documented order. `server` is the admin URL of the local server to try
/// (normally `postgres://postgres@127.0.0.1:5432/postgres`), `data_root` where a private cluster lives.
pub async fn resolve(
    env_url: Option<String>,
    server: &str,
    data_root: &Path,
) -> anyhow::Result<DevPostgres> {
    if let Some(url) = env_url {
        return Ok(DevPostgres {
            url,
            source: "DATABASE_URL",
            cluster: None,
        });
    }
    if let Ok(Ok(mut admin)) =
        tokio::time::timeout(Duration::from_secs(3), PgConnection::connect(server)).await
    {
        let url = ensure_database(&mut admin, server, DEV_DATABASE).await?;
        return Ok(DevPostgres {
            url,
            source: "the server at 127.0.0.1:5432",
            cluster: None,
        });
    }
    let cluster = PrivateCluster::start(data_root).await?;
    let admin_url = cluster.admin_url();
    let mut admin = PgConnection::connect(&admin_url)
        .await
        .context("connecting to the private cluster")?;
    let url = ensure_database(&mut admin, &admin_url, DEV_DATABASE).await?;
    Ok(DevPostgres {
        url,
        source: "a private cluster",
        cluster: Some(cluster),
    })
}

async fn ensure_database(
    admin: &mut PgConnection,
    admin_url: &str,
    name: &str,
) -> anyhow::Result<String> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut *admin)
            .await?;
    if !exists {
        // A constant identifier: no injection possible.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut *admin)
            .await?;
    }
    let mut url = url::Url::parse(admin_url)?;
    url.set_path(&format!("/{name}"));
    Ok(url.to_string())
}

/// A Postgres cluster of our own, started with initdb/pg_ctl and stopped on drop.
#[derive(Debug)]
pub struct PrivateCluster {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    run_as: Option<(u32, u32)>,
}

impl PrivateCluster {
    pub async fn start(root: &Path) -> anyhow::Result<Self> {
        let bin = find_postgres_bin().context(
            "no PostgreSQL server found: set DATABASE_URL, start one on 127.0.0.1:5432, or install PostgreSQL \
             (Debian/Ubuntu: `apt-get install postgresql`; macOS: `brew install postgresql`) so initdb and pg_ctl \
             are on PATH or under /usr/lib/postgresql/*/bin",
        )?;
        let run_as = unprivileged_user()?;
        std::fs::create_dir_all(root)?;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755))?;
        let data = root.join("data");
        let port = free_port()?;
        let cluster = Self {
            bin,
            data,
            port,
            run_as,
        };
        if !cluster.data.join("PG_VERSION").exists() {
            std::fs::create_dir_all(&cluster.data)?;
            std::fs::set_permissions(&cluster.data, std::fs::Permissions::from_mode(0o700))?;
            if let Some((uid, gid)) = run_as {
                std::os::unix::fs::chown(&cluster.data, Some(uid), Some(gid))?;
            }
            cluster.run(
                "initdb",
                &[
                    "-D",
                    path_str(&cluster.data)?,
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                ],
            )?;
        }
        let options =
            format!("-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''");
        let log = cluster.data.join("server.log");
        cluster.run(
            "pg_ctl",
            &[
                "-D",
                path_str(&cluster.data)?,
                "-o",
                &options,
                "-l",
                path_str(&log)?,
                "-w",
                "start",
            ],
        )?;
        Ok(cluster)
    }

    /// Stops the server (fast: open sessions are cut) and starts it again on the same port; the chaos runs'
    /// "Postgres restarts once". Blocks until the server accepts connections again.
    pub fn restart(&self) -> anyhow::Result<()> {
        let log = self.data.join("server.log");
        // `-l`: without it the new server would keep pg_ctl's output pipe open, and this would never return.
        self.run(
            "pg_ctl",
            &[
                "-D",
                path_str(&self.data)?,
                "-l",
                path_str(&log)?,
                "-m",
                "fast",
                "-w",
                "restart",
            ],
        )
    }

    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let mut command = Command::new(self.bin.join(program));
        command.args(args).current_dir("/");
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid);
        }
        let output = command
            .output()
            .with_context(|| format!("running {program}"))?;
        if !output.status.success() {
            bail!(
                "{program} failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        if let Ok(data) = path_str(&self.data) {
            let _ = self.run("pg_ctl", &["-D", data, "-m", "fast", "-w", "stop"]);
        }
    }
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("path {} is not UTF-8", path.display()))
}

/// `initdb` and `pg_ctl` on PATH, else the newest `/usr/lib/postgresql/<version>/bin`.
fn find_postgres_bin() -> Option<PathBuf> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(path) = std::env::var_os("PATH")
        && let Some(dir) = std::env::split_paths(&path).find(|dir| has_both(dir))
    {
        return Some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| has_both(dir))
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir)
}

/// Postgres refuses to run as root: pick the `postgres` user, else `nobody`.
fn unprivileged_user() -> anyhow::Result<Option<(u32, u32)>> {
    if !nix::unistd::Uid::effective().is_root() {
        return Ok(None);
    }
    for name in ["postgres", "nobody"] {
        if let Some(user) = nix::unistd::User::from_name(name)? {
            return Ok(Some((user.uid.as_raw(), user.gid.as_raw())));
        }
    }
    bail!("running as root and found neither a `postgres` nor a `nobody` user to run PostgreSQL as")
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
