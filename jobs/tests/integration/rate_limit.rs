//! The fleet-wide rate limit, taken alone or inside the caller's transaction.

use std::time::Duration;

use jobs::rate_limit::{self, Take};
use testkit::TestDb;

const MINUTE: Duration = Duration::from_secs(60);

async fn events(db: &TestDb, key: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM rate_limit_events WHERE key = $1")
        .bind(key)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_take_grants_up_to_the_limit_then_says_how_long_to_wait() {
    let db = TestDb::new().await;
    for _ in 0..2 {
        assert_eq!(
            rate_limit::take(&db.pool, "k", 2, MINUTE).await.unwrap(),
            Take::Granted
        );
    }
    match rate_limit::take(&db.pool, "k", 2, MINUTE).await.unwrap() {
        Take::RetryAfter(wait) => assert!(wait > Duration::from_secs(50) && wait <= MINUTE),
        Take::Granted => panic!("a third take within the minute was granted"),
    }
    assert_eq!(events(&db, "k").await, 2, "a refused take records nothing");
}

#[tokio::test]
async fn a_take_inside_a_transaction_that_rolls_back_gives_the_event_back() {
    let db = TestDb::new().await;
    let mut tx = db.pool.begin().await.unwrap();
    assert_eq!(
        rate_limit::take_in(&mut tx, "k", 1, MINUTE).await.unwrap(),
        Take::Granted
    );
    tx.rollback().await.unwrap();
    assert_eq!(events(&db, "k").await, 0);
    assert_eq!(
        rate_limit::take(&db.pool, "k", 1, MINUTE).await.unwrap(),
        Take::Granted,
        "the budget of one is still there"
    );
}

#[tokio::test]
async fn a_second_taker_of_the_key_waits_for_the_first_transaction_and_then_sees_its_event() {
    let db = TestDb::new().await;
    let mut first = db.pool.begin().await.unwrap();
    assert_eq!(
        rate_limit::take_in(&mut first, "k", 1, MINUTE)
            .await
            .unwrap(),
        Take::Granted
    );
    let pool = db.pool.clone();
    let second = tokio::spawn(async move {
        let mut tx = pool.begin().await.unwrap();
        let answer = rate_limit::take_in(&mut tx, "k", 1, MINUTE).await.unwrap();
        tx.commit().await.unwrap();
        answer
    });
    // The second taker is blocked on the key's advisory lock, which the open transaction still holds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks
              WHERE locktype = 'advisory' AND NOT granted
                AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if waiting == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second taker never waited for the lock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!second.is_finished());
    first.commit().await.unwrap();
    assert!(
        matches!(second.await.unwrap(), Take::RetryAfter(_)),
        "the budget of one was spent by the first transaction"
    );
    assert_eq!(events(&db, "k").await, 1);
}
