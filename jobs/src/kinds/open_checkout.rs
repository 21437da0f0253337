//! Creates the Stripe Checkout Session (pack or plan) or billing-portal session for a checkout intent and
//! stores its URL, which the user's waiting page then follows.
//!
//! Why: the api never calls Stripe on a request path.
//! Safe twice: every Stripe call carries an idempotency key derived from the intent (`intent:<id>`, and
//! `customer:<user>` for the one customer per user), so a re-run gets the same session; the intent row is
//! updated only while pending.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use queue::{Job, JobError, Outcome, RetryPolicy};

use crate::{
    accounts,
    checkout::{self, Intent, IntentKind, IntentStatus},
    services::JobContext,
    stripe::{CheckoutRequest, StripeClient, StripeError},
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenCheckout {
    pub intent_id: Uuid,
}

impl Job for OpenCheckout {
    const NAME: &'static str = "open_checkout";
    type Context = std::sync::Arc<crate::services::Services>;
    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 8,
        base: Duration::from_millis(500),
        cap: Duration::from_secs(30),
        timeout: Duration::from_secs(60),
    };

    /// One Checkout Session per intent.
    fn unique_key(&self) -> Option<String> {
        Some(format!("open_checkout:{}", self.intent_id))
    }

    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        let pipeline = ctx.app.pipeline()?;
        let Some(intent) = checkout::find(&ctx.pool, self.intent_id).await? else {
            return Ok(Outcome::Done);
        };
        match intent.status {
            IntentStatus::Pending => {}
            IntentStatus::Ready | IntentStatus::Failed => return Ok(Outcome::Done),
        }
        let Some(stripe) = &pipeline.stripe else {
            fail(&ctx, self.intent_id, "Payments are not configured.").await?;
            return Ok(Outcome::Done);
        };
        let Some(email) = accounts::email_of(&ctx.pool, intent.user_id).await? else {
            // The account was deleted meanwhile: no one to open a session for.
            fail(&ctx, self.intent_id, "The account no longer exists.").await?;
            return Ok(Outcome::Done);
        };
        match open(
            stripe,
            &ctx,
            &pipeline.public_base_url,
            self.intent_id,
            &intent,
            &email,
        )
        .await
        {
            Ok((session_id, url)) => {
                // The waiting page's event stream hears this at commit.
                let mut tx = ctx.pool.begin().await?;
                checkout::mark_ready(&mut tx, self.intent_id, &url, &session_id).await?;
                tx.commit().await?;
                Ok(Outcome::Done)
            }
            Err(StripeError::Rejected(message)) if intent.kind == IntentKind::Portal => {
                // Most often the portal's settings were never saved in Stripe's dashboard (deploy/README.md).
                tracing::error!(
                    intent = %self.intent_id,
                    error = %message,
                    "Stripe refused a billing-portal session: are the customer portal settings saved in Stripe's dashboard?"
                );
                fail(
                    &ctx,
                    self.intent_id,
                    "Managing your plan online is not available right now. Your plan and payments are unchanged; \
                     to change or cancel your plan, please contact support.",
                )
                .await?;
                Ok(Outcome::Done)
            }
            Err(StripeError::Rejected(message)) => {
                tracing::error!(intent = %self.intent_id, error = %message, "Stripe rejected a checkout");
                fail(
                    &ctx,
                    self.intent_id,
                    "Checkout could not be opened. Please try again or contact support.",
                )
                .await?;
                Ok(Outcome::Done)
            }
            Err(StripeError::Unavailable(message)) if ctx.is_last_attempt() => {
                fail(
                    &ctx,
                    self.intent_id,
                    "Stripe could not be reached. Please try again in a few minutes.",
                )
                .await?;
                Err(JobError::permanent(anyhow::anyhow!(message)))
            }
            Err(StripeError::Unavailable(message)) => {
                Err(JobError::Retryable(anyhow::anyhow!(message)))
            }
        }
    }
}

async fn fail(ctx: &JobContext, id: Uuid, message: &str) -> sqlx::Result<()> {
    let mut tx = ctx.pool.begin().await?;
    checkout::mark_failed(&mut tx, id, message).await?;
    tx.commit().await?;
    Ok(())
}

/// The user's one Stripe customer, created on first need.
pub async fn ensure_customer(
    stripe: &StripeClient,
    pool: &sqlx::PgPool,
    user_id: Uuid,
    email: &str,
) -> Result<String, StripeError> {
    let existing: Option<String> =
        sqlx::query_scalar("SELECT customer_id FROM stripe_customers WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(pool)
            .await
            .map_err(|e| StripeError::Unavailable(e.to_string()))?;
    if let Some(customer) = existing {
        return Ok(customer);
    }
    let id = stripe.create_customer(email, user_id).await?;
    sqlx::query(
        "INSERT INTO stripe_customers (user_id, customer_id) VALUES ($1, $2) ON CONFLICT (user_id) DO NOTHING",
    )
    .bind(user_id)
    .bind(&id)
    .execute(pool)
    .await
    .map_err(|e| StripeError::Unavailable(e.to_string()))?;
    sqlx::query_scalar("SELECT customer_id FROM stripe_customers WHERE user_id = $1")
        .bind(user_id)
        .fetch_one(pool)
        .await
        .map_err(|e| StripeError::Unavailable(e.to_string()))
}

async fn open(
    stripe: &StripeClient,
    ctx: &JobContext,
    base: &url::Url,
    intent_id: Uuid,
    intent: &Intent,
    email: &str,
) -> Result<(String, String), StripeError> {
    let customer = ensure_customer(stripe, &ctx.pool, intent.user_id, email).await?;
    let base = base.as_str().trim_end_matches('/');
    let key = format!("intent:{intent_id}");
    let subscription = match intent.kind {
        IntentKind::Pack => false,
        IntentKind::Plan => true,
        IntentKind::Portal => {
            return stripe
                .create_portal_session(&customer, &format!("{base}/account#credits"), &key)
                .await;
        }
    };
    let price = intent
        .stripe_price_id
        .clone()
        .ok_or_else(|| StripeError::Rejected("intent without a price".into()))?;
    // The objects later events carry (subscription, payment intent) name the product, its credits and the
    // user too, so every event can be applied on its own.
    let metadata = std::collections::HashMap::from([
        (
            "product".to_owned(),
            intent.product_id.clone().unwrap_or_default(),
        ),
        (
            "credits".to_owned(),
            intent.credits.unwrap_or_default().to_string(),
        ),
        ("user".to_owned(), intent.user_id.to_string()),
        ("intent".to_owned(), intent_id.to_string()),
    ]);
    stripe
        .create_checkout_session(
            CheckoutRequest {
                subscription,
                customer,
                client_reference_id: intent.user_id.to_string(),
                price,
                metadata,
                // The post-checkout notice: what was bought, and the balance as the credits arrive.
                success_url: format!("{base}/billing/intents/{intent_id}/done"),
                cancel_url: format!("{base}/pricing"),
            },
            &key,
        )
        .await
}
