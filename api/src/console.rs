//! The ops console: a few maud pages on a separate admin listener, behind the operator token (HTTP Basic,
//! any user name, the token as password). It shows what `createimage2 jobs …` shows — queues, workers, dead
//! jobs, upstreams — live (the page refreshes itself), with buttons to retry, cancel or discard a job and to
//! pause or resume a queue or an upstream.

use std::sync::Arc;

use axum::{
    Router,
    extract::{Path, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
};
use base64::Engine as _;
use maud::{DOCTYPE, Markup, html};
use queue::ops;
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use subtle::ConstantTimeEq;

use crate::AppError;

#[derive(Clone)]
struct Console {
    pool: PgPool,
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
pub fn router(pool: PgPool, token: SecretString) -> Router {
    let console = Console {
        pool,
        csrf: csrf_token(token.expose_secret()).into(),
        token: Arc::new(token),
    };
    Router::new()
        .route("/", get(overview))
        .route("/jobs/{id}", get(job_page))
        .route("/jobs/{id}/retry", post(retry))
        .route("/jobs/{id}/cancel", post(cancel))
        .route("/jobs/{id}/discard", post(discard))
        .route("/queues/{queue}/pause", post(pause_queue))
        .route("/queues/{queue}/resume", post(resume_queue))
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

fn presents_token(headers: &HeaderMap, token: &str) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let presented = if let Some(basic) = value.strip_prefix("Basic ") {
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(basic.trim()) else {
            return false;
        };
        let Ok(text) = String::from_utf8(decoded) else {
            return false;
        };
        text.split_once(':')
            .map(|(_, password)| password.to_owned())
            .unwrap_or_default()
    } else if let Some(bearer) = value.strip_prefix("Bearer ") {
        bearer.trim().to_owned()
    } else {
        return false;
    };
    presented.len() == token.len() && bool::from(presented.as_bytes().ct_eq(token.as_bytes()))
}

fn page(title: &str, refresh: bool, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
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

const CSS: &str = "body{font:14px system-ui,sans-serif;margin:0;color:#1d1d1f}header{background:#1d1d1f;padding:10px 20px}\
header a{color:#fff;text-decoration:none;font-weight:600}main{padding:20px;max-width:1200px}\
table{border-collapse:collapse;width:100%;margin-bottom:24px}th,td{text-align:left;padding:6px 8px;border-bottom:1px solid #ddd}\
th{background:#f5f5f7}td.num{text-align:right;font-variant-numeric:tabular-nums}.bad{color:#b00020;font-weight:600}\
form{display:inline}button{font:inherit;padding:2px 8px;cursor:pointer}pre{white-space:pre-wrap;background:#f5f5f7;padding:10px}";

async fn overview(State(console): State<Console>) -> Result<Markup, AppError> {
    let csrf = console.csrf.as_ref();
    let queues = ops::queue_stats(&console.pool).await?;
    let dead = ops::dead_jobs(&console.pool, None, 50).await?;
    let workers = ops::workers(
        &console.pool,
        jobs::services::WORKER_STORAGE_NAME,
        std::time::Duration::from_secs(3600),
    )
    .await?;
    let upstreams = jobs::upstream::paused(&console.pool).await?;
    let kie_paused = upstreams
        .iter()
        .any(|(name, ..)| name == jobs::upstream::KIE);
    Ok(page(
        "Overview",
        true,
        html! {
            h2 { "Queues" }
            table {
                tr { th { "queue" } th { "waiting" } th { "scheduled" } th { "running" } th { "stuck" } th { "dead" }
                     th { "oldest waiting" } th { "" } }
                @for q in &queues {
                    tr {
                        td { (q.queue) @if q.paused { " " span.bad { "(paused)" } } }
                        td.num { (q.waiting) } td.num { (q.scheduled) } td.num { (q.running) }
                        td.num class=[(q.stuck > 0).then_some("bad")] { (q.stuck) }
                        td.num class=[(q.dead > 0).then_some("bad")] { (q.dead) }
                        td.num { (format!("{:.1} s", q.oldest_waiting_age_seconds)) }
                        td {
                            @if q.paused {
                                form method="post" action={ "/queues/" (q.queue) "/resume" } { input type="hidden" name="csrf" value=(csrf); button { "resume" } }
                            } @else {
                                form method="post" action={ "/queues/" (q.queue) "/pause" } { input type="hidden" name="csrf" value=(csrf); button { "pause" } }
                            }
                        }
                    }
                }
            }
            h2 { "Workers" }
            table {
                tr { th { "worker" } th { "queue" } th { "last heartbeat" } th { "running" } }
                @for w in &workers {
                    tr {
                        td { (w.id) } td { (w.queue) }
                        td.num class=[(w.seconds_since_seen > 60.0).then_some("bad")] { (format!("{:.0} s ago", w.seconds_since_seen)) }
                        td.num { (w.running) }
                    }
                }
            }
            h2 { "Upstreams" }
            table {
                tr { th { "upstream" } th { "state" } th { "" } }
                @for (name, reason, since, _) in &upstreams {
                    tr { td { (name) } td.bad { "paused since " (since.format("%Y-%m-%d %H:%M:%S UTC")) ": " (reason) }
                         td { form method="post" action={ "/upstreams/" (name) "/resume" } { input type="hidden" name="csrf" value=(csrf); button { "resume" } } } }
                }
                @if !kie_paused {
                    tr { td { "kie" } td { "submitting" }
                         td { form method="post" action="/upstreams/kie/pause" { input type="hidden" name="csrf" value=(csrf); button { "pause" } } } }
                }
            }
            h2 { "Dead jobs" }
            table {
                tr { th { "job" } th { "queue" } th { "attempts" } th { "died" } th { "last error" } th { "" } }
                @for job in &dead {
                    tr {
                        td { a href={ "/jobs/" (job.id) } { (job.id) } }
                        td { (job.queue) }
                        td.num { (job.attempts) "/" (job.max_attempts) }
                        td { (job.done_at.map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_default()) }
                        td { (job.last_error.as_deref().unwrap_or("")) }
                        td {
                            form method="post" action={ "/jobs/" (job.id) "/retry" } { input type="hidden" name="csrf" value=(csrf); button { "retry" } }
                            " "
                            form method="post" action={ "/jobs/" (job.id) "/discard" } { input type="hidden" name="csrf" value=(csrf); button { "discard" } }
                        }
                    }
                }
            }
        },
    ))
}

async fn job_page(
    State(console): State<Console>,
    Path(id): Path<String>,
) -> Result<Markup, AppError> {
    let csrf = console.csrf.as_ref();
    let job = ops::find_job(&console.pool, &id)
        .await?
        .ok_or(AppError::NotFound)?;
    Ok(page(
        &format!("Job {id}"),
        false,
        html! {
            h2 { "Job " (job.id) }
            table {
                tr { th { "queue" } td { (job.queue) } }
                tr { th { "status" } td { (job.status) } }
                tr { th { "attempts" } td { (job.attempts) "/" (job.max_attempts) } }
                tr { th { "run at" } td { (job.run_at) } }
                tr { th { "worker" } td { (job.lock_by.as_deref().unwrap_or("")) } }
                tr { th { "last error" } td { (job.last_error.as_deref().unwrap_or("")) } }
            }
            h3 { "Payload" }
            pre { (job.payload) }
            form method="post" action={ "/jobs/" (job.id) "/retry" } { input type="hidden" name="csrf" value=(csrf); button { "retry" } }
            " "
            form method="post" action={ "/jobs/" (job.id) "/cancel" } { input type="hidden" name="csrf" value=(csrf); button { "cancel" } }
            " "
            form method="post" action={ "/jobs/" (job.id) "/discard" } { input type="hidden" name="csrf" value=(csrf); button { "discard" } }
        },
    ))
}

fn done(changed: bool) -> Result<Redirect, AppError> {
    if changed {
        Ok(Redirect::to("/"))
    } else {
        Err(AppError::Conflict(
            "the job is not in a state that allows this".into(),
        ))
    }
}

async fn retry(State(c): State<Console>, Path(id): Path<String>) -> Result<Redirect, AppError> {
    done(ops::retry_job(&c.pool, &id).await?)
}

async fn cancel(State(c): State<Console>, Path(id): Path<String>) -> Result<Redirect, AppError> {
    done(ops::cancel_job(&c.pool, &id).await?)
}

async fn discard(State(c): State<Console>, Path(id): Path<String>) -> Result<Redirect, AppError> {
    done(ops::discard_job(&c.pool, &id).await?)
}

async fn pause_queue(
    State(c): State<Console>,
    Path(queue): Path<String>,
) -> Result<Redirect, AppError> {
    ops::pause_queue(&c.pool, &queue, "paused from the ops console").await?;
    Ok(Redirect::to("/"))
}

async fn resume_queue(
    State(c): State<Console>,
    Path(queue): Path<String>,
) -> Result<Redirect, AppError> {
    ops::resume_queue(&c.pool, &queue).await?;
    Ok(Redirect::to("/"))
}

async fn pause_upstream(
    State(c): State<Console>,
    Path(upstream): Path<String>,
) -> Result<Redirect, AppError> {
    jobs::upstream::pause(&c.pool, &upstream, "paused from the ops console").await?;
    Ok(Redirect::to("/"))
}

async fn resume_upstream(
    State(c): State<Console>,
    Path(upstream): Path<String>,
) -> Result<Redirect, AppError> {
    jobs::upstream::resume(&c.pool, &upstream).await?;
    Ok(Redirect::to("/"))
}
