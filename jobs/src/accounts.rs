//! Users and API keys (tables in `migrations/*_accounts.sql`).
//!
//! An API key is `ci2_` followed by 32 random bytes (base64url). Only its SHA-256 is stored; the key itself is
//! shown once, at creation.

use base64::Engine as _;
use queue::Job as _;
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
    crate::kinds::DeleteAccount {
        user_id,
        deletion_id,
    }
    .enqueue(&mut *tx)
    .await?;
    Ok(Some(deletion_id))
}

/// How a person proved who they are at sign-in.
#[derive(Debug, Clone)]
pub enum Proof<'a> {
    /// They opened a link sent to this address.
    Email(&'a str),
    /// Google vouched for this subject (and, when verified, this address).
    Google {
        sub: &'a str,
        email: &'a str,
        email_verified: bool,
        name: Option<&'a str>,
    },
}

/// The outcome of [`sign_in_or_up`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignIn {
    Existing(Uuid),
    Created(Uuid),
    /// The account is being deleted: no sign-in.
    BeingDeleted,
    /// Google's address is unverified and belongs to another account: no silent linking.
    Unverified,
}

/// Finds or creates the account for `proof`. Google accounts are keyed on `sub`; a Google identity is linked to
/// an existing e-mail account only when Google says the address is verified. A new account starts with
/// `signup_credits` (ledger key `signup:<user>`).
pub async fn sign_in_or_up(
    tx: &mut PgConnection,
    proof: Proof<'_>,
    signup_credits: i64,
) -> sqlx::Result<SignIn> {
    let (email, sub, verified, name) = match proof {
        Proof::Email(email) => (email.trim().to_lowercase(), None, true, None),
        Proof::Google {
            sub,
            email,
            email_verified,
            name,
        } => (email.trim().to_lowercase(), Some(sub), email_verified, name),
    };
    let existing: Option<(Uuid, Option<String>, bool)> = match sub {
        Some(sub) => {
            sqlx::query_as(
                "SELECT id, google_sub, deletion_requested_at IS NOT NULL FROM users WHERE google_sub = $1",
            )
            .bind(sub)
            .fetch_optional(&mut *tx)
            .await?
        }
        None => None,
    };
    let existing = match existing {
        Some(found) => Some(found),
        None => {
            sqlx::query_as(
                "SELECT id, google_sub, deletion_requested_at IS NOT NULL FROM users WHERE email = $1 FOR UPDATE",
            )
            .bind(&email)
            .fetch_optional(&mut *tx)
            .await?
        }
    };
    if let Some((id, linked_sub, deleting)) = existing {
        if deleting {
            return Ok(SignIn::BeingDeleted);
        }
        if let Some(sub) = sub
            && linked_sub.as_deref() != Some(sub)
        {
            if !verified || linked_sub.is_some() {
                return Ok(SignIn::Unverified);
            }
            sqlx::query("UPDATE users SET google_sub = $2, updated_at = now() WHERE id = $1")
                .bind(id)
                .bind(sub)
                .execute(&mut *tx)
                .await?;
        }
        if verified {
            sqlx::query(
                "UPDATE users SET email_verified_at = coalesce(email_verified_at, now()) WHERE id = $1",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        return Ok(SignIn::Existing(id));
    }
    let id = create_user(tx, &email, name).await?;
    sqlx::query(
        "UPDATE users SET google_sub = $2, email_verified_at = CASE WHEN $3 THEN now() END WHERE id = $1",
    )
    .bind(id)
    .bind(sub)
    .bind(verified)
    .execute(&mut *tx)
    .await?;
    if signup_credits > 0 {
        crate::credits::apply(
            tx,
            id,
            crate::credits::Kind::Grant,
            signup_credits,
            &format!("signup:{id}"),
            serde_json::json!({"reason": "signup"}),
        )
        .await?;
    }
    Ok(SignIn::Created(id))
}

/// A fresh single-use token for an e-mailed link: `(token for the link, SHA-256 to store)`.
pub fn new_link_token() -> (String, Vec<u8>) {
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let hash = hash_secret(&token);
    (token, hash)
}

/// Sets the account's display name (`None` clears it).
pub async fn set_display_name(
    pool: &sqlx::PgPool,
    user: Uuid,
    name: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE users SET display_name = $2, updated_at = now() WHERE id = $1")
        .bind(user)
        .bind(name)
        .execute(pool)
        .await
        .map(drop)
}

/// Why a confirmed e-mail change did not happen.
#[derive(Debug, thiserror::Error)]
pub enum EmailChangeError {
    #[error("This confirmation link has expired, was already used, or belongs to another account.")]
    InvalidLink,
    #[error("Another account already uses that address.")]
    AddressTaken,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Uses an e-mail change link (`token`, sent for `user`) and makes its address the account's, verified.
/// Returns the new address.
pub async fn confirm_email_change(
    pool: &sqlx::PgPool,
    user: Uuid,
    token: &str,
) -> Result<String, EmailChangeError> {
    let mut tx = pool.begin().await?;
    let email = crate::sign_in_tokens::redeem(
        &mut tx,
        crate::sign_in_tokens::Purpose::EmailChange,
        token,
        Some(user),
    )
    .await?
    .ok_or(EmailChangeError::InvalidLink)?;
    let taken: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE email = $1 AND id <> $2)")
            .bind(&email)
            .bind(user)
            .fetch_one(&mut *tx)
            .await?;
    if taken {
        return Err(EmailChangeError::AddressTaken);
    }
    sqlx::query(
        "UPDATE users SET email = $2, email_verified_at = now(), updated_at = now() WHERE id = $1",
    )
    .bind(user)
    .bind(&email)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(email)
}

/// Revokes one of the member's API keys. Returns false when there is no such active key of theirs.
pub async fn revoke_api_key(pool: &sqlx::PgPool, user: Uuid, id: Uuid) -> sqlx::Result<bool> {
    let revoked = sqlx::query(
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL",
    )
    .bind(id)
    .bind(user)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(revoked == 1)
}

/// The account's e-mail address and spendable credits.
pub async fn email_and_balance(
    pool: &sqlx::PgPool,
    user: Uuid,
) -> sqlx::Result<Option<(String, i64)>> {
    sqlx::query_as(
        "SELECT u.email, coalesce(a.balance, 0) FROM users u LEFT JOIN credit_accounts a ON a.user_id = u.id
          WHERE u.id = $1",
    )
    .bind(user)
    .fetch_optional(pool)
    .await
}

/// The account's e-mail address (`None` once the account is gone).
pub async fn email_of<'e>(conn: impl PgExecutor<'e>, user: Uuid) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT email FROM users WHERE id = $1")
        .bind(user)
        .fetch_optional(conn)
        .await
}

/// What a saved profile form did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileSaved {
    /// The display name is saved; the address is unchanged.
    Saved,
    /// The display name is saved, and a confirmation link went to this new address (or would have, over its
    /// inbox's budget: the answer is the same).
    ConfirmationSent(String),
}

/// Saves the profile form: the display name at once, a new e-mail address once its link is opened. Both fields
/// are checked before either is saved, so a refused form changes nothing. `email` is what the member typed.
pub async fn update_profile(
    pool: &sqlx::PgPool,
    user: Uuid,
    current_email: &str,
    display_name: Option<&str>,
    email: &str,
    links: crate::sign_in_tokens::LinkPolicy,
    link: impl FnOnce(&str) -> String,
) -> Result<ProfileSaved, crate::sign_in_tokens::LinkError> {
    use crate::generations::Invalid;
    let name = display_name.map(str::trim).filter(|n| !n.is_empty());
    if let Some(name) = name {
        if name.chars().count() > 200 {
            return Err(Invalid {
                field: "display_name",
                message: "the name can have at most 200 characters".into(),
            }
            .into());
        }
        crate::text::check("display_name", name, crate::text::Lines::One)?;
    }
    let new_email = email.trim().to_lowercase();
    let changes_email = new_email != current_email;
    if changes_email && !crate::sign_in_tokens::plausible_email(&new_email) {
        return Err(Invalid {
            field: "email",
            message: "that does not look like an e-mail address".into(),
        }
        .into());
    }
    set_display_name(pool, user, name).await?;
    if !changes_email {
        return Ok(ProfileSaved::Saved);
    }
    crate::sign_in_tokens::request_email_change(pool, user, &new_email, links, link).await?;
    Ok(ProfileSaved::ConfirmationSent(new_email))
}

/// Why an API key was not issued.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Invalid(#[from] crate::generations::Invalid),
    #[error(transparent)]
    Limited(#[from] crate::limits::Limited),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// A member asks for a new API key named `name` (1–100 characters on one line), within their key budget. The
/// key's text is in the result only: it is stored as its hash.
pub async fn create_api_key(
    pool: &sqlx::PgPool,
    user: Uuid,
    name: &str,
) -> Result<IssuedKey, KeyError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(crate::generations::Invalid {
            field: "name",
            message: "a key needs a name of 1 to 100 characters".into(),
        }
        .into());
    }
    crate::text::check("name", name, crate::text::Lines::One)?;
    match crate::limits::take(pool, crate::limits::Action::ApiKey, user).await {
        Ok(()) => {}
        Err(crate::limits::TakeError::Limited(limited)) => return Err(limited.into()),
        Err(crate::limits::TakeError::Database(error)) => return Err(error.into()),
    }
    Ok(issue_api_key(pool, user, name).await?)
}
