//! The object store client (Cloudflare R2 in production, s3s-fs in tests and `dev`), through aws-sdk-s3.

use aws_sdk_s3::{
    Client,
    config::{
        BehaviorVersion, Credentials, Region, RequestChecksumCalculation,
        ResponseChecksumValidation,
    },
};
use secrecy::ExposeSecret;

use crate::config::StorageConfig;

/// A bucket and the client that reaches it.
#[derive(Clone, Debug)]
pub struct Storage {
    pub client: Client,
    pub bucket: String,
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
