//! Fleet-wide pauses of an upstream (table `upstream_pauses`) and its last-read credit balance
//! (`upstream_balances`).
//!
//! Submissions to kie.ai stop for every worker while it is paused. Two kinds of pause, and they mean what they
//! say:
//! - **automatic**: a worker saw an account-level error (bad key, out of credits, sub-key limit, feature
//!   disabled); `probe_upstreams` checks the account every few minutes and lifts the pause once it works;
//! - **operator**: `createimage2 upstream pause` or the console; it holds until an operator resumes. An
//!   operator's pause also takes over an automatic one, and an automatic pause never weakens an operator's.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

pub const KIE: &str = "kie";

/// Every upstream that can be paused.
pub const KNOWN: &[&str] = &[KIE];

crate::text_enum::text_enum! {
    /// Who paused an upstream (column `upstream_pauses.kind`).
    pub enum PauseKind {
        Operator = "operator",
        Automatic = "automatic",
    }
}

/// A paused upstream.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Pause {
    pub upstream: String,
    pub kind: PauseKind,
    pub reason: String,
    pub paused_at: DateTime<Utc>,
    /// An automatic pause whose next probe is due.
    pub probe_due: bool,
}

/// Whether `upstream` is paused (by either kind).
pub async fn is_paused<'e>(conn: impl PgExecutor<'e>, upstream: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM upstream_pauses WHERE upstream = $1)")
        .bind(upstream)
        .fetch_one(conn)
        .await
}

/// Pauses `upstream`. An automatic pause is probed after a minute and keeps the first reason; it never replaces
/// an operator's. An operator's pause replaces an automatic one (with the operator's reason) and is never
/// probed. Returns whether this call changed anything.
pub async fn pause<'e>(
    conn: impl PgExecutor<'e>,
    upstream: &str,
    kind: PauseKind,
    reason: &str,
) -> sqlx::Result<bool> {
    sqlx::query(
        "INSERT INTO upstream_pauses (upstream, kind, reason, probe_after)
         VALUES ($1, $2, $3, CASE WHEN $2 = 'automatic' THEN now() + interval '1 minute' END)
         ON CONFLICT (upstream) DO UPDATE
            SET kind = EXCLUDED.kind, reason = EXCLUDED.reason, paused_at = now(), probe_after = NULL
          WHERE upstream_pauses.kind = 'automatic' AND EXCLUDED.kind = 'operator'",
    )
    .bind(upstream)
    .bind(kind)
    .bind(reason)
    .execute(conn)
    .await
    .map(|r| r.rows_affected() > 0)
}

/// Resumes `upstream` whatever paused it (an operator's call). Returns whether it was paused.
pub async fn resume<'e>(conn: impl PgExecutor<'e>, upstream: &str) -> sqlx::Result<bool> {
    sqlx::query("DELETE FROM upstream_pauses WHERE upstream = $1")
        .bind(upstream)
        .execute(conn)
        .await
        .map(|r| r.rows_affected() > 0)
}

/// Lifts an automatic pause of `upstream` (the probe's call): an operator's pause stays. Returns whether it
/// lifted one.
pub async fn lift_automatic<'e>(conn: impl PgExecutor<'e>, upstream: &str) -> sqlx::Result<bool> {
    sqlx::query("DELETE FROM upstream_pauses WHERE upstream = $1 AND kind = 'automatic'")
        .bind(upstream)
        .execute(conn)
        .await
        .map(|r| r.rows_affected() > 0)
}

/// Paused upstreams, by name.
pub async fn paused<'e>(conn: impl PgExecutor<'e>) -> sqlx::Result<Vec<Pause>> {
    sqlx::query_as(
        "SELECT upstream, kind, reason, paused_at,
                kind = 'automatic' AND coalesce(probe_after <= now(), true) AS probe_due
           FROM upstream_pauses ORDER BY upstream",
    )
    .fetch_all(conn)
    .await
}

/// Schedules the next probe of an automatically paused upstream.
pub async fn probe_later<'e>(
    conn: impl PgExecutor<'e>,
    upstream: &str,
    minutes: i32,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE upstream_pauses SET probe_after = now() + make_interval(mins => $2) WHERE upstream = $1")
        .bind(upstream)
        .bind(minutes)
        .execute(conn)
        .await
        .map(drop)
}

/// Records the balance just read from `upstream`.
pub async fn record_balance<'e>(
    conn: impl PgExecutor<'e>,
    upstream: &str,
    balance: f64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO upstream_balances (upstream, balance) VALUES ($1, $2)
         ON CONFLICT (upstream) DO UPDATE SET balance = EXCLUDED.balance, read_at = now()",
    )
    .bind(upstream)
    .bind(balance)
    .execute(conn)
    .await
    .map(drop)
}

/// The last balance read from each upstream.
pub async fn balances<'e>(conn: impl PgExecutor<'e>) -> sqlx::Result<Vec<(String, f64)>> {
    sqlx::query_as("SELECT upstream, balance FROM upstream_balances ORDER BY upstream")
        .fetch_all(conn)
        .await
}
