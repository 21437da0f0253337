//! The no-signup trial's fingerprint (privacy policy §1.4): a keyed hash of IP address, user agent and the
//! Turnstile token's hostname/action context, under a pepper that rotates daily. The IP address itself is
//! never stored; fingerprints are deleted after 24 hours (`expire_trial_fingerprints`), peppers after two days
//! (`rotate_hash_pepper`).

use chrono::{NaiveDate, Utc};
use hmac::{Hmac, Mac};
use sqlx::PgPool;

/// Today's pepper (UTC), created on first use; any number of processes agree on one per day.
pub async fn pepper_for(pool: &PgPool, day: NaiveDate) -> sqlx::Result<Vec<u8>> {
    let fresh: [u8; 32] = rand::random();
    sqlx::query("INSERT INTO hash_peppers (secret, valid_on) VALUES ($1, $2) ON CONFLICT (valid_on) DO NOTHING")
        .bind(fresh.as_slice())
        .bind(day)
        .execute(pool)
        .await?;
    sqlx::query_scalar("SELECT secret FROM hash_peppers WHERE valid_on = $1")
        .bind(day)
        .fetch_one(pool)
        .await
}

/// HMAC-SHA256(pepper, ip ‖ "\n" ‖ user agent). Only this leaves the request.
pub fn fingerprint(pepper: &[u8], ip: &str, user_agent: &str) -> [u8; 32] {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(pepper).expect("HMAC takes any key length");
    mac.update(ip.as_bytes());
    mac.update(b"\n");
    mac.update(user_agent.as_bytes());
    mac.finalize().into_bytes().into()
}

/// Records a trial for this visitor unless one was recorded within 24 h. Returns whether this one is allowed.
/// Checks today's and yesterday's pepper, so a visitor cannot start a second trial just after midnight.
pub async fn claim_trial(pool: &PgPool, ip: &str, user_agent: &str) -> sqlx::Result<bool> {
    let today = Utc::now().date_naive();
    let yesterday = today.pred_opt().expect("dates have predecessors");
    let current = fingerprint(&pepper_for(pool, today).await?, ip, user_agent);
    let previous: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT secret FROM hash_peppers WHERE valid_on = $1")
            .bind(yesterday)
            .fetch_optional(pool)
            .await?;
    if let Some(previous) = previous {
        let earlier = fingerprint(&previous, ip, user_agent);
        let seen: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM trial_fingerprints WHERE fingerprint = $1 AND created_at > now() - interval '24 hours')",
        )
        .bind(earlier.as_slice())
        .fetch_one(pool)
        .await?;
        if seen {
            return Ok(false);
        }
    }
    let inserted = sqlx::query(
        "INSERT INTO trial_fingerprints (fingerprint) VALUES ($1)
         ON CONFLICT (fingerprint) DO UPDATE SET created_at = now()
           WHERE trial_fingerprints.created_at <= now() - interval '24 hours'",
    )
    .bind(current.as_slice())
    .execute(pool)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}
