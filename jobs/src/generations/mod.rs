//! Generations (tables in `migrations/*_generations.sql`): validation and pricing, and the transitions every
//! pipeline job shares. A finished generation's credits are settled or refunded here, exactly once, in the
//! transaction that finishes it.

use chrono::{DateTime, Utc};
use queue::Job as _;
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use crate::{
    credits::{self, Applied, Kind},
    telemetry::Metrics,
    text_enum::text_enum,
};

pub mod callbacks;
pub mod create;

pub use create::{CreateError, NewGeneration, Owner, create};

text_enum! {
    /// Where a generation is in its life. `Succeeded` and `Failed` are final; [`Status::can_become`] lists the
    /// moves the pipeline makes, and [`transition`] refuses any other.
    pub enum Status {
        /// Recorded by the api; its submit job is queued.
        Queued = "queued",
        /// The submit job is creating the kie.ai task.
        Submitting = "submitting",
        /// kie.ai has the task; the poll job (or a callback) watches it.
        Generating = "generating",
        /// kie.ai finished; the store job copies the images to the bucket.
        Storing = "storing",
        Succeeded = "succeeded",
        Failed = "failed",
        /// Cancelled by its owner while still queued ([`cancel`]); refunded.
        Cancelled = "cancelled",
    }
}

impl Status {
    /// Whether nothing more will happen to the generation.
    pub fn is_final(self) -> bool {
        match self {
            Self::Succeeded | Self::Failed | Self::Cancelled => true,
            Self::Queued | Self::Submitting | Self::Generating | Self::Storing => false,
        }
    }

    /// The moves the pipeline makes: forward through submit, generate and store; back to `Queued` once when
    /// kie.ai fails a task on its side (a new task is submitted); to `Failed` from anything unfinished; to
    /// `Succeeded` only once the images are stored; to `Cancelled` only from `Queued`.
    pub fn can_become(self, to: Self) -> bool {
        use Status::*;
        match (self, to) {
            (Queued, Submitting) | (Queued | Submitting, Generating) => true,
            (Queued, Cancelled) => true,
            (Generating, Storing) | (Generating, Queued) => true,
            (Storing, Succeeded) => true,
            (from, Failed) => !from.is_final(),
            _ => false,
        }
    }
}

text_enum! {
    /// Output sizes kie.ai offers, and what each costs.
    pub enum Resolution {
        R1K = "1K",
        R2K = "2K",
        R4K = "4K",
    }
}

impl Resolution {
    /// Credits a generation at this resolution costs.
    pub fn cost(self) -> i64 {
        match self {
            Self::R1K => 10,
            Self::R2K => 20,
            Self::R4K => 40,
        }
    }
}

text_enum! {
    /// Aspect ratios kie.ai accepts.
    pub enum AspectRatio {
        Auto = "auto",
        Square = "1:1",
        Landscape3x2 = "3:2",
        Portrait2x3 = "2:3",
        Landscape4x3 = "4:3",
        Portrait3x4 = "3:4",
        Landscape5x4 = "5:4",
        Portrait4x5 = "4:5",
        Landscape16x9 = "16:9",
        Portrait9x16 = "9:16",
        Landscape2x1 = "2:1",
        Portrait1x2 = "1:2",
        Landscape3x1 = "3:1",
        Portrait1x3 = "1:3",
        Landscape21x9 = "21:9",
        Portrait9x21 = "9:21",
    }
}

pub const MAX_PROMPT_CHARS: usize = 20_000;
pub const MAX_REFERENCES: usize = 16;
/// Images one request can ask for: each is a generation of its own, charged and refunded on its own.
pub const MAX_VARIATIONS: u8 = 4;

/// A rejected parameter: which field, and why, in words for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: &'static str,
    pub message: String,
}

/// A request's settings, checked: what [`validate`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub aspect_ratio: AspectRatio,
    pub resolution: Resolution,
}

/// Checks what kie.ai would reject, before any credit is spent. `aspect_ratio` and `resolution` are the words a
/// client sent (`None`: the defaults, `auto` and `1K`).
pub fn validate(
    prompt: &str,
    aspect_ratio: Option<&str>,
    resolution: Option<&str>,
    references: usize,
) -> Result<Settings, Invalid> {
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
    let Ok(aspect_ratio) = aspect_ratio.unwrap_or("auto").parse::<AspectRatio>() else {
        let known: Vec<&str> = AspectRatio::ALL.iter().map(|r| r.as_str()).collect();
        return invalid(
            "aspect_ratio",
            format!("must be one of {}", known.join(", ")),
        );
    };
    let Ok(resolution) = resolution.unwrap_or("1K").parse::<Resolution>() else {
        return invalid("resolution", "must be 1K, 2K or 4K".into());
    };
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
    Ok(Settings {
        aspect_ratio,
        resolution,
    })
}

/// What kie accepts, per model: a generation with reference images goes to the image-to-image model, one without
/// to text-to-image ([`create`]). Text-to-image's page rejects only 2K/4K with 5:4, 4:5, 3:1, 1:3, 9:21.
/// Image-to-image's page adds 4K with 1:1 and `auto` with anything but 1K; the five ratios are kept for it too,
/// as its page was not confirmed to drop them (docs/contracts.md, kie.ai).
pub fn combination_allowed(
    aspect_ratio: AspectRatio,
    resolution: Resolution,
    with_references: bool,
) -> bool {
    use AspectRatio::*;
    match resolution {
        Resolution::R1K => true,
        _ if matches!(
            aspect_ratio,
            Landscape5x4 | Portrait4x5 | Landscape3x1 | Portrait1x3 | Portrait9x21
        ) =>
        {
            false
        }
        _ if !with_references => true,
        _ if aspect_ratio == Auto => false,
        Resolution::R4K => aspect_ratio != Square,
        Resolution::R2K => true,
    }
}

/// One generation row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Generation {
    pub id: Uuid,
    pub user_id: Option<Uuid>,
    pub prompt: String,
    pub aspect_ratio: AspectRatio,
    pub resolution: Resolution,
    pub model: String,
    pub reference_upload_ids: Vec<Uuid>,
    pub status: Status,
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
    /// The browser session (its id hash) of a no-signup trial's generation.
    pub trial_session_hash: Option<Vec<u8>>,
    /// The request that made it (its first variation's id); `None` before variations existed: its own id.
    pub batch_id: Option<Uuid>,
    /// Its place among the request's variations, from 1.
    pub variation: i16,
    /// How many images the request asked for (1–[`MAX_VARIATIONS`]).
    pub variations: i16,
}

impl Generation {
    pub fn is_finished(&self) -> bool {
        self.finished_at.is_some()
    }

    /// The id of the request that made it: every variation of one request shares it.
    pub fn batch(&self) -> Uuid {
        self.batch_id.unwrap_or(self.id)
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

/// The member's generation, unless deleted: `None` also for another member's (a caller answers "not found",
/// never "forbidden").
pub async fn find_owned(pool: &PgPool, user: Uuid, id: Uuid) -> sqlx::Result<Option<Generation>> {
    Ok(find(pool, id)
        .await?
        .filter(|g| g.user_id == Some(user) && g.deleted_at.is_none()))
}

/// Every variation of `generation`'s request that is not deleted, in order (just `generation` for a request of
/// one, without a query).
pub async fn batch_of(pool: &PgPool, generation: &Generation) -> sqlx::Result<Vec<Generation>> {
    if generation.variations <= 1 {
        return Ok(vec![generation.clone()]);
    }
    sqlx::query_as(
        "SELECT * FROM generations
          WHERE batch_id = $1 AND user_id IS NOT DISTINCT FROM $2 AND deleted_at IS NULL
          ORDER BY variation",
    )
    .bind(generation.batch())
    .bind(generation.user_id)
    .fetch_all(pool)
    .await
}

/// The ids of every variation of each of `generations`' requests, in order, by request id (deleted variations
/// left out), in one query; requests of one are answered without it.
pub async fn batch_ids(
    pool: &PgPool,
    generations: &[Generation],
) -> sqlx::Result<std::collections::HashMap<Uuid, Vec<Uuid>>> {
    let mut batches: std::collections::HashMap<Uuid, Vec<Uuid>> = generations
        .iter()
        .filter(|g| g.variations <= 1)
        .map(|g| (g.batch(), vec![g.id]))
        .collect();
    let shared: Vec<Uuid> = generations
        .iter()
        .filter(|g| g.variations > 1)
        .map(Generation::batch)
        .collect();
    if !shared.is_empty() {
        let rows: Vec<(Uuid, Vec<Uuid>)> = sqlx::query_as(
            "SELECT batch_id, array_agg(id ORDER BY variation) FROM generations
              WHERE batch_id = ANY($1) AND deleted_at IS NULL GROUP BY batch_id",
        )
        .bind(&shared)
        .fetch_all(pool)
        .await?;
        batches.extend(rows);
    }
    Ok(batches)
}

/// How long a generation at `resolution` takes from request to stored image, typically: the median of the last
/// 50 successes at that resolution in the past day, or `None` with fewer than 5 to go on.
pub async fn typical_wait(
    pool: &PgPool,
    resolution: Resolution,
) -> sqlx::Result<Option<std::time::Duration>> {
    let seconds: Option<f64> = sqlx::query_scalar(
        "SELECT CASE WHEN count(*) >= 5
                     THEN percentile_cont(0.5) WITHIN GROUP (ORDER BY seconds) END
           FROM (SELECT EXTRACT(EPOCH FROM finished_at - created_at)::float8 AS seconds
                   FROM generations
                  WHERE status = 'succeeded' AND resolution = $1 AND finished_at > now() - interval '1 day'
                  ORDER BY finished_at DESC
                  LIMIT 50) recent",
    )
    .bind(resolution)
    .fetch_one(pool)
    .await?;
    Ok(seconds
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(std::time::Duration::from_secs_f64))
}

/// How many requests (anyone's; a request of several images counts once) are still queued from before
/// `generation`'s: its place in line. Generations wait in `queued` only while the fleet is at its kie.ai budget
/// (or kie.ai is paused), so this is zero on an idle fleet, and zero once it has left the queue. Its own
/// request's other images are not ahead of it.
pub async fn queued_ahead(pool: &PgPool, generation: &Generation) -> sqlx::Result<i64> {
    if generation.status != Status::Queued {
        return Ok(0);
    }
    sqlx::query_scalar(
        "SELECT count(DISTINCT coalesce(batch_id, id)) FROM generations
          WHERE status = 'queued' AND finished_at IS NULL AND created_at < $1
            AND coalesce(batch_id, id) <> $2",
    )
    .bind(generation.created_at)
    .bind(generation.batch())
    .fetch_one(pool)
    .await
}

/// A page of the member's generations, newest first, after the keyset `after` (the last item's creation time
/// and id): `limit` items and whether more follow.
pub async fn page_for_user(
    pool: &PgPool,
    user: Uuid,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> sqlx::Result<(Vec<Generation>, bool)> {
    let rows: Vec<Generation> = sqlx::query_as(
        "SELECT * FROM generations
          WHERE user_id = $1 AND deleted_at IS NULL
            AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
          ORDER BY created_at DESC, id DESC
          LIMIT $4",
    )
    .bind(user)
    .bind(after.map(|(at, _)| at))
    .bind(after.map(|(_, id)| id))
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    Ok(split_page(rows, limit))
}

/// Rows fetched with `LIMIT limit + 1`: the page's `limit` rows, and whether more follow.
fn split_page<T>(mut rows: Vec<T>, limit: i64) -> (Vec<T>, bool) {
    let more = rows.len() as i64 > limit;
    rows.truncate(limit.max(0) as usize);
    (rows, more)
}

/// A gallery card's data: the generation and its first image, if stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct GalleryRow {
    pub id: Uuid,
    pub prompt: String,
    pub status: Status,
    pub created_at: DateTime<Utc>,
    pub aspect_ratio: AspectRatio,
    pub variation: i16,
    pub variations: i16,
    pub object_key: Option<String>,
    pub width: Option<i32>,
    pub height: Option<i32>,
}

text_enum! {
    /// The gallery's status filter: a final status, or everything still in progress.
    pub enum StatusFilter {
        Ready = "ready",
        InProgress = "in-progress",
        Failed = "failed",
        Cancelled = "cancelled",
    }
}

impl StatusFilter {
    /// The statuses it keeps.
    pub fn statuses(self) -> &'static [Status] {
        match self {
            Self::Ready => &[Status::Succeeded],
            Self::InProgress => &[
                Status::Queued,
                Status::Submitting,
                Status::Generating,
                Status::Storing,
            ],
            Self::Failed => &[Status::Failed],
            Self::Cancelled => &[Status::Cancelled],
        }
    }
}

/// Which of the member's generations the gallery shows: those whose prompt matches `search` (full-text, as a
/// web search box reads it: words, "quoted phrases", -excluded) and whose status `status` keeps.
#[derive(Debug, Clone, Default)]
pub struct GalleryFilter {
    pub search: Option<String>,
    pub status: Option<StatusFilter>,
}

/// A page of the member's gallery, newest first, after the keyset `after`: `limit` cards and whether more
/// follow. One query ([`gallery_query`]), with each card's first image.
pub async fn gallery_page(
    pool: &PgPool,
    user: Uuid,
    filter: &GalleryFilter,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> sqlx::Result<(Vec<GalleryRow>, bool)> {
    let mut query = sqlx::QueryBuilder::new("");
    gallery_query(&mut query, user, filter, after, limit + 1);
    let rows: Vec<GalleryRow> = query.build_query_as().fetch_all(pool).await?;
    Ok(split_page(rows, limit))
}

/// The gallery's query, pushed onto `query` (a test puts `EXPLAIN` in front of it and checks the plan): the
/// member's generations, newest first, after the keyset `after`, at most `limit`, each with its first image.
/// Each filter adds its own condition, so each combination is its own prepared statement and plan; each is
/// served by an index of the member's (`migrations/`):
///
/// - no search: `generations_user_created_idx` gives the order, the scan stops after `limit` cards (the keyset
///   starts it where the last page ended, however deep);
/// - "in progress" also says `finished_at IS NULL` (what the four unfinished statuses mean): the small
///   `generations_unfinished_idx` answers it, instead of every row of the member's being read to find none;
/// - a search reads the member's matches from `generations_user_prompt_search_idx` (`user_id` and the prompt's
///   words in one GIN index) in a materialized step of its own, then orders them. Left to plan it with the
///   order and the limit in view, Postgres walked the member's rows newest first, computing each prompt's
///   words, until it had a page: its estimate of that computation is far below its cost (12.7 ms for a common
///   word in a 10,000-generation history; 1.9 ms from the index). What a search costs now grows with how many
///   of the member's prompts match (see `loadtest/README.md`, `pages`).
pub fn gallery_query(
    query: &mut sqlx::QueryBuilder<sqlx::Postgres>,
    user: Uuid,
    filter: &GalleryFilter,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) {
    let search = filter.search.as_deref().filter(|s| !s.trim().is_empty());
    let columns =
        "g.id, g.prompt, g.status, g.created_at, g.aspect_ratio, g.variation, g.variations";
    if search.is_some() {
        query.push(format!(
            "WITH matches AS MATERIALIZED (SELECT {columns} FROM generations g WHERE g.user_id = "
        ));
    } else {
        query.push(format!(
            "SELECT {columns}, i.object_key, i.width, i.height FROM generations g
               LEFT JOIN LATERAL (SELECT object_key, width, height FROM generated_images i
                                   WHERE i.generation_id = g.id ORDER BY n LIMIT 1) i ON true
              WHERE g.user_id = "
        ));
    }
    query.push_bind(user).push(" AND g.deleted_at IS NULL");
    if let Some((at, id)) = after {
        query
            .push(" AND (g.created_at, g.id) < (")
            .push_bind(at)
            .push(", ")
            .push_bind(id)
            .push(")");
    }
    if let Some(search) = search {
        query
            .push(" AND to_tsvector('english', g.prompt) @@ websearch_to_tsquery('english', ")
            .push_bind(search.to_owned())
            .push(")");
    }
    if let Some(status) = filter.status {
        query
            .push(" AND g.status = ANY(")
            .push_bind(status.statuses())
            .push(")");
        if status == StatusFilter::InProgress {
            query.push(" AND g.finished_at IS NULL");
        }
    }
    if search.is_some() {
        query
            .push(
                ") SELECT g.*, i.object_key, i.width, i.height
                     FROM (SELECT * FROM matches ORDER BY created_at DESC, id DESC LIMIT ",
            )
            .push_bind(limit)
            .push(
                ") g
                LEFT JOIN LATERAL (SELECT object_key, width, height FROM generated_images i
                                    WHERE i.generation_id = g.id ORDER BY n LIMIT 1) i ON true
                ORDER BY g.created_at DESC, g.id DESC",
            );
    } else {
        query
            .push(" ORDER BY g.created_at DESC, g.id DESC LIMIT ")
            .push_bind(limit);
    }
}

/// Gallery rows of `generations`, in their order, each with its first stored image (one query for all).
pub async fn with_first_images(
    pool: &PgPool,
    generations: Vec<Generation>,
) -> sqlx::Result<Vec<GalleryRow>> {
    let ids: Vec<Uuid> = generations.iter().map(|g| g.id).collect();
    let mut first: std::collections::HashMap<Uuid, Image> = std::collections::HashMap::new();
    for image in images_of(pool, &ids).await? {
        first.entry(image.generation_id).or_insert(image);
    }
    Ok(generations
        .into_iter()
        .map(|g| {
            let image = first.remove(&g.id);
            GalleryRow {
                id: g.id,
                prompt: g.prompt,
                status: g.status,
                created_at: g.created_at,
                aspect_ratio: g.aspect_ratio,
                variation: g.variation,
                variations: g.variations,
                width: image.as_ref().and_then(|i| i.width),
                height: image.as_ref().and_then(|i| i.height),
                object_key: image.map(|i| i.object_key),
            }
        })
        .collect())
}

/// The member's finished, undeleted generations among `ids` (another member's, unfinished or unknown ids are
/// left out), newest first, in one query.
pub async fn finished_owned(
    pool: &PgPool,
    user: Uuid,
    ids: &[Uuid],
) -> sqlx::Result<Vec<Generation>> {
    sqlx::query_as(
        "SELECT * FROM generations
          WHERE id = ANY($1) AND user_id = $2 AND deleted_at IS NULL AND finished_at IS NOT NULL
          ORDER BY created_at DESC, id DESC",
    )
    .bind(ids)
    .bind(user)
    .fetch_all(pool)
    .await
}

/// A stored image of a generation.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Image {
    pub generation_id: Uuid,
    pub object_key: String,
    pub byte_size: i64,
    pub content_type: String,
    pub width: Option<i32>,
    pub height: Option<i32>,
}

/// The stored images of `ids`, by generation and in order, in one query.
pub async fn images_of(pool: &PgPool, ids: &[Uuid]) -> sqlx::Result<Vec<Image>> {
    sqlx::query_as(
        "SELECT generation_id, object_key, byte_size, content_type, width, height FROM generated_images
          WHERE generation_id = ANY($1) ORDER BY generation_id, n",
    )
    .bind(ids)
    .fetch_all(pool)
    .await
}

/// Why a generation cannot be deleted.
#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    #[error("the generation is still in progress; delete it once it has finished")]
    InProgress,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Hides a finished generation at once and enqueues the job that deletes its rows and objects.
pub async fn delete(pool: &PgPool, generation: &Generation) -> Result<(), DeleteError> {
    delete_all(pool, std::slice::from_ref(generation)).await
}

/// [`delete`] for several finished generations, in one transaction: all are hidden, or none (an unfinished one
/// refuses the lot).
pub async fn delete_all(pool: &PgPool, generations: &[Generation]) -> Result<(), DeleteError> {
    if generations.iter().any(|g| !g.is_finished()) {
        return Err(DeleteError::InProgress);
    }
    let ids: Vec<Uuid> = generations.iter().map(|g| g.id).collect();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "UPDATE generations SET deleted_at = now() WHERE id = ANY($1) AND deleted_at IS NULL",
    )
    .bind(&ids)
    .execute(&mut *tx)
    .await?;
    for &generation_id in &ids {
        crate::kinds::DeleteGeneration { generation_id }
            .enqueue(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Announces a status change (delivered at commit).
pub async fn notify(conn: &mut PgConnection, id: Uuid, status: Status) -> sqlx::Result<()> {
    announce(conn, id, status.as_str()).await
}

/// Announces a status change of anything a page watches through the status events (a generation, a checkout
/// intent), delivered at commit.
pub async fn announce(conn: &mut PgConnection, id: Uuid, status: &str) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_notify($1, json_build_object('id', $2::text, 'status', $3::text)::text)")
        .bind(EVENTS_CHANNEL)
        .bind(id.to_string())
        .bind(status)
        .execute(conn)
        .await
        .map(drop)
}

/// A move [`Status::can_become`] does not allow, or the database's refusal.
#[derive(Debug, thiserror::Error)]
pub enum TransitionError {
    #[error("a generation cannot move from {from} to {to}")]
    Illegal { from: Status, to: Status },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Moves an unfinished generation from one of `from` to `to`, announcing it. Returns whether it moved (it had
/// another status, or had finished, and nothing changed). Every `from → to` must be a move
/// [`Status::can_become`] allows; the finishing moves are [`fail`] and [`succeed`], which settle credits too.
pub async fn transition(
    conn: &mut PgConnection,
    id: Uuid,
    from: &[Status],
    to: Status,
) -> Result<bool, TransitionError> {
    if let Some(&illegal) = from
        .iter()
        .find(|from| !from.can_become(to) || to.is_final())
    {
        return Err(TransitionError::Illegal { from: illegal, to });
    }
    let moved = sqlx::query(
        "UPDATE generations SET status = $3, updated_at = now()
          WHERE id = $1 AND status = ANY($2) AND finished_at IS NULL",
    )
    .bind(id)
    .bind(from)
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
    Cancelled,
}

/// Why a generation cannot be cancelled.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("the generation has already started ({0}); only a queued generation can be cancelled")]
    Started(Status),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Cancels the member's generation while it is still queued: it is final at once (`cancelled`), its
/// reservation refunded in the same transaction (once: the refund shares the reservation's ledger key), and
/// its submit job, which claims only an unfinished generation, does nothing when it runs. Cancelling a
/// cancelled generation again changes nothing; one that has started (or finished otherwise) is refused.
pub async fn cancel(
    pool: &PgPool,
    metrics: &Metrics,
    generation: &Generation,
) -> Result<Generation, CancelError> {
    let mut tx = pool.begin().await?;
    let cancelled: Option<Generation> = sqlx::query_as(
        "UPDATE generations SET status = $2, finished_at = now(), updated_at = now()
          WHERE id = $1 AND status = $3 AND finished_at IS NULL AND upstream_task_id IS NULL
          RETURNING *",
    )
    .bind(generation.id)
    .bind(Status::Cancelled)
    .bind(Status::Queued)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(cancelled) = cancelled else {
        drop(tx);
        let now = find(pool, generation.id)
            .await?
            .ok_or(sqlx::Error::RowNotFound)?;
        return match now.status {
            Status::Cancelled => Ok(now),
            other => Err(CancelError::Started(other)),
        };
    };
    if let Some(user) = cancelled.user_id
        && cancelled.credits_reserved > 0
    {
        credits::apply(
            &mut tx,
            user,
            Kind::Refund,
            i64::from(cancelled.credits_reserved),
            &cancelled.ledger_key(),
            serde_json::json!({ "generation": cancelled.id, "reason": "cancelled" }),
        )
        .await?;
    }
    notify(&mut tx, cancelled.id, Status::Cancelled).await?;
    tx.commit().await?;
    tracing::info!(generation.id = %cancelled.id, trace_id = %cancelled.trace_id, "generation cancelled");
    record_ending(metrics, &cancelled, Ending::Cancelled);
    Ok(cancelled)
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
        "UPDATE generations SET status = $4, failure_code = $2, failure_reason = $3, finished_at = now(),
                updated_at = now()
          WHERE id = $1 AND finished_at IS NULL",
    )
    .bind(generation.id)
    .bind(code)
    .bind(reason)
    .bind(Status::Failed)
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
    notify(tx, generation.id, Status::Failed).await?;
    Ok(true)
}

/// Marks a stored generation succeeded and turns its reservation into a charge (once), with the usage-log row.
/// Only a generation in `storing` can succeed; returns false (nothing changes) for any other.
pub async fn succeed(tx: &mut PgConnection, generation: &Generation) -> sqlx::Result<bool> {
    let finished = sqlx::query(
        "UPDATE generations SET status = $2, stored_at = now(), finished_at = now(), updated_at = now()
          WHERE id = $1 AND status = $3 AND finished_at IS NULL",
    )
    .bind(generation.id)
    .bind(Status::Succeeded)
    .bind(Status::Storing)
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
    notify(tx, generation.id, Status::Succeeded).await?;
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
        Ending::Cancelled => "cancelled",
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
        let kind = match ending {
            Ending::Succeeded => "settled",
            Ending::Failed | Ending::Cancelled => "refunded",
        };
        metrics
            .credits_total
            .with_label_values(&[kind])
            .inc_by(credits);
    }
}

/// Every failure code a generation can end with (the `reason` label of `createimage2_generation_failures_total`).
/// `content_policy` is the user's prompt or image being refused; the others are the service's failures.
pub const FAILURE_REASONS: &[&str] = &[
    "content_policy",
    "generation_failed",
    "deadline_exceeded",
    "status_unavailable",
    "submit_unconfirmed",
    "reference_invalid",
    "upstream_rejected",
    "upstream_unavailable",
    "store_failed",
];

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
        debug_assert!(
            FAILURE_REASONS.contains(&code),
            "unlisted failure code {code}"
        );
        metrics
            .generation_failures_total
            .with_label_values(&[code])
            .inc();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(ratio: &str, resolution: &str, with_references: bool) -> bool {
        combination_allowed(
            ratio.parse().unwrap(),
            resolution.parse().unwrap(),
            with_references,
        )
    }

    #[test]
    fn each_model_refuses_only_the_combinations_its_own_page_forbids() {
        for with_references in [false, true] {
            assert!(allowed("auto", "1K", with_references));
            assert!(allowed("9:21", "1K", with_references));
            assert!(!allowed("5:4", "2K", with_references));
            assert!(!allowed("9:21", "4K", with_references));
            assert!(allowed("1:1", "2K", with_references));
            assert!(allowed("16:9", "4K", with_references));
        }
        // Text to image: 4K at 1:1 and auto above 1K are allowed.
        assert!(allowed("1:1", "4K", false));
        assert!(allowed("auto", "2K", false));
        assert!(allowed("auto", "4K", false));
        // Image to image: they are not.
        assert!(!allowed("1:1", "4K", true));
        assert!(!allowed("auto", "2K", true));
        assert!(!allowed("auto", "4K", true));
    }

    fn field_at_fault(
        prompt: &str,
        ratio: &str,
        resolution: &str,
        references: usize,
    ) -> &'static str {
        validate(prompt, Some(ratio), Some(resolution), references)
            .unwrap_err()
            .field
    }

    #[test]
    fn validation_names_the_field_at_fault() {
        assert_eq!(field_at_fault("", "auto", "1K", 0), "prompt");
        assert_eq!(
            field_at_fault(&"x".repeat(20_001), "auto", "1K", 0),
            "prompt"
        );
        assert!(
            validate(&"é".repeat(20_000), None, None, 0).is_ok(),
            "characters, not bytes"
        );
        assert_eq!(field_at_fault("a cat", "7:3", "1K", 0), "aspect_ratio");
        assert_eq!(field_at_fault("a cat", "1:1", "8K", 0), "resolution");
        assert_eq!(field_at_fault("a cat", "5:4", "4K", 0), "resolution");
        let with_references = validate("a cat", Some("auto"), Some("4K"), 1).unwrap_err();
        assert_eq!(with_references.field, "resolution");
        assert!(
            with_references.message.contains("reference images"),
            "{with_references:?}"
        );
        assert_eq!(
            validate("a cat", Some("auto"), Some("4K"), 0),
            Ok(Settings {
                aspect_ratio: AspectRatio::Auto,
                resolution: Resolution::R4K
            })
        );
        assert_eq!(
            field_at_fault("a cat", "1:1", "1K", 17),
            "reference_upload_ids"
        );
    }

    #[test]
    fn absent_settings_are_auto_at_1k() {
        assert_eq!(
            validate("a cat", None, None, 0),
            Ok(Settings {
                aspect_ratio: AspectRatio::Auto,
                resolution: Resolution::R1K
            })
        );
    }

    #[test]
    fn a_generation_moves_only_forward_once_back_to_queued_and_never_out_of_a_final_status() {
        use Status::*;
        let legal = [
            (Queued, Submitting),
            (Queued, Generating),
            (Submitting, Generating),
            (Generating, Storing),
            (Generating, Queued),
            (Storing, Succeeded),
            (Queued, Cancelled),
            (Queued, Failed),
            (Submitting, Failed),
            (Generating, Failed),
            (Storing, Failed),
        ];
        for from in Status::ALL {
            for to in Status::ALL {
                assert_eq!(
                    from.can_become(*to),
                    legal.contains(&(*from, *to)),
                    "{from} -> {to}"
                );
            }
        }
    }
}
