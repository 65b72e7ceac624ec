//! Shared helpers for integration tests: a real `wgmesh server` process on an ephemeral
//! loopback port, with its own temporary state folder, stopped (and cleaned up) on drop.
//!
//! Requests to peer endpoints are signed as a real agent signs them: `new_key()` remembers
//! each private key it makes, so `register`/`post`/`get` sign with the key a request concerns
//! (the body's `public_key`, or the key behind a `peer_id`), or with a stranger's key when the
//! test names a key or id it never made. Every answer to a signed request that carries a
//! response MAC is verified; a 2xx/304 without a valid one fails the test.

#![allow(dead_code)]

pub mod browser;
pub mod device_conf;
pub mod internet;
pub mod netns;
pub mod postgres;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};
use wgmesh::keys::{PrivateKey, PublicKey};
use wgmesh::proto::auth;
use wgmesh::types::PeerId;

/// The binary under test.
pub fn wgmesh_bin() -> &'static str {
    env!("CARGO_BIN_EXE_wgmesh")
}

/// A temporary folder removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let mut seed = [0u8; 6];
        getrandom::fill(&mut seed).unwrap();
        let suffix: String = seed.iter().map(|b| format!("{b:02x}")).collect();
        let path = std::env::temp_dir().join(format!("wgmesh-test-{tag}-{suffix}"));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running server process.
pub struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
    pub state: PathBuf,
    key: OnceLock<PublicKey>,
}

impl ServerProcess {
    /// Starts `wgmesh server --listen 127.0.0.1:0 --state STATE EXTRA...` and waits until it
    /// says where it listens.
    pub fn start(state: &Path, extra: &[&str]) -> ServerProcess {
        Self::try_start(state, extra).unwrap_or_else(|(code, log)| {
            panic!("server did not start (exit {code:?}):\n{}", log.join("\n"))
        })
    }

    /// Like `start`, but returns the exit code and log if the server exits instead.
    pub fn try_start(
        state: &Path,
        extra: &[&str],
    ) -> Result<ServerProcess, (Option<i32>, Vec<String>)> {
        Self::try_start_with(state, extra, |_| {})
    }

    /// Like `try_start`, with a last say on the command (e.g. resource limits).
    pub fn try_start_with(
        state: &Path,
        extra: &[&str],
        configure: impl FnOnce(&mut Command),
    ) -> Result<ServerProcess, (Option<i32>, Vec<String>)> {
        let mut command = Command::new(wgmesh_bin());
        configure(&mut command);
        let mut child = command
            .arg("server")
            .args([
                "--listen",
                "127.0.0.1:0",
                "--udp-listen",
                "127.0.0.1:0",
                "--state",
            ])
            .arg(state)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wgmesh server");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(rest) = line.split("listening on http://").nth(1) {
                        let addr = rest.split_whitespace().next().unwrap_or("").to_owned();
                        let _ = tx.send(addr);
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => Ok(ServerProcess {
                child,
                addr: addr.parse().expect("listen address"),
                log,
                state: state.to_path_buf(),
                key: OnceLock::new(),
            }),
            Err(_) => {
                let status = child.wait().ok().and_then(|s| s.code());
                std::thread::sleep(Duration::from_millis(100));
                let lines = log.lock().unwrap().clone();
                Err((status, lines))
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The server's public key, from the unauthenticated `GET /key`.
    pub fn public_key(&self) -> PublicKey {
        *self.key.get_or_init(|| {
            let answer = get(self, "/key", None);
            assert_eq!(answer.status, 200, "{}", answer.json);
            answer.json["server_public_key"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
    }

    /// The folder holding the state, server key, admin secret, tokens and audit log.
    pub fn dir(&self) -> PathBuf {
        self.state.parent().unwrap().to_path_buf()
    }

    /// The admin secret the server created beside its state.
    pub fn admin_secret(&self) -> String {
        std::fs::read_to_string(self.dir().join("admin.secret"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// Creates a join token through the admin API; returns (token, id).
    pub fn create_token(&self, body: serde_json::Value) -> (String, String) {
        let answer = admin(self, "POST", "/admin/tokens", Some(body));
        assert_eq!(answer.status, 200, "{}", answer.json);
        (
            answer.json["token"].as_str().unwrap().to_owned(),
            answer.json["info"]["id"].as_str().unwrap().to_owned(),
        )
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The log once it contains `needle`, waiting up to ten seconds (the server writes some
    /// lines after it has answered the request that caused them); panics with the log if not.
    pub fn log_once_it_says(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log_text();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "the log never said {needle:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP agent that returns every status as a response (no errors for 4xx).
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into()
}

/// Private keys made by `new_key`, by public key and by peer id, so requests can be signed
/// by whoever they concern.
type Keyring = (HashMap<String, PrivateKey>, HashMap<String, PrivateKey>);

fn keyring() -> &'static Mutex<Keyring> {
    static KEYS: OnceLock<Mutex<Keyring>> = OnceLock::new();
    KEYS.get_or_init(Mutex::default)
}

/// A key no test registers: signs requests that name keys or ids the test never made.
pub fn stranger() -> &'static PrivateKey {
    static KEY: OnceLock<PrivateKey> = OnceLock::new();
    KEY.get_or_init(PrivateKey::generate)
}

/// A fresh WireGuard public key, base64 (its private key is remembered for signing).
pub fn new_key() -> String {
    let private = PrivateKey::generate();
    let public = private.public_key();
    let mut ring = keyring().lock().unwrap();
    ring.0.insert(public.to_base64(), private.clone());
    ring.1
        .insert(PeerId::for_key(&public).to_string(), private.clone());
    public.to_base64()
}

/// The private key behind a public key made by `new_key`.
pub fn private_of(public: &str) -> Option<PrivateKey> {
    keyring().lock().unwrap().0.get(public).cloned()
}

/// The private key behind a peer id whose key `new_key` made.
pub fn private_of_id(id: &str) -> Option<PrivateKey> {
    keyring().lock().unwrap().1.get(id).cloned()
}

/// Who signs a request to `path` with `body`: None for endpoints that take no signature.
pub fn signer_for(method: &str, path: &str, body: &str) -> Option<PrivateKey> {
    let route = path.split('?').next().unwrap_or("");
    let json = || serde_json::from_str::<serde_json::Value>(body).unwrap_or_default();
    let found = match route {
        "/register" => json()["public_key"].as_str().and_then(private_of),
        "/heartbeat" | "/deregister" | "/offline" | "/report" => {
            json()["peer_id"].as_str().and_then(private_of_id)
        }
        "/peers" if method == "GET" => path
            .split("peer_id=")
            .nth(1)
            .and_then(|id| private_of_id(id.split('&').next().unwrap())),
        _ => match route.strip_prefix("/peers/") {
            Some(id) => private_of_id(id),
            None => return None,
        },
    };
    Some(found.unwrap_or_else(|| stranger().clone()))
}

/// A status code and parsed JSON body.
pub struct Answer {
    pub status: u16,
    pub json: serde_json::Value,
    pub etag: Option<String>,
    pub retry_after: Option<String>,
    /// Whether the answer carried a response MAC that verified.
    pub signed: bool,
}

/// Sends one request, signed with `key` (if any) as the agent would sign it, and checks the
/// answer's MAC.
pub fn send_as(
    server: &ServerProcess,
    key: Option<&PrivateKey>,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Answer {
    try_send_as(server, key, method, path, body, headers).expect("request")
}

/// Like [`send_as`], but Err when no answer came (connection refused or cut: a replica that
/// was killed) instead of failing the test.
pub fn try_send_as(
    server: &ServerProcess,
    key: Option<&PrivateKey>,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Result<Answer, String> {
    let mut builder = ureq::http::Request::builder()
        .method(method)
        .uri(server.url(path));
    if !body.is_empty() {
        builder = builder.header("Content-Type", "application/json");
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let mut nonce = None;
    if let Some(key) = key {
        let signed = auth::sign_request(
            key,
            &server.public_key(),
            method,
            path,
            body.as_bytes(),
            SystemTime::now(),
        );
        nonce = auth::header_value(&signed, auth::NONCE_HEADER).map(str::to_owned);
        for (name, value) in &signed {
            builder = builder.header(*name, value.as_str());
        }
    }
    try_send_raw(server, builder, body, key, nonce)
}

/// Like [`send_as`] with the request already built and signed; Err when no answer came
/// (connection refused or cut: a replica that was killed).
pub fn try_send_raw(
    server: &ServerProcess,
    builder: ureq::http::request::Builder,
    body: &str,
    key: Option<&PrivateKey>,
    nonce: Option<String>,
) -> Result<Answer, String> {
    let method = builder
        .method_ref()
        .map(|m| m.to_string())
        .unwrap_or_default();
    let path = builder
        .uri_ref()
        .map(|u| u.path().to_owned())
        .unwrap_or_default();
    let mut resp = agent()
        .run(builder.body(body.to_owned()).unwrap())
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let bytes = resp
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_vec()
        .unwrap_or_default();
    let signed = match (key, &nonce) {
        (Some(key), Some(nonce)) => auth::verify_response(
            key,
            &server.public_key(),
            nonce,
            status,
            &|name| header(name),
            &bytes,
        )
        .is_ok(),
        _ => false,
    };
    if key.is_some() && (200..300).contains(&status) || status == 304 && key.is_some() {
        assert!(
            signed,
            "{method} {path}: answer {status} lacks a valid response MAC"
        );
    }
    let text = String::from_utf8_lossy(&bytes);
    let json = if text.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    Ok(Answer {
        status,
        json,
        etag: header("etag").map(str::to_owned),
        retry_after: header("retry-after").map(str::to_owned),
        signed,
    })
}

/// Sends a request signed by whoever it concerns (see the module comment).
pub fn send(server: &ServerProcess, method: &str, path: &str, body: &str) -> Answer {
    let key = signer_for(method, path, body);
    send_as(server, key.as_ref(), method, path, body, &[])
}

pub fn post(server: &ServerProcess, path: &str, body: &str) -> Answer {
    send(server, "POST", path, body)
}

pub fn get(server: &ServerProcess, path: &str, if_none_match: Option<&str>) -> Answer {
    let key = signer_for("GET", path, "");
    let extra: Vec<(&str, &str)> = if_none_match
        .map(|t| ("If-None-Match", t))
        .into_iter()
        .collect();
    send_as(server, key.as_ref(), "GET", path, "", &extra)
}

/// An admin request with the server's admin secret.
pub fn admin(
    server: &ServerProcess,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Answer {
    let secret = format!("Bearer {}", server.admin_secret());
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    send_as(
        server,
        None,
        method,
        path,
        &body,
        &[("Authorization", secret.as_str())],
    )
}

pub fn register(server: &ServerProcess, key: &str, hostname: &str) -> Answer {
    post(
        server,
        "/register",
        &serde_json::json!({"public_key": key, "hostname": hostname, "os": "linux", "listen_port": 51820})
            .to_string(),
    )
}

/// Registers with a join token.
pub fn register_with_token(
    server: &ServerProcess,
    key: &str,
    hostname: &str,
    token: &str,
) -> Answer {
    post(
        server,
        "/register",
        &serde_json::json!({"public_key": key, "hostname": hostname, "os": "linux",
            "listen_port": 51820, "token": token})
        .to_string(),
    )
}

/// The exact bytes of one request signed by `key` at `at`, as an agent would send them, so a
/// test can capture it and send it again byte for byte (a replay) over a raw socket.
pub fn raw_signed_request(
    server_key: &PublicKey,
    key: &PrivateKey,
    (method, path, body): (&str, &str, &str),
    at: SystemTime,
) -> Vec<u8> {
    let headers = auth::sign_request(key, server_key, method, path, body.as_bytes(), at);
    let mut text = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Type: \
         application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    text.push_str(body);
    text.into_bytes()
}

/// Sends `bytes` on a new connection to `addr` and reads the answer to the end: its status
/// and JSON body (null when it has none).
pub fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.write_all(bytes).unwrap();
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or_default())
}

/// Registers a new agent the way `wgmesh up` does on its first run (a key generated and
/// saved in `config`, registered with the first of `servers` that answers, the list and the
/// server key remembered), without touching any interface: what a dry run needs first,
/// since a dry run registers nothing.
pub fn join(
    config: &Path,
    servers: &[String],
    hostname: &str,
    ca: Option<&Path>,
    token: Option<&str>,
) -> wgmesh::agent::state::config::ClientConfig {
    use wgmesh::agent::run::setup::{engine, Overrides};
    let mut urls = servers.iter().map(|s| s.parse().expect("server URL"));
    let mut engine = engine(Overrides {
        config: Some(config.to_owned()),
        server: urls.next(),
        fallback_servers: urls.collect(),
        hostname: Some(hostname.parse().expect("hostname")),
        ca: ca.map(Path::to_owned),
        token: token.map(str::to_owned),
        os: Some(wgmesh::os::TargetOs::Linux),
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("agent for {hostname}: {e}"));
    engine
        .register()
        .unwrap_or_else(|e| panic!("register {hostname}: {e}"));
    engine.config.clone()
}
