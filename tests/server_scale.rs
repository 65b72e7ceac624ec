//! The server at scale, through the real binary: running out of file descriptors, and how
//! much heartbeats write to disk.

#![cfg(unix)]

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

/// Starts the server with RLIMIT_NOFILE at `limit` both soft and hard, so it cannot raise it.
fn start_with_nofile(state: &std::path::Path, extra: &[&str], limit: u64) -> ServerProcess {
    ServerProcess::try_start_with(state, extra, |command| {
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(move || {
                let rl = libc::rlimit {
                    rlim_cur: limit as libc::rlim_t,
                    rlim_max: limit as libc::rlim_t,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    })
    .unwrap_or_else(|(code, log)| panic!("server did not start ({code:?}):\n{}", log.join("\n")))
}

/// Sends `GET /healthz` on a new connection; returns the status line, or why there was none.
fn healthz(server: &ServerProcess) -> Result<String, String> {
    let mut stream = TcpStream::connect_timeout(&server.addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&answer);
    text.lines()
        .next()
        .map(str::to_owned)
        .ok_or_else(|| "closed without an answer".to_owned())
}

/// Today's failure: with `ulimit -n 128` and 150 idle connections, /healthz hung and the log
/// gained a WARN every 50 ms. Now the longest-idle connection makes room (or the client gets
/// a quick 503), and the shortage is logged once per interval.
#[test]
fn out_of_descriptors_answers_new_clients_quickly_and_logs_once() {
    let dir = TempDir::new("nofile");
    let server = start_with_nofile(
        &dir.path().join("peers.json"),
        &["--open", "--idle-timeout", "60"],
        128,
    );
    let idle: Vec<TcpStream> = (0..150)
        .map(|_| TcpStream::connect_timeout(&server.addr, Duration::from_secs(5)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    for round in 0..5 {
        let start = Instant::now();
        let status = healthz(&server)
            .unwrap_or_else(|e| panic!("round {round}: no answer ({e}):\n{}", server.log_text()));
        assert!(
            status.starts_with("HTTP/1.1 200") || status.starts_with("HTTP/1.1 503"),
            "round {round}: {status}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "round {round}: answered after {:?}",
            start.elapsed()
        );
    }
    let log = server.log_text();
    let warnings = log.matches("out of file descriptors").count();
    assert!(
        (1..=2).contains(&warnings),
        "{warnings} shortage warnings:\n{log}"
    );
    drop(idle);
}

/// (snapshot mtime, snapshot length, journal length)
fn disk_state(state: &std::path::Path) -> (std::time::SystemTime, u64, u64) {
    let snap = std::fs::metadata(state).unwrap();
    let journal = std::fs::metadata(state.with_extension("json.journal")).unwrap();
    (snap.modified().unwrap(), snap.len(), journal.len())
}

/// Heartbeats used to rewrite the whole snapshot every sweep (4.6 MB a minute at 10,000
/// peers). Now a heartbeat that changes nothing visible writes nothing; an endpoint change
/// costs one journal line at the next sweep; registrations stay durable across a kill -9,
/// and peers that were online stay online after a restart.
#[test]
fn heartbeats_write_nothing_to_disk_and_state_survives_a_crash() {
    let dir = TempDir::new("hbdisk");
    let state = dir.path().join("peers.json");
    let server = ServerProcess::start(&state, &["--open", "--sweep-interval", "1"]);
    let ids: Vec<String> = (0..20)
        .map(|i| {
            let answer = register(&server, &new_key(), &format!("hb{i}"));
            assert_eq!(answer.status, 200, "{}", answer.json);
            answer.json["peer_id"].as_str().unwrap().to_owned()
        })
        .collect();
    // Let a sweep pass, then heartbeat every peer for three more sweeps.
    std::thread::sleep(Duration::from_millis(1500));
    let before = disk_state(&state);
    let until = Instant::now() + Duration::from_millis(3500);
    let mut sent = 0;
    while Instant::now() < until {
        for id in &ids {
            let answer = post(&server, "/heartbeat", &format!("{{\"peer_id\":\"{id}\"}}"));
            assert_eq!(answer.status, 200, "{}", answer.json);
            sent += 1;
        }
    }
    assert!(sent >= 100, "only {sent} heartbeats");
    assert_eq!(
        disk_state(&state),
        before,
        "{sent} heartbeats changed the state files"
    );
    // An endpoint change is stored by the next sweep, as one journal line.
    let moved = "198.18.5.5:51820";
    let answer = post(
        &server,
        "/heartbeat",
        &format!("{{\"peer_id\":\"{}\",\"endpoint\":\"{moved}\"}}", ids[0]),
    );
    assert_eq!(answer.status, 200, "{}", answer.json);
    std::thread::sleep(Duration::from_millis(2500));
    let after = disk_state(&state);
    assert_eq!(
        (after.0, after.1),
        (before.0, before.1),
        "snapshot untouched"
    );
    assert!(
        after.2 > before.2 && after.2 - before.2 < 2048,
        "journal grew by {} bytes",
        after.2 - before.2
    );
    // A crash loses none of it, and nobody is marked offline by the restart.
    server.kill9();
    let server = ServerProcess::start(&state, &["--open"]);
    let health = get(&server, "/healthz", None);
    assert_eq!(
        (
            health.json["peers"].as_u64(),
            health.json["online"].as_u64()
        ),
        (Some(20), Some(20)),
        "{}",
        health.json
    );
    let list = get(&server, &format!("/peers?peer_id={}", ids[1]), None);
    let first = list.json["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == ids[0].as_str())
        .unwrap_or_else(|| panic!("{} missing: {}", ids[0], list.json));
    assert_eq!(first["endpoint"], moved);
}

/// `/metrics` shows how many connections wait idle (and parked), so an operator can see
/// 10,000 agents sitting in the readiness loop.
#[test]
fn metrics_count_idle_connections() {
    let dir = TempDir::new("connmetrics");
    let server = ServerProcess::start(&dir.path().join("peers.json"), &["--open"]);
    let idle: Vec<TcpStream> = (0..5)
        .map(|_| {
            let mut s = TcpStream::connect(server.addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            let mut answer = [0u8; 512];
            assert!(s.read(&mut answer).unwrap() > 0);
            s
        })
        .collect();
    let start = Instant::now();
    loop {
        let mut resp = agent().get(server.url("/metrics")).call().unwrap();
        let text = resp.body_mut().read_to_string().unwrap();
        // The five, and the metrics request's own connection once it is idle again.
        if text.contains("wgmesh_http_connections{state=\"idle\"} 5")
            || text.contains("wgmesh_http_connections{state=\"idle\"} 6")
        {
            assert!(
                text.contains("wgmesh_http_connections{state=\"parked\"} 0"),
                "{text}"
            );
            assert!(text.contains("wgmesh_http_workers "), "{text}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(idle);
}

/// HEAD is GET without the body on every GET resource (it used to be 405 on all but
/// /healthz), and never 405 where GET is allowed.
#[test]
fn head_works_on_every_get_resource() {
    let dir = TempDir::new("head");
    let server = ServerProcess::start(&dir.path().join("peers.json"), &["--open"]);
    for (path, status) in [
        ("/key", 200),
        ("/metrics", 200),
        ("/healthz", 200),
        ("/peers?peer_id=peer-0123456789abcdef", 401),
        ("/admin/peers", 401),
    ] {
        let mut stream = TcpStream::connect(server.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        write!(
            stream,
            "HEAD {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "HEAD {path}: {answer}"
        );
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(body.is_empty(), "HEAD {path} sent a body: {body:?}");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(length > 0, "HEAD {path} tells the GET body's length");
    }
}
