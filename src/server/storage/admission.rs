//! Who may register: the one admission rule every store applies inside its write (the JSON
//! store under its write lock, a replica inside its database transaction), so a single-use
//! token is spent exactly once and a refusal changes nothing.
//!
//! A key the mesh already knows keeps the tags it joined with; a new key needs a usable join
//! token (whose tags it gets) unless the server runs `--open`.

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
        _ if known => Ok(Admitted {
            tags: None,
            token: None,
        }),
        Credential::None if rules.open => Ok(Admitted {
            tags: Some(Vec::new()),
            token: None,
        }),
        Credential::None => Err(Denied {
            status: 401,
            why: "a join token is required to register a new key: pass --token \
                  (create one with `wgmesh token create` on the server)"
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
