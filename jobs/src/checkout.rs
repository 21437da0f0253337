//! Checkout intents (table `checkout_intents` in `migrations/*_billing_privacy_ops.sql`): a member asks to buy a
//! pack, start a plan or open Stripe's billing portal; the request records the intent and its `open_checkout`
//! job, the worker opens the Stripe session and marks the intent ready (with the URL) or failed (with a reason
//! for the member), and the waiting page hears either through the status events.

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use queue::Job as _;

use crate::{
    config::Product,
    generations,
    kinds::OpenCheckout,
    limits::{self, Action},
    text_enum::text_enum,
};

text_enum! {
    /// What the member asked to open.
    pub enum IntentKind {
        Pack = "pack",
        Plan = "plan",
        Portal = "portal",
    }
}

impl IntentKind {
    /// The Stripe session's mode.
    fn mode(self) -> &'static str {
        match self {
            Self::Pack => "payment",
            Self::Plan => "subscription",
            Self::Portal => "portal",
        }
    }
}

text_enum! {
    /// Where an intent is: waiting for the worker, ready with Stripe's URL, or failed with a reason.
    pub enum IntentStatus {
        Pending = "pending",
        Ready = "ready",
        Failed = "failed",
    }
}

/// An intent as its waiting page and the worker read it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Intent {
    pub id: Uuid,
    pub user_id: Uuid,
    pub kind: IntentKind,
    pub status: IntentStatus,
    pub product_id: Option<String>,
    pub stripe_price_id: Option<String>,
    pub credits: Option<i64>,
    /// Stripe's page, once the session is open.
    pub url: Option<String>,
    /// Why it failed, in words for the member.
    pub error: Option<String>,
    /// The Checkout Session the worker opened for it.
    pub stripe_session_id: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Records an intent and its job in one transaction, after taking one from the member's checkout (or portal)
/// budget; returns the intent's id.
pub async fn record_intent(
    pool: &PgPool,
    user_id: Uuid,
    kind: IntentKind,
    product: Option<&Product>,
) -> Result<Uuid, limits::TakeError> {
    let action = match kind {
        IntentKind::Pack | IntentKind::Plan => Action::Checkout,
        IntentKind::Portal => Action::Portal,
    };
    limits::take(pool, action, user_id).await?;
    let id = Uuid::now_v7();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO checkout_intents (id, user_id, kind, product_id, stripe_price_id, mode, credits)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(id)
    .bind(user_id)
    .bind(kind)
    .bind(product.map(|p| p.id.as_str()))
    .bind(product.map(|p| p.stripe_price_id.as_str()))
    .bind(kind.mode())
    .bind(product.map(|p| p.credits))
    .execute(&mut *tx)
    .await?;
    OpenCheckout { intent_id: id }.enqueue(&mut *tx).await?;
    tx.commit().await?;
    Ok(id)
}

const COLUMNS: &str = "id, user_id, kind, status, product_id, stripe_price_id, credits, url, error, stripe_session_id, created_at";

/// The intent, whoever's it is (for the worker).
pub async fn find(pool: &PgPool, id: Uuid) -> sqlx::Result<Option<Intent>> {
    // Only a constant column list is interpolated.
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM checkout_intents WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// The member's intent (`None` for another member's).
pub async fn find_owned(pool: &PgPool, user: Uuid, id: Uuid) -> sqlx::Result<Option<Intent>> {
    Ok(find(pool, id)
        .await?
        .filter(|intent| intent.user_id == user))
}

/// What a paid checkout's credits did, once the worker granted them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credited {
    /// The credits the purchase granted.
    pub granted: i64,
    /// What of them went to the balance: the rest settled credits owed after a refunded or disputed payment.
    pub added: i64,
}

/// What a paid checkout's credits did, once the worker has granted them (`None` until then, and for a portal).
/// A pack's grant is the one keyed by its Checkout Session; a plan's is its product's first grant since the
/// intent was recorded (the first invoice of the subscription the session started).
pub async fn credited(pool: &PgPool, intent: &Intent) -> sqlx::Result<Option<Credited>> {
    let grant: Option<(String, i64)> = match intent.kind {
        IntentKind::Portal => None,
        IntentKind::Pack => match &intent.stripe_session_id {
            None => None,
            Some(session) => {
                sqlx::query_as(
                    "SELECT business_key, amount FROM credit_ledger
                      WHERE user_id = $1 AND kind = 'grant' AND business_key = $2",
                )
                .bind(intent.user_id)
                .bind(format!("pack:{session}"))
                .fetch_optional(pool)
                .await?
            }
        },
        IntentKind::Plan => {
            sqlx::query_as(
                "SELECT business_key, amount FROM credit_ledger
                  WHERE user_id = $1 AND kind = 'grant' AND detail->>'product' = $2 AND created_at >= $3
                  ORDER BY id LIMIT 1",
            )
            .bind(intent.user_id)
            .bind(intent.product_id.as_deref().unwrap_or_default())
            .bind(intent.created_at)
            .fetch_optional(pool)
            .await?
        }
    };
    let Some((key, granted)) = grant else {
        return Ok(None);
    };
    // `billing::grant` pays a shortfall from the grant under `shortfall:<grant key>`.
    let owed: i64 = sqlx::query_scalar(
        "SELECT coalesce(-sum(amount), 0)::bigint FROM credit_ledger
          WHERE user_id = $1 AND kind = 'clawback' AND business_key = 'shortfall:' || $2",
    )
    .bind(intent.user_id)
    .bind(&key)
    .fetch_one(pool)
    .await?;
    Ok(Some(Credited {
        granted,
        added: granted - owed,
    }))
}

/// Marks a pending intent ready with Stripe's session, announcing it at commit.
pub async fn mark_ready(
    tx: &mut PgConnection,
    id: Uuid,
    url: &str,
    session_id: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE checkout_intents SET status = $4, url = $2, stripe_session_id = $3, updated_at = now()
          WHERE id = $1 AND status = $5",
    )
    .bind(id)
    .bind(url)
    .bind(session_id)
    .bind(IntentStatus::Ready)
    .bind(IntentStatus::Pending)
    .execute(&mut *tx)
    .await?;
    generations::announce(tx, id, IntentStatus::Ready.as_str()).await
}

/// Marks a pending intent failed with a reason for the member, announcing it at commit.
pub async fn mark_failed(tx: &mut PgConnection, id: Uuid, message: &str) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE checkout_intents SET status = $3, error = $2, updated_at = now() WHERE id = $1 AND status = $4",
    )
    .bind(id)
    .bind(message)
    .bind(IntentStatus::Failed)
    .bind(IntentStatus::Pending)
    .execute(&mut *tx)
    .await?;
    generations::announce(tx, id, IntentStatus::Failed.as_str()).await
}
