//! The Stripe client, as far as the code needs it today (customer redaction on account deletion). Production
//! talks to `STRIPE_API_BASE` (https://api.stripe.com); tests and `dev` point it at `fakes::stripe`.

use std::time::Instant;

use secrecy::{ExposeSecret, SecretString};

use crate::{
    config::{ConfigError, Source},
    telemetry::Metrics,
};

/// `STRIPE_SECRET_KEY` (optional: without it nothing calls Stripe) and `STRIPE_API_BASE`.
#[derive(Debug, Clone)]
pub struct StripeConfig {
    pub api_base: url::Url,
    pub secret_key: SecretString,
}

impl StripeConfig {
    pub fn from_source<S: Source>(source: &S) -> Result<Option<Self>, ConfigError> {
        let Some(secret_key) = source.get("STRIPE_SECRET_KEY") else {
            return Ok(None);
        };
        let base = source
            .get("STRIPE_API_BASE")
            .unwrap_or_else(|| "https://api.stripe.com".into());
        let api_base = url::Url::parse(&base).map_err(|error| ConfigError::Invalid {
            name: "STRIPE_API_BASE",
            reason: error.to_string(),
        })?;
        Ok(Some(Self {
            api_base,
            secret_key: secret_key.into(),
        }))
    }
}

#[derive(Clone)]
pub struct StripeClient {
    http: reqwest::Client,
    config: StripeConfig,
    metrics: Metrics,
}

impl StripeClient {
    pub fn new(config: StripeConfig, metrics: Metrics) -> Self {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .expect("a reqwest client with a timeout builds");
        Self {
            http,
            config,
            metrics,
        }
    }

    /// Deletes (redacts) a customer. A customer Stripe no longer knows counts as done, so re-runs succeed.
    pub async fn delete_customer(&self, customer_id: &str) -> anyhow::Result<()> {
        let url = self
            .config
            .api_base
            .join(&format!("/v1/customers/{customer_id}"))?;
        let started = Instant::now();
        let result = self
            .http
            .delete(url)
            .bearer_auth(self.config.secret_key.expose_secret())
            .send()
            .await;
        let outcome = match &result {
            Ok(r) if r.status().is_success() || r.status() == reqwest::StatusCode::NOT_FOUND => {
                "ok"
            }
            Ok(_) => "http_error",
            Err(_) => "transport_error",
        };
        self.metrics
            .observe_upstream("stripe", "delete_customer", outcome, started);
        let response = result?;
        let status = response.status();
        if status.is_success() || status == reqwest::StatusCode::NOT_FOUND {
            return Ok(());
        }
        anyhow::bail!(
            "Stripe answered {status} deleting customer {customer_id}: {}",
            response.text().await.unwrap_or_default()
        )
    }
}
