//! The coordination server (design 3.1.1): registration, IPAM, peer discovery, health
//! checks and persistence, served over HTTP or HTTPS (rustls) by our own small HTTP/1.1
//! layer (`http`) on plain std threads.
//!
//! Threads: one accepts connections, one readiness loop holds every waiting connection
//! (parked long-polls included), an elastic pool of workers serves requests (see [`http`]),
//! and one sweeper marks silent peers offline every second (waking long-polls) and journals
//! what heartbeats changed on each `sweep_interval`.

pub mod api;
pub mod audit;
pub mod changes;
pub mod http;
pub mod ipam;
pub mod live;
pub mod metrics;
pub mod names;
pub mod peer_list;
pub mod pg;
pub mod policy;
pub mod registry;
pub mod relay;
pub mod store;
pub mod stun_service;
pub mod tokens;
pub mod trust;
pub mod udp6;
pub mod write_floor;

use crate::fsutil;
use crate::keys::{PrivateKey, PublicKey};
use crate::server::store::{Store, StoreError};
use ipnet::Ipv4Net;
use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
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
            open: false,
            policy: None,
            register_per_minute: DEFAULT_REGISTER_PER_MINUTE,
            auth_failures_per_minute: DEFAULT_AUTH_FAILURES_PER_MINUTE,
            tls: None,
            store: None,
            advertise: None,
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

/// A server that is up and answering.
pub struct RunningServer {
    http: http::HttpServer,
    api: Arc<api::Api>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    sweeper: Option<std::thread::JoinHandle<()>>,
    public_key: PublicKey,
    stun: Vec<crate::server::stun_service::StunHandle>,
    listener: Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>,
}

/// STUN worker threads per port: one client waits for each answer, so more threads mostly
/// add wake-ups (measured by `cargo bench --bench stun`); two keep one port busy under load.
const STUN_THREADS: usize = 2;

/// Starts the STUN service on `--udp-listen` (and the alternate port); the primary socket
/// also carries the WireGuard relay when `relay` is given.
fn start_stun(
    config: &ServerConfig,
    relay: Option<Arc<relay::RelayService>>,
) -> Result<Vec<crate::server::stun_service::StunHandle>, ServerError> {
    let Some(primary) = config.udp_listen else {
        return Ok(Vec::new());
    };
    let mut addrs = vec![primary];
    if let Some(port) = config.udp_alt_port.filter(|p| *p != 0) {
        addrs.push(SocketAddr::new(primary.ip(), port));
    }
    let mut handles = Vec::new();
    let v6_relay = relay.clone();
    let mut relay = relay;
    for addr in addrs {
        let socket = std::net::UdpSocket::bind(addr).map_err(|e| {
            ServerError::Io(io::Error::new(
                e.kind(),
                format!("cannot listen for STUN on udp {addr}: {e}"),
            ))
        })?;
        let relaying = relay.is_some();
        let handle = crate::server::stun_service::StunService::spawn_with_relay(
            socket,
            STUN_THREADS,
            crate::server::stun_service::RateLimit::default(),
            crate::server::stun_service::ServiceOptions::default(),
            relay.take(),
        )
        .map_err(ServerError::Io)?;
        log::info!("STUN service answering on udp {}", handle.local_addr());
        if relaying {
            log::info!(
                "WireGuard relay on udp {} (the same socket)",
                handle.local_addr()
            );
        }
        handles.push(handle);
    }
    if let Some(handle) = start_stun_v6(handles[0].local_addr(), v6_relay) {
        handles.push(handle);
    }
    Ok(handles)
}

/// STUN and the relay on IPv6 too, on the primary port (see `udp6`): best effort, since a
/// host without IPv6 must still serve IPv4.
fn start_stun_v6(
    primary: SocketAddr,
    relay: Option<Arc<relay::RelayService>>,
) -> Option<crate::server::stun_service::StunHandle> {
    let addr = udp6::companion(primary)?;
    let socket = match udp6::bind_v6_only(addr) {
        Ok(socket) => socket,
        Err(e) => {
            log::warn!("no STUN or relay on IPv6: cannot listen on udp {addr}: {e}");
            return None;
        }
    };
    let relaying = relay.is_some();
    match crate::server::stun_service::StunService::spawn_with_relay(
        socket,
        STUN_THREADS,
        crate::server::stun_service::RateLimit::default(),
        crate::server::stun_service::ServiceOptions::default(),
        relay,
    ) {
        Ok(handle) => {
            let what = if relaying { "STUN and relay" } else { "STUN" };
            log::info!("{what} also on udp {}", handle.local_addr());
            Some(handle)
        }
        Err(e) => {
            log::warn!("no STUN or relay on IPv6 ({addr}): {e}");
            None
        }
    }
}

impl RunningServer {
    /// Loads the state, binds the socket and starts every thread.
    pub fn start(config: &ServerConfig) -> Result<RunningServer, ServerError> {
        // Certificates first: a bad --tls-cert should fail before any state is touched.
        let tls = match &config.tls {
            Some(files) => Some(http::load_tls_config(files).map_err(ServerError::Config)?),
            None => None,
        };
        let (api, key, peers, source) = match &config.store {
            Some(url) => start_replica(config, url)?,
            None => {
                let key = load_or_create_key(&config.key_file)?;
                let (store, mut snapshot) =
                    Store::open(&config.state, config.network).map_err(ServerError::Store)?;
                // Heartbeat times are not written to disk (README "Durability"): a peer stored
                // as online gets one full heartbeat timeout from this start to check in again.
                let started = std::time::SystemTime::now();
                for peer in snapshot.peers.iter_mut().filter(|p| p.online) {
                    peer.last_heartbeat = peer.last_heartbeat.max(started);
                }
                let peers = snapshot.peers.len();
                let mut registry = registry::Registry::from_snapshot(snapshot)
                    .map_err(|e| ServerError::Config(e.to_string()))?;
                registry.set_mesh6(crate::proto::mesh6::prefix(&key.public_key()));
                let trust = trust::Trust::load(config)?;
                let api = Arc::new(api::Api::new(registry, store, key.clone(), trust));
                (api, key, peers, config.state.display().to_string())
            }
        };
        let relay = (config.relay && config.udp_listen.is_some()).then(|| {
            let source = Arc::clone(&api);
            relay::RelayService::new(
                Box::new(move || source.relay_view()),
                relay::RelayLimits::default(),
            )
        });
        let relay_stats = relay.as_ref().map(|r| r.stats());
        let stun = start_stun(config, relay)?;
        api.attach();
        api.set_stun_stats(stun.iter().map(|h| h.stats()).collect());
        if let (Some(stats), Some(primary)) = (relay_stats, stun.first()) {
            api.set_relay(primary.local_addr().port(), stats);
        }
        let listener = TcpListener::bind(config.listen).map_err(|e| {
            ServerError::Io(io::Error::new(
                e.kind(),
                format!("cannot listen on {}: {e}", config.listen),
            ))
        })?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let http = match tls {
            Some(tls) => {
                http::HttpServer::start_tls(listener, config.limits.clone(), api.clone(), tls)
            }
            None => http::HttpServer::start(listener, config.limits.clone(), api.clone()),
        }
        .map_err(ServerError::Io)?;
        api.set_http_stats(http.stats_handle());
        log::info!(
            "wgmesh server listening on {scheme}://{} for {} ({peers} peers loaded from {source})",
            http.local_addr(),
            config.network,
        );
        let listener = match config.store {
            Some(_) => {
                if let Some(url) = advertised(config, http.local_addr()) {
                    api.advertise(url);
                }
                let flag = Arc::new(AtomicBool::new(false));
                let (api, stop) = (api.clone(), flag.clone());
                let handle = std::thread::Builder::new()
                    .name("pg-listen".into())
                    .spawn(move || api::listen_loop(&api, &stop))
                    .map_err(ServerError::Io)?;
                Some((flag, handle))
            }
            None => None,
        };
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let sweeper = {
            let (api, stop) = (api.clone(), stop.clone());
            let (interval, timeout) = (config.sweep_interval, config.heartbeat_timeout);
            std::thread::Builder::new()
                .name("sweeper".into())
                .spawn(move || sweep_loop(&api, &stop, interval, timeout))
                .map_err(ServerError::Io)?
        };
        Ok(RunningServer {
            http,
            api,
            stop,
            sweeper: Some(sweeper),
            public_key: key.public_key(),
            stun,
            listener,
        })
    }

    /// The bound HTTP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.http.local_addr()
    }

    /// The bound STUN addresses (primary first), for tests using port 0.
    pub fn stun_addrs(&self) -> Vec<SocketAddr> {
        self.stun.iter().map(|h| h.local_addr()).collect()
    }

    /// The server's public key, as returned by `/register`.
    pub fn public_key(&self) -> PublicKey {
        self.public_key
    }

    /// Re-reads the policy file (SIGHUP); a bad file keeps the old policy and is logged.
    pub fn reload_policy(&self) {
        if let Err(e) = self.api.reload_policy(None) {
            log::error!("policy reload failed, keeping the old policy: {e}");
        }
    }

    /// Stops accepting, stops the sweeper and writes a final snapshot.
    pub fn shutdown(mut self) -> io::Result<()> {
        self.http.stop();
        {
            let (flag, wake) = &*self.stop;
            *flag.lock().unwrap_or_else(|p| p.into_inner()) = true;
            wake.notify_all();
        }
        if let Some(t) = self.sweeper.take() {
            let _ = t.join();
        }
        for handle in self.stun.drain(..) {
            handle.shutdown();
        }
        if let Some((flag, handle)) = self.listener.take() {
            flag.store(true, Ordering::Relaxed);
            let _ = handle.join();
        }
        self.api.compact(true)
    }
}

/// Where agents reach this replica: `--advertise`, else the listen address when it names one
/// (a wildcard address names none, so nothing is published).
fn advertised(config: &ServerConfig, bound: SocketAddr) -> Option<String> {
    if config.advertise.is_some() {
        return config.advertise.clone();
    }
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    (!bound.ip().is_unspecified()).then(|| format!("{scheme}://{bound}"))
}

/// Opens the shared database, loads (or creates) the cluster's identity and registry, and
/// builds this replica's API over them.
fn start_replica(
    config: &ServerConfig,
    url: &str,
) -> Result<(Arc<api::Api>, PrivateKey, usize, String), ServerError> {
    let db_error = |e: pg::pool::DbError| ServerError::Database(format!("--store: {e}"));
    let db = Arc::new(pg::PgStore::open(url).map_err(|e| match e {
        pg::pool::DbError::Data(m) if m.starts_with("--store") => ServerError::Config(m),
        other => db_error(other),
    })?);
    let (key, secret) = db.identity(config.network, None).map_err(db_error)?;
    let loaded = db.load().map_err(db_error)?;
    let (seq, count) = (loaded.seq, loaded.peers.len());
    let snapshot = store::Snapshot {
        version: store::FORMAT_VERSION,
        network_cidr: config.network,
        peers: loaded.peers,
    };
    let mut registry = registry::Registry::from_snapshot(snapshot)
        .map_err(|e| ServerError::Config(e.to_string()))?;
    registry.set_mesh6(crate::proto::mesh6::prefix(&key.public_key()));
    // `/peers` versions are the database's sequence numbers, the same on every replica.
    registry.follow_versions(seq.max(0) as u64);
    let mut trust = trust::Trust::load(config)?;
    // The policy in force at `seq` (what every replica showed then), even when this replica
    // brings a policy file: publishing it below is then a change at its own version.
    let in_force = match loaded.policy.as_deref().map(policy::Policy::from_json) {
        Some(Ok(p)) => Some(p),
        Some(Err(e)) => {
            log::error!("the database holds an unusable policy: {e}");
            None
        }
        None => Some(policy::Policy::allow_all()),
    };
    if let Some(p) = in_force {
        trust.policy.replace(p);
    }
    let (secret_file, _, _) = trust::files_beside(&config.state);
    trust.admin = trust::AdminSecret::adopt(secret, &secret_file).map_err(ServerError::Io)?;
    let _ = trust.audit_db.set(db.clone());
    let publish = config.policy.is_some();
    let api = Arc::new(api::Api::new_replica(
        registry,
        api::Replica::new(db.clone(), seq).with_ttl(config.heartbeat_timeout),
        key.clone(),
        trust,
    ));
    if publish {
        api.reload_policy(None)
            .map_err(|e| ServerError::Config(format!("--policy: {e}")))?;
    }
    Ok((api, key, count, "PostgreSQL".into()))
}

/// How often silent peers are looked for: a dead node leaves every list within the heartbeat
/// timeout plus this (and the moment's delivery), at the cost of one pass over the registry.
pub const TIMEOUT_CHECK: Duration = Duration::from_secs(1);

fn sweep_loop(
    api: &api::Api,
    stop: &(Mutex<bool>, Condvar),
    interval: Duration,
    timeout: Duration,
) {
    let (flag, wake) = stop;
    let tick = interval.min(TIMEOUT_CHECK);
    let mut next_compaction = std::time::Instant::now() + interval;
    let mut stopped = flag.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let (guard, _) = wake
            .wait_timeout(stopped, tick)
            .unwrap_or_else(|p| p.into_inner());
        stopped = guard;
        if *stopped {
            return;
        }
        drop(stopped);
        api.sweep(timeout);
        // Snapshots keep their own pace: sweeping often must not mean writing often.
        if std::time::Instant::now() >= next_compaction {
            next_compaction = std::time::Instant::now() + interval;
            if let Err(e) = api.compact(false) {
                log::error!("cannot write the registry snapshot: {e}");
            }
        }
        stopped = flag.lock().unwrap_or_else(|p| p.into_inner());
    }
}

/// Runs the server until SIGINT or SIGTERM, then shuts down cleanly.
pub fn run_until_signalled(config: &ServerConfig) -> Result<(), ServerError> {
    let term = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, term.clone()).map_err(ServerError::Io)?;
    }
    let hup = Arc::new(AtomicBool::new(false));
    // Windows has no SIGHUP: the policy is reloaded there with `wgmesh admin policy reload`.
    #[cfg(unix)]
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())
        .map_err(ServerError::Io)?;
    let server = RunningServer::start(config)?;
    while !term.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if hup.swap(false, Ordering::Relaxed) {
            log::info!("SIGHUP: reloading the access policy");
            server.reload_policy();
        }
    }
    log::info!("shutting down: writing the final snapshot");
    server.shutdown().map_err(ServerError::Io)
}
