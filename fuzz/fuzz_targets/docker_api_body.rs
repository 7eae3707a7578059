//! The Docker API's request bodies (container create, update, exec create) up to the engine's
//! request. Input: a selector byte, the query string, a newline, the body.
//! Invariants: no panic; a refusal is a 4xx, never a server error.
#![no_main]

use std::collections::BTreeMap;

use api::http::Head;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let split = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
    let (query, body) = (&rest[..split], rest.get(split + 1..).unwrap_or(&[]));
    let (_, query) = httpwire::split_target(&format!("/?{}", String::from_utf8_lossy(query)));
    let head = Head {
        method: "POST".into(),
        path: "/v1.41/containers/create".into(),
        query,
        headers: BTreeMap::from([("content-type".into(), "application/json".into())]),
        duplicate_length: false,
        http11: true,
    };
    let refused = match pick % 3 {
        0 => api::bodies::container_create(&head, body).err(),
        1 => api::bodies::container_update(body).err(),
        _ => api::bodies::exec_create(body).err(),
    };
    if let Some((status, msg)) = refused {
        assert!((400..500).contains(&status), "{status} {msg}");
        assert!(!msg.is_empty());
    }
});
