//! Fleet-wide pauses of an upstream (table `upstream_pauses`). Submissions to kie.ai stop for every worker
//! when kie reports an account-level problem (bad key, out of credits, sub-key limit, feature disabled), until
//! an operator or the automatic probe resumes them.

use sqlx::PgExecutor;

pub const KIE: &str = "kie";

/// Whether `upstream` is paused.
pub async fn is_paused<'e>(conn: impl PgExecutor<'e>, upstream: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM upstream_pauses WHERE upstream = $1)")
        .bind(upstream)
        .fetch_one(conn)
        .await
}

/// Pauses `upstream` (idempotent: the first reason is kept). The probe checks it after a minute.
pub async fn pause<'e>(
    conn: impl PgExecutor<'e>,
    upstream: &str,
    reason: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO upstream_pauses (upstream, reason, probe_after) VALUES ($1, $2, now() + interval '1 minute')
         ON CONFLICT (upstream) DO NOTHING",
    )
    .bind(upstream)
    .bind(reason)
    .execute(conn)
    .await
    .map(drop)
}

/// Resumes `upstream`. Returns whether it was paused.
pub async fn resume<'e>(conn: impl PgExecutor<'e>, upstream: &str) -> sqlx::Result<bool> {
    sqlx::query("DELETE FROM upstream_pauses WHERE upstream = $1")
        .bind(upstream)
        .execute(conn)
        .await
        .map(|r| r.rows_affected() > 0)
}

/// Paused upstreams: (upstream, reason, paused_at, probe due).
pub async fn paused<'e>(
    conn: impl PgExecutor<'e>,
) -> sqlx::Result<Vec<(String, String, chrono::DateTime<chrono::Utc>, bool)>> {
    sqlx::query_as(
        "SELECT upstream, reason, paused_at, coalesce(probe_after <= now(), true) FROM upstream_pauses ORDER BY 1",
    )
    .fetch_all(conn)
    .await
}

/// Schedules the next probe of a paused upstream.
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
