//! Facts about this host that the agent reports but does not configure: its name.

use crate::types::Hostname;

/// The OS's own name for this machine, from the one call every OS answers the same way
/// (`gethostname(3)` on Linux and macOS, `GetComputerNameExW` on Windows, through the
/// `gethostname` crate) — not `/proc` or `/etc/hostname`, which macOS and Windows lack, so
/// every Mac used to register as `wgmesh-node` and `--use-exit-node NAME` became ambiguous.
pub fn os_hostname() -> Option<Hostname> {
    hostname_from(&gethostname::gethostname().to_string_lossy())
}

/// Turns what the OS calls this machine into a registrable [`Hostname`]: taken as it is when
/// valid (`Johns-MacBook-Pro.local`, `DESKTOP-4F1K2Q7`), otherwise with each character a
/// hostname may not contain replaced by `-` (`John's Mac` -> `John-s-Mac`); `None` when
/// nothing usable is left.
pub fn hostname_from(raw: &str) -> Option<Hostname> {
    let raw = raw.trim().trim_end_matches('\0');
    if let Ok(h) = raw.parse() {
        return Some(h);
    }
    let cleaned: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let cleaned = cleaned.trim_matches(|c| c == '-' || c == '.');
    cleaned.chars().take(63).collect::<String>().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_os_hostname_is_what_the_os_call_returns() {
        // On this (Linux) host the crate's answer must match the kernel's own record.
        let kernel = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .expect("Linux exposes the hostname in /proc");
        let ours = os_hostname().expect("the test host has a usable hostname");
        assert_eq!(ours.as_str(), kernel.trim());
    }

    #[test]
    fn os_names_are_made_registrable() {
        let h = |s: &str| hostname_from(s).map(|h| h.as_str().to_string());
        assert_eq!(
            h("Johns-MacBook-Pro.local").as_deref(),
            Some("Johns-MacBook-Pro.local")
        );
        assert_eq!(h("DESKTOP-4F1K2Q7").as_deref(), Some("DESKTOP-4F1K2Q7"));
        assert_eq!(h("John's Mac").as_deref(), Some("John-s-Mac"));
        assert_eq!(h("  node1\n").as_deref(), Some("node1"));
        assert_eq!(h(""), None);
        assert_eq!(h("???"), None);
    }
}
