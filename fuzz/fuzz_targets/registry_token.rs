//! The registry's bearer tokens, base64, byte ranges and repository names.
//! Invariants: no panic; only tokens signed with the key verify, and signing round-trips;
//! base64 round-trips; a parsed range lies inside the blob; a valid name cannot leave the
//! storage tree.
#![no_main]

use libfuzzer_sys::fuzz_target;
use registry::auth::{base64_decode, base64_encode, sign, verify};

const KEY: &[u8] = b"berth-fuzz-token-key";

fuzz_target!(|data: &[u8]| {
    for url in [false, true] {
        let enc = base64_encode(data, url);
        assert_eq!(base64_decode(&enc, url).as_deref(), Some(data));
    }
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(claims) = verify(KEY, s) {
        // Only what the key signed verifies: signing the claims again verifies too.
        assert!(verify(KEY, &sign(KEY, &claims)).is_some());
        assert_eq!(verify(b"another key", s), None, "verified with another key");
    }
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(s) {
        // Claims are strings and integers; a float may not survive JSON's text exactly.
        if !has_float(&v) {
            assert_eq!(verify(KEY, &sign(KEY, &v)), Some(v));
        }
    }
    for size in [0u64, 1, 100, u64::MAX] {
        if let Some((start, end)) = registry::server::parse_range(s, size) {
            assert!(start <= end && end < size, "{s:?} of {size}: {start}-{end}");
        }
    }
    if registry::names::validate(s).is_ok() {
        assert!(
            !s.starts_with('/') && s.split('/').all(|c| !c.is_empty() && c != "." && c != ".."),
            "{s:?} is a valid name"
        );
    }
});

fn has_float(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Number(n) => n.is_f64(),
        serde_json::Value::Array(a) => a.iter().any(has_float),
        serde_json::Value::Object(o) => o.values().any(has_float),
        _ => false,
    }
}
