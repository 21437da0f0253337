//! What operators do, from the CLI (`createimage2 jobs …`, `upstream …`) and the ops console alike: each action
//! checks its target, acts, and records who did what, to what, when and why in `operator_actions` (table in
//! `migrations/*_operations.sql`) in the same transaction, and logs it. The console and the CLI only parse and
//! print.

use chrono::{DateTime, Utc};
use queue::ops::{self, DeadJobFilter};
use sqlx::{PgConnection, PgPool};

use crate::text_enum::text_enum;
use crate::upstream::{self, PauseKind};

text_enum! {
    /// Where an action came from (column `operator_actions.via`).
    pub enum Via {
        Cli = "cli",
        Console = "console",
    }
}

/// Who acts: a name (the console's HTTP Basic user name, the CLI's `--actor` or `$SUDO_USER`/`$USER`) and where;
/// and the queues there are to act on (the job registry's).
#[derive(Debug, Clone)]
pub struct Operator {
    pub actor: String,
    pub via: Via,
    queues: Vec<&'static str>,
}

/// Why an action was refused.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("unknown queue {queue:?}; the queues are: {}", known.join(", "))]
    UnknownQueue {
        queue: String,
        known: Vec<&'static str>,
    },
    #[error("unknown upstream {upstream:?}; the upstreams are: {}", upstream::KNOWN.join(", "))]
    UnknownUpstream { upstream: String },
    #[error("job {id} not found in a state that allows this")]
    JobNotInState { id: String },
    #[error("an operator name is required")]
    NoActor,
    #[error("a reason is required: it is kept in the audit trail")]
    NoReason,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// One recorded action.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Action {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub via: Via,
    pub action: String,
    pub target: String,
    pub reason: String,
    pub detail: serde_json::Value,
}

/// The most recent actions, newest first.
pub async fn recent_actions(pool: &PgPool, limit: i64) -> sqlx::Result<Vec<Action>> {
    sqlx::query_as(
        "SELECT id, at, actor, via, action, target, reason, detail FROM operator_actions
          ORDER BY at DESC, id DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

fn known_upstream(name: &str) -> Result<(), OperatorError> {
    if upstream::KNOWN.contains(&name) {
        Ok(())
    } else {
        Err(OperatorError::UnknownUpstream {
            upstream: name.to_owned(),
        })
    }
}

impl Operator {
    /// An operator acting on the queues of [`crate::kinds::registry`].
    pub fn new(actor: impl Into<String>, via: Via) -> Result<Self, OperatorError> {
        Self::acting_on(actor, via, crate::kinds::registry().queues())
    }

    /// An operator acting on `queues` (the registry the fleet runs; the console knows it already).
    pub fn acting_on(
        actor: impl Into<String>,
        via: Via,
        queues: impl IntoIterator<Item = &'static str>,
    ) -> Result<Self, OperatorError> {
        let actor = actor.into().trim().to_owned();
        if actor.is_empty() {
            return Err(OperatorError::NoActor);
        }
        let mut queues: Vec<&'static str> = queues.into_iter().collect();
        queues.sort_unstable();
        Ok(Self { actor, via, queues })
    }

    fn known_queue(&self, queue: &str) -> Result<(), OperatorError> {
        if self.queues.contains(&queue) {
            Ok(())
        } else {
            Err(OperatorError::UnknownQueue {
                queue: queue.to_owned(),
                known: self.queues.clone(),
            })
        }
    }

    /// Every action says why.
    fn reason(reason: &str) -> Result<&str, OperatorError> {
        let reason = reason.trim();
        if reason.is_empty() {
            Err(OperatorError::NoReason)
        } else {
            Ok(reason)
        }
    }

    /// Records an action in `tx` (the transaction that performs it) and logs it.
    pub async fn record(
        &self,
        tx: &mut PgConnection,
        action: &str,
        target: &str,
        reason: &str,
        detail: serde_json::Value,
    ) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO operator_actions (actor, via, action, target, reason, detail)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&self.actor)
        .bind(self.via)
        .bind(action)
        .bind(target)
        .bind(reason)
        .bind(&detail)
        .execute(&mut *tx)
        .await?;
        tracing::info!(
            operator = %self.actor,
            via = %self.via,
            action,
            target,
            reason,
            %detail,
            "operator action"
        );
        Ok(())
    }

    /// Runs `act` on job `id` and records it, in one transaction; when `act` changed nothing the job was not in
    /// a state that allows it, and nothing is recorded.
    async fn one_job(
        &self,
        pool: &PgPool,
        action: &str,
        id: &str,
        reason: &str,
        act: impl AsyncFnOnce(&mut PgConnection) -> sqlx::Result<bool>,
    ) -> Result<(), OperatorError> {
        let mut tx = pool.begin().await?;
        if !act(&mut tx).await? {
            return Err(OperatorError::JobNotInState { id: id.to_owned() });
        }
        let queue: Option<String> =
            sqlx::query_scalar("SELECT job_type FROM apalis.jobs WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        self.record(
            &mut tx,
            action,
            id,
            reason,
            serde_json::json!({ "queue": queue }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Runs a dead or cancelled job again from its first attempt.
    pub async fn retry_job(
        &self,
        pool: &PgPool,
        id: &str,
        reason: &str,
    ) -> Result<(), OperatorError> {
        let reason = Self::reason(reason)?;
        self.one_job(pool, "jobs.retry", id, reason, async |tx| {
            ops::retry_job(&mut *tx, id).await
        })
        .await
    }

    /// Cancels a job that has not started.
    pub async fn cancel_job(
        &self,
        pool: &PgPool,
        id: &str,
        reason: &str,
    ) -> Result<(), OperatorError> {
        let reason = Self::reason(reason)?;
        self.one_job(pool, "jobs.cancel", id, reason, async |tx| {
            ops::cancel_job(&mut *tx, id).await
        })
        .await
    }

    /// Deletes a dead job for good (its row, so its queue is recorded before).
    pub async fn discard_job(
        &self,
        pool: &PgPool,
        id: &str,
        reason: &str,
    ) -> Result<(), OperatorError> {
        let reason = Self::reason(reason)?;
        let mut tx = pool.begin().await?;
        let queue: Option<String> = sqlx::query_scalar(
            "SELECT job_type FROM apalis.jobs WHERE id = $1 AND status = 'Failed' FOR UPDATE",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        if queue.is_none() || !ops::discard_job(&mut *tx, id).await? {
            return Err(OperatorError::JobNotInState { id: id.to_owned() });
        }
        self.record(
            &mut tx,
            "jobs.discard",
            id,
            reason,
            serde_json::json!({ "queue": queue }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Runs `act` in a transaction and records the action in it, with `detail` drawn from what `act` returned.
    async fn recorded<T>(
        &self,
        pool: &PgPool,
        (action, target, reason): (&str, &str, &str),
        act: impl AsyncFnOnce(&mut PgConnection) -> sqlx::Result<T>,
        detail: impl FnOnce(&T) -> serde_json::Value,
    ) -> Result<T, OperatorError> {
        let mut tx = pool.begin().await?;
        let result = act(&mut tx).await?;
        self.record(&mut tx, action, target, reason, detail(&result))
            .await?;
        tx.commit().await?;
        Ok(result)
    }

    /// Runs the dead jobs `filter` selects again. Returns how many.
    pub async fn retry_dead(
        &self,
        pool: &PgPool,
        filter: &DeadJobFilter<'_>,
        reason: &str,
    ) -> Result<u64, OperatorError> {
        let reason = Self::reason(reason)?;
        self.known_queue(filter.queue)?;
        let what = ("jobs.retry_dead", filter.queue, reason);
        self.recorded(
            pool,
            what,
            async |tx| ops::retry_dead(tx, filter).await,
            |n| bulk(filter, *n),
        )
        .await
    }

    /// Deletes the dead jobs `filter` selects for good. Returns how many.
    pub async fn discard_dead(
        &self,
        pool: &PgPool,
        filter: &DeadJobFilter<'_>,
        reason: &str,
    ) -> Result<u64, OperatorError> {
        let reason = Self::reason(reason)?;
        self.known_queue(filter.queue)?;
        let what = ("jobs.discard_dead", filter.queue, reason);
        self.recorded(
            pool,
            what,
            async |tx| ops::discard_dead(tx, filter).await,
            |n| bulk(filter, *n),
        )
        .await
    }

    /// Stops workers claiming from `queue`. Returns false when it was paused already.
    pub async fn pause_queue(
        &self,
        pool: &PgPool,
        queue: &str,
        reason: &str,
    ) -> Result<bool, OperatorError> {
        let reason = Self::reason(reason)?;
        self.known_queue(queue)?;
        let what = ("jobs.pause", queue, reason);
        self.recorded(
            pool,
            what,
            async |tx| ops::pause_queue(tx, queue, reason).await,
            changed,
        )
        .await
    }

    /// Lets workers claim from `queue` again. Returns false when it was not paused.
    pub async fn resume_queue(
        &self,
        pool: &PgPool,
        queue: &str,
        reason: &str,
    ) -> Result<bool, OperatorError> {
        let reason = Self::reason(reason)?;
        self.known_queue(queue)?;
        let what = ("jobs.resume", queue, reason);
        self.recorded(
            pool,
            what,
            async |tx| ops::resume_queue(tx, queue).await,
            changed,
        )
        .await
    }

    /// Pauses submissions to `upstream` until an operator resumes them (the probe leaves an operator's pause
    /// alone). Returns false when an operator had paused it already.
    pub async fn pause_upstream(
        &self,
        pool: &PgPool,
        name: &str,
        reason: &str,
    ) -> Result<bool, OperatorError> {
        let reason = Self::reason(reason)?;
        known_upstream(name)?;
        let what = ("upstream.pause", name, reason);
        let act = async |tx: &mut PgConnection| {
            upstream::pause(tx, name, PauseKind::Operator, reason).await
        };
        self.recorded(pool, what, act, changed).await
    }

    /// Resumes submissions to `upstream`, whatever paused them. Returns false when it was not paused.
    pub async fn resume_upstream(
        &self,
        pool: &PgPool,
        name: &str,
        reason: &str,
    ) -> Result<bool, OperatorError> {
        let reason = Self::reason(reason)?;
        known_upstream(name)?;
        let what = ("upstream.resume", name, reason);
        self.recorded(
            pool,
            what,
            async |tx| upstream::resume(tx, name).await,
            changed,
        )
        .await
    }
}

/// The detail of a pause or resume: whether it changed anything.
fn changed(changed: &bool) -> serde_json::Value {
    serde_json::json!({ "changed": changed })
}

/// The detail of a bulk action: how many jobs, and which.
fn bulk(filter: &DeadJobFilter<'_>, jobs: u64) -> serde_json::Value {
    serde_json::json!({
        "jobs": jobs,
        "error_contains": filter.error_contains,
        "limit": filter.limit,
    })
}
