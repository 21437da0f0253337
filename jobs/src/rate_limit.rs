//! Fleet-wide sliding-window rate limits in Postgres (table `rate_limit_events`).
//!
//! Every worker (and api) process takes from the same budget, so N replicas together stay within an
//! upstream's limit (kie.ai: 20 new tasks per 10 s, 10 recordInfo per second) or a per-user rate.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};

/// The answer to a take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Permitted; the event is recorded.
    Granted,
    /// Over budget: try again after this long (when the oldest event in the window expires).
    RetryAfter(Duration),
}

/// Takes one event from the budget `limit` per `window` under `key`, in a short transaction of its own. The
/// key's advisory lock serializes takers of the same key for the length of that transaction.
pub async fn take(pool: &PgPool, key: &str, limit: u32, window: Duration) -> sqlx::Result<Take> {
    let mut tx = pool.begin().await?;
    let answer = take_in(&mut tx, key, limit, window).await?;
    tx.commit().await?;
    Ok(answer)
}

/// [`take`] inside the caller's transaction, so the take commits or rolls back with the state change it
/// permits: a request refused later in that transaction (or failing) gives its event back. `conn` must be in
/// a transaction (a `sqlx::Transaction`): the key's advisory lock is held until it ends, serializing takers
/// of the same key for that long — keep the rest of the transaction short.
pub async fn take_in(
    conn: &mut PgConnection,
    key: &str,
    limit: u32,
    window: Duration,
) -> sqlx::Result<Take> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 20261124))")
        .bind(key)
        .execute(&mut *conn)
        .await?;
    let window_secs = window.as_secs_f64();
    // Forget events that left the window (keeps the table small), then count the rest.
    sqlx::query("DELETE FROM rate_limit_events WHERE key = $1 AND at <= clock_timestamp() - make_interval(secs => $2)")
        .bind(key)
        .bind(window_secs)
        .execute(&mut *conn)
        .await?;
    let (count, oldest_age): (i64, Option<f64>) = sqlx::query_as(
        "SELECT count(*), EXTRACT(EPOCH FROM clock_timestamp() - min(at))::float8 FROM rate_limit_events WHERE key = $1",
    )
    .bind(key)
    .fetch_one(&mut *conn)
    .await?;
    if count < i64::from(limit) {
        sqlx::query("INSERT INTO rate_limit_events (key) VALUES ($1)")
            .bind(key)
            .execute(&mut *conn)
            .await?;
        Ok(Take::Granted)
    } else {
        let wait = (window_secs - oldest_age.unwrap_or(0.0)).max(0.01);
        Ok(Take::RetryAfter(Duration::from_secs_f64(wait)))
    }
}
