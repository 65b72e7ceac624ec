//! Windows plans: the WireGuard for Windows tunnel service (`wireguard.exe`) owns the adapter,
//! addresses and initial routes; `wg.exe` updates peers live; `netsh` and `route` add the
//! routes the service does not (it only routes the AllowedIPs it saw at install time).

use super::{
    observe_windows, Command, InterfaceSpec, Payload, PeerSpec, Plan, PlannedFile, Secret,
};
use crate::types::InterfaceName;
use ipnet::IpNet;
use std::path::PathBuf;

/// Where wgmesh keeps tunnel configurations: `%ProgramData%\wgmesh` (see
/// [`observe_windows::config_dir_from`]); the file name (minus `.conf`) becomes the tunnel
/// name, `WireGuardTunnel$NAME`. An unusable `%ProgramData%` falls back to the default
/// location with a warning rather than writing somewhere unexpected.
pub(super) fn config_dir() -> String {
    let program_data = std::env::var("ProgramData").ok();
    observe_windows::config_dir_from(program_data.as_deref()).unwrap_or_else(|why| {
        log::warn!("{why}; using C:\\ProgramData\\wgmesh");
        r"C:\ProgramData\wgmesh".to_string()
    })
}

pub(super) fn config_path(name: &InterfaceName) -> PathBuf {
    PathBuf::from(format!(r"{}\{name}.conf", config_dir()))
}

/// `powershell.exe` running a fixed script. Values reach the script only through
/// environment variables (`$env:WGMESH_DIR`), never by being pasted into its text, so no
/// path can be read as code.
fn powershell(script: &str) -> Command {
    Command::new("powershell.exe").args(["-NoProfile", "-NonInteractive", "-Command", script])
}

/// Creates the configuration folder already protected, when it does not exist: .NET's
/// `Directory.CreateDirectory(path, DirectorySecurity)` applies the security descriptor as
/// the folder is created, so there is no moment in which `%ProgramData%`'s inherited ACL
/// (Users may create files) applies to it. An existing folder is left as it is: the agent
/// then checks its ACL ([`config_dir_acl_command`]) and refuses a wrong one before writing.
pub(super) fn create() -> Plan {
    let script = format!(
        "$ErrorActionPreference = \"Stop\"; \
         if (-not (Test-Path -LiteralPath $env:WGMESH_DIR)) {{ \
         $acl = New-Object System.Security.AccessControl.DirectorySecurity; \
         $acl.SetSecurityDescriptorSddlForm(\"{}\"); \
         [void][System.IO.Directory]::CreateDirectory($env:WGMESH_DIR, $acl) }}",
        observe_windows::CONFIG_DIR_SDDL
    );
    Plan::of(vec![powershell(&script).env("WGMESH_DIR", config_dir())])
}

/// Prints the configuration folder's attributes (of the folder itself: `Get-Item -Force`
/// does not follow a junction) and then its security descriptor as SDDL, for
/// [`observe_windows::check_config_dir_listing`].
pub(super) fn config_dir_acl_command() -> Command {
    powershell(
        "$ErrorActionPreference = \"Stop\"; \
         (Get-Item -LiteralPath $env:WGMESH_DIR -Force).Attributes.ToString(); \
         (Get-Acl -LiteralPath $env:WGMESH_DIR).Sddl",
    )
    .env("WGMESH_DIR", config_dir())
}

pub(super) fn configure(
    spec: &InterfaceSpec,
    peers: &[PeerSpec],
    kill_switch: Option<&PeerSpec>,
) -> Plan {
    let path = config_path(&spec.name);
    Plan {
        files: vec![config_file(spec, peers, kill_switch)],
        commands: vec![Command::new("wireguard.exe")
            .arg("/installtunnelservice")
            .arg(path.display().to_string())],
    }
}

/// The tunnel configuration file the service loads at every start (`conf.LoadFromPath` in
/// wireguard-windows' `tunnel/service.go`): `peers` without default routes, or only the exit
/// peer in kill-switch form. The file inherits the folder's protected ACL (SYSTEM and Administrators only),
/// which [`create`] set and the agent checked before a plan writes the private key.
pub(super) fn config_file(
    spec: &InterfaceSpec,
    peers: &[PeerSpec],
    kill_switch: Option<&PeerSpec>,
) -> PlannedFile {
    let config = match kill_switch {
        Some(exit) => super::wgquick::render_kill_switch_service(spec, exit),
        None => super::wgquick::render_tunnel_service(spec, peers),
    };
    PlannedFile::private(
        config_path(&spec.name),
        Payload::Secret(Secret::new("tunnel configuration", config.into_bytes())),
    )
}

fn family(net: &IpNet) -> &'static str {
    match net {
        IpNet::V4(_) => "ipv4",
        IpNet::V6(_) => "ipv6",
    }
}

/// `netsh interface ipvN VERB route prefix=NET interface=NAME store=active`: an on-link route
/// through the tunnel adapter, gone at reboot like the tunnel's own routes.
fn netsh_route(verb: &str, net: &IpNet, real_name: &InterfaceName) -> Command {
    let net = net.trunc();
    Command::new("netsh").args([
        "interface".to_string(),
        family(&net).into(),
        verb.into(),
        "route".into(),
        format!("prefix={net}"),
        format!("interface={real_name}"),
        "store=active".into(),
    ])
}

/// Adds the route or, when it already exists (`add` refuses duplicates), updates it.
fn ensure_netsh_route(net: &IpNet, real_name: &InterfaceName) -> Command {
    netsh_route("add", net, real_name).or_else(netsh_route("set", net, real_name))
}

pub(super) fn routes(real_name: &InterfaceName, add: &[IpNet], remove: &[IpNet]) -> Plan {
    let mut commands: Vec<Command> = add
        .iter()
        .map(|net| ensure_netsh_route(net, real_name))
        .collect();
    commands.extend(
        remove
            .iter()
            .map(|net| netsh_route("delete", net, real_name).tolerate_failure()),
    );
    Plan::of(commands)
}

pub(super) fn destroy(real_name: &InterfaceName) -> Plan {
    // Removing the service removes the adapter and every route through it; the configuration
    // (with the private key) goes too, so nothing of the tunnel is left after `down`.
    Plan::of(vec![
        Command::new("wireguard.exe")
            .args(["/uninstalltunnelservice", real_name.as_str()])
            .tolerate_failure(),
        powershell(
            "Remove-Item -LiteralPath $env:WGMESH_FILE -Force -ErrorAction SilentlyContinue",
        )
        .env("WGMESH_FILE", config_path(real_name).display().to_string())
        .tolerate_failure(),
    ])
}
