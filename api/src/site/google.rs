//! Google sign-in: OpenID Connect authorization code flow with PKCE (S256), state and nonce, the ID token
//! verified by the `openidconnect` crate (signature against the provider's JWKS, issuer, audience, expiry,
//! nonce). Discovery runs on first use and is cached; a failed discovery is retried on the next sign-in.

use anyhow::Context as _;
use jobs::config::GoogleConfig;
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope, TokenResponse as _,
    core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata},
};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

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
    metadata: OnceCell<CoreProviderMetadata>,
    http: openidconnect::reqwest::Client,
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
            metadata: OnceCell::new(),
            http,
        }
    }

    pub fn enabled(&self) -> bool {
        self.config.is_some()
    }

    async fn metadata(&self, config: &GoogleConfig) -> anyhow::Result<&CoreProviderMetadata> {
        self.metadata
            .get_or_try_init(|| async {
                let issuer =
                    IssuerUrl::new(config.issuer_url.as_str().trim_end_matches('/').to_owned())?;
                CoreProviderMetadata::discover_async(issuer, &self.http)
                    .await
                    .context("OpenID Connect discovery failed")
            })
            .await
    }

    /// The provider's authorization URL and what the callback must check.
    pub async fn start(&self, next: &str) -> anyhow::Result<(String, Pending)> {
        let config = self
            .config
            .as_ref()
            .context("Google sign-in is not configured")?;
        let metadata = self.metadata(config).await?.clone();
        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(config.client_id.clone()),
            Some(ClientSecret::new(
                config.client_secret.expose_secret().to_owned(),
            )),
        )
        .set_redirect_uri(RedirectUrl::new(self.redirect_uri.clone())?);
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
        let metadata = self.metadata(config).await?.clone();
        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(config.client_id.clone()),
            Some(ClientSecret::new(
                config.client_secret.expose_secret().to_owned(),
            )),
        )
        .set_redirect_uri(RedirectUrl::new(self.redirect_uri.clone())?);
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.verifier.clone()))
            .request_async(&self.http)
            .await
            .context("the token exchange failed")?;
        let id_token = response
            .id_token()
            .context("the token response has no ID token")?;
        let claims = id_token
            .claims(
                &client.id_token_verifier(),
                &Nonce::new(pending.nonce.clone()),
            )
            .context("the ID token did not verify")?;
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
