//! The kie.ai client (facts: `docs/kie-api.md`). Production talks to `KIE_BASE_URL`; tests and `dev`
//! point it at the stand-in in `fakes/`, so this client is what the tests exercise.
//!
//! kie answers on two layers, the HTTP status and the JSON `code`; both are read, and every failure is
//! classified once here ([`ErrorClass`]) so jobs decide by class, not by number.

use std::time::Instant;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{config::KieConfig, telemetry::Metrics};

pub const MODEL_TEXT_TO_IMAGE: &str = "gpt-image-2-text-to-image";
pub const MODEL_IMAGE_TO_IMAGE: &str = "gpt-image-2-image-to-image";

/// How a failure is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Try again later (5xx, maintenance, queue full, network, a garbled body).
    Transient,
    /// Our request can never succeed (validation, generation failed): fail the generation, refund.
    Permanent,
    /// Over kie's rate limit; the task was not queued.
    RateLimited,
    /// The account is unusable (bad key, out of credits, sub-key limit, feature disabled): pause submissions
    /// for everyone and alert; do not fail users' generations.
    AccountLevel,
}

#[derive(Debug, thiserror::Error)]
pub enum KieError {
    #[error("kie.ai answered code {code}: {message}")]
    Business { code: i64, message: String },
    #[error("kie.ai answered HTTP {status}: {body}")]
    Http { status: u16, body: String },
    #[error("kie.ai could not be reached: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("kie.ai sent an unreadable answer: {0}")]
    Malformed(String),
}

impl KieError {
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Business { code, .. } => classify(*code),
            Self::Http { status, .. } => match status {
                429 => ErrorClass::RateLimited,
                401 | 402 => ErrorClass::AccountLevel,
                400 | 404 | 422 => ErrorClass::Permanent,
                _ => ErrorClass::Transient,
            },
            Self::Transport(_) | Self::Malformed(_) => ErrorClass::Transient,
        }
    }
}

/// The business-code table of kie-api.md.
pub fn classify(code: i64) -> ErrorClass {
    match code {
        401 | 402 | 433 | 505 => ErrorClass::AccountLevel,
        429 => ErrorClass::RateLimited,
        400 | 404 | 422 | 501 => ErrorClass::Permanent,
        _ => ErrorClass::Transient,
    }
}

/// `createTask`'s body.
#[derive(Debug, Clone, Serialize)]
pub struct CreateTask {
    pub model: String,
    #[serde(rename = "callBackUrl", skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    pub input: TaskInput,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskInput {
    pub prompt: String,
    pub aspect_ratio: crate::generations::AspectRatio,
    pub resolution: crate::generations::Resolution,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub input_urls: Vec<String>,
}

/// A task's state as recordInfo (or a callback) reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskState {
    Waiting,
    Queuing,
    Generating,
    Success,
    Fail,
    /// A state this client does not know: treated as still running.
    Other(String),
}

/// recordInfo's `data` (also the callback body's).
#[derive(Debug, Clone)]
pub struct TaskInfo {
    pub task_id: String,
    pub state: TaskState,
    pub result_urls: Vec<String>,
    pub fail_code: String,
    pub fail_message: String,
    /// Upstream generation time, when reported.
    pub cost_time_ms: Option<i64>,
}

impl TaskInfo {
    /// Reads recordInfo's `data` object (or a callback's), accepting the documented variants.
    pub fn from_data(data: &Value) -> Result<Self, KieError> {
        let text = |key: &str| {
            data.get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let task_id = data
            .get("taskId")
            .or_else(|| data.get("task_id"))
            .and_then(Value::as_str)
            .ok_or_else(|| KieError::Malformed("no taskId in task data".into()))?
            .to_owned();
        let state = match text("state").as_str() {
            "waiting" => TaskState::Waiting,
            "queuing" => TaskState::Queuing,
            "generating" => TaskState::Generating,
            "success" => TaskState::Success,
            "fail" => TaskState::Fail,
            other => TaskState::Other(other.to_owned()),
        };
        // `resultJson` is a JSON string holding {"resultUrls": [...]}; tolerate an object too.
        let result_urls = match data.get("resultJson") {
            Some(Value::String(raw)) if !raw.is_empty() => serde_json::from_str::<Value>(raw)
                .map_err(|error| KieError::Malformed(format!("resultJson: {error}")))?
                .get("resultUrls")
                .cloned(),
            Some(object @ Value::Object(_)) => object.get("resultUrls").cloned(),
            _ => None,
        }
        .and_then(|urls| serde_json::from_value::<Vec<String>>(urls).ok())
        .unwrap_or_default();
        let fail_code = match data.get("failCode") {
            Some(Value::Number(n)) => n.to_string(),
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        };
        Ok(Self {
            task_id,
            state,
            result_urls,
            fail_code,
            fail_message: text("failMsg"),
            cost_time_ms: data.get("costTime").and_then(Value::as_i64),
        })
    }
}

/// The client. Cheap to clone.
#[derive(Clone)]
pub struct KieClient {
    http: reqwest::Client,
    base: url::Url,
    key: SecretString,
    metrics: Metrics,
}

#[derive(Deserialize)]
struct Envelope {
    code: Option<i64>,
    msg: Option<String>,
    message: Option<String>,
    #[serde(default)]
    data: Value,
}

impl KieClient {
    pub fn new(config: &KieConfig, metrics: Metrics) -> Self {
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(std::time::Duration::from_secs(5))
            .build()
            .expect("a reqwest client with timeouts builds");
        metrics
            .upstream_rate_limit_wait_seconds
            .with_label_values(&["kie"]);
        Self {
            http,
            base: config.base_url.clone(),
            key: config.api_key.clone(),
            metrics,
        }
    }

    /// Creates a task; returns its id.
    pub async fn create_task(&self, request: &CreateTask) -> Result<String, KieError> {
        let data = self
            .call(
                "create_task",
                self.http
                    .post(self.url("/api/v1/jobs/createTask"))
                    .json(request),
            )
            .await?;
        data.get("taskId")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| KieError::Malformed("createTask answered without data.taskId".into()))
    }

    pub async fn record_info(&self, task_id: &str) -> Result<TaskInfo, KieError> {
        let request = self
            .http
            .get(self.url("/api/v1/jobs/recordInfo"))
            .query(&[("taskId", task_id)]);
        let data = self.call("record_info", request).await?;
        TaskInfo::from_data(&data)
    }

    /// A temporary direct link (valid ~20 min) for a result URL.
    pub async fn download_url(&self, result_url: &str) -> Result<String, KieError> {
        let request = self
            .http
            .post(self.url("/api/v1/common/download-url"))
            .json(&serde_json::json!({ "url": result_url }));
        let data = self.call("download_url", request).await?;
        data.as_str()
            .map(str::to_owned)
            .ok_or_else(|| KieError::Malformed("download-url answered without a URL".into()))
    }

    /// The account's remaining credit (used by the probe that resumes paused submissions).
    pub async fn credit(&self) -> Result<f64, KieError> {
        let data = self
            .call("credit", self.http.get(self.url("/api/v1/chat/credit")))
            .await?;
        data.as_f64()
            .ok_or_else(|| KieError::Malformed("credit answered without a number".into()))
    }

    /// Fetches a file (a result image) without the API key.
    pub async fn fetch(&self, url: &str) -> Result<reqwest::Response, KieError> {
        let started = Instant::now();
        let result = self.http.get(url).send().await;
        let outcome = match &result {
            Ok(response) if response.status().is_success() => "ok",
            Ok(_) => "http_error",
            Err(_) => "transport_error",
        };
        self.observe("fetch_result", outcome, started);
        let response = result?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(KieError::Http {
                status: status.as_u16(),
                body: truncate(&body),
            });
        }
        Ok(response)
    }

    fn url(&self, path: &str) -> url::Url {
        self.base
            .join(path)
            .expect("static paths join onto a valid base URL")
    }

    async fn call(
        &self,
        operation: &'static str,
        request: reqwest::RequestBuilder,
    ) -> Result<Value, KieError> {
        let started = Instant::now();
        let result = self.send(request).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(error) => match error.class() {
                ErrorClass::Transient => "transient_error",
                ErrorClass::Permanent => "permanent_error",
                ErrorClass::RateLimited => "rate_limited",
                ErrorClass::AccountLevel => "account_error",
            },
        };
        self.observe(operation, outcome, started);
        result
    }

    fn observe(&self, operation: &str, outcome: &str, started: Instant) {
        tracing::debug!(
            upstream = "kie",
            operation,
            outcome,
            duration_ms = started.elapsed().as_millis() as u64,
            "upstream call"
        );
        self.metrics
            .observe_upstream("kie", operation, outcome, started);
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value, KieError> {
        let response = request.bearer_auth(self.key.expose_secret()).send().await?;
        let status = response.status();
        let body = response.text().await?;
        let envelope: Result<Envelope, _> = serde_json::from_str(&body);
        match envelope {
            // A task's state is read whatever the envelope says: kie lists `code: 501` ("generation failed") on
            // recordInfo and sends it on failure callbacks, and a failed task's `data` is what tells why.
            Ok(Envelope { data, .. }) if holds_task_state(&data) => Ok(data),
            Ok(Envelope {
                code: Some(200),
                data,
                ..
            }) if status.is_success() => Ok(data),
            Ok(Envelope {
                code: Some(code),
                msg,
                message,
                ..
            }) => Err(KieError::Business {
                code,
                message: msg.or(message).unwrap_or_default(),
            }),
            _ if !status.is_success() => Err(KieError::Http {
                status: status.as_u16(),
                body: truncate(&body),
            }),
            _ => Err(KieError::Malformed(truncate(&body))),
        }
    }
}

/// `data` describes a task (recordInfo's or a callback's), not just an error.
fn holds_task_state(data: &Value) -> bool {
    data.get("taskId").or_else(|| data.get("task_id")).is_some() && data.get("state").is_some()
}

fn truncate(body: &str) -> String {
    body.chars().take(300).collect()
}

/// Verifies a callback's optional HMAC signature: base64(HMAC-SHA256(key, taskId + "." + timestamp)), with
/// the timestamp no more than `tolerance_secs` away from `now`. Constant-time comparison.
pub fn verify_callback_signature(
    key: &str,
    task_id: &str,
    timestamp: &str,
    signature: &str,
    now_unix: i64,
    tolerance_secs: i64,
) -> bool {
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    let Ok(sent_at) = timestamp.trim().parse::<i64>() else {
        return false;
    };
    if (now_unix - sent_at).abs() > tolerance_secs {
        return false;
    }
    let Ok(expected) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else {
        return false;
    };
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes any key length");
    mac.update(format!("{task_id}.{sent_at}").as_bytes());
    mac.verify_slice(&expected).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn business_codes_are_classified_as_the_kie_table_says() {
        assert_eq!(classify(401), ErrorClass::AccountLevel);
        assert_eq!(classify(402), ErrorClass::AccountLevel);
        assert_eq!(classify(433), ErrorClass::AccountLevel);
        assert_eq!(classify(505), ErrorClass::AccountLevel);
        assert_eq!(classify(422), ErrorClass::Permanent);
        assert_eq!(classify(501), ErrorClass::Permanent);
        assert_eq!(classify(429), ErrorClass::RateLimited);
        assert_eq!(classify(455), ErrorClass::Transient);
        assert_eq!(classify(500), ErrorClass::Transient);
        assert_eq!(classify(550), ErrorClass::Transient);
    }

    #[test]
    fn task_data_accepts_a_json_string_result_and_either_task_id_spelling() {
        let data = serde_json::json!({
            "task_id": "task_1", "state": "success",
            "resultJson": "{\"resultUrls\":[\"https://x/1.png\"]}", "failCode": "", "costTime": 15000
        });
        let info = TaskInfo::from_data(&data).unwrap();
        assert_eq!(info.task_id, "task_1");
        assert_eq!(info.state, TaskState::Success);
        assert_eq!(info.result_urls, vec!["https://x/1.png"]);
        assert_eq!(info.cost_time_ms, Some(15000));
        let odd =
            TaskInfo::from_data(&serde_json::json!({"taskId": "t", "state": "thinking"})).unwrap();
        assert_eq!(odd.state, TaskState::Other("thinking".into()));
    }

    #[test]
    fn a_callback_signature_is_checked_for_key_task_and_freshness() {
        use base64::Engine as _;
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"k").unwrap();
        mac.update(b"task_1.1000");
        let signature =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        assert!(verify_callback_signature(
            "k", "task_1", "1000", &signature, 1010, 300
        ));
        assert!(!verify_callback_signature(
            "k", "task_2", "1000", &signature, 1010, 300
        ));
        assert!(!verify_callback_signature(
            "other", "task_1", "1000", &signature, 1010, 300
        ));
        assert!(
            !verify_callback_signature("k", "task_1", "1000", &signature, 2000, 300),
            "stale"
        );
    }
}
