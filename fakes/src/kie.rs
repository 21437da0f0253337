//! An in-process HTTP stand-in for kie.ai, the upstream that brokers gpt-image-2. It speaks the protocol of
//! `shared/docs/kie-api.md` (JSON envelope with business codes, `resultJson` as a JSON string, epoch-ms times,
//! recordInfo-shaped callbacks signed with HMAC, expiring result URLs, real PNG files), so the production client
//! is what the tests exercise, without credits or network.
//!
//! The awkward parts of the real service are reproduced on purpose, because they are what the client must survive:
//! rate limits, lost create responses, malformed bodies, lost or duplicated callbacks, `msg` vs `message`,
//! successes without URLs. Faults are switched on through [`FakeKieConfig`] (also at run time via
//! [`KieFake::update`]); a task's outcome is chosen by markers in its prompt:
//! `[refuse]` (content-policy failure), `[fail500]` (internal failure), `[no-urls-once]` (the first success
//! answer has no URLs), `[slow]` (3× the configured maximum latency).
//!
//! Where kie's documentation is silent or has changed, the documented form is the default and the other reading
//! is an opt-in mode, so the client is tested against both: recordInfo for a failed task answers `code: 200`
//! (the Get Task Details example) unless [`FakeKieConfig::failed_task_code`] says 501 (the code that page lists as
//! "generation failed", and the one failure callbacks carry); `failCode` is a string of digits (`"422"`, `"500"`)
//! and `""` while not failed unless [`FakeKieConfig::fail_codes`] asks for the newer Market schemas' named codes
//! (`"GENERATION_FAILED"`, `null` while not failed).

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::Rng as _;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The text-to-image model name.
pub const TEXT_TO_IMAGE: &str = "gpt-image-2-text-to-image";
/// The image-to-image model name (requires `input.input_urls`).
pub const IMAGE_TO_IMAGE: &str = "gpt-image-2-image-to-image";

const ASPECT_RATIOS: [&str; 16] = [
    "auto", "1:1", "3:2", "2:3", "4:3", "3:4", "5:4", "4:5", "16:9", "9:16", "2:1", "1:2", "3:1",
    "1:3", "21:9", "9:21",
];
const RESOLUTIONS: [&str; 3] = ["1K", "2K", "4K"];
/// Ratios kie rejects above 1K (both models).
const ONLY_1K_RATIOS: [&str; 5] = ["5:4", "4:5", "3:1", "1:3", "9:21"];
const MAX_PROMPT_CHARS: usize = 20_000;
const MAX_INPUT_URLS: usize = 16;
const MAX_INPUT_BYTES: usize = 10 * 1024 * 1024;
const INPUT_FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// download-url links are valid this long (capped at the result URL's own expiry).
const DIRECT_LINK_TTL: Duration = Duration::from_secs(20 * 60);
/// kie waits this long for the receiver's 2xx.
const CALLBACK_TIMEOUT: Duration = Duration::from_secs(15);
const CALLBACK_RETRIES: u32 = 3;
const CALLBACK_RETRY_DELAY: Duration = Duration::from_millis(200);
/// The window `max_creates_in_window` is measured over when no create limit is configured: kie's real one.
const DEFAULT_CREATE_WINDOW: Duration = Duration::from_secs(10);
/// A JSON body cut short, as a proxy or a crashed upstream might deliver it.
const MALFORMED_BODY: &str = r#"{"code":200,"msg":"success","data":{"taskId":"task_"#;

/// How the fake behaves; every field can be changed while it runs with [`KieFake::update`].
#[derive(Debug, Clone)]
pub struct FakeKieConfig {
    /// The Bearer token required on `/api/` calls; wrong or missing → HTTP 200 with `{"code":401}`.
    pub api_key: String,
    /// Uniform range of the time from task creation to completion.
    pub latency: (Duration, Duration),
    /// Sliding window over createTask calls that passed this check (so also counts ones that then fail
    /// validation); excess → `{"code":429}` and no task. kie's real limit is 20 per 10 s.
    pub create_limit: Option<(u32, Duration)>,
    /// Sliding window over recordInfo calls; excess → `{"code":429}`. kie's real limit is 10 per second.
    pub record_info_limit: Option<(u32, Duration)>,
    /// When set, callbacks carry `X-Webhook-Timestamp` and `X-Webhook-Signature`.
    pub hmac_key: Option<String>,
    pub callbacks: CallbackMode,
    /// The next N createTask calls answer HTTP 500 `{"code":500}` and create nothing.
    pub fail_creates: u32,
    /// The next N createTask calls answer `{"code":429}` and create nothing.
    pub rate_limit_creates: u32,
    /// The next N createTask calls create the task (it runs and calls back) but answer HTTP 500, as if the
    /// response were lost on the way.
    pub lose_create_responses: u32,
    /// The next N recordInfo calls answer HTTP 200 with a truncated JSON body.
    pub malformed_record_info: u32,
    /// The next N createTask calls create the task (it runs and calls back) but answer only after [`stall`]
    /// (`FakeKieConfig::stall`): to a client whose timeout is shorter, a call that timed out.
    pub stall_creates: u32,
    /// The next N recordInfo calls answer only after `stall`.
    pub stall_record_infos: u32,
    /// How long a stalled answer takes.
    pub stall: Duration,
    /// When `Some(code)` (401, 402, 433, 505, …) every createTask answers that business code.
    pub account_error: Option<u32>,
    /// Result file URLs (and download-url links) expire this long after the task completed.
    pub result_url_ttl: Duration,
    /// Long side in pixels of generated images.
    pub image_max_side: u32,
    /// The envelope `code` of a recordInfo answer for a failed task, with the task's `data` all the same: 200 (the
    /// default, as kie's Get Task Details example) or 501 ("generation failed" in that page's code table; kie does
    /// not say whether recordInfo itself answers it). Failure callbacks always carry 501, as kie documents.
    pub failed_task_code: u32,
    /// How `failCode` is spelled.
    pub fail_codes: FailCodes,
    /// Seeds the only random choice the stand-in makes, each task's latency within `latency`, so a run can be
    /// repeated with the same draws (in the order tasks arrive). `None`: seeded from the OS. Read at start.
    pub seed: Option<u64>,
}

impl Default for FakeKieConfig {
    fn default() -> Self {
        Self {
            api_key: "test-kie-key".to_owned(),
            latency: (Duration::from_secs(15), Duration::from_secs(40)),
            create_limit: Some((20, Duration::from_secs(10))),
            record_info_limit: Some((10, Duration::from_secs(1))),
            hmac_key: None,
            callbacks: CallbackMode::Normal,
            fail_creates: 0,
            rate_limit_creates: 0,
            lose_create_responses: 0,
            malformed_record_info: 0,
            stall_creates: 0,
            stall_record_infos: 0,
            stall: Duration::from_secs(60),
            account_error: None,
            result_url_ttl: Duration::from_secs(24 * 60 * 60),
            image_max_side: 1024,
            failed_task_code: 200,
            fail_codes: FailCodes::Digits,
            seed: None,
        }
    }
}

/// How a task's `failCode` is spelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailCodes {
    /// kie's Get Task Details page: HTTP-like codes as strings (`"422"` for a refused prompt, `"500"` for an
    /// internal failure), `""` while the task has not failed.
    #[default]
    Digits,
    /// The newer Market schemas: a named code, `"GENERATION_FAILED"`, for every failure (the reason is only in
    /// `failMsg`), `null` while the task has not failed.
    Named,
}

/// What happens to callbacks when a task completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CallbackMode {
    #[default]
    Normal,
    /// Never delivered: the client must find the result by polling.
    Lost,
    /// Each callback is delivered twice.
    Duplicated,
    /// The task runs and its callback is delivered *before* createTask answers: the fastest upstream possible,
    /// whose callback reaches the client while it has not yet recorded the task id.
    BeforeResponse,
}

/// Counters for assertions about how the client behaved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeKieStats {
    /// Every createTask request received.
    pub create_calls: u64,
    pub tasks_created: u64,
    /// 429s returned by createTask (injected or from the window).
    pub rate_limited_creates: u64,
    /// The most tasks created within any window of `create_limit`'s duration (10 s when no limit is set), so a
    /// test can assert the client kept under kie's budget even against an unlimited fake.
    pub max_creates_in_window: u32,
    /// Every recordInfo request received.
    pub record_info_calls: u64,
    pub rate_limited_record_infos: u64,
    /// Callback POSTs the receiver answered with 2xx (a duplicated callback counts twice).
    pub callbacks_sent: u64,
    /// Result file GETs answered with an image.
    pub downloads: u64,
    /// createTask and recordInfo answers held back by `stall_creates` / `stall_record_infos`.
    pub stalled_answers: u64,
}

/// A task as the fake sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSnapshot {
    pub task_id: String,
    pub model: String,
    pub prompt: String,
    pub aspect_ratio: String,
    pub resolution: String,
    pub input_urls: Vec<String>,
    pub callback_url: Option<String>,
    /// `waiting`, `generating`, `success` or `fail`.
    pub state: String,
}

/// A running fake kie.ai on 127.0.0.1; stops serving when dropped.
pub struct KieFake {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl KieFake {
    /// Serves on a free port of 127.0.0.1.
    pub async fn start(config: FakeKieConfig) -> anyhow::Result<Self> {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), config).await
    }

    /// Serves on `addr` (port 0 for any free port).
    pub async fn start_on(addr: SocketAddr, config: FakeKieConfig) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let mut addr = listener.local_addr()?;
        // A wildcard bind is still reached through loopback; result URLs must name a connectable host.
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        // Callbacks and input images go to local servers in tests: an inherited proxy setting would break them.
        let http = reqwest::Client::builder().no_proxy().build()?;
        let shared = Arc::new(Shared {
            base_url: format!("http://{addr}"),
            http,
            stop: CancellationToken::new(),
            state: Mutex::new(Inner {
                rng: match config.seed {
                    Some(seed) => rand::SeedableRng::seed_from_u64(seed),
                    None => rand::SeedableRng::from_os_rng(),
                },
                config,
                stats: FakeKieStats::default(),
                tasks: Vec::new(),
                index: HashMap::new(),
                create_window: VecDeque::new(),
                accepted_window: VecDeque::new(),
                record_info_window: VecDeque::new(),
            }),
        });
        let app = router(shared.clone());
        let stopped = shared.stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stopped.cancelled_owned())
                .await;
        });
        Ok(Self { addr, shared })
    }

    /// `http://127.0.0.1:PORT`, the value for the client's kie base URL.
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes the configuration in place, e.g. to inject faults mid-test. Latency changes apply to new tasks.
    pub fn update(&self, f: impl FnOnce(&mut FakeKieConfig)) {
        f(&mut self.shared.lock().config);
    }

    pub fn stats(&self) -> FakeKieStats {
        self.shared.lock().stats.clone()
    }

    /// All tasks ever created, oldest first.
    pub fn tasks(&self) -> Vec<TaskSnapshot> {
        let now = Instant::now();
        let inner = self.shared.lock();
        inner.tasks.iter().map(|task| task.snapshot(now)).collect()
    }
}

impl Drop for KieFake {
    fn drop(&mut self) {
        // Stops the server and every pending callback, so a dropped fake never calls a later test's receiver.
        self.shared.stop.cancel();
    }
}

struct Shared {
    base_url: String,
    http: reqwest::Client,
    stop: CancellationToken,
    state: Mutex<Inner>,
}

struct Inner {
    config: FakeKieConfig,
    /// Latency draws (see [`FakeKieConfig::seed`]).
    rng: rand::rngs::StdRng,
    stats: FakeKieStats,
    tasks: Vec<Task>,
    index: HashMap<String, usize>,
    /// createTask calls counted against `create_limit`.
    create_window: VecDeque<Instant>,
    /// Tasks created, for `max_creates_in_window`.
    accepted_window: VecDeque<Instant>,
    record_info_window: VecDeque<Instant>,
}

impl Inner {
    fn task(&self, id: &str) -> Option<&Task> {
        self.index.get(id).map(|&i| &self.tasks[i])
    }

    fn task_mut(&mut self, id: &str) -> Option<&mut Task> {
        self.index.get(id).map(|&i| &mut self.tasks[i])
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking handler must not take the whole fake down with it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Clone, Copy)]
enum Outcome {
    Success,
    Fail {
        code: &'static str,
        msg: &'static str,
    },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Waiting,
    Generating,
    Done,
}

struct Task {
    id: String,
    model: String,
    prompt: String,
    aspect_ratio: String,
    resolution: String,
    input_urls: Vec<String>,
    callback_url: Option<String>,
    /// The create request as a JSON string, echoed in `param`.
    param: String,
    created_at: Instant,
    create_ms: u64,
    latency: Duration,
    outcome: Outcome,
    /// `[no-urls-once]` and no post-completion recordInfo has been answered yet.
    withhold_urls_once: bool,
    png: Option<Bytes>,
}

impl Task {
    /// kie shows `waiting` for a short while before `generating`; 10% of the latency imitates that.
    fn waiting_for(&self) -> Duration {
        self.latency / 10
    }

    fn phase(&self, now: Instant) -> Phase {
        let elapsed = now.saturating_duration_since(self.created_at);
        if elapsed >= self.latency {
            Phase::Done
        } else if elapsed < self.waiting_for() {
            Phase::Waiting
        } else {
            Phase::Generating
        }
    }

    fn state(&self, now: Instant) -> &'static str {
        match (self.phase(now), self.outcome) {
            (Phase::Waiting, _) => "waiting",
            (Phase::Generating, _) => "generating",
            (Phase::Done, Outcome::Success) => "success",
            (Phase::Done, Outcome::Fail { .. }) => "fail",
        }
    }

    fn failed(&self, now: Instant) -> bool {
        self.phase(now) == Phase::Done && matches!(self.outcome, Outcome::Fail { .. })
    }

    fn succeeded(&self, now: Instant) -> bool {
        self.phase(now) == Phase::Done && matches!(self.outcome, Outcome::Success)
    }

    fn complete_ms(&self) -> u64 {
        self.create_ms + millis(self.latency)
    }

    /// When the result file stops being served, in epoch ms. Computed from the current ttl, so a test can
    /// expire existing results by shortening it.
    fn result_expiry_ms(&self, ttl: Duration) -> u64 {
        self.complete_ms().saturating_add(millis(ttl))
    }

    fn result_url(&self, base_url: &str, ttl: Duration) -> String {
        // Rounded up so a URL is never announced as expiring before the file does.
        let expires = self.result_expiry_ms(ttl).div_ceil(1000);
        format!("{base_url}/files/{}/0.png?expires={expires}", self.id)
    }

    /// Most of kie's docs say `msg`, some `message`: both appear here so clients must accept both.
    fn message_key(&self) -> &'static str {
        let odd = self
            .id
            .chars()
            .last()
            .and_then(|c| c.to_digit(16))
            .is_some_and(|d| d % 2 == 1);
        if odd { "message" } else { "msg" }
    }

    /// The `data` of a recordInfo answer (and of a callback) at `now`.
    fn record(
        &self,
        now: Instant,
        base_url: &str,
        ttl: Duration,
        withhold_urls: bool,
        fail_codes: FailCodes,
    ) -> Value {
        let phase = self.phase(now);
        let elapsed = now.saturating_duration_since(self.created_at);
        let (progress, update_ms) = match phase {
            Phase::Waiting => (0, self.create_ms),
            Phase::Generating => {
                let span = self
                    .latency
                    .saturating_sub(self.waiting_for())
                    .as_secs_f64();
                let done = elapsed.saturating_sub(self.waiting_for()).as_secs_f64();
                let percent = if span > 0.0 {
                    (done / span * 100.0) as u64
                } else {
                    0
                };
                (
                    percent.clamp(1, 99),
                    self.create_ms + millis(self.waiting_for()),
                )
            }
            Phase::Done => (100, self.complete_ms()),
        };
        let (result_json, fail_code, fail_msg) = match (phase, self.outcome) {
            (Phase::Done, Outcome::Success) => {
                let urls = if withhold_urls {
                    Vec::new()
                } else {
                    vec![self.result_url(base_url, ttl)]
                };
                (json!({ "resultUrls": urls }).to_string(), "", "")
            }
            (Phase::Done, Outcome::Fail { code, msg }) => (String::new(), code, msg),
            _ => (String::new(), "", ""),
        };
        let fail_code = match (fail_codes, fail_code) {
            (FailCodes::Digits, code) => json!(code),
            (FailCodes::Named, "") => Value::Null,
            (FailCodes::Named, _) => json!("GENERATION_FAILED"),
        };
        let mut data = json!({
            "taskId": self.id,
            "model": self.model,
            "state": self.state(now),
            "param": self.param,
            "resultJson": result_json,
            "failCode": fail_code,
            "failMsg": fail_msg,
            "costTime": if phase == Phase::Done { millis(self.latency) } else { 0 },
            "createTime": self.create_ms,
            "updateTime": update_ms,
            "progress": progress,
        });
        // Absent until done, as kie omits it: clients must not require it.
        if phase == Phase::Done {
            data["completeTime"] = json!(self.complete_ms());
        }
        data
    }

    fn snapshot(&self, now: Instant) -> TaskSnapshot {
        TaskSnapshot {
            task_id: self.id.clone(),
            model: self.model.clone(),
            prompt: self.prompt.clone(),
            aspect_ratio: self.aspect_ratio.clone(),
            resolution: self.resolution.clone(),
            input_urls: self.input_urls.clone(),
            callback_url: self.callback_url.clone(),
            state: self.state(now).to_owned(),
        }
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/v1/jobs/createTask", post(create_task))
        .route("/api/v1/jobs/recordInfo", get(record_info))
        .route("/api/v1/common/download-url", post(download_url))
        .route("/api/v1/chat/credit", get(credit))
        .route("/files/{task_id}/{file}", get(file))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                envelope(404, "not found", Value::Null),
            )
        })
        .with_state(shared)
}

// ---- responses ----

fn envelope(code: u32, msg: &str, data: Value) -> Response {
    envelope_with_key(code, "msg", msg, data)
}

fn envelope_with_key(code: u32, key: &str, msg: &str, data: Value) -> Response {
    let mut body = json!({ "code": code, "data": data });
    body[key] = json!(msg);
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// Business errors ride on HTTP 200, like kie's.
fn business_error(code: u32, msg: &str) -> Response {
    envelope(code, msg, Value::Null)
}

fn server_error() -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        envelope(500, "server error", Value::Null),
    )
        .into_response()
}

fn unauthorized() -> Response {
    business_error(401, "You do not have access permissions")
}

fn rate_limited() -> Response {
    business_error(429, "rate limited")
}

fn account_error_msg(code: u32) -> &'static str {
    match code {
        401 => "You do not have access permissions",
        402 => "Credits insufficient",
        433 => "Sub-key usage limit exceeded",
        455 => "Service under maintenance",
        505 => "The feature is disabled",
        _ => "account error",
    }
}

fn authorized(headers: &HeaderMap, api_key: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .is_some_and(|token| token == api_key)
}

// ---- createTask ----

struct CreateRequest {
    model: String,
    callback_url: Option<String>,
    prompt: String,
    aspect_ratio: String,
    resolution: String,
    input_urls: Vec<String>,
    param: String,
}

async fn create_task(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let now = Instant::now();
    {
        let mut inner = shared.lock();
        let inner = &mut *inner;
        inner.stats.create_calls += 1;
        if !authorized(&headers, &inner.config.api_key) {
            return unauthorized();
        }
        if let Some(code) = inner.config.account_error {
            return business_error(code, account_error_msg(code));
        }
        if inner.config.fail_creates > 0 {
            inner.config.fail_creates -= 1;
            return server_error();
        }
        if inner.config.rate_limit_creates > 0 {
            inner.config.rate_limit_creates -= 1;
            inner.stats.rate_limited_creates += 1;
            return rate_limited();
        }
        if let Some((max, window)) = inner.config.create_limit
            && !admit(&mut inner.create_window, now, max, window)
        {
            inner.stats.rate_limited_creates += 1;
            return rate_limited();
        }
    }

    let request = match parse_create(&body) {
        Ok(request) => request,
        Err(msg) => return business_error(422, &msg),
    };
    // Fetching the inputs is what makes a test prove the client's presigned URLs really work.
    if request.model == IMAGE_TO_IMAGE
        && let Err(msg) = fetch_inputs(&shared.http, &request.input_urls).await
    {
        return business_error(422, &msg);
    }

    let (task_id, delay, lose_response, stall) = {
        let mut inner = shared.lock();
        let inner = &mut *inner;
        let (low, high) = inner.config.latency;
        let latency = if request.prompt.contains("[slow]") {
            high * 3
        } else if low < high {
            inner.rng.random_range(low..=high)
        } else {
            low
        };
        let outcome = if request.prompt.contains("[refuse]") {
            Outcome::Fail {
                code: "422",
                msg: "Invalid prompt: prompt contains prohibited content",
            }
        } else if request.prompt.contains("[fail500]") {
            Outcome::Fail {
                code: "500",
                msg: "internal error",
            }
        } else {
            Outcome::Success
        };
        let id = format!("task_{:032x}", rand::random::<u128>());
        let created_at = Instant::now();
        inner.index.insert(id.clone(), inner.tasks.len());
        inner.tasks.push(Task {
            id: id.clone(),
            model: request.model,
            withhold_urls_once: request.prompt.contains("[no-urls-once]"),
            prompt: request.prompt,
            aspect_ratio: request.aspect_ratio,
            resolution: request.resolution,
            input_urls: request.input_urls,
            callback_url: request.callback_url,
            param: request.param,
            created_at,
            create_ms: epoch_ms(),
            latency,
            outcome,
            png: None,
        });
        inner.stats.tasks_created += 1;
        let window = inner
            .config
            .create_limit
            .map_or(DEFAULT_CREATE_WINDOW, |(_, window)| window);
        prune(&mut inner.accepted_window, created_at, window);
        inner.accepted_window.push_back(created_at);
        let in_window = u32::try_from(inner.accepted_window.len()).unwrap_or(u32::MAX);
        inner.stats.max_creates_in_window = inner.stats.max_creates_in_window.max(in_window);
        let lose_response = inner.config.lose_create_responses > 0;
        if lose_response {
            inner.config.lose_create_responses -= 1;
        }
        let stall = take_stall(inner, |config| &mut config.stall_creates);
        (id, latency, lose_response, stall)
    };

    let before_response = matches!(shared.lock().config.callbacks, CallbackMode::BeforeResponse);
    if before_response {
        tokio::time::sleep(delay).await;
        send_callbacks(&shared, &task_id).await;
    } else {
        // One task per created task: it sleeps until completion, then calls back (if asked for then).
        let completion = shared.clone();
        let id = task_id.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = completion.stop.cancelled() => {}
                () = tokio::time::sleep(delay) => send_callbacks(&completion, &id).await,
            }
        });
    }

    if let Some(stall) = stall {
        tokio::time::sleep(stall).await;
    }
    if lose_response {
        return server_error();
    }
    envelope(200, "success", json!({ "taskId": task_id }))
}

/// Counts down one of the `stall_*` faults: the stall to wait before answering, if this answer is stalled.
fn take_stall(
    inner: &mut Inner,
    counter: impl FnOnce(&mut FakeKieConfig) -> &mut u32,
) -> Option<Duration> {
    let left = counter(&mut inner.config);
    if *left == 0 {
        return None;
    }
    *left -= 1;
    inner.stats.stalled_answers += 1;
    Some(inner.config.stall)
}

/// Validates a createTask body as kie does; the error is the `msg` of a 422.
fn parse_create(body: &[u8]) -> Result<CreateRequest, String> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|error| format!("request body is not valid JSON: {error}"))?;
    let model = value
        .get("model")
        .and_then(Value::as_str)
        .ok_or("model is required")?;
    if model != TEXT_TO_IMAGE && model != IMAGE_TO_IMAGE {
        return Err(format!(
            "model must be {TEXT_TO_IMAGE} or {IMAGE_TO_IMAGE}, not {model:?}"
        ));
    }
    let callback_url = match value.get("callBackUrl") {
        None | Some(Value::Null) => None,
        Some(Value::String(url)) if url.is_empty() => None,
        Some(Value::String(url)) if is_http_url(url) => Some(url.clone()),
        Some(_) => return Err("callBackUrl must be an http(s) URL".to_owned()),
    };
    let input = value
        .get("input")
        .filter(|input| input.is_object())
        .ok_or("input is required")?;
    let prompt = input
        .get("prompt")
        .and_then(Value::as_str)
        .ok_or("input.prompt is required")?;
    let prompt_chars = prompt.chars().count();
    if prompt_chars == 0 || prompt_chars > MAX_PROMPT_CHARS {
        return Err(format!(
            "input.prompt must be 1-{MAX_PROMPT_CHARS} characters, got {prompt_chars}"
        ));
    }
    let aspect_ratio = optional_str(input, "aspect_ratio")?.unwrap_or("auto");
    if !ASPECT_RATIOS.contains(&aspect_ratio) {
        return Err(format!(
            "input.aspect_ratio must be one of {}, not {aspect_ratio:?}",
            ASPECT_RATIOS.join(", ")
        ));
    }
    let resolution = optional_str(input, "resolution")?.unwrap_or("1K");
    if !RESOLUTIONS.contains(&resolution) {
        return Err(format!(
            "input.resolution must be 1K, 2K or 4K, not {resolution:?}"
        ));
    }
    // Each model's own page: text-to-image forbids only 2K/4K with the five ratios; image-to-image adds
    // "no 4K at 1:1" and "auto only at 1K" (and keeps the five, as its page was not confirmed to drop them).
    if resolution != "1K" && ONLY_1K_RATIOS.contains(&aspect_ratio) {
        return Err(format!(
            "aspect_ratio {aspect_ratio} is only available at 1K, not {resolution}"
        ));
    }
    if model == IMAGE_TO_IMAGE && resolution == "4K" && aspect_ratio == "1:1" {
        return Err(format!(
            "aspect_ratio 1:1 is not available at 4K for {IMAGE_TO_IMAGE}"
        ));
    }
    if model == IMAGE_TO_IMAGE && aspect_ratio == "auto" && resolution != "1K" {
        return Err(format!(
            "aspect_ratio auto is only available at 1K for {IMAGE_TO_IMAGE}, not {resolution}"
        ));
    }
    let input_urls = match input.get("input_urls") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(urls)) => urls
            .iter()
            .map(|url| url.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or("input.input_urls must be a list of URLs")?,
        Some(_) => return Err("input.input_urls must be a list of URLs".to_owned()),
    };
    if model == IMAGE_TO_IMAGE {
        if input_urls.is_empty() || input_urls.len() > MAX_INPUT_URLS {
            return Err(format!(
                "input.input_urls must hold 1-{MAX_INPUT_URLS} URLs for {IMAGE_TO_IMAGE}, got {}",
                input_urls.len()
            ));
        }
        if let Some(url) = input_urls.iter().find(|url| !is_http_url(url)) {
            return Err(format!(
                "input.input_urls must be http(s) URLs, not {url:?}"
            ));
        }
    } else if !input_urls.is_empty() {
        // Stricter than kie documents: images sent to text-to-image would be silently ignored, a client bug.
        return Err(format!(
            "input.input_urls is only accepted by {IMAGE_TO_IMAGE}"
        ));
    }
    Ok(CreateRequest {
        model: model.to_owned(),
        callback_url,
        prompt: prompt.to_owned(),
        aspect_ratio: aspect_ratio.to_owned(),
        resolution: resolution.to_owned(),
        input_urls,
        param: value.to_string(),
    })
}

fn optional_str<'a>(object: &'a Value, key: &str) -> Result<Option<&'a str>, String> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(value)) => Ok(Some(value)),
        Some(_) => Err(format!("input.{key} must be a string")),
    }
}

fn is_http_url(url: &str) -> bool {
    url.strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .is_some_and(|rest| !rest.is_empty())
}

/// GETs every input image, as kie does before accepting an image-to-image task.
async fn fetch_inputs(http: &reqwest::Client, urls: &[String]) -> Result<(), String> {
    for (i, url) in urls.iter().enumerate() {
        let response = http
            .get(url)
            .timeout(INPUT_FETCH_TIMEOUT)
            .send()
            .await
            .map_err(|error| format!("input.input_urls[{i}] could not be fetched: {error}"))?;
        let status = response.status();
        if status != reqwest::StatusCode::OK {
            return Err(format!(
                "input.input_urls[{i}] could not be fetched: HTTP {status}"
            ));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|error| format!("input.input_urls[{i}] could not be read: {error}"))?;
        if bytes.len() > MAX_INPUT_BYTES {
            return Err(format!("input.input_urls[{i}] is larger than 10 MB"));
        }
    }
    Ok(())
}

// ---- callbacks ----

async fn send_callbacks(shared: &Shared, task_id: &str) {
    let (url, body, copies, hmac_key) = {
        let inner = shared.lock();
        let Some(task) = inner.task(task_id) else {
            return;
        };
        let Some(url) = task.callback_url.clone() else {
            return;
        };
        let copies = match inner.config.callbacks {
            CallbackMode::Lost => return,
            CallbackMode::Normal | CallbackMode::BeforeResponse => 1,
            CallbackMode::Duplicated => 2,
        };
        // What recordInfo would answer now, without using up `[no-urls-once]`: the callback is only a hint.
        let now = Instant::now();
        let data = task.record(
            now,
            &shared.base_url,
            inner.config.result_url_ttl,
            task.withhold_urls_once,
            inner.config.fail_codes,
        );
        // kie: the failure callback carries `code: 501` with the same body.
        let body = if task.failed(now) {
            json!({ "code": 501, "msg": data["failMsg"], "data": data })
        } else {
            json!({ "code": 200, "msg": "success", "data": data })
        }
        .to_string();
        (url, body, copies, inner.config.hmac_key.clone())
    };
    for _ in 0..copies {
        deliver(shared, &url, task_id, &body, hmac_key.as_deref()).await;
    }
}

/// One delivery, retried a few times like kie's.
async fn deliver(shared: &Shared, url: &str, task_id: &str, body: &str, hmac_key: Option<&str>) {
    for attempt in 0..=CALLBACK_RETRIES {
        if attempt > 0 {
            tokio::select! {
                () = shared.stop.cancelled() => return,
                () = tokio::time::sleep(CALLBACK_RETRY_DELAY) => {}
            }
        }
        let mut request = shared
            .http
            .post(url)
            .timeout(CALLBACK_TIMEOUT)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.to_owned());
        if let Some(key) = hmac_key {
            let timestamp = epoch_ms() / 1000;
            request = request
                .header("X-Webhook-Timestamp", timestamp.to_string())
                .header(
                    "X-Webhook-Signature",
                    webhook_signature(key, task_id, timestamp),
                );
        }
        let delivered = tokio::select! {
            () = shared.stop.cancelled() => return,
            response = request.send() => response.is_ok_and(|response| response.status().is_success()),
        };
        if delivered {
            shared.lock().stats.callbacks_sent += 1;
            return;
        }
    }
}

/// base64(HMAC-SHA256(key, taskId + "." + timestamp)), kie's webhook signature.
pub fn webhook_signature(key: &str, task_id: &str, timestamp: u64) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(format!("{task_id}.{timestamp}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

// ---- recordInfo ----

async fn record_info(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let stall = take_stall(&mut shared.lock(), |config| &mut config.stall_record_infos);
    if let Some(stall) = stall {
        tokio::time::sleep(stall).await;
    }
    let now = Instant::now();
    let mut inner = shared.lock();
    let inner = &mut *inner;
    inner.stats.record_info_calls += 1;
    if !authorized(&headers, &inner.config.api_key) {
        return unauthorized();
    }
    if let Some((max, window)) = inner.config.record_info_limit
        && !admit(&mut inner.record_info_window, now, max, window)
    {
        inner.stats.rate_limited_record_infos += 1;
        return rate_limited();
    }
    if inner.config.malformed_record_info > 0 {
        inner.config.malformed_record_info -= 1;
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            MALFORMED_BODY,
        )
            .into_response();
    }
    let Some(task_id) = query.get("taskId").filter(|id| !id.is_empty()) else {
        return business_error(422, "taskId is required");
    };
    let ttl = inner.config.result_url_ttl;
    let (fail_codes, failed_task_code) = (inner.config.fail_codes, inner.config.failed_task_code);
    let Some(task) = inner.task_mut(task_id) else {
        return business_error(404, "task not found");
    };
    let withhold = task.withhold_urls_once && task.succeeded(now);
    if withhold {
        task.withhold_urls_once = false;
    }
    let data = task.record(now, &shared.base_url, ttl, withhold, fail_codes);
    if task.failed(now) && failed_task_code != 200 {
        let msg = data["failMsg"].as_str().unwrap_or_default().to_owned();
        return envelope_with_key(failed_task_code, task.message_key(), &msg, data);
    }
    envelope_with_key(200, task.message_key(), "success", data)
}

// ---- download-url ----

async fn download_url(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let now = Instant::now();
    let inner = shared.lock();
    if !authorized(&headers, &inner.config.api_key) {
        return unauthorized();
    }
    let Some(url) = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|value| value.get("url").and_then(Value::as_str).map(str::to_owned))
    else {
        return business_error(422, "url is required");
    };
    let refused = || business_error(422, "url expired or unknown");
    let Some(file) = parse_file_url(&shared.base_url, &url) else {
        return refused();
    };
    let Some(task) = inner
        .task(&file.task_id)
        .filter(|task| task.succeeded(now) && file.index == 0)
    else {
        return refused();
    };
    let Some(expires) = file.expires else {
        return refused();
    };
    let now_ms = epoch_ms();
    let file_expiry_ms = task.result_expiry_ms(inner.config.result_url_ttl);
    if now_ms >= expires.saturating_mul(1000) || now_ms >= file_expiry_ms {
        return refused();
    }
    let link_expires = (now_ms + millis(DIRECT_LINK_TTL))
        .div_ceil(1000)
        .min(expires);
    envelope(
        200,
        "success",
        json!(format!(
            "{}/files/{}/0.png?direct=1&expires={link_expires}",
            shared.base_url, task.id
        )),
    )
}

struct FileUrl {
    task_id: String,
    index: u32,
    expires: Option<u64>,
}

/// Recognises our own result file URLs (`<base>/files/<taskId>/<n>.png?...expires=<unix>`).
fn parse_file_url(base_url: &str, url: &str) -> Option<FileUrl> {
    let rest = url.strip_prefix(base_url)?.strip_prefix("/files/")?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (task_id, name) = path.split_once('/')?;
    let index = name.strip_suffix(".png")?.parse().ok()?;
    Some(FileUrl {
        task_id: task_id.to_owned(),
        index,
        expires: expires_param(query.split('&').filter_map(|pair| pair.split_once('='))),
    })
}

fn expires_param<'a>(mut pairs: impl Iterator<Item = (&'a str, &'a str)>) -> Option<u64> {
    pairs.find(|(key, _)| *key == "expires")?.1.parse().ok()
}

// ---- credit ----

async fn credit(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if !authorized(&headers, &shared.lock().config.api_key) {
        return unauthorized();
    }
    envelope(200, "success", json!(100))
}

// ---- result files ----

async fn file(
    State(shared): State<Arc<Shared>>,
    Path((task_id, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let now = Instant::now();
    let (width, height, seed) = {
        let inner = shared.lock();
        let Some(task) = inner.task(&task_id).filter(|task| task.succeeded(now)) else {
            return StatusCode::NOT_FOUND.into_response();
        };
        if name != "0.png" {
            return StatusCode::NOT_FOUND.into_response();
        }
        let expires = expires_param(
            query
                .iter()
                .map(|(key, value)| (key.as_str(), value.as_str())),
        );
        let now_ms = epoch_ms();
        let expired = expires.is_none_or(|expires| now_ms >= expires.saturating_mul(1000))
            || now_ms >= task.result_expiry_ms(inner.config.result_url_ttl);
        if expired {
            return StatusCode::FORBIDDEN.into_response();
        }
        if let Some(png) = &task.png {
            let png = png.clone();
            drop(inner);
            return serve_png(&shared, png);
        }
        let (width, height) = image_size(&task.aspect_ratio, inner.config.image_max_side);
        (width, height, task.id.bytes().fold(0u8, u8::wrapping_add))
    };
    // Encoding a large image takes a moment: not under the lock.
    let png = match gradient_png(width, height, seed) {
        Ok(png) => Bytes::from(png),
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    if let Some(task) = shared.lock().task_mut(&task_id) {
        task.png.get_or_insert(png.clone());
    }
    serve_png(&shared, png)
}

fn serve_png(shared: &Shared, png: Bytes) -> Response {
    shared.lock().stats.downloads += 1;
    (StatusCode::OK, [(header::CONTENT_TYPE, "image/png")], png).into_response()
}

/// Width and height for `aspect_ratio` with the long side `max_side`; `auto` is square.
fn image_size(aspect_ratio: &str, max_side: u32) -> (u32, u32) {
    let max_side = max_side.max(1);
    let (w, h) = aspect_ratio
        .split_once(':')
        .and_then(|(w, h)| Some((w.parse::<u64>().ok()?, h.parse::<u64>().ok()?)))
        .filter(|&(w, h)| w > 0 && h > 0)
        .unwrap_or((1, 1));
    let scale = |short: u64, long: u64| {
        let side = (u64::from(max_side) * short + long / 2) / long;
        u32::try_from(side).unwrap_or(max_side).max(1)
    };
    if w >= h {
        (max_side, scale(h, w))
    } else {
        (scale(w, h), max_side)
    }
}

/// A simple RGB gradient, tinted per task so different tasks give different files.
fn gradient_png(width: u32, height: u32, seed: u8) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    let ramp = |i: u32, n: u32| {
        u8::try_from(u64::from(i) * 255 / u64::from(n.saturating_sub(1).max(1))).unwrap_or(255)
    };
    let mut pixels = Vec::with_capacity(width as usize * height as usize * 3);
    for y in 0..height {
        for x in 0..width {
            pixels.extend_from_slice(&[ramp(x, width), ramp(y, height), seed]);
        }
    }
    writer.write_image_data(&pixels)?;
    writer.finish()?;
    Ok(out)
}

// ---- helpers ----

/// Sliding-window limiter: admits (and records) `now` if fewer than `max` calls were admitted within `window`.
fn admit(times: &mut VecDeque<Instant>, now: Instant, max: u32, window: Duration) -> bool {
    prune(times, now, window);
    if times.len() >= max as usize {
        return false;
    }
    times.push_back(now);
    true
}

fn prune(times: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while times
        .front()
        .is_some_and(|&t| now.saturating_duration_since(t) >= window)
    {
        times.pop_front();
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, millis)
}
