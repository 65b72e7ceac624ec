//! "Which of these sockets has something to read?": epoll/kqueue through `mio` on Unix, so
//! ten thousand idle or parked connections cost one thread and no scan per wake-up.
//!
//! Sockets stay `std::net::TcpStream`s owned by the connection code (blocking mode, read by
//! workers); this module only watches their descriptors. Each registration reports readiness
//! once: the loop deregisters a socket before handing it to a worker and registers it again
//! when it comes back, so a socket is never watched and read at the same time.
//!
//! Elsewhere (Windows), a portable fallback polls each watched socket with a non-blocking
//! `peek` every few milliseconds: O(connections) per tick, fine for the small servers that
//! run there.

use std::io;
use std::net::TcpStream;
use std::time::Duration;

#[cfg(unix)]
mod imp {
    use super::*;
    use mio::unix::SourceFd;
    use mio::{Events, Interest, Poll, Token};
    use std::os::unix::io::AsRawFd;
    use std::sync::Arc;

    const WAKE: Token = Token(usize::MAX);

    /// The watcher: owned by the readiness loop's thread.
    pub(in super::super) struct Readiness {
        poll: Poll,
        events: Events,
    }

    /// Wakes [`Readiness::wait`] from another thread.
    #[derive(Clone)]
    pub(in super::super) struct Waker(Arc<mio::Waker>);

    impl Waker {
        pub(in super::super) fn wake(&self) {
            if let Err(e) = self.0.wake() {
                log::error!("cannot wake the connection loop: {e}");
            }
        }
    }

    impl Readiness {
        pub(in super::super) fn new() -> io::Result<(Readiness, Waker)> {
            let poll = Poll::new()?;
            let waker = mio::Waker::new(poll.registry(), WAKE)?;
            Ok((
                Readiness {
                    poll,
                    events: Events::with_capacity(1024),
                },
                Waker(Arc::new(waker)),
            ))
        }

        pub(in super::super) fn watch(
            &mut self,
            socket: &TcpStream,
            token: usize,
        ) -> io::Result<()> {
            let fd = socket.as_raw_fd();
            self.poll
                .registry()
                .register(&mut SourceFd(&fd), Token(token), Interest::READABLE)
        }

        pub(in super::super) fn unwatch(&mut self, socket: &TcpStream, _token: usize) {
            let fd = socket.as_raw_fd();
            let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        }

        /// Waits up to `timeout` and appends the tokens of readable (or closed) sockets to
        /// `ready`; returns whether the waker fired.
        pub(in super::super) fn wait(
            &mut self,
            ready: &mut Vec<usize>,
            timeout: Option<Duration>,
        ) -> io::Result<bool> {
            match self.poll.poll(&mut self.events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(false),
                Err(e) => return Err(e),
            }
            let mut woken = false;
            for event in &self.events {
                if event.token() == WAKE {
                    woken = true;
                } else {
                    ready.push(event.token().0);
                }
            }
            Ok(woken)
        }
    }
}

#[cfg(not(unix))]
mod imp {
    use super::*;
    use std::collections::HashMap;
    use std::sync::{Arc, Condvar, Mutex};

    const TICK: Duration = Duration::from_millis(10);

    pub(in super::super) struct Readiness {
        watched: HashMap<usize, TcpStream>,
        wake: Arc<(Mutex<bool>, Condvar)>,
    }

    #[derive(Clone)]
    pub(in super::super) struct Waker(Arc<(Mutex<bool>, Condvar)>);

    impl Waker {
        pub(in super::super) fn wake(&self) {
            *self.0 .0.lock().unwrap_or_else(|p| p.into_inner()) = true;
            self.0 .1.notify_one();
        }
    }

    impl Readiness {
        pub(in super::super) fn new() -> io::Result<(Readiness, Waker)> {
            let wake = Arc::new((Mutex::new(false), Condvar::new()));
            Ok((
                Readiness {
                    watched: HashMap::new(),
                    wake: wake.clone(),
                },
                Waker(wake),
            ))
        }

        pub(in super::super) fn watch(
            &mut self,
            socket: &TcpStream,
            token: usize,
        ) -> io::Result<()> {
            let clone = socket.try_clone()?;
            clone.set_nonblocking(true)?;
            self.watched.insert(token, clone);
            Ok(())
        }

        pub(in super::super) fn unwatch(&mut self, socket: &TcpStream, token: usize) {
            if self.watched.remove(&token).is_some() {
                let _ = socket.set_nonblocking(false);
            }
        }

        pub(in super::super) fn wait(
            &mut self,
            ready: &mut Vec<usize>,
            timeout: Option<Duration>,
        ) -> io::Result<bool> {
            let tick = timeout.map_or(TICK, |t| t.min(TICK));
            let woken = {
                let (flag, cv) = &*self.wake;
                let mut set = flag.lock().unwrap_or_else(|p| p.into_inner());
                if !*set {
                    set = cv
                        .wait_timeout(set, tick)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                std::mem::take(&mut *set)
            };
            let mut probe = [0u8; 1];
            for (token, socket) in &self.watched {
                match socket.peek(&mut probe) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    _ => ready.push(*token),
                }
            }
            Ok(woken)
        }
    }
}

pub(super) use imp::{Readiness, Waker};

/// Whether a watched socket is closed by its peer (or broken), without consuming data: how
/// the loop notices a long-poll client that went away. `Some(true)` closed, `Some(false)`
/// data waiting, `None` nothing to read yet.
pub(super) fn peer_closed(socket: &TcpStream) -> Option<bool> {
    let mut probe = [0u8; 1];
    #[cfg(unix)]
    let result = {
        use std::os::unix::io::AsRawFd;
        // SAFETY: recv on a descriptor we own, into a 1-byte buffer we own.
        let n = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                probe.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    };
    #[cfg(not(unix))]
    let result = socket.peek(&mut probe);
    match result {
        Ok(0) => Some(true),
        Ok(_) => Some(false),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => None,
        Err(_) => Some(true),
    }
}
