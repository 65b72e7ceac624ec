//! Mesh address allocation (design 4.4): the lowest free host address of the network,
//! never the network or broadcast address, in O(log n) per operation.
//!
//! Addresses below a high-water mark are either allocated or sit in an ordered free set, so
//! "lowest free" is the free set's minimum or, when it is empty, the high-water mark itself:
//! no scan of the pool, however many peers hold addresses.

use ipnet::Ipv4Net;
use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;

/// Why an address could not be allocated or reserved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpamError {
    /// The network is too small to hold any peer.
    TooSmall(Ipv4Net),
    /// Every host address is taken.
    Exhausted(Ipv4Net),
    /// An address outside the usable hosts of the network.
    OutOfRange(Ipv4Addr, Ipv4Net),
    /// An address that is already held by someone.
    AlreadyAllocated(Ipv4Addr),
}

impl fmt::Display for IpamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpamError::TooSmall(net) => write!(
                f,
                "network {net} has no room for peers: use a prefix of /30 or shorter (e.g. 10.100.0.0/16)"
            ),
            IpamError::Exhausted(net) => write!(
                f,
                "the address pool {net} is exhausted: deregister unused peers or start with a larger --network-cidr"
            ),
            IpamError::OutOfRange(ip, net) => {
                write!(f, "{ip} is not a usable host address of {net}")
            }
            IpamError::AlreadyAllocated(ip) => write!(f, "{ip} is allocated twice"),
        }
    }
}

impl std::error::Error for IpamError {}

/// The allocator for one mesh network.
#[derive(Debug, Clone)]
pub struct Ipam {
    net: Ipv4Net,
    first: u32,
    last: u32,
    /// Every usable address below this is allocated or in `free`; none above it is allocated.
    high_water: u32,
    free: BTreeSet<u32>,
    allocated: usize,
}

impl Ipam {
    /// An empty pool over the host addresses of `net` (network and broadcast excluded).
    pub fn new(net: Ipv4Net) -> Result<Self, IpamError> {
        let net = net.trunc();
        if net.prefix_len() > 30 {
            return Err(IpamError::TooSmall(net));
        }
        let first = u32::from(net.network()) + 1;
        let last = u32::from(net.broadcast()) - 1;
        Ok(Ipam {
            net,
            first,
            last,
            high_water: first,
            free: BTreeSet::new(),
            allocated: 0,
        })
    }

    /// The network this pool allocates from.
    pub fn network(&self) -> Ipv4Net {
        self.net
    }

    /// How many addresses are held.
    pub fn allocated(&self) -> usize {
        self.allocated
    }

    /// How many host addresses the pool has in all.
    pub fn capacity(&self) -> usize {
        (self.last - self.first + 1) as usize
    }

    /// Takes the lowest free address.
    pub fn allocate(&mut self) -> Result<Ipv4Addr, IpamError> {
        let addr = if let Some(addr) = self.free.pop_first() {
            addr
        } else if self.high_water <= self.last {
            self.high_water += 1;
            self.high_water - 1
        } else {
            return Err(IpamError::Exhausted(self.net));
        };
        self.allocated += 1;
        Ok(Ipv4Addr::from(addr))
    }

    /// Marks a specific address as held, as when the registry is loaded from disk.
    pub fn reserve(&mut self, ip: Ipv4Addr) -> Result<(), IpamError> {
        let addr = u32::from(ip);
        if addr < self.first || addr > self.last {
            return Err(IpamError::OutOfRange(ip, self.net));
        }
        if addr >= self.high_water {
            self.free.extend(self.high_water..addr);
            self.high_water = addr + 1;
        } else if !self.free.remove(&addr) {
            return Err(IpamError::AlreadyAllocated(ip));
        }
        self.allocated += 1;
        Ok(())
    }

    /// Returns an address to the pool; releasing a free or foreign address does nothing.
    pub fn release(&mut self, ip: Ipv4Addr) {
        let addr = u32::from(ip);
        if addr < self.first || addr >= self.high_water || !self.free.insert(addr) {
            return;
        }
        self.allocated -= 1;
        // Keep the free set small: fold a free tail back under the high-water mark.
        while self.high_water > self.first && self.free.remove(&(self.high_water - 1)) {
            self.high_water -= 1;
        }
    }

    /// Whether `ip` is currently held.
    pub fn is_allocated(&self, ip: Ipv4Addr) -> bool {
        let addr = u32::from(ip);
        addr >= self.first && addr < self.high_water && !self.free.contains(&addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn allocates_in_order_skipping_the_network_address() {
        let mut pool = Ipam::new(net("10.100.0.0/16")).unwrap();
        assert_eq!(pool.allocate().unwrap(), ip("10.100.0.1"));
        assert_eq!(pool.allocate().unwrap(), ip("10.100.0.2"));
        assert_eq!(pool.allocate().unwrap(), ip("10.100.0.3"));
    }

    #[test]
    fn released_addresses_are_reused_lowest_first() {
        let mut pool = Ipam::new(net("10.100.0.0/16")).unwrap();
        let addrs: Vec<_> = (0..5).map(|_| pool.allocate().unwrap()).collect();
        pool.release(addrs[3]);
        pool.release(addrs[1]);
        assert_eq!(pool.allocate().unwrap(), addrs[1]);
        assert_eq!(pool.allocate().unwrap(), addrs[3]);
        assert_eq!(pool.allocate().unwrap(), ip("10.100.0.6"));
    }

    #[test]
    fn slash_30_holds_two_peers_then_is_exhausted() {
        let mut pool = Ipam::new(net("198.18.0.0/30")).unwrap();
        assert_eq!(pool.capacity(), 2);
        assert_eq!(pool.allocate().unwrap(), ip("198.18.0.1"));
        assert_eq!(pool.allocate().unwrap(), ip("198.18.0.2"));
        let err = pool.allocate().unwrap_err();
        assert_eq!(err, IpamError::Exhausted(net("198.18.0.0/30")));
        assert!(err.to_string().contains("exhausted"));
        pool.release(ip("198.18.0.1"));
        assert_eq!(pool.allocate().unwrap(), ip("198.18.0.1"));
    }

    #[test]
    fn slash_16_hands_out_every_host_but_never_broadcast() {
        let mut pool = Ipam::new(net("10.100.0.0/16")).unwrap();
        let mut last = None;
        for _ in 0..65_534 {
            last = Some(pool.allocate().unwrap());
        }
        assert_eq!(last, Some(ip("10.100.255.254")));
        assert!(pool.allocate().is_err());
        assert_eq!(pool.allocated(), 65_534);
    }

    #[test]
    fn too_small_networks_are_refused() {
        assert_eq!(
            Ipam::new(net("10.0.0.0/31")).unwrap_err(),
            IpamError::TooSmall(net("10.0.0.0/31"))
        );
    }

    #[test]
    fn reserve_in_any_order_then_allocate_fills_gaps() {
        let mut pool = Ipam::new(net("10.100.0.0/24")).unwrap();
        pool.reserve(ip("10.100.0.5")).unwrap();
        pool.reserve(ip("10.100.0.2")).unwrap();
        assert_eq!(
            pool.reserve(ip("10.100.0.5")),
            Err(IpamError::AlreadyAllocated(ip("10.100.0.5")))
        );
        assert!(pool.reserve(ip("10.100.0.255")).is_err());
        assert!(pool.reserve(ip("10.100.1.1")).is_err());
        let got: Vec<_> = (0..4).map(|_| pool.allocate().unwrap()).collect();
        assert_eq!(
            got,
            ["10.100.0.1", "10.100.0.3", "10.100.0.4", "10.100.0.6"].map(ip)
        );
        assert!(pool.is_allocated(ip("10.100.0.5")));
        assert!(!pool.is_allocated(ip("10.100.0.7")));
    }

    #[test]
    fn releasing_twice_or_foreign_addresses_changes_nothing() {
        let mut pool = Ipam::new(net("10.100.0.0/24")).unwrap();
        let a = pool.allocate().unwrap();
        pool.release(a);
        pool.release(a);
        pool.release(ip("192.0.2.1"));
        assert_eq!(pool.allocated(), 0);
        assert_eq!(pool.allocate().unwrap(), a);
    }
}
