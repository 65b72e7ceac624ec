//! Replicas on PostgreSQL (issue 11): several `wgmesh server` processes sharing one throwaway
//! cluster (tests/common/postgres.rs) on loopback. Each test starts its own cluster.

mod common;

use common::postgres::PgCluster;
use common::*;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant, SystemTime};
use wgmesh::proto::auth;

/// A replica of the cluster at `url` with its own state folder (for its admin.secret copy).
fn replica(dir: &TempDir, name: &str, url: &str, extra: &[&str]) -> ServerProcess {
    let state = dir.path().join(name).join("peers.json");
    std::fs::create_dir_all(state.parent().unwrap()).unwrap();
    let mut args = vec!["--store", url, "--register-limit", "0"];
    args.extend_from_slice(extra);
    ServerProcess::start(&state, &args)
}

/// A throwaway cluster and two open replicas on it, `a` and `b`, with their folders in `dir`.
struct Pair {
    pg: PgCluster,
    dir: TempDir,
    a: ServerProcess,
    b: ServerProcess,
}

/// [`Pair`] for the test named `test` (its folder's name).
fn open_pair(test: &str) -> Pair {
    let pg = PgCluster::start();
    let dir = TempDir::new(test);
    let a = replica(&dir, "a", &pg.url(), &["--open"]);
    let b = replica(&dir, "b", &pg.url(), &["--open"]);
    Pair { pg, dir, a, b }
}

fn register_body(key: &str, hostname: &str, token: Option<&str>) -> String {
    let mut body = serde_json::json!({"public_key": key, "hostname": hostname, "os": "linux",
        "listen_port": 51820});
    if let Some(t) = token {
        body["token"] = t.into();
    }
    body.to_string()
}

fn try_register(server: &ServerProcess, key: &str, hostname: &str) -> Result<Answer, String> {
    let body = register_body(key, hostname, None);
    let signer = private_of(key).unwrap();
    try_send_as(server, Some(&signer), "POST", "/register", &body, &[])
}

/// Every peer the replica knows: id -> address.
fn admin_peers(server: &ServerProcess) -> HashMap<String, String> {
    let answer = admin(server, "GET", "/admin/peers", None);
    assert_eq!(answer.status, 200, "{}", answer.json);
    answer.json["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_owned(),
                p["virtual_ip"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn wait_until(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_throwaway_cluster_takes_a_password_login_and_stops_and_starts() {
    let mut pg = PgCluster::start();
    let mut client = ::postgres::Client::connect(&pg.url(), ::postgres::NoTls)
        .unwrap_or_else(|e| panic!("connect: {e}\n{}", pg.log()));
    let row = client.query_one("SELECT 1 + 1", &[]).unwrap();
    assert_eq!(row.get::<_, i32>(0), 2);
    drop(client);
    pg.stop();
    assert!(::postgres::Client::connect(&pg.url(), ::postgres::NoTls).is_err());
    pg.start_again();
    let mut client = ::postgres::Client::connect(&pg.url(), ::postgres::NoTls).unwrap();
    client.batch_execute("SELECT 1").unwrap();
}

#[test]
fn replicas_share_one_identity_and_see_each_others_changes_within_a_second() {
    let Pair {
        pg: _pg,
        dir: _dir,
        a,
        b,
    } = open_pair("replicas-identity");
    assert_eq!(
        a.public_key(),
        b.public_key(),
        "one server key for the cluster"
    );
    assert_eq!(a.admin_secret(), b.admin_secret(), "one admin secret");

    let (x, y) = (new_key(), new_key());
    let rx = register(&a, &x, "x-host");
    assert_eq!(rx.status, 200, "{}", rx.json);
    let ry = register(&b, &y, "y-host");
    assert_eq!(ry.status, 200, "{}", ry.json);
    assert_ne!(rx.json["assigned_ip"], ry.json["assigned_ip"]);
    let y_id = ry.json["peer_id"].as_str().unwrap().to_owned();
    let x_id = rx.json["peer_id"].as_str().unwrap().to_owned();
    // A registration through A shows in B's peer list within a second (NOTIFY), and a
    // heartbeat for a peer registered on the other replica is accepted.
    let started = Instant::now();
    wait_until("B lists the peer registered through A", 1, || {
        let list = get(&b, &format!("/peers?peer_id={y_id}"), None);
        list.json["peers"]
            .as_array()
            .is_some_and(|p| p.iter().any(|e| e["id"] == x_id.as_str()))
    });
    eprintln!(
        "change through A visible on B after {:?}",
        started.elapsed()
    );
    let hb = post(
        &b,
        "/heartbeat",
        &serde_json::json!({"peer_id": x_id}).to_string(),
    );
    assert_eq!(hb.status, 200, "{}", hb.json);
    // Re-registering the same key on the other replica keeps its address.
    let again = register(&b, &x, "x-host");
    assert_eq!(again.json["assigned_ip"], rx.json["assigned_ip"]);
    // Deregistration through B removes it everywhere.
    let gone = post(
        &b,
        "/deregister",
        &serde_json::json!({"peer_id": x_id}).to_string(),
    );
    assert_eq!(gone.status, 200, "{}", gone.json);
    wait_until("A drops the peer removed through B", 1, || {
        !admin_peers(&a).contains_key(&x_id)
    });
}

#[test]
fn a_thousand_registrations_over_two_replicas_get_distinct_addresses_and_survive_kill9() {
    const TOTAL: usize = 1000;
    const THREADS: usize = 8;
    let pg = PgCluster::start();
    let dir = TempDir::new("replicas-burst");
    for victim in 0..2 {
        // Round one kills replica A mid-burst, round two replica B (fresh database each time
        // would need a new cluster; the second round simply registers 1,000 more).
        let a = replica(&dir, &format!("a{victim}"), &pg.url(), &["--open"]);
        let b = replica(&dir, &format!("b{victim}"), &pg.url(), &["--open"]);
        let replicas = Arc::new(Mutex::new(vec![Some(a), Some(b)]));
        let keys: Vec<String> = (0..TOTAL).map(|_| new_key()).collect();
        let acked: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut threads = Vec::new();
        for t in 0..THREADS {
            let (keys, acked, done, replicas) =
                (keys.clone(), acked.clone(), done.clone(), replicas.clone());
            threads.push(std::thread::spawn(move || {
                for (i, key) in keys.iter().enumerate().skip(t).step_by(THREADS) {
                    // Spread over both replicas; fall over to the other on no answer.
                    let mut attempt = 0;
                    loop {
                        let which = (i + attempt) % 2;
                        let server = {
                            let guard = replicas.lock().unwrap();
                            guard[which].as_ref().map(|s| (s.addr, s.public_key()))
                        };
                        attempt += 1;
                        assert!(attempt < 50, "registration {i} never succeeded");
                        let Some(_) = server else { continue };
                        let answer = {
                            let guard = replicas.lock().unwrap();
                            let Some(s) = guard[which].as_ref() else {
                                continue;
                            };
                            // Send without holding the lock for long: clone what is needed.
                            let body = register_body(key, &format!("h{i}"), None);
                            let signer = private_of(key).unwrap();
                            let addr = s.addr;
                            drop(guard);
                            send_to(addr, server.unwrap().1, &signer, &body)
                        };
                        match answer {
                            Ok((200, json)) => {
                                let id = json["peer_id"].as_str().unwrap().to_owned();
                                let ip = json["assigned_ip"].as_str().unwrap().to_owned();
                                acked.lock().unwrap().insert(id, ip);
                                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                break;
                            }
                            Ok((status, json)) if status >= 500 => {
                                eprintln!("retrying after {status}: {json}");
                            }
                            Ok((status, json)) => panic!("registration refused {status}: {json}"),
                            Err(_) => {}
                        }
                    }
                }
            }));
        }
        wait_until("a third of the burst", 120, || {
            done.load(std::sync::atomic::Ordering::Relaxed) >= TOTAL / 3
        });
        let killed = replicas.lock().unwrap()[victim].take().unwrap();
        killed.kill9();
        for t in threads {
            t.join().unwrap();
        }
        let survivor = replicas.lock().unwrap()[1 - victim].take().unwrap();
        let acked = acked.lock().unwrap().clone();
        assert_eq!(acked.len(), TOTAL);
        let distinct: HashSet<&String> = acked.values().collect();
        assert_eq!(distinct.len(), TOTAL, "two peers were given one address");
        let listed = admin_peers(&survivor);
        for (id, ip) in &acked {
            assert_eq!(
                listed.get(id),
                Some(ip),
                "acknowledged {id} at {ip} is missing"
            );
        }
        let all: HashSet<&String> = listed.values().collect();
        assert_eq!(
            all.len(),
            listed.len(),
            "duplicate addresses in the registry"
        );
        // A replica started afterwards loads the same registry from the database.
        let fresh = replica(&dir, &format!("c{victim}"), &pg.url(), &["--open"]);
        let reloaded = admin_peers(&fresh);
        for (id, ip) in &acked {
            assert_eq!(reloaded.get(id), Some(ip));
        }
    }
}

/// Sends one signed registration to `addr`; Err when no answer came.
fn send_to(
    addr: std::net::SocketAddr,
    server_key: wgmesh::keys::PublicKey,
    signer: &wgmesh::keys::PrivateKey,
    body: &str,
) -> Result<(u16, serde_json::Value), String> {
    let headers = auth::sign_request(
        signer,
        &server_key,
        "POST",
        "/register",
        body.as_bytes(),
        SystemTime::now(),
    );
    let mut builder = ureq::http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/register"))
        .header("Content-Type", "application/json");
    for (name, value) in &headers {
        builder = builder.header(*name, value.as_str());
    }
    let mut resp = agent()
        .run(builder.body(body.to_owned()).unwrap())
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    let json = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
    Ok((status, json))
}

#[test]
fn a_single_use_token_raced_on_two_replicas_admits_exactly_one_machine() {
    let pg = PgCluster::start();
    let dir = TempDir::new("replicas-token");
    let a = Arc::new(replica(&dir, "a", &pg.url(), &[]));
    let b = Arc::new(replica(&dir, "b", &pg.url(), &[]));
    for round in 0..10 {
        let (token, _) = a.create_token(serde_json::json!({"uses": 1}));
        let barrier = Arc::new(Barrier::new(2));
        let handles: Vec<_> = [a.clone(), b.clone()]
            .into_iter()
            .enumerate()
            .map(|(i, server)| {
                let (token, barrier) = (token.clone(), barrier.clone());
                let key = new_key();
                std::thread::spawn(move || {
                    barrier.wait();
                    register_with_token(&server, &key, &format!("r{round}-{i}"), &token).status
                })
            })
            .collect();
        let mut statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        statuses.sort();
        assert_eq!(statuses, vec![200, 403], "round {round}");
    }
    // Both replicas list the tokens as used up.
    let list = admin(&b, "GET", "/admin/tokens", None);
    let tokens = list.json["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 10);
    assert!(
        tokens.iter().all(|t| t["status"] == "used up"),
        "{}",
        list.json
    );
}

/// Signs one request with `signer`, then sends those very bytes (one nonce) to each of
/// `servers` in turn: returns the answers.
fn same_request_to(
    servers: &[&ServerProcess],
    signer: &wgmesh::keys::PrivateKey,
    method: &str,
    path: &str,
    body: &str,
) -> Vec<Answer> {
    let headers = auth::sign_request(
        signer,
        &servers[0].public_key(),
        method,
        path,
        body.as_bytes(),
        SystemTime::now(),
    );
    let nonce = auth::header_value(&headers, auth::NONCE_HEADER).map(str::to_owned);
    servers
        .iter()
        .map(|server| {
            let mut builder = ureq::http::Request::builder()
                .method(method)
                .uri(server.url(path))
                .header("Content-Type", "application/json");
            for (name, value) in &headers {
                builder = builder.header(*name, value.as_str());
            }
            try_send_raw(server, builder, body, Some(signer), nonce.clone()).unwrap()
        })
        .collect()
}

#[test]
fn any_request_accepted_by_one_replica_is_refused_when_replayed_to_the_other() {
    let Pair {
        pg: _pg,
        dir: _dir,
        a,
        b,
    } = open_pair("replicas-replay");
    let key = new_key();
    let signer = private_of(&key).unwrap();
    let body = register_body(&key, "replayed", None);
    let registered = same_request_to(&[&a, &b, &a], &signer, "POST", "/register", &body);
    let id = registered[0].json["peer_id"].as_str().unwrap().to_owned();
    // A write, a heartbeat (which replicas batch, but whose nonce they still claim in the
    // shared table) and a read: each accepted by one replica, refused by the other, and
    // refused again by the first (its own cache).
    let heartbeat = serde_json::json!({"peer_id": id}).to_string();
    let peers = format!("/peers?peer_id={id}");
    let cases = [
        ("POST /register", registered),
        (
            "POST /heartbeat",
            same_request_to(&[&b, &a, &b], &signer, "POST", "/heartbeat", &heartbeat),
        ),
        (
            "GET /peers",
            same_request_to(&[&b, &a, &b], &signer, "GET", &peers, ""),
        ),
    ];
    for (what, answers) in cases {
        assert_eq!(answers[0].status, 200, "{what}: {}", answers[0].json);
        for replayed in &answers[1..] {
            assert_eq!(replayed.status, 401, "{what} replayed: {}", replayed.json);
            assert!(
                replayed.json["error"].as_str().unwrap().contains("replay"),
                "{what}: {}",
                replayed.json
            );
        }
    }
}

#[test]
fn while_postgresql_is_down_changes_get_503_and_afterwards_nothing_is_lost() {
    let Pair {
        mut pg,
        dir: _dir,
        a,
        b,
    } = open_pair("replicas-outage");
    let before: Vec<(String, String)> = (0..20)
        .map(|i| {
            let key = new_key();
            let server = if i % 2 == 0 { &a } else { &b };
            let answer = register(server, &key, &format!("before{i}"));
            assert_eq!(answer.status, 200, "{}", answer.json);
            (
                answer.json["peer_id"].as_str().unwrap().to_owned(),
                answer.json["assigned_ip"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    pg.stop();
    let during = new_key();
    for server in [&a, &b] {
        let answer = try_register(server, &during, "during").unwrap();
        assert_eq!(answer.status, 503, "{}", answer.json);
        assert_eq!(answer.json["success"], false);
        assert!(
            answer.json["error"].as_str().unwrap().contains("database"),
            "{}",
            answer.json
        );
        let health = get(server, "/healthz", None);
        assert_eq!(health.status, 503, "{}", health.json);
        assert_eq!(health.json["database"], "unreachable");
        // Reads keep coming from the cache.
        let list = get(server, &format!("/peers?peer_id={}", before[0].0), None);
        assert_eq!(list.status, 200, "{}", list.json);
    }
    pg.start_again();
    for server in [&a, &b] {
        wait_until("the replica recovers by itself", 30, || {
            get(server, "/healthz", None).status == 200
        });
    }
    let after = register(&b, &during, "during");
    assert_eq!(after.status, 200, "{}", after.json);
    for server in [&a, &b] {
        wait_until("both replicas list every peer", 5, || {
            admin_peers(server).len() == before.len() + 1
        });
        let listed = admin_peers(server);
        for (id, ip) in &before {
            assert_eq!(listed.get(id), Some(ip));
        }
    }
}

/// Every peer the replica knows: hostname -> online.
fn online_by_name(server: &ServerProcess) -> HashMap<String, bool> {
    let answer = admin(server, "GET", "/admin/peers", None);
    answer.json["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["hostname"].as_str().unwrap().to_owned(),
                p["online"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn names_seen(server: &ServerProcess, id: &str) -> Vec<String> {
    let answer = get(server, &format!("/peers?peer_id={id}"), None);
    assert_eq!(answer.status, 200, "{}", answer.json);
    let mut names: Vec<String> = answer.json["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["hostname"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn the_policy_the_audit_log_and_online_state_are_shared_by_all_replicas() {
    let pg = PgCluster::start();
    let dir = TempDir::new("replicas-policy");
    let policy = dir.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"allow": [{"from": ["tag:a"], "to": ["tag:c"]}]}"#,
    )
    .unwrap();
    let timers = ["--heartbeat-timeout", "3", "--sweep-interval", "1"];
    let mut with_policy = vec!["--policy", policy.to_str().unwrap()];
    with_policy.extend_from_slice(&timers);
    let a = replica(&dir, "a", &pg.url(), &with_policy);
    // B has no policy file: it runs with the policy A published.
    let b = replica(&dir, "b", &pg.url(), &timers);
    let mut ids = HashMap::new();
    for (name, server) in [("a", &a), ("b", &b), ("c", &b)] {
        let (token, _) = a.create_token(serde_json::json!({"tags": [format!("tag:{name}")]}));
        let answer = register_with_token(server, &new_key(), name, &token);
        assert_eq!(answer.status, 200, "{}", answer.json);
        ids.insert(name, answer.json["peer_id"].as_str().unwrap().to_owned());
    }
    wait_until("B sees every registration", 2, || {
        online_by_name(&b).len() == 3
    });
    assert_eq!(names_seen(&b, &ids["a"]), ["c"]);
    assert_eq!(names_seen(&b, &ids["b"]), Vec::<String>::new());
    // A reload on A reaches B.
    std::fs::write(&policy, r#"{"allow": [{"from": ["*"], "to": ["*"]}]}"#).unwrap();
    let reload = admin(&a, "POST", "/admin/policy/reload", None);
    assert_eq!(reload.status, 200, "{}", reload.json);
    assert_eq!(reload.json["changed"], true);
    wait_until("B applies the policy reloaded on A", 2, || {
        names_seen(&b, &ids["b"]) == ["a", "c"]
    });

    // Online state: "a" heartbeats only to B, "b" and "c" fall silent. Both replicas agree
    // that "a" stays online and the others go offline, from the database's last-seen times.
    let deadline = Instant::now() + Duration::from_secs(7);
    while Instant::now() < deadline {
        let hb = post(
            &b,
            "/heartbeat",
            &serde_json::json!({"peer_id": ids["a"]}).to_string(),
        );
        assert_eq!(hb.status, 200, "{}", hb.json);
        std::thread::sleep(Duration::from_millis(500));
    }
    for server in [&a, &b] {
        let online = online_by_name(server);
        assert!(online["a"], "{online:?}");
        assert!(!online["b"], "{online:?}");
        assert!(!online["c"], "{online:?}");
    }

    // The audit log is one table: registrations through both replicas, the policy change.
    let mut db = ::postgres::Client::connect(&pg.url(), ::postgres::NoTls).unwrap();
    let events: Vec<String> = db
        .query("SELECT event FROM wgmesh_audit ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        events.iter().filter(|e| *e == "registration").count(),
        3,
        "{events:?}"
    );
    assert_eq!(
        events.iter().filter(|e| *e == "token_create").count(),
        3,
        "{events:?}"
    );
    assert!(events.iter().any(|e| e == "policy_change"), "{events:?}");
}

#[test]
fn heartbeats_cost_no_database_write_each_and_are_flushed_once_per_sweep() {
    let pg = PgCluster::start();
    let dir = TempDir::new("replicas-heartbeats");
    let slow = replica(
        &dir,
        "slow",
        &pg.url(),
        &["--open", "--sweep-interval", "3600"],
    );
    let fast = replica(
        &dir,
        "fast",
        &pg.url(),
        &["--open", "--sweep-interval", "1"],
    );
    let key = new_key();
    let answer = register(&slow, &key, "beating");
    assert_eq!(answer.status, 200, "{}", answer.json);
    let id = answer.json["peer_id"].as_str().unwrap().to_owned();
    let mut db = ::postgres::Client::connect(&pg.url(), ::postgres::NoTls).unwrap();
    // xmin changes with every write to the row: 50 heartbeats must leave it alone.
    let row_version = |db: &mut ::postgres::Client| -> (String, i64) {
        let row = db
            .query_one(
                "SELECT xmin::text, last_seen FROM wgmesh_peers WHERE public_key = $1",
                &[&key],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    let before = row_version(&mut db);
    std::thread::sleep(Duration::from_millis(20));
    for _ in 0..50 {
        let hb = post(
            &slow,
            "/heartbeat",
            &serde_json::json!({"peer_id": id}).to_string(),
        );
        assert_eq!(hb.status, 200, "{}", hb.json);
    }
    assert_eq!(
        row_version(&mut db),
        before,
        "a heartbeat wrote to the database"
    );
    // A clean stop writes the batch: nothing a replica acknowledged is lost.
    assert!(slow.stop().success());
    let stopped = row_version(&mut db);
    assert!(stopped.1 > before.1, "SIGTERM flushed the heartbeats");
    let before = stopped;
    std::thread::sleep(Duration::from_millis(20));
    // A replica whose sweep runs every second writes its batch.
    let hb = post(
        &fast,
        "/heartbeat",
        &serde_json::json!({"peer_id": id}).to_string(),
    );
    assert_eq!(hb.status, 200, "{}", hb.json);
    wait_until("the sweep flushes the last-seen time", 5, || {
        row_version(&mut db).1 > before.1
    });
}

#[test]
fn import_moves_a_json_server_into_postgresql_without_renumbering() {
    let pg = PgCluster::start();
    let dir = TempDir::new("replicas-import");
    let state = dir.path().join("single").join("peers.json");
    std::fs::create_dir_all(state.parent().unwrap()).unwrap();
    let single = ServerProcess::start(&state, &["--register-limit", "0"]);
    let server_key = single.public_key();
    let (token, _) = single.create_token(serde_json::json!({"uses": 5}));
    let mut before = HashMap::new();
    let mut keys = Vec::new();
    let mut ids = Vec::new();
    for i in 0..3 {
        let key = new_key();
        let answer = register_with_token(&single, &key, &format!("old{i}"), &token);
        assert_eq!(answer.status, 200, "{}", answer.json);
        let id = answer.json["peer_id"].as_str().unwrap().to_owned();
        before.insert(
            id.clone(),
            answer.json["assigned_ip"].as_str().unwrap().to_owned(),
        );
        keys.push(key);
        ids.push(id);
    }
    // Free the first address so a renumbering import would show.
    let first = ids[0].clone();
    let gone = admin(&single, "DELETE", &format!("/admin/peers/{first}"), None);
    assert_eq!(gone.status, 200, "{}", gone.json);
    before.remove(&first);
    assert!(single.stop().success());

    let import = |expect_ok: bool| {
        let out = std::process::Command::new(wgmesh_bin())
            .args(["server", "--state"])
            .arg(&state)
            .args(["--import-to", &pg.url()])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.success(), expect_ok, "{text}");
        text
    };
    assert!(import(true).contains("imported 2 peers"));
    // A second import would merge two registries: refused.
    assert!(import(false).contains("already holds"));

    let a = replica(&dir, "a", &pg.url(), &[]);
    assert_eq!(
        a.public_key(),
        server_key,
        "agents keep the key they pinned"
    );
    assert_eq!(admin_peers(&a), before);
    // The token keeps its remaining uses, and known keys keep their addresses.
    let answer = register_with_token(&a, &new_key(), "new", &token);
    assert_eq!(answer.status, 200, "{}", answer.json);
    assert!(!before
        .values()
        .any(|ip| answer.json["assigned_ip"] == ip.as_str()));
    let again = register(&a, &keys[1], "old1");
    assert_eq!(again.status, 200, "{}", again.json);
    let id = again.json["peer_id"].as_str().unwrap();
    assert_eq!(again.json["assigned_ip"], before[id].as_str());
}

/// A stand-in for a sick replica: answers every request 503.
fn always_503() -> (String, std::thread::JoinHandle<()>, Arc<tiny_http::Server>) {
    let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
    let url = format!("http://{}", server.server_addr().to_ip().unwrap());
    let s = server.clone();
    let handle = std::thread::spawn(move || {
        for request in s.incoming_requests() {
            let body = r#"{"success":false,"error":"sick","code":"unavailable"}"#;
            let _ = request.respond(tiny_http::Response::from_string(body).with_status_code(503));
        }
    });
    (url, handle, server)
}

#[test]
fn an_agent_given_several_servers_fails_over_on_5xx_and_on_a_dead_replica() {
    let Pair { pg: _pg, dir, a, b } = open_pair("replicas-agent");
    let (sick, sick_thread, sick_server) = always_503();
    let x = new_key();
    assert_eq!(register(&b, &x, "x-host").status, 200);
    let config = dir.path().join("agent.json");
    let sync = |servers: &[String]| {
        let mut cmd = std::process::Command::new(wgmesh_bin());
        cmd.args(["sync", "--dry-run", "--os", "linux", "--hostname", "me"])
            .arg("--config")
            .arg(&config);
        for s in servers {
            cmd.args(["--server", s]);
        }
        let out = cmd.output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(out.status.success(), "{stderr}");
        (stdout, stderr)
    };
    // The first server answers 503: the agent moves on to A, pins the cluster's one key
    // (registering as a first real run does; a dry run registers nothing), and a dry run
    // fails over the same way for the peer list.
    join(
        &config,
        &[sick.clone(), a.url(""), b.url("")],
        "me",
        None,
        None,
    );
    let (plan, log) = sync(&[sick.clone(), a.url(""), b.url("")]);
    assert!(plan.contains(&x), "{plan}");
    assert!(log.contains("trying"), "{log}");
    let saved = wgmesh::agent::state::config::ClientConfig::load(&config)
        .unwrap()
        .unwrap();
    let assignment = saved.assignment.clone().unwrap();
    assert_eq!(assignment.server_public_key, a.public_key());
    assert_eq!(saved.fallback_servers.len(), 2, "the list is remembered");

    // A dies; a new peer joins through B; the agent (servers from its config) keeps working.
    a.kill9();
    let y = new_key();
    assert_eq!(register(&b, &y, "y-host").status, 200);
    let (plan, log) = sync(&[]);
    assert!(plan.contains(&y), "{plan}\n{log}");
    let again = wgmesh::agent::state::config::ClientConfig::load(&config)
        .unwrap()
        .unwrap()
        .assignment
        .unwrap();
    assert_eq!(again.assigned_ip, assignment.assigned_ip, "same address");
    sick_server.unblock();
    drop(sick_server);
    let _ = sick_thread;
}

#[test]
fn a_bad_url_an_unreachable_database_or_another_network_stop_the_replica_with_the_reason() {
    let dir = TempDir::new("replicas-refused");
    let state = dir.path().join("peers.json");
    let refused = |extra: &[&str]| match ServerProcess::try_start(&state, extra) {
        Ok(_) => panic!("replica started with {extra:?}"),
        Err((code, log)) => (code, log.join("\n")),
    };
    let (code, log) = refused(&["--store", "mysql://x"]);
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains("postgresql://USER:PASSWORD@HOST:PORT/DATABASE"),
        "{log}"
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let (code, log) = refused(&["--store", &format!("postgresql://u:p@127.0.0.1:{port}/db")]);
    assert_eq!(code, Some(5), "{log}");
    assert!(log.contains("unreachable"), "{log}");
    assert!(
        !log.contains("u:p@"),
        "the password never reaches the log: {log}"
    );

    let pg = PgCluster::start();
    let first = replica(&dir, "a", &pg.url(), &["--open"]);
    assert_eq!(register(&first, &new_key(), "n").status, 200);
    let (code, log) = refused(&["--store", &pg.url(), "--network-cidr", "10.200.0.0/16"]);
    assert_eq!(code, Some(5), "{log}");
    assert!(log.contains("--network-cidr 10.100.0.0/16"), "{log}");
}

#[test]
fn replicas_publish_where_agents_reach_them_and_a_dead_one_drops_out() {
    let pg = PgCluster::start();
    let dir = TempDir::new("replicas-list");
    let timers = [
        "--open",
        "--heartbeat-timeout",
        "2",
        "--sweep-interval",
        "1",
    ];
    let a = replica(&dir, "a", &pg.url(), &timers);
    let b = replica(&dir, "b", &pg.url(), &timers);
    let listed = |server: &ServerProcess| -> Vec<String> {
        let answer = get(server, "/replicas", None);
        assert_eq!(answer.status, 200, "{}", answer.json);
        answer.json["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u.as_str().unwrap().to_owned())
            .collect()
    };
    let mut both = vec![a.url(""), b.url("")];
    both.sort();
    wait_until("both replicas are listed", 5, || listed(&a) == both);
    assert_eq!(listed(&b), both);
    // Both ends of a pair compute the same meeting replica from the list.
    let (x, y) = (
        wgmesh::keys::PrivateKey::generate().public_key(),
        wgmesh::keys::PrivateKey::generate().public_key(),
    );
    let list = listed(&b);
    assert_eq!(
        wgmesh::proto::replicas::meeting_replica(&x, &y, &list),
        wgmesh::proto::replicas::meeting_replica(&y, &x, &list)
    );
    let b_url = b.url("");
    a.kill9();
    wait_until("the dead replica drops out", 10, || {
        listed(&b) == [b_url.clone()]
    });
}

#[test]
fn the_schema_is_versioned_migrated_at_start_and_a_newer_one_refused() {
    let pg = PgCluster::start();
    let dir = TempDir::new("replicas-schema");
    let first = replica(&dir, "a", &pg.url(), &["--open"]);
    assert_eq!(register(&first, &new_key(), "kept").status, 200);
    first.kill9();
    let mut db = ::postgres::Client::connect(&pg.url(), ::postgres::NoTls).unwrap();
    let version = |db: &mut ::postgres::Client| -> i32 {
        db.query_one("SELECT version FROM wgmesh_schema_version", &[])
            .unwrap()
            .get(0)
    };
    assert_eq!(version(&mut db), 4);
    // Back to version 1, as an older build left it: the next start migrates it again.
    db.batch_execute(
        "DROP TABLE wgmesh_replicas; DROP TABLE wgmesh_policies; DROP TABLE wgmesh_sso_logins;
         UPDATE wgmesh_schema_version SET version = 1",
    )
    .unwrap();
    let second = replica(&dir, "b", &pg.url(), &["--open"]);
    assert_eq!(version(&mut db), 4);
    assert_eq!(
        admin_peers(&second).len(),
        1,
        "the data survived the migration"
    );
    assert_eq!(get(&second, "/replicas", None).status, 200);
    drop(second);
    // A database written by a newer build is refused, untouched.
    db.batch_execute("UPDATE wgmesh_schema_version SET version = 99")
        .unwrap();
    let state = dir.path().join("c").join("peers.json");
    std::fs::create_dir_all(state.parent().unwrap()).unwrap();
    let (code, log) = match ServerProcess::try_start(&state, &["--store", &pg.url()]) {
        Ok(_) => panic!("started on a newer schema"),
        Err((code, log)) => (code, log.join("\n")),
    };
    assert_eq!(code, Some(5), "{log}");
    assert!(log.contains("newer than this build"), "{log}");
    assert_eq!(version(&mut db), 99);
}

/// A plain round-robin TCP load balancer on loopback: each new connection goes to the next
/// backend. Runs until the test process ends (its threads only copy bytes).
fn round_robin(backends: Vec<std::net::SocketAddr>) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for (i, client) in listener.incoming().enumerate() {
            let Ok(client) = client else { continue };
            let Ok(server) = std::net::TcpStream::connect(backends[i % backends.len()]) else {
                continue;
            };
            for (mut from, mut to) in [
                (client.try_clone().unwrap(), server.try_clone().unwrap()),
                (server, client),
            ] {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
    addr
}

#[test]
fn agents_work_through_a_plain_load_balancer_that_alternates_replicas() {
    let Pair { pg: _pg, dir, a, b } = open_pair("replicas-lb");
    let lb = format!("http://{}", round_robin(vec![a.addr, b.addr]));
    let config = dir.path().join("agent.json");
    join(&config, std::slice::from_ref(&lb), "me", None, None);
    let others: Vec<String> = (0..3).map(|_| new_key()).collect();
    let mut address = None;
    for (round, other) in others.iter().enumerate() {
        // A peer joins through one replica; the agent, its requests spread over both by
        // the balancer (key, register, heartbeat, list), sees it at once.
        assert_eq!(register(&a, other, &format!("o{round}")).status, 200);
        let out = std::process::Command::new(wgmesh_bin())
            .args(["sync", "--dry-run", "--os", "linux", "--hostname", "me"])
            .arg("--config")
            .arg(&config)
            .args(["--server", &lb])
            .output()
            .unwrap();
        let plan = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for seen in &others[..=round] {
            assert!(plan.contains(seen.as_str()), "round {round}: {plan}");
        }
        let saved = wgmesh::agent::state::config::ClientConfig::load(&config)
            .unwrap()
            .unwrap()
            .assignment
            .unwrap();
        assert_eq!(saved.server_public_key, a.public_key());
        assert_eq!(
            *address.get_or_insert(saved.assigned_ip),
            saved.assigned_ip,
            "one address"
        );
    }
}

/// `GET /peers?since=N&wait=SECS` on `server`, answered 200 and signed.
fn long_poll(server: &ServerProcess, id: &str, since: u64, wait: u64) -> Answer {
    let answer = get(
        server,
        &format!("/peers?peer_id={id}&since={since}&wait={wait}"),
        None,
    );
    assert_eq!(answer.status, 200, "{}", answer.json);
    assert!(answer.signed, "live answers are signed");
    answer
}

/// Parks a long-poll on `server` from `since`, runs `change` half a second later, and
/// returns the answer with how long after the change it came.
fn woken_by(
    server: &ServerProcess,
    id: &str,
    since: u64,
    change: impl FnOnce(),
) -> (Answer, Duration) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            let answer = long_poll(server, id, since, 8);
            tx.send((Instant::now(), answer)).unwrap();
        });
        std::thread::sleep(Duration::from_millis(500));
        let changed = Instant::now();
        change();
        let (answered, answer) = rx.recv_timeout(Duration::from_secs(9)).unwrap();
        (answer, answered.duration_since(changed))
    })
}

#[test]
fn a_long_poll_parked_on_one_replica_is_woken_by_changes_through_the_other() {
    let Pair {
        pg: _pg,
        dir: _dir,
        a,
        b,
    } = open_pair("replicas-longpoll");
    let x = register(&b, &new_key(), "x-host");
    assert_eq!(x.status, 200, "{}", x.json);
    let x_id = x.json["peer_id"].as_str().unwrap().to_owned();
    let first = get(&b, &format!("/peers?peer_id={x_id}"), None);
    let version = first.json["version"].as_u64().expect("a version");

    // A registration through A reaches the long-poll parked on B (NOTIFY, catch-up, wake).
    let mut y_id = String::new();
    let (joined, took) = woken_by(&b, &x_id, version, || {
        let y = register(&a, &new_key(), "y-host");
        assert_eq!(y.status, 200, "{}", y.json);
        y_id = y.json["peer_id"].as_str().unwrap().to_owned();
    });
    assert_eq!(joined.json["full"], false, "{}", joined.json);
    let changed: Vec<&str> = joined.json["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(changed, [y_id.as_str()], "{}", joined.json);
    assert!(
        took < Duration::from_secs(1),
        "woken {took:?} after the change"
    );

    // Going offline through A (written to the database) drops the peer from B's answer.
    let version = joined.json["version"].as_u64().unwrap();
    let (left, took) = woken_by(&b, &x_id, version, || {
        let off = post(
            &a,
            "/offline",
            &serde_json::json!({"peer_id": y_id}).to_string(),
        );
        assert_eq!(off.status, 200, "{}", off.json);
    });
    assert_eq!(
        left.json["removed"],
        serde_json::json!([y_id]),
        "{}",
        left.json
    );
    assert!(
        took < Duration::from_secs(1),
        "woken {took:?} after the change"
    );
    // And A agrees: the peer is offline there too, with its address kept.
    let on_a = admin_peers(&a);
    assert!(on_a.contains_key(&y_id), "registration kept: {on_a:?}");
}

/// `GET /peers?peer_id=ID&since=N` on `server` (no wait), answered 200.
fn since(server: &ServerProcess, id: &str, since: u64) -> Answer {
    let answer = get(server, &format!("/peers?peer_id={id}&since={since}"), None);
    assert_eq!(answer.status, 200, "{}", answer.json);
    answer
}

/// The version of `id`'s full list on `server`.
fn version_on(server: &ServerProcess, id: &str) -> u64 {
    let answer = get(server, &format!("/peers?peer_id={id}"), None);
    assert_eq!(answer.status, 200, "{}", answer.json);
    answer.json["version"].as_u64().expect("a version")
}

/// A delta's changed ids and removed ids; panics on a full list.
fn delta_of(answer: &Answer) -> (Vec<String>, Vec<String>) {
    assert_eq!(answer.json["full"], false, "a delta: {}", answer.json);
    let ids = |key: &str, pick: fn(&serde_json::Value) -> &serde_json::Value| -> Vec<String> {
        answer.json[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| pick(v).as_str().unwrap().to_owned())
            .collect()
    };
    (ids("changed", |p| &p["id"]), ids("removed", |v| v))
}

/// Waits until `a` and `b` show `id` the same version (both caught up), and returns it.
fn agreed_version(a: &ServerProcess, b: &ServerProcess, id: &str) -> u64 {
    let mut agreed = 0;
    wait_until("both replicas reach one version", 3, || {
        let (va, vb) = (version_on(a, id), version_on(b, id));
        agreed = va;
        va == vb
    });
    agreed
}

#[test]
fn a_version_from_one_replica_is_answered_as_a_delta_by_every_other() {
    let Pair { pg, dir, a, b } = open_pair("replicas-versions");
    let x = register(&a, &new_key(), "x-host");
    assert_eq!(x.status, 200, "{}", x.json);
    let x_id = x.json["peer_id"].as_str().unwrap().to_owned();
    let v1 = version_on(&a, &x_id);

    // A change through A, asked about on B with A's version: just the change (a long-poll,
    // so an answer before B heard of it waits for it rather than saying "nothing").
    let y_key = new_key();
    let y = register(&a, &y_key, "y-host");
    let y_id = y.json["peer_id"].as_str().unwrap().to_owned();
    let on_b = long_poll(&b, &x_id, v1, 5);
    assert_eq!(delta_of(&on_b), (vec![y_id.clone()], vec![]));
    let v2 = on_b.json["version"].as_u64().unwrap();
    assert!(v2 > v1);
    // A answers the same version with the same delta: one numbering for the cluster.
    let on_a = since(&a, &x_id, v1);
    assert_eq!(on_a.json["version"], v2, "{}", on_a.json);
    assert_eq!(delta_of(&on_a), (vec![y_id.clone()], vec![]));
    assert_eq!(delta_of(&since(&a, &x_id, v2)), (vec![], vec![]));

    // And the other way round: a change through B, a version from B asked on A.
    let z = register(&b, &new_key(), "z-host");
    let z_id = z.json["peer_id"].as_str().unwrap().to_owned();
    let on_a = long_poll(&a, &x_id, v2, 5);
    assert_eq!(delta_of(&on_a), (vec![z_id.clone()], vec![]));
    let v3 = on_a.json["version"].as_u64().unwrap();

    // A long-poll parked on B with A's version is woken by a change through A, with a
    // delta holding exactly that change.
    let (left, took) = woken_by(&b, &x_id, v3, || {
        let off = post(
            &a,
            "/offline",
            &serde_json::json!({"peer_id": z_id}).to_string(),
        );
        assert_eq!(off.status, 200, "{}", off.json);
    });
    assert_eq!(delta_of(&left), (vec![], vec![z_id.clone()]));
    assert!(
        took < Duration::from_secs(1),
        "woken {took:?} after the change"
    );
    let v4 = left.json["version"].as_u64().unwrap();
    assert_eq!(
        agreed_version(&a, &b, &x_id),
        v4,
        "the offline has one version"
    );
    // Nothing more happened: a long-poll on A with B's version waits and runs out empty
    // (no spurious wake-up, no full list).
    let quiet = long_poll(&a, &x_id, v4, 1);
    assert_eq!(delta_of(&quiet), (vec![], vec![]));
    assert_eq!(quiet.json["version"], v4);

    // A version ahead of a replica: the agent saw a change through another replica whose
    // NOTIFY has not reached this one. Made here by committing a change without NOTIFY.
    // B catches up instead of answering the full list, and the agent is current.
    let mut db = ::postgres::Client::connect(&pg.url(), ::postgres::NoTls).unwrap();
    let mut tx = db.transaction().unwrap();
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&wgmesh::server::pg::schema::WRITE_LOCK],
    )
    .unwrap();
    let v5: i64 = tx
        .query_one(
            "UPDATE wgmesh_peers SET online = false, seq = nextval('wgmesh_seq')
             WHERE public_key = $1 RETURNING seq",
            &[&y_key],
        )
        .unwrap()
        .get(0);
    tx.commit().unwrap();
    let v5 = v5 as u64;
    assert!(v5 > v4);
    let ahead = long_poll(&b, &x_id, v5, 1);
    assert_eq!(delta_of(&ahead), (vec![], vec![]));
    assert_eq!(ahead.json["version"], v5, "{}", ahead.json);
    assert_eq!(
        delta_of(&since(&b, &x_id, v4)),
        (vec![], vec![y_id.clone()])
    );

    // A replica started later answers versions from its start on as deltas, and older
    // ones with the full list (it cannot know what changed before it loaded).
    let c = replica(&dir, "c", &pg.url(), &["--open"]);
    let start = version_on(&c, &x_id);
    assert_eq!(start, v5, "C starts at the cluster's version");
    assert_eq!(since(&c, &x_id, v1).json["full"], true);
    assert_eq!(delta_of(&since(&c, &x_id, start)), (vec![], vec![]));
    let w = register(&b, &new_key(), "w-host");
    let w_id = w.json["peer_id"].as_str().unwrap().to_owned();
    assert_eq!(
        delta_of(&long_poll(&c, &x_id, start, 5)),
        (vec![w_id], vec![])
    );
    // A version this cluster never gave out (a single server's, from its start time) is
    // unknown everywhere: the full list, at once.
    let foreign = 1_700_000_000_000_000;
    assert_eq!(since(&c, &x_id, foreign).json["full"], true);
    let started = Instant::now();
    assert_eq!(long_poll(&b, &x_id, foreign, 5).json["full"], true);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "answered at once"
    );
}

#[test]
fn timeouts_comebacks_and_policy_reloads_get_one_version_on_every_replica() {
    let pg = PgCluster::start();
    let dir = TempDir::new("replicas-versions-shared");
    let policy = dir.path().join("policy.json");
    std::fs::write(&policy, r#"{"allow": [{"from": ["*"], "to": ["*"]}]}"#).unwrap();
    let timers = ["--heartbeat-timeout", "3", "--sweep-interval", "1"];
    let mut with_policy = vec!["--policy", policy.to_str().unwrap()];
    with_policy.extend_from_slice(&timers);
    let a = replica(&dir, "a", &pg.url(), &with_policy);
    let b = replica(&dir, "b", &pg.url(), &timers);
    let mut ids = HashMap::new();
    for name in ["a", "b", "c"] {
        let (token, _) = a.create_token(serde_json::json!({"tags": [format!("tag:{name}")]}));
        let answer = register_with_token(&a, &new_key(), name, &token);
        assert_eq!(answer.status, 200, "{}", answer.json);
        ids.insert(name, answer.json["peer_id"].as_str().unwrap().to_owned());
    }
    let beat = |server: &ServerProcess, name: &str| {
        let hb = post(
            server,
            "/heartbeat",
            &serde_json::json!({"peer_id": ids[name]}).to_string(),
        );
        assert_eq!(hb.status, 200, "{}", hb.json);
    };
    let before = agreed_version(&a, &b, &ids["a"]);

    // "c" falls silent; "a" and "b" heartbeat through different replicas. The timeout is
    // decided in the database, so both replicas record it at one version.
    let deadline = Instant::now() + Duration::from_secs(6);
    while Instant::now() < deadline {
        beat(&a, "a");
        beat(&b, "b");
        std::thread::sleep(Duration::from_millis(400));
    }
    for server in [&a, &b] {
        assert!(!online_by_name(server)["c"], "c timed out");
    }
    let timed_out = agreed_version(&a, &b, &ids["a"]);
    assert!(timed_out > before);
    for server in [&a, &b] {
        let answer = since(server, &ids["a"], before);
        assert_eq!(answer.json["version"], timed_out, "{}", answer.json);
        assert_eq!(delta_of(&answer), (vec![], vec![ids["c"].clone()]));
    }

    // "c" comes back with a heartbeat through B: written to the database first, so A
    // answers B's version with the comeback.
    beat(&a, "a");
    beat(&b, "b");
    beat(&b, "c");
    let back = long_poll(&a, &ids["a"], timed_out, 5);
    assert_eq!(delta_of(&back), (vec![ids["c"].clone()], vec![]));
    let back_version = back.json["version"].as_u64().unwrap();
    assert_eq!(agreed_version(&a, &b, &ids["a"]), back_version);

    // A policy reload on A (b may no longer see c) is one version on both replicas, and a
    // delta across it from the other replica is right: c leaves b's list.
    std::fs::write(
        &policy,
        r#"{"allow": [{"from": ["tag:a"], "to": ["tag:b", "tag:c"]}]}"#,
    )
    .unwrap();
    beat(&a, "a");
    beat(&b, "b");
    beat(&a, "c");
    let reload = admin(&a, "POST", "/admin/policy/reload", None);
    assert_eq!(reload.status, 200, "{}", reload.json);
    assert_eq!(reload.json["changed"], true);
    let on_b = long_poll(&b, &ids["b"], back_version, 5);
    assert_eq!(delta_of(&on_b), (vec![], vec![ids["c"].clone()]));
    let reloaded = on_b.json["version"].as_u64().unwrap();
    assert!(reloaded > back_version);
    let on_a = since(&a, &ids["b"], back_version);
    assert_eq!(on_a.json["version"], reloaded, "{}", on_a.json);
    assert_eq!(delta_of(&on_a), (vec![], vec![ids["c"].clone()]));
    assert_eq!(agreed_version(&a, &b, &ids["a"]), reloaded);
}

/// A deregistration captured on the wire and replayed byte for byte to a replica after that
/// replica restarted (within the timestamp window) is refused and removes nothing: the
/// replica's replay cache starts empty, but the nonce stays claimed in the shared database.
#[test]
fn a_deregistration_captured_before_a_replica_restart_is_refused_after_it() {
    let Pair { pg, dir, a, b } = open_pair("replicas-restart-replay");
    let key = new_key();
    let registered = register(&a, &key, "comeback");
    assert_eq!(registered.status, 200, "{}", registered.json);
    let id = registered.json["peer_id"].as_str().unwrap().to_owned();
    let private = private_of(&key).unwrap();
    let server_key = a.public_key();
    let body = serde_json::json!({"peer_id": id}).to_string();
    let captured = raw_signed_request(
        &server_key,
        &private,
        ("POST", "/deregister", &body),
        SystemTime::now(),
    );
    let (status, json) = raw_exchange(a.addr, &captured);
    assert_eq!(status, 200, "{json}");
    assert_eq!(register(&a, &key, "comeback").status, 200);
    assert!(a.stop().success());
    let a = replica(&dir, "a", &pg.url(), &["--open"]);
    let (status, json) = raw_exchange(a.addr, &captured);
    assert_eq!(status, 401, "the replay was accepted: {json}");
    assert!(
        admin_peers(&b).contains_key(&id),
        "the replay removed the peer"
    );
    assert!(
        admin_peers(&a).contains_key(&id),
        "the replay removed the peer"
    );
}
