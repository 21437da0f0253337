//! Copies a finished generation's images from kie.ai into our bucket, then settles the reservation.
//!
//! Why: kie's result URLs expire (within 24 h), so results are copied at once, under
//! `users/{user}/generations/{generation}/{n}.{ext}`, with their content type, size and dimensions recorded.
//!
//! Safe twice: an image already recorded is skipped; the object key is deterministic (a re-upload overwrites
//! the same bytes); settling is keyed by the generation in the ledger. Memory: one image at a time, read with
//! a hard cap (`MAX_IMAGE_BYTES`), never unbounded.

use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use uuid::Uuid;

use queue::{Job, JobError, Outcome, RetryPolicy};

use crate::{
    generations::{self, Ending, Generation, Status},
    kie::ErrorClass,
    services::JobContext,
};

/// The largest result image accepted.
pub const MAX_IMAGE_BYTES: usize = 40 * 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreGeneration {
    pub generation_id: Uuid,
    /// The upstream task whose results are stored (its key; empty in payloads written before the field
    /// existed, whose rows carry their key already).
    #[serde(default)]
    pub task_id: String,
}

impl Job for StoreGeneration {
    const NAME: &'static str = "store_generation";
    type Context = std::sync::Arc<crate::services::Services>;
    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 6,
        base: Duration::from_secs(2),
        cap: Duration::from_secs(60),
        timeout: Duration::from_secs(180),
    };

    /// One store per upstream task's results.
    fn unique_key(&self) -> Option<String> {
        Some(format!("store:{}:{}", self.generation_id, self.task_id))
    }

    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        let Some(generation) = generations::find(&ctx.pool, self.generation_id).await? else {
            return Ok(Outcome::Done); // deleted: nothing to do
        };
        // Every log line (and upstream call) of this attempt carries the generation's trace id.
        let span = generations::span(&generation);
        self.handle(ctx, generation).instrument(span).await
    }
}

impl StoreGeneration {
    async fn handle(self, ctx: JobContext, generation: Generation) -> Result<Outcome, JobError> {
        let metrics = &ctx.app.metrics;
        if generation.is_finished()
            || generation.deleted_at.is_some()
            || generation.status != Status::Storing
        {
            return Ok(Outcome::Done);
        }
        for (n, url) in generation.result_urls.iter().enumerate() {
            match store_one(&ctx, &generation, n, url).await {
                Ok(()) => {}
                Err(StoreError::Permanent(reason)) => {
                    generations::fail_now(&ctx.pool, metrics, &generation, "store_failed", &reason)
                        .await?;
                    return Ok(Outcome::Done);
                }
                Err(StoreError::Retryable(error)) if ctx.is_last_attempt() => {
                    tracing::error!(generation.id = %generation.id, error = format!("{error:#}"), "giving up storing the image");
                    generations::fail_now(
                        &ctx.pool,
                        metrics,
                        &generation,
                        "store_failed",
                        "The image was generated but could not be saved. Your credits were refunded.",
                    )
                    .await?;
                    return Ok(Outcome::Done);
                }
                Err(StoreError::Retryable(error)) => return Err(JobError::Retryable(error)),
            }
        }
        let mut tx = ctx.pool.begin().await?;
        let succeeded = generations::succeed(&mut tx, &generation).await?;
        tx.commit().await?;
        if succeeded {
            tracing::info!(generation.id = %generation.id, trace_id = %generation.trace_id, "generation succeeded");
            generations::record_ending(metrics, &generation, Ending::Succeeded);
        }
        Ok(Outcome::Done)
    }
}

enum StoreError {
    Retryable(anyhow::Error),
    Permanent(String),
}

impl<E: Into<anyhow::Error>> From<E> for StoreError {
    fn from(error: E) -> Self {
        Self::Retryable(error.into())
    }
}

async fn store_one(
    ctx: &JobContext,
    generation: &Generation,
    n: usize,
    url: &str,
) -> Result<(), StoreError> {
    let pipeline = ctx
        .app
        .pipeline()
        .map_err(|e| StoreError::Retryable(anyhow::anyhow!("{e}")))?;
    let n = i32::try_from(n).expect("at most a handful of images");
    let stored: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM generated_images WHERE generation_id = $1 AND n = $2)",
    )
    .bind(generation.id)
    .bind(n)
    .fetch_one(&ctx.pool)
    .await?;
    if stored {
        return Ok(());
    }
    let direct = match pipeline.kie.download_url(url).await {
        Ok(direct) => direct,
        Err(error) if error.class() == ErrorClass::Permanent => {
            return Err(StoreError::Permanent(
                "The generated image expired at the image service before it could be saved. Your credits were refunded."
                    .into(),
            ));
        }
        Err(error) => return Err(error.into()),
    };
    let response = pipeline.kie.fetch(&direct).await?;
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let extension = match content_type.as_str() {
        "image/png" => "png",
        "image/jpeg" => "jpg",
        "image/webp" => "webp",
        other => {
            return Err(StoreError::Permanent(format!(
                "The image service returned a file of type {other:?}, not an image."
            )));
        }
    };
    if response
        .content_length()
        .is_some_and(|len| len > MAX_IMAGE_BYTES as u64)
    {
        return Err(StoreError::Permanent(
            "The generated image is larger than we accept.".into(),
        ));
    }
    let mut bytes = Vec::with_capacity(
        response
            .content_length()
            .unwrap_or(0)
            .min(MAX_IMAGE_BYTES as u64) as usize,
    );
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        if bytes.len() + chunk.len() > MAX_IMAGE_BYTES {
            return Err(StoreError::Permanent(
                "The generated image is larger than we accept.".into(),
            ));
        }
        bytes.extend_from_slice(&chunk);
    }
    let size = imagesize::blob_size(&bytes).map_err(|_| {
        StoreError::Permanent(
            "The image service returned a file that is not a readable image.".into(),
        )
    })?;
    let key = format!("{}{n}.{extension}", generation.object_prefix());
    let byte_size = i64::try_from(bytes.len()).expect("capped size fits");
    pipeline.storage.put(&key, bytes, &content_type).await?;
    sqlx::query(
        "INSERT INTO generated_images (id, generation_id, n, object_key, byte_size, content_type, width, height)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (generation_id, n) DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(generation.id)
    .bind(n)
    .bind(&key)
    .bind(byte_size)
    .bind(&content_type)
    .bind(i32::try_from(size.width).ok())
    .bind(i32::try_from(size.height).ok())
    .execute(&ctx.pool)
    .await?;
    Ok(())
}
