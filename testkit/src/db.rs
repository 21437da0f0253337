//! A fresh database per test. The first test of a run builds a template database with every migration
//! (under an advisory lock, so parallel test processes build it once); each test then copies it with
//! `CREATE DATABASE … TEMPLATE`, which takes milliseconds. The template's name carries a hash of the
//! migrations, so a changed migration builds a new template.

use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::{Connection, Executor, PgConnection, PgPool, postgres::PgPoolOptions};

/// The admin URL of the test server: `TEST_DATABASE_URL`, else the server of `DATABASE_URL`, else
/// `postgres://postgres@127.0.0.1:5432/postgres`.
pub fn admin_url() -> String {
    let configured = std::env::var("TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .ok();
    match configured.and_then(|u| url::Url::parse(&u).ok()) {
        Some(mut url) => {
            url.set_path("/postgres");
            url.to_string()
        }
        None => "postgres://postgres@127.0.0.1:5432/postgres".to_owned(),
    }
}

fn url_for(database: &str) -> String {
    url_on(&admin_url(), database)
}

fn url_on(admin_url: &str, database: &str) -> String {
    let mut url = url::Url::parse(admin_url).expect("admin url parses");
    url.set_path(&format!("/{database}"));
    url.to_string()
}

fn template_name() -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"apalis-postgres 1.0.0\n");
    for migration in jobs::db::migrator()
        .iter()
        .chain(queue::schema::migrator().iter())
    {
        hasher.update(migration.version.to_le_bytes());
        hasher.update(&migration.checksum);
    }
    format!("ci2_template_{}", &hex::encode(hasher.finalize())[..16])
}

static TEMPLATE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();

async fn admin() -> PgConnection {
    PgConnection::connect(&admin_url()).await.unwrap_or_else(|error| {
        panic!(
            "cannot reach the test Postgres at {} ({error}). Start it (`pg_ctlcluster 15 main start`) or set \
             TEST_DATABASE_URL",
            admin_url()
        )
    })
}

async fn ensure_template() -> String {
    TEMPLATE
        .get_or_init(|| async {
            let name = template_name();
            let mut admin = admin().await;
            // One builder across all test processes.
            sqlx::query("SELECT pg_advisory_lock(8412001)")
                .execute(&mut admin)
                .await
                .unwrap();
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                    .bind(&name)
                    .fetch_one(&mut admin)
                    .await
                    .unwrap();
            if !exists {
                let building = format!("{name}_building");
                admin
                    .execute(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {building} WITH (FORCE)"
                    )))
                    .await
                    .unwrap();
                admin
                    .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {building}")))
                    .await
                    .unwrap();
                let pool = PgPoolOptions::new()
                    .max_connections(2)
                    .connect(&url_for(&building))
                    .await
                    .unwrap();
                jobs::db::migrate(&pool)
                    .await
                    .expect("migrations apply to a fresh database");
                pool.close().await;
                admin
                    .execute(sqlx::AssertSqlSafe(format!(
                        "ALTER DATABASE {building} RENAME TO {name}"
                    )))
                    .await
                    .unwrap();
            }
            sqlx::query("SELECT pg_advisory_unlock(8412001)")
                .execute(&mut admin)
                .await
                .unwrap();
            name
        })
        .await
        .clone()
}

/// A database of its own for one test; dropped (with FORCE) when this value is dropped.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
    /// The server's admin URL (to drop the database).
    admin_url: String,
}

impl TestDb {
    pub async fn new() -> Self {
        let template = ensure_template().await;
        let name = format!("ci2_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = admin().await;
        let mut delay = Duration::from_millis(20);
        loop {
            // Copying fails while another session is connected to the template (another test copying it).
            match admin
                .execute(sqlx::AssertSqlSafe(format!(
                    "CREATE DATABASE {name} TEMPLATE {template}"
                )))
                .await
            {
                Ok(_) => break,
                Err(error)
                    if delay < Duration::from_secs(5)
                        && error.to_string().contains("is being accessed") =>
                {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(error) => panic!("creating test database {name}: {error}"),
            }
        }
        let url = url_for(&name);
        let pool = PgPoolOptions::new()
            .max_connections(30)
            .connect(&url)
            .await
            .unwrap();
        Self {
            name,
            url,
            pool,
            admin_url: admin_url(),
        }
    }

    /// A migrated database on another server (`admin_url` names its `postgres` database), e.g. a private
    /// cluster a test restarts. No template there: the migrations run on the new database.
    pub async fn on_server(admin_url: &str) -> Self {
        let name = format!("ci2_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(admin_url)
            .await
            .unwrap_or_else(|error| panic!("cannot reach Postgres at {admin_url}: {error}"));
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .unwrap_or_else(|error| panic!("creating database {name}: {error}"));
        let url = url_on(admin_url, &name);
        let pool = PgPoolOptions::new()
            .max_connections(30)
            .connect(&url)
            .await
            .unwrap();
        jobs::db::migrate(&pool)
            .await
            .expect("migrations apply to a fresh database");
        Self {
            name,
            url,
            pool,
            admin_url: admin_url.to_owned(),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin_url = self.admin_url.clone();
        // Drop runs outside async context: use a thread with its own small runtime.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
                    let _ = admin
                        .execute(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .await;
                }
            });
        })
        .join();
    }
}
