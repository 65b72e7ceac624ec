//! The console's HTML, one file per page, over one layout ([`layout`]). Every value is
//! escaped by `maud` unless wrapped in `PreEscaped`, which only our own constant markup is.
//! Nothing here reads state: each page is a function of the view it is given.

pub mod access;
pub mod audit;
pub mod devices;
pub mod layout;
pub mod login;
pub mod peers;
pub mod server;
pub mod sso;
pub mod subnet_routes;
pub mod tokens;

use std::time::{Duration, SystemTime};

/// "12 s ago", "3 min ago", "5 h ago", "2 d ago" (or "in the future" for clock skew).
pub fn ago(then: SystemTime, now: SystemTime) -> String {
    match now.duration_since(then) {
        Ok(d) => format!("{} ago", short(d)),
        Err(_) => "just now".into(),
    }
}

/// A duration in its largest whole unit: `42 s`, `3 min`, `5 h`, `2 d`.
pub fn short(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86400),
    }
}

/// Bytes in human units: `512 B`, `1.5 KiB`, `3.2 MiB`, `1.1 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{n} B"),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_read_naturally() {
        assert_eq!(short(Duration::from_secs(42)), "42 s");
        assert_eq!(short(Duration::from_secs(180)), "3 min");
        assert_eq!(short(Duration::from_secs(5 * 3600)), "5 h");
        assert_eq!(short(Duration::from_secs(3 * 86400)), "3 d");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}
