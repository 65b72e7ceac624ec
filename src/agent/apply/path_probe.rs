//! The probe's one datagram ([`crate::agent::decide::path`]): while a relayed peer's endpoint points at its
//! direct address for a probe window, the agent sends one UDP datagram to the peer's mesh
//! address, so WireGuard carries it (encrypted, as transport data) to the direct address
//! at once instead of waiting up to 25 s for the next keepalive. If the direct path works,
//! the peer's WireGuard roams to our address on receiving it and its next packets (the
//! kernel's ICMP "port unreachable" for the discard port, if nothing else) come back
//! directly: the proof the path machine looks for. Tailscale's magicsock sends a disco
//! ping for the same purpose; ours rides inside the tunnel, so no port of our own is needed
//! and unmodified WireGuard does the rest. The same datagram checks a direct path that has
//! gone quiet while data goes out: the peer's answer (any packet) says the path still works.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};

/// The discard service's port (RFC 863): nothing listens there, so nothing acts on it.
pub const DISCARD_PORT: u16 = 9;

/// How a probe datagram leaves: the real one sends UDP; tests record the addresses.
pub type Poke = fn(Ipv4Addr);

/// Sends one probe datagram to `mesh_ip` through the tunnel (best effort: a failure only
/// means this probe proves nothing; the next one tries again).
pub fn poke(mesh_ip: Ipv4Addr) {
    let sent = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).and_then(|s| {
        s.send_to(
            b"wgmesh path probe",
            SocketAddr::from((mesh_ip, DISCARD_PORT)),
        )
    });
    if let Err(e) = sent {
        log::debug!("probe datagram to {mesh_ip}: {e}");
    }
}
