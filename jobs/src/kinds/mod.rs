//! Every job kind, one per file, and the one list that registers them.
//!
//! Each file holds one payload struct implementing [`queue::Job`] with a stable `NAME` (the persisted queue
//! name: never rename it), its context ([`Services`]), the unique key of the work it does when there is one, and
//! a doc comment saying why it exists and why running it twice is safe.

pub mod build_export;
pub mod delete_account;
pub mod delete_generation;
pub mod expire_exports;
pub mod expire_trial_fingerprints;
pub mod open_checkout;
pub mod poll_generation;
pub mod probe_upstreams;
pub mod process_stripe_event;
pub mod prune_finished_jobs;
pub mod purge_expired_records;
pub mod reconcile_stripe_events;
pub mod rotate_hash_pepper;
pub mod send_email;
pub mod send_policy_notices;
pub mod store_generation;
pub mod submit_generation;

use std::sync::Arc;

use queue::Registry;

use crate::services::Services;

pub use build_export::BuildExport;
pub use delete_account::DeleteAccount;
pub use delete_generation::DeleteGeneration;
pub use expire_exports::ExpireExports;
pub use expire_trial_fingerprints::ExpireTrialFingerprints;
pub use open_checkout::OpenCheckout;
pub use poll_generation::PollGeneration;
pub use probe_upstreams::ProbeUpstreams;
pub use process_stripe_event::ProcessStripeEvent;
pub use prune_finished_jobs::PruneFinishedJobs;
pub use purge_expired_records::PurgeExpiredRecords;
pub use reconcile_stripe_events::ReconcileStripeEvents;
pub use rotate_hash_pepper::RotateHashPepper;
pub use send_email::SendEmail;
pub use send_policy_notices::SendPolicyNotices;
pub use store_generation::StoreGeneration;
pub use submit_generation::SubmitGeneration;

/// The registration list: every job kind the workers run.
pub fn registry() -> Registry<Arc<Services>> {
    Registry::new()
        .register::<SubmitGeneration>()
        .register::<PollGeneration>()
        .register::<StoreGeneration>()
        .register::<DeleteGeneration>()
        .register::<ProbeUpstreams>()
        .register::<PruneFinishedJobs>()
        .register::<SendEmail>()
        .register::<BuildExport>()
        .register::<ExpireExports>()
        .register::<DeleteAccount>()
        .register::<ExpireTrialFingerprints>()
        .register::<RotateHashPepper>()
        .register::<PurgeExpiredRecords>()
        .register::<SendPolicyNotices>()
        .register::<OpenCheckout>()
        .register::<ProcessStripeEvent>()
        .register::<ReconcileStripeEvents>()
}
