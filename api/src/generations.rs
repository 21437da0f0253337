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
    generations::{self, Generation, Image, Owner, Status},
    uploads,
};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    ApiPipeline, AppError, AppState,
    caller::ApiUser,
    extract::{ApiJson, ApiPath, ApiQuery},
};

/// How long a download link is valid.
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
) -> Result<Value, AppError> {
    let storage = &pipeline(state)?.storage;
    let signed = uploads::sign(
        &state.pool,
        storage,
        user,
        &body.content_type,
        body.byte_size,
    )
    .await?;
    Ok(json!({
        "upload_id": signed.id,
        "upload_url": signed.url,
        "method": "PUT",
        "headers": {"Content-Type": signed.content_type, "Content-Length": signed.byte_size.to_string()},
        "expires_at": signed.expires_at,
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

/// `POST /api/v1/generations`: records the generation ([`generations::create`]: checks, rate, reservation,
/// submit job). `Idempotency-Key` makes a retried POST return the same generation.
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
    let generation = generations::create(
        &state.pool,
        &pipeline(&state)?.generation,
        &state.metrics,
        generations::NewGeneration {
            owner: Owner::User(user),
            prompt: body.prompt.as_deref().unwrap_or_default(),
            aspect_ratio: body.aspect_ratio.as_deref(),
            resolution: body.resolution.as_deref(),
            reference_upload_ids: &body.reference_upload_ids,
            idempotency_key,
        },
    )
    .await?;
    // Without an idempotency key the generation is new and has no images yet: nothing more to read.
    let view = match idempotency_key {
        None => view_with_images(&state, &generation, Vec::new()).await?,
        Some(_) => view(&state, &generation).await?,
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
pub async fn get_generation(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<Value>, AppError> {
    let generation = owned(&state, user, id).await?;
    Ok(Json(view(&state, &generation).await?))
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
    let images = generations::images_of(&state.pool, &ids).await?;
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
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Value>, AppError> {
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
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, AppError> {
    let generation = owned(&state, user, id).await?;
    remove(&state, &generation).await?;
    Ok(StatusCode::ACCEPTED)
}

/// `POST /api/v1/generations/{id}/cancel`: a queued generation is cancelled and refunded at once (200 with the
/// generation); one that has started answers 409. Cancelling a cancelled generation again is a 200.
pub async fn cancel_generation(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<Value>, AppError> {
    let generation = owned(&state, user, id).await?;
    let cancelled = generations::cancel(&state.pool, &state.metrics, &generation).await?;
    Ok(Json(
        view_with_images(&state, &cancelled, Vec::new()).await?,
    ))
}

/// Hides a finished generation at once and enqueues the job that deletes its rows and objects.
pub async fn remove(state: &AppState, generation: &Generation) -> Result<(), AppError> {
    Ok(generations::delete(&state.pool, generation).await?)
}

/// `GET /api/v1/generations/{id}/events`: the current status, then each change, until it finishes.
pub async fn generation_events(
    State(state): State<AppState>,
    ApiUser(user): ApiUser,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, AppError> {
    // Subscribe before reading the row, so no change between the two is missed.
    let receiver = state.events.subscribe();
    let generation = owned(&state, user, id).await?;
    Ok(status_stream(
        &state,
        crate::events::API_GENERATION_ROUTE,
        receiver,
        generation,
    ))
}

/// Server-sent events of one generation: its current status, then each change, until it finishes.
/// `receiver` must be subscribed before `generation` was read, so no change between the two is missed.
pub fn status_stream(
    state: &AppState,
    route: &'static str,
    mut receiver: tokio::sync::broadcast::Receiver<crate::events::GenerationEvent>,
    generation: Generation,
) -> Sse<impl Stream<Item = Result<Event, Infallible>> + use<>> {
    let id = generation.id;
    let pool = state.pool.clone();
    let stream = async_stream::stream! {
        let mut last = generation.status;
        yield Ok(status_event(last));
        if generation.is_finished() {
            return;
        }
        loop {
            let status = match receiver.recv().await {
                Ok(event) if event.id == id => match event.status.parse::<Status>() {
                    Ok(status) => status,
                    Err(_) => continue,
                },
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
                last = status;
                yield Ok(status_event(status));
            }
            if status.is_final() {
                return;
            }
        }
    };
    Sse::new(crate::events::supervised(state, route, stream)).keep_alive(KeepAlive::default())
}

pub fn status_event(status: Status) -> Event {
    Event::default()
        .event("status")
        .data(json!({ "status": status }).to_string())
}
