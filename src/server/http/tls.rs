//! HTTPS: the rustls server configuration from PEM files, the handshake (bounded by the
//! request timeout, re-armed before every socket read), and a plain answer for plain HTTP
//! sent to the HTTPS port.

use super::handler::Handler;
use super::message::{Limits, Response};
use super::parse::{is_timeout, write_response};
use super::transport::{remaining, Transport};
use std::io::{self, BufWriter, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the server's certificate chain and private key are (`--tls-cert`, `--tls-key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM file with the server certificate first, then any intermediates.
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why the certificate and key could not be used: the text names the flag, the file and
/// what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSetupError(pub String);

impl std::fmt::Display for TlsSetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsSetupError {}

/// Builds the rustls server configuration from PEM files.
///
/// Uses rustls 0.23 with the `ring` provider (no cmake or aws-lc build) and rustls' safe
/// defaults (TLS 1.2 and 1.3, no client certificates: peers authenticate with request MACs,
/// not certificates). Errors name the file and what is wrong with it, since a bad path or a
/// key that does not match the certificate is the usual first-run mistake.
pub fn load_tls_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| pem_error("--tls-cert", &files.cert, e))?;
    if certs.is_empty() {
        return Err(TlsSetupError(format!(
            "--tls-cert {}: no CERTIFICATE block in the file",
            files.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| pem_error("--tls-key", &files.key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError(format!("TLS setup: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map(Arc::new)
        .map_err(|e| {
            TlsSetupError(format!(
                "--tls-cert {} and --tls-key {} are not a usable pair: {e}",
                files.cert.display(),
                files.key.display()
            ))
        })
}

fn pem_error(flag: &str, path: &Path, e: rustls::pki_types::pem::Error) -> TlsSetupError {
    use rustls::pki_types::pem::Error;
    TlsSetupError(match e {
        Error::Io(io) => format!("{flag} {}: {io}", path.display()),
        Error::NoItemsFound => {
            format!("{flag} {}: no usable PEM block in the file", path.display())
        }
        other => format!("{flag} {}: not valid PEM ({other:?})", path.display()),
    })
}

/// The TCP socket under a TLS session. rustls may read the socket several times to produce
/// one plaintext chunk (records split across segments), so the deadline is re-armed before
/// each socket read here, not once per plaintext read.
pub(super) struct DeadlineSocket {
    pub(super) tcp: TcpStream,
    deadline: Instant,
}

impl Read for DeadlineSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tcp.set_read_timeout(Some(remaining(self.deadline)?))?;
        self.tcp.read(buf)
    }
}

impl Write for DeadlineSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tcp.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

/// A TLS session over its socket.
pub(super) type TlsStream = rustls::StreamOwned<rustls::ServerConnection, DeadlineSocket>;

impl Transport for TlsStream {
    fn read_deadline(&mut self, deadline: Instant) -> io::Result<()> {
        remaining(deadline)?;
        self.sock.deadline = deadline;
        Ok(())
    }

    fn close(&mut self) {
        self.conn.send_close_notify();
        let _ = self.flush();
    }
}

/// Moves plaintext rustls already decrypted into `buf`, without touching the socket: such
/// bytes never make the socket readable again, so they must be served before the
/// connection goes back to the readiness loop.
pub(super) fn take_buffered(stream: &mut TlsStream, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 8192];
    while let Ok(n) = stream.conn.reader().read(&mut chunk) {
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The first byte of a TLS ClientHello record (content type "handshake").
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Runs the TLS handshake on a fresh connection within the request timeout. `Ok(None)`: the
/// client went away, or spoke plain HTTP and was told so.
pub(super) fn handshake(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    limits: &Limits,
    handler: &dyn Handler,
    remote: SocketAddr,
) -> io::Result<Option<TlsStream>> {
    tcp.set_write_timeout(Some(limits.request_timeout))?;
    let deadline = Instant::now() + limits.request_timeout;
    tcp.set_read_timeout(Some(limits.request_timeout))?;
    let mut first = [0u8; 1];
    match tcp.peek(&mut first) {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(e) if is_timeout(&e) => return Ok(None),
        Err(e) => return Err(e),
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        if first[0].is_ascii_uppercase() {
            // Looks like "GET /..." or "POST /...": say so in plain HTTP.
            handler.rejected(400);
            refuse_plain_on_tls_port(tcp);
        }
        return Ok(None);
    }
    let conn = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
    let mut stream = TlsStream::new(conn, DeadlineSocket { tcp, deadline });
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .map_err(|e| io::Error::new(e.kind(), format!("TLS handshake with {remote}: {e}")))?;
    }
    Ok(Some(stream))
}

/// Answers a plain-HTTP request sent to the HTTPS port, then closes. The request is read
/// first and the socket half-closed before closing, so the client sees the answer rather
/// than a reset caused by unread data.
fn refuse_plain_on_tls_port(mut tcp: TcpStream) {
    let mut sink = [0u8; 16 * 1024];
    let _ = tcp.set_read_timeout(Some(Duration::from_millis(200)));
    let _ = tcp.read(&mut sink);
    let response = Response::error(
        400,
        "this server speaks HTTPS only: use an https:// server URL",
    );
    let mut out = BufWriter::new(&mut tcp);
    if write_response(&mut out, &response, false, false)
        .and_then(|()| out.flush())
        .is_err()
    {
        return;
    }
    drop(out);
    let _ = tcp.shutdown(Shutdown::Write);
    let until = Instant::now() + Duration::from_secs(1);
    while let Ok(left) = remaining(until) {
        let _ = tcp.set_read_timeout(Some(left));
        match tcp.read(&mut sink) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}
