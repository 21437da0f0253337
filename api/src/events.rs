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

/// The routes that stream server-sent events (the `route` label of `createimage2_sse_streams`, and the routes
/// latency SLOs leave out).
pub const ROUTES: [&str; 3] = [API_GENERATION_ROUTE, SITE_GENERATION_ROUTE, INTENT_ROUTE];
pub const API_GENERATION_ROUTE: &str = "/api/v1/generations/{id}/events";
/// Where the JSON API is mounted; its routes are relative to it.
pub const API_PREFIX: &str = "/api";
pub const SITE_GENERATION_ROUTE: &str = "/generations/{id}/events";
pub const INTENT_ROUTE: &str = "/billing/intents/{id}/events";

/// An open event stream, counted in `createimage2_sse_streams{route}` from its first poll until it is dropped.
struct OpenStream(prometheus::IntGauge);

impl OpenStream {
    fn new(gauge: prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `inner` as the api serves it: counted while open, and ended with a final `shutdown` event when the api's
/// listener closes during a drain, so the client reconnects to another replica instead of waiting on a socket
/// the process is about to drop.
pub fn supervised<S>(
    state: &crate::AppState,
    route: &'static str,
    inner: S,
) -> impl futures::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>> + use<S>
where
    S: futures::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>
        + Send
        + 'static,
{
    use futures::StreamExt as _;
    let gauge = state.metrics.sse_streams.with_label_values(&[route]);
    let ends = state.drain.streams_end.clone();
    async_stream::stream! {
        let _open = OpenStream::new(gauge);
        let mut inner = std::pin::pin!(inner);
        loop {
            tokio::select! {
                biased;
                () = ends.cancelled() => {
                    yield Ok(axum::response::sse::Event::default()
                        .event("shutdown")
                        .data(r#"{"reconnect":true}"#));
                    return;
                }
                item = inner.next() => match item {
                    Some(item) => yield item,
                    None => return,
                },
            }
        }
    }
}
