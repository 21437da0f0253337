//! The OpenID Connect stand-in is driven here by the real `openidconnect` crate, the one the app signs in with:
//! discovery, the authorization code flow with PKCE, state and nonce, and ID token verification. The consent
//! page is used as a browser would: its form is read from the HTML and posted.

use fakes::oidc::{IdTokenFault, OidcAccount, OidcFake, OidcFakeConfig};
use openidconnect::{
    AccessTokenHash, AuthType, AuthenticationFlow, AuthorizationCode, ClaimsVerificationError,
    ClientId, ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet, EndpointSet, IssuerUrl,
    Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl,
    RequestTokenError, Scope, TokenResponse,
    core::{
        CoreClient, CoreErrorResponseType, CoreIdTokenClaims, CoreProviderMetadata,
        CoreResponseType, CoreTokenResponse,
    },
    reqwest,
};
use url::Url;

const CLIENT_ID: &str = "1234-createimage2.apps.googleusercontent.com";
const CLIENT_SECRET: &str = "GOCSPX-test-secret";
const REDIRECT_URI: &str = "http://127.0.0.1:9/auth/google/callback";

type Client = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

type TokenError = RequestTokenError<
    openidconnect::HttpClientError<reqwest::Error>,
    openidconnect::StandardErrorResponse<CoreErrorResponseType>,
>;

fn alice() -> OidcAccount {
    OidcAccount {
        sub: "104857600000000000001".to_owned(),
        email: "alice@example.com".to_owned(),
        email_verified: true,
        name: "Alice Example".to_owned(),
    }
}

fn bob() -> OidcAccount {
    OidcAccount {
        sub: "104857600000000000002".to_owned(),
        email: "bob@example.com".to_owned(),
        email_verified: false,
        name: "Bob Example".to_owned(),
    }
}

async fn start() -> OidcFake {
    OidcFake::start(OidcFakeConfig {
        client_id: CLIENT_ID.to_owned(),
        client_secret: CLIENT_SECRET.to_owned(),
        redirect_uri: REDIRECT_URI.to_owned(),
        accounts: vec![alice(), bob()],
    })
    .await
    .unwrap()
}

/// The HTTP client openidconnect requires: redirects must not be followed (SSRF).
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn discover(fake: &OidcFake, http: &reqwest::Client) -> CoreProviderMetadata {
    CoreProviderMetadata::discover_async(IssuerUrl::new(fake.issuer()).unwrap(), http)
        .await
        .unwrap()
}

async fn client(fake: &OidcFake, http: &reqwest::Client) -> Client {
    CoreClient::from_provider_metadata(
        discover(fake, http).await,
        ClientId::new(CLIENT_ID.to_owned()),
        Some(ClientSecret::new(CLIENT_SECRET.to_owned())),
    )
    .set_redirect_uri(RedirectUrl::new(REDIRECT_URI.to_owned()).unwrap())
}

/// What the app keeps in its session between sending the user off and the callback.
struct Pending {
    url: Url,
    csrf: CsrfToken,
    nonce: Nonce,
    verifier: PkceCodeVerifier,
}

fn begin(client: &Client) -> Pending {
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, csrf, nonce) = client
        .authorize_url(
            AuthenticationFlow::<CoreResponseType>::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("email".to_owned()))
        .add_scope(Scope::new("profile".to_owned()))
        .set_pkce_challenge(challenge)
        .url();
    Pending {
        url,
        csrf,
        nonce,
        verifier,
    }
}

/// HTML attribute values as maud escapes them.
fn unescape(value: &str) -> String {
    value
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

fn attribute(tag: &str, name: &str) -> Option<String> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let end = start + tag[start..].find('"')?;
    Some(unescape(&tag[start..end]))
}

/// The consent form: its action and its hidden fields, as a browser would submit them.
fn consent_form(html: &str) -> (String, Vec<(String, String)>) {
    let form = html.find("<form").expect("a form");
    let form_tag = &html[form..form + html[form..].find('>').unwrap()];
    let action = attribute(form_tag, "action").expect("a form action");
    let fields = html
        .match_indices("<input")
        .map(|(at, _)| &html[at..at + html[at..].find('>').unwrap()])
        .filter(|tag| attribute(tag, "type").as_deref() == Some("hidden"))
        .map(|tag| {
            (
                attribute(tag, "name").unwrap(),
                attribute(tag, "value").unwrap(),
            )
        })
        .collect();
    (action, fields)
}

/// Opens the authorization URL, clicks `button` (name, value) on the consent page, and returns where the
/// provider sends the browser back to.
async fn click(http: &reqwest::Client, authorize_url: &Url, button: (&str, &str)) -> Url {
    let page = http.get(authorize_url.clone()).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    let (action, mut fields) = consent_form(&html);
    fields.push((button.0.to_owned(), button.1.to_owned()));
    let answer = http
        .post(authorize_url.join(&action).unwrap())
        .form(&fields)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 303);
    let location = answer.headers()["location"].to_str().unwrap();
    Url::parse(location).unwrap()
}

fn query(url: &Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// Signs in as `account` up to the callback: returns the code and the pending login.
async fn authorize_as(
    http: &reqwest::Client,
    client: &Client,
    account: &OidcAccount,
) -> (AuthorizationCode, Pending) {
    let pending = begin(client);
    let callback = click(http, &pending.url, ("account", &account.sub)).await;
    assert!(callback.as_str().starts_with(REDIRECT_URI), "{callback}");
    assert_eq!(
        query(&callback, "state").as_deref(),
        Some(pending.csrf.secret().as_str())
    );
    let code = query(&callback, "code").expect("a code in the callback");
    (AuthorizationCode::new(code), pending)
}

async fn exchange(
    http: &reqwest::Client,
    client: &Client,
    code: AuthorizationCode,
    verifier: PkceCodeVerifier,
) -> Result<CoreTokenResponse, TokenError> {
    client
        .exchange_code(code)
        .unwrap()
        .set_pkce_verifier(verifier)
        .request_async(http)
        .await
}

fn oauth_error(result: Result<CoreTokenResponse, TokenError>) -> CoreErrorResponseType {
    match result {
        Err(RequestTokenError::ServerResponse(response)) => response.error().clone(),
        Err(other) => panic!("expected an OAuth error response, got {other:?}"),
        Ok(_) => panic!("expected an OAuth error response, got tokens"),
    }
}

/// Signs in as Alice with `fault` set and returns what openidconnect's ID token verification says.
async fn verify_with_fault(
    fault: IdTokenFault,
) -> Result<CoreIdTokenClaims, ClaimsVerificationError> {
    let fake = start().await;
    let http = http();
    let client = client(&fake, &http).await;
    fake.set_fault(Some(fault));
    let (code, pending) = authorize_as(&http, &client, &alice()).await;
    let tokens = exchange(&http, &client, code, pending.verifier)
        .await
        .unwrap();
    tokens
        .id_token()
        .unwrap()
        .claims(&client.id_token_verifier(), &pending.nonce)
        .cloned()
}

#[tokio::test]
async fn discovery_is_accepted_by_openidconnect_and_names_the_stand_in_endpoints() {
    let fake = start().await;
    let http = http();
    let metadata = discover(&fake, &http).await;
    let base = fake.base_url();
    assert_eq!(metadata.issuer().as_str(), base);
    assert_eq!(
        metadata.authorization_endpoint().as_str(),
        format!("{base}/o/oauth2/v2/auth")
    );
    assert_eq!(
        metadata.token_endpoint().unwrap().as_str(),
        format!("{base}/token")
    );
    assert_eq!(
        metadata.jwks_uri().as_str(),
        format!("{base}/oauth2/v3/certs")
    );
    assert_eq!(
        metadata.userinfo_endpoint().unwrap().as_str(),
        format!("{base}/userinfo")
    );
    assert_eq!(metadata.jwks().keys().len(), 1);
}

#[tokio::test]
async fn a_user_who_picks_an_account_is_signed_in_with_code_pkce_and_nonce() {
    let fake = start().await;
    let http = http();
    let client = client(&fake, &http).await;
    let (code, pending) = authorize_as(&http, &client, &alice()).await;
    let tokens = exchange(&http, &client, code, pending.verifier)
        .await
        .unwrap();

    let claims = tokens
        .id_token()
        .expect("an ID token")
        .claims(&client.id_token_verifier(), &pending.nonce)
        .unwrap();
    assert_eq!(claims.subject().as_str(), alice().sub);
    assert_eq!(claims.email().unwrap().as_str(), "alice@example.com");
    assert_eq!(claims.email_verified(), Some(true));
    assert_eq!(
        claims.name().unwrap().get(None).unwrap().as_str(),
        "Alice Example"
    );
    assert_eq!(claims.issuer().as_str(), fake.issuer());
    assert_eq!(tokens.expires_in().unwrap().as_secs(), 3599);
    let id_token = tokens.id_token().unwrap();
    let verifier = client.id_token_verifier();
    let expected_hash = AccessTokenHash::from_token(
        tokens.access_token(),
        id_token.signing_alg().unwrap(),
        id_token.signing_key(&verifier).unwrap(),
    )
    .unwrap();
    assert_eq!(claims.access_token_hash(), Some(&expected_hash));

    let userinfo: openidconnect::core::CoreUserInfoClaims = client
        .user_info(
            tokens.access_token().clone(),
            Some(claims.subject().clone()),
        )
        .unwrap()
        .request_async(&http)
        .await
        .unwrap();
    assert_eq!(userinfo.email().unwrap().as_str(), "alice@example.com");
    let stats = fake.stats();
    assert_eq!((stats.codes_issued, stats.tokens_issued), (1, 1));
}

#[tokio::test]
async fn the_consent_page_offers_a_button_per_account_and_the_chosen_one_signs_in() {
    let fake = start().await;
    let http = http();
    let client = client(&fake, &http).await;
    let pending = begin(&client);
    let html = http
        .get(pending.url.clone())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for account in [alice(), bob()] {
        assert!(
            html.contains(&format!("id=\"account-{}\"", account.sub)),
            "{html}"
        );
        assert!(
            html.contains(&format!("Continue as {}", account.email)),
            "{html}"
        );
    }
    assert!(html.contains("id=\"cancel\""), "{html}");

    let (code, pending) = authorize_as(&http, &client, &bob()).await;
    let tokens = exchange(&http, &client, code, pending.verifier)
        .await
        .unwrap();
    let claims = tokens
        .id_token()
        .unwrap()
        .claims(&client.id_token_verifier(), &pending.nonce)
        .unwrap();
    assert_eq!(claims.subject().as_str(), bob().sub);
    assert_eq!(claims.email_verified(), Some(false));
}

#[tokio::test]
async fn the_client_secret_may_also_be_sent_in_the_body() {
    let fake = start().await;
    let http = http();
    let client = client(&fake, &http)
        .await
        .set_auth_type(AuthType::RequestBody);
    let (code, pending) = authorize_as(&http, &client, &alice()).await;
    exchange(&http, &client, code, pending.verifier)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_code_can_be_exchanged_only_once() {
    let fake = start().await;
    let http = http();
    let client = client(&fake, &http).await;
    let (code, pending) = authorize_as(&http, &client, &alice()).await;
    let verifier = pending.verifier.secret().clone();
    exchange(&http, &client, code.clone(), pending.verifier)
        .await
        .unwrap();
    let again = exchange(&http, &client, code, PkceCodeVerifier::new(verifier)).await;
    assert_eq!(oauth_error(again), CoreErrorResponseType::InvalidGrant);
}

#[tokio::test]
async fn a_wrong_pkce_verifier_is_rejected() {
    let fake = start().await;
    let http = http();
    let client = client(&fake, &http).await;
    let (code, _pending) = authorize_as(&http, &client, &alice()).await;
    let (_, someone_elses) = PkceCodeChallenge::new_random_sha256();
    let result = exchange(&http, &client, code, someone_elses).await;
    assert_eq!(oauth_error(result), CoreErrorResponseType::InvalidGrant);
}

#[tokio::test]
async fn a_code_without_its_pkce_verifier_is_rejected() {
    let fake = start().await;
    let http = http();
    let client = client(&fake, &http).await;
    let (code, _pending) = authorize_as(&http, &client, &alice()).await;
    let result = client
        .exchange_code(code)
        .unwrap()
        .request_async(&http)
        .await;
    assert_eq!(oauth_error(result), CoreErrorResponseType::InvalidGrant);
}

#[tokio::test]
async fn an_expired_code_is_rejected() {
    let fake = start().await;
    let http = http();
    let client = client(&fake, &http).await;
    let (code, pending) = authorize_as(&http, &client, &alice()).await;
    fake.expire_codes();
    let result = exchange(&http, &client, code, pending.verifier).await;
    assert_eq!(oauth_error(result), CoreErrorResponseType::InvalidGrant);
}

#[tokio::test]
async fn a_wrong_client_secret_is_rejected_as_invalid_client() {
    let fake = start().await;
    let http = http();
    let client = client(&fake, &http).await;
    let (code, pending) = authorize_as(&http, &client, &alice()).await;
    let impostor = CoreClient::from_provider_metadata(
        discover(&fake, &http).await,
        ClientId::new(CLIENT_ID.to_owned()),
        Some(ClientSecret::new("not-the-secret".to_owned())),
    )
    .set_redirect_uri(RedirectUrl::new(REDIRECT_URI.to_owned()).unwrap());
    let result = exchange(&http, &impostor, code, pending.verifier).await;
    assert_eq!(oauth_error(result), CoreErrorResponseType::InvalidClient);
}

#[tokio::test]
async fn an_unregistered_redirect_uri_gets_an_error_page_and_no_redirect() {
    let fake = start().await;
    let http = http();
    let client = client(&fake, &http)
        .await
        .set_redirect_uri(RedirectUrl::new("http://evil.invalid/callback".to_owned()).unwrap());
    let pending = begin(&client);
    let answer = http.get(pending.url).send().await.unwrap();
    assert_eq!(answer.status(), 400);
    assert!(answer.headers().get("location").is_none());
    assert!(
        answer
            .text()
            .await
            .unwrap()
            .contains("redirect_uri_mismatch")
    );
}

#[tokio::test]
async fn an_unknown_client_gets_an_error_page() {
    let fake = start().await;
    let http = http();
    let stranger = CoreClient::from_provider_metadata(
        discover(&fake, &http).await,
        ClientId::new("unknown.apps.googleusercontent.com".to_owned()),
        None,
    )
    .set_redirect_uri(RedirectUrl::new(REDIRECT_URI.to_owned()).unwrap());
    let pending = begin(&stranger);
    let answer = http.get(pending.url).send().await.unwrap();
    assert_eq!(answer.status(), 400);
    assert!(answer.text().await.unwrap().contains("invalid_client"));
}

#[tokio::test]
async fn cancelling_returns_access_denied_with_the_state() {
    let fake = start().await;
    let http = http();
    let client = client(&fake, &http).await;
    let pending = begin(&client);
    let callback = click(&http, &pending.url, ("cancel", "1")).await;
    assert!(callback.as_str().starts_with(REDIRECT_URI), "{callback}");
    assert_eq!(query(&callback, "error").as_deref(), Some("access_denied"));
    assert_eq!(
        query(&callback, "state").as_deref(),
        Some(pending.csrf.secret().as_str())
    );
    assert_eq!(query(&callback, "code"), None);
}

#[tokio::test]
async fn an_account_can_be_replaced_while_running() {
    let fake = start().await;
    let http = http();
    let client = client(&fake, &http).await;
    let renamed = OidcAccount {
        email: "alice.new@example.com".to_owned(),
        ..alice()
    };
    fake.upsert_account(renamed.clone());
    let (code, pending) = authorize_as(&http, &client, &renamed).await;
    let tokens = exchange(&http, &client, code, pending.verifier)
        .await
        .unwrap();
    let claims = tokens
        .id_token()
        .unwrap()
        .claims(&client.id_token_verifier(), &pending.nonce)
        .unwrap();
    assert_eq!(claims.email().unwrap().as_str(), "alice.new@example.com");
}

#[tokio::test]
async fn an_id_token_for_another_audience_fails_verification() {
    let error = verify_with_fault(IdTokenFault::WrongAudience)
        .await
        .unwrap_err();
    assert!(
        matches!(error, ClaimsVerificationError::InvalidAudience(_)),
        "{error:?}"
    );
}

#[tokio::test]
async fn an_id_token_with_another_nonce_fails_verification() {
    let error = verify_with_fault(IdTokenFault::WrongNonce)
        .await
        .unwrap_err();
    assert!(
        matches!(error, ClaimsVerificationError::InvalidNonce(_)),
        "{error:?}"
    );
}

#[tokio::test]
async fn an_expired_id_token_fails_verification() {
    let error = verify_with_fault(IdTokenFault::Expired).await.unwrap_err();
    assert!(
        matches!(error, ClaimsVerificationError::Expired(_)),
        "{error:?}"
    );
}

#[tokio::test]
async fn an_id_token_signed_with_another_key_fails_verification() {
    let error = verify_with_fault(IdTokenFault::BadSignature)
        .await
        .unwrap_err();
    assert!(
        matches!(error, ClaimsVerificationError::SignatureVerification(_)),
        "{error:?}"
    );
}

#[tokio::test]
async fn an_id_token_from_another_issuer_fails_verification() {
    let error = verify_with_fault(IdTokenFault::WrongIssuer)
        .await
        .unwrap_err();
    assert!(
        matches!(error, ClaimsVerificationError::InvalidIssuer(_)),
        "{error:?}"
    );
}

#[tokio::test]
async fn clearing_the_fault_restores_valid_id_tokens() {
    let fake = start().await;
    let http = http();
    let client = client(&fake, &http).await;
    fake.set_fault(Some(IdTokenFault::BadSignature));
    fake.set_fault(None);
    let (code, pending) = authorize_as(&http, &client, &alice()).await;
    let tokens = exchange(&http, &client, code, pending.verifier)
        .await
        .unwrap();
    tokens
        .id_token()
        .unwrap()
        .claims(&client.id_token_verifier(), &pending.nonce)
        .unwrap();
}

/// What `openidconnect` answers for a token whose `kid` the client's JWKS lacks: the error a client takes as
/// its cue to fetch the keys again.
fn assert_no_matching_key(error: &ClaimsVerificationError) {
    assert!(
        matches!(
            error,
            ClaimsVerificationError::SignatureVerification(
                openidconnect::SignatureVerificationError::NoMatchingKey
            )
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn an_id_token_under_a_key_id_no_jwks_lists_finds_no_matching_key() {
    let error = verify_with_fault(IdTokenFault::UnknownKey)
        .await
        .unwrap_err();
    assert_no_matching_key(&error);
}

// Google: "Google changes its public keys only infrequently … you can cache them" and refresh them per the
// response's `Cache-Control: max-age`; its JWKS lists the current key beside the previous one
// (developers.google.com/identity/openid-connect/openid-connect, "Validating an ID token"; see
// docs/contracts.md). The client's side of it is `openidconnect`'s `NoMatchingKey`, an authority nobody here wrote.
#[tokio::test]
async fn a_key_rotation_signs_with_a_new_key_that_only_a_refetched_jwks_knows() {
    let fake = start().await;
    let http = http();
    let before = client(&fake, &http).await;
    let old_kid = fake.signing_kid();
    fake.rotate_key();
    assert_ne!(fake.signing_kid(), old_kid);

    // A client holding the keys from before the rotation knows no key for the new token.
    let (code, pending) = authorize_as(&http, &before, &alice()).await;
    let tokens = exchange(&http, &before, code, pending.verifier)
        .await
        .unwrap();
    let id_token = tokens.id_token().unwrap();
    let error = id_token
        .claims(&before.id_token_verifier(), &pending.nonce)
        .unwrap_err();
    assert_no_matching_key(&error);
    // The JWKS now lists the new key beside the old one, as Google's does after a rotation.
    let metadata = discover(&fake, &http).await;
    let kids: Vec<String> = metadata
        .jwks()
        .keys()
        .iter()
        .map(|key| {
            use openidconnect::JsonWebKey as _;
            key.key_id().unwrap().to_string()
        })
        .collect();
    assert_eq!(kids, vec![fake.signing_kid(), old_kid]);
    let after = client(&fake, &http).await;
    id_token
        .claims(&after.id_token_verifier(), &pending.nonce)
        .unwrap();
}

#[tokio::test]
async fn the_jwks_carries_googles_cache_control_with_the_configured_max_age() {
    let fake = start().await;
    let jwks = format!("{}{}", fake.base_url(), fakes::oidc::JWKS_PATH);
    let cache_control = |response: reqwest::Response| {
        response
            .headers()
            .get("cache-control")
            .map(|value| value.to_str().unwrap().to_owned())
    };
    let answer = reqwest::get(&jwks).await.unwrap();
    assert_eq!(
        cache_control(answer).as_deref(),
        Some("public, max-age=3600, must-revalidate, no-transform")
    );
    fake.set_jwks_max_age(Some(0));
    let answer = reqwest::get(&jwks).await.unwrap();
    assert_eq!(
        cache_control(answer).as_deref(),
        Some("public, max-age=0, must-revalidate, no-transform")
    );
    assert_eq!(fake.stats().jwks_requests, 2);
}
