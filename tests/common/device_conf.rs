//! A device without the agent, as the tests drive it: its wg-quick configuration (as
//! `wgmesh device add|show` prints it) loaded the way a WireGuard app does, into a
//! namespace of the test's.

use super::netns::Lab;
use super::wgmesh_bin;
use std::path::Path;

/// `wgmesh device ARGS` in `ns` against the server at `server` with the lab's admin
/// secret: (exit code, stdout, stderr).
pub fn device(lab: &Lab, ns: &str, server: &str, args: &[&str]) -> (i32, String, String) {
    let secret = lab.dir.path().join("admin.secret").display().to_string();
    let mut full = vec![wgmesh_bin(), "device"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["--server", server, "--admin-secret-file", &secret]);
    let out = lab.exec(ns, &full);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The value of `key = value` in a wg-quick text.
pub fn field(config: &str, key: &str) -> String {
    config
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("no {key} in\n{config}"))
        .to_owned()
}

/// Brings the configuration up on `iface` in `ns` as a WireGuard app would: the wg part with
/// `wg setconf` (wg-quick's Address and DNS stripped), the addresses and routes with `ip`.
pub fn load_config(lab: &Lab, ns: &str, iface: &str, config: &str, dir: &Path) {
    bring_up(lab, ns, iface, config, dir);
    for net in field(config, "AllowedIPs").split(", ") {
        lab.exec_ok(ns, &["ip", "route", "add", net, "dev", iface]);
    }
}

/// The interface part of loading a configuration: the wg settings, addresses, MTU, up.
fn bring_up(lab: &Lab, ns: &str, iface: &str, config: &str, dir: &Path) {
    let stripped: String = config
        .lines()
        .filter(|l| !l.starts_with("Address = ") && !l.starts_with("DNS = "))
        .map(|l| format!("{l}\n"))
        .collect();
    let file = dir.join(format!("{iface}.conf"));
    std::fs::write(&file, stripped).unwrap();
    let made = lab.exec(
        ns,
        &["ip", "link", "add", "dev", iface, "type", "wireguard"],
    );
    if !made.status.success() {
        lab.exec_ok(ns, &["env", "LOG_LEVEL=silent", "wireguard-go", iface]);
    }
    lab.exec_ok(ns, &["wg", "setconf", iface, &file.display().to_string()]);
    for address in field(config, "Address").split(", ") {
        lab.exec_ok(ns, &["ip", "address", "add", address, "dev", iface]);
    }
    lab.exec_ok(
        ns,
        &["ip", "link", "set", "mtu", "1380", "up", "dev", iface],
    );
}

/// Brings a full-tunnel configuration (AllowedIPs with 0.0.0.0/0) up as wg-quick does: the
/// tunnel's own packets are marked and keep the main table; everything else goes into it.
pub fn load_full_tunnel(lab: &Lab, ns: &str, iface: &str, config: &str, dir: &Path) {
    bring_up(lab, ns, iface, config, dir);
    lab.exec_ok(ns, &["wg", "set", iface, "fwmark", "51820"]);
    for family in ["-4", "-6"] {
        let default = if family == "-4" { "0.0.0.0/0" } else { "::/0" };
        lab.exec_ok(
            ns,
            &[
                "ip", family, "rule", "add", "not", "fwmark", "51820", "table", "51820",
            ],
        );
        lab.exec_ok(
            ns,
            &[
                "ip",
                family,
                "rule",
                "add",
                "table",
                "main",
                "suppress_prefixlength",
                "0",
            ],
        );
        lab.exec_ok(
            ns,
            &[
                "ip", family, "route", "add", default, "dev", iface, "table", "51820",
            ],
        );
    }
}
