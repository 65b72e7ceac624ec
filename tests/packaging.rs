//! Packaging checks: the manual page (`man/wgmesh.1`) and the service files (`etc/`) stay
//! valid and stay in step with the command line.
//!
//! These tests need `mandoc`, `systemd-analyze` and `python3`. A missing tool is a failure,
//! never a skip: a check that silently does not run is worse than none. On Debian and Ubuntu:
//! `apt-get install mandoc systemd python3`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Every subcommand with every long flag it accepts, read from the real binary's `--help`,
/// so the manual can never silently drift from the command line.
fn cli() -> &'static [(String, Vec<&'static str>)] {
    static CLI: std::sync::OnceLock<Vec<(String, Vec<&'static str>)>> = std::sync::OnceLock::new();
    CLI.get_or_init(|| {
        let help = |args: &[&str]| {
            let out = Command::new(env!("CARGO_BIN_EXE_wgmesh"))
                .args(args)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let top = help(&["--help"]);
        let commands: Vec<String> = top
            .split("Commands:")
            .nth(1)
            .expect("wgmesh --help lists its commands")
            .lines()
            .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect();
        assert!(
            commands.len() >= 8,
            "too few subcommands in --help: {commands:?}"
        );
        // Subcommands with subcommands of their own (`token create`) are listed by their
        // full path, each with its own flags.
        let commands: Vec<String> = commands
            .into_iter()
            .flat_map(|name| {
                let text = help(&[&name, "--help"]);
                match text.split("Commands:").nth(1) {
                    Some(nested) => nested
                        .lines()
                        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
                        .filter_map(|l| l.split_whitespace().next())
                        .map(|sub| format!("{name} {sub}"))
                        .collect(),
                    None => vec![name],
                }
            })
            .collect();
        commands
            .into_iter()
            .map(|name| {
                let words: Vec<&str> = name.split(' ').chain(["--help"]).collect();
                let text = help(&words);
                let flags = text
                    .split("Options:")
                    .nth(1)
                    .unwrap_or("")
                    .lines()
                    .filter_map(|l| l.trim_start().strip_prefix("--"))
                    .filter_map(|l| l.split(|c: char| c == ',' || c.is_whitespace()).next())
                    .filter(|f| *f != "help")
                    .map(|f| &*Box::leak(f.to_owned().into_boxed_str()))
                    .collect();
                (name, flags)
            })
            .collect()
    })
}

const SECTIONS: &[&str] = &[
    "NAME",
    "SYNOPSIS",
    "DESCRIPTION",
    "ENVIRONMENT",
    "FILES",
    "EXIT STATUS",
    "EXAMPLES",
    "SEE ALSO",
];

/// The systemd units shipped in `etc/`.
const UNITS: &[&str] = &[
    "wgmesh-server.service",
    "wgmesh.service",
    "wgmesh-sync.service",
    "wgmesh-sync.timer",
];

/// Where the service files expect the binary.
const INSTALLED_BINARY: &str = "/usr/local/bin/wgmesh";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn manual() -> PathBuf {
    root().join("man").join("wgmesh.1")
}

fn flags_of(subcommand: &str) -> &'static [&'static str] {
    &cli()
        .iter()
        .find(|(name, _)| name == subcommand)
        .unwrap_or_else(|| panic!("`{subcommand}` is not a wgmesh subcommand"))
        .1
}

/// Runs a tool the tests depend on; a missing tool fails the test with how to get it.
fn run(program: &str, args: &[&str], install_hint: &str) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `{program}` ({e}); these tests need it: {install_hint}")
        })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wgmesh-packaging-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// `--flag` occurs in `haystack` as a whole word (not as the start of `--flag-more`).
fn has_flag(haystack: &str, flag: &str) -> bool {
    let needle = format!("--{flag}");
    haystack.match_indices(&needle).any(|(at, _)| {
        let before = haystack[..at].chars().next_back();
        let after = haystack[at + needle.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')
            && !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')
    })
}

// ---------------------------------------------------------------------------------------------
// The manual page

#[test]
fn manual_passes_mandoc_lint_without_warnings() {
    let path = manual();
    let out = run(
        "mandoc",
        &["-T", "lint", "-W", "warning", path.to_str().unwrap()],
        "apt-get install mandoc",
    );
    let messages = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success() && messages.trim().is_empty(),
        "mandoc -T lint -W warning {} exited with {} and said:\n{messages}",
        path.display(),
        out.status
    );
}

/// The manual as plain text: rendered by mandoc on lines long enough that no paragraph or
/// synopsis entry wraps, with the bold and underline overstrikes removed.
fn rendered_manual() -> String {
    let path = manual();
    let out = run(
        "mandoc",
        &["-T", "ascii", "-O", "width=1000", path.to_str().unwrap()],
        "apt-get install mandoc",
    );
    assert!(out.status.success(), "mandoc failed: {}", text(&out.stderr));
    let mut plain = String::new();
    for c in text(&out.stdout).chars() {
        if c == '\u{8}' {
            plain.pop();
        } else {
            plain.push(c);
        }
    }
    plain
}

/// The rendered manual's sections, by heading (headings are the unindented lines).
fn sections(rendered: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for line in rendered.lines() {
        if !line.is_empty() && !line.starts_with(' ') {
            if line.contains("WGMESH(1)") {
                continue; // the page footer
            }
            out.push((line.trim().to_owned(), Vec::new()));
        } else if let Some((_, body)) = out.last_mut() {
            body.push(line.to_owned());
        }
    }
    out
}

fn section<'a>(all: &'a [(String, Vec<String>)], name: &str) -> &'a [String] {
    &all.iter()
        .find(|(heading, _)| heading == name)
        .unwrap_or_else(|| panic!("the manual has no {name} section"))
        .1
}

/// The lines of each `.Ss wgmesh SUBCOMMAND` subsection of DESCRIPTION (rendered as a heading
/// indented by three spaces).
fn subsections(description: &[String]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for line in description {
        let is_heading = line.starts_with("   ") && !line.starts_with("    ");
        if is_heading {
            out.push((line.trim().to_owned(), Vec::new()));
        } else if let Some((_, body)) = out.last_mut() {
            body.push(line.clone());
        }
    }
    out
}

#[test]
fn manual_has_the_usual_sections_in_order() {
    let rendered = rendered_manual();
    let headings: Vec<String> = sections(&rendered).into_iter().map(|(h, _)| h).collect();
    let mut last = 0;
    for wanted in SECTIONS {
        let at = headings
            .iter()
            .position(|h| h == wanted)
            .unwrap_or_else(|| panic!("the manual has no {wanted} section; it has {headings:?}"));
        assert!(at >= last, "{wanted} is out of order in {headings:?}");
        last = at;
    }
}

#[test]
fn manual_synopsis_lists_every_subcommand_with_every_flag() {
    let rendered = rendered_manual();
    let all = sections(&rendered);
    let synopsis = section(&all, "SYNOPSIS");
    for (subcommand, flags) in cli().iter().map(|(n, f)| (n.as_str(), f.as_slice())) {
        let prefix = format!("wgmesh {subcommand}");
        let entry = synopsis
            .iter()
            .map(|l| l.trim())
            .find(|l| *l == prefix || l.starts_with(&format!("{prefix} ")))
            .unwrap_or_else(|| panic!("SYNOPSIS has no `{prefix}` line:\n{synopsis:#?}"));
        for flag in flags {
            assert!(
                has_flag(entry, flag),
                "SYNOPSIS entry for `{prefix}` lacks --{flag}:\n{entry}"
            );
        }
        let extra: Vec<&str> = entry
            .split(|c: char| c.is_whitespace() || c == '[' || c == ']')
            .filter_map(|w| w.strip_prefix("--"))
            .filter(|f| !flags.contains(f))
            .collect();
        assert!(
            extra.is_empty(),
            "SYNOPSIS entry for `{prefix}` has flags the CLI does not: {extra:?}"
        );
    }
    let listed = synopsis
        .iter()
        .filter(|l| l.trim_start().starts_with("wgmesh "))
        .count();
    assert_eq!(
        listed,
        cli().len(),
        "SYNOPSIS lists other subcommands: {synopsis:#?}"
    );
}

#[test]
fn manual_describes_every_flag_of_every_subcommand() {
    let rendered = rendered_manual();
    let all = sections(&rendered);
    let subs = subsections(section(&all, "DESCRIPTION"));
    let names: Vec<&str> = subs.iter().map(|(h, _)| h.as_str()).collect();
    for (subcommand, flags) in cli().iter().map(|(n, f)| (n.as_str(), f.as_slice())) {
        let heading = format!("wgmesh {subcommand}");
        let body = &subs
            .iter()
            .find(|(h, _)| *h == heading)
            .unwrap_or_else(|| {
                panic!("DESCRIPTION has no `{heading}` subsection; it has {names:?}")
            })
            .1;
        // Flag items are the lines indented by five spaces that start with the flag.
        let items: Vec<&str> = body
            .iter()
            .filter(|l| l.starts_with("     --"))
            .filter_map(|l| l.split_whitespace().next())
            .map(|f| f.trim_start_matches('-'))
            .collect();
        for flag in flags {
            assert!(
                items.contains(flag),
                "`{heading}` does not describe --{flag} (it describes {items:?})"
            );
        }
        for item in &items {
            assert!(
                flags.contains(item),
                "`{heading}` describes --{item}, which the CLI list does not have"
            );
        }
    }
    assert_eq!(
        subs.len(),
        cli().len(),
        "DESCRIPTION has subsections that are not subcommands: {names:?}"
    );
}

#[test]
fn manual_exit_status_and_see_also_are_complete() {
    let rendered = rendered_manual();
    let all = sections(&rendered);
    let exit: Vec<&str> = section(&all, "EXIT STATUS")
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        exit,
        ["0", "1", "2", "3", "4", "5", "6", "7"],
        "EXIT STATUS codes"
    );
    let see_also = section(&all, "SEE ALSO").join(" ");
    for page in ["wg(8)", "wg-quick(8)", "wireguard-go(8)"] {
        assert!(see_also.contains(page), "SEE ALSO lacks {page}: {see_also}");
    }
    let files = section(&all, "FILES").join("\n");
    for path in [
        "~/.config/wireguard-mesh/client.json",
        "~/.config/wireguard-mesh/peers.json",
        "/etc/wgmesh/wgmesh.env",
    ] {
        assert!(files.contains(path), "FILES lacks {path}");
    }
}

/// Every `wgmesh SUBCOMMAND --flag ...` invocation in `text` (shell lines, with `\` line
/// continuations joined): the subcommand and its flags.
fn invocations(text: &str) -> Vec<(String, Vec<String>)> {
    let joined = text.replace("\\\n", " ");
    let mut found = Vec::new();
    for line in joined.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        for (i, word) in words.iter().enumerate() {
            let word = word.trim_start_matches(['\'', '"', '(']);
            if word != "wgmesh" && !word.ends_with("/wgmesh") {
                continue;
            }
            let Some(subcommand) = words.get(i + 1) else {
                continue;
            };
            let flags = words[i + 2..]
                .iter()
                .take_while(|w| !matches!(**w, "|" | ">" | ">>" | ";" | "&&" | "||"))
                .filter_map(|w| w.strip_prefix("--"))
                .map(|f| f.trim_end_matches(['\'', '"', ')', ';']).to_owned())
                .collect();
            found.push((subcommand.trim_end_matches(['\'', ';']).to_owned(), flags));
        }
    }
    found
}

fn assert_invocations_valid(what: &str, text: &str) -> usize {
    let found = invocations(text);
    for (subcommand, flags) in &found {
        let known = flags_of(subcommand);
        for flag in flags {
            assert!(
                known.contains(&flag.as_str()),
                "{what}: `wgmesh {subcommand}` has no --{flag}"
            );
        }
    }
    found.len()
}

/// Whether `--flag` in `line` sits inside `[...]` (optional in a usage line or synopsis).
fn bracketed(line: &str, flag: &str) -> Option<bool> {
    let at = line
        .match_indices(&format!("--{flag}"))
        .find(|(i, _)| {
            let end = i + flag.len() + 2;
            line[end..]
                .chars()
                .next()
                .is_none_or(|c| !c.is_alphanumeric() && c != '-')
        })?
        .0;
    let before = &line[..at];
    Some(
        before
            .rfind('[')
            .is_some_and(|open| before.rfind(']').is_none_or(|close| close < open)),
    )
}

#[test]
fn manual_synopsis_marks_required_only_what_the_cli_requires() {
    let rendered = rendered_manual();
    let all = sections(&rendered);
    let synopsis = section(&all, "SYNOPSIS");
    for (subcommand, flags) in cli().iter().map(|(n, f)| (n.as_str(), f.as_slice())) {
        let mut args: Vec<&str> = subcommand.split(' ').collect();
        args.push("--help");
        let out = Command::new(env!("CARGO_BIN_EXE_wgmesh"))
            .args(&args)
            .output()
            .unwrap();
        let usage = text(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        let prefix = format!("wgmesh {subcommand}");
        let entry = synopsis
            .iter()
            .map(|l| l.trim())
            .find(|l| *l == prefix || l.starts_with(&format!("{prefix} ")))
            .unwrap();
        for flag in flags {
            let (Some(cli_optional), Some(man_optional)) =
                (bracketed(&usage, flag), bracketed(entry, flag))
            else {
                continue;
            };
            assert_eq!(
                man_optional,
                cli_optional,
                "--{flag} of `{prefix}`: the manual says {} but the CLI says {} ({usage})",
                if man_optional { "optional" } else { "required" },
                if cli_optional { "optional" } else { "required" },
            );
        }
    }
}

#[test]
fn manual_policy_example_is_a_policy_the_server_accepts() {
    let rendered = rendered_manual();
    let example = rendered
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("{\"allow\""))
        .expect("the manual shows a --policy example");
    wgmesh::server::policy::Policy::from_json(example)
        .unwrap_or_else(|e| panic!("the manual's policy example is refused: {e}\n{example}"));
}

#[test]
fn manual_gives_the_default_log_levels_the_help_gives() {
    let rendered = rendered_manual()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    for (subcommand, level) in [
        ("server", "info"),
        ("up", "info"),
        ("down", "info"),
        ("sync", "warn"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_wgmesh"))
            .args([subcommand, "--help"])
            .output()
            .unwrap();
        let help = text(&out.stdout)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            help.contains(&format!("(default {level})")),
            "{subcommand} --help: {help}"
        );
    }
    assert!(
        rendered.contains("the default is info for server, up and down, and warn for sync"),
        "the manual's log level defaults"
    );
}

#[test]
fn manual_examples_use_only_real_subcommands_and_flags() {
    let rendered = rendered_manual();
    let all = sections(&rendered);
    let examples = section(&all, "EXAMPLES").join("\n");
    let used: BTreeSet<String> = invocations(&examples).into_iter().map(|(s, _)| s).collect();
    assert_invocations_valid("EXAMPLES", &examples);
    for wanted in [
        "server", "up", "sync", "export", "genkey", "pubkey", "status",
    ] {
        assert!(used.contains(wanted), "EXAMPLES has no `wgmesh {wanted}`");
    }
    assert!(
        examples.contains("wgmesh genkey | tee") && examples.contains("| wgmesh pubkey"),
        "EXAMPLES lacks the genkey | tee | pubkey pipeline"
    );
    assert!(
        examples.contains("wgmesh status --json |") && examples.contains("jq"),
        "EXAMPLES lacks status --json | jq"
    );
    assert!(
        examples.contains("wg-quick"),
        "EXAMPLES lacks export into wg-quick"
    );
}

// ---------------------------------------------------------------------------------------------
// systemd units

/// A unit file as (section, key, value) triples, continuation lines joined.
fn unit_entries(source: &str) -> Vec<(String, String, String)> {
    let mut entries = Vec::new();
    let mut section = String::new();
    let joined = source.replace("\\\n", " ");
    for line in joined.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
        } else if let Some((key, value)) = line.split_once('=') {
            entries.push((
                section.clone(),
                key.trim().to_owned(),
                value.trim().to_owned(),
            ));
        }
    }
    entries
}

fn unit_source(name: &str) -> String {
    fs::read_to_string(root().join("etc").join(name))
        .unwrap_or_else(|e| panic!("cannot read etc/{name}: {e}"))
}

fn values(entries: &[(String, String, String)], section: &str, key: &str) -> Vec<String> {
    entries
        .iter()
        .filter(|(s, k, _)| s == section && k == key)
        .map(|(_, _, v)| v.clone())
        .collect()
}

fn value(entries: &[(String, String, String)], section: &str, key: &str) -> String {
    let all = values(entries, section, key);
    assert_eq!(
        all.len(),
        1,
        "expected exactly one {key}= in [{section}], got {all:?}"
    );
    all[0].clone()
}

/// Quotes `path` as the executable of a systemd `ExecStart=` line.
fn systemd_quote(path: &str) -> String {
    let mut quoted = String::from("\"");
    for c in path.chars() {
        match c {
            '\\' => quoted.push_str("\\\\"),
            '"' => quoted.push_str("\\\""),
            '%' => quoted.push_str("%%"),
            '$' => quoted.push_str("$$"),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// Copies the units into `dir` with the installed binary replaced by `binary`, because
/// `systemd-analyze verify` checks that every ExecStart= program exists.
fn stage_units(dir: &Path, binary: &str) -> Vec<PathBuf> {
    UNITS
        .iter()
        .map(|name| {
            let source = unit_source(name);
            let staged: String = source
                .lines()
                .map(|line| match line.strip_prefix("ExecStart=") {
                    Some(rest) => {
                        let rest = rest.strip_prefix(INSTALLED_BINARY).unwrap_or_else(|| {
                            panic!("etc/{name}: ExecStart= must run {INSTALLED_BINARY}: {line}")
                        });
                        format!("ExecStart={}{rest}\n", systemd_quote(binary))
                    }
                    None => format!("{line}\n"),
                })
                .collect();
            let path = dir.join(name);
            fs::write(&path, staged).unwrap();
            path
        })
        .collect()
}

/// Runs `systemd-analyze verify` on `units`; returns whether it succeeded and every message it
/// printed about them (messages about other units on the machine are left out).
fn verify(units: &[PathBuf], dir: &Path) -> (bool, Vec<String>, String) {
    let mut args = vec!["verify", "--man=no"];
    args.extend(units.iter().map(|p| p.to_str().unwrap()));
    let out = Command::new("systemd-analyze")
        .args(&args)
        .env("SYSTEMD_LOG_COLOR", "0")
        .env("SYSTEMD_PAGER", "")
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run systemd-analyze ({e}); these tests need it: apt-get install systemd")
        });
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    let dir = dir.to_str().unwrap();
    let ours = all
        .lines()
        .filter(|l| {
            l.contains(dir)
                || units.iter().any(|u| {
                    let name = u.file_name().unwrap().to_str().unwrap();
                    l.starts_with(&format!("{name}:")) || l.contains(&format!("/{name}"))
                })
        })
        .map(str::to_owned)
        .collect();
    (out.status.success(), ours, all)
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let found: BTreeSet<String> = fs::read_dir(root().join("etc"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".service") || n.ends_with(".timer"))
        .collect();
    let listed: BTreeSet<String> = UNITS.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        found, listed,
        "etc/ has units this test does not verify (add them to UNITS)"
    );

    let dir = scratch("units");
    let units = stage_units(&dir, env!("CARGO_BIN_EXE_wgmesh"));
    let (ok, ours, all) = verify(&units, &dir);
    assert!(
        ok && ours.is_empty(),
        "systemd-analyze verify failed or warned about our units:\n{all}"
    );

    // The check must be able to fail: a misspelt key in a copy is reported.
    let broken = dir.join("broken");
    fs::create_dir_all(&broken).unwrap();
    let typo = broken.join("wgmesh-typo.service");
    let source = fs::read_to_string(&units[0]).unwrap();
    fs::write(&typo, source.replace("NoNewPrivileges=", "NoNewPrivilege=")).unwrap();
    let (_, ours, all) = verify(&[typo], &broken);
    assert!(
        ours.iter().any(|l| l.contains("NoNewPrivilege")),
        "systemd-analyze verify did not report a misspelt key, so it checks nothing here:\n{all}"
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn server_unit_runs_the_server_on_its_state_directory_hardened() {
    let unit = unit_entries(&unit_source("wgmesh-server.service"));
    assert_eq!(
        value(&unit, "Service", "ExecStart"),
        format!("{INSTALLED_BINARY} server --state /var/lib/wgmesh/peers.json")
    );
    for (key, want) in [
        ("StateDirectory", "wgmesh"),
        ("Restart", "on-failure"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
    ] {
        assert_eq!(
            value(&unit, "Service", key),
            want,
            "wgmesh-server.service {key}="
        );
    }
    assert_eq!(value(&unit, "Install", "WantedBy"), "multi-user.target");
    assert_invocations_valid(
        "wgmesh-server.service",
        &value(&unit, "Service", "ExecStart"),
    );
}

#[test]
fn agent_unit_runs_up_as_root_after_the_network_is_online() {
    let unit = unit_entries(&unit_source("wgmesh.service"));
    let exec = value(&unit, "Service", "ExecStart");
    assert!(
        exec.starts_with(&format!(
            "{INSTALLED_BINARY} up --server ${{WGMESH_SERVER}} --config /etc/wgmesh/client.json"
        )),
        "{exec}"
    );
    assert_invocations_valid("wgmesh.service", &exec);
    assert_eq!(
        value(&unit, "Service", "EnvironmentFile"),
        "/etc/wgmesh/wgmesh.env"
    );
    assert_eq!(value(&unit, "Unit", "After"), "network-online.target");
    assert_eq!(value(&unit, "Unit", "Wants"), "network-online.target");
    assert_eq!(value(&unit, "Service", "Restart"), "on-failure");
    assert!(
        values(&unit, "Service", "User").is_empty()
            && values(&unit, "Service", "DynamicUser").is_empty(),
        "the agent must run as root to create interfaces"
    );
    let caps = value(&unit, "Service", "CapabilityBoundingSet");
    assert!(
        caps.contains("CAP_NET_ADMIN"),
        "the agent needs CAP_NET_ADMIN"
    );
    assert!(
        caps.contains("CAP_NET_BIND_SERVICE"),
        "the mesh resolver binds port 53: {caps}"
    );
    let no_restart = value(&unit, "Service", "RestartPreventExitStatus");
    assert!(
        no_restart.split_whitespace().eq(["2", "7"]),
        "bad configuration and 'already running' are not restarted into: {no_restart}"
    );
}

#[test]
fn server_unit_comment_gives_the_real_max_connections_default() {
    let source = unit_source("wgmesh-server.service");
    let default = wgmesh::server::http::DEFAULT_MAX_CONNECTIONS;
    assert!(
        source.contains(&format!("--max-connections ({default} by default)")),
        "wgmesh-server.service's comment on --max-connections"
    );
}

#[test]
fn sync_timer_runs_a_oneshot_sync_and_excludes_the_agent() {
    let service = unit_entries(&unit_source("wgmesh-sync.service"));
    assert_eq!(value(&service, "Service", "Type"), "oneshot");
    let exec = value(&service, "Service", "ExecStart");
    assert!(
        exec.starts_with(&format!(
            "{INSTALLED_BINARY} sync --server ${{WGMESH_SERVER}} --config /etc/wgmesh/client.json"
        )),
        "{exec}"
    );
    assert_invocations_valid("wgmesh-sync.service", &exec);
    assert_eq!(
        value(&service, "Service", "EnvironmentFile"),
        "/etc/wgmesh/wgmesh.env"
    );
    assert!(
        values(&service, "Install", "WantedBy").is_empty(),
        "the timer starts it, not a target"
    );

    let timer = unit_entries(&unit_source("wgmesh-sync.timer"));
    assert_eq!(value(&timer, "Timer", "OnBootSec"), "30s");
    assert_eq!(value(&timer, "Timer", "OnUnitActiveSec"), "60s");
    assert!(!value(&timer, "Timer", "RandomizedDelaySec").is_empty());
    assert_eq!(value(&timer, "Timer", "Unit"), "wgmesh-sync.service");
    assert_eq!(value(&timer, "Unit", "Conflicts"), "wgmesh.service");
    assert_eq!(value(&timer, "Install", "WantedBy"), "timers.target");
}

// ---------------------------------------------------------------------------------------------
// launchd and the examples

#[test]
fn launchd_plist_is_well_formed_and_runs_the_agent() {
    let path = root().join("etc").join("com.wgmesh.agent.plist");
    let script = "import json, plistlib, sys\n\
                  print(json.dumps(plistlib.load(open(sys.argv[1], 'rb'))))";
    let out = run(
        "python3",
        &["-c", script, path.to_str().unwrap()],
        "apt-get install python3",
    );
    assert!(
        out.status.success(),
        "{} is not a valid property list:\n{}",
        path.display(),
        text(&out.stderr)
    );
    let plist: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plist["Label"], "com.wgmesh.agent");
    let args: Vec<&str> = plist["ProgramArguments"]
        .as_array()
        .expect("ProgramArguments is an array")
        .iter()
        .map(|a| a.as_str().expect("arguments are strings"))
        .collect();
    assert_eq!(args[..2], [INSTALLED_BINARY, "up"], "{args:?}");
    let server = args
        .iter()
        .position(|a| *a == "--server")
        .and_then(|i| args.get(i + 1))
        .expect("--server URL in ProgramArguments");
    server
        .parse::<wgmesh::agent::client::ServerUrl>()
        .expect("the plist's server URL is valid");
    assert_invocations_valid("the plist", &args.join(" "));
    assert_eq!(plist["RunAtLoad"], true);
    assert!(
        plist["KeepAlive"] == true || plist["KeepAlive"].is_object(),
        "KeepAlive: {}",
        plist["KeepAlive"]
    );
    assert_eq!(plist["StandardOutPath"], "/var/log/wgmesh.log");
    assert_eq!(plist["StandardErrorPath"], "/var/log/wgmesh.log");
}

#[test]
fn client_config_example_matches_the_real_format_but_its_key_is_refused() {
    use wgmesh::agent::state::config::{ClientConfig, CONFIG_VERSION};
    let source = fs::read_to_string(root().join("etc").join("client.json.example")).unwrap();
    let placeholder = serde_json::from_str::<serde_json::Value>(&source).unwrap()["private_key"]
        .as_str()
        .expect("private_key is a string")
        .to_owned();
    assert!(
        placeholder.contains("PLACEHOLDER"),
        "the example's key must be visibly a placeholder: {placeholder}"
    );
    assert!(
        serde_json::from_str::<ClientConfig>(&source).is_err(),
        "wgmesh must refuse the placeholder key rather than use a published one"
    );
    let key = wgmesh::keys::PrivateKey::generate().to_base64();
    let real = source.replace(&placeholder, &key);
    let config: ClientConfig = serde_json::from_str(&real)
        .unwrap_or_else(|e| panic!("client.json.example no longer matches the config format: {e}"));
    assert_eq!(config.version, CONFIG_VERSION);
}

#[test]
fn env_example_sets_a_valid_server_and_only_shared_flags() {
    let source = fs::read_to_string(root().join("etc").join("wgmesh.env.example")).unwrap();
    let server = source
        .lines()
        .find_map(|l| l.strip_prefix("WGMESH_SERVER="))
        .expect("WGMESH_SERVER= line");
    server
        .parse::<wgmesh::agent::client::ServerUrl>()
        .expect("the example server URL is valid");
    assert!(
        source.contains("WGMESH_TOKEN="),
        "the example says where a first start's join token goes"
    );
    // WGMESH_OPTS goes to both `up` and `sync`, so examples may only use flags both accept.
    let sync = flags_of("sync");
    for line in source.lines() {
        let Some(opts) = line.trim_start_matches('#').strip_prefix("WGMESH_OPTS=") else {
            continue;
        };
        for flag in opts.split_whitespace().filter_map(|w| w.strip_prefix("--")) {
            assert!(
                flags_of("up").contains(&flag) && sync.contains(&flag),
                "WGMESH_OPTS example uses --{flag}, which up and sync do not both accept"
            );
        }
    }
}
