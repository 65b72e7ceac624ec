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
pub mod config;
pub mod console;
pub mod devices;
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
pub mod route_access;
pub mod sso;
pub mod state;
pub mod storage;
pub mod store;
pub mod stun_service;
pub mod tokens;
pub mod trust;
pub mod udp6;

pub use config::{
    load_or_create_key, ServerConfig, ServerError, DEFAULT_AUTH_FAILURES_PER_MINUTE,
    DEFAULT_REGISTER_PER_MINUTE,
};

use crate::keys::{PrivateKey, PublicKey};
use crate::server::state::MeshState;
use crate::server::storage::admission::Rules;
use crate::server::storage::json::JsonStorage;
use crate::server::storage::replica::ReplicaStorage;
use crate::server::trust::{PolicyHolder, Trust};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

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
    relay: Option<Arc<relay::service::RelayService>>,
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

/// The API over the store the configuration names, with the server's key, before any
/// socket is bound.
struct Opened {
    api: Arc<api::Api>,
    key: PrivateKey,
    /// How many peers were loaded, and from where (for the start line).
    peers: usize,
    source: String,
}

/// Opens the JSON store named by `--state`.
fn open_json(config: &ServerConfig) -> Result<Opened, ServerError> {
    let key = load_or_create_key(&config.key_file)?;
    let mesh6 = crate::proto::mesh6::prefix(&key.public_key());
    let opened = storage::json::open(config, mesh6)?;
    let peers = opened.registry.len();
    let policy = PolicyHolder::load(config.policy.clone(), &opened.registry.mesh_nets())
        .map_err(|e| ServerError::Config(e.to_string()))?;
    let (policy_text, _) = policy.current();
    if config.policy.is_some() {
        log::info!("access policy: {policy_text}");
    }
    let state = Arc::new(MeshState::new(opened.registry, policy));
    let rules = Rules { open: config.open };
    let floor = storage::write_floor::WriteFloor::beside(
        &config.state,
        crate::time::unix_secs(std::time::SystemTime::now()),
        crate::proto::auth::DEFAULT_MAX_CLOCK_SKEW_SECS,
    );
    let storage = JsonStorage::new(state.clone(), opened.journal, opened.tokens, rules, floor);
    let trust = Trust::load(config)?;
    let api = api::Api::new(state, Box::new(storage), key.clone(), trust);
    Ok(Opened {
        api: Arc::new(api),
        key,
        peers,
        source: config.state.display().to_string(),
    })
}

/// Opens this replica's view of the shared database named by `--store`, adopting the
/// cluster's key, admin secret and policy; a `--policy` file is published to every replica.
fn open_replica(config: &ServerConfig, url: &str) -> Result<Opened, ServerError> {
    let opened = storage::replica::open::open(config, url)?;
    let peers = opened.registry.len();
    let policy = PolicyHolder::load(config.policy.clone(), &opened.registry.mesh_nets())
        .map_err(|e| ServerError::Config(e.to_string()))?;
    if let Some(in_force) = opened.policy {
        policy.replace(in_force);
    }
    let state = Arc::new(MeshState::new(opened.registry, policy));
    let rules = Rules { open: config.open };
    let storage = ReplicaStorage::new(
        state.clone(),
        opened.db.clone(),
        opened.seq,
        rules,
        config.heartbeat_timeout,
    );
    let mut trust = Trust::load(config)?;
    let (secret_file, _, _) = config::files_beside(&config.state);
    trust.admin =
        trust::AdminSecret::adopt(opened.admin_secret, &secret_file).map_err(ServerError::Io)?;
    let sink: Arc<dyn trust::AuditSink> = opened.db;
    let _ = trust.audit_sink.set(sink);
    let api = Arc::new(api::Api::new(
        state,
        Box::new(storage),
        opened.key.clone(),
        trust,
    ));
    if config.policy.is_some() {
        api.reload_policy(None, None)
            .map_err(|e| ServerError::Config(format!("--policy: {e}")))?;
    }
    Ok(Opened {
        api,
        key: opened.key,
        peers,
        source: "PostgreSQL".into(),
    })
}

/// Starts the relay's member view source and the STUN service (which carries the relay),
/// handing their counters to the API.
fn start_udp(
    config: &ServerConfig,
    api: &Arc<api::Api>,
) -> Result<Vec<crate::server::stun_service::StunHandle>, ServerError> {
    let relay = (config.relay && config.udp_listen.is_some()).then(|| {
        let source = Arc::clone(api);
        relay::service::RelayService::new(
            Box::new(move || source.relay_view()),
            relay::RelayLimits::default(),
        )
    });
    let relay_stats = relay.as_ref().map(|r| r.stats());
    let stun = start_stun(config, relay)?;
    api.set_stun_stats(stun.iter().map(|h| h.stats()).collect());
    if let (Some(stats), Some(primary)) = (relay_stats, stun.first()) {
        api.set_relay(primary.local_addr().port(), stats);
    }
    Ok(stun)
}

/// Binds the API's TCP listener and starts the connection layer over it.
fn start_http(
    config: &ServerConfig,
    api: &Arc<api::Api>,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<http::HttpServer, ServerError> {
    let listener = TcpListener::bind(config.listen).map_err(|e| {
        ServerError::Io(io::Error::new(
            e.kind(),
            format!("cannot listen on {}: {e}", config.listen),
        ))
    })?;
    let http = match tls {
        Some(tls) => http::HttpServer::start_tls(listener, config.limits.clone(), api.clone(), tls),
        None => http::HttpServer::start(listener, config.limits.clone(), api.clone()),
    }
    .map_err(ServerError::Io)?;
    api.set_http_stats(http.stats_handle());
    Ok(http)
}

/// A replica's thread following the other replicas' changes (LISTEN), after announcing
/// where agents reach it.
fn start_follower(
    config: &ServerConfig,
    api: &Arc<api::Api>,
    bound: SocketAddr,
) -> Result<(Arc<AtomicBool>, std::thread::JoinHandle<()>), ServerError> {
    if let Some(url) = advertised(config, bound) {
        api.advertise(url);
    }
    let flag = Arc::new(AtomicBool::new(false));
    let (api, stop) = (api.clone(), flag.clone());
    let handle = std::thread::Builder::new()
        .name("pg-listen".into())
        .spawn(move || api.follow(&stop))
        .map_err(ServerError::Io)?;
    Ok((flag, handle))
}

/// STUN and the relay on IPv6 too, on the primary port (see `udp6`): best effort, since a
/// host without IPv6 must still serve IPv4.
fn start_stun_v6(
    primary: SocketAddr,
    relay: Option<Arc<relay::service::RelayService>>,
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
            Some(files) => {
                Some(http::load_tls_config(files).map_err(|e| ServerError::Config(e.0))?)
            }
            None => None,
        };
        let Opened {
            api,
            key,
            peers,
            source,
        } = match &config.store {
            Some(url) => open_replica(config, url)?,
            None => open_json(config)?,
        };
        api.approve_covered_routes();
        let stun = start_udp(config, &api)?;
        api.attach();
        if config.console {
            let auditor =
                trust::AdminSecret::load_or_create(&config::auditor_secret_beside(&config.state))
                    .map_err(ServerError::Io)?;
            api.enable_console(api::console::Console::new(auditor, tls.is_some()));
        }
        if let Some(sso) = &config.sso {
            enable_sso(&api, sso.clone());
        }
        let scheme = if tls.is_some() { "https" } else { "http" };
        let http = start_http(config, &api, tls)?;
        log::info!(
            "wgmesh server listening on {scheme}://{} for {} ({peers} peers loaded from {source})",
            http.local_addr(),
            config.network,
        );
        let listener = match config.store {
            Some(_) => Some(start_follower(config, &api, http.local_addr())?),
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
        if let Err(e) = self.api.reload_policy(None, None) {
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
        self.api.persist(true)
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
            if let Err(e) = api.persist(false) {
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

/// Turns single sign-on on and discovers the provider in the background: a provider that
/// is down at start only delays logins (each retries discovery), never the mesh.
fn enable_sso(api: &Arc<api::Api>, config: sso::flows::SsoConfig) {
    let issuer = config.provider.issuer.as_str().to_owned();
    api.enable_sso(sso::flows::Sso::new(config));
    log::info!(
        "single sign-on with {issuer}: machines join with `wgmesh up --login`, console at \
         /sso/console"
    );
    let api = api.clone();
    let _ = std::thread::Builder::new()
        .name("sso-discovery".into())
        .spawn(move || {
            if let Err(e) = api.sso_discover() {
                log::warn!("{e}");
            }
        });
}
