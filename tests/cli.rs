//! The command line's exit codes for what argh catches before any subcommand runs: scripts
//! must tell bad usage (2) from internal errors (1), and `--help` is success (0).

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
