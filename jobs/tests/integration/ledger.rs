//! The credit ledger's rules hold in the database itself.

use jobs::credits::{self, Applied, Kind};
use serde_json::json;
use testkit::TestDb;
use uuid::Uuid;

async fn user_with_credits(db: &TestDb, credits: i64) -> Uuid {
    let mut tx = db.pool.begin().await.unwrap();
    let user =
        jobs::accounts::create_user(&mut tx, &format!("{}@example.com", Uuid::new_v4()), None)
            .await
            .unwrap();
    if credits > 0 {
        assert_eq!(
            credits::apply(&mut tx, user, Kind::Grant, credits, "seed", json!({}))
                .await
                .unwrap(),
            Applied::Yes
        );
    }
    tx.commit().await.unwrap();
    user
}

#[tokio::test]
async fn an_effect_with_the_same_business_key_is_applied_once() {
    let db = TestDb::new().await;
    let user = user_with_credits(&db, 0).await;
    let mut conn = db.pool.acquire().await.unwrap();
    assert_eq!(
        credits::apply(&mut conn, user, Kind::Grant, 50, "cs_1", json!({}))
            .await
            .unwrap(),
        Applied::Yes
    );
    assert_eq!(
        credits::apply(&mut conn, user, Kind::Grant, 50, "cs_1", json!({}))
            .await
            .unwrap(),
        Applied::AlreadyApplied
    );
    assert_eq!(credits::balance(&db.pool, user).await.unwrap(), 50);
}

#[tokio::test]
async fn a_reservation_larger_than_the_balance_is_refused_and_the_transaction_stays_usable() {
    let db = TestDb::new().await;
    let user = user_with_credits(&db, 10).await;
    let mut tx = db.pool.begin().await.unwrap();
    let reserved = credits::apply(&mut tx, user, Kind::Reserve, -20, "gen-1", json!({}))
        .await
        .unwrap();
    assert_eq!(reserved, Applied::InsufficientCredits);
    assert_eq!(
        credits::apply(&mut tx, user, Kind::Reserve, -10, "gen-2", json!({}))
            .await
            .unwrap(),
        Applied::Yes
    );
    tx.commit().await.unwrap();
    assert_eq!(credits::balance(&db.pool, user).await.unwrap(), 0);
}

#[tokio::test]
async fn the_database_refuses_a_negative_balance_even_from_raw_sql() {
    let db = TestDb::new().await;
    let user = user_with_credits(&db, 5).await;
    let error = sqlx::query(
        "INSERT INTO credit_ledger (user_id, kind, amount, business_key) VALUES ($1, 'clawback', -6, 'refund-1')",
    )
    .bind(user)
    .execute(&db.pool)
    .await
    .unwrap_err();
    assert!(
        error.to_string().contains("credit_accounts_balance_check"),
        "{error}"
    );
    assert_eq!(credits::balance(&db.pool, user).await.unwrap(), 5);
}

#[tokio::test]
async fn a_reservation_is_settled_or_refunded_never_both() {
    let db = TestDb::new().await;
    let user = user_with_credits(&db, 10).await;
    let mut conn = db.pool.acquire().await.unwrap();
    credits::apply(&mut conn, user, Kind::Reserve, -10, "gen-9", json!({}))
        .await
        .unwrap();
    assert_eq!(
        credits::apply(&mut conn, user, Kind::Settle, 0, "gen-9", json!({}))
            .await
            .unwrap(),
        Applied::Yes
    );
    assert_eq!(
        credits::apply(&mut conn, user, Kind::Refund, 10, "gen-9", json!({}))
            .await
            .unwrap(),
        Applied::AlreadyApplied
    );
    assert_eq!(credits::balance(&db.pool, user).await.unwrap(), 0);
}

#[tokio::test]
async fn ledger_rows_cannot_be_updated_or_deleted() {
    let db = TestDb::new().await;
    let user = user_with_credits(&db, 10).await;
    let update = sqlx::query("UPDATE credit_ledger SET amount = 1000 WHERE user_id = $1")
        .bind(user)
        .execute(&db.pool)
        .await;
    assert!(update.unwrap_err().to_string().contains("append-only"));
    let delete = sqlx::query("DELETE FROM credit_ledger WHERE user_id = $1")
        .bind(user)
        .execute(&db.pool)
        .await;
    assert!(delete.unwrap_err().to_string().contains("append-only"));
}

#[tokio::test]
async fn concurrent_reservations_never_overdraw_the_account() {
    let db = TestDb::new().await;
    let user = user_with_credits(&db, 100).await;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(20));
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let (pool, barrier) = (db.pool.clone(), barrier.clone());
            tokio::spawn(async move {
                let mut tx = pool.begin().await.unwrap();
                barrier.wait().await;
                let applied = credits::apply(
                    &mut tx,
                    user,
                    Kind::Reserve,
                    -10,
                    &format!("g{i}"),
                    json!({}),
                )
                .await
                .unwrap();
                tx.commit().await.unwrap();
                applied
            })
        })
        .collect();
    let mut granted = 0;
    for task in tasks {
        if task.await.unwrap() == Applied::Yes {
            granted += 1;
        }
    }
    assert_eq!(granted, 10);
    assert_eq!(credits::balance(&db.pool, user).await.unwrap(), 0);
}
