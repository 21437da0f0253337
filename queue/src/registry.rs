//! Type-erased handlers, one per job kind, looked up by queue name.
//!
//! The payload reaches a handler as raw bytes and is decoded *inside* it: a payload that does not decode fails
//! that one job permanently, with the decode error kept, and never the worker (apalis sharp edge 4).

use std::{collections::BTreeMap, sync::Arc};

use futures::{FutureExt, future::BoxFuture};

use crate::job::{Job, JobContext, JobError, Outcome, RetryPolicy};

type HandlerFn<C> =
    dyn Fn(Vec<u8>, JobContext<C>) -> BoxFuture<'static, Result<Outcome, JobError>> + Send + Sync;

/// One registered job kind.
pub struct Handler<C> {
    pub queue: &'static str,
    pub policy: RetryPolicy,
    run: Arc<HandlerFn<C>>,
}

impl<C> Clone for Handler<C> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue,
            policy: self.policy,
            run: self.run.clone(),
        }
    }
}

impl<C> Handler<C> {
    pub fn call(
        &self,
        payload: Vec<u8>,
        ctx: JobContext<C>,
    ) -> BoxFuture<'static, Result<Outcome, JobError>> {
        (self.run)(payload, ctx)
    }
}

impl<C> std::fmt::Debug for Handler<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handler")
            .field("queue", &self.queue)
            .field("policy", &self.policy)
            .finish()
    }
}

/// The job kinds a process knows, by queue name, all taking the application context `C`.
pub struct Registry<C> {
    handlers: BTreeMap<&'static str, Handler<C>>,
}

impl<C> Clone for Registry<C> {
    fn clone(&self) -> Self {
        Self {
            handlers: self.handlers.clone(),
        }
    }
}

impl<C> std::fmt::Debug for Registry<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.handlers.values()).finish()
    }
}

impl<C> Default for Registry<C> {
    fn default() -> Self {
        Self {
            handlers: BTreeMap::new(),
        }
    }
}

impl<C: Clone + Send + Sync + 'static> Registry<C> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a job kind. Panics on a duplicate name: two kinds sharing a queue would read each other's payloads.
    pub fn register<J: Job<Context = C>>(mut self) -> Self {
        let run: Arc<HandlerFn<C>> = Arc::new(|payload: Vec<u8>, ctx: JobContext<C>| {
            async move {
                let job: J = serde_json::from_slice(&payload).map_err(|error| {
                    JobError::permanent(anyhow::anyhow!(
                        "payload of {} could not be decoded: {error}",
                        J::NAME
                    ))
                })?;
                job.run(ctx).await
            }
            .boxed()
        });
        let previous = self.handlers.insert(
            J::NAME,
            Handler {
                queue: J::NAME,
                policy: J::POLICY,
                run,
            },
        );
        assert!(previous.is_none(), "job kind {} registered twice", J::NAME);
        self
    }

    pub fn get(&self, queue: &str) -> Option<&Handler<C>> {
        self.handlers.get(queue)
    }

    pub fn queues(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.handlers.keys().copied()
    }
}
