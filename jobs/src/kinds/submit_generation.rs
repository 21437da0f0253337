//! Creates the kie.ai task for a queued generation.
//!
//! Why: the api only records the intent; everything that talks to kie.ai happens here, within the fleet-wide
//! budget of 20 new tasks per 10 s (a limiter in Postgres shared by every worker).
//!
//! Safe twice: a generation that already has a task, or has finished, is left alone (the poll job is ensured).
//! The one window that cannot be closed — a crash (or a lost answer) after kie created the task and before its
//! id was committed — is handled by this rule: every createTask call is counted in `submit_attempts` *before*
//! it is made; a re-run first adopts a task that kie reported through the generation's callback URL, and only
//! then creates another; after `MAX_SUBMIT_ATTEMPTS` unconfirmed calls the generation fails and is refunded.
//! So a crash costs at most one duplicate upstream task, and the user is charged once whatever happens (the
//! ledger keys every effect by the generation).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::Instrument;
use uuid::Uuid;

use super::poll_generation::PollGeneration;
use queue::{EnqueueOptions, Job, JobError, Outcome, RetryPolicy, enqueue_with};

use crate::{
    accounts::hash_secret,
    generations::{self, Generation, Status},
    kie::{CreateTask, ErrorClass, MODEL_IMAGE_TO_IMAGE, MODEL_TEXT_TO_IMAGE, TaskInput},
    rate_limit::{self, Take},
    services::JobContext,
    upstream,
};

/// createTask calls per generation whose outcome we could not confirm, before giving up with a refund.
pub const MAX_SUBMIT_ATTEMPTS: i32 = 3;
/// How long kie may fetch a reference image through its presigned URL.
const REFERENCE_URL_TTL: Duration = Duration::from_secs(3600);
/// The upper bound kie accepts for a reference image.
pub const MAX_REFERENCE_BYTES: i64 = 10 * 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmitGeneration {
    pub generation_id: Uuid,
    /// The one resubmission after kie.ai failed the first task server-side (absent in the first submit's
    /// payload, so payloads written before this field decode as first submits).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retry: bool,
}

impl SubmitGeneration {
    /// The first submit of a generation.
    pub fn first(generation_id: Uuid) -> Self {
        Self {
            generation_id,
            retry: false,
        }
    }
}

impl Job for SubmitGeneration {
    const NAME: &'static str = "submit_generation";
    type Context = std::sync::Arc<crate::services::Services>;
    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 8,
        base: Duration::from_secs(2),
        cap: Duration::from_secs(60),
        timeout: Duration::from_secs(90),
    };

    /// One first submit per generation, and one resubmission.
    fn unique_key(&self) -> Option<String> {
        Some(if self.retry {
            format!("submit:{}:retry", self.generation_id)
        } else {
            format!("submit:{}", self.generation_id)
        })
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

impl SubmitGeneration {
    async fn handle(self, ctx: JobContext, generation: Generation) -> Result<Outcome, JobError> {
        let pipeline = ctx.app.pipeline()?;
        let metrics = &ctx.app.metrics;
        if generation.is_finished() || generation.deleted_at.is_some() {
            return Ok(Outcome::Done);
        }
        if let Some(task_id) = &generation.upstream_task_id {
            ensure_polling(&ctx, &generation, task_id).await?;
            return Ok(Outcome::Done);
        }
        if generation.submit_attempts > 0 && adopt_reported_task(&ctx, &generation).await? {
            return Ok(Outcome::Done);
        }
        if generation.submit_attempts >= MAX_SUBMIT_ATTEMPTS {
            generations::fail_now(
                &ctx.pool,
                metrics,
                &generation,
                "submit_unconfirmed",
                "The image service did not confirm the request. Your credits were refunded; please try again.",
            )
            .await?;
            return Ok(Outcome::Done);
        }
        if upstream::is_paused(&ctx.pool, upstream::KIE).await? {
            // Do not fail users' generations for our account's problem: wait until submissions resume.
            return Ok(Outcome::Snooze(Duration::from_secs(30)));
        }

        let input_urls = match reference_urls(&ctx, &generation).await? {
            Ok(urls) => urls,
            Err(reason) => {
                generations::fail_now(
                    &ctx.pool,
                    metrics,
                    &generation,
                    "reference_invalid",
                    &reason,
                )
                .await?;
                return Ok(Outcome::Done);
            }
        };

        let (limit, window) = pipeline.kie_config.create_budget;
        if let Take::RetryAfter(wait) =
            rate_limit::take(&ctx.pool, "kie:create_task", limit, window).await?
        {
            metrics
                .upstream_rate_limit_wait_seconds
                .with_label_values(&["kie"])
                .observe(wait.as_secs_f64());
            return Ok(Outcome::Snooze(wait + jitter(Duration::from_millis(250))));
        }

        // Count the call and set the callback secret *before* the call (see the module comment).
        let secret = hex::encode(rand::random::<[u8; 24]>());
        let mut tx = ctx.pool.begin().await?;
        let claimed = sqlx::query(
            "UPDATE generations SET submit_attempts = submit_attempts + 1, callback_secret_hash = $2
              WHERE id = $1 AND upstream_task_id IS NULL AND finished_at IS NULL",
        )
        .bind(generation.id)
        .bind(hash_secret(&secret))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if claimed == 0 {
            return Ok(Outcome::Done);
        }
        generations::transition(
            &mut tx,
            generation.id,
            &[Status::Queued],
            Status::Submitting,
        )
        .await?;
        tx.commit().await?;

        let callback_url = pipeline
            .public_base_url
            .join(&format!("/webhooks/kie/{}/{secret}", generation.id))
            .map_err(JobError::permanent)?;
        let request = CreateTask {
            model: if input_urls.is_empty() {
                MODEL_TEXT_TO_IMAGE
            } else {
                MODEL_IMAGE_TO_IMAGE
            }
            .to_owned(),
            callback_url: Some(callback_url.to_string()),
            input: TaskInput {
                prompt: generation.prompt.clone(),
                aspect_ratio: generation.aspect_ratio,
                resolution: generation.resolution,
                input_urls,
            },
        };
        match pipeline.kie.create_task(&request).await {
            Ok(task_id) => {
                record_task(&ctx, &generation, &task_id).await?;
                tracing::info!(generation.id = %generation.id, trace_id = %generation.trace_id, upstream.task_id = %task_id, "kie task created");
                Ok(Outcome::Done)
            }
            Err(error) => match error.class() {
                ErrorClass::RateLimited => {
                    // kie says the task was not queued: the call does not count.
                    uncount_attempt(&ctx, generation.id).await?;
                    Ok(Outcome::Snooze(
                        Duration::from_secs(5) + jitter(Duration::from_secs(5)),
                    ))
                }
                ErrorClass::AccountLevel => {
                    uncount_attempt(&ctx, generation.id).await?;
                    upstream::pause(
                        &ctx.pool,
                        upstream::KIE,
                        upstream::PauseKind::Automatic,
                        &error.to_string(),
                    )
                    .await?;
                    tracing::error!(error = %error, "kie.ai account problem: submissions paused for the whole fleet");
                    Ok(Outcome::Snooze(Duration::from_secs(30)))
                }
                ErrorClass::Permanent => {
                    let reason = format!(
                        "The image service rejected the request: {error}. Your credits were refunded."
                    );
                    generations::fail_now(
                        &ctx.pool,
                        metrics,
                        &generation,
                        "upstream_rejected",
                        &reason,
                    )
                    .await?;
                    Ok(Outcome::Done)
                }
                // Unknown outcome (a 5xx or no answer): the attempt stays counted; retried with backoff.
                ErrorClass::Transient if ctx.is_last_attempt() => {
                    generations::fail_now(
                        &ctx.pool,
                        metrics,
                        &generation,
                        "upstream_unavailable",
                        "The image service is unavailable. Your credits were refunded; please try again later.",
                    )
                    .await?;
                    Ok(Outcome::Done)
                }
                ErrorClass::Transient => Err(JobError::Retryable(error.into())),
            },
        }
    }
}

fn jitter(max: Duration) -> Duration {
    max.mul_f64(rand::random::<f64>())
}

async fn uncount_attempt(ctx: &JobContext, id: Uuid) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE generations SET submit_attempts = greatest(submit_attempts - 1, 0) WHERE id = $1",
    )
    .bind(id)
    .execute(&ctx.pool)
    .await
    .map(drop)
}

/// Stores the task id (unless a callback adopted one first) and starts polling, in one transaction.
async fn record_task(
    ctx: &JobContext,
    generation: &Generation,
    task_id: &str,
) -> Result<(), JobError> {
    let deadline = ctx.app.pipeline()?.generation.deadline;
    let mut tx = ctx.pool.begin().await?;
    let stored = sqlx::query(
        "UPDATE generations SET upstream_task_id = $2, submitted_at = now(),
                poll_deadline_at = now() + make_interval(secs => $3), updated_at = now()
          WHERE id = $1 AND upstream_task_id IS NULL AND finished_at IS NULL",
    )
    .bind(generation.id)
    .bind(task_id)
    .bind(deadline.as_secs_f64())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if stored == 1 {
        generations::transition(
            &mut tx,
            generation.id,
            &[Status::Queued, Status::Submitting],
            Status::Generating,
        )
        .await?;
        // A fast upstream can call back before this transaction commits: the callback handler then found no
        // poll job to expedite. It holds the generation's row lock while it records the callback, so by the
        // time the UPDATE above got the row, such a callback is committed and visible here.
        let called_back = generations::callbacks::exists(&mut tx, generation.id, task_id).await?;
        let poll = PollGeneration {
            generation_id: generation.id,
            task_id: task_id.to_owned(),
        };
        let options = if called_back {
            EnqueueOptions::default()
        } else {
            EnqueueOptions::delayed(PollGeneration::first_delay())
        };
        enqueue_with(&mut *tx, &poll, options).await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn ensure_polling(
    ctx: &JobContext,
    generation: &Generation,
    task_id: &str,
) -> Result<(), JobError> {
    PollGeneration {
        generation_id: generation.id,
        task_id: task_id.to_owned(),
    }
    .enqueue(&ctx.pool)
    .await?;
    Ok(())
}

/// After an unconfirmed createTask, kie may have reported the task through the callback URL: adopt it.
async fn adopt_reported_task(ctx: &JobContext, generation: &Generation) -> Result<bool, JobError> {
    let reported = generations::callbacks::first_reported_task(&ctx.pool, generation.id).await?;
    let Some(task_id) = reported else {
        return Ok(false);
    };
    tracing::warn!(generation.id = %generation.id, upstream.task_id = %task_id, "adopting the task kie reported by callback");
    record_task(ctx, generation, &task_id).await?;
    Ok(true)
}

/// Presigned GET URLs of the generation's reference images, after checking each object (HEAD: it exists, is
/// an image kie accepts, ≤ 10 MB). `Ok(Err(reason))` is a reason to fail the generation.
async fn reference_urls(
    ctx: &JobContext,
    generation: &Generation,
) -> Result<Result<Vec<String>, String>, JobError> {
    let storage = &ctx.app.pipeline()?.storage;
    let mut urls = Vec::with_capacity(generation.reference_upload_ids.len());
    for (n, upload_id) in generation.reference_upload_ids.iter().enumerate() {
        let key: Option<String> = sqlx::query_scalar(
            "SELECT object_key FROM uploads WHERE id = $1 AND user_id IS NOT DISTINCT FROM $2",
        )
        .bind(upload_id)
        .bind(generation.user_id)
        .fetch_optional(&ctx.pool)
        .await?;
        let missing = || {
            Ok(Err(format!(
                "Reference image {} is missing; upload it again. Your credits were refunded.",
                n + 1
            )))
        };
        let Some(key) = key else { return missing() };
        let Some(object) = storage.head(&key).await? else {
            return missing();
        };
        let allowed = matches!(
            object.content_type.as_deref(),
            Some("image/jpeg" | "image/png" | "image/webp")
        );
        if !allowed || object.byte_size <= 0 || object.byte_size > MAX_REFERENCE_BYTES {
            return Ok(Err(format!(
                "Reference image {} must be a JPEG, PNG or WebP of at most 10 MB. Your credits were refunded.",
                n + 1
            )));
        }
        sqlx::query("UPDATE uploads SET verified_at = coalesce(verified_at, now()) WHERE id = $1")
            .bind(upload_id)
            .execute(&ctx.pool)
            .await?;
        urls.push(storage.presign_get(&key, REFERENCE_URL_TTL).await?);
    }
    Ok(Ok(urls))
}
