//! Property tests ("fuzzing" with shrinking) of everything that parses untrusted input at the
//! front door: Host/authority routing, session ids, cookies, sign-in tokens in query strings and
//! the WebSocket activity classifier. None may panic; each keeps its invariants on any input.

use proptest::prelude::*;

use crate::activity::ClientStream;
use crate::auth::{CookieSigner, take_token};
use crate::host::{HostRoute, SessionId};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config(4096))]

    #[test]
    fn host_routing_never_panics(host in ".{0,80}", domain in "[a-z0-9.-]{1,30}") {
        let _ = HostRoute::parse(&host, &domain);
    }

    #[test]
    fn workspace_hosts_always_route_to_their_id(
        id in "[0-9a-fA-F]{8,32}",
        domain in "[a-z][a-z0-9-]{0,10}(\\.[a-z][a-z0-9-]{0,10}){0,3}",
        port in proptest::option::of(1u16..),
        dot in any::<bool>(),
    ) {
        let host = format!("vs-code-{id}.{domain}{}{}", if dot { "." } else { "" }, port.map(|p| format!(":{p}")).unwrap_or_default());
        prop_assert_eq!(HostRoute::parse(&host, &domain), HostRoute::Workspace(SessionId::parse(&id).unwrap()));
        // Anything appended after the domain is another domain: never this workspace.
        let evil = format!("vs-code-{id}.{domain}.evil.example");
        prop_assert!(!matches!(HostRoute::parse(&evil, &domain), HostRoute::Workspace(_)));
    }

    #[test]
    fn session_ids_are_lowercase_hex_or_nothing(text in ".{0,40}") {
        if let Some(id) = SessionId::parse(&text) {
            prop_assert!((8..=32).contains(&id.as_str().len()));
            prop_assert!(id.as_str().bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        }
    }

    #[test]
    fn forged_cookies_never_verify(value in ".{0,120}", now in 0i64..4_000_000_000_000) {
        let signer = CookieSigner::new(b"0123456789abcdef0123456789abcdef", std::time::Duration::from_secs(3600));
        let id = SessionId::parse("abc12345").unwrap();
        prop_assert!(!signer.verify(&id, 0, &value, now));
    }

    #[test]
    fn issued_cookies_verify_until_they_expire_or_are_revoked(
        id in "[0-9a-f]{8}",
        generation in 0u64..u64::MAX,
        now in 0i64..4_000_000_000_000,
    ) {
        let signer = CookieSigner::new(b"0123456789abcdef0123456789abcdef", std::time::Duration::from_secs(3600));
        let id = SessionId::parse(&id).unwrap();
        let value = signer.issue(&id, generation, now);
        prop_assert!(signer.verify(&id, generation, &value, now));
        prop_assert!(!signer.verify(&id, generation, &value, now + 3_601_000));
        prop_assert!(!signer.verify(&id, generation + 1, &value, now));
    }

    #[test]
    fn token_extraction_never_panics_and_removes_the_token(query in "[a-z_=&0-9%]{0,60}") {
        if let Some((_, rest)) = take_token(&query) {
            prop_assert!(!rest.split('&').any(|p| p.starts_with("wakeway_token=")));
        }
    }
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn the_websocket_classifier_survives_any_bytes_in_any_chunks(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
        deflate in any::<bool>(),
    ) {
        let mut stream = ClientStream::new(deflate, false);
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let mut start = 0;
        for cut in cuts.into_iter().chain([bytes.len()]) {
            stream.feed(&bytes[start..cut]);
            start = cut;
        }
        let _ = (stream.kind(), stream.error());
    }
}
