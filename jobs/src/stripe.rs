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
    /// `STRIPE_WEBHOOK_SECRET` (`whsec_…`): the api refuses webhooks without it.
    pub webhook_secret: Option<SecretString>,
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
            webhook_secret: source.get("STRIPE_WEBHOOK_SECRET").map(SecretString::from),
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

    /// `POST` a form to the Stripe API with an `Idempotency-Key` (a retry with the same key returns the first
    /// result). A 4xx other than 409/429 is [`StripeError::Rejected`]: retrying will not help.
    pub async fn post_form(
        &self,
        path: &str,
        params: &[(String, String)],
        idempotency_key: &str,
        operation: &'static str,
    ) -> Result<serde_json::Value, StripeError> {
        let url = self
            .config
            .api_base
            .join(path)
            .map_err(|e| StripeError::Unavailable(e.to_string()))?;
        let started = Instant::now();
        let result = self
            .http
            .post(url)
            .bearer_auth(self.config.secret_key.expose_secret())
            .header("Idempotency-Key", idempotency_key)
            .header("Stripe-Version", API_VERSION)
            .form(params)
            .send()
            .await;
        let outcome = match &result {
            Ok(r) if r.status().is_success() => "ok",
            Ok(_) => "http_error",
            Err(_) => "transport_error",
        };
        self.metrics
            .observe_upstream("stripe", operation, outcome, started);
        let response = result.map_err(|e| StripeError::Unavailable(e.to_string()))?;
        let status = response.status();
        let body: serde_json::Value = response
            .json()
            .await
            .map_err(|e| StripeError::Unavailable(format!("unreadable answer ({status}): {e}")))?;
        if status.is_success() {
            return Ok(body);
        }
        let message = body["error"]["message"]
            .as_str()
            .unwrap_or("no message")
            .to_owned();
        if status.is_client_error()
            && status != reqwest::StatusCode::CONFLICT
            && status != reqwest::StatusCode::TOO_MANY_REQUESTS
        {
            Err(StripeError::Rejected(format!("{status}: {message}")))
        } else {
            Err(StripeError::Unavailable(format!("{status}: {message}")))
        }
    }

    /// `GET` an object from the Stripe API.
    pub async fn get(
        &self,
        path: &str,
        operation: &'static str,
    ) -> Result<serde_json::Value, StripeError> {
        let url = self
            .config
            .api_base
            .join(path)
            .map_err(|e| StripeError::Unavailable(e.to_string()))?;
        let started = Instant::now();
        let result = self
            .http
            .get(url)
            .bearer_auth(self.config.secret_key.expose_secret())
            .header("Stripe-Version", API_VERSION)
            .send()
            .await;
        let outcome = match &result {
            Ok(r) if r.status().is_success() => "ok",
            Ok(_) => "http_error",
            Err(_) => "transport_error",
        };
        self.metrics
            .observe_upstream("stripe", operation, outcome, started);
        let response = result.map_err(|e| StripeError::Unavailable(e.to_string()))?;
        let status = response.status();
        let body: serde_json::Value = response
            .json()
            .await
            .map_err(|e| StripeError::Unavailable(format!("unreadable answer ({status}): {e}")))?;
        if status.is_success() {
            Ok(body)
        } else if status.is_client_error() && status != reqwest::StatusCode::TOO_MANY_REQUESTS {
            Err(StripeError::Rejected(format!(
                "{status}: {}",
                body["error"]["message"]
            )))
        } else {
            Err(StripeError::Unavailable(format!(
                "{status}: {}",
                body["error"]["message"]
            )))
        }
    }
}

/// The Stripe API version this code speaks (the one async-stripe 1.0.0-rc.10 pins).
pub const API_VERSION: &str = "2026-09-30.endive";

/// A failed Stripe call.
#[derive(Debug, thiserror::Error)]
pub enum StripeError {
    /// Stripe refused the request as invalid: retrying the same request will not help.
    #[error("Stripe rejected the request: {0}")]
    Rejected(String),
    /// Network trouble, 5xx, 409 or 429: retry later (with the same idempotency key).
    #[error("Stripe is unavailable: {0}")]
    Unavailable(String),
}
