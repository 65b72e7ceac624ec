//! EDNS (RFC 6891) for the `.mesh` resolver: the query's OPT record read from the raw
//! datagram, and ours written as raw bytes.
//!
//! Why not through `simple-dns`: version 0.13 lays out the OPT record's TTL backwards (it
//! takes the low byte for the extended RCODE and the next one for the version, where RFC 6891
//! puts the extended RCODE in the high byte, then the version, then the DO bit and 15 zero
//! bits). A query with the DO bit set (`dig +dnssec`, TTL `00 00 80 00`) then read as EDNS
//! version 128, and the BADVERS we wrote went out as TTL `00 00 00 01` with a header RCODE of
//! 0: NOERROR, no answer, and `MBZ: 0x0001` in dig. Everything else in the message still goes
//! through `simple-dns`; these few fixed-layout bytes are read and written here, and tested
//! against hand-built packets and `dig`.

use std::fmt;

/// The OPT pseudo-record's type (RFC 6891 section 6.1.1).
const TYPE_OPT: u16 = 41;

/// The DO ("DNSSEC answer OK") bit in the OPT TTL's flags (RFC 3225).
const DO_BIT: u32 = 0x0000_8000;

/// What a query said about EDNS in its OPT record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryEdns {
    /// The EDNS version the client speaks (only 0 exists).
    pub version: u8,
    /// The DO bit: a response carries it back (RFC 3225 section 3), whether or not it
    /// holds any DNSSEC records (ours never do: the zone is not signed).
    pub dnssec_ok: bool,
}

/// Why a query's EDNS part is unusable: answered with FORMERR (RFC 6891 section 6.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdnsError {
    /// More than one OPT record.
    TwoOpts,
    /// The message ends inside a record (simple-dns parsed it, so this is only a guard).
    Truncated,
}

impl fmt::Display for EdnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EdnsError::TwoOpts => "more than one OPT record",
            EdnsError::Truncated => "message ends inside a record",
        })
    }
}

impl std::error::Error for EdnsError {}

fn u16_at(bytes: &[u8], at: usize) -> Result<u16, EdnsError> {
    match bytes.get(at..at + 2) {
        Some(b) => Ok(u16::from_be_bytes([b[0], b[1]])),
        None => Err(EdnsError::Truncated),
    }
}

/// The offset just past the (possibly compressed) name starting at `at`.
fn skip_name(bytes: &[u8], mut at: usize) -> Result<usize, EdnsError> {
    loop {
        let len = *bytes.get(at).ok_or(EdnsError::Truncated)?;
        match len & 0xC0 {
            0 if len == 0 => return Ok(at + 1),
            0 => at += 1 + usize::from(len),
            // A compression pointer ends the name in this record.
            0xC0 if at + 1 < bytes.len() => return Ok(at + 2),
            _ => return Err(EdnsError::Truncated),
        }
    }
}

/// The query's EDNS facts, or None when it carries no OPT record. Only the additional
/// section may hold one (RFC 6891 section 6.1.1).
pub fn read(datagram: &[u8]) -> Result<Option<QueryEdns>, EdnsError> {
    let count = |at| u16_at(datagram, at).map(usize::from);
    let (questions, answers, authority, additional) = (count(4)?, count(6)?, count(8)?, count(10)?);
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(datagram, at)? + 4;
    }
    let mut found = None;
    for index in 0..answers + authority + additional {
        at = skip_name(datagram, at)?;
        let rtype = u16_at(datagram, at)?;
        let ttl = match datagram.get(at + 4..at + 8) {
            Some(b) => u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            None => return Err(EdnsError::Truncated),
        };
        at += 10 + usize::from(u16_at(datagram, at + 8)?);
        if at > datagram.len() {
            return Err(EdnsError::Truncated);
        }
        if rtype == TYPE_OPT && index >= answers + authority {
            if found.is_some() {
                return Err(EdnsError::TwoOpts);
            }
            found = Some(QueryEdns {
                version: (ttl >> 16) as u8,
                dnssec_ok: ttl & DO_BIT != 0,
            });
        }
    }
    Ok(found)
}

/// Our OPT record: root name, type 41, our UDP payload size in the class field, and the TTL
/// RFC 6891 lays out as extended RCODE (the RCODE's upper 8 bits), version 0 (the only one we
/// speak, also in a BADVERS answer), the DO bit copied from the query, zero flags; no options.
pub fn opt_record(rcode: u16, dnssec_ok: bool, udp_size: u16) -> [u8; 11] {
    let ttl = (u32::from(rcode >> 4) << 24) | if dnssec_ok { DO_BIT } else { 0 };
    let mut record = [0u8; 11];
    record[1..3].copy_from_slice(&TYPE_OPT.to_be_bytes());
    record[3..5].copy_from_slice(&udp_size.to_be_bytes());
    record[5..9].copy_from_slice(&ttl.to_be_bytes());
    record
}

/// Appends our OPT record to a built reply (whose header holds the RCODE's low 4 bits) and
/// counts it in ARCOUNT. A reply shorter than a header is left alone.
pub fn append_opt(reply: &mut Vec<u8>, rcode: u16, dnssec_ok: bool, udp_size: u16) {
    let Ok(additional) = u16_at(reply, 10) else {
        return;
    };
    reply[10..12].copy_from_slice(&additional.saturating_add(1).to_be_bytes());
    reply.extend_from_slice(&opt_record(rcode, dnssec_ok, udp_size));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query for `web.mesh` A with `additional` appended as its additional section.
    fn query(additional: &[&[u8]]) -> Vec<u8> {
        let mut q = vec![
            0x12,
            0x34,
            0x01,
            0x00,
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            additional.len() as u8,
        ];
        q.extend_from_slice(b"\x03web\x04mesh\x00\x00\x01\x00\x01");
        for rr in additional {
            q.extend_from_slice(rr);
        }
        q
    }

    const OPT_DO: &[u8] = b"\x00\x00\x29\x10\x00\x00\x00\x80\x00\x00\x00";
    const OPT_V1: &[u8] = b"\x00\x00\x29\x10\x00\x00\x01\x00\x00\x00\x00";
    /// An OPT with a cookie option (code 10, 8 bytes), as dig sends by default.
    const OPT_COOKIE: &[u8] =
        b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x0c\x00\x0a\x00\x08\x01\x02\x03\x04\x05\x06\x07\x08";

    #[test]
    fn the_opt_ttl_is_read_as_rfc_6891_lays_it_out() {
        assert_eq!(read(&query(&[])), Ok(None));
        assert_eq!(
            read(&query(&[OPT_DO])),
            Ok(Some(QueryEdns {
                version: 0,
                dnssec_ok: true
            }))
        );
        assert_eq!(
            read(&query(&[OPT_V1])),
            Ok(Some(QueryEdns {
                version: 1,
                dnssec_ok: false
            }))
        );
        assert_eq!(
            read(&query(&[OPT_COOKIE])),
            Ok(Some(QueryEdns {
                version: 0,
                dnssec_ok: false
            }))
        );
        assert_eq!(read(&query(&[OPT_DO, OPT_V1])), Err(EdnsError::TwoOpts));
        let whole = query(&[OPT_COOKIE]);
        for cut in 12..whole.len() {
            assert!(read(&whole[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn our_opt_record_carries_the_extended_rcode_version_0_and_the_do_bit() {
        // BADVERS (16): extended RCODE 1, version 0, DO echoed.
        assert_eq!(
            opt_record(16, true, 1232),
            *b"\x00\x00\x29\x04\xd0\x01\x00\x80\x00\x00\x00"
        );
        assert_eq!(
            opt_record(3, false, 1232),
            *b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"
        );
        let mut reply = vec![0u8; 12];
        reply[11] = 2;
        append_opt(&mut reply, 0, false, 512);
        assert_eq!(reply.len(), 23);
        assert_eq!(reply[11], 3);
    }
}
