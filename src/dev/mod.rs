//! `createimage2 dev`: the whole stack in one process on local defaults.

pub mod postgres;

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::Context as _;
use jobs::{
    config::{DatabaseConfig, GenerationConfig, KieConfig, LogFormat, QueueConfig, StorageConfig},
    credits,
    kie::KieClient,
    services::{Pipeline, Services},
    storage::Storage,
    telemetry::{self, Metrics},
};
use tokio_util::sync::CancellationToken;

/// The seeded demo account.
pub const DEMO_EMAIL: &str = "demo@createimage2.local";
/// Credits the demo account starts with.
pub const DEMO_CREDITS: i64 = 1000;

/// Where `dev` keeps its files: `$CARGO_TARGET_DIR/dev` or `target/dev`.
pub fn dev_root() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| PathBuf::from("target"), PathBuf::from)
        .join("dev")
}

pub async fn run(
    listen: SocketAddr,
    metrics_listen: SocketAddr,
    console_listen: SocketAddr,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    telemetry::init_logging(LogFormat::Pretty);
    let root = std::path::absolute(dev_root())?;
    let database = postgres::resolve(
        std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()),
        "postgres://postgres@127.0.0.1:5432/postgres",
        &root.join("postgres"),
    )
    .await?;
    tracing::info!(source = database.source, "database");
    let pool = jobs::db::pool(&DatabaseConfig::direct(database.url.clone(), 30))?;
    jobs::db::migrate(&pool).await?;

    let s3 = fakes::s3::S3Server::start(
        &root.join("s3"),
        "127.0.0.1:0".parse()?,
        "devaccesskey",
        "devsecretkey",
    )
    .await?;
    let storage = Storage::new(&StorageConfig {
        endpoint: s3.endpoint(),
        region: "auto".into(),
        bucket: "createimage2-dev".into(),
        access_key_id: s3.access_key.clone(),
        secret_access_key: s3.secret_key.clone().into(),
    });
    storage.ensure_bucket().await?;

    // kie.ai stand-in, with realistic latency (15–40 s) unless DEV_KIE_LATENCY_MS=min-max says otherwise.
    let latency = dev_kie_latency()?;
    let kie = fakes::kie::KieFake::start(fakes::kie::FakeKieConfig {
        api_key: "dev-kie-key".into(),
        latency,
        hmac_key: Some("dev-kie-hmac".into()),
        ..fakes::kie::FakeKieConfig::default()
    })
    .await?;
    let stripe = fakes::stripe::StripeFake::start("sk_test_dev").await?;
    let listener = telemetry::bind(listen).await?;
    let site = listener.local_addr()?;
    let site_config = dev_site(site).await?;
    for (products, recurring) in [
        (&site_config.config.packs, None),
        (
            &site_config.config.plans,
            Some(fakes::stripe::Interval::Month),
        ),
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
    stripe.set_webhook_endpoint(&format!("http://{site}/webhooks/stripe"), "whsec_dev");
    let kie_config = KieConfig {
        base_url: kie.base_url().parse()?,
        api_key: "dev-kie-key".to_owned().into(),
        webhook_hmac_key: Some("dev-kie-hmac".to_owned().into()),
        create_budget: (20, std::time::Duration::from_millis(10_500)),
        record_info_per_second: 10,
        request_timeout: std::time::Duration::from_secs(30),
    };

    let api_key = seed_demo_account(&pool).await?;
    let metrics = Metrics::new("dev");
    metrics.watch_pool(&pool);
    let generation = GenerationConfig::default();
    let pipeline = Pipeline {
        storage: storage.clone().with_metrics(metrics.clone()),
        kie: KieClient::new(&kie_config, metrics.clone()),
        kie_config: kie_config.clone(),
        generation: generation.clone(),
        public_base_url: format!("http://{site}").parse()?,
        stripe: Some(jobs::stripe::StripeClient::new(
            jobs::stripe::StripeConfig {
                api_base: stripe.base_url().parse()?,
                secret_key: "sk_test_dev".to_owned().into(),
                webhook_secret: Some("whsec_dev".to_owned().into()),
            },
            metrics.clone(),
        )),
    };
    let services =
        Arc::new(Services::new(QueueConfig::default(), metrics.clone()).with_pipeline(pipeline));
    let registry = jobs::kinds::registry();
    let plans = worker::plans(&registry, "all", &[])?;
    let started = worker::Worker::with_parts(pool.clone(), registry, services, plans, None)
        .start(shutdown.clone())
        .await?;
    let scheduler = scheduler::Scheduler::with_parts(
        pool.clone(),
        jobs::schedule::schedules(),
        metrics.clone(),
        None,
    );
    let scheduler = tokio::spawn(scheduler.run_until_stopped(shutdown.clone()));

    let state = api::AppState::new(pool.clone(), metrics)
        .with_worker_health(started.health.clone())
        .owning_queue_gauges()
        .with_pipeline(api::ApiPipeline {
            storage: storage.clone(),
            kie_webhook_hmac_key: kie_config.webhook_hmac_key.clone(),
            generation,
        })
        .with_site(api::site::SiteState::new(
            site_config.config,
            format!("http://{site}").parse()?,
            &api::storage_origin(&s3.endpoint()),
            true,
        ))
        .with_stripe_webhook_secret("whsec_dev".to_owned().into());
    let ops_listener = telemetry::bind(metrics_listen).await?;
    let operator_token = std::env::var("OPERATOR_TOKEN")
        .ok()
        .filter(|t| t.len() >= 16)
        .unwrap_or_else(|| hex::encode(rand::random::<[u8; 16]>()));
    let console_listener = telemetry::bind(console_listen).await?;
    api::raise_open_files_limit();
    let api = api::Api::with_parts(state, listener, Some(ops_listener))
        .with_console(console_listener, operator_token.clone().into());
    let console = api.console_addr().context("console listener")?;
    let (site, ops) = (api.addr(), api.ops_addr().context("ops listener")?);
    println!();
    println!("  createimage2 dev is running");
    println!("  site and API : http://{site}/");
    println!("  metrics      : http://{ops}/metrics   (health: /healthz, /readyz)");
    println!("  ops console  : http://{console}/   (user: any, password: {operator_token})");
    println!(
        "  database     : {} ({})",
        redact(&database.url),
        database.source
    );
    println!(
        "  S3 (R2 stand-in): {} bucket createimage2-dev",
        s3.endpoint()
    );
    println!("  sign in      : http://{site}/sign-in  (links arrive at http://{site}/dev/outbox)");
    println!(
        "  Google       : stand-in at {} (account {DEV_GOOGLE_EMAIL})",
        site_config.oidc.base_url()
    );
    println!("  demo account : {DEMO_EMAIL}");
    println!("  demo API key : {api_key}");
    println!("  try          : curl -H 'Authorization: Bearer {api_key}' http://{site}/api/v1/me");
    println!(
        "                 curl -H 'Authorization: Bearer {api_key}' -H 'content-type: application/json' \\\n                      -d '{{\"prompt\": \"a lighthouse at dawn\"}}' http://{site}/api/v1/generations"
    );
    println!("  Ctrl-C drains and exits.");
    println!();
    api.run_until_stopped(shutdown.clone()).await?;
    drop(site_config.oidc);
    drop(site_config.turnstile);
    started.wait().await;
    scheduler.await??;
    pool.close().await;
    drop(database);
    Ok(())
}

/// The Google account the OIDC stand-in offers in `dev`.
const DEV_GOOGLE_EMAIL: &str = "dev.google@createimage2.local";

struct DevSite {
    config: jobs::config::SiteConfig,
    oidc: fakes::oidc::OidcFake,
    turnstile: fakes::turnstile::TurnstileFake,
}

/// The site in `dev`: Google sign-in and Turnstile answered by their stand-ins, the e-mail outbox page on,
/// no analytics.
async fn dev_site(site: SocketAddr) -> anyhow::Result<DevSite> {
    let oidc = fakes::oidc::OidcFake::start(fakes::oidc::OidcFakeConfig {
        client_id: "dev-client.apps.googleusercontent.com".into(),
        client_secret: "dev-google-secret".into(),
        redirect_uri: format!("http://{site}/auth/google/callback"),
        accounts: vec![fakes::oidc::OidcAccount {
            sub: "100000000000000000001".into(),
            email: DEV_GOOGLE_EMAIL.into(),
            email_verified: true,
            name: "Dev Google".into(),
        }],
    })
    .await?;
    let turnstile_config = fakes::turnstile::TurnstileFakeConfig {
        hostname: site.ip().to_string(),
        ..Default::default()
    };
    let turnstile = fakes::turnstile::TurnstileFake::start(turnstile_config.clone()).await?;
    let mut config = jobs::config::SiteConfig::from_source(&jobs::config::Env)?;
    config.google = Some(jobs::config::GoogleConfig {
        client_id: "dev-client.apps.googleusercontent.com".into(),
        client_secret: "dev-google-secret".to_owned().into(),
        issuer_url: oidc.issuer().parse()?,
    });
    config.turnstile = Some(jobs::config::TurnstileConfig {
        site_key: turnstile_config.sitekey,
        secret_key: turnstile_config.secret.into(),
        verify_url: turnstile.siteverify_url().parse()?,
        script_url: turnstile.script_url().parse()?,
        expected_hostname: None,
    });
    config.ga4_measurement_id = None;
    config.dev_pages = true;
    Ok(DevSite {
        config,
        oidc,
        turnstile,
    })
}

/// `DEV_KIE_LATENCY_MS=min-max` (default 15000-40000).
fn dev_kie_latency() -> anyhow::Result<(std::time::Duration, std::time::Duration)> {
    let raw = std::env::var("DEV_KIE_LATENCY_MS").unwrap_or_else(|_| "15000-40000".into());
    let (low, high) = raw
        .split_once('-')
        .context("DEV_KIE_LATENCY_MS must look like 15000-40000")?;
    let ms = |v: &str| {
        v.trim()
            .parse::<u64>()
            .map(std::time::Duration::from_millis)
    };
    let (low, high) = (
        ms(low).context("DEV_KIE_LATENCY_MS")?,
        ms(high).context("DEV_KIE_LATENCY_MS")?,
    );
    anyhow::ensure!(low <= high, "DEV_KIE_LATENCY_MS: min must not exceed max");
    Ok((low, high))
}

/// Creates the demo account with credits once, and issues a fresh API key on every start (keys are stored
/// hashed, so an old one cannot be shown again).
async fn seed_demo_account(pool: &sqlx::PgPool) -> anyhow::Result<String> {
    let mut tx = pool.begin().await?;
    let user = match jobs::accounts::find_user_by_email(&mut *tx, DEMO_EMAIL).await? {
        Some(user) => user,
        None => jobs::accounts::create_user(&mut tx, DEMO_EMAIL, Some("Demo")).await?,
    };
    credits::apply(
        &mut tx,
        user,
        credits::Kind::Grant,
        DEMO_CREDITS,
        "dev-seed:demo",
        serde_json::json!({"reason": "dev seed"}),
    )
    .await?;
    let key = jobs::accounts::issue_api_key(&mut *tx, user, "dev").await?;
    tx.commit().await?;
    Ok(key.secret)
}

fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "(unparseable)".into(),
    }
}
