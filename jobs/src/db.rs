//! Connecting to Postgres and bringing its schema up to date.
//!
//! Three migration sets run, in order: apalis-postgres' own (schema `apalis`, history in
//! `apalis._sqlx_migrations`), the application's in `migrations/` (history in `public._sqlx_migrations`), then
//! the queue crate's (`queue/migrations/`, history in `apalis._queue_migrations`). The queue's come last
//! because they are idempotent copies of what the application's migrations 4, 5, 9 and 10 created before the
//! queue was a crate of its own: here they change nothing, on a database of the queue alone they build it.
//! All are forward-only and safe to run from several processes at once (sqlx takes an advisory lock).

use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::config::{DatabaseConfig, PoolMode};

/// The application's migrations, embedded at compile time. A rollback runs the previous release's `migrate` on
/// a database the newer release migrated: migrations are expand-then-contract, so the newer ones it does not
/// know are left alone rather than refused.
pub fn migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!("../migrations");
    migrator.set_ignore_missing(true);
    migrator
}

/// Opens a pool. Connections are made lazily, so a role can start (and report not-ready) while the database
/// is down; queries then fail fast after `acquire_timeout` instead of hanging. Every connection carries the
/// statement and idle-in-transaction timeouts: as startup options on a direct connection; through a
/// transaction-mode pooler (which refuses them) they are the role's defaults in the database, set by
/// [`set_role_timeouts`] when `createimage2 migrate` runs.
pub fn pool(config: &DatabaseConfig) -> Result<PgPool, sqlx::Error> {
    pool_with(config, true)
}

/// A worker's pool: as [`pool`], but an idle connection is handed out without a ping first. sqlx pings every
/// connection it hands out (a round trip to the server) and again as it takes one back; without the first, each
/// claim and each completion of the queue runtime is one round trip from the runner rather than two (issue 19:
/// the A/B in loadtest/README.md). The price: a
/// connection that broke while idle (the database restarted) is handed out once, its statement fails — a claim
/// or completion the runtime retries, or a job attempt the queue retries — and sqlx drops it as it comes back
/// (the ping on release fails). The api keeps the ping: a request there has no retry.
pub fn worker_pool(config: &DatabaseConfig) -> Result<PgPool, sqlx::Error> {
    pool_with(config, false)
}

fn pool_with(config: &DatabaseConfig, ping_before_use: bool) -> Result<PgPool, sqlx::Error> {
    let mut options: PgConnectOptions = config.url.expose_secret().parse()?;
    options = options.application_name("createimage2");
    if config.pool_mode == PoolMode::Direct {
        options = options.options(timeout_settings(config));
    }
    Ok(PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .test_before_acquire(ping_before_use)
        .connect_lazy_with(options))
}

/// The pool LISTEN connections are taken from (`sqlx::postgres::PgListener::connect_with` holds one of its
/// connections while it listens): `DATABASE_LISTEN_URL`, a direct connection, or `DATABASE_URL`. At most two
/// per process (a worker's wake-ups and, in `dev`, the api's live status), outside `DATABASE_MAX_CONNECTIONS`.
pub fn listen_pool(config: &DatabaseConfig) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = config.direct_url().expose_secret().parse()?;
    Ok(PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(
            options
                .application_name("createimage2-listen")
                .options(timeout_settings(config)),
        ))
}

/// A pool on the direct connection for `createimage2 migrate`: sqlx's migrator holds a session advisory lock,
/// which a transaction-mode pooler would hand to someone else.
pub fn migration_pool(config: &DatabaseConfig) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = config.direct_url().expose_secret().parse()?;
    // No statement timeout: an index build may take long, and the migrator waits on another replica's lock.
    Ok(PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(30))
        .connect_lazy_with(
            options
                .application_name("createimage2-migrate")
                .options([("statement_timeout", "0"), ("lock_timeout", "0")]),
        ))
}

fn timeout_settings(config: &DatabaseConfig) -> [(&'static str, String); 2] {
    [
        (
            "statement_timeout",
            config.statement_timeout.as_millis().to_string(),
        ),
        (
            "idle_in_transaction_session_timeout",
            config.idle_in_transaction_timeout.as_millis().to_string(),
        ),
    ]
}

/// Makes the configured timeouts the connecting role's defaults in this database (what a transaction-mode
/// pooler's shared sessions start with). A role may set its own defaults; no superuser is needed.
pub async fn set_role_timeouts(pool: &PgPool, config: &DatabaseConfig) -> sqlx::Result<()> {
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(pool)
        .await?;
    for (name, millis) in timeout_settings(config) {
        // ALTER ROLE takes no bind parameters; the names are constants, the database name and value are quoted.
        let statement = format!(
            "ALTER ROLE CURRENT_USER IN DATABASE \"{}\" SET {name} = {}",
            database.replace('"', "\"\""),
            millis.parse::<u128>().expect("a number of milliseconds"),
        );
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// Applies apalis-postgres' migrations, the application's, then the queue's.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    use anyhow::Context as _;
    apalis_postgres::PostgresStorage::<()>::setup(pool)
        .await
        .context("applying apalis-postgres migrations")?;
    migrator()
        .run(pool)
        .await
        .context("applying the application's migrations")?;
    queue::schema::migrate(pool)
        .await
        .context("applying the queue's migrations")?;
    Ok(())
}

/// Whether the database answers a trivial query.
pub async fn is_reachable(pool: &PgPool) -> bool {
    sqlx::query("SELECT 1").execute(pool).await.is_ok()
}
