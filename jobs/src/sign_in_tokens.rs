//! E-mailed links (table `sign_in_tokens` in `migrations/*_accounts.sql`): a sign-in link, or the confirmation
//! of a new e-mail address. Only a token's hash is stored; a newer link supersedes the older ones of the same
//! purpose; a link works once and until it expires.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::{
    accounts,
    email::{self, Outgoing},
    generations::Invalid,
    limits::{self, Action, Limited},
    rate_limit::{self, Take},
    text_enum::text_enum,
};

text_enum! {
    /// What a link does when opened.
    pub enum Purpose {
        /// Signs in (or up) the address it was sent to.
        SignIn = "sign_in",
        /// Makes the address it was sent to the account's new address.
        EmailChange = "email_change",
    }
}

/// Whether `address` looks like an e-mail address (one `@`, a dotted domain, no spaces or control characters,
/// at most 320 characters). Mail to it proves the rest.
pub fn plausible_email(address: &str) -> bool {
    let Some((local, domain)) = address.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && address.len() <= 320
        && !address.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// How e-mailed links are sent: how long they work, and how many one inbox may receive an hour.
#[derive(Debug, Clone, Copy)]
pub struct LinkPolicy {
    pub ttl: Duration,
    pub per_address_per_hour: u32,
}

/// Why a link was not requested.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error(transparent)]
    Limited(#[from] Limited),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl From<limits::TakeError> for LinkError {
    fn from(error: limits::TakeError) -> Self {
        match error {
            limits::TakeError::Limited(limited) => Self::Limited(limited),
            limits::TakeError::Database(error) => Self::Database(error),
        }
    }
}

/// A visitor asks for a sign-in link to `address` (lower-cased, trimmed). The client's budget
/// (`per_client_per_hour`, keyed by an HMAC of `client`) is taken first, then the inbox's; over the inbox's
/// budget nothing is sent and the answer is the same as when it is (`Ok`): the answer is no oracle of which
/// addresses have accounts, and no inbox can be mail-bombed.
pub async fn request_sign_in(
    pool: &PgPool,
    client: &str,
    per_client_per_hour: u32,
    address: &str,
    policy: LinkPolicy,
    link: impl FnOnce(&str) -> String,
) -> Result<(), LinkError> {
    if !plausible_email(address) {
        return Err(Invalid {
            field: "email",
            message: "That does not look like an e-mail address.".into(),
        }
        .into());
    }
    if let Take::RetryAfter(retry_after) = rate_limit::take_for_identifier(
        pool,
        "sign-in",
        client,
        per_client_per_hour,
        Duration::from_secs(3600),
    )
    .await?
    {
        return Err(Limited { retry_after }.into());
    }
    if limits::take_mail_to(pool, address, policy.per_address_per_hour).await? {
        send(pool, Purpose::SignIn, address, None, policy.ttl, link).await?;
    }
    Ok(())
}

/// A member asks to change their address to `new_address` (lower-cased, trimmed): takes the member's
/// e-mail-change budget, then the new inbox's; over the inbox's budget nothing is sent and the answer is the same
/// (`Ok`), so no inbox can be mail-bombed through this form either. The address changes only when the link is
/// opened ([`crate::accounts::confirm_email_change`]).
pub async fn request_email_change(
    pool: &PgPool,
    user: Uuid,
    new_address: &str,
    policy: LinkPolicy,
    link: impl FnOnce(&str) -> String,
) -> Result<(), LinkError> {
    limits::take(pool, Action::EmailChange, user).await?;
    if limits::take_mail_to(pool, new_address, policy.per_address_per_hour).await? {
        send(
            pool,
            Purpose::EmailChange,
            new_address,
            Some(user),
            policy.ttl,
            link,
        )
        .await?;
    }
    Ok(())
}

/// Sends a `purpose` link to `to` (for an e-mail change, on behalf of `user`), valid `ttl`: earlier unused links
/// of the same purpose stop working, the token's hash is stored, and the e-mail is queued, all in one
/// transaction. `link` builds the URL the e-mail holds from the token.
pub async fn send(
    pool: &PgPool,
    purpose: Purpose,
    to: &str,
    user: Option<Uuid>,
    ttl: Duration,
    link: impl FnOnce(&str) -> String,
) -> sqlx::Result<()> {
    let (token, hash) = accounts::new_link_token();
    let minutes = (ttl.as_secs() / 60) as u32;
    let mut tx = pool.begin().await?;
    match purpose {
        Purpose::SignIn => sqlx::query(
            "UPDATE sign_in_tokens SET used_at = now() WHERE email = $1 AND purpose = $2 AND used_at IS NULL",
        )
        .bind(to),
        Purpose::EmailChange => sqlx::query(
            "UPDATE sign_in_tokens SET used_at = now() WHERE user_id = $1 AND purpose = $2 AND used_at IS NULL",
        )
        .bind(user),
    }
    .bind(purpose)
    .execute(&mut *tx)
    .await?;
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO sign_in_tokens (id, token_hash, purpose, email, user_id, expires_at)
         VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))",
    )
    .bind(id)
    .bind(&hash)
    .bind(purpose)
    .bind(to)
    .bind(user)
    .bind(ttl.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    let url = link(&token);
    let (idempotency_key, message) = match purpose {
        Purpose::SignIn => (format!("sign-in:{id}"), mail::sign_in_link(&url, minutes)),
        Purpose::EmailChange => (
            format!("email-change:{id}"),
            mail::email_change(&url, minutes),
        ),
    };
    email::queue(
        &mut tx,
        Outgoing {
            to,
            user_id: user,
            idempotency_key,
            message,
        },
    )
    .await?;
    tx.commit().await
}

/// Uses a `purpose` link's token (once, before it expires; an e-mail change's only by the `user` it was sent
/// for) and returns the address it was sent to. `None`: expired, used, superseded, unknown, or another user's.
pub async fn redeem(
    tx: &mut PgConnection,
    purpose: Purpose,
    token: &str,
    user: Option<Uuid>,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar(
        "UPDATE sign_in_tokens SET used_at = now()
          WHERE token_hash = $1 AND purpose = $2 AND user_id IS NOT DISTINCT FROM $3 AND used_at IS NULL
            AND expires_at > now()
      RETURNING email",
    )
    .bind(accounts::hash_secret(token.trim()))
    .bind(purpose)
    .bind(user)
    .fetch_optional(tx)
    .await
}
