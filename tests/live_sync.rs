//! Live sync over the real server binary: `/peers` versions, `since` deltas (and the full
//! list when a version cannot be answered), long-polls, `POST /offline`, timeouts reaching
//! long-polls, and policy reloads seen through deltas.

mod common;

use common::*;
use std::time::{Duration, Instant};

fn id_of(answer: &Answer) -> String {
    answer.json["peer_id"].as_str().unwrap().to_owned()
}

fn version_of(answer: &Answer) -> u64 {
    answer.json["version"]
        .as_u64()
        .unwrap_or_else(|| panic!("no version in {}", answer.json))
}

fn ids(list: &serde_json::Value) -> Vec<String> {
    let mut v: Vec<String> = list
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {list}"))
        .iter()
        .map(|p| p["id"].as_str().or(p.as_str()).unwrap().to_owned())
        .collect();
    v.sort();
    v
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn since(server: &ServerProcess, id: &str, version: u64, wait: Option<u64>) -> Answer {
    let mut path = format!("/peers?peer_id={id}&since={version}");
    if let Some(w) = wait {
        path.push_str(&format!("&wait={w}"));
    }
    let answer = get(server, &path, None);
    assert_eq!(answer.status, 200, "{}", answer.json);
    assert!(answer.signed, "live answers are signed");
    answer
}

fn heartbeat(server: &ServerProcess, id: &str, endpoint: Option<&str>) -> Answer {
    let mut body = serde_json::json!({"peer_id": id});
    if let Some(e) = endpoint {
        body["endpoint"] = e.into();
    }
    post(server, "/heartbeat", &body.to_string())
}

#[test]
fn peers_carries_a_version_and_since_answers_only_what_changed() {
    let dir = TempDir::new("since");
    let server = ServerProcess::start(&dir.path().join("peers.json"), &["--open"]);
    let a = id_of(&register(&server, &new_key(), "a"));
    let b = id_of(&register(&server, &new_key(), "b"));
    let full = get(&server, &format!("/peers?peer_id={a}"), None);
    assert_eq!(full.json["success"], true);
    let v1 = version_of(&full);
    assert_eq!(ids(&full.json["peers"]), vec![b.clone()]);

    // Nothing changed: an empty delta at the same version.
    let same = since(&server, &a, v1, None);
    assert_eq!(
        same.json,
        serde_json::json!({"success": true, "version": v1, "full": false, "changed": [], "removed": []})
    );

    // A new peer and an endpoint change: both, and only them, as entries like /peers has.
    let c = id_of(&register(&server, &new_key(), "c"));
    assert_eq!(heartbeat(&server, &b, Some("198.18.0.2:51820")).status, 200);
    let delta = since(&server, &a, v1, None);
    assert_eq!(delta.json["full"], false);
    assert_eq!(
        ids(&delta.json["changed"]),
        sorted(vec![b.clone(), c.clone()])
    );
    assert_eq!(delta.json["removed"], serde_json::json!([]));
    let v2 = version_of(&delta);
    assert!(v2 > v1);
    let b_entry = delta.json["changed"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == b.as_str())
        .unwrap()
        .clone();
    let listed = get(&server, &format!("/peers?peer_id={a}"), None);
    assert_eq!(version_of(&listed), v2);
    let listed_b = listed.json["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == b.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        b_entry, listed_b,
        "a delta entry is exactly the /peers entry"
    );
    assert_eq!(b_entry["endpoint"], "198.18.0.2:51820");

    // The caller's own changes never show up in its own delta.
    let mine = since(&server, &c, v2, None);
    assert_eq!(mine.json["changed"], serde_json::json!([]));
    assert!(heartbeat(&server, &c, Some("198.18.0.3:51820")).status == 200);
    let mine = since(&server, &c, v2, None);
    assert_eq!(mine.json["changed"], serde_json::json!([]));
    let theirs = since(&server, &a, v2, None);
    assert_eq!(ids(&theirs.json["changed"]), vec![c.clone()]);

    // A departure (deregistration) is `removed`.
    let v3 = version_of(&theirs);
    assert_eq!(
        post(
            &server,
            "/deregister",
            &serde_json::json!({"peer_id": b}).to_string()
        )
        .status,
        200
    );
    let gone = since(&server, &a, v3, None);
    assert_eq!(gone.json["removed"], serde_json::json!([b]));
    assert_eq!(gone.json["changed"], serde_json::json!([]));
}

#[test]
fn unknown_versions_and_restarts_get_the_full_list() {
    let dir = TempDir::new("since-full");
    let state = dir.path().join("peers.json");
    let server = ServerProcess::start(&state, &["--open"]);
    let a = id_of(&register(&server, &new_key(), "a"));
    let b = id_of(&register(&server, &new_key(), "b"));
    let v = version_of(&get(&server, &format!("/peers?peer_id={a}"), None));
    for unknown in [0, 1, v + 1_000] {
        let full = since(&server, &a, unknown, None);
        assert_eq!(full.json["full"], true, "since={unknown}: {}", full.json);
        assert_eq!(ids(&full.json["peers"]), vec![b.clone()]);
        assert_eq!(version_of(&full), v);
    }
    drop(server);
    // After a restart every old version is older than anything the new process knows.
    let server = ServerProcess::start(&state, &["--open"]);
    let full = since(&server, &a, v, None);
    assert_eq!(full.json["full"], true, "{}", full.json);
    assert_eq!(ids(&full.json["peers"]), [b]);
    assert!(
        version_of(&full) > v,
        "versions keep growing across restarts"
    );
}

#[test]
fn bad_since_or_wait_is_a_400_naming_it() {
    let dir = TempDir::new("since-bad");
    let server = ServerProcess::start(&dir.path().join("peers.json"), &["--open"]);
    let a = id_of(&register(&server, &new_key(), "a"));
    for (query, needle) in [
        (format!("peer_id={a}&since=abc"), "`since`"),
        (format!("peer_id={a}&wait=5"), "needs `since`"),
        (format!("peer_id={a}&since=1&wait=61"), "at most 60"),
    ] {
        let answer = get(&server, &format!("/peers?{query}"), None);
        assert_eq!(answer.status, 400, "{query}: {}", answer.json);
        assert!(
            answer.json["error"].as_str().unwrap().contains(needle),
            "{query}: {}",
            answer.json
        );
    }
}

#[test]
fn a_long_poll_answers_soon_after_a_change_or_empty_when_its_time_runs_out() {
    let dir = TempDir::new("longpoll");
    let server = ServerProcess::start(&dir.path().join("peers.json"), &["--open"]);
    let a = id_of(&register(&server, &new_key(), "a"));
    let v = version_of(&get(&server, &format!("/peers?peer_id={a}"), None));

    let started = Instant::now();
    let empty = since(&server, &a, v, Some(1));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "held for its wait"
    );
    assert_eq!(empty.json["changed"], serde_json::json!([]));
    assert_eq!(version_of(&empty), v);

    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            let answer = since(&server, &a, v, Some(8));
            tx.send((Instant::now(), answer)).unwrap();
        });
        std::thread::sleep(Duration::from_millis(500));
        let key = new_key();
        let joined = Instant::now();
        let b = id_of(&register(&server, &key, "b"));
        let (answered, answer) = rx.recv_timeout(Duration::from_secs(9)).unwrap();
        assert_eq!(ids(&answer.json["changed"]), [b]);
        // Generous bound for a shared machine; `just bench` measures the real figure.
        assert!(
            answered.duration_since(joined) < Duration::from_secs(2),
            "long-poll answered {:?} after the change",
            answered.duration_since(joined)
        );
    });
}

#[test]
fn going_offline_on_purpose_drops_a_peer_at_once_and_keeps_its_address() {
    let dir = TempDir::new("offline");
    let server = ServerProcess::start(&dir.path().join("peers.json"), &["--open"]);
    let a = id_of(&register(&server, &new_key(), "a"));
    let b_key = new_key();
    let b_reg = register(&server, &b_key, "b");
    let b = id_of(&b_reg);
    let v = version_of(&get(&server, &format!("/peers?peer_id={a}"), None));
    std::thread::scope(|s| {
        let waiting = s.spawn(|| since(&server, &a, v, Some(8)));
        std::thread::sleep(Duration::from_millis(300));
        let off = post(
            &server,
            "/offline",
            &serde_json::json!({"peer_id": b}).to_string(),
        );
        assert_eq!(off.status, 200, "{}", off.json);
        assert!(off.signed);
        let answer = waiting.join().unwrap();
        assert_eq!(answer.json["removed"], serde_json::json!([b]));
    });
    assert!(ids(&get(&server, &format!("/peers?peer_id={a}"), None).json["peers"]).is_empty());
    // Someone else cannot take it offline; an unknown id is a 404.
    let wrong = send_as(
        &server,
        Some(&private_of_id(&a).unwrap()),
        "POST",
        "/offline",
        &serde_json::json!({"peer_id": b}).to_string(),
        &[],
    );
    assert_eq!(wrong.status, 401, "{}", wrong.json);
    assert_eq!(
        post(
            &server,
            "/offline",
            r#"{"peer_id": "peer-0123456789abcdef"}"#
        )
        .status,
        404
    );
    assert_eq!(send(&server, "GET", "/offline", "").status, 405);
    // Coming back: the same address, listed again.
    let again = register(&server, &b_key, "b");
    assert_eq!(again.json["assigned_ip"], b_reg.json["assigned_ip"]);
    assert_eq!(
        ids(&get(&server, &format!("/peers?peer_id={a}"), None).json["peers"]),
        [b]
    );
}

#[test]
fn a_silent_peer_leaves_long_polls_soon_after_its_timeout() {
    let dir = TempDir::new("timeout");
    let server = ServerProcess::start(
        &dir.path().join("peers.json"),
        &[
            "--open",
            "--heartbeat-timeout",
            "2",
            "--sweep-interval",
            "60",
        ],
    );
    let a = id_of(&register(&server, &new_key(), "a"));
    let b = id_of(&register(&server, &new_key(), "b"));
    let registered = Instant::now();
    let mut v = version_of(&get(&server, &format!("/peers?peer_id={a}"), None));
    // Keep a alive while waiting for b to time out.
    let removed_at = loop {
        assert!(
            registered.elapsed() < Duration::from_secs(20),
            "b never timed out"
        );
        assert_eq!(heartbeat(&server, &a, None).status, 200);
        let answer = since(&server, &a, v, Some(1));
        v = version_of(&answer);
        if answer.json["removed"] == serde_json::json!([b]) {
            break registered.elapsed();
        }
    };
    // Timeout 2 s plus a sweep every second, whatever --sweep-interval says.
    assert!(
        removed_at < Duration::from_secs(6),
        "dropped after {removed_at:?}"
    );
}

#[test]
fn a_policy_reload_reaches_deltas_as_peers_entering_and_leaving_the_view() {
    let dir = TempDir::new("live-policy");
    let policy = dir.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"allow": [{"from": ["tag:a"], "to": ["tag:c"]}]}"#,
    )
    .unwrap();
    let server = ServerProcess::start(
        &dir.path().join("peers.json"),
        &[
            "--sweep-interval",
            "3600",
            "--policy",
            policy.to_str().unwrap(),
        ],
    );
    let mut ids_by_name = Vec::new();
    for name in ["a", "b", "c"] {
        let (token, _) = server.create_token(serde_json::json!({"tags": [format!("tag:{name}")]}));
        let answer = register_with_token(&server, &new_key(), name, &token);
        assert_eq!(answer.status, 200, "{}", answer.json);
        ids_by_name.push(id_of(&answer));
    }
    let [a, b, c] = [&ids_by_name[0], &ids_by_name[1], &ids_by_name[2]];
    let va = version_of(&get(&server, &format!("/peers?peer_id={a}"), None));
    let vb = version_of(&get(&server, &format!("/peers?peer_id={b}"), None));
    std::fs::write(
        &policy,
        r#"{"allow": [{"from": ["tag:a"], "to": ["tag:b"]}]}"#,
    )
    .unwrap();
    std::thread::scope(|s| {
        let waiting = s.spawn(|| since(&server, b, vb, Some(8)));
        std::thread::sleep(Duration::from_millis(300));
        let reload = admin(&server, "POST", "/admin/policy/reload", None);
        assert_eq!(reload.status, 200, "{}", reload.json);
        // b sees a for the first time: woken, a is in `changed`.
        let answer = waiting.join().unwrap();
        assert_eq!(ids(&answer.json["changed"]), vec![a.clone()]);
    });
    // a lost c and gained b.
    let delta = since(&server, a, va, None);
    assert_eq!(delta.json["full"], false);
    assert_eq!(ids(&delta.json["changed"]), vec![b.clone()]);
    assert_eq!(delta.json["removed"], serde_json::json!([c]));
    // And c lost a.
    let vc_old = va; // c's list at the same version showed a
    let delta = since(&server, c, vc_old, None);
    assert_eq!(delta.json["removed"], serde_json::json!([a]));
    assert_eq!(delta.json["changed"], serde_json::json!([]));
}

#[test]
fn parked_long_polls_hold_no_handler_thread() {
    // One handler thread, fifty long-polls held: heartbeats and registrations still go
    // through at once, and one change answers every poll.
    let dir = TempDir::new("parked");
    let server = ServerProcess::start(
        &dir.path().join("peers.json"),
        &["--open", "--threads", "1"],
    );
    let pollers: Vec<String> = (0..50)
        .map(|i| id_of(&register(&server, &new_key(), &format!("p{i}"))))
        .collect();
    let v = version_of(&get(
        &server,
        &format!("/peers?peer_id={}", pollers[0]),
        None,
    ));
    std::thread::scope(|s| {
        let waiting: Vec<_> = pollers
            .iter()
            .map(|id| s.spawn(|| since(&server, id, v, Some(8))))
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        let started = Instant::now();
        assert_eq!(heartbeat(&server, &pollers[0], None).status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "a heartbeat waited"
        );
        let newcomer = id_of(&register(&server, &new_key(), "late"));
        for poll in waiting {
            let answer = poll.join().unwrap();
            assert_eq!(ids(&answer.json["changed"]), vec![newcomer.clone()]);
        }
    });
}
