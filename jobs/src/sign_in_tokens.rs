//! E-mailed links (table `sign_in_tokens` in `migrations/*_accounts.sql`): a sign-in link, or the confirmation
//! of a new e-mail address. Only a token's hash is stored; a newer link supersedes the older ones of the same
//! purpose; a link works once and until it expires.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::{
    accounts,
    email::{self, Outgoing},
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
