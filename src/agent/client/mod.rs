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
use crate::proto::auth::RequestSigner;
use crate::proto::model::{
    ApiError, DeregisterRequest, ErrorCode, HeartbeatRequest, OfflineRequest, PeerInfo, PeersDelta,
    PeersResponse, RegisterRequest, RegisterResponse,
};
use crate::types::PeerId;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod devices;
mod error;
mod exchange;
mod failover;
mod server_url;
mod tls;

pub use error::ClientError;
pub use server_url::ServerUrl;
use tls::transport;
pub use tls::TlsTrust;

/// Largest peer list accepted: far above the ~3 MB of 10,000 peers, well below memory trouble.
const MAX_PEER_LIST_BYTES: u64 = 256 * 1024 * 1024;

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

/// Who the agent is, for signing: its key, the server key it trusts, and the join token it
/// presents on a first registration.
#[derive(Debug, Clone)]
struct Identity {
    key: PrivateKey,
    /// The signer for the pinned server key (key agreement done once), when one is pinned.
    /// Shared between clones so a key learned on first use is pinned for all of them.
    signer: Arc<Mutex<Option<Arc<RequestSigner>>>>,
    token: Option<String>,
    /// A finished single sign-on login, presented on the next registration only (the
    /// server uses it up), shared between clones.
    login: Arc<Mutex<Option<String>>>,
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
            login: Arc::default(),
        });
        self
    }

    /// Whether a join token is at hand for a first registration.
    pub fn has_token(&self) -> bool {
        self.identity.as_ref().is_some_and(|i| i.token.is_some())
    }

    /// Presents `token` on registrations of a key the server does not know yet.
    pub fn with_token(mut self, token: Option<String>) -> ApiClient {
        if let Some(identity) = self.identity.as_mut() {
            identity.token = token;
        }
        self
    }

    /// Presents the finished single sign-on login `id` on the next registration.
    pub fn with_login(self, id: String) -> ApiClient {
        if let Some(identity) = self.identity.as_ref() {
            *identity.login.lock().unwrap_or_else(|p| p.into_inner()) = Some(id);
        }
        self
    }

    /// `POST /sso/login`: starts a single sign-on login for this client's key.
    pub fn sso_start(
        &self,
        hostname: &str,
    ) -> Result<crate::proto::sso::LoginStartResponse, ClientError> {
        let request = crate::proto::sso::LoginStartRequest {
            hostname: hostname.to_owned(),
        };
        let answer = self.post_json("/sso/login", &request)?;
        serde_json::from_slice(&answer.body)
            .map_err(|e| ClientError::Protocol(format!("login answer: {e}")))
    }

    /// `POST /sso/poll`: where login `id` stands (a refused login is an error).
    pub fn sso_poll(&self, id: &str) -> Result<crate::proto::sso::LoginPollResponse, ClientError> {
        let request = crate::proto::sso::LoginPollRequest {
            login_id: id.to_owned(),
        };
        let answer = self.post_json("/sso/poll", &request)?;
        serde_json::from_slice(&answer.body)
            .map_err(|e| ClientError::Protocol(format!("login poll answer: {e}")))
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
        let login = self.identity.as_ref().map(|i| i.login.clone());
        if req.login.is_none() {
            req.login = login
                .as_ref()
                .and_then(|l| l.lock().unwrap_or_else(|p| p.into_inner()).clone());
        }
        let answer = self.post_json("/register", &req)?;
        if let (Some(login), Some(_)) = (login, &req.login) {
            // Used up by the server: later registrations prove the key alone.
            *login.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
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

    /// `POST /report`: this node's view of its paths, for the console.
    pub fn report(&self, report: &crate::proto::report::AgentReport) -> Result<(), ClientError> {
        self.post_json("/report", report).map(drop)
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
        let url = self.url("/replicas");
        let mut resp = self.agent.get(&url).call().map_err(transport(&url))?;
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
