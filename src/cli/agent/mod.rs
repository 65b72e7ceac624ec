//! The client subcommands: `up`, `sync`, `down`, `status`, `export`, `genkey`, `pubkey`.

use super::{
    init_logging, Failure, LogLevel, EXIT_COMMAND, EXIT_INTERNAL, EXIT_SERVER, EXIT_STATE,
    EXIT_USAGE,
};
use crate::agent::client::ServerUrl;
use crate::agent::config::{self, ConfigError, ExitFallback};
use crate::agent::daemon::{self, Intervals};
use crate::agent::dns::{DnsOptions, MeshDns};
use crate::agent::engine::{self, Sink};
use crate::agent::error::AgentError;
use crate::agent::path::PathSettings;
use crate::agent::setup::{self, Overrides};
use crate::keys::PublicKey;
use crate::os::runner::SystemRunner;
use crate::os::TargetOs;
use crate::types::{Endpoint, Hostname, InterfaceName};
use argh::FromArgs;
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

mod inspect;
mod keys;

pub use inspect::{export, status, ExportArgs, StatusArgs};
pub use keys::{genkey, pubkey, GenkeyArgs, PubkeyArgs};

fn agent_failure(e: AgentError) -> Failure {
    let code = match &e {
        AgentError::Usage(_) => EXIT_USAGE,
        AgentError::Config(ConfigError::Invalid(..)) => EXIT_USAGE,
        AgentError::Config(ConfigError::Io(_)) => EXIT_STATE,
        AgentError::Server(_) => EXIT_SERVER,
        AgentError::Command(_) => EXIT_COMMAND,
    };
    Failure::new(code, e.to_string())
}

/// The join token from `--token`, else `--token-file`, else the `WGMESH_TOKEN` environment
/// variable: the last two keep it out of shell history and `ps`.
fn join_token(flag: Option<String>, file: Option<PathBuf>) -> Result<Option<String>, Failure> {
    if let Some(token) = flag {
        return Ok(Some(token.trim().to_owned()));
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Failure::new(
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

impl argh::FromArgValue for ExitChoice {
    fn from_arg_value(value: &str) -> Result<Self, String> {
        if value == "none" {
            return Ok(ExitChoice(None));
        }
        let valid = value.parse::<std::net::Ipv4Addr>().is_ok()
            || value.parse::<crate::types::PeerId>().is_ok()
            || value.parse::<Hostname>().is_ok();
        if valid {
            Ok(ExitChoice(Some(value.to_owned())))
        } else {
            Err(format!(
                "{:?} is not a peer: give its hostname, mesh address or peer id, or \"none\"",
                crate::types::describe(value)
            ))
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
        }
    };
}

/// Bring this machine into the mesh and keep it there: register, create the WireGuard
/// interface, then heartbeat and sync peers in the foreground until SIGINT/SIGTERM, which
/// remove everything it set up.
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
    /// answer NAME.mesh for the mesh on this node's mesh addresses while up runs: on
    /// (default) or off
    #[argh(option, default = "DnsSwitch(true)")]
    dns: DnsSwitch,
    /// on Linux without systemd-resolved, also keep the mesh names in a marked block of the
    /// hosts file (removed when up stops)
    #[argh(switch)]
    dns_hosts: bool,
    /// the hosts file --dns-hosts writes (default /etc/hosts)
    #[argh(option)]
    hosts_file: Option<PathBuf>,
    /// print the commands instead of running them, then exit
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

/// `--dns on|off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnsSwitch(bool);

impl argh::FromArgValue for DnsSwitch {
    fn from_arg_value(value: &str) -> Result<Self, String> {
        match value {
            "on" => Ok(DnsSwitch(true)),
            "off" => Ok(DnsSwitch(false)),
            _ => Err(format!(
                "{} is not a DNS setting: use on or off",
                crate::types::describe(value)
            )),
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
    /// print a JSON summary of what changed on stdout
    #[argh(switch)]
    json: bool,
    /// print the commands instead of running them
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

/// Remove the interface, routes and anything else `up` or `sync` set up on this machine, after
/// telling the server this node goes offline (so the others drop it at once). The
/// registration (and so the address) is kept for the next `up`.
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

fn check_interval(flag: &str, secs: u64) -> Result<Duration, Failure> {
    if secs == 0 {
        return Err(Failure::new(
            EXIT_USAGE,
            format!("{flag} must be at least 1 second"),
        ));
    }
    Ok(Duration::from_secs(secs))
}

/// `--relay-after` and `--direct-probe-interval`, checked.
fn path_settings(relay_after: u64, probe_interval: u64) -> Result<PathSettings, Failure> {
    Ok(PathSettings {
        relay_after: check_interval("--relay-after", relay_after)?,
        probe_interval: check_interval("--direct-probe-interval", probe_interval)?,
        ..PathSettings::default()
    })
}

fn stop_flag() -> Result<Arc<AtomicBool>, Failure> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())
            .map_err(|e| Failure::new(EXIT_INTERNAL, format!("cannot handle signals: {e}")))?;
    }
    Ok(stop)
}

/// `wgmesh up`.
pub fn up(args: UpArgs) -> Result<(), Failure> {
    init_logging(args.log_level);
    let intervals = Intervals {
        heartbeat: check_interval("--heartbeat-interval", args.heartbeat_interval)?,
        sync: check_interval("--sync-interval", args.sync_interval)?,
    };
    let dry_run = args.dry_run;
    if !args.dns.0 && (args.dns_hosts || args.hosts_file.is_some()) {
        return Err(Failure::new(
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
    let mut engine = setup::engine(overrides!(args)).map_err(agent_failure)?;
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

/// `wgmesh sync`.
pub fn sync(args: SyncArgs) -> Result<(), Failure> {
    init_logging(args.log_level);
    let dry_run = args.dry_run;
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
        print_json(&summary)?;
    }
    Ok(())
}

/// `wgmesh down`.
pub fn down(args: DownArgs) -> Result<(), Failure> {
    init_logging(args.log_level);
    let path = args.config.unwrap_or_else(config::default_path);
    setup::target_os(None).map_err(agent_failure)?;
    if args.dry_run {
        let mut stdout = std::io::stdout().lock();
        engine::down(&path, args.os, &mut Sink::Print(&mut stdout))
    } else {
        let mut runner = SystemRunner::new();
        engine::down(&path, args.os, &mut Sink::Run(&mut runner))
    }
    .map_err(agent_failure)?;
    Ok(())
}

fn print_json<T: Serialize>(value: &T) -> Result<(), Failure> {
    let mut text = serde_json::to_string_pretty(value).expect("output types serialize");
    text.push('\n');
    write_stdout(&text)
}

/// Writes to stdout; a closed pipe (`| head`) is not an error.
pub(super) fn write_stdout(text: &str) -> Result<(), Failure> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Failure::new(
            EXIT_INTERNAL,
            format!("cannot write to stdout: {e}"),
        )),
        _ => Ok(()),
    }
}
