//! Who may register: the one admission rule every store applies inside its write (the JSON
//! store under its write lock, a replica inside its database transaction), so a single-use
//! token is spent exactly once and a refusal changes nothing.
//!
//! A key the mesh already knows keeps the tags it joined with; a new key needs a usable join
//! token (whose tags it gets) unless the server runs `--open`. A single sign-on login
//! ([`Credential::Identity`]) admits a new or known key when the policy file's identity
//! rules accept the person, with the tags those rules give, and records them as its owner.

use crate::server::sso::identity::{Identity, Owner};
use crate::server::sso::rules::IdentityRules;
use crate::server::tokens::{TokenRecord, TokenStore};
use crate::types::Tag;
use std::time::SystemTime;

/// What a registering machine presents beside its signature.
#[derive(Debug, Clone, Copy)]
pub enum Credential<'a> {
    /// Nothing: only a known key, or any key on an open server.
    None,
    /// A join token's secret (`wgm_...`).
    JoinToken(&'a str),
    /// A finished single sign-on login for this key.
    Identity(&'a IdentityLogin),
}

/// A verified login and the identity rules in force when it was presented.
#[derive(Debug, Clone)]
pub struct IdentityLogin {
    /// Who the provider vouched for.
    pub identity: Identity,
    /// The policy file's `identities` section.
    pub rules: IdentityRules,
}

impl<'a> Credential<'a> {
    /// The credential of a register request's optional `token` field.
    pub fn from_token(token: Option<&'a str>) -> Credential<'a> {
        token.map_or(Credential::None, Credential::JoinToken)
    }
}

/// The server-wide admission settings.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// `--open`: new keys may join without a token (labs only).
    pub open: bool,
}

/// A registration that may go ahead.
#[derive(Debug, Clone, PartialEq)]
pub struct Admitted {
    /// The tags a new key joins with; None keeps a known key's tags.
    pub tags: Option<Vec<Tag>>,
    /// The token redeemed for it (already counted down in the store passed in), to be
    /// saved in the same write as the registration.
    pub token: Option<TokenRecord>,
    /// The owner a single sign-on login records (its tags replace the stored ones).
    pub owner: Option<Owner>,
}

/// A refused registration: the HTTP status and what to do about it. Audited as an
/// authentication failure.
#[derive(Debug, Clone, PartialEq)]
pub struct Denied {
    /// 401 for a missing or unknown token, 403 for an expired, revoked or used-up one.
    pub status: u16,
    /// What was wrong and how to fix it.
    pub why: String,
}

/// Whether admitting this caller may redeem a token, so the store must load its tokens
/// first (a known key or a token-less request never touches them).
pub fn spends_token(known: bool, credential: Credential<'_>) -> bool {
    !known && matches!(credential, Credential::JoinToken(_))
}

/// Decides whether a key may register. `known` says whether the registry already holds the
/// key; `tokens` is the token set as of this write, changed in place when a token is
/// redeemed (the caller saves the returned record with the registration, or nothing).
pub fn admit(
    rules: Rules,
    known: bool,
    credential: Credential<'_>,
    tokens: &mut TokenStore,
    now: SystemTime,
) -> Result<Admitted, Denied> {
    match credential {
        Credential::Identity(login) => {
            let tags = login.rules.admit(&login.identity).map_err(|e| Denied {
                status: 403,
                why: e.0,
            })?;
            Ok(Admitted {
                tags: Some(tags),
                token: None,
                owner: Some(Owner::from_identity(&login.identity, now)),
            })
        }
        _ if known => Ok(Admitted {
            tags: None,
            token: None,
            owner: None,
        }),
        Credential::None if rules.open => Ok(Admitted {
            tags: Some(Vec::new()),
            token: None,
            owner: None,
        }),
        Credential::None => Err(Denied {
            status: 401,
            why: "a join token is required to register a new key: pass --token \
                  (create one with `wgmesh token create` on the server), or log in with \
                  `wgmesh up --login` where the server offers single sign-on"
                .to_owned(),
        }),
        Credential::JoinToken(secret) => {
            let record = tokens.redeem_record(secret, now).map_err(|e| Denied {
                status: e.http_status(),
                why: e.to_string(),
            })?;
            Ok(Admitted {
                tags: Some(record.tags.clone()),
                token: Some(record.clone()),
                owner: None,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with_token(uses: Option<u32>) -> (TokenStore, String) {
        let mut store = TokenStore::new();
        let tags = vec!["tag:dev".parse().unwrap()];
        let (secret, _) = store
            .create(uses, None, tags, SystemTime::now())
            .expect("a token");
        (store, secret)
    }

    #[test]
    fn a_known_key_keeps_its_tags_and_spends_nothing() {
        let (mut store, secret) = store_with_token(Some(1));
        let before = store.clone();
        let rules = Rules { open: false };
        let got = admit(
            rules,
            true,
            Credential::JoinToken(&secret),
            &mut store,
            SystemTime::now(),
        )
        .unwrap();
        assert_eq!(got.tags, None);
        assert_eq!(got.token, None);
        assert_eq!(store.list(), before.list());
    }

    fn login(email: &str, groups: &[&str]) -> IdentityLogin {
        IdentityLogin {
            identity: Identity {
                issuer: "https://id.example.com".into(),
                subject: "sub-1".into(),
                email: Some(email.into()),
                email_verified: true,
                groups: groups.iter().map(|g| g.to_string()).collect(),
            },
            rules: serde_json::from_str(
                r#"{"join": [{"email_domain": "example.com", "tags": ["tag:staff"]},
                             {"group": "ops", "tags": ["tag:ops"]}]}"#,
            )
            .unwrap(),
        }
    }

    #[test]
    fn a_login_admits_new_and_known_keys_with_the_tags_of_its_rules() {
        let mut store = TokenStore::new();
        let now = SystemTime::now();
        let rules = Rules { open: false };
        let ann = login("ann@example.com", &["ops"]);
        for known in [false, true] {
            let got = admit(rules, known, Credential::Identity(&ann), &mut store, now).unwrap();
            let tags: Vec<String> = got.tags.unwrap().iter().map(|t| t.to_string()).collect();
            assert_eq!(tags, ["tag:ops", "tag:staff"]);
            let owner = got.owner.unwrap();
            assert_eq!(owner.email.as_deref(), Some("ann@example.com"));
            assert_eq!((owner.subject.as_str(), owner.logged_in_at), ("sub-1", now));
        }
    }

    #[test]
    fn a_login_the_rules_refuse_is_403_naming_them() {
        let mut store = TokenStore::new();
        let eve = login("eve@elsewhere.test", &[]);
        let denied = admit(
            Rules { open: true },
            true,
            Credential::Identity(&eve),
            &mut store,
            SystemTime::now(),
        )
        .unwrap_err();
        assert_eq!(denied.status, 403);
        assert!(denied.why.contains("identities.join[0]"), "{}", denied.why);
    }

    #[test]
    fn a_new_key_needs_a_token_unless_the_server_is_open() {
        let mut store = TokenStore::new();
        let now = SystemTime::now();
        let closed = admit(
            Rules { open: false },
            false,
            Credential::None,
            &mut store,
            now,
        );
        let denied = closed.unwrap_err();
        assert_eq!(denied.status, 401);
        assert!(
            denied.why.contains("join token is required"),
            "{}",
            denied.why
        );
        let open = admit(
            Rules { open: true },
            false,
            Credential::None,
            &mut store,
            now,
        );
        assert_eq!(open.unwrap().tags, Some(Vec::new()));
    }

    #[test]
    fn a_token_gives_its_tags_once_and_is_then_used_up() {
        let (mut store, secret) = store_with_token(Some(1));
        let now = SystemTime::now();
        let rules = Rules { open: false };
        let first = admit(
            rules,
            false,
            Credential::JoinToken(&secret),
            &mut store,
            now,
        )
        .unwrap();
        assert_eq!(first.tags, Some(vec!["tag:dev".parse().unwrap()]));
        assert_eq!(first.token.unwrap().uses_left, Some(0));
        let again = admit(
            rules,
            false,
            Credential::JoinToken(&secret),
            &mut store,
            now,
        );
        assert_eq!(again.unwrap_err().status, 403);
        let wrong = admit(
            rules,
            false,
            Credential::JoinToken("wgm_x"),
            &mut store,
            now,
        );
        assert_eq!(wrong.unwrap_err().status, 401);
    }
}
