//! Generation status changes for server-sent events: one LISTEN connection per api process receives
//! `generation_events` notifications and fans them out over a broadcast channel; each SSE stream filters for
//! its generation. No polling loop per client.

use std::time::Duration;

use sqlx::{PgPool, postgres::PgListener};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// One status change.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct GenerationEvent {
    pub id: Uuid,
    pub status: String,
}

/// The fan-out channel. Cheap to clone.
#[derive(Clone)]
pub struct Events(broadcast::Sender<GenerationEvent>);

impl Events {
    pub fn new() -> Self {
        Self(broadcast::channel(1024).0)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<GenerationEvent> {
        self.0.subscribe()
    }
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

/// Feeds `events` from Postgres until `stop`; reconnects after an outage. (A stream that missed events while
/// the connection was down still ends correctly: each stream re-reads the row when it lags.)
pub async fn listen(pool: PgPool, events: Events, stop: CancellationToken) {
    loop {
        let listener = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(jobs::generations::EVENTS_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = tokio::select! {
            () = stop.cancelled() => return,
            result = listener => match result {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::warn!(error = %error, "LISTEN for generation events failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        loop {
            let notification = tokio::select! {
                () = stop.cancelled() => return,
                notification = listener.recv() => notification,
            };
            match notification {
                Ok(notification) => {
                    if let Ok(event) =
                        serde_json::from_str::<GenerationEvent>(notification.payload())
                    {
                        // No receivers is fine: nobody is watching.
                        let _ = events.0.send(event);
                    }
                }
                Err(error) => {
                    tracing::warn!(error = %error, "generation events connection broke; reconnecting");
                    break;
                }
            }
        }
    }
}
