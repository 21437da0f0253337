//! Asks kie.ai how a generation's task is doing, on a durable backoff schedule.
//!
//! Why: callbacks are a hint and can be lost, so polling always runs. Between checks the job is *snoozed*
//! (its row waits in the queue with a later `run_at`): no worker slot is held and a restart loses nothing. A
//! callback makes the next check immediate (the api expedites this job). Past the deadline the generation
//! fails and is refunded.
//!
//! Safe twice: it only reads kie and moves the generation forward with conditional updates; the next step
//! (store) is enqueued with an idempotency key.

use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use uuid::Uuid;

use super::{store_generation::StoreGeneration, submit_generation::SubmitGeneration};
use crate::{
    generations::{self, Generation},
    kie::{ErrorClass, TaskInfo, TaskState},
    queue::{EnqueueOptions, Job, JobContext, JobError, Outcome, RetryPolicy, enqueue_with},
    rate_limit::{self, Take},
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PollGeneration {
    pub generation_id: Uuid,
}

impl PollGeneration {
    /// One poll job per upstream task.
    pub fn key(generation_id: Uuid, task_id: &str) -> String {
        format!("poll:{generation_id}:{task_id}")
    }

    pub fn first_delay() -> Duration {
        Duration::from_millis(2500)
    }

    /// kie's suggested cadence: every 2–3 s for the first 30 s, 5–10 s until 2 min, then 15–30 s.
    pub fn next_delay(since_submitted: Duration) -> Duration {
        let (low, high) = match since_submitted.as_secs() {
            0..30 => (2.0, 3.0),
            30..120 => (5.0, 10.0),
            _ => (15.0, 30.0),
        };
        Duration::from_secs_f64(low + (high - low) * rand::random::<f64>())
    }
}

impl Job for PollGeneration {
    const NAME: &'static str = "poll_generation";
    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 12,
        base: Duration::from_secs(2),
        cap: Duration::from_secs(60),
        timeout: Duration::from_secs(45),
    };

    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        let Some(generation) = generations::find(&ctx.pool, self.generation_id).await? else {
            return Ok(Outcome::Done); // deleted: nothing to do
        };
        // Every log line (and upstream call) of this attempt carries the generation's trace id.
        let span = generations::span(&generation);
        self.handle(ctx, generation).instrument(span).await
    }
}

impl PollGeneration {
    async fn handle(self, ctx: JobContext, generation: Generation) -> Result<Outcome, JobError> {
        let pipeline = ctx.services.pipeline()?;
        let metrics = &ctx.services.metrics;
        let Some(task_id) = generation.upstream_task_id.clone() else {
            return Ok(Outcome::Done);
        };
        if generation.is_finished()
            || generation.deleted_at.is_some()
            || generation.status != "generating"
        {
            return Ok(Outcome::Done);
        }
        if generation
            .poll_deadline_at
            .is_some_and(|deadline| Utc::now() > deadline)
        {
            generations::fail_now(
                &ctx.pool,
                metrics,
                &generation,
                "deadline_exceeded",
                "The image took too long to generate. Your credits were refunded; please try again.",
            )
            .await?;
            return Ok(Outcome::Done);
        }
        if let Take::RetryAfter(wait) = rate_limit::take(
            &ctx.pool,
            "kie:record_info",
            pipeline.kie_config.record_info_per_second,
            Duration::from_secs(1),
        )
        .await?
        {
            metrics
                .upstream_rate_limit_wait_seconds
                .with_label_values(&["kie"])
                .observe(wait.as_secs_f64());
            return Ok(Outcome::Snooze(wait));
        }
        let info = match pipeline.kie.record_info(&task_id).await {
            Ok(info) => info,
            Err(error) => {
                return match error.class() {
                    ErrorClass::RateLimited | ErrorClass::AccountLevel => {
                        Ok(Outcome::Snooze(Duration::from_secs(5)))
                    }
                    // Unknown task or garbled answer: try again with backoff; the deadline bounds it.
                    _ if ctx.is_last_attempt() => {
                        generations::fail_now(
                            &ctx.pool,
                            metrics,
                            &generation,
                            "status_unavailable",
                            "We could not get the image's status from the image service. Your credits were refunded.",
                        )
                        .await?;
                        Ok(Outcome::Done)
                    }
                    _ => Err(JobError::Retryable(error.into())),
                };
            }
        };
        if info.task_id != task_id {
            return Err(JobError::Retryable(anyhow::anyhow!(
                "recordInfo answered for {} instead of {task_id}",
                info.task_id
            )));
        }
        self.act_on(&ctx, &generation, &task_id, info).await
    }
}

impl PollGeneration {
    async fn act_on(
        &self,
        ctx: &JobContext,
        generation: &Generation,
        task_id: &str,
        info: TaskInfo,
    ) -> Result<Outcome, JobError> {
        let metrics = &ctx.services.metrics;
        let since_submitted = generation
            .submitted_at
            .and_then(|at| (Utc::now() - at).to_std().ok())
            .unwrap_or_default();
        match info.state {
            TaskState::Success if !info.result_urls.is_empty() => {
                let mut tx = ctx.pool.begin().await?;
                let moved = sqlx::query(
                    "UPDATE generations SET result_urls = $2, upstream_finished_at = now(), updated_at = now()
                      WHERE id = $1 AND status = 'generating' AND upstream_task_id = $3",
                )
                .bind(generation.id)
                .bind(&info.result_urls)
                .bind(task_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if moved == 1 {
                    generations::transition(&mut tx, generation.id, &["generating"], "storing")
                        .await?;
                    enqueue_with(
                        &mut *tx,
                        &StoreGeneration {
                            generation_id: generation.id,
                        },
                        EnqueueOptions::key(format!("store:{}:{task_id}", generation.id)),
                    )
                    .await?;
                }
                tx.commit().await?;
                Ok(Outcome::Done)
            }
            // A success without URLs has been seen: look again shortly rather than failing.
            TaskState::Success => Ok(Outcome::Snooze(Duration::from_secs(2))),
            TaskState::Fail => {
                let server_side = info.fail_code.starts_with('5');
                if server_side && !generation.upstream_retried {
                    // A 500-class failure is retried once with a new task.
                    let mut tx = ctx.pool.begin().await?;
                    let reset = sqlx::query(
                        "UPDATE generations SET upstream_task_id = NULL, upstream_retried = true, submit_attempts = 0,
                                submitted_at = NULL, poll_deadline_at = NULL, updated_at = now()
                          WHERE id = $1 AND upstream_task_id = $2 AND finished_at IS NULL",
                    )
                    .bind(generation.id)
                    .bind(task_id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if reset == 1 {
                        generations::transition(&mut tx, generation.id, &["generating"], "queued")
                            .await?;
                        enqueue_with(
                            &mut *tx,
                            &SubmitGeneration {
                                generation_id: generation.id,
                            },
                            EnqueueOptions::key(format!(
                                "{}:retry",
                                SubmitGeneration::key(generation.id)
                            )),
                        )
                        .await?;
                    }
                    tx.commit().await?;
                    tracing::warn!(generation.id = %generation.id, fail_code = %info.fail_code, "upstream failed; retrying once with a new task");
                    return Ok(Outcome::Done);
                }
                let (code, reason) = explain_failure(&info);
                generations::fail_now(&ctx.pool, metrics, generation, code, &reason).await?;
                Ok(Outcome::Done)
            }
            TaskState::Other(state) => {
                tracing::warn!(generation.id = %generation.id, state, "unknown kie task state; still waiting");
                Ok(Outcome::Snooze(Self::next_delay(since_submitted)))
            }
            TaskState::Waiting | TaskState::Queuing | TaskState::Generating => {
                Ok(Outcome::Snooze(Self::next_delay(since_submitted)))
            }
        }
    }
}

/// A failure code for the row and a reason in plain words for the user.
fn explain_failure(info: &TaskInfo) -> (&'static str, String) {
    let message = info.fail_message.to_lowercase();
    if info.fail_code == "422"
        || message.contains("prohibited")
        || message.contains("policy")
        || message.contains("safety")
    {
        (
            "content_policy",
            "The prompt or a reference image was refused by the content policy. Your credits were refunded; \
             try rephrasing it."
                .to_owned(),
        )
    } else {
        let detail = if info.fail_message.is_empty() {
            "no reason given".to_owned()
        } else {
            info.fail_message.clone()
        };
        (
            "generation_failed",
            format!("The image could not be generated ({detail}). Your credits were refunded."),
        )
    }
}
