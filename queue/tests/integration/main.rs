//! The queue runtime's guard rails (see `docs/apalis-postgres.md`), each shown against real Postgres, with the
//! harness in `support/`: a database of the queue alone, the test kinds, a worker, nothing of an application.

mod apalis_compat;
mod claims;
mod drain;
mod enqueue;
mod failures;
mod metrics;
mod ops;
mod outages;
mod reaper;
mod scheduling;
mod schema;
mod support;
mod vacuum;
