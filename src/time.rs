//! RFC 3339 timestamps (design 5.2 writes `2024-01-01T12:00:00Z`) for the wire, the store, the
//! token file and the audit log: the one place that formats and parses them.
//!
//! Three precisions exist because three files already use them and must keep reading back:
//! whole seconds (the wire and the store), exact (token times, admin views: fractional
//! seconds only when present) and milliseconds (audit lines). Every formatter clamps into
//! 1970..=9999, because humantime panics before the epoch and fails after year 9999, and a
//! broken clock must not take the server down with it.

use serde::{Deserialize, Deserializer, Serializer};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

// 9999-12-31T23:59:59Z, the last instant RFC 3339 (and humantime) can write.
const LAST_WRITABLE_SECS: u64 = 253_402_300_799;

/// The nearest time RFC 3339 can write: before 1970 becomes the epoch, after 9999 the end of
/// 9999.
pub fn clamp(t: SystemTime) -> SystemTime {
    let last = UNIX_EPOCH + Duration::from_secs(LAST_WRITABLE_SECS);
    t.clamp(UNIX_EPOCH, last)
}

/// Formats a time as RFC 3339 UTC with second precision (`2024-01-01T12:00:00Z`).
pub fn format(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(clamp(t)).to_string()
}

/// Formats a time as RFC 3339 UTC with fractional seconds only when present, so it
/// round-trips exactly through [`parse_strict`].
pub fn format_exact(t: SystemTime) -> String {
    humantime::format_rfc3339(clamp(t)).to_string()
}

/// Formats a time as RFC 3339 UTC with milliseconds (`2027-01-15T08:00:00.123Z`).
pub fn format_millis(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(clamp(t)).to_string()
}

/// Parses an RFC 3339 UTC time leniently (a space for `T`, no `Z`), as the store accepts.
pub fn parse(s: &str) -> Result<SystemTime, humantime::TimestampError> {
    humantime::parse_rfc3339_weak(s)
}

/// Parses a strict RFC 3339 UTC time, as the token file and the audit log hold.
pub fn parse_strict(s: &str) -> Result<SystemTime, humantime::TimestampError> {
    humantime::parse_rfc3339(s)
}

/// Seconds since the Unix epoch (0 for times before it).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The time `secs` seconds after the Unix epoch.
pub fn from_unix_secs(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// serde adapter: a `SystemTime` field stored as an RFC 3339 string, whole seconds.
pub mod rfc3339 {
    use super::*;

    /// Writes the time as RFC 3339, whole seconds.
    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*t))
    }

    /// Reads an RFC 3339 time, naming the bad text on failure.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(|e| serde::de::Error::custom(format!("bad time {text:?}: {e}")))
    }
}

/// serde adapter: a `SystemTime` written with [`format_exact`] and read strictly.
pub mod rfc3339_exact {
    use super::*;

    /// Writes the time with [`format_exact`].
    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_exact(*t))
    }

    /// Reads a strict RFC 3339 time, quoting (a bounded part of) the bad text on failure.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        parse_strict(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "{} is not an RFC 3339 UTC time ({e})",
                crate::types::describe(&text)
            ))
        })
    }
}

/// serde adapter: an optional [`rfc3339_exact`] time, `null` when absent.
pub mod rfc3339_exact_opt {
    use super::*;

    /// Writes the time with [`format_exact`], or `null`.
    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => rfc3339_exact::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    /// Reads `null` or a strict RFC 3339 time.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        #[derive(Deserialize)]
        struct Wrap(#[serde(with = "rfc3339_exact")] SystemTime);
        Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
    }
}

/// serde adapter: a `SystemTime` written with milliseconds and read strictly (audit lines).
pub mod rfc3339_millis {
    use super::*;

    /// Writes the time with [`format_millis`].
    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_millis(*t))
    }

    /// Reads a strict RFC 3339 time.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        parse_strict(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_the_design_and_parses_back() {
        let t = from_unix_secs(1_704_110_400);
        assert_eq!(format(t), "2024-01-01T12:00:00Z");
        assert_eq!(parse("2024-01-01T12:00:00Z").unwrap(), t);
    }

    #[test]
    fn precisions_differ_only_in_the_fraction() {
        let t = UNIX_EPOCH + Duration::from_millis(1_800_000_000_123);
        assert_eq!(format(t), "2027-01-15T08:00:00Z");
        assert_eq!(format_exact(t), "2027-01-15T08:00:00.123000000Z");
        assert_eq!(format_millis(t), "2027-01-15T08:00:00.123Z");
        assert_eq!(parse_strict(&format_exact(t)).unwrap(), t);
        assert_eq!(format_exact(from_unix_secs(5)), "1970-01-01T00:00:05Z");
    }

    #[test]
    fn times_outside_what_rfc3339_can_write_are_clamped_not_panics() {
        let before_epoch = UNIX_EPOCH - Duration::from_secs(10);
        assert_eq!(format(before_epoch), "1970-01-01T00:00:00Z");
        let far = UNIX_EPOCH + Duration::from_secs(LAST_WRITABLE_SECS * 2);
        assert_eq!(format_millis(far), "9999-12-31T23:59:59.000Z");
    }
}
