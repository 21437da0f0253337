//! The Stripe client: customers, Checkout and portal sessions (async-stripe), subscription and event reads, and
//! customer redaction on account deletion. Production talks to `STRIPE_API_BASE` (https://api.stripe.com); tests
//! and `dev` point it at `fakes::stripe`.

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

/// The Stripe client: async-stripe for the calls that create things (typed requests, idempotency keys), and
/// plain JSON over reqwest for reads whose result is processed as JSON (subscriptions, the events list) and
/// for customer deletion.
#[derive(Clone)]
pub struct StripeClient {
    http: reqwest::Client,
    api: async_stripe_client::Client,
    config: StripeConfig,
    metrics: Metrics,
}

/// What a Checkout Session is created with.
#[derive(Debug, Clone)]
pub struct CheckoutRequest {
    pub subscription: bool,
    pub customer: String,
    pub client_reference_id: String,
    pub price: String,
    /// On the session, and on the subscription (plans) or payment intent (packs) it creates.
    pub metadata: std::collections::HashMap<String, String>,
    pub success_url: String,
    pub cancel_url: String,
}

impl StripeClient {
    pub fn new(config: StripeConfig, metrics: Metrics) -> Self {
        // The binary links two rustls crypto providers (aws-sdk's and reqwest's); async-stripe's connector
        // needs the process default chosen. A second call is a harmless no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .expect("a reqwest client with a timeout builds");
        let api = async_stripe_client::ClientBuilder::new(config.secret_key.expose_secret())
            .url(config.api_base.as_str())
            .build()
            .expect("a Stripe client builds from a parsed URL");
        Self {
            http,
            api,
            config,
            metrics,
        }
    }

    fn idempotent(key: &str) -> Result<async_stripe_client::RequestStrategy, StripeError> {
        async_stripe_client::IdempotencyKey::new(key)
            .map(async_stripe_client::RequestStrategy::Idempotent)
            .map_err(|e| StripeError::Rejected(format!("idempotency key: {e:?}")))
    }

    fn observe<T>(
        &self,
        operation: &'static str,
        started: Instant,
        result: Result<T, async_stripe_client::StripeError>,
    ) -> Result<T, StripeError> {
        let (outcome, mapped) = match result {
            Ok(value) => ("ok", Ok(value)),
            Err(async_stripe_client::StripeError::Stripe(error, status)) => {
                let message = format!(
                    "{status}: {}",
                    error.message.as_deref().unwrap_or("no message")
                );
                let retryable = !(400..500).contains(&status) || status == 409 || status == 429;
                (
                    "http_error",
                    Err(if retryable {
                        StripeError::Unavailable(message)
                    } else {
                        StripeError::Rejected(message)
                    }),
                )
            }
            Err(other) => (
                "transport_error",
                Err(StripeError::Unavailable(other.to_string())),
            ),
        };
        self.metrics
            .observe_upstream("stripe", operation, outcome, started);
        mapped
    }

    /// Creates a customer for `user` (idempotency key `customer:<user>`); returns its id.
    pub async fn create_customer(
        &self,
        email: &str,
        user: uuid::Uuid,
    ) -> Result<String, StripeError> {
        use async_stripe_client::StripeRequest as _;
        let started = Instant::now();
        let result = stripe_core::customer::CreateCustomer::new()
            .email(email)
            .metadata(std::collections::HashMap::from([(
                "user".to_owned(),
                user.to_string(),
            )]))
            .customize()
            .request_strategy(Self::idempotent(&format!("customer:{user}"))?)
            .send(&self.api)
            .await;
        self.observe("create_customer", started, result)
            .map(|customer| customer.id.as_str().to_owned())
    }

    /// Creates a Checkout Session; returns its id and URL.
    pub async fn create_checkout_session(
        &self,
        request: CheckoutRequest,
        idempotency_key: &str,
    ) -> Result<(String, String), StripeError> {
        use async_stripe_client::StripeRequest as _;
        use stripe_checkout::{CheckoutSessionMode, checkout_session as cs};
        let mut create = cs::CreateCheckoutSession::new()
            .mode(if request.subscription {
                CheckoutSessionMode::Subscription
            } else {
                CheckoutSessionMode::Payment
            })
            .customer(request.customer)
            .client_reference_id(request.client_reference_id)
            .line_items(vec![cs::CreateCheckoutSessionLineItems {
                price: Some(request.price),
                quantity: Some(1),
                ..Default::default()
            }])
            .metadata(request.metadata.clone())
            .success_url(request.success_url)
            .cancel_url(request.cancel_url);
        create = if request.subscription {
            create.subscription_data(cs::CreateCheckoutSessionSubscriptionData {
                metadata: Some(request.metadata),
                ..Default::default()
            })
        } else {
            create.payment_intent_data(cs::CreateCheckoutSessionPaymentIntentData {
                metadata: Some(request.metadata),
                ..Default::default()
            })
        };
        let started = Instant::now();
        let result = create
            .customize()
            .request_strategy(Self::idempotent(idempotency_key)?)
            .send(&self.api)
            .await;
        let session = self.observe("create_checkout_session", started, result)?;
        let url = session
            .url
            .ok_or_else(|| StripeError::Unavailable("a session without a URL".into()))?;
        Ok((session.id.as_str().to_owned(), url))
    }

    /// Creates a billing-portal session for `customer`; returns its id and URL.
    pub async fn create_portal_session(
        &self,
        customer: &str,
        return_url: &str,
        idempotency_key: &str,
    ) -> Result<(String, String), StripeError> {
        use async_stripe_client::StripeRequest as _;
        let started = Instant::now();
        let result = stripe_billing::billing_portal_session::CreateBillingPortalSession::new()
            .customer(customer)
            .return_url(return_url)
            .customize()
            .request_strategy(Self::idempotent(idempotency_key)?)
            .send(&self.api)
            .await;
        let session = self.observe("create_portal_session", started, result)?;
        Ok((session.id.as_str().to_owned(), session.url))
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
