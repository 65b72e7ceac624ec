//! HTTPS for the control plane, end to end: the real `wgmesh server` binary with
//! `--tls-cert/--tls-key`, and the real client commands with `--ca`. Certificates are made
//! here at test time (rcgen), never committed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;
use wgmesh::agent::client::{ApiClient, ClientError, PeerList, ServerUrl, TlsTrust};
use wgmesh::keys::PrivateKey;
use wgmesh::proto::model::RegisterRequest;

fn wgmesh_bin() -> &'static str {
    env!("CARGO_BIN_EXE_wgmesh")
}

/// A temporary folder removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let mut seed = [0u8; 6];
        getrandom::fill(&mut seed).unwrap();
        let suffix: String = seed.iter().map(|b| format!("{b:02x}")).collect();
        let path = std::env::temp_dir().join(format!("wgmesh-test-{tag}-{suffix}"));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA, a server certificate it signed (for `localhost` and 127.0.0.1), and PEM files of
/// both in a temporary folder.
struct Pki {
    dir: TempDir,
}

impl Pki {
    fn new(tag: &str) -> Pki {
        let dir = TempDir::new(tag);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "wgmesh test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let server_key = rcgen::KeyPair::generate().unwrap();
        let server_params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), server_cert.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), server_key.serialize_pem()).unwrap();
        Pki { dir }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
    fn cert(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }
    fn key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }
}

/// A `wgmesh server` on an ephemeral loopback port: HTTPS with a [`Pki`], else plain HTTP.
struct TlsServer {
    child: Child,
    addr: SocketAddr,
    _state: TempDir,
}

impl TlsServer {
    fn start(pki: &Pki) -> TlsServer {
        Self::start_with(Some(pki))
    }

    fn start_with(pki: Option<&Pki>) -> TlsServer {
        let state = TempDir::new("tls-state");
        let mut cmd = Command::new(wgmesh_bin());
        cmd.arg("server")
            .args([
                "--listen",
                "127.0.0.1:0",
                "--udp-listen",
                "127.0.0.1:0",
                "--open",
                "--state",
            ])
            .arg(state.path().join("peers.json"));
        if let Some(pki) = pki {
            cmd.arg("--tls-cert")
                .arg(pki.cert())
                .arg("--tls-key")
                .arg(pki.key());
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wgmesh server");
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line
                    .split("://")
                    .nth(1)
                    .filter(|_| line.contains("listening on"))
                {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_owned();
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the server logs where it listens")
            .parse()
            .unwrap();
        TlsServer {
            child,
            addr,
            _state: state,
        }
    }

    fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wgmesh(args: &[&str], extra: &[&Path]) -> Output {
    let output = Command::new(wgmesh_bin())
        .args(args)
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("run wgmesh");
    output
}

/// `wgmesh sync --dry-run` against the server: registers and fetches peers, prints the plan.
fn dry_sync(server: &TlsServer, config: &Path, ca: Option<&Path>) -> Output {
    let config = config.to_str().unwrap();
    let url = server.url();
    let mut args = vec![
        "sync",
        "--server",
        &url,
        "--config",
        config,
        "--dry-run",
        "--os",
        "linux",
    ];
    let ca = ca.map(|p| p.to_str().unwrap().to_owned());
    if let Some(ca) = &ca {
        args.extend(["--ca", ca.as_str()]);
    }
    wgmesh(&args, &[])
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A registration for `key`; the client sending it must sign with the same key.
fn register_request(key: &PrivateKey, hostname: &str) -> RegisterRequest {
    serde_json::from_value(serde_json::json!({
        "public_key": key.public_key().to_base64(),
        "hostname": hostname,
        "os": "linux",
        "listen_port": 51820,
        "exit_node": false,
        "allowed_ips": [],
    }))
    .unwrap()
}

#[test]
fn clients_trusting_the_ca_register_and_sync_over_https() {
    let pki = Pki::new("tls-pki");
    let server = TlsServer::start(&pki);
    let client_dir = TempDir::new("tls-client");
    let config = client_dir.path().join("client.json");

    // A fresh machine's dry run registers nothing, but talks TLS to the server (GET /key).
    let output = dry_sync(&server, &config, Some(&pki.ca()));
    assert!(output.status.success(), "sync failed: {}", stderr(&output));
    assert!(!config.exists(), "a dry run writes nothing");
    // Registered as a first real run does (without an interface), then a dry run syncs.
    let mut engine = wgmesh::agent::run::setup::engine(wgmesh::agent::run::setup::Overrides {
        config: Some(config.clone()),
        server: Some(server.url().parse().unwrap()),
        ca: Some(pki.ca()),
        os: Some(wgmesh::os::TargetOs::Linux),
        ..Default::default()
    })
    .unwrap();
    engine.register().unwrap();
    let output = dry_sync(&server, &config, Some(&pki.ca()));
    assert!(output.status.success(), "sync failed: {}", stderr(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("wg set"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    assert!(
        saved["assignment"]["assigned_ip"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10.100.")),
        "no assignment saved: {saved}"
    );

    // export fetches the peer list over HTTPS too.
    let output = wgmesh(
        &["export", "--config", config.to_str().unwrap(), "--ca"],
        &[&pki.ca()],
    );
    assert!(
        output.status.success(),
        "export failed: {}",
        stderr(&output)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("[Interface]"));
    assert!(
        !stderr(&output).contains("last peer list"),
        "export fell back to the cache: {}",
        stderr(&output)
    );

    // The library client: several requests over one keep-alive TLS session, a second peer
    // seeing the first, and a 304 on an unchanged list.
    let trust = TlsTrust::from_ca_file(&pki.ca()).unwrap();
    let key = PrivateKey::generate();
    let client = ApiClient::with_trust(
        server.url().parse::<ServerUrl>().unwrap(),
        Duration::from_secs(10),
        &trust,
    )
    .with_identity(key.clone(), None);
    let me = client.register(&register_request(&key, "second")).unwrap();
    let PeerList::Changed { peers, etag, .. } = client.peers(&me.peer_id, None).unwrap() else {
        panic!("first fetch must be a full list");
    };
    assert_eq!(peers.len(), 1, "the first peer is listed: {peers:?}");
    assert_eq!(
        client.peers(&me.peer_id, etag.as_deref()).unwrap(),
        PeerList::NotModified
    );
}

#[test]
fn a_client_without_the_ca_is_refused_with_a_clear_error() {
    let pki = Pki::new("tls-pki");
    let server = TlsServer::start(&pki);
    let client_dir = TempDir::new("tls-client");
    let config = client_dir.path().join("client.json");

    // No --ca: the bundled public roots do not know the test CA.
    let output = dry_sync(&server, &config, None);
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    let text = stderr(&output);
    assert!(
        text.contains("TLS") && text.contains("--ca") && text.contains("certificate"),
        "the error should say TLS failed and how to fix it: {text}"
    );

    // Another CA's certificate is no better.
    let other = Pki::new("tls-other");
    let output = dry_sync(&server, &config, Some(&other.ca()));
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    assert!(stderr(&output).contains("TLS"), "{}", stderr(&output));

    // A --ca file without certificates is a usage error, caught before any request.
    let output = dry_sync(&server, &config, Some(&pki.key()));
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("no CERTIFICATE"),
        "{}",
        stderr(&output)
    );

    // The library error is Unreachable (retry later), with the TLS cause in it.
    let client = ApiClient::new(
        server.url().parse::<ServerUrl>().unwrap(),
        Duration::from_secs(10),
    );
    match client.register(&register_request(&PrivateKey::generate(), "no-ca")) {
        Err(ClientError::Unreachable(message)) => {
            assert!(message.contains("UnknownIssuer"), "{message}")
        }
        other => panic!("expected a TLS failure, got {other:?}"),
    }
}

#[test]
fn plain_http_to_the_tls_port_fails_cleanly_and_the_server_keeps_serving() {
    let pki = Pki::new("tls-pki");
    let server = TlsServer::start(&pki);

    // A plain-HTTP client gets a plain-HTTP 400 that says what is wrong.
    let client = ApiClient::new(
        format!("http://{}", server.addr).parse().unwrap(),
        Duration::from_secs(10),
    );
    match client.register(&register_request(&PrivateKey::generate(), "plain")) {
        Err(ClientError::Refused { status, message }) => {
            assert_eq!(status, 400);
            assert!(message.contains("HTTPS"), "{message}");
        }
        other => panic!("expected a 400 naming HTTPS, got {other:?}"),
    }

    // Garbage that is neither TLS nor HTTP: closed without an answer, promptly.
    let mut raw = TcpStream::connect(server.addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    raw.write_all(b"\x00\x01\x02\x03 not tls").unwrap();
    let mut rest = Vec::new();
    let _ = raw.read_to_end(&mut rest);
    assert!(rest.is_empty(), "no answer expected, got {rest:?}");

    // A broken TLS handshake (a ClientHello record header followed by junk).
    let mut raw = TcpStream::connect(server.addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    raw.write_all(b"\x16\x03\x01\x00\x05hello").unwrap();
    let _ = raw.read_to_end(&mut rest);

    // None of that disturbed the server.
    let trust = TlsTrust::from_ca_file(&pki.ca()).unwrap();
    let key = PrivateKey::generate();
    let client = ApiClient::with_trust(
        server.url().parse().unwrap(),
        Duration::from_secs(10),
        &trust,
    )
    .with_identity(key.clone(), None);
    client.register(&register_request(&key, "after")).unwrap();
}

#[test]
fn https_client_to_a_plain_http_server_fails_cleanly() {
    let server = TlsServer::start_with(None);
    let client = ApiClient::new(
        format!("https://{}", server.addr).parse().unwrap(),
        Duration::from_secs(10),
    );
    match client.register(&register_request(&PrivateKey::generate(), "mismatch")) {
        Err(ClientError::Misaddressed(message)) => assert!(message.contains("TLS"), "{message}"),
        other => panic!("expected a TLS failure, got {other:?}"),
    }
}

#[test]
fn bad_tls_flags_stop_the_server_with_a_usage_error() {
    let pki = Pki::new("tls-pki");
    let state = TempDir::new("tls-flags");
    let state_file = state.path().join("peers.json");
    let run = |extra: &[&Path], flags: &[&str]| {
        let mut cmd = Command::new(wgmesh_bin());
        cmd.args(["server", "--listen", "127.0.0.1:0", "--state"])
            .arg(&state_file);
        for (flag, path) in flags.iter().zip(extra) {
            cmd.arg(flag).arg(path);
        }
        cmd.stdin(Stdio::null()).output().unwrap()
    };
    // Only one of the pair.
    let out = run(&[&pki.cert()], &["--tls-cert"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("go together"), "{}", stderr(&out));
    // A missing file names the flag and the path.
    let missing = state.path().join("missing.pem");
    let out = run(&[&missing, &pki.key()], &["--tls-cert", "--tls-key"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--tls-cert") && stderr(&out).contains("missing.pem"),
        "{}",
        stderr(&out)
    );
    // A key that does not belong to the certificate.
    let other = Pki::new("tls-other");
    let out = run(&[&pki.cert(), &other.key()], &["--tls-cert", "--tls-key"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("not a usable pair"),
        "{}",
        stderr(&out)
    );
    // Nothing was written for a server that never started.
    assert!(!state_file.exists());
}
