//! Generations (tables in `migrations/*_generations.sql`): validation and pricing, and the transitions every
//! pipeline job shares. A finished generation's credits are settled or refunded here, exactly once, in the
//! transaction that finishes it.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::{
    credits::{self, Applied, Kind},
    telemetry::Metrics,
};

/// Aspect ratios kie.ai accepts.
pub const ASPECT_RATIOS: &[&str] = &[
    "auto", "1:1", "3:2", "2:3", "4:3", "3:4", "5:4", "4:5", "16:9", "9:16", "2:1", "1:2", "3:1",
    "1:3", "21:9", "9:21",
];
pub const RESOLUTIONS: &[&str] = &["1K", "2K", "4K"];
pub const MAX_PROMPT_CHARS: usize = 20_000;
pub const MAX_REFERENCES: usize = 16;

/// A rejected parameter: which field, and why, in words for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: &'static str,
    pub message: String,
}

/// Checks what kie.ai would reject, before any credit is spent.
pub fn validate(
    prompt: &str,
    aspect_ratio: &str,
    resolution: &str,
    references: usize,
) -> Result<(), Invalid> {
    let invalid = |field, message: String| Err(Invalid { field, message });
    let chars = prompt.chars().count();
    if prompt.trim().is_empty() {
        return invalid("prompt", "the prompt is empty".into());
    }
    crate::text::check("prompt", prompt, crate::text::Lines::Many)?;
    if chars > MAX_PROMPT_CHARS {
        return invalid(
            "prompt",
            format!("the prompt has {chars} characters; at most {MAX_PROMPT_CHARS} are allowed"),
        );
    }
    if !ASPECT_RATIOS.contains(&aspect_ratio) {
        return invalid(
            "aspect_ratio",
            format!("must be one of {}", ASPECT_RATIOS.join(", ")),
        );
    }
    if !RESOLUTIONS.contains(&resolution) {
        return invalid("resolution", "must be 1K, 2K or 4K".into());
    }
    let with_references = references > 0;
    if !combination_allowed(aspect_ratio, resolution, with_references) {
        let when = if with_references {
            " when reference images are attached"
        } else {
            ""
        };
        return invalid(
            "resolution",
            format!("{resolution} is not available with aspect ratio {aspect_ratio}{when}"),
        );
    }
    if references > MAX_REFERENCES {
        return invalid(
            "reference_upload_ids",
            format!("at most {MAX_REFERENCES} reference images are allowed"),
        );
    }
    Ok(())
}

/// What kie accepts, per model: a generation with reference images goes to the image-to-image model, one without
/// to text-to-image (`api::generations::create`). Text-to-image's page rejects only 2K/4K with 5:4, 4:5, 3:1,
/// 1:3, 9:21. Image-to-image's page adds 4K with 1:1 and `auto` with anything but 1K; the five ratios are kept
/// for it too, as its page was not confirmed to drop them (docs/contracts.md, kie.ai).
pub fn combination_allowed(aspect_ratio: &str, resolution: &str, with_references: bool) -> bool {
    match resolution {
        "1K" => true,
        _ if ["5:4", "4:5", "3:1", "1:3", "9:21"].contains(&aspect_ratio) => false,
        _ if !with_references => true,
        _ if aspect_ratio == "auto" => false,
        "4K" => aspect_ratio != "1:1",
        _ => true,
    }
}

/// Credits a generation costs.
pub fn cost(resolution: &str) -> i64 {
    match resolution {
        "4K" => 40,
        "2K" => 20,
        _ => 10,
    }
}

/// One generation row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Generation {
    pub id: Uuid,
    pub user_id: Option<Uuid>,
    pub prompt: String,
    pub aspect_ratio: String,
    pub resolution: String,
    pub model: String,
    pub reference_upload_ids: Vec<Uuid>,
    pub status: String,
    pub credits_reserved: i32,
    pub upstream_task_id: Option<String>,
    pub failure_code: Option<String>,
    pub failure_reason: Option<String>,
    pub trace_id: String,
    pub created_at: DateTime<Utc>,
    pub submitted_at: Option<DateTime<Utc>>,
    pub upstream_finished_at: Option<DateTime<Utc>>,
    pub stored_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub poll_deadline_at: Option<DateTime<Utc>>,
    pub submit_attempts: i32,
    pub result_urls: Vec<String>,
    pub deleted_at: Option<DateTime<Utc>>,
    pub upstream_retried: bool,
    pub callback_secret_hash: Option<Vec<u8>>,
}

impl Generation {
    pub fn is_finished(&self) -> bool {
        self.finished_at.is_some()
    }

    /// The reservation's business key in the ledger (reserve, settle and refund share it).
    pub fn ledger_key(&self) -> String {
        ledger_key(self.id)
    }

    /// Bucket prefix of this generation's images.
    pub fn object_prefix(&self) -> String {
        match self.user_id {
            Some(user) => format!("users/{user}/generations/{}/", self.id),
            None => format!("trials/generations/{}/", self.id),
        }
    }
}

pub fn ledger_key(id: Uuid) -> String {
    format!("generation:{id}")
}

/// The span every job of a generation runs in: one search for the trace id shows its whole life, from the
/// api request that logged it through every job and upstream call.
pub fn span(generation: &Generation) -> tracing::Span {
    tracing::info_span!("generation", generation.id = %generation.id, trace_id = %generation.trace_id)
}

/// The channel that carries status changes to the api's server-sent events.
pub const EVENTS_CHANNEL: &str = "generation_events";

pub async fn find<'e>(conn: impl PgExecutor<'e>, id: Uuid) -> sqlx::Result<Option<Generation>> {
    sqlx::query_as("SELECT * FROM generations WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// Announces a status change (delivered at commit).
pub async fn notify(conn: &mut PgConnection, id: Uuid, status: &str) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_notify($1, json_build_object('id', $2::text, 'status', $3::text)::text)")
        .bind(EVENTS_CHANNEL)
        .bind(id.to_string())
        .bind(status)
        .execute(conn)
        .await
        .map(drop)
}

/// Moves an unfinished generation from one of `from` to `to`, announcing it. Returns whether it moved.
pub async fn transition(
    conn: &mut PgConnection,
    id: Uuid,
    from: &[&str],
    to: &str,
) -> sqlx::Result<bool> {
    let from: Vec<String> = from.iter().map(|s| (*s).to_owned()).collect();
    let moved = sqlx::query(
        "UPDATE generations SET status = $3, updated_at = now()
          WHERE id = $1 AND status = ANY($2) AND finished_at IS NULL",
    )
    .bind(id)
    .bind(&from)
    .bind(to)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        > 0;
    if moved {
        notify(conn, id, to).await?;
    }
    Ok(moved)
}

/// How a generation ended, for metrics after commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Succeeded,
    Failed,
}

/// Fails an unfinished generation: refunds its reservation (once), records the reason shown to the user and
/// the usage-log row. Returns false if it had already finished (nothing changes). Run in a transaction.
pub async fn fail(
    tx: &mut PgConnection,
    generation: &Generation,
    code: &str,
    reason: &str,
) -> sqlx::Result<bool> {
    let finished = sqlx::query(
        "UPDATE generations SET status = 'failed', failure_code = $2, failure_reason = $3, finished_at = now(),
                updated_at = now()
          WHERE id = $1 AND finished_at IS NULL",
    )
    .bind(generation.id)
    .bind(code)
    .bind(reason)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        > 0;
    if !finished {
        return Ok(false);
    }
    if let Some(user) = generation.user_id
        && generation.credits_reserved > 0
    {
        let refunded = credits::apply(
            &mut *tx,
            user,
            Kind::Refund,
            i64::from(generation.credits_reserved),
            &generation.ledger_key(),
            serde_json::json!({ "generation": generation.id, "reason": code }),
        )
        .await?;
        debug_assert_ne!(refunded, Applied::InsufficientCredits);
    }
    write_usage_log(tx, generation, false).await?;
    notify(tx, generation.id, "failed").await?;
    Ok(true)
}

/// Marks a stored generation succeeded and turns its reservation into a charge (once), with the usage-log row.
pub async fn succeed(tx: &mut PgConnection, generation: &Generation) -> sqlx::Result<bool> {
    let finished = sqlx::query(
        "UPDATE generations SET status = 'succeeded', stored_at = now(), finished_at = now(), updated_at = now()
          WHERE id = $1 AND finished_at IS NULL",
    )
    .bind(generation.id)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        > 0;
    if !finished {
        return Ok(false);
    }
    if let Some(user) = generation.user_id
        && generation.credits_reserved > 0
    {
        credits::apply(
            &mut *tx,
            user,
            Kind::Settle,
            0,
            &generation.ledger_key(),
            serde_json::json!({ "generation": generation.id, "credits": generation.credits_reserved }),
        )
        .await?;
    }
    write_usage_log(tx, generation, true).await?;
    notify(tx, generation.id, "succeeded").await?;
    Ok(true)
}

/// Privacy policy §1.5: task id, model, generation time, pass/fail — once per generation.
async fn write_usage_log(
    tx: &mut PgConnection,
    generation: &Generation,
    succeeded: bool,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO usage_log (user_id, generation_id, task_id, model, generation_ms, succeeded)
         SELECT user_id, id, upstream_task_id, model,
                (EXTRACT(EPOCH FROM coalesce(upstream_finished_at, now()) - coalesce(submitted_at, created_at)) * 1000)::int,
                $2
           FROM generations WHERE id = $1
         ON CONFLICT (generation_id) DO NOTHING",
    )
    .bind(generation.id)
    .bind(succeeded)
    .execute(tx)
    .await
    .map(drop)
}

/// Counts a finished generation (call after the commit that finished it).
pub fn record_ending(metrics: &Metrics, generation: &Generation, ending: Ending) {
    let outcome = match ending {
        Ending::Succeeded => "succeeded",
        Ending::Failed => "failed",
    };
    let labels = [outcome, generation.resolution.as_str()];
    metrics.generations_total.with_label_values(&labels).inc();
    let seconds = (Utc::now() - generation.created_at).num_milliseconds() as f64 / 1000.0;
    metrics
        .generation_seconds
        .with_label_values(&labels)
        .observe(seconds.max(0.0));
    let credits = u64::try_from(generation.credits_reserved).unwrap_or(0);
    if generation.user_id.is_some() {
        let kind = if ending == Ending::Succeeded {
            "settled"
        } else {
            "refunded"
        };
        metrics
            .credits_total
            .with_label_values(&[kind])
            .inc_by(credits);
    }
}

/// Fails a generation in its own transaction and counts it. For jobs.
pub async fn fail_now(
    pool: &sqlx::PgPool,
    metrics: &Metrics,
    generation: &Generation,
    code: &str,
    reason: &str,
) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    let failed = fail(&mut tx, generation, code, reason).await?;
    tx.commit().await?;
    if failed {
        tracing::info!(generation.id = %generation.id, trace_id = %generation.trace_id, code, "generation failed");
        record_ending(metrics, generation, Ending::Failed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_model_refuses_only_the_combinations_its_own_page_forbids() {
        for with_references in [false, true] {
            assert!(combination_allowed("auto", "1K", with_references));
            assert!(combination_allowed("9:21", "1K", with_references));
            assert!(!combination_allowed("5:4", "2K", with_references));
            assert!(!combination_allowed("9:21", "4K", with_references));
            assert!(combination_allowed("1:1", "2K", with_references));
            assert!(combination_allowed("16:9", "4K", with_references));
        }
        // Text to image: 4K at 1:1 and auto above 1K are allowed.
        assert!(combination_allowed("1:1", "4K", false));
        assert!(combination_allowed("auto", "2K", false));
        assert!(combination_allowed("auto", "4K", false));
        // Image to image: they are not.
        assert!(!combination_allowed("1:1", "4K", true));
        assert!(!combination_allowed("auto", "2K", true));
        assert!(!combination_allowed("auto", "4K", true));
    }

    #[test]
    fn validation_names_the_field_at_fault() {
        assert_eq!(validate("", "auto", "1K", 0).unwrap_err().field, "prompt");
        assert_eq!(
            validate(&"x".repeat(20_001), "auto", "1K", 0)
                .unwrap_err()
                .field,
            "prompt"
        );
        assert!(
            validate(&"é".repeat(20_000), "auto", "1K", 0).is_ok(),
            "characters, not bytes"
        );
        assert_eq!(
            validate("a cat", "7:3", "1K", 0).unwrap_err().field,
            "aspect_ratio"
        );
        assert_eq!(
            validate("a cat", "1:1", "8K", 0).unwrap_err().field,
            "resolution"
        );
        assert_eq!(
            validate("a cat", "5:4", "4K", 0).unwrap_err().field,
            "resolution"
        );
        let with_references = validate("a cat", "auto", "4K", 1).unwrap_err();
        assert_eq!(with_references.field, "resolution");
        assert!(
            with_references.message.contains("reference images"),
            "{with_references:?}"
        );
        assert!(validate("a cat", "auto", "4K", 0).is_ok());
        assert_eq!(
            validate("a cat", "1:1", "1K", 17).unwrap_err().field,
            "reference_upload_ids"
        );
    }
}
