//! Parsing: a server's incoming Binding Request, a client's incoming response.

use super::message::*;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

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
