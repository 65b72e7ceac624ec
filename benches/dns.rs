//! `cargo bench --bench dns`: queries per second the agent's `.mesh` resolver answers, against
//! `dnsmasq` serving the same names from a hosts file, measured the same way, as a ratio.
//!
//! Both listen on 127.0.0.1 only; the same client (CLIENTS threads, each one UDP socket
//! doing send-then-receive, queries cycling over the names, A and AAAA alternately, one in
//! ten for a missing name) drives each for at most `MAX_TIME` or `QUERIES` answers.
//! dnsmasq must be installed (`dnsmasq-base`); the bench fails, never skips, without it.

use simple_dns::{Name, Packet, PacketFlag, Question, CLASS, TYPE};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wgmesh::agent::dns::resolver::{Addresses, Resolver, Table};

const NAMES: usize = 200;
const CLIENTS: usize = 2;
const QUERIES: u64 = 400_000;
const MAX_TIME: Duration = Duration::from_secs(4);
const WARMUP: Duration = Duration::from_millis(300);

fn name(i: usize) -> String {
    format!("host-{i}")
}

fn addresses(i: usize) -> Addresses {
    Addresses {
        v4: std::net::Ipv4Addr::new(10, 100, (i / 250) as u8, (i % 250 + 1) as u8),
        v6: Some(format!("fd00::a64:{:x}", i + 1).parse().unwrap()),
    }
}

/// Every query a client sends, prebuilt: (bytes, expect an answer record).
fn queries() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for i in 0..NAMES {
        for (k, qtype) in [TYPE::A, TYPE::AAAA].into_iter().enumerate() {
            let target = if (i * 2 + k) % 10 == 9 {
                format!("missing-{i}.mesh")
            } else {
                format!("{}.mesh", name(i))
            };
            let mut q = Packet::new_query((i * 2 + k) as u16);
            q.set_flags(PacketFlag::RECURSION_DESIRED);
            q.questions.push(Question::new(
                Name::new(&target).unwrap(),
                qtype.into(),
                CLASS::IN.into(),
                false,
            ));
            out.push(q.build_bytes_vec().unwrap());
        }
    }
    out
}

/// Answers per second from `server`, and how many queries went unanswered within 1 s.
fn measure(server: SocketAddr) -> (f64, u64) {
    let queries = Arc::new(queries());
    let answered = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicU64::new(0));
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|t| {
            let (queries, answered, lost, counting, stop) = (
                queries.clone(),
                answered.clone(),
                lost.clone(),
                counting.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
                socket.connect(server).unwrap();
                socket
                    .set_read_timeout(Some(Duration::from_secs(1)))
                    .unwrap();
                let mut buf = [0u8; 1500];
                let mut i = t * 7;
                while !stop.load(Ordering::Relaxed) {
                    let q = &queries[i % queries.len()];
                    i += 1;
                    socket.send(q).unwrap();
                    match socket.recv(&mut buf) {
                        Ok(n) if n >= 12 && buf[..2] == q[..2] => {
                            if counting.load(Ordering::Relaxed) {
                                answered.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        _ => {
                            lost.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(WARMUP);
    counting.store(true, Ordering::Relaxed);
    let start = Instant::now();
    while start.elapsed() < MAX_TIME && answered.load(Ordering::Relaxed) < QUERIES {
        std::thread::sleep(Duration::from_millis(20));
    }
    counting.store(false, Ordering::Relaxed);
    let elapsed = start.elapsed();
    let count = answered.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    (
        count as f64 / elapsed.as_secs_f64(),
        lost.load(Ordering::Relaxed),
    )
}

/// A free UDP port on loopback (bound and released: dnsmasq takes it right after).
fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// dnsmasq on 127.0.0.1:`port` answering from `hosts` alone, authoritative for `mesh`.
struct Dnsmasq(Child);

impl Dnsmasq {
    fn start(port: u16, hosts: &std::path::Path) -> Dnsmasq {
        let child = Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--pid-file=",
                "--local=/mesh/",
                "--cache-size=1000",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--addn-hosts={}", hosts.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("dnsmasq is needed for this bench: apt-get install dnsmasq-base");
        Dnsmasq(child)
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `server` answers a query (dnsmasq starts asynchronously).
fn wait_ready(server: SocketAddr) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let q = &queries()[0];
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        socket.send_to(q, server).unwrap();
        if socket.recv_from(&mut buf).is_ok() {
            return;
        }
    }
    panic!("{server} never answered");
}

fn main() {
    let mut table = Table::default();
    let mut hosts = String::new();
    for i in 0..NAMES {
        let a = addresses(i);
        table.insert(&name(i).parse().unwrap(), a);
        hosts.push_str(&format!("{}\t{}.mesh\n", a.v4, name(i)));
        hosts.push_str(&format!("{}\t{}.mesh\n", a.v6.unwrap(), name(i)));
    }
    let mut resolver = Resolver::new();
    resolver.set_table(table);
    let failed = resolver.serve_on(&["127.0.0.1:0".parse().unwrap()]);
    assert!(failed.is_empty(), "{failed:?}");
    let ours = resolver.local_addrs()[0];
    wait_ready(ours);
    let (ours_qps, ours_lost) = measure(ours);
    resolver.shutdown();

    let dir = std::env::temp_dir().join(format!("wgmesh-dns-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hosts_file = dir.join("hosts");
    std::fs::write(&hosts_file, hosts).unwrap();
    let port = free_port();
    let dnsmasq_qps;
    let dnsmasq_lost;
    {
        let _dnsmasq = Dnsmasq::start(port, &hosts_file);
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        wait_ready(addr);
        (dnsmasq_qps, dnsmasq_lost) = measure(addr);
    }
    let _ = std::fs::remove_dir_all(&dir);

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "mesh DNS, {NAMES} names, {CLIENTS} client threads send-then-receive on loopback, {cores} cores:"
    );
    println!("  wgmesh resolver: {ours_qps:>9.0} queries/s ({ours_lost} unanswered)");
    println!("  dnsmasq (hosts): {dnsmasq_qps:>9.0} queries/s ({dnsmasq_lost} unanswered)");
    println!(
        "  ratio wgmesh/dnsmasq: {:.2}",
        ours_qps / dnsmasq_qps.max(1.0)
    );
}
