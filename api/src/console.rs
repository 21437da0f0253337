//! The ops console: a few maud pages on a separate admin listener, behind the operator token (HTTP Basic,
//! any user name, the token as password). It shows what `createimage2 jobs …` shows — queues, workers, dead
//! jobs, upstreams, the recent operator actions — live (the page refreshes itself), with buttons to retry,
//! cancel or discard a job, retry or discard a queue's dead jobs (optionally only those whose error contains a
//! text), and pause or resume a queue or an upstream. Every action is recorded (`jobs::operator`) under the
//! HTTP Basic user name, with the reason typed beside its button. It reads on a phone (one column, tables
//! scroll sideways, the less urgent columns hidden).

use std::sync::Arc;

use axum::{
    Form, Router,
    extract::{Path, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
};
use base64::Engine as _;
use jobs::operator::{Operator, OperatorError, Via};
use maud::{DOCTYPE, Markup, html};
use queue::ops::{self, DeadJobFilter};
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use subtle::ConstantTimeEq;

#[derive(Clone)]
struct Console {
    pool: PgPool,
    /// The queues of the job registry the fleet runs.
    queues: Arc<[&'static str]>,
    token: Arc<SecretString>,
    /// The forms' CSRF token: an HMAC of a fixed label under the operator token, so only a page served to the
    /// operator can carry it, and it needs no session.
    csrf: Arc<str>,
}

/// The CSRF token of the console whose operator token is `token`.
fn csrf_token(token: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(token.as_bytes()).expect("HMAC takes any key length");
    mac.update(b"createimage2 ops console csrf v1");
    hex::encode(mac.finalize().into_bytes())
}

/// Largest form body the console reads (its forms carry one token).
const FORM_LIMIT: usize = 4096;

/// The console's router. Every route requires the operator token.
pub fn router(pool: PgPool, queues: Arc<[&'static str]>, token: SecretString) -> Router {
    let console = Console {
        pool,
        queues,
        csrf: csrf_token(token.expose_secret()).into(),
        token: Arc::new(token),
    };
    Router::new()
        .route("/", get(overview))
        .route("/jobs/{id}", get(job_page))
        .route("/queues/{queue}", get(queue_page))
        .route("/upstreams/{upstream}", get(upstream_page))
        .route("/jobs/{id}/retry", post(retry))
        .route("/jobs/{id}/cancel", post(cancel))
        .route("/jobs/{id}/discard", post(discard))
        .route("/queues/{queue}/pause", post(pause_queue))
        .route("/queues/{queue}/resume", post(resume_queue))
        .route("/queues/{queue}/retry-dead", post(retry_dead))
        .route("/queues/{queue}/discard-dead", post(discard_dead))
        .route("/upstreams/{upstream}/pause", post(pause_upstream))
        .route("/upstreams/{upstream}/resume", post(resume_upstream))
        .layer(middleware::from_fn_with_state(
            console.clone(),
            require_operator,
        ))
        .layer(middleware::from_fn(security_headers))
        .with_state(console)
}

/// The site's protections for a page that must never be framed, sniffed or cached: the console's buttons act
/// with the operator's cached credentials, so a page that framed it could make a click pause a queue.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

async fn require_operator(
    State(console): State<Console>,
    request: Request,
    next: Next,
) -> Response {
    if !presents_token(request.headers(), console.token.expose_secret()) {
        let mut response = (StatusCode::UNAUTHORIZED, "operator token required\n").into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"createimage2 ops\""),
        );
        return response;
    }
    if request.method() == axum::http::Method::GET || request.method() == axum::http::Method::HEAD {
        return next.run(request).await;
    }
    // Browsers resend Basic credentials on cross-site requests: a state change must come from the console's own
    // page. Fetch Metadata says so where the browser sends it; otherwise the Origin, when present, must be this
    // host; and always, the form's token must be the console's.
    if !same_origin(request.headers()) {
        return (StatusCode::FORBIDDEN, "cross-site request refused\n").into_response();
    }
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, FORM_LIMIT).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "form too large\n").into_response();
    };
    let presented = url::form_urlencoded::parse(&bytes)
        .find(|(name, _)| name == "csrf")
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default();
    if !bool::from(presented.as_bytes().ct_eq(console.csrf.as_bytes())) {
        return (
            StatusCode::FORBIDDEN,
            "missing or wrong form token; reload the page\n",
        )
            .into_response();
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

/// Whether a state-changing request comes from this host's own pages, as far as the browser tells.
fn same_origin(headers: &HeaderMap) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = header("sec-fetch-site") {
        return matches!(site, "same-origin" | "none");
    }
    match (header("origin"), header("host")) {
        (None, _) => true,
        (Some(origin), Some(host)) => url::Url::parse(origin).is_ok_and(|origin| {
            let port = origin.port().map(|p| format!(":{p}")).unwrap_or_default();
            origin
                .host_str()
                .is_some_and(|h| format!("{h}{port}").eq_ignore_ascii_case(host))
        }),
        (Some(_), None) => false,
    }
}

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

/// HTTP Basic credentials: (user name, password).
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let encoded = authorization(headers)?.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn presents_token(headers: &HeaderMap, token: &str) -> bool {
    let presented = match basic_credentials(headers) {
        Some((_, password)) => password,
        None => match authorization(headers).and_then(|v| v.strip_prefix("Bearer ")) {
            Some(bearer) => bearer.trim().to_owned(),
            None => return false,
        },
    };
    presented.len() == token.len() && bool::from(presented.as_bytes().ct_eq(token.as_bytes()))
}

fn page(title: &str, refresh: bool, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if refresh { meta http-equiv="refresh" content="5"; }
                title { (title) " · createimage2 ops" }
                style { (CSS) }
            }
            body {
                header { a href="/" { "createimage2 ops" } }
                main { (body) }
            }
        }
    }
}

const CSS: &str = "body{font:15px system-ui,sans-serif;margin:0;color:#1d1d1f}header{background:#1d1d1f;padding:10px 16px}\
header a{color:#fff;text-decoration:none;font-weight:600}main{padding:12px 16px;max-width:1200px}\
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch;margin-bottom:24px}\
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:8px;border-bottom:1px solid #ddd;vertical-align:top}\
th{background:#f5f5f7;white-space:nowrap}td.num{text-align:right;font-variant-numeric:tabular-nums}.bad{color:#b00020;font-weight:600}\
.idle{color:#86868b}.note{color:#515154}\
form.act{display:flex;flex-direction:column;gap:8px;max-width:28em;margin:0 0 20px;padding:12px;border:1px solid #ddd;border-radius:8px}\
label{display:flex;flex-direction:column;gap:4px;font-weight:600}\
input[type=text]{font:inherit;min-height:40px;padding:4px 8px}button{font:inherit;min-height:44px;padding:4px 16px;cursor:pointer}\
pre{white-space:pre-wrap;word-break:break-word;background:#f5f5f7;padding:10px}\
@media (max-width:640px){th,td{padding:6px 4px}.wide{display:none}}";

/// A cell's classes: `base`, and `bad` when `bad` holds (one `class` attribute: a browser keeps only the first).
fn cell(base: &'static str, bad: bool) -> String {
    if bad {
        format!("{base} bad")
    } else {
        base.to_owned()
    }
}

/// A form that acts, on a page of its own (the overview refreshes itself and would wipe a half-typed reason):
/// the CSRF token, a required reason for the audit trail, and `extra` fields.
fn action_form(csrf: &str, action: &str, label: &str, extra: Markup) -> Markup {
    html! {
        form.act method="post" action=(action) {
            input type="hidden" name="csrf" value=(csrf);
            (extra)
            label { "Why (kept in the audit trail)"
                input type="text" name="reason" required minlength="3" autocomplete="off"
                    placeholder="e.g. kie incident INC-42";
            }
            button { (label) }
        }
    }
}

async fn overview(State(console): State<Console>) -> Result<Markup, ConsoleError> {
    let queues = ops::queue_stats_with_idle(&console.pool, &console.queues).await?;
    let dead = ops::dead_jobs(&console.pool, None, 50).await?;
    let workers = ops::workers(
        &console.pool,
        jobs::services::WORKER_STORAGE_NAME,
        std::time::Duration::from_secs(3600),
    )
    .await?;
    let upstreams = jobs::upstream::paused(&console.pool).await?;
    let actions = jobs::operator::recent_actions(&console.pool, 20).await?;
    Ok(page(
        "Overview",
        true,
        html! {
            p.note { "Refreshes every 5 s. Open a queue, upstream or job to act on it." }
            h2 { "Queues" }
            div.scroll { table {
                tr { th { "queue" } th { "waiting" } th.wide { "scheduled" } th { "running" } th.wide { "stuck" } th { "dead" }
                     th { "oldest" } }
                @for q in &queues {
                    @let idle = q.waiting + q.scheduled + q.running + q.dead == 0;
                    tr class=[idle.then_some("idle")] {
                        td { a href={ "/queues/" (q.queue) } { (q.queue) } @if q.paused { " " span.bad { "(paused)" } } }
                        td.num { (q.waiting) } td.num.wide { (q.scheduled) } td.num { (q.running) }
                        td class=(cell("num wide", q.stuck > 0)) { (q.stuck) }
                        td class=(cell("num", q.dead > 0)) { (q.dead) }
                        td.num { (format!("{:.0} s", q.oldest_waiting_age_seconds)) }
                    }
                }
            } }
            h2 { "Upstreams" }
            div.scroll { table {
                tr { th { "upstream" } th { "state" } }
                @for name in jobs::upstream::KNOWN {
                    tr {
                        td { a href={ "/upstreams/" (name) } { (name) } }
                        @match upstreams.iter().find(|p| p.upstream == *name) {
                            Some(p) => { td.bad { "paused (" (p.kind) ") since " (p.paused_at.format("%Y-%m-%d %H:%M UTC")) ": " (p.reason) } }
                            None => { td { "submitting" } }
                        }
                    }
                }
            } }
            h2 { "Workers" }
            div.scroll { table {
                tr { th { "worker" } th { "queue" } th { "heartbeat" } th.wide { "running" } }
                @for w in &workers {
                    tr {
                        td { (w.id) } td { (w.queue) }
                        td class=(cell("num", w.seconds_since_seen > 60.0)) { (format!("{:.0} s ago", w.seconds_since_seen)) }
                        td.num.wide { (w.running) }
                    }
                }
            } }
            h2 { "Dead jobs" }
            div.scroll { table {
                tr { th { "job" } th { "queue" } th.wide { "attempts" } th.wide { "died" } th { "last error" } }
                @for job in &dead {
                    tr {
                        td { a href={ "/jobs/" (job.id) } { (job.id) } }
                        td { (job.queue) }
                        td.num.wide { (job.attempts) "/" (job.max_attempts) }
                        td.wide { (job.done_at.map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_default()) }
                        td { (job.last_error.as_deref().unwrap_or("")) }
                    }
                }
            } }
            h2 { "Recent operator actions" }
            (actions_table(&actions))
        },
    ))
}

fn actions_table(actions: &[jobs::operator::Action]) -> Markup {
    html! {
        div.scroll { table {
            tr { th { "when" } th { "who" } th { "action" } th { "target" } th { "reason" } th.wide { "detail" } }
            @for a in actions {
                tr {
                    td { (a.at.format("%Y-%m-%d %H:%M:%S")) }
                    td { (a.actor) " (" (a.via) ")" }
                    td { (a.action) } td { (a.target) } td { (a.reason) }
                    td.wide { (a.detail) }
                }
            }
        } }
    }
}

/// `GET /queues/{queue}`: one queue's state, its dead jobs, and the forms that act on it.
async fn queue_page(
    State(console): State<Console>,
    Path(queue): Path<String>,
) -> Result<Markup, ConsoleError> {
    let Some(name) = console.queues.iter().copied().find(|q| *q == queue) else {
        return Err(ConsoleError::unknown_queue(&console, &queue));
    };
    let csrf = console.csrf.as_ref();
    let stats = ops::queue_stats_with_idle(&console.pool, &[name])
        .await?
        .into_iter()
        .find(|s| s.queue == name)
        .unwrap_or_default();
    let dead = ops::dead_jobs(&console.pool, Some(name), 20).await?;
    Ok(page(
        &format!("Queue {name}"),
        false,
        html! {
            h2 { "Queue " (name) @if stats.paused { " " span.bad { "(paused)" } } }
            p { (stats.waiting) " waiting, " (stats.scheduled) " scheduled, " (stats.running) " running, "
                span class=[(stats.stuck > 0).then_some("bad")] { (stats.stuck) " stuck" } ", "
                span class=[(stats.dead > 0).then_some("bad")] { (stats.dead) " dead" }
                "; the oldest waiting job has waited " (format!("{:.0}", stats.oldest_waiting_age_seconds)) " s." }
            @if stats.paused {
                (action_form(csrf, &format!("/queues/{name}/resume"), "Resume claiming", html! {}))
            } @else {
                (action_form(csrf, &format!("/queues/{name}/pause"), "Pause claiming (running jobs finish)", html! {}))
            }
            @if stats.dead > 0 {
                h3 { "Dead jobs (" (stats.dead) ")" }
                @let filter = html! {
                    label { "Only those whose last error contains (optional)"
                        input type="text" name="error_contains" autocomplete="off" placeholder="e.g. timed out";
                    }
                };
                (action_form(csrf, &format!("/queues/{name}/retry-dead"), "Retry them", filter.clone()))
                (action_form(csrf, &format!("/queues/{name}/discard-dead"), "Discard them for good", filter))
                div.scroll { table {
                    tr { th { "job" } th.wide { "died" } th { "last error" } }
                    @for job in &dead {
                        tr {
                            td { a href={ "/jobs/" (job.id) } { (job.id) } }
                            td.wide { (job.done_at.map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_default()) }
                            td { (job.last_error.as_deref().unwrap_or("")) }
                        }
                    }
                } }
            }
        },
    ))
}

/// `GET /upstreams/{name}`: whether submissions to it are paused, by whom, and the form to change that.
async fn upstream_page(
    State(console): State<Console>,
    Path(name): Path<String>,
) -> Result<Markup, ConsoleError> {
    let Some(name) = jobs::upstream::KNOWN.iter().copied().find(|n| *n == name) else {
        return Err(ConsoleError::new(
            StatusCode::NOT_FOUND,
            format!(
                "There is no upstream {name:?}. The upstreams are: {}.",
                jobs::upstream::KNOWN.join(", ")
            ),
        ));
    };
    let csrf = console.csrf.as_ref();
    let pause = jobs::upstream::paused(&console.pool)
        .await?
        .into_iter()
        .find(|p| p.upstream == name);
    Ok(page(
        &format!("Upstream {name}"),
        false,
        html! {
            h2 { "Upstream " (name) }
            @match &pause {
                Some(p) => {
                    p.bad { "Submissions paused (" (p.kind) ") since " (p.paused_at.format("%Y-%m-%d %H:%M:%S UTC")) ": " (p.reason) }
                    p.note { @match p.kind {
                        jobs::upstream::PauseKind::Operator => "An operator paused it: it stays paused until an operator resumes it.",
                        jobs::upstream::PauseKind::Automatic => "An account-level error paused it: the probe checks every few minutes and resumes it once the account works.",
                    } }
                    (action_form(csrf, &format!("/upstreams/{name}/resume"), "Resume submissions", html! {}))
                }
                None => {
                    p { "Submitting." }
                    (action_form(csrf, &format!("/upstreams/{name}/pause"), "Pause submissions (until an operator resumes)", html! {}))
                }
            }
        },
    ))
}

async fn job_page(
    State(console): State<Console>,
    Path(id): Path<String>,
) -> Result<Markup, ConsoleError> {
    let csrf = console.csrf.as_ref();
    let job = ops::find_job(&console.pool, &id).await?.ok_or_else(|| {
        ConsoleError::new(StatusCode::NOT_FOUND, format!("There is no job {id:?}."))
    })?;
    Ok(page(
        &format!("Job {id}"),
        false,
        html! {
            h2 { "Job " (job.id) }
            div.scroll { table {
                tr { th { "queue" } td { a href={ "/queues/" (job.queue) } { (job.queue) } } }
                tr { th { "status" } td { (job.status) } }
                tr { th { "attempts" } td { (job.attempts) "/" (job.max_attempts) } }
                tr { th { "run at" } td { (job.run_at) } }
                tr { th { "worker" } td { (job.lock_by.as_deref().unwrap_or("")) } }
                tr { th { "last error" } td { (job.last_error.as_deref().unwrap_or("")) } }
            } }
            h3 { "Payload" }
            pre { (job.payload) }
            (action_form(csrf, &format!("/jobs/{}/retry", job.id), "Retry (dead or cancelled)", html! {}))
            (action_form(csrf, &format!("/jobs/{}/cancel", job.id), "Cancel (not started)", html! {}))
            (action_form(csrf, &format!("/jobs/{}/discard", job.id), "Discard (dead)", html! {}))
        },
    ))
}

/// A console error, rendered as a console page that says what went wrong (never JSON).
#[derive(Debug)]
struct ConsoleError {
    status: StatusCode,
    message: String,
}

impl ConsoleError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn unknown_queue(console: &Console, queue: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            format!(
                "There is no queue {queue:?}. The queues are: {}.",
                console.queues.join(", ")
            ),
        )
    }
}

impl From<sqlx::Error> for ConsoleError {
    fn from(error: sqlx::Error) -> Self {
        tracing::error!(error = %error, "ops console: database error");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "The database did not answer; try again in a moment.",
        )
    }
}

impl From<OperatorError> for ConsoleError {
    fn from(error: OperatorError) -> Self {
        match error {
            OperatorError::Database(error) => error.into(),
            OperatorError::UnknownQueue { .. } | OperatorError::UnknownUpstream { .. } => {
                Self::new(StatusCode::NOT_FOUND, error.to_string())
            }
            OperatorError::JobNotInState { .. } => {
                Self::new(StatusCode::CONFLICT, error.to_string())
            }
            OperatorError::NoActor | OperatorError::NoReason => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, error.to_string())
            }
        }
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let body = page(
            "Refused",
            false,
            html! {
                h2 { "Not done" }
                p.bad { (self.message) }
                p { a href="/" { "Back to the overview" } }
            },
        );
        (self.status, body).into_response()
    }
}

/// The fields of an action form (the CSRF token is checked by [`require_operator`]).
#[derive(Debug, Default, serde::Deserialize)]
struct ActionForm {
    #[serde(default)]
    reason: String,
    #[serde(default)]
    error_contains: String,
}

impl ActionForm {
    fn reason(&self) -> &str {
        self.reason.trim()
    }
}

/// The operator behind a request: the HTTP Basic user name (any name is accepted with the token, so each
/// person signs their actions), or `console` when none is given.
fn operator(console: &Console, headers: &HeaderMap) -> Operator {
    let name = basic_credentials(headers)
        .map(|(user, _)| user.trim().to_owned())
        .filter(|user| !user.is_empty())
        .unwrap_or_else(|| "console".to_owned());
    Operator::acting_on(name, Via::Console, console.queues.iter().copied())
        .expect("a non-empty name")
}

type Act = Result<Redirect, ConsoleError>;

async fn retry(
    State(c): State<Console>,
    h: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<ActionForm>,
) -> Act {
    operator(&c, &h).retry_job(&c.pool, &id, f.reason()).await?;
    Ok(Redirect::to(&format!("/jobs/{id}")))
}

async fn cancel(
    State(c): State<Console>,
    h: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<ActionForm>,
) -> Act {
    operator(&c, &h)
        .cancel_job(&c.pool, &id, f.reason())
        .await?;
    Ok(Redirect::to(&format!("/jobs/{id}")))
}

async fn discard(
    State(c): State<Console>,
    h: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<ActionForm>,
) -> Act {
    operator(&c, &h)
        .discard_job(&c.pool, &id, f.reason())
        .await?;
    Ok(Redirect::to("/"))
}

/// Dead jobs of a queue taken by a bulk action from the console: at most this many per click.
const BULK_LIMIT: i64 = 1000;

fn dead_filter<'a>(queue: &'a str, form: &'a ActionForm) -> DeadJobFilter<'a> {
    DeadJobFilter {
        queue,
        error_contains: Some(form.error_contains.trim()).filter(|text| !text.is_empty()),
        limit: BULK_LIMIT,
    }
}

async fn retry_dead(
    State(c): State<Console>,
    h: HeaderMap,
    Path(queue): Path<String>,
    Form(f): Form<ActionForm>,
) -> Act {
    operator(&c, &h)
        .retry_dead(&c.pool, &dead_filter(&queue, &f), f.reason())
        .await?;
    Ok(Redirect::to(&format!("/queues/{queue}")))
}

async fn discard_dead(
    State(c): State<Console>,
    h: HeaderMap,
    Path(queue): Path<String>,
    Form(f): Form<ActionForm>,
) -> Act {
    operator(&c, &h)
        .discard_dead(&c.pool, &dead_filter(&queue, &f), f.reason())
        .await?;
    Ok(Redirect::to(&format!("/queues/{queue}")))
}

async fn pause_queue(
    State(c): State<Console>,
    h: HeaderMap,
    Path(queue): Path<String>,
    Form(f): Form<ActionForm>,
) -> Act {
    operator(&c, &h)
        .pause_queue(&c.pool, &queue, f.reason())
        .await?;
    Ok(Redirect::to(&format!("/queues/{queue}")))
}

async fn resume_queue(
    State(c): State<Console>,
    h: HeaderMap,
    Path(queue): Path<String>,
    Form(f): Form<ActionForm>,
) -> Act {
    operator(&c, &h)
        .resume_queue(&c.pool, &queue, f.reason())
        .await?;
    Ok(Redirect::to(&format!("/queues/{queue}")))
}

async fn pause_upstream(
    State(c): State<Console>,
    h: HeaderMap,
    Path(name): Path<String>,
    Form(f): Form<ActionForm>,
) -> Act {
    operator(&c, &h)
        .pause_upstream(&c.pool, &name, f.reason())
        .await?;
    Ok(Redirect::to(&format!("/upstreams/{name}")))
}

async fn resume_upstream(
    State(c): State<Console>,
    h: HeaderMap,
    Path(name): Path<String>,
    Form(f): Form<ActionForm>,
) -> Act {
    operator(&c, &h)
        .resume_upstream(&c.pool, &name, f.reason())
        .await?;
    Ok(Redirect::to(&format!("/upstreams/{name}")))
}
