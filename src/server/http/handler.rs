//! The application behind the connection layer: what it answers, and how it parks a
//! long-poll.

use super::message::{Request, Response};
use super::park::Reply;

/// The application behind the connection layer.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request. Runs on a worker thread, within a handler slot.
    fn handle(&self, request: &Request) -> Response;

    /// Answers one request now, or parks it (a long-poll; see [`Park`]). The connection
    /// layer calls this; the default answers with [`Handler::handle`].
    fn handle_or_park(&self, request: &Request) -> Reply {
        Reply::Now(self.handle(request))
    }

    /// Told about every request the layer itself refused (malformed, too large, too slow,
    /// too many connections), so they can be counted.
    fn rejected(&self, status: u16) {
        let _ = status;
    }
}
