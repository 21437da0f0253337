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

#[tokio::test]
async fn a_worker_pool_hands_out_an_idle_connection_without_a_ping_and_drops_it_once_its_statement_fails()
 {
    let db = TestDb::new().await;
    for (role, pool, pings_first) in [
        (
            "api",
            jobs::db::pool(&config(&db, "30000", "60000")).unwrap(),
            true,
        ),
        (
            "worker",
            jobs::db::worker_pool(&config(&db, "30000", "60000")).unwrap(),
            false,
        ),
    ] {
        // One connection, back in the pool and idle.
        let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .unwrap();
        wait_until(|| pool.size() == 1 && pool.num_idle() == 1).await;

        // The server ends it while it is idle, as a restart of the database would.
        sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(backend)
            .execute(&db.pool)
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)",
        )
        .bind(backend)
        .fetch_one(&db.pool)
        .await
        .unwrap()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "backend {backend} still there"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }

        // The api's pool pings it, finds it broken and opens another; the worker's hands it out as it is.
        let first = sqlx::query_scalar::<_, i32>("SELECT 1")
            .fetch_one(&pool)
            .await;
        assert_eq!(first.is_ok(), pings_first, "{role} pool: {first:?}");
        // Either way the next statement runs on a new connection: the broken one was dropped.
        let next: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_ne!(next, backend, "{role} pool");
        pool.close().await;
    }
}

/// Polls `done` every 5 ms, for at most 5 s.
async fn wait_until(done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
