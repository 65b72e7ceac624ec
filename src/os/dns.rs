//! Telling the OS's resolver that `.mesh` names go to the agent's DNS server, as plans: only
//! `.mesh`, so every other name resolves as before, and `off` removes exactly what `on` added.
//!
//! - Linux with systemd-resolved: the tunnel link gets our server and the routing-only domain
//!   `~mesh` (`resolvectl dns` + `resolvectl domain`), and is never the default route for
//!   other names; `resolvectl revert` undoes all three. This is what resolved offers VPNs.
//! - Linux without it: `/etc/resolv.conf` is left alone (one file, many owners: rewriting it
//!   is what users of other VPNs ask them to stop). Nothing is planned; `status` says how to
//!   point a resolver at ours. With `--dns-hosts`, a marked block in the hosts file lists every
//!   name (rewritten atomically, removed by `down`).
//! - macOS: `/etc/resolver/mesh` names our server for the `mesh` domain (resolver(5)).
//! - Windows: a Name Resolution Policy Table rule for `.mesh`, tagged with a comment naming the
//!   interface so `off` removes that rule and no other.

use super::{Command, Payload, Plan, PlannedFile, TargetOs};
use crate::types::InterfaceName;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The domain every mesh name is under, as the OS resolvers spell a routing domain.
const ZONE: &str = "mesh";

/// macOS: per-domain resolver configuration (resolver(5)); the file name is the domain.
pub const MACOS_RESOLVER_FILE: &str = "/etc/resolver/mesh";

/// The hosts file `--dns-hosts` keeps its block in by default.
pub const HOSTS_FILE: &str = "/etc/hosts";

/// Mode of files other programs must read (resolver configuration, hosts): 0644.
const PUBLIC_FILE_MODE: u32 = 0o644;

/// How `.mesh` names reach the agent's resolver on this host. Stored with what is applied, so
/// `down` undoes the method `up` used even if the host changed since.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DnsMethod {
    /// systemd-resolved: per-link server and `~mesh` routing domain.
    Resolved,
    /// A marked block in a hosts file (Linux without resolved, with `--dns-hosts`).
    Hosts,
    /// Nothing is changed (Linux without resolved): `status` explains how to use the resolver.
    Manual,
    /// macOS `/etc/resolver/mesh`.
    ResolverFile,
    /// Windows NRPT rule for `.mesh`.
    Nrpt,
}

impl DnsMethod {
    /// The method for `os`: on Linux resolved when it runs, else the hosts file when asked,
    /// else nothing.
    pub fn for_os(os: TargetOs, resolved_running: bool, hosts: bool) -> DnsMethod {
        match os {
            TargetOs::Linux if resolved_running => DnsMethod::Resolved,
            TargetOs::Linux if hosts => DnsMethod::Hosts,
            TargetOs::Linux => DnsMethod::Manual,
            TargetOs::Macos => DnsMethod::ResolverFile,
            TargetOs::Windows => DnsMethod::Nrpt,
        }
    }
}

/// Whether systemd-resolved runs here (its runtime folder exists only while it does), the
/// one fact [`DnsMethod::for_os`] needs from a Linux host.
pub fn resolved_running() -> bool {
    Path::new("/run/systemd/resolve/io.systemd.Resolve").exists()
        || Path::new("/run/systemd/resolve/resolv.conf").exists()
}

/// Sends `.mesh` queries to `servers` (the agent's resolver on this node's mesh addresses).
/// Running it again gives the same state. [`DnsMethod::Hosts`] and [`DnsMethod::Manual`]
/// plan nothing here: the hosts file is [`hosts_plan`]'s, and manual means hands off.
pub fn on(method: DnsMethod, real_name: &InterfaceName, servers: &[IpAddr]) -> Plan {
    let list: Vec<String> = servers.iter().map(IpAddr::to_string).collect();
    match method {
        DnsMethod::Resolved => Plan::of(vec![
            Command::new("resolvectl")
                .args(["dns", real_name.as_str()])
                .args(list),
            Command::new("resolvectl").args(["domain", real_name.as_str(), &format!("~{ZONE}")]),
            // Routing-only domains already keep the link off the default route; say so
            // explicitly, because our server refuses every other name.
            Command::new("resolvectl").args(["default-route", real_name.as_str(), "false"]),
        ]),
        DnsMethod::ResolverFile => {
            let text: String = list.iter().map(|s| format!("nameserver {s}\n")).collect();
            Plan {
                files: vec![PlannedFile {
                    path: PathBuf::from(MACOS_RESOLVER_FILE),
                    contents: Payload::Text(format!(
                        "# managed by wgmesh for {real_name}; removed by `wgmesh down`\n{text}"
                    )),
                    mode: PUBLIC_FILE_MODE,
                }],
                commands: Vec::new(),
            }
        }
        DnsMethod::Nrpt => Plan::of(vec![
            nrpt_remove(real_name),
            powershell(format!(
                "Add-DnsClientNrptRule -Namespace .{ZONE} -NameServers {} -Comment {}",
                list.join(","),
                nrpt_comment(real_name)
            )),
        ]),
        DnsMethod::Hosts | DnsMethod::Manual => Plan::default(),
    }
}

/// Undoes [`on`]: tolerant, because the interface (and resolved's link with it) may already
/// be gone. The hosts block is [`hosts_plan`]'s to remove.
pub fn off(method: DnsMethod, real_name: &InterfaceName) -> Plan {
    match method {
        DnsMethod::Resolved => Plan::of(vec![Command::new("resolvectl")
            .args(["revert", real_name.as_str()])
            .tolerate_failure()]),
        DnsMethod::ResolverFile => Plan::of(vec![Command::new("rm")
            .args(["-f", MACOS_RESOLVER_FILE])
            .tolerate_failure()]),
        DnsMethod::Nrpt => Plan::of(vec![nrpt_remove(real_name).tolerate_failure()]),
        DnsMethod::Hosts | DnsMethod::Manual => Plan::default(),
    }
}

/// The comment that marks our NRPT rule (one per interface).
fn nrpt_comment(real_name: &InterfaceName) -> String {
    format!("wgmesh-{real_name}")
}

/// Removes our NRPT rule, and only ours (another `.mesh` rule someone made stays).
fn nrpt_remove(real_name: &InterfaceName) -> Command {
    powershell(format!(
        "Get-DnsClientNrptRule | Where-Object Comment -eq '{}' | Remove-DnsClientNrptRule -Force",
        nrpt_comment(real_name)
    ))
}

/// One PowerShell command line. The script is built only from typed values (addresses,
/// interface names), never from text a peer sent.
fn powershell(script: String) -> Command {
    Command::new("powershell.exe").args([
        "-NoProfile".to_string(),
        "-NonInteractive".into(),
        "-Command".into(),
        script,
    ])
}

/// The first line of our hosts block for `real_name`.
fn hosts_begin(real_name: &InterfaceName) -> String {
    format!(
        "# BEGIN wgmesh {real_name}: .{ZONE} names, managed by wgmesh, removed by `wgmesh down`"
    )
}

/// The last line of our hosts block for `real_name`.
fn hosts_end(real_name: &InterfaceName) -> String {
    format!("# END wgmesh {real_name}")
}

/// `current` without our block for `real_name` (everything else byte for byte).
pub fn hosts_without_block(current: &str, real_name: &InterfaceName) -> String {
    let (begin, end) = (hosts_begin(real_name), hosts_end(real_name));
    let mut out = String::with_capacity(current.len());
    let mut inside = false;
    for line in current.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        if !inside && bare == begin {
            inside = true;
        } else if inside && bare == end {
            inside = false;
        } else if !inside {
            out.push_str(line);
        }
    }
    out
}

/// `current` with our block for `real_name` listing `entries` (`name.mesh` and its
/// addresses, in order) at the end, replacing any block we wrote before. No entries, no
/// block.
pub fn hosts_with_block(
    current: &str,
    real_name: &InterfaceName,
    entries: &[(String, Vec<IpAddr>)],
) -> String {
    let mut out = hosts_without_block(current, real_name);
    if entries.is_empty() {
        return out;
    }
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&hosts_begin(real_name));
    out.push('\n');
    for (name, addrs) in entries {
        for addr in addrs {
            out.push_str(&format!("{addr}\t{name}\n"));
        }
    }
    out.push_str(&hosts_end(real_name));
    out.push('\n');
    out
}

/// Rewrites the hosts file at `path` (now holding `current`) to carry `entries` (none:
/// remove our block); empty when nothing would change. The runner writes it atomically.
pub fn hosts_plan(
    path: &Path,
    current: &str,
    real_name: &InterfaceName,
    entries: &[(String, Vec<IpAddr>)],
) -> Plan {
    let next = hosts_with_block(current, real_name, entries);
    if next == current {
        return Plan::default();
    }
    Plan {
        files: vec![PlannedFile {
            path: path.to_path_buf(),
            contents: Payload::Text(next),
            mode: PUBLIC_FILE_MODE,
        }],
        commands: Vec::new(),
    }
}

/// Where Group Policy keeps NRPT rules. Where any exist, Windows' DNS client ignores the
/// local NRPT rules (those `Add-DnsClientNrptRule` makes, under
/// `...\Services\Dnscache\Parameters\DnsPolicyConfig`), so wgmesh's `.mesh` rule has no
/// effect until the policy itself carries one.
pub const NRPT_GPO_KEY: &str =
    r"HKLM\SOFTWARE\Policies\Microsoft\Windows NT\DNSClient\DnsPolicyConfig";

/// `reg.exe query` of [`NRPT_GPO_KEY`]: lists one subkey per Group Policy NRPT rule, and
/// fails ("unable to find the specified registry key") where the policy has none.
pub fn nrpt_gpo_command() -> Command {
    Command::new("reg.exe").args(["query", NRPT_GPO_KEY])
}

/// Whether [`nrpt_gpo_command`]'s output (of a successful run) lists a rule: a subkey line
/// below the policy key.
pub fn gpo_nrpt_rules_present(output: &str) -> bool {
    let below = format!("{}\\", &NRPT_GPO_KEY[5..]).to_ascii_lowercase();
    output
        .lines()
        .any(|l| l.trim().to_ascii_lowercase().contains(&below))
}

/// What `status` says where Group Policy NRPT rules exist (see [`NRPT_GPO_KEY`]).
pub fn gpo_nrpt_hint(servers: &[IpAddr]) -> String {
    let servers: Vec<String> = servers.iter().map(IpAddr::to_string).collect();
    format!(
        "Group Policy NRPT rules exist on this machine, so Windows ignores local ones like \
         wgmesh's: .{ZONE} names resolve only once the policy has a rule sending .{ZONE} to {}",
        servers.join(", ")
    )
}

/// What `status` says on Linux without systemd-resolved and without `--dns-hosts`: how to send
/// `.mesh` queries to the resolver by hand.
pub fn manual_hint(servers: &[IpAddr]) -> String {
    let first = servers
        .first()
        .map_or_else(|| "MESH_IP".to_string(), IpAddr::to_string);
    format!(
        "this host has no systemd-resolved, so nothing sends .{ZONE} queries to wgmesh's resolver \
         on {first}: ask it directly (`dig @{first} NAME.{ZONE}`), point a local forwarder at it \
         (dnsmasq: `server=/{ZONE}/{first}`), or run `wgmesh up --dns-hosts` to keep the names in \
         /etc/hosts"
    )
}

/// Every DNS plan with the sample values of the golden files, named as its file.
#[cfg(test)]
pub(super) fn golden_plans() -> Vec<(String, Plan)> {
    let wg0: InterfaceName = "wg0".parse().expect("literal");
    let utun: InterfaceName = "utun3".parse().expect("literal");
    let servers: Vec<IpAddr> = vec![
        "10.100.0.5".parse().expect("literal"),
        "fd12:3456:789a::a64:5".parse().expect("literal"),
    ];
    let entries = sample_entries();
    let current = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n";
    let with = hosts_with_block(current, &wg0, &entries);
    vec![
        (
            "linux_dns_resolved_on".into(),
            on(DnsMethod::Resolved, &wg0, &servers),
        ),
        (
            "linux_dns_resolved_off".into(),
            off(DnsMethod::Resolved, &wg0),
        ),
        (
            "linux_dns_hosts_on".into(),
            hosts_plan(Path::new(HOSTS_FILE), current, &wg0, &entries),
        ),
        (
            "linux_dns_hosts_off".into(),
            hosts_plan(Path::new(HOSTS_FILE), &with, &wg0, &[]),
        ),
        (
            "macos_dns_on".into(),
            on(DnsMethod::ResolverFile, &utun, &servers),
        ),
        ("macos_dns_off".into(), off(DnsMethod::ResolverFile, &utun)),
        ("windows_dns_on".into(), on(DnsMethod::Nrpt, &wg0, &servers)),
        ("windows_dns_off".into(), off(DnsMethod::Nrpt, &wg0)),
    ]
}

#[cfg(test)]
fn sample_entries() -> Vec<(String, Vec<IpAddr>)> {
    vec![
        (
            "host-a.mesh".into(),
            vec![
                "10.100.0.5".parse().expect("literal"),
                "fd12:3456:789a::a64:5".parse().expect("literal"),
            ],
        ),
        (
            "web-2.mesh".into(),
            vec!["10.100.0.7".parse().expect("literal")],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wg0() -> InterfaceName {
        "wg0".parse().unwrap()
    }

    #[test]
    fn group_policy_nrpt_rules_are_recognised() {
        let path = format!(
            "{}/tests/fixtures/windows/reg_query_nrpt_gpo.txt",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(path).unwrap();
        assert!(gpo_nrpt_rules_present(&text));
        // The key alone, without any rule below it.
        let empty = format!(
            "\r\n{}\r\n",
            NRPT_GPO_KEY.replace("HKLM", "HKEY_LOCAL_MACHINE")
        );
        assert!(!gpo_nrpt_rules_present(&empty));
        assert_eq!(
            nrpt_gpo_command().render(),
            "reg.exe query 'HKLM\\SOFTWARE\\Policies\\Microsoft\\Windows NT\\DNSClient\\DnsPolicyConfig'"
        );
    }

    #[test]
    fn the_method_follows_the_os_and_what_the_host_runs() {
        use DnsMethod::*;
        assert_eq!(DnsMethod::for_os(TargetOs::Linux, true, true), Resolved);
        assert_eq!(DnsMethod::for_os(TargetOs::Linux, false, true), Hosts);
        assert_eq!(DnsMethod::for_os(TargetOs::Linux, false, false), Manual);
        assert_eq!(DnsMethod::for_os(TargetOs::Macos, true, true), ResolverFile);
        assert_eq!(DnsMethod::for_os(TargetOs::Windows, false, false), Nrpt);
        assert!(on(Manual, &wg0(), &[]).is_empty() && off(Manual, &wg0()).is_empty());
    }

    #[test]
    fn the_hosts_block_is_replaced_in_place_and_removed_without_a_trace() {
        let original = "127.0.0.1 localhost\n# a comment\n10.0.0.1 nas"; // no final newline
        let entries = sample_entries();
        let with = hosts_with_block(original, &wg0(), &entries);
        assert!(
            with.starts_with("127.0.0.1 localhost\n# a comment\n10.0.0.1 nas\n# BEGIN wgmesh wg0")
        );
        assert!(with.contains("10.100.0.7\tweb-2.mesh\n"));
        // Writing again with other names replaces the block rather than adding one.
        let fewer = hosts_with_block(&with, &wg0(), &entries[..1]);
        assert_eq!(fewer.matches("# BEGIN wgmesh wg0").count(), 1);
        assert!(!fewer.contains("web-2.mesh"));
        // Another interface's block and everything else stay.
        let other: InterfaceName = "wg1".parse().unwrap();
        let both = hosts_with_block(&fewer, &other, &entries);
        let removed = hosts_without_block(&both, &wg0());
        assert!(removed.contains("# BEGIN wgmesh wg1") && !removed.contains("# BEGIN wgmesh wg0"));
        // Removal gives back the original (plus the newline it lacked).
        assert_eq!(hosts_without_block(&with, &wg0()), format!("{original}\n"));
        assert!(hosts_plan(Path::new(HOSTS_FILE), &with, &wg0(), &entries).is_empty());
        assert!(hosts_plan(Path::new(HOSTS_FILE), original, &wg0(), &[]).is_empty());
    }

    #[test]
    fn off_is_tolerant_because_the_link_may_be_gone() {
        for method in [
            DnsMethod::Resolved,
            DnsMethod::ResolverFile,
            DnsMethod::Nrpt,
        ] {
            let plan = off(method, &wg0());
            assert!(!plan.commands.is_empty());
            assert!(plan.commands.iter().all(|c| c.allow_failure), "{method:?}");
        }
    }

    #[test]
    fn the_manual_hint_names_the_resolver() {
        let hint = manual_hint(&["10.100.0.5".parse().unwrap()]);
        assert!(
            hint.contains("dig @10.100.0.5") && hint.contains("--dns-hosts"),
            "{hint}"
        );
    }
}
