//! Users and API keys (tables in `migrations/*_accounts.sql`).
//!
//! An API key is `ci2_` followed by 32 random bytes (base64url). Only its SHA-256 is stored; the key itself is
//! shown once, at creation.

use base64::Engine as _;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

/// Creates a user (and their credit account, empty). The e-mail is stored lower-cased.
pub async fn create_user(
    conn: &mut PgConnection,
    email: &str,
    display_name: Option<&str>,
) -> sqlx::Result<Uuid> {
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO users (id, email, display_name) VALUES ($1, lower($2), $3)")
        .bind(id)
        .bind(email.trim())
        .bind(display_name)
        .execute(&mut *conn)
        .await?;
    sqlx::query("INSERT INTO credit_accounts (user_id) VALUES ($1)")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(id)
}

/// Finds a user by e-mail (case-insensitive).
pub async fn find_user_by_email<'e>(
    conn: impl PgExecutor<'e>,
    email: &str,
) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar("SELECT id FROM users WHERE email = lower($1)")
        .bind(email.trim())
        .fetch_optional(conn)
        .await
}

/// A freshly issued API key: `secret` is shown to the user once and never stored.
#[derive(Debug)]
pub struct IssuedKey {
    pub id: Uuid,
    pub secret: String,
}

/// The stored form of a key or token: SHA-256 of its text.
pub fn hash_secret(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

pub async fn issue_api_key<'e>(
    conn: impl PgExecutor<'e>,
    user_id: Uuid,
    name: &str,
) -> sqlx::Result<IssuedKey> {
    let bytes: [u8; 32] = rand::random();
    let secret = format!(
        "ci2_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO api_keys (id, user_id, name, prefix, key_hash) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(user_id)
    .bind(name)
    .bind(&secret[..12])
    .bind(hash_secret(&secret))
    .execute(conn)
    .await?;
    Ok(IssuedKey { id, secret })
}

/// The user an API key belongs to, if the key is valid, unrevoked and the account usable.
pub async fn user_for_api_key<'e>(
    conn: impl PgExecutor<'e>,
    secret: &str,
) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar(
        "UPDATE api_keys k SET last_used_at = now()
           FROM users u
          WHERE k.key_hash = $1 AND k.revoked_at IS NULL AND u.id = k.user_id AND u.deletion_requested_at IS NULL
      RETURNING k.user_id",
    )
    .bind(hash_secret(secret))
    .fetch_optional(conn)
    .await
}

/// Why an account is deleted (recorded in `account_deletions`, with nothing else about the person).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeletionReason {
    UserRequest,
    ChildAccount,
    Operator,
}

impl DeletionReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UserRequest => "user_request",
            Self::ChildAccount => "child_account",
            Self::Operator => "operator",
        }
    }
}

/// Makes the account unusable at once — sessions and API keys revoked, sign-in refused — records that a
/// deletion happened, and enqueues the job that removes the data. In the caller's transaction. Returns the
/// deletion's id, or `None` if the account was already being deleted.
pub async fn request_deletion(
    tx: &mut PgConnection,
    user_id: Uuid,
    reason: DeletionReason,
) -> sqlx::Result<Option<Uuid>> {
    let marked = sqlx::query(
        "UPDATE users SET deletion_requested_at = now() WHERE id = $1 AND deletion_requested_at IS NULL",
    )
    .bind(user_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if marked == 0 {
        return Ok(None);
    }
    sqlx::query("UPDATE sessions SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL")
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL")
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    let deletion_id = Uuid::now_v7();
    sqlx::query("INSERT INTO account_deletions (id, reason) VALUES ($1, $2)")
        .bind(deletion_id)
        .bind(reason.as_str())
        .execute(&mut *tx)
        .await?;
    crate::queue::enqueue_with(
        &mut *tx,
        &crate::kinds::DeleteAccount {
            user_id,
            deletion_id,
        },
        crate::queue::EnqueueOptions::key(format!("delete_account:{user_id}")),
    )
    .await?;
    Ok(Some(deletion_id))
}
