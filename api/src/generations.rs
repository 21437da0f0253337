//! The JSON API for generations and reference uploads. Handlers record intents and enqueue jobs in one
//! transaction; they never call kie.ai.

use std::{collections::HashMap, convert::Infallible, time::Duration};

use axum::{
    Json,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use futures::Stream;
use queue::Job as _;

use jobs::{
    credits::{self, Applied, Kind},
    generations::{self, Generation},
    kinds::{DeleteGeneration, SubmitGeneration, submit_generation::MAX_REFERENCE_BYTES},
    rate_limit::{self, Take},
};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{ApiPipeline, AppError, AppState, routes::ApiUser};

/// How long an upload or download link is valid.
const UPLOAD_URL_TTL: Duration = Duration::from_secs(15 * 60);
const DOWNLOAD_URL_TTL: Duration = Duration::from_secs(10 * 60);

pub fn pipeline(state: &AppState) -> Result<&ApiPipeline, AppError> {
    state
        .pipeline
        .as_deref()
        .ok_or_else(|| AppError::Internal(anyhow::anyhow!("generation pipeline not configured")))
}

#[derive(Debug, Deserialize)]
pub struct NewUpload {
    pub content_type: String,
    pub byte_size: i64,
}

/// `POST /api/v1/uploads`: a short-lived presigned PUT for one reference image (type and length signed).
pub async fn create_upload(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    crate::error::ApiJson(body): crate::error::ApiJson<NewUpload>,
) -> Result<Response, AppError> {
    Ok((
        StatusCode::CREATED,
        Json(sign_upload(&state, user, &body).await?),
    )
        .into_response())
}

/// Records an upload and signs its PUT (content type and length are part of the signature).
pub async fn sign_upload(
    state: &AppState,
    user: Uuid,
    body: &NewUpload,
) -> Result<Value, AppError> {
    crate::limits::take(&state.pool, crate::limits::Action::Upload, user).await?;
    let extension = match body.content_type.as_str() {
        "image/jpeg" => "jpg",
        "image/png" => "png",
        "image/webp" => "webp",
        _ => {
            return Err(AppError::Invalid {
                field: "content_type",
                message: "must be image/jpeg, image/png or image/webp".into(),
            });
        }
    };
    if body.byte_size <= 0 || body.byte_size > MAX_REFERENCE_BYTES {
        return Err(AppError::Invalid {
            field: "byte_size",
            message: "must be between 1 byte and 10 MB".into(),
        });
    }
    let id = Uuid::now_v7();
    let key = format!("users/{user}/uploads/{id}.{extension}");
    let url = pipeline(state)?
        .storage
        .presign_put(&key, &body.content_type, body.byte_size, UPLOAD_URL_TTL)
        .await?;
    sqlx::query("INSERT INTO uploads (id, user_id, object_key, content_type, byte_size) VALUES ($1, $2, $3, $4, $5)")
        .bind(id)
        .bind(user)
        .bind(&key)
        .bind(&body.content_type)
        .bind(body.byte_size)
        .execute(&state.pool)
        .await?;
    let expires_at = Utc::now() + UPLOAD_URL_TTL;
    Ok(json!({
        "upload_id": id,
        "upload_url": url,
        "method": "PUT",
        "headers": {"Content-Type": body.content_type, "Content-Length": body.byte_size.to_string()},
        "expires_at": expires_at,
    }))
}

#[derive(Debug, Deserialize)]
pub struct NewGeneration {
    pub prompt: Option<String>,
    pub aspect_ratio: Option<String>,
    pub resolution: Option<String>,
    #[serde(default)]
    pub reference_upload_ids: Vec<Uuid>,
}

/// `POST /api/v1/generations`: validate, then in one transaction reserve the cost, insert the generation and
/// enqueue its submit job. `Idempotency-Key` makes a retried POST return the same generation.
pub async fn create_generation(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    headers: HeaderMap,
    crate::error::ApiJson(body): crate::error::ApiJson<NewGeneration>,
) -> Result<Response, AppError> {
    let prompt = body.prompt.unwrap_or_default();
    let aspect_ratio = body.aspect_ratio.unwrap_or_else(|| "auto".into());
    let resolution = body.resolution.unwrap_or_else(|| "1K".into());
    generations::validate(
        &prompt,
        &aspect_ratio,
        &resolution,
        body.reference_upload_ids.len(),
    )?;
    let idempotency_key = match headers.get("idempotency-key") {
        Some(value) => {
            let key = value
                .to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= 255);
            Some(key.ok_or(AppError::Invalid {
                field: "Idempotency-Key",
                message: "1–255 visible characters".into(),
            })?)
        }
        None => None,
    };
    if let Some(key) = idempotency_key
        && let Some(existing) = find_by_idempotency_key(&state, user, key).await?
    {
        same_request(
            &existing,
            &prompt,
            &aspect_ratio,
            &resolution,
            &body.reference_upload_ids,
        )?;
        return Ok((StatusCode::ACCEPTED, Json(view(&state, &existing).await?)).into_response());
    }
    let generation = create(
        &state,
        Owner::User(user),
        &prompt,
        &aspect_ratio,
        &resolution,
        &body.reference_upload_ids,
        idempotency_key,
    )
    .await?;
    // A concurrent request with the same key may have won: its generation is only ours if it asked the same.
    if idempotency_key.is_some() {
        same_request(
            &generation,
            &prompt,
            &aspect_ratio,
            &resolution,
            &body.reference_upload_ids,
        )?;
    }
    // Without an idempotency key the generation is new and has no images yet: nothing more to read.
    let view = match idempotency_key {
        None => view_with_images(&state, &generation, Vec::new()).await?,
        Some(_) => view(&state, &generation).await?,
    };
    Ok((StatusCode::ACCEPTED, Json(view)).into_response())
}

/// An `Idempotency-Key` names one request: reused with different parameters it is refused (422, as Stripe
/// does), never answered with the first request's generation as if it were this one.
fn same_request(
    existing: &Generation,
    prompt: &str,
    aspect_ratio: &str,
    resolution: &str,
    references: &[Uuid],
) -> Result<(), AppError> {
    let mut references = references.to_vec();
    references.sort();
    references.dedup();
    // `create` stores the references sorted and deduplicated, so the request's are compared in that form.
    if existing.prompt == prompt
        && existing.aspect_ratio == aspect_ratio
        && existing.resolution == resolution
        && existing.reference_upload_ids == references
    {
        Ok(())
    } else {
        Err(AppError::Invalid {
            field: "Idempotency-Key",
            message: "this key was already used for a request with different parameters; use a new key for a new request".into(),
        })
    }
}

/// Who a generation belongs to.
#[derive(Debug, Clone)]
pub enum Owner {
    User(Uuid),
    /// A no-signup trial, tied to a browser session (by its id hash) and claimed under the visitor's
    /// fingerprints in the transaction that records it. Free, 1K, no references.
    Trial {
        session: Vec<u8>,
        fingerprints: jobs::trial::Fingerprints,
    },
}

/// Records a generation: take the member's rate token (every request counts, refused or not), then in one
/// transaction claim a trial's fingerprint, reserve its cost, insert it, and enqueue its submit job — so a
/// request refused on the way (credits, a payment owing, a used trial) leaves nothing else behind. Input must have
/// passed [`generations::validate`]. Without an idempotency key the generation returned is always a new
/// one; with one, a repeat returns the generation the first request created.
pub async fn create(
    state: &AppState,
    owner: Owner,
    prompt: &str,
    aspect_ratio: &str,
    resolution: &str,
    reference_upload_ids: &[Uuid],
    idempotency_key: Option<&str>,
) -> Result<Generation, AppError> {
    let pipeline = pipeline(state)?;
    let (user, trial_session) = match &owner {
        Owner::User(user) => (Some(*user), None),
        Owner::Trial { session, .. } => (None, Some(session.clone())),
    };
    let mut references = reference_upload_ids.to_vec();
    references.sort();
    references.dedup();
    if user.is_none() && !references.is_empty() {
        return Err(AppError::Invalid {
            field: "reference_upload_ids",
            message: "the free trial does not take reference images".into(),
        });
    }

    let id = Uuid::now_v7();
    let cost = if user.is_some() {
        generations::cost(resolution)
    } else {
        0
    };
    let model = if references.is_empty() {
        jobs::kie::MODEL_TEXT_TO_IMAGE
    } else {
        jobs::kie::MODEL_IMAGE_TO_IMAGE
    };
    let trace_id = Uuid::new_v4().simple().to_string();
    // The rate token is taken in a transaction of its own, before anything else: every request counts, whatever
    // its outcome, so a refused one (no credits, a bad reference) cannot be repeated without limit.
    if let Some(user) = user
        && let Take::RetryAfter(wait) = rate_limit::take(
            &state.pool,
            &format!("generations:user:{user}"),
            pipeline.generation.per_user_per_minute,
            Duration::from_secs(60),
        )
        .await?
    {
        return Err(AppError::TooManyRequests {
            retry_after_secs: wait.as_secs_f64().ceil() as u64,
        });
    }
    let mut tx = state.pool.begin().await?;
    if let Owner::Trial { fingerprints, .. } = &owner
        && !jobs::trial::claim_in(&mut tx, fingerprints).await?
    {
        tx.rollback().await?;
        // The one trial a day is used: the trial page says so in its own words.
        return Err(AppError::TooManyRequests {
            retry_after_secs: 24 * 3600,
        });
    }
    if let Some(user) = user
        && !references.is_empty()
    {
        let owned: i64 =
            sqlx::query_scalar("SELECT count(*) FROM uploads WHERE id = ANY($1) AND user_id = $2")
                .bind(&references)
                .bind(user)
                .fetch_one(&mut *tx)
                .await?;
        if owned != references.len() as i64 {
            tx.rollback().await?;
            return Err(AppError::Invalid {
                field: "reference_upload_ids",
                message: "unknown upload id (upload each reference through /api/v1/uploads first)"
                    .into(),
            });
        }
    }
    let inserted: Option<Generation> = sqlx::query_as(
        "INSERT INTO generations (id, user_id, trial_session_hash, prompt, aspect_ratio, resolution, model,
                                  reference_upload_ids, credits_reserved, idempotency_key, trace_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
         RETURNING *",
    )
    .bind(id)
    .bind(user)
    .bind(trial_session)
    .bind(prompt)
    .bind(aspect_ratio)
    .bind(resolution)
    .bind(model)
    .bind(&references)
    .bind(cost as i32)
    .bind(idempotency_key)
    .bind(&trace_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(generation) = inserted else {
        // A concurrent request with the same idempotency key won: answer with its generation.
        tx.rollback().await?;
        let existing = match user {
            Some(user) => {
                find_by_idempotency_key(state, user, idempotency_key.unwrap_or_default()).await?
            }
            None => None,
        };
        return existing.ok_or_else(|| AppError::Conflict("retry the request".into()));
    };
    if let Some(user) = user {
        let blocked: bool =
            sqlx::query_scalar("SELECT shortfall > 0 FROM credit_accounts WHERE user_id = $1")
                .bind(user)
                .fetch_optional(&mut *tx)
                .await?
                .unwrap_or(false);
        if blocked {
            tx.rollback().await?;
            return Err(AppError::Conflict(
                "a refunded or disputed payment left credits owing; new generations are paused until it is settled".into(),
            ));
        }
        match credits::apply(
            &mut tx,
            user,
            Kind::Reserve,
            -cost,
            &generations::ledger_key(id),
            json!({"generation": id}),
        )
        .await?
        {
            Applied::Yes => {}
            Applied::InsufficientCredits => {
                let balance = credits::balance(&mut *tx, user).await?;
                tx.rollback().await?;
                return Err(AppError::PaymentRequired { balance, cost });
            }
            Applied::AlreadyApplied => {
                return Err(AppError::Internal(anyhow::anyhow!(
                    "reservation for a new id existed"
                )));
            }
        }
    }
    SubmitGeneration::first(id)
    .enqueue(&mut *tx)
    .await?;
    tx.commit().await?;
    state
        .metrics
        .credits_total
        .with_label_values(&["reserved"])
        .inc_by(cost as u64);
    tracing::info!(generation.id = %id, trace_id = %trace_id, resolution, trial = user.is_none(), "generation requested");
    Ok(generation)
}

async fn find_by_idempotency_key(
    state: &AppState,
    user: Uuid,
    key: &str,
) -> Result<Option<Generation>, AppError> {
    Ok(
        sqlx::query_as("SELECT * FROM generations WHERE user_id = $1 AND idempotency_key = $2")
            .bind(user)
            .bind(key)
            .fetch_optional(&state.pool)
            .await?,
    )
}

/// The caller's generation, or 404 (also for another user's: never 403).
pub async fn owned(state: &AppState, user: Uuid, id: Uuid) -> Result<Generation, AppError> {
    let generation = generations::find(&state.pool, id)
        .await?
        .ok_or(AppError::NotFound)?;
    if generation.user_id != Some(user) || generation.deleted_at.is_some() {
        return Err(AppError::NotFound);
    }
    Ok(generation)
}

/// `GET /api/v1/generations/{id}`.
pub async fn get_generation(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Path(id): Path<Uuid>,
) -> Result<Json<Value>, AppError> {
    let generation = owned(&state, user, id).await?;
    Ok(Json(view(&state, &generation).await?))
}

/// A stored image of a generation, as the JSON form shows it.
#[derive(sqlx::FromRow)]
struct Image {
    generation_id: Uuid,
    object_key: String,
    byte_size: i64,
    content_type: String,
    width: Option<i32>,
    height: Option<i32>,
}

/// The JSON form of a generation, with short-lived download links for its images.
pub async fn view(state: &AppState, generation: &Generation) -> Result<Value, AppError> {
    let mut views = views(state, std::slice::from_ref(generation)).await?;
    views.pop().ok_or_else(|| {
        AppError::Internal(anyhow::anyhow!("no view of generation {}", generation.id))
    })
}

/// The JSON forms of `generations`, in their order. Their images are read in one query, however many
/// generations there are.
pub async fn views(state: &AppState, generations: &[Generation]) -> Result<Vec<Value>, AppError> {
    if generations.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = generations.iter().map(|g| g.id).collect();
    let images: Vec<Image> = sqlx::query_as(
        "SELECT generation_id, object_key, byte_size, content_type, width, height FROM generated_images
          WHERE generation_id = ANY($1) ORDER BY generation_id, n",
    )
    .bind(&ids)
    .fetch_all(&state.pool)
    .await?;
    let mut images_of: HashMap<Uuid, Vec<Image>> = HashMap::new();
    for image in images {
        images_of
            .entry(image.generation_id)
            .or_default()
            .push(image);
    }
    let mut views = Vec::with_capacity(generations.len());
    for generation in generations {
        let images = images_of.remove(&generation.id).unwrap_or_default();
        views.push(view_with_images(state, generation, images).await?);
    }
    Ok(views)
}

/// The JSON form of a generation whose images (in order) are already read; signing their links is local.
async fn view_with_images(
    state: &AppState,
    generation: &Generation,
    images: Vec<Image>,
) -> Result<Value, AppError> {
    let mut image_views = Vec::with_capacity(images.len());
    for image in images {
        let url = pipeline(state)?
            .storage
            .presign_get(&image.object_key, DOWNLOAD_URL_TTL)
            .await?;
        image_views.push(json!({
            "url": url, "url_expires_at": Utc::now() + DOWNLOAD_URL_TTL,
            "width": image.width, "height": image.height, "byte_size": image.byte_size,
            "content_type": image.content_type,
        }));
    }
    Ok(json!({
        "id": generation.id,
        "status": generation.status,
        "prompt": generation.prompt,
        "aspect_ratio": generation.aspect_ratio,
        "resolution": generation.resolution,
        "reference_upload_ids": generation.reference_upload_ids,
        "credits_reserved": generation.credits_reserved,
        "failure_reason": generation.failure_reason,
        "timings": {
            "created_at": generation.created_at,
            "submitted_at": generation.submitted_at,
            "generated_at": generation.upstream_finished_at,
            "finished_at": generation.finished_at,
        },
        "status_url": format!("/api/v1/generations/{}", generation.id),
        "events_url": format!("/api/v1/generations/{}/events", generation.id),
        "images": image_views,
    }))
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    pub cursor: Option<String>,
    pub limit: Option<i64>,
}

/// `GET /api/v1/generations?cursor=…&limit=…`: newest first; `next_cursor` continues after the last item.
pub async fn list_generations(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, AppError> {
    let limit = query.limit.unwrap_or(20).clamp(1, 100);
    let after = match &query.cursor {
        Some(cursor) => Some(decode_cursor(cursor).ok_or(AppError::Invalid {
            field: "cursor",
            message: "malformed".into(),
        })?),
        None => None,
    };
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
    .fetch_all(&state.pool)
    .await?;
    let has_more = rows.len() as i64 > limit;
    let page = &rows[..rows.len().min(limit as usize)];
    let items = views(&state, page).await?;
    let next_cursor = has_more
        .then(|| page.last().map(|g| encode_cursor(g.created_at, g.id)))
        .flatten();
    Ok(Json(json!({ "items": items, "next_cursor": next_cursor })))
}

pub fn encode_cursor(at: DateTime<Utc>, id: Uuid) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{}|{id}", at.to_rfc3339()))
}

pub fn decode_cursor(cursor: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (at, id) = text.split_once('|')?;
    Some((
        DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&Utc),
        id.parse().ok()?,
    ))
}

/// `DELETE /api/v1/generations/{id}`: hidden at once; rows and objects removed by a job.
pub async fn delete_generation(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, AppError> {
    let generation = owned(&state, user, id).await?;
    remove(&state, &generation).await?;
    Ok(StatusCode::ACCEPTED)
}

/// Hides a finished generation at once and enqueues the job that deletes its rows and objects.
pub async fn remove(state: &AppState, generation: &Generation) -> Result<(), AppError> {
    let id = generation.id;
    if !generation.is_finished() {
        return Err(AppError::Conflict(
            "the generation is still in progress; delete it once it has finished".into(),
        ));
    }
    let mut tx = state.pool.begin().await?;
    sqlx::query("UPDATE generations SET deleted_at = now() WHERE id = $1 AND deleted_at IS NULL")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    DeleteGeneration { generation_id: id }
    .enqueue(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// `GET /api/v1/generations/{id}/events`: the current status, then each change, until it finishes.
pub async fn generation_events(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    Path(id): Path<Uuid>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, AppError> {
    // Subscribe before reading the row, so no change between the two is missed.
    let receiver = state.events.subscribe();
    let generation = owned(&state, user, id).await?;
    Ok(status_stream(&state, receiver, generation))
}

/// Server-sent events of one generation: its current status, then each change, until it finishes.
/// `receiver` must be subscribed before `generation` was read, so no change between the two is missed.
pub fn status_stream(
    state: &AppState,
    mut receiver: tokio::sync::broadcast::Receiver<crate::events::GenerationEvent>,
    generation: Generation,
) -> Sse<impl Stream<Item = Result<Event, Infallible>> + use<>> {
    let id = generation.id;
    let pool = state.pool.clone();
    let stream = async_stream::stream! {
        let mut last = generation.status.clone();
        yield Ok(status_event(&last));
        if generation.is_finished() {
            return;
        }
        loop {
            let status = match receiver.recv().await {
                Ok(event) if event.id == id => event.status,
                Ok(_) => continue,
                // Lagged or closed: re-read the row so the stream still ends correctly.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    match generations::find(&pool, id).await {
                        Ok(Some(row)) => row.status,
                        _ => return,
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            if status != last {
                last = status.clone();
                yield Ok(status_event(&status));
            }
            if status == "succeeded" || status == "failed" {
                return;
            }
        }
    };
    Sse::new(stream).keep_alive(KeepAlive::default())
}

pub fn status_event(status: &str) -> Event {
    Event::default()
        .event("status")
        .data(json!({ "status": status }).to_string())
}
