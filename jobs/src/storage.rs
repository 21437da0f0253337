//! The object store client (Cloudflare R2 in production, s3s-fs in tests and `dev`), through aws-sdk-s3.

use aws_sdk_s3::{
    Client,
    config::{
        BehaviorVersion, Credentials, Region, RequestChecksumCalculation,
        ResponseChecksumValidation,
    },
};
use std::time::Duration;

use aws_sdk_s3::{
    presigning::PresigningConfig,
    primitives::ByteStream,
    types::{Delete, ObjectIdentifier},
};
use secrecy::ExposeSecret;

use crate::config::StorageConfig;

/// A bucket and the client that reaches it.
#[derive(Clone)]
pub struct Storage {
    pub client: Client,
    pub bucket: String,
    /// Counts and times each call as upstream `s3`, when set.
    metrics: Option<crate::telemetry::Metrics>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("bucket", &self.bucket)
            .finish()
    }
}

impl Storage {
    pub fn new(config: &StorageConfig) -> Self {
        let credentials = Credentials::new(
            &config.access_key_id,
            config.secret_access_key.expose_secret(),
            None,
            None,
            "createimage2-config",
        );
        let s3_config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .endpoint_url(&config.endpoint)
            .credentials_provider(credentials)
            // R2 and local servers: path-style addressing, checksums only where the API requires them.
            .force_path_style(true)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .build();
        Self {
            client: Client::from_conf(s3_config),
            bucket: config.bucket.clone(),
            metrics: None,
        }
    }

    /// Records every bucket call in `createimage2_upstream_*{upstream="s3"}`.
    pub fn with_metrics(mut self, metrics: crate::telemetry::Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn observe<T, E>(&self, operation: &str, started: std::time::Instant, result: &Result<T, E>) {
        if let Some(metrics) = &self.metrics {
            let outcome = if result.is_ok() { "ok" } else { "error" };
            metrics.observe_upstream("s3", operation, outcome, started);
        }
    }

    /// Creates the bucket if it does not exist (dev and tests; production buckets are provisioned).
    pub async fn ensure_bucket(&self) -> anyhow::Result<()> {
        if self
            .client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .is_ok()
        {
            return Ok(());
        }
        self.client
            .create_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|error| {
                anyhow::anyhow!(
                    "creating bucket {}: {}",
                    self.bucket,
                    aws_sdk_s3::error::DisplayErrorContext(error)
                )
            })?;
        Ok(())
    }
}

/// An object's size and type, from HEAD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub byte_size: i64,
    pub content_type: Option<String>,
}

fn sdk_error(what: &str, error: impl std::error::Error) -> anyhow::Error {
    anyhow::anyhow!("{what}: {}", aws_sdk_s3::error::DisplayErrorContext(error))
}

impl Storage {
    /// HEAD; `None` when the object does not exist.
    pub async fn head(&self, key: &str) -> anyhow::Result<Option<ObjectInfo>> {
        let started = std::time::Instant::now();
        let result = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await;
        let missing = matches!(&result, Err(error) if error.as_service_error().is_some_and(|e| e.is_not_found()));
        let counted: Result<(), ()> = if missing || result.is_ok() {
            Ok(())
        } else {
            Err(())
        };
        self.observe("head_object", started, &counted);
        match result {
            Ok(head) => Ok(Some(ObjectInfo {
                byte_size: head.content_length().unwrap_or(0),
                content_type: head.content_type().map(str::to_owned),
            })),
            Err(error) if error.as_service_error().is_some_and(|e| e.is_not_found()) => Ok(None),
            Err(error) => Err(sdk_error(&format!("HEAD {key}"), error)),
        }
    }

    /// A presigned GET URL, valid for `ttl`.
    pub async fn presign_get(&self, key: &str, ttl: Duration) -> anyhow::Result<String> {
        let config = PresigningConfig::expires_in(ttl)?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(|e| sdk_error("presigning GET", e))?;
        Ok(request.uri().to_owned())
    }

    /// A presigned GET URL that makes the browser save the object as `filename` (Content-Disposition).
    pub async fn presign_download(
        &self,
        key: &str,
        filename: &str,
        ttl: Duration,
    ) -> anyhow::Result<String> {
        let config = PresigningConfig::expires_in(ttl)?;
        let safe: String = filename
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
            .collect();
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .response_content_disposition(format!("attachment; filename=\"{safe}\""))
            .presigned(config)
            .await
            .map_err(|e| sdk_error("presigning GET", e))?;
        Ok(request.uri().to_owned())
    }

    /// Copies an object inside the bucket (server-side: no bytes pass through this process).
    pub async fn copy(&self, from: &str, to: &str) -> anyhow::Result<()> {
        self.client
            .copy_object()
            .bucket(&self.bucket)
            .copy_source(format!("{}/{from}", self.bucket))
            .key(to)
            .send()
            .await
            .map_err(|e| sdk_error(&format!("COPY {from}"), e))?;
        Ok(())
    }

    /// A presigned PUT URL for exactly this content type and length, valid for `ttl`. The uploader must send
    /// the same `Content-Type` and `Content-Length` headers.
    pub async fn presign_put(
        &self,
        key: &str,
        content_type: &str,
        length: i64,
        ttl: Duration,
    ) -> anyhow::Result<String> {
        let config = PresigningConfig::expires_in(ttl)?;
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .content_length(length)
            .presigned(config)
            .await
            .map_err(|e| sdk_error("presigning PUT", e))?;
        Ok(request.uri().to_owned())
    }

    pub async fn put(&self, key: &str, bytes: Vec<u8>, content_type: &str) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        let result = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(bytes))
            .send()
            .await;
        self.observe("put_object", started, &result);
        result.map_err(|e| sdk_error(&format!("PUT {key}"), e))?;
        Ok(())
    }

    pub async fn get_bytes(&self, key: &str) -> anyhow::Result<Vec<u8>> {
        let object = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| sdk_error(&format!("GET {key}"), e))?;
        Ok(object.body.collect().await?.into_bytes().to_vec())
    }

    /// Deletes objects, 1,000 per request (the S3 maximum). Missing objects are not an error.
    pub async fn delete_many(&self, keys: &[String]) -> anyhow::Result<()> {
        for chunk in keys.chunks(1000) {
            let objects = chunk
                .iter()
                .map(|key| ObjectIdentifier::builder().key(key).build())
                .collect::<Result<Vec<_>, _>>()?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()?;
            self.client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| sdk_error("DeleteObjects", e))?;
        }
        Ok(())
    }
}
