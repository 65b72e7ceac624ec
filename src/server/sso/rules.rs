//! Which identities may join and which tags they get, and who may use the console: the
//! `identities` section of the policy file.
//!
//! ```json
//! {"allow": [...],
//!  "identities": {
//!    "join": [{"email_domain": "example.com", "tags": ["tag:staff"]},
//!             {"group": "/engineering", "tags": ["tag:dev"]}],
//!    "admins": [{"group": "wgmesh-admins"}],
//!    "auditors": [{"email": "auditor@example.com"}]}}
//! ```
//!
//! Each entry names exactly one of `email_domain`, `email` or `group`. Emails and domains
//! compare without regard to case and count only when the provider says `email_verified`;
//! groups compare exactly as the provider sends them (Keycloak sends `/engineering` with
//! its leading slash, Entra ID sends object ids, not names). A machine joins when at least
//! one `join` entry matches, with the tags of every entry that matches.

use super::identity::Identity;
use crate::types::Tag;
use serde::{Deserialize, Serialize};
use std::fmt;

/// What one rule compares: exactly one of the three is set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Matcher {
    /// A verified email's domain (after the last `@`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_domain: Option<String>,
    /// A verified email address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// A group as the provider sends it in the `groups` claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// A `join` entry: who it admits and the tags they get.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRule {
    /// A verified email's domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_domain: Option<String>,
    /// A verified email address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// A group as the provider sends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The tags a machine admitted by this entry gets.
    #[serde(default)]
    pub tags: Vec<Tag>,
}

impl JoinRule {
    fn matcher(&self) -> Matcher {
        Matcher {
            email_domain: self.email_domain.clone(),
            email: self.email.clone(),
            group: self.group.clone(),
        }
    }
}

/// The policy file's `identities` section.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityRules {
    /// Who may join a machine, and its tags.
    #[serde(default)]
    pub join: Vec<JoinRule>,
    /// Who may log in to the console as an admin.
    #[serde(default)]
    pub admins: Vec<Matcher>,
    /// Who may log in to the console read-only.
    #[serde(default)]
    pub auditors: Vec<Matcher>,
}

/// A malformed `identities` entry, named by its JSON path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesError(pub String);

impl fmt::Display for RulesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RulesError {}

/// Why an identity may not join: the rules it was compared against, for a 403.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotAdmitted(pub String);

impl fmt::Display for NotAdmitted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The console role an identity logs in with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleRole {
    /// May change things.
    Admin,
    /// May look only.
    Auditor,
}

/// Whether `matcher` matches, or why it cannot judge (an unverified email).
enum Verdict {
    Yes,
    No,
    Unverified,
}

impl Matcher {
    fn describe(&self) -> String {
        match (&self.email_domain, &self.email, &self.group) {
            (Some(d), _, _) => format!("email_domain {d:?}"),
            (_, Some(e), _) => format!("email {e:?}"),
            (_, _, Some(g)) => format!("group {g:?}"),
            _ => "nothing".to_owned(),
        }
    }

    fn check(&self, path: &str) -> Result<(), RulesError> {
        let set = [
            self.email_domain.is_some(),
            self.email.is_some(),
            self.group.is_some(),
        ];
        if set.iter().filter(|s| **s).count() != 1 {
            return Err(RulesError(format!(
                "policy entry {path} must name exactly one of email_domain, email or group"
            )));
        }
        if let Some(d) = &self.email_domain {
            if d.is_empty() || d.contains('@') {
                return Err(RulesError(format!(
                    "policy entry {path}.email_domain {d:?} must be a bare domain such as \
                     \"example.com\" (no @)"
                )));
            }
        }
        Ok(())
    }

    fn judge(&self, who: &Identity) -> Verdict {
        if let Some(group) = &self.group {
            return match who.groups.iter().any(|g| g == group) {
                true => Verdict::Yes,
                false => Verdict::No,
            };
        }
        let Some(email) = &who.email else {
            return Verdict::No;
        };
        let matches = match (&self.email, &self.email_domain) {
            (Some(want), _) => email.eq_ignore_ascii_case(want),
            (_, Some(domain)) => email
                .rsplit_once('@')
                .is_some_and(|(_, d)| d.eq_ignore_ascii_case(domain)),
            _ => false,
        };
        match (matches, who.email_verified) {
            (false, _) => Verdict::No,
            (true, true) => Verdict::Yes,
            (true, false) => Verdict::Unverified,
        }
    }
}

impl IdentityRules {
    /// Whether the section is absent (nothing may join or log in through SSO).
    pub fn is_empty(&self) -> bool {
        self.join.is_empty() && self.admins.is_empty() && self.auditors.is_empty()
    }

    /// Refuses entries that name none or several things to compare.
    pub fn validate(&self) -> Result<(), RulesError> {
        for (i, rule) in self.join.iter().enumerate() {
            rule.matcher().check(&format!("identities.join[{i}]"))?;
        }
        for (name, list) in [("admins", &self.admins), ("auditors", &self.auditors)] {
            for (i, m) in list.iter().enumerate() {
                m.check(&format!("identities.{name}[{i}]"))?;
            }
        }
        Ok(())
    }

    /// The tags a machine of `who` joins with, or why it may not join (a 403's text naming
    /// the rules it was compared against).
    pub fn admit(&self, who: &Identity) -> Result<Vec<Tag>, NotAdmitted> {
        if self.join.is_empty() {
            return Err(NotAdmitted(format!(
                "{} logged in, but the policy file has no identities.join rules, so nobody \
                 may join through single sign-on: add one (see README \"SSO\")",
                who.label()
            )));
        }
        let mut tags: Vec<Tag> = Vec::new();
        let mut matched = false;
        let mut unverified = None;
        for (i, rule) in self.join.iter().enumerate() {
            match rule.matcher().judge(who) {
                Verdict::Yes => {
                    matched = true;
                    for t in &rule.tags {
                        if !tags.contains(t) {
                            tags.push(t.clone());
                        }
                    }
                }
                Verdict::Unverified => unverified = Some(i),
                Verdict::No => {}
            }
        }
        if matched {
            tags.sort();
            return Ok(tags);
        }
        Err(NotAdmitted(self.refusal(who, unverified)))
    }

    fn refusal(&self, who: &Identity, unverified: Option<usize>) -> String {
        if let Some(i) = unverified {
            return format!(
                "identities.join[{i}] ({}) matches {}, but the provider does not say the \
                 email is verified (email_verified is not true), so it does not count",
                self.join[i].matcher().describe(),
                who.label()
            );
        }
        let rules: Vec<String> = self
            .join
            .iter()
            .enumerate()
            .map(|(i, r)| format!("identities.join[{i}] {}", r.matcher().describe()))
            .collect();
        let email = match &who.email {
            Some(e) => format!("email {e}"),
            None => "no email claim (ask for the `email` scope)".to_owned(),
        };
        format!(
            "{} may not join: no identities.join rule matches ({email}, groups {:?}); the \
             rules are: {}",
            who.label(),
            who.groups,
            rules.join("; ")
        )
    }

    /// The console role of `who`: admin before auditor, None when neither list matches.
    pub fn console_role(&self, who: &Identity) -> Option<ConsoleRole> {
        let any = |list: &[Matcher]| list.iter().any(|m| matches!(m.judge(who), Verdict::Yes));
        if any(&self.admins) {
            Some(ConsoleRole::Admin)
        } else if any(&self.auditors) {
            Some(ConsoleRole::Auditor)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(json: &str) -> IdentityRules {
        let r: IdentityRules = serde_json::from_str(json).unwrap();
        r.validate().unwrap();
        r
    }

    fn who(email: &str, verified: bool, groups: &[&str]) -> Identity {
        Identity {
            issuer: "https://id.example.com".into(),
            subject: "s1".into(),
            email: Some(email.into()),
            email_verified: verified,
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    #[test]
    fn tags_are_the_union_of_every_matching_join_rule() {
        let r = rules(
            r#"{"join": [{"email_domain": "example.com", "tags": ["tag:staff"]},
                         {"group": "/engineering", "tags": ["tag:dev"]},
                         {"group": "sales", "tags": ["tag:sales"]}]}"#,
        );
        let tags = r
            .admit(&who("Ann@EXAMPLE.com", true, &["/engineering"]))
            .unwrap();
        let names: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
        assert_eq!(names, ["tag:dev", "tag:staff"]);
    }

    #[test]
    fn groups_compare_exactly_as_the_provider_sends_them() {
        let r = rules(r#"{"join": [{"group": "engineering", "tags": ["tag:dev"]}]}"#);
        let why = r
            .admit(&who("a@other.org", true, &["/engineering"]))
            .unwrap_err()
            .0;
        assert!(
            why.contains("identities.join[0] group \"engineering\""),
            "{why}"
        );
        assert!(why.contains("\"/engineering\""), "{why}");
    }

    #[test]
    fn an_unverified_email_does_not_count_and_the_refusal_says_so() {
        let r = rules(r#"{"join": [{"email_domain": "example.com"}]}"#);
        let why = r.admit(&who("a@example.com", false, &[])).unwrap_err().0;
        assert!(why.contains("email_verified"), "{why}");
        assert!(why.contains("identities.join[0]"), "{why}");
    }

    #[test]
    fn a_user_outside_the_allowed_domain_is_refused_naming_the_rules() {
        let r = rules(r#"{"join": [{"email_domain": "example.com"}]}"#);
        let why = r.admit(&who("eve@evil.test", true, &[])).unwrap_err().0;
        assert!(why.contains("eve@evil.test may not join"), "{why}");
        assert!(why.contains("email_domain \"example.com\""), "{why}");
        assert!(r.admit(&who("bob@sub.example.com", true, &[])).is_err());
    }

    #[test]
    fn no_join_rules_means_nobody_joins_through_sso() {
        let why = IdentityRules::default()
            .admit(&who("a@example.com", true, &[]))
            .unwrap_err()
            .0;
        assert!(why.contains("no identities.join rules"), "{why}");
    }

    #[test]
    fn an_entry_must_name_exactly_one_thing() {
        let r: IdentityRules =
            serde_json::from_str(r#"{"admins": [{"email": "a@b.c", "group": "g"}]}"#).unwrap();
        let e = r.validate().unwrap_err();
        assert!(e.0.contains("identities.admins[0]"), "{e}");
        let r: IdentityRules = serde_json::from_str(r#"{"join": [{"tags": []}]}"#).unwrap();
        assert!(r.validate().is_err());
        let r: IdentityRules =
            serde_json::from_str(r#"{"join": [{"email_domain": "@x.com"}]}"#).unwrap();
        assert!(r.validate().unwrap_err().0.contains("bare domain"));
    }

    #[test]
    fn console_roles_come_from_the_admin_and_auditor_lists() {
        let r = rules(
            r#"{"admins": [{"group": "ops"}], "auditors": [{"email_domain": "example.com"}]}"#,
        );
        assert_eq!(
            r.console_role(&who("a@example.com", true, &["ops"])),
            Some(ConsoleRole::Admin)
        );
        assert_eq!(
            r.console_role(&who("a@example.com", true, &[])),
            Some(ConsoleRole::Auditor)
        );
        assert_eq!(r.console_role(&who("a@example.com", false, &[])), None);
    }
}
