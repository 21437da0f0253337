//! Integration tests of the jobs crate against real Postgres: the queue layer's guard rails, the credit
//! ledger's database-enforced rules, and the schema's privacy promises.

mod email;
mod ledger;
mod queue;
mod schema;
