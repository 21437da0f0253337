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
    take_many(pool, key, 1, limit, window).await
}

/// [`take`] for `tokens` at once (a request for several generations takes one per generation): all are
/// granted, or none.
pub async fn take_many(
    pool: &PgPool,
    key: &str,
    tokens: u32,
    limit: u32,
    window: Duration,
) -> sqlx::Result<Take> {
    let mut tx = pool.begin().await?;
    let answer = take_across(&mut tx, &[key], tokens, limit, window).await?;
    tx.commit().await?;
    Ok(answer)
}

/// [`take`] inside the caller's transaction, so the take commits or rolls back with the state change it
/// permits. `conn` must be in a transaction (a `sqlx::Transaction`): the key's advisory lock is held until it
/// ends, serializing takers of the same key for that long — keep the rest of the transaction short. A budget
/// that protects against abuse must not roll back with a refusal: use [`take`] for those.
pub async fn take_in(
    conn: &mut PgConnection,
    key: &str,
    limit: u32,
    window: Duration,
) -> sqlx::Result<Take> {
    take_across(conn, &[key], 1, limit, window).await
}

/// Takes from the budget of a person's identifier (a client's IP address, an e-mail address) without storing
/// it: the key is `scope:` and an HMAC of the identifier under the day's pepper (`hash_peppers`, deleted after
/// two days), so neither a row nor a log line gives the identifier back, even by brute force over a small
/// space such as every IPv4 address. Events recorded under yesterday's pepper still count, so the budget does
/// not reset at midnight. In a transaction of its own, like [`take`].
pub async fn take_for_identifier(
    pool: &PgPool,
    scope: &str,
    identifier: &str,
    limit: u32,
    window: Duration,
) -> sqlx::Result<Take> {
    let (current, previous) = crate::trial::current_peppers(pool).await?;
    let mut keys = vec![identifier_key(scope, &current, identifier)];
    keys.extend(previous.map(|pepper| identifier_key(scope, &pepper, identifier)));
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let mut tx = pool.begin().await?;
    let answer = take_across(&mut tx, &keys, 1, limit, window).await?;
    tx.commit().await?;
    Ok(answer)
}

/// `scope:` and the first 16 bytes of HMAC-SHA256(pepper, scope ‖ "\n" ‖ identifier), in hex.
pub fn identifier_key(scope: &str, pepper: &[u8], identifier: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(pepper).expect("HMAC takes any key length");
    mac.update(scope.as_bytes());
    mac.update(b"\n");
    mac.update(identifier.as_bytes());
    format!(
        "{scope}:{}",
        hex::encode(&mac.finalize().into_bytes()[..16])
    )
}

/// One budget counted across `keys` (the same budget's key under different peppers); `tokens` granted events
/// are recorded under the first. Locks every key, in a fixed order, for the rest of the transaction.
async fn take_across(
    conn: &mut PgConnection,
    keys: &[&str],
    tokens: u32,
    limit: u32,
    window: Duration,
) -> sqlx::Result<Take> {
    let mut locks: Vec<&str> = keys.to_vec();
    locks.sort_unstable();
    for key in locks {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 20261124))")
            .bind(key)
            .execute(&mut *conn)
            .await?;
    }
    let key = keys[0];
    let window_secs = window.as_secs_f64();
    // Forget events that left the window (keeps the table small), then count the rest.
    sqlx::query("DELETE FROM rate_limit_events WHERE key = ANY($1) AND at <= clock_timestamp() - make_interval(secs => $2)")
        .bind(keys)
        .bind(window_secs)
        .execute(&mut *conn)
        .await?;
    let (count, oldest_age): (i64, Option<f64>) = sqlx::query_as(
        "SELECT count(*), EXTRACT(EPOCH FROM clock_timestamp() - min(at))::float8 FROM rate_limit_events WHERE key = ANY($1)",
    )
    .bind(keys)
    .fetch_one(&mut *conn)
    .await?;
    if count + i64::from(tokens) <= i64::from(limit) {
        sqlx::query("INSERT INTO rate_limit_events (key) SELECT $1 FROM generate_series(1, $2)")
            .bind(key)
            .bind(i32::try_from(tokens).unwrap_or(i32::MAX))
            .execute(&mut *conn)
            .await?;
        Ok(Take::Granted)
    } else {
        let wait = (window_secs - oldest_age.unwrap_or(0.0)).max(0.01);
        Ok(Take::RetryAfter(Duration::from_secs_f64(wait)))
    }
}
