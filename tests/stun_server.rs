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
        wgmesh::agent::netcheck::probe_from(&socket, addrs[0], Duration::from_secs(2)).unwrap();
    assert_eq!(probe.mapped, socket.local_addr().unwrap());

    for garbage in [&b"hello"[..], &[0u8; 20][..], &[0xffu8; 600][..]] {
        socket.send_to(garbage, addrs[0]).unwrap();
    }
    // Still answering after garbage.
    let again =
        wgmesh::agent::netcheck::probe_from(&socket, addrs[0], Duration::from_secs(2)).unwrap();
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
    let probe = wgmesh::agent::netcheck::probe_from(&socket, v6, Duration::from_secs(2)).unwrap();
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
