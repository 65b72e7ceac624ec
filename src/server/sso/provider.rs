//! The identity provider as the server sees it: discovery (cached, retried when it failed),
//! the key set (cached; a token under an unknown `kid` fetches it again, at most once per
//! [`JWKS_REFETCH_INTERVAL`], which is how key rotation is followed), the authorization
//! code exchange with PKCE and the device authorization grant (RFC 8628). Every failure to
//! reach the provider is [`SsoError::Unavailable`] (503): existing machines never depend on it.

use super::http::ProviderHttp;
use super::identity::{Identity, UserInfo};
use super::verify::{self, Expect, GroupsClaim, TokenRefused};
use super::SsoError;
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthenticationFlow, CoreClaimName, CoreClaimType, CoreClient,
    CoreClientAuthMethod, CoreDeviceAuthorizationResponse, CoreGenderClaim, CoreGrantType,
    CoreJsonWebKey, CoreJsonWebKeySet, CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm, CoreResponseMode, CoreResponseType, CoreSubjectIdentifierType,
};
use openidconnect::{
    AccessToken, AdditionalProviderMetadata, AuthType, AuthorizationCode, ClientId, ClientSecret,
    CsrfToken, DeviceAuthorizationUrl, EndpointMaybeSet, EndpointNotSet, EndpointSet, IssuerUrl,
    JsonWebKeySet, Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier,
    ProviderMetadata, RedirectUrl, Scope, SubjectIdentifier, UserInfoClaims, UserInfoError,
};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

/// The shortest time between two key-set fetches caused by unknown `kid`s, so tokens
/// naming made-up keys cannot make the server hammer the provider.
pub const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(10);

/// How long a failed discovery is remembered before the next request tries again.
const DISCOVERY_RETRY: Duration = Duration::from_secs(5);

/// Discovery fields beyond OpenID Discovery's: the device endpoint (RFC 8628 3.1).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct DeviceMetadata {
    /// Present when the provider offers the device authorization grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_authorization_endpoint: Option<DeviceAuthorizationUrl>,
}

impl AdditionalProviderMetadata for DeviceMetadata {}

/// The discovery document with the device endpoint.
pub type Metadata = ProviderMetadata<
    DeviceMetadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

type Client = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// What the server is configured with (`--oidc-*`).
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// `--oidc-issuer`.
    pub issuer: IssuerUrl,
    /// `--oidc-client-id`.
    pub client_id: ClientId,
    /// The secret read from `--oidc-client-secret-file`.
    pub client_secret: ClientSecret,
    /// `--oidc-scopes` beyond `openid`.
    pub scopes: Vec<String>,
}

/// A started authorization-code login: where to send the browser, and what to keep.
pub struct CodeLogin {
    /// The provider's authorization URL.
    pub url: String,
    /// The `state` parameter, which finds the login again at the callback.
    pub state: String,
    /// The PKCE verifier, sent with the code.
    pub verifier: PkceCodeVerifier,
    /// The nonce the ID token must carry.
    pub nonce: Nonce,
}

#[derive(Default)]
struct Cache {
    metadata: Option<Arc<Metadata>>,
    failed: Option<(Instant, String)>,
    keys: Option<Arc<CoreJsonWebKeySet>>,
    keys_fetched: Option<Instant>,
}

/// The provider: configuration, HTTP client and what discovery found.
pub struct Provider {
    config: ProviderConfig,
    http: ProviderHttp,
    cache: Mutex<Cache>,
}

fn unavailable(issuer: &IssuerUrl, what: &str, e: impl std::fmt::Display) -> SsoError {
    SsoError::Unavailable(format!(
        "the identity provider {} cannot be used ({what}: {e})",
        issuer.as_str()
    ))
}

impl Provider {
    /// A provider not yet contacted; [`Provider::metadata`] discovers it on first use.
    pub fn new(config: ProviderConfig) -> Provider {
        Provider {
            config,
            http: ProviderHttp::new(),
            cache: Mutex::new(Cache::default()),
        }
    }

    fn cache(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The issuer as configured.
    pub fn issuer(&self) -> &str {
        self.config.issuer.as_str()
    }

    /// The discovery document, fetched once (and again after a failure, at most every
    /// few seconds).
    pub fn metadata(&self) -> Result<Arc<Metadata>, SsoError> {
        {
            let cache = self.cache();
            if let Some(m) = &cache.metadata {
                return Ok(m.clone());
            }
            if let Some((at, why)) = &cache.failed {
                if at.elapsed() < DISCOVERY_RETRY {
                    return Err(SsoError::Unavailable(why.clone()));
                }
            }
        }
        let found = Metadata::discover(&self.config.issuer, &self.http)
            .map_err(|e| unavailable(&self.config.issuer, "discovery", error_chain(&e)));
        let mut cache = self.cache();
        match found {
            Ok(metadata) => {
                let metadata = Arc::new(metadata);
                cache.keys = Some(Arc::new(metadata.jwks().clone()));
                cache.keys_fetched = Some(Instant::now());
                cache.metadata = Some(metadata.clone());
                cache.failed = None;
                log::info!(
                    "identity provider {} discovered (device flow: {})",
                    self.issuer(),
                    metadata
                        .additional_metadata()
                        .device_authorization_endpoint
                        .is_some()
                );
                Ok(metadata)
            }
            Err(e) => {
                cache.failed = Some((Instant::now(), e.to_string()));
                Err(e)
            }
        }
    }

    /// Fetches the discovery document and the key set again: done when a login starts, so
    /// a provider that is down answers 503 at once (before anyone is sent to it), and a
    /// rotated key set or a newly offered device flow is seen.
    pub fn rediscover(&self) -> Result<Arc<Metadata>, SsoError> {
        {
            let mut cache = self.cache();
            cache.metadata = None;
            cache.failed = None;
        }
        self.metadata()
    }

    /// Whether the provider offers the device authorization grant.
    pub fn has_device_flow(&self) -> Result<bool, SsoError> {
        Ok(self
            .metadata()?
            .additional_metadata()
            .device_authorization_endpoint
            .is_some())
    }

    fn client(&self, metadata: &Metadata, redirect: Option<&str>) -> Result<Client, SsoError> {
        let mut client = CoreClient::from_provider_metadata(
            metadata.clone(),
            self.config.client_id.clone(),
            Some(self.config.client_secret.clone()),
        );
        if let Some(url) = redirect {
            let url = RedirectUrl::new(url.to_owned())
                .map_err(|e| SsoError::Config(format!("redirect URL {url}: {e}")))?;
            client = client.set_redirect_uri(url);
        }
        let methods = metadata.token_endpoint_auth_methods_supported();
        let post_only = methods.is_some_and(|m| {
            m.contains(&CoreClientAuthMethod::ClientSecretPost)
                && !m.contains(&CoreClientAuthMethod::ClientSecretBasic)
        });
        if post_only {
            client = client.set_auth_type(AuthType::RequestBody);
        }
        Ok(client)
    }

    fn scopes(&self) -> impl Iterator<Item = Scope> + '_ {
        self.config.scopes.iter().map(|s| Scope::new(s.clone()))
    }

    /// Starts an authorization-code login with PKCE and a nonce, returning to `redirect`.
    pub fn start_code_login(&self, redirect: &str) -> Result<CodeLogin, SsoError> {
        let metadata = self.metadata()?;
        let client = self.client(&metadata, Some(redirect))?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state, nonce) = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scopes(self.scopes())
            .set_pkce_challenge(challenge)
            .url();
        Ok(CodeLogin {
            url: url.to_string(),
            state: state.secret().clone(),
            verifier,
            nonce,
        })
    }

    /// Exchanges an authorization code and verifies the ID token that comes back.
    pub fn finish_code_login(
        &self,
        redirect: &str,
        code: String,
        verifier: PkceCodeVerifier,
        nonce: &Nonce,
    ) -> Result<Identity, SsoError> {
        let metadata = self.metadata()?;
        let client = self.client(&metadata, Some(redirect))?;
        let answer = client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(|e| SsoError::Config(format!("the provider has no token endpoint: {e}")))?
            .set_pkce_verifier(verifier)
            .request(&self.http)
            .map_err(|e| token_failed(&self.config.issuer, error_chain(&e)))?;
        let id_token = answer
            .extra_fields()
            .id_token()
            .ok_or_else(no_id_token)?
            .to_string();
        let identity = self.verify(&id_token, Some(nonce))?;
        self.complete(&metadata, identity, answer.access_token())
    }

    /// Asks the provider for a device code (RFC 8628 3.1).
    pub fn start_device_login(&self) -> Result<CoreDeviceAuthorizationResponse, SsoError> {
        let metadata = self.metadata()?;
        let Some(url) = metadata
            .additional_metadata()
            .device_authorization_endpoint
            .clone()
        else {
            return Err(SsoError::Config(
                "the provider offers no device authorization endpoint".into(),
            ));
        };
        self.client(&metadata, None)?
            .set_device_authorization_url(url)
            .exchange_device_code()
            .add_scopes(self.scopes())
            .request(&self.http)
            .map_err(|e| unavailable(&self.config.issuer, "device authorization", error_chain(&e)))
    }

    /// Polls the token endpoint until the person approves, refuses or the code expires
    /// (blocks; run it on its own thread), then verifies the ID token.
    pub fn finish_device_login(
        &self,
        details: &CoreDeviceAuthorizationResponse,
        limit: Duration,
    ) -> Result<Identity, SsoError> {
        let metadata = self.metadata()?;
        let url = metadata
            .additional_metadata()
            .device_authorization_endpoint
            .clone()
            .ok_or_else(|| SsoError::Config("the device endpoint went away".into()))?;
        let answer = self
            .client(&metadata, None)?
            .set_device_authorization_url(url)
            .exchange_device_access_token(details)
            .map_err(|e| SsoError::Config(format!("the provider has no token endpoint: {e}")))?
            .request(&self.http, std::thread::sleep, Some(limit))
            .map_err(|e| token_failed(&self.config.issuer, error_chain(&e)))?;
        let id_token = answer
            .extra_fields()
            .id_token()
            .ok_or_else(no_id_token)?
            .to_string();
        let identity = self.verify(&id_token, None)?;
        self.complete(&metadata, identity, answer.access_token())
    }

    /// Asks the userinfo endpoint for what the ID token left out (the email or the groups),
    /// checking that it speaks of the same `sub`; the token's own claims always win
    /// ([`Identity::completed_by`]). Without a userinfo endpoint, the token is all there is.
    fn complete(
        &self,
        metadata: &Metadata,
        identity: Identity,
        access_token: &AccessToken,
    ) -> Result<Identity, SsoError> {
        if !identity.needs_userinfo() || metadata.userinfo_endpoint().is_none() {
            return Ok(identity);
        }
        let client = self.client(metadata, None)?;
        let request = client
            .user_info(
                access_token.clone(),
                Some(SubjectIdentifier::new(identity.subject.clone())),
            )
            .map_err(|e| SsoError::Config(format!("the provider's userinfo endpoint: {e}")))?;
        let claims: UserInfoClaims<GroupsClaim, CoreGenderClaim> =
            request.request(&self.http).map_err(|e| match e {
                UserInfoError::Request(e) => {
                    unavailable(&self.config.issuer, "userinfo", error_chain(&e))
                }
                other => SsoError::Token(format!(
                    "the provider's userinfo answer for {} is not acceptable ({}): a token for \
                     another person, or a provider misconfigured",
                    identity.label(),
                    error_chain(&other)
                )),
            })?;
        let info = UserInfo {
            email: claims.email().map(|e| e.to_string()),
            email_verified: claims.email_verified() == Some(true),
            groups: claims.additional_claims().groups.clone(),
        };
        log::info!(
            "the ID token of {} named no {}: read from the provider's userinfo endpoint",
            identity.label(),
            if identity.email.is_none() {
                "email"
            } else {
                "groups"
            }
        );
        Ok(identity.completed_by(info))
    }

    /// Verifies an ID token, fetching the key set again once when it names an unknown key.
    pub fn verify(&self, id_token: &str, nonce: Option<&Nonce>) -> Result<Identity, SsoError> {
        let keys = self.keys()?;
        let expect = Expect {
            issuer: &self.config.issuer,
            client_id: &self.config.client_id,
            client_secret: &self.config.client_secret,
            nonce,
        };
        match verify::verify(id_token, &keys, &expect, SystemTime::now()) {
            Ok(who) => Ok(who),
            Err(TokenRefused::UnknownKey) => {
                let keys = self.refetch_keys()?;
                verify::verify(id_token, &keys, &expect, SystemTime::now())
                    .map_err(|e| SsoError::Token(e.to_string()))
            }
            Err(e) => Err(SsoError::Token(e.to_string())),
        }
    }

    fn keys(&self) -> Result<Arc<CoreJsonWebKeySet>, SsoError> {
        self.metadata()?;
        let cache = self.cache();
        Ok(cache.keys.clone().unwrap_or_default())
    }

    fn refetch_keys(&self) -> Result<Arc<CoreJsonWebKeySet>, SsoError> {
        let metadata = self.metadata()?;
        {
            let cache = self.cache();
            if let (Some(keys), Some(at)) = (&cache.keys, cache.keys_fetched) {
                if at.elapsed() < JWKS_REFETCH_INTERVAL {
                    return Ok(keys.clone());
                }
            }
        }
        let fresh: CoreJsonWebKeySet = JsonWebKeySet::fetch(metadata.jwks_uri(), &self.http)
            .map_err(|e| unavailable(&self.config.issuer, "key set", error_chain(&e)))?;
        log::info!(
            "fetched the key set of {} again ({} keys): a token named a key it did not hold",
            self.issuer(),
            fresh.keys().len()
        );
        let fresh = Arc::new(fresh);
        let mut cache = self.cache();
        cache.keys = Some(fresh.clone());
        cache.keys_fetched = Some(Instant::now());
        Ok(fresh)
    }
}

fn no_id_token() -> SsoError {
    SsoError::Token(
        "the provider answered without an ID token: is the `openid` scope allowed for this \
         client?"
            .into(),
    )
}

/// A token request the provider refused (a used or expired code, a wrong secret) is the
/// person's or the configuration's problem; one that never got an answer is 503.
fn token_failed(issuer: &IssuerUrl, why: String) -> SsoError {
    if why.contains("Server returned error response") || why.contains("invalid_") {
        SsoError::Token(format!(
            "the identity provider refused the token request ({why}); an expired or already \
             used code needs a new login, an invalid_client a right --oidc-client-secret-file"
        ))
    } else {
        unavailable(issuer, "token request", why)
    }
}

/// An error with its sources, one line.
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
