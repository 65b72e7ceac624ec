//! The validated server base URL every client call starts from, parsed once from flags or
//! the config so a bad one is refused up front.

use crate::types::InvalidValue;
use std::fmt;

/// A validated server base URL such as `http://198.18.0.1:8080`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl(String);
impl std::str::FromStr for ServerUrl {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        let trimmed = s.trim_end_matches('/');
        let rest = trimmed
            .strip_prefix("http://")
            .or_else(|| trimmed.strip_prefix("https://"))
            .ok_or_else(|| {
                InvalidValue(format!(
                    "server URL {s:?} must start with http:// or https://"
                ))
            })?;
        let ok = !rest.is_empty()
            && !rest.contains(['/', '?', '#', '@', ' '])
            && rest.chars().all(|c| c.is_ascii_graphic());
        if !ok {
            return Err(InvalidValue(format!(
                "server URL {s:?} must be scheme://host[:port] with no path, e.g. http://198.18.0.1:8080"
            )));
        }
        Ok(ServerUrl(trimmed.to_owned()))
    }
}
impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl serde::Serialize for ServerUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}
impl<'de> serde::Deserialize<'de> for ServerUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}
impl ServerUrl {
    /// The host:port part, for routing decisions (keeping the server outside an exit tunnel).
    pub fn authority(&self) -> &str {
        self.0.split("://").nth(1).unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_are_checked() {
        assert_eq!(
            "http://198.18.0.1:8080/"
                .parse::<ServerUrl>()
                .unwrap()
                .to_string(),
            "http://198.18.0.1:8080"
        );
        assert_eq!(
            "http://[::1]:8080"
                .parse::<ServerUrl>()
                .unwrap()
                .authority(),
            "[::1]:8080"
        );
        for bad in [
            "198.18.0.1:8080",
            "ftp://x",
            "http://",
            "http://a/b",
            "http://a b",
        ] {
            assert!(bad.parse::<ServerUrl>().is_err(), "{bad}");
        }
    }
}
