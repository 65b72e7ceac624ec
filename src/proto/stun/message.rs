//! The STUN message: constants, types and errors, the header check, the attribute walk and
//! the FINGERPRINT CRC, shared by parsing (`decode.rs`) and encoding (`encode.rs`).

use std::fmt;
use std::net::SocketAddr;

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
pub(super) const FINGERPRINT_XOR: u32 = 0x5354_554E;

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
    pub(super) unknown: [u16; MAX_UNKNOWN_ATTRIBUTES],
    pub(super) unknown_len: u8,
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

pub(super) fn be16(buf: &[u8], at: usize) -> Option<u16> {
    let bytes = buf.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([bytes[0], bytes[1]]))
}

pub(super) fn be32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// The checked fixed part of a message.
pub(super) struct Header {
    pub(super) msg_type: u16,
    pub(super) cookie: u32,
}

/// Validates the header of `buf` as a whole STUN message (RFC 8489 section 5 and 6.3).
pub(super) fn check_header(buf: &[u8]) -> Result<Header, StunError> {
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
pub(super) fn walk_attributes(
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
pub(super) fn known_request_attribute(attr_type: u16) -> bool {
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

/// The CRC-32 (IEEE 802.3, reflected, as zlib) lookup table, built at compile time.
pub(super) const CRC_TABLE: [u32; 256] = {
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
pub(super) fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = CRC_TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}
