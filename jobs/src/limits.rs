//! Budgets for what a signed-in person can make the service do on their behalf. Each is taken before the action,
//! in a transaction of its own, whatever the action's outcome (a refused request counts too), so neither a
//! script with a stolen session nor a loop in a client can turn one request into unbounded work, mail or
//! upstream calls. Generations have their own, configurable budget (`GenerationConfig::per_user_per_minute`);
//! exports theirs (`exports::PER_DAY`); sign-in links theirs (per client and per address, in `SiteConfig`).

use std::time::Duration;

use uuid::Uuid;

use crate::rate_limit::{self, Take};

const HOUR: Duration = Duration::from_secs(3600);

/// A budget is spent: try again after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many requests; retry in {} s", retry_after.as_secs_f64().ceil())]
pub struct Limited {
    pub retry_after: Duration,
}

/// Why a budgeted action may not proceed.
#[derive(Debug, thiserror::Error)]
pub enum TakeError {
    #[error(transparent)]
    Limited(#[from] Limited),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// An action with a per-person budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Signing an upload URL (a row and a presigned PUT each).
    Upload,
    /// Issuing an API key.
    ApiKey,
    /// Opening a Stripe Checkout session (a job that calls Stripe).
    Checkout,
    /// Opening the Stripe billing portal (a job that calls Stripe).
    Portal,
    /// Asking to change the account's e-mail address (a confirmation e-mail to the new address).
    EmailChange,
}

impl Action {
    /// (key prefix, events, window).
    const fn budget(self) -> (&'static str, u32, Duration) {
        match self {
            Self::Upload => ("uploads", 300, HOUR),
            Self::ApiKey => ("api-keys", 20, HOUR),
            Self::Checkout => ("checkouts", 20, HOUR),
            Self::Portal => ("portal", 20, HOUR),
            Self::EmailChange => ("email-change", 5, HOUR),
        }
    }
}

/// Takes one `action` from `user`'s budget, or says when to retry.
pub async fn take(pool: &sqlx::PgPool, action: Action, user: Uuid) -> Result<(), TakeError> {
    let (name, limit, window) = action.budget();
    match rate_limit::take(pool, &format!("{name}:user:{user}"), limit, window).await? {
        Take::Granted => Ok(()),
        Take::RetryAfter(retry_after) => Err(Limited { retry_after }.into()),
    }
}

/// Takes one e-mail to `address` from that address's budget (shared by sign-in links and address-change
/// confirmations, so no one can mail-bomb an inbox through either), keyed by a peppered HMAC of the address.
/// `Ok(false)` when the budget is spent: callers answer as if the mail went, so the answer is no oracle.
pub async fn take_mail_to(pool: &sqlx::PgPool, address: &str, per_hour: u32) -> sqlx::Result<bool> {
    Ok(
        rate_limit::take_for_identifier(pool, "mail-to", address, per_hour, HOUR).await?
            == Take::Granted,
    )
}
