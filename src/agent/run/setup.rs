//! Building an agent from the configuration file and the command line's overrides: load (or
//! create) the config, apply the overrides, pin the server key, and hand back an [`Engine`]
//! whose reader observes this host when it plans this host's OS.

use crate::agent::client::{ApiClient, ServerUrl, TlsTrust};
use crate::agent::decide::path::{PathSettings, PathTable};
use crate::agent::error::AgentError;
use crate::agent::run::engine::Engine;
use crate::agent::state::config::{self, ClientConfig, ExitFallback};
use crate::keys::PublicKey;
use crate::os::runner::{Runner, SystemRunner};
use crate::os::TargetOs;
use crate::types::{Endpoint, Hostname, InterfaceName};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Time limit of one request to the coordination server.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What `up` and `sync` may override in the config, from their flags.
#[derive(Debug, Default)]
pub struct Overrides {
    /// The config file (default: [`config::default_path`]).
    pub config: Option<PathBuf>,
    /// The coordination server (remembered).
    pub server: Option<ServerUrl>,
    /// Replicas to fail over to, after `server` (remembered with it).
    pub fallback_servers: Vec<ServerUrl>,
    /// The interface name (remembered).
    pub interface: Option<InterfaceName>,
    /// The WireGuard listen port (remembered; 0 is refused).
    pub listen_port: Option<u16>,
    /// The tunnel MTU (remembered; 0 goes back to the OS's automatic choice).
    pub mtu: Option<u16>,
    /// The endpoint others should dial (remembered).
    pub endpoint: Option<Endpoint>,
    /// The hostname to register (remembered).
    pub hostname: Option<Hostname>,
    /// Whether to offer this host as an exit node (given on every run).
    pub exit_node: bool,
    /// `Some(None)` clears the chosen exit node, `Some(Some(name))` chooses one.
    pub use_exit_node: Option<Option<String>>,
    /// What to do while the chosen exit node is offline (remembered).
    pub exit_fallback: Option<ExitFallback>,
    /// Whose commands to produce (default: this OS).
    pub os: Option<TargetOs>,
    /// The join token for a first registration.
    pub token: Option<String>,
    /// `up --login`: log in through the server's single sign-on before registering.
    pub login: bool,
    /// The server key to pin (re-pins for good).
    pub server_key: Option<PublicKey>,
    /// The CA file an https:// server must chain to.
    pub ca: Option<PathBuf>,
    /// How direct and relayed paths are chosen.
    pub paths: PathSettings,
    /// A dry run: nothing is written (not even a new key) and nothing is registered.
    pub dry_run: bool,
    /// The subnet-route flags (advertising, SNAT, routing daemon tables; remembered).
    pub subnet_routes: crate::agent::state::subnet_routes::SubnetRouteFlags,
    /// Whether to use the subnet routes others advertise (given on every run).
    pub accept_routes: bool,
}

/// The OS to produce commands for: the requested one, else this host's.
pub fn target_os(requested: Option<TargetOs>) -> Result<TargetOs, AgentError> {
    requested.or_else(TargetOs::current).ok_or_else(|| {
        AgentError::Usage("this OS has no command set: pass --os linux, macos or windows".into())
    })
}

/// The CAs an https:// server must chain to: `--ca FILE`, or the bundled public roots.
pub fn tls_trust(ca: Option<&Path>) -> Result<TlsTrust, AgentError> {
    match ca {
        Some(path) => TlsTrust::from_ca_file(path).map_err(|e| AgentError::Usage(e.to_string())),
        None => Ok(TlsTrust::default()),
    }
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
/// checking answers against its pin (or `flag`).
pub fn api_client(
    server: ServerUrl,
    cfg: &ClientConfig,
    flag: Option<PublicKey>,
    trust: &TlsTrust,
) -> ApiClient {
    ApiClient::with_trust(server, REQUEST_TIMEOUT, trust)
        .with_identity(cfg.private_key.clone(), pinned_key(cfg, flag))
}

/// `--listen-port` and `--mtu`, checked: a port of 0 or an MTU IPv6 cannot use is refused;
/// `--mtu 0` goes back to the automatic MTU.
fn port_and_mtu(
    cfg: &mut ClientConfig,
    listen_port: Option<u16>,
    mtu: Option<u16>,
) -> Result<(), AgentError> {
    if let Some(port) = listen_port {
        if port == 0 {
            return Err(AgentError::Usage("--listen-port must be 1-65535".into()));
        }
        cfg.listen_port = port;
    }
    if let Some(mtu) = mtu {
        cfg.mtu = match mtu {
            0 => None,
            1280.. => Some(mtu),
            _ => {
                return Err(AgentError::Usage(format!(
                    "--mtu {mtu} is too small: the tunnel carries IPv6, which needs at least \
                     1280 (or 0 for the automatic MTU)"
                )))
            }
        };
    }
    Ok(())
}

/// Loads (or creates) the config, applies the overrides, saves it, and builds the engine.
pub fn engine(o: Overrides) -> Result<Engine, AgentError> {
    let path = o.config.clone().unwrap_or_else(config::default_path);
    let os = target_os(o.os)?;
    let trust = tls_trust(o.ca.as_deref())?;
    let existing = ClientConfig::load(&path)?;
    let fresh = existing.is_none();
    let mut cfg = existing.unwrap_or_else(|| {
        ClientConfig::generate(
            o.interface
                .clone()
                .unwrap_or_else(|| "wg0".parse().expect("literal")),
        )
    });
    if let Some(server) = o.server {
        cfg.server = Some(server);
        cfg.fallback_servers = o.fallback_servers;
    }
    if let Some(interface) = o.interface {
        cfg.interface = interface;
    }
    port_and_mtu(&mut cfg, o.listen_port, o.mtu)?;
    if o.endpoint.is_some() {
        cfg.endpoint = o.endpoint;
    }
    if o.hostname.is_some() {
        cfg.hostname = o.hostname;
    }
    cfg.exit_node = o.exit_node;
    if let Some(choice) = o.use_exit_node {
        cfg.use_exit_node = choice;
    }
    if let Some(fallback) = o.exit_fallback {
        cfg.exit_fallback = fallback;
    }
    cfg.subnet_routes
        .apply(o.subnet_routes, os)
        .map_err(|e| AgentError::Usage(e.to_string()))?;
    cfg.accept_routes = o.accept_routes;
    if cfg.exit_node && os != TargetOs::Linux {
        return Err(AgentError::Usage(format!(
            "{os} is not supported as an exit node yet: run the exit node on Linux"
        )));
    }
    // An explicit --server-key re-pins for good (e.g. after the server's key was replaced),
    // not just for this run.
    let server_key = pinned_key(&cfg, o.server_key);
    if let (Some(key), Some(assignment)) = (server_key, cfg.assignment.as_mut()) {
        assignment.server_public_key = key;
    }
    let server = cfg.server.clone().ok_or_else(|| {
        AgentError::Usage("no coordination server known: pass --server http://HOST:PORT".into())
    })?;
    if !o.dry_run {
        cfg.save(&path)?;
        if fresh {
            log::info!("generated a new key pair in {}", path.display());
        }
    }
    let reader: Option<Box<dyn Runner>> =
        (Some(os) == TargetOs::current()).then(|| Box::new(SystemRunner::new()) as Box<dyn Runner>);
    let mut client = api_client(server, &cfg, server_key, &trust)
        .with_fallbacks(&cfg.fallback_servers)
        .with_token(o.token);
    if o.login {
        let hostname = crate::agent::observe::host::local_hostname(&cfg);
        let id = super::login::log_in(&client, hostname.as_str(), &mut std::io::stderr())?;
        client = client.with_login(id);
    }
    let paths = PathTable::load(&path);
    // Probe datagrams only where the commands run (not when planning for another OS).
    let poke = reader
        .is_some()
        .then_some(crate::agent::apply::path_probe::poke as crate::agent::apply::path_probe::Poke);
    Ok(Engine {
        paths,
        config: cfg,
        config_path: path,
        os,
        client,
        reader,
        last_list: None,
        relay_probe: Default::default(),
        persist: !o.dry_run,
        device_routes: Vec::new(),
        poke,
        path_settings: o.paths,
        path_choices: Default::default(),
    })
}
