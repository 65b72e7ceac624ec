//! Which interface a datagram arrived on, so the `.mesh` resolver answers only peers (and the
//! node itself), not a LAN neighbour that routes to the node's mesh address.
//!
//! Linux delivers a packet for any local address whatever interface it arrives on (the weak
//! host model), so a socket bound to the mesh address alone also hears a neighbour that
//! sends to that address via the node's LAN address. The resolver asks the kernel, per
//! datagram, where it came in (`IP_PKTINFO` / `IPV6_RECVPKTINFO` with `recvmsg`), and
//! answers only what arrived on the mesh interface or on loopback (the node's own stub
//! resolvers and tools: locally sent packets come in on `lo`).
//!
//! Why not `SO_BINDTODEVICE` to the mesh interface: a socket bound to the device never hears
//! loopback, so systemd-resolved and `dig` on the node itself would get no answer; and when
//! wireguard-go's tun is recreated under the same name the socket stays tied to the old
//! index. The per-datagram check covers both (an unknown index makes it look the name up
//! again). Elsewhere than Linux the OS is not asked and every datagram is admitted, as
//! before (README says so).

use std::io;
use std::net::{SocketAddr, UdpSocket};

/// Decides, per datagram, whether its arrival interface may be answered: loopback always,
/// the mesh interface (by name, looked up again when the index seems to have changed), and
/// anything when the OS cannot say where a datagram came from.
#[derive(Debug, Clone)]
pub struct Gate {
    interface: Option<String>,
    index: Option<u32>,
    /// A gateway's devices' interface (`up --gateway`): its devices ask this resolver too.
    devices: Option<String>,
}

impl Gate {
    /// A gate admitting loopback and `interface` (None: loopback only).
    pub fn new(interface: Option<&str>) -> Gate {
        let mut gate = Gate {
            interface: interface.map(str::to_owned),
            index: None,
            devices: None,
        };
        gate.index = gate.look_up();
        gate
    }

    /// Also admits datagrams arriving on a gateway's devices' interface.
    pub fn with_devices(mut self, devices: Option<&str>) -> Gate {
        self.devices = devices.map(str::to_owned);
        self
    }

    fn look_up(&self) -> Option<u32> {
        self.interface.as_deref().and_then(index_of)
    }

    /// Whether a datagram arrived on the gateway's devices' interface (whose names outside
    /// `.mesh` are forwarded, see `super::forward`).
    pub fn arrived_from_devices(&self, arrived: Option<u32>) -> bool {
        arrived.is_some() && self.devices.as_deref().and_then(index_of) == arrived
    }

    /// Whether a datagram that arrived on `arrived` gets an answer.
    pub fn admits(&mut self, arrived: Option<u32>) -> bool {
        let Some(index) = arrived else {
            return true;
        };
        if Some(index) == index_of("lo") || Some(index) == self.index {
            return true;
        }
        if self.devices.as_deref().and_then(index_of) == Some(index) {
            return true;
        }
        // The mesh interface may have been recreated since (a new index): look again.
        self.index = self.look_up();
        Some(index) == self.index
    }
}

#[cfg(target_os = "linux")]
fn index_of(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: a NUL-terminated string that lives across the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

#[cfg(not(target_os = "linux"))]
fn index_of(_name: &str) -> Option<u32> {
    None
}

/// Asks the kernel to report each datagram's arrival interface on `socket`.
#[cfg(target_os = "linux")]
pub fn enable(socket: &UdpSocket, addr: SocketAddr) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (level, option) = match addr {
        SocketAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_PKTINFO),
        SocketAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO),
    };
    let on: libc::c_int = 1;
    // SAFETY: a valid socket and a pointer to an int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            option,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Nothing to ask elsewhere: [`recv`] reports no interface.
#[cfg(not(target_os = "linux"))]
pub fn enable(_socket: &UdpSocket, _addr: SocketAddr) -> io::Result<()> {
    Ok(())
}

/// Receives one datagram: its length, sender, and the index of the interface it arrived on
/// (None when the kernel did not say).
#[cfg(target_os = "linux")]
pub fn recv(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, Option<u32>)> {
    use std::os::fd::AsRawFd;
    // SAFETY: every pointer in `msg` points at a live local of the size given with it, and
    // the control messages are read only through the CMSG_* macros within msg_controllen.
    unsafe {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut name: libc::sockaddr_storage = std::mem::zeroed();
        let mut control = [0u64; 16];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        let n = libc::recvmsg(socket.as_raw_fd(), &mut msg, 0);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut arrived = None;
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let header = &*cmsg;
            let data = libc::CMSG_DATA(cmsg);
            if header.cmsg_level == libc::IPPROTO_IP && header.cmsg_type == libc::IP_PKTINFO {
                let info = std::ptr::read_unaligned(data as *const libc::in_pktinfo);
                arrived = u32::try_from(info.ipi_ifindex).ok();
            } else if header.cmsg_level == libc::IPPROTO_IPV6
                && header.cmsg_type == libc::IPV6_PKTINFO
            {
                let info = std::ptr::read_unaligned(data as *const libc::in6_pktinfo);
                arrived = Some(info.ipi6_ifindex);
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        let from = sender(&name).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "datagram from a non-IP sender")
        })?;
        Ok((n as usize, from, arrived))
    }
}

/// The sender `recvmsg` wrote into `name`.
#[cfg(target_os = "linux")]
fn sender(name: &libc::sockaddr_storage) -> Option<SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
    let storage = (name as *const libc::sockaddr_storage).cast::<u8>();
    match libc::c_int::from(name.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in for an AF_INET sender; storage is larger.
            let v4 = unsafe { std::ptr::read_unaligned(storage.cast::<libc::sockaddr_in>()) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr)),
                u16::from_be(v4.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6 for an AF_INET6 sender.
            let v6 = unsafe { std::ptr::read_unaligned(storage.cast::<libc::sockaddr_in6>()) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(v6.sin6_addr.s6_addr),
                u16::from_be(v6.sin6_port),
                v6.sin6_flowinfo,
                v6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Receives one datagram; where the OS is not asked, its interface is unknown.
#[cfg(not(target_os = "linux"))]
pub fn recv(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, Option<u32>)> {
    let (n, from) = socket.recv_from(buf)?;
    Ok((n, from, None))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn loopback_datagrams_report_lo_and_are_admitted_other_indexes_are_not() {
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let addr: SocketAddr = bind.parse().unwrap();
            let Ok(server) = UdpSocket::bind(addr) else {
                assert!(addr.is_ipv6(), "IPv4 loopback must bind");
                continue; // no IPv6 on this host's loopback
            };
            enable(&server, addr).unwrap();
            let client = UdpSocket::bind(SocketAddr::new(addr.ip(), 0)).unwrap();
            client
                .send_to(b"hello", server.local_addr().unwrap())
                .unwrap();
            let mut buf = [0u8; 16];
            let (n, from, arrived) = recv(&server, &mut buf).unwrap();
            assert_eq!(
                (&buf[..n], from),
                (&b"hello"[..], client.local_addr().unwrap())
            );
            assert_eq!(arrived, index_of("lo"), "{bind}");
            let mut gate = Gate::new(None);
            assert!(gate.admits(arrived));
            assert!(
                !gate.admits(Some(u32::MAX)),
                "an index that is neither lo nor mesh"
            );
            let mut mesh = Gate::new(Some("lo"));
            assert!(mesh.admits(index_of("lo")));
        }
    }
}
