//! Image manifests, indexes, configs and platforms as registries and archives send them.
//! Invariants: no panic; a parsed document's digests are well formed; a platform that parses
//! prints as something that parses to the same platform.
#![no_main]

use image::model;
use libfuzzer_sys::fuzz_target;

const MEDIA_TYPES: &[Option<&str>] = &[
    None,
    Some("application/vnd.oci.image.index.v1+json"),
    Some("application/vnd.oci.image.manifest.v1+json"),
    Some("application/vnd.docker.distribution.manifest.list.v2+json"),
    Some("application/vnd.docker.distribution.manifest.v2+json"),
    Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
    Some("application/json; charset=utf-8"),
];

/// A sha256 digest the OCI types took is one berth's digest type takes too (other algorithms
/// are refused when fetched).
fn sha256_parses(d: &str) {
    if d.starts_with("sha256:") {
        d.parse::<image::Digest>()
            .unwrap_or_else(|e| panic!("descriptor digest {d:?}: {e}"));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let media_type = MEDIA_TYPES[pick as usize % MEDIA_TYPES.len()];
    match model::parse_document(media_type, bytes) {
        Ok(model::Document::Index(index)) => {
            for m in index.manifests() {
                sha256_parses(&m.digest().to_string());
            }
            for p in ["linux/amd64", "linux/arm64/v8", "windows/amd64"] {
                let _ = model::select_platform(&index, &model::Platform::parse(p).unwrap());
            }
        }
        Ok(model::Document::Manifest(m)) => {
            for l in m.layers() {
                sha256_parses(&l.digest().to_string());
                let _ = model::layer_compression(&l.media_type().to_string());
            }
        }
        Err(_) => {}
    }
    if let Ok(config) = model::parse_config(bytes) {
        if let Ok(ids) = model::diff_ids(&config) {
            assert_eq!(model::chain_ids(&ids).len(), ids.len());
        }
    }
    if let Ok(s) = std::str::from_utf8(bytes) {
        if let Ok(p) = model::Platform::parse(s) {
            let again = model::Platform::parse(&p.to_string())
                .unwrap_or_else(|e| panic!("{p} (from {s:?}) does not parse again: {e}"));
            assert_eq!(again.to_string(), p.to_string());
        }
    }
});
