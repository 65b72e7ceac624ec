//! Who is sending to the relay, per member IP: each source address's liveness, the credit it
//! earned (what the relay may send it unasked), the members it recently sent handshakes to,
//! and each IP's handshake rate. Bounded: a member IP keeps at most `ports_per_ip` ports.

use super::limits::RelayLimits;
use super::stats::Drop;
use crate::keys::PublicKey;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Recipients remembered per source address.
const RECENT: usize = 4;

#[derive(Debug, Clone, Copy)]
struct Port {
    port: u16,
    last: Instant,
    credit_packets: u32,
    credit_bytes: u32,
    /// The members this address sent its latest handshakes to, tried first next time: a
    /// full MAC1 scan costs about a microsecond per online member.
    recent: [Option<PublicKey>; RECENT],
}

#[derive(Debug)]
struct Source {
    ports: Vec<Port>,
    /// GCRA theoretical arrival time of the next handshake.
    tat: Instant,
}

/// Every member IP that is sending us WireGuard, with its ports.
#[derive(Debug, Default)]
pub(super) struct Sources {
    map: HashMap<IpAddr, Source>,
}

impl Sources {
    fn port_mut(&mut self, addr: SocketAddr) -> Option<&mut Port> {
        self.map
            .get_mut(&addr.ip())?
            .ports
            .iter_mut()
            .find(|p| p.port == addr.port())
    }

    /// Whether `addr` sent us anything within `live`.
    pub(super) fn is_live(&mut self, addr: SocketAddr, now: Instant, live: Duration) -> bool {
        self.port_mut(addr)
            .is_some_and(|p| now.saturating_duration_since(p.last) < live)
    }

    /// Whether `addr` is remembered at all.
    pub(super) fn knows(&self, addr: SocketAddr) -> bool {
        self.map
            .get(&addr.ip())
            .is_some_and(|s| s.ports.iter().any(|p| p.port == addr.port()))
    }

    /// How many ports of `ip` are remembered.
    #[cfg(test)]
    pub(super) fn ports_at(&self, ip: IpAddr) -> usize {
        self.map.get(&ip).map_or(0, |s| s.ports.len())
    }

    /// The addresses at `ip` that sent us something within `live`, with when.
    pub(super) fn live_at(
        &self,
        ip: IpAddr,
        now: Instant,
        live: Duration,
    ) -> impl Iterator<Item = (Instant, SocketAddr)> + '_ {
        self.map.get(&ip).into_iter().flat_map(move |s| {
            s.ports
                .iter()
                .filter(move |p| now.saturating_duration_since(p.last) < live)
                .map(move |p| (p.last, SocketAddr::new(ip, p.port)))
        })
    }

    /// The members `addr` recently sent handshakes to.
    pub(super) fn recent(&mut self, addr: SocketAddr) -> [Option<PublicKey>; RECENT] {
        self.port_mut(addr).map(|p| p.recent).unwrap_or_default()
    }

    /// Notes that `addr` sent a handshake to `key`.
    pub(super) fn remember(&mut self, addr: SocketAddr, key: PublicKey) {
        if let Some(port) = self.port_mut(addr) {
            if !port.recent.contains(&Some(key)) {
                port.recent.rotate_right(1);
                port.recent[0] = Some(key);
            }
        }
    }

    /// Records a datagram from `from`: the address is alive and earns credit.
    pub(super) fn earn(
        &mut self,
        from: SocketAddr,
        len: usize,
        now: Instant,
        limits: &RelayLimits,
    ) -> Result<(), Drop> {
        let source = self.map.entry(from.ip()).or_insert_with(|| Source {
            ports: Vec::new(),
            tat: now,
        });
        let port = match source.ports.iter().position(|p| p.port == from.port()) {
            Some(i) => &mut source.ports[i],
            None => {
                if source.ports.len() >= limits.ports_per_ip {
                    // Forget the idlest port of this IP: only its own ports compete.
                    let idlest = (0..source.ports.len())
                        .min_by_key(|&i| source.ports[i].last)
                        .ok_or(Drop::TableFull)?;
                    source.ports.swap_remove(idlest);
                }
                source.ports.push(Port {
                    port: from.port(),
                    last: now,
                    credit_packets: 0,
                    credit_bytes: 0,
                    recent: [None; RECENT],
                });
                source.ports.last_mut().expect("just pushed")
            }
        };
        port.last = now;
        port.credit_packets = (port.credit_packets + 1).min(limits.credit_packets);
        port.credit_bytes = port
            .credit_bytes
            .saturating_add(len as u32)
            .min(limits.credit_bytes);
        Ok(())
    }

    /// Spends `to`'s credit on a datagram of `len` bytes; false if it has not earned it.
    pub(super) fn charge(&mut self, to: SocketAddr, len: usize) -> bool {
        match self.port_mut(to) {
            Some(p) if p.credit_packets >= 1 && p.credit_bytes as usize >= len => {
                p.credit_packets -= 1;
                p.credit_bytes -= len as u32;
                true
            }
            _ => false,
        }
    }

    /// Charges one handshake to `ip`'s GCRA bucket; false when it is over its rate.
    pub(super) fn within_rate(&mut self, ip: IpAddr, now: Instant, limits: &RelayLimits) -> bool {
        if limits.handshakes_per_second == 0 {
            return true;
        }
        let interval = Duration::from_secs(1) / limits.handshakes_per_second;
        let tolerance = interval * limits.handshake_burst.saturating_sub(1);
        let Some(source) = self.map.get_mut(&ip) else {
            return true;
        };
        let tat = source.tat.max(now);
        if tat.saturating_duration_since(now) > tolerance {
            return false;
        }
        source.tat = tat + interval;
        true
    }

    /// Forgets ports idle for `idle`, and IPs left without one.
    pub(super) fn sweep(&mut self, now: Instant, idle: Duration) {
        for source in self.map.values_mut() {
            source
                .ports
                .retain(|p| now.saturating_duration_since(p.last) < idle);
        }
        self.map.retain(|_, s| !s.ports.is_empty());
    }

    /// Keeps only the IPs `keep` accepts (the member IPs of a new view).
    pub(super) fn retain_ips(&mut self, keep: impl Fn(IpAddr) -> bool) {
        self.map.retain(|ip, _| keep(*ip));
    }

    /// Whether nothing is remembered.
    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
