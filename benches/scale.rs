//! `just bench` (second part): the connection layer at 10,000 agents, on loopback.
//!
//! 1. The real `wgmesh server` binary with 10,000 registered peers and one keep-alive
//!    connection per agent: after each agent's first heartbeat, its connection waits idle in
//!    the readiness loop. Figures: the server's threads and RSS with 10,000 idle
//!    connections, then 30 s of signed heartbeats paced as 10,000 agents on a 30 s timer
//!    (333/s): p50/p99 latency and the server's CPU (from /proc, so the load generator's own
//!    work is not counted).
//! 2. The connection layer alone (in a child process running this bench's parking handler)
//!    with 10,000 long-polls parked on one notifier: its threads and RSS, and how long one
//!    notify takes to answer them all.
//!
//! Every loop is bounded in count and time; only loopback addresses are used. The bench raises
//! its own open-file limit (to 65,536 as root, else soft to hard) and needs 11,000; the
//! servers run as child processes, each with its own limit.

#[cfg(target_os = "linux")]
#[path = "support/peer_record.rs"]
mod peer_record;

#[cfg(target_os = "linux")]
mod linux {
    use std::io::{self, Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;
    use std::time::{Duration, Instant, SystemTime};
    use wgmesh::proto::auth::RequestSigner;
    use wgmesh::server::http::{self, Handler, Notifier, Park, Reply, Request, Response, Wake};
    use wgmesh::types::PeerId;

    const AGENTS: usize = 10_000;
    const HEARTBEAT_SECS: u64 = 30;
    const CLIENT_THREADS: usize = 4;

    fn raise_nofile() -> u64 {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit on a struct we own.
        unsafe {
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
            // Root may raise the hard limit too; anyone may raise the soft one to it.
            let wanted = libc::rlimit {
                rlim_cur: 65_536,
                rlim_max: limit.rlim_max.max(65_536),
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
                limit.rlim_cur = limit.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            }
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        }
        #[allow(clippy::unnecessary_cast)]
        let soft = limit.rlim_cur as u64;
        soft
    }

    /// (threads, RSS in MiB) of a process, from /proc.
    fn threads_and_rss(pid: u32) -> (u64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("Threads:"), field("VmRSS:") as f64 / 1024.0)
    }

    /// CPU seconds (user + system) a process used so far.
    fn cpu_secs(pid: u32) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after_comm.split_whitespace().collect();
        // Fields 14 and 15 of stat (utime, stime) are 11 and 12 after the command name.
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        ticks as f64 / hz
    }

    /// Sends one request and reads its answer (head plus Content-Length body); returns the status.
    fn exchange(stream: &mut TcpStream, request: &[u8], buf: &mut Vec<u8>) -> io::Result<u16> {
        stream.write_all(request)?;
        buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]);
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .map_or(0, |v| v.trim().parse().unwrap_or(0));
                if buf.len() >= end + 4 + length {
                    return Ok(head[9..12].parse().unwrap_or(0));
                }
            }
        }
    }

    struct Agent {
        stream: TcpStream,
        signer: RequestSigner,
        id: PeerId,
    }

    impl Agent {
        fn heartbeat_request(&self) -> Vec<u8> {
            let body = format!("{{\"peer_id\":\"{}\"}}", self.id);
            let mut request = format!(
            "POST /heartbeat HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
            for (name, value) in
                self.signer
                    .sign("POST", "/heartbeat", body.as_bytes(), SystemTime::now())
            {
                request.push_str(&format!("{name}: {value}\r\n"));
            }
            request.push_str("\r\n");
            request.push_str(&body);
            request.into_bytes()
        }
    }

    fn start_server(dir: &Path) -> (Child, SocketAddr) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wgmesh"))
            .args([
                "server",
                "--listen",
                "127.0.0.1:0",
                "--udp-listen",
                "off",
                "--open",
                // Agents with a long-poll outstanding keep their connection busy; here the
                // heartbeat connection must outlive the 30 s timer plus the settling time.
                "--idle-timeout",
                "120",
                "--state",
            ])
            .arg(dir.join("peers.json"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start wgmesh server");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_owned());
                } else if line.contains("ERROR") || line.contains("out of file descriptors") {
                    eprintln!("server: {line}");
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("server says where it listens")
            .parse()
            .unwrap();
        (child, addr)
    }

    /// (snapshot mtime, total bytes of snapshot and journal)
    fn state_files(dir: &Path) -> (SystemTime, u64) {
        let snapshot = std::fs::metadata(dir.join("peers.json")).unwrap();
        let journal = std::fs::metadata(dir.join("peers.json.journal")).map_or(0, |m| m.len());
        (snapshot.modified().unwrap(), snapshot.len() + journal)
    }

    fn percentile(sorted: &[u64], p: f64) -> String {
        let Some(v) =
            sorted.get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        else {
            return "-".into();
        };
        if *v >= 1000 {
            format!("{:.2} ms", *v as f64 / 1000.0)
        } else {
            format!("{v} us")
        }
    }

    fn idle_agents(dir: &Path) {
        let server_key = wgmesh::server::load_or_create_key(&dir.join("server.key"))
            .unwrap()
            .public_key();
        let privates = super::peer_record::write_registry(&dir.join("peers.json"), AGENTS as u32);
        let (mut child, addr) = start_server(dir);
        let pid = child.id();
        let (threads_before, rss_before) = threads_and_rss(pid);

        // Every agent connects and sends its first heartbeat; the connection then stays open.
        let started = Instant::now();
        let mut agents: Vec<Agent> = privates
            .iter()
            .map(|p| {
                let stream = TcpStream::connect(addr).unwrap();
                stream.set_nodelay(true).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(30)))
                    .unwrap();
                Agent {
                    stream,
                    signer: RequestSigner::new(p, &server_key),
                    id: PeerId::for_key(&p.public_key()),
                }
            })
            .collect();
        let mut buf = Vec::new();
        let mut bad = 0;
        for agent in &mut agents {
            let request = agent.heartbeat_request();
            if exchange(&mut agent.stream, &request, &mut buf).unwrap() != 200 {
                bad += 1;
            }
        }
        println!(
            "10,000 agents connected and sent a first heartbeat in {:.1} s ({bad} not 200)",
            started.elapsed().as_secs_f64()
        );
        // Workers idle out after 5 s; measure at rest.
        std::thread::sleep(Duration::from_secs(7));
        let (threads, rss) = threads_and_rss(pid);
        println!(
        "server at rest, 10,000 idle keep-alive connections: {threads} threads (were {threads_before} with none), RSS {rss:.1} MiB (was {rss_before:.1})"
    );

        // 30 s of heartbeats as 10,000 agents on a 30 s timer: each agent sends one, evenly
        // spread, from a few client threads over their own connections.
        let disk_before = state_files(dir);
        let cpu_before = cpu_secs(pid);
        let started = Instant::now();
        let per_thread = AGENTS / CLIENT_THREADS;
        let mut chunks = Vec::new();
        while !agents.is_empty() {
            let rest = agents.split_off(agents.len().saturating_sub(per_thread));
            chunks.push(rest);
        }
        let workers: Vec<_> = chunks
            .into_iter()
            .map(|mut chunk| {
                std::thread::spawn(move || {
                    let gap =
                        Duration::from_secs(HEARTBEAT_SECS).as_secs_f64() / chunk.len() as f64;
                    let begin = Instant::now();
                    let (mut latencies, mut bad, mut buf) = (Vec::new(), 0u64, Vec::new());
                    for (j, agent) in chunk.iter_mut().enumerate() {
                        let due = begin + Duration::from_secs_f64(gap * j as f64);
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        let request = agent.heartbeat_request();
                        let t = Instant::now();
                        match exchange(&mut agent.stream, &request, &mut buf) {
                            Ok(200) => latencies.push(t.elapsed().as_micros() as u64),
                            _ => bad += 1,
                        }
                    }
                    (latencies, bad, chunk)
                })
            })
            .collect();
        let (mut latencies, mut bad) = (Vec::new(), 0);
        let mut agents = Vec::new();
        for w in workers {
            let (l, b, chunk) = w.join().unwrap();
            latencies.extend(l);
            bad += b;
            agents.extend(chunk);
        }
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = cpu_secs(pid) - cpu_before;
        latencies.sort_unstable();
        let (threads, rss) = threads_and_rss(pid);
        println!(
        "heartbeats paced as 10,000 agents / {HEARTBEAT_SECS} s ({:.0}/s for {elapsed:.0} s): p50 {}  p99 {}  max {}  failed {bad}; server CPU {:.1}% of one core; {threads} threads, RSS {rss:.1} MiB",
        latencies.len() as f64 / elapsed,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
        100.0 * cpu / elapsed,
    );
        let disk_after = state_files(dir);
        println!(
            "state files during those heartbeats (6 sweeps): {} bytes written, snapshot rewritten: {}",
            disk_after.1.saturating_sub(disk_before.1),
            if disk_after.0 == disk_before.0 { "no" } else { "yes" }
        );
        drop(agents);
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Parks every request on one notifier until notified.
    struct ParkAll(Notifier);

    impl Handler for ParkAll {
        fn handle(&self, _: &Request) -> Response {
            Response::json(200, b"{}".to_vec())
        }
        fn handle_or_park(&self, _: &Request) -> Reply {
            let seen = self.0.version();
            Reply::Park(Park::new(
                &self.0,
                seen,
                Instant::now() + Duration::from_secs(120),
                |wake| {
                    let body = if wake == Wake::Changed {
                        "{\"changed\":true}"
                    } else {
                        "{}"
                    };
                    Response::json(200, body.as_bytes().to_vec()).into()
                },
            ))
        }
    }

    /// The parking server's side of [`parked_long_polls`], run in a child process (each
    /// process has its own open-file limit): serves until stdin closes; "stats" prints the
    /// parked and worker counts, "notify" wakes every parked request.
    fn parked_server_child() {
        use std::io::BufRead;
        raise_nofile();
        let notifier = Notifier::new();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = http::HttpServer::start(
            listener,
            http::Limits::default(),
            Arc::new(ParkAll(notifier.clone())),
        )
        .unwrap();
        println!("{}", server.local_addr());
        for line in io::stdin().lock().lines().map_while(Result::ok) {
            match line.trim() {
                "stats" => {
                    let stats = server.stats();
                    println!("{} {}", stats.parked, stats.workers);
                }
                "notify" => notifier.notify(),
                _ => {}
            }
        }
    }

    fn parked_long_polls() {
        use std::io::BufRead;
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env("WGMESH_SCALE_PARKED_SERVER", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut input = child.stdin.take().unwrap();
        let mut output = io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        output.read_line(&mut line).unwrap();
        let addr: SocketAddr = line.trim().parse().unwrap();
        let (threads_before, rss_before) = threads_and_rss(pid);
        // "notify" is sent through here too, so one closure owns the child's stdin.
        let mut ask = |command: &str| -> (usize, usize) {
            writeln!(input, "{command}").unwrap();
            if command != "stats" {
                return (0, 0);
            }
            let mut line = String::new();
            output.read_line(&mut line).unwrap();
            let mut parts = line.split_whitespace().map(|v| v.parse().unwrap());
            (parts.next().unwrap(), parts.next().unwrap())
        };
        let mut clients: Vec<TcpStream> = (0..AGENTS)
            .map(|_| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                s.write_all(b"GET /peers?wait=60 HTTP/1.1\r\nHost: bench\r\n\r\n")
                    .unwrap();
                s
            })
            .collect();
        let settle = Instant::now();
        while ask("stats").0 < AGENTS && settle.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(50));
        }
        // Workers idle out after 5 s; measure at rest.
        std::thread::sleep(Duration::from_secs(7));
        let (parked, workers) = ask("stats");
        let (threads, rss) = threads_and_rss(pid);
        println!(
        "connection layer with {parked} long-polls parked: {threads} threads ({threads_before} before any connection, {workers} workers alive), RSS {rss:.1} MiB ({rss_before:.1} before)"
    );
        let started = Instant::now();
        ask("notify");
        let mut buf = Vec::new();
        let mut answered = 0;
        let mut chunk = [0u8; 1024];
        let marker = b"{\"changed\":true}";
        for client in &mut clients {
            buf.clear();
            while !buf.windows(marker.len()).any(|w| w == marker) {
                match client.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            if buf.windows(marker.len()).any(|w| w == marker) {
                answered += 1;
            }
        }
        let elapsed = started.elapsed();
        let (_, workers) = ask("stats");
        println!(
            "one notify answered {answered} parked long-polls in {:.0} ms (until the last answer was read), with {workers} workers",
            elapsed.as_secs_f64() * 1000.0
        );
        drop(clients);
        drop(input);
        let _ = child.wait();
    }

    pub fn main() {
        if std::env::var_os("WGMESH_SCALE_PARKED_SERVER").is_some() {
            return parked_server_child();
        }
        let nofile = raise_nofile();
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        println!("wgmesh scale bench: {cores} cores, loopback, open-file limit {nofile}");
        if nofile < AGENTS as u64 + 1_000 {
            println!(
                "skipped: the open-file limit ({nofile}) is below 11,000; raise it (ulimit -Hn)"
            );
            return;
        }
        let dir = std::env::temp_dir().join(format!("wgmesh-scale-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        idle_agents(&dir);
        parked_long_polls();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn main() {
    #[cfg(target_os = "linux")]
    linux::main();
    #[cfg(not(target_os = "linux"))]
    println!("wgmesh scale bench: skipped (reads /proc; Linux only)");
}
