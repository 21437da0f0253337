//! The JSON API's request budget (table `rate_limit_windows`): every request counts against a fixed window per
//! minute, fleet-wide — a member's requests under their account (however many keys), a request without a live
//! key under a peppered HMAC of the client's address (never the address itself). The api answers each request
//! with what is left (`RateLimit`, IETF draft-ietf-httpapi-ratelimit-headers) and refuses one over the budget
//! with 429 before its handler runs.
//!
//! A member's request is authenticated and counted in one statement. The counter is a write on every request,
//! even a read: its commit does not wait for the disk (`synchronous_commit = off` for that transaction only), as
//! losing a few increments in a crash only lets a client make a few more requests.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

/// A budget: `limit` requests per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub limit: u32,
    pub window: Duration,
}

/// Where a caller stands in its window after this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    pub budget: Budget,
    /// Requests counted in the window, this one included.
    pub used: u32,
    /// Until the window ends.
    pub resets_in: Duration,
}

impl Standing {
    /// Requests left in the window.
    pub fn remaining(&self) -> u32 {
        self.budget.limit.saturating_sub(self.used)
    }

    /// Whether this request is over the budget.
    pub fn exceeded(&self) -> bool {
        self.used > self.budget.limit
    }
}

/// The member whose live API key `secret` is, with this request counted against their budget; `None` when the
/// key is unknown, revoked or its account is being deleted (nothing is counted).
pub async fn take_for_key(
    pool: &PgPool,
    secret: &str,
    budget: Budget,
) -> sqlx::Result<Option<(Uuid, Standing)>> {
    // `last_used_at` is refreshed at most once a minute.
    let row: Option<(Uuid, i32, f64)> = sqlx::query_as(
        "WITH key AS (
             SELECT k.id, k.user_id, k.last_used_at FROM api_keys k JOIN users u ON u.id = k.user_id
              WHERE k.key_hash = $1 AND k.revoked_at IS NULL AND u.deletion_requested_at IS NULL
         ), touched AS (
             UPDATE api_keys SET last_used_at = now() FROM key
              WHERE api_keys.id = key.id
                AND (key.last_used_at IS NULL OR key.last_used_at < now() - interval '1 minute')
         ), counted AS (
             INSERT INTO rate_limit_windows AS w (key, window_start, count)
             SELECT 'api:user:' || key.user_id, to_timestamp(floor(extract(epoch FROM now()) / $2) * $2), 1
               FROM key
             ON CONFLICT (key, window_start) DO UPDATE SET count = w.count + 1
             RETURNING w.count, w.window_start
         ), relaxed AS (
             SELECT set_config('synchronous_commit', 'off', true)
         )
         SELECT key.user_id, counted.count,
                extract(epoch FROM counted.window_start + make_interval(secs => $2) - now())::float8
           FROM key, counted, relaxed",
    )
    .bind(crate::accounts::hash_secret(secret))
    .bind(budget.window.as_secs_f64())
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(user, used, resets_in)| (user, standing(budget, used, resets_in))))
}

/// Counts a request made without a live key against the budget of the client's address (`client`), keyed by
/// an HMAC of it under the day's pepper.
pub async fn take_anonymous(pool: &PgPool, client: &str, budget: Budget) -> sqlx::Result<Standing> {
    // Only today's pepper: a window is a minute, so yesterday's keys never count against today's.
    let pepper = crate::trial::pepper_for(pool, chrono::Utc::now().date_naive()).await?;
    let key = crate::rate_limit::identifier_key("api:anonymous", &pepper, client);
    let (used, resets_in): (i32, f64) = sqlx::query_as(
        "WITH counted AS (
             INSERT INTO rate_limit_windows AS w (key, window_start, count)
             VALUES ($1, to_timestamp(floor(extract(epoch FROM now()) / $2) * $2), 1)
             ON CONFLICT (key, window_start) DO UPDATE SET count = w.count + 1
             RETURNING w.count, w.window_start
         ), relaxed AS (
             SELECT set_config('synchronous_commit', 'off', true)
         )
         SELECT counted.count, extract(epoch FROM counted.window_start + make_interval(secs => $2) - now())::float8
           FROM counted, relaxed",
    )
    .bind(key)
    .bind(budget.window.as_secs_f64())
    .fetch_one(pool)
    .await?;
    Ok(standing(budget, used, resets_in))
}

fn standing(budget: Budget, used: i32, resets_in: f64) -> Standing {
    Standing {
        budget,
        used: u32::try_from(used).unwrap_or(0),
        resets_in: Duration::from_secs_f64(resets_in.clamp(0.0, budget.window.as_secs_f64())),
    }
}
