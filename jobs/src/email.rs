//! The e-mail outbox (table `email_outbox`): every e-mail the system sends is a row, written in the
//! transaction of the state change that causes it, and delivered by the `send_email` job.
//!
//! Transports (`MAIL_TRANSPORT`): `smtp` (lettre, `SMTP_URL`), `file` (.eml files in `MAIL_FILE_DIR`), or
//! `outbox` (the default: the row is the delivery — for `dev` and tests, which read what was "sent" from the
//! table). The provider's rate (`SMTP_MESSAGES_PER_SECOND`) is enforced fleet-wide in Postgres.

use std::{path::PathBuf, sync::OnceLock};

use lettre::{
    AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message as LettreMessage,
    Tokio1Executor, message::MultiPart,
};
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgConnection;
use uuid::Uuid;

use queue::Job as _;

use crate::{
    config::{ConfigError, Env, Source},
    kinds::SendEmail,
};

/// An e-mail to queue.
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    pub to: &'a str,
    pub user_id: Option<Uuid>,
    /// Deduplicates: the same key is sent once, however often the producer runs.
    pub idempotency_key: String,
    pub message: mail::Message,
}

/// Queues `email` in the caller's transaction: the outbox row and its `send_email` job commit together.
/// Returns false when an e-mail with the same idempotency key exists already.
pub async fn queue(conn: &mut PgConnection, email: Outgoing<'_>) -> sqlx::Result<bool> {
    let id: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO email_outbox (id, idempotency_key, user_id, to_address, template, subject, body_text, body_html)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (idempotency_key) DO NOTHING
         RETURNING id",
    )
    .bind(Uuid::now_v7())
    .bind(&email.idempotency_key)
    .bind(email.user_id)
    .bind(email.to)
    .bind(email.message.template)
    .bind(&email.message.subject)
    .bind(&email.message.text)
    .bind(&email.message.html)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(id) = id else { return Ok(false) };
    SendEmail { email_id: id }.enqueue(&mut *conn).await?;
    Ok(true)
}

/// One outbox row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxRow {
    pub id: Uuid,
    pub to_address: String,
    pub template: String,
    pub subject: String,
    pub body_text: String,
    pub body_html: String,
    pub sent_at: Option<chrono::DateTime<chrono::Utc>>,
    pub attempts: i32,
    pub last_error: Option<String>,
}

/// E-mails to `address`, oldest first (tests and the `dev` outbox).
pub async fn sent_to(pool: &sqlx::PgPool, address: &str) -> sqlx::Result<Vec<OutboxRow>> {
    sqlx::query_as(
        "SELECT id, to_address, template, subject, body_text, body_html, sent_at, attempts, last_error
           FROM email_outbox WHERE to_address = lower($1) ORDER BY created_at",
    )
    .bind(address)
    .fetch_all(pool)
    .await
}

pub async fn find(pool: &sqlx::PgPool, id: Uuid) -> sqlx::Result<Option<OutboxRow>> {
    sqlx::query_as(
        "SELECT id, to_address, template, subject, body_text, body_html, sent_at, attempts, last_error
           FROM email_outbox WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// How mail leaves.
#[derive(Debug, Clone)]
pub enum Transport {
    Outbox,
    File(PathBuf),
    Smtp(SecretString),
}

/// E-mail settings.
#[derive(Debug, Clone)]
pub struct MailConfig {
    /// `MAIL_TRANSPORT` (default `outbox`), `SMTP_URL`, `MAIL_FILE_DIR`.
    pub transport: Transport,
    /// `MAIL_FROM` (default `createimage2 <no-reply@createimage2.com>`).
    pub from: String,
    /// `SMTP_MESSAGES_PER_SECOND` (default 10), fleet-wide.
    pub per_second: u32,
}

impl MailConfig {
    pub fn from_source<S: Source>(source: &S) -> Result<Self, ConfigError> {
        let transport = match source.get("MAIL_TRANSPORT").as_deref().unwrap_or("outbox") {
            "outbox" => Transport::Outbox,
            "file" => Transport::File(
                source
                    .get("MAIL_FILE_DIR")
                    .ok_or(ConfigError::Missing {
                        name: "MAIL_FILE_DIR",
                    })?
                    .into(),
            ),
            "smtp" => Transport::Smtp(
                source
                    .get("SMTP_URL")
                    .ok_or(ConfigError::Missing { name: "SMTP_URL" })?
                    .into(),
            ),
            other => {
                return Err(ConfigError::Invalid {
                    name: "MAIL_TRANSPORT",
                    reason: format!("expected smtp, file or outbox, got {other:?}"),
                });
            }
        };
        let from = source
            .get("MAIL_FROM")
            .unwrap_or_else(|| "createimage2 <no-reply@createimage2.com>".into());
        from.parse::<lettre::message::Mailbox>()
            .map_err(|error| ConfigError::Invalid {
                name: "MAIL_FROM",
                reason: error.to_string(),
            })?;
        let per_second = match source.get("SMTP_MESSAGES_PER_SECOND") {
            None => 10,
            Some(raw) => raw.parse().map_err(|_| ConfigError::Invalid {
                name: "SMTP_MESSAGES_PER_SECOND",
                reason: format!("{raw:?} is not a number"),
            })?,
        };
        Ok(Self {
            transport,
            from,
            per_second,
        })
    }
}

static CONFIG: OnceLock<Result<MailConfig, String>> = OnceLock::new();

/// Sets this process's mail configuration (before the first e-mail is sent); returns false if it was set.
pub fn set_mail_config(config: MailConfig) -> bool {
    CONFIG.set(Ok(config)).is_ok()
}

/// This process's mail configuration, read from the environment on first use.
pub fn mail_config() -> Result<&'static MailConfig, String> {
    CONFIG
        .get_or_init(|| MailConfig::from_source(&Env).map_err(|error| error.to_string()))
        .as_ref()
        .map_err(Clone::clone)
}

/// Why a delivery failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// Try again later (connection, 4xx).
    #[error("{0}")]
    Transient(String),
    /// Never deliverable (bad address, 5xx).
    #[error("{0}")]
    Permanent(String),
}

/// Delivers one row through `config`'s transport.
pub async fn deliver(config: &MailConfig, row: &OutboxRow) -> Result<(), DeliveryError> {
    if let Transport::Outbox = config.transport {
        tracing::info!(email.id = %row.id, template = %row.template, "mail transport is the outbox: not delivered");
        return Ok(());
    }
    let permanent = |e: &dyn std::fmt::Display| DeliveryError::Permanent(e.to_string());
    let message = LettreMessage::builder()
        .from(config.from.parse().map_err(|e| permanent(&e))?)
        .to(row.to_address.parse().map_err(|e| permanent(&e))?)
        .subject(&row.subject)
        .multipart(MultiPart::alternative_plain_html(
            row.body_text.clone(),
            row.body_html.clone(),
        ))
        .map_err(|e| permanent(&e))?;
    match &config.transport {
        Transport::Outbox => Ok(()),
        Transport::File(dir) => {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| DeliveryError::Transient(e.to_string()))?;
            AsyncFileTransport::<Tokio1Executor>::new(dir)
                .send(message)
                .await
                .map(drop)
                .map_err(|e| DeliveryError::Transient(e.to_string()))
        }
        Transport::Smtp(url) => {
            let transport = smtp_transport(url)?;
            match transport.send(message).await {
                Ok(_) => Ok(()),
                Err(error) if error.is_permanent() => {
                    Err(DeliveryError::Permanent(error.to_string()))
                }
                Err(error) => Err(DeliveryError::Transient(error.to_string())),
            }
        }
    }
}

/// A transport per delivery: mail volume is low and throttled, so a pool is not worth a process-wide cache
/// keyed by URL.
fn smtp_transport(url: &SecretString) -> Result<AsyncSmtpTransport<Tokio1Executor>, DeliveryError> {
    AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose_secret())
        .map(|builder| builder.build())
        .map_err(|error| DeliveryError::Permanent(format!("SMTP_URL: {error}")))
}

/// The newest messages of the outbox (dev mode's outbox page): id, recipient, subject, time.
pub async fn recent(
    pool: &sqlx::PgPool,
    limit: i64,
) -> sqlx::Result<Vec<(Uuid, String, String, chrono::DateTime<chrono::Utc>)>> {
    sqlx::query_as(
        "SELECT id, to_address, subject, created_at FROM email_outbox ORDER BY created_at DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}
