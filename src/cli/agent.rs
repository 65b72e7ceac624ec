//! The client subcommands: `up`, `sync`, `down`, `status`, `export`, `genkey`, `pubkey`.

use super::{
    init_logging, Failure, LogLevel, EXIT_COMMAND, EXIT_INTERNAL, EXIT_SERVER, EXIT_STATE,
    EXIT_USAGE,
};
use crate::agent::client::{ApiClient, ServerUrl, TlsTrust};
use crate::agent::config::{self, ClientConfig, ConfigError, ExitFallback};
use crate::agent::daemon::{self, Intervals};
use crate::agent::engine::{AgentError, Engine, Sink};
use crate::keys::{PrivateKey, PublicKey};
use crate::os::runner::{Runner, SystemRunner};
use crate::os::{Command, TargetOs};
use crate::types::{Endpoint, Hostname, InterfaceName};
use crate::wgdump;
use argh::FromArgs;
use serde::Serialize;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Time limit of one request to the coordination server.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

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

fn config_failure(e: ConfigError) -> Failure {
    agent_failure(AgentError::Config(e))
}

/// The options `up`, `sync` and `down` share, gathered from each subcommand's flags.
struct Common {
    config: Option<PathBuf>,
    server: Option<ServerUrl>,
    interface: Option<InterfaceName>,
    listen_port: Option<u16>,
    endpoint: Option<Endpoint>,
    hostname: Option<Hostname>,
    exit_node: bool,
    use_exit_node: Option<ExitChoice>,
    exit_fallback: Option<ExitFallback>,
    os: Option<TargetOs>,
    token: Option<String>,
    server_key: Option<PublicKey>,
    ca: Option<PathBuf>,
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

/// The server key to check answers against: `--server-key` first (an operator re-pinning
/// after a key change), else the one pinned at registration, else None (learned on first use).
fn pinned_key(cfg: &ClientConfig, flag: Option<PublicKey>) -> Option<PublicKey> {
    let stored = cfg.assignment.as_ref().map(|a| a.server_public_key);
    if let (Some(flag), Some(stored)) = (flag, stored) {
        if flag != stored {
            log::warn!("--server-key {flag} replaces the pinned server key {stored}");
        }
    }
    flag.or(stored)
}

/// The API client for this config: trusting `trust` for https://, signing with its key,
/// checking answers against its pin.
fn api_client(
    server: ServerUrl,
    cfg: &ClientConfig,
    flag: Option<PublicKey>,
    trust: &TlsTrust,
) -> ApiClient {
    ApiClient::with_trust(server, REQUEST_TIMEOUT, trust)
        .with_identity(cfg.private_key.clone(), pinned_key(cfg, flag))
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

/// The CAs an https:// server must chain to: `--ca FILE`, or the bundled public roots.
fn tls_trust(ca: Option<&std::path::Path>) -> Result<TlsTrust, Failure> {
    match ca {
        Some(path) => TlsTrust::from_ca_file(path).map_err(|e| Failure::new(EXIT_USAGE, e)),
        None => Ok(TlsTrust::default()),
    }
}

fn target_os(requested: Option<TargetOs>) -> Result<TargetOs, Failure> {
    requested.or_else(TargetOs::current).ok_or_else(|| {
        Failure::new(
            EXIT_USAGE,
            "this OS has no command set: pass --os linux, macos or windows",
        )
    })
}

/// Loads (or creates) the config, applies command-line overrides and builds the engine.
fn engine(common: Common) -> Result<Engine, Failure> {
    let path = common.config.clone().unwrap_or_else(config::default_path);
    let os = target_os(common.os)?;
    let trust = tls_trust(common.ca.as_deref())?;
    let existing = ClientConfig::load(&path).map_err(config_failure)?;
    let fresh = existing.is_none();
    let mut cfg = existing.unwrap_or_else(|| {
        ClientConfig::generate(
            common
                .interface
                .clone()
                .unwrap_or_else(|| "wg0".parse().expect("literal")),
        )
    });
    if let Some(server) = common.server {
        cfg.server = Some(server);
    }
    if let Some(interface) = common.interface {
        cfg.interface = interface;
    }
    if let Some(port) = common.listen_port {
        if port == 0 {
            return Err(Failure::new(EXIT_USAGE, "--listen-port must be 1-65535"));
        }
        cfg.listen_port = port;
    }
    if common.endpoint.is_some() {
        cfg.endpoint = common.endpoint;
    }
    if common.hostname.is_some() {
        cfg.hostname = common.hostname;
    }
    cfg.exit_node = common.exit_node;
    if let Some(choice) = common.use_exit_node {
        cfg.use_exit_node = choice.0;
    }
    if let Some(fallback) = common.exit_fallback {
        cfg.exit_fallback = fallback;
    }
    if cfg.exit_node && os != TargetOs::Linux {
        return Err(Failure::new(
            EXIT_USAGE,
            format!("{os} is not supported as an exit node yet: run the exit node on Linux"),
        ));
    }
    // An explicit --server-key re-pins for good (e.g. after the server's key was replaced),
    // not just for this run.
    let server_key = pinned_key(&cfg, common.server_key);
    if let (Some(key), Some(assignment)) = (server_key, cfg.assignment.as_mut()) {
        assignment.server_public_key = key;
    }
    let server = cfg.server.clone().ok_or_else(|| {
        Failure::new(
            EXIT_USAGE,
            "no coordination server known: pass --server http://HOST:PORT",
        )
    })?;
    cfg.save(&path).map_err(config_failure)?;
    if fresh {
        log::info!("generated a new key pair in {}", path.display());
    }
    let reader: Option<Box<dyn Runner>> =
        (Some(os) == TargetOs::current()).then(|| Box::new(SystemRunner::new()) as Box<dyn Runner>);
    let client = api_client(server, &cfg, server_key, &trust).with_token(common.token);
    Ok(Engine {
        config: cfg,
        config_path: path,
        os,
        client,
        reader,
        last_list: None,
        persist: true,
    })
}

/// Bring this machine into the mesh and keep it there: register, create the WireGuard
/// interface, then heartbeat and sync peers in the foreground until SIGINT/SIGTERM, which
/// remove everything it set up.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "up")]
pub struct UpArgs {
    /// coordination server, e.g. http://198.18.0.1:8080 (remembered in the config)
    #[argh(option)]
    server: Option<ServerUrl>,
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
    /// print the commands instead of running them, then exit
    #[argh(switch)]
    dry_run: bool,
    /// whose commands to produce: linux, macos or windows (default: this OS)
    #[argh(option)]
    os: Option<TargetOs>,
    /// log level: error, warn, info, debug or trace (default info)
    #[argh(option, default = "LogLevel::default()")]
    log_level: LogLevel,
}

/// Do what `up` does once (register if needed, heartbeat, fetch peers, reconcile) and exit:
/// for cron and systemd timers. Exit codes: 0 ok, 2 bad config, 3 server unreachable or
/// refusing, 4 a system command failed, 5 local state error.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "sync")]
pub struct SyncArgs {
    /// coordination server, e.g. http://198.18.0.1:8080 (remembered in the config)
    #[argh(option)]
    server: Option<ServerUrl>,
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

/// Show this node's address and interface, and per peer: hostname, mesh address, endpoint,
/// whether it is online, latest handshake age and bytes received and sent.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "status")]
pub struct StatusArgs {
    /// client config file (default ~/.config/wireguard-mesh/client.json)
    #[argh(option)]
    config: Option<PathBuf>,
    /// print JSON on stdout
    #[argh(switch)]
    json: bool,
}

/// Print a wg-quick configuration for this node on stdout (use it with `wg-quick up`).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "export")]
pub struct ExportArgs {
    /// client config file (default ~/.config/wireguard-mesh/client.json)
    #[argh(option)]
    config: Option<PathBuf>,
    /// PEM file of the CA certificate(s) the server's HTTPS certificate must chain to,
    /// replacing the bundled public roots (for a private CA or a self-signed server)
    #[argh(option)]
    ca: Option<PathBuf>,
}

/// Print a new private key in base64, like `wg genkey`.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "genkey")]
pub struct GenkeyArgs {}

/// Read a private key on stdin and print its public key, like `wg pubkey`.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "pubkey")]
pub struct PubkeyArgs {}

fn check_interval(flag: &str, secs: u64) -> Result<Duration, Failure> {
    if secs == 0 {
        return Err(Failure::new(
            EXIT_USAGE,
            format!("{flag} must be at least 1 second"),
        ));
    }
    Ok(Duration::from_secs(secs))
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
    let mut engine = engine(Common {
        config: args.config,
        server: args.server,
        interface: args.interface,
        listen_port: args.listen_port,
        endpoint: args.endpoint,
        hostname: args.hostname,
        exit_node: args.exit_node,
        use_exit_node: args.use_exit_node,
        exit_fallback: args.exit_fallback,
        os: args.os,
        token: join_token(args.token, args.token_file)?,
        server_key: args.server_key,
        ca: args.ca,
    })?;
    if dry_run {
        let mut stdout = std::io::stdout().lock();
        engine
            .sync(&mut Sink::Print(&mut stdout))
            .map_err(agent_failure)?;
        return Ok(());
    }
    let stop = stop_flag()?;
    let mut runner = SystemRunner::new();
    daemon::run(&mut engine, &mut runner, intervals, &stop).map_err(agent_failure)
}

/// `wgmesh sync`.
pub fn sync(args: SyncArgs) -> Result<(), Failure> {
    init_logging(args.log_level);
    let dry_run = args.dry_run;
    let mut engine = engine(Common {
        config: args.config,
        server: args.server,
        interface: args.interface,
        listen_port: args.listen_port,
        endpoint: args.endpoint,
        hostname: args.hostname,
        exit_node: args.exit_node,
        use_exit_node: args.use_exit_node,
        exit_fallback: args.exit_fallback,
        os: args.os,
        token: join_token(args.token, args.token_file)?,
        server_key: args.server_key,
        ca: args.ca,
    })?;
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
    let Some(mut cfg) = ClientConfig::load(&path).map_err(config_failure)? else {
        log::info!("nothing to take down: no config at {}", path.display());
        return Ok(());
    };
    if let Some(os) = args.os {
        // Show (or run) another OS's teardown of this configuration's interface.
        let applied = cfg.applied.get_or_insert_with(|| config::Applied {
            interface: cfg.interface.to_string(),
            ..config::Applied::default()
        });
        applied.os = os.as_str().to_owned();
    }
    let server = cfg
        .server
        .clone()
        .unwrap_or_else(|| "http://127.0.0.1:8080".parse().expect("literal"));
    let os = target_os(None)?;
    let client = api_client(server, &cfg, None, &TlsTrust::default());
    let mut engine = Engine {
        config: cfg,
        config_path: path,
        os,
        client,
        reader: None,
        last_list: None,
        persist: true,
    };
    let removed = if args.dry_run {
        let mut stdout = std::io::stdout().lock();
        engine.teardown(&mut Sink::Print(&mut stdout))
    } else {
        // Others drop us now rather than at the heartbeat timeout.
        engine.go_offline();
        let mut runner = SystemRunner::new();
        engine.teardown(&mut Sink::Run(&mut runner))
    }
    .map_err(agent_failure)?;
    if !removed {
        log::info!("nothing to take down: this agent has nothing set up");
    }
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

/// One peer in `status`.
#[derive(Debug, Serialize)]
struct PeerStatus {
    hostname: Option<String>,
    virtual_ip: Option<String>,
    public_key: String,
    /// The endpoint WireGuard sends to right now.
    endpoint: Option<String>,
    /// Whether packets go straight to the peer's endpoint: wgmesh never relays, so every
    /// peer with a known endpoint is direct (a relay would show here when one exists).
    direct: bool,
    /// Whether this is the exit node internet traffic goes through.
    exit_node_in_use: bool,
    online: bool,
    latest_handshake_secs: Option<u64>,
    rx_bytes: u64,
    tx_bytes: u64,
}

/// What `status` reports.
#[derive(Debug, Serialize)]
struct Status {
    interface: Option<String>,
    up: bool,
    address: Option<String>,
    network_cidr: Option<String>,
    peer_id: Option<String>,
    public_key: String,
    listen_port: u16,
    server: Option<String>,
    peers: Vec<PeerStatus>,
}

/// A handshake older than this means the tunnel is idle or broken (WireGuard rekeys every
/// 2 minutes while traffic flows, and keepalives keep traffic flowing).
const HANDSHAKE_FRESH_SECS: u64 = 180;

/// `wgmesh status`.
pub fn status(args: StatusArgs) -> Result<(), Failure> {
    init_logging(LogLevel(log::LevelFilter::Warn));
    let path = args.config.unwrap_or_else(config::default_path);
    let cfg = ClientConfig::load(&path)
        .map_err(config_failure)?
        .ok_or_else(|| {
            Failure::new(
                EXIT_USAGE,
                format!("no config at {}: run `wgmesh up` first", path.display()),
            )
        })?;
    let known = crate::agent::engine::load_peer_cache(&path);
    let interface = cfg.applied.as_ref().map(|a| a.interface.clone());
    let dump = interface.as_ref().and_then(|name| {
        let program = if cfg.applied.as_ref().is_some_and(|a| a.os == "windows") {
            "wg.exe"
        } else {
            "wg"
        };
        SystemRunner::new()
            .run(&Command::new(program).args(["show", name, "dump"]))
            .ok()
            .and_then(|out| wgdump::parse(&out.stdout).ok())
    });
    let now = SystemTime::now();
    let peers = dump
        .as_ref()
        .map(|d| {
            d.peers
                .iter()
                .map(|p| {
                    let info = known.iter().find(|k| k.public_key == p.public_key);
                    let age = p
                        .latest_handshake
                        .map(|t| now.duration_since(t).unwrap_or_default().as_secs());
                    PeerStatus {
                        hostname: info.map(|i| i.hostname.to_string()),
                        virtual_ip: info.map(|i| i.virtual_ip.to_string()),
                        public_key: p.public_key.to_base64(),
                        endpoint: p.endpoint.map(|e| e.to_string()),
                        direct: p.endpoint.is_some(),
                        exit_node_in_use: cfg
                            .applied
                            .as_ref()
                            .and_then(|a| a.full_tunnel.as_ref())
                            .is_some_and(|t| t.exit_public_key == p.public_key),
                        online: age.is_some_and(|a| a <= HANDSHAKE_FRESH_SECS),
                        latest_handshake_secs: age,
                        rx_bytes: p.transfer_rx,
                        tx_bytes: p.transfer_tx,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let status = Status {
        interface,
        up: dump.is_some(),
        address: cfg.assignment.as_ref().map(|a| a.assigned_ip.to_string()),
        network_cidr: cfg.assignment.as_ref().map(|a| a.network_cidr.to_string()),
        peer_id: cfg.assignment.as_ref().map(|a| a.peer_id.to_string()),
        public_key: cfg.private_key.public_key().to_base64(),
        listen_port: cfg.listen_port,
        server: cfg.server.as_ref().map(|s| s.to_string()),
        peers,
    };
    if args.json {
        return print_json(&status);
    }
    let mut out = String::new();
    let dash = || "-".to_string();
    out.push_str(&format!(
        "interface {} ({}), address {}, peer id {}\n",
        status.interface.clone().unwrap_or_else(dash),
        if status.up { "up" } else { "down" },
        status.address.clone().unwrap_or_else(dash),
        status.peer_id.clone().unwrap_or_else(dash),
    ));
    out.push_str(&format!(
        "{:<20} {:<15} {:<24} {:<7} {:<7} {:>10} {:>12} {:>12}\n",
        "HOSTNAME", "ADDRESS", "ENDPOINT", "PATH", "ONLINE", "HANDSHAKE", "RX", "TX"
    ));
    for p in &status.peers {
        out.push_str(&format!(
            "{:<20} {:<15} {:<24} {:<7} {:>10} {:>12} {:>12}\n",
            p.hostname
                .clone()
                .unwrap_or_else(|| p.public_key[..8].to_string()),
            p.virtual_ip.clone().unwrap_or_else(dash),
            p.endpoint.clone().unwrap_or_else(dash),
            if p.online { "yes" } else { "no" },
            p.latest_handshake_secs
                .map_or_else(|| "never".into(), |s| format!("{s}s ago")),
            p.rx_bytes,
            p.tx_bytes
        ));
    }
    write_stdout(&out)
}

/// `wgmesh export`.
pub fn export(args: ExportArgs) -> Result<(), Failure> {
    init_logging(LogLevel(log::LevelFilter::Warn));
    let path = args.config.unwrap_or_else(config::default_path);
    let cfg = ClientConfig::load(&path)
        .map_err(config_failure)?
        .ok_or_else(|| {
            Failure::new(
                EXIT_USAGE,
                format!(
                    "no config at {}: run `wgmesh up` or `wgmesh sync` first",
                    path.display()
                ),
            )
        })?;
    let assignment = cfg
        .assignment
        .clone()
        .ok_or_else(|| Failure::new(EXIT_USAGE, "not registered yet: run `wgmesh sync` first"))?;
    let server = cfg
        .server
        .clone()
        .ok_or_else(|| Failure::new(EXIT_USAGE, "no coordination server in the config"))?;
    let client = api_client(server, &cfg, None, &tls_trust(args.ca.as_deref())?);
    let peers = match client.peers(&assignment.peer_id, None) {
        Ok(crate::agent::client::PeerList::Changed { peers, .. }) => peers,
        Ok(crate::agent::client::PeerList::NotModified) => unreachable!("no ETag was sent"),
        Err(e) => {
            log::warn!("{e}; exporting the last peer list this node saw");
            crate::agent::engine::load_peer_cache(&path)
        }
    };
    let spec = crate::agent::engine::interface_spec(&cfg, &assignment);
    // The chosen exit node (if any) gets the default route, so wg-quick makes the same full
    // tunnel the agent would.
    let exit = cfg.use_exit_node.as_deref().and_then(|wanted| {
        peers
            .iter()
            .find(|p| p.exit_node && crate::agent::engine::is_named(p, wanted))
            .map(|p| p.public_key)
    });
    let desired = Engine::desired_peers(&peers, exit.as_ref());
    write_stdout(&crate::wgquick::render(&spec, &desired))
}

/// `wgmesh genkey`.
pub fn genkey(_: GenkeyArgs) -> Result<(), Failure> {
    write_stdout(&format!("{}\n", PrivateKey::generate().to_base64()))
}

/// `wgmesh pubkey`.
pub fn pubkey(_: PubkeyArgs) -> Result<(), Failure> {
    let mut input = String::new();
    std::io::stdin()
        .take(1024)
        .read_to_string(&mut input)
        .map_err(|e| {
            Failure::new(
                EXIT_USAGE,
                format!("cannot read a private key on stdin: {e}"),
            )
        })?;
    let key = PrivateKey::from_base64(&input)
        .map_err(|e| Failure::new(EXIT_USAGE, format!("stdin: {e}")))?;
    write_stdout(&format!("{}\n", key.public_key().to_base64()))
}
