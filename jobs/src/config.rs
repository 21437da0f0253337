//! Typed configuration, read once from environment variables (12-factor).
//!
//! One struct per concern. Every variable is documented on its field and in `.env.example`; a missing or
//! invalid value stops start-up with an error naming the variable. Secrets are `SecretString` and never appear
//! in `Debug` output or logs.

use std::{collections::HashMap, net::SocketAddr, str::FromStr, time::Duration};

pub use queue::QueueConfig;
use secrecy::SecretString;

/// A configuration error: always names the variable at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {name} is required but not set")]
    Missing { name: &'static str },
    #[error("environment variable {name} has an invalid value: {reason}")]
    Invalid { name: &'static str, reason: String },
}

/// Where variables come from: the process environment in production, a map in tests.
pub trait Source {
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Env;

impl Source for Env {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|value| !value.is_empty())
    }
}

impl Source for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).cloned()
    }
}

fn required<S: Source>(source: &S, name: &'static str) -> Result<String, ConfigError> {
    source.get(name).ok_or(ConfigError::Missing { name })
}

fn parsed_or<S: Source, T: FromStr>(
    source: &S,
    name: &'static str,
    default: T,
) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match source.get(name) {
        None => Ok(default),
        Some(raw) => raw
            .trim()
            .parse()
            .map_err(|error: T::Err| ConfigError::Invalid {
                name,
                reason: format!("{raw:?}: {error}"),
            }),
    }
}

fn seconds_or<S: Source>(
    source: &S,
    name: &'static str,
    default: u64,
) -> Result<Duration, ConfigError> {
    parsed_or(source, name, default).map(Duration::from_secs)
}

/// Postgres.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// `DATABASE_URL`: where queries go; a direct connection, or a transaction-mode pooler (PgBouncer ≥ 1.21
    /// with `max_prepared_statements`, e.g. Neon's pooled endpoint) when `DATABASE_POOL_MODE=transaction`.
    pub url: SecretString,
    /// `DATABASE_LISTEN_URL` (default `DATABASE_URL`): a direct connection for LISTEN (workers wake on new jobs,
    /// the api's live status streams), which a transaction-mode pooler cannot hold.
    pub listen_url: Option<SecretString>,
    /// `DATABASE_POOL_MODE` (default `direct`): `transaction` when `DATABASE_URL` is a transaction-mode pooler.
    pub pool_mode: PoolMode,
    /// `DATABASE_MAX_CONNECTIONS` (default 20): pool size of this process.
    pub max_connections: u32,
    /// `DATABASE_STATEMENT_TIMEOUT_MS` (default 30000): Postgres cancels a statement running longer, so a blocked
    /// statement cannot hold a worker's exit or a request for minutes. 0 turns it off.
    pub statement_timeout: Duration,
    /// `DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS` (default 60000): Postgres ends a session idle inside a
    /// transaction this long, releasing its locks. 0 turns it off.
    pub idle_in_transaction_timeout: Duration,
}

/// How `DATABASE_URL` reaches Postgres.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// A session of its own per connection: the timeouts travel as startup options.
    Direct,
    /// A transaction-mode pooler: server sessions are shared, so the timeouts are the role's defaults in the
    /// database (`createimage2 migrate` sets them) and LISTEN needs `DATABASE_LISTEN_URL`.
    Transaction,
}

impl FromStr for PoolMode {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "direct" => Ok(Self::Direct),
            "transaction" => Ok(Self::Transaction),
            other => Err(format!("expected direct or transaction, got {other}")),
        }
    }
}

fn postgres_url<S: Source>(source: &S, name: &'static str) -> Result<Option<String>, ConfigError> {
    match source.get(name) {
        Some(url) if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) => {
            Err(ConfigError::Invalid {
                name,
                reason: "must start with postgres:// or postgresql://".into(),
            })
        }
        url => Ok(url),
    }
}

impl DatabaseConfig {
    pub fn from_source<S: Source>(source: &S) -> Result<Self, ConfigError> {
        let url = postgres_url(source, "DATABASE_URL")?.ok_or(ConfigError::Missing {
            name: "DATABASE_URL",
        })?;
        let pool_mode = parsed_or(source, "DATABASE_POOL_MODE", PoolMode::Direct)?;
        let listen_url = postgres_url(source, "DATABASE_LISTEN_URL")?;
        if pool_mode == PoolMode::Transaction && listen_url.is_none() {
            return Err(ConfigError::Missing {
                name: "DATABASE_LISTEN_URL",
            });
        }
        let millis = |name: &'static str, default: u64| -> Result<Duration, ConfigError> {
            parsed_or(source, name, default).map(Duration::from_millis)
        };
        Ok(Self {
            url: url.into(),
            listen_url: listen_url.map(SecretString::from),
            pool_mode,
            max_connections: parsed_or(source, "DATABASE_MAX_CONNECTIONS", 20)?,
            statement_timeout: millis("DATABASE_STATEMENT_TIMEOUT_MS", 30_000)?,
            idle_in_transaction_timeout: millis("DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS", 60_000)?,
        })
    }

    /// A direct connection to `url` with `max_connections` and the default timeouts (tools and benchmarks).
    pub fn direct(url: impl Into<String>, max_connections: u32) -> Self {
        let url: String = url.into();
        let mut vars = HashMap::from([("DATABASE_URL".to_owned(), url)]);
        vars.insert(
            "DATABASE_MAX_CONNECTIONS".to_owned(),
            max_connections.to_string(),
        );
        Self::from_source(&vars).expect("a postgres:// URL")
    }

    /// A direct connection: `DATABASE_URL` itself unless that is a pooler.
    pub fn direct_url(&self) -> &SecretString {
        self.listen_url.as_ref().unwrap_or(&self.url)
    }
}

/// The object store (Cloudflare R2 in production; s3s-fs in tests and `dev`).
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// `S3_ENDPOINT`: e.g. `https://<account>.r2.cloudflarestorage.com`.
    pub endpoint: String,
    /// `S3_REGION` (default `auto`, as R2 wants).
    pub region: String,
    /// `S3_BUCKET`.
    pub bucket: String,
    /// `S3_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// `S3_SECRET_ACCESS_KEY`.
    pub secret_access_key: SecretString,
}

impl StorageConfig {
    pub fn from_source<S: Source>(source: &S) -> Result<Self, ConfigError> {
        let endpoint = required(source, "S3_ENDPOINT")?;
        url::Url::parse(&endpoint).map_err(|error| ConfigError::Invalid {
            name: "S3_ENDPOINT",
            reason: error.to_string(),
        })?;
        Ok(Self {
            endpoint,
            region: source.get("S3_REGION").unwrap_or_else(|| "auto".into()),
            bucket: required(source, "S3_BUCKET")?,
            access_key_id: required(source, "S3_ACCESS_KEY_ID")?,
            secret_access_key: required(source, "S3_SECRET_ACCESS_KEY")?.into(),
        })
    }
}

/// The queue runtime's settings, read from the environment. Each variable's default is the runtime's own
/// ([`QueueConfig::default`]):
/// - `QUEUE_POLL_INTERVAL_MS` (1000): fallback poll when no notification arrives;
/// - `QUEUE_HEARTBEAT_SECONDS` (5): how often a worker refreshes its heartbeat;
/// - `QUEUE_DEAD_WORKER_SECONDS` (60): a worker silent this long is dead; its jobs are handed back;
/// - `QUEUE_SHUTDOWN_GRACE_SECONDS` (30): on SIGTERM, started jobs get this long before they are handed back;
/// - `QUEUE_CLAIM_AHEAD_MAX_ATTEMPT_MS` (20): claim ahead of free slots only while attempts are this short;
/// - `JOB_RETENTION_HOURS` (168): finished (done, cancelled) job rows are pruned after this age;
/// - `DEAD_JOB_RETENTION_HOURS` (720): dead job rows are kept this long for operators.
pub fn queue_config<S: Source>(source: &S) -> Result<QueueConfig, ConfigError> {
    let defaults = QueueConfig::default();
    let millis = |name: &'static str, default: Duration| -> Result<Duration, ConfigError> {
        Ok(Duration::from_millis(parsed_or(
            source,
            name,
            default.as_millis() as u64,
        )?))
    };
    let hours = |name: &'static str, default: Duration| -> Result<Duration, ConfigError> {
        Ok(Duration::from_secs(
            3600 * parsed_or(source, name, default.as_secs() / 3600)?,
        ))
    };
    Ok(QueueConfig {
        poll_interval: millis("QUEUE_POLL_INTERVAL_MS", defaults.poll_interval)?,
        heartbeat_interval: seconds_or(
            source,
            "QUEUE_HEARTBEAT_SECONDS",
            defaults.heartbeat_interval.as_secs(),
        )?,
        dead_worker_after: seconds_or(
            source,
            "QUEUE_DEAD_WORKER_SECONDS",
            defaults.dead_worker_after.as_secs(),
        )?,
        shutdown_grace: seconds_or(
            source,
            "QUEUE_SHUTDOWN_GRACE_SECONDS",
            defaults.shutdown_grace.as_secs(),
        )?,
        claim_ahead_max_attempt: millis(
            "QUEUE_CLAIM_AHEAD_MAX_ATTEMPT_MS",
            defaults.claim_ahead_max_attempt,
        )?,
        finished_job_retention: hours("JOB_RETENTION_HOURS", defaults.finished_job_retention)?,
        dead_job_retention: hours("DEAD_JOB_RETENTION_HOURS", defaults.dead_job_retention)?,
    })
}

/// Log output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "json" => Ok(Self::Json),
            "pretty" => Ok(Self::Pretty),
            other => Err(format!("expected json or pretty, got {other}")),
        }
    }
}

/// Listeners of a role.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// `LISTEN_ADDR` (default 127.0.0.1:8080): the site and JSON API (api role).
    pub listen: SocketAddr,
    /// `METRICS_LISTEN_ADDR` (default 127.0.0.1:9090): `/metrics`, `/healthz`, `/readyz` of every role.
    pub metrics_listen: SocketAddr,
    /// `PUBLIC_BASE_URL` (default http://127.0.0.1:8080): links in e-mails and callback URLs are built from
    /// this, never from the Host header.
    pub public_base_url: url::Url,
    /// `ADMIN_LISTEN_ADDR` (default 127.0.0.1:9091): the ops console (api role), on its own listener.
    pub admin_listen: SocketAddr,
    /// `OPERATOR_TOKEN`: the ops console's password (HTTP Basic, any user name). Without it the console is off.
    pub operator_token: Option<SecretString>,
    /// `DRAIN_READINESS_SECONDS` (default 5): after SIGTERM every role answers `/readyz` with 503 this long
    /// before it stops taking work, so load balancers and probes take it out first.
    pub drain_readiness: Duration,
    /// `HTTP_SHUTDOWN_GRACE_SECONDS` (default 15): after the api's listener closes, requests in flight get this
    /// long to finish. Open live-status streams are ended at once with a final `shutdown` event.
    pub shutdown_grace: Duration,
    /// `API_REQUESTS_PER_MINUTE` (default 600): a member's JSON API requests per minute, all keys together.
    pub api_budget: crate::api_requests::Budget,
    /// `API_ANONYMOUS_REQUESTS_PER_MINUTE` (default 60): JSON API requests per minute without a live key, per
    /// client address.
    pub anonymous_api_budget: crate::api_requests::Budget,
}

impl HttpConfig {
    pub fn from_source<S: Source>(source: &S) -> Result<Self, ConfigError> {
        let base = source
            .get("PUBLIC_BASE_URL")
            .unwrap_or_else(|| "http://127.0.0.1:8080".into());
        Ok(Self {
            listen: parsed_or(
                source,
                "LISTEN_ADDR",
                SocketAddr::from(([127, 0, 0, 1], 8080)),
            )?,
            metrics_listen: parsed_or(
                source,
                "METRICS_LISTEN_ADDR",
                SocketAddr::from(([127, 0, 0, 1], 9090)),
            )?,
            public_base_url: url::Url::parse(&base).map_err(|error| ConfigError::Invalid {
                name: "PUBLIC_BASE_URL",
                reason: error.to_string(),
            })?,
            admin_listen: parsed_or(
                source,
                "ADMIN_LISTEN_ADDR",
                SocketAddr::from(([127, 0, 0, 1], 9091)),
            )?,
            operator_token: match source.get("OPERATOR_TOKEN") {
                Some(token) if token.len() < 16 => {
                    return Err(ConfigError::Invalid {
                        name: "OPERATOR_TOKEN",
                        reason: "must be at least 16 characters".into(),
                    });
                }
                token => token.map(SecretString::from),
            },
            drain_readiness: seconds_or(source, "DRAIN_READINESS_SECONDS", 5)?,
            shutdown_grace: seconds_or(source, "HTTP_SHUTDOWN_GRACE_SECONDS", 15)?,
            api_budget: crate::api_requests::Budget {
                limit: parsed_or(source, "API_REQUESTS_PER_MINUTE", 600)?,
                window: Duration::from_secs(60),
            },
            anonymous_api_budget: crate::api_requests::Budget {
                limit: parsed_or(source, "API_ANONYMOUS_REQUESTS_PER_MINUTE", 60)?,
                window: Duration::from_secs(60),
            },
        })
    }
}

/// kie.ai, the upstream for gpt-image-2.
#[derive(Debug, Clone)]
pub struct KieConfig {
    /// `KIE_BASE_URL` (default https://api.kie.ai).
    pub base_url: url::Url,
    /// `KIE_API_KEY`.
    pub api_key: SecretString,
    /// `KIE_WEBHOOK_HMAC_KEY` (optional): when set at kie, callbacks are signed with it and verified here.
    pub webhook_hmac_key: Option<SecretString>,
    /// `KIE_CREATE_TASKS_PER_WINDOW` (default 20) and `KIE_CREATE_WINDOW_MS` (default 10500: kie's 10 s plus a
    /// margin for request latency): the fleet-wide createTask budget.
    pub create_budget: (u32, Duration),
    /// `KIE_RECORD_INFO_PER_SECOND` (default 10): the fleet-wide recordInfo budget.
    pub record_info_per_second: u32,
    /// `KIE_TIMEOUT_SECONDS` (default 30): one HTTP request to kie.
    pub request_timeout: Duration,
}

impl KieConfig {
    pub fn from_source<S: Source>(source: &S) -> Result<Self, ConfigError> {
        let base = source
            .get("KIE_BASE_URL")
            .unwrap_or_else(|| "https://api.kie.ai".into());
        Ok(Self {
            base_url: url::Url::parse(&base).map_err(|error| ConfigError::Invalid {
                name: "KIE_BASE_URL",
                reason: error.to_string(),
            })?,
            api_key: required(source, "KIE_API_KEY")?.into(),
            webhook_hmac_key: source.get("KIE_WEBHOOK_HMAC_KEY").map(SecretString::from),
            create_budget: (
                parsed_or(source, "KIE_CREATE_TASKS_PER_WINDOW", 20)?,
                Duration::from_millis(parsed_or(source, "KIE_CREATE_WINDOW_MS", 10_500)?),
            ),
            record_info_per_second: parsed_or(source, "KIE_RECORD_INFO_PER_SECOND", 10)?,
            request_timeout: seconds_or(source, "KIE_TIMEOUT_SECONDS", 30)?,
        })
    }
}

/// Rules of the generation pipeline.
#[derive(Debug, Clone)]
pub struct GenerationConfig {
    /// `GENERATION_DEADLINE_SECONDS` (default 900): polling gives up this long after submission; the
    /// reservation is refunded.
    pub deadline: Duration,
    /// `GENERATIONS_PER_USER_PER_MINUTE` (default 20): images a user may ask for per minute (a request for `n`
    /// counts `n`); beyond this a user gets 429 with Retry-After.
    pub per_user_per_minute: u32,
}

impl GenerationConfig {
    pub fn from_source<S: Source>(source: &S) -> Result<Self, ConfigError> {
        Ok(Self {
            deadline: seconds_or(source, "GENERATION_DEADLINE_SECONDS", 900)?,
            per_user_per_minute: parsed_or(source, "GENERATIONS_PER_USER_PER_MINUTE", 20)?,
        })
    }
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self::from_source(&HashMap::new()).expect("defaults are valid")
    }
}

/// The site: sessions, sign-in, the trial, analytics and products.
#[derive(Debug, Clone)]
pub struct SiteConfig {
    /// `SESSION_IDLE_HOURS` (default 72): a session unused this long ends.
    pub session_idle: Duration,
    /// `SESSION_ABSOLUTE_DAYS` (default 30): every session ends this long after sign-in.
    pub session_absolute: Duration,
    /// `SIGN_IN_LINK_MINUTES` (default 15): how long an e-mailed link works (once).
    pub sign_in_link_ttl: Duration,
    /// `SIGN_IN_EMAILS_PER_ADDRESS_PER_HOUR` (default 5, fleet-wide) and `SIGN_IN_EMAILS_PER_CLIENT_PER_HOUR`
    /// (default 20): limits on requesting sign-in links.
    pub sign_in_per_address_per_hour: u32,
    pub sign_in_per_client_per_hour: u32,
    /// `SIGNUP_CREDITS` (default 20): credits a new account starts with (two 1K images).
    pub signup_credits: i64,
    /// Google sign-in; off unless `GOOGLE_CLIENT_ID` is set.
    pub google: Option<GoogleConfig>,
    /// The no-signup trial's bot check; the trial is off unless `TURNSTILE_SITE_KEY` is set.
    pub turnstile: Option<TurnstileConfig>,
    /// `GA4_MEASUREMENT_ID` (optional): Google Analytics 4, loaded only after consent and never under DNT/GPC.
    pub ga4_measurement_id: Option<String>,
    /// `GA4_SCRIPT_URL` (default https://www.googletagmanager.com/gtag/js): where gtag.js is loaded from.
    pub ga4_script_url: url::Url,
    /// `CLIENT_IP_HEADER` (e.g. `CF-Connecting-IP`) and `TRUSTED_PROXIES` (comma-separated CIDRs): the header
    /// is believed only from those peers; otherwise the peer address is the client.
    pub client_ip_header: Option<String>,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `CREDIT_PACKS` and `PLANS`: `id:credits:stripe_price_id:amount_minor:currency[:name]`, comma-separated.
    pub packs: Vec<Product>,
    pub plans: Vec<Product>,
    /// Dev-only pages (the e-mail outbox). Never set from the environment: only `createimage2 dev` sets it.
    pub dev_pages: bool,
}

/// Google OpenID Connect.
#[derive(Debug, Clone)]
pub struct GoogleConfig {
    /// `GOOGLE_CLIENT_ID` and `GOOGLE_CLIENT_SECRET`.
    pub client_id: String,
    pub client_secret: SecretString,
    /// `GOOGLE_ISSUER_URL` (default https://accounts.google.com): discovery starts here.
    pub issuer_url: url::Url,
}

/// Cloudflare Turnstile.
#[derive(Debug, Clone)]
pub struct TurnstileConfig {
    /// `TURNSTILE_SITE_KEY` and `TURNSTILE_SECRET_KEY`.
    pub site_key: String,
    pub secret_key: SecretString,
    /// `TURNSTILE_VERIFY_URL` (default Cloudflare's siteverify).
    pub verify_url: url::Url,
    /// `TURNSTILE_SCRIPT_URL` (default Cloudflare's api.js).
    pub script_url: url::Url,
    /// `TURNSTILE_EXPECTED_HOSTNAME` (default: the host of `PUBLIC_BASE_URL`): the `hostname` siteverify must
    /// report. Cloudflare's test secret keys report `example.com`, so a staging site using them sets that.
    pub expected_hostname: Option<String>,
}

/// A credit pack or a monthly plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    pub id: String,
    /// What people read ("Starter pack", "Monthly"): the sixth field, or the credits in words.
    pub name: String,
    /// Credits granted (per purchase for a pack, per paid month for a plan).
    pub credits: i64,
    pub stripe_price_id: String,
    pub amount_minor: i64,
    pub currency: String,
}

impl Product {
    /// `12.00 USD` style.
    pub fn price_label(&self) -> String {
        money_label(self.amount_minor, &self.currency)
    }
}

/// An amount in minor units as pages show it: `12.00 USD` (two decimals, as every currency sold here has).
pub fn money_label(amount_minor: i64, currency: &str) -> String {
    format!(
        "{}.{:02} {}",
        amount_minor / 100,
        amount_minor % 100,
        currency.to_uppercase()
    )
}

/// Packs or plans: what a product is decides the words for a product without a name.
#[derive(Debug, Clone, Copy)]
enum ProductKind {
    Pack,
    Plan,
}

fn products<S: Source>(
    source: &S,
    name: &'static str,
    kind: ProductKind,
    default: &str,
) -> Result<Vec<Product>, ConfigError> {
    let raw = source.get(name).unwrap_or_else(|| default.to_owned());
    raw.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            let invalid = |reason: &str| ConfigError::Invalid {
                name,
                reason: format!("{item:?}: {reason}"),
            };
            let parts: Vec<&str> = item.split(':').collect();
            let (id, credits, price, amount, currency, label) = match parts[..] {
                [id, credits, price, amount, currency] => {
                    (id, credits, price, amount, currency, None)
                }
                [id, credits, price, amount, currency, label] if !label.trim().is_empty() => {
                    (id, credits, price, amount, currency, Some(label.trim()))
                }
                _ => {
                    return Err(invalid(
                        "expected id:credits:price_id:amount_minor:currency[:name]",
                    ));
                }
            };
            let credits: i64 = credits
                .parse()
                .map_err(|_| invalid("credits is not a number"))?;
            let name = match (label, kind) {
                (Some(label), _) => label.to_owned(),
                (None, ProductKind::Pack) => format!("{credits} credits"),
                (None, ProductKind::Plan) => format!("{credits} credits a month"),
            };
            Ok(Product {
                id: id.to_owned(),
                name,
                credits,
                stripe_price_id: price.to_owned(),
                amount_minor: amount
                    .parse()
                    .map_err(|_| invalid("amount is not a number"))?,
                currency: currency.to_lowercase(),
            })
        })
        .collect()
}

fn url_or<S: Source>(
    source: &S,
    name: &'static str,
    default: &str,
) -> Result<url::Url, ConfigError> {
    let raw = source.get(name).unwrap_or_else(|| default.to_owned());
    url::Url::parse(&raw).map_err(|error| ConfigError::Invalid {
        name,
        reason: error.to_string(),
    })
}

impl SiteConfig {
    pub fn from_source<S: Source>(source: &S) -> Result<Self, ConfigError> {
        let google = match source.get("GOOGLE_CLIENT_ID") {
            Some(client_id) => Some(GoogleConfig {
                client_id,
                client_secret: required(source, "GOOGLE_CLIENT_SECRET")?.into(),
                issuer_url: url_or(source, "GOOGLE_ISSUER_URL", "https://accounts.google.com")?,
            }),
            None => None,
        };
        let turnstile = match source.get("TURNSTILE_SITE_KEY") {
            Some(site_key) => Some(TurnstileConfig {
                site_key,
                secret_key: required(source, "TURNSTILE_SECRET_KEY")?.into(),
                verify_url: url_or(
                    source,
                    "TURNSTILE_VERIFY_URL",
                    "https://challenges.cloudflare.com/turnstile/v0/siteverify",
                )?,
                script_url: url_or(
                    source,
                    "TURNSTILE_SCRIPT_URL",
                    "https://challenges.cloudflare.com/turnstile/v0/api.js",
                )?,
                expected_hostname: source
                    .get("TURNSTILE_EXPECTED_HOSTNAME")
                    .map(|host| host.trim().to_ascii_lowercase())
                    .filter(|host| !host.is_empty()),
            }),
            None => None,
        };
        let trusted_proxies = source
            .get("TRUSTED_PROXIES")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|cidr| !cidr.is_empty())
            .map(|cidr| {
                cidr.parse()
                    .map_err(|error: ipnet::AddrParseError| ConfigError::Invalid {
                        name: "TRUSTED_PROXIES",
                        reason: format!("{cidr:?}: {error}"),
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            session_idle: Duration::from_secs(3600 * parsed_or(source, "SESSION_IDLE_HOURS", 72)?),
            session_absolute: Duration::from_secs(
                86_400 * parsed_or(source, "SESSION_ABSOLUTE_DAYS", 30)?,
            ),
            sign_in_link_ttl: Duration::from_secs(
                60 * parsed_or(source, "SIGN_IN_LINK_MINUTES", 15)?,
            ),
            sign_in_per_address_per_hour: parsed_or(
                source,
                "SIGN_IN_EMAILS_PER_ADDRESS_PER_HOUR",
                5,
            )?,
            sign_in_per_client_per_hour: parsed_or(
                source,
                "SIGN_IN_EMAILS_PER_CLIENT_PER_HOUR",
                20,
            )?,
            signup_credits: parsed_or(source, "SIGNUP_CREDITS", 20)?,
            google,
            turnstile,
            ga4_measurement_id: source.get("GA4_MEASUREMENT_ID"),
            ga4_script_url: url_or(
                source,
                "GA4_SCRIPT_URL",
                "https://www.googletagmanager.com/gtag/js",
            )?,
            client_ip_header: source.get("CLIENT_IP_HEADER"),
            trusted_proxies,
            packs: products(
                source,
                "CREDIT_PACKS",
                ProductKind::Pack,
                "pack_100:100:price_pack_100:500:usd:Starter pack,pack_500:500:price_pack_500:2000:usd:Studio pack",
            )?,
            plans: products(
                source,
                "PLANS",
                ProductKind::Plan,
                "plan_monthly:300:price_plan_monthly:900:usd:Monthly",
            )?,
            dev_pages: false,
        })
    }

    /// The product with this id, pack or plan.
    pub fn product(&self, id: &str) -> Option<&Product> {
        self.packs.iter().chain(&self.plans).find(|p| p.id == id)
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self::from_source(&HashMap::new()).expect("defaults are valid")
    }
}

impl Default for SiteConfig {
    fn default() -> Self {
        Self::from_source(&HashMap::new()).expect("defaults are valid")
    }
}

/// Everything a role needs. Loaded once at start-up by the binary and handed down.
#[derive(Debug, Clone)]
pub struct Config {
    pub database: DatabaseConfig,
    pub storage: StorageConfig,
    pub queue: QueueConfig,
    pub http: HttpConfig,
    pub kie: KieConfig,
    pub generation: GenerationConfig,
    pub stripe: Option<crate::stripe::StripeConfig>,
    pub site: SiteConfig,
    pub mail: crate::email::MailConfig,
    /// `LOG_FORMAT` (default json): `json` in production, `pretty` for people.
    pub log_format: LogFormat,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&Env)
    }

    pub fn from_source<S: Source>(source: &S) -> Result<Self, ConfigError> {
        Ok(Self {
            database: DatabaseConfig::from_source(source)?,
            storage: StorageConfig::from_source(source)?,
            queue: queue_config(source)?,
            http: HttpConfig::from_source(source)?,
            kie: KieConfig::from_source(source)?,
            generation: GenerationConfig::from_source(source)?,
            stripe: crate::stripe::StripeConfig::from_source(source)?,
            site: SiteConfig::from_source(source)?,
            mail: crate::email::MailConfig::from_source(source)?,
            log_format: parsed_or(source, "LOG_FORMAT", LogFormat::Json)?,
        })
    }
}

/// The roles of a fleet, as the binary's subcommands name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Api,
    Worker,
    Scheduler,
}

/// Time a role needs after its drain to write what finished and close its connections.
const EXIT_MARGIN: Duration = Duration::from_secs(5);

impl Config {
    /// The longest `role` takes to exit after SIGTERM with this configuration: the api's readiness window and
    /// request grace, or a worker's job grace, then a margin for writing completions and handing back. A
    /// deployment's grace period (Kubernetes' `terminationGracePeriodSeconds`, systemd's `TimeoutStopSec`)
    /// must be longer, or the role is killed mid-drain.
    pub fn stop_within(&self, role: Role) -> Duration {
        let drain = match role {
            Role::Api => self.http.drain_readiness + self.http.shutdown_grace,
            // Workers take no traffic from a load balancer: they stop claiming at once.
            Role::Worker => self.queue.shutdown_grace,
            Role::Scheduler => Duration::ZERO,
        };
        drain + EXIT_MARGIN
    }

    /// The variables a production `role` lacks: each one that, when missing, leaves a feature of the site off
    /// (purchases never credited without `STRIPE_WEBHOOK_SECRET`, no sign-in e-mail without SMTP, …). The
    /// variables every role needs are already required by [`Config::from_source`].
    pub fn production_gaps(&self, role: Role) -> Vec<&'static str> {
        let mut gaps = Vec::new();
        let smtp = matches!(self.mail.transport, crate::email::Transport::Smtp(_));
        match role {
            Role::Api => {
                match &self.stripe {
                    None => gaps.extend(["STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET"]),
                    Some(stripe) if stripe.webhook_secret.is_none() => {
                        gaps.push("STRIPE_WEBHOOK_SECRET")
                    }
                    Some(_) => {}
                }
                if self.kie.webhook_hmac_key.is_none() {
                    gaps.push("KIE_WEBHOOK_HMAC_KEY");
                }
                if self.site.google.is_none() {
                    gaps.extend(["GOOGLE_CLIENT_ID", "GOOGLE_CLIENT_SECRET"]);
                }
                if self.site.turnstile.is_none() {
                    gaps.extend(["TURNSTILE_SITE_KEY", "TURNSTILE_SECRET_KEY"]);
                }
                if self.http.operator_token.is_none() {
                    gaps.push("OPERATOR_TOKEN");
                }
                // Behind a load balancer or proxy (every deployment), the peer is the proxy: without the
                // header and the proxies trusted to set it, all visitors share one sign-in and trial budget.
                if self.site.client_ip_header.is_none() || self.site.trusted_proxies.is_empty() {
                    gaps.extend(["CLIENT_IP_HEADER", "TRUSTED_PROXIES"]);
                }
            }
            Role::Worker => {
                if self.stripe.is_none() {
                    gaps.push("STRIPE_SECRET_KEY");
                }
            }
            Role::Scheduler => {}
        }
        // The api enqueues sign-in links; workers send them. Both read the transport.
        if role != Role::Scheduler && !smtp {
            gaps.extend(["MAIL_TRANSPORT", "SMTP_URL"]);
        }
        gaps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn source(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn complete() -> HashMap<String, String> {
        source(&[
            ("DATABASE_URL", "postgres://u@localhost/db"),
            ("S3_ENDPOINT", "http://127.0.0.1:9000"),
            ("S3_BUCKET", "b"),
            ("S3_ACCESS_KEY_ID", "k"),
            ("S3_SECRET_ACCESS_KEY", "very-secret"),
            ("KIE_API_KEY", "kie-secret"),
        ])
    }

    #[test]
    fn products_carry_the_name_people_read_or_their_credits_in_words() {
        let mut vars = complete();
        vars.insert(
            "CREDIT_PACKS".into(),
            "small:100:price_s:500:usd:Starter pack, big:500:price_b:2000:EUR".into(),
        );
        vars.insert("PLANS".into(), "monthly:300:price_m:900:usd".into());
        let site = SiteConfig::from_source(&vars).unwrap();
        let names: Vec<(&str, &str)> = site
            .packs
            .iter()
            .chain(&site.plans)
            .map(|p| (p.id.as_str(), p.name.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("small", "Starter pack"),
                ("big", "500 credits"),
                ("monthly", "300 credits a month")
            ]
        );
        assert_eq!(site.packs[1].currency, "eur");
        vars.insert(
            "PLANS".into(),
            "monthly:300:price_m:900:usd:Monthly:extra".into(),
        );
        let error = SiteConfig::from_source(&vars).unwrap_err().to_string();
        assert!(
            error.contains("PLANS") && error.contains("[:name]"),
            "{error}"
        );
    }

    #[test]
    fn a_missing_variable_is_named_in_the_error() {
        let mut vars = complete();
        vars.remove("S3_BUCKET");
        let error = Config::from_source(&vars).unwrap_err();
        assert_eq!(
            error.to_string(),
            "environment variable S3_BUCKET is required but not set"
        );
    }

    #[test]
    fn an_invalid_number_is_named_with_its_value() {
        let mut vars = complete();
        vars.insert("DATABASE_MAX_CONNECTIONS".into(), "many".into());
        let error = Config::from_source(&vars).unwrap_err().to_string();
        assert!(
            error.contains("DATABASE_MAX_CONNECTIONS") && error.contains("many"),
            "{error}"
        );
    }

    #[test]
    fn secrets_do_not_appear_in_debug_output() {
        let config = Config::from_source(&complete()).unwrap();
        let printed = format!("{config:?}");
        assert!(
            !printed.contains("very-secret") && !printed.contains("kie-secret"),
            "{printed}"
        );
        assert_eq!(
            config.storage.secret_access_key.expose_secret(),
            "very-secret"
        );
    }

    #[test]
    fn defaults_apply_when_optional_variables_are_absent() {
        let config = Config::from_source(&complete()).unwrap();
        assert_eq!(config.http.listen.port(), 8080);
        assert_eq!(config.http.metrics_listen.port(), 9090);
        assert_eq!(config.queue.poll_interval, Duration::from_secs(1));
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.storage.region, "auto");
    }
}
