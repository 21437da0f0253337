//! Status changes for server-sent events: one LISTEN connection per api process receives `generation_events`
//! notifications (`{"id", "status"}`, where the id is a generation's, a checkout intent's, or a member's for a
//! purchase's credits) and routes each to the streams watching that id, and only to them. No polling loop and
//! no database connection per stream: a stream holds a [`Subscription`] (its ids and a small inbox) and reads
//! the database only to start and when told to [`Signal::Resync`].
//!
//! A stream subscribes before it reads its rows, so a change between the two is not missed. When it may have
//! missed one anyway — the LISTEN connection was lost and re-established, or the stream fell
//! [`INBOX_CAPACITY`] events behind — it gets one `Resync` and re-reads its rows once, so it still ends
//! correctly.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use sqlx::{PgPool, postgres::PgListener};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// One status change, as announced (`jobs::generations::announce`).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct GenerationEvent {
    pub id: Uuid,
    pub status: String,
}

/// What a [`Subscription`] receives.
#[derive(Debug)]
pub enum Signal {
    /// A change of one of the subscription's ids.
    Event(GenerationEvent),
    /// Changes may have been missed: read the rows again.
    Resync,
}

/// Events a stream may fall behind by before they are dropped for one [`Signal::Resync`]. A generation has a
/// handful of changes in its life, so only a stream whose client stopped reading gets there.
pub const INBOX_CAPACITY: usize = 16;
/// Locks the ids are spread over, so streams opening and closing on many cores rarely wait for each other.
const SHARDS: usize = 16;

/// The routing table: each watched id and the inboxes of the streams watching it. Cheap to clone.
#[derive(Clone)]
pub struct Events(Arc<Registry>);

struct Registry {
    shards: Box<[Mutex<Shard>]>,
}

/// Each watched id of one shard and the inboxes of the streams watching it.
type Shard = HashMap<Uuid, Vec<Arc<Inbox>>>;

/// One subscription's pending signals.
#[derive(Default)]
struct Inbox {
    state: Mutex<InboxState>,
    /// Woken at each delivery; one waiter (the stream), so a wake before it waits is kept for it.
    wake: Notify,
}

#[derive(Default)]
struct InboxState {
    events: VecDeque<GenerationEvent>,
    resync: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here can panic while holding a lock; a poisoned one still holds consistent data.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inbox {
    fn deliver(&self, event: GenerationEvent) {
        {
            let mut state = lock(&self.state);
            if state.resync {
                // A re-read is due anyway and covers this change.
            } else if state.events.len() >= INBOX_CAPACITY {
                state.events.clear();
                state.resync = true;
            } else {
                state.events.push_back(event);
            }
        }
        self.wake.notify_one();
    }

    fn resync(&self) {
        {
            let mut state = lock(&self.state);
            state.events.clear();
            state.resync = true;
        }
        self.wake.notify_one();
    }

    fn take(&self) -> Option<Signal> {
        let mut state = lock(&self.state);
        if std::mem::take(&mut state.resync) {
            return Some(Signal::Resync);
        }
        state.events.pop_front().map(Signal::Event)
    }
}

impl Registry {
    fn shard(&self, id: Uuid) -> &Mutex<Shard> {
        &self.shards[(id.as_u128() % SHARDS as u128) as usize]
    }
}

impl Events {
    pub fn new() -> Self {
        Self(Arc::new(Registry {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }))
    }

    /// Starts watching `ids`. Subscribe before reading the rows, so no change in between is missed.
    pub fn subscribe(&self, ids: impl IntoIterator<Item = Uuid>) -> Subscription {
        let mut subscription = Subscription {
            registry: self.0.clone(),
            inbox: Arc::default(),
            ids: Vec::new(),
        };
        subscription.watch(ids);
        subscription
    }

    /// Hands `event` to the streams watching its id (none: nobody is watching, and it is dropped).
    fn publish(&self, event: GenerationEvent) {
        let shard = lock(self.0.shard(event.id));
        if let Some(inboxes) = shard.get(&event.id) {
            for inbox in inboxes {
                inbox.deliver(event.clone());
            }
        }
    }

    /// Tells every stream to read its rows again (events may have been missed).
    fn resync_all(&self) {
        for shard in &self.0.shards {
            for inboxes in lock(shard).values() {
                for inbox in inboxes {
                    inbox.resync();
                }
            }
        }
    }

    /// How many ids are watched (a stream that ended must leave none behind).
    #[cfg(test)]
    fn watched(&self) -> usize {
        self.0.shards.iter().map(|shard| lock(shard).len()).sum()
    }
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

/// A stream's interest in some ids; unregistered when dropped (the last one watching an id removes it).
pub struct Subscription {
    registry: Arc<Registry>,
    inbox: Arc<Inbox>,
    ids: Vec<Uuid>,
}

impl Subscription {
    /// Watches `ids` too (those already watched are skipped). A change of them before this call is not
    /// received: read their rows after it.
    pub fn watch(&mut self, ids: impl IntoIterator<Item = Uuid>) {
        for id in ids {
            if self.ids.contains(&id) {
                continue;
            }
            lock(self.registry.shard(id))
                .entry(id)
                .or_default()
                .push(self.inbox.clone());
            self.ids.push(id);
        }
    }

    /// The next signal, waiting for one.
    pub async fn recv(&mut self) -> Signal {
        loop {
            if let Some(signal) = self.inbox.take() {
                return signal;
            }
            self.inbox.wake.notified().await;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        for id in &self.ids {
            let mut shard = lock(self.registry.shard(*id));
            if let Some(inboxes) = shard.get_mut(id) {
                inboxes.retain(|inbox| !Arc::ptr_eq(inbox, &self.inbox));
                if inboxes.is_empty() {
                    shard.remove(id);
                }
            }
        }
    }
}

/// Feeds `events` from Postgres until `stop`; reconnects after an outage. After every (re)connection each open
/// stream re-reads its rows once: what was announced while nothing listened is not announced again.
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
        events.resync_all();
        loop {
            // `try_recv`, not `recv`: `recv` reconnects silently, and the streams would never hear that
            // events were lost.
            let notification = tokio::select! {
                () = stop.cancelled() => return,
                notification = listener.try_recv() => notification,
            };
            match notification {
                Ok(Some(notification)) => {
                    if let Ok(event) =
                        serde_json::from_str::<GenerationEvent>(notification.payload())
                    {
                        events.publish(event);
                    }
                }
                Ok(None) => {
                    // The connection was lost and the listener has listened again on a new one.
                    tracing::warn!("generation events connection was lost; reconnected");
                    events.resync_all();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn change(id: Uuid, status: &str) -> GenerationEvent {
        GenerationEvent {
            id,
            status: status.to_owned(),
        }
    }

    fn next(subscription: &Subscription) -> Option<Signal> {
        subscription.inbox.take()
    }

    #[test]
    fn a_change_reaches_only_the_streams_watching_its_id() {
        let events = Events::new();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let watching_a = events.subscribe([a]);
        let watching_b = events.subscribe([b]);
        let watching_both = events.subscribe([a, b]);
        events.publish(change(a, "generating"));
        events.publish(change(Uuid::new_v4(), "generating"));
        assert!(
            matches!(next(&watching_a), Some(Signal::Event(e)) if e.id == a && e.status == "generating")
        );
        assert!(next(&watching_a).is_none());
        assert!(next(&watching_b).is_none(), "b's stream is not woken for a");
        assert!(matches!(next(&watching_both), Some(Signal::Event(e)) if e.id == a));
        assert!(next(&watching_both).is_none());
    }

    #[test]
    fn the_registry_is_empty_once_every_subscription_is_dropped() {
        let events = Events::new();
        let ids: Vec<Uuid> = (0..100).map(|_| Uuid::new_v4()).collect();
        let mut subscriptions: Vec<Subscription> = ids
            .iter()
            .map(|id| events.subscribe([*id]))
            .chain(ids.chunks(4).map(|batch| events.subscribe(batch.to_vec())))
            .collect();
        // Watching an id twice registers it once.
        subscriptions[0].watch([ids[0], ids[1]]);
        assert_eq!(events.watched(), 100);
        subscriptions.truncate(50);
        // Ids 0–49 still watched by their own; the batches are gone.
        assert_eq!(events.watched(), 50);
        drop(subscriptions);
        assert_eq!(events.watched(), 0);
        events.publish(change(ids[0], "failed"));
        assert_eq!(events.watched(), 0);
    }

    #[test]
    fn a_stream_that_falls_behind_gets_one_resync_instead_of_the_changes() {
        let events = Events::new();
        let id = Uuid::new_v4();
        let subscription = events.subscribe([id]);
        for _ in 0..=INBOX_CAPACITY {
            events.publish(change(id, "queued"));
        }
        assert!(matches!(next(&subscription), Some(Signal::Resync)));
        assert!(
            next(&subscription).is_none(),
            "the changes before the resync are dropped"
        );
        events.publish(change(id, "generating"));
        assert!(matches!(next(&subscription), Some(Signal::Event(e)) if e.status == "generating"));
    }

    #[test]
    fn after_the_listen_connection_is_reestablished_every_stream_resyncs_once() {
        let events = Events::new();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let (watching_a, watching_b) = (events.subscribe([a]), events.subscribe([a, b]));
        events.publish(change(a, "submitting"));
        events.resync_all();
        for subscription in [&watching_a, &watching_b] {
            assert!(matches!(next(subscription), Some(Signal::Resync)));
            assert!(next(subscription).is_none());
        }
    }

    #[tokio::test]
    async fn recv_waits_for_a_change_published_after_it_started_waiting() {
        let events = Events::new();
        let id = Uuid::new_v4();
        let mut subscription = events.subscribe([id]);
        let waiting = tokio::spawn(async move { subscription.recv().await });
        tokio::task::yield_now().await;
        events.publish(change(id, "storing"));
        let signal = waiting.await.unwrap();
        assert!(matches!(signal, Signal::Event(e) if e.status == "storing"));
        assert_eq!(
            events.watched(),
            0,
            "the finished task dropped its subscription"
        );
    }
}
