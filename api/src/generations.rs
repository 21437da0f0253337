//! The JSON API for generations and reference uploads. Handlers record intents and enqueue jobs in one
//! transaction; they never call kie.ai.

use std::{collections::HashMap, convert::Infallible, time::Duration};

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use futures::Stream;
use jobs::{
    generations::{self, AspectRatio, Generation, Image, Owner, Resolution, Status},
    uploads,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::{
    ApiPipeline, AppError, AppState,
    caller::ApiUser,
    error::ErrorBody,
    events::Signal,
    extract::{ApiJson, ApiPath, ApiQuery},
    openapi::{aspect_ratio_schema, resolution_schema, status_schema},
};

/// How long a download link is valid.
const DOWNLOAD_URL_TTL: Duration = Duration::from_secs(10 * 60);

pub fn pipeline(state: &AppState) -> Result<&ApiPipeline, AppError> {
    state
        .pipeline
        .as_deref()
        .ok_or_else(|| AppError::Internal(anyhow::anyhow!("generation pipeline not configured")))
}

/// A reference image to upload.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewUpload {
    /// `image/jpeg`, `image/png` or `image/webp`.
    #[schema(example = "image/png")]
    pub content_type: String,
    /// The file's exact length in bytes, at most 10 MB.
    #[schema(example = 48213)]
    pub byte_size: i64,
}

/// Where to PUT a reference image's bytes: straight to the bucket, with exactly these headers.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Upload)]
pub struct UploadOut {
    /// Use it in `reference_upload_ids` once the bytes are uploaded.
    pub upload_id: Uuid,
    /// A presigned URL, valid 15 minutes, for this type and length only.
    pub upload_url: String,
    /// Always `PUT`.
    pub method: &'static str,
    pub headers: UploadHeaders,
    pub expires_at: DateTime<Utc>,
}

/// The headers the upload must carry (they are part of the signature).
#[derive(Debug, Serialize, ToSchema)]
pub struct UploadHeaders {
    #[serde(rename = "Content-Type")]
    pub content_type: String,
    #[serde(rename = "Content-Length")]
    pub content_length: String,
}

/// `POST /api/v1/uploads`: a short-lived presigned PUT for one reference image (type and length signed).
#[utoipa::path(
    post, path = "/v1/uploads", tag = "uploads",
    summary = "Upload a reference image",
    description = "Returns a presigned URL valid 15 minutes. PUT the file there with exactly the headers given (its type and length are part of the signature); the bytes go straight to the bucket. Then pass `upload_id` in `reference_upload_ids`.",
    request_body = NewUpload,
    responses(
        (status = 201, description = "Upload the bytes to `upload_url` with `headers`", body = UploadOut),
        (status = 422, description = "A type or size the service does not take", body = ErrorBody),
    ),
)]
pub async fn create_upload(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    ApiJson(body): ApiJson<NewUpload>,
) -> Result<Response, AppError> {
    Ok((
        StatusCode::CREATED,
        Json(sign_upload(&state, user, &body).await?),
    )
        .into_response())
}

/// Signs an upload ([`uploads::sign`]) and renders it as the API and the site's script read it.
pub async fn sign_upload(
    state: &AppState,
    user: Uuid,
    body: &NewUpload,
) -> Result<UploadOut, AppError> {
    let storage = &pipeline(state)?.storage;
    let signed = uploads::sign(
        &state.pool,
        storage,
        user,
        &body.content_type,
        body.byte_size,
    )
    .await?;
    Ok(UploadOut {
        upload_id: signed.id,
        upload_url: signed.url,
        method: "PUT",
        headers: UploadHeaders {
            content_type: signed.content_type.to_string(),
            content_length: signed.byte_size.to_string(),
        },
        expires_at: signed.expires_at,
    })
}

/// A generation to make.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewGeneration {
    /// What to draw, up to 20,000 characters.
    #[schema(value_type = String, required = true, example = "a lighthouse at dawn")]
    pub prompt: Option<String>,
    /// Default `auto`. Some combinations with 2K and 4K are refused (422 naming `resolution`).
    #[schema(schema_with = aspect_ratio_schema)]
    pub aspect_ratio: Option<String>,
    /// Default `1K`. Costs 10, 20 or 40 credits.
    #[schema(schema_with = resolution_schema)]
    pub resolution: Option<String>,
    /// Up to 16 uploads (`POST /api/v1/uploads`) to use as reference images.
    #[serde(default)]
    pub reference_upload_ids: Vec<Uuid>,
    /// How many images to make, 1–4 (default 1). Each is a generation of its own, charged (and returned) on
    /// its own: the answer is the first, and `batch` lists them all.
    #[schema(minimum = 1, maximum = 4, example = 1)]
    pub n: Option<i64>,
}

/// `POST /api/v1/generations`: records the generation ([`generations::create`]: checks, rate, reservation,
/// submit job). `Idempotency-Key` makes a retried POST return the same generation.
#[utoipa::path(
    post, path = "/v1/generations", tag = "generations",
    summary = "Generate an image",
    description = "Records the request and reserves its credits (1K: 10, 2K: 20, 4K: 40, per image); the image is made in the background. Follow it with `events_url` (server-sent events) or by reading `status_url`. The credits are charged when the image is stored, and returned if it fails or is cancelled. With `n` above 1 each image is a generation of its own: the answer is the first, and its `batch` lists every one, in order.",
    request_body = NewGeneration,
    params(("Idempotency-Key" = Option<String>, Header, description = "1–255 characters: a retried POST with the same key returns the same generation; the same key with another request is a 422")),
    responses(
        (status = 202, description = "Recorded and queued; its credits are reserved", body = GenerationOut),
        (status = 402, description = "Not enough credits (`balance`, `cost`)", body = ErrorBody),
        (status = 409, description = "Credits are owed after a refunded payment, or the same key is still being processed", body = ErrorBody),
        (status = 422, description = "A field that is missing, malformed or not taken, named in `field`", body = ErrorBody),
    ),
)]
pub async fn create_generation(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    headers: HeaderMap,
    ApiJson(body): ApiJson<NewGeneration>,
) -> Result<Response, AppError> {
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
    let generations = generations::create(
        &state.pool,
        &pipeline(&state)?.generation,
        &state.metrics,
        generations::NewGeneration {
            owner: Owner::User(user),
            prompt: body.prompt.as_deref().unwrap_or_default(),
            aspect_ratio: body.aspect_ratio.as_deref(),
            resolution: body.resolution.as_deref(),
            reference_upload_ids: &body.reference_upload_ids,
            variations: body.n,
            idempotency_key,
        },
    )
    .await?;
    let first = generations
        .first()
        .ok_or_else(|| AppError::Internal(anyhow::anyhow!("a request recorded no generation")))?;
    // Without an idempotency key the generations are new and have no images yet: nothing more to read.
    let view = match idempotency_key {
        None => {
            let batch = generations.iter().map(|g| g.id).collect();
            view_with_images(&state, first, Vec::new(), batch).await?
        }
        Some(_) => view(&state, first).await?,
    };
    Ok((StatusCode::ACCEPTED, Json(view)).into_response())
}

/// The caller's generation, or 404 (also for another user's: never 403).
pub async fn owned(state: &AppState, user: Uuid, id: Uuid) -> Result<Generation, AppError> {
    generations::find_owned(&state.pool, user, id)
        .await?
        .ok_or(AppError::NotFound)
}

/// `GET /api/v1/generations/{id}`.
#[utoipa::path(
    get, path = "/v1/generations/{id}", tag = "generations",
    summary = "Read a generation",
    description = "Its status and, once it succeeded, its images with download links valid 10 minutes (read it again for fresh ones).",
    params(("id" = Uuid, Path, description = "The generation's id")),
    responses(
        (status = 200, description = "The generation, with 10-minute download links once it succeeded", body = GenerationOut),
        (status = 404, description = "No such generation (another member's too)", body = ErrorBody),
    ),
)]
pub async fn get_generation(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<GenerationOut>, AppError> {
    let generation = owned(&state, user, id).await?;
    Ok(Json(view(&state, &generation).await?))
}

/// A generation as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Generation)]
pub struct GenerationOut {
    pub id: Uuid,
    #[schema(schema_with = status_schema)]
    pub status: Status,
    pub prompt: String,
    #[schema(schema_with = aspect_ratio_schema)]
    pub aspect_ratio: AspectRatio,
    #[schema(schema_with = resolution_schema)]
    pub resolution: Resolution,
    pub reference_upload_ids: Vec<Uuid>,
    /// Credits held for it: charged when its image is stored, returned if it fails or is cancelled.
    pub credits_reserved: i32,
    /// Why it failed, in words to show a person.
    pub failure_reason: Option<String>,
    pub timings: Timings,
    /// Where to read it again.
    #[schema(example = "/api/v1/generations/0194f1b2-7c3e-7a10-9d4e-2f0c1a2b3c4d")]
    pub status_url: String,
    /// Its server-sent events.
    pub events_url: String,
    /// Once it succeeded: its images, in order.
    pub images: Vec<ImageOut>,
    /// The request that made it: every generation of one request (`n`) shares it (the first one's id).
    pub batch_id: Uuid,
    /// Its place among the request's generations, from 1.
    #[schema(example = 1)]
    pub variation: i16,
    /// Every generation of the request that is not deleted, in order (itself included).
    pub batch: Vec<Uuid>,
}

/// When each step happened.
#[derive(Debug, Serialize, ToSchema)]
pub struct Timings {
    pub created_at: DateTime<Utc>,
    /// kie.ai accepted the task.
    pub submitted_at: Option<DateTime<Utc>>,
    /// kie.ai finished the image.
    pub generated_at: Option<DateTime<Utc>>,
    /// Succeeded, failed or cancelled.
    pub finished_at: Option<DateTime<Utc>>,
}

/// A stored image.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Image)]
pub struct ImageOut {
    /// A download link, valid 10 minutes: read the generation again for a fresh one.
    pub url: String,
    pub url_expires_at: DateTime<Utc>,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub byte_size: i64,
    #[schema(example = "image/png")]
    pub content_type: String,
}

/// The JSON form of a generation, with short-lived download links for its images.
pub async fn view(state: &AppState, generation: &Generation) -> Result<GenerationOut, AppError> {
    let mut views = views(state, std::slice::from_ref(generation)).await?;
    views.pop().ok_or_else(|| {
        AppError::Internal(anyhow::anyhow!("no view of generation {}", generation.id))
    })
}

/// The JSON forms of `generations`, in their order. Their images are read in one query, however many
/// generations there are.
pub async fn views(
    state: &AppState,
    generations: &[Generation],
) -> Result<Vec<GenerationOut>, AppError> {
    if generations.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = generations.iter().map(|g| g.id).collect();
    let images = generations::images_of(&state.pool, &ids).await?;
    let batches = generations::batch_ids(&state.pool, generations).await?;
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
        let batch = batches
            .get(&generation.batch())
            .cloned()
            .unwrap_or_else(|| vec![generation.id]);
        views.push(view_with_images(state, generation, images, batch).await?);
    }
    Ok(views)
}

/// The JSON form of a generation whose images (in order) are already read; signing their links is local.
async fn view_with_images(
    state: &AppState,
    generation: &Generation,
    images: Vec<Image>,
    batch: Vec<Uuid>,
) -> Result<GenerationOut, AppError> {
    let mut image_views = Vec::with_capacity(images.len());
    for image in images {
        let url = pipeline(state)?
            .storage
            .presign_get(&image.object_key, DOWNLOAD_URL_TTL)
            .await?;
        image_views.push(ImageOut {
            url,
            url_expires_at: Utc::now() + DOWNLOAD_URL_TTL,
            width: image.width,
            height: image.height,
            byte_size: image.byte_size,
            content_type: image.content_type,
        });
    }
    Ok(GenerationOut {
        id: generation.id,
        status: generation.status,
        prompt: generation.prompt.clone(),
        aspect_ratio: generation.aspect_ratio,
        resolution: generation.resolution,
        reference_upload_ids: generation.reference_upload_ids.clone(),
        credits_reserved: generation.credits_reserved,
        failure_reason: generation.failure_reason.clone(),
        timings: Timings {
            created_at: generation.created_at,
            submitted_at: generation.submitted_at,
            generated_at: generation.upstream_finished_at,
            finished_at: generation.finished_at,
        },
        status_url: format!("/api/v1/generations/{}", generation.id),
        events_url: format!("/api/v1/generations/{}/events", generation.id),
        images: image_views,
        batch_id: generation.batch(),
        variation: generation.variation,
        batch,
    })
}

/// A page of the list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// `next_cursor` of the page before.
    pub cursor: Option<String>,
    /// 1–100, default 20.
    pub limit: Option<i64>,
}

/// Generations, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = GenerationPage)]
pub struct GenerationPage {
    pub items: Vec<GenerationOut>,
    /// Pass it as `cursor` for the next page; `null` on the last.
    pub next_cursor: Option<String>,
}

/// `GET /api/v1/generations?cursor=…&limit=…`: newest first; `next_cursor` continues after the last item.
#[utoipa::path(
    get, path = "/v1/generations", tag = "generations",
    summary = "List your generations",
    description = "Newest first, a page at a time: pass `next_cursor` as `cursor` for the next page.",
    params(ListQuery),
    responses(
        (status = 200, description = "A page, newest first", body = GenerationPage),
        (status = 422, description = "A malformed cursor or limit, or an unknown parameter", body = ErrorBody),
    ),
)]
pub async fn list_generations(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<GenerationPage>, AppError> {
    let limit = query.limit.unwrap_or(20).clamp(1, 100);
    let after = match &query.cursor {
        Some(cursor) => Some(decode_cursor(cursor).ok_or(AppError::Invalid {
            field: "cursor",
            message: "malformed".into(),
        })?),
        None => None,
    };
    let (page, has_more) = generations::page_for_user(&state.pool, user, after, limit).await?;
    let page = page.as_slice();
    let items = views(&state, page).await?;
    let next_cursor = has_more
        .then(|| page.last().map(|g| encode_cursor(g.created_at, g.id)))
        .flatten();
    Ok(Json(GenerationPage { items, next_cursor }))
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
#[utoipa::path(
    delete, path = "/v1/generations/{id}", tag = "generations",
    summary = "Delete a generation",
    description = "Hides a finished generation at once; a job removes its images and rows.",
    params(("id" = Uuid, Path, description = "The generation's id")),
    responses(
        (status = 202, description = "Hidden at once; a job removes its images and rows"),
        (status = 404, description = "No such generation", body = ErrorBody),
        (status = 409, description = "Still in progress: delete it once it has finished", body = ErrorBody),
    ),
)]
pub async fn delete_generation(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, AppError> {
    let generation = owned(&state, user, id).await?;
    remove(&state, &generation).await?;
    Ok(StatusCode::ACCEPTED)
}

/// `POST /api/v1/generations/{id}/cancel`: a queued generation is cancelled and refunded at once (200 with the
/// generation); one that has started answers 409. Cancelling a cancelled generation again is a 200.
#[utoipa::path(
    post, path = "/v1/generations/{id}/cancel", tag = "generations",
    summary = "Cancel a queued generation",
    description = "While it is still queued it is cancelled and its credits returned at once. Once the model has started on it, it can no longer be cancelled (409).",
    params(("id" = Uuid, Path, description = "The generation's id")),
    responses(
        (status = 200, description = "Cancelled (now or before) and its credits returned", body = GenerationOut),
        (status = 404, description = "No such generation", body = ErrorBody),
        (status = 409, description = "It has started (or finished): only a queued generation can be cancelled", body = ErrorBody),
    ),
)]
pub async fn cancel_generation(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<GenerationOut>, AppError> {
    let generation = owned(&state, user, id).await?;
    let cancelled = generations::cancel(&state.pool, &state.metrics, &generation).await?;
    Ok(Json(view(&state, &cancelled).await?))
}

/// Hides a finished generation at once and enqueues the job that deletes its rows and objects.
pub async fn remove(state: &AppState, generation: &Generation) -> Result<(), AppError> {
    Ok(generations::delete(&state.pool, generation).await?)
}

/// `GET /api/v1/generations/{id}/events`: the current status, then each change, until it finishes.
#[utoipa::path(
    get, path = "/v1/generations/{id}/events", tag = "generations",
    summary = "Follow a generation live",
    description = "Server-sent events: the current status first, then each change, until a final status (`succeeded`, `failed`, `cancelled`).",
    params(("id" = Uuid, Path, description = "The generation's id")),
    responses(
        (status = 200, description = "Server-sent events: `event: status` with `data: {\"id\": \"…\", \"status\": \"…\"}`, first the current status, then each change; the stream ends after a final status. `event: shutdown` asks the client to reconnect (the server is restarting).", content_type = "text/event-stream", body = String),
        (status = 404, description = "No such generation", body = ErrorBody),
    ),
)]
pub async fn generation_events(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, AppError> {
    // Subscribe before reading the row, so no change between the two is missed.
    let subscription = state.events.subscribe([id]);
    let generation = owned(&state, user, id).await?;
    Ok(status_stream(
        &state,
        crate::events::API_GENERATION_ROUTE,
        subscription,
        vec![generation],
    ))
}

/// Server-sent events of some generations (one, or a request's variations): each one's current status, then
/// each change, until all have finished. `subscription` must watch every one of them since before they were
/// read, so no change between the two is missed.
pub fn status_stream(
    state: &AppState,
    route: &'static str,
    mut subscription: crate::events::Subscription,
    generations: Vec<Generation>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>> + use<>> {
    let pool = state.pool.clone();
    let stream = async_stream::stream! {
        let mut last: HashMap<Uuid, Status> = generations.iter().map(|g| (g.id, g.status)).collect();
        for generation in &generations {
            yield Ok(status_event(generation.id, generation.status));
        }
        while last.values().any(|status| !status.is_final()) {
            let changes: Vec<(Uuid, Status)> = match subscription.recv().await {
                Signal::Event(event) if last.contains_key(&event.id) => match event.status.parse::<Status>() {
                    Ok(status) => vec![(event.id, status)],
                    Err(_) => continue,
                },
                Signal::Event(_) => continue,
                // Changes may have been missed: re-read the rows so the stream still ends correctly.
                Signal::Resync => {
                    let mut now = Vec::with_capacity(last.len());
                    for &id in last.keys() {
                        match generations::find(&pool, id).await {
                            Ok(Some(row)) => now.push((id, row.status)),
                            _ => return,
                        }
                    }
                    now
                }
            };
            for (id, status) in changes {
                if last.get(&id) != Some(&status) {
                    last.insert(id, status);
                    yield Ok(status_event(id, status));
                }
            }
        }
    };
    Sse::new(crate::events::supervised(state, route, stream)).keep_alive(KeepAlive::default())
}

pub fn status_event(id: Uuid, status: Status) -> Event {
    Event::default()
        .event("status")
        .data(json!({ "id": id, "status": status }).to_string())
}
