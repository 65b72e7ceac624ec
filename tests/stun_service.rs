//! End-to-end tests of the STUN responder on loopback: our own client, junk, rate limiting,
//! shutdown, and Debian's real `stun` client (package `stun-client`) as an independent
//! implementation. All traffic stays on 127.0.0.0/8 and ::1.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wgmesh::agent::observe::netcheck::{self, NetcheckError};
use wgmesh::proto::stun::{self, BindingResponse, TransactionId};
use wgmesh::server::stun_service::{RateLimit, StunCounters, StunHandle, StunService, StunStats};

/// Generous: the test machine has two cores shared with other builds.
const TIMEOUT: Duration = Duration::from_secs(3);

fn spawn(addr: &str, threads: usize, limits: RateLimit) -> StunHandle {
    let socket = UdpSocket::bind(addr).expect("bind the STUN service socket");
    StunService::spawn(socket, threads, limits).expect("start the STUN service")
}

/// Polls the counters until `done` holds (the service counts just after receiving, so a
/// test must not read them the instant it has sent), failing after a few seconds.
fn wait_for(stats: &Arc<StunStats>, what: &str, done: impl Fn(&StunCounters) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = stats.snapshot();
        if done(&now) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Each probe makes one request, or up to `netcheck::TRIES` if the machine stalls long enough
/// for a retransmit: count answers within that range rather than flake under load.
fn assert_answers(counted: &StunCounters, probes: u64) {
    let most = probes * u64::from(netcheck::TRIES);
    assert!(
        (probes..=most).contains(&counted.answered),
        "expected {probes} answers (at most {most} with retransmits): {counted:?}"
    );
}

#[test]
fn probe_reports_our_own_loopback_address_v4_and_v6() {
    for (server_addr, client_addr) in [("127.0.0.1:0", "127.0.0.1:0"), ("[::1]:0", "[::1]:0")] {
        let service = spawn(server_addr, 2, RateLimit::default());
        let client = UdpSocket::bind(client_addr).unwrap();
        let probe = netcheck::probe_from(&client, service.local_addr(), TIMEOUT).unwrap();
        assert_eq!(probe.mapped, client.local_addr().unwrap());
        assert!(probe.rtt < TIMEOUT);
        // The fresh-socket form picks its own port; the address must still be ours.
        let probe = netcheck::probe(service.local_addr(), TIMEOUT, None).unwrap();
        assert!(probe.mapped.ip().is_loopback(), "{probe:?}");
        let stats = service.stats();
        service.shutdown();
        assert_answers(&stats.snapshot(), 2);
    }
}

#[test]
fn dual_stack_socket_reports_ipv4_clients_as_ipv4() {
    // [::]:0 accepts IPv4 as ::ffff:127.0.0.1 on Linux by default (bindv6only=0).
    let service = spawn("[::]:0", 1, RateLimit::default());
    let server: SocketAddr = format!("127.0.0.1:{}", service.local_addr().port())
        .parse()
        .unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    let probe = netcheck::probe_from(&client, server, TIMEOUT).unwrap();
    assert_eq!(probe.mapped, client.local_addr().unwrap());
}

#[test]
fn netcheck_asks_two_ports_from_one_socket() {
    let a = spawn("127.0.0.1:0", 1, RateLimit::default());
    let b = spawn("127.0.0.1:0", 1, RateLimit::default());
    let report = netcheck::netcheck(a.local_addr(), Some(b.local_addr()), TIMEOUT, None).unwrap();
    assert!(report.udp, "{report:?}");
    assert_eq!(report.mapping_varies_by_destination, Some(false));
    assert_eq!(report.mapped, report.secondary_mapped);
    assert_eq!(report.mapped.unwrap().port(), report.local.unwrap().port());
    assert!(report.errors.is_empty(), "{report:?}");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["udp"], true);
    assert!(json["rtt_ms"].as_f64().unwrap() > 0.0);
    assert_answers(&a.stats().snapshot(), 1);
    assert_answers(&b.stats().snapshot(), 1);
}

#[test]
fn netcheck_without_any_server_says_udp_false_and_why() {
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let report = netcheck::netcheck(
        silent.local_addr().unwrap(),
        None,
        Duration::from_millis(200),
        None,
    )
    .unwrap();
    assert!(!report.udp);
    assert_eq!(report.mapped, None);
    assert_eq!(report.mapping_varies_by_destination, None);
    assert_eq!(report.errors.len(), 1);
    assert!(report.errors[0].contains("no STUN answer from 127.0.0.1:"));
}

#[test]
fn junk_is_counted_and_dropped_and_the_service_keeps_answering() {
    let service = spawn("127.0.0.1:0", 2, RateLimit::default());
    let server = service.local_addr();
    let stats = service.stats();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();

    let request = stun::binding_request(&TransactionId::random());
    let mut truncated_attr = request.to_vec();
    truncated_attr[3] = 8;
    truncated_attr.extend_from_slice(&[0x80, 0x22, 0x00, 0x40, b'x', b'y', b'z', b'w']);
    let mut length_lies = request.to_vec();
    length_lies[3] = 8;
    let mut top_bits = request;
    top_bits[0] = 0xC0;
    let mut bad_fingerprint = request.to_vec();
    bad_fingerprint[3] = 8;
    bad_fingerprint.extend_from_slice(&[0x80, 0x28, 0x00, 0x04, 1, 2, 3, 4]);
    let junk: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x00],
        request[..19].to_vec(),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        truncated_attr,
        length_lies,
        top_bits.to_vec(),
        bad_fingerprint,
        vec![0u8; 1600],   // over MAX_DATAGRAM
        vec![0u8; 9000],   // jumbo
        vec![0x55; 20000], // far over it
    ];
    for datagram in &junk {
        client.send_to(datagram, server).unwrap();
    }
    // A well-formed Binding Indication (a keepalive) is not malformed, just unanswered.
    let mut indication = stun::binding_request(&TransactionId::random());
    indication[1] = 0x11;
    client.send_to(&indication, server).unwrap();

    wait_for(&stats, "junk to be counted", |c| {
        c.malformed == junk.len() as u64 && c.ignored == 1
    });
    // Nothing was sent back for any of it.
    client
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 1500];
    assert!(client.recv_from(&mut buf).is_err(), "junk got an answer");

    let probe = netcheck::probe_from(&client, server, TIMEOUT).unwrap();
    assert_eq!(probe.mapped, client.local_addr().unwrap());
    let after = stats.snapshot();
    assert_answers(&after, 1);
    assert_eq!(after.rate_limited, 0, "junk must not use up the rate limit");

    let mut metrics = String::new();
    stats.render_prometheus(&mut metrics);
    assert!(metrics.contains(&format!(
        "wgmesh_stun_dropped_total{{reason=\"malformed\"}} {}\n",
        junk.len()
    )));
    assert!(metrics.contains(&format!(
        "wgmesh_stun_responses_total{{result=\"success\"}} {}\n",
        after.answered
    )));
}

#[test]
fn rate_limit_drops_and_counts_per_source() {
    let limits = RateLimit {
        per_second: 1,
        burst: 5,
        max_sources: 64,
    };
    let service = spawn("127.0.0.1:0", 2, limits);
    let server = service.local_addr();
    let stats = service.stats();
    let noisy = UdpSocket::bind("127.0.0.1:0").unwrap();
    const SENT: u64 = 40;
    let start = Instant::now();
    for _ in 0..SENT {
        noisy
            .send_to(&stun::binding_request(&TransactionId::random()), server)
            .unwrap();
    }
    wait_for(&stats, "every request to be judged", |c| {
        c.answered + c.rate_limited == SENT
    });
    let elapsed = start.elapsed().as_secs();
    let counted = stats.snapshot();
    // 5 for the burst, plus one per whole second the sending took on a slow machine.
    assert!(
        counted.answered >= 5 && counted.answered <= 5 + elapsed + 1,
        "{counted:?} after {elapsed}s"
    );
    assert_eq!(counted.rate_limited, SENT - counted.answered);

    // The answers that were sent really arrive, and no more.
    noisy
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 1500];
    let mut received = 0;
    while noisy.recv_from(&mut buf).is_ok() {
        received += 1;
    }
    assert_eq!(received, counted.answered);

    // Another source IP (127.0.0.2 is loopback too) has its own bucket.
    let quiet = UdpSocket::bind("127.0.0.2:0").unwrap();
    let probe = netcheck::probe_from(&quiet, server, TIMEOUT).unwrap();
    assert_eq!(probe.mapped, quiet.local_addr().unwrap());

    let mut metrics = String::new();
    stats.render_prometheus(&mut metrics);
    assert!(metrics.contains(&format!(
        "wgmesh_stun_dropped_total{{reason=\"rate_limited\"}} {}\n",
        counted.rate_limited
    )));
}

#[test]
fn full_rate_table_evicts_and_counts() {
    let limits = RateLimit {
        per_second: 1000,
        burst: 10,
        max_sources: 4,
    };
    let service = spawn("127.0.0.1:0", 1, limits);
    let server = service.local_addr();
    for last in 10..=19u8 {
        let client = UdpSocket::bind(format!("127.0.0.{last}:0")).unwrap();
        netcheck::probe_from(&client, server, TIMEOUT).unwrap();
    }
    let counted = service.stats().snapshot();
    assert_answers(&counted, 10);
    assert_eq!(counted.rate_limit_evictions, 6, "{counted:?}");
}

#[test]
fn change_request_gets_420_and_the_next_plain_request_still_works() {
    let service = spawn("127.0.0.1:0", 1, RateLimit::default());
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(TIMEOUT)).unwrap();
    let id = TransactionId::random();
    let mut req = stun::binding_request(&id).to_vec();
    req[3] = 8;
    req.extend_from_slice(&[0x00, 0x03, 0x00, 0x04, 0, 0, 0, 0x06]);
    client.send_to(&req, service.local_addr()).unwrap();
    let mut buf = [0u8; 1500];
    let (n, _) = client.recv_from(&mut buf).unwrap();
    assert_eq!(
        stun::parse_binding_response(&buf[..n]).unwrap(),
        BindingResponse::Error {
            transaction_id: id,
            code: 420
        }
    );
    netcheck::probe_from(&client, service.local_addr(), TIMEOUT).unwrap();
    let counted = service.stats().snapshot();
    assert_eq!(counted.refused, 1);
    assert_answers(&counted, 1);
}

#[test]
fn many_clients_on_many_threads_all_get_answers() {
    let service = spawn("127.0.0.1:0", 3, RateLimit::unlimited());
    let server = service.local_addr();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
                for _ in 0..50 {
                    let p = netcheck::probe_from(&sock, server, TIMEOUT).unwrap();
                    assert_eq!(p.mapped, sock.local_addr().unwrap());
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    assert_answers(&service.stats().snapshot(), 200);
}

#[test]
fn shutdown_stops_promptly_and_the_port_goes_quiet() {
    let service = spawn("127.0.0.1:0", 4, RateLimit::default());
    let server = service.local_addr();
    netcheck::probe(server, TIMEOUT, None).unwrap();
    let start = Instant::now();
    service.shutdown();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "shutdown took {:?}",
        start.elapsed()
    );
    match netcheck::probe(server, Duration::from_millis(200), None) {
        Err(NetcheckError::NoAnswer { tries: 3, .. }) => {}
        other => panic!("expected no answer after shutdown, got {other:?}"),
    }
}

/// Runs Debian's `stun` client (bounded in time) and returns (exit code, stdout + stderr).
fn run_debian_stun(args: &[&str]) -> (Option<i32>, String) {
    let stun = Path::new("/usr/bin/stun");
    assert!(
        stun.exists(),
        "/usr/bin/stun is missing: install Debian's `stun-client` package (apt-get install stun-client)"
    );
    let out_path = std::env::temp_dir().join(format!(
        "wgmesh-stun-client-{}-{}.txt",
        std::process::id(),
        TransactionId::random().0[0]
    ));
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = Command::new(stun)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("run /usr/bin/stun");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("/usr/bin/stun {args:?} did not finish in 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = std::fs::read_to_string(&out_path).unwrap();
    let _ = std::fs::remove_file(&out_path);
    println!("$ stun {}\n{text}", args.join(" "));
    (status.code(), text)
}

/// The first "Opened port N" line: the client's own source port.
fn opened_port(output: &str) -> u16 {
    output
        .lines()
        .find_map(|l| l.strip_prefix("Opened port "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no 'Opened port' line in stun output:\n{output}"))
}

#[test]
fn debian_stun_client_basic_binding_test_sees_its_own_address() {
    let service = spawn("127.0.0.1:0", 2, RateLimit::default());
    // Test 1 is RFC 3489's plain Binding Request. `-p` would set the *source* port; the
    // server's port goes after the host name.
    let server = service.local_addr().to_string();
    let (code, output) = run_debian_stun(&[&server, "1", "-v"]);
    let port = opened_port(&output);
    assert!(
        output.contains(&format!("mappedAddr=127.0.0.1:{port}")),
        "stun did not report 127.0.0.1:{port}:\n{output}"
    );
    assert!(output.contains("ok=1"), "{output}");
    assert_eq!(code, Some(0), "{output}");
    wait_for(
        &service.stats(),
        "the classic request to be answered",
        |c| c.answered >= 1 && c.malformed == 0,
    );
}

#[test]
fn debian_stun_client_nat_type_run_gets_mapped_address_and_420s() {
    let service = spawn("127.0.0.1:0", 2, RateLimit::default());
    let server = service.local_addr().to_string();
    let (_code, output) = run_debian_stun(&[&server, "-v"]);
    let port = opened_port(&output);
    // Test I (plain request) is answered with its mapped address...
    assert!(
        output.contains(&format!("MappedAddress = 127.0.0.1:{port}")),
        "{output}"
    );
    assert!(output.contains("test I = 1"), "{output}");
    // ...and tests II/III (CHANGE-REQUEST for another IP/port) get 420, which this old client
    // counts as "received" (it ignores the message class), hence "Open" on loopback.
    assert!(
        output.contains("ErrorCode = 4 20 Unknown Attribute"),
        "{output}"
    );
    assert!(output.contains("Primary: Open"), "{output}");
    let counted = service.stats().snapshot();
    assert!(counted.answered >= 1 && counted.refused >= 2, "{counted:?}");
    assert_eq!(counted.malformed, 0, "{counted:?}");
}
