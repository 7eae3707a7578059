//! config.json as engines and users hand it to `berth runtime`: parsing (unknown properties
//! logged), validation, and the plans made from it before any syscall.
//! Invariants: no panic; the plans of a valid config are deterministic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use oci_spec::runtime::Spec;
use runtime::mounts;

fuzz_target!(|text: &str| {
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| runtime::log::init(Some("/dev/null".into()), false));
    let file = Path::new("/bundle/config.json");
    let Ok(spec) = runtime::spec::parse::<Spec>(text, file) else {
        return;
    };
    if runtime::spec::validate(&spec, Path::new("/bundle"), file).is_err() {
        return;
    }
    let _ = runtime::namespaces::Plan::from_spec(&spec);
    for shared in [false, true] {
        let ctx = mounts::Context {
            bundle: "/bundle".into(),
            rootfs_parent_mount: "/".into(),
            cgroup_v1: vec![("memory".into(), "memory".into())],
            shared_mount_ns: shared,
            ..mounts::Context::default()
        };
        let a = mounts::plan(&spec, &ctx);
        let b = mounts::plan(&spec, &ctx);
        assert_eq!(a.is_ok(), b.is_ok());
        if let (Ok(a), Ok(b)) = (a, b) {
            assert_eq!(a, b);
        }
    }
    let _ = mounts::plan_after_pivot(&spec);
    if let Some(p) = spec.process() {
        let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
        let _ = runtime::process::Prepared::new(p, seccomp.as_ref(), 0);
    }
});
