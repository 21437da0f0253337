//! The generator, generation pages, gallery, legal pages, consent, and the dev outbox.

use std::{collections::HashMap, time::Duration};

use axum::{
    Json,
    extract::{OriginalUri, Query, RawQuery, State},
    http::{HeaderMap, Method, StatusCode},
    response::{IntoResponse, Redirect, Response},
};
use jobs::generations::{self as domain, CreateError, Generation, Owner};
use maud::Markup;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{
    PageError, PagePath,
    session::{self, CsrfForm, Member, Visitor},
    views::{self, Chrome, GalleryItem, GenerationView, GeneratorForm, Wait},
};
use crate::{AppError, AppState, generations};

const IMAGE_URL_TTL: Duration = Duration::from_secs(30 * 60);
const DOWNLOAD_URL_TTL: Duration = Duration::from_secs(5 * 60);
const GALLERY_PAGE: i64 = 24;
/// Generations shown beside the generator.
const RECENT: i64 = 6;
const PRIVACY_POLICY: &str = include_str!("privacy-policy.txt");

/// Whether the browser asks not to be tracked (Do Not Track or Global Privacy Control).
pub fn privacy_signal(headers: &HeaderMap) -> bool {
    headers.get("dnt").is_some_and(|v| v.as_bytes() == b"1")
        || headers.get("sec-gpc").is_some_and(|v| v.as_bytes() == b"1")
}

/// The visitor's recorded analytics choice: the account's newest record, else this session's.
pub async fn analytics_consent(
    state: &AppState,
    visitor: &Visitor,
) -> Result<Option<bool>, PageError> {
    if let Some(user) = visitor.user_id().await {
        return Ok(jobs::consent::analytics_for_user(&state.pool, user).await?);
    }
    Ok(visitor
        .current()
        .await
        .and_then(|c| c.data.get("analytics_consent").and_then(Value::as_bool)))
}

/// The page frame's data for this visitor.
pub async fn chrome(
    state: &AppState,
    visitor: &Visitor,
    headers: &HeaderMap,
    path: &str,
) -> Result<Chrome, PageError> {
    let site = state
        .site
        .as_ref()
        .ok_or_else(|| PageError::internal("site not configured"))?;
    let member = match visitor.user_id().await {
        Some(user) => jobs::accounts::email_and_balance(&state.pool, user).await?,
        None => None,
    };
    let csrf = Some(visitor.csrf_token().await?);
    let flash = visitor.take_flash().await?;
    let signal = privacy_signal(headers);
    let (banner, analytics) = match &site.config.ga4_measurement_id {
        Some(id) if !signal => {
            let consent = analytics_consent(state, visitor).await?;
            (
                consent.is_none(),
                (consent == Some(true))
                    .then(|| (id.clone(), site.config.ga4_script_url.to_string())),
            )
        }
        _ => (false, None),
    };
    Ok(Chrome {
        member,
        csrf,
        flash,
        banner,
        analytics,
        path: path.to_owned(),
        refresh: false,
    })
}

/// `GET /`: the generator for members, the landing page with the trial for everyone else. `?from=<id>` opens
/// the generator filled in from one of the member's generations (its prompt, ratio and resolution, and its
/// reference images unless "Use as reference" just attached others).
pub async fn home(
    State(state): State<AppState>,
    visitor: Visitor,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Markup, PageError> {
    let chrome = chrome(&state, &visitor, &headers, "/").await?;
    let csrf = chrome.csrf.clone().unwrap_or_default();
    if let Some(user) = visitor.user_id().await {
        let mut form = GeneratorForm::default();
        let attached: Option<Vec<Uuid>> = match visitor.take("references").await? {
            Some(Value::Array(ids)) => Some(
                ids.iter()
                    .filter_map(|v| v.as_str()?.parse().ok())
                    .collect(),
            ),
            _ => None,
        };
        let from = match query.get("from").and_then(|id| id.parse::<Uuid>().ok()) {
            Some(id) => domain::find_owned(&state.pool, user, id).await?,
            None => None,
        };
        if let Some(from) = &from {
            form.prompt = from.prompt.clone();
            form.aspect_ratio = from.aspect_ratio.to_string();
            form.resolution = from.resolution.to_string();
            form.variations = i64::from(from.variations);
        }
        let references = attached
            .or_else(|| from.map(|g| g.reference_upload_ids))
            .unwrap_or_default();
        if !references.is_empty() {
            form.references = reference_previews(&state, user, &references).await?;
        }
        let balance = chrome.member.as_ref().map_or(0, |m| m.1);
        let recent = recent_items(&state, user).await?;
        return Ok(views::generator(&chrome, &csrf, balance, &form, &recent));
    }
    Ok(views::landing(
        &chrome,
        &csrf,
        trial_widget(&state),
        &GeneratorForm::default(),
    ))
}

pub fn trial_widget(state: &AppState) -> Option<(&str, &str)> {
    state
        .site
        .as_ref()
        .and_then(|s| s.config.turnstile.as_ref())
        .map(|t| (t.site_key.as_str(), t.script_url.as_str()))
}

async fn reference_previews(
    state: &AppState,
    user: Uuid,
    ids: &[Uuid],
) -> Result<Vec<(Uuid, String)>, PageError> {
    let rows = jobs::uploads::object_keys(&state.pool, user, ids).await?;
    let storage = &generations::pipeline(state)?.storage;
    let mut previews = Vec::with_capacity(rows.len());
    for (id, key) in rows {
        previews.push((id, storage.presign_get(&key, IMAGE_URL_TTL).await?));
    }
    Ok(previews)
}

#[derive(Debug, Deserialize)]
pub struct GenerateForm {
    #[serde(default)]
    prompt: String,
    aspect_ratio: Option<String>,
    resolution: Option<String>,
    #[serde(default)]
    reference_upload_ids: Vec<Uuid>,
    /// How many images (1–4).
    n: Option<i64>,
    idempotency_key: Option<String>,
}

/// `POST /generate`: records the generation, then shows its status page. A refused request shows the form
/// again with the reason and nothing lost.
pub async fn generate(
    State(state): State<AppState>,
    member: Member,
    headers: HeaderMap,
    CsrfForm(form): CsrfForm<GenerateForm>,
) -> Result<Response, PageError> {
    let result = domain::create(
        &state.pool,
        &generations::pipeline(&state)?.generation,
        &state.metrics,
        domain::NewGeneration {
            owner: Owner::User(member.user_id),
            prompt: &form.prompt,
            aspect_ratio: form.aspect_ratio.as_deref(),
            resolution: form.resolution.as_deref(),
            reference_upload_ids: &form.reference_upload_ids,
            variations: form.n,
            idempotency_key: form
                .idempotency_key
                .as_deref()
                // The page's own key (a UUID); anything else is not one and is ignored.
                .filter(|k| {
                    !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic())
                }),
        },
    )
    .await;
    match result {
        // The first of the request's images: its page shows them all.
        Ok(generations) => match generations.first() {
            Some(first) => Ok(Redirect::to(&format!("/generations/{}", first.id)).into_response()),
            None => Err(PageError::App(AppError::Internal(anyhow::anyhow!(
                "a request recorded no generation"
            )))),
        },
        Err(CreateError::Database(error)) => Err(PageError::from(error)),
        Err(refused) => {
            let (status, message) = refusal(&refused);
            let chrome = chrome(&state, &member.visitor, &headers, "/").await?;
            let csrf = chrome.csrf.clone().unwrap_or_default();
            let references =
                reference_previews(&state, member.user_id, &form.reference_upload_ids).await?;
            let recent = recent_items(&state, member.user_id).await?;
            let page = views::generator(
                &chrome,
                &csrf,
                member.balance,
                &GeneratorForm {
                    prompt: form.prompt,
                    aspect_ratio: form.aspect_ratio.unwrap_or_else(|| "auto".into()),
                    resolution: form.resolution.unwrap_or_else(|| "1K".into()),
                    variations: form.n.unwrap_or(1),
                    references,
                    error: Some(message),
                },
                &recent,
            );
            Ok((status, page).into_response())
        }
    }
}

/// How the generator page answers a refused generation: its status, and the words shown above the form (which
/// keeps everything the member entered).
fn refusal(refused: &CreateError) -> (StatusCode, String) {
    let status = match refused {
        CreateError::Invalid(_) | CreateError::UnknownUpload | CreateError::KeyReused => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        CreateError::RateLimited { .. } | CreateError::TrialUsed => StatusCode::TOO_MANY_REQUESTS,
        CreateError::InsufficientCredits { .. } => StatusCode::PAYMENT_REQUIRED,
        CreateError::PaymentOwing | CreateError::KeyInFlight => StatusCode::CONFLICT,
        CreateError::Database(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let message = match refused {
        CreateError::InsufficientCredits { balance, cost } => format!(
            "This needs {cost} credits and your balance is {balance}. Buy credits on the pricing page, or pick a lower resolution or fewer images."
        ),
        CreateError::Invalid(invalid) => invalid.message.clone(),
        other => other.to_string(),
    };
    (status, message)
}

/// `POST /uploads` (JSON, from the site's script): a presigned PUT for one reference image.
pub async fn create_upload(
    State(state): State<AppState>,
    member: Member,
    headers: HeaderMap,
    method: Method,
    crate::extract::ApiJson(body): crate::extract::ApiJson<generations::NewUpload>,
) -> Result<Response, AppError> {
    session::check_header(&member.visitor, &headers, &method)
        .await
        .map_err(|_| AppError::Unauthorized)?;
    let signed = generations::sign_upload(&state, member.user_id, &body).await?;
    Ok((StatusCode::CREATED, Json(signed)).into_response())
}

/// The member's own generation: not a browser session's trial, which [`visible`] also shows them.
async fn members_own(state: &AppState, member: &Member, id: Uuid) -> Result<Generation, PageError> {
    let generation = visible(state, &member.visitor, id).await?;
    if generation.user_id == Some(member.user_id) {
        Ok(generation)
    } else {
        Err(PageError::NotFound)
    }
}

/// A generation the visitor may see: their own, or their browser session's trial.
async fn visible(state: &AppState, visitor: &Visitor, id: Uuid) -> Result<Generation, PageError> {
    let generation = domain::find(&state.pool, id)
        .await?
        .ok_or(PageError::NotFound)?;
    if generation.deleted_at.is_some() {
        return Err(PageError::NotFound);
    }
    let current = visitor.current().await;
    let allowed = match (generation.user_id, &current) {
        (Some(owner), Some(current)) => current.user_id == Some(owner),
        (None, Some(current)) => {
            generation.trial_session_hash.as_deref() == Some(current.id_hash.as_slice())
        }
        _ => false,
    };
    if allowed {
        Ok(generation)
    } else {
        Err(PageError::NotFound)
    }
}

async fn image_keys(state: &AppState, id: Uuid) -> Result<Vec<String>, PageError> {
    let images = domain::images_of(&state.pool, &[id]).await?;
    Ok(images.into_iter().map(|image| image.object_key).collect())
}

async fn generation_view(
    state: &AppState,
    generation: &Generation,
) -> Result<GenerationView, PageError> {
    let storage = &generations::pipeline(state)?.storage;
    let mut image_urls = vec![];
    for key in image_keys(state, generation.id).await? {
        image_urls.push(storage.presign_get(&key, IMAGE_URL_TTL).await?);
    }
    let references = match generation.user_id {
        Some(user) => reference_previews(state, user, &generation.reference_upload_ids).await?,
        None => Vec::new(),
    };
    Ok(GenerationView {
        id: generation.id,
        status: generation.status,
        prompt: generation.prompt.clone(),
        aspect_ratio: generation.aspect_ratio,
        resolution: generation.resolution,
        created_at: generation.created_at,
        failure_reason: generation.failure_reason.clone(),
        image_urls,
        credits: generation.credits_reserved,
        references,
        variation: generation.variation,
        variations: generation.variations,
        set: Vec::new(),
        wait: None,
    })
}

/// The tiles of a request of several images: each one's status and first image.
async fn set_tiles(
    state: &AppState,
    generation: &Generation,
) -> Result<Vec<GalleryItem>, PageError> {
    if generation.variations <= 1 {
        return Ok(Vec::new());
    }
    let batch = domain::batch_of(&state.pool, generation).await?;
    gallery_items(state, domain::with_first_images(&state.pool, batch).await?).await
}

/// `GET /generations/{id}`: live status while it runs, the image and its actions once it is done.
pub async fn generation(
    State(state): State<AppState>,
    visitor: Visitor,
    headers: HeaderMap,
    PagePath(id): PagePath<Uuid>,
) -> Result<Markup, PageError> {
    let generation = visible(&state, &visitor, id).await?;
    let mut view = generation_view(&state, &generation).await?;
    view.set = set_tiles(&state, &generation).await?;
    if !generation.is_finished() {
        view.wait = Some(Wait {
            typical: domain::typical_wait(&state.pool, generation.resolution).await?,
            ahead: domain::queued_ahead(&state.pool, &generation).await?,
        });
    }
    let mut chrome = chrome(&state, &visitor, &headers, &format!("/generations/{id}")).await?;
    chrome.refresh = !view.all_finished();
    let csrf = chrome.csrf.clone();
    Ok(views::generation(
        &chrome,
        &view,
        generation.user_id.is_none(),
        csrf.as_deref(),
    ))
}

/// `GET /generations/{id}/events`: server-sent status changes for the page's script: of the generation and of
/// every other image of its request, until all have finished.
pub async fn generation_events(
    State(state): State<AppState>,
    visitor: Visitor,
    PagePath(id): PagePath<Uuid>,
) -> Result<Response, PageError> {
    // Subscribe before reading, so no change in between is missed.
    let mut subscription = state.events.subscribe([id]);
    let generation = visible(&state, &visitor, id).await?;
    let mut batch = domain::batch_of(&state.pool, &generation).await?;
    if batch.len() > 1 {
        // The request's other images too, read again once watched (a change between the first read and the
        // watch would be missed otherwise).
        subscription.watch(batch.iter().map(|g| g.id));
        batch = domain::batch_of(&state.pool, &generation).await?;
    }
    Ok(generations::status_stream(
        &state,
        crate::events::SITE_GENERATION_ROUTE,
        subscription,
        batch,
    )
    .into_response())
}

/// `GET /generations/{id}/download`: a short-lived link that saves the original file.
pub async fn download(
    State(state): State<AppState>,
    visitor: Visitor,
    PagePath(id): PagePath<Uuid>,
) -> Result<Response, PageError> {
    let generation = visible(&state, &visitor, id).await?;
    let key = image_keys(&state, generation.id)
        .await?
        .into_iter()
        .next()
        .ok_or(PageError::NotFound)?;
    let extension = key.rsplit('.').next().unwrap_or("png");
    let url = generations::pipeline(&state)?
        .storage
        .presign_download(
            &key,
            &format!("createimage2-{id}.{extension}"),
            DOWNLOAD_URL_TTL,
        )
        .await?;
    Ok(Redirect::to(&url).into_response())
}

#[derive(Debug, Deserialize)]
pub struct Empty {}

/// `POST /generations/{id}/cancel`: cancels the member's queued generation and refunds it, back to its page
/// (which shows what happened: cancelled, or already started).
pub async fn cancel(
    State(state): State<AppState>,
    member: Member,
    PagePath(id): PagePath<Uuid>,
    CsrfForm(_): CsrfForm<Empty>,
) -> Result<Response, PageError> {
    let generation = members_own(&state, &member, id).await?;
    match domain::cancel(&state.pool, &state.metrics, &generation).await {
        Ok(_) | Err(domain::CancelError::Started(_)) => {
            Ok(Redirect::to(&format!("/generations/{id}")).into_response())
        }
        Err(domain::CancelError::Database(error)) => Err(AppError::from(error).into()),
    }
}

/// `POST /generations/{id}/reference`: copies the image into the member's uploads and opens the generator
/// with it attached and this generation's prompt and settings filled in.
pub async fn use_as_reference(
    State(state): State<AppState>,
    member: Member,
    PagePath(id): PagePath<Uuid>,
    CsrfForm(_): CsrfForm<Empty>,
) -> Result<Response, PageError> {
    let generation = visible(&state, &member.visitor, id).await?;
    let storage = &generations::pipeline(&state)?.storage;
    let upload = match jobs::uploads::from_generated_image(
        &state.pool,
        storage,
        member.user_id,
        &generation,
    )
    .await
    {
        Ok(upload) => upload,
        Err(jobs::uploads::UploadError::Invalid(invalid)) => {
            return Err(PageError::BadRequest(invalid.message));
        }
        Err(other) => return Err(AppError::from(other).into()),
    };
    let mut ids: Vec<Value> = match member.visitor.take("references").await? {
        Some(Value::Array(ids)) => ids,
        _ => vec![],
    };
    ids.push(json!(upload));
    member.visitor.set("references", Value::Array(ids)).await?;
    // Back to the generator with this generation's prompt and settings, the image attached.
    Ok(Redirect::to(&format!("/?from={id}")).into_response())
}

/// `GET /generations/{id}/delete`: the confirmation.
pub async fn confirm_delete(
    State(state): State<AppState>,
    member: Member,
    headers: HeaderMap,
    PagePath(id): PagePath<Uuid>,
) -> Result<Markup, PageError> {
    let generation = visible(&state, &member.visitor, id).await?;
    let view = generation_view(&state, &generation).await?;
    let chrome = chrome(&state, &member.visitor, &headers, "/gallery").await?;
    let csrf = chrome.csrf.clone().unwrap_or_default();
    Ok(views::confirm_delete(&chrome, &csrf, &view))
}

/// `POST /generations/{id}/delete`.
pub async fn delete(
    State(state): State<AppState>,
    member: Member,
    PagePath(id): PagePath<Uuid>,
    CsrfForm(_): CsrfForm<Empty>,
) -> Result<Response, PageError> {
    let generation = members_own(&state, &member, id).await?;
    match generations::remove(&state, &generation).await {
        Ok(()) => {
            member.visitor.flash("The image was deleted.").await?;
            Ok(Redirect::to("/gallery").into_response())
        }
        Err(AppError::Conflict(message)) => Err(PageError::BadRequest(message)),
        Err(other) => Err(other.into()),
    }
}

#[derive(Debug, Deserialize)]
pub struct GalleryQuery {
    before: Option<String>,
    /// Words to find in the prompts.
    q: Option<String>,
    /// `ready`, `in-progress`, `failed` or `cancelled`; empty: everything.
    status: Option<String>,
}

/// Gallery cards from their rows: each first image signed for the page.
async fn gallery_items(
    state: &AppState,
    rows: Vec<domain::GalleryRow>,
) -> Result<Vec<GalleryItem>, PageError> {
    let storage = &generations::pipeline(state)?.storage;
    let mut items = Vec::with_capacity(rows.len());
    for row in rows {
        let thumb_url = match &row.object_key {
            Some(key) => Some(storage.presign_get(key, IMAGE_URL_TTL).await?),
            None => None,
        };
        items.push(GalleryItem {
            id: row.id,
            prompt: row.prompt,
            status: row.status,
            created_at: row.created_at,
            aspect_ratio: row.aspect_ratio,
            size: row.width.zip(row.height),
            variation: row.variation,
            variations: row.variations,
            thumb_url,
        });
    }
    Ok(items)
}

/// The member's latest generations, for the generator's side.
pub async fn recent_items(state: &AppState, user: Uuid) -> Result<Vec<GalleryItem>, PageError> {
    let (rows, _) = domain::gallery_page(
        &state.pool,
        user,
        &domain::GalleryFilter::default(),
        None,
        RECENT,
    )
    .await?;
    gallery_items(state, rows).await
}

/// `GET /gallery`: the member's generations, newest first; searched by prompt and filtered by status.
pub async fn gallery(
    State(state): State<AppState>,
    member: Member,
    headers: HeaderMap,
    Query(query): Query<GalleryQuery>,
) -> Result<Markup, PageError> {
    let after = match &query.before {
        Some(cursor) => Some(
            generations::decode_cursor(cursor)
                .ok_or_else(|| PageError::BadRequest("that page link is malformed".into()))?,
        ),
        None => None,
    };
    let status = match query.status.as_deref().unwrap_or_default() {
        "" => None,
        word => Some(word.parse::<domain::StatusFilter>().map_err(|_| {
            PageError::BadRequest(
                "Show: pick ready, in progress, failed or cancelled (or everything).".into(),
            )
        })?),
    };
    let search = query
        .q
        .as_deref()
        .map(str::trim)
        .filter(|q| !q.is_empty())
        .map(|q| q.chars().take(200).collect::<String>());
    let filter = domain::GalleryFilter {
        search: search.clone(),
        status,
    };
    let (rows, has_more) =
        domain::gallery_page(&state.pool, member.user_id, &filter, after, GALLERY_PAGE).await?;
    let items = gallery_items(&state, rows).await?;
    let next = has_more
        .then(|| {
            items
                .last()
                .map(|i| generations::encode_cursor(i.created_at, i.id))
        })
        .flatten();
    let chrome = chrome(&state, &member.visitor, &headers, "/gallery").await?;
    Ok(views::gallery(
        &chrome,
        &views::GalleryPage {
            items: &items,
            next: next.as_deref(),
            first_page: query.before.is_none(),
            search: search.as_deref(),
            status,
        },
    ))
}

/// The ids a bulk action names (`id=…&id=…`), at most a gallery page's worth; anything that is no id is
/// refused.
fn selected_ids(raw: Option<&str>) -> Result<Vec<Uuid>, PageError> {
    #[derive(Deserialize)]
    struct Selected {
        #[serde(default)]
        id: Vec<String>,
    }
    let selected: Selected = serde_html_form::from_str(raw.unwrap_or_default())
        .map_err(|_| PageError::BadRequest("That selection is malformed.".into()))?;
    let mut ids = Vec::with_capacity(selected.id.len());
    for id in selected.id {
        ids.push(
            id.parse::<Uuid>()
                .map_err(|_| PageError::BadRequest("That selection is malformed.".into()))?,
        );
    }
    ids.sort();
    ids.dedup();
    if ids.len() > GALLERY_PAGE as usize {
        return Err(PageError::BadRequest(format!(
            "Select at most {GALLERY_PAGE} images at a time."
        )));
    }
    Ok(ids)
}

/// `GET /gallery/delete?id=…`: confirms deleting the selected images.
pub async fn confirm_bulk_delete(
    State(state): State<AppState>,
    member: Member,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, PageError> {
    let ids = selected_ids(raw.as_deref())?;
    let chosen = domain::finished_owned(&state.pool, member.user_id, &ids).await?;
    if chosen.is_empty() {
        member
            .visitor
            .flash("Select finished images to delete first.")
            .await?;
        return Ok(Redirect::to("/gallery").into_response());
    }
    let left_out = ids.len() - chosen.len();
    let items = gallery_items(
        &state,
        domain::with_first_images(&state.pool, chosen).await?,
    )
    .await?;
    let chrome = chrome(&state, &member.visitor, &headers, "/gallery").await?;
    let csrf = chrome.csrf.clone().unwrap_or_default();
    Ok(views::confirm_bulk_delete(&chrome, &csrf, &items, left_out).into_response())
}

#[derive(Debug, Deserialize)]
pub struct BulkDeleteForm {
    #[serde(default)]
    id: Vec<Uuid>,
}

/// `POST /gallery/delete`: deletes the selected images (the member's own, finished), back to the gallery.
pub async fn bulk_delete(
    State(state): State<AppState>,
    member: Member,
    CsrfForm(form): CsrfForm<BulkDeleteForm>,
) -> Result<Response, PageError> {
    let mut ids = form.id;
    ids.sort();
    ids.dedup();
    ids.truncate(GALLERY_PAGE as usize);
    let chosen = domain::finished_owned(&state.pool, member.user_id, &ids).await?;
    domain::delete_all(&state.pool, &chosen)
        .await
        .map_err(AppError::from)?;
    let message = match chosen.len() {
        0 => "Nothing was deleted: select finished images first.".to_owned(),
        1 => "1 image was deleted.".to_owned(),
        n => format!("{n} images were deleted."),
    };
    member.visitor.flash(&message).await?;
    Ok(Redirect::to("/gallery").into_response())
}

/// `GET /privacy-policy`, with its last-updated date and any announced change.
pub async fn privacy_policy(
    State(state): State<AppState>,
    visitor: Visitor,
    headers: HeaderMap,
) -> Result<Markup, PageError> {
    let chrome = chrome(&state, &visitor, &headers, "/privacy-policy").await?;
    let current = jobs::policy::current(&state.pool).await?;
    let upcoming = jobs::policy::upcoming(&state.pool).await?;
    let last_updated = current
        .map(|p| p.effective_at.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| "2026-04-29".into());
    Ok(views::privacy_policy(
        &chrome,
        PRIVACY_POLICY,
        &last_updated,
        upcoming.map(|p| (p.effective_at.format("%Y-%m-%d").to_string(), p.summary)),
    ))
}

pub async fn terms(
    State(state): State<AppState>,
    visitor: Visitor,
    headers: HeaderMap,
) -> Result<Markup, PageError> {
    Ok(views::terms(
        &chrome(&state, &visitor, &headers, "/terms").await?,
    ))
}

#[derive(Debug, Deserialize)]
pub struct ConsentForm {
    analytics: String,
    next: Option<String>,
}

/// `POST /consent`: records the analytics choice (history kept in `consent_records`); takes effect on the
/// next page.
pub async fn consent(
    State(state): State<AppState>,
    visitor: Visitor,
    OriginalUri(_): OriginalUri,
    CsrfForm(form): CsrfForm<ConsentForm>,
) -> Result<Response, PageError> {
    let analytics = form.analytics == "yes";
    let current = visitor.ensure().await?;
    let version = jobs::policy::current(&state.pool)
        .await?
        .map_or_else(|| "2026-04-29".to_owned(), |p| p.version);
    jobs::consent::record(
        &state.pool,
        current.user_id,
        current
            .user_id
            .is_none()
            .then_some(current.id_hash.as_slice()),
        analytics,
        &version,
    )
    .await?;
    visitor
        .set("analytics_consent", Value::Bool(analytics))
        .await?;
    visitor
        .flash(if analytics {
            "Thanks — analytics are allowed. You can withdraw this on your account page."
        } else {
            "Only essential cookies are used."
        })
        .await?;
    Ok(Redirect::to(&super::redirect::local_path(form.next.as_deref())).into_response())
}

/// `GET /dev/outbox` (dev only): what the system would have e-mailed.
pub async fn dev_outbox(
    State(state): State<AppState>,
    visitor: Visitor,
    headers: HeaderMap,
) -> Result<Markup, PageError> {
    let rows = jobs::email::recent(&state.pool, 100).await?;
    Ok(views::dev_outbox(
        &chrome(&state, &visitor, &headers, "/dev/outbox").await?,
        &rows,
    ))
}

pub async fn dev_outbox_message(
    State(state): State<AppState>,
    visitor: Visitor,
    headers: HeaderMap,
    PagePath(id): PagePath<Uuid>,
) -> Result<Markup, PageError> {
    let row = jobs::email::find(&state.pool, id)
        .await?
        .ok_or(PageError::NotFound)?;
    Ok(views::dev_outbox_message(
        &chrome(&state, &visitor, &headers, "/dev/outbox").await?,
        &row.to_address,
        &row.subject,
        &row.body_text,
    ))
}
