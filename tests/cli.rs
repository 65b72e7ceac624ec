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
