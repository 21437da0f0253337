//! A fresh database per test. The first test of a run builds a template database holding the queue's schema
//! alone — apalis-postgres' `PostgresStorage::setup`, then `queue::schema::migrate` — under an advisory lock, so
//! parallel test processes build it once; each test then copies it with `CREATE DATABASE … TEMPLATE`, which
//! takes milliseconds. The template's name carries a hash of both migration sets, so a changed migration (or
//! another apalis-postgres) builds a new template.

use std::time::Duration;

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

pub fn url_for(database: &str) -> String {
    let mut url = url::Url::parse(&admin_url()).expect("admin url parses");
    url.set_path(&format!("/{database}"));
    url.to_string()
}

/// Builds the queue's schema on an empty database: what an application does at start.
pub async fn build_schema(pool: &PgPool) {
    apalis_postgres::PostgresStorage::<()>::setup(pool)
        .await
        .expect("apalis-postgres' migrations apply to a fresh database");
    queue::schema::migrate(pool)
        .await
        .expect("the queue's migrations apply after apalis-postgres'");
}

/// Hashes what the template is built from (with the server's `md5`, to need no hashing crate): the
/// apalis-postgres release and its migrations, then the queue's migrations.
async fn template_name(admin: &mut PgConnection) -> String {
    let mut fingerprint = b"apalis-postgres 1.0.0\n".to_vec();
    let migrators = [
        apalis_postgres::PostgresStorage::<()>::migrations(),
        queue::schema::migrator(),
    ];
    for migration in migrators.iter().flat_map(|m| m.iter()) {
        fingerprint.extend(migration.version.to_le_bytes());
        fingerprint.extend(migration.checksum.iter());
    }
    let hash: String = sqlx::query_scalar("SELECT md5($1)")
        .bind(fingerprint)
        .fetch_one(admin)
        .await
        .unwrap();
    format!("ci2_queue_template_{}", &hash[..16])
}

static TEMPLATE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();

/// A connection to the server's `postgres` database.
pub async fn admin() -> PgConnection {
    PgConnection::connect(&admin_url())
        .await
        .unwrap_or_else(|error| {
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
            let mut admin = admin().await;
            let name = template_name(&mut admin).await;
            // One builder across all test processes (testkit's template has a lock of its own, 8412001).
            sqlx::query("SELECT pg_advisory_lock(8412002)")
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
                build_schema(&pool).await;
                pool.close().await;
                admin
                    .execute(sqlx::AssertSqlSafe(format!(
                        "ALTER DATABASE {building} RENAME TO {name}"
                    )))
                    .await
                    .unwrap();
            }
            sqlx::query("SELECT pg_advisory_unlock(8412002)")
                .execute(&mut admin)
                .await
                .unwrap();
            name
        })
        .await
        .clone()
}

/// A database of its own for one test, named `ci2_test_q_…` (CI drops leftovers of `ci2_test_%`); dropped
/// (with FORCE) when this value is dropped.
pub struct TestDb {
    pub name: String,
    pub pool: PgPool,
}

impl TestDb {
    /// A copy of the template: the queue's schema, no rows.
    pub async fn new() -> Self {
        let template = ensure_template().await;
        Self::create(Some(&template)).await
    }

    /// An empty database (no schema at all), for a test of the migrations themselves.
    pub async fn empty() -> Self {
        Self::create(None).await
    }

    async fn create(template: Option<&str>) -> Self {
        let name = format!("ci2_test_q_{}", uuid::Uuid::new_v4().simple());
        let statement = match template {
            Some(template) => format!("CREATE DATABASE {name} TEMPLATE {template}"),
            None => format!("CREATE DATABASE {name}"),
        };
        let mut admin = admin().await;
        let mut delay = Duration::from_millis(20);
        loop {
            // Copying fails while another session is connected to the template (another test copying it).
            match admin.execute(sqlx::AssertSqlSafe(statement.clone())).await {
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
        let pool = PgPoolOptions::new()
            .max_connections(30)
            .connect(&url_for(&name))
            .await
            .unwrap();
        Self { name, pool }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin_url = admin_url();
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
