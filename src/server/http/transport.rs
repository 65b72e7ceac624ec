//! The byte stream under one connection, plain TCP or TLS, shared by the parser, the
//! connection state machine and the TLS wrapper: reads with a deadline, and a polite close.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A byte stream a connection is served over: plain TCP or a TLS session on top of it.
pub(super) trait Transport: Read + Write {
    /// Makes reads fail with `TimedOut` once `deadline` has passed. Called before every
    /// read, so a peer trickling bytes cannot stretch one request past its deadline.
    fn read_deadline(&mut self, deadline: Instant) -> io::Result<()>;

    /// Ends the session politely (TLS close_notify); plain TCP has nothing to say.
    fn close(&mut self) {}
}

/// Time left until `deadline`, or `TimedOut` if it passed.
pub(super) fn remaining(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(io::ErrorKind::TimedOut.into())
    } else {
        Ok(left)
    }
}

impl Transport for TcpStream {
    fn read_deadline(&mut self, deadline: Instant) -> io::Result<()> {
        self.set_read_timeout(Some(remaining(deadline)?))
    }
}
