//! Validated values for everything that may reach a registry, a log line or a command line.
//!
//! Each type can only be built by parsing, and parsing refuses anything outside a small,
//! documented alphabet, so a hostile string (shell metacharacters, newlines, NUL, overlong
//! input) is stopped at the edge with a message saying what would be accepted.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

/// Why a value was refused, phrased for the person who typed or sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidValue(pub String);

impl fmt::Display for InvalidValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidValue {}

impl From<String> for InvalidValue {
    fn from(why: String) -> InvalidValue {
        InvalidValue(why)
    }
}

impl From<&str> for InvalidValue {
    fn from(why: &str) -> InvalidValue {
        InvalidValue(why.to_owned())
    }
}

/// Describes `text` for an error message without echoing control characters or megabytes.
pub fn describe(text: &str) -> String {
    let shown: String = text.chars().take(40).collect();
    let mut out = format!("{shown:?}");
    if text.chars().count() > 40 {
        out.push_str("...");
    }
    out
}

macro_rules! string_newtype {
    ($(#[$meta:meta])* $name:ident, $parse:path) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The validated text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = InvalidValue;
            fn from_str(s: &str) -> Result<Self, InvalidValue> {
                $parse(s).map(|()| $name(s.to_owned()))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

fn check_hostname(s: &str) -> Result<(), InvalidValue> {
    let ok_len = !s.is_empty() && s.len() <= 253;
    let ok_chars = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    let ok_edges = !s.starts_with(['-', '.']) && !s.ends_with(['-', '.']);
    let ok_labels = s.split('.').all(|l| !l.is_empty() && l.len() <= 63);
    if ok_len && ok_chars && ok_edges && ok_labels {
        Ok(())
    } else {
        Err(InvalidValue(format!(
            "{} is not a hostname: use 1-253 characters of letters, digits, '-', '_' and '.', \
             labels of at most 63, not starting or ending with '-' or '.'",
            describe(s)
        )))
    }
}

fn check_os(s: &str) -> Result<(), InvalidValue> {
    let ok = !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(InvalidValue(format!(
            "{} is not an OS name: use 1-32 lowercase letters, digits, '-' or '_' (e.g. linux, macos, windows)",
            describe(s)
        )))
    }
}

fn check_interface(s: &str) -> Result<(), InvalidValue> {
    // Linux caps interface names at IFNAMSIZ-1 = 15 bytes; wireguard-windows tunnel names
    // allow [a-zA-Z0-9_=+.-]; the intersection is safe on every OS wgmesh drives.
    let ok = !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_=+.-".contains(&b))
        && !s.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(InvalidValue(format!(
            "{} is not an interface name: use 1-15 characters of letters, digits and _=+.- (e.g. wg0)",
            describe(s)
        )))
    }
}

fn check_peer_id(s: &str) -> Result<(), InvalidValue> {
    let hex = s.strip_prefix("peer-");
    let ok = hex.is_some_and(|h| {
        h.len() == 16
            && h.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    });
    if ok {
        Ok(())
    } else {
        Err(InvalidValue(format!(
            "{} is not a peer id: peer ids look like peer-0123456789abcdef",
            describe(s)
        )))
    }
}

const TAG_PREFIX: &str = "tag:";
const TAG_MAX_NAME: usize = 63;

fn check_tag(s: &str) -> Result<(), InvalidValue> {
    let ok = s.strip_prefix(TAG_PREFIX).is_some_and(|name| {
        !name.is_empty()
            && name.len() <= TAG_MAX_NAME
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    });
    if ok {
        Ok(())
    } else {
        Err(InvalidValue(format!(
            "{} is not a tag: tags look like tag:name, with 1-{TAG_MAX_NAME} lowercase \
             letters, digits or '-' after the colon (e.g. tag:db)",
            describe(s)
        )))
    }
}

fn check_token_id(s: &str) -> Result<(), InvalidValue> {
    let ok = s.strip_prefix("tok-").is_some_and(|h| {
        h.len() == 12
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if ok {
        Ok(())
    } else {
        Err(InvalidValue(format!(
            "{} is not a token id: ids look like tok-0123456789ab (see `wgmesh token list`)",
            describe(s)
        )))
    }
}

string_newtype!(
    /// A device's hostname as shown to other peers (RFC 1123 letters plus '_').
    Hostname,
    check_hostname
);
fn check_dns_name(s: &str) -> Result<(), InvalidValue> {
    let ok = !s.is_empty()
        && s.len() <= MAX_DNS_LABEL
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(InvalidValue(format!(
            "{} is not a mesh DNS name: use 1-63 lowercase letters, digits and '-', \
             not starting or ending with '-'",
            describe(s)
        )))
    }
}

/// The longest DNS label (RFC 1035 section 2.3.4).
pub const MAX_DNS_LABEL: usize = 63;

string_newtype!(
    /// A peer's name in the `.mesh` zone (`web` answers as `web.mesh`): one lowercase DNS
    /// label, decided by the server so that every node agrees on it.
    DnsName,
    check_dns_name
);

impl DnsName {
    /// The label a hostname asks for: its first label (a FQDN's host part, as `hostname -s`
    /// gives), lowercased, with '_' (legal in hostnames, not in DNS host names) and any other
    /// byte outside `[a-z0-9-]` turned into '-', cut to 63 bytes and trimmed of '-' at both
    /// ends. Pure, so the server and tests agree on it. Refuses (with what to do) a name that
    /// leaves nothing, and non-ASCII text, which [`Hostname`] never holds but callers with
    /// raw text may pass.
    pub fn from_hostname(hostname: &str) -> Result<DnsName, InvalidValue> {
        if !hostname.is_ascii() {
            return Err(InvalidValue(format!(
                "hostname {} is not ASCII, so it has no DNS name: rename the host or pass \
                 --hostname with letters, digits and '-' (e.g. its transliteration)",
                describe(hostname)
            )));
        }
        let first = hostname.split('.').next().unwrap_or_default();
        let mut label: String = first
            .bytes()
            .map(|b| match b.to_ascii_lowercase() {
                c @ (b'a'..=b'z' | b'0'..=b'9') => c as char,
                _ => '-',
            })
            .collect();
        label.truncate(MAX_DNS_LABEL);
        let label = label.trim_matches('-');
        if label.is_empty() {
            return Err(InvalidValue(format!(
                "hostname {} gives no DNS name: its first label needs a letter or digit; \
                 pass --hostname with one (e.g. web-1)",
                describe(hostname)
            )));
        }
        Ok(DnsName(label.to_owned()))
    }

    /// This name with a collision suffix: `web` -> `web-2`, `web-3`, ...; the base is cut
    /// (and trimmed of a trailing '-') so the result still fits in one 63-byte label.
    pub fn with_suffix(&self, n: u32) -> DnsName {
        let suffix = format!("-{n}");
        let keep = MAX_DNS_LABEL.saturating_sub(suffix.len()).min(self.0.len());
        let base = self.0[..keep].trim_end_matches('-');
        DnsName(format!("{base}{suffix}"))
    }
}

string_newtype!(
    /// The operating system a peer reports, used to pick command sets and shown in status.
    OsName,
    check_os
);
string_newtype!(
    /// A network interface / tunnel name that is valid on Linux, macOS and Windows alike.
    InterfaceName,
    check_interface
);
string_newtype!(
    /// A label given to machines through the join token they used, e.g. `tag:db`: the unit
    /// the access policy is written in. Only `tag:` followed by 1-63 of `[a-z0-9-]` is
    /// accepted, so a tag is safe in logs, JSON and command lines, and `tag:DB` vs `tag:db`
    /// cannot be confused.
    Tag,
    check_tag
);

string_newtype!(
    /// The short public name of a join token (`tok-` + 12 hex digits), for `token list` and
    /// `token revoke`. It is random, not derived from the secret, so showing it reveals
    /// nothing.
    TokenId,
    check_token_id
);

string_newtype!(
    /// The server-assigned identifier of a peer, stable per public key.
    PeerId,
    check_peer_id
);

impl PeerId {
    /// Derives the stable id for a public key: the same key always maps to the same id,
    /// across restarts and even if the registry is rebuilt from scratch.
    pub fn for_key(key: &crate::keys::PublicKey) -> PeerId {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(key.as_bytes());
        let hex = hex::encode(&digest[..8]);
        PeerId(format!("peer-{hex}"))
    }
}

/// A UDP endpoint another peer can dial: `IP:PORT` or `[IPv6]:PORT`, never port 0 and never
/// an unspecified or multicast address.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoint(pub SocketAddr);

impl FromStr for Endpoint {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        let bad = |why: &str| {
            InvalidValue(format!(
                "{} is not an endpoint: {why} (write IP:PORT or [IPv6]:PORT, e.g. 198.18.0.5:51820)",
                describe(s)
            ))
        };
        let addr: SocketAddr = s.parse().map_err(|_| bad("cannot parse it"))?;
        if addr.port() == 0 {
            return Err(bad("port 0 cannot be dialed"));
        }
        if addr.ip().is_unspecified() || addr.ip().is_multicast() {
            return Err(bad("the address must be a unicast host address"));
        }
        if let SocketAddr::V6(v6) = addr {
            if v6.scope_id() != 0 || v6.flowinfo() != 0 {
                return Err(bad("zone ids are not supported"));
            }
        }
        Ok(Endpoint(addr))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Endpoint({})", self.0)
    }
}

impl Serialize for Endpoint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_accept_real_names_and_refuse_hostile_ones() {
        for ok in ["my-laptop", "db_1", "a.b.c", "x"] {
            assert!(ok.parse::<Hostname>().is_ok(), "{ok}");
        }
        let long = "a".repeat(254);
        for bad in [
            "",
            "-x",
            "a;rm -rf /",
            "a\nb",
            "a\0b",
            "a b",
            "ünï",
            "x.",
            long.as_str(),
            "$(id)",
        ] {
            let err = bad.parse::<Hostname>().unwrap_err();
            assert!(err.0.contains("not a hostname"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn dns_names_come_from_hostnames_and_hostile_ones_are_made_valid_or_refused() {
        let name = |h: &str| DnsName::from_hostname(h).map(|n| n.to_string());
        assert_eq!(name("Web").unwrap(), "web");
        assert_eq!(name("db_1.corp.example.com").unwrap(), "db-1");
        assert_eq!(name("_x_").unwrap(), "x");
        assert_eq!(name("a".repeat(80).as_str()).unwrap(), "a".repeat(63));
        // Cut at 63 and then trimmed: never a trailing '-'.
        let edge = format!("{}_b", "a".repeat(62));
        assert_eq!(name(&edge).unwrap(), "a".repeat(62));
        assert_eq!(name("a b;c").unwrap(), "a-b-c");
        for bad in ["", "_", ".web", "---", "\u{fc}ber", "caf\u{e9}"] {
            let err = name(bad).unwrap_err();
            assert!(
                err.0.contains("no DNS name") && err.0.contains("--hostname"),
                "{bad:?}: {err}"
            );
        }
        // Every result parses back as a DnsName.
        for h in ["x", "X-Y", "a.b.c", "9lives"] {
            let n = DnsName::from_hostname(h).unwrap();
            assert_eq!(n.as_str().parse::<DnsName>().unwrap(), n);
        }
    }

    #[test]
    fn collision_suffixes_fit_in_one_label() {
        let web: DnsName = "web".parse().unwrap();
        assert_eq!(web.with_suffix(2).as_str(), "web-2");
        let long = DnsName::from_hostname(&"a".repeat(63)).unwrap();
        let suffixed = long.with_suffix(12);
        assert_eq!(suffixed.as_str().len(), 63);
        assert!(suffixed.as_str().ends_with("a-12"));
        let dashy: DnsName = format!("{}-b", "a".repeat(60)).parse().unwrap();
        assert!(!dashy.with_suffix(2).as_str().contains("--"), "{dashy:?}");
        assert!(dashy.with_suffix(2).as_str().parse::<DnsName>().is_ok());
        for bad in ["", "-a", "a-", "A", "a.b", "a_b"] {
            assert!(bad.parse::<DnsName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoints_parse_v4_and_v6_and_refuse_the_rest() {
        assert_eq!(
            "198.18.0.1:51820".parse::<Endpoint>().unwrap().to_string(),
            "198.18.0.1:51820"
        );
        assert_eq!(
            "[2001:db8::1]:51820"
                .parse::<Endpoint>()
                .unwrap()
                .to_string(),
            "[2001:db8::1]:51820"
        );
        for bad in [
            "198.18.0.1",
            "198.18.0.1:0",
            "0.0.0.0:1",
            "host:51820",
            "1.2.3.4:70000",
            "[fe80::1%eth0]:1",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
    }

    #[test]
    fn interface_names_fit_every_os() {
        assert!("wg0".parse::<InterfaceName>().is_ok());
        assert!("wgmesh-test.1".parse::<InterfaceName>().is_ok());
        for bad in [
            "",
            "sixteen-chars-xx",
            "wg 0",
            "wg0;ls",
            "-wg",
            "..",
            "wg/0",
        ] {
            assert!(bad.parse::<InterfaceName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn peer_id_is_stable_per_key_and_parses_back() {
        let key = crate::keys::PrivateKey::generate().public_key();
        let a = PeerId::for_key(&key);
        assert_eq!(a, PeerId::for_key(&key));
        assert_eq!(a.as_str().parse::<PeerId>().unwrap(), a);
        assert!("peer-XYZ".parse::<PeerId>().is_err());
    }
}
