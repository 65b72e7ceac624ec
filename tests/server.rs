//! Integration tests: the real `wgmesh server` binary on an ephemeral loopback port, driven
//! over HTTP as a client would.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn peer_ids(answer: &Answer) -> Vec<String> {
    answer.json["peers"]
        .as_array()
        .expect("peers array")
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect()
}

fn error_of(answer: &Answer) -> String {
    assert_eq!(answer.json["success"], false, "{}", answer.json);
    answer.json["error"]
        .as_str()
        .expect("error message")
        .to_owned()
}

#[test]
fn registration_is_idempotent_per_public_key() {
    let dir = TempDir::new("idem");
    let server = ServerProcess::start(&dir.path().join("peers.json"), &["--open"]);
    let key = new_key();
    let first = register(&server, &key, "laptop");
    assert_eq!(first.status, 200, "{}", first.json);
    assert_eq!(first.json["success"], true);
    assert_eq!(first.json["assigned_ip"], "10.100.0.1");
    assert_eq!(first.json["network_cidr"], "10.100.0.0/16");
    assert!(first.json["server_public_key"].as_str().unwrap().len() == 44);
    let other = register(&server, &new_key(), "desktop");
    assert_eq!(other.json["assigned_ip"], "10.100.0.2");
    let again = register(&server, &key, "laptop-renamed");
    assert_eq!(again.json["assigned_ip"], first.json["assigned_ip"]);
    assert_eq!(again.json["peer_id"], first.json["peer_id"]);
    // The re-registration updated the hostname others see.
    let list = get(
        &server,
        &format!("/peers?peer_id={}", other.json["peer_id"].as_str().unwrap()),
        None,
    );
    assert_eq!(list.json["peers"][0]["hostname"], "laptop-renamed");
}

#[test]
fn same_key_gets_same_ip_after_restart_and_after_kill9() {
    let dir = TempDir::new("restart");
    let state = dir.path().join("peers.json");
    let keys: Vec<String> = (0..5).map(|_| new_key()).collect();
    let server = ServerProcess::start(&state, &["--open"]);
    let before: Vec<Answer> = keys.iter().map(|k| register(&server, k, "host")).collect();
    assert!(server.stop().success());

    let server = ServerProcess::start(&state, &["--open"]);
    for (key, old) in keys.iter().zip(&before) {
        let now = register(&server, key, "host");
        assert_eq!(now.json["assigned_ip"], old.json["assigned_ip"]);
        assert_eq!(now.json["peer_id"], old.json["peer_id"]);
    }
    let late = register(&server, &new_key(), "late");
    assert_eq!(late.json["assigned_ip"], "10.100.0.6");
    server.kill9();

    let server = ServerProcess::start(&state, &["--open"]);
    let again = register(&server, &new_key(), "later");
    assert_eq!(
        again.json["assigned_ip"], "10.100.0.7",
        "10.100.0.6 survived kill -9"
    );
}

#[test]
fn silent_peers_go_offline_and_come_back_with_the_same_ip() {
    let dir = TempDir::new("offline");
    let server = ServerProcess::start(
        &dir.path().join("peers.json"),
        &[
            "--open",
            "--heartbeat-timeout",
            "1",
            "--sweep-interval",
            "1",
        ],
    );
    let a = register(&server, &new_key(), "a");
    let b_key = new_key();
    let b = register(&server, &b_key, "b");
    let a_id = a.json["peer_id"].as_str().unwrap().to_owned();
    let b_id = b.json["peer_id"].as_str().unwrap().to_owned();
    assert_eq!(
        peer_ids(&get(&server, &format!("/peers?peer_id={a_id}"), None)),
        vec![b_id.clone()]
    );

    // Keep a alive, let b fall silent past the timeout and a sweep.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let hb = post(
            &server,
            "/heartbeat",
            &format!("{{\"peer_id\":\"{a_id}\"}}"),
        );
        assert_eq!(hb.status, 200);
        assert_eq!(hb.json["success"], true);
        let list = get(&server, &format!("/peers?peer_id={a_id}"), None);
        if peer_ids(&list).is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "b never went offline");
        std::thread::sleep(Duration::from_millis(250));
    }
    server.log_once_it_says("timed out");
    // Offline peers stay registered: b can still ask for the list, and a heartbeat revives it.
    assert_eq!(
        get(&server, &format!("/peers?peer_id={b_id}"), None).status,
        200
    );
    let hb = post(
        &server,
        "/heartbeat",
        &format!("{{\"peer_id\":\"{b_id}\",\"endpoint\":\"198.18.0.9:51820\"}}"),
    );
    assert_eq!(hb.status, 200);
    let list = get(&server, &format!("/peers?peer_id={a_id}"), None);
    assert_eq!(peer_ids(&list), vec![b_id.clone()]);
    assert_eq!(list.json["peers"][0]["virtual_ip"], b.json["assigned_ip"]);
    assert_eq!(list.json["peers"][0]["endpoint"], "198.18.0.9:51820");
    assert_eq!(list.json["peers"][0]["online"], true);
    let again = register(&server, &b_key, "b");
    assert_eq!(again.json["assigned_ip"], b.json["assigned_ip"]);
}

#[test]
fn peers_list_has_the_design_shape_and_excludes_the_caller() {
    let dir = TempDir::new("shape");
    let server = ServerProcess::start(&dir.path().join("peers.json"), &["--open"]);
    let a = register(&server, &new_key(), "a");
    let exit_key = new_key();
    let exit = post(
        &server,
        "/register",
        &serde_json::json!({"public_key": exit_key, "hostname": "exit", "os": "linux",
            "endpoint": "198.18.0.7:51820", "exit_node": true, "allowed_ips": ["192.0.2.0/24"]})
        .to_string(),
    );
    assert_eq!(exit.status, 200, "{}", exit.json);
    let list = get(
        &server,
        &format!("/peers?peer_id={}", a.json["peer_id"].as_str().unwrap()),
        None,
    );
    assert_eq!(list.status, 200);
    let peers = list.json["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 1);
    let p = &peers[0];
    assert_eq!(p["id"], exit.json["peer_id"]);
    assert_eq!(p["public_key"], exit_key.as_str());
    assert_eq!(p["virtual_ip"], "10.100.0.2");
    assert_eq!(p["endpoint"], "198.18.0.7:51820");
    assert_eq!(p["hostname"], "exit");
    assert_eq!(p["os"], "linux");
    // Its /32, its /128 in the IPv6 mesh (derived from the server key and the /32), and the
    // default route it offers as an exit node; the subnet route it advertised waits for
    // approval (tests/subnet_routes.rs).
    let v6 = wgmesh::proto::mesh6::address(
        wgmesh::proto::mesh6::prefix(&server.public_key()),
        "10.100.0.2".parse().unwrap(),
    );
    assert_eq!(
        p["allowed_ips"],
        serde_json::json!(["10.100.0.2/32", format!("{v6}/128"), "0.0.0.0/0"])
    );
    assert_eq!(p["exit_node"], true);
    assert_eq!(p["online"], true);
    assert!(p["last_heartbeat"].as_str().unwrap().ends_with('Z'));
    // A peer registered without an endpoint is published at the address the server saw.
    let list = get(
        &server,
        &format!("/peers?peer_id={}", exit.json["peer_id"].as_str().unwrap()),
        None,
    );
    assert_eq!(list.json["peers"][0]["endpoint"], "127.0.0.1:51820");
}

#[test]
fn unchanged_list_answers_304_and_a_change_gives_a_new_etag() {
    let dir = TempDir::new("etag");
    let server = ServerProcess::start(&dir.path().join("peers.json"), &["--open"]);
    let a = register(&server, &new_key(), "a");
    register(&server, &new_key(), "b");
    let path = format!("/peers?peer_id={}", a.json["peer_id"].as_str().unwrap());
    let first = get(&server, &path, None);
    let etag = first.etag.clone().expect("ETag header");
    let second = get(&server, &path, Some(&etag));
    assert_eq!(second.status, 304);
    assert_eq!(second.json, serde_json::Value::Null, "304 has no body");
    // A heartbeat that changes nothing visible keeps the list (and its ETag) as it was.
    post(
        &server,
        "/heartbeat",
        &format!(
            "{{\"peer_id\":\"{}\"}}",
            a.json["peer_id"].as_str().unwrap()
        ),
    );
    assert_eq!(get(&server, &path, Some(&etag)).status, 304);
    register(&server, &new_key(), "c");
    let third = get(&server, &path, Some(&etag));
    assert_eq!(third.status, 200);
    assert_ne!(third.etag.as_deref(), Some(etag.as_str()));
    assert_eq!(third.json["peers"].as_array().unwrap().len(), 2);
}

#[test]
fn deregistration_frees_the_address_both_ways() {
    let dir = TempDir::new("dereg");
    let server = ServerProcess::start(&dir.path().join("peers.json"), &["--open"]);
    let a = register(&server, &new_key(), "a");
    let b = register(&server, &new_key(), "b");
    let a_id = a.json["peer_id"].as_str().unwrap();
    let gone = post(
        &server,
        "/deregister",
        &format!("{{\"peer_id\":\"{a_id}\"}}"),
    );
    assert_eq!(gone.status, 200, "{}", gone.json);
    assert_eq!(
        post(
            &server,
            "/heartbeat",
            &format!("{{\"peer_id\":\"{a_id}\"}}")
        )
        .status,
        404
    );
    let c = register(&server, &new_key(), "c");
    assert_eq!(
        c.json["assigned_ip"], "10.100.0.1",
        "a's address returned to the pool"
    );
    let b_id = b.json["peer_id"].as_str().unwrap();
    let resp = send(&server, "DELETE", &format!("/peers/{b_id}"), "");
    assert_eq!(resp.status, 200, "{}", resp.json);
    let again = send(&server, "DELETE", &format!("/peers/{b_id}"), "");
    assert_eq!(again.status, 404);
}

#[test]
fn every_error_has_its_status_and_a_json_body_naming_the_problem() {
    let dir = TempDir::new("errors");
    let server = ServerProcess::start(
        &dir.path().join("peers.json"),
        &["--open", "--network-cidr", "198.18.0.0/30"],
    );
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        (
            "POST",
            "/register",
            "{not json".into(),
            400,
            "invalid request body",
        ),
        ("POST", "/register", "".into(), 400, "body is empty"),
        (
            "POST",
            "/register",
            r#"{"public_key":"AAAA","hostname":"x"}"#.into(),
            400,
            "field `public_key`",
        ),
        (
            "POST",
            "/register",
            format!(
                r#"{{"public_key":"{}","hostname":"a;rm -rf /"}}"#,
                new_key()
            ),
            400,
            "field `hostname`",
        ),
        (
            "POST",
            "/register",
            format!(
                r#"{{"public_key":"{}","hostname":"x","endpoint":"1.2.3.4"}}"#,
                new_key()
            ),
            400,
            "field `endpoint`",
        ),
        (
            "POST",
            "/register",
            format!(
                r#"{{"public_key":"{}","hostname":"x","allowed_ips":["10.0.0.0/33"]}}"#,
                new_key()
            ),
            400,
            "field `allowed_ips",
        ),
        (
            "POST",
            "/register",
            format!(
                r#"{{"public_key":"{}","hostname":"x","allowed_ips":["0.0.0.0/0"]}}"#,
                new_key()
            ),
            400,
            "set exit_node",
        ),
        (
            "POST",
            "/register",
            format!(
                r#"{{"public_key":"{}","hostname":"x","exit_node":"yes"}}"#,
                new_key()
            ),
            400,
            "field `exit_node`",
        ),
        (
            "POST",
            "/register",
            format!(
                r#"{{"public_key":"{}","hostname":"x","surprise":1}}"#,
                new_key()
            ),
            400,
            "unknown field `surprise`",
        ),
        (
            "POST",
            "/heartbeat",
            r#"{"peer_id":"peer-0123456789abcdef"}"#.into(),
            404,
            "unknown peer",
        ),
        (
            "POST",
            "/heartbeat",
            r#"{"peer_id":"'; DROP TABLE"}"#.into(),
            400,
            "field `peer_id`",
        ),
        (
            "GET",
            "/peers?peer_id=peer-0123456789abcdef",
            String::new(),
            404,
            "unknown peer",
        ),
        ("GET", "/peers", String::new(), 400, "peer_id"),
        ("GET", "/nowhere", String::new(), 404, "no such endpoint"),
        ("GET", "/register", String::new(), 405, "use POST"),
        ("DELETE", "/heartbeat", String::new(), 405, "use POST"),
        ("POST", "/peers", "{}".into(), 405, "use GET"),
        (
            "POST",
            "/register",
            format!(
                r#"{{"public_key":"{}","hostname":"{}"}}"#,
                new_key(),
                "x".repeat(70_000)
            ),
            413,
            "exceeds the limit",
        ),
    ];
    for (method, path, body, status, needle) in cases {
        let answer = send(&server, method, path, &body);
        let text = answer.json.to_string();
        assert_eq!(answer.status, status, "{method} {path} {body:.60}: {text}");
        let json = answer.json;
        assert_eq!(json["success"], false, "{text}");
        assert!(
            json["error"].as_str().unwrap().contains(needle),
            "{method} {path}: {text} lacks {needle:?}"
        );
    }
    // The /30 holds two peers; the third registration is refused with 503.
    assert_eq!(register(&server, &new_key(), "one").status, 200);
    assert_eq!(register(&server, &new_key(), "two").status, 200);
    let full = register(&server, &new_key(), "three");
    assert_eq!(full.status, 503);
    assert!(error_of(&full).contains("exhausted"));
}

#[test]
fn changing_the_network_of_a_state_file_is_refused() {
    let dir = TempDir::new("cidr");
    let state = dir.path().join("peers.json");
    let server = ServerProcess::start(&state, &["--open"]);
    register(&server, &new_key(), "a");
    assert!(server.stop().success());
    let before = std::fs::read(&state).unwrap();
    let (code, log) =
        match ServerProcess::try_start(&state, &["--open", "--network-cidr", "10.200.0.0/16"]) {
            Ok(_) => panic!("server started on a mismatched network"),
            Err(failure) => failure,
        };
    assert_eq!(code, Some(5));
    let log = log.join("\n");
    assert!(log.contains("--network-cidr 10.100.0.0/16"), "{log}");
    assert_eq!(std::fs::read(&state).unwrap(), before);
}

#[test]
fn corrupt_state_stops_the_server_and_is_left_untouched() {
    let dir = TempDir::new("corrupt");
    let state = dir.path().join("peers.json");
    std::fs::write(&state, b"{\"version\":1,\"peers\":[").unwrap();
    let (code, log) = match ServerProcess::try_start(&state, &[]) {
        Ok(_) => panic!("server started on a corrupt file"),
        Err(failure) => failure,
    };
    assert_eq!(code, Some(5));
    assert!(log.join("\n").contains("unreadable"), "{log:?}");
    assert_eq!(
        std::fs::read(&state).unwrap(),
        b"{\"version\":1,\"peers\":["
    );
}

#[test]
fn kill9_during_a_registration_burst_loses_no_acknowledged_registration() {
    let dir = TempDir::new("burst");
    let state = dir.path().join("peers.json");
    let server = ServerProcess::start(&state, &["--open", "--register-limit", "0"]);
    let server_key = server.public_key();
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let url = server.url("/register");
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (acked, stop, url) = (acked.clone(), stop.clone(), url.clone());
            std::thread::spawn(move || {
                let agent = agent();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let key = new_key();
                    let body =
                        serde_json::json!({"public_key": key, "hostname": "burst"}).to_string();
                    let headers = wgmesh::proto::auth::sign_request(
                        &private_of(&key).unwrap(),
                        &server_key,
                        "POST",
                        "/register",
                        body.as_bytes(),
                        std::time::SystemTime::now(),
                    );
                    let mut req = agent.post(&url);
                    for (name, value) in &headers {
                        req = req.header(*name, value.as_str());
                    }
                    let Ok(mut resp) = req.send(&body) else {
                        break;
                    };
                    if resp.status().as_u16() != 200 {
                        break;
                    }
                    let Ok(json) = resp.body_mut().read_json::<serde_json::Value>() else {
                        break;
                    };
                    let ip = json["assigned_ip"].as_str().unwrap().to_owned();
                    acked.lock().unwrap().push((key, ip));
                }
            })
        })
        .collect();
    while acked.lock().unwrap().len() < 150 {
        std::thread::sleep(Duration::from_millis(5));
    }
    server.kill9();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let server = ServerProcess::start(&state, &["--open", "--register-limit", "0"]);
    for (key, ip) in &acked {
        let again = register(&server, key, "burst");
        assert_eq!(
            again.json["assigned_ip"].as_str(),
            Some(ip.as_str()),
            "acknowledged {key} lost its {ip}"
        );
    }
    let mut ips: Vec<&String> = acked.iter().map(|(_, ip)| ip).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), acked.len(), "no address was handed out twice");
}

fn raw_get(stream: &mut TcpStream, path: &str) -> String {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream
            .read(&mut chunk)
            .expect("answer before the read timeout");
        assert!(n > 0, "connection closed without an answer");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(head_end) = text.find("\r\n\r\n") {
            let len: usize = text[..head_end]
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            if buf.len() >= head_end + 4 + len {
                return text.into_owned();
            }
        }
    }
}

#[test]
fn two_hundred_keep_alive_connections_at_once_all_get_answers() {
    let dir = TempDir::new("burst200");
    let server = ServerProcess::start(
        &dir.path().join("peers.json"),
        &["--open", "--threads", "2"],
    );
    let addr = server.addr;
    let barrier = Arc::new(std::sync::Barrier::new(200));
    let threads: Vec<_> = (0..200)
        .map(|_| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(addr).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(20)))
                    .unwrap();
                barrier.wait();
                // Three requests on the same keep-alive connection, all answered.
                (0..3)
                    .map(|_| raw_get(&mut stream, "/healthz"))
                    .filter(|a| a.starts_with("HTTP/1.1 200") && a.contains("keep-alive"))
                    .count()
            })
        })
        .collect();
    let answered: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(answered, 600);
}

#[test]
fn idle_connections_are_closed_after_the_timeout() {
    let dir = TempDir::new("idle");
    let server = ServerProcess::start(
        &dir.path().join("peers.json"),
        &["--open", "--idle-timeout", "1"],
    );
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert!(raw_get(&mut stream, "/healthz").starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    let mut rest = Vec::new();
    let n = stream
        .read_to_end(&mut rest)
        .expect("server closes, not the read timeout");
    assert_eq!(n, 0);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed after {:?}",
        started.elapsed()
    );
}

#[test]
fn healthz_and_metrics_report_the_registry() {
    let dir = TempDir::new("metrics");
    let server = ServerProcess::start(&dir.path().join("peers.json"), &["--open"]);
    let a = register(&server, &new_key(), "a");
    post(
        &server,
        "/heartbeat",
        &format!(
            "{{\"peer_id\":\"{}\"}}",
            a.json["peer_id"].as_str().unwrap()
        ),
    );
    post(
        &server,
        "/heartbeat",
        r#"{"peer_id":"peer-0123456789abcdef"}"#,
    );
    let health = get(&server, "/healthz", None);
    assert_eq!(health.status, 200);
    assert_eq!(health.json["peers"], 1);
    let mut resp = agent().get(server.url("/metrics")).call().unwrap();
    let text = resp.body_mut().read_to_string().unwrap();
    for line in [
        "wgmesh_peers_total 1",
        "wgmesh_peers_online 1",
        "wgmesh_registrations_total{result=\"new\"} 1",
        "wgmesh_heartbeats_total{result=\"ok\"} 1",
        "wgmesh_heartbeats_total{result=\"failed\"} 1",
        "wgmesh_http_requests_total{endpoint=\"register\",code=\"2xx\"} 1",
        "wgmesh_http_request_duration_seconds_count{endpoint=\"heartbeat\"} 2",
    ] {
        assert!(text.contains(line), "metrics lack {line:?}:\n{text}");
    }
}

#[test]
fn head_answers_headers_without_a_body_and_keeps_the_connection_usable() {
    let dir = TempDir::new("head");
    let server = ServerProcess::start(&dir.path().join("peers.json"), &["--open"]);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // HEAD then GET on one keep-alive connection: if HEAD sent a body, the GET's answer
    // would be read out of step.
    write!(
        stream,
        "HEAD /healthz HTTP/1.1\r\nHost: test\r\n\r\nGET /healthz HTTP/1.1\r\nHost: test\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&buf).contains("\"status\":\"ok\"") {
        let n = stream.read(&mut chunk).expect("both answers arrive");
        assert!(n > 0, "connection closed early");
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(length > 0, "HEAD tells the length of the GET body");
    assert!(
        rest.starts_with("HTTP/1.1 200"),
        "no body after HEAD: {rest:?}"
    );
}

#[test]
fn every_api_refusal_carries_a_stable_machine_readable_code() {
    let dir = TempDir::new("codes");
    let server = ServerProcess::start(
        &dir.path().join("peers.json"),
        &["--open", "--network-cidr", "198.18.0.0/30"],
    );
    let unknown = r#"{"peer_id":"peer-0123456789abcdef"}"#;
    let cases = [
        (
            "POST",
            "/heartbeat",
            unknown.to_owned(),
            404,
            "unknown_peer",
        ),
        (
            "GET",
            "/peers?peer_id=peer-0123456789abcdef",
            String::new(),
            404,
            "unknown_peer",
        ),
        (
            "POST",
            "/register",
            "{not json".to_owned(),
            400,
            "bad_request",
        ),
        ("GET", "/nowhere", String::new(), 404, "not_found"),
        ("GET", "/register", String::new(), 405, "method_not_allowed"),
    ];
    for (method, path, body, status, code) in cases {
        let answer = send(&server, method, path, &body);
        assert_eq!(answer.status, status, "{method} {path}: {}", answer.json);
        assert_eq!(
            answer.json["code"], code,
            "{method} {path}: {}",
            answer.json
        );
        assert!(answer.json["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let denied = send_as(
        &server,
        None,
        "GET",
        "/admin/tokens",
        "",
        &[("Authorization", "Bearer wrong")],
    );
    assert_eq!(
        (denied.status, denied.json["code"].as_str()),
        (401, Some("unauthorized"))
    );
    // The /30 holds two peers; the third registration finds the pool exhausted.
    assert_eq!(register(&server, &new_key(), "one").status, 200);
    assert_eq!(register(&server, &new_key(), "two").status, 200);
    let full = register(&server, &new_key(), "three");
    assert_eq!(
        (full.status, full.json["code"].as_str()),
        (503, Some("unavailable"))
    );
    // Refusals of the HTTP layer itself, before any handler runs, carry a code too.
    for (request, status, code) in [
        (
            "POST /register HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n",
            413,
            "payload_too_large",
        ),
        (
            "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            400,
            "bad_request",
        ),
        // RFC 9112 3.2: a Host that is a list, or no valid authority, is 400.
        (
            "GET /healthz HTTP/1.1\r\nHost: a, b\r\n\r\n",
            400,
            "bad_request",
        ),
        (
            "GET /healthz HTTP/1.1\r\nHost: a b/c\r\n\r\n",
            400,
            "bad_request",
        ),
        // RFC 9112 6.1: a transfer coding the server does not know is 501; chunked is 411.
        (
            "POST /register HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
            501,
            "not_implemented",
        ),
        (
            "POST /register HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            411,
            "length_required",
        ),
        // Another major version on the request line is 505.
        (
            "GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n",
            505,
            "http_version_not_supported",
        ),
    ] {
        let mut tcp = TcpStream::connect(server.addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        tcp.write_all(request.as_bytes()).unwrap();
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{answer}"
        );
        let body = &answer[answer.find("\r\n\r\n").expect("a head") + 4..];
        let json: serde_json::Value = serde_json::from_str(body).expect("a JSON error body");
        assert_eq!(json["code"], code, "{answer}");
        assert_eq!(json["success"], false, "{answer}");
    }
}

#[test]
fn a_wrong_method_is_answered_405_with_the_allowed_one() {
    use std::io::{Read, Write};
    let dir = TempDir::new("allow");
    let server = ServerProcess::start(&dir.path().join("peers.json"), &["--open"]);
    let secret = server.admin_secret();
    for (method, path, allow) in [
        ("GET", "/register", "POST"),
        ("GET", "/heartbeat", "POST"),
        ("GET", "/deregister", "POST"),
        ("POST", "/peers", "GET"),
        ("POST", "/key", "GET"),
        ("POST", "/healthz", "GET"),
        ("POST", "/metrics", "GET"),
        ("GET", "/peers/peer-0123456789abcdef", "DELETE"),
        ("GET", "/admin/tokens/tok-0123456789ab", "DELETE"),
        ("POST", "/admin/peers/peer-0123456789abcdef", "DELETE"),
    ] {
        let mut tcp = std::net::TcpStream::connect(server.addr).unwrap();
        write!(
            tcp,
            "{method} {path} HTTP/1.1\r\nHost: wgmesh\r\nAuthorization: Bearer {secret}\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).unwrap();
        let head = answer.split("\r\n\r\n").next().unwrap();
        assert!(head.starts_with("HTTP/1.1 405"), "{method} {path}: {head}");
        assert!(
            head.lines()
                .any(|l| l.eq_ignore_ascii_case(&format!("allow: {allow}"))),
            "{method} {path} lacks Allow: {allow}: {head}"
        );
    }
}

/// What one raw connection got back: the status line, or what went wrong instead.
fn answer_of(stream: &mut TcpStream) -> Result<String, String> {
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) if answer.is_empty() => Err("closed without an answer (empty FIN)".into()),
        Ok(_) => Ok(String::from_utf8_lossy(&answer)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned()),
        Err(e) if !answer.is_empty() => Err(format!("{e} after {} bytes", answer.len())),
        Err(e) => Err(format!("{e} before any answer")),
    }
}

/// Out of file descriptors (`prlimit --nofile=64` on the running server) with 100 clients
/// each sending a partial request: every one gets an answer (200, or 503 with Retry-After),
/// none a reset or an empty close, so no connection whose first request is in flight is
/// closed as idle. Then, with the descriptors still used up by idle keep-alive connections,
/// SIGTERM stops the server within a few seconds without needing a new connection.
#[test]
fn out_of_descriptors_every_request_is_answered_and_sigterm_still_stops() {
    let dir = TempDir::new("nofile");
    let server = ServerProcess::start(&dir.path().join("peers.json"), &["--open"]);
    let pid = server.child.id().to_string();
    let limited = std::process::Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=64:64"])
        .status()
        .expect("prlimit (util-linux)");
    assert!(limited.success());
    let partial = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n";
    let mut clients: Vec<TcpStream> = (0..100)
        .map(|_| {
            let mut tcp = TcpStream::connect(server.addr).unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            tcp.write_all(partial.as_bytes()).unwrap();
            tcp
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    for tcp in &mut clients {
        // A client already answered 503 may see its rest refused: that is fine.
        let _ = tcp.write_all(b"\r\n");
    }
    let mut statuses: std::collections::BTreeMap<String, usize> = Default::default();
    let mut failures = Vec::new();
    for (i, tcp) in clients.iter_mut().enumerate() {
        match answer_of(tcp) {
            Ok(line) => *statuses.entry(line).or_default() += 1,
            Err(e) => failures.push(format!("client {i}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{failures:#?}\nanswered: {statuses:?}\n{}",
        server.log_text()
    );
    for line in statuses.keys() {
        assert!(
            line.starts_with("HTTP/1.1 200") || line.starts_with("HTTP/1.1 503"),
            "{statuses:?}"
        );
    }
    // Use the descriptors up with idle keep-alive connections, then SIGTERM.
    let idle: Vec<TcpStream> = (0..80)
        .filter_map(|_| {
            let mut tcp = TcpStream::connect(server.addr).ok()?;
            tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .ok()?;
            let mut head = [0u8; 512];
            let _ = tcp.read(&mut head);
            Some(tcp)
        })
        .collect();
    assert!(!idle.is_empty());
    let mut server = server;
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let asked = Instant::now();
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "still running 5 s after SIGTERM:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}\n{}", server.log_text());
    drop(idle);
}
