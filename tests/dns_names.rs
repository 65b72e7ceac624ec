//! The server decides every peer's `.mesh` name (issue 12): the real `wgmesh server` on a
//! loopback port, driven over HTTP. Collisions get stable suffixes, names survive restarts,
//! state files from before names existed load (named in registration order), and hostnames
//! that give no DNS name are refused with a message saying what to do.

mod common;

use common::*;
use std::collections::BTreeMap;

/// `hostname -> dns_name` of every peer in the list `id` sees.
fn names_seen_by(server: &ServerProcess, id: &str) -> BTreeMap<String, String> {
    let list = get(server, &format!("/peers?peer_id={id}"), None);
    assert_eq!(list.status, 200, "{}", list.json);
    list.json["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["public_key"].as_str().unwrap().to_owned(),
                p["dns_name"]
                    .as_str()
                    .expect("dns_name in /peers")
                    .to_owned(),
            )
        })
        .collect()
}

fn id_of(answer: &Answer) -> String {
    answer.json["peer_id"].as_str().unwrap().to_owned()
}

#[test]
fn colliding_hostnames_get_stable_suffixes_that_every_peer_sees_alike() {
    let dir = TempDir::new("dns-collide");
    let state = dir.path().join("peers.json");
    let server = ServerProcess::start(&state, &["--open"]);
    let keys: Vec<String> = (0..4).map(|_| new_key()).collect();
    let hosts = ["web", "WEB", "web.corp.example", "db_1"];
    let answers: Vec<Answer> = keys
        .iter()
        .zip(hosts)
        .map(|(k, h)| register(&server, k, h))
        .collect();
    let own: Vec<&str> = answers
        .iter()
        .map(|a| a.json["dns_name"].as_str().unwrap())
        .collect();
    assert_eq!(own, ["web", "web-2", "web-3", "db-1"]);
    // Every peer sees every other under the name the server gave it.
    for (i, answer) in answers.iter().enumerate() {
        let seen = names_seen_by(&server, &id_of(answer));
        assert_eq!(seen.len(), 3);
        for (j, key) in keys.iter().enumerate() {
            if i != j {
                assert_eq!(seen[key], own[j], "peer {i} sees peer {j}");
            }
        }
    }
    // Registering again keeps a name, even while a lower suffix is free.
    let again = register(&server, &keys[1], "Web");
    assert_eq!(again.json["dns_name"], "web-2");
    // A hostname change moves the name: web frees `web`, and a newcomer gets it; web-2 and
    // web-3 keep theirs.
    let moved = register(&server, &keys[0], "api");
    assert_eq!(moved.json["dns_name"], "api");
    let newcomer = register(&server, &new_key(), "web");
    assert_eq!(newcomer.json["dns_name"], "web");
    assert_eq!(
        register(&server, &keys[2], "web.corp.example").json["dns_name"],
        "web-3"
    );

    // A peer that leaves for good frees its name.
    let gone = post(
        &server,
        "/deregister",
        &serde_json::json!({"peer_id": id_of(&answers[3])}).to_string(),
    );
    assert_eq!(gone.status, 200, "{}", gone.json);
    assert_eq!(
        register(&server, &new_key(), "DB_1").json["dns_name"],
        "db-1"
    );

    // Names are kept across a restart (and a kill -9: they ride in the journal).
    let before = names_seen_by(&server, &id_of(&newcomer));
    server.kill9();
    let server = ServerProcess::start(&state, &["--open"]);
    assert_eq!(names_seen_by(&server, &id_of(&newcomer)), before);
    let late = register(&server, &new_key(), "web");
    assert_eq!(late.json["dns_name"], "web-4");
}

#[test]
fn a_state_file_without_names_loads_and_is_named_in_registration_order() {
    let dir = TempDir::new("dns-legacy");
    let state = dir.path().join("peers.json");
    // Written by a server from before names: no dns_name field. The file lists the later
    // registration first; the earlier one must keep the plain name.
    let (early, late) = (new_key(), new_key());
    let record = |key: &str, ip: &str, at: &str| {
        let public = wgmesh::keys::PublicKey::from_base64(key).unwrap();
        serde_json::json!({
            "id": wgmesh::types::PeerId::for_key(&public).to_string(),
            "public_key": key, "virtual_ip": ip, "listen_port": 51820,
            "hostname": "web", "os": "linux",
            "registered_at": at, "last_heartbeat": at, "online": true
        })
    };
    let file = serde_json::json!({
        "version": 1, "network_cidr": "10.100.0.0/16",
        "peers": [
            record(&late, "10.100.0.1", "2026-01-02T00:00:00Z"),
            record(&early, "10.100.0.2", "2026-01-01T00:00:00Z"),
        ]
    });
    std::fs::write(&state, serde_json::to_vec_pretty(&file).unwrap()).unwrap();
    let server = ServerProcess::start(&state, &["--open"]);
    // Re-registering with the same details reports the names the load gave.
    assert_eq!(register(&server, &early, "web").json["dns_name"], "web");
    assert_eq!(register(&server, &late, "web").json["dns_name"], "web-2");
    assert!(server.stop().success());
    // The names were saved: the file now carries them.
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    let names: Vec<&str> = saved["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["dns_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web-2", "web"], "in address order");
}

#[test]
fn hostnames_without_a_dns_name_are_refused_with_what_to_do() {
    let dir = TempDir::new("dns-hostile");
    let server = ServerProcess::start(&dir.path().join("peers.json"), &["--open"]);
    // `_` is a valid hostname but leaves no DNS label.
    let answer = register(&server, &new_key(), "_");
    assert_eq!(answer.status, 400, "{}", answer.json);
    let error = answer.json["error"].as_str().unwrap();
    assert!(
        error.contains("no DNS name") && error.contains("--hostname"),
        "{error}"
    );
    // Unicode, empty and dotted-empty names never get that far: the hostname is refused.
    for bad in ["über", "", ".web", "a..b"] {
        let answer = register(&server, &new_key(), bad);
        assert_eq!(answer.status, 400, "{bad:?}: {}", answer.json);
        assert!(
            answer.json["error"].as_str().unwrap().contains("hostname"),
            "{bad:?}: {}",
            answer.json
        );
    }
    // A label over 63 bytes cannot be a hostname; a 63-byte one keeps all of it.
    let long = "a".repeat(64);
    assert_eq!(register(&server, &new_key(), &long).status, 400);
    let ok = register(&server, &new_key(), &"b".repeat(63));
    assert_eq!(ok.json["dns_name"], "b".repeat(63));
    // The next one with that hostname still fits one label.
    let next = register(&server, &new_key(), &"b".repeat(63));
    let name = next.json["dns_name"].as_str().unwrap();
    assert_eq!(name.len(), 63);
    assert!(name.ends_with("-2"), "{name}");
}

#[test]
fn up_dry_run_shows_how_each_os_would_send_mesh_names_and_changes_nothing() {
    let dir = TempDir::new("dns-dry");
    let server = ServerProcess::start(&dir.path().join("peers.json"), &["--open"]);
    register(&server, &new_key(), "web");
    let config = dir.path().join("c.json").display().to_string();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
    let hosts_arg = hosts.display().to_string();
    let url = format!("http://{}", server.addr);
    // A dry run registers nothing: the machine is registered as a first real run does.
    common::join(
        std::path::Path::new(&config),
        std::slice::from_ref(&url),
        "me",
        None,
        None,
    );
    for (os, extra, must_contain) in [
        ("macos", vec![], "# write /etc/resolver/mesh (mode 0644)"),
        (
            "windows",
            vec![],
            "Add-DnsClientNrptRule -Namespace .mesh -NameServers 10.100.0.2,",
        ),
        (
            "linux",
            vec!["--dns-hosts", "--hosts-file", hosts_arg.as_str()],
            "\tweb.mesh",
        ),
    ] {
        let mut args = vec![
            "up",
            "--dry-run",
            "--os",
            os,
            "--server",
            &url,
            "--config",
            &config,
            "--hostname",
            "me",
        ];
        args.extend(extra);
        let out = std::process::Command::new(wgmesh_bin())
            .args(&args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(must_contain), "{os}:\n{stdout}");
    }
    assert_eq!(
        std::fs::read_to_string(&hosts).unwrap(),
        "127.0.0.1 localhost\n",
        "a dry run writes nothing"
    );
    // --dns off with --dns-hosts is a contradiction, refused before anything happens.
    let out = std::process::Command::new(wgmesh_bin())
        .args(["up", "--dns", "off", "--dns-hosts", "--config", &config])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--dns off"));
}
