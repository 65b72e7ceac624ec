//! Integration tests of who may do what, over the real binary on loopback: request MACs
//! (forged, wrong key, replayed, stale), join tokens (expired, used up, revoked, unknown),
//! token tags meeting the access policy and its reloads, the admin interface, rate limits,
//! oversize and hostile input. Every refusal must also leave the state on disk byte for byte
//! as it was.

mod common;

use common::*;
use std::time::{Duration, SystemTime};
use wgmesh::keys::PrivateKey;
use wgmesh::proto::auth;

/// Everything a refused request must not change: snapshot, journal and tokens.
fn disk(server: &ServerProcess) -> Vec<(String, Vec<u8>)> {
    ["peers.json", "peers.json.journal", "tokens.json"]
        .iter()
        .map(|name| {
            (
                name.to_string(),
                std::fs::read(server.dir().join(name)).unwrap_or_default(),
            )
        })
        .collect()
}

fn assert_disk_unchanged(server: &ServerProcess, before: &[(String, Vec<u8>)], what: &str) {
    for ((name, old), (_, new)) in before.iter().zip(disk(server)) {
        assert!(*old == new, "{what}: {name} changed on disk");
    }
}

/// A server in the default (token) mode that never compacts during a test, so only the
/// requests themselves could touch the disk.
fn token_server(dir: &TempDir, extra: &[&str]) -> ServerProcess {
    let mut args = vec!["--sweep-interval", "3600"];
    args.extend_from_slice(extra);
    ServerProcess::start(&dir.path().join("peers.json"), &args)
}

/// Sends exactly these headers (already signed, maybe tampered with).
fn send_headers(
    server: &ServerProcess,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(&'static str, String)],
) -> Answer {
    let mut builder = ureq::http::Request::builder()
        .method(method)
        .uri(server.url(path))
        .header("Content-Type", "application/json");
    for (name, value) in headers {
        builder = builder.header(*name, value.as_str());
    }
    let mut resp = agent()
        .run(builder.body(body.to_owned()).unwrap())
        .expect("request");
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    Answer {
        status,
        json: serde_json::from_str(&text).unwrap_or_default(),
        etag: None,
        retry_after,
        signed: false,
    }
}

fn signed(
    server: &ServerProcess,
    key: &PrivateKey,
    method: &str,
    path: &str,
    body: &str,
    at: SystemTime,
) -> Vec<(&'static str, String)> {
    auth::sign_request(key, &server.public_key(), method, path, body.as_bytes(), at)
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn error_text(answer: &Answer) -> String {
    assert_eq!(answer.json["success"], false, "{}", answer.json);
    answer.json["error"].as_str().unwrap_or_default().to_owned()
}

fn audit_lines(server: &ServerProcess) -> Vec<serde_json::Value> {
    std::fs::read_to_string(server.dir().join("audit.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn id_of(answer: &Answer) -> String {
    answer.json["peer_id"].as_str().unwrap().to_owned()
}

#[test]
fn forged_wrong_key_replayed_stale_and_unsigned_requests_get_401_and_change_nothing() {
    let dir = TempDir::new("macs");
    let server = token_server(&dir, &[]);
    let (token, _) = server.create_token(serde_json::json!({"uses": 1}));
    let a_key = new_key();
    let a = register_with_token(&server, &a_key, "a", &token);
    assert_eq!(a.status, 200, "{}", a.json);
    let a_id = id_of(&a);
    let a_private = private_of(&a_key).unwrap();
    let before = disk(&server);
    let hb_body = format!(r#"{{"peer_id":"{a_id}","endpoint":"203.0.113.66:51820"}}"#);
    let now = SystemTime::now();

    // Forged: a valid signature with one bit of the MAC flipped.
    let mut forged = signed(&server, &a_private, "POST", "/heartbeat", &hb_body, now);
    let mac = forged
        .iter_mut()
        .find(|(n, _)| *n == auth::MAC_HEADER)
        .unwrap();
    mac.1 = {
        use base64::Engine as _;
        let mut raw = base64::engine::general_purpose::STANDARD
            .decode(&mac.1)
            .unwrap();
        raw[0] ^= 1;
        base64::engine::general_purpose::STANDARD.encode(raw)
    };
    let answer = send_headers(&server, "POST", "/heartbeat", &hb_body, &forged);
    assert_eq!(answer.status, 401);
    assert!(error_text(&answer).contains("MAC does not match"));

    // Signed correctly, but by another key than the one the request concerns.
    let mallory = PrivateKey::generate();
    let m_pub = mallory.public_key().to_base64();
    let cases = [
        ("POST", "/heartbeat".to_owned(), hb_body.clone(), "another key"),
        (
            "GET",
            format!("/peers?peer_id={a_id}"),
            String::new(),
            "another key",
        ),
        (
            "POST",
            "/deregister".to_owned(),
            format!(r#"{{"peer_id":"{a_id}"}}"#),
            "another key",
        ),
        ("DELETE", format!("/peers/{a_id}"), String::new(), "another key"),
        (
            "POST",
            "/register".to_owned(),
            serde_json::json!({"public_key": a_key, "hostname": "evil", "endpoint": "203.0.113.66:51820"})
                .to_string(),
            "only a key's owner",
        ),
    ];
    for (method, path, body, needle) in &cases {
        let headers = signed(&server, &mallory, method, path, body, SystemTime::now());
        let answer = send_headers(&server, method, path, body, &headers);
        assert_eq!(answer.status, 401, "{method} {path}: {}", answer.json);
        assert!(error_text(&answer).contains(needle), "{}", answer.json);
    }

    // Replayed: the same signed heartbeat twice.
    let once = signed(&server, &a_private, "POST", "/heartbeat", &hb_body, now);
    assert_eq!(
        send_headers(&server, "POST", "/heartbeat", &hb_body, &once).status,
        200
    );
    let again = send_headers(&server, "POST", "/heartbeat", &hb_body, &once);
    assert_eq!(again.status, 401);
    assert!(error_text(&again).contains("replayed"));

    // Stale and future timestamps.
    for at in [
        now - Duration::from_secs(300),
        now + Duration::from_secs(300),
    ] {
        let headers = signed(&server, &a_private, "POST", "/heartbeat", &hb_body, at);
        let answer = send_headers(&server, "POST", "/heartbeat", &hb_body, &headers);
        assert_eq!(answer.status, 401);
        assert!(error_text(&answer).contains("check the clock"));
    }

    // Unsigned.
    let answer = send_headers(&server, "POST", "/heartbeat", &hb_body, &[]);
    assert_eq!(answer.status, 401);
    assert!(error_text(&answer).contains("missing header"));

    assert_disk_unchanged(&server, &before, "refused requests");
    // Nobody moved a's endpoint or removed it; only a's own heartbeat counted.
    let b_key = new_key();
    let (token_b, _) = server.create_token(serde_json::json!({}));
    let b = register_with_token(&server, &b_key, "b", &token_b);
    let list = get(&server, &format!("/peers?peer_id={}", id_of(&b)), None);
    assert_eq!(list.json["peers"][0]["id"], a_id.as_str());
    assert_eq!(list.json["peers"][0]["hostname"], "a");
    let failures = audit_lines(&server)
        .iter()
        .filter(|l| l["event"] == "auth_failure")
        .count();
    assert!(failures >= 10, "{failures} auth failures audited");
    assert!(m_pub.len() == 44);
}

#[test]
fn expired_used_up_revoked_unknown_and_missing_tokens_are_refused_without_burning_uses() {
    let dir = TempDir::new("tokens");
    let server = token_server(&dir, &[]);
    let (one_use, _) = server.create_token(serde_json::json!({"uses": 1}));
    let (short, _) = server.create_token(serde_json::json!({"expires": "1s"}));
    let (revoked, revoked_id) = server.create_token(serde_json::json!({}));
    let answer = admin(
        &server,
        "DELETE",
        &format!("/admin/tokens/{revoked_id}"),
        None,
    );
    assert_eq!(answer.status, 200, "{}", answer.json);

    // A registration that fails for another reason does not use the token up.
    let bad = post(
        &server,
        "/register",
        &serde_json::json!({"public_key": new_key(), "hostname": "bad;name", "token": one_use})
            .to_string(),
    );
    assert_eq!(bad.status, 400);
    let first_key = new_key();
    let first = register_with_token(&server, &first_key, "first", &one_use);
    assert_eq!(first.status, 200, "{}", first.json);
    // Re-registering a known key needs no token at all.
    assert_eq!(register(&server, &first_key, "first").status, 200);

    std::thread::sleep(Duration::from_millis(1500));
    let before = disk(&server);
    let malformed = "wgm_short".to_owned();
    let unknown = format!("wgm_{}", "A".repeat(43));
    let cases: [(Option<&str>, u16, &str); 5] = [
        (Some(&one_use), 403, "no uses left"),
        (Some(&short), 403, "expired"),
        (Some(&revoked), 403, "revoked"),
        (Some(&unknown), 401, "unknown join token"),
        (Some(&malformed), 401, "malformed"),
    ];
    for (token, status, needle) in cases {
        let answer = register_with_token(&server, &new_key(), "late", token.unwrap());
        assert_eq!(answer.status, status, "{token:?}: {}", answer.json);
        assert!(error_text(&answer).contains(needle), "{}", answer.json);
        assert!(answer.signed, "a refusal to a signed request is signed too");
    }
    let none = register(&server, &new_key(), "late");
    assert_eq!(none.status, 401);
    assert!(error_text(&none).contains("join token is required"));
    assert_disk_unchanged(&server, &before, "refused tokens");

    let list = admin(&server, "GET", "/admin/tokens", None);
    let statuses: Vec<&str> = list.json["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["used up", "expired", "revoked"]);
    let tokens_file = std::fs::read_to_string(server.dir().join("tokens.json")).unwrap();
    assert!(
        !tokens_file.contains(&one_use[4..]),
        "secrets are never stored"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for name in ["tokens.json", "admin.secret", "audit.log"] {
            let mode = std::fs::metadata(server.dir().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
    }
}

fn peer_names(answer: &Answer) -> Vec<String> {
    answer.json["peers"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", answer.json))
        .iter()
        .map(|p| p["hostname"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn token_tags_reach_the_policy_and_sighup_or_admin_reload_swaps_it() {
    let dir = TempDir::new("policy");
    let policy = dir.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"allow": [{"from": ["tag:a"], "to": ["tag:c"]}]}"#,
    )
    .unwrap();
    let server = token_server(&dir, &["--policy", policy.to_str().unwrap()]);
    let mut ids = Vec::new();
    for name in ["a", "b", "c"] {
        let tag = format!("tag:{name}");
        let (token, _) = server.create_token(serde_json::json!({"tags": [tag]}));
        let answer = register_with_token(&server, &new_key(), name, &token);
        assert_eq!(answer.status, 200, "{}", answer.json);
        ids.push(id_of(&answer));
    }
    let list = |i: usize| get(&server, &format!("/peers?peer_id={}", ids[i]), None);
    assert_eq!(peer_names(&list(0)), ["c"]);
    assert_eq!(peer_names(&list(1)), Vec::<String>::new());
    assert_eq!(peer_names(&list(2)), ["a"]);
    let b_etag = list(1).etag.unwrap();
    assert_eq!(
        get(
            &server,
            &format!("/peers?peer_id={}", ids[1]),
            Some(&b_etag)
        )
        .status,
        304
    );
    let admin_view = admin(&server, "GET", "/admin/peers", None);
    let tags: Vec<String> = admin_view.json["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["tags"][0].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(tags, ["tag:a", "tag:b", "tag:c"]);

    // SIGHUP with a broken file keeps the old policy.
    std::fs::write(&policy, r#"{"allow": [{"from": ["tag:B"], "to": ["*"]}]}"#).unwrap();
    let pid = server.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    server.log_once_it_says("policy reload failed");
    assert_eq!(peer_names(&list(1)), Vec::<String>::new());

    // SIGHUP with a good file: b now sees c, with a new ETag, no restart.
    std::fs::write(
        &policy,
        r#"{"allow": [{"from": ["tag:a", "tag:b"], "to": ["tag:c"]}]}"#,
    )
    .unwrap();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answer = get(
            &server,
            &format!("/peers?peer_id={}", ids[1]),
            Some(&b_etag),
        );
        if answer.status == 200 {
            assert_eq!(peer_names(&answer), ["c"]);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "SIGHUP never applied");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut c_sees = peer_names(&list(2));
    c_sees.sort();
    assert_eq!(c_sees, ["a", "b"]);

    // The admin reload: a bad file is a 400 naming the problem, the old policy stays.
    std::fs::write(&policy, "not json").unwrap();
    let answer = admin(&server, "POST", "/admin/policy/reload", None);
    assert_eq!(answer.status, 400);
    assert!(error_text(&answer).contains("old policy stays"));
    assert_eq!(peer_names(&list(1)), ["c"]);
    std::fs::write(&policy, r#"{"allow": [{"from": ["*"], "to": ["*"]}]}"#).unwrap();
    let answer = admin(&server, "POST", "/admin/policy/reload", None);
    assert_eq!(answer.status, 200, "{}", answer.json);
    assert_eq!(answer.json["changed"], true);
    assert_eq!(peer_names(&list(0)), ["b", "c"]);
    let changes = audit_lines(&server)
        .iter()
        .filter(|l| l["event"] == "policy_change")
        .count();
    assert!(changes >= 4, "{changes} policy changes audited");
}

#[test]
fn admin_endpoints_take_only_the_admin_secret_and_the_cli_drives_them() {
    let dir = TempDir::new("admin");
    let server = token_server(&dir, &[]);
    // No secret, a wrong one, and a peer's valid MAC: all 401.
    let peer = PrivateKey::generate();
    for headers in [
        vec![],
        vec![("Authorization", "Bearer not-the-secret".to_owned())],
        signed(
            &server,
            &peer,
            "GET",
            "/admin/tokens",
            "",
            SystemTime::now(),
        ),
    ] {
        let answer = send_headers(&server, "GET", "/admin/tokens", "", &headers);
        assert_eq!(answer.status, 401, "{}", answer.json);
    }
    let url = format!("http://{}", server.addr);
    let secret_file = server.dir().join("admin.secret");
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(wgmesh_bin())
            .args(args)
            .args(["--server", &url, "--admin-secret-file"])
            .arg(&secret_file)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, token, err) = cli(&["token", "create", "--uses", "2", "--tag", "tag:ops"]);
    assert_eq!(code, Some(0), "{err}");
    let token = token.trim().to_owned();
    assert!(token.starts_with("wgm_"), "{token}");
    for bad in [
        &["token", "create", "--tag", "ops"][..],
        &["token", "create", "--uses", "0"],
        &["token", "create", "--expires", "0s"],
        &["token", "create", "--expires", "soon"],
    ] {
        let (code, _, err) = cli(bad);
        assert_eq!(code, Some(2), "{bad:?} is a usage error: {err}");
    }
    let key = new_key();
    let reg = register_with_token(&server, &key, "ops1", &token);
    assert_eq!(reg.status, 200, "{}", reg.json);
    let (code, listing, _) = cli(&["token", "list"]);
    assert_eq!(code, Some(0));
    assert!(
        listing.contains("tag:ops") && listing.contains("usable"),
        "{listing}"
    );
    let (code, peers, _) = cli(&["peers", "list"]);
    assert_eq!(code, Some(0));
    assert!(
        peers.contains("ops1") && peers.contains("ops1.mesh") && peers.contains("tag:ops"),
        "{peers}"
    );
    let id = id_of(&reg);
    let (code, _, err) = cli(&["peers", "remove", &id]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = cli(&["peers", "remove", &id]);
    assert_eq!(code, Some(2), "a peer that is gone is a usage error: {err}");
    assert!(err.contains("no peer is called"), "{err}");
    let token_id = listing
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let (code, _, err) = cli(&["token", "revoke", &token_id]);
    assert_eq!(code, Some(0), "{err}");
    // The removed peer needs a new invitation: its (revoked) token no longer works.
    assert_eq!(
        register_with_token(&server, &key, "ops1", &token).status,
        403
    );
    let events: Vec<String> = audit_lines(&server)
        .iter()
        .map(|l| l["event"].as_str().unwrap().to_owned())
        .collect();
    for kind in [
        "token_create",
        "registration",
        "deregistration",
        "token_revoke",
        "auth_failure",
    ] {
        assert!(events.iter().any(|e| e == kind), "{kind} not in {events:?}");
    }
}

#[test]
fn rate_limits_answer_429_with_retry_after_and_change_nothing() {
    let dir = TempDir::new("ratelimit");
    let server = token_server(
        &dir,
        &[
            "--open",
            "--register-limit",
            "3",
            "--auth-failure-limit",
            "2",
        ],
    );
    for i in 0..3 {
        assert_eq!(register(&server, &new_key(), &format!("r{i}")).status, 200);
    }
    let before = disk(&server);
    let limited = register(&server, &new_key(), "r3");
    assert_eq!(limited.status, 429, "{}", limited.json);
    let wait: u64 = limited.retry_after.as_deref().unwrap().parse().unwrap();
    assert!((1..=20).contains(&wait), "Retry-After {wait}");
    assert!(error_text(&limited).contains("too many registrations"));

    // Two failed authentications, then even a well-signed request from there gets 429.
    for _ in 0..2 {
        assert_eq!(
            send_headers(&server, "POST", "/heartbeat", "{}", &[]).status,
            401
        );
    }
    let blocked = send_headers(&server, "POST", "/heartbeat", "{}", &[]);
    assert_eq!(blocked.status, 429);
    assert!(blocked.retry_after.is_some());
    assert!(error_text(&blocked).contains("too many failed authentications"));
    assert_disk_unchanged(&server, &before, "rate-limited requests");
    let mut resp = agent().get(server.url("/metrics")).call().unwrap();
    let text = resp.body_mut().read_to_string().unwrap();
    assert!(text.contains("wgmesh_rate_limited_total 2"), "{text}");
}

#[test]
fn oversize_bodies_are_refused_with_413_and_change_nothing() {
    let dir = TempDir::new("oversize");
    let server = token_server(&dir, &["--open"]);
    assert_eq!(register(&server, &new_key(), "a").status, 200);
    let before = disk(&server);
    let body =
        serde_json::json!({"public_key": new_key(), "hostname": "x".repeat(70_000)}).to_string();
    let answer = post(&server, "/register", &body);
    assert_eq!(answer.status, 413);
    assert_disk_unchanged(&server, &before, "oversize body");
}

#[test]
fn hostile_input_in_every_field_is_rejected_and_nothing_is_stored() {
    let dir = TempDir::new("hostile");
    let server = token_server(
        &dir,
        &[
            "--open",
            "--register-limit",
            "0",
            "--auth-failure-limit",
            "0",
        ],
    );
    let owner = new_key();
    let reg = register(&server, &owner, "owner");
    assert_eq!(reg.status, 200);
    let id = id_of(&reg);
    let before = disk(&server);
    let base = || {
        serde_json::json!({"public_key": new_key(), "hostname": "ok", "os": "linux",
            "listen_port": 51820})
    };
    let with = |field: &str, value: serde_json::Value| {
        let mut body = base();
        body[field] = value;
        body.to_string()
    };
    let long = "a".repeat(300);
    let mut register_bodies: Vec<(String, String)> = Vec::new();
    for (field, values) in [
        (
            "hostname",
            vec![
                serde_json::json!("a;rm -rf /"),
                serde_json::json!("$(reboot)"),
                serde_json::json!("`id`"),
                serde_json::json!("a|b"),
                serde_json::json!("a\nb"),
                serde_json::json!("a\u{0}b"),
                serde_json::json!(long),
                serde_json::json!("hôte"),
                serde_json::json!("a\u{202e}b"),
                serde_json::json!(""),
                serde_json::json!(42),
                serde_json::json!(null),
                serde_json::json!(["a"]),
            ],
        ),
        (
            "os",
            vec![
                serde_json::json!("linux; reboot"),
                serde_json::json!("lin\nux"),
                serde_json::json!("x".repeat(100)),
                serde_json::json!(7),
            ],
        ),
        (
            "endpoint",
            vec![
                serde_json::json!("1.2.3.4:99999"),
                serde_json::json!("1.2.3.4"),
                serde_json::json!("1.2.3.4:51820;ls"),
                serde_json::json!("host.example:51820"),
                serde_json::json!("1.2.3.4:-1"),
                serde_json::json!(51820),
            ],
        ),
        (
            "listen_port",
            vec![
                serde_json::json!(70000),
                serde_json::json!(-1),
                serde_json::json!(1.5),
                serde_json::json!("51820"),
                serde_json::json!(18446744073709551616.0),
            ],
        ),
        (
            "exit_node",
            vec![serde_json::json!("yes"), serde_json::json!(1)],
        ),
        (
            "allowed_ips",
            vec![
                serde_json::json!(["10.0.0.0/8; ls"]),
                serde_json::json!(["10.0.0.0/33"]),
                serde_json::json!(["0.0.0.0/0"]),
                serde_json::json!(["10.100.0.0/24"]),
                serde_json::json!([1]),
                serde_json::json!("192.0.2.0/24"),
                serde_json::json!(vec!["192.0.2.0/24"; 65]),
            ],
        ),
        (
            "public_key",
            vec![
                serde_json::json!("AAAA"),
                serde_json::json!("$(reboot)"),
                serde_json::json!(null),
                serde_json::json!(1),
            ],
        ),
        (
            "token",
            vec![
                serde_json::json!("wgm_\n"),
                serde_json::json!(5),
                serde_json::json!("wgm_$(id)"),
            ],
        ),
        ("surprise", vec![serde_json::json!(1)]),
    ] {
        for value in values {
            register_bodies.push((format!("{field}={value:.40}"), with(field, value)));
        }
    }
    let dup_key = new_key();
    register_bodies.push((
        "duplicate public_key".into(),
        format!(
            r#"{{"public_key":"{dup_key}","public_key":"{}","hostname":"ok"}}"#,
            new_key()
        ),
    ));
    register_bodies.push((
        "duplicate hostname".into(),
        format!(r#"{{"public_key":"{dup_key}","hostname":"ok","hostname":"x;ls"}}"#),
    ));
    register_bodies.push(("not an object".into(), "[1,2]".into()));
    register_bodies.push(("trailing garbage".into(), format!("{}x", base())));
    for (what, body) in &register_bodies {
        let answer = post(&server, "/register", body);
        assert!(
            (400..500).contains(&answer.status),
            "register {what} was accepted: {} {}",
            answer.status,
            answer.json
        );
    }
    let peer_bodies = [
        format!(r#"{{"peer_id":"{id}","endpoint":"1.2.3.4:51820;ls"}}"#),
        format!(r#"{{"peer_id":"{id}","endpoint":"1.2.3.4:0x10"}}"#),
        format!(r#"{{"peer_id":"{id}","peer_id":"peer-0000000000000000"}}"#),
        format!(r#"{{"peer_id":"{id}","extra":true}}"#),
        r#"{"peer_id":"../../etc/passwd"}"#.to_owned(),
        r#"{"peer_id":"peer-0123;ls"}"#.to_owned(),
        r#"{"peer_id":7}"#.to_owned(),
    ];
    for body in &peer_bodies {
        for path in ["/heartbeat", "/deregister"] {
            let key = private_of(&owner).unwrap();
            let answer = send_as(&server, Some(&key), "POST", path, body, &[]);
            assert!(
                (400..500).contains(&answer.status),
                "{path} {body} was accepted: {}",
                answer.status
            );
        }
    }
    for query in ["peer_id=%3Bls", "peer_id=peer-;id", "peer_id=\u{0}"] {
        let path = format!("/peers?{}", query.replace('\u{0}', "%00"));
        let key = private_of(&owner).unwrap();
        let answer = send_as(&server, Some(&key), "GET", &path, "", &[]);
        assert!((400..500).contains(&answer.status), "{path}");
    }
    // Hostile values in the signature headers themselves.
    let owner_private = private_of(&owner).unwrap();
    let hb = format!(r#"{{"peer_id":"{id}"}}"#);
    let good = signed(
        &server,
        &owner_private,
        "POST",
        "/heartbeat",
        &hb,
        SystemTime::now(),
    );
    let zero_key = base64_of(&[0u8; 32]);
    for (header, value) in [
        (auth::KEY_HEADER, "$(reboot)".to_owned()),
        (auth::KEY_HEADER, zero_key.clone()),
        (auth::KEY_HEADER, "A".repeat(5000)),
        (auth::TIMESTAMP_HEADER, "99999999999999999999999".to_owned()),
        (auth::TIMESTAMP_HEADER, "-1".to_owned()),
        (auth::TIMESTAMP_HEADER, "1e9".to_owned()),
        (auth::TIMESTAMP_HEADER, "１２３".to_owned()),
        (auth::NONCE_HEADER, "AAAA".to_owned()),
        (auth::NONCE_HEADER, "`id`".to_owned()),
        (auth::MAC_HEADER, "%%%".to_owned()),
        (auth::MAC_HEADER, String::new()),
    ] {
        let mut headers = good.clone();
        headers.iter_mut().find(|(n, _)| *n == header).unwrap().1 = value.clone();
        let answer = send_headers(&server, "POST", "/heartbeat", &hb, &headers);
        assert_eq!(answer.status, 401, "{header}: {value:.40}: {}", answer.json);
    }
    // A low-order key's MAC key is computable by anyone: refused even when "signed".
    let weak = serde_json::json!({"public_key": zero_key, "hostname": "weak"}).to_string();
    let mut headers = signed(
        &server,
        stranger(),
        "POST",
        "/register",
        &weak,
        SystemTime::now(),
    );
    headers[0].1 = zero_key;
    let answer = send_headers(&server, "POST", "/register", &weak, &headers);
    assert_eq!(answer.status, 401, "{}", answer.json);

    assert_disk_unchanged(&server, &before, "hostile input");
    // The owner's record is as it was: nothing hostile reached what peers are told.
    let other = new_key();
    let o = register(&server, &other, "other");
    let list = get(&server, &format!("/peers?peer_id={}", id_of(&o)), None);
    assert_eq!(peer_names(&list), ["owner"]);
    assert_eq!(list.json["peers"][0]["endpoint"], "127.0.0.1:51820");
}

#[test]
fn soak_hundreds_of_idle_connections_do_not_stop_heartbeats() {
    let dir = TempDir::new("soak");
    let server = token_server(&dir, &["--open", "--threads", "2", "--idle-timeout", "60"]);
    let key = new_key();
    let id = id_of(&register(&server, &key, "alive"));
    // Three hundred connections that connect and then say nothing (and a few that send half a
    // request line), held open for the whole test.
    let mut idle = Vec::new();
    for i in 0..300 {
        let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
        if i % 10 == 0 {
            use std::io::Write;
            stream
                .write_all(b"POST /heartbeat HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
        }
        idle.push(stream);
    }
    let started = std::time::Instant::now();
    let mut answered = 0;
    while started.elapsed() < Duration::from_secs(5) {
        let t = std::time::Instant::now();
        let hb = post(&server, "/heartbeat", &format!(r#"{{"peer_id":"{id}"}}"#));
        assert_eq!(hb.status, 200, "{}", hb.json);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "a heartbeat took {:?} with 300 idle connections",
            t.elapsed()
        );
        answered += 1;
    }
    assert!(answered >= 20, "only {answered} heartbeats in 5 s");
    let health = get(&server, "/healthz", None);
    assert_eq!(health.status, 200);
    drop(idle);
}

/// A man in the middle on plain HTTP: forwards each request to `target` over a fresh
/// connection and lets `tamper` rewrite the answer's head and body (request line given).
fn man_in_the_middle(
    target: std::net::SocketAddr,
    tamper: impl Fn(&str, &mut Vec<String>, &mut Vec<u8>) + Send + Sync + 'static,
) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    fn read_message(stream: &mut std::net::TcpStream) -> Option<(Vec<String>, Vec<u8>)> {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).ok()? == 0 {
                return None;
            }
            buf.push(byte[0]);
        }
        let head: Vec<String> = String::from_utf8_lossy(&buf)
            .split("\r\n")
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        let len = head
            .iter()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body).ok()?;
        Some((head, body))
    }
    fn write_message(stream: &mut std::net::TcpStream, head: &[String], body: &[u8]) {
        let mut out = String::new();
        out.push_str(&head[0]);
        out.push_str("\r\n");
        for line in &head[1..] {
            let name = line.split(':').next().unwrap_or("").to_ascii_lowercase();
            if name != "content-length" && name != "connection" {
                out.push_str(line);
                out.push_str("\r\n");
            }
        }
        out.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        ));
        let _ = stream.write_all(out.as_bytes());
        let _ = stream.write_all(body);
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let tamper = std::sync::Arc::new(tamper);
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { break };
            let tamper = tamper.clone();
            std::thread::spawn(move || {
                let Some((head, body)) = read_message(&mut client) else {
                    return;
                };
                let mut upstream = std::net::TcpStream::connect(target).unwrap();
                write_message(&mut upstream, &head, &body);
                let Some((mut rhead, mut rbody)) = read_message(&mut upstream) else {
                    return;
                };
                tamper(&head[0], &mut rhead, &mut rbody);
                write_message(&mut client, &rhead, &rbody);
            });
        }
    });
    addr
}

fn dry_sync(
    proxy: std::net::SocketAddr,
    config: &std::path::Path,
    extra: &[&str],
) -> (i32, String) {
    let out = std::process::Command::new(wgmesh_bin())
        .args(["sync", "--dry-run", "--os", "linux", "--hostname", "victim"])
        .args(["--server", &format!("http://{proxy}"), "--config"])
        .arg(config)
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_agent_refuses_answers_a_man_in_the_middle_forged_or_stripped() {
    let dir = TempDir::new("mitm");
    let server = token_server(&dir, &["--open"]);
    assert_eq!(register(&server, &new_key(), "honest").status, 200);
    let target = server.addr;

    // Passing everything through works (and pins the server key on first use): the
    // machine registers through the proxy as a first real run does, then a dry run syncs.
    let clean = man_in_the_middle(target, |_, _, _| {});
    let config = dir.path().join("client.json");
    join(&config, &[format!("http://{clean}")], "victim", None, None);
    let (code, err) = dry_sync(clean, &config, &[]);
    assert_eq!(code, 0, "{err}");
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    assert_eq!(
        saved["assignment"]["server_public_key"],
        server.public_key().to_base64().as_str()
    );

    // A forged peer list (an endpoint the attacker controls) is refused: exit 3.
    let forge = man_in_the_middle(target, |line, _, body| {
        if line.starts_with("GET /peers") {
            let text =
                String::from_utf8_lossy(body).replace("127.0.0.1:51820", "203.0.113.66:51820");
            *body = text.into_bytes();
        }
    });
    let (code, err) = dry_sync(forge, &config, &[]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("unauthenticated answer"), "{err}");

    // So is the genuine list with its MAC stripped.
    let strip = man_in_the_middle(target, |line, head, _| {
        if line.starts_with("GET /peers") {
            head.retain(|h| !h.to_ascii_lowercase().starts_with("x-wgmesh-response-mac"));
        }
    });
    let (code, err) = dry_sync(strip, &config, &[]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("response MAC does not match"), "{err}");

    // A wrong --server-key up front: nothing is believed, not even the registration.
    let fresh = dir.path().join("fresh.json");
    let wrong = PrivateKey::generate().public_key().to_base64();
    let (code, err) = dry_sync(clean, &fresh, &["--server-key", &wrong]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("unauthenticated answer"), "{err}");
    let (code, err) = dry_sync(
        clean,
        &fresh,
        &["--server-key", &server.public_key().to_base64()],
    );
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_corrupt_token_file_stops_the_server_and_is_left_untouched() {
    let dir = TempDir::new("badtokens");
    let tokens = dir.path().join("tokens.json");
    std::fs::write(&tokens, b"{\"tokens\": [").unwrap();
    let Err((code, log)) = ServerProcess::try_start(&dir.path().join("peers.json"), &[]) else {
        panic!("server started on a corrupt token file");
    };
    assert_ne!(code, Some(0));
    assert!(log.join("\n").contains("tokens.json"), "{log:?}");
    assert_eq!(std::fs::read(&tokens).unwrap(), b"{\"tokens\": [");
}

#[test]
fn the_agent_takes_its_token_from_a_file_or_the_environment() {
    let dir = TempDir::new("tokensrc");
    let server = token_server(&dir, &[]);
    let (token, _) = server.create_token(serde_json::json!({"uses": 2}));
    let url = format!("http://{}", server.addr);
    let sync = |config: &str, token_file: Option<&std::path::Path>, env: Option<&str>| {
        let mut cmd = std::process::Command::new(wgmesh_bin());
        cmd.args(["sync", "--dry-run", "--os", "linux", "--server", &url])
            .arg("--config")
            .arg(dir.path().join(config))
            .env_remove("WGMESH_TOKEN");
        if let Some(file) = token_file {
            cmd.arg("--token-file").arg(file);
        }
        if let Some(value) = env {
            cmd.env("WGMESH_TOKEN", value);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    // A dry run registers nothing; what it prints says whether a token was found.
    let (code, out) = sync("none.json", None, None);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("without a join token"), "{out}");
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    let (code, out) = sync("file.json", Some(&file), None);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("with the join token given"), "{out}");
    let (code, out) = sync("env.json", None, Some(&token));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("with the join token given"), "{out}");
    let (code, out) = sync("missing.json", Some(&dir.path().join("no-such-file")), None);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("cannot read --token-file"), "{out}");
    // Nothing was registered and no use spent (first_run.rs registers with a token file
    // for real, in a namespace).
    let tokens = admin(&server, "GET", "/admin/tokens", None);
    assert_eq!(tokens.json["tokens"][0]["uses_left"], 2, "{}", tokens.json);
}

#[test]
fn a_changed_server_key_is_refused_until_the_operator_re_pins_it() {
    let dir = TempDir::new("repin");
    let server = token_server(&dir, &["--open"]);
    let config = dir.path().join("client.json");
    join(
        &config,
        &[format!("http://{}", server.addr)],
        "victim",
        None,
        None,
    );
    let (code, err) = dry_sync(server.addr, &config, &[]);
    assert_eq!(code, 0, "{err}");
    // Pretend the server key was replaced since: the pinned key no longer matches.
    let mut saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    let old = PrivateKey::generate().public_key().to_base64();
    saved["assignment"]["server_public_key"] = old.clone().into();
    std::fs::write(&config, serde_json::to_vec(&saved).unwrap()).unwrap();
    let (code, err) = dry_sync(server.addr, &config, &[]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("unauthenticated answer"), "{err}");
    let real = server.public_key().to_base64();
    let (code, err) = dry_sync(server.addr, &config, &["--server-key", &real]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("replaces the pinned server key"), "{err}");
    // A dry run keeps nothing, not even a new pin; a real run does (here the library's
    // first step, which saves the config as `up` and `sync` do).
    let (code, err) = dry_sync(server.addr, &config, &[]);
    assert_eq!(code, 3, "a dry run wrote the new pin: {err}");
    wgmesh::agent::run::setup::engine(wgmesh::agent::run::setup::Overrides {
        config: Some(config.clone()),
        server_key: Some(server.public_key()),
        os: Some(wgmesh::os::TargetOs::Linux),
        ..Default::default()
    })
    .unwrap();
    let (code, err) = dry_sync(server.addr, &config, &[]);
    assert_eq!(code, 0, "the new pin was kept: {err}");
}

/// A deregistration captured on the wire and replayed byte for byte after the server
/// restarted (within the 120 s timestamp window) is refused and removes nothing; requests
/// signed after the restart pass. Before the fix it answered 200 and removed the peer.
#[test]
fn a_deregistration_captured_before_a_restart_is_refused_after_it() {
    let dir = TempDir::new("restart-replay");
    let server = token_server(&dir, &["--open"]);
    let key = new_key();
    let a = register(&server, &key, "a");
    assert_eq!(a.status, 200, "{}", a.json);
    let id = id_of(&a);
    let private = private_of(&key).unwrap();
    let server_key = server.public_key();
    let body = format!(r#"{{"peer_id":"{id}"}}"#);
    let captured = raw_signed_request(
        &server_key,
        &private,
        ("POST", "/deregister", &body),
        SystemTime::now(),
    );
    let (status, json) = raw_exchange(server.addr, &captured);
    assert_eq!(status, 200, "{json}");
    // The peer comes back (a new registration), then the server restarts.
    assert_eq!(register(&server, &key, "a").status, 200);
    let state = server.state.clone();
    assert!(server.stop().success());
    let server = ServerProcess::start(&state, &["--sweep-interval", "3600", "--open"]);
    let (status, json) = raw_exchange(server.addr, &captured);
    assert_eq!(status, 401, "the replay was accepted: {json}");
    let why = json["error"].as_str().unwrap_or_default();
    assert!(why.contains("before the server restarted"), "{json}");
    // Still registered: a heartbeat signed now finds it.
    let later = SystemTime::now() + Duration::from_secs(2);
    let heartbeat = raw_signed_request(&server_key, &private, ("POST", "/heartbeat", &body), later);
    let (status, json) = raw_exchange(server.addr, &heartbeat);
    assert_eq!(status, 200, "the replay removed the peer: {json}");
    // A deregistration signed after the restart is accepted.
    let fresh = raw_signed_request(&server_key, &private, ("POST", "/deregister", &body), later);
    let (status, json) = raw_exchange(server.addr, &fresh);
    assert_eq!(status, 200, "{json}");
}

/// A request stamped more than 30 s before its key's newest accepted one is refused saying
/// what is wrong: its timestamp, not a used nonce.
#[test]
fn a_request_stamped_long_before_its_keys_newest_is_refused_for_its_timestamp() {
    let dir = TempDir::new("out-of-order");
    let server = token_server(&dir, &["--open"]);
    let key = new_key();
    let a = register(&server, &key, "a");
    let body = format!(r#"{{"peer_id":"{}"}}"#, id_of(&a));
    let private = private_of(&key).unwrap();
    let now = SystemTime::now();
    for (at, status) in [
        (now + Duration::from_secs(1), 200),
        (now - Duration::from_secs(40), 401),
    ] {
        let request = raw_signed_request(
            &server.public_key(),
            &private,
            ("POST", "/heartbeat", &body),
            at,
        );
        let (got, json) = raw_exchange(server.addr, &request);
        assert_eq!(got, status, "{json}");
        if status == 401 {
            let why = json["error"].as_str().unwrap_or_default();
            assert!(why.contains("timestamp is 41 s older"), "{json}");
            assert!(!why.contains("nonce"), "{json}");
        }
    }
}
