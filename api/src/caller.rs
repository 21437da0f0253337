//! Who calls the JSON API, and what they have left of their request budget. One middleware in front of every
//! `/api` route authenticates the API key and counts the request ([`jobs::api_requests`]) in one statement,
//! refuses a request over the budget with 429 before any handler runs, and adds the IETF `RateLimit-Policy` and
//! `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers-10, §3–4) to every answer. Handlers that need a
//! member take [`ApiUser`], which only reads what the middleware found.

use axum::{
    extract::{FromRequestParts, Request, State},
    http::{HeaderMap, HeaderValue, header, request::Parts},
    middleware::Next,
    response::{IntoResponse, Response},
};
use jobs::api_requests::{self, Budget, Standing};
use uuid::Uuid;

use crate::{AppError, AppState};

/// The budgets of the JSON API.
#[derive(Debug, Clone, Copy)]
pub struct ApiBudgets {
    /// Per member, every key together.
    pub member: Budget,
    /// Per client address, for requests without a live key.
    pub anonymous: Budget,
}

impl ApiBudgets {
    pub fn from_config(http: &jobs::config::HttpConfig) -> Self {
        Self {
            member: http.api_budget,
            anonymous: http.anonymous_api_budget,
        }
    }
}

impl Default for ApiBudgets {
    fn default() -> Self {
        Self::from_config(
            &jobs::config::HttpConfig::from_source(&std::collections::HashMap::new())
                .expect("defaults are valid"),
        )
    }
}

/// What the middleware found about the caller, for [`ApiUser`].
#[derive(Debug, Clone, Copy)]
enum Caller {
    Member(Uuid),
    /// No `Authorization` header.
    Anonymous,
    /// A bearer token that is not a live key (or another scheme).
    InvalidKey,
}

/// The policy's name in `RateLimit-Policy` and `RateLimit`.
const POLICY: &str = "requests";

/// Authenticates and counts every request under `/api`; see the module comment.
pub async fn count_request(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|value| value.to_str().unwrap_or_default().to_owned());
    let client = crate::site::client_address(&state, request.headers(), request.extensions());
    let (caller, standing) = match identify(&state, authorization.as_deref(), &client).await {
        Ok(found) => found,
        Err(error) => return AppError::from(error).into_response(),
    };
    let mut response = if standing.exceeded() {
        AppError::TooManyRequests {
            retry_after_secs: standing.resets_in.as_secs_f64().ceil().max(1.0) as u64,
        }
        .into_response()
    } else {
        request.extensions_mut().insert(caller);
        next.run(request).await
    };
    add_fields(response.headers_mut(), &standing);
    response
}

/// The caller (a member when `authorization` carries a live key), with this request counted against the budget
/// it spends: the member's, or else the client address's.
async fn identify(
    state: &AppState,
    authorization: Option<&str>,
    client: &str,
) -> sqlx::Result<(Caller, Standing)> {
    let caller = match authorization {
        None => Caller::Anonymous,
        Some(value) => match bearer_token(value) {
            Some(key) => {
                if let Some((user, standing)) =
                    api_requests::take_for_key(&state.pool, key, state.api_budgets.member).await?
                {
                    return Ok((Caller::Member(user), standing));
                }
                Caller::InvalidKey
            }
            None => Caller::InvalidKey,
        },
    };
    let standing =
        api_requests::take_anonymous(&state.pool, client, state.api_budgets.anonymous).await?;
    Ok((caller, standing))
}

/// The token of `Bearer <token>` (the scheme is case-insensitive, RFC 6750 §2.1 and RFC 9110 §11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// `RateLimit-Policy: "requests";q=600;w=60` and `RateLimit: "requests";r=599;t=42`.
fn add_fields(headers: &mut HeaderMap, standing: &Standing) {
    let policy = format!(
        "\"{POLICY}\";q={};w={}",
        standing.budget.limit,
        standing.budget.window.as_secs()
    );
    let current = format!(
        "\"{POLICY}\";r={};t={}",
        standing.remaining(),
        standing.resets_in.as_secs_f64().ceil() as u64
    );
    for (name, value) in [("ratelimit-policy", policy), ("ratelimit", current)] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
}

/// The member calling the JSON API (`Authorization: Bearer <API key>`), as [`count_request`] found them;
/// otherwise 401 with `WWW-Authenticate: Bearer`.
pub struct ApiUser(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for ApiUser {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AppError> {
        match parts.extensions.get::<Caller>() {
            Some(Caller::Member(user)) => Ok(Self(*user)),
            Some(Caller::InvalidKey) => Err(AppError::BearerRequired {
                invalid_token: true,
            }),
            Some(Caller::Anonymous) | None => Err(AppError::BearerRequired {
                invalid_token: false,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_needs_a_token() {
        assert_eq!(bearer_token("Bearer ci2_abc"), Some("ci2_abc"));
        assert_eq!(bearer_token("bearer  ci2_abc "), Some("ci2_abc"));
        assert_eq!(bearer_token("Basic dXNlcjpwdw=="), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("ci2_abc"), None);
    }
}
