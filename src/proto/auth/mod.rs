//! Request and response authentication between a peer and the coordination server.
//!
//! The control plane may run as plain HTTP (HTTPS is optional: `--tls-cert`/`--tls-key`), and
//! even over TLS a misissued certificate would let a man in the middle forge a registration
//! ("this is my key, route me your traffic") or a peer list ("here is a new peer, trust it").
//! So, whatever the transport, both ends authenticate with keys they already have: the
//! server's static X25519
//! key (pinned by every agent at join time) and each peer's WireGuard key. The X25519 shared
//! secret between the two is known only to those two key owners, so a MAC keyed from it
//! proves "the owner of this public key sent this" in both directions.
//!
//! # Key derivation
//!
//! `HKDF-SHA256(salt = "wgmesh-auth-v1", ikm = X25519(peer, server))`, expanded twice with
//! `info = label || server public key || peer public key` where the label is
//! `"wgmesh-auth-v1 request"` or `"wgmesh-auth-v1 response"`. Separate keys per direction
//! mean a server response can never be replayed to the server as a request (or vice versa),
//! and binding both public keys pins the derived keys to this exact pair.
//!
//! # Request
//!
//! The agent sends four headers ([`KEY_HEADER`], [`TIMESTAMP_HEADER`], [`NONCE_HEADER`],
//! [`MAC_HEADER`]); the MAC is HMAC-SHA256 with the request key over the canonical string
//!
//! ```text
//! wgmesh-auth-v1 request\n
//! {METHOD}\n
//! {path with query, exactly as sent}\n
//! {unix seconds, decimal}\n
//! {nonce header value}\n
//! {public key, standard base64}\n
//! {lowercase hex SHA-256 of the body}
//! ```
//!
//! (the `\n` are single line feeds; there is no trailing newline). Method and path may hold no
//! control characters, so no two different requests share a canonical string.
//!
//! # Response
//!
//! The server answers with [`RESPONSE_MAC_HEADER`]: HMAC-SHA256 with the response key over
//!
//! ```text
//! wgmesh-auth-v1 response\n
//! {status code, decimal}\n
//! {the request's nonce header value}\n
//! {lowercase hex SHA-256 of the response body}
//! ```
//!
//! The nonce ties the response to the one request it answers, so an old (signed) peer list
//! cannot be replayed to an agent later.

mod agent;
mod mac;
mod replay;
mod server;

pub use agent::{header_value, sign_request, verify_response, RequestSigner};
pub use mac::{
    AuthError, DEFAULT_MAX_CLOCK_SKEW_SECS, DEFAULT_REPLAY_CAPACITY, KEY_HEADER, MAC_HEADER,
    NONCE_HEADER, NONCE_LEN, PROTOCOL_VERSION, RESPONSE_MAC_HEADER, TIMESTAMP_HEADER,
};
pub use replay::{ReplayCache, REPLAY_ORDER_WINDOW_SECS};
pub use server::{
    sign_response, sign_response_parts, verify_request, ServerAuth, MAX_CACHED_PEER_KEYS,
};

#[cfg(test)]
mod tests {
    use super::mac::*;
    use super::*;
    use crate::keys::{PrivateKey, PublicKey};
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use hkdf::Hkdf;
    use hmac::Mac;
    use sha2::Sha256;
    use std::time::Duration;
    use std::time::{SystemTime, UNIX_EPOCH};

    struct Setup {
        server: PrivateKey,
        peer: PrivateKey,
        now: SystemTime,
    }

    fn setup() -> Setup {
        Setup {
            server: PrivateKey::generate(),
            peer: PrivateKey::generate(),
            now: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        }
    }

    fn lookup<'h>(headers: &'h [(&'static str, String)]) -> impl Fn(&str) -> Option<&'h str> {
        move |name| header_value(headers, name)
    }

    fn verify(
        s: &Setup,
        headers: &[(&'static str, String)],
        method: &str,
        path: &str,
        body: &[u8],
        now: SystemTime,
        cache: &ReplayCache,
    ) -> Result<PublicKey, AuthError> {
        verify_request(&s.server, &lookup(headers), method, path, body, now, cache)
    }

    fn sign(s: &Setup, method: &str, path: &str, body: &[u8]) -> Vec<(&'static str, String)> {
        sign_request(&s.peer, &s.server.public_key(), method, path, body, s.now)
    }

    #[test]
    fn round_trip_request_and_response() {
        let s = setup();
        let cache = ReplayCache::default();
        let body = br#"{"hostname":"a"}"#;
        let headers = sign(&s, "POST", "/api/register?x=1", body);
        let names: Vec<_> = headers.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [KEY_HEADER, TIMESTAMP_HEADER, NONCE_HEADER, MAC_HEADER]
        );
        let key = verify(
            &s,
            &headers,
            "POST",
            "/api/register?x=1",
            body,
            s.now,
            &cache,
        )
        .unwrap();
        assert_eq!(key, s.peer.public_key());

        let nonce = header_value(&headers, NONCE_HEADER).unwrap();
        let resp_body = br#"{"peers":[]}"#;
        let resp = sign_response(&s.server, &key, nonce, 200, resp_body);
        verify_response(
            &s.peer,
            &s.server.public_key(),
            nonce,
            200,
            &lookup(&resp),
            resp_body,
        )
        .unwrap();
    }

    #[test]
    fn response_signed_in_parts_verifies_as_the_whole_body() {
        let s = setup();
        let nonce = STANDARD.encode([3u8; NONCE_LEN]);
        let body = br#"{"peers":[{"a":1},{"b":2}]}"#;
        let (head, tail) = body.split_at(11);
        let key = s.peer.public_key();
        let resp = sign_response_parts(&s.server, &key, &nonce, 200, &[head, tail]);
        let server_pub = s.server.public_key();
        verify_response(&s.peer, &server_pub, &nonce, 200, &lookup(&resp), body).unwrap();
    }

    #[test]
    fn server_auth_caches_keys_and_agrees_with_the_free_functions() {
        let s = setup();
        let server = ServerAuth::new(s.server.clone(), ReplayCache::default());
        for round in 0..2 {
            let body = format!("{{\"round\":{round}}}");
            let headers = sign(&s, "POST", "/heartbeat", body.as_bytes());
            let key = server
                .verify_request(
                    &lookup(&headers),
                    "POST",
                    "/heartbeat",
                    body.as_bytes(),
                    s.now,
                )
                .unwrap();
            assert_eq!(key, s.peer.public_key());
            let nonce = header_value(&headers, NONCE_HEADER).unwrap();
            let resp = server.sign_response_parts(&key, nonce, 200, &[b"ok"]);
            verify_response(
                &s.peer,
                &server.public_key(),
                nonce,
                200,
                &lookup(&resp),
                b"ok",
            )
            .unwrap();
            // Replays and forgeries are refused whether or not the key is cached.
            let err = server
                .verify_request(
                    &lookup(&headers),
                    "POST",
                    "/heartbeat",
                    body.as_bytes(),
                    s.now,
                )
                .unwrap_err();
            assert_eq!(err, AuthError::Replayed);
            let fresh = sign(&s, "POST", "/heartbeat", body.as_bytes());
            let err = server
                .verify_request(&lookup(&fresh), "POST", "/heartbeat", b"other", s.now)
                .unwrap_err();
            assert!(matches!(err, AuthError::BadMac(_)), "{err}");
        }
        assert_eq!(server.keys.lock().unwrap().len(), 1);
    }

    #[test]
    fn request_signer_signs_what_the_server_verifies() {
        let s = setup();
        let signer = RequestSigner::new(&s.peer, &s.server.public_key());
        let cache = ReplayCache::default();
        let headers = signer.sign("GET", "/peers?peer_id=x", b"", s.now);
        let key = verify(&s, &headers, "GET", "/peers?peer_id=x", b"", s.now, &cache).unwrap();
        assert_eq!(key, s.peer.public_key());
        // ... and checks answers as verify_response does: the server's MAC passes, a changed
        // body or status does not.
        let nonce = header_value(&headers, NONCE_HEADER).unwrap();
        let answer = sign_response(&s.server, &s.peer.public_key(), nonce, 200, b"{}");
        assert_eq!(
            signer.verify_response(nonce, 200, &lookup(&answer), b"{}"),
            Ok(())
        );
        let forged = AuthError::BadResponseMac(s.server.public_key());
        assert_eq!(
            signer.verify_response(nonce, 200, &lookup(&answer), b"{ }"),
            Err(forged.clone())
        );
        assert_eq!(
            signer.verify_response(nonce, 404, &lookup(&answer), b"{}"),
            Err(forged)
        );
        let weak = PublicKey::from_bytes([0u8; 32]);
        let none: Vec<(&'static str, String)> = Vec::new();
        assert_eq!(
            RequestSigner::new(&s.peer, &weak).verify_response(nonce, 200, &lookup(&none), b""),
            Err(AuthError::WeakKey(weak))
        );
    }

    #[test]
    fn header_lookup_ignores_case() {
        let s = setup();
        let headers = sign(&s, "GET", "/api/peers", b"");
        assert!(header_value(&headers, "x-wgmesh-mac").is_some());
    }

    #[test]
    fn request_signed_by_another_key_is_refused_naming_the_key() {
        let s = setup();
        let cache = ReplayCache::default();
        let mut headers = sign(&s, "GET", "/api/peers", b"");
        // Claim to be a different peer while keeping the original MAC.
        let victim = PrivateKey::generate().public_key();
        headers[0].1 = victim.to_base64();
        let err = verify(&s, &headers, "GET", "/api/peers", b"", s.now, &cache).unwrap_err();
        assert_eq!(err, AuthError::BadMac(victim));
        let msg = err.to_string();
        assert!(msg.contains("request MAC does not match"), "{msg}");
        assert!(msg.contains(&victim.to_base64()), "{msg}");
        assert_eq!(err.http_status(), 401);
        assert!(cache.is_empty(), "a refused request must not burn a nonce");
    }

    #[test]
    fn request_for_another_server_is_refused() {
        let s = setup();
        let cache = ReplayCache::default();
        let headers = sign(&s, "GET", "/api/peers", b"");
        let other = PrivateKey::generate();
        let err = verify_request(
            &other,
            &lookup(&headers),
            "GET",
            "/api/peers",
            b"",
            s.now,
            &cache,
        )
        .unwrap_err();
        assert!(matches!(err, AuthError::BadMac(_)), "{err}");
    }

    #[test]
    fn tampering_with_any_signed_part_is_detected() {
        let s = setup();
        let body = br#"{"endpoint":"198.18.0.1:51820"}"#;
        let headers = sign(&s, "POST", "/api/heartbeat", body);
        let cases: [(&str, &str, &[u8]); 4] = [
            ("PUT", "/api/heartbeat", body),
            ("POST", "/api/deregister", body),
            ("POST", "/api/heartbeat?x", body),
            (
                "POST",
                "/api/heartbeat",
                br#"{"endpoint":"203.0.113.9:51820"}"#,
            ),
        ];
        for (method, path, b) in cases {
            let cache = ReplayCache::default();
            let err = verify(&s, &headers, method, path, b, s.now, &cache).unwrap_err();
            assert!(
                matches!(err, AuthError::BadMac(_)),
                "{method} {path}: {err}"
            );
        }
        // Timestamp moved by one second (still inside the window).
        let mut moved = headers.clone();
        moved[1].1 = (unix_secs(s.now) + 1).to_string();
        let cache = ReplayCache::default();
        let err = verify(&s, &moved, "POST", "/api/heartbeat", body, s.now, &cache).unwrap_err();
        assert!(matches!(err, AuthError::BadMac(_)), "{err}");
        // A different nonce.
        let mut renonced = headers.clone();
        renonced[2].1 = STANDARD.encode([7u8; NONCE_LEN]);
        let err = verify(&s, &renonced, "POST", "/api/heartbeat", body, s.now, &cache).unwrap_err();
        assert!(matches!(err, AuthError::BadMac(_)), "{err}");
        // The untouched request still verifies.
        verify(&s, &headers, "POST", "/api/heartbeat", body, s.now, &cache).unwrap();
    }

    #[test]
    fn replay_is_refused() {
        let s = setup();
        let cache = ReplayCache::default();
        let headers = sign(&s, "GET", "/api/peers", b"");
        verify(&s, &headers, "GET", "/api/peers", b"", s.now, &cache).unwrap();
        let later = s.now + Duration::from_secs(5);
        let err = verify(&s, &headers, "GET", "/api/peers", b"", later, &cache).unwrap_err();
        assert_eq!(err, AuthError::Replayed);
        assert!(err.to_string().contains("replayed request"));
    }

    #[test]
    fn stale_and_future_timestamps_are_refused_with_the_offset() {
        let s = setup();
        let cache = ReplayCache::default();
        let headers = sign(&s, "GET", "/api/peers", b"");
        let err = verify(
            &s,
            &headers,
            "GET",
            "/api/peers",
            b"",
            s.now + Duration::from_secs(300),
            &cache,
        )
        .unwrap_err();
        assert_eq!(
            err,
            AuthError::ClockSkew {
                offset_secs: -300,
                max_secs: 120
            }
        );
        let msg = err.to_string();
        assert!(msg.contains("timestamp 300 s in the past"), "{msg}");
        assert!(msg.contains("check the clock (NTP)"), "{msg}");

        let err = verify(
            &s,
            &headers,
            "GET",
            "/api/peers",
            b"",
            s.now - Duration::from_secs(121),
            &cache,
        )
        .unwrap_err();
        assert!(err.to_string().contains("121 s in the future"), "{err}");

        // Exactly at the edge is still fine.
        verify(
            &s,
            &headers,
            "GET",
            "/api/peers",
            b"",
            s.now + Duration::from_secs(120),
            &cache,
        )
        .unwrap();
    }

    #[test]
    fn missing_and_malformed_headers_are_named() {
        let s = setup();
        let cache = ReplayCache::default();
        let headers = sign(&s, "GET", "/api/peers", b"");
        for i in 0..headers.len() {
            let mut fewer = headers.clone();
            let (name, _) = fewer.remove(i);
            let err = verify(&s, &fewer, "GET", "/api/peers", b"", s.now, &cache).unwrap_err();
            assert_eq!(err, AuthError::MissingHeader(name));
            assert!(err.to_string().contains(name));
        }
        for (i, bad) in [(0, "AAAA"), (1, "-5"), (1, "12e3"), (2, "AAAA"), (3, "%%")] {
            let mut broken = headers.clone();
            broken[i].1 = bad.to_owned();
            let err = verify(&s, &broken, "GET", "/api/peers", b"", s.now, &cache).unwrap_err();
            assert!(
                matches!(err, AuthError::MalformedHeader { header, .. } if header == headers[i].0),
                "{bad}: {err}"
            );
        }
        let err = verify(&s, &headers, "GET", "/a\nb", b"", s.now, &cache).unwrap_err();
        assert!(matches!(err, AuthError::MalformedRequestLine(_)), "{err}");
    }

    #[test]
    fn low_order_peer_key_is_refused() {
        let s = setup();
        let cache = ReplayCache::default();
        // The all-zero point has order 4: its shared secret with anything is all zeros, so
        // without the check anyone could forge requests "from" it.
        let weak = PublicKey::from_bytes([0u8; 32]);
        let zero_keys = MacKeys {
            request: {
                let hk = Hkdf::<Sha256>::new(Some(PROTOCOL_VERSION.as_bytes()), &[0u8; 32]);
                let mut okm = [0u8; 32];
                let label = format!("{PROTOCOL_VERSION} request");
                hk.expand_multi_info(
                    &[
                        label.as_bytes(),
                        s.server.public_key().as_bytes(),
                        weak.as_bytes(),
                    ],
                    &mut okm,
                )
                .unwrap();
                okm
            },
            response: [0u8; 32],
        };
        let ts = unix_secs(s.now).to_string();
        let nonce = STANDARD.encode([1u8; NONCE_LEN]);
        let canonical = request_canonical("GET", "/api/peers", &ts, &nonce, &weak, b"");
        let mac = STANDARD.encode(zero_keys.request_mac(&canonical).finalize().into_bytes());
        let headers = vec![
            (KEY_HEADER, weak.to_base64()),
            (TIMESTAMP_HEADER, ts),
            (NONCE_HEADER, nonce),
            (MAC_HEADER, mac),
        ];
        let err = verify(&s, &headers, "GET", "/api/peers", b"", s.now, &cache).unwrap_err();
        assert_eq!(err, AuthError::WeakKey(weak));
    }

    #[test]
    fn low_order_pinned_server_key_is_refused_by_the_agent() {
        // With such a pinned key, anyone could compute the response MAC key.
        let s = setup();
        let weak = PublicKey::from_bytes([0u8; 32]);
        let headers = sign_request(&s.peer, &weak, "GET", "/api/peers", b"", s.now);
        let nonce = header_value(&headers, NONCE_HEADER).unwrap();
        let none: Vec<(&'static str, String)> = Vec::new();
        let err = verify_response(&s.peer, &weak, nonce, 200, &lookup(&none), b"").unwrap_err();
        assert_eq!(err, AuthError::WeakKey(weak));
    }

    #[test]
    fn forged_response_is_refused() {
        let s = setup();
        let headers = sign(&s, "GET", "/api/peers", b"");
        let nonce = header_value(&headers, NONCE_HEADER).unwrap();
        let body = br#"{"peers":[]}"#;
        let server_pub = s.server.public_key();

        // A man-in-the-middle with its own server key.
        let mitm = PrivateKey::generate();
        let forged = sign_response(&mitm, &s.peer.public_key(), nonce, 200, body);
        let err =
            verify_response(&s.peer, &server_pub, nonce, 200, &lookup(&forged), body).unwrap_err();
        assert_eq!(err, AuthError::BadResponseMac(server_pub));
        assert!(err.to_string().contains("man-in-the-middle"), "{err}");

        // The genuine signature, but a changed body, status or nonce.
        let real = sign_response(&s.server, &s.peer.public_key(), nonce, 200, body);
        let other_nonce = STANDARD.encode([9u8; NONCE_LEN]);
        for (n, status, b) in [
            (nonce, 200, &br#"{"peers":[1]}"#[..]),
            (nonce, 500, &body[..]),
            (other_nonce.as_str(), 200, &body[..]),
        ] {
            assert!(
                verify_response(&s.peer, &server_pub, n, status, &lookup(&real), b).is_err(),
                "{n} {status}"
            );
        }
        // No MAC at all.
        let none: Vec<(&'static str, String)> = Vec::new();
        assert!(verify_response(&s.peer, &server_pub, nonce, 200, &lookup(&none), body).is_err());
    }

    #[test]
    fn response_mac_cannot_be_used_as_request_mac() {
        // Same canonical bytes under the two keys must differ: directions are separated.
        let s = setup();
        let keys = MacKeys::for_peer(&s.peer, &s.server.public_key()).unwrap();
        let server_keys = MacKeys::for_server(&s.server, &s.peer.public_key()).unwrap();
        assert_eq!(keys.request, server_keys.request);
        assert_eq!(keys.response, server_keys.response);
        assert_ne!(keys.request, keys.response);
    }

    #[test]
    fn replay_cache_is_shared_across_threads() {
        let s = setup();
        let cache = ReplayCache::default();
        let headers = sign(&s, "GET", "/api/peers", b"");
        let accepted = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    if verify(&s, &headers, "GET", "/api/peers", b"", s.now, &cache).is_ok() {
                        accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                });
            }
        });
        assert_eq!(accepted.into_inner(), 1);
    }
}
