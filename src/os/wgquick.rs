//! wg-quick configuration files: for exporting a device's mesh configuration (usable with
//! `wg-quick up` or the WireGuard apps) and for installing the Windows tunnel service.

use super::spec::{InterfaceSpec, PeerSpec};
use std::fmt::Write as _;

/// Renders a wg-quick config for `spec` with `peers`.
///
/// `Address` is the device's /32 (`ADDR/32`): wg-quick adds a route for every peer's
/// AllowedIPs itself, so a wider prefix would only add a second, redundant route for the
/// whole mesh, and a /32 is what the agent puts on the interface too.
pub fn render(spec: &InterfaceSpec, peers: &[PeerSpec]) -> String {
    render_with_prefix(spec, peers, 32)
}

/// Renders the config handed to `wireguard.exe /installtunnelservice`.
///
/// Unlike [`render`], `Address` carries the mesh network's prefix length (`ADDR/16`): the
/// tunnel service routes only the AllowedIPs it sees at install time, and peers the agent adds
/// later with `wg.exe set` would get no route. Windows installs an on-link route for the
/// address's prefix, which routes the whole mesh into the tunnel, as the Linux and macOS plans
/// do with an explicit mesh route.
///
/// Default routes (`/0`) are left out of AllowedIPs: at install the service would route all
/// traffic into the tunnel and, for a single peer, turn on its kill-switch firewall. Full
/// tunnelling is switched on and off live by `os::full_tunnel_on`, which adds `0.0.0.0/0` with
/// `wg.exe` and routes the two halves of the address space instead.
pub fn render_tunnel_service(spec: &InterfaceSpec, peers: &[PeerSpec]) -> String {
    let peers: Vec<PeerSpec> = peers
        .iter()
        .map(|p| PeerSpec {
            allowed_ips: p
                .allowed_ips
                .iter()
                .filter(|n| n.prefix_len() > 0)
                .copied()
                .collect(),
            ..p.clone()
        })
        .collect();
    render_with_prefix(spec, &peers, spec.network.prefix_len())
}

/// The Windows tunnel service's configuration in wireguard-windows' kill-switch form: `exit`
/// is the only peer and keeps its default routes, so at every start of the service
/// (`enableFirewall` in `tunnel/addressconfig.go`: one peer with a `/0` means restrict) its
/// firewall blocks all traffic outside the tunnel except the service's own, DHCP and NDP,
/// from boot on, whether or not the agent runs. The agent adds the other peers live.
pub fn render_kill_switch_service(spec: &InterfaceSpec, exit: &PeerSpec) -> String {
    render_with_prefix(spec, std::slice::from_ref(exit), spec.network.prefix_len())
}

fn render_with_prefix(spec: &InterfaceSpec, peers: &[PeerSpec], prefix: u8) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(out, "# Written by wgmesh; edits are overwritten.");
    let _ = writeln!(out, "[Interface]");
    let _ = writeln!(out, "PrivateKey = {}", spec.private_key.to_base64());
    match spec.ipv6 {
        // The IPv6 address takes the same width as the IPv4 one: /128 beside a /32, the mesh
        // prefix beside the mesh network (for the Windows on-link route).
        Some((v6, mesh6)) => {
            let prefix6 = if prefix == 32 {
                128
            } else {
                mesh6.prefix_len()
            };
            let _ = writeln!(
                out,
                "Address = {}/{}, {}/{}",
                spec.address, prefix, v6, prefix6
            );
        }
        None => {
            let _ = writeln!(out, "Address = {}/{}", spec.address, prefix);
        }
    }
    let _ = writeln!(out, "ListenPort = {}", spec.listen_port);
    // No line for the automatic MTU: wg-quick and wireguard-windows then choose it
    // themselves (the default route's MTU - 80; the latter follows it as it changes).
    if spec.mtu > 0 {
        let _ = writeln!(out, "MTU = {}", spec.mtu);
    }
    for peer in peers {
        let _ = writeln!(out);
        let _ = writeln!(out, "[Peer]");
        let _ = writeln!(out, "PublicKey = {}", peer.public_key);
        if !peer.allowed_ips.is_empty() {
            let ips: Vec<String> = peer.allowed_ips.iter().map(|n| n.to_string()).collect();
            let _ = writeln!(out, "AllowedIPs = {}", ips.join(", "));
        }
        if let Some(endpoint) = peer.endpoint {
            let _ = writeln!(out, "Endpoint = {endpoint}");
        }
        if let Some(keepalive) = peer.persistent_keepalive.filter(|&n| n > 0) {
            let _ = writeln!(out, "PersistentKeepalive = {keepalive}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{PrivateKey, PublicKey};
    use crate::os::runner::{Runner, SystemRunner};
    use crate::os::{Command, DEFAULT_MTU};
    use crate::types::InterfaceName;

    pub(crate) fn spec(name: &str) -> InterfaceSpec {
        InterfaceSpec {
            name: name.parse::<InterfaceName>().unwrap(),
            private_key: PrivateKey::from_base64("QNpZDY3OBvXJBPTgNPCX8Y31UzgAFy07ZEs68LXlpWM=")
                .unwrap(),
            listen_port: 51820,
            address: "10.100.0.5".parse().unwrap(),
            network: "10.100.0.0/16".parse().unwrap(),
            ipv6: Some((
                "fd12:3456:789a::a64:5".parse().unwrap(),
                "fd12:3456:789a::/96".parse().unwrap(),
            )),
            mtu: DEFAULT_MTU,
        }
    }

    fn peers() -> Vec<PeerSpec> {
        vec![
            PeerSpec {
                public_key: PublicKey::from_base64("zg/lcXNzdCZCv3DiThn1/ik4x+2T0CQk4PNma2RpDVg=")
                    .unwrap(),
                endpoint: Some("198.18.0.7:51820".parse().unwrap()),
                allowed_ips: vec![
                    "10.100.0.7/32".parse().unwrap(),
                    "198.18.4.0/24".parse().unwrap(),
                ],
                persistent_keepalive: Some(25),
            },
            PeerSpec {
                public_key: PublicKey::from_base64("rayaQJ75xg+gezeMWtSQHh/zGGjwNTnxUxh1pWbNoGo=")
                    .unwrap(),
                endpoint: Some("[::1]:51821".parse().unwrap()),
                allowed_ips: vec!["10.100.0.8/32".parse().unwrap()],
                persistent_keepalive: None,
            },
            PeerSpec {
                public_key: PublicKey::from_base64("/R8q7i+dnixuw76yJCzFO8tRjw9qglyEwdpV2JBuzH4=")
                    .unwrap(),
                endpoint: None,
                allowed_ips: vec![],
                persistent_keepalive: Some(0),
            },
        ]
    }

    #[test]
    fn renders_the_expected_config() {
        let text = render(&spec("wg0"), &peers());
        let expected = "\
# Written by wgmesh; edits are overwritten.
[Interface]
PrivateKey = QNpZDY3OBvXJBPTgNPCX8Y31UzgAFy07ZEs68LXlpWM=
Address = 10.100.0.5/32, fd12:3456:789a::a64:5/128
ListenPort = 51820
MTU = 1420

[Peer]
PublicKey = zg/lcXNzdCZCv3DiThn1/ik4x+2T0CQk4PNma2RpDVg=
AllowedIPs = 10.100.0.7/32, 198.18.4.0/24
Endpoint = 198.18.0.7:51820
PersistentKeepalive = 25

[Peer]
PublicKey = rayaQJ75xg+gezeMWtSQHh/zGGjwNTnxUxh1pWbNoGo=
AllowedIPs = 10.100.0.8/32
Endpoint = [::1]:51821

[Peer]
PublicKey = /R8q7i+dnixuw76yJCzFO8tRjw9qglyEwdpV2JBuzH4=
";
        assert_eq!(text, expected);
    }

    #[test]
    fn tunnel_service_config_routes_the_mesh_and_never_a_default_route() {
        let mut exit = peers();
        exit[0].allowed_ips.push("0.0.0.0/0".parse().unwrap());
        exit[0].allowed_ips.push("::/0".parse().unwrap());
        assert!(render(&spec("wg0"), &exit).contains("198.18.4.0/24, 0.0.0.0/0, ::/0\n"));
        let text = render_tunnel_service(&spec("wg0"), &exit);
        assert!(
            text.contains("Address = 10.100.0.5/16, fd12:3456:789a::a64:5/96\n"),
            "{text}"
        );
        assert!(
            text.contains("AllowedIPs = 10.100.0.7/32, 198.18.4.0/24\n"),
            "{text}"
        );
        assert!(!text.contains("/0"), "{text}");
    }

    #[test]
    fn kill_switch_config_is_one_peer_with_its_default_routes() {
        let mut exit = peers().remove(0);
        exit.allowed_ips.push("0.0.0.0/0".parse().unwrap());
        let text = render_kill_switch_service(&spec("wg0"), &exit);
        // wireguard-windows' enableFirewall restricts exactly when the file it starts from
        // has one peer and that peer has a /0.
        assert_eq!(text.matches("[Peer]").count(), 1, "{text}");
        assert!(
            text.contains("AllowedIPs = 10.100.0.7/32, 198.18.4.0/24, 0.0.0.0/0\n"),
            "{text}"
        );
        assert!(text.contains("Endpoint = 198.18.0.7:51820\n"), "{text}");
        assert!(text.contains("Address = 10.100.0.5/16"), "{text}");
    }

    /// Runs the real `wg-quick strip` (wireguard-tools), which parses the file exactly as
    /// `wg-quick up` would and prints what it hands to `wg setconf`. Fails, not skips, when
    /// wg-quick is missing: CI installs wireguard-tools.
    #[test]
    fn real_wg_quick_strip_accepts_the_config() {
        let dir = std::env::temp_dir().join(format!("wgmesh-wgquick-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let name = "wgmtest0";
        let path = dir.join(format!("{name}.conf"));
        for text in [
            render(&spec(name), &peers()),
            render_tunnel_service(&spec(name), &peers()),
        ] {
            std::fs::write(&path, &text).unwrap();
            let cmd = Command::new("wg-quick").args(["strip", &path.display().to_string()]);
            let result = SystemRunner::new().run(&cmd);
            let out = result.unwrap_or_else(|e| panic!("wg-quick strip refused the config: {e}"));
            // strip drops the wg-quick-only keys and keeps the rest for `wg setconf`.
            assert!(!out.stdout.contains("Address"), "{}", out.stdout);
            assert!(!out.stdout.contains("MTU"), "{}", out.stdout);
            assert!(out.stdout.contains("ListenPort = 51820"), "{}", out.stdout);
            assert_eq!(out.stdout.matches("[Peer]").count(), 3, "{}", out.stdout);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
