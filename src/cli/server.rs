//! `wgmesh server`: the coordination server on its embedded JSON store.

use super::{init_logging, Failure, LogLevel, EXIT_INTERNAL, EXIT_STATE, EXIT_USAGE};
use crate::server::{run_until_signalled, ServerConfig, ServerError};
use argh::FromArgs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Run the coordination server: registration, address allocation, peer discovery and health
/// checks over HTTP, with the registry in a JSON file (snapshot plus journal).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "server")]
pub struct ServerArgs {
    /// address and port the HTTP API listens on (default 0.0.0.0:8080)
    #[argh(option, default = "\"0.0.0.0:8080\".parse().unwrap()")]
    listen: SocketAddr,
    /// registry file (default ~/.config/wireguard-mesh/peers.json); its journal is PATH.journal
    /// and the server key is server.key in the same folder
    #[argh(option)]
    state: Option<PathBuf>,
    /// mesh network that addresses are allocated from (default 10.100.0.0/16); a state file
    /// allocated from another network is refused, never renumbered
    #[argh(option, default = "\"10.100.0.0/16\".parse().unwrap()")]
    network_cidr: ipnet::Ipv4Net,
    /// seconds without a heartbeat after which a peer is offline (default 120)
    #[argh(option, default = "120")]
    heartbeat_timeout: u64,
    /// seconds between sweeps that mark silent peers offline and flush heartbeats (default 60)
    #[argh(option, default = "60")]
    sweep_interval: u64,
    /// requests handled at the same moment (default: twice the number of cores); each open
    /// connection also has its own light I/O thread
    #[argh(option)]
    threads: Option<usize>,
    /// seconds an idle keep-alive connection is kept open (default 30)
    #[argh(option, default = "30")]
    idle_timeout: u64,
    /// most connections open at once; more get 503 (default 4096)
    #[argh(option, default = "4096")]
    max_connections: usize,
    /// log level: error, warn, info, debug or trace (default info)
    #[argh(option, default = "LogLevel::default()")]
    log_level: LogLevel,
    /// serve HTTPS with this PEM certificate chain (server certificate first); needs
    /// --tls-key. Without both, the API is plain HTTP
    #[argh(option)]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (keep it mode 0600)
    #[argh(option)]
    tls_key: Option<PathBuf>,
}

/// Runs `wgmesh server` until SIGINT/SIGTERM.
pub fn run(args: ServerArgs) -> Result<(), Failure> {
    init_logging(args.log_level);
    let state = args
        .state
        .unwrap_or_else(|| crate::fsutil::config_dir().join("peers.json"));
    let mut config = ServerConfig::with_state(state);
    config.listen = args.listen;
    config.network = args.network_cidr.trunc();
    if args.network_cidr.prefix_len() > 30 {
        return Err(Failure::new(
            EXIT_USAGE,
            format!(
                "--network-cidr {} has no room for peers: use a prefix of /30 or shorter",
                args.network_cidr
            ),
        ));
    }
    for (flag, value) in [
        ("--heartbeat-timeout", args.heartbeat_timeout),
        ("--sweep-interval", args.sweep_interval),
        ("--idle-timeout", args.idle_timeout),
    ] {
        if value == 0 {
            return Err(Failure::new(
                EXIT_USAGE,
                format!("{flag} must be at least 1 second"),
            ));
        }
    }
    config.heartbeat_timeout = Duration::from_secs(args.heartbeat_timeout);
    config.sweep_interval = Duration::from_secs(args.sweep_interval);
    config.limits.idle_timeout = Duration::from_secs(args.idle_timeout);
    config.limits.max_connections = args.max_connections.max(1);
    if let Some(threads) = args.threads {
        if threads == 0 {
            return Err(Failure::new(EXIT_USAGE, "--threads must be at least 1"));
        }
        config.limits.handler_threads = threads;
    }
    config.tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => Some(crate::server::http::TlsFiles { cert, key }),
        (None, None) => None,
        _ => {
            return Err(Failure::new(
                EXIT_USAGE,
                "--tls-cert and --tls-key go together: give both to serve HTTPS, or neither",
            ))
        }
    };
    run_until_signalled(&config).map_err(|e| {
        let code = match e {
            ServerError::Store(_) => EXIT_STATE,
            ServerError::Config(_) => EXIT_USAGE,
            ServerError::Io(_) => EXIT_INTERNAL,
        };
        Failure::new(code, e.to_string())
    })
}
