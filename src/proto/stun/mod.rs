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

mod decode;
mod encode;
mod message;

pub use decode::{parse_binding_request, parse_binding_response};
pub use encode::{binding_request, encode_binding_error, encode_binding_success};
pub use message::*;

#[cfg(test)]
mod tests {
    use super::encode::canonical;
    use super::message::*;
    use super::*;
    use std::net::SocketAddr;

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
