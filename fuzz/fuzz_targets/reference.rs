//! Image references and digests as users, Dockerfiles and registries write them.
//! Invariants: no panic; what parses prints as text that parses to the same reference
//! (and the familiar form too); digests round-trip.
#![no_main]

use image::reference::Reference;
use image::Digest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|s: &str| {
    if let Ok(r) = Reference::parse(s) {
        let text = r.to_string();
        let again = Reference::parse(&text)
            .unwrap_or_else(|e| panic!("{s:?} parsed as {text:?}, which does not parse: {e}"));
        assert_eq!(again, r, "{s:?} → {text:?}");
        let familiar = r.familiar();
        let f = Reference::parse(&familiar)
            .unwrap_or_else(|e| panic!("familiar {familiar:?} of {s:?} does not parse: {e}"));
        assert_eq!(f, r, "{s:?} → familiar {familiar:?}");
        assert!(!r.repository().contains(".."), "{s:?}");
    }
    if let Ok(d) = s.parse::<Digest>() {
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        assert!(d.hex().bytes().all(|b| b.is_ascii_hexdigit()), "{s:?}");
    }
    let _ = registry::names::validate(s);
    let _ = registry::names::validate_tag(s);
});
