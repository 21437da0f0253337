//! Reads kie.ai's credit balance every minute (kept in the database, exported by the scheduler), and lifts an
//! automatic pause once the account works again. An operator's pause is left alone: only an operator resumes it
//! (`createimage2 upstream resume`).
//!
//! Why: an account-level error (out of credits, bad key) pauses kie.ai submissions for the whole fleet; once
//! the account is fixed, work should continue without waiting for a person.
//! Safe twice: resuming an upstream that is not paused does nothing.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use queue::{Job, JobError, Outcome, RetryPolicy};

use crate::services::JobContext;
use crate::upstream;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProbeUpstreams {}

impl Job for ProbeUpstreams {
    const NAME: &'static str = "probe_upstreams";
    type Context = std::sync::Arc<crate::services::Services>;
    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 2,
        timeout: Duration::from_secs(30),
        ..RetryPolicy::DEFAULT
    };

    async fn run(self, ctx: JobContext) -> Result<Outcome, JobError> {
        // The credit endpoint answers 401 for a bad key; a positive balance means tasks can be created. Read it
        // every minute: the balance is exported (by the scheduler, from the database) and alerted on before it
        // runs out.
        let balance = ctx.app.pipeline()?.kie.credit().await;
        if let Ok(balance) = balance {
            upstream::record_balance(&ctx.pool, upstream::KIE, balance).await?;
        }
        for pause in upstream::paused(&ctx.pool).await? {
            // An operator's pause holds until an operator resumes it.
            if pause.upstream != upstream::KIE || !pause.probe_due {
                continue;
            }
            match &balance {
                Ok(balance) if *balance > 0.0 => {
                    if upstream::lift_automatic(&ctx.pool, &pause.upstream).await? {
                        tracing::info!(upstream = %pause.upstream, was = %pause.reason, balance, "upstream works again; submissions resumed");
                    }
                }
                outcome => {
                    tracing::warn!(upstream = %pause.upstream, ?outcome, "upstream still unusable; staying paused");
                    upstream::probe_later(&ctx.pool, &pause.upstream, 5).await?;
                }
            }
        }
        Ok(Outcome::Done)
    }
}
