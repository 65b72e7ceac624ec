//! TLS to an `https://` server: which CAs its certificate must chain to (`--ca`), and
//! reporting a TLS failure as such rather than as a bare I/O error.

use super::error::ClientError;
use crate::types::InvalidValue;
use std::path::Path;
use std::sync::Arc;

/// A transport failure talking to `url`, as a sentence that names the URL tried and the
/// likely fix: a server that does not speak TLS, an untrusted certificate, a name that does
/// not resolve, no answer in time.
pub(super) fn transport(url: &str) -> impl Fn(ureq::Error) -> ClientError + '_ {
    move |e| {
        let why = format!("{url}: {}", explain(&e));
        if misaddressed(&e) {
            ClientError::Misaddressed(why)
        } else {
            ClientError::Unreachable(why)
        }
    }
}

/// A name that does not resolve, or a server that does not speak TLS.
fn misaddressed(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::HostNotFound => true,
        ureq::Error::Io(io) if io.to_string().contains("lookup address") => true,
        _ => tls_failure(e).is_some_and(|t| t.contains("InvalidContentType")),
    }
}

/// What went wrong in words a user can act on.
fn explain(e: &ureq::Error) -> String {
    if let Some(tls) = tls_failure(e) {
        if tls.contains("InvalidContentType") {
            return format!(
                "the server does not speak TLS ({tls}): if it serves plain HTTP, use http:// \
                 in --server"
            );
        }
        return format!(
            "TLS with the server failed: {tls} (if its certificate is not from a public CA, \
             pass the CA certificate with --ca FILE)"
        );
    }
    match e {
        ureq::Error::Io(io) if io.to_string().contains("lookup address") => format!(
            "its host name does not resolve ({io}): check the name in --server and this \
             machine's DNS"
        ),
        ureq::Error::HostNotFound => {
            "its host name does not resolve: check the name in --server and this machine's \
             DNS"
            .to_owned()
        }
        ureq::Error::Timeout(which) => format!(
            "no answer in time ({which} timeout): is the server running and reachable from \
             here (firewall, address, port)? A host name that takes long to resolve ends the \
             same way"
        ),
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            format!("connection refused ({io}): is `wgmesh server` running there, on that port?")
        }
        other => other.to_string(),
    }
}

/// The rustls error behind a ureq error, if the failure was TLS (an untrusted certificate,
/// a name mismatch, a server that does not speak TLS), so it can be reported as such
/// rather than as a bare I/O error.
fn tls_failure(e: &ureq::Error) -> Option<String> {
    match e {
        ureq::Error::Rustls(tls) => Some(tls.to_string()),
        ureq::Error::Io(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .map(|tls| tls.to_string()),
        _ => None,
    }
}
/// Which certificate authorities an `https://` server's certificate must chain to.
///
/// Default: the Mozilla roots bundled with webpki-roots (the same everywhere, not whatever
/// the host's store holds). `--ca FILE` replaces them with the CA certificates in FILE, for
/// a server with a private CA or a self-signed certificate; it does not add to them, so a
/// public CA cannot vouch for a server that should only be vouched for by its own.
#[derive(Debug, Clone, Default)]
pub struct TlsTrust {
    roots: Option<Arc<Vec<ureq::tls::Certificate<'static>>>>,
}
impl TlsTrust {
    /// Trusts only the CERTIFICATE blocks of the PEM file at `path` (other blocks, such as
    /// a private key mistakenly bundled, are ignored). Fails if there are none.
    pub fn from_ca_file(path: &Path) -> Result<TlsTrust, InvalidValue> {
        let pem = std::fs::read(path)
            .map_err(|e| InvalidValue(format!("--ca {}: {e}", path.display())))?;
        let mut certs = Vec::new();
        for item in ureq::tls::parse_pem(&pem) {
            match item {
                Ok(ureq::tls::PemItem::Certificate(cert)) => certs.push(cert),
                Ok(_) => {}
                Err(e) => {
                    return Err(InvalidValue(format!(
                        "--ca {}: not valid PEM: {e}",
                        path.display()
                    )))
                }
            }
        }
        if certs.is_empty() {
            return Err(InvalidValue(format!(
                "--ca {}: no CERTIFICATE block in the file",
                path.display()
            )));
        }
        Ok(TlsTrust {
            roots: Some(Arc::new(certs)),
        })
    }

    pub(super) fn tls_config(&self) -> ureq::tls::TlsConfig {
        let roots = match &self.roots {
            Some(certs) => ureq::tls::RootCerts::Specific(certs.clone()),
            None => ureq::tls::RootCerts::WebPki,
        };
        ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .root_certs(roots)
            .build()
    }
}
