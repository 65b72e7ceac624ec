//! The relay's IPv6 socket beside its IPv4 one, on the same port.
//!
//! `--udp-listen 0.0.0.0:PORT` (the default) used to leave IPv6 agents without STUN or a
//! relay. The server now also listens on `[::]:PORT` (and `[::1]:PORT` beside `127.0.0.1`).
//! The IPv6 socket is IPv6-only (`IPV6_V6ONLY`): a dual-stack socket would collide with the
//! IPv4 one on the same port (Linux's default `bindv6only=0`), and would show IPv4 clients as
//! `::ffff:a.b.c.d`, which STUN must not answer with. std cannot set the option before
//! binding, so this binds through libc on Unix; Windows sockets are IPv6-only by default.

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};

/// The IPv6 address to listen on beside `v4` (its port), if there is a natural one: the
/// wildcard beside the wildcard, loopback beside loopback. An address the operator named
/// gets no IPv6 companion: they chose where to listen.
pub fn companion(v4: SocketAddr) -> Option<SocketAddr> {
    match v4.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            Some(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), v4.port()))
        }
        IpAddr::V4(ip) if ip.is_loopback() => {
            Some(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), v4.port()))
        }
        _ => None,
    }
}

/// Binds an IPv6-only UDP socket to `addr`.
#[cfg(unix)]
pub fn bind_v6_only(addr: SocketAddr) -> io::Result<UdpSocket> {
    use std::os::fd::FromRawFd;
    let SocketAddr::V6(v6) = addr else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not IPv6"));
    };
    // SAFETY: plain socket calls on a descriptor this function owns until it is handed to
    // UdpSocket (or closed on failure); the sockaddr_in6 lives across the bind call.
    unsafe {
        let fd = libc::socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fail = |fd: libc::c_int| {
            let e = io::Error::last_os_error();
            libc::close(fd);
            Err(e)
        };
        let on: libc::c_int = 1;
        if libc::setsockopt(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) != 0
        {
            return fail(fd);
        }
        let mut sa: libc::sockaddr_in6 = std::mem::zeroed();
        sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        sa.sin6_port = v6.port().to_be();
        sa.sin6_addr.s6_addr = v6.ip().octets();
        sa.sin6_scope_id = v6.scope_id();
        if libc::bind(
            fd,
            (&sa as *const libc::sockaddr_in6).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        ) != 0
        {
            return fail(fd);
        }
        Ok(UdpSocket::from_raw_fd(fd))
    }
}

/// Binds an IPv6 UDP socket to `addr` (IPv6-only by default on Windows).
#[cfg(not(unix))]
pub fn bind_v6_only(addr: SocketAddr) -> io::Result<UdpSocket> {
    UdpSocket::bind(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_and_loopback_get_an_ipv6_companion_on_the_same_port() {
        let c = |s: &str| companion(s.parse().unwrap()).map(|a| a.to_string());
        assert_eq!(c("0.0.0.0:3478").as_deref(), Some("[::]:3478"));
        assert_eq!(c("127.0.0.1:9").as_deref(), Some("[::1]:9"));
        assert_eq!(c("198.18.0.1:3478"), None);
        assert_eq!(c("[::]:3478"), None);
    }

    #[test]
    fn the_ipv6_socket_leaves_the_ipv4_port_alone() {
        let v4 = UdpSocket::bind("0.0.0.0:0").unwrap();
        let port = v4.local_addr().unwrap().port();
        let Ok(v6) = bind_v6_only(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port)) else {
            panic!("IPv6 wildcard bind failed on port {port}: is IPv6 disabled here?");
        };
        assert_eq!(v6.local_addr().unwrap().port(), port);
    }
}
