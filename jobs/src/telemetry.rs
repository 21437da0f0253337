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
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder, core::Collector,
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
    /// Fleet gauges read from the database by the role that owns them ([`Metrics::refresh_fleet_gauges`]).
    pub upstream_paused: IntGaugeVec,
    pub upstream_credit_balance: GaugeVec,
    pub queue_paused: IntGaugeVec,
    pub schedule_last_success_timestamp_seconds: GaugeVec,
    pub schedule_interval_seconds: GaugeVec,
    pub generations_total: IntCounterVec,
    pub generation_failures_total: IntCounterVec,
    pub generation_seconds: HistogramVec,
    pub credits_total: IntCounterVec,
    pub sign_ins_total: IntCounterVec,
    pub trial_checks_total: IntCounterVec,
    pub stripe_webhooks_total: IntCounterVec,
    pub stripe_events_refused_total: IntCounterVec,
    pub stripe_event_failures_total: IntCounterVec,
    pub stripe_purchases_total: IntCounterVec,
    pub stripe_refunds_total: IntCounterVec,
    pub stripe_disputes_total: IntCounterVec,
    pub stripe_reconciliation_recoveries_total: IntCounterVec,
    pub emails_total: IntCounterVec,
    pub exports_built_total: IntCounterVec,
    pub accounts_deleted_total: IntCounterVec,
    pub sse_streams: IntGaugeVec,
    pub db_pool_connections: IntGaugeVec,
    pub db_pool_max_connections: IntGaugeVec,
    pub build_info: IntGaugeVec,
    /// The process's query pool, read into the `db_pool_*` gauges at each scrape.
    pool: std::sync::OnceLock<PgPool>,
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
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            register(r, IntGaugeVec::new(Opts::new(name, help), labels).unwrap())
        };
        let float_gauge = |name: &str, help: &str, labels: &[&str]| {
            register(r, GaugeVec::new(Opts::new(name, help), labels).unwrap())
        };
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("process metrics are registered once per registry");
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
            upstream_paused: gauge(
                "createimage2_upstream_paused",
                "1 while submissions to an upstream are paused, by kind (operator: until an operator resumes; automatic: an account error, lifted by the probe). From the database.",
                &["upstream", "kind"],
            ),
            upstream_credit_balance: float_gauge(
                "createimage2_upstream_credit_balance",
                "Credits left at an upstream, as probe_upstreams last read them. From the database.",
                &["upstream"],
            ),
            queue_paused: gauge(
                "createimage2_queue_paused",
                "1 while an operator has paused a queue. From the database.",
                &["queue"],
            ),
            schedule_last_success_timestamp_seconds: float_gauge(
                "createimage2_schedule_last_success_timestamp_seconds",
                "When a tick of the schedule last finished successfully (Unix seconds), among its last 10 ticks; 0 when none did.",
                &["schedule"],
            ),
            schedule_interval_seconds: float_gauge(
                "createimage2_schedule_interval_seconds",
                "The schedule's period.",
                &["schedule"],
            ),
            generations_total: counter(
                "createimage2_generations_total",
                "Generations finished, by outcome (succeeded, failed, cancelled) and resolution.",
                &["outcome", "resolution"],
            ),
            generation_seconds: job_histogram(
                "createimage2_generation_seconds",
                "Intent to image stored (or to failure or cancellation), by outcome and resolution.",
                &["outcome", "resolution"],
            ),
            generation_failures_total: counter(
                "createimage2_generation_failures_total",
                "Failed generations, by reason (the failure code the user is shown the words of).",
                &["reason"],
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
            stripe_event_failures_total: counter(
                "createimage2_stripe_event_failures_total",
                "Attempts to process a recorded Stripe event that failed (the job retries), by event type.",
                &["type"],
            ),
            stripe_purchases_total: counter(
                "createimage2_stripe_purchases_total",
                "Payments that granted credits, by kind (pack, subscription).",
                &["kind"],
            ),
            stripe_refunds_total: counter(
                "createimage2_stripe_refunds_total",
                "Refunds seen from Stripe that took credits back.",
                &[],
            ),
            stripe_disputes_total: counter(
                "createimage2_stripe_disputes_total",
                "Disputes, by event (created, closed).",
                &["event"],
            ),
            stripe_reconciliation_recoveries_total: counter(
                "createimage2_stripe_reconciliation_recoveries_total",
                "Stripe events that reconciliation found and no webhook had delivered.",
                &[],
            ),
            emails_total: counter(
                "createimage2_emails_total",
                "E-mails handed to the transport, by outcome (sent, failed: permanently, after retries or at once).",
                &["outcome"],
            ),
            exports_built_total: counter(
                "createimage2_exports_built_total",
                "Data-export bundles built and stored.",
                &[],
            ),
            accounts_deleted_total: counter(
                "createimage2_accounts_deleted_total",
                "Accounts whose data was deleted.",
                &[],
            ),
            sse_streams: gauge(
                "createimage2_sse_streams",
                "Open server-sent-event streams, by route.",
                &["route"],
            ),
            db_pool_connections: gauge(
                "createimage2_db_pool_connections",
                "Connections of this process's query pool, by state (idle, in_use).",
                &["state"],
            ),
            db_pool_max_connections: gauge(
                "createimage2_db_pool_max_connections",
                "The size limit of this process's query pool (DATABASE_MAX_CONNECTIONS).",
                &[],
            ),
            pool: std::sync::OnceLock::new(),
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
            "unconfigured",
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
        for reason in crate::generations::FAILURE_REASONS {
            metrics
                .generation_failures_total
                .with_label_values(&[reason]);
        }
        for kind in ["pack", "subscription"] {
            metrics.stripe_purchases_total.with_label_values(&[kind]);
        }
        for event in ["created", "closed"] {
            metrics.stripe_disputes_total.with_label_values(&[event]);
        }
        for outcome in ["sent", "failed"] {
            metrics.emails_total.with_label_values(&[outcome]);
        }
        for counter in [
            &metrics.stripe_refunds_total,
            &metrics.stripe_reconciliation_recoveries_total,
            &metrics.exports_built_total,
            &metrics.accounts_deleted_total,
        ] {
            counter.with_label_values(&[] as &[&str]);
        }
        // One zero series with an empty type, so "no failure" is a value.
        metrics.stripe_event_failures_total.with_label_values(&[""]);
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

    /// Reports `pool` in the `createimage2_db_pool_*` gauges (the first pool given wins).
    pub fn watch_pool(&self, pool: &PgPool) {
        let _ = self.pool.set(pool.clone());
    }

    /// Reads every database-derived gauge into the metrics: queue depth and age ([`Self::refresh_queue_gauges`])
    /// and the fleet-wide state: pauses of upstreams (by kind) and of queues, the upstream's credit balance, and
    /// each schedule's last success. Exactly one role of a fleet does this at each scrape (the scheduler; `dev`),
    /// so every pod agrees and N workers do not multiply the series or the queries. A failure is logged and the
    /// page is served with the last values.
    pub async fn refresh_database_gauges(
        &self,
        pool: &PgPool,
        known_queues: &[&str],
        schedules: &[crate::schedule::Schedule],
    ) {
        if let Err(error) = self.refresh_queue_gauges(pool, known_queues).await {
            tracing::warn!(error = %error, "could not read queue gauges");
        }
        if let Err(error) = self
            .refresh_fleet_gauges(pool, known_queues, schedules)
            .await
        {
            tracing::warn!(error = %error, "could not read fleet gauges");
        }
    }

    async fn refresh_fleet_gauges(
        &self,
        pool: &PgPool,
        known_queues: &[&str],
        schedules: &[crate::schedule::Schedule],
    ) -> sqlx::Result<()> {
        let pauses = crate::upstream::paused(pool).await?;
        self.upstream_paused.reset();
        for name in crate::upstream::KNOWN {
            for kind in crate::upstream::PauseKind::ALL {
                let paused = pauses
                    .iter()
                    .any(|p| p.upstream == *name && p.kind == *kind);
                self.upstream_paused
                    .with_label_values(&[name, kind.as_str()])
                    .set(i64::from(paused));
            }
        }
        for (upstream, balance) in crate::upstream::balances(pool).await? {
            self.upstream_credit_balance
                .with_label_values(&[&upstream])
                .set(balance);
        }
        let paused_queues = queue::ops::paused_queues(pool).await?;
        self.queue_paused.reset();
        for queue in known_queues {
            self.queue_paused
                .with_label_values(&[queue])
                .set(i64::from(paused_queues.iter().any(|q| q == queue)));
        }
        let now = chrono::Utc::now();
        for (schedule, last) in crate::schedule::last_successes(pool, schedules, now).await? {
            self.schedule_last_success_timestamp_seconds
                .with_label_values(&[schedule.name])
                .set(last.map_or(0.0, |at| at.timestamp_millis() as f64 / 1000.0));
            self.schedule_interval_seconds
                .with_label_values(&[schedule.name])
                .set(schedule.interval(now).as_secs_f64());
        }
        Ok(())
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        if let Some(pool) = self.pool.get() {
            let size = i64::from(pool.size());
            let idle = i64::try_from(pool.num_idle()).unwrap_or(i64::MAX);
            self.db_pool_connections
                .with_label_values(&["idle"])
                .set(idle);
            self.db_pool_connections
                .with_label_values(&["in_use"])
                .set((size - idle).max(0));
            self.db_pool_max_connections
                .with_label_values(&[] as &[&str])
                .set(i64::from(pool.options().get_max_connections()));
        }
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
