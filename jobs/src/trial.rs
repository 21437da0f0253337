//! The no-signup trial's fingerprint (privacy policy §1.4): a keyed hash of IP address, user agent and the
//! Turnstile token's hostname/action context, under a pepper that rotates daily. The IP address itself is
//! never stored; fingerprints are deleted after 24 hours (`expire_trial_fingerprints`), peppers after two days
//! (`rotate_hash_pepper`).

use chrono::{NaiveDate, Utc};
use hmac::{Hmac, Mac};
use sqlx::{PgConnection, PgPool};

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

/// Today's pepper and, while it still exists, yesterday's: whatever is keyed under the day's pepper is looked up
/// under both, so nothing keyed resets at midnight (trial fingerprints, `rate_limit::take_for_identifier`).
pub async fn current_peppers(pool: &PgPool) -> sqlx::Result<(Vec<u8>, Option<Vec<u8>>)> {
    let today = Utc::now().date_naive();
    let yesterday = today.pred_opt().expect("dates have predecessors");
    let current = pepper_for(pool, today).await?;
    let previous = sqlx::query_scalar("SELECT secret FROM hash_peppers WHERE valid_on = $1")
        .bind(yesterday)
        .fetch_optional(pool)
        .await?;
    Ok((current, previous))
}

/// HMAC-SHA256(pepper, ip ‖ "\n" ‖ user agent). Only this leaves the request.
pub fn fingerprint(pepper: &[u8], ip: &str, user_agent: &str) -> [u8; 32] {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(pepper).expect("HMAC takes any key length");
    mac.update(ip.as_bytes());
    mac.update(b"\n");
    mac.update(user_agent.as_bytes());
    mac.finalize().into_bytes().into()
}

/// A visitor's fingerprints under today's pepper and (when it still exists) yesterday's. Computing them stores
/// nothing but today's pepper; [`claim_in`] is what records a trial.
#[derive(Debug, Clone)]
pub struct Fingerprints {
    current: [u8; 32],
    previous: Option<[u8; 32]>,
}

impl Fingerprints {
    pub async fn of(pool: &PgPool, ip: &str, user_agent: &str) -> sqlx::Result<Self> {
        let (current, previous) = current_peppers(pool).await?;
        Ok(Self {
            current: fingerprint(&current, ip, user_agent),
            previous: previous.map(|pepper| fingerprint(&pepper, ip, user_agent)),
        })
    }
}

/// Records a trial for this visitor unless one was recorded within 24 h, in the caller's transaction (the one
/// that records the trial's generation, so a trial refused or failing later is not used up). Returns whether
/// this one is allowed. Checks yesterday's pepper too, so a visitor cannot start a second trial just after
/// midnight.
pub async fn claim_in(conn: &mut PgConnection, fingerprints: &Fingerprints) -> sqlx::Result<bool> {
    if let Some(earlier) = &fingerprints.previous {
        let seen: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM trial_fingerprints WHERE fingerprint = $1 AND created_at > now() - interval '24 hours')",
        )
        .bind(earlier.as_slice())
        .fetch_one(&mut *conn)
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
    .bind(fingerprints.current.as_slice())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// [`claim_in`] in a transaction of its own.
pub async fn claim_trial(pool: &PgPool, ip: &str, user_agent: &str) -> sqlx::Result<bool> {
    let fingerprints = Fingerprints::of(pool, ip, user_agent).await?;
    let mut tx = pool.begin().await?;
    let allowed = claim_in(&mut tx, &fingerprints).await?;
    tx.commit().await?;
    Ok(allowed)
}
