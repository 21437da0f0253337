//! GDPR export bundles (privacy policy §5: access and export). A zip of the user's data — `account.json`,
//! `generations.json`, `usage_log.json`, `credit_ledger.json`, `payments.json`, `consents.json`, a README —
//! and the user's images and reference uploads as files, streamed from the bucket into a multipart upload of
//! the zip under `exports/<user>/<export>.zip`.
//!
//! Memory bound: objects are never held whole. A blocking task writes the zip (`zip`'s streaming writer) in
//! chunks of at most `CHUNK` bytes into a channel of `CHANNEL_CAPACITY` chunks; the uploader collects them into
//! one part of `PART_SIZE` (8 MiB; S3 parts must be ≥ 5 MiB but the last) and uploads it. So the bundle's
//! bytes buffered at any moment stay under [`MEMORY_BOUND`] ≈ 9.2 MiB, whatever the number and size of the
//! images; [`BundleStats::peak_buffered`] measures it (a test builds a bundle many times larger).

use std::{
    io::Write,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use anyhow::Context as _;
use aws_sdk_s3::{
    primitives::ByteStream,
    types::{CompletedMultipartUpload, CompletedPart},
};
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::storage::Storage;

pub const PART_SIZE: usize = 8 * 1024 * 1024;
pub const CHUNK: usize = 64 * 1024;
// R2 refuses an upload whose parts but the last differ in size. Parts are cut when they reach PART_SIZE, and
// chunks arrive CHUNK bytes at a time (a shorter one only at the final flush), so every part but the last is
// exactly PART_SIZE as long as CHUNK divides it.
const _: () = assert!(PART_SIZE.is_multiple_of(CHUNK));
pub const CHANNEL_CAPACITY: usize = 16;
/// The most bundle bytes buffered at once: one part, a full channel, one chunk being written.
pub const MEMORY_BOUND: usize = PART_SIZE + (CHANNEL_CAPACITY + 1) * CHUNK;
/// Bundles are deleted this long after they are ready.
pub const BUNDLE_TTL_DAYS: i64 = 7;

/// What building a bundle did.
#[derive(Debug, Clone, Default)]
pub struct BundleStats {
    pub bytes: u64,
    pub parts: i32,
    pub files: usize,
    /// The most bundle bytes held in memory at once.
    pub peak_buffered: usize,
}

/// The bucket key of an export's bundle.
pub fn bundle_key(user_id: Uuid, export_id: Uuid) -> String {
    format!("exports/{user_id}/{export_id}.zip")
}

struct Entry {
    name: String,
    content: EntryContent,
}

enum EntryContent {
    Bytes(Vec<u8>),
    Object(String),
}

/// Builds the bundle of `user_id` and uploads it under `key`.
pub async fn build_bundle(
    pool: &PgPool,
    storage: &Storage,
    user_id: Uuid,
    key: &str,
) -> anyhow::Result<BundleStats> {
    let entries = collect_entries(pool, user_id).await?;
    let upload = storage
        .client
        .create_multipart_upload()
        .bucket(&storage.bucket)
        .key(key)
        .content_type("application/zip")
        .send()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "starting the upload: {}",
                aws_sdk_s3::error::DisplayErrorContext(e)
            )
        })?;
    let upload_id = upload.upload_id().context("no upload id")?.to_owned();
    let result = stream_zip(storage, key, &upload_id, entries).await;
    if result.is_err() {
        let _ = storage
            .client
            .abort_multipart_upload()
            .bucket(&storage.bucket)
            .key(key)
            .upload_id(&upload_id)
            .send()
            .await;
    }
    result
}

async fn stream_zip(
    storage: &Storage,
    key: &str,
    upload_id: &str,
    entries: Vec<Entry>,
) -> anyhow::Result<BundleStats> {
    let buffered = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (sender, mut receiver) = mpsc::channel::<Vec<u8>>(CHANNEL_CAPACITY);
    let files = entries.len();

    // Writer: the zip, in a blocking task, reading objects chunk by chunk.
    let writer_storage = storage.clone();
    let (writer_buffered, writer_peak) = (buffered.clone(), peak.clone());
    let runtime = tokio::runtime::Handle::current();
    let writer = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let sink = ChannelWriter {
            sender,
            pending: Vec::with_capacity(CHUNK),
            buffered: writer_buffered,
            peak: writer_peak,
        };
        let mut zip = zip::ZipWriter::new_stream(sink);
        let deflated = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        let stored = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for entry in entries {
            match entry.content {
                EntryContent::Bytes(bytes) => {
                    zip.start_file(entry.name, deflated)?;
                    zip.write_all(&bytes)?;
                }
                EntryContent::Object(object_key) => {
                    zip.start_file(entry.name, stored)?;
                    let object = runtime.block_on(
                        writer_storage
                            .client
                            .get_object()
                            .bucket(&writer_storage.bucket)
                            .key(&object_key)
                            .send(),
                    );
                    let mut body = match object {
                        Ok(object) => object.body,
                        // An object that vanished (deleted meanwhile) is left out rather than failing the export.
                        Err(error)
                            if error.as_service_error().is_some_and(|e| e.is_no_such_key()) =>
                        {
                            continue;
                        }
                        Err(error) => anyhow::bail!(
                            "reading {object_key}: {}",
                            aws_sdk_s3::error::DisplayErrorContext(error)
                        ),
                    };
                    while let Some(chunk) = runtime.block_on(body.next()) {
                        zip.write_all(&chunk?)?;
                    }
                }
            }
        }
        let mut sink = zip.finish()?.into_inner();
        sink.flush()?;
        Ok(())
    });

    // Uploader: parts of PART_SIZE.
    let mut part = Vec::with_capacity(PART_SIZE);
    let mut completed = Vec::new();
    let mut total = 0u64;
    let upload_part = |bytes: Vec<u8>, number: i32| {
        let storage = storage.clone();
        let (key, upload_id) = (key.to_owned(), upload_id.to_owned());
        async move {
            let response = storage
                .client
                .upload_part()
                .bucket(&storage.bucket)
                .key(&key)
                .upload_id(&upload_id)
                .part_number(number)
                .body(ByteStream::from(bytes))
                .send()
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "uploading part {number}: {}",
                        aws_sdk_s3::error::DisplayErrorContext(e)
                    )
                })?;
            anyhow::Ok(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(response.e_tag().map(str::to_owned))
                    .build(),
            )
        }
    };
    while let Some(chunk) = receiver.recv().await {
        total += chunk.len() as u64;
        part.extend_from_slice(&chunk);
        buffered.fetch_sub(chunk.len(), Ordering::SeqCst);
        drop(chunk);
        peak.fetch_max(
            buffered.load(Ordering::SeqCst) + part.len(),
            Ordering::SeqCst,
        );
        if part.len() >= PART_SIZE {
            let number = completed.len() as i32 + 1;
            let full = std::mem::replace(&mut part, Vec::with_capacity(PART_SIZE));
            completed.push(upload_part(full, number).await?);
        }
    }
    writer.await.context("the zip writer panicked")??;
    if !part.is_empty() || completed.is_empty() {
        let number = completed.len() as i32 + 1;
        completed.push(upload_part(std::mem::take(&mut part), number).await?);
    }
    let parts = completed.len() as i32;
    storage
        .client
        .complete_multipart_upload()
        .bucket(&storage.bucket)
        .key(key)
        .upload_id(upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(completed))
                .build(),
        )
        .send()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "completing the upload: {}",
                aws_sdk_s3::error::DisplayErrorContext(e)
            )
        })?;
    Ok(BundleStats {
        bytes: total,
        parts,
        files,
        peak_buffered: peak.load(Ordering::SeqCst),
    })
}

/// A `Write` that hands `CHUNK`-sized pieces to the uploader, blocking while the channel is full.
struct ChannelWriter {
    sender: mpsc::Sender<Vec<u8>>,
    pending: Vec<u8>,
    buffered: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

impl ChannelWriter {
    fn send_pending(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.pending, Vec::with_capacity(CHUNK));
        let now = self.buffered.fetch_add(chunk.len(), Ordering::SeqCst) + chunk.len();
        self.peak.fetch_max(now, Ordering::SeqCst);
        self.sender
            .blocking_send(chunk)
            .map_err(|_| std::io::Error::other("the uploader stopped"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let room = CHUNK - self.pending.len();
        let taken = room.min(bytes.len());
        self.pending.extend_from_slice(&bytes[..taken]);
        if self.pending.len() == CHUNK {
            self.send_pending()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send_pending()
    }
}

async fn json_rows(pool: &PgPool, sql: &'static str, user_id: Uuid) -> anyhow::Result<Vec<u8>> {
    let rows: Vec<Value> = sqlx::query_scalar(sql)
        .bind(user_id)
        .fetch_all(pool)
        .await?;
    Ok(serde_json::to_vec_pretty(&rows)?)
}

async fn collect_entries(pool: &PgPool, user_id: Uuid) -> anyhow::Result<Vec<Entry>> {
    let account: Value = sqlx::query_scalar(
        "SELECT json_build_object('id', id, 'email', email, 'display_name', display_name,
                                  'signed_in_with_google', google_sub IS NOT NULL, 'created_at', created_at)
           FROM users WHERE id = $1",
    )
    .bind(user_id)
    .fetch_one(pool)
    .await?;
    let mut entries = vec![
        Entry { name: "README.txt".into(), content: EntryContent::Bytes(README.as_bytes().to_vec()) },
        Entry { name: "account.json".into(), content: EntryContent::Bytes(serde_json::to_vec_pretty(&account)?) },
        Entry {
            name: "generations.json".into(),
            content: EntryContent::Bytes(
                json_rows(
                    pool,
                    "SELECT json_build_object('id', g.id, 'prompt', g.prompt, 'aspect_ratio', g.aspect_ratio,
                            'resolution', g.resolution, 'model', g.model, 'status', g.status,
                            'failure_reason', g.failure_reason, 'reference_upload_ids', g.reference_upload_ids,
                            'credits', g.credits_reserved, 'created_at', g.created_at, 'submitted_at', g.submitted_at,
                            'finished_at', g.finished_at,
                            'images', coalesce((SELECT json_agg('images/' || g.id || '/' || i.n || '.' ||
                                                      split_part(i.object_key, '.', -1) ORDER BY i.n)
                                                  FROM generated_images i WHERE i.generation_id = g.id), '[]'::json))
                       FROM generations g WHERE g.user_id = $1 AND g.deleted_at IS NULL ORDER BY g.created_at",
                    user_id,
                )
                .await?,
            ),
        },
        Entry {
            name: "usage_log.json".into(),
            content: EntryContent::Bytes(
                json_rows(
                    pool,
                    "SELECT json_build_object('task_id', task_id, 'model', model, 'generation_ms', generation_ms,
                            'succeeded', succeeded, 'at', created_at) FROM usage_log WHERE user_id = $1 ORDER BY id",
                    user_id,
                )
                .await?,
            ),
        },
        Entry {
            name: "credit_ledger.json".into(),
            content: EntryContent::Bytes(
                json_rows(
                    pool,
                    "SELECT json_build_object('kind', kind, 'amount', amount, 'source', business_key, 'at', created_at)
                       FROM credit_ledger WHERE user_id = $1 ORDER BY id",
                    user_id,
                )
                .await?,
            ),
        },
        Entry {
            name: "payments.json".into(),
            content: EntryContent::Bytes(
                json_rows(
                    pool,
                    "SELECT json_build_object('product', product_id, 'amount_minor', amount_minor, 'currency', currency,
                            'paid_at', paid_at, 'refunded_minor', refunded_minor) FROM payments WHERE user_id = $1
                      ORDER BY paid_at",
                    user_id,
                )
                .await?,
            ),
        },
        Entry {
            name: "consents.json".into(),
            content: EntryContent::Bytes(
                json_rows(
                    pool,
                    "SELECT json_build_object('analytics', analytics, 'policy_version', policy_version, 'at', created_at)
                       FROM consent_records WHERE user_id = $1 ORDER BY id",
                    user_id,
                )
                .await?,
            ),
        },
    ];
    let images: Vec<(Uuid, i32, String)> = sqlx::query_as(
        "SELECT i.generation_id, i.n, i.object_key FROM generated_images i JOIN generations g ON g.id = i.generation_id
          WHERE g.user_id = $1 AND g.deleted_at IS NULL ORDER BY g.created_at, i.n",
    )
    .bind(user_id)
    .fetch_all(pool)
    .await?;
    for (generation, n, key) in images {
        let extension = key.rsplit('.').next().unwrap_or("bin").to_owned();
        entries.push(Entry {
            name: format!("images/{generation}/{n}.{extension}"),
            content: EntryContent::Object(key),
        });
    }
    let uploads: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT id, object_key FROM uploads WHERE user_id = $1 ORDER BY created_at")
            .bind(user_id)
            .fetch_all(pool)
            .await?;
    for (id, key) in uploads {
        let extension = key.rsplit('.').next().unwrap_or("bin").to_owned();
        entries.push(Entry {
            name: format!("references/{id}.{extension}"),
            content: EntryContent::Object(key),
        });
    }
    Ok(entries)
}

const README: &str = "Your createimage2 data export
=============================

This archive holds everything createimage2 stores about you (privacy policy, section 5).

account.json        Your account: e-mail address, display name, how you sign in, when you joined.
generations.json    Every generation you kept: prompt, aspect ratio, resolution, model, status, the reason if it
                    failed, reference images used, credits, timings, and the image files in this archive.
usage_log.json      The usage log we keep for support: task id, model, generation time, pass/fail.
credit_ledger.json  Every credit movement on your account: grants, reservations, charges, refunds.
payments.json       Payments you made: product, amount, currency, date. Card details never reach us.
consents.json       Your cookie and analytics choices over time.
images/             Your generated images, one folder per generation.
references/         The reference images you uploaded.

No IP address is stored anywhere, so none appears here. Questions: support@createimage2.com
";
