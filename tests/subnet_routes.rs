//! Subnet routes on the server (issue 24): an advertised route reaches other peers' lists
//! only once approved (by `wgmesh routes approve` or the policy), refusals say why, and both
//! stores keep the approval (the JSON store across a restart, replicas across the cluster).

mod common;

use common::postgres::PgCluster;
use common::*;

const LAN: &str = "198.18.10.0/24";

fn register_routes(server: &ServerProcess, key: &str, host: &str, routes: &[&str]) -> Answer {
    let answer = post(
        server,
        "/register",
        &serde_json::json!({"public_key": key, "hostname": host, "os": "linux",
            "listen_port": 51820, "allowed_ips": routes})
        .to_string(),
    );
    assert_eq!(answer.status, 200, "{}", answer.json);
    answer
}

/// The prefixes peer `host` routes in the list `viewer_id` gets.
fn routes_seen(server: &ServerProcess, viewer_id: &str, host: &str) -> Vec<String> {
    let list = get(server, &format!("/peers?peer_id={viewer_id}"), None);
    assert_eq!(list.status, 200, "{}", list.json);
    list.json["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["hostname"] == host)
        .flat_map(|p| p["allowed_ips"].as_array().unwrap().clone())
        .map(|n| n.as_str().unwrap().to_owned())
        .collect()
}

/// Runs `wgmesh routes ARGS` against `server`: (exit code, stdout, stderr).
fn routes_cli(server: &ServerProcess, args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(wgmesh_bin())
        .arg("routes")
        .args(args)
        .args(["--server", &format!("http://{}", server.addr)])
        .arg("--admin-secret-file")
        .arg(server.dir().join("admin.secret"))
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits up to 10 s until replica `b` lists LAN as approved for gw-a, in the viewer's peer
/// list and in `/admin/routes`; panics with `what` if it never does.
fn replica_sees_the_approval(b: &ServerProcess, viewer_id: &str, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !routes_seen(b, viewer_id, "gw-a").contains(&LAN.to_owned()) {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let listed = admin(b, "GET", "/admin/routes", None);
    assert_eq!(
        listed.json["routes"][0]["approved"], true,
        "{}",
        listed.json
    );
}

#[test]
fn a_route_is_used_only_after_approval_and_the_cli_shows_and_decides_it() {
    let dir = TempDir::new("routes-approve");
    let state = dir.path().join("peers.json");
    let server = ServerProcess::start(&state, &["--open"]);
    let viewer = register(&server, &new_key(), "laptop");
    let viewer_id = viewer.json["peer_id"].as_str().unwrap().to_owned();
    register_routes(&server, &new_key(), "gw-a", &[LAN]);
    assert!(!routes_seen(&server, &viewer_id, "gw-a").contains(&LAN.to_owned()));

    let (code, out, err) = routes_cli(&server, &["list"]);
    assert_eq!(code, Some(0), "{err}");
    let line = out.lines().find(|l| l.starts_with(LAN)).expect(&out);
    assert!(line.contains("gw-a") && line.contains(" no "), "{out}");

    let (code, out, err) = routes_cli(&server, &["approve", "gw-a", LAN]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, format!("approved {LAN} for gw-a\n"));
    assert!(routes_seen(&server, &viewer_id, "gw-a").contains(&LAN.to_owned()));
    let (_, out, _) = routes_cli(&server, &["list"]);
    let line = out.lines().find(|l| l.starts_with(LAN)).expect(&out);
    assert!(line.contains("yes") && line.ends_with("primary"), "{out}");

    // --json gives the same facts for programs.
    let (code, json, _) = routes_cli(&server, &["list", "--json"]);
    assert_eq!(code, Some(0));
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["routes"][0]["approved"], true);
    assert_eq!(json["routes"][0]["primary"], true);

    // A second router with an overlapping prefix of another length: refused, with why.
    register_routes(&server, &new_key(), "gw-b", &["198.18.0.0/16"]);
    let (code, _, err) = routes_cli(&server, &["approve", "gw-b", "198.18.0.0/16"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("198.18.0.0/16 overlaps 198.18.10.0/24, approved for gw-a"),
        "{err}"
    );
    // A route nobody advertises, a bad prefix, an unknown peer.
    let (code, _, err) = routes_cli(&server, &["approve", "gw-a", "198.19.0.0/24"]);
    assert_eq!(code, Some(3));
    assert!(
        err.contains("gw-a") && err.contains("does not advertise 198.19.0.0/24"),
        "{err}"
    );
    let (code, _, err) = routes_cli(&server, &["approve", "gw-a", "198.18.10.0/33"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("is not a prefix"), "{err}");
    let (code, _, err) = routes_cli(&server, &["approve", "nobody", LAN]);
    assert_eq!(code, Some(3));
    assert!(
        err.contains("no registered peer is named \"nobody\""),
        "{err}"
    );

    // The approval survives a restart of the JSON store; rejecting takes it away.
    server.stop();
    let server = ServerProcess::start(&state, &["--open"]);
    assert!(routes_seen(&server, &viewer_id, "gw-a").contains(&LAN.to_owned()));
    let (code, out, err) = routes_cli(&server, &["reject", "gw-a", LAN]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, format!("rejected {LAN} for gw-a\n"));
    assert!(!routes_seen(&server, &viewer_id, "gw-a").contains(&LAN.to_owned()));

    // Both decisions are in the audit log, as the admin's.
    let audit = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    for event in ["route_approve", "route_reject"] {
        let line = audit
            .lines()
            .find(|l| l.contains(event))
            .unwrap_or_else(|| panic!("no {event} in {audit}"));
        assert!(
            line.contains("\"actor\":\"admin\"") && line.contains(LAN),
            "{line}"
        );
    }
}

#[test]
fn the_policy_approves_routes_of_the_tags_it_names() {
    let dir = TempDir::new("routes-policy");
    let policy = dir.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"allow": [{"from": ["*"], "to": ["*"]}],
            "routes": [{"advertisers": ["tag:office"], "prefixes": ["198.18.0.0/15"]}]}"#,
    )
    .unwrap();
    let server = ServerProcess::start(
        &dir.path().join("peers.json"),
        &["--policy", policy.to_str().unwrap()],
    );
    let (office, _) = server.create_token(serde_json::json!({"tags": ["tag:office"]}));
    let (plain, _) = server.create_token(serde_json::json!({}));
    let viewer = register_with_token(&server, &new_key(), "laptop", &plain);
    let viewer_id = viewer.json["peer_id"].as_str().unwrap().to_owned();
    for (host, token) in [("gw-office", &office), ("gw-other", &plain)] {
        let body = serde_json::json!({"public_key": new_key(), "hostname": host, "os": "linux",
            "listen_port": 51820, "allowed_ips": [LAN], "token": token});
        let answer = post(&server, "/register", &body.to_string());
        assert_eq!(answer.status, 200, "{}", answer.json);
    }
    assert!(routes_seen(&server, &viewer_id, "gw-office").contains(&LAN.to_owned()));
    assert!(!routes_seen(&server, &viewer_id, "gw-other").contains(&LAN.to_owned()));
}

#[test]
fn replicas_share_approvals() {
    let pg = PgCluster::start();
    let dir = TempDir::new("routes-replicas");
    let start = |name: &str| {
        let state = dir.path().join(name).join("peers.json");
        std::fs::create_dir_all(state.parent().unwrap()).unwrap();
        ServerProcess::start(&state, &["--store", &pg.url(), "--open"])
    };
    let (a, b) = (start("a"), start("b"));
    let viewer = register(&b, &new_key(), "laptop");
    let viewer_id = viewer.json["peer_id"].as_str().unwrap().to_owned();
    register_routes(&a, &new_key(), "gw-a", &[LAN]);
    let approve = admin(
        &a,
        "POST",
        "/admin/routes/approve",
        Some(serde_json::json!({"peer": "gw-a", "prefix": LAN})),
    );
    assert_eq!(approve.status, 200, "{}", approve.json);
    replica_sees_the_approval(&b, &viewer_id, "replica b never saw the approval");
}

/// The peer entry of `host` in the list `viewer_id` gets.
fn entry_seen(server: &ServerProcess, viewer_id: &str, host: &str) -> Option<serde_json::Value> {
    let list = get(server, &format!("/peers?peer_id={viewer_id}"), None);
    assert_eq!(list.status, 200, "{}", list.json);
    list.json["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["hostname"] == host)
        .cloned()
}

#[test]
fn a_reload_approves_advertised_routes_its_rules_cover_and_lists_only_granted_parts() {
    let dir = TempDir::new("routes-reload");
    let policy = dir.path().join("policy.json");
    let grants = r#"{"allow": [{"from": ["tag:b"], "to": ["198.18.10.10"]},
                               {"from": ["tag:office"], "to": ["tag:b"]}]"#;
    std::fs::write(&policy, format!("{grants}}}")).unwrap();
    let server = ServerProcess::start(
        &dir.path().join("peers.json"),
        &["--policy", policy.to_str().unwrap()],
    );
    let (office, _) = server.create_token(serde_json::json!({"tags": ["tag:office"]}));
    let (b_token, _) = server.create_token(serde_json::json!({"tags": ["tag:b"]}));
    let b = register_with_token(&server, &new_key(), "node-b", &b_token);
    let b_id = b.json["peer_id"].as_str().unwrap().to_owned();
    let body = serde_json::json!({"public_key": new_key(), "hostname": "gw-office",
        "os": "linux", "listen_port": 51820, "allowed_ips": [LAN], "token": office});
    let gw = post(&server, "/register", &body.to_string());
    assert_eq!(gw.status, 200, "{}", gw.json);
    let gw_id = gw.json["peer_id"].as_str().unwrap().to_owned();
    let gw_ip = gw.json["assigned_ip"].as_str().unwrap().to_owned();
    let listed = admin(&server, "GET", "/admin/routes", None);
    assert_eq!(
        listed.json["routes"][0]["approved"], false,
        "{}",
        listed.json
    );

    // The reload that brings a `routes` rule approves the route already advertised.
    let with_rule = format!(
        r#"{grants}, "routes": [{{"advertisers": ["tag:office"], "prefixes": ["198.18.0.0/16"]}}]}}"#
    );
    std::fs::write(&policy, &with_rule).unwrap();
    let reload = admin(&server, "POST", "/admin/policy/reload", None);
    assert_eq!(reload.status, 200, "{}", reload.json);
    assert_eq!(reload.json["changed"], true);
    let listed = admin(&server, "GET", "/admin/routes", None);
    assert_eq!(
        listed.json["routes"][0]["approved"], true,
        "{}",
        listed.json
    );

    // B is granted one host: its list carries the router with that host only, and the
    // router's list says what B may reach.
    let seen = routes_seen(&server, &b_id, "gw-office");
    assert!(seen.contains(&"198.18.10.10/32".to_owned()), "{seen:?}");
    assert!(!seen.contains(&LAN.to_owned()), "{seen:?}");
    assert!(seen.contains(&format!("{gw_ip}/32")), "{seen:?}");
    let b_entry = entry_seen(&server, &gw_id, "node-b").expect("the router sees node-b");
    assert_eq!(b_entry["reach"], serde_json::json!(["198.18.10.10/32"]));

    // A prefix inside the mesh is refused with the entry and why; the old policy stays.
    std::fs::write(
        &policy,
        r#"{"allow": [{"from": ["tag:b"], "to": ["tag:office", "10.100.0.0/24"]}]}"#,
    )
    .unwrap();
    let reload = admin(&server, "POST", "/admin/policy/reload", None);
    assert_eq!(reload.status, 400, "{}", reload.json);
    let error = reload.json["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("allow[0].to[1]")
            && error.contains("10.100.0.0/24 overlaps the mesh network 10.100.0.0/16"),
        "{}",
        reload.json
    );
    assert!(routes_seen(&server, &b_id, "gw-office").contains(&"198.18.10.10/32".to_owned()));

    // A reload whose rules no longer cover the route leaves it approved (approval is a
    // decision; `wgmesh routes reject` takes it away).
    std::fs::write(&policy, format!("{grants}}}")).unwrap();
    let reload = admin(&server, "POST", "/admin/policy/reload", None);
    assert_eq!(reload.status, 200, "{}", reload.json);
    let listed = admin(&server, "GET", "/admin/routes", None);
    assert_eq!(
        listed.json["routes"][0]["approved"], true,
        "{}",
        listed.json
    );
}

#[test]
fn a_reload_on_one_replica_approves_advertised_routes_on_all() {
    let pg = PgCluster::start();
    let dir = TempDir::new("routes-reload-replicas");
    let policy = dir.path().join("policy.json");
    std::fs::write(&policy, r#"{"allow": [{"from": ["*"], "to": ["*"]}]}"#).unwrap();
    let start = |name: &str| {
        let state = dir.path().join(name).join("peers.json");
        std::fs::create_dir_all(state.parent().unwrap()).unwrap();
        ServerProcess::start(
            &state,
            &[
                "--store",
                &pg.url(),
                "--open",
                "--policy",
                policy.to_str().unwrap(),
            ],
        )
    };
    let (a, b) = (start("a"), start("b"));
    let viewer = register(&b, &new_key(), "laptop");
    let viewer_id = viewer.json["peer_id"].as_str().unwrap().to_owned();
    register_routes(&a, &new_key(), "gw-a", &[LAN]);
    let listed = admin(&a, "GET", "/admin/routes", None);
    assert_eq!(
        listed.json["routes"][0]["approved"], false,
        "{}",
        listed.json
    );
    std::fs::write(
        &policy,
        r#"{"allow": [{"from": ["*"], "to": ["*"]}],
            "routes": [{"advertisers": ["*"], "prefixes": ["198.18.10.0/24"]}]}"#,
    )
    .unwrap();
    let reload = admin(&a, "POST", "/admin/policy/reload", None);
    assert_eq!(reload.status, 200, "{}", reload.json);
    replica_sees_the_approval(
        &b,
        &viewer_id,
        "replica b never saw the approval the reload on a made",
    );
}

#[test]
fn a_server_started_with_a_policy_that_covers_an_advertised_route_approves_it() {
    let dir = TempDir::new("routes-start");
    let policy = dir.path().join("policy.json");
    let state = dir.path().join("peers.json");
    std::fs::write(&policy, r#"{"allow": [{"from": ["*"], "to": ["*"]}]}"#).unwrap();
    let args = ["--open", "--policy", policy.to_str().unwrap()];
    let server = ServerProcess::start(&state, &args);
    register_routes(&server, &new_key(), "gw-a", &[LAN]);
    let listed = admin(&server, "GET", "/admin/routes", None);
    assert_eq!(
        listed.json["routes"][0]["approved"], false,
        "{}",
        listed.json
    );
    server.stop();
    // The file changed while the server was stopped: starting is a reload too.
    std::fs::write(
        &policy,
        r#"{"allow": [{"from": ["*"], "to": ["*"]}],
            "routes": [{"advertisers": ["*"], "prefixes": ["198.18.0.0/16"]}]}"#,
    )
    .unwrap();
    let server = ServerProcess::start(&state, &args);
    let listed = admin(&server, "GET", "/admin/routes", None);
    assert_eq!(
        listed.json["routes"][0]["approved"], true,
        "{}",
        listed.json
    );
}
