//! A small, strict STUN Binding codec (RFC 8489, formerly RFC 5389, with RFC 3489 fallback).
//!
//! wgmesh only needs one STUN transaction: "what address and port did my datagram come from?".
//! That is a 20-byte header plus one address attribute, so this module implements exactly
//! that instead of a general STUN stack: parsing works on a borrowed `&[u8]`, encoding writes
//! into a caller's buffer, and nothing allocates, which keeps the server's per-datagram path
//! to a few dozen bounds-checked byte reads. Every length is checked before it is used and
//! every refusal is a typed [`StunError`]: the parser is meant to face hostile input and must
//! never panic (see the randomized test at the bottom of this file).
//!
//! Servers see two dialects. Modern clients (RFC 5389/8489) put the magic cookie
//! `0x2112A442` in bytes 4..8 and expect XOR-MAPPED-ADDRESS; classic RFC 3489 clients (such as
//! Debian's `stun` client) put random bytes there and only understand MAPPED-ADDRESS. RFC 8489
//! section 11 says a server should answer the latter with MAPPED-ADDRESS and the echoed
//! 128-bit transaction id, which is what [`encode_binding_success`] does.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The fixed value in bytes 4..8 that tells an RFC 5389/8489 message from anything else.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Every STUN message starts with this many header bytes; a bare Binding Request is only this.
pub const HEADER_LEN: usize = 20;
/// A buffer this large holds any response this module builds (the longest SOFTWARE we accept,
/// both address attributes for IPv6, and FINGERPRINT), so servers can use a fixed stack buffer.
pub const MAX_RESPONSE_LEN: usize = 512;
/// Longest SOFTWARE value we put in a response, in bytes: RFC 8489 allows 763, but a long
/// banner only makes every answer a better reflection amplifier.
pub const MAX_SOFTWARE_LEN: usize = 128;
/// How many unknown comprehension-required attributes a parsed request remembers for the
/// 420 answer; more is either a broken or a hostile client, and listing four is enough.
pub const MAX_UNKNOWN_ATTRIBUTES: usize = 4;

/// Message types (method and class packed as in RFC 8489 section 5) that this codec handles.
pub mod msg_type {
    /// A client asking for its reflexive address.
    pub const BINDING_REQUEST: u16 = 0x0001;
    /// A keepalive that must not be answered.
    pub const BINDING_INDICATION: u16 = 0x0011;
    /// The answer carrying the reflexive address.
    pub const BINDING_SUCCESS: u16 = 0x0101;
    /// A refusal carrying ERROR-CODE.
    pub const BINDING_ERROR: u16 = 0x0111;
}

/// Attribute types this codec reads or writes (RFC 8489 section 18.3, RFC 5780, RFC 3489).
pub mod attr {
    /// RFC 3489's plain address; still the only one classic clients read.
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    /// RFC 3489/5780: asks the server to answer from another IP and/or port.
    pub const CHANGE_REQUEST: u16 = 0x0003;
    /// Short- or long-term credential user name; accepted and ignored (we do no auth).
    pub const USERNAME: u16 = 0x0006;
    /// HMAC-SHA1 over the message; accepted and ignored (we do no auth).
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    /// The status code of an error response.
    pub const ERROR_CODE: u16 = 0x0009;
    /// Lists the comprehension-required attributes a 420 response did not understand.
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    /// Long-term credential realm; accepted and ignored.
    pub const REALM: u16 = 0x0014;
    /// Long-term credential nonce; accepted and ignored.
    pub const NONCE: u16 = 0x0015;
    /// RFC 8489 HMAC-SHA256 integrity; accepted and ignored.
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    /// RFC 8489 password algorithm choice; accepted and ignored.
    pub const PASSWORD_ALGORITHM: u16 = 0x001D;
    /// RFC 8489 hashed user name; accepted and ignored.
    pub const USERHASH: u16 = 0x001E;
    /// The reflexive address XORed with the cookie so NATs that rewrite addresses in
    /// payloads cannot mangle it.
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    /// Free-text name of the sending software.
    pub const SOFTWARE: u16 = 0x8022;
    /// CRC-32 of the message XOR `0x5354554E`, used to tell STUN from other protocols.
    pub const FINGERPRINT: u16 = 0x8028;
}

/// The value XORed into the FINGERPRINT CRC ("STUN" in ASCII).
const FINGERPRINT_XOR: u32 = 0x5354_554E;

/// Which STUN generation a request came from; it decides which address attribute the
/// client can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// RFC 5389/8489: magic cookie present, answer with XOR-MAPPED-ADDRESS.
    Rfc5389,
    /// RFC 3489 ("classic STUN"): no cookie, answer with MAPPED-ADDRESS only.
    Rfc3489,
}

/// The 96-bit id that pairs a response with its request in RFC 5389/8489.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TransactionId(pub [u8; 12]);

impl TransactionId {
    /// A fresh id from the OS random source: RFC 8489 requires ids to be unpredictable so an
    /// off-path attacker cannot forge answers that would mislead our endpoint discovery.
    pub fn random() -> Self {
        let mut id = [0u8; 12];
        getrandom::fill(&mut id).expect("the operating system's random source failed");
        TransactionId(id)
    }
}

impl fmt::Debug for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TransactionId(")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        f.write_str(")")
    }
}

/// Why a datagram was refused or a message could not be built. Cheap to construct (no
/// allocation) because the server builds one for every junk datagram it drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StunError {
    /// Shorter than the 20-byte header.
    TooShort {
        /// Bytes received.
        len: usize,
    },
    /// The two top bits of the first byte are not zero, so this is not STUN at all.
    NotStun {
        /// The offending first byte.
        first_byte: u8,
    },
    /// The header's length field disagrees with the datagram's size.
    LengthMismatch {
        /// Attribute bytes the header claims.
        declared: usize,
        /// Attribute bytes actually present.
        actual: usize,
    },
    /// The header's length field is not a multiple of 4, which STUN forbids.
    UnalignedLength {
        /// Attribute bytes the header claims.
        declared: usize,
    },
    /// A response did not carry the magic cookie (we only send RFC 5389 requests).
    BadMagicCookie {
        /// The 32 bits found where the cookie belongs.
        found: u32,
    },
    /// A well-formed STUN message that is not the kind this function handles (for example a
    /// Binding Indication sent to a server). Not counted as malformed.
    UnexpectedType {
        /// The message type found.
        msg_type: u16,
    },
    /// An attribute header or value runs past the end of the message.
    TruncatedAttribute {
        /// Type of the attribute that does not fit.
        attr_type: u16,
        /// Offset of its header in the message.
        offset: usize,
    },
    /// An attribute we read has a value of the wrong size or content.
    BadAttribute {
        /// Type of the attribute.
        attr_type: u16,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Something follows FINGERPRINT, which must be the last attribute.
    AttributeAfterFingerprint,
    /// The FINGERPRINT CRC does not match the message.
    BadFingerprint,
    /// A success response carries neither XOR-MAPPED-ADDRESS nor MAPPED-ADDRESS.
    MissingMappedAddress,
    /// The output buffer cannot hold the message being built.
    BufferTooSmall {
        /// Bytes the message needs.
        needed: usize,
        /// Bytes the buffer has.
        available: usize,
    },
    /// A caller passed a value the protocol cannot carry.
    InvalidArgument(&'static str),
}

impl StunError {
    /// True when the bytes are not a valid STUN message, as opposed to a valid message of the
    /// wrong kind: the server counts the two separately so junk floods are visible.
    pub fn is_malformed(&self) -> bool {
        !matches!(
            self,
            StunError::UnexpectedType { .. }
                | StunError::BufferTooSmall { .. }
                | StunError::InvalidArgument(_)
        )
    }
}

impl fmt::Display for StunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StunError::TooShort { len } => {
                write!(f, "{len} bytes is shorter than a STUN header ({HEADER_LEN} bytes)")
            }
            StunError::NotStun { first_byte } => write!(
                f,
                "first byte {first_byte:#04x} has its top bits set, so this is not STUN"
            ),
            StunError::LengthMismatch { declared, actual } => write!(
                f,
                "STUN header declares {declared} attribute bytes but {actual} arrived"
            ),
            StunError::UnalignedLength { declared } => write!(
                f,
                "STUN message length {declared} is not a multiple of 4"
            ),
            StunError::BadMagicCookie { found } => write!(
                f,
                "magic cookie is {found:#010x}, expected {MAGIC_COOKIE:#010x}"
            ),
            StunError::UnexpectedType { msg_type } => {
                write!(f, "unexpected STUN message type {msg_type:#06x}")
            }
            StunError::TruncatedAttribute { attr_type, offset } => write!(
                f,
                "STUN attribute {attr_type:#06x} at offset {offset} runs past the end of the message"
            ),
            StunError::BadAttribute { attr_type, reason } => {
                write!(f, "STUN attribute {attr_type:#06x}: {reason}")
            }
            StunError::AttributeAfterFingerprint => {
                f.write_str("STUN attribute found after FINGERPRINT, which must be last")
            }
            StunError::BadFingerprint => f.write_str("STUN FINGERPRINT does not match the message"),
            StunError::MissingMappedAddress => f.write_str(
                "STUN success response has neither XOR-MAPPED-ADDRESS nor MAPPED-ADDRESS",
            ),
            StunError::BufferTooSmall { needed, available } => write!(
                f,
                "STUN message needs {needed} bytes but the buffer has {available}"
            ),
            StunError::InvalidArgument(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for StunError {}

/// A parsed Binding Request: everything a server needs to answer it, by value and without
/// borrowing the receive buffer (so the buffer can be reused for the next datagram).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingRequest {
    /// Which generation of STUN the client speaks.
    pub dialect: Dialect,
    /// Header bytes 4..20, echoed verbatim in the answer: the cookie plus the 96-bit id for
    /// RFC 5389, or RFC 3489's 128-bit id.
    pub transaction: [u8; 16],
    /// The CHANGE-REQUEST flags, if the attribute was present (0x04 = change IP,
    /// 0x02 = change port).
    pub change_request: Option<u32>,
    /// Whether a FINGERPRINT was present (and verified).
    pub fingerprint: bool,
    unknown: [u16; MAX_UNKNOWN_ATTRIBUTES],
    unknown_len: u8,
}

impl BindingRequest {
    /// The 96-bit RFC 5389 transaction id, or `None` for an RFC 3489 request (whose id is the
    /// whole of [`BindingRequest::transaction`]).
    pub fn transaction_id(&self) -> Option<TransactionId> {
        match self.dialect {
            Dialect::Rfc5389 => {
                let mut id = [0u8; 12];
                id.copy_from_slice(&self.transaction[4..]);
                Some(TransactionId(id))
            }
            Dialect::Rfc3489 => None,
        }
    }

    /// Comprehension-required attributes (type below 0x8000) this codec does not understand:
    /// RFC 8489 section 7.3.1 says such a request gets a 420 answer listing them, not a
    /// success that pretends they were honoured. Holds at most [`MAX_UNKNOWN_ATTRIBUTES`].
    pub fn unknown_attributes(&self) -> &[u16] {
        &self.unknown[..usize::from(self.unknown_len)]
    }

    /// True when the client asked us to answer from another address or port (RFC 5780 NAT
    /// behaviour discovery): a single-socket server cannot, and RFC 5780 section 6.1 says it
    /// must then answer 420 rather than silently answer from the same place.
    pub fn wants_address_change(&self) -> bool {
        self.change_request.is_some_and(|flags| flags & 0x06 != 0)
    }
}

/// What a client learns from a Binding response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindingResponse {
    /// The server saw our datagram come from `mapped`.
    Success {
        /// Which request this answers.
        transaction_id: TransactionId,
        /// Our reflexive (public) address as the server saw it.
        mapped: SocketAddr,
    },
    /// The server refused the request with an ERROR-CODE.
    Error {
        /// Which request this answers.
        transaction_id: TransactionId,
        /// The error code (300..=699), or 0 if the response carried no ERROR-CODE.
        code: u16,
    },
}

impl BindingResponse {
    /// The request this response answers, so a client can discard stale or foreign answers.
    pub fn transaction_id(&self) -> TransactionId {
        match self {
            BindingResponse::Success { transaction_id, .. }
            | BindingResponse::Error { transaction_id, .. } => *transaction_id,
        }
    }
}

/// Which optional attributes to put in a response. Separate from the request so a server can
/// keep one value for its lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResponseOptions<'a> {
    /// Also include MAPPED-ADDRESS in answers to RFC 5389 clients (classic clients always get
    /// it, and only it, since XOR-MAPPED-ADDRESS needs the cookie they did not send).
    pub mapped_address_for_modern_clients: bool,
    /// A SOFTWARE attribute, at most [`MAX_SOFTWARE_LEN`] bytes; sent to RFC 5389 clients only,
    /// as RFC 3489 parsers may reject strings whose length is not a multiple of 4.
    pub software: Option<&'a str>,
    /// Append FINGERPRINT (RFC 5389 clients only).
    pub fingerprint: bool,
}

fn be16(buf: &[u8], at: usize) -> Option<u16> {
    let bytes = buf.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([bytes[0], bytes[1]]))
}

fn be32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// The checked fixed part of a message.
struct Header {
    msg_type: u16,
    cookie: u32,
}

/// Validates the header of `buf` as a whole STUN message (RFC 8489 section 5 and 6.3).
fn check_header(buf: &[u8]) -> Result<Header, StunError> {
    if buf.len() < HEADER_LEN {
        return Err(StunError::TooShort { len: buf.len() });
    }
    if buf[0] & 0xC0 != 0 {
        return Err(StunError::NotStun { first_byte: buf[0] });
    }
    let msg_type = be16(buf, 0).ok_or(StunError::TooShort { len: buf.len() })?;
    let declared = usize::from(be16(buf, 2).ok_or(StunError::TooShort { len: buf.len() })?);
    let actual = buf.len() - HEADER_LEN;
    if declared != actual {
        return Err(StunError::LengthMismatch { declared, actual });
    }
    if declared % 4 != 0 {
        return Err(StunError::UnalignedLength { declared });
    }
    let cookie = be32(buf, 4).ok_or(StunError::TooShort { len: buf.len() })?;
    Ok(Header { msg_type, cookie })
}

/// Walks the attributes of a header-checked message, calling `visit(type, value)` for each
/// one that counts: attributes after MESSAGE-INTEGRITY are skipped as RFC 8489 section 14.5
/// says (except FINGERPRINT), FINGERPRINT must come last and is verified here. Returns
/// whether a FINGERPRINT was present.
fn walk_attributes(
    msg: &[u8],
    mut visit: impl FnMut(u16, &[u8]) -> Result<(), StunError>,
) -> Result<bool, StunError> {
    let mut offset = HEADER_LEN;
    let mut after_integrity = false;
    let mut fingerprint = false;
    while offset < msg.len() {
        if fingerprint {
            return Err(StunError::AttributeAfterFingerprint);
        }
        let attr_type = be16(msg, offset).ok_or(StunError::TruncatedAttribute {
            attr_type: 0,
            offset,
        })?;
        let truncated = StunError::TruncatedAttribute { attr_type, offset };
        let len = usize::from(be16(msg, offset + 2).ok_or(truncated)?);
        let value_start = offset + 4;
        let value = msg.get(value_start..value_start + len).ok_or(truncated)?;
        let padded_end = value_start + ((len + 3) & !3);
        if padded_end > msg.len() {
            return Err(truncated);
        }
        if attr_type == attr::FINGERPRINT {
            let expected =
                u32::from_be_bytes(value.try_into().map_err(|_| StunError::BadAttribute {
                    attr_type,
                    reason: "FINGERPRINT must be 4 bytes",
                })?);
            if crc32(&msg[..offset]) ^ FINGERPRINT_XOR != expected {
                return Err(StunError::BadFingerprint);
            }
            fingerprint = true;
        } else if !after_integrity {
            visit(attr_type, value)?;
            if attr_type == attr::MESSAGE_INTEGRITY || attr_type == attr::MESSAGE_INTEGRITY_SHA256 {
                after_integrity = true;
            }
        }
        offset = padded_end;
    }
    Ok(fingerprint)
}

/// Whether a Binding Request may carry this comprehension-required attribute without a 420:
/// the credential attributes are understood (and ignored, since the server does no
/// authentication), CHANGE-REQUEST is judged separately by its flags.
fn known_request_attribute(attr_type: u16) -> bool {
    matches!(
        attr_type,
        attr::CHANGE_REQUEST
            | attr::USERNAME
            | attr::MESSAGE_INTEGRITY
            | attr::REALM
            | attr::NONCE
            | attr::MESSAGE_INTEGRITY_SHA256
            | attr::PASSWORD_ALGORITHM
            | attr::USERHASH
    )
}

/// Parses a datagram a server received as a Binding Request, from either dialect.
///
/// Refuses, with a typed error, anything that is not exactly one well-formed STUN message;
/// a well-formed message of another type gives [`StunError::UnexpectedType`] (not
/// malformed, just not ours to answer). Unknown comprehension-required attributes do not make
/// the request fail: they are listed in [`BindingRequest::unknown_attributes`] so the caller
/// can answer 420 as the RFC asks.
pub fn parse_binding_request(buf: &[u8]) -> Result<BindingRequest, StunError> {
    let header = check_header(buf)?;
    if header.msg_type != msg_type::BINDING_REQUEST {
        return Err(StunError::UnexpectedType {
            msg_type: header.msg_type,
        });
    }
    let dialect = if header.cookie == MAGIC_COOKIE {
        Dialect::Rfc5389
    } else {
        Dialect::Rfc3489
    };
    let mut transaction = [0u8; 16];
    transaction.copy_from_slice(&buf[4..HEADER_LEN]);
    let mut change_request = None;
    let mut unknown = [0u16; MAX_UNKNOWN_ATTRIBUTES];
    let mut unknown_len = 0u8;
    let fingerprint = walk_attributes(buf, |attr_type, value| {
        if attr_type == attr::CHANGE_REQUEST {
            let flags: [u8; 4] = value.try_into().map_err(|_| StunError::BadAttribute {
                attr_type,
                reason: "CHANGE-REQUEST must be 4 bytes",
            })?;
            // RFC 8489 section 14: only the first occurrence of an attribute counts.
            change_request.get_or_insert(u32::from_be_bytes(flags));
        } else if attr_type < 0x8000
            && !known_request_attribute(attr_type)
            && usize::from(unknown_len) < MAX_UNKNOWN_ATTRIBUTES
            && !unknown[..usize::from(unknown_len)].contains(&attr_type)
        {
            unknown[usize::from(unknown_len)] = attr_type;
            unknown_len += 1;
        }
        Ok(())
    })?;
    Ok(BindingRequest {
        dialect,
        transaction,
        change_request,
        fingerprint,
        unknown,
        unknown_len,
    })
}

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
fn canonical(addr: SocketAddr) -> SocketAddr {
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

/// Decodes a (XOR-)MAPPED-ADDRESS value; `key` is the header's bytes 4..20 for the XOR form.
fn decode_address(
    attr_type: u16,
    value: &[u8],
    key: Option<&[u8; 16]>,
) -> Result<SocketAddr, StunError> {
    let zero = [0u8; 16];
    let key = key.unwrap_or(&zero);
    let bad = |reason| StunError::BadAttribute { attr_type, reason };
    let family = *value.get(1).ok_or(bad("address attribute too short"))?;
    let port = be16(value, 2).ok_or(bad("address attribute too short"))?
        ^ u16::from_be_bytes([key[0], key[1]]);
    match (family, value.len()) {
        (0x01, 8) => {
            let mut ip = [0u8; 4];
            for (i, b) in ip.iter_mut().enumerate() {
                *b = value[4 + i] ^ key[i];
            }
            Ok(SocketAddr::new(Ipv4Addr::from(ip).into(), port))
        }
        (0x02, 20) => {
            let mut ip = [0u8; 16];
            for (i, b) in ip.iter_mut().enumerate() {
                *b = value[4 + i] ^ key[i];
            }
            Ok(SocketAddr::new(Ipv6Addr::from(ip).into(), port))
        }
        (0x01 | 0x02, _) => Err(bad("address length does not match its family")),
        _ => Err(bad("unknown address family")),
    }
}

/// Parses a datagram our client received as a Binding response (RFC 5389/8489 only, since
/// that is all we send). XOR-MAPPED-ADDRESS wins over MAPPED-ADDRESS when both are present.
/// The caller must still check [`BindingResponse::transaction_id`] against what it sent.
pub fn parse_binding_response(buf: &[u8]) -> Result<BindingResponse, StunError> {
    let header = check_header(buf)?;
    if header.cookie != MAGIC_COOKIE {
        return Err(StunError::BadMagicCookie {
            found: header.cookie,
        });
    }
    let mut key = [0u8; 16];
    key.copy_from_slice(&buf[4..HEADER_LEN]);
    let mut id = [0u8; 12];
    id.copy_from_slice(&buf[8..HEADER_LEN]);
    let transaction_id = TransactionId(id);
    match header.msg_type {
        msg_type::BINDING_SUCCESS => {
            let mut xor_mapped = None;
            let mut mapped = None;
            walk_attributes(buf, |attr_type, value| {
                match attr_type {
                    attr::XOR_MAPPED_ADDRESS if xor_mapped.is_none() => {
                        xor_mapped = Some(decode_address(attr_type, value, Some(&key))?);
                    }
                    attr::MAPPED_ADDRESS if mapped.is_none() => {
                        mapped = Some(decode_address(attr_type, value, None)?);
                    }
                    _ => {}
                }
                Ok(())
            })?;
            let mapped = xor_mapped
                .or(mapped)
                .ok_or(StunError::MissingMappedAddress)?;
            Ok(BindingResponse::Success {
                transaction_id,
                mapped,
            })
        }
        msg_type::BINDING_ERROR => {
            let mut code = 0;
            walk_attributes(buf, |attr_type, value| {
                if attr_type == attr::ERROR_CODE && code == 0 {
                    if value.len() < 4 {
                        return Err(StunError::BadAttribute {
                            attr_type,
                            reason: "ERROR-CODE shorter than 4 bytes",
                        });
                    }
                    code = u16::from(value[2] & 0x07) * 100 + u16::from(value[3]);
                }
                Ok(())
            })?;
            Ok(BindingResponse::Error {
                transaction_id,
                code,
            })
        }
        other => Err(StunError::UnexpectedType { msg_type: other }),
    }
}

/// The CRC-32 (IEEE 802.3, reflected, as zlib) lookup table, built at compile time.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32 as FINGERPRINT needs it; a table version is plenty for a few hundred bytes.
fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = CRC_TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 5769 section 2.1: a request with SOFTWARE, PRIORITY, ICE-CONTROLLED, USERNAME,
    /// MESSAGE-INTEGRITY and FINGERPRINT.
    fn rfc5769_request() -> Vec<u8> {
        hex("000100582112a442b7e7a701bc34d686fa87dfae
             802200105354554e20746573742063 6c69656e74
             002400046e0001ff
             80290008932ff9b151263b36
             000600096576746a3a6836765920202000
             0800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2
             80280004e57a3bcf")
    }

    /// RFC 5769 section 2.2: IPv4 success response, 192.0.2.1:32853.
    fn rfc5769_response_v4() -> Vec<u8> {
        hex("0101003c2112a442b7e7a701bc34d686fa87dfae
             8022000b7465737420766563746f7220
             002000080001a147e112a643
             000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7
             80280004c07d4c96")
    }

    /// RFC 5769 section 2.3: IPv6 success response, [2001:db8:1234:5678:11:2233:4455:6677]:32853.
    fn rfc5769_response_v6() -> Vec<u8> {
        hex("010100482112a442b7e7a701bc34d686fa87dfae
             8022000b7465737420766563746f7220
             002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d9
             00080014a382954e4be67bf11784c97c8292c275bfe3ed41
             80280004c8fb0b4c")
    }

    const RFC5769_ID: [u8; 12] = [
        0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
    ];

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn rfc5769_request_parses_with_fingerprint_and_reports_priority_as_unknown() {
        let req = parse_binding_request(&rfc5769_request()).unwrap();
        assert_eq!(req.dialect, Dialect::Rfc5389);
        assert_eq!(req.transaction_id(), Some(TransactionId(RFC5769_ID)));
        assert!(req.fingerprint);
        assert_eq!(req.change_request, None);
        // PRIORITY (0x0024) is ICE's, comprehension-required, and not ours to understand.
        assert_eq!(req.unknown_attributes(), &[0x0024]);
    }

    #[test]
    fn rfc5769_responses_give_the_documented_addresses() {
        let v4 = parse_binding_response(&rfc5769_response_v4()).unwrap();
        assert_eq!(
            v4,
            BindingResponse::Success {
                transaction_id: TransactionId(RFC5769_ID),
                mapped: "192.0.2.1:32853".parse().unwrap(),
            }
        );
        let v6 = parse_binding_response(&rfc5769_response_v6()).unwrap();
        assert_eq!(
            v6,
            BindingResponse::Success {
                transaction_id: TransactionId(RFC5769_ID),
                mapped: "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
                    .parse()
                    .unwrap(),
            }
        );
    }

    #[test]
    fn corrupted_fingerprint_is_refused() {
        let mut msg = rfc5769_response_v4();
        let last = msg.len() - 1;
        msg[last] ^= 1;
        assert_eq!(parse_binding_response(&msg), Err(StunError::BadFingerprint));
        let mut req = rfc5769_request();
        req[30] ^= 0x20; // a byte inside SOFTWARE
        assert_eq!(parse_binding_request(&req), Err(StunError::BadFingerprint));
    }

    #[test]
    fn our_xor_encoding_reproduces_the_rfc5769_attribute_bytes() {
        let mut transaction = [0u8; 16];
        transaction[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        transaction[4..].copy_from_slice(&RFC5769_ID);
        let req = BindingRequest {
            dialect: Dialect::Rfc5389,
            transaction,
            change_request: None,
            fingerprint: false,
            unknown: [0; MAX_UNKNOWN_ATTRIBUTES],
            unknown_len: 0,
        };
        let mut out = [0u8; MAX_RESPONSE_LEN];
        let n = encode_binding_success(
            &mut out,
            &req,
            "192.0.2.1:32853".parse().unwrap(),
            &ResponseOptions::default(),
        )
        .unwrap();
        assert_eq!(&out[20..n], &hex("002000080001a147e112a643")[..]);
        let n = encode_binding_success(
            &mut out,
            &req,
            "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
                .parse()
                .unwrap(),
            &ResponseOptions::default(),
        )
        .unwrap();
        assert_eq!(
            &out[20..n],
            &hex("002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d9")[..]
        );
    }

    #[test]
    fn our_request_round_trips_through_our_server_codec() {
        let id = TransactionId::random();
        let bytes = binding_request(&id);
        let req = parse_binding_request(&bytes).unwrap();
        assert_eq!(req.dialect, Dialect::Rfc5389);
        assert_eq!(req.transaction_id(), Some(id));
        assert!(req.unknown_attributes().is_empty());
        assert!(!req.wants_address_change());

        for mapped in [
            "203.0.113.7:51820",
            "[2001:db8::42]:1",
            "[::ffff:10.1.2.3]:9",
        ] {
            let mapped: SocketAddr = mapped.parse().unwrap();
            let mut out = [0u8; MAX_RESPONSE_LEN];
            let opts = ResponseOptions {
                mapped_address_for_modern_clients: true,
                software: Some("wgmesh"),
                fingerprint: true,
            };
            let n = encode_binding_success(&mut out, &req, mapped, &opts).unwrap();
            assert_eq!(n % 4, 0);
            assert_eq!(
                parse_binding_response(&out[..n]).unwrap(),
                BindingResponse::Success {
                    transaction_id: id,
                    mapped: canonical(mapped),
                }
            );
        }
    }

    #[test]
    fn classic_rfc3489_request_gets_mapped_address_and_its_own_id() {
        // What Debian's stun client 0.97 sent in test I (captured on loopback).
        let msg = hex("00010008018f70087be16f1e0a80221ecb5afd690003000400000000");
        let req = parse_binding_request(&msg).unwrap();
        assert_eq!(req.dialect, Dialect::Rfc3489);
        assert_eq!(req.change_request, Some(0));
        assert!(!req.wants_address_change());
        assert!(req.unknown_attributes().is_empty());
        let mut out = [0u8; MAX_RESPONSE_LEN];
        let opts = ResponseOptions {
            software: Some("wgmesh"),
            fingerprint: true,
            ..ResponseOptions::default()
        };
        let n = encode_binding_success(&mut out, &req, "127.0.0.1:26984".parse().unwrap(), &opts)
            .unwrap();
        // Header with the echoed 128-bit id, then MAPPED-ADDRESS only: no SOFTWARE or
        // FINGERPRINT for a classic client.
        let mut expected = hex("0101000c");
        expected.extend_from_slice(&msg[4..20]);
        expected.extend_from_slice(&hex("00010008 0001 6968 7f000001"));
        assert_eq!(&out[..n], &expected[..]);
    }

    #[test]
    fn change_request_with_flags_is_flagged() {
        let msg = hex("00010008028f70087be16f1e0a80221ecb5afd690003000400000004");
        let req = parse_binding_request(&msg).unwrap();
        assert!(req.wants_address_change());
    }

    #[test]
    fn error_response_round_trips() {
        let id = TransactionId::random();
        let req = parse_binding_request(&binding_request(&id)).unwrap();
        let mut out = [0u8; MAX_RESPONSE_LEN];
        let n = encode_binding_error(
            &mut out,
            &req,
            420,
            "Unknown Attribute",
            &[0x0003],
            &ResponseOptions::default(),
        )
        .unwrap();
        assert_eq!(
            parse_binding_response(&out[..n]).unwrap(),
            BindingResponse::Error {
                transaction_id: id,
                code: 420
            }
        );
        // UNKNOWN-ATTRIBUTES with the single entry repeated to fill 4 bytes.
        assert_eq!(&out[n - 8..n], &hex("000a0004 0003 0003")[..]);
        assert!(encode_binding_error(&mut out, &req, 200, "", &[], &Default::default()).is_err());
    }

    #[test]
    fn malformed_headers_are_refused_with_the_right_error() {
        let good = binding_request(&TransactionId([7; 12]));
        assert_eq!(
            parse_binding_request(&good[..19]),
            Err(StunError::TooShort { len: 19 })
        );
        let mut m = good;
        m[0] = 0x80;
        assert_eq!(
            parse_binding_request(&m),
            Err(StunError::NotStun { first_byte: 0x80 })
        );
        let mut m = good.to_vec();
        m.extend_from_slice(&[0; 4]);
        assert_eq!(
            parse_binding_request(&m),
            Err(StunError::LengthMismatch {
                declared: 0,
                actual: 4
            })
        );
        let mut m = good.to_vec();
        m[3] = 2;
        m.extend_from_slice(&[0; 2]);
        assert_eq!(
            parse_binding_request(&m),
            Err(StunError::UnalignedLength { declared: 2 })
        );
        // An attribute claiming more bytes than the message has.
        let mut m = good.to_vec();
        m[3] = 8;
        m.extend_from_slice(&hex("8022 0010 41414141"));
        assert_eq!(
            parse_binding_request(&m),
            Err(StunError::TruncatedAttribute {
                attr_type: 0x8022,
                offset: 20
            })
        );
        // Anything after FINGERPRINT.
        let mut m = good.to_vec();
        m[3] = 12;
        let crc = crc32(&m) ^ FINGERPRINT_XOR;
        m.extend_from_slice(&hex("80280004"));
        m.extend_from_slice(&crc.to_be_bytes());
        m.extend_from_slice(&hex("80220000"));
        assert_eq!(
            parse_binding_request(&m),
            Err(StunError::AttributeAfterFingerprint)
        );
        // A Binding Indication is valid STUN, just not a request.
        let mut m = good;
        m[1] = 0x11;
        let err = parse_binding_request(&m).unwrap_err();
        assert_eq!(err, StunError::UnexpectedType { msg_type: 0x0011 });
        assert!(!err.is_malformed());
        // A response to the client without the cookie.
        let mut m = rfc5769_response_v4();
        m[4] = 0;
        assert!(matches!(
            parse_binding_response(&m),
            Err(StunError::BadMagicCookie { .. })
        ));
    }

    #[test]
    fn success_without_address_or_with_a_bad_family_is_refused() {
        let mut m = hex("01010000");
        m.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        m.extend_from_slice(&[1; 12]);
        assert_eq!(
            parse_binding_response(&m),
            Err(StunError::MissingMappedAddress)
        );
        m[3] = 12;
        m.extend_from_slice(&hex("00200008 0003 0000 00000000"));
        assert!(matches!(
            parse_binding_response(&m),
            Err(StunError::BadAttribute {
                attr_type: 0x0020,
                ..
            })
        ));
        let n = m.len();
        m[n - 7] = 0x02; // IPv6 family with an IPv4-sized value
        assert!(matches!(
            parse_binding_response(&m),
            Err(StunError::BadAttribute {
                attr_type: 0x0020,
                ..
            })
        ));
    }

    #[test]
    fn small_buffers_are_refused_not_overrun() {
        let req = parse_binding_request(&binding_request(&TransactionId([1; 12]))).unwrap();
        let mapped: SocketAddr = "[2001:db8::1]:5".parse().unwrap();
        for size in 0..44 {
            let mut out = vec![0u8; size];
            assert!(matches!(
                encode_binding_success(&mut out, &req, mapped, &Default::default()),
                Err(StunError::BufferTooSmall { .. })
            ));
        }
        let mut out = [0u8; 44];
        assert_eq!(
            encode_binding_success(&mut out, &req, mapped, &Default::default()),
            Ok(44)
        );
        let long = "x".repeat(MAX_SOFTWARE_LEN + 1);
        let opts = ResponseOptions {
            software: Some(&long),
            ..Default::default()
        };
        let mut out = [0u8; MAX_RESPONSE_LEN];
        assert!(encode_binding_success(&mut out, &req, mapped, &opts).is_err());
    }

    #[test]
    fn largest_response_fits_max_response_len() {
        let req = parse_binding_request(&binding_request(&TransactionId([1; 12]))).unwrap();
        let software = "s".repeat(MAX_SOFTWARE_LEN);
        let opts = ResponseOptions {
            mapped_address_for_modern_clients: true,
            software: Some(&software),
            fingerprint: true,
        };
        let mut out = [0u8; MAX_RESPONSE_LEN];
        let n = encode_binding_success(&mut out, &req, "[::1]:1".parse().unwrap(), &opts).unwrap();
        assert!(n <= MAX_RESPONSE_LEN);
        let n = encode_binding_error(
            &mut out,
            &req,
            420,
            &"r".repeat(128),
            &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16],
            &opts,
        )
        .unwrap();
        assert!(n <= MAX_RESPONSE_LEN);
    }

    /// A deterministic stand-in for a fuzzer: random bytes, random STUN-looking headers, and
    /// single-byte mutations and truncations of valid messages must never panic.
    #[test]
    fn random_and_mutated_input_never_panics() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let seeds = [
            rfc5769_request(),
            rfc5769_response_v4(),
            rfc5769_response_v6(),
            binding_request(&TransactionId([3; 12])).to_vec(),
            hex("00010008018f70087be16f1e0a80221ecb5afd690003000400000000"),
        ];
        let mut out = [0u8; MAX_RESPONSE_LEN];
        let mut buf = Vec::with_capacity(256);
        for round in 0..200_000u32 {
            buf.clear();
            let r = next();
            if round % 2 == 0 {
                let seed = &seeds[(r % seeds.len() as u64) as usize];
                buf.extend_from_slice(seed);
                for _ in 0..(r >> 8) % 4 + 1 {
                    let v = next();
                    let i = (v % buf.len() as u64) as usize;
                    buf[i] = (v >> 16) as u8;
                }
                if r & 0x100000 != 0 {
                    let cut = (next() % (buf.len() as u64 + 1)) as usize;
                    buf.truncate(cut);
                }
            } else {
                let len = (r % 96) as usize;
                for _ in 0..len {
                    buf.push(next() as u8);
                }
                if len >= 20 && r & 0x200 != 0 {
                    // Make the header plausible so the attribute walker gets exercised.
                    buf[0] &= 0x3F;
                    let l = ((len - 20) as u16).to_be_bytes();
                    buf[2] = l[0];
                    buf[3] = l[1];
                    buf[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
                }
            }
            if let Ok(req) = parse_binding_request(&buf) {
                let mapped: SocketAddr = "198.51.100.1:4000".parse().unwrap();
                encode_binding_success(&mut out, &req, mapped, &Default::default()).unwrap();
                encode_binding_error(
                    &mut out,
                    &req,
                    420,
                    "Unknown Attribute",
                    req.unknown_attributes(),
                    &Default::default(),
                )
                .unwrap();
            }
            let _ = parse_binding_response(&buf);
        }
    }
}
