//! The server at scale, through the real binary: running out of file descriptors, and how
//! much heartbeats write to disk.

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
