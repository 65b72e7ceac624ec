//! Where relayed paths ([`crate::agent::decide::path`]) meet: the server's own relay, learned from the
//! port its peer list advertises, and with replicas each live replica's relay, so both ends
//! of a pair pick the same one; and which of those relays still answer
//! ([`crate::agent::observe::relay_probe`] asks, [`crate::agent::decide::relay_health`] decides). Part of [`Engine`], kept
//! beside the path choice it feeds.

use crate::agent::observe::host;
use crate::agent::observe::relay_probe::LIST_EVERY;
use crate::agent::run::engine::Engine;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

impl Engine {
    /// Where the server relays WireGuard (its own host, the port it advertises). A full list
    /// without a port means no relay; a delta without one keeps what we know.
    pub(in crate::agent) fn learn_relay(&mut self, relay_port: Option<u16>, authoritative: bool) {
        if relay_port.is_none() && !authoritative {
            return;
        }
        let relay = relay_port.and_then(|port| {
            host::server_ip(self.client.server()).map(|ip| SocketAddr::new(ip, port))
        });
        if relay != self.paths.relay {
            match relay {
                Some(r) => log::info!("the server relays WireGuard at {r}"),
                None => log::info!("the server offers no relay: direct paths only"),
            }
            self.paths.relay = relay;
        }
    }

    /// With a relay and replicas (issue 11): learns each live replica's relay from
    /// `GET /replicas` (its host, the same port as ours), so every pair meets at the
    /// replica both ends pick alike ([`PathTable::relay_for`](crate::agent::decide::path::PathTable::relay_for)). A failure keeps the last
    /// list: a pair must not split because one end missed one answer. Read at every sync,
    /// and every [`LIST_EVERY`](crate::agent::observe::relay_probe::LIST_EVERY) between syncs while a peer
    /// is relayed through a replica.
    pub(in crate::agent) fn refresh_relays(&mut self) {
        let Some(relay) = self.paths.relay else {
            self.paths.relays.clear();
            return;
        };
        self.relay_probe.listed_at = Some(std::time::Instant::now());
        let urls = match self.client.replicas() {
            Ok(urls) => urls,
            Err(e) => {
                log::warn!("cannot read the replica list: {e}; keeping the last one");
                return;
            }
        };
        let relays: std::collections::BTreeMap<String, SocketAddr> = urls
            .into_iter()
            .filter_map(|url| {
                let ip = host::server_ip(&url.parse().ok()?)?;
                Some((url, SocketAddr::new(ip, relay.port())))
            })
            .collect();
        if relays != self.paths.relays {
            let list: Vec<String> = relays.values().map(ToString::to_string).collect();
            log::info!(
                "relayed pairs meet at one of {} replica relay(s): {}",
                relays.len(),
                list.join(", ")
            );
            self.paths.relays = relays;
        }
    }
}

impl Engine {
    /// Asks the replica relays our relayed peers use (and those down) whether they still
    /// answer, and takes the down ones out of the rendezvous
    /// ([`crate::agent::decide::path::PathTable::relay_for`]). `wait` zero: `up`'s tick, which reads the
    /// previous tick's answers and sends; else a one-shot round that waits that long.
    /// Nothing to do with fewer than two replicas.
    pub(in crate::agent) fn watch_relays(&mut self, wait: Duration) {
        let stale = self
            .relay_probe
            .listed_at
            .is_none_or(|t| t.elapsed() >= LIST_EVERY);
        if stale && !self.paths.relays.is_empty() && !self.paths.relays_in_use().is_empty() {
            self.refresh_relays();
        }
        let listed: BTreeSet<SocketAddr> = self.paths.relays.values().copied().collect();
        self.paths.health.retain(&listed);
        if listed.len() < 2 {
            return;
        }
        let in_use = self.paths.relays_in_use();
        let (gone, back) = self
            .relay_probe
            .watch(&mut self.paths.health, &in_use, wait);
        for relay in gone {
            log::warn!(
                "the relay at {relay} stopped answering: relayed pairs that met there move to \
                 another replica's relay"
            );
        }
        for relay in back {
            log::info!("the relay at {relay} answers again: it rejoins the rendezvous");
        }
    }
}
