//! Google sign-in: OpenID Connect authorization code flow with PKCE (S256), state and nonce, the ID token
//! verified by the `openidconnect` crate (signature against the provider's JWKS, issuer, audience, expiry,
//! nonce). Discovery runs on first use and is cached; a failed discovery is retried on the next sign-in.
//!
//! Google rotates its signing keys (<https://developers.google.com/identity/openid-connect/openid-connect>:
//! "cache them according to the caching directives … and refresh them when they expire"). The keys are kept for
//! the JWKS response's `Cache-Control: max-age` and fetched again when it has passed; an ID token whose `kid`
//! no cached key has makes the client fetch them at once and verify again (at most once per
//! [`FORCED_REFRESH_EVERY`], so no token can make it fetch in a loop).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use jobs::config::GoogleConfig;
use openidconnect::{
    AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret, CsrfToken, IssuerUrl,
    Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, SignatureVerificationError,
    TokenResponse as _,
    core::{CoreAuthenticationFlow, CoreClient, CoreJsonWebKeySet, CoreProviderMetadata},
};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

/// The least time between two key fetches forced by an unknown `kid`.
const FORCED_REFRESH_EVERY: Duration = Duration::from_secs(10);
/// How long keys are kept when the JWKS response names no `max-age`.
const DEFAULT_KEYS_MAX_AGE: Duration = Duration::from_secs(3600);
/// The longest keys are kept, whatever `max-age` says.
const KEYS_MAX_AGE_CAP: Duration = Duration::from_secs(24 * 3600);

/// What the sign-in start leaves in the session for the callback (at most ten minutes).
#[derive(Debug, Serialize, Deserialize)]
pub struct Pending {
    pub state: String,
    pub nonce: String,
    pub verifier: String,
    pub next: String,
    pub started_at: i64,
}

/// The verified identity from an ID token.
#[derive(Debug)]
pub struct Identity {
    pub sub: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub name: Option<String>,
}

pub struct Google {
    config: Option<GoogleConfig>,
    redirect_uri: String,
    provider: Mutex<Option<Provider>>,
    http: openidconnect::reqwest::Client,
}

/// The provider's discovered metadata, with the keys last fetched and until when they may be used.
struct Provider {
    metadata: CoreProviderMetadata,
    keys_expire: Instant,
    last_forced_refresh: Option<Instant>,
}

/// Whether keys are wanted fresher than their `max-age`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keys {
    Cached,
    /// An ID token named a key the cached set lacks.
    UnknownKid,
}

impl Google {
    pub fn new(config: Option<GoogleConfig>, public_base_url: &url::Url) -> Self {
        let http = openidconnect::reqwest::ClientBuilder::new()
            .redirect(openidconnect::reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .expect("a reqwest client with a timeout builds");
        Self {
            config,
            redirect_uri: format!(
                "{}/auth/google/callback",
                public_base_url.as_str().trim_end_matches('/')
            ),
            provider: Mutex::new(None),
            http,
        }
    }

    pub fn enabled(&self) -> bool {
        self.config.is_some()
    }

    /// The provider's metadata with keys that are still fresh: discovered on first use, the keys fetched again
    /// when their `max-age` has passed or, for `Keys::UnknownKid`, at once (rate limited).
    async fn metadata(
        &self,
        config: &GoogleConfig,
        keys: Keys,
    ) -> anyhow::Result<CoreProviderMetadata> {
        let mut provider = self.provider.lock().await;
        let now = Instant::now();
        let Some(cached) = provider.as_mut() else {
            let issuer =
                IssuerUrl::new(config.issuer_url.as_str().trim_end_matches('/').to_owned())?;
            let metadata = CoreProviderMetadata::discover_async(issuer, &self.http)
                .await
                .context("OpenID Connect discovery failed")?;
            // Discovery fetched the keys too, but without their max-age: fetch them once more for it.
            let (jwks, max_age) = self.fetch_keys(&metadata).await?;
            let fresh = Provider {
                metadata: metadata.set_jwks(jwks),
                keys_expire: now + max_age,
                last_forced_refresh: None,
            };
            return Ok(provider.insert(fresh).metadata.clone());
        };
        let forced = keys == Keys::UnknownKid
            && cached
                .last_forced_refresh
                .is_none_or(|at| now.duration_since(at) >= FORCED_REFRESH_EVERY);
        if forced || now >= cached.keys_expire {
            let (jwks, max_age) = self.fetch_keys(&cached.metadata).await?;
            cached.metadata = cached.metadata.clone().set_jwks(jwks);
            cached.keys_expire = now + max_age;
            if forced {
                cached.last_forced_refresh = Some(now);
            }
        }
        Ok(cached.metadata.clone())
    }

    /// The provider's JWKS, and how long it may be kept (`Cache-Control: max-age`, capped).
    async fn fetch_keys(
        &self,
        metadata: &CoreProviderMetadata,
    ) -> anyhow::Result<(CoreJsonWebKeySet, Duration)> {
        let response = self
            .http
            .get(metadata.jwks_uri().as_str())
            .header("accept", "application/json")
            .send()
            .await
            .context("fetching Google's signing keys failed")?
            .error_for_status()
            .context("Google's signing keys were refused")?;
        let max_age = response
            .headers()
            .get("cache-control")
            .and_then(|value| value.to_str().ok())
            .and_then(max_age)
            .unwrap_or(DEFAULT_KEYS_MAX_AGE)
            .min(KEYS_MAX_AGE_CAP);
        let jwks: CoreJsonWebKeySet = response
            .json()
            .await
            .context("Google's signing keys did not parse")?;
        Ok((jwks, max_age))
    }

    fn client(
        &self,
        config: &GoogleConfig,
        metadata: CoreProviderMetadata,
    ) -> anyhow::Result<
        CoreClient<
            openidconnect::EndpointSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointMaybeSet,
            openidconnect::EndpointMaybeSet,
        >,
    > {
        Ok(CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(config.client_id.clone()),
            Some(ClientSecret::new(
                config.client_secret.expose_secret().to_owned(),
            )),
        )
        .set_redirect_uri(RedirectUrl::new(self.redirect_uri.clone())?))
    }

    /// The provider's authorization URL and what the callback must check.
    pub async fn start(&self, next: &str) -> anyhow::Result<(String, Pending)> {
        let config = self
            .config
            .as_ref()
            .context("Google sign-in is not configured")?;
        let client = self.client(config, self.metadata(config, Keys::Cached).await?)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state, nonce) = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scope(Scope::new("email".into()))
            .add_scope(Scope::new("profile".into()))
            .set_pkce_challenge(challenge)
            .url();
        Ok((
            url.to_string(),
            Pending {
                state: state.secret().clone(),
                nonce: nonce.secret().clone(),
                verifier: verifier.secret().clone(),
                next: next.to_owned(),
                started_at: chrono::Utc::now().timestamp(),
            },
        ))
    }

    /// Exchanges the code (with the PKCE verifier) and verifies the ID token against the nonce.
    pub async fn finish(&self, code: &str, pending: &Pending) -> anyhow::Result<Identity> {
        let config = self
            .config
            .as_ref()
            .context("Google sign-in is not configured")?;
        let client = self.client(config, self.metadata(config, Keys::Cached).await?)?;
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.verifier.clone()))
            .request_async(&self.http)
            .await
            .context("the token exchange failed")?;
        let id_token = response
            .id_token()
            .context("the token response has no ID token")?;
        let nonce = Nonce::new(pending.nonce.clone());
        let claims = match id_token.claims(&client.id_token_verifier(), &nonce) {
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey,
            )) => {
                // Google has rotated its keys since they were fetched.
                let refreshed =
                    self.client(config, self.metadata(config, Keys::UnknownKid).await?)?;
                id_token
                    .claims(&refreshed.id_token_verifier(), &nonce)
                    .context("the ID token did not verify with refreshed keys")?
                    .clone()
            }
            verified => verified.context("the ID token did not verify")?.clone(),
        };
        Ok(Identity {
            sub: claims.subject().as_str().to_owned(),
            email: claims.email().map(|e| e.as_str().to_lowercase()),
            email_verified: claims.email_verified().unwrap_or(false),
            name: claims
                .name()
                .and_then(|n| n.get(None))
                .map(|n| n.as_str().to_owned()),
        })
    }
}

/// The `max-age` of a `Cache-Control` header value, if it has one.
fn max_age(cache_control: &str) -> Option<Duration> {
    cache_control.split(',').find_map(|directive| {
        let (name, value) = directive.trim().split_once('=')?;
        if name.trim().eq_ignore_ascii_case("max-age") {
            value
                .trim()
                .trim_matches('"')
                .parse()
                .ok()
                .map(Duration::from_secs)
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_max_age_is_read_from_googles_cache_control_and_nothing_else() {
        let google = "public, max-age=19942, must-revalidate, no-transform";
        assert_eq!(max_age(google), Some(Duration::from_secs(19942)));
        assert_eq!(max_age("max-age=0"), Some(Duration::ZERO));
        assert_eq!(max_age("Max-Age = \"60\""), Some(Duration::from_secs(60)));
        assert_eq!(max_age("public, s-maxage=60"), None);
        assert_eq!(max_age("no-store"), None);
        assert_eq!(max_age("max-age=soon"), None);
    }
}
