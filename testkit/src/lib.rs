//! The test harness (a dev-dependency, and `loadtest`'s for its chaos run; never part of a production role).
//!
//! - [`TestDb`]: a fresh database per test, copied from a migrated template, dropped afterwards.
//! - [`TestApp`]: api and worker on port 0 against a fresh database and the in-process S3 server, one method
//!   per endpoint, `drain()` to run the queue dry, and `finish()` that fails a test leaving jobs unrun or
//!   dead unless it said it expects them.
//! - [`Browser`]: a cookie-keeping client for the site's pages and forms.
//! - [`history`]: months of generations, images, ledger rows and purchases for several members, planted by SQL.
//! - [`chaos`]: the chaos run and its audit (worker processes killed, Postgres restarted, faults injected).
//! - [`test_jobs`]: job kinds that succeed, fail, panic, hang, snooze or wait for a gate on demand.
//! - [`eventually`] and [`blocked_on_lock`]: waiting for a condition instead of sleeping for a guessed time.

mod app;
mod browser;
pub mod chaos;
mod db;
pub mod history;
pub mod images;
pub mod test_jobs;
mod wait;
pub mod webdriver;

pub use app::{
    ExtraWorker, GA4_ID, GOOGLE_CLIENT_ID, GOOGLE_EMAIL, GOOGLE_SUB, KIE_HMAC_KEY, OPERATOR_TOKEN,
    STRIPE_SECRET_KEY, STRIPE_WEBHOOK_SECRET, TestApp, TestAppBuilder, TestUser, register_products,
};
pub use browser::{Browser, Page, find_link};
pub use db::{TestDb, admin_url};
pub use wait::{blocked_on_lock, eventually, worker_listening};
