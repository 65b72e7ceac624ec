//! Logins in progress: each is bound to the machine key that asked for it (or to the
//! console), found again by its id (the machine's polls, the browser page) or by the OAuth
//! `state` (the provider's callback), and forgotten after [`LOGIN_LIFETIME`] or once used.
//!
//! [`LoginTable`] is what the flows need; [`MemoryLogins`] keeps the table in this process
//! (the JSON store's single server), and replicas keep it in their shared database
//! (`storage::replica::sso_logins`), so a login started on one replica is polled, approved
//! and finished on any other: no sticky sessions behind a load balancer (headscale's "node
//! not found in registration cache"). [`StoredLogin`] is a login as such a table keeps it.

use super::identity::Identity;
use super::SsoError;
use crate::keys::PublicKey;
use openidconnect::{Nonce, PkceCodeVerifier};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

pub use super::limits::{LOGIN_LIFETIME, MAX_PENDING};

/// Who a login is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// A machine joining with this key and hostname.
    Machine {
        /// The key the machine signs with; only it may poll or use the login.
        key: PublicKey,
        /// Its hostname, shown on the approval page.
        hostname: String,
    },
    /// A person logging in to the console.
    Console,
}

/// Where a login stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Waiting for the person.
    Waiting,
    /// The provider vouched for this identity.
    Done(Identity),
    /// The login failed: status and reason.
    Failed(u16, String),
}

/// The authorization-code half of a login in flight.
pub struct CodeFlow {
    /// The PKCE verifier for the code exchange.
    pub verifier: PkceCodeVerifier,
    /// The nonce the ID token must carry.
    pub nonce: Nonce,
    /// The redirect URL the login was started with (the exchange must repeat it).
    pub redirect: String,
}

/// The code half as a table keeps it (the verifier and nonce in the clear: whoever reads
/// the table could also read the database the mesh lives in).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCode {
    /// The OAuth `state` the callback names the login by.
    pub state: String,
    /// [`CodeFlow::verifier`].
    pub verifier: String,
    /// [`CodeFlow::nonce`].
    pub nonce: String,
    /// [`CodeFlow::redirect`].
    pub redirect: String,
}

impl StoredCode {
    fn new(state: String, flow: &CodeFlow) -> StoredCode {
        StoredCode {
            state,
            verifier: flow.verifier.secret().clone(),
            nonce: flow.nonce.secret().clone(),
            redirect: flow.redirect.clone(),
        }
    }

    fn flow(&self) -> CodeFlow {
        CodeFlow {
            verifier: PkceCodeVerifier::new(self.verifier.clone()),
            nonce: Nonce::new(self.nonce.clone()),
            redirect: self.redirect.clone(),
        }
    }
}

/// One login as a table keeps it; the rules of each step are its methods, so every table
/// applies the same ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredLogin {
    /// Who it is for.
    pub purpose: Purpose,
    /// The code shown to the person on both screens, to compare.
    pub user_code: String,
    /// Where it stands.
    pub outcome: Outcome,
    /// The authorization-code half, once the person went to the provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<StoredCode>,
}

impl StoredLogin {
    /// A new login, waiting.
    pub fn new(purpose: Purpose, user_code: String) -> StoredLogin {
        StoredLogin {
            purpose,
            user_code,
            outcome: Outcome::Waiting,
            code: None,
        }
    }

    /// Attaches the code half (replacing an earlier one: the person reloaded the page);
    /// false once the login ended.
    pub fn attach_code(&mut self, state: String, flow: &CodeFlow) -> bool {
        if self.outcome != Outcome::Waiting {
            return false;
        }
        self.code = Some(StoredCode::new(state, flow));
        true
    }

    /// Takes the code half, once.
    pub fn take_code(&mut self) -> Option<CodeFlow> {
        self.code.take().map(|c| c.flow())
    }

    /// Records how the login ended; a later outcome does not replace a finished one.
    pub fn finish(&mut self, outcome: Outcome) {
        if self.outcome == Outcome::Waiting {
            self.outcome = outcome;
        }
    }

    /// The identity of a finished machine login, when `key` is its machine's.
    pub fn done_for(&self, key: &PublicKey) -> Option<&Identity> {
        match (&self.purpose, &self.outcome) {
            (Purpose::Machine { key: k, .. }, Outcome::Done(who)) if k == key => Some(who),
            _ => None,
        }
    }
}

/// Where logins in progress are kept. Every step is one atomic change of one login.
pub trait LoginTable: Send + Sync {
    /// Opens a login; its id, or None when [`MAX_PENDING`] are waiting.
    fn open(&self, purpose: Purpose, user_code: String) -> Result<Option<String>, SsoError>;
    /// The purpose, code and outcome of a login, if it is still known.
    fn look(&self, id: &str) -> Result<Option<(Purpose, String, Outcome)>, SsoError>;
    /// Remembers the code half of a login under its OAuth `state` ([`StoredLogin::attach_code`]).
    fn attach_code(&self, id: &str, state: String, flow: CodeFlow) -> Result<bool, SsoError>;
    /// Takes the code half of the login the callback names by `state`, once: a replayed
    /// callback finds nothing.
    fn take_code(&self, state: &str) -> Result<Option<(String, Purpose, CodeFlow)>, SsoError>;
    /// Records how a login ended ([`StoredLogin::finish`]).
    fn finish(&self, id: &str, outcome: Outcome) -> Result<(), SsoError>;
    /// Takes a finished machine login for `key`, once.
    fn take_done(&self, id: &str, key: &PublicKey) -> Result<Option<Identity>, SsoError>;
    /// Removes a login (a console login once its session exists).
    fn remove(&self, id: &str) -> Result<(), SsoError>;
}

/// A random URL-safe id with 128 bits of entropy.
pub fn random_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    hex::encode(bytes)
}

/// A short code for people to compare across screens: 8 letters from an alphabet without
/// look-alikes, shown as `ABCD-EFGH`.
pub fn short_code() -> String {
    const ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    let letters: String = bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect();
    format!("{}-{}", &letters[..4], &letters[4..])
}

/// The table in this process's memory: a restart forgets it (the agent then starts a new
/// login by itself).
#[derive(Default)]
pub struct MemoryLogins {
    pending: Mutex<HashMap<String, (Instant, StoredLogin)>>,
}

impl MemoryLogins {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, (Instant, StoredLogin)>> {
        let mut map = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, (started, _)| started.elapsed() < LOGIN_LIFETIME);
        map
    }
}

impl LoginTable for MemoryLogins {
    fn open(&self, purpose: Purpose, user_code: String) -> Result<Option<String>, SsoError> {
        let mut map = self.lock();
        if map.len() >= MAX_PENDING {
            return Ok(None);
        }
        let id = random_id();
        map.insert(
            id.clone(),
            (Instant::now(), StoredLogin::new(purpose, user_code)),
        );
        Ok(Some(id))
    }

    fn look(&self, id: &str) -> Result<Option<(Purpose, String, Outcome)>, SsoError> {
        Ok(self
            .lock()
            .get(id)
            .map(|(_, l)| (l.purpose.clone(), l.user_code.clone(), l.outcome.clone())))
    }

    fn attach_code(&self, id: &str, state: String, flow: CodeFlow) -> Result<bool, SsoError> {
        Ok(self
            .lock()
            .get_mut(id)
            .is_some_and(|(_, l)| l.attach_code(state, &flow)))
    }

    fn take_code(&self, state: &str) -> Result<Option<(String, Purpose, CodeFlow)>, SsoError> {
        let mut map = self.lock();
        let found = map
            .iter_mut()
            .find(|(_, (_, l))| l.code.as_ref().is_some_and(|c| c.state == state));
        Ok(found.and_then(|(id, (_, l))| {
            let flow = l.take_code()?;
            Some((id.clone(), l.purpose.clone(), flow))
        }))
    }

    fn finish(&self, id: &str, outcome: Outcome) -> Result<(), SsoError> {
        if let Some((_, l)) = self.lock().get_mut(id) {
            l.finish(outcome);
        }
        Ok(())
    }

    fn take_done(&self, id: &str, key: &PublicKey) -> Result<Option<Identity>, SsoError> {
        let mut map = self.lock();
        let who = map.get(id).and_then(|(_, l)| l.done_for(key)).cloned();
        if who.is_some() {
            map.remove(id);
        }
        Ok(who)
    }

    fn remove(&self, id: &str) -> Result<(), SsoError> {
        self.lock().remove(id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who() -> Identity {
        Identity {
            issuer: "i".into(),
            subject: "s".into(),
            email: None,
            email_verified: false,
            groups: vec![],
        }
    }

    fn machine(n: u8) -> (Purpose, PublicKey) {
        let key = PublicKey::from_bytes([n; 32]);
        (
            Purpose::Machine {
                key,
                hostname: "h".into(),
            },
            key,
        )
    }

    #[test]
    fn a_finished_login_is_used_once_and_only_by_its_machine() {
        let logins = MemoryLogins::default();
        let (purpose, key) = machine(1);
        let (_, other) = machine(2);
        let id = logins.open(purpose, short_code()).unwrap().unwrap();
        assert_eq!(logins.take_done(&id, &key).unwrap(), None, "still waiting");
        logins.finish(&id, Outcome::Done(who())).unwrap();
        logins
            .finish(&id, Outcome::Failed(403, "late".into()))
            .unwrap();
        assert_eq!(logins.take_done(&id, &other).unwrap(), None, "another key");
        assert_eq!(logins.take_done(&id, &key).unwrap(), Some(who()));
        assert_eq!(logins.take_done(&id, &key).unwrap(), None, "used once");
    }

    #[test]
    fn a_callback_state_is_taken_once() {
        let logins = MemoryLogins::default();
        let id = logins
            .open(Purpose::Console, short_code())
            .unwrap()
            .unwrap();
        let flow = CodeFlow {
            verifier: PkceCodeVerifier::new("v".repeat(43)),
            nonce: Nonce::new("n".into()),
            redirect: "http://x/sso/callback".into(),
        };
        assert!(logins.attach_code(&id, "st".into(), flow).unwrap());
        let (got, purpose, flow) = logins.take_code("st").unwrap().unwrap();
        assert_eq!((got.as_str(), purpose), (id.as_str(), Purpose::Console));
        assert_eq!(flow.verifier.secret(), &"v".repeat(43));
        assert!(
            logins.take_code("st").unwrap().is_none(),
            "a replayed callback"
        );
    }

    #[test]
    fn a_stored_login_round_trips_through_json_with_its_code_half() {
        let (purpose, key) = machine(3);
        let mut login = StoredLogin::new(purpose, "BCDF-GHJK".into());
        let flow = CodeFlow {
            verifier: PkceCodeVerifier::new("w".repeat(43)),
            nonce: Nonce::new("nonce".into()),
            redirect: "https://m/sso/callback".into(),
        };
        assert!(login.attach_code("state".into(), &flow));
        login.finish(Outcome::Done(who()));
        let text = serde_json::to_string(&login).unwrap();
        let back: StoredLogin = serde_json::from_str(&text).unwrap();
        assert_eq!(back, login);
        assert_eq!(back.done_for(&key), Some(&who()));
        assert!(!login.clone().attach_code("again".into(), &flow), "ended");
    }

    #[test]
    fn short_codes_have_two_groups_of_four_letters() {
        let code = short_code();
        assert_eq!(code.len(), 9);
        assert_eq!(&code[4..5], "-");
        assert!(code.chars().all(|c| c == '-' || c.is_ascii_uppercase()));
    }
}
