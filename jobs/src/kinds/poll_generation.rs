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
use queue::{Job, JobError, Outcome, RetryPolicy};

use crate::{
    generations::{self, Generation, Status},
    kie::{ErrorClass, TaskInfo, TaskState},
    rate_limit::{self, Take},
    services::JobContext,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PollGeneration {
    pub generation_id: Uuid,
    /// The upstream task this job polls (its key; the job reads the generation's current task). Empty in
    /// payloads written before the field existed, whose rows carry their key already.
    #[serde(default)]
    pub task_id: String,
}

impl PollGeneration {
    /// The key of the poll job of one upstream task: a callback finds the job by it to run it at once.
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
    type Context = std::sync::Arc<crate::services::Services>;
    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 12,
        base: Duration::from_secs(2),
        cap: Duration::from_secs(60),
        timeout: Duration::from_secs(45),
    };

    /// One poll job per upstream task.
    fn unique_key(&self) -> Option<String> {
        Some(Self::key(self.generation_id, &self.task_id))
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

impl PollGeneration {
    async fn handle(self, ctx: JobContext, generation: Generation) -> Result<Outcome, JobError> {
        let pipeline = ctx.app.pipeline()?;
        let metrics = &ctx.app.metrics;
        let Some(task_id) = generation.upstream_task_id.clone() else {
            return Ok(Outcome::Done);
        };
        if generation.is_finished()
            || generation.deleted_at.is_some()
            || generation.status != Status::Generating
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
        let metrics = &ctx.app.metrics;
        let since_submitted = generation
            .submitted_at
            .and_then(|at| (Utc::now() - at).to_std().ok())
            .unwrap_or_default();
        match info.state {
            TaskState::Success if !info.result_urls.is_empty() => {
                let mut tx = ctx.pool.begin().await?;
                let moved = sqlx::query(
                    "UPDATE generations SET result_urls = $2, upstream_finished_at = now(), updated_at = now()
                      WHERE id = $1 AND status = $4 AND upstream_task_id = $3",
                )
                .bind(generation.id)
                .bind(&info.result_urls)
                .bind(task_id)
                .bind(Status::Generating)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if moved == 1 {
                    generations::transition(
                        &mut tx,
                        generation.id,
                        &[Status::Generating],
                        Status::Storing,
                    )
                    .await?;
                    StoreGeneration {
                        generation_id: generation.id,
                        task_id: task_id.to_owned(),
                    }
                    .enqueue(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(Outcome::Done)
            }
            // A success without URLs has been seen: look again shortly rather than failing.
            TaskState::Success => Ok(Outcome::Snooze(Duration::from_secs(2))),
            TaskState::Fail => {
                let failure = classify_failure(&info);
                if failure == Failure::ServerSide && !generation.upstream_retried {
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
                        generations::transition(
                            &mut tx,
                            generation.id,
                            &[Status::Generating],
                            Status::Queued,
                        )
                        .await?;
                        SubmitGeneration {
                            generation_id: generation.id,
                            retry: true,
                        }
                        .enqueue(&mut *tx)
                        .await?;
                    }
                    tx.commit().await?;
                    tracing::warn!(generation.id = %generation.id, fail_code = %info.fail_code, "upstream failed; retrying once with a new task");
                    return Ok(Outcome::Done);
                }
                let (code, reason) = explain_failure(&info, failure);
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

/// How a failed task is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The prompt or a reference image was refused: permanent, and the user is told plainly.
    ContentPolicy,
    /// kie or the model failed on its side: worth one new task.
    ServerSide,
    /// Anything else (validation, unknown numeric codes): permanent.
    Other,
}

/// Reads `failCode` in both of kie's spellings. The Get Task Details page shows HTTP-like codes as strings
/// (`"422"`, `"500"`); newer Market schemas show named codes (`"GENERATION_FAILED"`) and `null` on success, and
/// list no others. A refusal is recognised by its message first, whatever the code, so it is never retried.
/// Numeric codes: `422` is a refusal, `5xx` server-side, the rest permanent. Named codes: one that names a
/// policy is a refusal, one that names the request (invalid, parameter, validation) is permanent, and any other
/// (`GENERATION_FAILED`, an internal error, a timeout, a name not seen before) is read as server-side: the cost of
/// that reading being wrong is one more upstream task, bounded by the retry-once rule, and the credits are
/// refunded either way.
fn classify_failure(info: &TaskInfo) -> Failure {
    let message = info.fail_message.to_lowercase();
    if ["prohibited", "policy", "safety"]
        .iter()
        .any(|word| message.contains(word))
    {
        return Failure::ContentPolicy;
    }
    let code = info.fail_code.trim();
    if code.is_empty() {
        return Failure::Other;
    }
    if code.bytes().all(|b| b.is_ascii_digit()) {
        return match code {
            "422" => Failure::ContentPolicy,
            _ if code.starts_with('5') => Failure::ServerSide,
            _ => Failure::Other,
        };
    }
    let name = code.to_ascii_uppercase();
    let names_any = |words: &[&str]| words.iter().any(|word| name.contains(word));
    if names_any(&[
        "POLICY",
        "SAFETY",
        "MODERATION",
        "PROHIBITED",
        "SENSITIVE",
        "NSFW",
        "CONTENT",
    ]) {
        Failure::ContentPolicy
    } else if names_any(&["INVALID", "VALIDATION", "PARAM", "UNSUPPORTED"]) {
        Failure::Other
    } else {
        Failure::ServerSide
    }
}

/// A failure code for the row and a reason in plain words for the user.
fn explain_failure(info: &TaskInfo, failure: Failure) -> (&'static str, String) {
    if failure == Failure::ContentPolicy {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kie::TaskState;

    fn failed(code: &str, message: &str) -> TaskInfo {
        TaskInfo {
            task_id: "task_1".into(),
            state: TaskState::Fail,
            result_urls: vec![],
            fail_code: code.into(),
            fail_message: message.into(),
            cost_time_ms: None,
        }
    }

    #[test]
    fn numeric_and_named_fail_codes_are_classified_alike() {
        assert_eq!(
            classify_failure(&failed("500", "internal error")),
            Failure::ServerSide
        );
        assert_eq!(classify_failure(&failed("501", "")), Failure::ServerSide);
        assert_eq!(
            classify_failure(&failed("GENERATION_FAILED", "internal error")),
            Failure::ServerSide
        );
        assert_eq!(
            classify_failure(&failed("INTERNAL_ERROR", "")),
            Failure::ServerSide
        );
        assert_eq!(
            classify_failure(&failed("422", "bad")),
            Failure::ContentPolicy
        );
        assert_eq!(
            classify_failure(&failed("CONTENT_POLICY_VIOLATION", "")),
            Failure::ContentPolicy
        );
        assert_eq!(
            classify_failure(&failed("INVALID_PARAMETER", "")),
            Failure::Other
        );
        assert_eq!(classify_failure(&failed("400", "")), Failure::Other);
        assert_eq!(classify_failure(&failed("", "")), Failure::Other);
    }

    #[test]
    fn a_refusal_is_recognised_by_its_message_whatever_the_code() {
        for code in ["GENERATION_FAILED", "500", ""] {
            assert_eq!(
                classify_failure(&failed(
                    code,
                    "Invalid prompt: prompt contains prohibited content"
                )),
                Failure::ContentPolicy,
                "{code}"
            );
        }
    }
}
