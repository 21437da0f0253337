//! The queue's additions to apalis-postgres' schema: the claim, running, done, worker and idempotency indexes
//! the runtime's statements are planned on, one insert notification per statement, and the table of operator
//! pauses. `queue/migrations/` holds them; their history is kept in `apalis._queue_migrations`, apart from the
//! application's.

use sqlx::PgPool;

/// Applies the queue's migrations. Run it after apalis-postgres' `PostgresStorage::setup` (which creates the
/// `apalis` schema and its tables); safe to run from several processes at once (sqlx takes an advisory lock)
/// and on every start.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    migrator().run(pool).await
}

/// The queue's migrations, for a caller that fingerprints its schema (a test template, say).
pub fn migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.dangerous_set_table_name("apalis._queue_migrations");
    // A rollback runs the previous release's `migrate` on a database the newer one migrated: the newer
    // (expand-only) migrations it does not know are left alone, not refused.
    migrator.set_ignore_missing(true);
    migrator
}
