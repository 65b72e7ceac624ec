//! Integration: the agent engine against a simulated Windows or macOS host. The fake host
//! keeps a routing table, the WireGuard tunnel service / utun and the configuration folder,
//! answers `route print -4`, `netstat -rn -f inet`, `sc.exe query`, `wg show dump` and
//! `Get-Acl` the way those tools print (the formats of tests/fixtures), and applies the
//! `route`, `netsh`, `wg`, `wireguard.exe` and `powershell.exe` commands the engine runs. It
//! refuses commands it does not model, so nothing the engine runs goes unchecked.
//!
//! What it proves, on Linux: after a Windows reboot (service back with the same key, its
//! active routes gone) the next sync puts the tunnel's routes back and internet traffic never
//! stays outside while `--exit-fallback block` holds; a macOS network change re-pins through
//! the new gateway at the next route check; every peer endpoint is pinned and follows
//! endpoint changes; the Windows configuration folder is created protected and checked
//! before the key is written; a rebuild waits for the old service; reserved names are
//! refused before anything runs.

use ipnet::{Ipv4Net, Ipv6Net};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use wgmesh::agent::client::ApiClient;
use wgmesh::agent::error::AgentError;
use wgmesh::agent::run::engine::{Engine, Sink};
use wgmesh::agent::state::config::{Applied, Assignment, ClientConfig, ExitFallback};
use wgmesh::keys::{PrivateKey, PublicKey};
use wgmesh::os::runner::{CommandError, CommandFailure, CommandOutput, Runner};
use wgmesh::os::{Command, PlannedFile, TargetOs};
use wgmesh::proto::model::PeerInfo;
use wgmesh::types::PeerId;

const MESH_ADDR: &str = "10.100.0.5";
const SERVER: &str = "198.18.0.1";
const EXIT_ENDPOINT: &str = "198.18.0.7";
const PEER_B_ENDPOINT: &str = "203.0.113.9";
const LAN_PEER_ENDPOINT: &str = "192.168.1.40";
/// Somewhere on the internet, to ask "where would this packet go?".
const INTERNET: &str = "93.184.216.34";

#[derive(Debug, Clone, PartialEq)]
enum Hop {
    Gateway(Ipv4Addr),
    OnLink,
    Blackhole,
}

#[derive(Debug, Clone)]
struct Row {
    dest: Ipv4Net,
    hop: Hop,
    iface: String,
    metric: u32,
    /// Added by the tunnel service itself (back after a reboot) rather than by a command.
    by_service: bool,
    /// macOS `RTF_BLACKHOLE` (flag `B`): packets are dropped whatever the gateway says.
    /// Like xnu's `route_output` (`bsd/net/rtsock.c`, RTM_CHANGE: "Changing flags still
    /// doesn't work"), `route change` sets the gateway and keeps this flag.
    blackhole: bool,
}

impl Row {
    /// Where packets matching this row really go: a blackholed row drops them.
    fn effective_hop(&self) -> Hop {
        if self.blackhole {
            Hop::Blackhole
        } else {
            self.hop.clone()
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Service {
    Absent,
    Running,
    /// Still stopping for this many more queries.
    Stopping(u32),
}

#[derive(Debug, Clone, Default)]
struct Wg {
    public_key: Option<PublicKey>,
    port: u16,
    /// key -> (endpoint, allowed IPs)
    peers: BTreeMap<String, (String, String)>,
}

struct Host {
    os: TargetOs,
    routes: Vec<Row>,
    /// IPv6 routes into the tunnel: (prefix, interface, added by the tunnel service).
    routes6: Vec<(Ipv6Net, String, bool)>,
    /// The LAN: (subnet, our address on it, our interface).
    lan: (Ipv4Net, Ipv4Addr, String),
    service: Service,
    wg: Option<Wg>,
    files: BTreeMap<String, String>,
    folder_sddl: Option<String>,
    /// macOS: what `/var/run/wireguard/wg0.name` says (`utun3` while our wireguard-go runs;
    /// another name once another tunnel got `utun3` after a crash).
    name_file: Option<String>,
    /// The configuration folder is a junction (`mklink /J`): `Get-Item -Force` shows the
    /// `ReparsePoint` attribute, `Get-Acl` shows the target's ACL.
    folder_junction: bool,
    /// How many `sc.exe query` answers say STOP_PENDING after an uninstall.
    stop_polls: u32,
    log: Vec<String>,
    /// Windows: the tunnel's address, from the installed configuration.
    mesh: Option<String>,
    /// Windows: the tunnel service's firewall restricts (wireguard-windows' kill-switch:
    /// the configuration it started from had a single peer with a `/0`).
    kill_switch: bool,
    /// Windows: `wg.exe` queries that still fail after the service started, because its
    /// adapter does not exist yet (`/installtunnelservice` returns before it does).
    adapter_pending: u32,
    /// How many queries the adapter takes to appear after each service start.
    adapter_delay: u32,
    /// The path the tunnel service loads its configuration from at every start.
    service_conf: Option<String>,
    /// Reads of the routing table so far.
    table_reads: u32,
    /// Join this network (router, LAN, our address) right after the Nth table read.
    change_after_read: Option<(u32, &'static str, &'static str, &'static str)>,
    /// When that change happened.
    changed_at: Option<Instant>,
    /// Set this flag (stopping `up`) once a command containing the text runs; when it ran.
    stop_on: Option<(&'static str, Rc<AtomicBool>)>,
    stopped_at: Option<Instant>,
}

#[derive(Clone)]
struct Sim(Rc<RefCell<Host>>);

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn fail(cmd: &Command, status: i32, stderr: &str) -> CommandError {
    CommandError::new(cmd, CommandFailure::Exit(status), stderr)
}

fn ok(stdout: impl Into<String>) -> Result<CommandOutput, CommandError> {
    Ok(CommandOutput {
        stdout: stdout.into(),
        stderr: String::new(),
    })
}

impl Sim {
    fn new(os: TargetOs) -> Sim {
        let lan_iface = match os {
            TargetOs::Windows => "192.168.1.23".to_string(),
            _ => "en0".to_string(),
        };
        let mut host = Host {
            os,
            routes: Vec::new(),
            routes6: Vec::new(),
            lan: (net("192.168.1.0/24"), ip("192.168.1.23"), lan_iface),
            service: Service::Absent,
            wg: None,
            files: BTreeMap::new(),
            folder_sddl: None,
            folder_junction: false,
            name_file: None,
            stop_polls: 0,
            log: Vec::new(),
            mesh: None,
            kill_switch: false,
            adapter_pending: 0,
            adapter_delay: 2,
            service_conf: None,
            table_reads: 0,
            change_after_read: None,
            changed_at: None,
            stop_on: None,
            stopped_at: None,
        };
        host.connect(ip("192.168.1.1"), net("192.168.1.0/24"), ip("192.168.1.23"));
        Sim(Rc::new(RefCell::new(host)))
    }

    fn host(&self) -> std::cell::RefMut<'_, Host> {
        self.0.borrow_mut()
    }

    /// A Windows reboot: the tunnel service starts again by itself with the same
    /// configuration file (so the same key and port, and the peers that file lists: none),
    /// and adds its own routes; everything added with `store=active` or `route ADD` is gone.
    /// The service reads its configuration file again, so a file the agent rewrote since
    /// takes effect now, firewall included.
    fn reboot(&self) {
        let mut h = self.host();
        h.routes.retain(|r| !r.iface.starts_with("10.100."));
        h.routes6.clear();
        h.routes
            .retain(|r| r.dest.prefix_len() != 32 || r.hop == Hop::OnLink);
        h.kill_switch = false;
        h.wg = None;
        if let Some(path) = h.service_conf.clone() {
            h.start_service(&path)
                .expect("the tunnel service starts at boot");
        }
        // By the time the agent's first sync after boot reads `wg.exe show`, the adapter is
        // there (a sync racing it would take the rebuild path, not modelled here).
        h.adapter_pending = 0;
        h.log.push("## reboot".into());
    }

    /// Whether a packet to `dest` from the agent (or any program but the tunnel service)
    /// would leave outside the tunnel: routed out of the LAN and not blocked by the tunnel
    /// service's kill-switch firewall (which permits only the tunnel, loopback, DHCP and
    /// NDP; wireguard-windows `tunnel/firewall/blocker.go`).
    fn leaves_directly(&self, dest: &str) -> bool {
        let tunnel = self.0.borrow().tunnel_iface();
        let routed_out = self
            .route_to(dest)
            .is_some_and(|(iface, hop)| iface != tunnel && hop != Hop::Blackhole);
        routed_out && !self.0.borrow().kill_switch
    }

    /// Joins another network: new router, new LAN; static host routes (the pins) stay and
    /// point at the old router.
    fn network_change(&self, router: &str, lan: &str, me: &str) {
        self.host().network_change(router, lan, me);
    }

    /// Where a packet to `dest` goes now: (interface, next hop), by longest prefix.
    fn route_to(&self, dest: &str) -> Option<(String, Hop)> {
        let dest = ip(dest);
        let h = self.0.borrow();
        h.routes
            .iter()
            .filter(|r| r.dest.contains(&dest))
            .max_by(|a, b| {
                a.dest
                    .prefix_len()
                    .cmp(&b.dest.prefix_len())
                    .then(b.metric.cmp(&a.metric))
            })
            .map(|r| (r.iface.clone(), r.effective_hop()))
    }

    fn log(&self) -> Vec<String> {
        self.0.borrow().log.clone()
    }

    fn position(&self, needle: &str) -> usize {
        self.log()
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("never ran {needle:?}: {:#?}", self.log()))
    }
}

impl Host {
    fn tunnel_iface(&self) -> String {
        match self.os {
            TargetOs::Windows => self.mesh.clone().unwrap_or_else(|| MESH_ADDR.into()),
            _ => "utun3".into(),
        }
    }

    /// Joins another network: new router, new LAN; static host routes (the pins) stay and
    /// point at the old router.
    fn network_change(&mut self, router: &str, lan: &str, me: &str) {
        let old_lan = self.lan.0;
        self.routes.retain(|r| {
            r.dest.prefix_len() != 0 && r.dest != old_lan
                || r.iface.starts_with("utun")
                || r.iface == MESH_ADDR
                || Some(&r.iface) == self.mesh.as_ref()
        });
        self.connect(ip(router), net(lan), ip(me));
        self.log.push(format!("## network change: router {router}"));
    }

    /// Counts a table read, and joins another network after the scripted one.
    fn table_read(&mut self, table: String) -> Result<CommandOutput, CommandError> {
        self.table_reads += 1;
        if let Some((n, router, lan, me)) = self.change_after_read {
            if n == self.table_reads {
                self.network_change(router, lan, me);
                self.changed_at = Some(Instant::now());
            }
        }
        ok(table)
    }

    fn connect(&mut self, router: Ipv4Addr, lan: Ipv4Net, me: Ipv4Addr) {
        let iface = match self.os {
            TargetOs::Windows => me.to_string(),
            _ => "en0".to_string(),
        };
        self.lan = (lan, me, iface.clone());
        let row = |dest: Ipv4Net, hop: Hop, metric: u32| Row {
            dest,
            hop,
            iface: iface.clone(),
            metric,
            by_service: false,
            blackhole: false,
        };
        self.routes
            .push(row(net("0.0.0.0/0"), Hop::Gateway(router), 35));
        self.routes.push(row(lan, Hop::OnLink, 291));
        if !self.routes.iter().any(|r| r.iface == "lo0") {
            self.routes.push(Row {
                dest: net("127.0.0.0/8"),
                hop: Hop::OnLink,
                iface: "lo0".into(),
                metric: 331,
                by_service: false,
                blackhole: false,
            });
        }
    }

    fn add(
        &mut self,
        cmd: &Command,
        dest: Ipv4Net,
        hop: Hop,
        iface: String,
    ) -> Result<(), CommandError> {
        if self
            .routes
            .iter()
            .any(|r| r.dest == dest && (r.hop != Hop::OnLink || r.iface == iface))
        {
            return Err(fail(
                cmd,
                1,
                "route: writing to routing socket: File exists",
            ));
        }
        let metric = if iface == self.tunnel_iface() { 5 } else { 36 };
        self.routes.push(Row {
            blackhole: hop == Hop::Blackhole,
            dest,
            hop,
            iface,
            metric,
            by_service: false,
        });
        Ok(())
    }

    fn change(
        &mut self,
        cmd: &Command,
        dest: Ipv4Net,
        hop: Hop,
        iface: String,
    ) -> Result<(), CommandError> {
        let Some(row) = self.routes.iter_mut().find(|r| r.dest == dest) else {
            return Err(fail(
                cmd,
                1,
                "route: writing to routing socket: not in table",
            ));
        };
        // xnu's RTM_CHANGE sets the gateway and interface but never the flags: a blackhole
        // stays a blackhole (and a gateway route does not become one).
        if row.blackhole && hop != Hop::Blackhole {
            row.hop = hop;
        } else if !row.blackhole && hop == Hop::Blackhole {
            // `-blackhole` on change is ignored; the loopback gateway replaces the old one.
            row.hop = Hop::Gateway(ip("127.0.0.1"));
        } else {
            row.hop = hop;
        }
        row.iface = iface;
        Ok(())
    }

    fn delete(&mut self, cmd: &Command, dest: Ipv4Net) -> Result<(), CommandError> {
        let before = self.routes.len();
        self.routes
            .retain(|r| r.dest != dest || r.by_service || r.dest.prefix_len() == 0);
        if self.routes.len() == before {
            return Err(fail(cmd, 1, "not in table"));
        }
        Ok(())
    }

    /// The interface a gateway is reached through.
    fn iface_for(&self, gw: Ipv4Addr) -> String {
        if self.lan.0.contains(&gw) {
            self.lan.2.clone()
        } else {
            "unreachable".into()
        }
    }

    fn route_print(&self) -> String {
        let mut out = String::from(
            "===========================================================================\n\
             Interface List\n 27...........................wg0\n\
             ===========================================================================\n\n\
             IPv4 Route Table\n\
             ===========================================================================\n\
             Active Routes:\n\
             Network Destination        Netmask          Gateway       Interface  Metric\n",
        );
        for r in &self.routes {
            let gw = match r.hop {
                Hop::Gateway(g) => g.to_string(),
                _ => "On-link".into(),
            };
            let iface = if r.iface == "lo0" {
                "127.0.0.1".into()
            } else {
                r.iface.clone()
            };
            out.push_str(&format!(
                "{:>17} {:>16} {:>16} {:>16} {:>6}\n",
                r.dest.addr(),
                r.dest.netmask(),
                gw,
                iface,
                r.metric
            ));
        }
        out.push_str("===========================================================================\nPersistent Routes:\n  None\n");
        out
    }

    fn netstat(&self) -> String {
        let mut out = String::from(
            "Routing tables\n\nInternet:\nDestination        Gateway            Flags               Netif Expire\n",
        );
        for r in &self.routes {
            let dest = if r.dest.prefix_len() == 0 {
                "default".to_string()
            } else if r.dest.prefix_len() == 32 {
                r.dest.addr().to_string()
            } else {
                r.dest.to_string()
            };
            let (gw, flags) = match r.hop {
                Hop::Gateway(g) if r.blackhole => (g.to_string(), "UGHSB"),
                Hop::Gateway(g) => (
                    g.to_string(),
                    if r.dest.prefix_len() == 32 {
                        "UGHS"
                    } else {
                        "UGScg"
                    },
                ),
                Hop::OnLink if r.iface.starts_with("utun") => (r.iface.clone(), "USc"),
                Hop::OnLink => ("link#6".to_string(), "UCS"),
                Hop::Blackhole => ("127.0.0.1".to_string(), "UGHSB"),
            };
            out.push_str(&format!(
                "{dest:<18} {gw:<18} {flags:<10} {:>14}\n",
                r.iface
            ));
        }
        out
    }

    /// `route add|change|delete -inet6` / `netsh interface ipv6 add|set|delete route`.
    fn route6(
        &mut self,
        cmd: &Command,
        verb: &str,
        dest: Ipv6Net,
        iface: &str,
    ) -> Result<CommandOutput, CommandError> {
        let at = self
            .routes6
            .iter()
            .position(|r| r.0 == dest && r.1 == iface);
        match (verb, at) {
            ("add", Some(_)) => Err(fail(cmd, 1, "File exists")),
            ("add", None) => {
                self.routes6.push((dest, iface.to_string(), false));
                ok("")
            }
            ("change" | "set", Some(_)) => ok(""),
            ("delete", Some(i)) => {
                self.routes6.remove(i);
                ok("")
            }
            _ => Err(fail(cmd, 1, "not in table")),
        }
    }

    fn netstat6(&self) -> String {
        let mut out = String::from(
            "Routing tables\n\nInternet6:\nDestination                             Gateway                                 Flags               Netif Expire\n\
             default                                 fe80::1%en0                             UGcg                  en0       \n",
        );
        for (dest, iface, _) in &self.routes6 {
            out.push_str(&format!("{dest:<39} {iface:<39} USc {iface:>19}\n"));
        }
        out
    }

    fn netsh_route6(&self) -> String {
        let mut out = String::from(
            "\r\nPublish  Type      Met  Prefix                    Idx  Gateway/Interface Name\r\n\
             -------  --------  ---  ------------------------  ---  ------------------------\r\n\
             No       Manual    256  ::/0                       12  fe80::1\r\n",
        );
        for (dest, iface, _) in &self.routes6 {
            out.push_str(&format!(
                "No       Manual    5    {dest:<24}   27  {iface}\r\n"
            ));
        }
        out
    }

    fn dump(&self) -> Option<String> {
        let wg = self.wg.as_ref()?;
        let mut out = format!(
            "(none)\t{}\t{}\toff\n",
            wg.public_key
                .map(|k| k.to_base64())
                .unwrap_or_else(|| "(none)".into()),
            wg.port
        );
        for (key, (endpoint, allowed)) in &wg.peers {
            out.push_str(&format!(
                "{key}\t(none)\t{endpoint}\t{allowed}\t0\t0\t0\t25\n"
            ));
        }
        Some(out)
    }

    fn wg_set(&mut self, args: &[String]) {
        let wg = self.wg.get_or_insert_with(Wg::default);
        let mut i = 2; // after `set IFACE`
        let mut current: Option<String> = None;
        while i < args.len() {
            match args[i].as_str() {
                "peer" => {
                    let key = args[i + 1].clone();
                    wg.peers
                        .entry(key.clone())
                        .or_insert(("(none)".into(), "(none)".into()));
                    current = Some(key);
                    i += 2;
                }
                "remove" => {
                    wg.peers.remove(current.as_ref().unwrap());
                    i += 1;
                }
                "endpoint" => {
                    wg.peers.get_mut(current.as_ref().unwrap()).unwrap().0 = args[i + 1].clone();
                    i += 2;
                }
                "allowed-ips" => {
                    let v = if args[i + 1].is_empty() {
                        "(none)".into()
                    } else {
                        args[i + 1].clone()
                    };
                    wg.peers.get_mut(current.as_ref().unwrap()).unwrap().1 = v;
                    i += 2;
                }
                _ => i += 2, // persistent-keepalive N, listen-port N, private-key FILE
            }
        }
    }

    fn install(&mut self, cmd: &Command, path: &str) -> Result<CommandOutput, CommandError> {
        if self.service != Service::Absent {
            return Err(fail(cmd, 1, "Tunnel already installed and running"));
        }
        self.start_service(path).map_err(|why| fail(cmd, 1, &why))?;
        self.service_conf = Some(path.to_string());
        ok("")
    }

    /// What the tunnel service does at every start (wireguard-windows `tunnel/service.go`):
    /// load the file, decide the firewall (`enableFirewall`: exactly one peer with a `/0`
    /// restricts), configure the peers it lists and route their allowed IPs and the
    /// address's network through the adapter, which appears only `adapter_delay` queries
    /// later.
    fn start_service(&mut self, path: &str) -> Result<(), String> {
        let conf = self.files.get(path).cloned().ok_or("file not found")?;
        let mut sections = conf.split("[Peer]");
        let interface = sections.next().unwrap_or_default();
        let field = |text: &str, name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} = ")).map(str::to_owned))
        };
        let key = PrivateKey::from_base64(&field(interface, "PrivateKey").unwrap())
            .unwrap()
            .public_key();
        let address = field(interface, "Address").unwrap();
        let v4: Ipv4Net = address.split(',').next().unwrap().trim().parse().unwrap();
        if let Some(v6) = address.split(',').nth(1) {
            let v6: Ipv6Net = v6.trim().parse().unwrap();
            self.routes6.push((v6.trunc(), "wg0".into(), true));
        }
        let mut wg = Wg {
            public_key: Some(key),
            port: field(interface, "ListenPort").unwrap().parse().unwrap(),
            peers: BTreeMap::new(),
        };
        self.mesh = Some(v4.addr().to_string());
        let tunnel = v4.addr().to_string();
        let mut service_routes = vec![v4.trunc()];
        let peers: Vec<&str> = sections.collect();
        let mut full = false;
        for peer in &peers {
            let allowed = field(peer, "AllowedIPs").unwrap_or_default();
            for n in allowed.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                full |= n.ends_with("/0");
                if let Ok(v4) = n.parse::<Ipv4Net>() {
                    service_routes.push(v4);
                }
            }
            let endpoint = field(peer, "Endpoint").unwrap_or_else(|| "(none)".into());
            let allowed = if allowed.is_empty() {
                "(none)".to_string()
            } else {
                allowed.replace(", ", ",")
            };
            wg.peers
                .insert(field(peer, "PublicKey").unwrap(), (endpoint, allowed));
        }
        self.kill_switch = peers.len() == 1 && full;
        self.wg = Some(wg);
        self.service = Service::Running;
        self.adapter_pending = self.adapter_delay;
        for dest in service_routes {
            self.routes.push(Row {
                dest,
                hop: Hop::OnLink,
                iface: tunnel.clone(),
                metric: 5,
                by_service: true,
                blackhole: false,
            });
        }
        Ok(())
    }

    /// Windows: whether `wg.exe` can reach the adapter yet (each query counts).
    fn adapter_missing(&mut self) -> bool {
        if self.os == TargetOs::Windows && self.adapter_pending > 0 {
            self.adapter_pending -= 1;
            return true;
        }
        false
    }

    fn run(&mut self, cmd: &Command) -> Result<CommandOutput, CommandError> {
        let a: Vec<&str> = cmd.args.iter().map(String::as_str).collect();
        let env = |name: &str| {
            cmd.env
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        match (cmd.program.as_str(), a.as_slice()) {
            ("wg" | "wg.exe", [_, ..]) if self.adapter_missing() => Err(fail(
                cmd,
                1,
                "Unable to access interface: The system cannot find the file specified.",
            )),
            ("wg" | "wg.exe", ["show", _, "dump"]) => match self.dump() {
                Some(d) => ok(d),
                None => Err(fail(cmd, 1, "Unable to access interface: No such device")),
            },
            ("wg" | "wg.exe", ["set", ..]) if self.wg.is_some() => {
                self.wg_set(&cmd.args);
                ok("")
            }
            ("wireguard.exe", ["/installtunnelservice", path]) => self.install(cmd, path),
            ("wireguard.exe", ["/uninstalltunnelservice", _]) => {
                if self.service == Service::Absent {
                    return Err(fail(cmd, 1, "The specified service does not exist"));
                }
                self.service = Service::Stopping(self.stop_polls);
                self.service_conf = None;
                self.kill_switch = false;
                self.wg = None;
                let tunnel = self.tunnel_iface();
                self.routes.retain(|r| r.iface != tunnel);
                self.routes6.clear();
                ok("")
            }
            ("sc.exe", ["query", name]) if *name == "WireGuardTunnel$wg0" => match self.service {
                Service::Running => ok("        STATE              : 4  RUNNING\n"),
                Service::Stopping(n) if n > 0 => {
                    self.service = Service::Stopping(n - 1);
                    ok("        STATE              : 3  STOP_PENDING\n")
                }
                _ => {
                    self.service = Service::Absent;
                    Err(fail(cmd, 1060, ""))
                }
            },
            ("powershell.exe", ["-NoProfile", "-NonInteractive", "-Command", script]) => {
                if script.contains("CreateDirectory") {
                    assert!(script.contains("O:BAG:SYD:PAI(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)"));
                    self.folder_sddl.get_or_insert_with(|| {
                        "O:BAG:SYD:PAI(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)".into()
                    });
                    ok("")
                } else if script.contains("Get-Acl") {
                    assert_eq!(env("WGMESH_DIR"), r"C:\ProgramData\wgmesh");
                    let attributes = if self.folder_junction {
                        "Directory, ReparsePoint"
                    } else {
                        "Directory"
                    };
                    match &self.folder_sddl {
                        Some(s) if script.contains("Get-Item") => {
                            ok(format!("{attributes}\r\n{s}\r\n"))
                        }
                        Some(_) => panic!("the folder's attributes are not read: {script}"),
                        None => Err(fail(cmd, 1, "Cannot find path")),
                    }
                } else if script.contains("Remove-Item") {
                    self.files.remove(&env("WGMESH_FILE"));
                    ok("")
                } else {
                    panic!("unmodelled script {script}")
                }
            }
            // macOS: wireguard-go exits when its socket goes, and its utun with it.
            ("rm", ["-f", "/var/run/wireguard/utun3.sock"]) => {
                self.wg = None;
                self.routes.retain(|r| r.iface != "utun3");
                self.routes6.retain(|r| r.1 != "utun3");
                ok("")
            }
            ("rm", ["-f", "/var/run/wireguard/wg0.name"]) => ok(""),
            // wg-quick's get_real_interface reads: the name file, the two files' mtimes.
            ("cat", ["/var/run/wireguard/wg0.name"]) => match &self.name_file {
                Some(n) => ok(format!("{n}\n")),
                None => Err(fail(cmd, 1, "No such file or directory")),
            },
            (
                "stat",
                ["-f", "%m", "/var/run/wireguard/wg0.name", "/var/run/wireguard/utun3.sock"],
            ) if self.wg.is_some() && self.name_file.is_some() => ok("1764990000\n1764990000\n"),
            ("stat", ["-f", "%m", ..]) => Err(fail(cmd, 1, "No such file or directory")),
            ("route", ["print", "-4"]) => {
                let table = self.route_print();
                self.table_read(table)
            }
            ("netstat", ["-rn", "-f", "inet"]) => {
                let table = self.netstat();
                self.table_read(table)
            }
            // Windows route.exe
            ("route", [verb @ ("ADD" | "CHANGE"), dest, "MASK", "255.255.255.255", gw]) => {
                let dest = Ipv4Net::from(ip(dest));
                let iface = self.iface_for(ip(gw));
                let hop = Hop::Gateway(ip(gw));
                if *verb == "ADD" {
                    self.add(cmd, dest, hop, iface)
                } else {
                    self.change(cmd, dest, hop, iface)
                }
                .map(|_| CommandOutput::default())
            }
            ("route", ["DELETE", dest, "MASK", "255.255.255.255"]) => self
                .delete(cmd, Ipv4Net::from(ip(dest)))
                .map(|_| CommandOutput::default()),
            ("netsh", ["interface", "ipv6", "show", "route"]) => ok(self.netsh_route6()),
            (
                "netsh",
                ["interface", "ipv6", verb, "route", prefix, "interface=wg0", "store=active"],
            ) => {
                let dest: Ipv6Net = prefix.strip_prefix("prefix=").unwrap().parse().unwrap();
                self.route6(cmd, verb, dest, "wg0")
            }
            (
                "netsh",
                ["interface", "ipv4", verb, "route", prefix, "interface=wg0", "store=active"],
            ) => {
                let dest: Ipv4Net = prefix.strip_prefix("prefix=").unwrap().parse().unwrap();
                let iface = self.tunnel_iface();
                match *verb {
                    "add" => self.add(cmd, dest, Hop::OnLink, iface),
                    "set" => self.change(cmd, dest, Hop::OnLink, iface),
                    "delete" => self.delete(cmd, dest),
                    _ => panic!("netsh {verb}"),
                }
                .map(|_| CommandOutput::default())
            }
            // macOS route(8)
            ("netstat", ["-rn", "-f", "inet6"]) => ok(self.netstat6()),
            ("route", ["-q", "-n", verb, "-inet6", dest, "-interface", iface]) => {
                self.route6(cmd, verb, dest.parse().unwrap(), iface)
            }
            ("route", ["-q", "-n", "delete", "-inet", dest, ..]) => self
                .delete(
                    cmd,
                    dest.parse::<Ipv4Net>()
                        .unwrap_or_else(|_| Ipv4Net::from(ip(dest))),
                )
                .map(|_| CommandOutput::default()),
            ("route", ["-q", "-n", verb @ ("add" | "change"), "-inet", dest, rest @ ..]) => {
                let dest = dest
                    .parse::<Ipv4Net>()
                    .unwrap_or_else(|_| Ipv4Net::from(ip(dest)));
                let (hop, iface) = match rest {
                    ["-gateway", gw] => (Hop::Gateway(ip(gw)), self.iface_for(ip(gw))),
                    ["-interface", i] => (Hop::OnLink, i.to_string()),
                    ["127.0.0.1", "-blackhole"] => (Hop::Blackhole, "lo0".into()),
                    other => panic!("unmodelled route target {other:?}"),
                };
                if *verb == "add" {
                    self.add(cmd, dest, hop, iface)
                } else {
                    self.change(cmd, dest, hop, iface)
                }
                .map(|_| CommandOutput::default())
            }
            _ => panic!(
                "the simulated {:?} host does not model `{}`",
                self.os,
                cmd.render_argv()
            ),
        }
    }
}

impl Runner for Sim {
    fn run(&mut self, cmd: &Command) -> Result<CommandOutput, CommandError> {
        let mut h = self.host();
        let line = cmd.render_argv();
        if let Some((needle, stop)) = &h.stop_on {
            if line.contains(needle) && h.stopped_at.is_none() {
                stop.store(true, Ordering::Relaxed);
                h.stopped_at = Some(Instant::now());
            }
        }
        h.log.push(line);
        h.run(cmd)
    }

    fn write_file(&mut self, file: &PlannedFile) -> std::io::Result<()> {
        let mut h = self.host();
        h.log.push(file.render());
        let path = file.path.display().to_string();
        h.files.insert(
            path,
            String::from_utf8(file.contents.as_bytes().to_vec()).unwrap(),
        );
        Ok(())
    }
}

fn peer(name: &str, mesh: &str, endpoint: &str, exit: bool) -> PeerInfo {
    let key = PrivateKey::generate().public_key();
    let mut allowed = vec![format!("{mesh}/32").parse().unwrap()];
    if exit {
        allowed.push("0.0.0.0/0".parse().unwrap());
    }
    PeerInfo {
        id: PeerId::for_key(&key),
        public_key: key,
        virtual_ip: mesh.parse().unwrap(),
        endpoint: Some(format!("{endpoint}:51820").parse().unwrap()),
        hostname: name.parse().unwrap(),
        os: "linux".parse().unwrap(),
        allowed_ips: allowed,
        exit_node: exit,
        online: true,
        last_heartbeat: String::new(),
        via: None,
        reach: None,
        dns_name: None,
    }
}

/// The exit node, a peer on the internet, and a peer on the same LAN.
fn peers() -> Vec<PeerInfo> {
    vec![
        peer("exit", "10.100.0.7", EXIT_ENDPOINT, true),
        peer("b", "10.100.0.9", PEER_B_ENDPOINT, false),
        peer("lan", "10.100.0.10", LAN_PEER_ENDPOINT, false),
    ]
}

fn engine(os: TargetOs, sim: &Sim, interface: &str) -> Engine {
    let mut config = ClientConfig::generate(interface.parse().unwrap());
    config.hostname = Some("me".parse().unwrap());
    config.server = Some(format!("http://{SERVER}:8080").parse().unwrap());
    config.use_exit_node = Some("exit".into());
    config.exit_fallback = ExitFallback::Block;
    let server_key = PrivateKey::generate().public_key();
    config.assignment = Some(Assignment {
        peer_id: PeerId::for_key(&config.private_key.public_key()),
        assigned_ip: MESH_ADDR.parse().unwrap(),
        network_cidr: "10.100.0.0/16".parse().unwrap(),
        server_public_key: server_key,
        dns_name: None,
    });
    Engine {
        client: ApiClient::new(config.server.clone().unwrap(), Duration::from_secs(1)),
        config,
        config_path: std::env::temp_dir().join("wgmesh-os-sim-unused.json"),
        os,
        reader: Some(Box::new(sim.clone())),
        last_list: None,
        relay_probe: Default::default(),
        persist: false,
        device_routes: Vec::new(),
        poke: None,
        paths: Default::default(),
        path_settings: Default::default(),
        path_choices: Default::default(),
    }
}

fn sync(engine: &mut Engine, sim: &Sim, peers: &[PeerInfo]) -> Result<(), AgentError> {
    let mut runner = sim.clone();
    engine.last_list = Some(wgmesh::agent::state::known::KnownPeers {
        peers: peers.to_vec(),
        ..Default::default()
    });
    engine
        .reconcile(peers, false, &mut Sink::Run(&mut runner))
        .map(drop)
}

fn into_tunnel(sim: &Sim, dest: &str) -> bool {
    let tunnel = sim.0.borrow().tunnel_iface();
    sim.route_to(dest).is_some_and(|(iface, _)| iface == tunnel)
}

fn pinned_via(sim: &Sim, dest: &str) -> Option<Hop> {
    let h = sim.0.borrow();
    h.routes
        .iter()
        .find(|r| r.dest == Ipv4Net::from(ip(dest)))
        .map(Row::effective_hop)
}

#[test]
fn windows_reboot_brings_the_routes_back_and_nothing_leaks_with_block() {
    let sim = Sim::new(TargetOs::Windows);
    let mut engine = engine(TargetOs::Windows, &sim, "wg0");
    // Subnet routes are used only with --accept-routes (issue 24).
    engine.config.accept_routes = true;
    let mut peers = peers();
    // Peer b routes a subnet behind it: a `store=active` route a reboot forgets too.
    peers[1].allowed_ips.push("192.0.2.0/24".parse().unwrap());
    sync(&mut engine, &sim, &peers).unwrap();
    assert!(into_tunnel(&sim, "192.0.2.10"));
    let before_reboot = sim
        .0
        .borrow()
        .routes
        .iter()
        .any(|r| r.dest == net("192.0.2.0/24"));
    assert!(before_reboot);

    // The folder is created protected and checked before the key is written, then installed.
    let create = sim.position("CreateDirectory");
    let acl = sim.position("Get-Acl");
    let write = sim.position(r"# write C:\ProgramData\wgmesh\wg0.conf");
    let install = sim.position("/installtunnelservice");
    assert!(
        create < acl && acl < write && write < install,
        "{:#?}",
        sim.log()
    );

    // The adapter came later than the service: the sync waited for it (failed polls)
    // before the first `wg.exe set`.
    let log = sim.log();
    let first_set = sim.position("wg.exe set");
    let polls = log[install..first_set]
        .iter()
        .filter(|l| l.starts_with("wg.exe show wg0 dump"))
        .count();
    assert_eq!(polls, 3, "two failed polls, then the adapter: {log:#?}");

    // Pins through the discovered gateway (never 0.0.0.0), for every internet peer, not for
    // the LAN peer; internet traffic goes into the tunnel. With `block` the service runs
    // wireguard-windows' kill-switch firewall, which would drop the agent's own requests
    // outside the tunnel: the server is not pinned, they go through the exit node.
    let gw = Hop::Gateway(ip("192.168.1.1"));
    for addr in [EXIT_ENDPOINT, PEER_B_ENDPOINT] {
        assert_eq!(pinned_via(&sim, addr), Some(gw.clone()), "{addr}");
    }
    assert_eq!(pinned_via(&sim, LAN_PEER_ENDPOINT), None);
    assert_eq!(pinned_via(&sim, SERVER), None);
    assert!(sim.0.borrow().kill_switch, "{:#?}", sim.log());
    assert!(!sim.leaves_directly(SERVER) && !sim.leaves_directly(INTERNET));
    assert!(
        !sim.log().iter().any(|l| l.ends_with(" 0.0.0.0")),
        "{:#?}",
        sim.log()
    );
    assert!(into_tunnel(&sim, INTERNET));

    // Reboot: the service is back with the same key and its kill-switch file (the exit
    // peer, its /0 and the firewall), the agent's routes are not. Before the agent runs,
    // nothing leaves directly; the next sync puts everything back.
    sim.reboot();
    assert!(
        !sim.0
            .borrow()
            .routes
            .iter()
            .any(|r| r.dest.prefix_len() == 1),
        "the simulated reboot dropped the halves"
    );
    assert!(!sim.leaves_directly(INTERNET), "{:#?}", sim.log());
    sync(&mut engine, &sim, &peers).unwrap();
    assert!(
        sim.0
            .borrow()
            .routes
            .iter()
            .any(|r| r.dest.prefix_len() == 1),
        "halves back: {:#?}",
        sim.log()
    );
    assert!(into_tunnel(&sim, INTERNET), "{:#?}", sim.log());
    assert_eq!(pinned_via(&sim, EXIT_ENDPOINT), Some(gw.clone()));
    // (Checked as its own route: the halves alone would also send it into the tunnel.)
    let subnet_routed = |sim: &Sim| {
        sim.0
            .borrow()
            .routes
            .iter()
            .any(|r| r.dest == net("192.0.2.0/24") && r.iface == MESH_ADDR)
    };
    assert!(
        subnet_routed(&sim),
        "subnet route re-added: {:#?}",
        sim.log()
    );
    assert_eq!(
        sim.0.borrow().wg.as_ref().unwrap().peers.len(),
        3,
        "peers re-added"
    );

    // Reboot while the exit node is offline, with --exit-fallback block: still no leak.
    sim.reboot();
    let without_exit: Vec<PeerInfo> = peers[1..].to_vec();
    sync(&mut engine, &sim, &without_exit).unwrap();
    assert!(
        into_tunnel(&sim, INTERNET),
        "fail closed after a reboot: {:#?}",
        sim.log()
    );
    assert_eq!(
        pinned_via(&sim, EXIT_ENDPOINT),
        Some(gw.clone()),
        "exit still pinned: {:#?}",
        sim.log()
    );

    // A quick route check between syncs also repairs a reboot.
    sim.reboot();
    engine
        .check_routes(&mut Sink::Run(&mut sim.clone()))
        .unwrap();
    assert!(into_tunnel(&sim, INTERNET));

    if std::env::var_os("OS_SIM_LOG").is_some() {
        eprintln!("{}", sim.log().join("\n"));
    }
    // down: routes, service and the configuration file (with the key) all go.
    engine.teardown(&mut Sink::Run(&mut sim.clone())).unwrap();
    assert!(!into_tunnel(&sim, INTERNET));
    assert_eq!(pinned_via(&sim, EXIT_ENDPOINT), None);
    assert!(
        sim.0.borrow().files.is_empty(),
        "down removes the config file"
    );
}

#[test]
fn windows_rebuild_waits_for_the_old_service_then_installs() {
    let sim = Sim::new(TargetOs::Windows);
    let mut engine = engine(TargetOs::Windows, &sim, "wg0");
    let peers = peers();
    sync(&mut engine, &sim, &peers).unwrap();
    // Another key now: the tunnel must be rebuilt, and the old service takes a while.
    engine.config.private_key = PrivateKey::generate();
    sim.host().stop_polls = 2;
    sim.host().log.clear();
    sync(&mut engine, &sim, &peers).unwrap();
    let log = sim.log();
    let uninstall = sim.position("/uninstalltunnelservice");
    let install = sim.position("/installtunnelservice");
    let queries = log[uninstall..install]
        .iter()
        .filter(|l| l.starts_with("sc.exe query"))
        .count();
    assert_eq!(queries, 3, "two STOP_PENDING answers, then gone: {log:#?}");
    assert!(into_tunnel(&sim, INTERNET));
}

#[test]
fn windows_refuses_a_config_folder_a_user_made_and_writes_no_key() {
    let sim = Sim::new(TargetOs::Windows);
    sim.host().folder_sddl = Some(
        "O:S-1-5-21-3623811015-3361044348-30300820-1001G:S-1-5-21-3623811015-3361044348-30300820-513D:PAI(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)".into(),
    );
    let mut engine = engine(TargetOs::Windows, &sim, "wg0");
    let err = sync(&mut engine, &sim, &peers()).unwrap_err().to_string();
    assert!(
        err.contains("refusing") && err.contains("owned by S-1-5-21-"),
        "{err}"
    );
    assert!(sim.0.borrow().files.is_empty());
    assert!(!sim.log().iter().any(|l| l.starts_with("# write")));
}

#[test]
fn windows_refuses_a_junction_at_the_config_folder_and_writes_no_key() {
    let sim = Sim::new(TargetOs::Windows);
    {
        // A junction to C:\Program Files\WireGuard\Data: the target's ACL is the accepted one.
        let mut h = sim.host();
        h.folder_sddl = Some("O:SYG:SYD:PAI(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)".into());
        h.folder_junction = true;
    }
    let mut engine = engine(TargetOs::Windows, &sim, "wg0");
    let err = sync(&mut engine, &sim, &peers()).unwrap_err();
    assert!(matches!(err, AgentError::Usage(_)), "{err}");
    let err = err.to_string();
    assert!(
        err.contains("refusing") && err.contains("reparse point"),
        "{err}"
    );
    assert!(sim.0.borrow().files.is_empty());
    assert!(!sim
        .log()
        .iter()
        .any(|l| l.contains(" /installtunnelservice")));
}

#[test]
fn windows_reserved_interface_names_are_refused_before_anything_runs() {
    for name in ["con", "nul.x", "LPT1", "wg0."] {
        let sim = Sim::new(TargetOs::Windows);
        let mut engine = engine(TargetOs::Windows, &sim, name);
        let err = sync(&mut engine, &sim, &peers()).unwrap_err();
        assert!(matches!(err, AgentError::Usage(_)), "{name}: {err}");
        assert!(
            err.to_string().contains("cannot name a tunnel on Windows"),
            "{err}"
        );
        assert!(sim.log().is_empty(), "{name}: {:#?}", sim.log());
    }
}

/// A macOS host whose utun3 already exists with this engine's key (as after `up` created
/// it): the engine takes the "exists" path and only the full tunnel is new.
fn macos_with_utun(engine: &mut Engine, sim: &Sim) {
    let key = engine.config.private_key.public_key();
    let mut h = sim.host();
    h.name_file = Some("utun3".into());
    h.wg = Some(Wg {
        public_key: Some(key),
        port: engine.config.listen_port,
        peers: BTreeMap::new(),
    });
    h.routes.push(Row {
        dest: net("10.100.0.0/16"),
        hop: Hop::OnLink,
        iface: "utun3".into(),
        metric: 0,
        by_service: true,
        blackhole: false,
    });
    engine.config.applied = Some(Applied {
        os: "macos".into(),
        interface: "utun3".into(),
        address: Some(MESH_ADDR.parse().unwrap()),
        ..Applied::default()
    });
}

#[test]
fn macos_network_change_repins_at_the_next_route_check() {
    let sim = Sim::new(TargetOs::Macos);
    let mut engine = engine(TargetOs::Macos, &sim, "wg0");
    macos_with_utun(&mut engine, &sim);
    let mut peers = peers();
    sync(&mut engine, &sim, &peers).unwrap();
    let home = Hop::Gateway(ip("192.168.1.1"));
    for addr in [SERVER, EXIT_ENDPOINT, PEER_B_ENDPOINT] {
        assert_eq!(
            pinned_via(&sim, addr),
            Some(home.clone()),
            "{addr}: {:#?}",
            sim.log()
        );
    }
    assert_eq!(
        pinned_via(&sim, LAN_PEER_ENDPOINT),
        None,
        "LAN peers are not pinned"
    );
    assert!(into_tunnel(&sim, INTERNET));
    assert!(engine.watches_routes());

    // The laptop joins another network: the pins now name a router that is not there.
    sim.network_change("10.0.0.1", "10.0.0.0/22", "10.0.1.77");
    engine
        .check_routes(&mut Sink::Run(&mut sim.clone()))
        .unwrap();
    let cafe = Hop::Gateway(ip("10.0.0.1"));
    for addr in [SERVER, EXIT_ENDPOINT, PEER_B_ENDPOINT, LAN_PEER_ENDPOINT] {
        assert_eq!(
            pinned_via(&sim, addr),
            Some(cafe.clone()),
            "{addr}: {:#?}",
            sim.log()
        );
    }
    assert!(into_tunnel(&sim, INTERNET));

    // A peer's endpoint moves: the next sync pins the new one and drops the old pin.
    peers[1].endpoint = Some("203.0.113.77:51820".parse().unwrap());
    sync(&mut engine, &sim, &peers).unwrap();
    assert_eq!(pinned_via(&sim, "203.0.113.77"), Some(cafe.clone()));
    assert_eq!(pinned_via(&sim, PEER_B_ENDPOINT), None, "{:#?}", sim.log());

    // Nothing changed: a route check runs only the read.
    sim.host().log.clear();
    engine
        .check_routes(&mut Sink::Run(&mut sim.clone()))
        .unwrap();
    assert_eq!(
        sim.log(),
        vec![
            "netstat -rn -f inet".to_string(),
            "netstat -rn -f inet6".to_string()
        ]
    );

    engine.teardown(&mut Sink::Run(&mut sim.clone())).unwrap();
    for addr in [SERVER, EXIT_ENDPOINT, "203.0.113.77", LAN_PEER_ENDPOINT] {
        assert_eq!(
            pinned_via(&sim, addr),
            None,
            "{addr} left pinned after down"
        );
    }
}

#[test]
fn macos_without_a_usable_gateway_blackholes_pins_instead_of_looping() {
    let sim = Sim::new(TargetOs::Macos);
    {
        // Only a link-scoped default (darwin.bash skips `link#` gateways too).
        let mut h = sim.host();
        let row = h
            .routes
            .iter_mut()
            .find(|r| r.dest.prefix_len() == 0)
            .unwrap();
        row.hop = Hop::OnLink;
    }
    let mut engine = engine(TargetOs::Macos, &sim, "wg0");
    macos_with_utun(&mut engine, &sim);
    sync(&mut engine, &sim, &peers()).unwrap();
    assert_eq!(
        pinned_via(&sim, EXIT_ENDPOINT),
        Some(Hop::Blackhole),
        "{:#?}",
        sim.log()
    );
    assert!(!sim.log().iter().any(|l| l.contains("-gateway 0.0.0.0")));
    // When a router appears, the next check pins through it.
    sim.network_change("192.168.1.1", "192.168.1.0/24", "192.168.1.23");
    engine
        .check_routes(&mut Sink::Run(&mut sim.clone()))
        .unwrap();
    assert_eq!(
        pinned_via(&sim, EXIT_ENDPOINT),
        Some(Hop::Gateway(ip("192.168.1.1"))),
        "the blackhole flag must not survive: {:#?}",
        sim.log()
    );
    assert!(!sim.log().iter().any(|l| l.contains("route -q -n change")));
    // Healed for good: the next check only reads the table.
    sim.host().log.clear();
    engine
        .check_routes(&mut Sink::Run(&mut sim.clone()))
        .unwrap();
    assert_eq!(
        sim.log(),
        vec![
            "netstat -rn -f inet".to_string(),
            "netstat -rn -f inet6".to_string()
        ]
    );
}

#[test]
fn macos_down_leaves_a_utun_that_is_no_longer_ours_alone() {
    let sim = Sim::new(TargetOs::Macos);
    let mut engine = engine(TargetOs::Macos, &sim, "wg0");
    macos_with_utun(&mut engine, &sim);
    sync(&mut engine, &sim, &peers()).unwrap();
    assert!(into_tunnel(&sim, INTERNET));
    // A crash and a reboot later, another tunnel was given utun3 (with its own key), and
    // wg-quick's name file for wg0 names another interface now.
    {
        let mut h = sim.host();
        h.wg.as_mut().unwrap().public_key = Some(PrivateKey::generate().public_key());
        h.name_file = Some("utun5".into());
        h.log.clear();
    }
    engine.teardown(&mut Sink::Run(&mut sim.clone())).unwrap();
    let log = sim.log();
    assert!(
        !log.iter()
            .any(|l| l.contains("utun3") && !l.starts_with("stat")),
        "nothing through the other tunnel's utun3 is touched: {log:#?}"
    );
    assert!(
        sim.0
            .borrow()
            .routes
            .iter()
            .any(|r| r.dest.prefix_len() == 1),
        "its routes stay"
    );
    assert!(engine.config.applied.is_none(), "the record is forgotten");
}

#[test]
fn switching_exit_nodes_in_one_sync_keeps_traffic_in_the_tunnel() {
    for os in [TargetOs::Windows, TargetOs::Macos] {
        let sim = Sim::new(os);
        let mut engine = engine(os, &sim, "wg0");
        if os == TargetOs::Macos {
            macos_with_utun(&mut engine, &sim);
        }
        let mut peers = peers();
        peers.push(peer("exit2", "10.100.0.8", "203.0.113.88", true));
        sync(&mut engine, &sim, &peers).unwrap();
        assert!(into_tunnel(&sim, INTERNET), "{os}");
        // The old tunnel's halves and pins are removed and put back in the same sync: the
        // table read before it must not make the agent think they are still there.
        engine.config.use_exit_node = Some("exit2".into());
        sync(&mut engine, &sim, &peers).unwrap();
        assert!(into_tunnel(&sim, INTERNET), "{os}: {:#?}", sim.log());
        assert!(
            pinned_via(&sim, "203.0.113.88").is_some(),
            "{os}: {:#?}",
            sim.log()
        );
        assert!(
            pinned_via(&sim, EXIT_ENDPOINT).is_some(),
            "{os}: still a peer"
        );
    }
}

/// The tunnel service's configuration file as the simulated host holds it.
fn service_file(sim: &Sim) -> String {
    sim.0
        .borrow()
        .files
        .get(r"C:\ProgramData\wgmesh\wg0.conf")
        .cloned()
        .unwrap_or_default()
}

#[test]
fn windows_kill_switch_file_follows_the_exit_choice_and_holds_across_reboots() {
    let sim = Sim::new(TargetOs::Windows);
    let mut engine = engine(TargetOs::Windows, &sim, "wg0");
    let mut peers = peers();
    peers.push(peer("exit2", "10.100.0.8", "203.0.113.88", true));
    sync(&mut engine, &sim, &peers).unwrap();
    let file = service_file(&sim);
    assert_eq!(file.matches("[Peer]").count(), 1, "{file}");
    assert!(
        file.contains("0.0.0.0/0") && file.contains(EXIT_ENDPOINT),
        "{file}"
    );

    // Another exit node: the file is rewritten for the next start, the service is not
    // reinstalled (its firewall already restricts), and a reboot comes back restricted.
    sim.host().log.clear();
    engine.config.use_exit_node = Some("exit2".into());
    sync(&mut engine, &sim, &peers).unwrap();
    assert!(
        !sim.log().iter().any(|l| l.contains("tunnelservice")),
        "{:#?}",
        sim.log()
    );
    assert!(service_file(&sim).contains("203.0.113.88:51820"));
    sim.reboot();
    assert!(sim.0.borrow().kill_switch);
    assert!(!sim.leaves_directly(INTERNET) && !sim.leaves_directly(SERVER));
    sync(&mut engine, &sim, &peers).unwrap();
    assert!(into_tunnel(&sim, INTERNET));

    // `--exit-fallback direct`: the user chose to reach the internet directly while the
    // exit node is away, so the service is reinstalled without the firewall (it is decided
    // at start) and the file holds no default route.
    engine.config.exit_fallback = ExitFallback::Direct;
    sync(&mut engine, &sim, &peers).unwrap();
    assert!(!sim.0.borrow().kill_switch, "{:#?}", sim.log());
    assert!(!service_file(&sim).contains("/0"), "{}", service_file(&sim));
    assert!(into_tunnel(&sim, INTERNET), "{:#?}", sim.log());
    assert_eq!(
        pinned_via(&sim, SERVER),
        Some(Hop::Gateway(ip("192.168.1.1"))),
        "without the firewall the server is pinned again"
    );
}

#[test]
fn a_moved_exit_endpoint_or_server_address_moves_only_the_pins() {
    for os in [TargetOs::Windows, TargetOs::Macos] {
        let sim = Sim::new(os);
        let mut engine = engine(os, &sim, "wg0");
        if os == TargetOs::Macos {
            macos_with_utun(&mut engine, &sim);
            // macOS pins the server too: move it as well.
        }
        let mut peers = peers();
        sync(&mut engine, &sim, &peers).unwrap();
        assert!(into_tunnel(&sim, INTERNET), "{os}");
        sim.host().log.clear();
        peers[0].endpoint = Some("198.18.0.77:51820".parse().unwrap());
        if os == TargetOs::Macos {
            engine.config.server = Some("http://198.18.0.2:8080".parse().unwrap());
            engine.client = ApiClient::new(
                engine.config.server.clone().unwrap(),
                Duration::from_secs(1),
            );
        }
        sync(&mut engine, &sim, &peers).unwrap();
        let log = sim.log();
        assert!(
            !log.iter()
                .any(|l| l.contains("0.0.0.0/1") || l.contains("tunnelservice")),
            "{os}: the halves stay, nothing is rebuilt: {log:#?}"
        );
        assert!(into_tunnel(&sim, INTERNET), "{os}");
        assert!(pinned_via(&sim, "198.18.0.77").is_some(), "{os}: {log:#?}");
        assert_eq!(pinned_via(&sim, EXIT_ENDPOINT), None, "{os}: {log:#?}");
        if os == TargetOs::Macos {
            assert!(pinned_via(&sim, "198.18.0.2").is_some(), "{log:#?}");
            assert_eq!(pinned_via(&sim, SERVER), None, "{log:#?}");
        }
        // The new pin is added before the old one goes (add before delete).
        let add = log.iter().position(|l| l.contains("198.18.0.77")).unwrap();
        let del = log
            .iter()
            .position(|l| l.contains(EXIT_ENDPOINT) && l.to_lowercase().contains("delete"))
            .unwrap();
        assert!(add < del, "{os}: {log:#?}");
    }
}

/// Whether the simulated host routes `net` (IPv6) into the tunnel.
fn routed6(sim: &Sim, net: &str) -> bool {
    let net: Ipv6Net = net.parse().unwrap();
    sim.0.borrow().routes6.iter().any(|r| r.0 == net)
}

#[test]
fn ipv6_halves_and_routes_are_rechecked_like_ipv4() {
    for os in [TargetOs::Windows, TargetOs::Macos] {
        let sim = Sim::new(os);
        let mut engine = engine(os, &sim, "wg0");
        if os == TargetOs::Macos {
            macos_with_utun(&mut engine, &sim);
        }
        // Subnet routes are used only with --accept-routes (issue 24).
        engine.config.accept_routes = true;
        let mut peers = peers();
        // Peer b routes an IPv6 subnet behind it.
        peers[1]
            .allowed_ips
            .push("2001:db8:77::/64".parse().unwrap());
        sync(&mut engine, &sim, &peers).unwrap();
        assert!(routed6(&sim, "::/1") && routed6(&sim, "8000::/1"), "{os}");
        assert!(routed6(&sim, "2001:db8:77::/64"), "{os}: {:#?}", sim.log());

        // Something deletes the IPv6 halves only (the IPv4 ones stay): the route check
        // between syncs puts them back.
        sim.host().routes6.retain(|r| r.0.prefix_len() != 1);
        engine
            .check_routes(&mut Sink::Run(&mut sim.clone()))
            .unwrap();
        assert!(
            routed6(&sim, "::/1") && routed6(&sim, "8000::/1"),
            "{os}: {:#?}",
            sim.log()
        );

        // An IPv6 subnet route that went missing comes back at the next sync.
        sim.host().routes6.retain(|r| r.0.prefix_len() != 64);
        sync(&mut engine, &sim, &peers).unwrap();
        assert!(routed6(&sim, "2001:db8:77::/64"), "{os}: {:#?}", sim.log());
    }
}

mod common;

/// `up` itself (the daemon loop, against a real server): after the network changes, the
/// route check between syncs re-pins through the new router within seconds, long before
/// the next sync (60 s here).
#[test]
fn up_repins_within_seconds_of_a_network_change() {
    use wgmesh::agent::run::daemon::{self, Intervals};
    let dir = common::TempDir::new("ossim-up");
    let server = common::ServerProcess::start(&dir.path().join("peers.json"), &["--open"]);
    let exit = common::post(
        &server,
        "/register",
        &serde_json::json!({"public_key": common::new_key(), "hostname": "exit",
            "os": "linux", "endpoint": format!("{EXIT_ENDPOINT}:51820"), "exit_node": true,
            "allowed_ips": ["0.0.0.0/0"]})
        .to_string(),
    );
    assert_eq!(exit.status, 200, "{}", exit.json);

    let sim = Sim::new(TargetOs::Windows);
    let stop = Rc::new(AtomicBool::new(false));
    {
        let mut h = sim.host();
        // The first sync reads the table once; the network changes right after it.
        h.change_after_read = Some((1, "10.0.0.1", "10.0.0.0/22", "10.0.1.77"));
        h.stop_on = Some(("198.18.0.7 MASK 255.255.255.255 10.0.0.1", stop.clone()));
    }
    let mut engine = engine(TargetOs::Windows, &sim, "wg0");
    engine.config.assignment = None;
    engine.config.server = Some(format!("http://{}", server.addr).parse().unwrap());
    engine.client = ApiClient::new(
        engine.config.server.clone().unwrap(),
        Duration::from_secs(5),
    )
    .with_identity(engine.config.private_key.clone(), None);
    let intervals = Intervals {
        heartbeat: Duration::from_secs(60),
        sync: Duration::from_secs(60),
    };
    let started = Instant::now();
    let mut runner = sim.clone();
    daemon::run(&mut engine, &mut runner, intervals, &stop, None).unwrap();
    let h = sim.0.borrow();
    let (changed, repinned) = (
        h.changed_at.unwrap(),
        h.stopped_at.expect("never re-pinned"),
    );
    assert!(
        repinned.duration_since(changed) < Duration::from_secs(10),
        "re-pinned {:?} after the change: {:#?}",
        repinned.duration_since(changed),
        h.log
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "well before the next sync"
    );
    // `up` stopped and removed what it set up.
    assert!(h.files.is_empty());
    assert!(!h.routes.iter().any(|r| r.dest.prefix_len() == 1));
}
