//! Job definitions and the domain they act on, shared by every role (api, worker, scheduler).
//!
//! Invariant: this crate knows nothing of axum or maud; it is the layer both the web tier and the workers
//! stand on. Entry points: [`config::Config`], [`db::migrate`], [`kinds::registry`] (every job kind, run by
//! the `queue` crate with [`services::Services`] as their context), [`schedule`] (periodic work),
//! [`telemetry`].

pub mod accounts;
pub mod api_requests;
pub mod billing;
pub mod checkout;
pub mod config;
pub mod consent;
pub mod credits;
pub mod db;
pub mod email;
pub mod export_requests;
pub mod exports;
pub mod generations;
pub mod kie;
pub mod kinds;
pub mod limits;
pub mod operator;
pub mod policy;
pub mod rate_limit;
pub mod schedule;
pub mod services;
pub mod sign_in_tokens;
pub mod storage;
pub mod stripe;
pub mod telemetry;
pub mod text;
pub mod text_enum;
pub mod trial;
pub mod uploads;
pub mod upstream;
