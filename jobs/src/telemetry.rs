//! Metrics, logs, and the small ops listener (`/metrics`, `/healthz`, `/readyz`) every role serves.
//!
//! Metrics live in a per-process [`Metrics`] (its own `prometheus::Registry`, so tests can run several apps
//! in one process); the queue runtime's series ([`queue::QueueMetrics`]) are registered on the same registry
//! under the `createimage2` namespace. Gauges read from the database (queue depth and age) are refreshed in one
//! place, [`Metrics::refresh_queue_gauges`], by one grouped query, and only by the role that owns them (see
//! ARCHITECTURE.md): scraping N workers does not multiply them.

use std::{convert::Infallible, future::Future, net::SocketAddr, pin::Pin, sync::Arc};

use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
    core::Collector,
};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::LogFormat;

// Latency buckets for jobs, waits and upstream calls: 1 ms to 10 min.
use queue::metrics::JOB_BUCKETS;
/// Latency buckets for HTTP requests: 0.5 ms to 10 s.
const HTTP_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process's metrics. Cheap to clone.
#[derive(Clone)]
pub struct Metrics(Arc<MetricSet>);

impl std::ops::Deref for Metrics {
    type Target = MetricSet;
    fn deref(&self) -> &MetricSet {
        &self.0
    }
}

/// Every metric the code emits. `dashboards/README.md` lists them with their meaning.
pub struct MetricSet {
    pub registry: Registry,
    /// The queue runtime's series and the queue gauges (`createimage2_job*`, `createimage2_workers_alive`).
    pub queue: queue::QueueMetrics,
    pub http_requests_total: IntCounterVec,
    pub http_request_duration_seconds: HistogramVec,
    pub upstream_requests_total: IntCounterVec,
    pub upstream_request_duration_seconds: HistogramVec,
    pub upstream_rate_limit_wait_seconds: HistogramVec,
    pub upstream_paused: IntGaugeVec,
    pub generations_total: IntCounterVec,
    pub generation_seconds: HistogramVec,
    pub credits_total: IntCounterVec,
    pub sign_ins_total: IntCounterVec,
    pub trial_checks_total: IntCounterVec,
    pub stripe_webhooks_total: IntCounterVec,
    pub stripe_events_refused_total: IntCounterVec,
    pub build_info: IntGaugeVec,
}

fn register<C: Collector + Clone + 'static>(registry: &Registry, collector: C) -> C {
    registry
        .register(Box::new(collector.clone()))
        .expect("metric names are unique");
    collector
}

impl Metrics {
    /// A fresh set for a process playing `role` (api, worker, scheduler, dev).
    pub fn new(role: &str) -> Self {
        let registry = Registry::new();
        let r = &registry;
        let job_histogram = |name: &str, help: &str, labels: &[&str]| {
            register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(JOB_BUCKETS.to_vec()),
                    labels,
                )
                .unwrap(),
            )
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(
                r,
                IntCounterVec::new(Opts::new(name, help), labels).unwrap(),
            )
        };
        let metrics = MetricSet {
            queue: queue::QueueMetrics::register(r, "createimage2")
                .expect("queue metric names are unique"),
            http_requests_total: counter(
                "http_requests_total",
                "HTTP requests by method, route template and status.",
                &["method", "route", "status"],
            ),
            http_request_duration_seconds: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new("http_request_duration_seconds", "HTTP request latency.")
                        .buckets(HTTP_BUCKETS.to_vec()),
                    &["method", "route", "status"],
                )
                .unwrap(),
            ),
            upstream_requests_total: counter(
                "createimage2_upstream_requests_total",
                "Requests to external services by upstream, operation and outcome.",
                &["upstream", "operation", "outcome"],
            ),
            upstream_request_duration_seconds: job_histogram(
                "createimage2_upstream_request_duration_seconds",
                "Latency of requests to external services.",
                &["upstream", "operation", "outcome"],
            ),
            upstream_rate_limit_wait_seconds: job_histogram(
                "createimage2_upstream_rate_limit_wait_seconds",
                "How long work was deferred because the fleet-wide upstream budget was used up.",
                &["upstream"],
            ),
            upstream_paused: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "createimage2_upstream_paused",
                        "1 while submissions to an upstream are paused (account-level error or operator).",
                    ),
                    &["upstream"],
                )
                .unwrap(),
            ),
            generations_total: counter(
                "createimage2_generations_total",
                "Generations finished, by outcome (succeeded, failed) and resolution.",
                &["outcome", "resolution"],
            ),
            generation_seconds: job_histogram(
                "createimage2_generation_seconds",
                "Intent to image stored (or to failure), by outcome and resolution.",
                &["outcome", "resolution"],
            ),
            credits_total: counter(
                "createimage2_credits_total",
                "Credits moved through the ledger, by kind (granted, reserved, settled, refunded, clawed_back).",
                &["kind"],
            ),
            sign_ins_total: counter(
                "createimage2_sign_ins_total",
                "Completed sign-ins, by kind (sign_in, sign_up).",
                &["kind"],
            ),
            trial_checks_total: counter(
                "createimage2_trial_checks_total",
                "No-signup trial requests, by outcome (started, refused_repeat, turnstile_failed, turnstile_error).",
                &["outcome"],
            ),
            stripe_webhooks_total: counter(
                "createimage2_stripe_webhooks_total",
                "Stripe webhook deliveries, by outcome (recorded, duplicate, bad_signature, stale, malformed).",
                &["outcome"],
            ),
            stripe_events_refused_total: counter(
                "createimage2_stripe_events_refused_total",
                "Stripe events left unprocessed because their API version is not one the code reads, by type and version.",
                &["type", "api_version"],
            ),
            build_info: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "createimage2_build_info",
                        "Always 1; labels name the build and the role.",
                    ),
                    &["version", "role"],
                )
                .unwrap(),
            ),
            registry,
        };
        metrics
            .build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), role])
            .set(1);
        // Outcomes exist from the start (at zero), so "none refused" is a value, not a missing series.
        for outcome in [
            "recorded",
            "duplicate",
            "bad_signature",
            "stale",
            "malformed",
        ] {
            metrics.stripe_webhooks_total.with_label_values(&[outcome]);
        }
        for outcome in [
            "started",
            "refused_repeat",
            "turnstile_failed",
            "turnstile_error",
        ] {
            metrics.trial_checks_total.with_label_values(&[outcome]);
        }
        for kind in ["sign_in", "sign_up"] {
            metrics.sign_ins_total.with_label_values(&[kind]);
        }
        // Versions cannot be known ahead; one zero series with empty labels (absent, to Prometheus) keeps
        // "nothing refused" a value.
        metrics
            .stripe_events_refused_total
            .with_label_values(&["", ""]);
        Self(Arc::new(metrics))
    }

    /// Reads queue depth by state and the oldest waiting age from the database into the gauges (see
    /// [`queue::QueueMetrics::refresh_queue_gauges`]).
    pub async fn refresh_queue_gauges(
        &self,
        pool: &PgPool,
        known_queues: &[&str],
    ) -> sqlx::Result<()> {
        self.queue.refresh_queue_gauges(pool, known_queues).await
    }

    /// Counts and times one call to an external service (`createimage2_upstream_*`).
    pub fn observe_upstream(
        &self,
        upstream: &str,
        operation: &str,
        outcome: &str,
        started: std::time::Instant,
    ) {
        let labels = [upstream, operation, outcome];
        self.upstream_requests_total
            .with_label_values(&labels)
            .inc();
        self.upstream_request_duration_seconds
            .with_label_values(&labels)
            .observe(started.elapsed().as_secs_f64());
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding cannot fail");
        String::from_utf8(buffer).expect("prometheus text is UTF-8")
    }
}

/// Installs the global log subscriber: JSON lines in production, readable lines for people. `RUST_LOG`
/// filters (default `info`). Safe to call more than once (later calls are ignored).
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let result = match format {
        LogFormat::Json => fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_env_filter(filter)
            .try_init(),
        LogFormat::Pretty => fmt().with_env_filter(filter).try_init(),
    };
    drop(result);
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What the ops listener asks of its role.
pub trait OpsProbe: Send + Sync + 'static {
    /// The metrics page (may refresh database gauges first).
    fn metrics(&self) -> BoxFuture<String>;
    /// Ready to serve: database reachable, workers alive, not draining. `Err` says why not.
    fn ready(&self) -> BoxFuture<Result<(), String>>;
}

/// Serves `/metrics`, `/healthz` (the process is up) and `/readyz` on `listener` until `shutdown`.
pub async fn serve_ops(
    listener: TcpListener,
    probe: Arc<dyn OpsProbe>,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, _) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(error = %error, "ops listener accept failed");
                    continue;
                }
            },
        };
        let probe = probe.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let probe = probe.clone();
                async move { Ok::<_, Infallible>(answer(request.uri().path(), &*probe).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(path: &str, probe: &dyn OpsProbe) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            probe.metrics().await,
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/readyz" => match probe.ready().await {
            Ok(()) => (StatusCode::OK, "text/plain", "ready\n".to_owned()),
            Err(reason) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {reason}\n"),
            ),
        },
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

/// Binds a listener, with the address in the error.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context as _;
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))
}
