//! Tying a UDP socket to one network interface (Linux `SO_BINDTODEVICE`), so what it sends
//! takes that interface's routes: the netcheck exit check asks through the tunnel the way
//! internet traffic goes. Kept apart because it is the one `unsafe` call it needs, and
//! `netcheck` forbids unsafe code.

use std::net::UdpSocket;

/// Binds `socket` to `interface`; needs root or CAP_NET_RAW. Only Linux has it; elsewhere
/// an `Unsupported` error.
pub fn bind_to_device(socket: &UdpSocket, interface: &str) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let name = interface.as_bytes();
        let len = libc::socklen_t::try_from(name.len())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: the pointer and length describe `name`, which outlives the call; the
        // kernel copies at most IFNAMSIZ bytes from it and keeps no reference.
        let done = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_BINDTODEVICE,
                name.as_ptr().cast(),
                len,
            )
        };
        if done == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (socket, interface);
        Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
    }
}
