//! Reference images a member uploads (table `uploads` in `migrations/*_generations.sql`): signing a direct
//! upload to the bucket, reusing a generated image as a reference, and finding a member's uploads.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use crate::{
    generations::{self, Generation, Invalid},
    kinds::submit_generation::MAX_REFERENCE_BYTES,
    limits::{self, Action, Limited},
    storage::Storage,
    text_enum::text_enum,
};

/// How long an upload link is valid.
pub const UPLOAD_URL_TTL: Duration = Duration::from_secs(15 * 60);

text_enum! {
    /// The image types kie.ai takes as references.
    pub enum ContentType {
        Jpeg = "image/jpeg",
        Png = "image/png",
        Webp = "image/webp",
    }
}

impl ContentType {
    /// The object key's extension.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Jpeg => "jpg",
            Self::Png => "png",
            Self::Webp => "webp",
        }
    }
}

/// A presigned PUT for one reference image: the client sends exactly this type and length to `url`.
#[derive(Debug, Clone)]
pub struct SignedUpload {
    pub id: Uuid,
    pub url: String,
    pub content_type: ContentType,
    pub byte_size: i64,
    pub expires_at: DateTime<Utc>,
}

/// Why an upload was not signed, or a reference not made.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error(transparent)]
    Limited(#[from] Limited),
    /// The generated image to reuse does not exist (or is not the member's).
    #[error("no such image")]
    NoSuchImage,
    #[error(transparent)]
    Storage(anyhow::Error),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl From<limits::TakeError> for UploadError {
    fn from(error: limits::TakeError) -> Self {
        match error {
            limits::TakeError::Limited(limited) => Self::Limited(limited),
            limits::TakeError::Database(error) => Self::Database(error),
        }
    }
}

/// Records an upload and signs its PUT (type and length are part of the signature), after taking one from the
/// member's upload budget.
pub async fn sign(
    pool: &PgPool,
    storage: &Storage,
    user: Uuid,
    content_type: &str,
    byte_size: i64,
) -> Result<SignedUpload, UploadError> {
    limits::take(pool, Action::Upload, user).await?;
    let content_type: ContentType = content_type.parse().map_err(|_| Invalid {
        field: "content_type",
        message: "must be image/jpeg, image/png or image/webp".into(),
    })?;
    if byte_size <= 0 || byte_size > MAX_REFERENCE_BYTES {
        return Err(Invalid {
            field: "byte_size",
            message: "must be between 1 byte and 10 MB".into(),
        }
        .into());
    }
    let id = Uuid::now_v7();
    let key = object_key(user, id, content_type);
    let url = storage
        .presign_put(&key, content_type.as_str(), byte_size, UPLOAD_URL_TTL)
        .await
        .map_err(UploadError::Storage)?;
    insert(pool, id, user, &key, content_type, byte_size).await?;
    Ok(SignedUpload {
        id,
        url,
        content_type,
        byte_size,
        expires_at: Utc::now() + UPLOAD_URL_TTL,
    })
}

/// Copies the first image of a generation to a new upload of `user`, so it can be attached as a reference.
/// The caller has checked that the member may see `generation` (theirs, or their session's trial). Returns the
/// upload's id.
pub async fn from_generated_image(
    pool: &PgPool,
    storage: &Storage,
    user: Uuid,
    generation: &Generation,
) -> Result<Uuid, UploadError> {
    let image = generations::images_of(pool, &[generation.id])
        .await?
        .into_iter()
        .next()
        .ok_or(UploadError::NoSuchImage)?;
    let content_type: ContentType = image.content_type.parse().map_err(|_| Invalid {
        field: "image",
        message: "this image type cannot be used as a reference".into(),
    })?;
    if image.byte_size > MAX_REFERENCE_BYTES {
        return Err(Invalid {
            field: "image",
            message: "this image is larger than 10 MB, the limit for reference images".into(),
        }
        .into());
    }
    let id = Uuid::now_v7();
    let key = object_key(user, id, content_type);
    storage
        .copy(&image.object_key, &key)
        .await
        .map_err(UploadError::Storage)?;
    insert(pool, id, user, &key, content_type, image.byte_size).await?;
    Ok(id)
}

fn object_key(user: Uuid, id: Uuid, content_type: ContentType) -> String {
    format!("users/{user}/uploads/{id}.{}", content_type.extension())
}

async fn insert(
    pool: &PgPool,
    id: Uuid,
    user: Uuid,
    key: &str,
    content_type: ContentType,
    byte_size: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO uploads (id, user_id, object_key, content_type, byte_size) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(user)
    .bind(key)
    .bind(content_type)
    .bind(byte_size)
    .execute(pool)
    .await
    .map(drop)
}

/// How many of `ids` (distinct) are the member's uploads.
pub async fn count_owned<'e>(
    conn: impl PgExecutor<'e>,
    user: Uuid,
    ids: &[Uuid],
) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM uploads WHERE id = ANY($1) AND user_id = $2")
        .bind(ids)
        .bind(user)
        .fetch_one(conn)
        .await
}

/// The member's uploads among `ids`, oldest first: (id, object key).
pub async fn object_keys(
    pool: &PgPool,
    user: Uuid,
    ids: &[Uuid],
) -> sqlx::Result<Vec<(Uuid, String)>> {
    sqlx::query_as(
        "SELECT id, object_key FROM uploads WHERE user_id = $1 AND id = ANY($2) ORDER BY created_at",
    )
    .bind(user)
    .bind(ids)
    .fetch_all(pool)
    .await
}
