//! How a handler refuses a request: a status, a message that says how to fix the problem,
//! and (for 429) how long to wait; plus the request-body parser every handler shares.

use crate::server::http::{Request, Response};
use crate::types::PeerId;
use serde::de::DeserializeOwned;
use std::net::IpAddr;
use std::time::Duration;

/// A handler's refusal: status plus message, and how long to wait for a 429.
pub struct Refusal {
    /// The HTTP status.
    pub status: u16,
    /// What was wrong and how to fix it.
    pub message: String,
    /// For 429: when the client may try again.
    pub retry_after: Option<Duration>,
}

// A braced struct lives only in the type namespace, so this constructor keeps the terse
// `Refusal(400, ...)` of every handler.

#[allow(non_snake_case)]
pub fn Refusal(status: u16, message: String) -> Refusal {
    Refusal {
        status,
        message,
        retry_after: None,
    }
}

impl From<Refusal> for Response {
    fn from(r: Refusal) -> Response {
        let response = Response::error(r.status, &r.message);
        match r.retry_after {
            Some(wait) => response.with_header("Retry-After", wait.as_secs().max(1).to_string()),
            None => response,
        }
    }
}

/// A 429 naming what was too frequent and when to retry.
pub fn too_many(what: &str, source: IpAddr, wait: Duration) -> Refusal {
    Refusal {
        status: 429,
        message: format!(
            "too many {what} from {source}: retry after {} s",
            wait.as_secs().max(1)
        ),
        retry_after: Some(wait),
    }
}

/// A 200 answer with `value` as its JSON body.
pub fn ok_json<T: serde::Serialize>(value: &T) -> Response {
    Response::json(
        200,
        serde_json::to_vec(value).expect("API types always serialize"),
    )
}

/// Parses a JSON request body, naming the offending field on failure (shared with fuzzing).
pub fn parse_body<T: DeserializeOwned>(req: &Request) -> Result<T, Refusal> {
    if req.body.iter().all(u8::is_ascii_whitespace) {
        return Err(Refusal(
            400,
            "request body is empty: send a JSON object".into(),
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(&req.body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let field = if path == "." || path.is_empty() {
            String::new()
        } else {
            format!("field `{path}`: ")
        };
        Refusal(400, format!("invalid request body: {field}{inner}"))
    })?;
    de.end()
        .map_err(|e| Refusal(400, format!("invalid request body: {e}")))?;
    Ok(value)
}

/// The 404 an agent answers by registering again.
pub fn unknown_peer(id: &PeerId) -> Refusal {
    Refusal(
        404,
        format!("unknown peer {id}: it never registered or was deregistered; register again"),
    )
}
