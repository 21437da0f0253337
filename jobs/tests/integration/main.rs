//! Integration tests of the jobs crate against real Postgres: the queue layer's guard rails, the credit
//! ledger's database-enforced rules, the rate limit, and the schema's privacy promises.

mod email;
mod ledger;
mod queue;
mod rate_limit;
mod schema;
