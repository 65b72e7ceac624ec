//! Console sessions: the admin or auditor secret is exchanged once for a random session id
//! in an HttpOnly, SameSite=Strict cookie (Secure over TLS), never the secret itself.
//! Sessions expire after [`IDLE_LIMIT`] without use and [`ABSOLUTE_LIMIT`] in all, end at
//! logout, and all end when the server restarts (they live in memory only), which is also
//! what rotating the admin secret takes. Each carries its own CSRF token.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// The cookie's name.
pub const COOKIE: &str = "wgmesh_console";

/// A session unused for this long is gone.
pub const IDLE_LIMIT: Duration = Duration::from_secs(60 * 60);

/// No session lives longer than this, used or not.
pub const ABSOLUTE_LIMIT: Duration = Duration::from_secs(12 * 60 * 60);

/// Most sessions held at once; the oldest go first. Bounds memory against a login loop.
pub const MAX_SESSIONS: usize = 1000;

/// What a session may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything the admin secret opens.
    Admin,
    /// Sees everything, changes nothing.
    Auditor,
}

impl Role {
    /// The actor name audit entries carry for this role.
    pub fn actor(self) -> &'static str {
        match self {
            Role::Admin => "console:admin",
            Role::Auditor => "console:auditor",
        }
    }

    /// Whether this role may change anything.
    pub fn may_change(self) -> bool {
        self == Role::Admin
    }
}

/// One logged-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    /// What it may do.
    pub role: Role,
    /// The token every state-changing form must carry.
    pub csrf: String,
    created: Instant,
    last_used: Instant,
}

/// The sessions of this server.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

/// 256 random bits, base64url: a session id or CSRF token.
fn random_token() -> String {
    crate::keys::random_secret()
}

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Session>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a session for `role`; returns its id (the cookie value).
    pub fn open(&self, role: Role, now: Instant) -> String {
        let id = random_token();
        let mut map = self.lock();
        map.retain(|_, s| alive(s, now));
        while map.len() >= MAX_SESSIONS {
            let oldest = map
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => map.remove(&k),
                None => break,
            };
        }
        map.insert(
            id.clone(),
            Session {
                role,
                csrf: random_token(),
                created: now,
                last_used: now,
            },
        );
        id
    }

    /// The live session with this id, marked as used now.
    pub fn find(&self, id: &str, now: Instant) -> Option<Session> {
        let mut map = self.lock();
        let session = map.get_mut(id)?;
        if !alive(session, now) {
            map.remove(id);
            return None;
        }
        session.last_used = now;
        Some(session.clone())
    }

    /// Ends a session (logout).
    pub fn close(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Ends every session (the admin secret changed).
    pub fn close_all(&self) {
        self.lock().clear();
    }
}

fn alive(s: &Session, now: Instant) -> bool {
    now.duration_since(s.last_used) < IDLE_LIMIT && now.duration_since(s.created) < ABSOLUTE_LIMIT
}

/// Whether a presented CSRF token is the session's, compared in constant time.
pub fn csrf_matches(session: &Session, presented: Option<&str>) -> bool {
    presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(session.csrf.as_bytes())))
}

/// The `Set-Cookie` value that installs a session.
pub fn set_cookie(id: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={id}; Path=/console; HttpOnly; SameSite=Strict{secure}")
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clear_cookie(secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0{secure}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_when_idle_and_end_at_logout() {
        let sessions = Sessions::default();
        let t0 = Instant::now();
        let id = sessions.open(Role::Admin, t0);
        assert_eq!(sessions.find(&id, t0).unwrap().role, Role::Admin);
        assert!(sessions.find("nope", t0).is_none());
        let later = t0 + IDLE_LIMIT + Duration::from_secs(1);
        assert!(sessions.find(&id, later).is_none(), "idle session survived");
        let id = sessions.open(Role::Auditor, t0);
        sessions.close(&id);
        assert!(sessions.find(&id, t0).is_none());
    }

    #[test]
    fn a_used_session_still_ends_at_the_absolute_limit() {
        let sessions = Sessions::default();
        let t0 = Instant::now();
        let id = sessions.open(Role::Admin, t0);
        let mut t = t0;
        while t < t0 + ABSOLUTE_LIMIT - Duration::from_secs(1800) {
            t += Duration::from_secs(1800);
            assert!(sessions.find(&id, t).is_some());
        }
        assert!(sessions.find(&id, t0 + ABSOLUTE_LIMIT).is_none());
    }

    #[test]
    fn csrf_tokens_differ_per_session_and_must_match_exactly() {
        let sessions = Sessions::default();
        let t0 = Instant::now();
        let a = sessions.find(&sessions.open(Role::Admin, t0), t0).unwrap();
        let b = sessions.find(&sessions.open(Role::Admin, t0), t0).unwrap();
        assert_ne!(a.csrf, b.csrf);
        assert!(csrf_matches(&a, Some(&a.csrf)));
        assert!(!csrf_matches(&a, Some(&b.csrf)));
        assert!(!csrf_matches(&a, None));
    }

    #[test]
    fn cookies_are_http_only_strict_and_secure_over_tls() {
        let c = set_cookie("abc", true);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Secure"));
        assert!(!set_cookie("abc", false).contains("Secure"));
        assert!(clear_cookie(false).contains("Max-Age=0"));
    }
}
