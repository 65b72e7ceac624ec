//! Join tokens: the pre-shared secrets that let a new machine register at all.
//!
//! Without them, anyone who can reach the server could register a key and be handed the
//! mesh's peer list. An operator creates a token (`wgm_` + 43 base64url characters, shown
//! exactly once), copies it to the new machine, and the machine presents it when it first
//! registers. The server keeps only SHA-256 hashes, so a leaked token file lets nobody join.
//! Each token may be limited in uses and lifetime, may be revoked, and carries the [`Tag`]s
//! its machines get, which the policy (`crate::server::policy`) uses to decide who sees whom.
//!
//! Persistence is the caller's job: [`TokenStore`] is plain serde data kept in memory.

use crate::types::{describe, InvalidValue};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};
use subtle::ConstantTimeEq;

/// Every token starts with this, so a token pasted in the wrong place is recognisable (and
/// secret scanners can match it).
pub const TOKEN_PREFIX: &str = "wgm_";

/// Random bytes in a token: 256 bits, so guessing is hopeless and a fast hash is enough to
/// store it (a slow password hash only helps against low-entropy secrets).
pub const TOKEN_SECRET_LEN: usize = 32;

/// The longest `--expires` accepted. Past this, a lifetime stops meaning anything (omit
/// `--expires` for a token that never expires), and RFC 3339 formatting stays in range.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

const TAG_PREFIX: &str = "tag:";
const TAG_MAX_NAME: usize = 63;
const ID_PREFIX: &str = "tok-";
const ID_HEX_LEN: usize = 12;

/// A label given to machines through the token they joined with, e.g. `tag:db`: the unit the
/// access policy is written in. Only `tag:` followed by 1-63 of `[a-z0-9-]` is accepted, so a
/// tag is safe in logs, JSON, and command lines, and `tag:DB` vs `tag:db` cannot be confused.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    /// The validated text, `tag:` prefix included.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Tag, InvalidValue> {
        let ok = s.strip_prefix(TAG_PREFIX).is_some_and(|name| {
            !name.is_empty()
                && name.len() <= TAG_MAX_NAME
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
        if ok {
            Ok(Tag(s.to_owned()))
        } else {
            Err(InvalidValue(format!(
                "{} is not a tag: tags look like tag:name, with 1-{TAG_MAX_NAME} lowercase \
                 letters, digits or '-' after the colon (e.g. tag:db)",
                describe(s)
            )))
        }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tag({:?})", self.0)
    }
}

impl Serialize for Tag {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Tag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The short public name of a token (`tok-` + 12 hex digits), for `token list` and
/// `token revoke`. It is random, not derived from the secret, so showing it reveals nothing.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenId(String);

impl TokenId {
    /// The validated text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn random() -> TokenId {
        let mut bytes = [0u8; ID_HEX_LEN / 2];
        getrandom::fill(&mut bytes).expect("the operating system's random source failed");
        TokenId(format!("{ID_PREFIX}{}", hex::encode(bytes)))
    }
}

impl FromStr for TokenId {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<TokenId, InvalidValue> {
        let ok = s.strip_prefix(ID_PREFIX).is_some_and(|h| {
            h.len() == ID_HEX_LEN
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        if ok {
            Ok(TokenId(s.to_owned()))
        } else {
            Err(InvalidValue(format!(
                "{} is not a token id: ids look like tok-0123456789ab (see `wgmesh token list`)",
                describe(s)
            )))
        }
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenId({:?})", self.0)
    }
}

impl Serialize for TokenId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TokenId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Why a token was refused or an operation on the store failed. Messages name the token id
/// where it is known and say what to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// The presented text is not shaped like a token at all (truncated paste, wrong value).
    Malformed,
    /// Shaped like a token, but no stored hash matches it.
    Unknown,
    /// The token exists but its lifetime is over.
    Expired {
        /// Which token.
        id: TokenId,
        /// When it expired.
        at: SystemTime,
    },
    /// The token exists but has been redeemed as often as it allowed.
    UsedUp {
        /// Which token.
        id: TokenId,
    },
    /// The token exists but an operator revoked it.
    Revoked {
        /// Which token.
        id: TokenId,
    },
    /// `revoke` named an id that is not in the store.
    NoSuchId(String),
    /// `create` was asked for a token with zero uses, which could never be redeemed.
    ZeroUses,
    /// An `--expires` value that is not a usable duration; the text says why.
    BadExpiry(String),
}

impl TokenError {
    /// The HTTP status to answer with: 401 when the caller did not present a valid token, 403
    /// when the token is genuine but no longer usable, 404/400 for operator mistakes.
    pub fn http_status(&self) -> u16 {
        match self {
            TokenError::Malformed | TokenError::Unknown => 401,
            TokenError::Expired { .. } | TokenError::UsedUp { .. } | TokenError::Revoked { .. } => {
                403
            }
            TokenError::NoSuchId(_) => 404,
            TokenError::ZeroUses | TokenError::BadExpiry(_) => 400,
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Malformed => write!(
                f,
                "join token is malformed: tokens look like {TOKEN_PREFIX} followed by 43 \
                 characters of base64url; copy it whole"
            ),
            TokenError::Unknown => f.write_str(
                "unknown join token: this server never issued it (or lost its token file); \
                 create one with `wgmesh token create`",
            ),
            TokenError::Expired { id, at } => write!(
                f,
                "join token {id} expired at {}: create a new one",
                crate::time::format_exact(*at)
            ),
            TokenError::UsedUp { id } => write!(
                f,
                "join token {id} has no uses left: create a new one, or one with more --uses"
            ),
            TokenError::Revoked { id } => {
                write!(f, "join token {id} was revoked by an operator")
            }
            TokenError::NoSuchId(id) => write!(
                f,
                "no token with id {} (see `wgmesh token list`)",
                describe(id)
            ),
            TokenError::ZeroUses => {
                f.write_str("a token with 0 uses could never be redeemed: use --uses 1 or more")
            }
            TokenError::BadExpiry(why) => write!(f, "bad expiry: {why}"),
        }
    }
}

impl std::error::Error for TokenError {}

/// Parses an `--expires` value such as `7d`, `12h` or `30m` (humantime syntax).
///
/// Zero and anything beyond [`MAX_TOKEN_LIFETIME`] are refused: the first would create a
/// token that is dead on arrival, the second is almost certainly a typo.
pub fn parse_expiry(text: &str) -> Result<Duration, TokenError> {
    let d = humantime::parse_duration(text.trim()).map_err(|e| {
        TokenError::BadExpiry(format!(
            "{} is not a duration ({e}); write e.g. 7d, 12h or 30m",
            describe(text)
        ))
    })?;
    if d.is_zero() {
        return Err(TokenError::BadExpiry(
            "a lifetime of 0 would expire the token immediately".to_owned(),
        ));
    }
    if d > MAX_TOKEN_LIFETIME {
        return Err(TokenError::BadExpiry(format!(
            "{} is longer than 10 years; omit --expires for a token that never expires",
            describe(text)
        )));
    }
    Ok(d)
}

/// What the server remembers about one token. The secret itself is never stored, only its
/// SHA-256, so the token file is not a list of ways in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    /// Public short name for listing and revoking.
    pub id: TokenId,
    /// SHA-256 of the token's 32 secret bytes (hex in the file).
    #[serde(with = "hex32")]
    pub hash: [u8; 32],
    /// Redemptions left; `None` = unlimited (e.g. for an auto-scaling group).
    pub uses_left: Option<u32>,
    /// When the token stops working; `None` = never.
    #[serde(with = "crate::time::rfc3339_exact_opt")]
    pub expires_at: Option<SystemTime>,
    /// Tags given to every machine that joins with this token, sorted and without duplicates.
    pub tags: Vec<Tag>,
    /// When it was created, for `token list` and audits.
    #[serde(with = "crate::time::rfc3339_exact")]
    pub created_at: SystemTime,
    /// Set by `revoke`; the record is kept so the id stays meaningful in the audit log.
    pub revoked: bool,
}

impl TokenRecord {
    /// Whether this token could be redeemed at `now`, and if not, why. Used by `redeem` and
    /// by `token list` to show a status column.
    pub fn check(&self, now: SystemTime) -> Result<(), TokenError> {
        if self.revoked {
            return Err(TokenError::Revoked {
                id: self.id.clone(),
            });
        }
        if let Some(at) = self.expires_at {
            if now >= at {
                return Err(TokenError::Expired {
                    id: self.id.clone(),
                    at,
                });
            }
        }
        if self.uses_left == Some(0) {
            return Err(TokenError::UsedUp {
                id: self.id.clone(),
            });
        }
        Ok(())
    }
}

/// All tokens the server knows, as serde data the caller persists (e.g. as JSON next to the
/// registry, file mode 0600). Not internally locked: the server keeps it behind its own lock,
/// since `redeem` must decrement and persist atomically with the registration it allows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenStore {
    tokens: Vec<TokenRecord>,
}

fn hash_secret(secret: &[u8; TOKEN_SECRET_LEN]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

fn parse_secret(text: &str) -> Result<[u8; TOKEN_SECRET_LEN], TokenError> {
    let body = text
        .trim()
        .strip_prefix(TOKEN_PREFIX)
        .ok_or(TokenError::Malformed)?;
    let bytes = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| TokenError::Malformed)?;
    bytes.try_into().map_err(|_| TokenError::Malformed)
}

impl TokenStore {
    /// An empty store: no token exists, so nobody can join until an operator creates one.
    pub fn new() -> TokenStore {
        TokenStore::default()
    }

    /// Creates a token and returns its secret text (show it once, then forget it) and the
    /// stored record. `uses: None` means unlimited, `expires: None` never expires. Tags are
    /// sorted and de-duplicated so equal sets compare equal.
    pub fn create(
        &mut self,
        uses: Option<u32>,
        expires: Option<Duration>,
        mut tags: Vec<Tag>,
        now: SystemTime,
    ) -> Result<(String, TokenRecord), TokenError> {
        if uses == Some(0) {
            return Err(TokenError::ZeroUses);
        }
        let expires_at = match expires {
            None => None,
            Some(d) if d.is_zero() || d > MAX_TOKEN_LIFETIME => {
                return Err(TokenError::BadExpiry(format!(
                    "lifetime must be between 1 s and 10 years, not {}",
                    humantime::format_duration(d)
                )))
            }
            Some(d) => Some(now.checked_add(d).ok_or_else(|| {
                TokenError::BadExpiry("expiry is beyond what the clock can represent".into())
            })?),
        };
        tags.sort();
        tags.dedup();

        let mut secret = [0u8; TOKEN_SECRET_LEN];
        getrandom::fill(&mut secret).expect("the operating system's random source failed");
        let mut id = TokenId::random();
        while self.tokens.iter().any(|t| t.id == id) {
            id = TokenId::random();
        }
        let record = TokenRecord {
            id,
            hash: hash_secret(&secret),
            uses_left: uses,
            expires_at,
            tags,
            created_at: now,
            revoked: false,
        };
        self.tokens.push(record.clone());
        let text = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(secret));
        Ok((text, record))
    }

    /// Redeems a token for one registration: returns the tags the new machine gets and uses
    /// up one use. The hash is compared against every record in constant time (no early
    /// exit), so response timing says nothing about how close a guess was. A refused token
    /// loses no use.
    pub fn redeem(&mut self, secret: &str, now: SystemTime) -> Result<Vec<Tag>, TokenError> {
        self.redeem_record(secret, now).map(|r| r.tags.clone())
    }

    /// Like [`TokenStore::redeem`] but returns the whole (updated) record, so the server can
    /// write the token id into the audit log next to the new peer.
    pub fn redeem_record(
        &mut self,
        secret: &str,
        now: SystemTime,
    ) -> Result<&TokenRecord, TokenError> {
        let presented = hash_secret(&parse_secret(secret)?);
        let mut found = None;
        for (i, record) in self.tokens.iter().enumerate() {
            if bool::from(record.hash.ct_eq(&presented)) {
                found = Some(i);
            }
        }
        let record = &mut self.tokens[found.ok_or(TokenError::Unknown)?];
        record.check(now)?;
        if let Some(n) = record.uses_left.as_mut() {
            *n -= 1;
        }
        Ok(record)
    }

    /// Revokes a token by id so it can never be redeemed again. Machines that already joined
    /// with it stay (removing them is a separate decision). Revoking twice is not an error.
    pub fn revoke(&mut self, id: &str) -> Result<&TokenRecord, TokenError> {
        let record = self
            .tokens
            .iter_mut()
            .find(|t| t.id.as_str() == id)
            .ok_or_else(|| TokenError::NoSuchId(id.to_owned()))?;
        record.revoked = true;
        Ok(record)
    }

    /// Every token ever created, in creation order, for `token list`.
    pub fn list(&self) -> &[TokenRecord] {
        &self.tokens
    }
}

mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        let bad = || serde::de::Error::custom("token hash must be 64 lowercase hex digits");
        if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[i * 2..i * 2 + 2], 16).map_err(|_| bad())?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn tags(list: &[&str]) -> Vec<Tag> {
        list.iter().map(|t| t.parse().unwrap()).collect()
    }

    #[test]
    fn tags_are_validated() {
        for ok in [
            "tag:db",
            "tag:a",
            "tag:dev-1",
            &format!("tag:{}", "a".repeat(63)),
        ] {
            assert!(ok.parse::<Tag>().is_ok(), "{ok}");
        }
        for bad in [
            "db",
            "tag:",
            "tag:DB",
            "tag:a b",
            "tag:a_b",
            "tag:a:b",
            "TAG:db",
            "tag:db\n",
            "*",
            &format!("tag:{}", "a".repeat(64)),
        ] {
            let err = bad.parse::<Tag>().unwrap_err();
            assert!(err.0.contains("is not a tag"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn created_token_redeems_to_its_tags_and_is_stored_only_hashed() {
        let mut store = TokenStore::new();
        let (secret, record) = store
            .create(None, None, tags(&["tag:web", "tag:dev", "tag:web"]), now())
            .unwrap();
        assert!(secret.starts_with(TOKEN_PREFIX));
        assert_eq!(secret.len(), TOKEN_PREFIX.len() + 43);
        assert!(record.id.as_str().parse::<TokenId>().is_ok());
        assert_eq!(record.tags, tags(&["tag:dev", "tag:web"]));

        let json = serde_json::to_string(&store).unwrap();
        assert!(!json.contains(&secret[TOKEN_PREFIX.len()..]), "{json}");
        let mut back: TokenStore = serde_json::from_str(&json).unwrap();
        assert_eq!(back, store);

        for _ in 0..3 {
            assert_eq!(
                back.redeem(&secret, now()).unwrap(),
                tags(&["tag:dev", "tag:web"])
            );
        }
    }

    #[test]
    fn uses_are_counted_down_then_refused() {
        let mut store = TokenStore::new();
        let (secret, record) = store.create(Some(2), None, vec![], now()).unwrap();
        store.redeem(&secret, now()).unwrap();
        assert_eq!(store.list()[0].uses_left, Some(1));
        store.redeem(&secret, now()).unwrap();
        let err = store.redeem(&secret, now()).unwrap_err();
        assert_eq!(err, TokenError::UsedUp { id: record.id });
        assert_eq!(err.http_status(), 403);
        assert!(err.to_string().contains("no uses left"), "{err}");
        assert_eq!(store.list()[0].uses_left, Some(0));
    }

    #[test]
    fn expired_tokens_are_refused() {
        let mut store = TokenStore::new();
        let d = parse_expiry("7d").unwrap();
        assert_eq!(d, Duration::from_secs(7 * 86400));
        let (secret, record) = store.create(Some(5), Some(d), vec![], now()).unwrap();
        store
            .redeem(&secret, now() + d - Duration::from_secs(1))
            .unwrap();
        let err = store.redeem(&secret, now() + d).unwrap_err();
        assert!(matches!(err, TokenError::Expired { ref id, .. } if *id == record.id));
        let msg = err.to_string();
        assert!(msg.contains("expired at 2027-01-22T08:00:00Z"), "{msg}");
        assert_eq!(
            store.list()[0].uses_left,
            Some(4),
            "refused redeem uses nothing"
        );
    }

    #[test]
    fn revoked_tokens_are_refused() {
        let mut store = TokenStore::new();
        let (secret, record) = store.create(None, None, vec![], now()).unwrap();
        store.revoke(record.id.as_str()).unwrap();
        store.revoke(record.id.as_str()).unwrap();
        let err = store.redeem(&secret, now()).unwrap_err();
        assert_eq!(err, TokenError::Revoked { id: record.id });
        assert_eq!(err.http_status(), 403);
        let err = store.revoke("tok-000000000000").unwrap_err();
        assert_eq!(err.http_status(), 404);
    }

    #[test]
    fn unknown_and_malformed_tokens_are_refused() {
        let mut store = TokenStore::new();
        let (secret, _) = store.create(None, None, vec![], now()).unwrap();
        let mut other = TokenStore::new();
        let (foreign, _) = other.create(None, None, vec![], now()).unwrap();
        assert_eq!(store.redeem(&foreign, now()), Err(TokenError::Unknown));
        for bad in [
            "",
            "wgm_",
            &secret[..secret.len() - 1],
            &secret[TOKEN_PREFIX.len()..],
            "wgm_!!!!",
        ] {
            let err = store.redeem(bad, now()).unwrap_err();
            assert_eq!(err, TokenError::Malformed, "{bad:?}");
            assert_eq!(err.http_status(), 401);
        }
        // Surrounding whitespace from a paste is fine.
        store.redeem(&format!("  {secret}\n"), now()).unwrap();
    }

    #[test]
    fn redeem_picks_the_right_token_among_many() {
        let mut store = TokenStore::new();
        let made: Vec<_> = (0..20)
            .map(|i| {
                let tag = format!("tag:t{i}");
                store.create(None, None, tags(&[&tag]), now()).unwrap()
            })
            .collect();
        for (i, (secret, record)) in made.iter().enumerate() {
            assert_eq!(store.redeem_record(secret, now()).unwrap().id, record.id);
            assert_eq!(
                store.redeem(secret, now()).unwrap(),
                tags(&[&format!("tag:t{i}")])
            );
        }
    }

    #[test]
    fn creation_refuses_useless_tokens() {
        let mut store = TokenStore::new();
        assert_eq!(
            store.create(Some(0), None, vec![], now()).unwrap_err(),
            TokenError::ZeroUses
        );
        assert!(store
            .create(None, Some(Duration::ZERO), vec![], now())
            .is_err());
        assert!(store.list().is_empty());
    }

    #[test]
    fn expiry_parsing() {
        assert_eq!(parse_expiry("12h").unwrap(), Duration::from_secs(12 * 3600));
        assert_eq!(parse_expiry(" 30m ").unwrap(), Duration::from_secs(1800));
        for bad in ["", "0s", "soon", "7", "-1d", "11y"] {
            let err = parse_expiry(bad).unwrap_err();
            assert!(matches!(err, TokenError::BadExpiry(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn store_file_is_parsed_strictly() {
        let mut store = TokenStore::new();
        store
            .create(Some(1), Some(Duration::from_secs(60)), vec![], now())
            .unwrap();
        let mut value = serde_json::to_value(&store).unwrap();
        assert_eq!(value["tokens"][0]["expires_at"], "2027-01-15T08:01:00Z");
        value["tokens"][0]["extra"] = serde_json::json!(1);
        assert!(serde_json::from_value::<TokenStore>(value).is_err());
    }
}
