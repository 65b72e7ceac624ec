//! The client subcommands: `up`, `sync`, `down`, `status`, `export`, `genkey`, `pubkey`.

use super::exit::{agent_failure, CliError, EXIT_INTERNAL, EXIT_RUNNING, EXIT_STATE, EXIT_USAGE};
use super::output::{init_logging, print_json, LogLevel};
use crate::agent::client::ServerUrl;
use crate::agent::decide::path::PathSettings;
use crate::agent::dns::service::MeshDns;
use crate::agent::dns::DnsOptions;
use crate::agent::run::daemon::{self, Intervals};
use crate::agent::run::engine::{self, Sink};
use crate::agent::run::instance::{self, InstanceLock, LockError};
use crate::agent::run::setup::{self, Overrides};
use crate::agent::state::config::{self, ExitFallback};
use crate::agent::state::subnet_routes::{PrefixList, SubnetRouteFlags, TableChoice};
use crate::keys::PublicKey;
use crate::os::runner::SystemRunner;
use crate::os::TargetOs;
use crate::types::{Endpoint, Hostname, InterfaceName, InvalidValue};
use argh::FromArgs;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

mod inspect;
mod keys;
mod report;

pub use inspect::{export, status, ExportArgs, StatusArgs};
pub use keys::{genkey, pubkey, GenkeyArgs, PubkeyArgs};

/// The join token from `--token`, else `--token-file`, else the `WGMESH_TOKEN` environment
/// variable: the last two keep it out of shell history and `ps`.
fn join_token(flag: Option<String>, file: Option<PathBuf>) -> Result<Option<String>, CliError> {
    if let Some(token) = flag {
        return Ok(Some(token.trim().to_owned()));
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(&path).map_err(|e| {
            CliError::new(
                EXIT_USAGE,
                format!("cannot read --token-file {}: {e}", path.display()),
            )
        })?;
        return Ok(Some(text.trim().to_owned()));
    }
    Ok(std::env::var("WGMESH_TOKEN")
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty()))
}

/// `--use-exit-node`: a peer's hostname, mesh address or peer id, or "none".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitChoice(Option<String>);

impl std::str::FromStr for ExitChoice {
    type Err = InvalidValue;
    fn from_str(value: &str) -> Result<Self, InvalidValue> {
        if value == "none" {
            return Ok(ExitChoice(None));
        }
        let valid = value.parse::<std::net::Ipv4Addr>().is_ok()
            || value.parse::<crate::types::PeerId>().is_ok()
            || value.parse::<Hostname>().is_ok();
        if valid {
            Ok(ExitChoice(Some(value.to_owned())))
        } else {
            Err(InvalidValue(format!(
                "{:?} is not a peer: give its hostname, mesh address or peer id, or \"none\"",
                crate::types::describe(value)
            )))
        }
    }
}

/// The flags `up` and `sync` share, as [`Overrides`]. The two argument structs repeat these
/// flags because argh has no way to flatten one struct into another and each flag's doc
/// comment is its help text; `duplicates` reports the pair, and this macro keeps their use in
/// one place.
macro_rules! overrides {
    ($args:ident) => {
        Overrides {
            config: $args.config,
            server: $args.server.first().cloned(),
            fallback_servers: $args.server.iter().skip(1).cloned().collect(),
            interface: $args.interface,
            listen_port: $args.listen_port,
            mtu: $args.mtu,
            endpoint: $args.endpoint,
            hostname: $args.hostname,
            exit_node: $args.exit_node,
            use_exit_node: $args.use_exit_node.map(|c| c.0),
            exit_fallback: $args.exit_fallback,
            os: $args.os,
            token: join_token($args.token, $args.token_file)?,
            server_key: $args.server_key,
            ca: $args.ca,
            paths: path_settings($args.relay_after, $args.direct_probe_interval)?,
            dry_run: $args.dry_run,
            subnet_routes: SubnetRouteFlags {
                advertise: $args.advertise_routes,
                snat: $args.snat_subnet_routes.map(|s| s.0),
                from_table: $args.routes_from_table,
                from_table_allow: $args.routes_from_table_allow,
                to_table: $args.routes_to_table,
            },
            accept_routes: $args.accept_routes,
            login: false,
        }
    };
}

/// Bring this machine into the mesh and keep it there: register, create the WireGuard
/// interface, then heartbeat and sync peers in the foreground until SIGINT/SIGTERM or
/// `wgmesh down`, which remove everything it set up. One agent per config: a second `up` or
/// `sync` exits 7 ("already running (pid N)").
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "up")]
pub struct UpArgs {
    /// coordination server, e.g. http://198.18.0.1:8080 (remembered in the config); repeat
    /// it for replicas of one cluster: the agent sticks to one and fails over to the next
    #[argh(option)]
    server: Vec<ServerUrl>,
    /// PEM file of the CA certificate(s) the server's HTTPS certificate must chain to,
    /// replacing the bundled public roots (for a private CA or a self-signed server)
    #[argh(option)]
    ca: Option<PathBuf>,
    /// client config file (default ~/.config/wireguard-mesh/client.json, mode 0600)
    #[argh(option)]
    config: Option<PathBuf>,
    /// name of the WireGuard interface (default wg0)
    #[argh(option)]
    interface: Option<InterfaceName>,
    /// UDP port WireGuard listens on (default 51820)
    #[argh(option)]
    listen_port: Option<u16>,
    /// endpoint other peers should dial, IP:PORT (default: the address the server sees)
    #[argh(option)]
    endpoint: Option<Endpoint>,
    /// hostname to register (default: this machine's)
    #[argh(option)]
    hostname: Option<Hostname>,
    /// seconds between heartbeats (default 30)
    #[argh(option, default = "30")]
    heartbeat_interval: u64,
    /// seconds between peer syncs (default 60)
    #[argh(option, default = "60")]
    sync_interval: u64,
    /// join token for this key's first registration (or --token-file, or env WGMESH_TOKEN,
    /// which keep it out of shell history); not needed once registered
    #[argh(option)]
    token: Option<String>,
    /// file holding the join token
    #[argh(option)]
    token_file: Option<PathBuf>,
    /// join by logging in with the organisation's identity provider instead of a token:
    /// prints a URL and a code to open on any device, and waits (the server must run with
    /// --oidc-issuer); also renews an expired or ended login
    #[argh(switch)]
    login: bool,
    /// the server's public key, pinned up front; default: the one pinned at registration, or
    /// learned from the server on first use
    #[argh(option)]
    server_key: Option<PublicKey>,
    /// offer this machine as an exit node (give it on every run; without it the machine stops
    /// being one)
    #[argh(switch)]
    exit_node: bool,
    /// send all internet traffic through this exit node (hostname, mesh address or peer id;
    /// remembered; "none" clears it)
    #[argh(option)]
    use_exit_node: Option<ExitChoice>,
    /// while the chosen exit node is offline: block (default: nothing leaks) or direct
    #[argh(option)]
    exit_fallback: Option<ExitFallback>,
    /// networks this node routes for the mesh, e.g. 192.168.10.0/24,fd00:10::/64
    /// (remembered; "none" clears it; each needs approval: `wgmesh routes approve`)
    #[argh(option)]
    advertise_routes: Option<PrefixList>,
    /// masquerade mesh traffic into the advertised networks: on (default) or off (the
    /// networks' router then needs a route back to the mesh through this node)
    #[argh(option)]
    snat_subnet_routes: Option<OnOff>,
    /// use the networks other nodes advertise (the approved parts the policy grants this
    /// node; give it on every run)
    #[argh(switch)]
    accept_routes: bool,
    /// also advertise the prefixes a routing daemon puts in this kernel table, following
    /// them as they come and go (remembered; "none" stops)
    #[argh(option)]
    routes_from_table: Option<TableChoice>,
    /// only these prefixes (and what lies inside them) are advertised from that table
    #[argh(option)]
    routes_from_table_allow: Option<PrefixList>,
    /// copy the accepted routes and the mesh network into this kernel table for a routing
    /// daemon to announce (remembered; "none" stops)
    #[argh(option)]
    routes_to_table: Option<TableChoice>,
    /// tunnel MTU (remembered; 0 restores the default: the default route's interface MTU
    /// minus 80 on macOS and Windows, 1420 on Linux)
    #[argh(option)]
    mtu: Option<u16>,
    /// answer NAME.mesh for the mesh on this node's mesh addresses while up runs: on
    /// (default) or off
    #[argh(option, default = "DnsSwitch(true)")]
    dns: DnsSwitch,
    /// on Linux without systemd-resolved, also keep the mesh names in a marked block of the
    /// hosts file (removed when up stops)
    #[argh(switch)]
    dns_hosts: bool,
    /// carry devices without the agent (phones: `wgmesh device add NAME --via THIS`) into
    /// the mesh on a WireGuard interface of their own (Linux; give it on every run)
    #[argh(switch)]
    gateway: bool,
    /// UDP port the devices dial with --gateway (default 51821)
    #[argh(option)]
    gateway_port: Option<u16>,
    /// the devices' interface with --gateway (default: the mesh interface's name + "d")
    #[argh(option)]
    gateway_interface: Option<InterfaceName>,
    /// the hosts file --dns-hosts writes (default /etc/hosts)
    #[argh(option)]
    hosts_file: Option<PathBuf>,
    /// print the commands instead of running them, then exit; changes nothing anywhere (no
    /// registration, no token use, no file written)
    #[argh(switch)]
    dry_run: bool,
    /// seconds data may go unanswered on a direct path before the peer's traffic goes back
    /// through the server's relay (default 15); every peer starts on the relay
    /// and goes direct once a probe proves the direct path
    #[argh(option, default = "15")]
    relay_after: u64,
    /// seconds between probes of a relayed peer's direct path after the first six in its
    /// first 25 s (default 300); a peer that moves is probed again at once
    #[argh(option, default = "300")]
    direct_probe_interval: u64,
    /// whose commands to produce: linux, macos or windows (default: this OS)
    #[argh(option)]
    os: Option<TargetOs>,
    /// log level: error, warn, info, debug or trace (default info)
    #[argh(option, default = "LogLevel::default()")]
    log_level: LogLevel,
}

/// An on/off flag value (`--snat-subnet-routes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OnOff(bool);

impl std::str::FromStr for OnOff {
    type Err = InvalidValue;
    fn from_str(value: &str) -> Result<Self, InvalidValue> {
        match value {
            "on" => Ok(OnOff(true)),
            "off" => Ok(OnOff(false)),
            _ => Err(InvalidValue(format!(
                "{} is not a setting: use on or off",
                crate::types::describe(value)
            ))),
        }
    }
}

/// `--dns on|off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnsSwitch(bool);

impl std::str::FromStr for DnsSwitch {
    type Err = InvalidValue;
    fn from_str(value: &str) -> Result<Self, InvalidValue> {
        match value {
            "on" => Ok(DnsSwitch(true)),
            "off" => Ok(DnsSwitch(false)),
            _ => Err(InvalidValue(format!(
                "{} is not a DNS setting: use on or off",
                crate::types::describe(value)
            ))),
        }
    }
}

/// Do what `up` does once (register if needed, heartbeat, fetch peers, reconcile) and exit:
/// for cron and systemd timers. Exit codes: 0 ok, 2 bad config, 3 server unreachable or
/// refusing, 4 a system command failed, 5 local state error.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "sync")]
pub struct SyncArgs {
    /// coordination server, e.g. http://198.18.0.1:8080 (remembered in the config); repeat
    /// it for replicas of one cluster: the agent sticks to one and fails over to the next
    #[argh(option)]
    server: Vec<ServerUrl>,
    /// PEM file of the CA certificate(s) the server's HTTPS certificate must chain to,
    /// replacing the bundled public roots (for a private CA or a self-signed server)
    #[argh(option)]
    ca: Option<PathBuf>,
    /// client config file (default ~/.config/wireguard-mesh/client.json, mode 0600)
    #[argh(option)]
    config: Option<PathBuf>,
    /// name of the WireGuard interface (default wg0)
    #[argh(option)]
    interface: Option<InterfaceName>,
    /// UDP port WireGuard listens on (default 51820)
    #[argh(option)]
    listen_port: Option<u16>,
    /// endpoint other peers should dial, IP:PORT (default: the address the server sees)
    #[argh(option)]
    endpoint: Option<Endpoint>,
    /// hostname to register (default: this machine's)
    #[argh(option)]
    hostname: Option<Hostname>,
    /// join token for this key's first registration (or --token-file, or env WGMESH_TOKEN,
    /// which keep it out of shell history); not needed once registered
    #[argh(option)]
    token: Option<String>,
    /// file holding the join token
    #[argh(option)]
    token_file: Option<PathBuf>,
    /// the server's public key, pinned up front; default: the one pinned at registration, or
    /// learned from the server on first use
    #[argh(option)]
    server_key: Option<PublicKey>,
    /// offer this machine as an exit node (give it on every run; without it the machine stops
    /// being one)
    #[argh(switch)]
    exit_node: bool,
    /// send all internet traffic through this exit node (hostname, mesh address or peer id;
    /// remembered; "none" clears it)
    #[argh(option)]
    use_exit_node: Option<ExitChoice>,
    /// while the chosen exit node is offline: block (default: nothing leaks) or direct
    #[argh(option)]
    exit_fallback: Option<ExitFallback>,
    /// networks this node routes for the mesh, e.g. 192.168.10.0/24,fd00:10::/64
    /// (remembered; "none" clears it; each needs approval: `wgmesh routes approve`)
    #[argh(option)]
    advertise_routes: Option<PrefixList>,
    /// masquerade mesh traffic into the advertised networks: on (default) or off (the
    /// networks' router then needs a route back to the mesh through this node)
    #[argh(option)]
    snat_subnet_routes: Option<OnOff>,
    /// use the networks other nodes advertise (the approved parts the policy grants this
    /// node; give it on every run)
    #[argh(switch)]
    accept_routes: bool,
    /// also advertise the prefixes a routing daemon puts in this kernel table, following
    /// them as they come and go (remembered; "none" stops)
    #[argh(option)]
    routes_from_table: Option<TableChoice>,
    /// only these prefixes (and what lies inside them) are advertised from that table
    #[argh(option)]
    routes_from_table_allow: Option<PrefixList>,
    /// copy the accepted routes and the mesh network into this kernel table for a routing
    /// daemon to announce (remembered; "none" stops)
    #[argh(option)]
    routes_to_table: Option<TableChoice>,
    /// tunnel MTU (remembered; 0 restores the default: the default route's interface MTU
    /// minus 80 on macOS and Windows, 1420 on Linux)
    #[argh(option)]
    mtu: Option<u16>,
    /// print a JSON summary of what changed on stdout
    #[argh(switch)]
    json: bool,
    /// print the commands instead of running them; changes nothing anywhere (no
    /// registration, no token use, no file written)
    #[argh(switch)]
    dry_run: bool,
    /// seconds data may go unanswered on a direct path before the peer's traffic goes back
    /// through the server's relay (default 15); every peer starts on the relay
    /// and goes direct once a probe proves the direct path
    #[argh(option, default = "15")]
    relay_after: u64,
    /// seconds between probes of a relayed peer's direct path after the first six in its
    /// first 25 s (default 300); a peer that moves is probed again at once
    #[argh(option, default = "300")]
    direct_probe_interval: u64,
    /// whose commands to produce: linux, macos or windows (default: this OS)
    #[argh(option)]
    os: Option<TargetOs>,
    /// log level: error, warn, info, debug or trace (default warn)
    #[argh(option, default = "LogLevel(log::LevelFilter::Warn)")]
    log_level: LogLevel,
}

/// Stop a running `up` for this config (SIGTERM, waiting up to 30 s), then remove the
/// interface, routes and anything else `up` or `sync` set up on this machine, after telling
/// the server this node goes offline (so the others drop it at once). The registration (and
/// so the address) is kept for the next `up`.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "down")]
pub struct DownArgs {
    /// client config file (default ~/.config/wireguard-mesh/client.json)
    #[argh(option)]
    config: Option<PathBuf>,
    /// print the commands instead of running them
    #[argh(switch)]
    dry_run: bool,
    /// whose commands to produce: linux, macos or windows (default: the OS that set it up)
    #[argh(option)]
    os: Option<TargetOs>,
    /// log level: error, warn, info, debug or trace (default info)
    #[argh(option, default = "LogLevel::default()")]
    log_level: LogLevel,
}

fn check_interval(flag: &str, secs: u64) -> Result<Duration, CliError> {
    if secs == 0 {
        return Err(CliError::new(
            EXIT_USAGE,
            format!("{flag} must be at least 1 second"),
        ));
    }
    Ok(Duration::from_secs(secs))
}

/// `--relay-after` and `--direct-probe-interval`, checked.
fn path_settings(relay_after: u64, probe_interval: u64) -> Result<PathSettings, CliError> {
    Ok(PathSettings {
        relay_after: check_interval("--relay-after", relay_after)?,
        probe_interval: check_interval("--direct-probe-interval", probe_interval)?,
        ..PathSettings::default()
    })
}

/// How long `down` waits for a running `up` to finish its own teardown (the agent unit's
/// TimeoutStopSec is 30 s too).
const STOP_WAIT: Duration = Duration::from_secs(30);

/// Takes the one-agent-per-config lock, or says who holds it ([`EXIT_RUNNING`]).
fn lock(config: &Option<PathBuf>) -> Result<InstanceLock, CliError> {
    let path = config.clone().unwrap_or_else(config::default_path);
    instance::acquire(&path).map_err(|e| match e {
        LockError::Running { .. } => CliError::new(EXIT_RUNNING, e.to_string()),
        LockError::Io(_) => CliError::new(EXIT_STATE, e.to_string()),
    })
}

/// Before a real `up` or `sync` registers (spending a token use): can this machine create
/// the interface at all? Exit 2 with the one reason if not (restarting cannot fix it).
fn preflight(os: Option<crate::os::TargetOs>) -> Result<(), CliError> {
    let os = setup::target_os(os).map_err(agent_failure)?;
    if Some(os) != crate::os::TargetOs::current() {
        return Ok(());
    }
    let facts = crate::agent::observe::preflight::Facts::observe(os);
    crate::agent::observe::preflight::check(os, &facts)
        .map_err(|e| CliError::new(EXIT_USAGE, e.to_string()))
}

fn stop_flag() -> Result<Arc<AtomicBool>, CliError> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())
            .map_err(|e| CliError::new(EXIT_INTERNAL, format!("cannot handle signals: {e}")))?;
    }
    Ok(stop)
}

/// `wgmesh up`.
pub fn up(args: UpArgs) -> Result<(), CliError> {
    init_logging(args.log_level);
    let intervals = Intervals {
        heartbeat: check_interval("--heartbeat-interval", args.heartbeat_interval)?,
        sync: check_interval("--sync-interval", args.sync_interval)?,
    };
    let dry_run = args.dry_run;
    if !args.dns.0 && (args.dns_hosts || args.hosts_file.is_some()) {
        return Err(CliError::new(
            EXIT_USAGE,
            "--dns-hosts and --hosts-file keep mesh names, which --dns off turns off: drop one",
        ));
    }
    let dns_options = args.dns.0.then(|| DnsOptions {
        hosts: args.dns_hosts,
        hosts_file: args
            .hosts_file
            .clone()
            .unwrap_or_else(|| PathBuf::from(crate::os::dns::HOSTS_FILE)),
    });
    let gateway = (
        args.gateway,
        args.gateway_port,
        args.gateway_interface.clone(),
    );
    if !args.gateway && (args.gateway_port.is_some() || args.gateway_interface.is_some()) {
        return Err(CliError::new(
            EXIT_USAGE,
            "--gateway-port and --gateway-interface need --gateway",
        ));
    }
    let login = args.login;
    let _lock = if dry_run {
        None
    } else {
        preflight(args.os)?;
        Some(lock(&args.config)?)
    };
    let mut overrides = overrides!(args);
    overrides.login = login;
    let mut engine = setup::engine(overrides).map_err(agent_failure)?;
    gateway_settings(&mut engine, gateway)?;
    if dry_run {
        let mut stdout = std::io::stdout().lock();
        engine
            .sync(&mut Sink::Print(&mut stdout))
            .map_err(agent_failure)?;
        if let Some(options) = dns_options {
            MeshDns::new(options)
                .refresh(&mut engine, &mut Sink::Print(&mut stdout))
                .map_err(agent_failure)?;
        }
        return Ok(());
    }
    let stop = stop_flag()?;
    let mut runner = SystemRunner::new();
    let mut dns = dns_options.map(MeshDns::new);
    daemon::run(&mut engine, &mut runner, intervals, &stop, dns.as_mut()).map_err(agent_failure)
}

/// Default UDP port of a gateway's devices' interface: next to WireGuard's usual 51820.
const DEFAULT_GATEWAY_PORT: u16 = 51821;

/// Records `--gateway` (or its absence) in the config before `up` registers again, so the
/// server learns the devices' port and `down` after a crash finds the devices' interface.
fn gateway_settings(
    engine: &mut crate::agent::run::engine::Engine,
    (on, port, interface): (bool, Option<u16>, Option<InterfaceName>),
) -> Result<(), CliError> {
    if !on {
        engine.config.gateway = None;
        return Ok(());
    }
    if engine.os != crate::os::TargetOs::Linux {
        return Err(CliError::new(
            EXIT_USAGE,
            "--gateway is supported on Linux only for now",
        ));
    }
    let interface = match interface {
        Some(name) => name,
        None => format!("{}d", engine.config.interface.as_str())
            .parse()
            .map_err(|e| {
                CliError::new(
                    EXIT_USAGE,
                    format!(
                        "cannot name the devices' interface ({e}): pass --gateway-interface NAME"
                    ),
                )
            })?,
    };
    let port = port.unwrap_or(DEFAULT_GATEWAY_PORT);
    if port == engine.config.listen_port {
        return Err(CliError::new(
            EXIT_USAGE,
            format!("--gateway-port {port} is the mesh's listen port: choose another"),
        ));
    }
    engine.config.gateway = Some(crate::agent::state::config::GatewaySettings { interface, port });
    Ok(())
}

/// `wgmesh sync`.
pub fn sync(args: SyncArgs) -> Result<(), CliError> {
    init_logging(args.log_level);
    let dry_run = args.dry_run;
    let _lock = if dry_run {
        None
    } else {
        preflight(args.os)?;
        Some(lock(&args.config)?)
    };
    let config_path = args.config.clone().unwrap_or_else(config::default_path);
    let before = crate::agent::run::engine::load_known_peers(&config_path)
        .map(|k| k.peers)
        .unwrap_or_default();
    let mut engine = setup::engine(overrides!(args)).map_err(agent_failure)?;
    let summary = if dry_run {
        let mut stdout = std::io::stdout().lock();
        engine.sync(&mut Sink::Print(&mut stdout))
    } else {
        let mut runner = SystemRunner::new();
        engine
            .heartbeat()
            .and_then(|()| engine.sync(&mut Sink::Run(&mut runner)))
    }
    .map_err(agent_failure)?;
    if args.json {
        print_json(&report::report(summary, &before, &engine.known_peers()))?;
    }
    Ok(())
}

/// `wgmesh down`.
pub fn down(args: DownArgs) -> Result<(), CliError> {
    init_logging(args.log_level);
    let path = args.config.unwrap_or_else(config::default_path);
    setup::target_os(None).map_err(agent_failure)?;
    if !args.dry_run {
        // A running `up` would re-create at once what this removes: stop it first; its
        // own teardown tells the server and removes what it set up.
        match instance::stop_running(&path, STOP_WAIT) {
            Ok(instance::Stopped::Stopped(pid)) => {
                log::info!("stopped the running agent (pid {pid})")
            }
            Ok(instance::Stopped::NoneRunning) => {}
            Err(e) => return Err(CliError::new(EXIT_RUNNING, e.to_string())),
        }
    }
    // A gateway's devices' interface and table, if a crashed `up --gateway` left them.
    let gateway = config::ClientConfig::load(&path)
        .ok()
        .flatten()
        .and_then(|c| c.gateway);
    let mut devices = gateway.map(crate::agent::gateway::Gateway::new);
    if args.dry_run {
        let mut stdout = std::io::stdout().lock();
        let mut sink = Sink::Print(&mut stdout);
        if let Some(g) = devices.as_mut() {
            g.teardown(&mut sink).map_err(agent_failure)?;
        }
        engine::down(&path, args.os, &mut sink)
    } else {
        let mut runner = SystemRunner::new();
        let mut sink = Sink::Run(&mut runner);
        if let Some(g) = devices.as_mut() {
            g.teardown(&mut sink).map_err(agent_failure)?;
        }
        engine::down(&path, args.os, &mut sink)
    }
    .map_err(agent_failure)?;
    Ok(())
}
