//! Protocol-level stand-ins for external services, for tests and `dev` only.
//!
//! Invariant: no production code path depends on this crate; only the `dev` subcommand and tests do.
//! Each stand-in is a real server speaking the real protocol, so the production clients are what gets tested.

pub mod analytics;
pub mod kie;
pub mod oidc;
pub mod s3;
pub mod stripe;
pub mod turnstile;
