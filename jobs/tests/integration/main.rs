//! Integration tests of the jobs crate against real Postgres: the product's use of the queue (pruning by its
//! retention settings, the gauges on the api's metrics page), the credit ledger's database-enforced rules, the
//! rate limit, and the schema's privacy promises. The queue runtime's own tests are in `queue/tests`.

mod email;
mod ledger;
mod pools;
mod queue;
mod rate_limit;
mod schema;
