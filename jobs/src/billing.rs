//! Billing: checkout and portal intents (table `checkout_intents`), Stripe customers, and the effects of
//! Stripe events on the credit ledger.
//!
//! The api records an intent and enqueues [`OpenCheckout`] in one transaction; the worker creates the Stripe
//! session (idempotency key derived from the intent) and stores its URL for the waiting page.

use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    config::Product,
    kinds::OpenCheckout,
    queue::{EnqueueOptions, enqueue_with},
};

/// What the user asked to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntentKind {
    Pack,
    Plan,
    Portal,
}

impl IntentKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pack => "pack",
            Self::Plan => "plan",
            Self::Portal => "portal",
        }
    }

    fn mode(self) -> &'static str {
        match self {
            Self::Pack => "payment",
            Self::Plan => "subscription",
            Self::Portal => "portal",
        }
    }
}

/// Records an intent and its job in one transaction; returns the intent's id.
pub async fn record_intent(
    pool: &PgPool,
    user_id: Uuid,
    kind: IntentKind,
    product: Option<&Product>,
) -> sqlx::Result<Uuid> {
    let id = Uuid::now_v7();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO checkout_intents (id, user_id, kind, product_id, stripe_price_id, mode)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(user_id)
    .bind(kind.as_str())
    .bind(product.map(|p| p.id.as_str()))
    .bind(product.map(|p| p.stripe_price_id.as_str()))
    .bind(kind.mode())
    .execute(&mut *tx)
    .await?;
    enqueue_with(
        &mut *tx,
        &OpenCheckout { intent_id: id },
        EnqueueOptions::key(format!("open_checkout:{id}")),
    )
    .await?;
    tx.commit().await?;
    Ok(id)
}
