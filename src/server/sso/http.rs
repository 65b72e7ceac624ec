//! The HTTP client the OpenID library talks to the provider through: the `ureq` 3 agent the
//! rest of wgmesh uses, with timeouts (ureq has none by default), redirects off (following
//! them would let a hostile discovery document point the server anywhere) and a size cap.

use openidconnect::{HttpRequest, HttpResponse, SyncHttpClient};
use std::fmt;
use std::time::Duration;

/// How long one request to the provider may take in all: a provider that hangs answers
/// 503 to the person waiting instead of holding a worker thread.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Discovery documents, key sets and token answers are a few kilobytes; 1 MiB is plenty.
const MAX_BODY: u64 = 1 << 20;

/// A synchronous client for `openidconnect` over `ureq` 3.
#[derive(Clone)]
pub struct ProviderHttp(ureq::Agent);

/// A request to the provider that failed at the transport (not an HTTP error status,
/// which the library reads itself).
#[derive(Debug)]
pub struct HttpError(String);

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HttpError {}

impl ProviderHttp {
    /// A client with the timeouts and the redirect policy above.
    pub fn new() -> ProviderHttp {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(TIMEOUT))
            .max_redirects(0)
            .max_redirects_will_error(false)
            .http_status_as_error(false)
            .build()
            .into();
        ProviderHttp(agent)
    }
}

impl Default for ProviderHttp {
    fn default() -> Self {
        ProviderHttp::new()
    }
}

impl SyncHttpClient for ProviderHttp {
    type Error = HttpError;

    fn call(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let target = request.uri().to_string();
        let response = self
            .0
            .run(request)
            .map_err(|e| HttpError(format!("{target}: {e}")))?;
        let (parts, mut body) = response.into_parts();
        let bytes = body
            .with_config()
            .limit(MAX_BODY)
            .read_to_vec()
            .map_err(|e| HttpError(format!("{target}: reading the answer: {e}")))?;
        Ok(HttpResponse::from_parts(parts, bytes))
    }
}
