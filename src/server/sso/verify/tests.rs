//! Forged and broken ID tokens, signed here with throwaway RSA keys (testdata/, test use
//! only), against the verifier the server uses.

use super::*;
use openidconnect::core::{CoreJsonWebKey, CoreRsaPrivateSigningKey};
use openidconnect::{
    Audience, EndUserEmail, IdTokenClaims, JsonWebKeyId, JsonWebKeySet, PrivateSigningKey,
    StandardClaims, SubjectIdentifier,
};

const KEY_A: &str = include_str!("../testdata/rsa_a.pem");
const KEY_B: &str = include_str!("../testdata/rsa_b.pem");
const ISSUER: &str = "https://id.example.com/realms/staff";
const CLIENT: &str = "wgmesh";

fn key(pem: &str, kid: &str) -> CoreRsaPrivateSigningKey {
    CoreRsaPrivateSigningKey::from_pem(pem, Some(JsonWebKeyId::new(kid.into()))).unwrap()
}

fn key_set(keys: &[&CoreRsaPrivateSigningKey]) -> CoreJsonWebKeySet {
    let public: Vec<CoreJsonWebKey> = keys.iter().map(|k| k.as_verification_key()).collect();
    JsonWebKeySet::new(public)
}

struct Claims {
    audience: &'static str,
    issued: SystemTime,
    lifetime: Duration,
    nonce: &'static str,
}

fn good() -> Claims {
    Claims {
        audience: CLIENT,
        issued: SystemTime::now(),
        lifetime: Duration::from_secs(300),
        nonce: "n-123",
    }
}

fn sign(signer: &CoreRsaPrivateSigningKey, c: &Claims) -> String {
    let claims = IdTokenClaims::new(
        IssuerUrl::new(ISSUER.into()).unwrap(),
        vec![Audience::new(c.audience.into())],
        chrono::DateTime::<chrono::Utc>::from(c.issued + c.lifetime),
        chrono::DateTime::<chrono::Utc>::from(c.issued),
        StandardClaims::new(SubjectIdentifier::new("user-1".into()))
            .set_email(Some(EndUserEmail::new("ann@example.com".into())))
            .set_email_verified(Some(true)),
        GroupsClaim {
            groups: vec!["/engineering".into()],
        },
    )
    .set_nonce(Some(Nonce::new(c.nonce.into())));
    GroupsIdToken::new(
        claims,
        signer,
        CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
        None,
        None,
    )
    .unwrap()
    .to_string()
}

fn check(token: &str, keys: &CoreJsonWebKeySet) -> Result<Identity, TokenRefused> {
    let issuer = IssuerUrl::new(ISSUER.into()).unwrap();
    let client_id = ClientId::new(CLIENT.into());
    let secret = ClientSecret::new("s3cret".into());
    let nonce = Nonce::new("n-123".into());
    let expect = Expect {
        issuer: &issuer,
        client_id: &client_id,
        client_secret: &secret,
        nonce: Some(&nonce),
    };
    verify(token, keys, &expect, SystemTime::now())
}

fn refusal(r: Result<Identity, TokenRefused>) -> String {
    r.expect_err("the token must be refused").to_string()
}

#[test]
fn a_genuine_token_gives_its_subject_email_and_groups() {
    let a = key(KEY_A, "a");
    let who = check(&sign(&a, &good()), &key_set(&[&a])).unwrap();
    assert_eq!(who.subject, "user-1");
    assert_eq!(who.email.as_deref(), Some("ann@example.com"));
    assert!(who.email_verified);
    assert_eq!(who.groups, ["/engineering"]);
    assert_eq!(who.issuer, ISSUER);
}

#[test]
fn a_token_signed_with_another_key_under_a_known_kid_is_refused() {
    let a = key(KEY_A, "a");
    let forger = key(KEY_B, "a");
    let why = refusal(check(&sign(&forger, &good()), &key_set(&[&a])));
    assert!(why.contains("signature does not verify"), "{why}");
}

#[test]
fn a_token_under_an_unknown_kid_asks_for_the_key_set_again() {
    let a = key(KEY_A, "a");
    let rotated = key(KEY_B, "b");
    let token = sign(&rotated, &good());
    assert_eq!(
        check(&token, &key_set(&[&a])).unwrap_err(),
        TokenRefused::UnknownKey
    );
    assert!(check(&token, &key_set(&[&a, &rotated])).is_ok());
}

#[test]
fn a_token_for_another_audience_is_refused() {
    let a = key(KEY_A, "a");
    let claims = Claims {
        audience: "some-other-app",
        ..good()
    };
    let why = refusal(check(&sign(&a, &claims), &key_set(&[&a])));
    assert!(why.contains("another audience"), "{why}");
}

#[test]
fn an_expired_token_is_refused_naming_the_clock() {
    let a = key(KEY_A, "a");
    let claims = Claims {
        issued: SystemTime::now() - Duration::from_secs(3600),
        ..good()
    };
    let why = refusal(check(&sign(&a, &claims), &key_set(&[&a])));
    assert!(why.contains("expired") && why.contains("NTP"), "{why}");
}

#[test]
fn small_clock_skew_is_tolerated_and_a_token_from_the_future_is_not() {
    let a = key(KEY_A, "a");
    let keys = key_set(&[&a]);
    let just_expired = Claims {
        issued: SystemTime::now() - Duration::from_secs(330),
        ..good()
    };
    assert!(check(&sign(&a, &just_expired), &keys).is_ok());
    let early = Claims {
        issued: SystemTime::now() + Duration::from_secs(60),
        ..good()
    };
    assert!(check(&sign(&a, &early), &keys).is_ok());
    let future = Claims {
        issued: SystemTime::now() + Duration::from_secs(3600),
        lifetime: Duration::from_secs(7200),
        ..good()
    };
    let why = refusal(check(&sign(&a, &future), &keys));
    assert!(why.contains("in the future"), "{why}");
}

#[test]
fn a_token_with_another_logins_nonce_is_refused() {
    let a = key(KEY_A, "a");
    let claims = Claims {
        nonce: "somebody-else",
        ..good()
    };
    let why = refusal(check(&sign(&a, &claims), &key_set(&[&a])));
    assert!(why.contains("nonce"), "{why}");
}

#[test]
fn a_token_that_is_not_a_jwt_is_refused() {
    let a = key(KEY_A, "a");
    let why = refusal(check("not.a.token", &key_set(&[&a])));
    assert!(why.contains("not a valid JWT"), "{why}");
}

#[test]
fn groups_sent_as_one_string_are_read_as_one_group() {
    let c: GroupsClaim = serde_json::from_str(r#"{"groups": "admins"}"#).unwrap();
    assert_eq!(c.groups, ["admins"]);
    let c: GroupsClaim = serde_json::from_str(r#"{}"#).unwrap();
    assert!(c.groups.is_empty());
}
