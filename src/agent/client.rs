//! The blocking HTTP client of the coordination API, with timeouts (ureq has none by
//! default) and errors that say whether the server was unreachable or refused, since the
//! agent reacts differently: keep the mesh and retry, or re-register, or give up.
//!
//! With an [`ApiClient::with_identity`], every request is signed with the agent's WireGuard
//! key (`crate::proto::auth`) and every answer must carry the server's MAC for the pinned server key:
//! an answer that does not verify is [`ClientError::Unauthentic`] and its body is never read
//! as data, so a man in the middle cannot feed the agent a forged peer list. The server key
//! is pinned from `--server-key`, else from the config's assignment, else learned once from
//! `GET /key` (trust on first use) and kept in the assignment from then on.

use crate::keys::{PrivateKey, PublicKey};
use crate::proto::auth::{self, RequestSigner};
use crate::proto::model::{
    ApiError, DeregisterRequest, ErrorCode, HeartbeatRequest, KeyResponse, OfflineRequest,
    PeerInfo, PeersDelta, PeersResponse, RegisterRequest, RegisterResponse,
};
use crate::types::PeerId;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Largest peer list accepted: far above the ~3 MB of 10,000 peers, well below memory trouble.
const MAX_PEER_LIST_BYTES: u64 = 256 * 1024 * 1024;

/// Why a call to the server failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientError {
    /// No answer: DNS, connection refused, timeout.
    Unreachable(String),
    /// The server does not know this peer (never registered, or deregistered).
    UnknownPeer,
    /// The server answered with an error status.
    Refused {
        /// HTTP status.
        status: u16,
        /// The server's error message.
        message: String,
    },
    /// The answer could not be understood.
    Protocol(String),
    /// The answer is not signed by the pinned server key: a man in the middle, or a server
    /// whose key changed. Nothing in it was believed.
    Unauthentic(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Unreachable(m) => write!(f, "coordination server unreachable: {m}"),
            ClientError::UnknownPeer => {
                f.write_str("the coordination server does not know this peer")
            }
            ClientError::Refused { status, message } => {
                write!(
                    f,
                    "coordination server refused the request ({status}): {message}"
                )
            }
            ClientError::Protocol(m) => {
                write!(f, "unexpected answer from the coordination server: {m}")
            }
            ClientError::Unauthentic(m) => write!(
                f,
                "refusing an unauthenticated answer from the coordination server: {m}"
            ),
        }
    }
}

impl std::error::Error for ClientError {}

/// What `GET /peers` returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerList {
    /// The list has not changed since the ETag given.
    NotModified,
    /// A new list and its ETag.
    Changed {
        /// Every online peer except us that the policy lets us see.
        peers: Vec<PeerInfo>,
        /// Send it back next time for a cheap 304.
        etag: Option<String>,
        /// The UDP port of the server's WireGuard relay, when it runs one.
        relay_port: Option<u16>,
        /// Send it back as `since` to get only what changed (absent from older servers).
        version: Option<u64>,
    },
}

/// A validated server base URL such as `http://198.18.0.1:8080`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl(String);

impl std::str::FromStr for ServerUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let trimmed = s.trim_end_matches('/');
        let rest = trimmed
            .strip_prefix("http://")
            .or_else(|| trimmed.strip_prefix("https://"))
            .ok_or_else(|| format!("server URL {s:?} must start with http:// or https://"))?;
        let ok = !rest.is_empty()
            && !rest.contains(['/', '?', '#', '@', ' '])
            && rest.chars().all(|c| c.is_ascii_graphic());
        if !ok {
            return Err(format!(
                "server URL {s:?} must be scheme://host[:port] with no path, e.g. http://198.18.0.1:8080"
            ));
        }
        Ok(ServerUrl(trimmed.to_owned()))
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for ServerUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for ServerUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl ServerUrl {
    /// The host:port part, for routing decisions (keeping the server outside an exit tunnel).
    pub fn authority(&self) -> &str {
        self.0.split("://").nth(1).unwrap_or("")
    }
}

/// Who the agent is, for signing: its key, the server key it trusts, and the join token it
/// presents on a first registration.
#[derive(Debug, Clone)]
struct Identity {
    key: PrivateKey,
    /// The signer for the pinned server key (key agreement done once), when one is pinned.
    /// Shared between clones so a key learned on first use is pinned for all of them.
    signer: Arc<Mutex<Option<Arc<RequestSigner>>>>,
    token: Option<String>,
}

/// A client of the coordination server, or of several replicas of it: it sticks to one and
/// fails over to the next on a connection error or a 5xx answer (every replica has the same
/// key, so the pin holds).
#[derive(Debug, Clone)]
pub struct ApiClient {
    agent: ureq::Agent,
    /// The servers in the order given; never empty.
    servers: Arc<Vec<ServerUrl>>,
    /// Index of the one in use, shared between clones so all stick to the same one.
    current: Arc<std::sync::atomic::AtomicUsize>,
    /// Set when the client moved to another server: live-sync versions are per server, so
    /// the next `peers_since` asks for the whole list instead of a delta.
    switched: Arc<std::sync::atomic::AtomicBool>,
    identity: Option<Identity>,
    trust: TlsTrust,
}

/// An answer read whole, with what is needed to verify it.
struct Answer {
    status: u16,
    headers: ureq::http::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

fn transport(e: ureq::Error) -> ClientError {
    match tls_failure(&e) {
        Some(tls) => ClientError::Unreachable(format!(
            "TLS with the server failed: {tls} (if its certificate is not from a public CA, pass the CA certificate with --ca FILE)"
        )),
        None => ClientError::Unreachable(e.to_string()),
    }
}

/// The rustls error behind a ureq error, if the failure was TLS (an untrusted certificate,
/// a name mismatch, a server that does not speak TLS), so it can be reported as such
/// rather than as a bare I/O error.
fn tls_failure(e: &ureq::Error) -> Option<String> {
    match e {
        ureq::Error::Rustls(tls) => Some(tls.to_string()),
        ureq::Error::Io(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .map(|tls| tls.to_string()),
        _ => None,
    }
}

/// Which certificate authorities an `https://` server's certificate must chain to.
///
/// Default: the Mozilla roots bundled with webpki-roots (the same everywhere, not whatever
/// the host's store holds). `--ca FILE` replaces them with the CA certificates in FILE, for
/// a server with a private CA or a self-signed certificate; it does not add to them, so a
/// public CA cannot vouch for a server that should only be vouched for by its own.
#[derive(Debug, Clone, Default)]
pub struct TlsTrust {
    roots: Option<Arc<Vec<ureq::tls::Certificate<'static>>>>,
}

impl TlsTrust {
    /// Trusts only the CERTIFICATE blocks of the PEM file at `path` (other blocks, such as
    /// a private key mistakenly bundled, are ignored). Fails if there are none.
    pub fn from_ca_file(path: &Path) -> Result<TlsTrust, String> {
        let pem = std::fs::read(path).map_err(|e| format!("--ca {}: {e}", path.display()))?;
        let mut certs = Vec::new();
        for item in ureq::tls::parse_pem(&pem) {
            match item {
                Ok(ureq::tls::PemItem::Certificate(cert)) => certs.push(cert),
                Ok(_) => {}
                Err(e) => return Err(format!("--ca {}: not valid PEM: {e}", path.display())),
            }
        }
        if certs.is_empty() {
            return Err(format!(
                "--ca {}: no CERTIFICATE block in the file",
                path.display()
            ));
        }
        Ok(TlsTrust {
            roots: Some(Arc::new(certs)),
        })
    }

    fn tls_config(&self) -> ureq::tls::TlsConfig {
        let roots = match &self.roots {
            Some(certs) => ureq::tls::RootCerts::Specific(certs.clone()),
            None => ureq::tls::RootCerts::WebPki,
        };
        ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .root_certs(roots)
            .build()
    }
}

impl ApiClient {
    /// A client with a per-request time limit, trusting the default roots for https://.
    pub fn new(base: ServerUrl, timeout: Duration) -> ApiClient {
        Self::with_trust(base, timeout, &TlsTrust::default())
    }

    /// A client with a per-request time limit and the CAs an https:// server must chain to.
    pub fn with_trust(base: ServerUrl, timeout: Duration, trust: &TlsTrust) -> ApiClient {
        ApiClient {
            agent: Self::agent(timeout, trust),
            servers: Arc::new(vec![base]),
            current: Arc::default(),
            switched: Arc::default(),
            identity: None,
            trust: trust.clone(),
        }
    }

    /// The same client (server, trust, identity and pinned key) with another time limit per
    /// request: longer for long-polls, shorter for a last word on the way out.
    pub fn with_timeout(&self, timeout: Duration) -> ApiClient {
        ApiClient {
            agent: Self::agent(timeout, &self.trust),
            ..self.clone()
        }
    }

    fn agent(timeout: Duration, trust: &TlsTrust) -> ureq::Agent {
        ureq::Agent::config_builder()
            .tls_config(trust.tls_config())
            .timeout_global(Some(timeout))
            .timeout_connect(Some(timeout.min(Duration::from_secs(5))))
            .http_status_as_error(false)
            .user_agent(concat!("wgmesh/", env!("CARGO_PKG_VERSION")))
            .build()
            .into()
    }

    /// Signs every request with `key` and checks every answer against `server_key`; with
    /// `None`, the server key is learned from `GET /key` on first use (trust on first use).
    pub fn with_identity(mut self, key: PrivateKey, server_key: Option<PublicKey>) -> ApiClient {
        let signer = server_key.map(|server| Arc::new(RequestSigner::new(&key, &server)));
        self.identity = Some(Identity {
            key,
            signer: Arc::new(Mutex::new(signer)),
            token: None,
        });
        self
    }

    /// Adds servers to fail over to, after the one given at construction (replicas of one
    /// cluster; see README).
    pub fn with_fallbacks(mut self, more: &[ServerUrl]) -> ApiClient {
        let mut servers = (*self.servers).clone();
        for url in more {
            if !servers.contains(url) {
                servers.push(url.clone());
            }
        }
        self.servers = Arc::new(servers);
        self
    }

    /// Presents `token` on registrations of a key the server does not know yet.
    pub fn with_token(mut self, token: Option<String>) -> ApiClient {
        if let Some(identity) = self.identity.as_mut() {
            identity.token = token;
        }
        self
    }

    /// The server key answers are checked against, once known.
    pub fn pinned_server_key(&self) -> Option<PublicKey> {
        let identity = self.identity.as_ref()?;
        identity
            .signer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|s| s.server_key())
    }

    /// The signer for the pinned server key, learning the key from `GET /key` if none is
    /// pinned yet.
    fn signer(&self, identity: &Identity) -> Result<Arc<RequestSigner>, ClientError> {
        let mut pinned = identity.signer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(signer) = pinned.as_ref() {
            return Ok(signer.clone());
        }
        let mut resp = self.agent.get(self.url("/key")).call().map_err(transport);
        for other in self.servers.iter().filter(|s| *s != self.server()) {
            if resp.as_ref().is_ok_and(|r| r.status().is_success()) {
                break;
            }
            resp = self
                .agent
                .get(format!("{other}/key"))
                .call()
                .map_err(transport);
        }
        let mut resp = resp?;
        if !resp.status().is_success() {
            return Err(Self::refusal(resp));
        }
        let answer: KeyResponse = resp
            .body_mut()
            .with_config()
            .limit(64 * 1024)
            .read_json()
            .map_err(|e| ClientError::Protocol(format!("server key answer: {e}")))?;
        log::warn!(
            "trusting coordination server key {} on first use (pass --server-key to pin it up front)",
            answer.server_public_key
        );
        let signer = Arc::new(RequestSigner::new(&identity.key, &answer.server_public_key));
        *pinned = Some(signer.clone());
        Ok(signer)
    }

    /// Sends one request to the server in use; on a connection error or a 5xx answer, to the
    /// next one (signed afresh: a replica refuses a nonce another one already accepted), and
    /// sticks with the first that answers.
    fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        extra: &[(&str, &str)],
        limit: u64,
    ) -> Result<Answer, ClientError> {
        use std::sync::atomic::Ordering;
        let n = self.servers.len();
        let start = self.current.load(Ordering::Relaxed) % n;
        let mut last = None;
        for step in 0..n {
            let index = (start + step) % n;
            let base = &self.servers[index];
            let result = self.exchange_with(base, method, path, body.clone(), extra, limit);
            let failed = match &result {
                Err(ClientError::Unreachable(why)) => Some(why.clone()),
                Err(ClientError::Refused { status, message }) if *status >= 500 => {
                    Some(format!("answered {status}: {message}"))
                }
                Ok(answer) if answer.status >= 500 => Some(format!("answered {}", answer.status)),
                _ => None,
            };
            match failed {
                Some(why) if step + 1 < n => {
                    let next = &self.servers[(index + 1) % n];
                    log::warn!("coordination server {base} failed ({why}); trying {next}");
                    last = Some(result);
                }
                _ => {
                    if failed.is_none() && index != start {
                        self.current.store(index, Ordering::Relaxed);
                        self.switched.store(true, Ordering::Relaxed);
                        log::info!("now using coordination server {base}");
                    }
                    return result;
                }
            }
        }
        last.expect("at least one server")
    }

    /// Sends one request to `base`, signed when there is an identity, and reads the whole
    /// answer; a signed request's answer is verified before anything else looks at it.
    fn exchange_with(
        &self,
        base: &ServerUrl,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        extra: &[(&str, &str)],
        limit: u64,
    ) -> Result<Answer, ClientError> {
        let bytes = body.clone().unwrap_or_default();
        let mut builder = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{base}{path}"));
        if body.is_some() {
            builder = builder.header("Content-Type", "application/json");
        }
        for (name, value) in extra {
            builder = builder.header(*name, *value);
        }
        let mut nonce = None;
        let mut signer = None;
        if let Some(identity) = &self.identity {
            let request_signer = self.signer(identity)?;
            let headers = request_signer.sign(method, path, &bytes, SystemTime::now());
            nonce = auth::header_value(&headers, auth::NONCE_HEADER).map(str::to_owned);
            for (name, value) in &headers {
                builder = builder.header(*name, value.as_str());
            }
            signer = Some(request_signer);
        }
        let built =
            |e: ureq::http::Error| ClientError::Protocol(format!("cannot build request: {e}"));
        let mut resp = if body.is_some() {
            self.agent.run(builder.body(bytes).map_err(built)?)
        } else {
            self.agent.run(builder.body(()).map_err(built)?)
        }
        .map_err(transport)?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .body_mut()
            .with_config()
            .limit(limit)
            .read_to_vec()
            .map_err(|e| ClientError::Protocol(format!("{path} answer: {e}")))?;
        let answer = Answer {
            status,
            headers,
            body,
        };
        if let (Some(signer), Some(nonce)) = (signer, nonce) {
            let verified =
                signer.verify_response(&nonce, status, &|name| answer.header(name), &answer.body);
            if let Err(e) = verified {
                // An unsigned error can only be reported, never acted on: a 401 for a bad
                // request MAC cannot be signed for a key the server could not verify.
                let what = if (400..600).contains(&status) {
                    let message = serde_json::from_slice::<ApiError>(&answer.body)
                        .map(|e| e.error)
                        .unwrap_or_else(|_| {
                            String::from_utf8_lossy(&answer.body)
                                .chars()
                                .take(200)
                                .collect()
                        });
                    format!("{e} (the unsigned answer was {status}: {message})")
                } else {
                    e.to_string()
                };
                if status >= 500 {
                    // A sick replica or a load balancer in front of a dead one: report it as
                    // the failure it is (and fail over), never act on its body.
                    return Err(ClientError::Refused {
                        status,
                        message: what,
                    });
                }
                return Err(ClientError::Unauthentic(what));
            }
        }
        Ok(answer)
    }

    fn refused(answer: &Answer) -> ClientError {
        Self::classify(answer.status, &String::from_utf8_lossy(&answer.body))
    }

    fn post_json<T: serde::Serialize>(&self, path: &str, body: &T) -> Result<Answer, ClientError> {
        let bytes = serde_json::to_vec(body).expect("API types always serialize");
        let answer = self.exchange("POST", path, Some(bytes), &[], 64 * 1024)?;
        if (200..300).contains(&answer.status) {
            Ok(answer)
        } else {
            Err(Self::refused(&answer))
        }
    }

    /// The server this client talks to right now.
    pub fn server(&self) -> &ServerUrl {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed);
        &self.servers[i % self.servers.len()]
    }

    /// Every server this client may use, in order.
    pub fn servers(&self) -> &[ServerUrl] {
        &self.servers
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.server(), path)
    }

    fn refusal(mut resp: ureq::http::Response<ureq::Body>) -> ClientError {
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(64 * 1024)
            .read_to_string()
            .unwrap_or_default();
        Self::classify(status, &text)
    }

    /// Turns an error answer into a [`ClientError`] by its `code`: only
    /// [`ErrorCode::UnknownPeer`] makes the agent register again. The message is kept for
    /// people; a body that is not JSON is quoted (cut to 200 characters).
    fn classify(status: u16, text: &str) -> ClientError {
        let (message, code) = match serde_json::from_str::<ApiError>(text) {
            Ok(e) => (e.error, e.code),
            Err(_) => (text.chars().take(200).collect(), ErrorCode::Unknown),
        };
        if code == ErrorCode::UnknownPeer {
            ClientError::UnknownPeer
        } else {
            ClientError::Refused { status, message }
        }
    }

    /// `POST /register`, with the join token if one was given. The answer must name the
    /// server key this client pinned: a server presenting another key is refused.
    pub fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse, ClientError> {
        let mut req = req.clone();
        if req.token.is_none() {
            req.token = self.identity.as_ref().and_then(|i| i.token.clone());
        }
        let answer = self.post_json("/register", &req)?;
        let parsed: RegisterResponse = serde_json::from_slice(&answer.body)
            .map_err(|e| ClientError::Protocol(format!("register answer: {e}")))?;
        if let Some(pinned) = self.pinned_server_key() {
            if parsed.server_public_key != pinned {
                return Err(ClientError::Unauthentic(format!(
                    "the server says its key is {} but {pinned} is pinned",
                    parsed.server_public_key
                )));
            }
        }
        Ok(parsed)
    }

    /// `POST /heartbeat`.
    pub fn heartbeat(&self, req: &HeartbeatRequest) -> Result<(), ClientError> {
        self.post_json("/heartbeat", req).map(drop)
    }

    /// `POST /deregister`.
    pub fn deregister(&self, peer_id: &PeerId) -> Result<(), ClientError> {
        self.post_json(
            "/deregister",
            &DeregisterRequest {
                peer_id: peer_id.clone(),
            },
        )
        .map(drop)
    }

    /// `GET /replicas` from the server in use: the URLs of the live replicas of its cluster,
    /// for choosing where a relayed pair meets; empty for a single server (or one too old
    /// to answer, which says 404).
    pub fn replicas(&self) -> Result<Vec<String>, ClientError> {
        #[derive(serde::Deserialize)]
        struct Replicas {
            replicas: Vec<String>,
        }
        let mut resp = self
            .agent
            .get(self.url("/replicas"))
            .call()
            .map_err(transport)?;
        match resp.status().as_u16() {
            404 => Ok(Vec::new()),
            200..=299 => resp
                .body_mut()
                .with_config()
                .limit(256 * 1024)
                .read_json::<Replicas>()
                .map(|r| r.replicas)
                .map_err(|e| ClientError::Protocol(format!("replica list: {e}"))),
            _ => Err(Self::refusal(resp)),
        }
    }

    /// `POST /offline`: tells the server this node stops on purpose, so the others drop it
    /// now rather than at the heartbeat timeout; the registration and address stay.
    pub fn offline(&self, peer_id: &PeerId) -> Result<(), ClientError> {
        self.post_json(
            "/offline",
            &OfflineRequest {
                peer_id: peer_id.clone(),
            },
        )
        .map(drop)
    }

    /// `GET /peers?since=N[&wait=SECS]`: what changed after version `since` (or the whole
    /// list, when the server cannot answer from there), waiting up to `wait` for a change.
    /// The client's time limit must exceed `wait` (see [`ApiClient::with_timeout`]).
    ///
    /// Versions are numbered by each server (each replica) on its own, so a version from
    /// one means nothing to another: after this client failed over (by this request or any
    /// other), it asks from version 0, which every server answers with its whole list.
    pub fn peers_since(
        &self,
        peer_id: &PeerId,
        since: u64,
        wait: Option<Duration>,
    ) -> Result<PeersDelta, ClientError> {
        use std::sync::atomic::Ordering;
        let since = if self.switched.swap(false, Ordering::Relaxed) {
            0
        } else {
            since
        };
        let before = self.current.load(Ordering::Relaxed);
        let answer = self.get_since(peer_id, since, wait)?;
        if !answer.full && self.current.load(Ordering::Relaxed) != before {
            // The delta came from the server we failed over to, counted from another's version.
            self.switched.store(false, Ordering::Relaxed);
            return self.get_since(peer_id, 0, None);
        }
        Ok(answer)
    }

    fn get_since(
        &self,
        peer_id: &PeerId,
        since: u64,
        wait: Option<Duration>,
    ) -> Result<PeersDelta, ClientError> {
        let mut path = format!("/peers?peer_id={peer_id}&since={since}");
        if let Some(wait) = wait {
            path.push_str(&format!("&wait={}", wait.as_secs()));
        }
        let answer = self.exchange("GET", &path, None, &[], MAX_PEER_LIST_BYTES)?;
        match answer.status {
            200 => serde_json::from_slice(&answer.body)
                .map_err(|e| ClientError::Protocol(format!("peer list: {e}"))),
            _ => Err(Self::refused(&answer)),
        }
    }

    /// `GET /peers`, conditional on the ETag of the list we already have.
    pub fn peers(&self, peer_id: &PeerId, etag: Option<&str>) -> Result<PeerList, ClientError> {
        let path = format!("/peers?peer_id={peer_id}");
        let extra: Vec<(&str, &str)> = etag.map(|t| ("If-None-Match", t)).into_iter().collect();
        let answer = self.exchange("GET", &path, None, &extra, MAX_PEER_LIST_BYTES)?;
        match answer.status {
            304 => Ok(PeerList::NotModified),
            200 => {
                let etag = answer.header("etag").map(str::to_owned);
                let list: PeersResponse = serde_json::from_slice(&answer.body)
                    .map_err(|e| ClientError::Protocol(format!("peer list: {e}")))?;
                Ok(PeerList::Changed {
                    peers: list.peers,
                    etag,
                    relay_port: list.relay_port,
                    version: list.version,
                })
            }
            _ => Err(Self::refused(&answer)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_are_checked() {
        assert_eq!(
            "http://198.18.0.1:8080/"
                .parse::<ServerUrl>()
                .unwrap()
                .to_string(),
            "http://198.18.0.1:8080"
        );
        assert_eq!(
            "http://[::1]:8080"
                .parse::<ServerUrl>()
                .unwrap()
                .authority(),
            "[::1]:8080"
        );
        for bad in [
            "198.18.0.1:8080",
            "ftp://x",
            "http://",
            "http://a/b",
            "http://a b",
        ] {
            assert!(bad.parse::<ServerUrl>().is_err(), "{bad}");
        }
    }
}
