//! `TestApp`: the stack on port 0 against a fresh database.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use fakes::kie::{FakeKieConfig, KieFake};
use jobs::{
    config::{
        GenerationConfig, GoogleConfig, KieConfig, QueueConfig, SiteConfig, StorageConfig,
        TurnstileConfig,
    },
    kie::KieClient,
    services::{Pipeline, Services},
    storage::Storage,
    telemetry::{self, Metrics},
};
use queue::{EnqueueOptions, Enqueued, Job, QueuePlan, WorkerHealth, testing};
use serde_json::Value;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{TestDb, test_jobs};

/// Options for a [`TestApp`].
pub struct TestAppBuilder {
    registry: worker::Registry,
    queue_config: QueueConfig,
    concurrency: usize,
    start_worker: bool,
    kie: FakeKieConfig,
    generation: GenerationConfig,
    verify_callback_signatures: bool,
    site: SiteConfig,
    database_server: Option<String>,
    /// The fleet's kie budget: createTask calls per window, recordInfo calls per second.
    kie_budget: ((u32, Duration), u32),
    /// The kie client's request timeout.
    kie_timeout: Duration,
    /// Adjusts the trial's Turnstile configuration once the stand-in's is in place.
    turnstile: Option<ConfigureTurnstile>,
    /// The api's drain: readiness window, then grace for requests in flight.
    drain: (Duration, Duration),
    /// The JSON API's request budgets.
    api_budgets: api::ApiBudgets,
}

/// A test's adjustment of the trial's Turnstile configuration.
type ConfigureTurnstile = Box<dyn FnOnce(&mut TurnstileConfig) + Send>;

/// The Google stand-in's registered client in tests.
pub const GOOGLE_CLIENT_ID: &str = "test-client.apps.googleusercontent.com";
pub const GOOGLE_CLIENT_SECRET: &str = "test-google-client-secret";
/// The Google account the stand-in offers in tests.
pub const GOOGLE_SUB: &str = "109876543210987654321";
pub const GOOGLE_EMAIL: &str = "grace@example.com";
/// The GA4 measurement id in tests.
pub const GA4_ID: &str = "G-TEST000000";

/// The ops console's token in tests.
pub const OPERATOR_TOKEN: &str = "test-operator-token-0123456789";

/// The Stripe stand-in's secret key in tests.
pub const STRIPE_SECRET_KEY: &str = "sk_test_createimage2";

/// The Stripe webhook endpoint's signing secret in tests.
pub const STRIPE_WEBHOOK_SECRET: &str = "whsec_test_createimage2";

/// The HMAC key the kie stand-in signs callbacks with in tests.
pub const KIE_HMAC_KEY: &str = "test-webhook-hmac-key";

/// A user made by [`TestApp::create_user`].
#[derive(Debug, Clone)]
pub struct TestUser {
    pub id: Uuid,
    pub api_key: String,
}

impl TestAppBuilder {
    pub fn queue_config(mut self, config: QueueConfig) -> Self {
        self.queue_config = config;
        self
    }

    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// The fleet's kie budget (production's by default: 20 createTask per 10.5 s, 10 recordInfo per second);
    /// lift it together with the stand-in's limits (`kie(|k| k.create_limit = None)`) for load.
    pub fn kie_budget(mut self, create: (u32, Duration), record_info_per_second: u32) -> Self {
        self.kie_budget = (create, record_info_per_second);
        self
    }

    /// The kie client's request timeout (10 s by default).
    pub fn kie_timeout(mut self, timeout: Duration) -> Self {
        self.kie_timeout = timeout;
        self
    }

    /// The JSON API's request budgets (defaults: the production defaults).
    pub fn api_budgets(mut self, budgets: api::ApiBudgets) -> Self {
        self.api_budgets = budgets;
        self
    }

    /// Start without a worker (to look at queued rows before anything runs them).
    pub fn without_worker(mut self) -> Self {
        self.start_worker = false;
        self
    }

    /// The api's drain on shutdown: `/readyz` answers 503 for `readiness`, then requests in flight get `grace`.
    pub fn drain(mut self, readiness: Duration, grace: Duration) -> Self {
        self.drain = (readiness, grace);
        self
    }

    /// Configures the kie.ai stand-in (latency, faults, limits).
    pub fn kie(mut self, configure: impl FnOnce(&mut FakeKieConfig)) -> Self {
        configure(&mut self.kie);
        self
    }

    pub fn generation_config(mut self, config: GenerationConfig) -> Self {
        self.generation = config;
        self
    }

    /// Adjusts the site's configuration (sessions, sign-in limits, products, …).
    pub fn site(mut self, configure: impl FnOnce(&mut SiteConfig)) -> Self {
        configure(&mut self.site);
        self
    }

    /// Adjusts the trial's bot check (e.g. one of Cloudflare's test secret keys, an expected hostname); the
    /// siteverify and script URLs stay the stand-in's.
    pub fn turnstile(
        mut self,
        configure: impl FnOnce(&mut TurnstileConfig) + Send + 'static,
    ) -> Self {
        self.turnstile = Some(Box::new(configure));
        self
    }

    /// Have the api accept unsigned callbacks (no HMAC key configured).
    pub fn without_callback_signatures(mut self) -> Self {
        self.verify_callback_signatures = false;
        self
    }

    /// Put the database on this server (its admin URL) rather than the shared test server.
    pub fn database_server(mut self, admin_url: &str) -> Self {
        self.database_server = Some(admin_url.to_owned());
        self
    }

    pub async fn spawn(mut self) -> TestApp {
        let db = match &self.database_server {
            Some(admin_url) => TestDb::on_server(admin_url).await,
            None => TestDb::new().await,
        };
        let pool = db.pool.clone();
        test_jobs::create_table(&pool).await;
        let temp = tempfile::tempdir().unwrap();
        let s3 = fakes::s3::S3Server::start(
            temp.path(),
            "127.0.0.1:0".parse().unwrap(),
            "testkey",
            "testsecret",
        )
        .await
        .unwrap();
        let storage = Storage::new(&StorageConfig {
            endpoint: s3.endpoint(),
            region: "auto".into(),
            bucket: "test-bucket".into(),
            access_key_id: "testkey".into(),
            secret_access_key: "testsecret".to_owned().into(),
        });
        storage.ensure_bucket().await.unwrap();
        let kie = KieFake::start(self.kie.clone()).await.unwrap();
        let stripe = fakes::stripe::StripeFake::start(STRIPE_SECRET_KEY)
            .await
            .unwrap();
        let listener = telemetry::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let api_addr = listener.local_addr().unwrap();
        let oidc = fakes::oidc::OidcFake::start(fakes::oidc::OidcFakeConfig {
            client_id: GOOGLE_CLIENT_ID.into(),
            client_secret: GOOGLE_CLIENT_SECRET.into(),
            redirect_uri: format!("http://{api_addr}/auth/google/callback"),
            accounts: vec![fakes::oidc::OidcAccount {
                sub: GOOGLE_SUB.into(),
                email: GOOGLE_EMAIL.into(),
                email_verified: true,
                name: "Grace Hopper".into(),
            }],
        })
        .await
        .unwrap();
        let turnstile =
            fakes::turnstile::TurnstileFake::start(fakes::turnstile::TurnstileFakeConfig {
                hostname: "127.0.0.1".into(),
                // What the site's widget asks for (`data-action`), so `issue_token` gives a trial token.
                action: Some("trial".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        let analytics = fakes::analytics::AnalyticsFake::start().await.unwrap();
        let mut site = self.site.clone();
        site.google = Some(GoogleConfig {
            client_id: GOOGLE_CLIENT_ID.into(),
            client_secret: GOOGLE_CLIENT_SECRET.to_owned().into(),
            issuer_url: oidc.issuer().parse().unwrap(),
        });
        site.turnstile = Some(TurnstileConfig {
            site_key: fakes::turnstile::TurnstileFakeConfig::default().sitekey,
            secret_key: fakes::turnstile::TurnstileFakeConfig::default()
                .secret
                .into(),
            verify_url: turnstile.siteverify_url().parse().unwrap(),
            script_url: turnstile.script_url().parse().unwrap(),
            expected_hostname: None,
        });
        if let (Some(configure), Some(config)) = (self.turnstile.take(), site.turnstile.as_mut()) {
            configure(config);
        }
        site.ga4_measurement_id = Some(GA4_ID.into());
        site.ga4_script_url = analytics.script_url().parse().unwrap();
        site.dev_pages = true;
        register_products(
            &stripe,
            &site,
            &format!("http://{api_addr}/webhooks/stripe"),
        );
        let kie_config = KieConfig {
            base_url: kie.base_url().parse().unwrap(),
            api_key: self.kie.api_key.clone().into(),
            webhook_hmac_key: self
                .verify_callback_signatures
                .then(|| KIE_HMAC_KEY.to_owned().into()),
            create_budget: self.kie_budget.0,
            record_info_per_second: self.kie_budget.1,
            request_timeout: self.kie_timeout,
        };

        let shutdown = CancellationToken::new();
        let metrics = Metrics::new("test");
        metrics.watch_pool(&pool);
        let pipeline = Pipeline {
            storage: storage.clone().with_metrics(metrics.clone()),
            kie: KieClient::new(&kie_config, metrics.clone()),
            kie_config: kie_config.clone(),
            generation: self.generation.clone(),
            public_base_url: format!("http://{api_addr}").parse().unwrap(),
            stripe: Some(jobs::stripe::StripeClient::new(
                jobs::stripe::StripeConfig {
                    api_base: stripe.base_url().parse().unwrap(),
                    secret_key: STRIPE_SECRET_KEY.to_owned().into(),
                    webhook_secret: Some(STRIPE_WEBHOOK_SECRET.to_owned().into()),
                },
                metrics.clone(),
            )),
        };
        let services = Arc::new(
            Services::new(self.queue_config.clone(), metrics.clone())
                .with_pipeline(pipeline.clone()),
        );
        let worker = if self.start_worker {
            let plans = self
                .registry
                .queues()
                .map(|queue| QueuePlan {
                    queue: queue.to_owned(),
                    concurrency: self.concurrency,
                })
                .collect();
            let ops = telemetry::bind("127.0.0.1:0".parse().unwrap())
                .await
                .unwrap();
            let worker = worker::Worker::with_parts(
                pool.clone(),
                self.registry.clone(),
                services.clone(),
                plans,
                Some(ops),
            );
            let worker_ops_addr = worker.ops_addr();
            Some((
                worker.start(shutdown.clone()).await.unwrap(),
                worker_ops_addr,
            ))
        } else {
            None
        };
        let state = api::AppState::new(pool.clone(), metrics.clone())
            .with_api_budgets(self.api_budgets)
            .with_queues(self.registry.queues())
            .owning_queue_gauges()
            .with_pipeline(api::ApiPipeline {
                storage: storage.clone(),
                kie_webhook_hmac_key: kie_config.webhook_hmac_key.clone(),
                generation: self.generation.clone(),
            })
            .with_site(api::site::SiteState::new(
                site,
                format!("http://{api_addr}").parse().unwrap(),
                &api::storage_origin(&s3.endpoint()),
                true,
            ))
            .with_stripe_webhook_secret(STRIPE_WEBHOOK_SECRET.to_owned().into());
        let ops_listener = telemetry::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let console_listener = telemetry::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let api = api::Api::with_parts(state, listener, Some(ops_listener))
            .with_console(console_listener, OPERATOR_TOKEN.to_owned().into())
            .with_drain(self.drain.0, self.drain.1);
        let ops_addr = api.ops_addr().unwrap();
        let console_addr = api.console_addr().unwrap();
        let api_task = tokio::spawn(api.run_until_stopped(shutdown.clone()));
        let (worker, worker_ops_addr) = match worker {
            Some((started, addr)) => (Some(started), addr),
            None => (None, None),
        };
        TestApp {
            pool,
            api_addr,
            ops_addr,
            console_addr,
            worker_ops_addr,
            client: reqwest::Client::new(),
            storage,
            metrics,
            registry: self.registry,
            services,
            kie,
            stripe,
            oidc,
            turnstile,
            analytics,
            worker_health: worker.as_ref().map(|w| w.health.clone()),
            worker,
            api_task: Some(api_task),
            shutdown,
            expected_dead: 0,
            finished: false,
            _s3: s3,
            _temp: temp,
            db,
        }
    }
}

/// Gives the Stripe stand-in the site's prices and points its webhooks at the api.
pub fn register_products(stripe: &fakes::stripe::StripeFake, site: &SiteConfig, webhook_url: &str) {
    for (products, recurring) in [
        (&site.packs, None),
        (&site.plans, Some(fakes::stripe::Interval::Month)),
    ] {
        for product in products {
            stripe.add_price_with_product(
                fakes::stripe::PriceSpec {
                    id: product.stripe_price_id.clone(),
                    unit_amount: product.amount_minor,
                    currency: product.currency.clone(),
                    recurring,
                },
                &format!("{} credits", product.credits),
            );
        }
    }
    stripe.set_webhook_endpoint(webhook_url, STRIPE_WEBHOOK_SECRET);
}

/// Runners started by [`TestApp::start_worker`].
pub struct ExtraWorker {
    running: queue::RunningWorker,
    stop: CancellationToken,
}

impl ExtraWorker {
    pub fn health(&self) -> &Arc<WorkerHealth> {
        &self.running.health
    }

    /// Signals shutdown without waiting for the drain.
    pub fn begin_shutdown(&self) {
        self.stop.cancel();
    }

    /// Shuts down and waits for the drain.
    pub async fn stop(self) {
        self.stop.cancel();
        self.running.wait().await;
    }
}

/// The stack on port 0: api, a worker serving every queue of its registry, the S3 stand-in.
pub struct TestApp {
    pub pool: PgPool,
    pub api_addr: SocketAddr,
    /// The api's `/metrics`, `/healthz`, `/readyz` listener.
    pub ops_addr: SocketAddr,
    /// The ops console (password [`OPERATOR_TOKEN`]).
    pub console_addr: SocketAddr,
    /// The worker's ops listener.
    pub worker_ops_addr: Option<SocketAddr>,
    pub client: reqwest::Client,
    pub storage: Storage,
    pub metrics: Metrics,
    pub registry: worker::Registry,
    /// The services the worker runs with (pipeline clients included), for starting more workers.
    pub services: Arc<Services>,
    /// The kie.ai stand-in.
    pub kie: KieFake,
    /// The Stripe stand-in.
    pub stripe: fakes::stripe::StripeFake,
    /// The Google (OpenID Connect) stand-in.
    pub oidc: fakes::oidc::OidcFake,
    /// The Cloudflare Turnstile stand-in.
    pub turnstile: fakes::turnstile::TurnstileFake,
    /// The Google Analytics stand-in (counts gtag.js fetches).
    pub analytics: fakes::analytics::AnalyticsFake,
    pub worker_health: Option<Arc<WorkerHealth>>,
    worker: Option<worker::StartedWorker>,
    api_task: Option<JoinHandle<anyhow::Result<()>>>,
    shutdown: CancellationToken,
    expected_dead: i64,
    finished: bool,
    _s3: fakes::s3::S3Server,
    _temp: tempfile::TempDir,
    pub db: TestDb,
}

impl TestApp {
    /// The default app: the production registry plus test jobs, concurrency 10, a 200 ms poll.
    pub fn builder() -> TestAppBuilder {
        TestAppBuilder {
            registry: test_jobs::registry(),
            queue_config: QueueConfig {
                poll_interval: Duration::from_millis(200),
                ..QueueConfig::default()
            },
            concurrency: 10,
            start_worker: true,
            kie: FakeKieConfig {
                latency: (Duration::from_millis(50), Duration::from_millis(150)),
                image_max_side: 64,
                hmac_key: Some(KIE_HMAC_KEY.to_owned()),
                ..FakeKieConfig::default()
            },
            generation: GenerationConfig {
                deadline: Duration::from_secs(60),
                per_user_per_minute: 1000,
            },
            verify_callback_signatures: true,
            site: SiteConfig::default(),
            database_server: None,
            kie_budget: ((20, Duration::from_millis(10_500)), 10),
            kie_timeout: Duration::from_secs(10),
            turnstile: None,
            drain: (Duration::ZERO, Duration::from_secs(5)),
            api_budgets: api::ApiBudgets::default(),
        }
    }

    pub async fn spawn() -> Self {
        Self::builder().spawn().await
    }

    /// The S3 stand-in's endpoint (bucket `test-bucket`, keys `testkey` / `testsecret`), for worker processes.
    pub fn s3_endpoint(&self) -> String {
        self._s3.endpoint()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.api_addr, path)
    }

    /// A cookie-keeping client, as a browser without JavaScript would be.
    pub fn browser(&self) -> crate::Browser {
        crate::Browser::new(&self.url(""))
    }

    /// Signs `email` in (creating the account if needed) through the sign-in page, the outbox and the link's
    /// landing page, as a person would. Returns the browser, now holding a member session.
    pub async fn sign_in(&self, email: &str) -> crate::Browser {
        let browser = self.browser();
        self.sign_in_with(&browser, email).await;
        browser
    }

    /// Signs in within an existing browser (keeping what its session held, such as a trial image). Returns the
    /// page the sign-in lands on.
    pub async fn sign_in_with(&self, browser: &crate::Browser, email: &str) -> crate::Page {
        let form = browser.visit("/sign-in").await;
        let sent = browser
            .submit(
                "/sign-in/email",
                &[("csrf", &form.csrf()), ("email", email)],
            )
            .await;
        assert!(sent.contains("Check your e-mail"), "{}", sent.body);
        let link = self.latest_link(email, "/sign-in/link").await;
        let landing = browser.visit(&link).await;
        let token = landing
            .field("token")
            .expect("the landing page carries the token");
        let next = landing.field("next").unwrap_or_else(|| "/".into());
        let home = browser
            .submit(
                "/sign-in/link",
                &[
                    ("csrf", &landing.csrf()),
                    ("token", &token),
                    ("next", &next),
                ],
            )
            .await;
        assert_eq!(home.status, 200, "{}", home.body);
        home
    }

    /// The newest link to `path` e-mailed to `address`.
    pub async fn latest_link(&self, address: &str, path: &str) -> String {
        let mails = jobs::email::sent_to(&self.pool, address).await.unwrap();
        let mail = mails.last().expect("an e-mail was queued");
        crate::find_link(&mail.body_text, &self.url(path)).expect("the e-mail holds the link")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request reaches the api")
    }

    pub async fn get_with_key(&self, path: &str, api_key: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(api_key)
            .send()
            .await
            .expect("request reaches the api")
    }

    pub async fn healthz(&self) -> reqwest::Response {
        self.get("/healthz").await
    }

    pub async fn readyz(&self) -> reqwest::Response {
        self.get("/readyz").await
    }

    /// The api's metrics page.
    pub async fn metrics_text(&self) -> String {
        let url = format!("http://{}/metrics", self.ops_addr);
        self.client
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn enqueue<J: Job>(&self, job: &J) -> Enqueued {
        queue::enqueue(&self.pool, job).await.unwrap()
    }

    pub async fn enqueue_with<J: Job>(&self, job: &J, options: EnqueueOptions) -> Enqueued {
        queue::enqueue_with(&self.pool, job, options).await.unwrap()
    }

    /// The newest checkout intents and every job not yet done (with the latest `open_checkout` jobs), as text:
    /// what a browser test prints when the page never reached Stripe.
    pub async fn checkout_report(&self) -> String {
        let intents: Vec<String> = sqlx::query_scalar(
            "SELECT format('%s %s url=%s error=%s age=%s', id, status, url, error, now() - created_at)
               FROM checkout_intents ORDER BY created_at DESC LIMIT 3",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap_or_default();
        let jobs: Vec<String> = sqlx::query_scalar(
            "SELECT format('%s %s %s attempts=%s due_in=%s lock_by=%s last=%s',
                           id, job_type, status, attempts, run_at - now(), lock_by, last_result)
               FROM apalis.jobs
              WHERE status <> 'Done' OR job_type = 'open_checkout'
              ORDER BY run_at DESC LIMIT 20",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap_or_default();
        let mut report = String::from("checkout intents, newest first:\n");
        for intent in intents {
            report.push_str(&format!("  {intent}\n"));
        }
        report.push_str("jobs not done, and every open_checkout:\n");
        for job in jobs {
            report.push_str(&format!("  {job}\n"));
        }
        report
    }

    /// Waits until no job is waiting, scheduled or running (retries and snoozes included).
    pub async fn drain(&self) {
        testing::drain(&self.pool).await;
    }

    /// Starts another worker's runners on this database (its own worker ids, as a second process would have),
    /// serving `queues` as (name, concurrency), with the app's pipeline clients and `config`.
    pub async fn start_worker(&self, queues: &[(&str, usize)], config: QueueConfig) -> ExtraWorker {
        let mut services = Services::new(config.clone(), self.metrics.clone());
        services.pipeline = self.services.pipeline.clone();
        let plans = queues
            .iter()
            .map(|(queue, concurrency)| QueuePlan {
                queue: (*queue).to_owned(),
                concurrency: *concurrency,
            })
            .collect();
        let stop = CancellationToken::new();
        let running =
            queue::Worker::new(self.pool.clone(), self.registry.clone(), Arc::new(services))
                .config(config)
                .metrics(self.metrics.queue.clone())
                .storage_name(jobs::services::WORKER_STORAGE_NAME)
                .start(plans, stop.clone())
                .await
                .expect("the extra worker starts");
        ExtraWorker { running, stop }
    }

    /// A user with `credits` and an API key.
    /// A new API key for an existing user (one signed in through a browser, say), to drive them through the API.
    pub async fn api_key_for(&self, id: Uuid) -> TestUser {
        let key = jobs::accounts::issue_api_key(&self.pool, id, "test")
            .await
            .unwrap();
        TestUser {
            id,
            api_key: key.secret,
        }
    }

    /// Grants `user` `credits` more (a test grant of its own ledger key each time).
    pub async fn grant(&self, user: &TestUser, credits: i64) {
        let mut tx = self.pool.begin().await.unwrap();
        jobs::credits::apply(
            &mut tx,
            user.id,
            jobs::credits::Kind::Grant,
            credits,
            &format!("test-grant:{}", Uuid::new_v4()),
            Value::Null,
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }

    pub async fn create_user(&self, credits: i64) -> TestUser {
        let mut tx = self.pool.begin().await.unwrap();
        let email = format!("user-{}@example.com", Uuid::new_v4().simple());
        let id = jobs::accounts::create_user(&mut tx, &email, None)
            .await
            .unwrap();
        if credits > 0 {
            jobs::credits::apply(
                &mut tx,
                id,
                jobs::credits::Kind::Grant,
                credits,
                &format!("test-grant:{id}"),
                Value::Null,
            )
            .await
            .unwrap();
        }
        let key = jobs::accounts::issue_api_key(&mut *tx, id, "test")
            .await
            .unwrap();
        tx.commit().await.unwrap();
        TestUser {
            id,
            api_key: key.secret,
        }
    }

    pub async fn post_json(&self, path: &str, user: &TestUser, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(&user.api_key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn delete(&self, path: &str, user: &TestUser) -> reqwest::Response {
        self.client
            .delete(self.url(path))
            .bearer_auth(&user.api_key)
            .send()
            .await
            .unwrap()
    }

    /// `POST /api/v1/generations`, returning (status, body).
    pub async fn create_generation(&self, user: &TestUser, body: Value) -> (u16, Value) {
        let response = self.post_json("/api/v1/generations", user, &body).await;
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// `GET /api/v1/generations/{id}`.
    pub async fn generation(&self, user: &TestUser, id: &str) -> (u16, Value) {
        let response = self
            .get_with_key(&format!("/api/v1/generations/{id}"), &user.api_key)
            .await;
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Polls the status endpoint until the generation has finished; returns its final view. Panics after 30 s.
    pub async fn wait_until_finished(&self, user: &TestUser, id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = self.generation(user, id).await;
            assert_eq!(status, 200, "{body}");
            let now: jobs::generations::Status = serde_json::from_value(body["status"].clone())
                .unwrap_or_else(|error| panic!("an unknown status in {body}: {error}"));
            if now.is_final() {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "generation {id} still {} after 30 s",
                body["status"]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Uploads a reference image the way a client does: ask for a presigned PUT, then PUT the bytes to it.
    pub async fn upload_reference(
        &self,
        user: &TestUser,
        bytes: Vec<u8>,
        content_type: &str,
    ) -> String {
        let body = serde_json::json!({ "content_type": content_type, "byte_size": bytes.len() });
        let response = self.post_json("/api/v1/uploads", user, &body).await;
        assert_eq!(response.status(), 201);
        let upload: Value = response.json().await.unwrap();
        let put = self
            .client
            .put(upload["upload_url"].as_str().unwrap())
            .header("content-type", content_type)
            .body(bytes)
            .send()
            .await
            .unwrap();
        assert!(
            put.status().is_success(),
            "PUT to the presigned URL failed: {}",
            put.text().await.unwrap()
        );
        upload["upload_id"].as_str().unwrap().to_owned()
    }

    /// The user's spendable credits.
    pub async fn balance(&self, user: &TestUser) -> i64 {
        jobs::credits::balance(&self.pool, user.id).await.unwrap()
    }

    /// Declares that this test leaves `n` dead jobs on purpose.
    pub fn expect_dead(&mut self, n: i64) {
        self.expected_dead = n;
    }

    /// Status of one job row.
    pub async fn job_status(&self, id: &str) -> queue::JobState {
        testing::job_status(&self.pool, id).await
    }

    /// Deletes every job row: for a test that deliberately leaves work unrun (jobs behind a stopped worker,
    /// deliveries throttled into the future), which [`finish`](Self::finish) would otherwise report.
    pub async fn discard_unrun_jobs(&self) {
        testing::discard_unrun_jobs(&self.pool).await;
    }

    /// Stops api and worker (draining), then fails if jobs were left unrun, running or dead beyond those
    /// declared with [`expect_dead`](Self::expect_dead).
    pub async fn finish(mut self) {
        // A test's last request may have enqueued a job a moment ago (an e-mail, say).
        if self.worker.is_some() {
            testing::settle_due_jobs(&self.pool).await;
        }
        self.stop().await;
        testing::assert_nothing_left(&self.pool, self.expected_dead).await;
        self.finished = true;
    }

    /// Sends the shutdown signal (as SIGTERM would) and returns at once; `finish` then waits for the drain.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Stops api and worker (draining) without checking the queue.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(worker) = self.worker.take() {
            worker.wait().await;
        }
        if let Some(api) = self.api_task.take() {
            api.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if !self.finished && !std::thread::panicking() {
            panic!(
                "TestApp dropped without finish(): call app.finish().await so leftover jobs fail the test"
            );
        }
    }
}
