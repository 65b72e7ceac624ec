//! The agent's view of its own connectivity: does UDP reach the coordination server, what
//! public address and port does the world see, and does that mapping change per destination?
//!
//! The last question decides whether direct WireGuard paths can work: a NAT that keeps one
//! mapping for a local socket whatever the destination ("endpoint-independent mapping",
//! RFC 4787) lets peers reach us at the address the server saw; one that picks a new port per
//! destination (the "symmetric" NAT of old) does not. We detect it the way RFC 5780 section
//! 4.3 does: ask two server ports from the same local socket and compare the answers.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use crate::proto::stun::{self, BindingResponse, TransactionId};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// Requests sent per probe before giving up. RFC 8489 sends 7 over ~40 s; an agent asking a
/// server it is configured for needs an answer in about a second or a clear "no".
pub const TRIES: u32 = 3;

/// A sensible per-server timeout for interactive use (`wgmesh netcheck`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(1500);

/// One successful STUN exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Our address and port as the server saw them.
    pub mapped: SocketAddr,
    /// Time from sending the request that was answered to receiving its answer (each try has
    /// its own transaction id, so a late answer to an earlier try is never mistimed).
    pub rtt: Duration,
}

/// Why a probe or netcheck could not be carried out, phrased for the person running it.
#[derive(Debug)]
pub enum NetcheckError {
    /// The local socket could not be created.
    Bind {
        /// The address we tried to bind.
        addr: SocketAddr,
        /// What the OS said.
        source: io::Error,
    },
    /// Sending or receiving failed for a local reason (no route, socket closed...).
    Io {
        /// The STUN server we were talking to.
        server: SocketAddr,
        /// What the OS said.
        source: io::Error,
    },
    /// Every try timed out.
    NoAnswer {
        /// The STUN server that stayed silent.
        server: SocketAddr,
        /// How many requests we sent.
        tries: u32,
        /// How long we waited in total.
        timeout: Duration,
    },
    /// The server answered with a STUN error response.
    Refused {
        /// The STUN server that refused.
        server: SocketAddr,
        /// Its error code (0 if it sent none).
        code: u16,
    },
    /// The caller's arguments cannot work (e.g. an IPv6 server from an IPv4 socket).
    InvalidArgument(String),
}

impl fmt::Display for NetcheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetcheckError::Bind { addr, source } => {
                write!(f, "cannot bind a UDP socket to {addr}: {source}")
            }
            NetcheckError::Io { server, source } => {
                write!(f, "UDP exchange with STUN server {server} failed: {source}")
            }
            NetcheckError::NoAnswer {
                server,
                tries,
                timeout,
            } => write!(
                f,
                "no STUN answer from {server} after {tries} tries in {timeout:?}: is `wgmesh \
                 server --udp-listen` running there and UDP allowed between here and it?"
            ),
            NetcheckError::Refused { server, code } => write!(
                f,
                "STUN server {server} refused our Binding Request with error {code}"
            ),
            NetcheckError::InvalidArgument(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for NetcheckError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NetcheckError::Bind { source, .. } | NetcheckError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The unspecified address of `server`'s family, so a probe's socket can reach it.
fn any_for(server: SocketAddr) -> SocketAddr {
    match server {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    }
}

fn bind(addr: SocketAddr) -> Result<UdpSocket, NetcheckError> {
    UdpSocket::bind(addr).map_err(|source| NetcheckError::Bind { addr, source })
}

/// Asks `server` for our mapped address from a fresh socket bound to `bind` (default: any
/// address of the server's family, ephemeral port). `timeout` bounds the whole probe.
pub fn probe(
    server: SocketAddr,
    timeout: Duration,
    bind_addr: Option<SocketAddr>,
) -> Result<Probe, NetcheckError> {
    let socket = bind(bind_addr.unwrap_or_else(|| any_for(server)))?;
    probe_from(&socket, server, timeout)
}

/// Asks `server` for the mapped address of an existing `socket`, for callers that need the
/// answer for a particular local port. The socket's read timeout is changed during the probe
/// and restored afterwards; datagrams that are not the answer are read and discarded.
///
/// Retransmits like RFC 8489 section 6.2.1, scaled to `timeout`: [`TRIES`] requests at 0,
/// T/7 and 3T/7, then waits until T, so a lost request or answer costs a fraction of T rather
/// than all of it.
pub fn probe_from(
    socket: &UdpSocket,
    server: SocketAddr,
    timeout: Duration,
) -> Result<Probe, NetcheckError> {
    let io_err = |source| NetcheckError::Io { server, source };
    if timeout.is_zero() {
        return Err(NetcheckError::InvalidArgument(
            "a STUN probe needs a timeout above zero".to_owned(),
        ));
    }
    let local = socket.local_addr().map_err(io_err)?;
    if local.is_ipv4() && server.is_ipv6() {
        return Err(NetcheckError::InvalidArgument(format!(
            "cannot reach IPv6 STUN server {server} from IPv4 socket {local}"
        )));
    }
    let saved_timeout = socket.read_timeout().map_err(io_err)?;
    let result = exchange(socket, server, timeout);
    // Best effort: the probe's answer matters more than restoring a timeout.
    let _ = socket.set_read_timeout(saved_timeout);
    result
}

/// Compares addresses as the same host, whether or not a dual-stack socket mapped IPv4.
fn same_endpoint(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
}

fn exchange(
    socket: &UdpSocket,
    server: SocketAddr,
    timeout: Duration,
) -> Result<Probe, NetcheckError> {
    let io_err = |source| NetcheckError::Io { server, source };
    let start = Instant::now();
    let deadline = start + timeout;
    let first_rto = timeout / 7;
    let mut ids = [TransactionId([0; 12]); TRIES as usize];
    let mut sent_at = [start; TRIES as usize];
    let mut sent = 0usize;
    let mut next_send = start;
    let mut buf = [0u8; 1500];
    loop {
        let now = Instant::now();
        if sent < ids.len() && now >= next_send {
            ids[sent] = TransactionId::random();
            socket
                .send_to(&stun::binding_request(&ids[sent]), server)
                .map_err(io_err)?;
            sent_at[sent] = now;
            next_send = now + first_rto * (1 << sent);
            sent += 1;
        }
        if now >= deadline {
            return Err(NetcheckError::NoAnswer {
                server,
                tries: TRIES,
                timeout,
            });
        }
        let wake = if sent < ids.len() {
            next_send.min(deadline)
        } else {
            deadline
        };
        let wait = wake
            .saturating_duration_since(now)
            .max(Duration::from_millis(1));
        socket.set_read_timeout(Some(wait)).map_err(io_err)?;
        let (len, from) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                        // An ICMP error for an earlier datagram; the next try may still work.
                        | io::ErrorKind::ConnectionRefused
                        | io::ErrorKind::ConnectionReset
                ) =>
            {
                continue
            }
            Err(e) => return Err(io_err(e)),
        };
        let received = Instant::now();
        if !same_endpoint(from, server) {
            continue;
        }
        let Ok(response) = stun::parse_binding_response(&buf[..len]) else {
            continue;
        };
        let Some(i) = ids[..sent]
            .iter()
            .position(|id| *id == response.transaction_id())
        else {
            continue;
        };
        return match response {
            BindingResponse::Success { mapped, .. } => Ok(Probe {
                mapped,
                rtt: received.saturating_duration_since(sent_at[i]),
            }),
            BindingResponse::Error { code, .. } => Err(NetcheckError::Refused { server, code }),
        };
    }
}

/// What `wgmesh netcheck` reports; serializable so `--json` output and status uploads share
/// one shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// True when at least one STUN server answered: UDP to the coordination server works.
    pub udp: bool,
    /// Our public address and port for the probing socket (from the primary server when it
    /// answered, else the secondary).
    pub mapped: Option<SocketAddr>,
    /// Whether the NAT gave the same local socket different public addresses for the two
    /// servers (`true` means direct connections will mostly fail); `None` when it could not be
    /// measured (no secondary, or one of the two did not answer).
    pub mapping_varies_by_destination: Option<bool>,
    /// Round-trip time to the server that gave `mapped`, in milliseconds in JSON.
    #[serde(rename = "rtt_ms", with = "duration_ms")]
    pub rtt: Option<Duration>,
    /// The local address the probes were sent from.
    pub local: Option<SocketAddr>,
    /// The primary STUN server asked.
    pub primary: SocketAddr,
    /// The secondary STUN server asked, if any.
    pub secondary: Option<SocketAddr>,
    /// What the secondary saw, to show why `mapping_varies_by_destination` is what it is.
    pub secondary_mapped: Option<SocketAddr>,
    /// Why something is missing from the report, one message per failed probe.
    pub errors: Vec<String>,
}

/// Serializes `Option<Duration>` as fractional milliseconds, which people and dashboards read
/// more easily than serde's default `{secs, nanos}`.
mod duration_ms {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        d.map(|d| d.as_secs_f64() * 1000.0).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let ms = Option::<f64>::deserialize(d)?;
        ms.map(|ms| {
            Duration::try_from_secs_f64(ms / 1000.0)
                .map_err(|_| serde::de::Error::custom("rtt_ms must be a non-negative number"))
        })
        .transpose()
    }
}

impl fmt::Display for Report {
    /// The human form `wgmesh netcheck` prints without `--json`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "UDP: {}", if self.udp { "yes" } else { "no" })?;
        if let Some(mapped) = self.mapped {
            write!(f, "Public address: {mapped}")?;
            if let Some(rtt) = self.rtt {
                write!(f, " (rtt {:.2} ms)", rtt.as_secs_f64() * 1000.0)?;
            }
            writeln!(f)?;
        }
        match self.mapping_varies_by_destination {
            Some(false) => writeln!(
                f,
                "NAT mapping: same for every destination (direct connections can work)"
            )?,
            Some(true) => writeln!(
                f,
                "NAT mapping: changes per destination (direct connections will mostly fail)"
            )?,
            None => writeln!(f, "NAT mapping: unknown")?,
        }
        for e in &self.errors {
            writeln!(f, "note: {e}")?;
        }
        Ok(())
    }
}

/// Probes `primary` and then `secondary` (another port or address of a STUN server) from one
/// local socket bound to `bind` (default: any address of the primary's family), each within
/// `timeout`, and reports what they saw.
///
/// Only local failures are errors (bad arguments, no socket); servers that do not answer are
/// recorded in [`Report::errors`] with `udp: false` if neither did, so the CLI can still print
/// a report.
pub fn netcheck(
    primary: SocketAddr,
    secondary: Option<SocketAddr>,
    timeout: Duration,
    bind_addr: Option<SocketAddr>,
) -> Result<Report, NetcheckError> {
    if secondary.is_some_and(|s| same_endpoint(s, primary)) {
        return Err(NetcheckError::InvalidArgument(format!(
            "the secondary STUN server must differ from the primary ({primary}) to compare mappings"
        )));
    }
    let socket = bind(bind_addr.unwrap_or_else(|| any_for(primary)))?;
    let mut report = Report {
        udp: false,
        mapped: None,
        mapping_varies_by_destination: None,
        rtt: None,
        local: socket.local_addr().ok(),
        primary,
        secondary,
        secondary_mapped: None,
        errors: Vec::new(),
    };
    let ask = |server: SocketAddr, report: &mut Report| -> Result<Option<Probe>, NetcheckError> {
        match probe_from(&socket, server, timeout) {
            Ok(p) => Ok(Some(p)),
            Err(e @ NetcheckError::InvalidArgument(_)) => Err(e),
            Err(e) => {
                report.errors.push(e.to_string());
                Ok(None)
            }
        }
    };
    let first = ask(primary, &mut report)?;
    let second = match secondary {
        Some(s) => ask(s, &mut report)?,
        None => None,
    };
    report.secondary_mapped = second.map(|p| p.mapped);
    if let Some(p) = first.or(second) {
        report.udp = true;
        report.mapped = Some(p.mapped);
        report.rtt = Some(p.rtt);
    }
    if let (Some(a), Some(b)) = (first, second) {
        report.mapping_varies_by_destination = Some(!same_endpoint(a.mapped, b.mapped));
    }
    Ok(report)
}

/// The design's STUN port on the coordination server.
pub const DEFAULT_STUN_PORT: u16 = 3478;

/// `HOST:3478` for the coordination server at `url`: where `netcheck` asks by default.
pub fn stun_server_for(url: &crate::agent::client::ServerUrl) -> String {
    let authority = url.authority();
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => authority,
    };
    format!("{host}:{DEFAULT_STUN_PORT}")
}

/// Whether the internet sees the chosen exit node's address: the exit-node part of
/// `netcheck`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExitCheck {
    /// The exit node asked for.
    pub exit_node: String,
    /// Its public address, as the coordination server saw it.
    pub expected: Option<IpAddr>,
    /// The address the STUN server saw us from.
    pub seen: Option<IpAddr>,
    /// Whether they match.
    pub ok: bool,
}

/// Asks `server` for our mapped address from a socket bound to the WireGuard interface
/// `interface` (Linux `SO_BINDTODEVICE`, needs root or CAP_NET_RAW), so the request goes
/// through the tunnel as internet traffic does, even when the server is on the local
/// network (whose more specific route otherwise keeps it outside the tunnel). Elsewhere,
/// or without the privilege, `None`: the caller falls back to the plain probe.
pub fn probe_through(
    interface: &str,
    server: SocketAddr,
    timeout: Duration,
) -> Option<Result<Probe, NetcheckError>> {
    let socket = match bind(any_for(server)) {
        Ok(s) => s,
        Err(e) => return Some(Err(e)),
    };
    if let Err(e) = super::bind_device::bind_to_device(&socket, interface) {
        log::debug!("cannot bind the exit check's socket to {interface}: {e}");
        return None;
    }
    Some(probe_from(&socket, server, timeout))
}

impl ExitCheck {
    /// The interface to probe through for the exit check: the applied interface, when an
    /// exit node is chosen and its full tunnel is up.
    pub fn tunnel_interface(config: &crate::agent::state::config::ClientConfig) -> Option<&str> {
        config.use_exit_node.as_ref()?;
        let applied = config.applied.as_ref()?;
        applied.full_tunnel.as_ref()?;
        Some(&applied.interface)
    }

    /// The check for `config` (saved at `config_path`, beside its cached peer list) given
    /// the address the STUN server saw us from through the tunnel (`through`, see
    /// [`probe_through`]) or, failing that, in `report`; `None` unless an exit node is
    /// chosen and its tunnel is up.
    pub fn of(
        config: &crate::agent::state::config::ClientConfig,
        config_path: &std::path::Path,
        report: &Report,
        through: Option<IpAddr>,
    ) -> Option<ExitCheck> {
        let wanted = config.use_exit_node.clone()?;
        config.applied.as_ref()?.full_tunnel.as_ref()?;
        let peers = crate::agent::run::engine::load_peer_cache(config_path);
        let expected = peers
            .iter()
            .find(|p| crate::agent::decide::desired::is_named(p, &wanted))
            .and_then(|p| p.endpoint)
            .map(|e| e.0.ip());
        let seen = through.or(report.mapped.map(|m| m.ip()));
        Some(ExitCheck {
            exit_node: wanted,
            ok: expected.is_some() && expected == seen,
            expected,
            seen,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_stun_server_is_the_coordination_host_on_3478() {
        for (url, want) in [
            ("http://198.18.0.1:8080", "198.18.0.1:3478"),
            ("https://mesh.example.com", "mesh.example.com:3478"),
            ("http://[fd00::1]:8080", "[fd00::1]:3478"),
        ] {
            let url: crate::agent::client::ServerUrl = url.parse().unwrap();
            assert_eq!(stun_server_for(&url), want);
        }
    }

    #[test]
    fn no_answer_message_says_who_how_often_and_what_to_check() {
        // A bound socket that never answers: loopback only, nothing leaves the machine.
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let server = silent.local_addr().unwrap();
        let start = Instant::now();
        let err = probe(server, Duration::from_millis(300), None).unwrap_err();
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(2));
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!(
                "no STUN answer from {server} after 3 tries in 300ms"
            )),
            "{msg}"
        );
        assert!(msg.contains("wgmesh server --udp-listen"), "{msg}");
        // All three tries arrived, each with its own transaction id.
        silent
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = [0u8; 64];
        let mut ids = Vec::new();
        while let Ok((n, _)) = silent.recv_from(&mut buf) {
            let req = stun::parse_binding_request(&buf[..n]).unwrap();
            ids.push(req.transaction_id().unwrap());
        }
        assert_eq!(ids.len(), 3);
        assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2]);
    }

    #[test]
    fn arguments_that_cannot_work_are_refused() {
        let v4 = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(matches!(
            probe_from(&v4, "[::1]:3478".parse().unwrap(), DEFAULT_TIMEOUT),
            Err(NetcheckError::InvalidArgument(_))
        ));
        assert!(matches!(
            probe_from(&v4, "127.0.0.1:3478".parse().unwrap(), Duration::ZERO),
            Err(NetcheckError::InvalidArgument(_))
        ));
        let a: SocketAddr = "127.0.0.1:3478".parse().unwrap();
        assert!(matches!(
            netcheck(a, Some(a), DEFAULT_TIMEOUT, None),
            Err(NetcheckError::InvalidArgument(_))
        ));
    }

    #[test]
    fn report_json_uses_milliseconds_and_round_trips() {
        let report = Report {
            udp: true,
            mapped: Some("203.0.113.5:41641".parse().unwrap()),
            mapping_varies_by_destination: Some(false),
            rtt: Some(Duration::from_micros(1500)),
            local: Some("0.0.0.0:41641".parse().unwrap()),
            primary: "198.51.100.1:3478".parse().unwrap(),
            secondary: Some("198.51.100.1:3479".parse().unwrap()),
            secondary_mapped: Some("203.0.113.5:41641".parse().unwrap()),
            errors: vec![],
        };
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["rtt_ms"], serde_json::json!(1.5));
        assert_eq!(json["mapped"], serde_json::json!("203.0.113.5:41641"));
        assert_eq!(
            json["mapping_varies_by_destination"],
            serde_json::json!(false)
        );
        let back: Report = serde_json::from_value(json).unwrap();
        assert_eq!(back, report);
        let text = report.to_string();
        assert!(text.contains("UDP: yes"), "{text}");
        assert!(text.contains("203.0.113.5:41641 (rtt 1.50 ms)"), "{text}");
    }
}
