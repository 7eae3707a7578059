//! `docker load` / OCI archive loading into a fresh image store.
//! Invariants: no panic; a failed load leaves no blob and no image behind; every image a load
//! reports is in the store.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fn blobs(root: &Path) -> usize {
    std::fs::read_dir(root.join("content/blobs/sha256"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::Builder::new()
        .prefix("load-")
        .tempdir_in(berth_fuzz::scratch())
        .unwrap();
    let root = dir.path().join("images");
    let images = image::images::Images::open(&root).unwrap();
    match images.load(data) {
        Ok(loaded) => {
            for (name, id) in loaded {
                assert!(
                    images.store().contains(&id),
                    "{name}: the loaded image's config {id} is not stored"
                );
            }
        }
        Err(_) => assert_eq!(blobs(&root), 0, "a failed load left blobs behind"),
    }
});
