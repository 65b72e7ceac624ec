//! Reading Windows: the IPv4 routing table (`route print -4`, or PowerShell's `Get-NetRoute`
//! as JSON), whether the tunnel service still exists (`sc.exe query`), and whether the
//! configuration folder is protected (`(Get-Acl).Sddl`). Pure parsers over recorded text;
//! the agent runs the commands through its reader.

use super::route_table::{NextHop, Route, RouteTable};
use super::runner::Runner;
use super::Command;
use crate::types::{InterfaceName, InvalidValue};
use ipnet::Ipv4Net;
use serde::Deserialize;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// `route print -4`: every active IPv4 route. `route.exe` exists on every Windows and starts
/// in milliseconds (PowerShell takes about a second), and its numeric rows do not change with
/// the display language.
pub fn route_print_command() -> Command {
    Command::new("route").args(["print", "-4"])
}

/// Parses the active-route rows of `route print -4`: `DEST MASK GATEWAY IFADDR METRIC`, where
/// GATEWAY is an address or the localized word(s) for on-link ("On-link", "Auf Verbindung").
/// Headers, the interface list and persistent routes (four columns, metric "Default") never
/// match that shape and are skipped.
pub fn parse_route_print(text: &str) -> RouteTable {
    let mut routes = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 5 {
            continue;
        }
        let n = fields.len();
        let (Ok(dest), Ok(mask), Ok(iface), Ok(metric)) = (
            fields[0].parse::<Ipv4Addr>(),
            fields[1].parse::<Ipv4Addr>(),
            fields[n - 2].parse::<Ipv4Addr>(),
            fields[n - 1].parse::<u32>(),
        ) else {
            continue;
        };
        let Ok(dest) = Ipv4Net::with_netmask(dest, mask) else {
            continue;
        };
        let gateway = fields[2..n - 2].join(" ");
        let next_hop = match gateway.parse::<Ipv4Addr>() {
            Ok(g) if !g.is_unspecified() => NextHop::Gateway(g),
            _ => NextHop::OnLink,
        };
        routes.push(Route {
            dest: dest.trunc(),
            next_hop,
            iface: iface.to_string(),
            metric,
            scoped: false,
        });
    }
    RouteTable {
        routes,
        tunnel_v6: None,
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NetRoute {
    destination_prefix: String,
    next_hop: String,
    #[serde(default)]
    route_metric: u32,
    #[serde(default)]
    interface_metric: u32,
    #[serde(default)]
    interface_alias: String,
}

/// Parses `Get-NetRoute -AddressFamily IPv4 ... | Select-Object DestinationPrefix, NextHop,
/// RouteMetric, InterfaceMetric, InterfaceIndex, InterfaceAlias | ConvertTo-Json` (one route
/// is printed as an object, several as an array). NextHop `0.0.0.0` is how Windows writes
/// "on-link": it is never a gateway. The interface is named by its alias here. The agent
/// reads `route print -4` (no PowerShell start-up per sync); this reading, for diagnostics
/// and hosts where `route.exe` is restricted, decides the uplink the same way.
pub fn parse_get_netroute_json(text: &str) -> Result<RouteTable, InvalidValue> {
    let value: serde_json::Value =
        serde_json::from_str(text.trim()).map_err(|e| format!("Get-NetRoute JSON: {e}"))?;
    let items = match value {
        serde_json::Value::Array(items) => items,
        one => vec![one],
    };
    let mut routes = Vec::new();
    for item in items {
        let r: NetRoute =
            serde_json::from_value(item).map_err(|e| format!("Get-NetRoute JSON: {e}"))?;
        let Ok(dest) = r.destination_prefix.parse::<Ipv4Net>() else {
            continue;
        };
        let next_hop = match r.next_hop.parse::<Ipv4Addr>() {
            Ok(g) if !g.is_unspecified() => NextHop::Gateway(g),
            _ => NextHop::OnLink,
        };
        routes.push(Route {
            dest,
            next_hop,
            iface: r.interface_alias,
            metric: r.route_metric.saturating_add(r.interface_metric),
            scoped: false,
        });
    }
    Ok(RouteTable {
        routes,
        tunnel_v6: None,
    })
}

/// The Windows service name of a tunnel (wireguard-windows `conf.ServiceNameOfTunnel`).
pub fn service_name(name: &InterfaceName) -> String {
    format!("WireGuardTunnel${name}")
}

/// `sc.exe query WireGuardTunnel$NAME`: exit 0 with a STATE while the service exists.
pub fn service_query_command(name: &InterfaceName) -> Command {
    Command::new("sc.exe").args(["query".to_string(), service_name(name)])
}

/// `ERROR_SERVICE_DOES_NOT_EXIST`: what `sc.exe query` exits with once a service is deleted.
pub const SERVICE_DOES_NOT_EXIST: i32 = 1060;

/// What `sc.exe query` says about a tunnel service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceState {
    /// Deleted: a new one of the same name may be installed.
    Gone,
    /// Still registered, in this state (`RUNNING`, `STOP_PENDING`, ...): installing now fails.
    Present(String),
}

/// Reads `sc.exe query`'s outcome: exit status 1060 (or its message number in the output)
/// means gone; otherwise the `STATE : N NAME` line names the state. The numbers, not the
/// localized words, decide.
pub fn parse_service_query(exit_status: i32, output: &str) -> ServiceState {
    if exit_status == SERVICE_DOES_NOT_EXIST || output.contains("FAILED 1060") {
        return ServiceState::Gone;
    }
    let state = output
        .lines()
        .find_map(|l| {
            let (key, value) = l.split_once(':')?;
            (key.trim() == "STATE").then(|| value.split_whitespace().nth(1).map(str::to_owned))?
        })
        .unwrap_or_else(|| "UNKNOWN".into());
    ServiceState::Present(state)
}

/// The security descriptor wgmesh gives its configuration folder (SDDL): owner
/// Administrators, a protected DACL (nothing inherited from `%ProgramData%`, whose ACL lets
/// Users create files), full control for SYSTEM and Administrators only, inherited by
/// everything created inside. Nothing else may read the private key or swap the file the
/// SYSTEM tunnel service loads.
pub const CONFIG_DIR_SDDL: &str = "O:BAG:SYD:PAI(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)";

/// Checks the SDDL of an existing configuration folder (`(Get-Acl -LiteralPath DIR).Sddl`):
/// owned by SYSTEM or Administrators, DACL protected, and every ACE an allow for SYSTEM or
/// Administrators. Anything else could have been created or loosened by a user beforehand,
/// so it is refused with what is wrong, never repaired silently.
pub fn check_config_dir_sddl(sddl: &str) -> Result<(), InvalidValue> {
    let sddl = sddl.trim();
    let owner = sddl
        .strip_prefix("O:")
        .map(|rest| rest.split(['G', 'D']).next().unwrap_or(""))
        .unwrap_or("");
    if owner != "BA" && owner != "SY" && owner != "S-1-5-32-544" && owner != "S-1-5-18" {
        return Err(InvalidValue(format!(
            "is owned by {}, not by Administrators or SYSTEM",
            if owner.is_empty() {
                "nobody known"
            } else {
                owner
            }
        )));
    }
    let Some(dacl_at) = sddl.find("D:") else {
        return Err("has no access control list (everyone may use it)".into());
    };
    let dacl = &sddl[dacl_at + 2..];
    let dacl = dacl.split("S:").next().unwrap_or(dacl); // an audit list is irrelevant here
    let (flags, aces) = dacl.split_at(dacl.find('(').unwrap_or(dacl.len()));
    if !flags.contains('P') {
        return Err("inherits permissions from its parent (Users may create files there)".into());
    }
    for ace in aces
        .split(['(', ')'])
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        let parts: Vec<&str> = ace.split(';').collect();
        let (kind, trustee) = (parts.first().copied(), parts.get(5).copied());
        let trusted = matches!(trustee, Some("SY" | "BA" | "S-1-5-18" | "S-1-5-32-544"));
        match kind {
            Some("A") if trusted => {}
            Some("D") => {} // a deny entry only takes access away
            _ => {
                return Err(InvalidValue(format!(
                "grants access to {} (entry `{ace}`); only SYSTEM and Administrators may have any",
                trustee.unwrap_or("someone")
            )))
            }
        }
    }
    Ok(())
}

/// Windows' reserved device names, which no file (and so no tunnel configuration) may be
/// called, with or without an extension (wireguard-windows `conf/name.go`).
const RESERVED: [&str; 22] = [
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
    "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
];

/// Whether wireguard-windows accepts `name` as a tunnel name, beyond what every OS requires
/// of an interface name (checked by [`InterfaceName`]): not a reserved device name (also
/// before a dot: `nul.x`), and no leading or trailing `.`. Returns the reason otherwise.
pub fn check_tunnel_name(name: &InterfaceName) -> Result<(), InvalidValue> {
    let s = name.as_str();
    let stem = s.split('.').next().unwrap_or(s);
    if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(stem)) {
        return Err(InvalidValue(format!(
            "{s:?} cannot name a tunnel on Windows: {} is a reserved device name there \
             (CON, PRN, AUX, NUL, COM1-9, LPT1-9, even with an extension); pick another, e.g. wg0",
            stem.to_ascii_uppercase()
        )));
    }
    if s.starts_with('.') || s.ends_with('.') {
        return Err(InvalidValue(format!(
            "{s:?} cannot name a tunnel on Windows: names may not start or end with '.'; pick another, e.g. wg0"
        )));
    }
    Ok(())
}

/// The folder for tunnel configurations, `%ProgramData%\wgmesh`, from the value of the
/// `ProgramData` environment variable (`C:\ProgramData` when unset, as on every default
/// install). Only an absolute drive path made of plain characters is accepted, because the
/// path reaches `wireguard.exe`'s command line and the service's configuration.
pub fn config_dir_from(program_data: Option<&str>) -> Result<String, InvalidValue> {
    let base = program_data
        .unwrap_or(r"C:\ProgramData")
        .trim_end_matches('\\');
    let bytes = base.as_bytes();
    let absolute = bytes.len() >= 3 && bytes[0].is_ascii_alphabetic() && &bytes[1..3] == b":\\";
    let plain = base
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b" :\\._-()".contains(&b));
    if !absolute || !plain || base.split('\\').any(|p| p == "..") {
        return Err(InvalidValue(format!(
            "%ProgramData% is {base:?}: expected an absolute path such as C:\\ProgramData"
        )));
    }
    Ok(format!(r"{base}\wgmesh"))
}

/// How long a rebuild waits for the old tunnel service to be deleted before installing the
/// new one: wireguard-windows stops a tunnel in a second or two (it tears down the adapter
/// and its routes); half a minute covers a slow machine without hanging the agent forever.
pub const SERVICE_GONE_TIMEOUT: Duration = Duration::from_secs(30);

/// Pause between two `sc.exe query` polls: wireguard-windows' own installer polls a
/// deleted service every third of a second.
pub const SERVICE_POLL: Duration = Duration::from_millis(333);

/// Waits (bounded by `timeout`) until the tunnel service `name` no longer exists, because
/// `/installtunnelservice` refuses while the old one is still stopping ("Tunnel already
/// installed and running"). Returns the state it was stuck in when time ran out.
pub fn wait_service_gone(
    reader: &mut dyn Runner,
    name: &InterfaceName,
    timeout: Duration,
    pause: Duration,
) -> Result<(), InvalidValue> {
    let start = Instant::now();
    loop {
        let state = match reader.run(&service_query_command(name)) {
            Ok(out) => parse_service_query(0, &out.stdout),
            Err(e) => parse_service_query(e.exit_status().unwrap_or(-1), &e.stderr),
        };
        match state {
            ServiceState::Gone => return Ok(()),
            ServiceState::Present(state) if start.elapsed() >= timeout => {
                return Err(InvalidValue(format!(
                    "the old tunnel service {} is still {state} after {} s, so the new one \
                     cannot be installed; check `sc.exe query {}` and try again",
                    service_name(name),
                    timeout.as_secs(),
                    service_name(name)
                )))
            }
            ServiceState::Present(_) => std::thread::sleep(pause),
        }
    }
}

/// How long the agent waits for a just-installed tunnel's adapter: wireguard-windows'
/// service retries creating it for up to 15 s when started at boot (`tunnel/service.go`), and
/// resolves endpoints before that; twice that covers a slow machine.
pub const TUNNEL_UP_TIMEOUT: Duration = Duration::from_secs(30);

/// `netsh interface ipv6 show route`: every IPv6 route with its interface's name (`route
/// print -6` names interfaces by index only).
pub fn route6_command() -> Command {
    Command::new("netsh").args(["interface", "ipv6", "show", "route"])
}

/// The IPv6 prefixes `netsh interface ipv6 show route` shows on interface `name` (rows
/// `Publish Type Met Prefix Idx Gateway/Interface Name`; the header is translated, the
/// layout is not, so rows are recognised by their prefix column).
pub fn parse_netsh_route6_tunnel(text: &str, name: &str) -> Vec<ipnet::Ipv6Net> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let prefix: ipnet::Ipv6Net = fields.get(3)?.parse().ok()?;
            (fields.get(5..)?.join(" ") == name).then(|| prefix.trunc())
        })
        .collect()
}

/// Waits (bounded by `timeout`) until `wg.exe show NAME dump` answers, i.e. the tunnel
/// service has created its adapter: `/installtunnelservice` returns once the service has
/// started, before that, and a `wg.exe set` in between fails.
pub fn wait_tunnel_up(
    reader: &mut dyn Runner,
    name: &InterfaceName,
    timeout: Duration,
    pause: Duration,
) -> Result<(), InvalidValue> {
    let start = Instant::now();
    let show = Command::new(super::wg_program(super::TargetOs::Windows)).args([
        "show",
        name.as_str(),
        "dump",
    ]);
    loop {
        match reader.run(&show) {
            Ok(_) => return Ok(()),
            Err(e) if start.elapsed() >= timeout => {
                return Err(InvalidValue(format!(
                    "the tunnel service {} started but its adapter {name} did not appear                      within {} s ({e}); see `wireguard.exe /dumplog` and try again",
                    service_name(name),
                    timeout.as_secs()
                )))
            }
            Err(_) => std::thread::sleep(pause),
        }
    }
}

/// Checks what [`super::windows_config_dir_acl`] prints for the configuration folder: its
/// attributes on the first line (`Get-Item -Force`, which describes a junction itself, not
/// its target), its SDDL after. A reparse point (a junction or symbolic link) is refused
/// whatever ACL its target has, as wireguard-windows refuses one at its data directory
/// (`conf/path_windows.go`: opened with `FILE_FLAG_OPEN_REPARSE_POINT`, "Data directory is
/// reparse point"): a user could make `%ProgramData%\wgmesh` a junction to an admin-only
/// folder with the accepted ACL and re-point it later, and the SYSTEM service reloads the
/// path at every start.
pub fn check_config_dir_listing(out: &str) -> Result<(), InvalidValue> {
    let mut lines = out.lines().map(str::trim).filter(|l| !l.is_empty());
    let attributes = lines.next().unwrap_or_default();
    let has = |name: &str| {
        attributes
            .split(',')
            .any(|a| a.trim().eq_ignore_ascii_case(name))
    };
    if has("ReparsePoint") {
        return Err(
            "is a reparse point (a junction or symbolic link), which could be re-pointed              elsewhere later"
                .into(),
        );
    }
    if !has("Directory") {
        return Err(InvalidValue(format!(
            "is not a plain folder (attributes: {attributes})"
        )));
    }
    check_config_dir_sddl(&lines.collect::<Vec<_>>().join(""))
}

/// Reads and checks the configuration folder (`command` prints its attributes and SDDL, see
/// [`check_config_dir_listing`]) before a private key is written into it; the error says
/// what is wrong and how to fix it.
pub fn check_config_dir(
    reader: &mut dyn Runner,
    command: &Command,
    dir: &str,
) -> Result<(), InvalidValue> {
    let out = reader
        .run(command)
        .map_err(|e| format!("cannot read the ACL of {dir}: {e}"))?;
    check_config_dir_listing(&out.stdout).map_err(|why| {
        InvalidValue(format!(
            "refusing to write the tunnel's private key into {dir}: the folder {why}. \
             Delete it (wgmesh recreates it as a plain folder readable by SYSTEM and \
             Administrators only) or give it exactly that ACL with owner Administrators"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::route_table::Uplink;

    fn fixture(name: &str) -> String {
        crate::os::route_table::fixture("windows", name)
    }

    const MESH_ADDR: &str = "10.100.0.5";

    fn uplink(table: &RouteTable) -> Uplink {
        // Windows pins only through a gateway: an on-link default has nothing to pin to.
        table.uplink(MESH_ADDR, |_| false)
    }

    #[test]
    fn route_print_gives_the_default_gateway_never_0_0_0_0() {
        let home = parse_route_print(&fixture("route_print_home.txt"));
        assert_eq!(
            uplink(&home),
            Uplink::Gateway("192.168.1.1".parse().unwrap())
        );
        let up = parse_route_print(&fixture("route_print_tunnel_up.txt"));
        assert_eq!(uplink(&up), Uplink::Gateway("192.168.1.1".parse().unwrap()));
        // Two uplinks on a German system: the lower metric (Ethernet, 25) wins.
        let de = parse_route_print(&fixture("route_print_two_uplinks_de.txt"));
        assert_eq!(uplink(&de), Uplink::Gateway("172.16.8.1".parse().unwrap()));
        assert!(de
            .routes
            .iter()
            .all(|r| r.dest.to_string() != "10.20.0.0/16")); // persistent
        assert_eq!(
            de.routes
                .iter()
                .filter(|r| r.next_hop == NextHop::OnLink)
                .count(),
            8
        );
        let ppp = parse_route_print(&fixture("route_print_ppp.txt"));
        assert_eq!(uplink(&ppp), Uplink::Unusable);
        let none = parse_route_print(&fixture("route_print_no_default.txt"));
        assert!(none.routes.is_empty());
        assert_eq!(uplink(&none), Uplink::Unusable);
    }

    #[test]
    fn route_print_shows_whether_the_tunnel_routes_survived_a_reboot() {
        let up = parse_route_print(&fixture("route_print_tunnel_up.txt"));
        assert!(up.has_tunnel_halves(MESH_ADDR));
        let gw = Uplink::Gateway("192.168.1.1".parse().unwrap());
        assert!(up.has_pin("198.18.0.7".parse().unwrap(), &gw));
        // After a reboot the service is back, but the store=active routes are not.
        let rebooted = parse_route_print(&fixture("route_print_home.txt"));
        assert!(!rebooted.has_tunnel_halves(MESH_ADDR));
        assert!(!rebooted.has_pin("198.18.0.7".parse().unwrap(), &gw));
    }

    #[test]
    fn route_print_decides_which_addresses_need_pins() {
        let mesh: Ipv4Net = "10.100.0.0/16".parse().unwrap();
        let up = parse_route_print(&fixture("route_print_tunnel_up.txt"));
        for (addr, pin) in [
            ("198.18.0.7", true),
            ("203.0.113.9", true),
            ("192.168.1.40", false),
            ("127.0.0.1", false),
            ("10.100.0.9", false),
            ("192.168.1.23", false),
        ] {
            assert_eq!(
                up.reached_via_default(addr.parse().unwrap(), mesh, MESH_ADDR),
                pin,
                "{addr}"
            );
        }
    }

    #[test]
    fn get_netroute_json_object_and_array() {
        let one = parse_get_netroute_json(&fixture("get_netroute_one.json")).unwrap();
        assert_eq!(
            one.uplink("wg0", |_| false),
            Uplink::Gateway("192.168.1.1".parse().unwrap())
        );
        // NextHop 0.0.0.0 (the VPN, metric 1) is on-link: skipped for the lowest-metric
        // real gateway (Ethernet, 25), never used as a gateway.
        let two = parse_get_netroute_json(&fixture("get_netroute_two.json")).unwrap();
        assert_eq!(two.routes.len(), 3);
        assert_eq!(two.routes[0].next_hop, NextHop::OnLink);
        assert_eq!(
            two.uplink("wg0", |_| false),
            Uplink::Gateway("172.16.8.1".parse().unwrap())
        );
        assert!(parse_get_netroute_json("WARNING: not json").is_err());
    }

    #[test]
    fn sc_query_tells_running_stopping_and_gone_apart() {
        assert_eq!(
            parse_service_query(0, &fixture("sc_query_running.txt")),
            ServiceState::Present("RUNNING".into())
        );
        assert_eq!(
            parse_service_query(0, &fixture("sc_query_stop_pending.txt")),
            ServiceState::Present("STOP_PENDING".into())
        );
        assert_eq!(
            parse_service_query(1060, &fixture("sc_query_gone.txt")),
            ServiceState::Gone
        );
        assert_eq!(
            parse_service_query(1, &fixture("sc_query_gone.txt")),
            ServiceState::Gone
        );
    }

    #[test]
    fn only_a_protected_admin_owned_folder_is_accepted() {
        assert_eq!(
            check_config_dir_sddl(&fixture("sddl_protected.txt")),
            Ok(())
        );
        assert_eq!(check_config_dir_sddl(CONFIG_DIR_SDDL), Ok(()));
        let inherited = check_config_dir_sddl(&fixture("sddl_inherited.txt")).unwrap_err();
        assert!(inherited.0.contains("inherits"), "{inherited}");
        let user = check_config_dir_sddl(&fixture("sddl_user_owned.txt")).unwrap_err();
        assert!(user.0.contains("owned by S-1-5-21-"), "{user}");
        let users_can_read =
            check_config_dir_sddl("O:BAG:SYD:PAI(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)(A;OICI;FR;;;BU)")
                .unwrap_err();
        assert!(users_can_read.0.contains("BU"), "{users_can_read}");
        assert!(check_config_dir_sddl("O:BAG:SY").is_err());
    }

    #[test]
    fn windows_reserved_tunnel_names_are_refused_with_the_reason() {
        for bad in [
            "con",
            "NUL",
            "aux",
            "prn",
            "com1",
            "COM9",
            "lpt1",
            "nul.x",
            "Lpt9.conf",
        ] {
            let err = check_tunnel_name(&bad.parse().unwrap()).unwrap_err();
            assert!(err.0.contains("reserved device name"), "{bad}: {err}");
        }
        for bad in [".wg0", "wg0."] {
            let err = check_tunnel_name(&bad.parse().unwrap()).unwrap_err();
            assert!(err.0.contains("start or end with '.'"), "{bad}: {err}");
        }
        for good in ["wg0", "com10", "console", "lpt", "nulx", "wg.0", "mesh-1"] {
            assert_eq!(check_tunnel_name(&good.parse().unwrap()), Ok(()), "{good}");
        }
    }

    #[test]
    fn rebuild_waits_for_the_old_service_to_be_gone() {
        use crate::os::runner::{RecordingRunner, Scripted};
        let name: InterfaceName = "wg0".parse().unwrap();
        let mut runner = RecordingRunner::new();
        runner
            .expect_scripted(
                "sc.exe query 'WireGuardTunnel$wg0'",
                Scripted::Succeed(fixture("sc_query_running.txt")),
            )
            .expect_scripted(
                "sc.exe query 'WireGuardTunnel$wg0'",
                Scripted::Succeed(fixture("sc_query_stop_pending.txt")),
            )
            .expect_scripted(
                "sc.exe query 'WireGuardTunnel$wg0'",
                Scripted::Fail(1060, fixture("sc_query_gone.txt")),
            );
        let pause = Duration::from_millis(1);
        wait_service_gone(&mut runner, &name, Duration::from_secs(5), pause).unwrap();
        runner.assert_done();

        // Bounded: a service stuck stopping is reported, not waited on forever.
        let mut stuck = RecordingRunner::new();
        stuck.expect_scripted(
            "sc.exe query 'WireGuardTunnel$wg0'",
            Scripted::Succeed(fixture("sc_query_stop_pending.txt")),
        );
        let err = wait_service_gone(&mut stuck, &name, Duration::ZERO, pause).unwrap_err();
        assert!(err.0.contains("still STOP_PENDING"), "{err}");
    }

    #[test]
    fn netsh_shows_the_tunnels_ipv6_halves_and_routes() {
        let v6 = parse_netsh_route6_tunnel(&fixture("netsh_ipv6_route_tunnel_up.txt"), "wg0");
        let has = |n: &str| v6.contains(&n.parse().unwrap());
        assert!(
            has("::/1") && has("8000::/1") && has("fd12:3456:789a::/96"),
            "{v6:?}"
        );
        assert!(!has("::/0") && !has("::1/128"), "{v6:?}");
        let rebooted = parse_netsh_route6_tunnel(&fixture("netsh_ipv6_route_rebooted.txt"), "wg0");
        assert!(!rebooted.contains(&"::/1".parse().unwrap()), "{rebooted:?}");
        assert!(rebooted.contains(&"fd12:3456:789a::/96".parse().unwrap()));
    }

    #[test]
    fn install_waits_for_the_adapter_bounded() {
        use crate::os::runner::{RecordingRunner, Scripted};
        let name: InterfaceName = "wg0".parse().unwrap();
        let missing = || {
            Scripted::Fail(
                1,
                "Unable to access interface: The system cannot find the file specified.".into(),
            )
        };
        let mut runner = RecordingRunner::new();
        runner
            .expect_scripted("wg.exe show wg0 dump", missing())
            .expect_scripted("wg.exe show wg0 dump", missing())
            .expect_scripted("wg.exe show wg0 dump", Scripted::Succeed(String::new()));
        let pause = Duration::from_millis(1);
        wait_tunnel_up(&mut runner, &name, Duration::from_secs(5), pause).unwrap();
        runner.assert_done();

        let mut never = RecordingRunner::new();
        never.expect_scripted("wg.exe show wg0 dump", missing());
        let err = wait_tunnel_up(&mut never, &name, Duration::ZERO, pause).unwrap_err();
        assert!(
            err.0.contains("WireGuardTunnel$wg0") && err.0.contains("did not appear"),
            "{err}"
        );
    }

    #[test]
    fn config_dir_check_reads_the_acl_and_refuses_a_loose_one() {
        use crate::os::runner::{RecordingRunner, Scripted};
        let cmd = Command::new("get-acl");
        let mut runner = RecordingRunner::new();
        runner
            .expect_scripted(
                "get-acl",
                Scripted::Succeed(fixture("config_dir_plain.txt")),
            )
            .expect_scripted(
                "get-acl",
                Scripted::Succeed(fixture("config_dir_user_owned.txt")),
            )
            .expect_scripted(
                "get-acl",
                Scripted::Succeed(fixture("config_dir_junction.txt")),
            );
        check_config_dir(&mut runner, &cmd, r"C:\ProgramData\wgmesh").unwrap();
        let err = check_config_dir(&mut runner, &cmd, r"C:\ProgramData\wgmesh").unwrap_err();
        assert!(
            err.0.contains("refusing") && err.0.contains("Delete it"),
            "{err}"
        );
        // A junction is refused although its target's ACL is exactly the accepted one.
        let junction = fixture("config_dir_junction.txt");
        let target_sddl = junction.lines().nth(1).unwrap();
        assert_eq!(check_config_dir_sddl(target_sddl), Ok(()));
        let err = check_config_dir(&mut runner, &cmd, r"C:\ProgramData\wgmesh").unwrap_err();
        assert!(err.0.contains("reparse point"), "{err}");
        runner.assert_done();
        assert!(check_config_dir_listing("Archive\r\nO:BAG:SYD:PAI(A;OICI;FA;;;SY)").is_err());
    }

    #[test]
    fn config_dir_comes_from_program_data() {
        assert_eq!(config_dir_from(None).unwrap(), r"C:\ProgramData\wgmesh");
        assert_eq!(
            config_dir_from(Some(r"D:\ProgramData\")).unwrap(),
            r"D:\ProgramData\wgmesh"
        );
        for bad in [
            "ProgramData",
            r"\\server\share",
            r"C:\a\..\b",
            r"C:\x;y",
            "C:",
        ] {
            assert!(config_dir_from(Some(bad)).is_err(), "{bad}");
        }
    }
}
