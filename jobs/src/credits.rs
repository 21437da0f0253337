//! The credit ledger (tables in `migrations/*_credits.sql`). Credits move only by inserting ledger rows; the
//! database keeps the balance, refuses to overdraw it, and applies each (kind, business key) once.

use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

/// A ledger entry kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Grant,
    Reserve,
    Settle,
    Refund,
    Expire,
    Clawback,
    /// Credits held while a payment is disputed.
    Freeze,
    /// Frozen credits given back when a dispute is won.
    Release,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grant => "grant",
            Self::Reserve => "reserve",
            Self::Settle => "settle",
            Self::Refund => "refund",
            Self::Expire => "expire",
            Self::Clawback => "clawback",
            Self::Freeze => "freeze",
            Self::Release => "release",
        }
    }
}

/// What happened to a ledger insert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The row was written and the balance moved.
    Yes,
    /// This effect (kind + business key) was applied before: nothing changed.
    AlreadyApplied,
    /// The balance would go negative: nothing changed.
    InsufficientCredits,
}

/// Appends one ledger row. `amount` is signed (see the table's comment). Run it inside the transaction of the
/// state change it belongs to: it never raises an error for a duplicate or an overdraft (which would abort
/// that transaction), it reports them. The database's CHECK and UNIQUE constraints remain the guarantee.
pub async fn apply(
    conn: &mut PgConnection,
    user_id: Uuid,
    kind: Kind,
    amount: i64,
    business_key: &str,
    detail: serde_json::Value,
) -> sqlx::Result<Applied> {
    // Locks the account row, so concurrent debits see each other's balance.
    let written = sqlx::query(
        "INSERT INTO credit_ledger (user_id, kind, amount, business_key, detail)
         SELECT $1, $2, $3, $4, $5
          WHERE (SELECT balance FROM credit_accounts WHERE user_id = $1 FOR UPDATE) + $3 >= 0
         ON CONFLICT DO NOTHING",
    )
    .bind(user_id)
    .bind(kind.as_str())
    .bind(amount)
    .bind(business_key)
    .bind(detail)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if written == 1 {
        return Ok(Applied::Yes);
    }
    // Nothing written: either this effect (or, for settle/refund, the other resolution) exists, or the
    // balance is short.
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM credit_ledger
                         WHERE business_key = $2
                           AND (kind = $1 OR ($1 IN ('settle', 'refund') AND kind IN ('settle', 'refund'))))",
    )
    .bind(kind.as_str())
    .bind(business_key)
    .fetch_one(&mut *conn)
    .await?;
    Ok(if exists {
        Applied::AlreadyApplied
    } else {
        Applied::InsufficientCredits
    })
}

/// The spendable balance.
pub async fn balance<'e>(conn: impl PgExecutor<'e>, user_id: Uuid) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT balance FROM credit_accounts WHERE user_id = $1")
        .bind(user_id)
        .fetch_optional(conn)
        .await
        .map(|b| b.unwrap_or(0))
}

/// Whether a refunded or disputed payment left the member owing credits (`credit_accounts.shortfall`): new
/// spending waits until it is settled.
pub async fn owing<'e>(conn: impl PgExecutor<'e>, user_id: Uuid) -> sqlx::Result<bool> {
    Ok(
        sqlx::query_scalar("SELECT shortfall > 0 FROM credit_accounts WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(conn)
            .await?
            .unwrap_or(false),
    )
}
