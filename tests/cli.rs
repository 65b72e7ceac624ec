//! The command line's exit codes for what argh catches before any subcommand runs: scripts
//! must tell bad usage (2) from internal errors (1), and `--help` is success (0).

mod common;

use common::{ServerProcess, TempDir};
use std::process::{Command, Output};

fn wgmesh(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wgmesh"))
        .args(args)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn usage_errors_caught_by_argh_exit_2_naming_the_problem() {
    for (args, names) in [
        (&["sync", "--server", "notaurl"][..], "--server"),
        (&["up", "--use-exit-node"][..], "--use-exit-node"),
        (&["sync", "--no-such-flag"][..], "--no-such-flag"),
        (&["no-such-command"][..], "no-such-command"),
        (&["sync", "--log-level", "loud"][..], "loud"),
    ] {
        let out = wgmesh(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(names), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("--help for more information"),
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(out.stdout.is_empty(), "{args:?} printed on stdout");
    }
}

#[test]
fn help_exits_0_on_stdout() {
    for args in [
        &["--help"][..],
        &["sync", "--help"],
        &["help"],
        &["token", "create", "--help"],
    ] {
        let out = wgmesh(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage: wgmesh"), "{args:?}: {text}");
    }
}

#[test]
fn service_install_prints_the_windows_boot_task_and_refuses_elsewhere() {
    let out = wgmesh(&["service", "install", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let plan = String::from_utf8(out.stdout).unwrap();
    assert!(plan.contains("Register-ScheduledTask"), "{plan}");
    assert!(
        plan.contains("<BootTrigger>") && plan.contains("S-1-5-18"),
        "{plan}"
    );
    assert!(
        plan.contains(r"<Command>C:\Program Files\wgmesh\wgmesh.exe</Command>"),
        "{plan}"
    );
    assert!(plan.ends_with("schtasks.exe /Run /TN wgmesh\n"), "{plan}");

    let out = wgmesh(&["service", "uninstall", "--dry-run"]);
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "schtasks.exe /End /TN wgmesh || true\nschtasks.exe /Delete /TN wgmesh /F\n"
    );

    // Not on Windows: exit 2, pointing at the files for this OS.
    if !cfg!(windows) {
        let out = wgmesh(&["service", "install"]);
        assert_eq!(out.status.code(), Some(2));
        assert!(
            stderr(&out).contains("etc/wgmesh.service"),
            "{}",
            stderr(&out)
        );
    }
    let out = wgmesh(&["service", "install", "--dry-run", "--exe", "wgmesh.exe"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("must be absolute"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_too_small_mtu_is_refused_with_exit_2_before_anything_is_written() {
    let dir = std::env::temp_dir().join(format!("wgmesh-cli-mtu-{}", std::process::id()));
    let config = dir.join("client.json");
    let out = wgmesh(&[
        "sync",
        "--mtu",
        "1000",
        "--config",
        config.to_str().unwrap(),
        "--server",
        "http://127.0.0.1:9",
        "--dry-run",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--mtu 1000 is too small"),
        "{}",
        stderr(&out)
    );
    assert!(!config.exists());
}

#[test]
fn version_prints_the_version_on_stdout_and_exits_0() {
    for args in [&["--version"][..], &["-V"], &["version"]] {
        let out = wgmesh(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("wgmesh {}\n", env!("CARGO_PKG_VERSION")),
            "{args:?}"
        );
        assert!(out.stderr.is_empty(), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn short_h_is_help_like_long_help() {
    for (short, long) in [
        (&["-h"][..], &["--help"][..]),
        (&["up", "-h"], &["up", "--help"]),
        (&["token", "create", "-h"], &["token", "create", "--help"]),
    ] {
        let (s, l) = (wgmesh(short), wgmesh(long));
        assert_eq!(s.status.code(), Some(0), "{short:?}: {}", stderr(&s));
        assert_eq!(s.stdout, l.stdout, "{short:?} differs from {long:?}");
    }
}

#[test]
fn a_mistyped_flag_or_subcommand_gets_the_nearest_real_one() {
    for (args, want) in [
        (
            &["sync", "--sever", "http://x"][..],
            "did you mean --server?",
        ),
        (&["up", "--dry-rn"], "did you mean --dry-run?"),
        (&["synk"], "did you mean sync?"),
        (&["token", "craete"], "did you mean create?"),
        (&["token", "create", "--usess", "3"], "did you mean --uses?"),
    ] {
        let out = wgmesh(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
        assert!(out.stdout.is_empty(), "{args:?} printed on stdout");
    }
    // Nothing near: no made-up suggestion.
    let out = wgmesh(&["sync", "--no-such-flag"]);
    assert!(!stderr(&out).contains("did you mean"), "{}", stderr(&out));
}

/// `wgmesh sync --dry-run` to `server` with a fresh config in `dir`.
fn sync_to(dir: &TempDir, server: &str) -> Output {
    let config = dir.path().join("c.json").display().to_string();
    wgmesh(&[
        "sync",
        "--dry-run",
        "--os",
        "linux",
        "--server",
        server,
        "--config",
        &config,
    ])
}

#[test]
fn server_trouble_names_the_url_tried_and_the_likely_fix() {
    let dir = TempDir::new("cli-errors");
    let server = ServerProcess::start(&dir.path().join("peers.json"), &["--open"]);
    let https = format!("https://{}", server.addr);
    for (url, says, not) in [
        (https.as_str(), "does not speak TLS", "--ca"),
        (
            "http://no-such-host.invalid:8080",
            "host name does not resolve",
            "timeout",
        ),
        ("http://127.0.0.1:1", "connection refused", "--ca"),
    ] {
        let out = sync_to(&dir, url);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(3), "{url}: {err}");
        assert!(
            err.contains(&format!("{url}/")),
            "{url}: the URL tried: {err}"
        );
        assert!(err.contains(says), "{url}: {err}");
        assert!(!err.contains(not), "{url}: misleading {not:?}: {err}");
        assert!(out.stdout.is_empty(), "{url}");
    }
}

/// A registered-looking config whose server is gone (export then uses its cached list).
fn offline_config(dir: &TempDir) -> String {
    let key = wgmesh::keys::PrivateKey::generate();
    let server_key = wgmesh::keys::PrivateKey::generate().public_key();
    let config = serde_json::json!({
        "version": 1,
        "private_key": key.to_base64(),
        "server": "http://127.0.0.1:1",
        "interface": "wg0",
        "listen_port": 51820,
        "assignment": {
            "peer_id": wgmesh::types::PeerId::for_key(&key.public_key()).as_str(),
            "assigned_ip": "10.100.0.2",
            "network_cidr": "10.100.0.0/16",
            "server_public_key": server_key.to_base64(),
        },
    });
    let path = dir.path().join("client.json");
    std::fs::write(&path, config.to_string()).unwrap();
    path.display().to_string()
}

#[test]
fn export_output_writes_the_private_key_0600_and_a_readable_redirect_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("cli-export");
    let config = offline_config(&dir);
    let file = dir.path().join("wg0.conf");
    let file_arg = file.display().to_string();
    let out = wgmesh(&["export", "--config", &config, "--output", &file_arg]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(out.stdout.is_empty(), "nothing on stdout with --output");
    assert!(stderr(&out).contains(&format!("wrote {file_arg} (mode 0600)")));
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(std::fs::read_to_string(&file)
        .unwrap()
        .contains("PrivateKey = "));

    // `export > wg0.conf` with the usual umask: said on stderr, the file is still written.
    let redirect = dir.path().join("redirect.conf");
    let target = std::fs::File::create(&redirect).unwrap();
    std::fs::set_permissions(&redirect, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wgmesh"))
        .args(["export", "--config", &config])
        .stdout(target)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("mode 0644"), "{}", stderr(&out));
    assert!(stderr(&out).contains("--output FILE"), "{}", stderr(&out));
    assert!(std::fs::read_to_string(&redirect)
        .unwrap()
        .contains("PrivateKey = "));
}

#[test]
fn admin_commands_say_where_they_looked_for_the_admin_secret() {
    let dir = TempDir::new("cli-secret");
    let out = Command::new(env!("CARGO_BIN_EXE_wgmesh"))
        .args(["token", "list", "--server", "http://127.0.0.1:1"])
        .env("HOME", dir.path())
        .env_remove("XDG_CONFIG_HOME")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let home_secret = dir.path().join(".config/wireguard-mesh/admin.secret");
    assert!(err.contains(&home_secret.display().to_string()), "{err}");
    assert!(err.contains("/var/lib/wgmesh/admin.secret"), "{err}");
    assert!(err.contains("--admin-secret-file"), "{err}");

    // The server's default state folder is where the admin commands look first.
    let server = Command::new(env!("CARGO_BIN_EXE_wgmesh"))
        .args(["server", "--listen", "127.0.0.1:0", "--udp-listen", "off"])
        .env("HOME", dir.path())
        .env_remove("XDG_CONFIG_HOME")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _server = Guard(server);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !home_secret.exists() {
        assert!(std::time::Instant::now() < deadline, "no admin.secret made");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Kills the child on drop, even after a failed assertion.
struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn status_as_a_normal_user_says_it_needs_root_not_to_run_up() {
    let dir = TempDir::new("cli-status-user");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_wgmesh"))
        .arg("status")
        .env("HOME", dir.path())
        .env_remove("XDG_CONFIG_HOME")
        .output()
        .expect("setpriv (util-linux)");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("sudo wgmesh status"), "{err}");
    assert!(!err.contains("run `wgmesh up` first"), "{err}");
}

/// `wgmesh ARGS --server URL --admin-secret-file SECRET` against `server`.
fn admin_cli(server: &ServerProcess, args: &[&str]) -> Output {
    let url = format!("http://{}", server.addr);
    let secret = server.dir().join("admin.secret").display().to_string();
    let mut full = args.to_vec();
    full.extend(["--server", &url, "--admin-secret-file", &secret]);
    wgmesh(&full)
}

#[test]
fn operator_tables_read_well_and_peers_remove_takes_a_hostname() {
    let dir = TempDir::new("cli-admin");
    let server = ServerProcess::start(&dir.path().join("peers.json"), &["--open"]);
    let out = admin_cli(&server, &["token", "create", "--expires", "7d"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // EXPIRES to the second, inside its column (the server sends nanoseconds).
    let out = admin_cli(&server, &["token", "list"]);
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let row = listing.lines().nth(1).unwrap();
    let expires = row.split_whitespace().nth(3).unwrap();
    assert_eq!(expires.len(), "2026-12-13T05:48:24Z".len(), "{listing}");
    assert!(
        expires.ends_with('Z') && !expires.contains('.'),
        "{listing}"
    );
    let header = listing.lines().next().unwrap();
    // The (untagged: "-") TAGS cell sits under its heading.
    assert_eq!(
        header.find("TAGS"),
        Some(row.trim_end().len() - 1),
        "{listing}"
    );

    for host in ["web-1", "db-1"] {
        let reg = common::register(&server, &common::new_key(), host);
        assert_eq!(reg.status, 200, "{}", reg.json);
    }
    let out = admin_cli(&server, &["peers", "list"]);
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        listing.lines().next().unwrap().contains("LAST SEEN"),
        "{listing}"
    );
    let web = listing.lines().find(|l| l.contains("web-1")).unwrap();
    assert!(web.contains("s ago"), "{listing}");

    // By hostname, as --use-exit-node takes it; the answer says which peer went.
    let out = admin_cli(&server, &["peers", "remove", "web-1"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        said.starts_with("removed peer-") && said.contains("web-1"),
        "{said}"
    );
    // By mesh name too; and a name nobody has is a usage error (2), not the server's (3).
    let out = admin_cli(&server, &["peers", "remove", "db-1.mesh"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = admin_cli(&server, &["peers", "remove", "web-1"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no peer is called \"web-1\""),
        "{}",
        stderr(&out)
    );
    let out = admin_cli(&server, &["peers", "list", "--json"]);
    let left: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(left["peers"].as_array().unwrap().len(), 0);
}

#[test]
fn the_server_log_speaks_plainly_not_in_rust_debug_syntax() {
    let dir = TempDir::new("cli-log");
    let server = ServerProcess::start(&dir.path().join("peers.json"), &["--open"]);
    let log = server.log_once_it_says("STUN responder");
    assert!(log.contains("/s per source, bursts of"), "{log}");
    for debug in ["RateLimit {", "Some(", " { "] {
        assert!(!log.contains(debug), "{debug:?} in the log:\n{log}");
    }
}

#[test]
fn device_and_gateway_usage_errors_exit_2_before_reaching_anything() {
    let dir = std::env::temp_dir().join(format!("wgmesh-cli-devices-{}", std::process::id()));
    let config = dir.join("client.json").display().to_string();
    for (args, names) in [
        (
            vec!["device", "add", "Bad_Name", "--via", "gw"],
            "device name \"Bad_Name\"",
        ),
        (vec!["device", "show", "a.b"], "device name \"a.b\""),
        (vec!["device", "add", "phone"], "--via"),
        (
            vec!["device", "add", "phone", "--via", "gw", "--pubkey", "nope"],
            "--pubkey",
        ),
        (
            vec!["up", "--config", &config, "--gateway-port", "51821"],
            "need --gateway",
        ),
    ] {
        let out = wgmesh(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(names), "{args:?}: {}", stderr(&out));
        assert!(out.stdout.is_empty(), "{args:?} printed on stdout");
    }
    assert!(!dir.exists(), "nothing was written");
}
