//! What every job of this application receives: the queue runtime hands each attempt a
//! [`JobContext`] whose `app` is the process's [`Services`].

use std::sync::Arc;

use crate::{
    config::{GenerationConfig, KieConfig, QueueConfig},
    kie::KieClient,
    storage::Storage,
    stripe::StripeClient,
    telemetry::Metrics,
};

/// The name this application's workers are listed under (`apalis.workers.storage_name`; the operators' console
/// lists the workers of this name).
pub const WORKER_STORAGE_NAME: &str = "createimage2";

/// The context of every job kind in [`crate::kinds`].
pub type JobContext = queue::JobContext<Arc<Services>>;

/// Long-lived clients and settings shared by every job in a process.
pub struct Services {
    /// The queue's settings (retention, read by the pruning job).
    pub queue: QueueConfig,
    pub metrics: Metrics,
    /// The generation pipeline's clients; absent in processes (and tests) that run no pipeline job.
    pub pipeline: Option<Pipeline>,
}

/// Clients and settings of the generation pipeline.
#[derive(Clone)]
pub struct Pipeline {
    pub storage: Storage,
    pub kie: KieClient,
    pub kie_config: KieConfig,
    pub generation: GenerationConfig,
    /// Base of the callback URLs handed to kie.ai (and of links in e-mails).
    pub public_base_url: url::Url,
    /// Stripe, when configured (`STRIPE_SECRET_KEY`).
    pub stripe: Option<StripeClient>,
}

impl Services {
    pub fn new(queue: QueueConfig, metrics: Metrics) -> Self {
        Self {
            queue,
            metrics,
            pipeline: None,
        }
    }

    pub fn with_pipeline(mut self, pipeline: Pipeline) -> Self {
        self.pipeline = Some(pipeline);
        self
    }

    /// The pipeline, or a retryable error in a process configured without it.
    pub fn pipeline(&self) -> Result<&Pipeline, queue::JobError> {
        self.pipeline.as_ref().ok_or_else(|| {
            queue::JobError::Retryable(anyhow::anyhow!(
                "this worker runs without the generation pipeline"
            ))
        })
    }
}
