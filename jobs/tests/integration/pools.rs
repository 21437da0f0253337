//! The pools every role opens: each connection carries the statement and idle-in-transaction timeouts, so a
//! blocked statement cannot hold a worker's exit or a request for minutes.

use std::collections::HashMap;

use jobs::config::DatabaseConfig;
use testkit::TestDb;

fn config(db: &TestDb, statement_ms: &str, idle_ms: &str) -> DatabaseConfig {
    let vars: HashMap<String, String> = [
        ("DATABASE_URL", db.url.as_str()),
        ("DATABASE_STATEMENT_TIMEOUT_MS", statement_ms),
        ("DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS", idle_ms),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    DatabaseConfig::from_source(&vars).unwrap()
}

#[tokio::test]
async fn every_pooled_connection_carries_the_statement_and_idle_in_transaction_timeouts() {
    let db = TestDb::new().await;
    let pool = jobs::db::pool(&config(&db, "300", "700")).unwrap();
    let show = |name: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(format!("SHOW {name}")))
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(show("statement_timeout").await, "300ms");
    assert_eq!(show("idle_in_transaction_session_timeout").await, "700ms");
    let blocked = sqlx::query("SELECT pg_sleep(5)")
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(
        blocked.to_string().contains("statement timeout"),
        "{blocked}"
    );
    // The LISTEN pool carries them too; the migration pool does not (an index build may take long).
    let listen = jobs::db::listen_pool(&config(&db, "300", "700")).unwrap();
    let timeout: String = sqlx::query_scalar("SHOW statement_timeout")
        .fetch_one(&listen)
        .await
        .unwrap();
    assert_eq!(timeout, "300ms");
    let migrations = jobs::db::migration_pool(&config(&db, "300", "700")).unwrap();
    let timeout: String = sqlx::query_scalar("SHOW statement_timeout")
        .fetch_one(&migrations)
        .await
        .unwrap();
    assert_eq!(timeout, "0");
}
