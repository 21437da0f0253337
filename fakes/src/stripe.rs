//! A Stripe API stand-in, growing with the billing work. Today: customers (create, retrieve, delete), which is
//! what account deletion needs to redact a customer. Speaks Stripe's wire format: form-encoded requests,
//! `Authorization: Bearer sk_…`, JSON objects with `id` and `object`, errors as `{"error": {...}}`.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Shared {
    secret_key: String,
    customers: HashMap<String, Value>,
    deleted: Vec<String>,
}

/// A running Stripe stand-in on 127.0.0.1.
pub struct StripeFake {
    pub addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    stop: CancellationToken,
}

impl StripeFake {
    pub async fn start(secret_key: &str) -> anyhow::Result<Self> {
        let shared = Arc::new(Mutex::new(Shared {
            secret_key: secret_key.to_owned(),
            ..Shared::default()
        }));
        let app = Router::new()
            .route("/v1/customers", post(create_customer))
            .route(
                "/v1/customers/{id}",
                get(get_customer).delete(delete_customer),
            )
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stopped.cancelled_owned())
                .await;
        });
        Ok(Self { addr, shared, stop })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds a customer as if created earlier; returns its id.
    pub fn add_customer(&self, email: &str) -> String {
        let id = format!("cus_{}", hex::encode(rand::random::<[u8; 7]>()));
        let customer = json!({"id": id, "object": "customer", "email": email, "name": null});
        self.shared
            .lock()
            .expect("lock")
            .customers
            .insert(id.clone(), customer);
        id
    }

    /// Customers deleted (redacted) through the API.
    pub fn deleted_customers(&self) -> Vec<String> {
        self.shared.lock().expect("lock").deleted.clone()
    }

    pub fn customer(&self, id: &str) -> Option<Value> {
        self.shared.lock().expect("lock").customers.get(id).cloned()
    }
}

impl Drop for StripeFake {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

type SharedState = Arc<Mutex<Shared>>;

/// The rejection for a request without the secret key, if it lacks it.
fn unauthorized(shared: &SharedState, headers: &HeaderMap) -> Option<Response> {
    let expected = format!("Bearer {}", shared.lock().expect("lock").secret_key);
    match headers.get("authorization").and_then(|v| v.to_str().ok()) {
        Some(value) if value == expected => None,
        _ => Some(error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "Invalid API Key provided",
        )),
    }
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"type": kind, "message": message}})),
    )
        .into_response()
}

async fn create_customer(
    State(shared): State<SharedState>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if let Some(response) = unauthorized(&shared, &headers) {
        return response;
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let id = format!("cus_{}", hex::encode(rand::random::<[u8; 7]>()));
    let customer = json!({"id": id, "object": "customer", "email": form.get("email"), "name": form.get("name")});
    shared
        .lock()
        .expect("lock")
        .customers
        .insert(id, customer.clone());
    Json(customer).into_response()
}

async fn get_customer(
    State(shared): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(response) = unauthorized(&shared, &headers) {
        return response;
    }
    match shared.lock().expect("lock").customers.get(&id) {
        Some(customer) => Json(customer.clone()).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            &format!("No such customer: '{id}'"),
        ),
    }
}

/// Stripe's delete: the customer is gone; a repeat answers 404 `resource_missing` (callers treat it as done).
async fn delete_customer(
    State(shared): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(response) = unauthorized(&shared, &headers) {
        return response;
    }
    let mut shared = shared.lock().expect("lock");
    if shared.customers.remove(&id).is_none() {
        return error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            &format!("No such customer: '{id}'"),
        );
    }
    shared.deleted.push(id.clone());
    Json(json!({"id": id, "object": "customer", "deleted": true})).into_response()
}
