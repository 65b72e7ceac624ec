//! One signed exchange with one server: learning the server key on first use, signing the
//! request with the agent's key, and verifying the answer before anything reads it.

use super::tls::transport;
use super::{Answer, ApiClient, ClientError, Identity, ServerUrl};
use crate::keys::PublicKey;
use crate::proto::auth::{self, RequestSigner};
use crate::proto::model::{ApiError, KeyResponse};
use std::sync::Arc;
use std::time::SystemTime;

impl ApiClient {
    /// The server key answers are checked against, once known.
    pub fn pinned_server_key(&self) -> Option<PublicKey> {
        let identity = self.identity.as_ref()?;
        identity
            .signer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|s| s.server_key())
    }
    /// The signer for the pinned server key, learning the key from `GET /key` if none is
    /// pinned yet.
    fn signer(&self, identity: &Identity) -> Result<Arc<RequestSigner>, ClientError> {
        let mut pinned = identity.signer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(signer) = pinned.as_ref() {
            return Ok(signer.clone());
        }
        let key = self.fetch_key()?;
        log::warn!(
            "trusting coordination server key {key} on first use (pass --server-key to pin it up front)"
        );
        let signer = Arc::new(RequestSigner::new(&identity.key, &key));
        *pinned = Some(signer.clone());
        Ok(signer)
    }
    /// `GET /key` from the server in use (or the next that answers): the key the server says
    /// it has. Unauthenticated by nature; changes nothing on the server.
    pub fn fetch_key(&self) -> Result<PublicKey, ClientError> {
        let url = self.url("/key");
        let mut resp = self.agent.get(&url).call().map_err(transport(&url));
        for other in self.servers.iter().filter(|s| *s != self.server()) {
            if resp.as_ref().is_ok_and(|r| r.status().is_success()) {
                break;
            }
            let url = format!("{other}/key");
            resp = self.agent.get(&url).call().map_err(transport(&url));
        }
        let mut resp = resp?;
        if !resp.status().is_success() {
            return Err(Self::refusal(resp));
        }
        let answer: KeyResponse = resp
            .body_mut()
            .with_config()
            .limit(64 * 1024)
            .read_json()
            .map_err(|e| ClientError::Protocol(format!("server key answer: {e}")))?;
        Ok(answer.server_public_key)
    }
    /// Sends one request to `base`, signed when there is an identity, and reads the whole
    /// answer; a signed request's answer is verified before anything else looks at it.
    pub(super) fn exchange_with(
        &self,
        base: &ServerUrl,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        extra: &[(&str, &str)],
        limit: u64,
    ) -> Result<Answer, ClientError> {
        let bytes = body.clone().unwrap_or_default();
        let url = format!("{base}{path}");
        let mut builder = ureq::http::Request::builder().method(method).uri(&url);
        if body.is_some() {
            builder = builder.header("Content-Type", "application/json");
        }
        for (name, value) in extra {
            builder = builder.header(*name, *value);
        }
        let mut nonce = None;
        let mut signer = None;
        if let Some(identity) = &self.identity {
            let request_signer = self.signer(identity)?;
            let headers = request_signer.sign(method, path, &bytes, SystemTime::now());
            nonce = auth::header_value(&headers, auth::NONCE_HEADER).map(str::to_owned);
            for (name, value) in &headers {
                builder = builder.header(*name, value.as_str());
            }
            signer = Some(request_signer);
        }
        let built =
            |e: ureq::http::Error| ClientError::Protocol(format!("cannot build request: {e}"));
        let mut resp = if body.is_some() {
            self.agent.run(builder.body(bytes).map_err(built)?)
        } else {
            self.agent.run(builder.body(()).map_err(built)?)
        }
        .map_err(transport(&url))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .body_mut()
            .with_config()
            .limit(limit)
            .read_to_vec()
            .map_err(|e| ClientError::Protocol(format!("{path} answer: {e}")))?;
        let answer = Answer {
            status,
            headers,
            body,
        };
        if let (Some(signer), Some(nonce)) = (signer, nonce) {
            let verified =
                signer.verify_response(&nonce, status, &|name| answer.header(name), &answer.body);
            if let Err(e) = verified {
                // An unsigned error can only be reported, never acted on: a 401 for a bad
                // request MAC cannot be signed for a key the server could not verify.
                let what = if (400..600).contains(&status) {
                    let message = serde_json::from_slice::<ApiError>(&answer.body)
                        .map(|e| e.error)
                        .unwrap_or_else(|_| {
                            String::from_utf8_lossy(&answer.body)
                                .chars()
                                .take(200)
                                .collect()
                        });
                    format!("{e} (the unsigned answer was {status}: {message})")
                } else {
                    e.to_string()
                };
                if status >= 500 {
                    // A sick replica or a load balancer in front of a dead one: report it as
                    // the failure it is (and fail over), never act on its body.
                    return Err(ClientError::Refused {
                        status,
                        message: what,
                    });
                }
                return Err(ClientError::Unauthentic(what));
            }
        }
        Ok(answer)
    }
}
