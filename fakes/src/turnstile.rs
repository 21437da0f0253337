//! A Cloudflare Turnstile stand-in: the siteverify API the production server calls, and a tiny widget script that
//! browser pages load in place of `https://challenges.cloudflare.com/turnstile/v0/api.js`, reached through a
//! configurable base URL.
//!
//! Siteverify, `POST /turnstile/v0/siteverify`, takes `secret`, `response` (the widget's token), and optional
//! `remoteip` and `idempotency_key`, form-encoded or as a JSON object (multipart bodies are not supported and
//! answer `bad-request`). It always answers HTTP 200 with `{"success", "error-codes", …}`; a success carries
//! `challenge_ts` (ISO 8601), `hostname`, `action` and `cdata`. Error codes are Cloudflare's:
//! `missing-input-secret`, `invalid-input-secret`, `missing-input-response`, `invalid-input-response`,
//! `bad-request`, `timeout-or-duplicate`, `internal-error`.
//!
//! Tokens work as Cloudflare's do: at most 2048 characters, valid for 300 s, good for one verification (the
//! second answers `timeout-or-duplicate`). A verification that names an `idempotency_key` (a UUID) is remembered:
//! a retry with the same key and token gets the first answer again instead of `timeout-or-duplicate`.
//! Cloudflare's test keys behave as documented: secret [`TEST_SECRET_PASS`] accepts any token,
//! [`TEST_SECRET_FAIL`] answers `invalid-input-response`, [`TEST_SECRET_DUPLICATE`] answers
//! `timeout-or-duplicate`; test sitekeys (`1x00000000000000000000AA`, …) make the widget produce
//! [`DUMMY_TOKEN`], which the stand-in's own secret rejects, as production secrets do.
//!
//! Its own keys ([`TurnstileFakeConfig`]) work like a real site's: the widget (`GET /turnstile/v0/api.js`) fills
//! each `.cf-turnstile` element with a hidden `cf-turnstile-response` input holding a fresh token fetched from
//! `POST /turnstile/v0/token`, and [`TurnstileFake::issue_token`] gives handler tests one directly.
//! Faults: [`TurnstileFake::fail_next_with`] makes the next verification answer an error code *after* doing its
//! work (the token is spent and the real answer remembered under the idempotency key), as when an answer is lost;
//! [`TurnstileFake::calls`] and [`TurnstileFake::last_request`] show what the server sent.

use std::{
    collections::{HashMap, VecDeque},
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant, SystemTime},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{RawQuery, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Path of the siteverify API (Cloudflare's).
pub const SITEVERIFY_PATH: &str = "/turnstile/v0/siteverify";
/// Path of the widget script (Cloudflare's).
pub const SCRIPT_PATH: &str = "/turnstile/v0/api.js";
/// Path the widget script fetches tokens from (the stand-in's own; Cloudflare's widget runs a challenge instead).
pub const TOKEN_PATH: &str = "/turnstile/v0/token";

/// Cloudflare's test secret that accepts any token.
pub const TEST_SECRET_PASS: &str = "1x0000000000000000000000000000000AA";
/// Cloudflare's test secret that rejects any token with `invalid-input-response`.
pub const TEST_SECRET_FAIL: &str = "2x0000000000000000000000000000000AA";
/// Cloudflare's test secret that answers `timeout-or-duplicate`.
pub const TEST_SECRET_DUPLICATE: &str = "3x0000000000000000000000000000000AA";
/// The token the widget produces for Cloudflare's test sitekeys.
pub const DUMMY_TOKEN: &str = "XXXX.DUMMY.TOKEN.XXXX";
/// Cloudflare's test sitekey whose widget always passes.
pub const TEST_SITEKEY_PASS: &str = "1x00000000000000000000AA";
/// Cloudflare's test sitekey whose widget always blocks (no token).
pub const TEST_SITEKEY_BLOCK: &str = "2x00000000000000000000AB";

/// How long a token can be verified.
pub const TOKEN_TTL: Duration = Duration::from_secs(300);
/// The longest token siteverify accepts.
pub const MAX_TOKEN_CHARS: usize = 2048;
const MAX_ACTION_CHARS: usize = 32;
const MAX_CDATA_CHARS: usize = 255;

/// The stand-in's own site: the sitekey its widget accepts, the secret its siteverify accepts, and what a
/// successful verification reports.
#[derive(Debug, Clone)]
pub struct TurnstileFakeConfig {
    pub sitekey: String,
    pub secret: String,
    /// Reported as `hostname` for every token of this site.
    pub hostname: String,
    /// Reported as `action` when the widget (`data-action`) or [`TurnstileFake::issue_token_for_action`] gives
    /// none; `None` reports `""`.
    pub action: Option<String>,
}

impl Default for TurnstileFakeConfig {
    fn default() -> Self {
        Self {
            sitekey: "0x4AAAAAAAFakeSitekey0000".to_owned(),
            secret: "0x4AAAAAAAFakeSecret000000000000000".to_owned(),
            hostname: "localhost".to_owned(),
            action: None,
        }
    }
}

/// One siteverify request as received (absent and empty fields are `None`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SiteverifyRequest {
    pub secret: Option<String>,
    pub response: Option<String>,
    pub remoteip: Option<String>,
    pub idempotency_key: Option<String>,
    /// The request's `Content-Type`, to tell form-encoded from JSON.
    pub content_type: Option<String>,
}

/// A running Turnstile stand-in on 127.0.0.1; stops serving when dropped.
pub struct TurnstileFake {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl TurnstileFake {
    /// Serves on a free port of 127.0.0.1.
    pub async fn start(config: TurnstileFakeConfig) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            base_url: format!("http://{addr}"),
            stop: CancellationToken::new(),
            state: Mutex::new(Inner {
                config,
                tokens: HashMap::new(),
                idempotent: HashMap::new(),
                failures: VecDeque::new(),
                requests: Vec::new(),
                clock_offset: Duration::ZERO,
            }),
        });
        let app = Router::new()
            .route(SITEVERIFY_PATH, post(siteverify))
            .route(SCRIPT_PATH, get(script))
            .route(TOKEN_PATH, post(widget_token).options(preflight))
            .with_state(shared.clone());
        let stopped = shared.stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stopped.cancelled_owned())
                .await;
        });
        Ok(Self { addr, shared })
    }

    /// `http://127.0.0.1:PORT`, the value for the server's and the page's Turnstile base URL.
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The full siteverify URL.
    pub fn siteverify_url(&self) -> String {
        format!("{}{SITEVERIFY_PATH}", self.shared.base_url)
    }

    /// The full widget script URL, for the page's `<script src>`.
    pub fn script_url(&self) -> String {
        format!("{}{SCRIPT_PATH}", self.shared.base_url)
    }

    /// A fresh token for this site, as the widget would produce after a solved challenge.
    pub fn issue_token(&self) -> String {
        self.shared.lock().issue(None, None)
    }

    /// A fresh token whose verification reports `action`.
    pub fn issue_token_for_action(&self, action: &str) -> String {
        self.shared.lock().issue(Some(action.to_owned()), None)
    }

    /// Makes `token` expired now, as if 300 s had passed; unknown tokens are ignored.
    pub fn expire_token(&self, token: &str) {
        if let Some(issued) = self.shared.lock().tokens.get_mut(token) {
            issued.expired = true;
        }
    }

    /// Moves the stand-in's clock forward, so tokens age (and `challenge_ts` of later tokens shifts) by `by`.
    pub fn advance_clock(&self, by: Duration) {
        self.shared.lock().clock_offset += by;
    }

    /// Makes the next verification answer `{"success": false, "error-codes": [error_code]}` after doing its work.
    /// Calls queue up: two calls fail the next two verifications.
    pub fn fail_next_with(&self, error_code: &str) {
        self.shared.lock().failures.push_back(error_code.to_owned());
    }

    /// Siteverify requests received so far.
    pub fn calls(&self) -> usize {
        self.shared.lock().requests.len()
    }

    /// The latest siteverify request.
    pub fn last_request(&self) -> Option<SiteverifyRequest> {
        self.shared.lock().requests.last().cloned()
    }

    /// Every siteverify request, oldest first.
    pub fn requests(&self) -> Vec<SiteverifyRequest> {
        self.shared.lock().requests.clone()
    }
}

impl Drop for TurnstileFake {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

struct Shared {
    base_url: String,
    stop: CancellationToken,
    state: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking handler must not take the whole stand-in down with it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

type SharedState = Arc<Shared>;

struct Inner {
    config: TurnstileFakeConfig,
    tokens: HashMap<String, IssuedToken>,
    /// idempotency_key → (token, first answer).
    idempotent: HashMap<String, (String, Value)>,
    failures: VecDeque<String>,
    requests: Vec<SiteverifyRequest>,
    clock_offset: Duration,
}

struct IssuedToken {
    issued_at: Instant,
    challenge_ts: String,
    action: String,
    cdata: String,
    spent: bool,
    /// Set by [`TurnstileFake::expire_token`].
    expired: bool,
}

impl Inner {
    fn now(&self) -> Instant {
        Instant::now() + self.clock_offset
    }

    fn issue(&mut self, action: Option<String>, cdata: Option<String>) -> String {
        // Cloudflare's tokens are opaque, a few hundred characters, starting with a version digit.
        let token = format!(
            "0.{}.{}",
            URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>()),
            URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
        );
        let action = action
            .filter(|a| !a.is_empty())
            .or_else(|| self.config.action.clone())
            .unwrap_or_default();
        let challenge_ts = iso_time(SystemTime::now() + self.clock_offset);
        let issued_at = self.now();
        self.tokens.insert(
            token.clone(),
            IssuedToken {
                issued_at,
                challenge_ts,
                action,
                cdata: cdata.unwrap_or_default(),
                spent: false,
                expired: false,
            },
        );
        token
    }

    /// Verifies `token` against this site, spending it.
    fn verify_own(&mut self, token: &str) -> Value {
        if token.len() > MAX_TOKEN_CHARS || token == DUMMY_TOKEN {
            return failure("invalid-input-response");
        }
        let now = self.now();
        let hostname = self.config.hostname.clone();
        let Some(issued) = self.tokens.get_mut(token) else {
            return failure("invalid-input-response");
        };
        if issued.spent
            || issued.expired
            || now.saturating_duration_since(issued.issued_at) >= TOKEN_TTL
        {
            return failure("timeout-or-duplicate");
        }
        issued.spent = true;
        success(
            &issued.challenge_ts,
            &hostname,
            &issued.action,
            &issued.cdata,
        )
    }
}

fn iso_time(time: SystemTime) -> String {
    DateTime::<Utc>::from(time).to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn success(challenge_ts: &str, hostname: &str, action: &str, cdata: &str) -> Value {
    json!({
        "success": true,
        "error-codes": [],
        "challenge_ts": challenge_ts,
        "hostname": hostname,
        "action": action,
        "cdata": cdata,
        "metadata": {"interactive": false},
    })
}

fn failure(error_code: &str) -> Value {
    json!({"success": false, "error-codes": [error_code], "messages": []})
}

/// Cloudflare's test sitekeys: `1x`, `2x` or `3x`, twenty zeros, two letters.
fn test_sitekey_kind(sitekey: &str) -> Option<char> {
    let bytes = sitekey.as_bytes();
    let is_test = bytes.len() == 24
        && matches!(bytes[0], b'1' | b'2' | b'3')
        && bytes[1] == b'x'
        && bytes[2..22].iter().all(|&b| b == b'0')
        && bytes[22..].iter().all(u8::is_ascii_uppercase);
    is_test.then(|| char::from(bytes[0]))
}

/// A hyphenated UUID (8-4-4-4-12 hex digits).
fn is_uuid(value: &str) -> bool {
    let groups: Vec<&str> = value.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(group, len)| group.len() == len && group.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Parses a siteverify body; `Err` means `bad-request`.
fn parse_siteverify(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<SiteverifyRequest, SiteverifyRequest> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut request = SiteverifyRequest {
        content_type: content_type.clone(),
        ..SiteverifyRequest::default()
    };
    let media_type = content_type
        .as_deref()
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    let mut fields: Vec<(String, String)> = Vec::new();
    match media_type.as_deref() {
        Some("application/json") => {
            let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(body) else {
                return Err(request);
            };
            for (name, value) in object {
                match value {
                    Value::String(value) => fields.push((name, value)),
                    Value::Null => {}
                    _ => return Err(request),
                }
            }
        }
        None | Some("application/x-www-form-urlencoded") => {
            fields = url::form_urlencoded::parse(body).into_owned().collect();
        }
        Some(_) => return Err(request),
    }
    for (name, value) in fields {
        if value.is_empty() {
            continue;
        }
        let slot = match name.as_str() {
            "secret" => &mut request.secret,
            "response" => &mut request.response,
            "remoteip" => &mut request.remoteip,
            "idempotency_key" => &mut request.idempotency_key,
            _ => continue,
        };
        if slot.is_some() {
            return Err(request);
        }
        *slot = Some(value);
    }
    if request
        .idempotency_key
        .as_deref()
        .is_some_and(|key| !is_uuid(key))
    {
        return Err(request);
    }
    Ok(request)
}

async fn siteverify(
    State(shared): State<SharedState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut inner = shared.lock();
    let answer = match parse_siteverify(&headers, &body) {
        Err(request) => {
            inner.requests.push(request);
            failure("bad-request")
        }
        Ok(request) => {
            inner.requests.push(request.clone());
            verify(&mut inner, &request)
        }
    };
    let answer = match inner.failures.pop_front() {
        Some(code) => failure(&code),
        None => answer,
    };
    Json(answer).into_response()
}

fn verify(inner: &mut Inner, request: &SiteverifyRequest) -> Value {
    let Some(secret) = request.secret.as_deref() else {
        return failure("missing-input-secret");
    };
    let Some(token) = request.response.as_deref() else {
        return failure("missing-input-response");
    };
    match secret {
        TEST_SECRET_PASS => {
            return success(&iso_time(SystemTime::now()), "example.com", "", "");
        }
        TEST_SECRET_FAIL => return failure("invalid-input-response"),
        TEST_SECRET_DUPLICATE => return failure("timeout-or-duplicate"),
        _ => {}
    }
    if secret != inner.config.secret {
        return failure("invalid-input-secret");
    }
    let Some(key) = request.idempotency_key.clone() else {
        return inner.verify_own(token);
    };
    if let Some((first_token, first_answer)) = inner.idempotent.get(&key)
        && first_token == token
    {
        return first_answer.clone();
    }
    let answer = inner.verify_own(token);
    inner
        .idempotent
        .insert(key, (token.to_owned(), answer.clone()));
    answer
}

// ---------------------------------------------------------------------------------------------------------------
// The widget

/// Lets pages on other origins (the app under test) fetch tokens.
const ALLOW_ANY_ORIGIN: (header::HeaderName, &str) = (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*");

async fn preflight() -> Response {
    (
        StatusCode::NO_CONTENT,
        [
            ALLOW_ANY_ORIGIN,
            (header::ACCESS_CONTROL_ALLOW_METHODS, "POST"),
            (header::ACCESS_CONTROL_ALLOW_HEADERS, "content-type"),
        ],
    )
        .into_response()
}

/// `POST /turnstile/v0/token` (form: `sitekey`, optional `action`, `cdata`) → `{"token": …}` or
/// `{"error": …}` with 400 (unknown sitekey, bad action or cdata) or 403 (a blocking test sitekey).
async fn widget_token(State(shared): State<SharedState>, body: Bytes) -> Response {
    let reply =
        |status: StatusCode, body: Value| (status, [ALLOW_ANY_ORIGIN], Json(body)).into_response();
    let mut sitekey = None;
    let mut action = None;
    let mut cdata = None;
    for (name, value) in url::form_urlencoded::parse(&body).into_owned() {
        match name.as_str() {
            "sitekey" => sitekey = Some(value),
            "action" => action = Some(value).filter(|v| !v.is_empty()),
            "cdata" => cdata = Some(value).filter(|v| !v.is_empty()),
            _ => {}
        }
    }
    let Some(sitekey) = sitekey.filter(|s| !s.is_empty()) else {
        return reply(StatusCode::BAD_REQUEST, json!({"error": "missing sitekey"}));
    };
    if action.as_deref().is_some_and(|a| {
        a.len() > MAX_ACTION_CHARS
            || !a
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    }) {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({"error": "invalid action: up to 32 characters of [A-Za-z0-9_-]"}),
        );
    }
    if cdata.as_deref().is_some_and(|c| {
        c.len() > MAX_CDATA_CHARS
            || !c
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    }) {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({"error": "invalid cdata: up to 255 characters of [A-Za-z0-9_-]"}),
        );
    }
    match test_sitekey_kind(&sitekey) {
        Some('2') => reply(StatusCode::FORBIDDEN, json!({"error": "challenge failed"})),
        Some(_) => reply(StatusCode::OK, json!({"token": DUMMY_TOKEN})),
        None => {
            let mut inner = shared.lock();
            if sitekey != inner.config.sitekey {
                return reply(
                    StatusCode::BAD_REQUEST,
                    json!({"error": format!("invalid sitekey: {sitekey}")}),
                );
            }
            let token = inner.issue(action, cdata);
            reply(StatusCode::OK, json!({"token": token}))
        }
    }
}

/// `GET /turnstile/v0/api.js[?render=explicit][&onload=fn]`: the widget script, with the stand-in's URL built in.
async fn script(State(shared): State<SharedState>, RawQuery(query): RawQuery) -> Response {
    let mut explicit = false;
    let mut onload = None;
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match name.as_ref() {
            "render" => explicit = value == "explicit",
            "onload" => onload = Some(value.into_owned()),
            _ => {}
        }
    }
    let settings = json!({
        "tokenUrl": format!("{}{TOKEN_PATH}", shared.base_url),
        "explicit": explicit,
        "onload": onload,
        "ttlMs": TOKEN_TTL.as_millis() as u64,
    });
    let source = WIDGET_JS.replace("__SETTINGS__", &settings.to_string());
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            ALLOW_ANY_ORIGIN,
        ],
        source,
    )
        .into_response()
}

/// The widget: implicit rendering of `.cf-turnstile` elements (`data-sitekey`, `data-action`, `data-cdata`,
/// `data-callback`, `data-error-callback`, `data-expired-callback`, `data-response-field`,
/// `data-response-field-name`) and the `window.turnstile` API (`render`, `reset`, `remove`, `getResponse`,
/// `isExpired`, `ready`). Each widget shows a small status box (`role="status"`) and puts its token in a hidden
/// input, `cf-turnstile-response` by default; it fetches a new one when the token expires.
const WIDGET_JS: &str = r#"(function () {
  "use strict";
  var settings = __SETTINGS__;
  var widgets = {};
  var count = 0;

  function fn(value) {
    if (typeof value === "function") return value;
    if (typeof value === "string" && typeof window[value] === "function") return window[value];
    return null;
  }
  function call(value, arg) {
    var f = fn(value);
    if (f) { try { f(arg); } catch (e) { console.error(e); } }
  }
  function find(id) {
    if (id === undefined || id === null) {
      for (var key in widgets) return widgets[key];
      return null;
    }
    if (typeof id !== "string" && id && id.getAttribute) id = id.getAttribute("data-turnstile-widget-id");
    return widgets[id] || null;
  }
  function show(w, state, text) {
    w.container.setAttribute("data-state", state);
    w.status.textContent = text;
  }
  function issue(w) {
    clearTimeout(w.timer);
    w.token = "";
    if (w.input) w.input.value = "";
    show(w, "pending", "Verifying...");
    var body = new URLSearchParams();
    body.set("sitekey", w.sitekey);
    if (w.action) body.set("action", w.action);
    if (w.cdata) body.set("cdata", w.cdata);
    fetch(settings.tokenUrl, { method: "POST", body: body }).then(function (response) {
      return response.json().then(function (json) {
        if (!response.ok || !json.token) throw new Error(json.error || ("HTTP " + response.status));
        return json.token;
      });
    }).then(function (token) {
      if (w.removed) return;
      w.token = token;
      w.expired = false;
      if (w.input) w.input.value = token;
      show(w, "solved", "Success!");
      call(w.callback, token);
      w.timer = setTimeout(function () {
        w.expired = true;
        call(w.expiredCallback, w.token);
        issue(w);
      }, settings.ttlMs);
    }).catch(function (error) {
      if (w.removed) return;
      show(w, "error", "Verification failed");
      call(w.errorCallback, String(error && error.message || error));
    });
  }
  function render(container, options) {
    if (typeof container === "string") container = document.querySelector(container);
    if (!container) throw new Error("turnstile.render: container not found");
    var existing = container.getAttribute("data-turnstile-widget-id");
    if (existing && widgets[existing]) return existing;
    options = options || {};
    var data = container.dataset || {};
    var sitekey = options.sitekey || data.sitekey;
    if (!sitekey) throw new Error("turnstile.render: missing sitekey");
    var id = "cf-chl-widget-" + (++count);
    var w = {
      id: id,
      container: container,
      sitekey: sitekey,
      action: options.action || data.action || "",
      cdata: options.cData || data.cdata || "",
      callback: options.callback || data.callback,
      errorCallback: options["error-callback"] || data.errorCallback,
      expiredCallback: options["expired-callback"] || data.expiredCallback,
      token: "",
      expired: false,
      removed: false,
      timer: null
    };
    container.setAttribute("data-turnstile-widget-id", id);
    var box = document.createElement("div");
    box.className = "cf-turnstile-fake";
    box.style.cssText = "display:inline-block;min-width:300px;padding:12px;border:1px solid #ccc;border-radius:4px;font:14px sans-serif";
    var status = document.createElement("span");
    status.setAttribute("role", "status");
    status.setAttribute("aria-live", "polite");
    status.id = id + "_status";
    box.appendChild(status);
    container.appendChild(box);
    w.box = box;
    w.status = status;
    var fieldWanted = options["response-field"] !== undefined ? options["response-field"] : data.responseField;
    if (fieldWanted !== false && fieldWanted !== "false") {
      var input = document.createElement("input");
      input.type = "hidden";
      input.name = options["response-field-name"] || data.responseFieldName || "cf-turnstile-response";
      input.id = id + "_response";
      container.appendChild(input);
      w.input = input;
    }
    widgets[id] = w;
    issue(w);
    return id;
  }
  function renderAll() {
    var elements = document.querySelectorAll(".cf-turnstile");
    for (var i = 0; i < elements.length; i++) {
      try { render(elements[i]); } catch (e) { console.error(e); }
    }
  }
  var readyCallbacks = [];
  var isReady = false;
  window.turnstile = {
    render: render,
    reset: function (id) { var w = find(id); if (w) issue(w); },
    remove: function (id) {
      var w = find(id);
      if (!w) return;
      w.removed = true;
      clearTimeout(w.timer);
      if (w.box && w.box.parentNode) w.box.parentNode.removeChild(w.box);
      if (w.input && w.input.parentNode) w.input.parentNode.removeChild(w.input);
      w.container.removeAttribute("data-turnstile-widget-id");
      delete widgets[w.id];
    },
    getResponse: function (id) { var w = find(id); return w && !w.expired ? w.token : undefined; },
    isExpired: function (id) { var w = find(id); return !!(w && w.expired); },
    ready: function (callback) { if (isReady) callback(); else readyCallbacks.push(callback); }
  };
  function start() {
    if (!settings.explicit) renderAll();
    isReady = true;
    readyCallbacks.splice(0).forEach(function (callback) { callback(); });
    if (settings.onload) call(settings.onload);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
"#;
