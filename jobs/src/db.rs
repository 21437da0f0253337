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

use crate::config::DatabaseConfig;

/// The application's migrations, embedded at compile time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Opens a pool. Connections are made lazily, so a role can start (and report not-ready) while the database
/// is down; queries then fail fast after `acquire_timeout` instead of hanging.
pub fn pool(config: &DatabaseConfig) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = config.url.expose_secret().parse()?;
    Ok(PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options.application_name("createimage2")))
}

/// Applies apalis-postgres' migrations, the application's, then the queue's.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    use anyhow::Context as _;
    apalis_postgres::PostgresStorage::<()>::setup(pool)
        .await
        .context("applying apalis-postgres migrations")?;
    MIGRATOR
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
