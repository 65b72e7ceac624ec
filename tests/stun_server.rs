//! The STUN service as the real `wgmesh server` binary runs it: answers with the address it
//! sees, drops and counts garbage, and reports both in /metrics.

mod common;

use common::*;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

fn stun_addrs(server: &ServerProcess) -> Vec<SocketAddr> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let addrs: Vec<SocketAddr> = server
            .log_text()
            .lines()
            .filter_map(|l| l.split("STUN service answering on udp ").nth(1))
            .map(|a| a.trim().parse().unwrap())
            .collect();
        if !addrs.is_empty() {
            return addrs;
        }
        assert!(
            Instant::now() < deadline,
            "no STUN address in the log:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn server_answers_stun_with_the_observed_address_and_counts_garbage() {
    let dir = TempDir::new("stun");
    let server = ServerProcess::start(&dir.path().join("peers.json"), &[]);
    let addrs = stun_addrs(&server);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let probe =
        wgmesh::agent::observe::netcheck::probe_from(&socket, addrs[0], Duration::from_secs(2))
            .unwrap();
    assert_eq!(probe.mapped, socket.local_addr().unwrap());

    for garbage in [&b"hello"[..], &[0u8; 20][..], &[0xffu8; 600][..]] {
        socket.send_to(garbage, addrs[0]).unwrap();
    }
    // Still answering after garbage.
    let again =
        wgmesh::agent::observe::netcheck::probe_from(&socket, addrs[0], Duration::from_secs(2))
            .unwrap();
    assert_eq!(again.mapped, socket.local_addr().unwrap());

    let mut resp = agent().get(server.url("/metrics")).call().unwrap();
    let text = resp.body_mut().read_to_string().unwrap();
    assert!(
        text.contains("wgmesh_stun_responses_total{result=\"success\"} 2"),
        "{text}"
    );
    // "hello" and 600 bytes of 0xff are not STUN; 20 zero bytes parse as an old-style message
    // of type 0, which is not a Binding Request.
    assert!(
        text.contains("wgmesh_stun_dropped_total{reason=\"malformed\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("wgmesh_stun_dropped_total{reason=\"not_binding_request\"} 1"),
        "{text}"
    );
}

/// The STUN service and the relay listen on IPv6 too, on the same port: beside
/// `--udp-listen 127.0.0.1:P` the server answers on `[::1]:P` (and beside `0.0.0.0:P` on
/// `[::]:P`). A STUN request over ::1 gets the IPv6 address back; a WireGuard-shaped datagram
/// over ::1 reaches the relay (which drops it: ::1 is no member's address).
#[test]
fn stun_and_the_relay_answer_over_ipv6_on_the_same_port() {
    let dir = TempDir::new("stun6");
    let server = ServerProcess::start(&dir.path().join("peers.json"), &[]);
    let port = stun_addrs(&server)[0].port();
    let v6: SocketAddr = format!("[::1]:{port}").parse().unwrap();
    let socket = UdpSocket::bind("[::1]:0").expect("IPv6 loopback is needed for this test");
    let probe =
        wgmesh::agent::observe::netcheck::probe_from(&socket, v6, Duration::from_secs(2)).unwrap();
    assert_eq!(probe.mapped, socket.local_addr().unwrap());
    // A handshake initiation shape, byte by byte: type 1, three zero bytes, 144 more.
    let mut initiation = vec![1u8, 0, 0, 0];
    initiation.extend_from_slice(&[0x42; 144]);
    socket.send_to(&initiation, v6).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut resp = agent().get(server.url("/metrics")).call().unwrap();
        let text = resp.body_mut().read_to_string().unwrap();
        if text.contains("wgmesh_relay_dropped_total{reason=\"stranger\"} 1") {
            break;
        }
        assert!(Instant::now() < deadline, "the relay never saw it:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(server
        .log_text()
        .contains(&format!("STUN and relay also on udp [::1]:{port}")));
}

/// MAC1 of a handshake message for `recipient`, computed here from the WireGuard paper
/// (`MAC(HASH("mac1----" || Spub), msg up to mac1)`, BLAKE2s), not by wgmesh's own code.
fn mac1(recipient: &str, message: &[u8]) -> [u8; 16] {
    use blake2::digest::{consts::U16, Digest, KeyInit, Mac};
    use blake2::{Blake2s256, Blake2sMac};
    use wgmesh::keys::PublicKey;
    let public: PublicKey = recipient.parse().unwrap();
    let key = Blake2s256::new()
        .chain_update(b"mac1----")
        .chain_update(public.as_bytes())
        .finalize();
    let mut mac = <Blake2sMac<U16> as KeyInit>::new_from_slice(&key).unwrap();
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// A handshake message built byte by byte: `kind` 1 (initiation, 148 bytes, MAC1 at 116)
/// or 2 (response, 92 bytes, MAC1 at 60), with its indexes and a MAC1 for `recipient`.
fn handshake(kind: u8, sender: u32, receiver: u32, recipient: &str) -> Vec<u8> {
    let (len, at) = if kind == 1 { (148, 116) } else { (92, 60) };
    let mut m = vec![0x33u8; len];
    m[..4].copy_from_slice(&[kind, 0, 0, 0]);
    m[4..8].copy_from_slice(&sender.to_le_bytes());
    if kind == 2 {
        m[8..12].copy_from_slice(&receiver.to_le_bytes());
    }
    let mac = mac1(recipient, &m[..at]);
    m[at..at + 16].copy_from_slice(&mac);
    m[at + 16..].fill(0);
    m
}

/// The real server's relay, over raw datagrams: once a and b completed a handshake through
/// it, a cookie reply (type 3) naming a's session index reaches a from b, and not from c,
/// another member at the same address. Before, any member's cookie reply was forwarded.
#[test]
fn the_relay_forwards_a_cookie_reply_only_from_the_other_end_of_its_session() {
    let dir = TempDir::new("relay-cookie");
    let server = ServerProcess::start(&dir.path().join("peers.json"), &["--open"]);
    let relay = stun_addrs(&server)[0];
    let keys: Vec<String> = (0..3).map(|_| new_key()).collect();
    for (i, key) in keys.iter().enumerate() {
        let answer = register(&server, key, &format!("cookie{i}"));
        assert_eq!(answer.status, 200, "{}", answer.json);
    }
    let socket = || {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        s
    };
    let (a, b, c) = (socket(), socket(), socket());
    let relay_metrics = || {
        let mut resp = agent().get(server.url("/metrics")).call().unwrap();
        let text = resp.body_mut().read_to_string().unwrap();
        text.lines()
            .filter(|l| l.starts_with("wgmesh_relay") && !l.ends_with(" 0"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    // b and c talk to the relay first (transport-shaped junk on no session: dropped as
    // "no_route" once the relay knows them as members, which takes up to a second or two,
    // and it earns them the credit an unproven address needs to be sent a handshake: at
    // least the initiation's 148 bytes).
    let mut junk = vec![4u8, 0, 0, 0];
    junk.extend_from_slice(&[0x11; 156]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for s in [&b, &c] {
            s.send_to(&junk, relay).unwrap();
        }
        std::thread::sleep(Duration::from_millis(200));
        let seen = relay_metrics();
        let routed: u64 = seen
            .lines()
            .find_map(|l| l.strip_prefix("wgmesh_relay_dropped_total{reason=\"no_route\"} "))
            .map_or(0, |n| n.parse().unwrap());
        if routed >= 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the relay never took the members in:\n{seen}"
        );
    }
    let mut buf = [0u8; 2048];
    let recv = |s: &UdpSocket, buf: &mut [u8]| s.recv_from(buf).map(|(n, _)| n).ok();
    a.send_to(&handshake(1, 100, 0, &keys[1]), relay).unwrap();
    let got = recv(&b, &mut buf);
    assert_eq!(
        got,
        Some(148),
        "b gets a's initiation:\n{}",
        relay_metrics()
    );
    b.send_to(&handshake(2, 200, 100, &keys[0]), relay).unwrap();
    assert_eq!(recv(&a, &mut buf), Some(92), "a gets b's response");
    let mut cookie = vec![3u8, 0, 0, 0];
    cookie.extend_from_slice(&100u32.to_le_bytes());
    cookie.extend_from_slice(&[0x5a; 56]);
    c.send_to(&cookie, relay).unwrap();
    assert_eq!(recv(&a, &mut buf), None, "c's cookie reply reached a");
    b.send_to(&cookie, relay).unwrap();
    assert_eq!(recv(&a, &mut buf), Some(64), "b's cookie reply reaches a");
}
