//! A Google Sign-In (OpenID Connect) provider stand-in. It speaks the protocol the production login client uses
//! against `accounts.google.com`, reached through a configurable base URL:
//!
//! - Discovery: `GET /.well-known/openid-configuration`, with `issuer` equal to the stand-in's base URL
//!   (`http://127.0.0.1:PORT`, no trailing slash), as OpenID Connect Discovery requires.
//! - Keys: `GET /oauth2/v3/certs`, a JWKS of RS256 keys with `Cache-Control: public, max-age=…` as Google sends
//!   it. [`OidcFake::rotate_key`] rotates as Google does: a new key signs from then on, and the JWKS publishes it
//!   beside the previous one.
//! - Authorization code flow (RFC 6749 §4.1) with PKCE (RFC 7636, `plain` and `S256`), `state` and `nonce`:
//!   `GET /o/oauth2/v2/auth` checks the client and its registered redirect URI (an HTML error page with status
//!   400 otherwise, never a redirect to an unregistered URI) and shows a consent page listing the test accounts.
//!   Its form posts to `POST /o/oauth2/v2/auth/consent`, which answers `303 See Other` to
//!   `redirect_uri?state=…&code=…&scope=…` or, on "Cancel", `redirect_uri?error=access_denied&state=…`.
//! - Token: `POST /token` (form-encoded; client authentication by HTTP Basic or `client_id`/`client_secret` in
//!   the body) exchanges a code once, within 60 s, for `{access_token, token_type: "Bearer", expires_in: 3599,
//!   scope, id_token}`. Errors are OAuth JSON (`{"error": "invalid_grant", "error_description": …}`), 400, or 401
//!   for `invalid_client`. The ID token is an RS256 JWT (header `kid`) with `iss`, `aud`, `azp`, `sub`, `iat`,
//!   `exp` (1 h), `at_hash`, `nonce` (when the authorization request had one), `email`/`email_verified` (scope
//!   `email`) and `name` (scope `profile`).
//! - User info: `GET /userinfo` with `Authorization: Bearer <access_token>`.
//!
//! Stricter than Google in two ways, so a client bug shows up here rather than in production: a code is consumed
//! by the first exchange attempt that names it, even a failed one, and the authorization request must ask for the
//! `openid` scope. Faults for tests of the client's ID token verification are switched on with
//! [`OidcFake::set_fault`].

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use maud::{DOCTYPE, Markup, html};
use rsa::{
    RsaPrivateKey,
    pkcs1v15::SigningKey,
    pkcs8::DecodePrivateKey as _,
    signature::{SignatureEncoding as _, Signer as _},
    traits::PublicKeyParts as _,
};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Path of the authorization endpoint (Google's).
pub const AUTHORIZATION_PATH: &str = "/o/oauth2/v2/auth";
/// Path the consent page's form posts to.
pub const CONSENT_PATH: &str = "/o/oauth2/v2/auth/consent";
/// Path of the token endpoint.
pub const TOKEN_PATH: &str = "/token";
/// Path of the JWKS (Google's).
pub const JWKS_PATH: &str = "/oauth2/v3/certs";
/// Path of the user info endpoint.
pub const USERINFO_PATH: &str = "/userinfo";

/// How long an authorization code can be exchanged.
const CODE_TTL: Duration = Duration::from_secs(60);
/// Lifetime of access tokens, as Google reports it.
const ACCESS_TOKEN_TTL_SECS: u64 = 3599;
/// Lifetime of ID tokens.
const ID_TOKEN_TTL_SECS: u64 = 3600;
/// Audience of ID tokens issued under [`IdTokenFault::WrongAudience`].
const FOREIGN_CLIENT_ID: &str = "someone-else.apps.googleusercontent.com";
/// Issuer of ID tokens issued under [`IdTokenFault::WrongIssuer`].
const FOREIGN_ISSUER: &str = "https://issuer.invalid";

/// TEST-ONLY RSA key: the stand-in signs its ID tokens with it. It protects nothing and must never be used for
/// anything but this stand-in. Embedded because generating a 2048-bit key in a debug build takes seconds.
const SIGNING_KEY_PEM: &str = "\
-----BEGIN PRIVATE KEY-----
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQDUbgqj+NC9Ku0t
iu7O3TleiIHg+YD0SsMJmmvSVPQGXCWluzMYtTHvNTqtT9kuwTAITKXrvVsmRjFT
QzqXNZpImRaMtEbZ54QH/1LdM760H1FY4Bn2t8zG4+H6l7r8YQEC86xVW3z1FMjm
L7bc6Ng7e9OjKkw+YmZm92yT1jWU+roU5lb/z0ZNyWp5Qe8KxJBhIhgOtWQ50Gay
ghVjgPLp5GSMymu7+MZx5Enm7xKiL61WA/361ezo+veN4iy1GJlIEKTAvSjQqjfU
Iu7swzycage9WcOzdLmk6xZ+YkoLa94GX6gC6nNnuXElxXHLB2pLceWzNMQIHlPQ
03IFvkkhAgMBAAECggEAAw2p3X2AEpgBXLw4foSzhGZV55PuhJRmhUbQ8e8Cquy8
JcuxClPgad3MAB27s25XcGcZo2/PVZeAsf+vYekFVLHOnysgMZWgUjUbTc6mmRQy
KSLffKpbqSgxYVa4+1Oxngc+nON5wlQQJy7cZAR8xy4adqfu/J6Rdj1sNBvKHWAO
fRt8f5fzhWEpPjXXMytlkA1TGSN1MB9p2AgDtx6DGVQAZjUZS6hFW56eJ06VUXG0
hlwkA3Hb6lZhPuiYH3FITpLfurUOqGjaEbUhRQdIAJW2vDE2R1kV71fthK+JjnaZ
bOrGlZwTTyL3CoGs4vv42UYiWwlfNNzF0yaUv5VoOQKBgQD/z/FbtJCeE624SbNh
FUV22y38giHYdMh9PoWU4KcumH2WvXrFVJ+t7/tZB9zhrL8icmt467dhiALboIWt
bSknzYw3lB286runiYS6XybI9r4SxirvNzWJr635Di/U1ZuVjXVZv6gh7QcowkE1
0Dp+df/UvYnIkn6jk3IhAKFtrwKBgQDUlfLqJrTXsgqtdwHxJkBlORNRxpUWe33d
pXxMkXbJQMv5PCcFUKNIXgs+naXcKVcBXBPMX5h3wi4IApotvgqwBeHUjslyBZbt
FQbXBh+0XOqlovN1N2RXhMQ353xPtPS6vm6EgqwOS+D6Q8wk+O/AjoUwtZsna9iS
XeGdnLa6LwKBgFUlq9qwcWqMdkhfD7wCzopPTjE8R3O6+3jktKXnWP5jd3oTO6gv
EK9er7TkrxrW2w/mMeuf2fw2v2zHM3eUXByJiGB/hp55K1kKpwk53rkJmB67o1LY
d5OKzEeX90fKiezvlt32s0oHkVh5wCbfVnj9Ydg39oKycECWNWjSwui1AoGAXhTu
qInwxvTYnORqS5suLJ4R2sMUABsvHQS7+fb2pyKyIt9oNYX2fXSBbXi/iqwRAV0K
tgwoofeh/5GHQm80s6omw7ddl8S5grsnh8oCBgSJJDz1mg6lrcXoQQWFkpD3Lh5R
MvvRwZH7Q0b19fblxEZO07vLqqqj8kLyMprEk6kCgYAFJ1inSFz9lAK0eWR2dulx
rS2JdGIdA2/QcASDmO62clrtPXYkmVrL5lJ3Py/kxER3uAo3rgtvydZh5cEEHKhz
TjMpYjLnJKUQgSeVMoDtSVww60RC80viVgiSDEIZbsMWAlDb9rLta3O3KWKLOH6S
EZ88Y0NjY95Bvli4JKIDOw==
-----END PRIVATE KEY-----
";

/// TEST-ONLY RSA key, not published in the JWKS: [`IdTokenFault::BadSignature`] signs with it under the real
/// key's `kid`. It protects nothing.
const ROGUE_KEY_PEM: &str = "\
-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQCfARr5sGOMMOXb
0KpGsvv/dg1AbIGsxj62dj3GpFnOifICvLVLf3ORT1kI8j4wAx8MwlDnG9ThU1Ne
XJEzhwPE4KMo/fbzJByIPs3cQ85KwT4d0UMAMDX6xwbD+QP4AgMm5NKzO/KA1ZV3
+/zsKgFyluvJqR2sesYbYcdXBBIY9dzs446grTpyhfjRvoP7x7qc602PtRqk4um2
e6HhhKaqJG0pmH6yxsaeXc0nUV0HaPxTQ+UE8e/6eRHqugQlQRWIQ1HBVZgHZI5g
QTXr+hkUChskuZ2fDtZyQlCtowXxpyO4Jv1G0Gofd3Eu5vaFeRoy8W2dBqoy5J51
0MfwfFntAgMBAAECggEAR5J7zgD0DlrEXNnki8ZtYGSHOoSdKmRiPkejLxMzyaCW
a1z+TmmkX7hT348LJxmAlIGzYRRKEtMrJ8KLKaKQs8JaL02CJ5gNr9Z1W7y50zSA
/XMAsckBw0xrYzNn8e8V9B/0J/HICu4ZRdUL2FJgLHB62l9hmA37tr+gty6B5vGv
NcnVfhmTqWWjNETWKBi7K7s4vsVyd+dtT9Y/pgY7CNtYMEHzuJPPqnoN1m4L+lcm
8WtNAGnwdFZ9ZiimMI3t+3DQDumbsk26hAkO0k9jZVG6inSsOjql3kQpTSqIcNpm
PktFe6XOSTr78F0V9O+XFExrLqCKtDhC1BsQx/rWkQKBgQDP1VMjBodDIdgDFftm
EWlJtd3KtQp9DLtZLlOBffbma3YrvJ9ahrreGM4OQFsnY/trV11hP2CK0z6N0u+W
2FlpoIz27XtkkCeVQbtxA2Boedgmy7pkG5TEWv2fb1RoC7YJymORIDwGvfqyrOhp
xMm9fYxM5/6vAO8e+glosl9PowKBgQDD2sZMo8WFbzb2YF2QSHKdbxFcKvh/jo7A
nTsMiAUDAPE9ipk7i8BNwaIAXVSJFRUKOkIZLJE2ywsD3JbXk+PDAub0rEQwPQOW
WUI61I1r+Ig/2CdCRT+LrboFr5LG5fOthID8Y0v/R7hVlFkXynXYLf0ICQlJ6kDU
u5ARfxAJLwKBgB4E1/9FICBoMQUxFaDGfwiwhhqTT7KENkNJV7JqeVEK0IS8t9+h
ejg+KPUSApiL7nKwqcI0H0OuA2kEwKpvEWsaT4ITBzGdSLpcRjCqpjAw+TGRV5jC
CxjZc6ylrfFhT6fWXc9GcqUep6lLJD6yt9jw22T4VWb9oYw93UIMEYw1AoGBAIz5
e4UM2Q9L1y8OfCpvy3hAyykhkQ8XyO8h/a/udFUOJ5cZnWR8GmaduwMyKrglYaij
+JHwP3JGQl58OGNiAy6Kdz2khcyHDn75Lq/z8PvHwCLcbp3IBI6A9QZEs4zRVk4O
s114B+rvb+LBzkNOqvZ5W8md337By/qUK4Y8hIlnAoGAaytgpddErlr9WplSj27I
xDxtAuISEkKoiFuwaP/+hH8ljQe1xGjNLWl04TFerP2p8sVYUtVreoJNsB3qtX1k
Nc55dIxxEFfu+5693YycpBJ6QCxdAysBjnqPU9hR7XKzzMVSmhcWME3c1IEfVpGg
Ro94+yu2IIrpnYcGDte44y4=
-----END PRIVATE KEY-----
";

/// TEST-ONLY RSA key the stand-in rotates to ([`OidcFake::rotate_key`]). It protects nothing.
const NEXT_KEY_PEM: &str = "\
-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC+gp+D3aJgjyiO
BYh5eM7KSF67c0zrl7l/lWcnRQYG05Cg1y/pIykVbZA5pGN72EfPCIPn+tVlGtXr
LxeoTyc5P0dwsJYwvzqGWknjiDEZaUlId6Pc2k4yJ9IJcH3bjR094J+GnNeTPw+a
eLPfbQCsE0WrmnXDEZuHGYwEDqkba13YYpWGEfQXlrOgXjvVAFj2CKqCulJ5DKW8
tt37WtfQVIdy3QR7F1BsupilJU/IEKUWgA0RuOfVIfh+b55L9duV/9hCq9nMQWUh
0/2apJ/YjwTXboPhbhCx5QI1TkaB8zs9jQKb72+xI2x0F93zXHiNYC7GMpXiwkiA
8bOQqLHHAgMBAAECggEADaLl7hdoLwcwPPIycZdvHdWOSlaXc+mZUoOMLahoJQbx
vEGK4WIt56W/BBE7ObsicLRIVMuEiMch9sKZK+f2g8d+wpcxOO4HL2S5EztFYG9D
2pcNuJo7rKVjCF/v8k4ogKxaXtVNLPH/mOv43A4+VRLQEtdshHj3K/VtK0EtY5Pt
DhQg4n2IIlqqyPXUOJbeA9rCJa4zDC4Pyl7k8LtM5HnKzv2CQahsyq5DDwEMfMbt
eNPt/cafgcGEUKzi7wtqZf2pOpm/PgAiLqASxHkAL+Qz7VEq+9y3/3mm1JaJBcRp
kNfqSDUuJoT+iOFjthEnJWkyz2IEkvqB0f+Z9EMhOQKBgQD0RGDPDMhBUYg9O3p/
6EDDu2TLvyj8VX66/OGTnUaprhZbE2wFK2heawcssHR0Pb1txyU4l27uepAlhlgo
4aR/e22uEiDNMlYCe8UAY60JYQDjibNQ6jcyyQmk1IpTxB+JdAr0YpOHPStsqGWu
xk6I4LP5SpEIr7DOQBOfJy+jRQKBgQDHqTnEzYZ1Rs3XR+DG+u6zXknTR51Nfucl
EFhNY6/Jg54Yrxmc9l2NllqJhQeL7a3Y96J+YNMZefKT0XF4XbFGMrBU2eIZ4Ewv
6MlxNMwAucj4IKYsFoAqWu7GoqtNeq3NjPX1/LQh4TcVCAC8jHRpcyJmrPlcd2OC
2SgVLvdrmwKBgDTJri4wsfpDt3CcMP4BYDWsgrzxY9ccVtXsHoe7HnE++P/Xs6lu
VxDIinVi8NfKG+zkc6vGNif9frdNUDINiXIvZ2WN717I+QNyYgGSiOuU9g82S/U5
mJI2Fgp0ECzIHpSi6lckEoPQeVjzD350xrYX8Wz3a154MXpxKIxleIsNAoGBAJQp
jxXtEj9LGIsN6s6d/a6bZJtlxGRyrKKDe5OKSzN1+UcGATLKW+gqz+rHDi+XY+/i
6/FudpisNwfcX6DbniaijNmaij97g+31iC765/wN4gXHbKjA1cEYk6JRql8nj3w+
g3NUYHPXxeFUe/9vFx/9cWTSLYWhjvXVofn+TVrLAoGAFhRO7Edjwecb8BwDUKxJ
nYjvm9iYSNFcQTlYGF/PckvwOKFVV31m6y0J0myiuOph+QqodLNlbVeSErWt2sg2
7S4w7kEZxvwY/eEzmc2loPylYaWUjJiza6cknAmoDwoRA2waA2fWSUCsTUrhR4B9
hRgfrN6KbxZAGLM6gUP/rNk=
-----END PRIVATE KEY-----
";

/// The registered client and the accounts the consent page offers.
#[derive(Debug, Clone)]
pub struct OidcFakeConfig {
    pub client_id: String,
    pub client_secret: String,
    /// The one registered redirect URI; authorization requests must name it exactly.
    pub redirect_uri: String,
    pub accounts: Vec<OidcAccount>,
}

/// A Google account offered on the consent page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcAccount {
    /// Google's stable subject identifier (digits, for real accounts).
    pub sub: String,
    pub email: String,
    pub email_verified: bool,
    /// Full display name (`name` claim).
    pub name: String,
}

/// A defect put into every ID token issued while it is set, for tests of the client's verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdTokenFault {
    /// `aud` and `azp` name another client.
    WrongAudience,
    /// `nonce` is not the one from the authorization request.
    WrongNonce,
    /// `exp` lies an hour in the past (`iat` two hours).
    Expired,
    /// Signed with a key that is not in the JWKS, under the published key's `kid`.
    BadSignature,
    /// Signed with a key that is not in the JWKS, under that key's own `kid`, which no JWKS ever lists.
    UnknownKey,
    /// `iss` is not the stand-in's issuer.
    WrongIssuer,
}

/// Counters for assertions about how the client behaved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OidcFakeStats {
    /// Authorization codes issued by the consent form.
    pub codes_issued: u64,
    /// Every request to the token endpoint.
    pub token_requests: u64,
    /// Successful code exchanges.
    pub tokens_issued: u64,
    /// Every request to the user info endpoint.
    pub userinfo_requests: u64,
    /// Every request for the JWKS.
    pub jwks_requests: u64,
}

/// A running OpenID Connect provider stand-in on 127.0.0.1; stops serving when dropped.
pub struct OidcFake {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl OidcFake {
    /// Serves on a free port of 127.0.0.1.
    pub async fn start(config: OidcFakeConfig) -> anyhow::Result<Self> {
        let keys = Keys::load()?;
        let published = vec![0];
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            base_url: format!("http://{addr}"),
            keys,
            stop: CancellationToken::new(),
            state: Mutex::new(Inner {
                config,
                signing: 0,
                published,
                jwks_max_age: Some(3600),
                fault: None,
                codes: HashMap::new(),
                access_tokens: HashMap::new(),
                stats: OidcFakeStats::default(),
            }),
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route(JWKS_PATH, get(jwks))
            .route(AUTHORIZATION_PATH, get(authorize))
            .route(CONSENT_PATH, post(consent))
            .route(TOKEN_PATH, post(token))
            .route(USERINFO_PATH, get(userinfo))
            .with_state(shared.clone());
        let stopped = shared.stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stopped.cancelled_owned())
                .await;
        });
        Ok(Self { addr, shared })
    }

    /// `http://127.0.0.1:PORT`, the value for the client's provider base URL.
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// The issuer identifier: the base URL, exactly as discovery and ID tokens state it.
    pub fn issuer(&self) -> String {
        self.shared.base_url.clone()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Puts `fault` into every ID token issued from now on (`None` restores correct tokens).
    pub fn set_fault(&self, fault: Option<IdTokenFault>) {
        self.shared.lock().fault = fault;
    }

    /// Replaces the accounts the consent page offers.
    /// Rotates the signing key as Google does: the next key signs every ID token from now on, and the JWKS lists
    /// it beside the one it replaces. A client that cached the JWKS sees a `kid` it does not know.
    pub fn rotate_key(&self) {
        let mut inner = self.shared.lock();
        let previous = inner.signing;
        let next = (previous + 1) % self.shared.keys.pairs.len();
        inner.signing = next;
        inner.published = vec![next, previous];
    }

    /// The `max-age` the JWKS is served with (`None`: no `Cache-Control` header).
    pub fn set_jwks_max_age(&self, seconds: Option<u64>) {
        self.shared.lock().jwks_max_age = seconds;
    }

    /// The `kid` of the key that signs ID tokens now.
    pub fn signing_kid(&self) -> String {
        let index = self.shared.lock().signing;
        self.shared.keys.pairs[index].kid.clone()
    }

    pub fn set_accounts(&self, accounts: Vec<OidcAccount>) {
        self.shared.lock().config.accounts = accounts;
    }

    /// Adds an account to the consent page, replacing the one with the same `sub`. Codes issued earlier keep
    /// the `sub`; their tokens carry the account's details as they are at exchange time.
    pub fn upsert_account(&self, account: OidcAccount) {
        let mut inner = self.shared.lock();
        let accounts = &mut inner.config.accounts;
        match accounts.iter_mut().find(|a| a.sub == account.sub) {
            Some(existing) => *existing = account,
            None => accounts.push(account),
        }
    }

    /// Makes every authorization code issued so far expired, as if 60 s had passed.
    pub fn expire_codes(&self) {
        for grant in self.shared.lock().codes.values_mut() {
            grant.expired = true;
        }
    }

    pub fn stats(&self) -> OidcFakeStats {
        self.shared.lock().stats.clone()
    }
}

impl Drop for OidcFake {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

struct Shared {
    base_url: String,
    keys: Keys,
    stop: CancellationToken,
    state: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking handler must not take the whole stand-in down with it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }
}

type SharedState = Arc<Shared>;

struct Inner {
    config: OidcFakeConfig,
    /// Index into [`Keys::pairs`] of the key that signs.
    signing: usize,
    /// Indexes of the keys the JWKS lists.
    published: Vec<usize>,
    /// The JWKS's `Cache-Control: max-age`; `None` sends no `Cache-Control`.
    jwks_max_age: Option<u64>,
    fault: Option<IdTokenFault>,
    codes: HashMap<String, Grant>,
    access_tokens: HashMap<String, AccessGrant>,
    stats: OidcFakeStats,
}

/// What an authorization code stands for.
struct Grant {
    client_id: String,
    redirect_uri: String,
    scope: String,
    nonce: Option<String>,
    challenge: Option<Challenge>,
    sub: String,
    issued_at: Instant,
    /// Set by [`OidcFake::expire_codes`].
    expired: bool,
}

struct AccessGrant {
    sub: String,
    scope: String,
    expires_at: Instant,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ChallengeMethod {
    Plain,
    S256,
}

impl ChallengeMethod {
    fn parse(value: &str) -> Option<Self> {
        match value {
            "plain" => Some(Self::Plain),
            "S256" => Some(Self::S256),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::S256 => "S256",
        }
    }
}

struct Challenge {
    value: String,
    method: ChallengeMethod,
}

impl Challenge {
    fn accepts(&self, verifier: &str) -> bool {
        let derived = match self.method {
            ChallengeMethod::Plain => verifier.to_owned(),
            ChallengeMethod::S256 => URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())),
        };
        derived == self.value
    }
}

/// RFC 7636 §4.1: 43–128 characters of `[A-Za-z0-9-._~]`; code challenges have the same shape.
fn is_pkce_string(value: &str) -> bool {
    (43..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// An RSA key the stand-in signs with, and its JWK.
struct KeyPair {
    kid: String,
    signing: SigningKey<Sha256>,
    jwk: Value,
}

impl KeyPair {
    fn from_pem(pem: &str) -> anyhow::Result<Self> {
        let key = RsaPrivateKey::from_pkcs8_pem(pem)
            .map_err(|e| anyhow::anyhow!("an embedded signing key does not parse: {e}"))?;
        let n = key.n().to_bytes_be();
        let e = key.e().to_bytes_be();
        // Google's key ids are 40 hex digits; derive one from the modulus so it is stable.
        let kid = hex::encode(&Sha256::digest(&n)[..20]);
        let jwk = json!({
            "kty": "RSA",
            "alg": "RS256",
            "use": "sig",
            "kid": kid,
            "n": URL_SAFE_NO_PAD.encode(&n),
            "e": URL_SAFE_NO_PAD.encode(&e),
        });
        Ok(Self {
            kid,
            signing: SigningKey::new(key),
            jwk,
        })
    }
}

/// The keys the stand-in rotates through, and the rogue key no JWKS lists.
struct Keys {
    pairs: Vec<KeyPair>,
    rogue: KeyPair,
}

impl Keys {
    fn load() -> anyhow::Result<Self> {
        Ok(Self {
            pairs: vec![
                KeyPair::from_pem(SIGNING_KEY_PEM)?,
                KeyPair::from_pem(NEXT_KEY_PEM)?,
            ],
            rogue: KeyPair::from_pem(ROGUE_KEY_PEM)?,
        })
    }

    /// A compact JWS over `claims` by the key at `signing`, or as `fault` says: [`IdTokenFault::BadSignature`]
    /// signs with the rogue key under the signing key's `kid`, [`IdTokenFault::UnknownKey`] under the rogue's.
    fn sign(
        &self,
        claims: &Value,
        signing: usize,
        fault: Option<IdTokenFault>,
    ) -> Result<String, rsa::signature::Error> {
        let pair = &self.pairs[signing];
        let (kid, key) = match fault {
            Some(IdTokenFault::BadSignature) => (&pair.kid, &self.rogue.signing),
            Some(IdTokenFault::UnknownKey) => (&self.rogue.kid, &self.rogue.signing),
            _ => (&pair.kid, &pair.signing),
        };
        let header = json!({"alg": "RS256", "kid": kid, "typ": "JWT"});
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = key.try_sign(signing_input.as_bytes())?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        ))
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn random_token(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
    )
}

/// Parses a form or query string; a parameter given twice is an error (RFC 6749 §3.1, §3.2).
fn parse_params(raw: &str) -> Result<HashMap<String, String>, String> {
    let mut params = HashMap::new();
    for (name, value) in url::form_urlencoded::parse(raw.as_bytes()).into_owned() {
        if params.contains_key(&name) {
            return Err(format!("Parameter '{name}' is included more than once."));
        }
        params.insert(name, value);
    }
    Ok(params)
}

/// A parameter's value, with an empty value counting as absent.
fn param<'a>(params: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    params
        .get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

fn scope_has(scope: &str, wanted: &str) -> bool {
    scope.split(' ').any(|s| s == wanted)
}

/// The granted scope as Google reports it: `email`/`profile` become their full URLs.
fn granted_scope(scope: &str) -> String {
    scope
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(|s| match s {
            "email" => "https://www.googleapis.com/auth/userinfo.email",
            "profile" => "https://www.googleapis.com/auth/userinfo.profile",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------------------------------------------
// Discovery and keys

async fn discovery(State(shared): State<SharedState>) -> Response {
    Json(json!({
        "issuer": shared.base_url,
        "authorization_endpoint": shared.url(AUTHORIZATION_PATH),
        "token_endpoint": shared.url(TOKEN_PATH),
        "userinfo_endpoint": shared.url(USERINFO_PATH),
        "jwks_uri": shared.url(JWKS_PATH),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "email", "profile"],
        "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
        "claims_supported": [
            "aud", "email", "email_verified", "exp", "iat", "iss", "name", "sub", "azp", "at_hash", "nonce",
        ],
        "code_challenge_methods_supported": ["plain", "S256"],
        "grant_types_supported": ["authorization_code"],
    }))
    .into_response()
}

async fn jwks(State(shared): State<SharedState>) -> Response {
    let (keys, max_age) = {
        let mut inner = shared.lock();
        inner.stats.jwks_requests += 1;
        let keys: Vec<Value> = inner
            .published
            .iter()
            .map(|&index| shared.keys.pairs[index].jwk.clone())
            .collect();
        (keys, inner.jwks_max_age)
    };
    let mut response = Json(json!({ "keys": keys })).into_response();
    if let Some(seconds) = max_age {
        // Google's own header, with its max-age.
        let value = format!("public, max-age={seconds}, must-revalidate, no-transform");
        response.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_str(&value).expect("a valid header value"),
        );
    }
    response
}

// ---------------------------------------------------------------------------------------------------------------
// Authorization endpoint and consent page

/// The parameters of an authorization request, as the consent form carries them on.
struct AuthRequest {
    client_id: String,
    redirect_uri: String,
    scope: String,
    state: Option<String>,
    nonce: Option<String>,
    challenge: Option<Challenge>,
}

/// Why an authorization request cannot go on.
enum AuthRejection {
    /// Shown to the user; nothing is sent to the redirect URI, which may not be trusted.
    Page {
        error: &'static str,
        message: String,
    },
    /// Sent to the (validated) redirect URI as `error=…`.
    Redirect {
        redirect_uri: String,
        state: Option<String>,
        error: &'static str,
        description: String,
    },
}

impl IntoResponse for AuthRejection {
    fn into_response(self) -> Response {
        match self {
            Self::Page { error, message } => error_page(error, &message),
            Self::Redirect {
                redirect_uri,
                state,
                error,
                description,
            } => redirect_with(
                &redirect_uri,
                &[
                    ("error", Some(error)),
                    ("error_description", Some(&description)),
                    ("state", state.as_deref()),
                ],
            ),
        }
    }
}

/// Validates an authorization request (the same rules for the authorization endpoint and the consent form).
fn validate(
    inner: &Inner,
    params: Result<HashMap<String, String>, String>,
) -> Result<AuthRequest, AuthRejection> {
    let params = params.map_err(|message| AuthRejection::Page {
        error: "invalid_request",
        message,
    })?;
    let Some(client_id) = param(&params, "client_id") else {
        return Err(AuthRejection::Page {
            error: "invalid_request",
            message: "Missing required parameter: client_id".to_owned(),
        });
    };
    if client_id != inner.config.client_id {
        return Err(AuthRejection::Page {
            error: "invalid_client",
            message: format!("The OAuth client was not found: {client_id}"),
        });
    }
    let Some(redirect_uri) = param(&params, "redirect_uri") else {
        return Err(AuthRejection::Page {
            error: "invalid_request",
            message: "Missing required parameter: redirect_uri".to_owned(),
        });
    };
    if redirect_uri != inner.config.redirect_uri {
        return Err(AuthRejection::Page {
            error: "redirect_uri_mismatch",
            message: format!(
                "The redirect URI in the request, {redirect_uri}, does not match the ones authorized for the \
                 OAuth client."
            ),
        });
    }
    // From here on the redirect URI is trusted: errors go back to the client.
    let state = param(&params, "state").map(str::to_owned);
    let reject = |error: &'static str, description: String| AuthRejection::Redirect {
        redirect_uri: redirect_uri.to_owned(),
        state: state.clone(),
        error,
        description,
    };
    match param(&params, "response_type") {
        Some("code") => {}
        Some(other) => {
            return Err(reject(
                "unsupported_response_type",
                format!("Unsupported response_type: {other}"),
            ));
        }
        None => {
            return Err(reject(
                "invalid_request",
                "Missing required parameter: response_type".to_owned(),
            ));
        }
    }
    let scope = param(&params, "scope").unwrap_or_default();
    if !scope_has(scope, "openid") {
        return Err(reject(
            "invalid_scope",
            "The scope must include openid.".to_owned(),
        ));
    }
    let challenge = match (
        param(&params, "code_challenge"),
        param(&params, "code_challenge_method"),
    ) {
        (None, None) => None,
        (None, Some(_)) => {
            return Err(reject(
                "invalid_request",
                "code_challenge_method without code_challenge".to_owned(),
            ));
        }
        (Some(value), method) => {
            let Some(method) = ChallengeMethod::parse(method.unwrap_or("plain")) else {
                return Err(reject(
                    "invalid_request",
                    "Invalid code_challenge_method: use plain or S256".to_owned(),
                ));
            };
            if !is_pkce_string(value) {
                return Err(reject(
                    "invalid_request",
                    "Invalid code_challenge: 43 to 128 characters of [A-Za-z0-9-._~]".to_owned(),
                ));
            }
            Some(Challenge {
                value: value.to_owned(),
                method,
            })
        }
    };
    Ok(AuthRequest {
        client_id: client_id.to_owned(),
        redirect_uri: redirect_uri.to_owned(),
        scope: scope.to_owned(),
        state,
        nonce: param(&params, "nonce").map(str::to_owned),
        challenge,
    })
}

/// A `303 See Other` to `base` with the given query parameters appended (absent ones left out).
fn redirect_with(base: &str, pairs: &[(&str, Option<&str>)]) -> Response {
    let Ok(mut url) = url::Url::parse(base) else {
        return error_page(
            "invalid_request",
            &format!("The redirect URI {base} is not a valid URL."),
        );
    };
    {
        let mut query = url.query_pairs_mut();
        for (name, value) in pairs {
            if let Some(value) = value {
                query.append_pair(name, value);
            }
        }
    }
    match HeaderValue::from_str(url.as_str()) {
        Ok(location) => (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response(),
        Err(_) => error_page(
            "invalid_request",
            "The redirect URI cannot be sent in a header.",
        ),
    }
}

fn page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
            }
            body {
                main { (body) }
            }
        }
    }
}

fn error_page(error: &str, message: &str) -> Response {
    let markup = page(
        "Access blocked: Authorization Error",
        html! {
            h1 { "Access blocked: Authorization Error" }
            p id="error-code" { "Error 400: " (error) }
            p id="error-message" { (message) }
        },
    );
    (StatusCode::BAD_REQUEST, markup).into_response()
}

async fn authorize(State(shared): State<SharedState>, RawQuery(query): RawQuery) -> Response {
    let params = parse_params(query.as_deref().unwrap_or_default());
    let inner = shared.lock();
    let request = match validate(&inner, params) {
        Ok(request) => request,
        Err(rejection) => return rejection.into_response(),
    };
    consent_page(&request, &inner.config.accounts).into_response()
}

/// The consent page: one form carrying the request on in hidden fields, a "Continue as …" button per account
/// (`name="account"`, `value` = sub, `id="account-<sub>"`) and a "Cancel" button (`name="cancel"`, `id="cancel"`).
fn consent_page(request: &AuthRequest, accounts: &[OidcAccount]) -> Markup {
    let hidden: Vec<(&str, &str)> = [
        ("client_id", Some(request.client_id.as_str())),
        ("redirect_uri", Some(request.redirect_uri.as_str())),
        ("response_type", Some("code")),
        ("scope", Some(request.scope.as_str())),
        ("state", request.state.as_deref()),
        ("nonce", request.nonce.as_deref()),
        (
            "code_challenge",
            request.challenge.as_ref().map(|c| c.value.as_str()),
        ),
        (
            "code_challenge_method",
            request.challenge.as_ref().map(|c| c.method.as_str()),
        ),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.map(|value| (name, value)))
    .collect();
    page(
        "Sign in - Google Accounts",
        html! {
            h1 { "Choose an account" }
            p { "to continue to " strong id="client-id" { (request.client_id) } }
            form id="consent" method="post" action=(CONSENT_PATH) {
                @for (name, value) in &hidden {
                    input type="hidden" name=(name) value=(value);
                }
                @if accounts.is_empty() {
                    p id="no-accounts" { "No test accounts are configured." }
                }
                ul aria-label="Accounts" {
                    @for account in accounts {
                        li {
                            button type="submit" id={ "account-" (account.sub) } name="account"
                                value=(account.sub) data-email=(account.email) {
                                "Continue as " (account.email)
                            }
                            " " span { (account.name) }
                        }
                    }
                }
                button type="submit" id="cancel" name="cancel" value="1" { "Cancel" }
            }
        },
    )
}

async fn consent(State(shared): State<SharedState>, body: Bytes) -> Response {
    let params = parse_params(&String::from_utf8_lossy(&body));
    let (cancel, account) = match &params {
        Ok(params) => (
            param(params, "cancel").is_some(),
            param(params, "account").map(str::to_owned),
        ),
        Err(_) => (false, None),
    };
    let mut inner = shared.lock();
    let request = match validate(&inner, params) {
        Ok(request) => request,
        Err(rejection) => return rejection.into_response(),
    };
    if cancel {
        return redirect_with(
            &request.redirect_uri,
            &[
                ("error", Some("access_denied")),
                ("state", request.state.as_deref()),
            ],
        );
    }
    let Some(sub) = account else {
        return error_page("invalid_request", "No account was chosen.");
    };
    if !inner.config.accounts.iter().any(|a| a.sub == sub) {
        return error_page("invalid_request", &format!("Unknown account: {sub}"));
    }
    // Google's codes start with "4/0"; the slash makes clients URL-decode the callback's query properly.
    let code = random_token("4/0");
    let response = redirect_with(
        &request.redirect_uri,
        &[
            ("state", request.state.as_deref()),
            ("code", Some(&code)),
            ("scope", Some(&granted_scope(&request.scope))),
            ("authuser", Some("0")),
            ("prompt", Some("consent")),
        ],
    );
    inner.stats.codes_issued += 1;
    inner.codes.insert(
        code,
        Grant {
            client_id: request.client_id,
            redirect_uri: request.redirect_uri,
            scope: request.scope,
            nonce: request.nonce,
            challenge: request.challenge,
            sub,
            issued_at: Instant::now(),
            expired: false,
        },
    );
    response
}

// ---------------------------------------------------------------------------------------------------------------
// Token endpoint

/// An OAuth error response (RFC 6749 §5.2).
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::PRAGMA, "no-cache"),
        ],
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

fn invalid_request(description: &str) -> Response {
    oauth_error(StatusCode::BAD_REQUEST, "invalid_request", description)
}

fn invalid_grant(description: &str) -> Response {
    oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", description)
}

/// `invalid_client` is 401; a client that tried HTTP Basic is told which scheme to use (RFC 6749 §5.2).
fn invalid_client(used_basic: bool) -> Response {
    let mut response = oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "Unauthorized");
    if used_basic {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"token\""),
        );
    }
    response
}

/// The client credentials from HTTP Basic (each part form-urlencoded, RFC 6749 §2.3.1), if that header is used.
fn basic_credentials(headers: &HeaderMap) -> Option<Result<(String, String), ()>> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decode = |part: &str| -> String {
        url::form_urlencoded::parse(format!("v={part}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let parsed = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| {
            text.split_once(':')
                .map(|(id, secret)| (decode(id), decode(secret)))
        });
    Some(parsed.ok_or(()))
}

async fn token(State(shared): State<SharedState>, headers: HeaderMap, body: Bytes) -> Response {
    shared.lock().stats.token_requests += 1;
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return invalid_request("The body must be application/x-www-form-urlencoded.");
    }
    let params = match parse_params(&String::from_utf8_lossy(&body)) {
        Ok(params) => params,
        Err(message) => return invalid_request(&message),
    };

    // Client authentication: exactly one method (RFC 6749 §2.3).
    let basic = basic_credentials(&headers);
    let used_basic = basic.is_some();
    let (client_id, client_secret) = match (basic, param(&params, "client_secret")) {
        (Some(_), Some(_)) => {
            return invalid_request("Use only one client authentication method.");
        }
        (Some(Err(())), None) => return invalid_client(true),
        (Some(Ok((id, secret))), None) => {
            if param(&params, "client_id").is_some_and(|body_id| body_id != id) {
                return invalid_request(
                    "client_id in the body differs from the authenticated one.",
                );
            }
            (id, secret)
        }
        (None, Some(secret)) => match param(&params, "client_id") {
            Some(id) => (id.to_owned(), secret.to_owned()),
            None => return invalid_client(false),
        },
        (None, None) => return invalid_client(false),
    };
    {
        let inner = shared.lock();
        if client_id != inner.config.client_id || client_secret != inner.config.client_secret {
            return invalid_client(used_basic);
        }
    }

    match param(&params, "grant_type") {
        Some("authorization_code") => {}
        Some(other) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                &format!("Invalid grant_type: {other}"),
            );
        }
        None => return invalid_request("Missing required parameter: grant_type"),
    }
    let Some(code) = param(&params, "code") else {
        return invalid_request("Missing required parameter: code");
    };
    // A code is consumed by the first attempt that names it, whatever the outcome.
    let Some(grant) = shared.lock().codes.remove(code) else {
        return invalid_grant("Malformed auth code.");
    };
    if grant.client_id != client_id {
        return invalid_grant("The code was issued to another client.");
    }
    if grant.expired || grant.issued_at.elapsed() > CODE_TTL {
        return invalid_grant("The code has expired.");
    }
    if param(&params, "redirect_uri") != Some(grant.redirect_uri.as_str()) {
        return invalid_grant("redirect_uri does not match the one of the authorization request.");
    }
    match (&grant.challenge, param(&params, "code_verifier")) {
        (None, None) => {}
        (None, Some(_)) => {
            return invalid_grant(
                "code_verifier sent, but the authorization request had no code_challenge.",
            );
        }
        (Some(_), None) => return invalid_grant("Missing code verifier."),
        (Some(challenge), Some(verifier)) => {
            if !is_pkce_string(verifier) || !challenge.accepts(verifier) {
                return invalid_grant("Invalid code verifier.");
            }
        }
    }
    issue_tokens(&shared, grant)
}

fn issue_tokens(shared: &Shared, grant: Grant) -> Response {
    let mut inner = shared.lock();
    let Some(account) = inner
        .config
        .accounts
        .iter()
        .find(|a| a.sub == grant.sub)
        .cloned()
    else {
        return invalid_grant("The account of this code no longer exists.");
    };
    let fault = inner.fault;
    let access_token = random_token("ya29.");
    let now = unix_now();
    let (iat, exp) = if fault == Some(IdTokenFault::Expired) {
        (
            now.saturating_sub(2 * ID_TOKEN_TTL_SECS),
            now.saturating_sub(ID_TOKEN_TTL_SECS),
        )
    } else {
        (now, now + ID_TOKEN_TTL_SECS)
    };
    let audience = if fault == Some(IdTokenFault::WrongAudience) {
        FOREIGN_CLIENT_ID.to_owned()
    } else {
        grant.client_id.clone()
    };
    let issuer = if fault == Some(IdTokenFault::WrongIssuer) {
        FOREIGN_ISSUER.to_owned()
    } else {
        shared.base_url.clone()
    };
    let nonce = if fault == Some(IdTokenFault::WrongNonce) {
        Some(random_token("not-your-nonce-"))
    } else {
        grant.nonce.clone()
    };
    // at_hash: the left half of SHA-256 of the access token (OpenID Connect Core §3.1.3.6).
    let at_hash = URL_SAFE_NO_PAD.encode(&Sha256::digest(access_token.as_bytes())[..16]);
    let mut claims = json!({
        "iss": issuer,
        "azp": audience,
        "aud": audience,
        "sub": account.sub,
        "at_hash": at_hash,
        "iat": iat,
        "exp": exp,
    });
    if let Some(nonce) = nonce {
        claims["nonce"] = json!(nonce);
    }
    if scope_has(&grant.scope, "email") {
        claims["email"] = json!(account.email);
        claims["email_verified"] = json!(account.email_verified);
    }
    if scope_has(&grant.scope, "profile") {
        claims["name"] = json!(account.name);
    }
    let id_token = match shared.keys.sign(&claims, inner.signing, fault) {
        Ok(token) => token,
        Err(e) => {
            return oauth_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                &format!("signing the ID token failed: {e}"),
            );
        }
    };
    let scope = granted_scope(&grant.scope);
    inner.access_tokens.insert(
        access_token.clone(),
        AccessGrant {
            sub: account.sub,
            scope: grant.scope,
            expires_at: Instant::now() + Duration::from_secs(ACCESS_TOKEN_TTL_SECS),
        },
    );
    inner.stats.tokens_issued += 1;
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::PRAGMA, "no-cache"),
        ],
        Json(json!({
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": ACCESS_TOKEN_TTL_SECS,
            "scope": scope,
            "id_token": id_token,
        })),
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------------------------
// User info

async fn userinfo(State(shared): State<SharedState>, headers: HeaderMap) -> Response {
    let mut inner = shared.lock();
    inner.stats.userinfo_requests += 1;
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let unauthorized = |description: &str| {
        let mut response = oauth_error(StatusCode::UNAUTHORIZED, "invalid_token", description);
        if let Ok(value) = HeaderValue::from_str(&format!(
            "Bearer error=\"invalid_token\", error_description=\"{description}\""
        )) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        response
    };
    let Some(token) = token else {
        return unauthorized("Missing bearer access token.");
    };
    let Some(grant) = inner.access_tokens.get(token) else {
        return unauthorized("Invalid Credentials");
    };
    if Instant::now() >= grant.expires_at {
        return unauthorized("Invalid Credentials");
    }
    let Some(account) = inner.config.accounts.iter().find(|a| a.sub == grant.sub) else {
        return unauthorized("Invalid Credentials");
    };
    let mut body = json!({"sub": account.sub});
    if scope_has(&grant.scope, "email") {
        body["email"] = json!(account.email);
        body["email_verified"] = json!(account.email_verified);
    }
    if scope_has(&grant.scope, "profile") {
        body["name"] = json!(account.name);
    }
    Json(body).into_response()
}
