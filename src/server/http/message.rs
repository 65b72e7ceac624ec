//! What one HTTP exchange is made of: the limits a request must keep to, the parsed
//! request, and the response written back. Every file of the layer shares these; none of
//! them depends on anything else here.

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

/// Default `--max-connections`: two per agent (a parked long-poll and a heartbeat) for
/// 10,000 agents, with room to spare.
pub const DEFAULT_MAX_CONNECTIONS: usize = 32_768;

/// Limits that keep one client from taking the server down.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request head (request line plus headers) accepted; larger gets 431.
    pub max_header_bytes: usize,
    /// Largest request body accepted; larger gets 413 without being read.
    pub max_body_bytes: usize,
    /// How long a keep-alive connection may sit without starting a request.
    pub idle_timeout: Duration,
    /// How long a client may take to send one whole request once it started it.
    pub request_timeout: Duration,
    /// Most connections open at once; past it new ones get 503 and are closed. Waiting
    /// connections (idle or parked) cost a descriptor and about a kilobyte, not a thread.
    pub max_connections: usize,
    /// Most requests running handler code at once (`--threads`).
    pub handler_threads: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 16 * 1024,
            max_body_bytes: 64 * 1024,
            idle_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handler_threads: std::thread::available_parallelism().map_or(4, |n| n.get() * 2),
        }
    }
}

/// A parsed request, handed to the handler with its body fully read.
#[derive(Debug, Clone)]
pub struct Request {
    /// The method, e.g. "GET".
    pub method: String,
    /// The request target: path plus query.
    pub target: String,
    /// Headers in arrival order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body (empty when there is none).
    pub body: Vec<u8>,
    /// Who sent it, for endpoint discovery and rate limits.
    pub remote: SocketAddr,
}

impl Request {
    /// The path without the query string.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The raw value of one query parameter (no percent-decoding: wgmesh ids need none).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        let query = self.target.split_once('?')?.1;
        query
            .split('&')
            .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    /// The first header with this name, case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What a response body is made of.
#[derive(Debug, Clone)]
pub enum Body {
    /// No body (e.g. 304).
    Empty,
    /// A body built for this response.
    Owned(Vec<u8>),
    /// Up to two slices of a shared, cached buffer: how `/peers` sends the cached list minus
    /// the caller's own entry without copying it.
    Shared(Arc<Vec<u8>>, [Range<usize>; 2]),
}

impl Body {
    /// Bytes on the wire.
    pub(super) fn len(&self) -> usize {
        match self {
            Body::Empty => 0,
            Body::Owned(v) => v.len(),
            Body::Shared(_, parts) => parts.iter().map(|r| r.len()).sum(),
        }
    }
}

/// A response to write back.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Extra headers (Content-Length and Connection are added by the layer).
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Body,
}

impl Response {
    /// A JSON response with an owned body.
    pub fn json(status: u16, body: Vec<u8>) -> Response {
        Response {
            status,
            headers: vec![("Content-Type", "application/json".into())],
            body: Body::Owned(body),
        }
    }

    /// The API's uniform error: `{"success": false, "error": message, "code": kind}`, with
    /// the code the status implies (refusals with a more specific kind build their own).
    pub fn error(status: u16, message: &str) -> Response {
        let body = serde_json::to_vec(&crate::proto::model::ApiError {
            success: false,
            error: message.to_owned(),
            code: crate::proto::model::ErrorCode::for_status(status),
        })
        .expect("serializing a string cannot fail");
        Response::json(status, body)
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &'static str, value: String) -> Response {
        self.headers.push((name, value));
        self
    }
}
