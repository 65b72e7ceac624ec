//! Shared helpers for integration tests: a real `wgmesh server` process on an ephemeral
//! loopback port, with its own temporary state folder, stopped (and cleaned up) on drop.

#![allow(dead_code)]

pub mod netns;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
        let mut child = Command::new(wgmesh_bin())
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

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
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

/// A fresh WireGuard public key, base64.
pub fn new_key() -> String {
    wgmesh::keys::PrivateKey::generate()
        .public_key()
        .to_base64()
}

/// A status code and parsed JSON body.
pub struct Answer {
    pub status: u16,
    pub json: serde_json::Value,
    pub etag: Option<String>,
}

fn answer(mut resp: ureq::http::Response<ureq::Body>) -> Answer {
    let status = resp.status().as_u16();
    let etag = resp
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    let json = if text.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    Answer { status, json, etag }
}

pub fn post(server: &ServerProcess, path: &str, body: &str) -> Answer {
    answer(
        agent()
            .post(server.url(path))
            .header("Content-Type", "application/json")
            .send(body)
            .expect("request"),
    )
}

pub fn get(server: &ServerProcess, path: &str, if_none_match: Option<&str>) -> Answer {
    let mut req = agent().get(server.url(path));
    if let Some(tag) = if_none_match {
        req = req.header("If-None-Match", tag);
    }
    answer(req.call().expect("request"))
}

pub fn register(server: &ServerProcess, key: &str, hostname: &str) -> Answer {
    post(
        server,
        "/register",
        &serde_json::json!({"public_key": key, "hostname": hostname, "os": "linux", "listen_port": 51820})
            .to_string(),
    )
}
