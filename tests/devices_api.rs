//! Devices on the API (issue 23), against real server processes on loopback: the operator's
//! `/admin/devices` (add with a generated or an own key, list, show, remove, every refusal
//! with its status and reason, audited), the device in other nodes' `/peers` with `via`, the
//! gateway's signed `GET /devices` with what the policy lets each device reach, the device
//! surviving a restart, and the generated private key in no file the server writes. The
//! same on two replicas sharing PostgreSQL.

mod common;

use common::postgres::PgCluster;
use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

fn register_gateway(
    server: &ServerProcess,
    key: &str,
    hostname: &str,
    port: Option<u16>,
) -> String {
    let mut body = serde_json::json!({"public_key": key, "hostname": hostname, "os": "linux",
        "listen_port": 51820});
    if let Some(port) = port {
        body["gateway_port"] = port.into();
    }
    let answer = post(server, "/register", &body.to_string());
    assert_eq!(answer.status, 200, "{}", answer.json);
    answer.json["peer_id"].as_str().unwrap().to_owned()
}

fn add(server: &ServerProcess, body: serde_json::Value) -> Answer {
    admin(server, "POST", "/admin/devices", Some(body))
}

/// Every file under `dir` holding `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if std::fs::read(&path)
            .map(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
            .unwrap_or(false)
        {
            found.push(path.display().to_string());
        }
    }
    found
}

#[test]
fn devices_are_added_listed_shown_routed_and_removed_and_their_generated_key_is_never_stored() {
    let dir = TempDir::new("devices-api");
    let state = dir.path().join("peers.json");
    let policy = dir.path().join("policy.json");
    std::fs::write(&policy, r#"{"allow": [{"from": ["*"], "to": ["*"]}]}"#).unwrap();
    let policy_arg = policy.display().to_string();
    let server = ServerProcess::start(&state, &["--open", "--policy", &policy_arg]);
    let (gw, plain) = (new_key(), new_key());
    let gw_id = register_gateway(&server, &gw, "gw", Some(51821));
    let plain_id = register_gateway(&server, &plain, "plain", None);

    // Refusals, each with its status and reason; nothing is stored for any of them.
    let refusals = [
        (
            serde_json::json!({"name": "Bad_Name", "via": "gw"}),
            400,
            "field `name`",
        ),
        (
            serde_json::json!({"name": "p", "via": "nobody"}),
            404,
            "no peer is called nobody",
        ),
        (
            serde_json::json!({"name": "p", "via": "plain"}),
            400,
            "up --gateway",
        ),
        (
            serde_json::json!({"name": "plain", "via": "gw"}),
            409,
            "taken",
        ),
        (
            serde_json::json!({"name": "p", "via": "gw", "public_key": plain}),
            409,
            "registered already",
        ),
        (
            serde_json::json!({"name": "p", "via": "gw", "exit": true}),
            400,
            "not an exit node",
        ),
    ];
    for (body, status, why) in refusals {
        let answer = add(&server, body.clone());
        assert_eq!(answer.status, status, "{body}: {}", answer.json);
        assert!(
            answer.json["error"].as_str().unwrap().contains(why),
            "{}",
            answer.json
        );
    }
    let no_secret = send_as(&server, None, "GET", "/admin/devices", "", &[]);
    assert_eq!(no_secret.status, 401);
    let wrong = admin(&server, "PUT", "/admin/devices", None);
    assert_eq!(wrong.status, 405);

    // A generated key: the answer holds the private key once.
    let phone = add(
        &server,
        serde_json::json!({"name": "phone", "via": "gw", "tags": ["tag:phone"]}),
    );
    assert_eq!(phone.status, 200, "{}", phone.json);
    let private = phone.json["private_key"].as_str().unwrap().to_owned();
    let phone_key = phone.json["device"]["public_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let derived = wgmesh::keys::PrivateKey::from_base64(&private)
        .unwrap()
        .public_key();
    assert_eq!(derived.to_base64(), phone_key);
    assert_eq!(phone.json["config"]["endpoint"], "127.0.0.1:51821");
    assert_eq!(phone.json["device"]["via_name"], "gw");
    // An own key: no private key in the answer.
    let own = new_key();
    let tablet = add(
        &server,
        serde_json::json!({"name": "tablet", "via": gw_id, "public_key": own}),
    );
    assert_eq!(tablet.status, 200, "{}", tablet.json);
    assert!(tablet.json.get("private_key").is_none(), "{}", tablet.json);

    // Other nodes see the device with `via` and its name; the gateway gets both devices
    // with what each may reach.
    let list = get(&server, &format!("/peers?peer_id={plain_id}"), None);
    let entry = list.json["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["dns_name"] == "phone")
        .cloned()
        .unwrap_or_else(|| panic!("{}", list.json));
    assert_eq!(entry["via"], gw_id.as_str());
    let path = format!("/devices?peer_id={gw_id}");
    let devices = send_as(&server, private_of(&gw).as_ref(), "GET", &path, "", &[]);
    assert_eq!(devices.status, 200, "{}", devices.json);
    assert!(devices.signed, "the gateway's answer is signed");
    let names: Vec<&str> = devices.json["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["phone", "tablet"]);
    let reach = devices.json["devices"][0]["reach"].to_string();
    assert!(
        reach.contains(list.json["peers"][0]["virtual_ip"].as_str().unwrap()),
        "{reach}"
    );
    // A device's key cannot register as a node.
    let body = serde_json::json!({"public_key": phone_key, "hostname": "sneaky", "os": "linux"});
    let signer = wgmesh::keys::PrivateKey::from_base64(&private).unwrap();
    let as_node = send_as(
        &server,
        Some(&signer),
        "POST",
        "/register",
        &body.to_string(),
        &[],
    );
    assert_eq!(as_node.status, 409, "{}", as_node.json);

    // Listed, shown with a placeholder key, and kept across a restart.
    let listed = admin(&server, "GET", "/admin/devices", None);
    assert_eq!(
        listed.json["devices"].as_array().unwrap().len(),
        2,
        "{}",
        listed.json
    );
    assert_eq!(server.stop().code(), Some(0));
    let server = ServerProcess::start(&state, &["--open", "--policy", &policy_arg]);
    let shown = admin(&server, "GET", "/admin/devices/phone", None);
    assert_eq!(shown.status, 200, "{}", shown.json);
    assert_eq!(shown.json["device"]["public_key"], phone_key.as_str());
    assert!(shown.json.get("private_key").is_none());

    // The private key is nowhere the server writes; the audit log has the addition.
    assert_eq!(files_containing(dir.path(), &private), Vec::<String>::new());
    let audit = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    assert!(
        audit.contains("\"device_add\"") && audit.contains("not stored"),
        "{audit}"
    );

    let removed = admin(&server, "DELETE", "/admin/devices/phone", None);
    assert_eq!(removed.status, 200, "{}", removed.json);
    assert_eq!(
        admin(&server, "GET", "/admin/devices/phone", None).status,
        404
    );
    assert_eq!(
        admin(&server, "DELETE", "/admin/devices/phone", None).status,
        404
    );
    let audit = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    assert!(audit.contains("\"device_remove\""), "{audit}");
}

#[test]
fn a_device_added_on_one_replica_is_listed_and_removed_on_the_other_and_never_times_out() {
    let pg = PgCluster::start();
    let dir = TempDir::new("devices-replicas");
    let replica = |name: &str| {
        let state = dir.path().join(name).join("peers.json");
        std::fs::create_dir_all(state.parent().unwrap()).unwrap();
        ServerProcess::start(
            &state,
            &[
                "--store",
                &pg.url(),
                "--open",
                "--heartbeat-timeout",
                "2",
                "--sweep-interval",
                "1",
            ],
        )
    };
    let (a, b) = (replica("a"), replica("b"));
    let gw = new_key();
    register_gateway(&a, &gw, "gw", Some(51821));
    let phone = add(&a, serde_json::json!({"name": "phone", "via": "gw"}));
    assert_eq!(phone.status, 200, "{}", phone.json);
    let private = phone.json["private_key"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let shown = admin(&b, "GET", "/admin/devices/phone", None);
        if shown.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B never saw the device: {}",
            shown.json
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Past the heartbeat timeout the gateway is offline, the device (which never
    // heartbeats) still listed.
    std::thread::sleep(Duration::from_secs(5));
    let peers = admin(&b, "GET", "/admin/peers", None);
    let device = peers.json["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["dns_name"] == "phone")
        .cloned()
        .unwrap();
    assert_eq!(device["online"], true, "{device}");
    let removed = admin(&b, "DELETE", "/admin/devices/phone", None);
    assert_eq!(removed.status, 200, "{}", removed.json);
    let deadline = Instant::now() + Duration::from_secs(5);
    while admin(&a, "GET", "/admin/devices/phone", None).status != 404 {
        assert!(Instant::now() < deadline, "A still has the removed device");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(files_containing(dir.path(), &private), Vec::<String>::new());
}

#[test]
fn a_device_through_an_exit_gateway_routes_everything_there_only_when_asked() {
    let dir = TempDir::new("devices-exit");
    let server = ServerProcess::start(&dir.path().join("peers.json"), &["--open"]);
    let gw = new_key();
    let body = serde_json::json!({"public_key": gw, "hostname": "exit-gw", "os": "linux",
        "listen_port": 51820, "exit_node": true, "allowed_ips": ["0.0.0.0/0"],
        "gateway_port": 51821});
    let registered = post(&server, "/register", &body.to_string());
    assert_eq!(registered.status, 200, "{}", registered.json);
    let added = add(
        &server,
        serde_json::json!({"name": "laptop", "via": "exit-gw", "exit": true}),
    );
    assert_eq!(added.status, 200, "{}", added.json);
    let routes = added.json["config"]["allowed_ips"].to_string();
    assert!(
        routes.contains("\"0.0.0.0/0\"") && routes.contains("\"::/0\""),
        "{routes}"
    );
    let split = admin(&server, "GET", "/admin/devices/laptop", None);
    let routes = split.json["config"]["allowed_ips"].to_string();
    assert!(!routes.contains("0.0.0.0/0"), "{routes}");
    let full = admin(&server, "GET", "/admin/devices/laptop?exit=true", None);
    let routes = full.json["config"]["allowed_ips"].to_string();
    assert!(routes.contains("0.0.0.0/0"), "{routes}");
    // A device is never an exit node itself, whatever its gateway offers.
    assert_eq!(added.json["device"]["via_name"], "exit-gw");
    let peers = admin(&server, "GET", "/admin/peers", None);
    let device = peers.json["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["dns_name"] == "laptop")
        .cloned()
        .unwrap();
    assert_eq!(device["os"], "device", "{device}");
}
