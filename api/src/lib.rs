//! The web tier: the server-rendered site and the JSON API (axum + maud).
//!
//! Invariant: the api never calls kie.ai, Stripe or SMTP on a request path. It records intents in Postgres
//! and enqueues jobs in the same transaction; workers do everything slow or external.
//! `Api::build(config)` → [`Api::run_until_stopped`]; tests start it on port 0.

mod account;
mod caller;
mod console;
mod error;
mod events;
mod exports;
mod extract;
mod generations;
pub mod openapi;
mod routes;
pub mod site;
mod views;
mod webhooks;

use std::{future::IntoFuture, net::SocketAddr, sync::Arc, time::Duration};

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

pub use caller::ApiBudgets;
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
    /// Where the LISTEN connection for [`events`] comes from: a direct connection when `pool` goes through a
    /// transaction-mode pooler.
    pub listen_pool: PgPool,
    /// The drain, as the handlers see it (see [`Api::run_until_stopped`]).
    pub drain: Drain,
    /// The queues of the job registry the fleet runs (what the ops console lists and acts on).
    pub queues: Arc<[&'static str]>,
    /// The JSON API's request budgets.
    pub api_budgets: ApiBudgets,
}

/// The phases of the api's drain. Cheap to clone.
#[derive(Clone, Default)]
pub struct Drain {
    /// Cancelled at SIGTERM: `/readyz` answers 503 from then on.
    pub not_ready: CancellationToken,
    /// Cancelled when the listener closes: open event streams send a final `shutdown` event and end.
    pub streams_end: CancellationToken,
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
        // "No stream open" is a value, not a missing series.
        for route in events::ROUTES {
            metrics.sse_streams.with_label_values(&[route]);
        }
        Self {
            events: events::Events::new(),
            listen_pool: pool.clone(),
            pool,
            metrics,
            worker_health: None,
            owns_queue_gauges: false,
            pipeline: None,
            site: None,
            stripe_webhook_secret: None,
            drain: Drain::default(),
            queues: jobs::kinds::registry().queues().collect(),
            api_budgets: ApiBudgets::default(),
        }
    }

    pub fn with_api_budgets(mut self, budgets: ApiBudgets) -> Self {
        self.api_budgets = budgets;
        self
    }

    /// The fleet runs these queues (a registry with more kinds than production's, as in tests).
    pub fn with_queues(mut self, queues: impl IntoIterator<Item = &'static str>) -> Self {
        self.queues = queues.into_iter().collect();
        self
    }

    /// LISTENs through `pool` (a direct connection) rather than the query pool.
    pub fn with_listen_pool(mut self, pool: PgPool) -> Self {
        self.listen_pool = pool;
        self
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
    drain_readiness: Duration,
    shutdown_grace: Duration,
}

impl Api {
    /// Builds with its own pool and metrics, bound to `LISTEN_ADDR` and `METRICS_LISTEN_ADDR`.
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        raise_open_files_limit();
        let pool = jobs::db::pool(&config.database)?;
        let metrics = Metrics::new("api");
        metrics.watch_pool(&pool);
        let state = AppState::new(pool, metrics)
            .with_api_budgets(ApiBudgets::from_config(&config.http))
            .with_listen_pool(jobs::db::listen_pool(&config.database)?)
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
            drain_readiness: config.http.drain_readiness,
            shutdown_grace: config.http.shutdown_grace,
        })
    }

    /// Builds from shared parts; without an ops listener the caller serves metrics.
    pub fn with_parts(
        state: AppState,
        listener: TcpListener,
        ops_listener: Option<TcpListener>,
    ) -> Self {
        // The caller (`dev`, tests, benchmarks) sits behind no load balancer: no readiness window unless asked.
        Self {
            state,
            listener,
            ops_listener,
            console: None,
            drain_readiness: Duration::ZERO,
            shutdown_grace: jobs::config::HttpConfig::default().shutdown_grace,
        }
    }

    /// How long `/readyz` answers 503 before the listener closes, and how long requests in flight then get.
    pub fn with_drain(mut self, readiness: Duration, grace: Duration) -> Self {
        self.drain_readiness = readiness;
        self.shutdown_grace = grace;
        self
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

    /// Serves until `shutdown`, then drains in three steps: `/readyz` answers 503 for the readiness window
    /// (load balancers and probes take this replica out while it still serves); then open event streams get a
    /// final `shutdown` event and end (clients reconnect elsewhere) and the listener closes; then requests in
    /// flight get the shutdown grace, after which the rest are dropped and it returns anyway.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let drain = self.state.drain.clone();
        // The ops and console listeners stay up through the drain (readiness must be answered), and close with
        // the main one.
        let closed = CancellationToken::new();
        if let Some(listener) = self.ops_listener {
            let probe = Arc::new(ApiProbe(self.state.clone()));
            tokio::spawn(telemetry::serve_ops(listener, probe, closed.clone()));
        }
        if let Some((listener, token)) = self.console {
            let console =
                console::router(self.state.pool.clone(), self.state.queues.clone(), token);
            let stop = closed.clone();
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
            self.state.listen_pool.clone(),
            self.state.events.clone(),
            closed.clone(),
        ));
        let app = routes::router(self.state);
        let close_listener = CancellationToken::new();
        let mut server = tokio::spawn(
            axum::serve(
                self.listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(close_listener.clone().cancelled_owned())
            .into_future(),
        );
        tokio::select! {
            () = shutdown.cancelled() => {}
            result = &mut server => {
                closed.cancel();
                return Ok(result??);
            }
        }
        drain.not_ready.cancel();
        tracing::info!(window = ?self.drain_readiness, "draining: /readyz answers 503");
        tokio::time::sleep(self.drain_readiness).await;
        drain.streams_end.cancel();
        close_listener.cancel();
        tracing::info!(grace = ?self.shutdown_grace, "listener closed; finishing requests in flight");
        let result = match tokio::time::timeout(self.shutdown_grace, &mut server).await {
            Ok(result) => result?.map_err(anyhow::Error::from),
            Err(_) => {
                tracing::warn!("requests still running after the shutdown grace; dropping them");
                server.abort();
                Ok(())
            }
        };
        closed.cancel();
        result
    }
}

/// Raises this process's open-files soft limit to its hard limit and logs both. Every open connection is a
/// descriptor, and an api with thousands of live-status streams open (`GET …/events`) holds one per stream: the
/// usual soft limit of 1024 would refuse connections long before memory or CPU run short. The hard limit is the
/// ceiling the deploy sets (systemd `LimitNOFILE=`, the container runtime's `nofile`); see deploy/README.md.
/// Returns the soft and hard limits now in force (`None` where the platform refused to say).
pub fn raise_open_files_limit() -> Option<(u64, u64)> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(error) => {
            tracing::warn!(error = %error, "could not read the open-files limit");
            return None;
        }
    };
    if soft >= hard {
        tracing::info!(
            open_files.soft = soft,
            open_files.hard = hard,
            "open-files limit"
        );
        return Some((soft, hard));
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => {
            tracing::info!(
                open_files.was = soft,
                open_files.soft = hard,
                open_files.hard = hard,
                "open-files limit raised to the hard limit"
            );
            Some((hard, hard))
        }
        Err(error) => {
            tracing::warn!(error = %error, open_files.soft = soft, open_files.hard = hard, "could not raise the open-files limit");
            Some((soft, hard))
        }
    }
}

/// The origin (scheme, host, port) of the object store, for the site's Content-Security-Policy.
pub fn storage_origin(endpoint: &str) -> String {
    url::Url::parse(endpoint).map_or_else(
        |_| endpoint.to_owned(),
        |u| u.origin().ascii_serialization(),
    )
}

/// Readiness of the api: not draining, the database answers, and in-process workers (if any) are alive.
pub async fn readiness(state: &AppState) -> Result<(), String> {
    if state.drain.not_ready.is_cancelled() {
        return Err("draining".into());
    }
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
                // `dev` and tests: this process plays the scheduler's part.
                state
                    .metrics
                    .refresh_database_gauges(
                        &state.pool,
                        &state.queues,
                        &jobs::schedule::schedules(),
                    )
                    .await;
            }
            state.metrics.render()
        })
    }

    fn ready(&self) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>> {
        let state = self.0.clone();
        Box::pin(async move { readiness(&state).await })
    }
}
