//! What `wgmesh server` can be told ([`ServerConfig`]), why it may fail to start
//! ([`ServerError`]), and the server's own key, kept apart from the code that runs it so
//! every part of the server can name them without importing the server itself.

use crate::fsutil;
use crate::keys::PrivateKey;
use crate::server::http;
use crate::server::store::StoreError;
use ipnet::Ipv4Net;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default registrations per source per minute: a whole office behind one NAT address can
/// roll out 60 machines a minute, while a script spraying keys is slowed to that pace.
pub const DEFAULT_REGISTER_PER_MINUTE: u32 = 60;

/// Default failed authentications per source per minute before 429: a misconfigured agent
/// retries far less often, while a guesser gets a handful of tries a minute.
pub const DEFAULT_AUTH_FAILURES_PER_MINUTE: u32 = 30;

/// Everything `wgmesh server` can be told.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where the HTTP API listens.
    pub listen: SocketAddr,
    /// The registry snapshot file (its journal sits beside it).
    pub state: PathBuf,
    /// The server's static X25519 key file (created 0600 on first start).
    pub key_file: PathBuf,
    /// The mesh network addresses are allocated from.
    pub network: Ipv4Net,
    /// Silence after which a peer is offline (design: 120 s).
    pub heartbeat_timeout: Duration,
    /// How often the sweeper runs (design: 60 s).
    pub sweep_interval: Duration,
    /// Connection-layer limits, including `--threads`.
    pub limits: http::Limits,
    /// Where the STUN service answers "what address do you see me from?" (None: off).
    pub udp_listen: Option<SocketAddr>,
    /// A second STUN port on the same address, so clients can tell whether their NAT's
    /// mapping changes with the destination (None: off).
    pub udp_alt_port: Option<u16>,
    /// Relay WireGuard between members on the primary STUN port (`--relay off` disables it).
    pub relay: bool,
    /// Serve the operator's console at `/console` (`--no-console` turns it off).
    pub console: bool,
    /// `--open`: new keys may register without a join token (labs only).
    pub open: bool,
    /// `--policy FILE`: who sees whom; None = everyone sees everyone.
    pub policy: Option<PathBuf>,
    /// Registrations accepted per source address per minute (0 = unlimited).
    pub register_per_minute: u32,
    /// Failed authentications tolerated per source address per minute before 429.
    pub auth_failures_per_minute: u32,
    /// Serve HTTPS with this certificate and key (`--tls-cert`, `--tls-key`); plain HTTP
    /// when `None`.
    pub tls: Option<http::TlsFiles>,
    /// `--store postgresql://...`: replicas share this database instead of the JSON file.
    pub store: Option<String>,
    /// `--advertise URL`: where agents reach this replica, published in `GET /replicas`.
    pub advertise: Option<String>,
    /// Single sign-on (`--oidc-issuer` and friends); None: joining needs a token.
    pub sso: Option<crate::server::sso::flows::SsoConfig>,
}

impl ServerConfig {
    /// The design's defaults (5.2, 4.3, 7.2) for a given state file.
    pub fn with_state(state: PathBuf) -> ServerConfig {
        let key_file = fsutil::parent_dir(&state).join("server.key");
        ServerConfig {
            listen: "0.0.0.0:8080".parse().expect("literal"),
            state,
            key_file,
            network: "10.100.0.0/16".parse().expect("literal"),
            heartbeat_timeout: Duration::from_secs(120),
            sweep_interval: Duration::from_secs(60),
            limits: http::Limits::default(),
            udp_listen: None,
            udp_alt_port: None,
            relay: true,
            console: true,
            open: false,
            policy: None,
            register_per_minute: DEFAULT_REGISTER_PER_MINUTE,
            auth_failures_per_minute: DEFAULT_AUTH_FAILURES_PER_MINUTE,
            tls: None,
            store: None,
            advertise: None,
            sso: None,
        }
    }
}

/// Why the server could not start.
#[derive(Debug)]
pub enum ServerError {
    /// The state could not be loaded; see [`StoreError`].
    Store(StoreError),
    /// The configuration is unusable (e.g. a network too small).
    Config(String),
    /// A socket or file could not be opened.
    Io(io::Error),
    /// The replicas' database is unreachable or holds state this server must not use.
    Database(String),
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::Store(e) => e.fmt(f),
            ServerError::Config(m) => f.write_str(m),
            ServerError::Io(e) => e.fmt(f),
            ServerError::Database(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for ServerError {}

/// Loads the server's static key, creating it (0600) on first start.
pub fn load_or_create_key(path: &Path) -> Result<PrivateKey, ServerError> {
    match std::fs::read_to_string(path) {
        Ok(text) => PrivateKey::from_base64(&text).map_err(|e| {
            ServerError::Config(format!(
                "server key {} is unusable ({e}); restore it, or delete it to make a new one (clients that pinned the old key will refuse the new one)",
                path.display()
            ))
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let key = PrivateKey::generate();
            let mut text = key.to_base64();
            text.push('\n');
            fsutil::write_atomic(path, text.as_bytes(), 0o600).map_err(ServerError::Io)?;
            log::info!("created server key {}", path.display());
            Ok(key)
        }
        Err(e) => Err(ServerError::Io(fsutil::with_path(e, "cannot read server key", path))),
    }
}

/// The files of the trust state beside a state file: `admin.secret`, `tokens.json`,
/// `audit.log`, so one folder (and one backup) holds the whole server.
pub fn files_beside(state: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let dir = fsutil::parent_dir(state);
    (
        dir.join("admin.secret"),
        dir.join("tokens.json"),
        dir.join("audit.log"),
    )
}

/// The console auditor's secret beside a state file: `auditor.secret` (read-only access).
pub fn auditor_secret_beside(state: &Path) -> PathBuf {
    fsutil::parent_dir(state).join("auditor.secret")
}
