//! httpwire's response side, as berth's clients read registries and daemons.
//! Invariants: no panic; bounded reads.
#![no_main]

use std::io::{BufReader, Read};

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = BufReader::new(data);
    let Ok((status, headers)) = httpwire::read_response_head(&mut r) else {
        return;
    };
    let mut body = httpwire::Body::for_response(&headers, status, &mut r);
    let mut out = Vec::new();
    let _ = body.by_ref().take(1 << 20).read_to_end(&mut out);
    assert!(out.len() <= 1 << 20);
});
