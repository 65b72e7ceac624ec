//! Where relayed paths ([`super::path`]) meet: the server's own relay, learned from the
//! port its peer list advertises, and with replicas each live replica's relay, so both ends
//! of a pair pick the same one. Part of [`Engine`], kept beside the path choice it feeds.

use super::engine::Engine;
use super::host;
use std::net::SocketAddr;

impl Engine {
    /// Where the server relays WireGuard (its own host, the port it advertises). A full list
    /// without a port means no relay; a delta without one keeps what we know.
    pub(super) fn learn_relay(&mut self, relay_port: Option<u16>, authoritative: bool) {
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
    /// replica both ends pick alike ([`PathTable::relay_for`](super::path::PathTable::relay_for)). A failure keeps the last
    /// list: a pair must not split because one end missed one answer. Read at every sync,
    /// and every [`LIST_EVERY`](super::relay_probe::LIST_EVERY) between syncs while a peer
    /// is relayed through a replica.
    pub(super) fn refresh_relays(&mut self) {
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
