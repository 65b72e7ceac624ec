//! ID token verification as OpenID Connect Core 3.1.3.7 says, done by the `openidconnect`
//! crate (signature against the provider's key set, `iss`, `aud`, `exp`, `nonce`), plus an
//! `iat` that must not lie in the future beyond [`CLOCK_SKEW`]. Pure: the key set and the
//! time come in, so forged tokens are tested without a provider.

use super::identity::Identity;
use openidconnect::core::{
    CoreGenderClaim, CoreJsonWebKeySet, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm,
};
use openidconnect::{
    AdditionalClaims, ClaimsVerificationError, ClientId, ClientSecret, IdToken, IdTokenVerifier,
    IssuerUrl, Nonce, SignatureVerificationError,
};
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

/// How far the provider's clock may be from ours: `exp` is accepted this long after it
/// passed and `iat` this long before it comes.
pub const CLOCK_SKEW: Duration = Duration::from_secs(120);

/// The claims beyond OpenID's standard ones that wgmesh reads: `groups`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GroupsClaim {
    /// The groups, exactly as sent (one string is read as a list of one).
    #[serde(default, deserialize_with = "one_or_many")]
    pub groups: Vec<String>,
}

impl AdditionalClaims for GroupsClaim {}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Groups {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Groups::deserialize(d)? {
        Groups::One(g) => vec![g],
        Groups::Many(gs) => gs,
    })
}

/// An ID token with the `groups` claim.
pub type GroupsIdToken = IdToken<
    GroupsClaim,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;

/// Who the token must be for, and from whom.
#[derive(Debug, Clone)]
pub struct Expect<'a> {
    /// The provider's issuer URL, exactly as discovery gave it.
    pub issuer: &'a IssuerUrl,
    /// Our client id: the only audience accepted.
    pub client_id: &'a ClientId,
    /// Our client secret (for providers that sign with it, HS256).
    pub client_secret: &'a ClientSecret,
    /// The nonce sent with the authorization request; None for the device grant, which
    /// sends none (its device code is the server's own secret).
    pub nonce: Option<&'a Nonce>,
}

/// Why an ID token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenRefused {
    /// The token names a key the key set does not hold: fetch the set again once.
    UnknownKey,
    /// Anything else: what was wrong, for the person and the log.
    Invalid(String),
}

impl fmt::Display for TokenRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenRefused::UnknownKey => f.write_str(
                "the ID token is signed with a key the provider's key set (jwks_uri) does not \
                 hold",
            ),
            TokenRefused::Invalid(why) => f.write_str(why),
        }
    }
}

fn explain(e: ClaimsVerificationError) -> TokenRefused {
    use ClaimsVerificationError as C;
    match e {
        C::SignatureVerification(SignatureVerificationError::NoMatchingKey) => {
            TokenRefused::UnknownKey
        }
        C::SignatureVerification(s) => TokenRefused::Invalid(format!(
            "the ID token's signature does not verify against the provider's keys ({s}): \
             it was not issued by this provider"
        )),
        C::InvalidAudience(why) => TokenRefused::Invalid(format!(
            "the ID token is for another audience ({why}): it was issued to another client \
             than --oidc-client-id"
        )),
        C::InvalidIssuer(why) => TokenRefused::Invalid(format!(
            "the ID token comes from another issuer ({why}): check --oidc-issuer"
        )),
        C::Expired(why) => TokenRefused::Invalid(format!(
            "the ID token has expired ({why}); if it was just issued, the server's or the \
             provider's clock is wrong (allowed skew {} s): check NTP",
            CLOCK_SKEW.as_secs()
        )),
        C::InvalidNonce(why) => TokenRefused::Invalid(format!(
            "the ID token's nonce does not match this login ({why}): a replayed or mixed-up \
             login; start again"
        )),
        other => TokenRefused::Invalid(format!("the ID token is not acceptable: {other}")),
    }
}

/// Verifies `token` against `keys` at time `now` and returns its identity.
pub fn verify(
    token: &str,
    keys: &CoreJsonWebKeySet,
    expect: &Expect<'_>,
    now: SystemTime,
) -> Result<Identity, TokenRefused> {
    let token = GroupsIdToken::from_str(token)
        .map_err(|e| TokenRefused::Invalid(format!("the ID token is not a valid JWT: {e}")))?;
    let lenient_now = chrono::DateTime::<chrono::Utc>::from(now - CLOCK_SKEW);
    let latest_iat = chrono::DateTime::<chrono::Utc>::from(now + CLOCK_SKEW);
    let verifier = IdTokenVerifier::new_confidential_client(
        expect.client_id.clone(),
        expect.client_secret.clone(),
        expect.issuer.clone(),
        keys.clone(),
    )
    .set_time_fn(move || lenient_now)
    .set_issue_time_verifier_fn(move |iat| match iat <= latest_iat {
        true => Ok(()),
        false => Err(format!(
            "the ID token was issued at {iat}, in the future: the server's or the provider's \
             clock is wrong (allowed skew {} s): check NTP",
            CLOCK_SKEW.as_secs()
        )),
    });
    let claims = match expect.nonce {
        Some(nonce) => token.claims(&verifier, nonce),
        None => token.claims(&verifier, |_: Option<&Nonce>| Ok(())),
    }
    .map_err(explain)?;
    Ok(Identity {
        issuer: claims.issuer().to_string(),
        subject: claims.subject().to_string(),
        email: claims.email().map(|e| e.to_string()),
        email_verified: claims.email_verified() == Some(true),
        groups: claims.additional_claims().groups.clone(),
    })
}

#[cfg(test)]
mod tests;
