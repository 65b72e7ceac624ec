//! The blocking HTTP client of the coordination API, with timeouts (ureq has none by
//! default) and errors that say whether the server was unreachable or refused, since the
//! agent reacts differently: keep the mesh and retry, or re-register, or give up.

use crate::model::{
    DeregisterRequest, ErrorResponse, HeartbeatRequest, PeerInfo, PeersResponse, RegisterRequest,
    RegisterResponse,
};
use crate::types::PeerId;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

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
        /// Every online peer except us.
        peers: Vec<PeerInfo>,
        /// Send it back next time for a cheap 304.
        etag: Option<String>,
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

/// A client of one coordination server.
#[derive(Debug, Clone)]
pub struct ApiClient {
    agent: ureq::Agent,
    base: ServerUrl,
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
        let agent = ureq::Agent::config_builder()
            .tls_config(trust.tls_config())
            .timeout_global(Some(timeout))
            .timeout_connect(Some(timeout.min(Duration::from_secs(5))))
            .http_status_as_error(false)
            .user_agent(concat!("wgmesh/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        ApiClient { agent, base }
    }

    /// The server this client talks to.
    pub fn server(&self) -> &ServerUrl {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn refusal(mut resp: ureq::http::Response<ureq::Body>) -> ClientError {
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(64 * 1024)
            .read_to_string()
            .unwrap_or_default();
        let message = serde_json::from_str::<ErrorResponse>(&text)
            .map(|e| e.error)
            .unwrap_or_else(|_| text.chars().take(200).collect());
        if status == 404 && message.contains("unknown peer") {
            ClientError::UnknownPeer
        } else {
            ClientError::Refused { status, message }
        }
    }

    fn post<T: serde::Serialize>(
        &self,
        path: &str,
        body: &T,
    ) -> Result<ureq::http::Response<ureq::Body>, ClientError> {
        let resp = self
            .agent
            .post(self.url(path))
            .header("Content-Type", "application/json")
            .send_json(body)
            .map_err(transport)?;
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(Self::refusal(resp))
        }
    }

    /// `POST /register`.
    pub fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse, ClientError> {
        let mut resp = self.post("/register", req)?;
        resp.body_mut()
            .read_json()
            .map_err(|e| ClientError::Protocol(format!("register answer: {e}")))
    }

    /// `POST /heartbeat`.
    pub fn heartbeat(&self, req: &HeartbeatRequest) -> Result<(), ClientError> {
        self.post("/heartbeat", req).map(drop)
    }

    /// `POST /deregister`.
    pub fn deregister(&self, peer_id: &PeerId) -> Result<(), ClientError> {
        self.post(
            "/deregister",
            &DeregisterRequest {
                peer_id: peer_id.clone(),
            },
        )
        .map(drop)
    }

    /// `GET /peers`, conditional on the ETag of the list we already have.
    pub fn peers(&self, peer_id: &PeerId, etag: Option<&str>) -> Result<PeerList, ClientError> {
        let mut req = self
            .agent
            .get(self.url(&format!("/peers?peer_id={peer_id}")));
        if let Some(tag) = etag {
            req = req.header("If-None-Match", tag);
        }
        let mut resp = req.call().map_err(transport)?;
        match resp.status().as_u16() {
            304 => Ok(PeerList::NotModified),
            200 => {
                let etag = resp
                    .headers()
                    .get("etag")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let list: PeersResponse = resp
                    .body_mut()
                    .with_config()
                    .limit(MAX_PEER_LIST_BYTES)
                    .read_json()
                    .map_err(|e| ClientError::Protocol(format!("peer list: {e}")))?;
                Ok(PeerList::Changed {
                    peers: list.peers,
                    etag,
                })
            }
            _ => Err(Self::refusal(resp)),
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
