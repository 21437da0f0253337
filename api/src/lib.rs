//! The web tier: the server-rendered site and the JSON API (axum + maud).
//!
//! Invariant: the api never calls kie.ai, Stripe or SMTP on a request path. It records intents in Postgres
//! and enqueues jobs in the same transaction; workers do everything slow or external.
//! `Api::build(config)` → [`Api::run_until_stopped`]; tests start it on port 0.

mod account;
mod console;
mod error;
mod events;
mod exports;
mod generations;
mod routes;
pub mod site;
mod views;
mod webhooks;

use std::{net::SocketAddr, sync::Arc};

use jobs::{
    config::{Config, GenerationConfig},
    storage::Storage,
    telemetry::{self, Metrics, OpsProbe},
};
use queue::WorkerHealth;
use secrecy::SecretString;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::AppError;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub metrics: Metrics,
    /// Set when workers run in this process (`dev`): readiness then includes them.
    pub worker_health: Option<Arc<WorkerHealth>>,
    /// Whether this process exports the database-derived queue gauges (only `dev`; in production the
    /// scheduler does, so scraping many api replicas does not multiply them).
    pub owns_queue_gauges: bool,
    /// What the generation endpoints need; absent, they answer 503.
    pub pipeline: Option<Arc<ApiPipeline>>,
    /// Generation status changes from Postgres (LISTEN), fanned out to server-sent-event streams.
    pub events: events::Events,
    /// The server-rendered site; absent, only the JSON API and health endpoints are served.
    pub site: Option<Arc<site::SiteState>>,
    /// Verifies Stripe webhooks; absent, `/webhooks/stripe` answers 503 (Stripe retries).
    pub stripe_webhook_secret: Option<SecretString>,
}

/// Settings and clients of the generation endpoints.
pub struct ApiPipeline {
    /// Only signs URLs: bytes never pass through the api.
    pub storage: Storage,
    /// Verifies kie.ai callbacks when set.
    pub kie_webhook_hmac_key: Option<SecretString>,
    pub generation: GenerationConfig,
}

impl AppState {
    pub fn new(pool: PgPool, metrics: Metrics) -> Self {
        Self {
            events: events::Events::new(),
            pool,
            metrics,
            worker_health: None,
            owns_queue_gauges: false,
            pipeline: None,
            site: None,
            stripe_webhook_secret: None,
        }
    }

    pub fn with_stripe_webhook_secret(mut self, secret: SecretString) -> Self {
        self.stripe_webhook_secret = Some(secret);
        self
    }

    pub fn with_site(mut self, site: site::SiteState) -> Self {
        self.site = Some(Arc::new(site));
        self
    }

    pub fn with_pipeline(mut self, pipeline: ApiPipeline) -> Self {
        self.pipeline = Some(Arc::new(pipeline));
        self
    }

    pub fn with_worker_health(mut self, health: Arc<WorkerHealth>) -> Self {
        self.worker_health = Some(health);
        self
    }

    /// This process exports the database-derived queue gauges (`dev` and tests).
    pub fn owning_queue_gauges(mut self) -> Self {
        self.owns_queue_gauges = true;
        self
    }
}

/// A built api, listening but not yet serving.
pub struct Api {
    state: AppState,
    listener: TcpListener,
    ops_listener: Option<TcpListener>,
    /// The ops console's listener and token, when an operator token is configured.
    console: Option<(TcpListener, SecretString)>,
}

impl Api {
    /// Builds with its own pool and metrics, bound to `LISTEN_ADDR` and `METRICS_LISTEN_ADDR`.
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let pool = jobs::db::pool(&config.database)?;
        let state = AppState::new(pool, Metrics::new("api"))
            .with_pipeline(ApiPipeline {
                storage: Storage::new(&config.storage),
                kie_webhook_hmac_key: config.kie.webhook_hmac_key.clone(),
                generation: config.generation.clone(),
            })
            .with_site(site::SiteState::new(
                config.site.clone(),
                config.http.public_base_url.clone(),
                &storage_origin(&config.storage.endpoint),
                config.stripe.is_some(),
            ));
        let state = match config
            .stripe
            .as_ref()
            .and_then(|s| s.webhook_secret.clone())
        {
            Some(secret) => state.with_stripe_webhook_secret(secret),
            None => state,
        };
        let listener = telemetry::bind(config.http.listen).await?;
        let ops_listener = telemetry::bind(config.http.metrics_listen).await?;
        let console = match &config.http.operator_token {
            Some(token) => Some((
                telemetry::bind(config.http.admin_listen).await?,
                token.clone(),
            )),
            None => {
                tracing::info!("OPERATOR_TOKEN is not set: the ops console is off");
                None
            }
        };
        Ok(Self {
            state,
            listener,
            ops_listener: Some(ops_listener),
            console,
        })
    }

    /// Builds from shared parts; without an ops listener the caller serves metrics.
    pub fn with_parts(
        state: AppState,
        listener: TcpListener,
        ops_listener: Option<TcpListener>,
    ) -> Self {
        Self {
            state,
            listener,
            ops_listener,
            console: None,
        }
    }

    /// Serves the ops console on `listener`, behind `operator_token`.
    pub fn with_console(mut self, listener: TcpListener, operator_token: SecretString) -> Self {
        self.console = Some((listener, operator_token));
        self
    }

    pub fn console_addr(&self) -> Option<SocketAddr> {
        self.console.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    pub fn addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown`, then finishes in-flight requests.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        if let Some(listener) = self.ops_listener {
            let probe = Arc::new(ApiProbe(self.state.clone()));
            tokio::spawn(telemetry::serve_ops(listener, probe, shutdown.clone()));
        }
        if let Some((listener, token)) = self.console {
            let console = console::router(self.state.pool.clone(), token);
            let stop = shutdown.clone();
            tokio::spawn(async move {
                if let Err(error) = axum::serve(listener, console)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
                {
                    tracing::error!(error = %error, "ops console stopped");
                }
            });
        }
        tokio::spawn(events::listen(
            self.state.pool.clone(),
            self.state.events.clone(),
            shutdown.clone(),
        ));
        let app = routes::router(self.state);
        axum::serve(
            self.listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
        Ok(())
    }
}

/// The origin (scheme, host, port) of the object store, for the site's Content-Security-Policy.
pub fn storage_origin(endpoint: &str) -> String {
    url::Url::parse(endpoint).map_or_else(
        |_| endpoint.to_owned(),
        |u| u.origin().ascii_serialization(),
    )
}

/// Readiness of the api: the database answers, and in-process workers (if any) are alive.
pub async fn readiness(state: &AppState) -> Result<(), String> {
    if !jobs::db::is_reachable(&state.pool).await {
        return Err("database unreachable".into());
    }
    match &state.worker_health {
        Some(health) => health.readiness(),
        None => Ok(()),
    }
}

struct ApiProbe(AppState);

impl OpsProbe for ApiProbe {
    fn metrics(&self) -> std::pin::Pin<Box<dyn Future<Output = String> + Send>> {
        let state = self.0.clone();
        Box::pin(async move {
            if state.owns_queue_gauges {
                let queues: Vec<&str> = jobs::kinds::registry().queues().collect();
                if let Err(error) = state
                    .metrics
                    .refresh_queue_gauges(&state.pool, &queues)
                    .await
                {
                    tracing::warn!(error = %error, "could not read queue gauges");
                }
            }
            state.metrics.render()
        })
    }

    fn ready(&self) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>> {
        let state = self.0.clone();
        Box::pin(async move { readiness(&state).await })
    }
}
