//! httpwire's request side: request heads, chunked and sized bodies, percent-decoding.
//! Invariants: no panic; bounded reads; encode/decode round-trip.
#![no_main]

use std::io::{BufReader, Read};

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = BufReader::new(data);
    // Keep-alive: heads and bodies one after another, as a connection carries them.
    for _ in 0..4 {
        let Ok(head) = httpwire::read_head(&mut r) else {
            break;
        };
        let _ = head.expects_continue();
        let _ = head.wants_upgrade();
        for (k, vs) in &head.query {
            for v in vs {
                assert_eq!(httpwire::decode(&httpwire::encode(v)), *v);
            }
            assert_eq!(httpwire::decode(&httpwire::encode(k)), *k);
        }
        let Ok(mut body) = httpwire::Body::new(&head, &mut r) else {
            break;
        };
        if let Ok(b) = body.read_all(1 << 20) {
            assert!(b.len() <= 1 << 20);
        }
        let mut rest = Vec::new();
        let _ = body.by_ref().take(1 << 20).read_to_end(&mut rest);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = httpwire::split_target(s);
        assert_eq!(httpwire::decode(&httpwire::encode(s)), s);
    }
});
