//! What `up` and `sync` check before they register (which spends a join token use and
//! puts this machine in every peer's list): that this machine can create the interface at
//! all. Observed once ([`Facts::observe`]), judged by a pure function ([`check`]).

use crate::os::TargetOs;
use std::fmt;
use std::path::Path;

#[cfg_attr(not(unix), allow(dead_code))]
/// `CAP_NET_ADMIN`'s bit in the capability sets of `/proc/self/status`.
const CAP_NET_ADMIN: u32 = 12;

/// What the checks need to know about this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// Root, or (Linux) holding CAP_NET_ADMIN in the effective set.
    pub may_configure_network: bool,
    /// The kernel has WireGuard (`/sys/module/wireguard`), so `wireguard-go` and
    /// `/dev/net/tun` are not needed.
    pub kernel_wireguard: bool,
    /// `/dev/net/tun` exists (wireguard-go needs it).
    pub tun: bool,
    /// Each program the OS's plans run, and whether it is on PATH.
    pub programs: Vec<(&'static str, bool)>,
}

/// Why this machine cannot run the agent: one line, with the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unprepared(pub String);

impl fmt::Display for Unprepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unprepared {}

impl Facts {
    /// Reads this machine's facts for `os` (the OS the agent runs on).
    pub fn observe(os: TargetOs) -> Facts {
        let programs = programs(os).iter().map(|p| (*p, on_path(p))).collect();
        Facts {
            may_configure_network: may_configure_network(),
            kernel_wireguard: Path::new("/sys/module/wireguard").exists(),
            tun: Path::new("/dev/net/tun").exists(),
            programs,
        }
    }
}

/// The programs the plans for `os` run (Windows's come with WireGuard for Windows and are
/// not checked here).
fn programs(os: TargetOs) -> &'static [&'static str] {
    match os {
        TargetOs::Linux => &["ip", "wg", "wireguard-go"],
        TargetOs::Macos => &["wg", "wireguard-go", "ifconfig", "route"],
        TargetOs::Windows => &[],
    }
}

/// The first reason `os` cannot be set up here, if any.
pub fn check(os: TargetOs, facts: &Facts) -> Result<(), Unprepared> {
    if os == TargetOs::Windows {
        return Ok(());
    }
    if !facts.may_configure_network {
        let what = if os == TargetOs::Linux {
            "root or CAP_NET_ADMIN"
        } else {
            "root"
        };
        return Err(Unprepared(format!(
            "creating the WireGuard interface needs {what}: run it with sudo (nothing was \
             registered)"
        )));
    }
    for (program, found) in &facts.programs {
        let needed =
            !(*program == "wireguard-go" && os == TargetOs::Linux && facts.kernel_wireguard);
        if needed && !found {
            let package = match *program {
                "wg" => "wireguard-tools",
                "ip" => "iproute2",
                other => other,
            };
            return Err(Unprepared(format!(
                "{program} is not installed (not on PATH): install {package} (nothing was \
                 registered)"
            )));
        }
    }
    if os == TargetOs::Linux && !facts.kernel_wireguard && !facts.tun {
        return Err(Unprepared(
            "this kernel has no WireGuard module and /dev/net/tun is missing, so wireguard-go \
             cannot create the interface: load the tun module (modprobe tun) or, in a \
             container, pass the device through (--device /dev/net/tun) (nothing was \
             registered)"
                .into(),
        ));
    }
    Ok(())
}

/// Whether `program` is an executable file in a PATH folder.
fn on_path(program: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| {
        let candidate = dir.join(program);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(&candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        }
        #[cfg(not(unix))]
        candidate.is_file()
    })
}

/// Whether this process runs as root (always true off Unix, where the OS asks for an
/// administrator itself).
pub fn is_root() -> bool {
    #[cfg(unix)]
    {
        // SAFETY: geteuid(2) has no preconditions and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }
    #[cfg(not(unix))]
    true
}

/// Root, or CAP_NET_ADMIN in the effective set (Linux), e.g. under a systemd unit that
/// grants it to a non-root user.
fn may_configure_network() -> bool {
    #[cfg(unix)]
    {
        if is_root() {
            return true;
        }
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        has_net_admin(&status)
    }
    #[cfg(not(unix))]
    true
}

#[cfg_attr(not(unix), allow(dead_code))]
/// Whether a `/proc/PID/status` text shows CAP_NET_ADMIN in `CapEff`.
fn has_net_admin(status: &str) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready() -> Facts {
        Facts {
            may_configure_network: true,
            kernel_wireguard: false,
            tun: true,
            programs: vec![("ip", true), ("wg", true), ("wireguard-go", true)],
        }
    }

    #[test]
    fn a_prepared_linux_machine_passes() {
        assert_eq!(check(TargetOs::Linux, &ready()), Ok(()));
    }

    #[test]
    fn without_root_the_reason_is_root_and_nothing_was_registered() {
        let facts = Facts {
            may_configure_network: false,
            ..ready()
        };
        let e = check(TargetOs::Linux, &facts).unwrap_err().0;
        assert!(
            e.contains("root or CAP_NET_ADMIN") && e.contains("sudo"),
            "{e}"
        );
        assert!(e.contains("nothing was registered"), "{e}");
    }

    #[test]
    fn missing_programs_name_their_package_and_the_kernel_module_spares_wireguard_go() {
        let mut facts = ready();
        facts.programs[1].1 = false;
        let e = check(TargetOs::Linux, &facts).unwrap_err().0;
        assert!(
            e.contains("wg is not installed") && e.contains("wireguard-tools"),
            "{e}"
        );

        let mut facts = ready();
        facts.programs[2].1 = false;
        facts.tun = false;
        assert!(check(TargetOs::Linux, &facts).is_err());
        facts.kernel_wireguard = true;
        assert_eq!(check(TargetOs::Linux, &facts), Ok(()));
    }

    #[test]
    fn no_tun_without_the_kernel_module_is_refused() {
        let facts = Facts {
            tun: false,
            ..ready()
        };
        let e = check(TargetOs::Linux, &facts).unwrap_err().0;
        assert!(e.contains("/dev/net/tun"), "{e}");
    }

    #[test]
    fn cap_net_admin_is_read_from_the_effective_set() {
        assert!(has_net_admin("Name:\tx\nCapEff:\t0000000000001000\n"));
        assert!(!has_net_admin("CapEff:\t0000000000000000\n"));
        assert!(!has_net_admin("CapPrm:\t0000000000001000\n"));
    }
}
