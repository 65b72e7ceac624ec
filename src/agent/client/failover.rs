//! Failing over between replicas of the coordination server: the list of servers, the one
//! in use (shared by clones), and sending each request to the next one on a connection
//! error or a 5xx answer.

use super::{Answer, ApiClient, ClientError, ServerUrl};
use std::sync::Arc;

impl ApiClient {
    /// Adds servers to fail over to, after the one given at construction (replicas of one
    /// cluster; see README).
    pub fn with_fallbacks(mut self, more: &[ServerUrl]) -> ApiClient {
        let mut servers = (*self.servers).clone();
        for url in more {
            if !servers.contains(url) {
                servers.push(url.clone());
            }
        }
        self.servers = Arc::new(servers);
        self
    }
    /// Sends one request to the server in use; on a connection error or a 5xx answer, to the
    /// next one (signed afresh: a replica refuses a nonce another one already accepted), and
    /// sticks with the first that answers.
    pub(super) fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        extra: &[(&str, &str)],
        limit: u64,
    ) -> Result<Answer, ClientError> {
        use std::sync::atomic::Ordering;
        let n = self.servers.len();
        let start = self.current.load(Ordering::Relaxed) % n;
        let mut last = None;
        for step in 0..n {
            let index = (start + step) % n;
            let base = &self.servers[index];
            let result = self.exchange_with(base, method, path, body.clone(), extra, limit);
            let failed = match &result {
                Err(ClientError::Unreachable(why) | ClientError::Misaddressed(why)) => {
                    Some(why.clone())
                }
                Err(ClientError::Refused { status, message }) if *status >= 500 => {
                    Some(format!("answered {status}: {message}"))
                }
                Ok(answer) if answer.status >= 500 => Some(format!("answered {}", answer.status)),
                _ => None,
            };
            match failed {
                Some(why) if step + 1 < n => {
                    let next = &self.servers[(index + 1) % n];
                    log::warn!("coordination server {base} failed ({why}); trying {next}");
                    last = Some(result);
                }
                _ => {
                    if failed.is_none() && index != start {
                        self.current.store(index, Ordering::Relaxed);
                        self.switched.store(true, Ordering::Relaxed);
                        log::info!("now using coordination server {base}");
                    }
                    return result;
                }
            }
        }
        last.expect("at least one server")
    }
    /// The server this client talks to right now.
    pub fn server(&self) -> &ServerUrl {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed);
        &self.servers[i % self.servers.len()]
    }
    /// Every server this client may use, in order.
    pub fn servers(&self) -> &[ServerUrl] {
        &self.servers
    }
}
