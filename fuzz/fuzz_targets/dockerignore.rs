//! `.dockerignore` patterns and the paths they are matched against.
//! Input: patterns, a NUL byte, then paths one per line.
//! Invariants: no panic; cleaning is idempotent and matching sees only the cleaned path.
#![no_main]

use build::ignore::{clean, Ignore};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let (patterns, paths) = text.split_once('\0').unwrap_or((text, "a/b\n"));
    let Ok(ig) = Ignore::parse(patterns) else {
        return;
    };
    let _ = ig.has_exceptions();
    for path in paths.lines() {
        let c = clean(path);
        assert_eq!(clean(&c), c, "clean is not idempotent on {path:?}");
        assert!(
            !c.starts_with('/') && !c.split('/').any(|p| p == ".."),
            "{path:?} → {c:?}"
        );
        assert_eq!(ig.excluded(path), ig.excluded(&c), "{path:?}");
    }
});
