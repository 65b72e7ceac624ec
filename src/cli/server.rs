//! `wgmesh server`: the coordination server on its embedded JSON store.

use super::exit::{CliError, EXIT_INTERNAL, EXIT_STATE, EXIT_USAGE};
use super::output::{init_logging, LogLevel};
use crate::server::{run_until_signalled, ServerConfig, ServerError};
use crate::types::InvalidValue;
use argh::FromArgs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Run the coordination server: registration, address allocation, peer discovery and health
/// checks over HTTP, with the registry in a JSON file (snapshot plus journal). Peers sign
/// every request with their WireGuard key; new keys need a join token unless --open. Beside
/// the state file: server.key, admin.secret (for `wgmesh token|peers|policy`), tokens.json,
/// audit.log (JSON lines).
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
    /// seconds between sweeps that mark silent peers offline and store endpoint changes
    /// (default 60)
    #[argh(option, default = "60")]
    sweep_interval: u64,
    /// requests handled at the same moment (default: twice the number of cores); a waiting
    /// connection (idle or long-polling) costs no thread
    #[argh(option)]
    threads: Option<usize>,
    /// seconds an idle keep-alive connection is kept open (default 30)
    #[argh(option, default = "30")]
    idle_timeout: u64,
    /// most connections open at once; more get 503 (default 32768: 10,000 agents with a
    /// long-poll and a heartbeat each)
    #[argh(option, default = "crate::server::http::DEFAULT_MAX_CONNECTIONS")]
    max_connections: usize,
    /// UDP address where the STUN service and the relay answer (default 0.0.0.0:3478, and
    /// [::] on the same port; "off" disables it)
    #[argh(option, default = "UdpListen(Some(\"0.0.0.0:3478\".parse().unwrap()))")]
    udp_listen: UdpListen,
    /// second STUN port on the same address, so `wgmesh netcheck` can tell whether a NAT's
    /// mapping depends on the destination (default: the STUN port + 1; 0 disables it)
    #[argh(option)]
    udp_alt_port: Option<u16>,
    /// do not relay WireGuard on the --udp-listen port (by default the server forwards
    /// WireGuard between online members whose direct path fails; see README)
    #[argh(switch)]
    no_relay: bool,
    /// do not serve the operator's console at /console (by default it is on the API
    /// listener; log in with admin.secret, or auditor.secret for read-only access)
    #[argh(switch)]
    no_console: bool,
    /// log level: error, warn, info, debug or trace (default info)
    #[argh(option, default = "LogLevel::default()")]
    log_level: LogLevel,
    /// let any key register without a join token (labs only: anyone who can reach the server
    /// joins the mesh); by default a new key needs a token from `wgmesh token create`
    #[argh(switch)]
    open: bool,
    /// access policy file (JSON: {"allow": [{"from": ["tag:dev"], "to": ["tag:db"]}]}), rules
    /// symmetric; prefixes in "to" grant those parts of subnet routes; reloaded on SIGHUP and
    /// `wgmesh policy reload`; none = everyone sees everyone
    #[argh(option)]
    policy: Option<PathBuf>,
    /// registrations accepted per source address per minute, then 429 (default 60; 0 = off)
    #[argh(option, default = "crate::server::DEFAULT_REGISTER_PER_MINUTE")]
    register_limit: u32,
    /// failed authentications per source address per minute before 429 (default 30; 0 = off)
    #[argh(option, default = "crate::server::DEFAULT_AUTH_FAILURES_PER_MINUTE")]
    auth_failure_limit: u32,
    /// serve HTTPS with this PEM certificate chain (server certificate first); needs
    /// --tls-key. Without both, the API is plain HTTP
    #[argh(option)]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (keep it mode 0600)
    #[argh(option)]
    tls_key: Option<PathBuf>,
    /// share the registry with other replicas in PostgreSQL:
    /// postgresql://USER:PASSWORD@HOST:PORT/DATABASE (or set WGMESH_STORE, which keeps the
    /// password out of `ps`); without it, the JSON file at --state
    #[argh(option)]
    store: Option<String>,
    /// copy the registry, join tokens, server key and admin secret of the state file into
    /// this PostgreSQL database, which must hold no peers yet, keeping every address; then
    /// exit
    #[argh(option)]
    import_to: Option<String>,
    /// with replicas: the URL agents reach this replica at, published in GET /replicas
    /// (default: the listen address, unless it is a wildcard such as 0.0.0.0)
    #[argh(option)]
    advertise: Option<crate::agent::client::ServerUrl>,
    /// single sign-on: the OpenID provider's issuer URL (e.g. https://accounts.google.com);
    /// machines then join with `wgmesh up --login` and the policy file's "identities" rules
    #[argh(option)]
    oidc_issuer: Option<String>,
    /// the client id registered at the provider for wgmesh
    #[argh(option)]
    oidc_client_id: Option<String>,
    /// file holding the client secret (mode 0600)
    #[argh(option)]
    oidc_client_secret_file: Option<PathBuf>,
    /// scopes asked for (default "openid email profile"; add "groups" where the provider
    /// sends groups only for that scope)
    #[argh(option, default = "String::from(\"openid email profile\")")]
    oidc_scopes: String,
    /// the callback URL registered at the provider (default: this server's URL as the
    /// request reached it + /sso/callback; set it behind a reverse proxy)
    #[argh(option)]
    oidc_redirect_url: Option<String>,
    /// how long a machine's login admits it before it must log in again (default 180d)
    #[argh(option, default = "String::from(\"180d\")")]
    login_expiry: String,
    /// log machines in through this server's page (code + PKCE) even when the provider
    /// offers the device flow (Google lists one only its "TV" clients may use)
    #[argh(switch)]
    oidc_no_device_flow: bool,
}

/// `--udp-listen`: an address, or "off".
#[derive(Debug, Clone, Copy)]
pub struct UdpListen(Option<SocketAddr>);

impl std::str::FromStr for UdpListen {
    type Err = InvalidValue;
    fn from_str(value: &str) -> Result<Self, InvalidValue> {
        if value == "off" {
            return Ok(UdpListen(None));
        }
        value.parse().map(|a| UdpListen(Some(a))).map_err(|_| {
            InvalidValue(format!(
                "{value:?} is not ADDR:PORT (e.g. 0.0.0.0:3478) or \"off\""
            ))
        })
    }
}

/// Runs `wgmesh server` until SIGINT/SIGTERM.
pub fn run(args: ServerArgs) -> Result<(), CliError> {
    init_logging(args.log_level);
    let state = args
        .state
        .unwrap_or_else(|| crate::fsutil::config_dir().join("peers.json"));
    let mut config = ServerConfig::with_state(state);
    config.listen = args.listen;
    config.network = args.network_cidr.trunc();
    if args.network_cidr.prefix_len() > 30 {
        return Err(CliError::new(
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
            return Err(CliError::new(
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
            return Err(CliError::new(EXIT_USAGE, "--threads must be at least 1"));
        }
        config.limits.handler_threads = threads;
    }
    config.udp_listen = args.udp_listen.0;
    config.udp_alt_port = match (args.udp_alt_port, args.udp_listen.0) {
        (Some(0), _) | (_, None) => None,
        (Some(port), _) => Some(port),
        (None, Some(addr)) if addr.port() == 0 => Some(0),
        (None, Some(addr)) => addr.port().checked_add(1),
    };
    config.relay = !args.no_relay;
    config.console = !args.no_console;
    config.open = args.open;
    config.advertise = args.advertise.map(|u| u.to_string());
    config.store = args
        .store
        .or_else(|| std::env::var("WGMESH_STORE").ok().filter(|s| !s.is_empty()));
    if let Some(url) = args.import_to {
        return crate::server::storage::import::run(&config, &url)
            .map_err(|e| CliError::new(EXIT_STATE, format!("import into PostgreSQL failed: {e}")));
    }
    config.policy = args.policy;
    config.register_per_minute = args.register_limit;
    config.auth_failures_per_minute = args.auth_failure_limit;
    config.tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => Some(crate::server::http::TlsFiles { cert, key }),
        (None, None) => None,
        _ => {
            return Err(CliError::new(
                EXIT_USAGE,
                "--tls-cert and --tls-key go together: give both to serve HTTPS, or neither",
            ))
        }
    };
    config.sso = super::sso::sso_config(
        super::sso::SsoFlags {
            issuer: args.oidc_issuer,
            client_id: args.oidc_client_id,
            client_secret_file: args.oidc_client_secret_file,
            scopes: args.oidc_scopes,
            redirect_url: args.oidc_redirect_url,
            login_expiry: args.login_expiry,
            no_device_flow: args.oidc_no_device_flow,
        },
        config.tls.is_some(),
    )?;
    run_until_signalled(&config).map_err(|e| {
        let code = match e {
            ServerError::Store(_) | ServerError::Database(_) => EXIT_STATE,
            ServerError::Config(_) => EXIT_USAGE,
            ServerError::Io(_) => EXIT_INTERNAL,
        };
        CliError::new(code, e.to_string())
    })
}
