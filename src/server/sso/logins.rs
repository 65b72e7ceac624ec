//! Logins in progress, in memory: each is bound to the machine key that asked for it (or to
//! the console), found again by its id (the machine's polls, the browser page) or by the
//! OAuth `state` (the provider's callback), and forgotten after [`LOGIN_LIFETIME`] or once
//! used. A server restart forgets them: the agent starts a new login.

use super::identity::Identity;
use crate::keys::PublicKey;
use openidconnect::{Nonce, PkceCodeVerifier};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a login may wait for its person (device codes usually live 10-15 minutes).
pub const LOGIN_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// At most this many logins wait at once; more are refused with 503 until some finish.
pub const MAX_PENDING: usize = 1024;

/// Who a login is for.
#[derive(Debug, Clone, PartialEq, Eq)]
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
#[derive(Debug, Clone, PartialEq, Eq)]
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

struct Pending {
    purpose: Purpose,
    started: Instant,
    /// The code shown to the person on both screens, to compare.
    user_code: String,
    outcome: Outcome,
    code: Option<(String, CodeFlow)>,
}

/// The table of logins in progress.
#[derive(Default)]
pub struct Logins {
    pending: Mutex<HashMap<String, Pending>>,
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

impl Logins {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Pending>> {
        let mut map = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, p| p.started.elapsed() < LOGIN_LIFETIME);
        map
    }

    /// Opens a login; its id, or None when too many are waiting.
    pub fn open(&self, purpose: Purpose, user_code: String) -> Option<String> {
        let mut map = self.lock();
        if map.len() >= MAX_PENDING {
            return None;
        }
        let id = random_id();
        map.insert(
            id.clone(),
            Pending {
                purpose,
                started: Instant::now(),
                user_code,
                outcome: Outcome::Waiting,
                code: None,
            },
        );
        Some(id)
    }

    /// The purpose, code and outcome of a login, if it is still known.
    pub fn look(&self, id: &str) -> Option<(Purpose, String, Outcome)> {
        let map = self.lock();
        let p = map.get(id)?;
        Some((p.purpose.clone(), p.user_code.clone(), p.outcome.clone()))
    }

    /// Remembers the authorization-code half of a login under its OAuth `state`. A second
    /// start replaces the first (the person reloaded the page).
    pub fn attach_code(&self, id: &str, state: String, flow: CodeFlow) -> bool {
        let mut map = self.lock();
        match map.get_mut(id) {
            Some(p) if p.outcome == Outcome::Waiting => {
                p.code = Some((state, flow));
                true
            }
            _ => false,
        }
    }

    /// Takes the code half of the login the provider's callback names by `state`, once:
    /// a replayed callback finds nothing.
    pub fn take_code(&self, state: &str) -> Option<(String, Purpose, CodeFlow)> {
        let mut map = self.lock();
        let (id, p) = map
            .iter_mut()
            .find(|(_, p)| p.code.as_ref().is_some_and(|(s, _)| s == state))?;
        let (_, flow) = p.code.take()?;
        Some((id.clone(), p.purpose.clone(), flow))
    }

    /// Records how a login ended (a later outcome does not replace a finished one).
    pub fn finish(&self, id: &str, outcome: Outcome) {
        if let Some(p) = self.lock().get_mut(id) {
            if p.outcome == Outcome::Waiting {
                p.outcome = outcome;
            }
        }
    }

    /// Takes a finished machine login for `key`, once.
    pub fn take_done(&self, id: &str, key: &PublicKey) -> Option<Identity> {
        let mut map = self.lock();
        let p = map.get(id)?;
        match (&p.purpose, &p.outcome) {
            (Purpose::Machine { key: k, .. }, Outcome::Done(_)) if k == key => {}
            _ => return None,
        }
        match map.remove(id)?.outcome {
            Outcome::Done(identity) => Some(identity),
            _ => None,
        }
    }

    /// Removes a login (a console login once its session exists).
    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
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
        let logins = Logins::default();
        let (purpose, key) = machine(1);
        let (_, other) = machine(2);
        let id = logins.open(purpose, short_code()).unwrap();
        assert_eq!(logins.take_done(&id, &key), None, "still waiting");
        logins.finish(&id, Outcome::Done(who()));
        logins.finish(&id, Outcome::Failed(403, "late".into()));
        assert_eq!(logins.take_done(&id, &other), None, "another key");
        assert_eq!(logins.take_done(&id, &key), Some(who()));
        assert_eq!(logins.take_done(&id, &key), None, "used once");
    }

    #[test]
    fn a_callback_state_is_taken_once() {
        let logins = Logins::default();
        let id = logins.open(Purpose::Console, short_code()).unwrap();
        let flow = CodeFlow {
            verifier: PkceCodeVerifier::new("v".repeat(43)),
            nonce: Nonce::new("n".into()),
            redirect: "http://x/sso/callback".into(),
        };
        assert!(logins.attach_code(&id, "st".into(), flow));
        let (got, purpose, _) = logins.take_code("st").unwrap();
        assert_eq!((got.as_str(), purpose), (id.as_str(), Purpose::Console));
        assert!(logins.take_code("st").is_none(), "a replayed callback");
    }

    #[test]
    fn short_codes_have_two_groups_of_four_letters() {
        let code = short_code();
        assert_eq!(code.len(), 9);
        assert_eq!(&code[4..5], "-");
        assert!(code.chars().all(|c| c == '-' || c.is_ascii_uppercase()));
    }
}
