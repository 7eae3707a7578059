//! The Dockerfile parser and linter, and the shell-word expansion builds use.
//! Invariants: no panic; problems point at lines the file has; parsing is deterministic.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let (df, problems) = build::lint::check(text);
    let lines = text.split('\n').count();
    for p in &problems {
        assert!(
            p.line <= lines,
            "problem at line {} of {lines}: {p:?}",
            p.line
        );
    }
    assert_eq!(
        build::dockerfile::parse(text).0,
        df,
        "parse is not deterministic"
    );
    let env = BTreeMap::from([("A".to_string(), "x y".to_string())]);
    for i in &df.instructions {
        let t = i.text();
        let _ = build::shell::expand(&t, &env, df.escape);
        let _ = build::shell::expand_words(&t, &env, df.escape);
    }
});
