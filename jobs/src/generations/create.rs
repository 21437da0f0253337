//! Recording a generation: the one domain operation behind `POST /api/v1/generations`, the site's generator and
//! the no-signup trial. Each caller maps [`CreateError`] to its own answer (a JSON error, a page).

use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use queue::Job as _;

use super::{Generation, Invalid, MAX_VARIATIONS, Resolution, Settings, validate};
use crate::{
    config::GenerationConfig,
    credits::{self, Applied, Kind},
    kie::{MODEL_IMAGE_TO_IMAGE, MODEL_TEXT_TO_IMAGE},
    kinds::SubmitGeneration,
    rate_limit::{self, Take},
    telemetry::Metrics,
    trial::{self, Fingerprints},
    uploads,
};

/// Who a generation belongs to.
#[derive(Debug, Clone)]
pub enum Owner {
    User(Uuid),
    /// A no-signup trial, tied to a browser session (by its id hash) and claimed under the visitor's
    /// fingerprints in the transaction that records it. Free, 1K, no references.
    Trial {
        session: Vec<u8>,
        fingerprints: Fingerprints,
    },
}

/// A request to generate, as a client sent it: the settings are the client's words (`None`: the defaults),
/// checked by [`create`].
#[derive(Debug, Clone)]
pub struct NewGeneration<'a> {
    pub owner: Owner,
    pub prompt: &'a str,
    pub aspect_ratio: Option<&'a str>,
    pub resolution: Option<&'a str>,
    pub reference_upload_ids: &'a [Uuid],
    /// How many images (variations) to make, 1–[`MAX_VARIATIONS`] (`None`: one). Each is a generation of its
    /// own: its own kie.ai task, reservation, charge or refund.
    pub variations: Option<i64>,
    /// A client's key for this request: a repeat with the same key returns the generation the first recorded.
    pub idempotency_key: Option<&'a str>,
}

/// Why a generation was not recorded. Nothing was spent or kept for any of them (the rate token excepted: every
/// request counts).
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// Over the member's per-minute budget.
    #[error("too many requests; retry in {} s", retry_after.as_secs_f64().ceil())]
    RateLimited { retry_after: Duration },
    /// This visitor's one trial a day is used.
    #[error("the free trial was already used today")]
    TrialUsed,
    /// A reference that is not one of the member's uploads.
    #[error("unknown upload id (upload each reference through /api/v1/uploads first)")]
    UnknownUpload,
    #[error("this needs {cost} credits; the balance is {balance}")]
    InsufficientCredits { balance: i64, cost: i64 },
    /// A refunded or disputed payment left credits owing.
    #[error(
        "a refunded or disputed payment left credits owing; new generations are paused until it is settled"
    )]
    PaymentOwing,
    /// The idempotency key was used before for a request with other parameters.
    #[error(
        "this key was already used for a request with different parameters; use a new key for a new request"
    )]
    KeyReused,
    /// Another request with the same idempotency key is being recorded right now.
    #[error("a request with this idempotency key is in progress; retry it")]
    KeyInFlight,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Records a request: one generation per variation asked for, in order (the first's id is the request's,
/// `batch_id`). Checks the request ([`validate`]); takes the member's rate token (in a transaction of its own:
/// every request counts, refused or not, so a refused one cannot be repeated without limit); then in one
/// transaction claims a trial's fingerprint, checks the references, inserts the rows, reserves each one's cost
/// under its own ledger key and enqueues each one's submit job — so a request refused on the way leaves nothing
/// else behind, and one the balance cannot cover in full records nothing. With an idempotency key, a repeat of
/// the same request returns the generations the first recorded.
pub async fn create(
    pool: &PgPool,
    limits: &GenerationConfig,
    metrics: &Metrics,
    request: NewGeneration<'_>,
) -> Result<Vec<Generation>, CreateError> {
    let NewGeneration {
        owner,
        prompt,
        aspect_ratio,
        resolution,
        reference_upload_ids,
        variations,
        idempotency_key,
    } = request;
    let settings = validate(prompt, aspect_ratio, resolution, reference_upload_ids.len())?;
    let variations = match variations {
        None => 1,
        Some(n) if (1..=i64::from(MAX_VARIATIONS)).contains(&n) => n as i16,
        Some(n) => {
            return Err(Invalid {
                field: "n",
                message: format!(
                    "{n} images were asked for; one request makes 1 to {MAX_VARIATIONS}"
                ),
            }
            .into());
        }
    };
    let mut references = reference_upload_ids.to_vec();
    references.sort();
    references.dedup();
    let (user, trial_session, fingerprints) = match owner {
        Owner::User(user) => (Some(user), None, None),
        Owner::Trial {
            session,
            fingerprints,
        } => {
            if !references.is_empty() {
                return Err(Invalid {
                    field: "reference_upload_ids",
                    message: "the free trial does not take reference images".into(),
                }
                .into());
            }
            if settings.resolution != Resolution::R1K {
                return Err(Invalid {
                    field: "resolution",
                    message: "the free trial makes 1K images".into(),
                }
                .into());
            }
            if variations != 1 {
                return Err(Invalid {
                    field: "n",
                    message: "the free trial makes one image".into(),
                }
                .into());
            }
            (None, Some(session), Some(fingerprints))
        }
    };
    if let (Some(user), Some(key)) = (user, idempotency_key)
        && let Some(existing) = find_by_idempotency_key(pool, user, key).await?
    {
        same_request(&existing, prompt, settings, &references, variations)?;
        return Ok(recorded(pool, existing).await?);
    }

    // Newest first is how lists read (creation time, then id, descending) and every variation of a request
    // has the same creation time: the first variation takes the greatest id, so a request reads 1, 2, 3, 4.
    let mut ids: Vec<Uuid> = (0..variations).map(|_| Uuid::now_v7()).collect();
    ids.sort_unstable_by(|a, b| b.cmp(a));
    let batch_id = ids[0];
    let cost = if user.is_some() {
        settings.resolution.cost()
    } else {
        0
    };
    let model = if references.is_empty() {
        MODEL_TEXT_TO_IMAGE
    } else {
        MODEL_IMAGE_TO_IMAGE
    };
    let trace_id = Uuid::new_v4().simple().to_string();
    if let Some(user) = user
        && let Take::RetryAfter(retry_after) = rate_limit::take_many(
            pool,
            &format!("generations:user:{user}"),
            // The budget counts generations: each image of the request is one.
            variations as u32,
            limits.per_user_per_minute,
            Duration::from_secs(60),
        )
        .await?
    {
        return Err(CreateError::RateLimited { retry_after });
    }
    let mut tx = pool.begin().await?;
    if let Some(fingerprints) = &fingerprints
        && !trial::claim_in(&mut tx, fingerprints).await?
    {
        tx.rollback().await?;
        return Err(CreateError::TrialUsed);
    }
    if let Some(user) = user
        && !references.is_empty()
    {
        let owned = uploads::count_owned(&mut *tx, user, &references).await?;
        if owned != references.len() as i64 {
            tx.rollback().await?;
            return Err(CreateError::UnknownUpload);
        }
    }
    let mut generations = Vec::with_capacity(ids.len());
    for (index, &id) in ids.iter().enumerate() {
        let variation = index as i16 + 1;
        let inserted: Option<Generation> = sqlx::query_as(
            "INSERT INTO generations (id, user_id, trial_session_hash, prompt, aspect_ratio, resolution, model,
                                      reference_upload_ids, credits_reserved, idempotency_key, trace_id,
                                      batch_id, variation, variations)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
             ON CONFLICT (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
             RETURNING *",
        )
        .bind(id)
        .bind(user)
        .bind(&trial_session)
        .bind(prompt)
        .bind(settings.aspect_ratio)
        .bind(settings.resolution)
        .bind(model)
        .bind(&references)
        .bind(cost as i32)
        // The request's key is kept on its first variation only.
        .bind(idempotency_key.filter(|_| variation == 1))
        .bind(&trace_id)
        .bind(batch_id)
        .bind(variation)
        .bind(variations)
        .fetch_optional(&mut *tx)
        .await?;
        match inserted {
            Some(generation) => generations.push(generation),
            None => {
                // A concurrent request with the same idempotency key won: answer with its generations, if it
                // asked the same.
                tx.rollback().await?;
                let existing = match (user, idempotency_key) {
                    (Some(user), Some(key)) => find_by_idempotency_key(pool, user, key).await?,
                    _ => None,
                };
                let existing = existing.ok_or(CreateError::KeyInFlight)?;
                same_request(&existing, prompt, settings, &references, variations)?;
                return Ok(recorded(pool, existing).await?);
            }
        }
    }
    if let Some(user) = user {
        if credits::owing(&mut *tx, user).await? {
            tx.rollback().await?;
            return Err(CreateError::PaymentOwing);
        }
        for (reserved, &id) in ids.iter().enumerate() {
            match credits::apply(
                &mut tx,
                user,
                Kind::Reserve,
                -cost,
                &super::ledger_key(id),
                json!({"generation": id}),
            )
            .await?
            {
                Applied::Yes => {}
                Applied::InsufficientCredits => {
                    // The balance before this request: what the variations reserved so far took, given back.
                    let balance = credits::balance(&mut *tx, user).await? + cost * reserved as i64;
                    tx.rollback().await?;
                    return Err(CreateError::InsufficientCredits {
                        balance,
                        cost: cost * i64::from(variations),
                    });
                }
                Applied::AlreadyApplied => {
                    // The id is new: a reservation under its key cannot exist. Refuse rather than record a
                    // generation nothing was reserved for.
                    tx.rollback().await?;
                    return Err(sqlx::Error::Protocol(format!(
                        "a reservation for the new generation {id} existed"
                    ))
                    .into());
                }
            }
        }
    }
    for &id in &ids {
        SubmitGeneration::first(id).enqueue(&mut *tx).await?;
    }
    tx.commit().await?;
    metrics
        .credits_total
        .with_label_values(&["reserved"])
        .inc_by(cost as u64 * ids.len() as u64);
    tracing::info!(generation.id = %batch_id, trace_id = %trace_id, resolution = %settings.resolution, variations, trial = user.is_none(), "generation requested");
    Ok(generations)
}

/// An idempotency key names one request: reused with different parameters it is refused (as Stripe does),
/// never answered with the first request's generation as if it were this one. `references` are sorted and
/// deduplicated, as [`create`] stores them.
fn same_request(
    existing: &Generation,
    prompt: &str,
    settings: Settings,
    references: &[Uuid],
    variations: i16,
) -> Result<(), CreateError> {
    if existing.prompt == prompt
        && existing.aspect_ratio == settings.aspect_ratio
        && existing.resolution == settings.resolution
        && existing.reference_upload_ids == references
        && existing.variations == variations
    {
        Ok(())
    } else {
        Err(CreateError::KeyReused)
    }
}

/// What a repeated request answers: the generations its key recorded that are still there, or — if every one
/// has been deleted since — the one holding the key, so a retry never records (and charges) the request again.
async fn recorded(pool: &PgPool, holder: Generation) -> sqlx::Result<Vec<Generation>> {
    let batch = super::batch_of(pool, &holder).await?;
    Ok(if batch.is_empty() {
        vec![holder]
    } else {
        batch
    })
}

async fn find_by_idempotency_key(
    pool: &PgPool,
    user: Uuid,
    key: &str,
) -> sqlx::Result<Option<Generation>> {
    sqlx::query_as("SELECT * FROM generations WHERE user_id = $1 AND idempotency_key = $2")
        .bind(user)
        .bind(key)
        .fetch_optional(pool)
        .await
}
