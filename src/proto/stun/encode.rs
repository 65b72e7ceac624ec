//! Encoding into a caller's buffer: our own Binding Request, and a server's answers.

use super::message::*;
use std::net::{IpAddr, SocketAddr};

/// The 20-byte Binding Request our own client sends: no attributes, because the answer needs
/// none and a bare header is the most widely accepted form.
pub fn binding_request(id: &TransactionId) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[0..2].copy_from_slice(&msg_type::BINDING_REQUEST.to_be_bytes());
    out[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out[8..].copy_from_slice(&id.0);
    out
}

/// Appends attributes to a caller's buffer, refusing to overrun it.
struct Writer<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> Writer<'a> {
    fn header(buf: &'a mut [u8], msg_type: u16, transaction: &[u8; 16]) -> Result<Self, StunError> {
        let mut w = Writer { buf, len: 0 };
        w.put(&msg_type.to_be_bytes())?;
        w.put(&[0, 0])?;
        w.put(transaction)?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), StunError> {
        let available = self.buf.len();
        let needed = self.len + bytes.len();
        let dst = self
            .buf
            .get_mut(self.len..needed)
            .ok_or(StunError::BufferTooSmall { needed, available })?;
        dst.copy_from_slice(bytes);
        self.len = needed;
        Ok(())
    }

    /// Writes one attribute header and value, then zero padding to 4 bytes.
    fn attribute(&mut self, attr_type: u16, value: &[u8]) -> Result<(), StunError> {
        let len = u16::try_from(value.len())
            .map_err(|_| StunError::InvalidArgument("STUN attribute longer than 65535 bytes"))?;
        self.put(&attr_type.to_be_bytes())?;
        self.put(&len.to_be_bytes())?;
        self.put(value)?;
        let pad = (4 - value.len() % 4) % 4;
        self.put(&[0u8; 3][..pad])
    }

    /// An address attribute, XORed with the header's bytes 4..20 when `xor` is set.
    fn address(&mut self, attr_type: u16, addr: SocketAddr, xor: bool) -> Result<(), StunError> {
        let mut key = [0u8; 16];
        if xor {
            key.copy_from_slice(&self.buf[4..HEADER_LEN]);
        }
        let port = addr.port() ^ u16::from_be_bytes([key[0], key[1]]);
        let mut value = [0u8; 20];
        value[2..4].copy_from_slice(&port.to_be_bytes());
        let len = match addr.ip() {
            IpAddr::V4(ip) => {
                value[1] = 0x01;
                for (i, b) in ip.octets().iter().enumerate() {
                    value[4 + i] = b ^ key[i];
                }
                8
            }
            IpAddr::V6(ip) => {
                value[1] = 0x02;
                for (i, b) in ip.octets().iter().enumerate() {
                    value[4 + i] = b ^ key[i];
                }
                20
            }
        };
        self.attribute(attr_type, &value[..len])
    }

    /// Sets the header length field to what has been written so far (plus `extra`).
    fn set_length(&mut self, extra: usize) -> Result<(), StunError> {
        let len = u16::try_from(self.len - HEADER_LEN + extra)
            .map_err(|_| StunError::InvalidArgument("STUN message longer than 65535 bytes"))?;
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
        Ok(())
    }

    /// Writes SOFTWARE and FINGERPRINT as the options ask (RFC 5389 answers only), then
    /// fixes the length field, and returns the message length.
    fn finish(mut self, dialect: Dialect, opts: &ResponseOptions<'_>) -> Result<usize, StunError> {
        if dialect == Dialect::Rfc5389 {
            if let Some(software) = opts.software {
                if software.len() > MAX_SOFTWARE_LEN {
                    return Err(StunError::InvalidArgument(
                        "SOFTWARE is longer than MAX_SOFTWARE_LEN bytes",
                    ));
                }
                self.attribute(attr::SOFTWARE, software.as_bytes())?;
            }
            if opts.fingerprint {
                // The CRC covers the header with its length already counting FINGERPRINT.
                self.set_length(8)?;
                let crc = crc32(&self.buf[..self.len]) ^ FINGERPRINT_XOR;
                self.attribute(attr::FINGERPRINT, &crc.to_be_bytes())?;
            }
        }
        self.set_length(0)?;
        Ok(self.len)
    }
}

/// The address a client should be told: a dual-stack socket reports IPv4 senders as
/// `::ffff:a.b.c.d`, but the client sent from `a.b.c.d` and must hear that back.
pub(super) fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Builds the Binding Success Response to `req` telling the client it came from `mapped`,
/// into `out`, and returns its length.
///
/// RFC 5389 clients get XOR-MAPPED-ADDRESS (plus the options); RFC 3489 clients get
/// MAPPED-ADDRESS only. The transaction bytes are echoed verbatim, and an IPv4-mapped IPv6
/// source is reported as the IPv4 address it really is. A [`MAX_RESPONSE_LEN`] buffer always
/// suffices.
pub fn encode_binding_success(
    out: &mut [u8],
    req: &BindingRequest,
    mapped: SocketAddr,
    opts: &ResponseOptions<'_>,
) -> Result<usize, StunError> {
    let mapped = canonical(mapped);
    let mut w = Writer::header(out, msg_type::BINDING_SUCCESS, &req.transaction)?;
    match req.dialect {
        Dialect::Rfc5389 => {
            w.address(attr::XOR_MAPPED_ADDRESS, mapped, true)?;
            if opts.mapped_address_for_modern_clients {
                w.address(attr::MAPPED_ADDRESS, mapped, false)?;
            }
        }
        Dialect::Rfc3489 => w.address(attr::MAPPED_ADDRESS, mapped, false)?,
    }
    w.finish(req.dialect, opts)
}

/// Builds a Binding Error Response to `req` into `out` and returns its length.
///
/// `code` must be 300..=699 and `reason` at most 128 bytes (RFC 8489 section 14.8). The
/// `unknown` list becomes UNKNOWN-ATTRIBUTES (for 420); an odd count repeats the last entry,
/// as RFC 3489 requires and RFC 8489 tolerates, so both dialects parse it.
pub fn encode_binding_error(
    out: &mut [u8],
    req: &BindingRequest,
    code: u16,
    reason: &str,
    unknown: &[u16],
    opts: &ResponseOptions<'_>,
) -> Result<usize, StunError> {
    if !(300..=699).contains(&code) {
        return Err(StunError::InvalidArgument(
            "STUN error codes must be 300..=699",
        ));
    }
    if reason.len() > 128 {
        return Err(StunError::InvalidArgument(
            "STUN error reason is longer than 128 bytes",
        ));
    }
    if unknown.len() > 16 {
        return Err(StunError::InvalidArgument(
            "more than 16 unknown attributes to list",
        ));
    }
    let mut w = Writer::header(out, msg_type::BINDING_ERROR, &req.transaction)?;
    let mut value = [0u8; 4 + 128];
    // Infallible casts: code is at most 699.
    value[2] = (code / 100) as u8;
    value[3] = (code % 100) as u8;
    value[4..4 + reason.len()].copy_from_slice(reason.as_bytes());
    w.attribute(attr::ERROR_CODE, &value[..4 + reason.len()])?;
    if !unknown.is_empty() {
        let mut list = [0u8; 2 * 18];
        let mut n = 0;
        for t in unknown
            .iter()
            .chain(unknown.last().filter(|_| unknown.len() % 2 == 1))
        {
            list[n..n + 2].copy_from_slice(&t.to_be_bytes());
            n += 2;
        }
        w.attribute(attr::UNKNOWN_ATTRIBUTES, &list[..n])?;
    }
    w.finish(req.dialect, opts)
}
