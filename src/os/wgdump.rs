//! Parser for `wg show NAME dump`: the interface's actual state, which the agent diffs
//! against the desired peer list.
//!
//! The format is tab-separated, one interface line then one line per peer:
//!
//! ```text
//! private-key  public-key  listen-port  fwmark
//! public-key  preshared-key  endpoint  allowed-ips  latest-handshake  transfer-rx  transfer-tx  persistent-keepalive
//! ```
//!
//! with `(none)` for missing keys, endpoints and allowed IPs, and `off` for a disabled fwmark
//! or keepalive. The parser never panics: any input yields values or an error naming the line,
//! the column and the field.

use crate::keys::{PrivateKey, PublicKey};
use ipnet::IpNet;
use std::fmt;
use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The whole dump: the interface and its peers, in `wg`'s order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dump {
    /// The first line.
    pub interface: DumpInterface,
    /// One entry per following line.
    pub peers: Vec<DumpPeer>,
}

/// The interface line of a dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpInterface {
    /// The interface's private key; `None` before one is set.
    pub private_key: Option<PrivateKey>,
    /// The matching public key; `None` before a private key is set.
    pub public_key: Option<PublicKey>,
    /// The UDP port WireGuard listens on (0 before it is up).
    pub listen_port: u16,
    /// The firewall mark on WireGuard's own packets; `None` when off.
    pub fwmark: Option<u32>,
}

/// One peer line of a dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpPeer {
    /// The peer's identity.
    pub public_key: PublicKey,
    /// Whether a preshared key is set. The key itself is validated and dropped: wgmesh does not
    /// use preshared keys and keeps no secret it has no use for.
    pub has_preshared_key: bool,
    /// Where WireGuard currently sends to this peer (configured or roamed); `None` if unknown.
    /// A link-local zone given by name (`%eth0`) cannot be resolved here and is dropped.
    pub endpoint: Option<SocketAddr>,
    /// What WireGuard routes to the peer, as the kernel stores them (host bits cleared).
    pub allowed_ips: Vec<IpNet>,
    /// When the last handshake completed; `None` if never.
    pub latest_handshake: Option<SystemTime>,
    /// Bytes received from the peer.
    pub transfer_rx: u64,
    /// Bytes sent to the peer.
    pub transfer_tx: u64,
    /// Keepalive interval in seconds; `None` when off.
    pub persistent_keepalive: Option<u16>,
}

/// Why a dump could not be read: where (1-based line and column, the field's name) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpError {
    /// 1-based line number.
    pub line: usize,
    /// 1-based character column where the offending field starts.
    pub column: usize,
    /// The field's name as in wg(8) (`allowed-ips`), or `line` for the line as a whole.
    pub field: &'static str,
    /// What was wrong.
    pub message: String,
}

impl fmt::Display for DumpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "wg show dump, line {}, column {} ({}): {}",
            self.line, self.column, self.field, self.message
        )
    }
}

impl std::error::Error for DumpError {}

const INTERFACE_FIELDS: [&str; 4] = ["private-key", "public-key", "listen-port", "fwmark"];
const PEER_FIELDS: [&str; 8] = [
    "public-key",
    "preshared-key",
    "endpoint",
    "allowed-ips",
    "latest-handshake",
    "transfer-rx",
    "transfer-tx",
    "persistent-keepalive",
];

/// Where a field sits, for error messages.
struct Field<'a> {
    text: &'a str,
    line: usize,
    column: usize,
    name: &'static str,
}

impl Field<'_> {
    fn err(&self, message: impl Into<String>) -> DumpError {
        DumpError {
            line: self.line,
            column: self.column,
            field: self.name,
            message: message.into(),
        }
    }

    fn shown(&self) -> String {
        crate::types::describe(self.text)
    }

    fn is_none(&self) -> bool {
        self.text == "(none)"
    }
}

/// Splits a line into exactly `names.len()` tab-separated fields with their columns.
fn split<'a>(
    text: &'a str,
    line: usize,
    names: &[&'static str],
) -> Result<Vec<Field<'a>>, DumpError> {
    let mut fields = Vec::with_capacity(names.len());
    let mut column = 1;
    for (i, part) in text.split('\t').enumerate() {
        let Some(&name) = names.get(i) else {
            return Err(DumpError {
                line,
                column,
                field: "line",
                message: format!(
                    "more than {} tab-separated fields (is this `wg show all dump`? \
                     wgmesh reads `wg show NAME dump`)",
                    names.len()
                ),
            });
        };
        fields.push(Field {
            text: part,
            line,
            column,
            name,
        });
        column += part.chars().count() + 1;
    }
    if fields.len() < names.len() {
        return Err(DumpError {
            line,
            column: column.saturating_sub(1).max(1),
            field: names[fields.len()],
            message: format!(
                "missing: expected {} tab-separated fields, found {}",
                names.len(),
                fields.len()
            ),
        });
    }
    Ok(fields)
}

/// Parses the full output of `wg show NAME dump`.
pub fn parse(text: &str) -> Result<Dump, DumpError> {
    let mut lines = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .enumerate()
        .map(|(i, l)| (i + 1, l));
    // A final newline leaves one empty piece; anything else empty is an error below.
    let total = text.split('\n').count();
    let trailing_empty = text.ends_with('\n');
    let Some((_, first)) = lines.next().filter(|(_, l)| !l.is_empty()) else {
        return Err(DumpError {
            line: 1,
            column: 1,
            field: "line",
            message: "empty dump: expected the interface line".into(),
        });
    };
    let interface = parse_interface(first, 1)?;
    let mut peers = Vec::new();
    for (number, line) in lines {
        if number == total && trailing_empty && line.is_empty() {
            break;
        }
        peers.push(parse_peer(line, number)?);
    }
    Ok(Dump { interface, peers })
}

/// Parses the interface line (line 1 of a dump).
pub fn parse_interface(text: &str, line: usize) -> Result<DumpInterface, DumpError> {
    let f = split(text, line, &INTERFACE_FIELDS)?;
    let private_key = if f[0].is_none() {
        None
    } else {
        // The key is never echoed back in an error.
        Some(PrivateKey::from_base64(f[0].text).map_err(|e| f[0].err(e.0))?)
    };
    let public_key = optional_public_key(&f[1])?;
    let listen_port = number::<u16>(&f[2])?;
    let fwmark = match f[3].text {
        "off" => None,
        t => {
            let value = match t.strip_prefix("0x") {
                Some(hex) => u32::from_str_radix(hex, 16).ok(),
                None => t.parse::<u32>().ok(),
            };
            match value {
                Some(0) => None,
                Some(v) => Some(v),
                None => {
                    return Err(f[3].err(format!(
                        "{} is not `off` or a 32-bit mark like 0xca6c",
                        f[3].shown()
                    )))
                }
            }
        }
    };
    Ok(DumpInterface {
        private_key,
        public_key,
        listen_port,
        fwmark,
    })
}

/// Parses one peer line.
pub fn parse_peer(text: &str, line: usize) -> Result<DumpPeer, DumpError> {
    let f = split(text, line, &PEER_FIELDS)?;
    let public_key = PublicKey::from_base64(f[0].text).map_err(|e| f[0].err(e.0))?;
    let has_preshared_key = if f[1].is_none() {
        false
    } else {
        PublicKey::from_base64(f[1].text)
            .map_err(|_| f[1].err("not `(none)` or a base64 32-byte key"))?;
        true
    };
    let endpoint = if f[2].is_none() {
        None
    } else {
        Some(parse_endpoint(&f[2])?)
    };
    let mut allowed_ips = Vec::new();
    if !f[3].is_none() && !f[3].text.is_empty() {
        for part in f[3].text.split(',') {
            let net: IpNet = part.trim().parse().map_err(|_| {
                f[3].err(format!(
                    "{} is not an IP network like 198.18.0.0/15",
                    crate::types::describe(part)
                ))
            })?;
            allowed_ips.push(net);
        }
    }
    let seconds = number::<u64>(&f[4])?;
    let latest_handshake = if seconds == 0 {
        None
    } else {
        Some(
            UNIX_EPOCH
                .checked_add(Duration::from_secs(seconds))
                .ok_or_else(|| f[4].err("handshake time out of range"))?,
        )
    };
    let transfer_rx = number::<u64>(&f[5])?;
    let transfer_tx = number::<u64>(&f[6])?;
    let persistent_keepalive = match f[7].text {
        "off" => None,
        _ => Some(number::<u16>(&f[7])?).filter(|&n| n > 0),
    };
    Ok(DumpPeer {
        public_key,
        has_preshared_key,
        endpoint,
        allowed_ips,
        latest_handshake,
        transfer_rx,
        transfer_tx,
        persistent_keepalive,
    })
}

fn optional_public_key(f: &Field<'_>) -> Result<Option<PublicKey>, DumpError> {
    if f.is_none() {
        Ok(None)
    } else {
        PublicKey::from_base64(f.text)
            .map(Some)
            .map_err(|e| f.err(e.0))
    }
}

fn number<T: std::str::FromStr>(f: &Field<'_>) -> Result<T, DumpError> {
    // Digits only: `str::parse` would also take a leading '+'.
    let digits = !f.text.is_empty() && f.text.bytes().all(|b| b.is_ascii_digit());
    digits
        .then(|| f.text.parse::<T>().ok())
        .flatten()
        .ok_or_else(|| {
            f.err(format!(
                "{} is not a number in range ({})",
                f.shown(),
                std::any::type_name::<T>()
            ))
        })
}

/// `1.2.3.4:51820`, `[2001:db8::1]:51820`, or `[fe80::1%eth0]:51820` / `[fe80::1%2]:51820`.
fn parse_endpoint(f: &Field<'_>) -> Result<SocketAddr, DumpError> {
    let bad = || {
        f.err(format!(
            "{} is not `(none)` or an endpoint like 198.18.0.1:51820 or [::1]:51820",
            f.shown()
        ))
    };
    if let Ok(addr) = f.text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    // Rust's parser refuses zone ids; wg prints them for link-local IPv6 endpoints.
    let rest = f.text.strip_prefix('[').ok_or_else(bad)?;
    let (host, port) = rest.rsplit_once("]:").ok_or_else(bad)?;
    let (ip, zone) = host.split_once('%').ok_or_else(bad)?;
    let ip = match ip.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => v6,
        _ => return Err(bad()),
    };
    let port: u16 = port.parse().map_err(|_| bad())?;
    if zone.is_empty() {
        return Err(bad());
    }
    let scope = zone.parse::<u32>().unwrap_or(0);
    Ok(SocketAddr::V6(SocketAddrV6::new(ip, port, 0, scope)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::runner::{self, SystemRunner};
    use crate::os::{Command, Plan};

    const PRIV: &str = "QNpZDY3OBvXJBPTgNPCX8Y31UzgAFy07ZEs68LXlpWM=";
    const PUB: &str = "LErVq4Q0p3gy8ZBiBKoKtCFya7MJM+HRcXbblKVm4SU=";
    const PEER1: &str = "zg/lcXNzdCZCv3DiThn1/ik4x+2T0CQk4PNma2RpDVg=";
    const PEER2: &str = "rayaQJ75xg+gezeMWtSQHh/zGGjwNTnxUxh1pWbNoGo=";

    fn sample() -> String {
        format!(
            "{PRIV}\t{PUB}\t51820\t0x1234\n\
             {PEER1}\t(none)\t[::1]:51820\t198.18.1.0/24,198.18.0.7/32\t1700000000\t1024\t2048\t25\n\
             {PEER2}\t(none)\t(none)\t(none)\t0\t0\t0\toff\n"
        )
    }

    #[test]
    fn parses_interface_and_peers_from_real_shaped_output() {
        let dump = parse(&sample()).unwrap();
        assert_eq!(dump.interface.listen_port, 51820);
        assert_eq!(dump.interface.fwmark, Some(0x1234));
        assert_eq!(
            dump.interface.public_key,
            Some(PublicKey::from_base64(PUB).unwrap())
        );
        assert!(dump.interface.private_key.is_some());
        assert_eq!(dump.peers.len(), 2);
        let p = &dump.peers[0];
        assert_eq!(p.endpoint, Some("[::1]:51820".parse().unwrap()));
        assert_eq!(
            p.allowed_ips,
            vec![
                "198.18.1.0/24".parse::<IpNet>().unwrap(),
                "198.18.0.7/32".parse().unwrap()
            ]
        );
        assert_eq!(
            p.latest_handshake,
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert_eq!((p.transfer_rx, p.transfer_tx), (1024, 2048));
        assert_eq!(p.persistent_keepalive, Some(25));
        let q = &dump.peers[1];
        assert_eq!(q.endpoint, None);
        assert!(q.allowed_ips.is_empty());
        assert_eq!(q.latest_handshake, None);
        assert_eq!(q.persistent_keepalive, None);
    }

    #[test]
    fn preshared_key_is_checked_and_only_its_presence_kept() {
        let line = format!("{PEER1}\t{PEER2}\t(none)\t(none)\t0\t0\t0\toff");
        assert!(parse_peer(&line, 2).unwrap().has_preshared_key);
        let bad = format!("{PEER1}\tnot-a-key\t(none)\t(none)\t0\t0\t0\toff");
        let err = parse_peer(&bad, 2).unwrap_err();
        assert_eq!((err.column, err.field), (46, "preshared-key"));
        assert!(!err.to_string().contains("not-a-key"), "{err}");
    }

    #[test]
    fn interface_with_nothing_set_parses_to_nones() {
        let dump = parse("(none)\t(none)\t0\toff\n").unwrap();
        assert_eq!(dump.interface.private_key, None);
        assert_eq!(dump.interface.public_key, None);
        assert_eq!(dump.interface.fwmark, None);
        assert!(dump.peers.is_empty());
    }

    #[test]
    fn empty_allowed_ips_field_and_crlf_are_accepted() {
        let text = format!("(none)\t(none)\t0\toff\r\n{PEER1}\t(none)\t(none)\t\t0\t0\t0\toff\r\n");
        let dump = parse(&text).unwrap();
        assert!(dump.peers[0].allowed_ips.is_empty());
    }

    #[test]
    fn link_local_endpoints_with_zones_parse() {
        let text = format!(
            "(none)\t(none)\t0\toff\n{PEER1}\t(none)\t[fe80::1%3]:51820\t(none)\t0\t0\t0\toff\n"
        );
        let dump = parse(&text).unwrap();
        match dump.peers[0].endpoint {
            Some(SocketAddr::V6(v6)) => assert_eq!((v6.scope_id(), v6.port()), (3, 51820)),
            other => panic!("{other:?}"),
        }
        let named = text.replace("%3", "%eth0");
        assert!(parse(&named).unwrap().peers[0].endpoint.is_some());
    }

    #[test]
    fn errors_name_line_column_and_field() {
        let text = format!(
            "(none)\t(none)\t0\toff\n{PEER1}\t(none)\t(none)\t198.18.0.0/99\t0\t0\t0\toff\n"
        );
        let err = parse(&text).unwrap_err();
        assert_eq!((err.line, err.field), (2, "allowed-ips"));
        assert_eq!(err.column, 44 + 1 + 7 + 7 + 1);
        assert!(err.to_string().contains("line 2, column 60"), "{err}");

        let err = parse("(none)\t(none)\t99999\toff\n").unwrap_err();
        assert_eq!((err.line, err.column, err.field), (1, 15, "listen-port"));

        let err = parse(&format!("(none)\t(none)\t0\toff\n{PEER1}\t(none)\n")).unwrap_err();
        assert_eq!((err.line, err.field), (2, "endpoint"));

        let err = parse("wg0\t(none)\t(none)\t0\toff\textra\n").unwrap_err();
        assert!(err.message.contains("wg show all dump"), "{err}");

        assert_eq!(parse("").unwrap_err().line, 1);
        let err = parse("(none)\t(none)\t0\toff\n\n").unwrap_err();
        assert_eq!(err.line, 2);
    }

    #[test]
    fn private_key_never_appears_in_errors() {
        let bad = format!("{}\t(none)\t0\toff\n", &PRIV[..40]);
        let err = parse(&bad).unwrap_err();
        assert!(!err.to_string().contains(&PRIV[..40]), "{err}");
        assert!(!format!("{:?}", parse(&sample()).unwrap()).contains(PRIV));
    }

    #[test]
    fn hostile_inputs_never_panic() {
        let fields = [
            "",
            "(none)",
            "off",
            "0",
            "0x",
            "0xffffffffff",
            "+1",
            "-1",
            "99999999999999999999999",
            "[",
            "[]:",
            "[::1",
            "[::1]:",
            "[%]:1",
            "[::1%]:1",
            "1.2.3.4:99999",
            ",",
            "1.2.3.4/33",
            "\u{0}",
            "é",
            "\t",
            PRIV,
            "🦀🦀🦀",
        ];
        let mut count = 0;
        for a in fields {
            for b in fields {
                for n in [1, 3, 4, 8, 9] {
                    let line: Vec<&str> = (0..n).map(|i| if i % 2 == 0 { a } else { b }).collect();
                    let line = line.join("\t");
                    let _ = parse(&line);
                    let _ = parse(&format!("(none)\t(none)\t0\toff\n{line}"));
                    let _ = parse(&format!("(none)\t(none)\t0\toff\n{PEER1}\t{line}"));
                    count += 1;
                }
            }
        }
        assert!(count > 1000);
        // Multi-byte characters must not break column arithmetic.
        let err = parse("é\t(none)\t0\toff").unwrap_err();
        assert_eq!(err.column, 1);
    }

    #[test]
    fn random_inputs_never_panic() {
        // Random lines over an alphabet rich in the characters the parser cares about.
        let alphabet: Vec<char> = "\t\n\r,:[]%/.()0123456789abcdefx+-=none off é"
            .chars()
            .collect();
        let mut bytes = vec![0u8; 200_000];
        getrandom::fill(&mut bytes).unwrap();
        for chunk in bytes.chunks(200) {
            let text: String = chunk
                .iter()
                .map(|b| alphabet[*b as usize % alphabet.len()])
                .collect();
            let _ = parse(&text);
            let _ = parse(&format!("(none)\t(none)\t0\toff\n{text}"));
            let _ = parse(&format!("(none)\t(none)\t0\toff\n{PEER1}\t{text}"));
        }
    }

    /// A network namespace (and the wireguard-go interface inside it) that is removed even
    /// when the test fails.
    struct Netns {
        name: String,
        iface: String,
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            let mut runner = SystemRunner::new();
            let cleanup = Plan::of(vec![
                // Deleting the link makes wireguard-go exit; the socket directory is shared by
                // all namespaces, so the socket is removed too.
                Command::new("ip")
                    .args(["-n", &self.name, "link", "del", &self.iface])
                    .tolerate_failure(),
                Command::new("ip")
                    .args(["netns", "del", &self.name])
                    .tolerate_failure(),
                Command::new("rm")
                    .args(["-f", &format!("/var/run/wireguard/{}.sock", self.iface)])
                    .tolerate_failure(),
            ]);
            let _ = runner::execute(&cleanup, &mut runner);
        }
    }

    /// Needs root, `ip`, `wg` and `wireguard-go` (CI installs wireguard-tools and
    /// wireguard-go): fails, rather than skips, when they are missing.
    #[test]
    fn parses_real_wg_show_dump_from_wireguard_go_in_a_private_namespace() {
        let pid = std::process::id();
        let ns = Netns {
            name: format!("wgm-os-test-{pid}"),
            iface: format!("wgmos{}", pid % 1_000_000_000),
        };
        let (n, i) = (ns.name.clone(), ns.iface.clone());
        let key = crate::keys::PrivateKey::generate();
        let peer1 = crate::keys::PrivateKey::generate().public_key();
        let peer2 = crate::keys::PrivateKey::generate().public_key();
        let in_ns = |program: &str| Command::new("ip").args(["netns", "exec", &n, program]);
        let setup = Plan::of(vec![
            Command::new("ip").args(["netns", "add", &n]),
            in_ns("wireguard-go").arg(&i),
            in_ns("wg")
                .args([
                    "set",
                    &i,
                    "private-key",
                    "/dev/stdin",
                    "listen-port",
                    "51820",
                ])
                .args(["fwmark", "0x1234"])
                .args(["peer", &peer1.to_base64(), "endpoint", "198.18.0.7:51820"])
                .args(["allowed-ips", "198.18.1.9/24,198.18.0.7/32"])
                .args(["persistent-keepalive", "25"])
                .args(["peer", &peer2.to_base64(), "endpoint", "[::1]:51821"])
                .stdin(crate::os::Payload::Secret(crate::os::Secret::private_key(
                    &key,
                ))),
        ]);
        let mut runner = SystemRunner::new();
        runner::execute(&setup, &mut runner).expect("setting up the test interface");
        let out =
            crate::os::runner::Runner::run(&mut runner, &in_ns("wg").args(["show", &i, "dump"]))
                .expect("wg show dump");
        let dump = parse(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{}", out.stdout));
        assert_eq!(dump.interface.public_key, Some(key.public_key()));
        assert_eq!(dump.interface.private_key, Some(key));
        assert_eq!(dump.interface.listen_port, 51820);
        assert_eq!(dump.interface.fwmark, Some(0x1234));
        assert_eq!(dump.peers.len(), 2);
        let p1 = dump.peers.iter().find(|p| p.public_key == peer1).unwrap();
        assert_eq!(p1.endpoint, Some("198.18.0.7:51820".parse().unwrap()));
        let mut ips = p1.allowed_ips.clone();
        ips.sort();
        assert_eq!(
            ips,
            vec![
                "198.18.0.7/32".parse::<IpNet>().unwrap(),
                "198.18.1.0/24".parse().unwrap()
            ]
        );
        assert_eq!(p1.persistent_keepalive, Some(25));
        let p2 = dump.peers.iter().find(|p| p.public_key == peer2).unwrap();
        assert_eq!(p2.endpoint, Some("[::1]:51821".parse().unwrap()));
        assert!(p2.allowed_ips.is_empty());
        assert_eq!(p2.persistent_keepalive, None);
        assert_eq!(p2.latest_handshake, None);
        drop(ns);
    }
}
