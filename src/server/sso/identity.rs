//! Who a login proved to be, and who owns a machine: the verified claims of one ID token
//! ([`Identity`]) and the part of them a registration keeps ([`Owner`]).

use crate::time;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime};

/// The claims of an ID token whose signature, issuer, audience, expiry, issue time and
/// nonce were verified. Only this type reaches admission. (Serialized only into a login
/// table between the provider's answer and the registration it admits.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The provider's `iss`.
    pub issuer: String,
    /// The provider's stable `sub` for the person.
    pub subject: String,
    /// The `email` claim, if the provider sent one.
    pub email: Option<String>,
    /// The `email_verified` claim (false when absent).
    pub email_verified: bool,
    /// The `groups` claim, exactly as sent (Keycloak's leading `/` included).
    pub groups: Vec<String>,
}

/// What a provider's userinfo endpoint said about the person (OpenID Connect Core 5.3), for
/// [`Identity::completed_by`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserInfo {
    /// The `email` claim.
    pub email: Option<String>,
    /// The `email_verified` claim (false when absent).
    pub email_verified: bool,
    /// The `groups` claim.
    pub groups: Vec<String>,
}

impl Identity {
    /// Whether the ID token left out what admission reads (the email or the groups), so the
    /// provider's userinfo endpoint is worth asking: providers that follow OpenID Connect
    /// strictly put scope claims only there when they also issue an access token.
    pub fn needs_userinfo(&self) -> bool {
        self.email.is_none() || self.groups.is_empty()
    }

    /// This identity with what the ID token left out taken from userinfo (whose `sub` the
    /// caller checked is the token's). What the signed ID token says always wins: the email
    /// (with its verified flag) comes from userinfo only when the token had none, and the
    /// groups only when it had none.
    pub fn completed_by(mut self, info: UserInfo) -> Identity {
        if self.email.is_none() {
            self.email = info.email;
            self.email_verified = info.email_verified;
        }
        if self.groups.is_empty() {
            self.groups = info.groups;
        }
        self
    }

    /// How logs and refusals name the person: the email, else the subject.
    pub fn label(&self) -> String {
        match &self.email {
            Some(email) => email.clone(),
            None => format!("subject {}", self.subject),
        }
    }
}

/// The person a machine's registration belongs to, stored in its peer record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Owner {
    /// The provider's `sub`.
    pub subject: String,
    /// The email the provider verified, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// When the owner last logged in for this machine; the login lasts `--login-expiry`.
    #[serde(with = "time::rfc3339")]
    pub logged_in_at: SystemTime,
    /// When an admin ended the login (`wgmesh peers logout`); the machine must log in again.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::rfc3339_exact_opt"
    )]
    pub logged_out_at: Option<SystemTime>,
}

impl Owner {
    /// The owner a fresh login records.
    pub fn from_identity(identity: &Identity, now: SystemTime) -> Owner {
        Owner {
            subject: identity.subject.clone(),
            email: identity.email.clone().filter(|_| identity.email_verified),
            logged_in_at: now,
            logged_out_at: None,
        }
    }

    /// How the CLI, console and audit log name the owner.
    pub fn label(&self) -> &str {
        self.email.as_deref().unwrap_or(&self.subject)
    }

    /// Why this login no longer admits the machine (ended by an admin, or older than
    /// `expiry`), or None while it does.
    pub fn ended(&self, expiry: Duration, now: SystemTime) -> Option<String> {
        if let Some(at) = self.logged_out_at {
            return Some(format!(
                "an admin ended the login of {} at {}",
                self.label(),
                time::format(at)
            ));
        }
        let until = self.logged_in_at + expiry;
        (now >= until).then(|| {
            format!(
                "the login of {} expired at {} (--login-expiry {})",
                self.label(),
                time::format(until),
                humantime::format_duration(expiry)
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> Owner {
        Owner {
            subject: "u1".into(),
            email: Some("a@example.com".into()),
            logged_in_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000),
            logged_out_at: None,
        }
    }

    #[test]
    fn a_login_lasts_until_its_expiry_or_an_admin_ends_it() {
        let o = owner();
        let day = Duration::from_secs(86_400);
        assert_eq!(o.ended(day, o.logged_in_at + day / 2), None);
        let why = o.ended(day, o.logged_in_at + day).unwrap();
        assert!(
            why.contains("expired") && why.contains("a@example.com"),
            "{why}"
        );
        let mut out = o.clone();
        out.logged_out_at = Some(o.logged_in_at + Duration::from_secs(5));
        let why = out
            .ended(day, o.logged_in_at + Duration::from_secs(6))
            .unwrap();
        assert!(why.contains("admin ended"), "{why}");
    }

    #[test]
    fn an_owner_round_trips_through_json_and_omits_what_is_unset() {
        let o = owner();
        let text = serde_json::to_string(&o).unwrap();
        assert!(!text.contains("logged_out_at"), "{text}");
        assert_eq!(serde_json::from_str::<Owner>(&text).unwrap(), o);
        let mut out = o;
        out.logged_out_at = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000));
        let text = serde_json::to_string(&out).unwrap();
        assert_eq!(serde_json::from_str::<Owner>(&text).unwrap(), out);
    }

    fn bare() -> Identity {
        Identity {
            issuer: "https://id".into(),
            subject: "s".into(),
            email: None,
            email_verified: false,
            groups: vec![],
        }
    }

    #[test]
    fn userinfo_fills_only_what_the_id_token_left_out() {
        let info = UserInfo {
            email: Some("from-userinfo@example.com".into()),
            email_verified: true,
            groups: vec!["/engineering".into()],
        };
        // Nothing in the token: both from userinfo.
        assert!(bare().needs_userinfo());
        let full = bare().completed_by(info.clone());
        assert_eq!(full.email.as_deref(), Some("from-userinfo@example.com"));
        assert!(full.email_verified);
        assert_eq!(full.groups, ["/engineering"]);
        assert!(!full.needs_userinfo());
        // The token's own email (even unverified) and groups win.
        let token = Identity {
            email: Some("token@example.com".into()),
            groups: vec!["token-group".into()],
            ..bare()
        };
        assert!(!token.needs_userinfo());
        let kept = token.clone().completed_by(info.clone());
        assert_eq!(kept, token);
        // Only the groups missing: the email stays the token's, with its flag.
        let partly = Identity {
            email: Some("token@example.com".into()),
            ..bare()
        };
        let done = partly.completed_by(info);
        assert_eq!(done.email.as_deref(), Some("token@example.com"));
        assert!(!done.email_verified);
        assert_eq!(done.groups, ["/engineering"]);
    }

    #[test]
    fn an_unverified_email_is_not_recorded_as_the_owner() {
        let id = Identity {
            issuer: "https://id".into(),
            subject: "s".into(),
            email: Some("x@example.com".into()),
            email_verified: false,
            groups: vec![],
        };
        let o = Owner::from_identity(&id, SystemTime::UNIX_EPOCH);
        assert_eq!(o.email, None);
        assert_eq!(o.label(), "s");
    }
}
