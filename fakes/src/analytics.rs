//! A Google Analytics 4 stand-in: serves `gtag.js` and counts who fetched it, so tests can prove that no
//! analytics request happens before consent (or ever, under Do Not Track / Global Privacy Control).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use tokio_util::sync::CancellationToken;

/// A running GA4 stand-in on 127.0.0.1.
pub struct AnalyticsFake {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl AnalyticsFake {
    pub async fn start() -> anyhow::Result<Self> {
        let hits = Arc::new(AtomicUsize::new(0));
        let app = Router::new()
            .route("/gtag/js", get(script))
            .with_state(hits.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stopped.cancelled_owned())
                .await;
        });
        Ok(Self { addr, hits, stop })
    }

    /// The URL the site loads gtag.js from (`GA4_SCRIPT_URL`).
    pub fn script_url(&self) -> String {
        format!("http://{}/gtag/js", self.addr)
    }

    /// How many times gtag.js was fetched.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for AnalyticsFake {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn script(State(hits): State<Arc<AtomicUsize>>) -> impl IntoResponse {
    hits.fetch_add(1, Ordering::SeqCst);
    (
        [(header::CONTENT_TYPE, "text/javascript")],
        "window.__gaStandIn = (window.__gaStandIn || 0) + 1;\n",
    )
}
