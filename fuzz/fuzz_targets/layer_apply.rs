//! Layer tar application (plain, gzip, zstd; whiteouts, links, PAX headers, devices).
//! Invariants: no panic; nothing is created, changed or linked outside the destination;
//! bounded work for a bounded input.
#![no_main]

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use image::Compression;
use libfuzzer_sys::fuzz_target;

/// Decompressed streams larger than this are skipped (a bomb fills the disk, not a bug here).
const MAX_EXPANDED: u64 = 16 << 20;

fn expanded_len(r: impl Read) -> Option<u64> {
    let n = std::io::copy(&mut r.take(MAX_EXPANDED + 1), &mut std::io::sink()).ok()?;
    (n <= MAX_EXPANDED).then_some(n)
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let (bytes, compression) = match mode % 4 {
        // The tar itself, as the fuzzer shapes it.
        0 => (body.to_vec(), Compression::None),
        // The same, gzip-compressed here: the tar structure is what is being mutated.
        1 => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(body).unwrap();
            (gz.finish().unwrap(), Compression::Gzip)
        }
        // Raw bytes to the decoders.
        2 => {
            if expanded_len(flate2::read::MultiGzDecoder::new(body)).is_none() {
                return;
            }
            (body.to_vec(), Compression::Gzip)
        }
        _ => {
            if let Ok(d) = zstd::stream::read::Decoder::new(body) {
                if expanded_len(d).is_none() {
                    return;
                }
            }
            (body.to_vec(), Compression::Zstd)
        }
    };
    let work = tempfile::Builder::new()
        .prefix("layer-")
        .tempdir_in(berth_fuzz::scratch())
        .unwrap();
    let dest = work.path().join("root");
    let outside = work.path().join("outside");
    fs::create_dir(&dest).unwrap();
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("canary"), b"host").unwrap();
    let _ = image::layer::apply(&bytes[..], compression, &dest);
    // Whatever the layer said, only `root` changed.
    assert_eq!(
        listing(work.path()),
        ["outside", "root"],
        "created beside the root"
    );
    assert_eq!(listing(&outside), ["canary"], "created outside the root");
    let canary = outside.join("canary");
    assert_eq!(
        fs::read(&canary).unwrap(),
        b"host",
        "a host file was written"
    );
    assert_eq!(
        fs::metadata(&canary).unwrap().nlink(),
        1,
        "a host file was linked"
    );
    assert!(fs::symlink_metadata(&dest).unwrap().is_dir());
});
