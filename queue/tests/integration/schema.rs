//! `queue::schema::migrate` is idempotent: run again on a database where it ran, or where its objects exist
//! without its history (an application's own migrations created them first, as createimage2's did), it fails
//! on nothing and changes nothing.

use sqlx::PgPool;

use crate::support::{TestDb, db};

/// What the queue's schema consists of, as comparable text: the columns, indexes, constraints, triggers,
/// functions and table options (autovacuum's) of the `apalis` and `public` schemas, and the queue's migration
/// history (without its timings).
async fn schema_of(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT item FROM (
             SELECT format('column %s.%s.%s %s %s default %s', table_schema, table_name, column_name, data_type,
                           is_nullable, column_default) AS item
               FROM information_schema.columns WHERE table_schema IN ('apalis', 'public')
             UNION ALL
             SELECT format('index %s.%s: %s', schemaname, indexname, indexdef)
               FROM pg_indexes WHERE schemaname IN ('apalis', 'public')
             UNION ALL
             SELECT format('constraint %s.%s: %s', conrelid::regclass, conname, pg_get_constraintdef(oid))
               FROM pg_constraint WHERE connamespace::regnamespace::text IN ('apalis', 'public')
             UNION ALL
             SELECT format('trigger %s: %s', tgname, pg_get_triggerdef(oid))
               FROM pg_trigger WHERE NOT tgisinternal
             UNION ALL
             SELECT format('function %s: %s', oid::regprocedure, md5(prosrc))
               FROM pg_proc WHERE pronamespace::regnamespace::text IN ('apalis', 'public')
             UNION ALL
             SELECT format('table %s options %s', oid::regclass, reloptions)
               FROM pg_class WHERE relnamespace::regnamespace::text IN ('apalis', 'public') AND reloptions IS NOT NULL
             UNION ALL
             SELECT format('queue migration %s %s %s %s', version, description, success, encode(checksum, 'hex'))
               FROM apalis._queue_migrations
         ) AS schema ORDER BY item",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn migrating_the_queue_schema_twice_changes_nothing_and_does_not_fail() {
    // A database of nothing, brought up as an application does at start: apalis-postgres, then the queue.
    let fresh = TestDb::empty().await;
    db::build_schema(&fresh.pool).await;
    let built = schema_of(&fresh.pool).await;
    assert!(
        built
            .iter()
            .any(|item| item.starts_with("index apalis.createimage2_jobs_claim_idx")),
        "the queue's migrations ran: {built:#?}"
    );
    queue::schema::migrate(&fresh.pool)
        .await
        .expect("a second run succeeds");
    assert_eq!(
        schema_of(&fresh.pool).await,
        built,
        "a second run changed the schema"
    );

    // A database where it ran in another process long ago (the tests' template) is the same, and stays so.
    let earlier = TestDb::new().await;
    assert_eq!(schema_of(&earlier.pool).await, built);
    queue::schema::migrate(&earlier.pool)
        .await
        .expect("running on an up-to-date database succeeds");
    assert_eq!(schema_of(&earlier.pool).await, built);
}

#[tokio::test]
async fn the_queue_migrations_apply_again_over_their_own_objects_without_changing_them() {
    let db = TestDb::new().await;
    let before = schema_of(&db.pool).await;
    // The objects are there but the history is not: every statement runs again over what it created.
    sqlx::query("DELETE FROM apalis._queue_migrations")
        .execute(&db.pool)
        .await
        .unwrap();
    queue::schema::migrate(&db.pool)
        .await
        .expect("the statements are idempotent");
    assert_eq!(
        schema_of(&db.pool).await,
        before,
        "re-applying the migrations changed the schema"
    );
}
