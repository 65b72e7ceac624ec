//! How a handler refuses a request: a status, a message that says how to fix the problem,
//! and (for 429) how long to wait; plus the request-body parser every handler shares.

use crate::proto::model::{ApiError, ErrorCode};
use crate::server::http::{Request, Response};
use crate::server::storage::StorageError;
use crate::types::PeerId;
use serde::de::DeserializeOwned;
use std::net::IpAddr;
use std::time::Duration;

/// A handler's refusal: status plus message, and how long to wait for a 429.
pub struct Refusal {
    /// The HTTP status.
    pub status: u16,
    /// The machine-readable kind, sent as `code`.
    pub code: ErrorCode,
    /// What was wrong and how to fix it.
    pub message: String,
    /// For 429: when the client may try again.
    pub retry_after: Option<Duration>,
    /// For 405: the method the resource does allow, sent as `Allow`.
    pub allow: Option<&'static str>,
}

// A braced struct lives only in the type namespace, so this constructor keeps the terse
// `Refusal(400, ...)` of every handler.

#[allow(non_snake_case)]
pub fn Refusal(status: u16, message: String) -> Refusal {
    Refusal {
        status,
        code: ErrorCode::for_status(status),
        message,
        retry_after: None,
        allow: None,
    }
}

/// A 405 whose `Allow` header names the one method the resource accepts.
pub fn method_not_allowed(message: String, allow: &'static str) -> Refusal {
    Refusal {
        allow: Some(allow),
        ..Refusal(405, message)
    }
}

impl From<Refusal> for Response {
    fn from(r: Refusal) -> Response {
        let body = ApiError {
            success: false,
            error: r.message,
            code: r.code,
        };
        let body = serde_json::to_vec(&body).expect("API types always serialize");
        let mut response = Response::json(r.status, body);
        if let Some(wait) = r.retry_after {
            response = response.with_header("Retry-After", wait.as_secs().max(1).to_string());
        }
        if let Some(allow) = r.allow {
            response = response.with_header("Allow", allow.into());
        }
        response
    }
}

/// A 429 naming what was too frequent and when to retry.
pub fn too_many(what: &str, source: IpAddr, wait: Duration) -> Refusal {
    Refusal {
        status: 429,
        code: ErrorCode::RateLimited,
        message: format!(
            "too many {what} from {source}: retry after {} s",
            wait.as_secs().max(1)
        ),
        retry_after: Some(wait),
        allow: None,
    }
}

/// A 200 answer with `value` as its JSON body.
pub fn ok_json<T: serde::Serialize>(value: &T) -> Response {
    Response::json(
        200,
        serde_json::to_vec(value).expect("API types always serialize"),
    )
}

/// Parses a request's JSON body (see [`parse_json`]).
pub fn parse_body<T: DeserializeOwned>(req: &Request) -> Result<T, Refusal> {
    parse_json(&req.body)
}

/// Parses a JSON request body exactly as every handler does: an empty body, a bad field
/// (named by its path) or trailing bytes are refused with 400. Public so the fuzz harness
/// exercises this very function.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, Refusal> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Refusal(
            400,
            "request body is empty: send a JSON object".into(),
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
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
    Refusal {
        code: ErrorCode::UnknownPeer,
        ..Refusal(
            404,
            format!("unknown peer {id}: it never registered or was deregistered; register again"),
        )
    }
}

impl From<StorageError> for Refusal {
    /// A store's failure, with the status it maps to and its reason.
    fn from(e: StorageError) -> Refusal {
        Refusal(e.http_status(), e.to_string())
    }
}
