//! How the console answers a browser: HTML pages and redirects with the console's security
//! headers, and its embedded static files.

use crate::server::console::SECURITY_HEADERS;
use crate::server::http::{Body, Response};
use maud::Markup;

/// An HTML answer with the console's security headers.
pub(super) fn html(status: u16, markup: Markup) -> Response {
    let mut r = Response {
        status,
        headers: vec![("Content-Type", "text/html; charset=utf-8".into())],
        body: Body::Owned(markup.into_string().into_bytes()),
    };
    for (k, v) in SECURITY_HEADERS {
        r.headers.push((k, v.into()));
    }
    r
}

/// A redirect after a form post (303, so the browser GETs the target).
pub(super) fn see_other(location: &str) -> Response {
    let mut r = Response {
        status: 303,
        headers: vec![("Location", location.into())],
        body: Body::Empty,
    };
    for (k, v) in SECURITY_HEADERS {
        r.headers.push((k, v.into()));
    }
    r
}

pub(super) fn asset(content_type: &str, text: &'static str) -> Response {
    Response {
        status: 200,
        headers: vec![
            ("Content-Type", content_type.into()),
            ("Cache-Control", "no-cache".into()),
            ("X-Content-Type-Options", "nosniff".into()),
        ],
        body: Body::Owned(text.as_bytes().to_vec()),
    }
}
