//! The OpenID Connect relying party: discovery (cached, re-read after an hour or a failure), the
//! authorization URL (PKCE S256, state, nonce), the code exchange and the full ID-token check
//! (signature from the provider's JWKS — fetched again once when a key id is unknown, i.e. after a
//! rotation — `iss`, `aud`, `exp` and `iat` within a clock-skew bound, `nonce`), all through the
//! `openidconnect` crate over the workspace's reqwest.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreErrorResponseType, CoreGenderClaim, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm, CoreRevocableToken, CoreRevocationErrorResponse,
    CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AdditionalClaims, AsyncHttpClient, AuthorizationCode, ClaimsVerificationError, Client, ClientId, ClientSecret,
    CsrfToken, EmptyExtraTokenFields, EndpointMaybeSet, EndpointNotSet, EndpointSet, HttpClientError, HttpRequest,
    HttpResponse, IdToken, IdTokenClaims, IdTokenFields, IssuerUrl, JsonWebKeySet, LogoutRequest, Nonce,
    PkceCodeChallenge, PkceCodeVerifier, PostLogoutRedirectUrl, ProviderMetadataWithLogout, RedirectUrl,
    RequestTokenError, Scope, SignatureVerificationError, StandardErrorResponse, StandardTokenResponse, TokenResponse,
};
use serde::{Deserialize, Serialize};
use wakeway_config::Config;

/// Every claim that is not a standard one (groups, a custom user claim), by name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OtherClaims(HashMap<String, serde_json::Value>);
impl AdditionalClaims for OtherClaims {}

type IdFields = IdTokenFields<
    OtherClaims,
    EmptyExtraTokenFields,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
type TokenAnswer = StandardTokenResponse<IdFields, CoreTokenType>;
type Token = IdToken<OtherClaims, CoreGenderClaim, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm>;
type Claims = IdTokenClaims<OtherClaims, CoreGenderClaim>;
/// What `Client::from_provider_metadata` returns: authorization URL set, token URL maybe.
type OidcClient = Client<
    OtherClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    TokenAnswer,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// How far the provider's clock may be from ours (`exp`, `iat`).
const SKEW: TimeDelta = TimeDelta::seconds(60);
/// An ID token older than this (plus the skew) when it arrives is refused.
const MAX_TOKEN_AGE: TimeDelta = TimeDelta::minutes(10);
/// Discovery is read again after this long.
const DISCOVERY_TTL: Duration = Duration::from_secs(3600);
/// An unknown key id reads the JWKS again at most this often: a flood of ID tokens with forged
/// key ids costs the provider one request per 10 s, not one each.
const KEYS_REREAD: Duration = Duration::from_secs(10);
/// The largest answer read from the provider (discovery, JWKS and token answers are small).
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// Why a sign-in with the provider failed.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The provider did not answer, or not with a usable answer (discovery, JWKS, token).
    #[error("the sign-in service is not answering: {0}")]
    Unreachable(String),
    /// The token endpoint refused the code (`invalid_grant`: used twice, expired, wrong verifier).
    #[error("the sign-in service refused the sign-in: {0}")]
    Refused(String),
    /// The ID token failed a check (signature, issuer, audience, expiry, nonce…).
    #[error("the sign-in service's answer could not be verified: {0}")]
    Invalid(String),
}

/// What a verified ID token says about the person.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// The configured user claim's value; None when missing (or an unverified e-mail).
    pub user: Option<String>,
    /// How to name the person on a page (the user claim, else the e-mail, else `sub`).
    pub shown: String,
    /// The groups claim (an array of strings, or one string).
    pub groups: Vec<String>,
    /// The raw ID token (kept for the provider's logout, as `id_token_hint`).
    pub id_token: String,
}

/// A started sign-in: where to send the browser, and what the callback needs to finish it.
pub struct Started {
    pub url: String,
    pub state: String,
    pub nonce: String,
    pub verifier: String,
}

/// reqwest (the workspace's 0.13) as openidconnect's HTTP client. Redirects are not followed
/// (the crate's advice against SSRF through a provider's answers).
struct Http(reqwest::Client);

impl<'c> AsyncHttpClient<'c> for Http {
    type Error = HttpClientError<reqwest::Error>;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, Self::Error>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let request = reqwest::Request::try_from(request).map_err(Box::new)?;
            let mut response = self.0.execute(request).await.map_err(Box::new)?;
            let mut builder = http::Response::builder().status(response.status()).version(response.version());
            for (name, value) in response.headers() {
                builder = builder.header(name, value);
            }
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(Box::new)? {
                if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err(HttpClientError::Other(format!("answer larger than {MAX_ANSWER_BYTES} bytes")));
                }
                body.extend_from_slice(&chunk);
            }
            builder.body(body).map_err(HttpClientError::Http)
        })
    }
}

/// The provider, as configured.
pub struct Provider {
    http: Http,
    issuer: String,
    client_id: String,
    client_secret: String,
    redirect_uri: String,
    scopes: Vec<String>,
    user_claim: String,
    groups_claim: String,
    /// Discovery (with the JWKS) and when it was read.
    discovered: Mutex<Option<(Arc<ProviderMetadataWithLogout>, Instant)>>,
    /// JWKS re-reads for unknown key ids.
    keys_reread: Throttle,
}

/// At most one event per `every` (the JWKS re-read of an unknown key id).
struct Throttle {
    every: Duration,
    last: Mutex<Option<Instant>>,
}

impl Throttle {
    fn new(every: Duration) -> Throttle {
        Throttle { every, last: Mutex::new(None) }
    }

    /// Whether the event may happen at `now` (it then counts as the last one).
    fn allow(&self, now: Instant) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| now.saturating_duration_since(t) < self.every) {
            return false;
        }
        *last = Some(now);
        true
    }
}

impl Provider {
    /// The provider of `config` (nothing is fetched until the first sign-in).
    pub fn new(config: &Config) -> Provider {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        let o = &config.oidc;
        let public = config.server.public_url.as_ref().map(ToString::to_string).unwrap_or_default();
        Provider {
            http: Http(client),
            issuer: o.issuer.clone(),
            client_id: o.client_id.clone(),
            client_secret: o.client_secret.clone(),
            redirect_uri: format!("{public}/oauth/callback"),
            scopes: o.scopes.iter().filter(|s| *s != "openid").cloned().collect(),
            user_claim: o.user_claim.clone(),
            groups_claim: o.groups_claim.clone(),
            discovered: Mutex::new(None),
            keys_reread: Throttle::new(KEYS_REREAD),
        }
    }

    /// The issuer URL as configured.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Discovery, read again when older than an hour.
    async fn metadata(&self) -> Result<Arc<ProviderMetadataWithLogout>, OidcError> {
        if let Some((meta, at)) = self.discovered.lock().unwrap_or_else(|e| e.into_inner()).as_ref()
            && at.elapsed() < DISCOVERY_TTL
        {
            return Ok(meta.clone());
        }
        let issuer = IssuerUrl::new(self.issuer.clone()).map_err(|e| OidcError::Unreachable(e.to_string()))?;
        let meta = ProviderMetadataWithLogout::discover_async(issuer, &self.http)
            .await
            .map_err(|e| OidcError::Unreachable(format!("discovery: {}", error_chain(&e))))?;
        let meta = Arc::new(meta);
        *self.discovered.lock().unwrap_or_else(|e| e.into_inner()) = Some((meta.clone(), Instant::now()));
        Ok(meta)
    }

    fn client(&self, meta: &ProviderMetadataWithLogout) -> Result<OidcClient, OidcError> {
        let redirect = RedirectUrl::new(self.redirect_uri.clone()).map_err(|e| OidcError::Invalid(e.to_string()))?;
        Ok(OidcClient::from_provider_metadata(
            meta.clone(),
            ClientId::new(self.client_id.clone()),
            Some(ClientSecret::new(self.client_secret.clone())),
        )
        .set_redirect_uri(redirect))
    }

    /// Start a sign-in; `login`: make the provider ask for the account again (switch account).
    pub async fn start(&self, login: bool) -> Result<Started, OidcError> {
        let meta = self.metadata().await?;
        let client = self.client(&meta)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request =
            client.authorize_url(CoreAuthenticationFlow::AuthorizationCode, CsrfToken::new_random, Nonce::new_random);
        for scope in &self.scopes {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        if login {
            request = request.add_prompt(CoreAuthPrompt::Login);
        }
        let (url, state, nonce) = request.set_pkce_challenge(challenge).url();
        Ok(Started {
            url: url.to_string(),
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            verifier: verifier.secret().clone(),
        })
    }

    /// Exchange `code` and check the ID token against `nonce`, at `now` (wakeway's clock).
    pub async fn finish(
        &self,
        code: &str,
        verifier: &str,
        nonce: &str,
        now: DateTime<Utc>,
    ) -> Result<Identity, OidcError> {
        let meta = self.metadata().await?;
        let client = self.client(&meta)?;
        let answer = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| OidcError::Unreachable(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(verifier.to_string()))
            .request_async(&self.http)
            .await
            .map_err(|e| match e {
                RequestTokenError::ServerResponse(answer) => OidcError::Refused(answer.error().to_string()),
                other => OidcError::Unreachable(format!("token endpoint: {}", error_chain(&other))),
            })?;
        let token = answer.id_token().ok_or_else(|| OidcError::Invalid("no id_token in the answer".into()))?;
        let nonce = Nonce::new(nonce.to_string());
        let claims = match verify(&client, token, &nonce, now) {
            // An unknown key id: the provider rotated its keys. Read the JWKS once more and retry
            // (unless it was read again moments ago: then the key id is refused as unknown).
            Err(ClaimsVerificationError::SignatureVerification(SignatureVerificationError::NoMatchingKey))
                if self.keys_reread.allow(Instant::now()) =>
            {
                let meta = self.refresh_keys(&meta).await?;
                verify(&self.client(&meta)?, token, &nonce, now)
            }
            other => other,
        }
        .map_err(|e| OidcError::Invalid(e.to_string()))?;
        Ok(self.identity(&claims, token.to_string()))
    }

    /// The JWKS read again (after a key rotation); the cached discovery gets it.
    async fn refresh_keys(
        &self,
        meta: &ProviderMetadataWithLogout,
    ) -> Result<Arc<ProviderMetadataWithLogout>, OidcError> {
        let jwks = JsonWebKeySet::fetch_async(meta.jwks_uri(), &self.http)
            .await
            .map_err(|e| OidcError::Unreachable(format!("keys: {}", error_chain(&e))))?;
        tracing::info!(issuer = %self.issuer, "OIDC signing keys read again (unknown key id)");
        let meta = Arc::new(meta.clone().set_jwks(jwks));
        *self.discovered.lock().unwrap_or_else(|e| e.into_inner()) = Some((meta.clone(), Instant::now()));
        Ok(meta)
    }

    fn identity(&self, claims: &Claims, id_token: String) -> Identity {
        let other = &claims.additional_claims().0;
        let email = claims.email().map(|e| e.as_str().to_string());
        let user = match self.user_claim.as_str() {
            "email" => email.clone().filter(|_| claims.email_verified() == Some(true)),
            "sub" => Some(claims.subject().as_str().to_string()),
            "preferred_username" => claims.preferred_username().map(|u| u.as_str().to_string()),
            name => other.get(name).and_then(|v| v.as_str()).map(str::to_string),
        };
        let shown = user.clone().or(email).unwrap_or_else(|| claims.subject().as_str().to_string());
        let groups = match other.get(&self.groups_claim) {
            Some(serde_json::Value::Array(items)) => {
                items.iter().filter_map(|g| g.as_str().map(str::to_string)).collect()
            }
            Some(serde_json::Value::String(one)) => vec![one.clone()],
            _ => Vec::new(),
        };
        Identity { user, shown, groups, id_token }
    }

    /// The provider's logout URL (RP-initiated logout) when it offers one, coming back to
    /// `after`. None: only wakeway's own sign-in ends.
    pub async fn logout_url(&self, id_token: &str, after: &str) -> Option<String> {
        let meta = self.metadata().await.ok()?;
        let endpoint = meta.additional_metadata().end_session_endpoint.clone()?;
        let mut request = LogoutRequest::from(endpoint).set_client_id(ClientId::new(self.client_id.clone()));
        let hint: Option<Token> = id_token.parse().ok();
        if let Some(hint) = &hint {
            request = request.set_id_token_hint(hint);
        }
        if let Ok(after) = PostLogoutRedirectUrl::new(after.to_string()) {
            request = request.set_post_logout_redirect_uri(after);
        }
        Some(request.http_get_url().to_string())
    }
}

/// Check `token` with `client`'s verifier at `now`: `exp` with [`SKEW`] of leeway, `iat` neither
/// in the future beyond the skew nor older than [`MAX_TOKEN_AGE`].
fn verify(
    client: &OidcClient,
    token: &Token,
    nonce: &Nonce,
    now: DateTime<Utc>,
) -> Result<Claims, ClaimsVerificationError> {
    let verifier = client.id_token_verifier().set_time_fn(move || now - SKEW).set_issue_time_verifier_fn(move |iat| {
        if iat > now + SKEW {
            Err(format!("issued in the future ({iat})"))
        } else if iat < now - MAX_TOKEN_AGE - SKEW {
            Err(format!("issued too long ago ({iat})"))
        } else {
            Ok(())
        }
    });
    token.claims(&verifier, nonce).cloned()
}

/// An error with its sources, for logs and pages.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_ids_reread_the_keys_at_most_once_per_10_s() {
        let throttle = Throttle::new(KEYS_REREAD);
        let t0 = Instant::now();
        assert!(throttle.allow(t0), "the first unknown key id reads the keys");
        for later in [0, 1, 5, 9] {
            assert!(!throttle.allow(t0 + Duration::from_secs(later)), "{later} s later: no second read");
        }
        assert!(!throttle.allow(t0 + Duration::from_millis(9_999)));
        assert!(throttle.allow(t0 + KEYS_REREAD), "10 s later, a read again");
        assert!(!throttle.allow(t0 + KEYS_REREAD + Duration::from_secs(3)), "counted from that read");
        assert!(throttle.allow(t0 + Duration::from_secs(25)));
    }
}
