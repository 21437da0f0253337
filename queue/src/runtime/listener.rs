//! The LISTEN connection on apalis-postgres' insert channel that wakes a queue's runner when a due job arrives.

use std::{collections::HashMap, sync::Arc, time::Duration};

use sqlx::{PgPool, postgres::PgListener};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The channel apalis-postgres' insert trigger notifies (payload: JSON with `job_type`).
pub const INSERT_CHANNEL: &str = "apalis::job::insert";

/// Wakes the runner of a queue when apalis' trigger announces an immediate job for it. Reconnects after a
/// database outage; meanwhile the runners' poll keeps work moving.
pub(super) async fn listen_for_inserts(
    pool: PgPool,
    wakers: HashMap<String, Arc<Notify>>,
    stop: CancellationToken,
) {
    #[derive(serde::Deserialize)]
    struct Insert {
        job_type: String,
    }
    loop {
        let connected = stop
            .run_until_cancelled(PgListener::connect_with(&pool))
            .await;
        let mut listener = match connected {
            None => return,
            Some(Ok(listener)) => listener,
            Some(Err(error)) => {
                tracing::warn!(error = %error, "LISTEN connection failed; retrying");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        match stop
            .run_until_cancelled(listener.listen(INSERT_CHANNEL))
            .await
        {
            None => return,
            Some(Ok(())) => {}
            Some(Err(error)) => {
                tracing::warn!(error = %error, "LISTEN failed; retrying");
                if stop
                    .run_until_cancelled(tokio::time::sleep(Duration::from_secs(1)))
                    .await
                    .is_none()
                {
                    return;
                }
                continue;
            }
        }
        loop {
            let notification = tokio::select! {
                () = stop.cancelled() => return,
                notification = listener.try_recv() => notification,
            };
            match notification {
                Ok(Some(notification)) => {
                    if let Ok(insert) = serde_json::from_str::<Insert>(notification.payload())
                        && let Some(wake) = wakers.get(&insert.job_type)
                    {
                        wake.notify_one();
                    }
                }
                Ok(None) => {
                    // Connection lost and re-established by sqlx: notifications may have been missed.
                    wakers.values().for_each(|wake| wake.notify_one());
                }
                Err(error) => {
                    tracing::warn!(error = %error, "LISTEN connection broke; reconnecting");
                    break;
                }
            }
        }
    }
}
