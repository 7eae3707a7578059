//! The OCI and Docker (schema 2) image documents: media types, manifest and index parsing,
//! image configs, platform selection and layer chain IDs.

use std::fmt;

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};
use serde::de::IgnoredAny;

use crate::digest::{Digest, Hasher};
use crate::Compression;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const OCI_LAYER_NONDISTRIBUTABLE: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar";
pub const OCI_LAYER_NONDISTRIBUTABLE_GZIP: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
pub const OCI_LAYER_NONDISTRIBUTABLE_ZSTD: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";

pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_LAYER_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";
pub const DOCKER_FOREIGN_LAYER: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar";
pub const DOCKER_FOREIGN_LAYER_GZIP: &str =
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
/// Docker schema 1 (rejected).
pub const DOCKER_SCHEMA1_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v1+json";
/// Docker schema 1, signed (rejected).
pub const DOCKER_SCHEMA1_SIGNED_MANIFEST: &str =
    "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// The annotation BuildKit puts on the attestation manifests it adds to an index.
pub const REFERENCE_TYPE_ANNOTATION: &str = "vnd.docker.reference.type";
pub const ATTESTATION_MANIFEST: &str = "attestation-manifest";

/// Why a document, media type or platform was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("invalid {what}: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("unsupported manifest media type {0:?}")]
    UnknownMediaType(String),
    #[error("Docker schema 1 manifests are not supported")]
    Schema1,
    #[error("cannot tell what the document is: it has no mediaType, manifests or layers")]
    Untyped,
    #[error("document fetched as {media_type} is {found}")]
    KindMismatch {
        media_type: String,
        found: &'static str,
    },
    #[error("{media_type} document has schemaVersion {version}, want 2")]
    SchemaVersion { media_type: String, version: String },
    #[error("invalid image config: {0}")]
    Config(String),
    #[error("unsupported layer media type {0:?}")]
    UnknownLayer(String),
    #[error("invalid platform {input:?}: {reason}")]
    Platform { input: String, reason: String },
    #[error("no manifest for platform {want} in the image index (it has {})", list(.available))]
    NoMatchingPlatform {
        want: Platform,
        available: Vec<String>,
    },
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}

/// A manifest or an index (a Docker manifest list is an index, a Docker schema 2 manifest a
/// manifest).
// Unboxed on purpose: a document is parsed once and consumed at once, and callers match on
// the plain OCI types.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Document {
    Index(ImageIndex),
    Manifest(ImageManifest),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Index,
    Manifest,
}

fn kind_of(media_type: &str) -> Result<Kind, ModelError> {
    match media_type {
        OCI_INDEX | DOCKER_MANIFEST_LIST => Ok(Kind::Index),
        OCI_MANIFEST | DOCKER_MANIFEST => Ok(Kind::Manifest),
        DOCKER_SCHEMA1_MANIFEST | DOCKER_SCHEMA1_SIGNED_MANIFEST => Err(ModelError::Schema1),
        other => Err(ModelError::UnknownMediaType(other.to_string())),
    }
}

/// The fields that tell what a document is.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    schema_version: Option<serde_json::Value>,
    media_type: Option<String>,
    manifests: Option<IgnoredAny>,
    config: Option<IgnoredAny>,
    layers: Option<IgnoredAny>,
    fs_layers: Option<IgnoredAny>,
}

/// Parses a manifest or an index. `media_type`: from the descriptor or the Content-Type when
/// known (parameters such as `; charset=utf-8` are ignored, and a generic `application/json`
/// counts as unknown); else it is read from the JSON's `mediaType`, or guessed (`manifests` →
/// index, `layers` → manifest). Docker schema 2 documents parse into the same OCI types. A
/// document whose fields contradict its media type (an index with layers, a manifest with
/// manifests) is rejected, as containerd does.
pub fn parse_document(media_type: Option<&str>, bytes: &[u8]) -> Result<Document, ModelError> {
    let probe: Probe = serde_json::from_slice(bytes).map_err(|source| ModelError::Json {
        what: "image manifest or index",
        source,
    })?;
    let schema_version = probe.schema_version.as_ref().map(|v| v.to_string());
    if probe.fs_layers.is_some() || schema_version.as_deref() == Some("1") {
        return Err(ModelError::Schema1);
    }
    let given = media_type
        .map(|m| m.split(';').next().unwrap_or("").trim())
        .filter(|m| !m.is_empty() && *m != "application/json");
    let media_type = match (given, probe.media_type.as_deref()) {
        (Some(m), _) | (None, Some(m)) => m.to_string(),
        (None, None) if probe.manifests.is_some() => OCI_INDEX.to_string(),
        (None, None) if probe.layers.is_some() || probe.config.is_some() => {
            OCI_MANIFEST.to_string()
        }
        (None, None) => return Err(ModelError::Untyped),
    };
    let kind = kind_of(&media_type)?;
    let declared = match probe.media_type.as_deref() {
        Some(m) => Some(kind_of(m)?),
        None => None,
    };
    let mismatch = |found| {
        Err(ModelError::KindMismatch {
            media_type: media_type.clone(),
            found,
        })
    };
    match kind {
        Kind::Manifest if probe.manifests.is_some() || declared == Some(Kind::Index) => {
            return mismatch("an index");
        }
        Kind::Index
            if probe.config.is_some()
                || probe.layers.is_some()
                || declared == Some(Kind::Manifest) =>
        {
            return mismatch("a manifest");
        }
        _ => {}
    }
    if let Some(version) = schema_version {
        if version != "2" {
            return Err(ModelError::SchemaVersion {
                media_type,
                version,
            });
        }
    }
    match kind {
        Kind::Index => serde_json::from_slice(bytes)
            .map(Document::Index)
            .map_err(|source| ModelError::Json {
                what: "image index",
                source,
            }),
        Kind::Manifest => serde_json::from_slice(bytes)
            .map(Document::Manifest)
            .map_err(|source| ModelError::Json {
                what: "image manifest",
                source,
            }),
    }
}

/// Parses an image config (OCI or Docker); `rootfs.type` must be `layers` and every diff ID a
/// digest.
pub fn parse_config(bytes: &[u8]) -> Result<ImageConfiguration, ModelError> {
    let config: ImageConfiguration =
        serde_json::from_slice(bytes).map_err(|source| ModelError::Json {
            what: "image config",
            source,
        })?;
    if config.rootfs().typ() != "layers" {
        return Err(ModelError::Config(format!(
            "rootfs.type is {:?}, want \"layers\"",
            config.rootfs().typ()
        )));
    }
    diff_ids(&config)?;
    Ok(config)
}

/// The config's layer diff IDs (digests of the uncompressed layers), in order.
pub fn diff_ids(config: &ImageConfiguration) -> Result<Vec<Digest>, ModelError> {
    config
        .rootfs()
        .diff_ids()
        .iter()
        .enumerate()
        .map(|(i, d)| {
            d.parse::<Digest>()
                .map_err(|e| ModelError::Config(format!("rootfs.diff_ids[{i}]: {e}")))
        })
        .collect()
}

/// How a layer of this media type is compressed.
pub fn layer_compression(media_type: &str) -> Result<Compression, ModelError> {
    match media_type {
        OCI_LAYER | OCI_LAYER_NONDISTRIBUTABLE | DOCKER_LAYER | DOCKER_FOREIGN_LAYER => {
            Ok(Compression::None)
        }
        OCI_LAYER_GZIP
        | OCI_LAYER_NONDISTRIBUTABLE_GZIP
        | DOCKER_LAYER_GZIP
        | DOCKER_FOREIGN_LAYER_GZIP => Ok(Compression::Gzip),
        OCI_LAYER_ZSTD | OCI_LAYER_NONDISTRIBUTABLE_ZSTD | DOCKER_LAYER_ZSTD => {
            Ok(Compression::Zstd)
        }
        other => Err(ModelError::UnknownLayer(other.to_string())),
    }
}

/// An operating system, CPU architecture and variant, normalized as containerd does (Go
/// names: `amd64`, `arm64`; `arm64` has the variant `v8` unless another is given, `arm` has
/// `v7`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this program runs on, e.g. `linux/amd64` or `linux/arm64/v8`.
    pub fn host() -> Platform {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "x86" => "386",
            "aarch64" => "arm64",
            "loongarch64" => "loong64",
            "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
            "powerpc64" => "ppc64",
            "mips64" if cfg!(target_endian = "little") => "mips64le",
            "mips" if cfg!(target_endian = "little") => "mipsle",
            other => other,
        };
        Platform::normalized(std::env::consts::OS, arch, None)
    }

    /// Parses `os/architecture[/variant]` (`linux/amd64`, `linux/arm/v7`); aliases such as
    /// `x86_64` and `aarch64` are normalized.
    pub fn parse(s: &str) -> Result<Platform, ModelError> {
        let bad = |reason: &str| ModelError::Platform {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        let parts: Vec<&str> = s.split('/').collect();
        if !(2..=3).contains(&parts.len()) {
            return Err(bad("want os/architecture[/variant]"));
        }
        for part in &parts {
            if part.is_empty() {
                return Err(bad("empty component"));
            }
            if !part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
            {
                return Err(bad("components are letters, digits, '_', '.' and '-'"));
            }
        }
        Ok(Platform::normalized(
            parts[0],
            parts[1],
            parts.get(2).copied(),
        ))
    }

    /// The normalized form of an index entry's platform.
    pub fn from_oci(p: &oci_spec::image::Platform) -> Platform {
        let arch = p.architecture().to_string();
        Platform::normalized(&p.os().to_string(), &arch, p.variant().as_deref())
    }

    fn normalized(os: &str, arch: &str, variant: Option<&str>) -> Platform {
        let os = match os.to_ascii_lowercase().as_str() {
            "macos" => "darwin".to_string(),
            other => other.to_string(),
        };
        let arch = arch.to_ascii_lowercase();
        let variant = variant
            .map(str::to_ascii_lowercase)
            .filter(|v| !v.is_empty());
        let (architecture, variant) = match (arch.as_str(), variant.as_deref()) {
            ("i386" | "386", _) => ("386", None),
            ("x86_64" | "x86-64" | "amd64", Some("v1") | None) => ("amd64", None),
            ("x86_64" | "x86-64" | "amd64", Some(v)) => ("amd64", Some(v.to_string())),
            ("aarch64" | "arm64", Some("8" | "v8" | "v8.0") | None) => {
                ("arm64", Some("v8".to_string()))
            }
            ("aarch64" | "arm64", Some("9" | "9.0" | "v9.0")) => ("arm64", Some("v9".to_string())),
            ("aarch64" | "arm64", Some(v)) => ("arm64", Some(v.to_string())),
            ("armhf", _) => ("arm", Some("v7".to_string())),
            ("armel", _) => ("arm", Some("v6".to_string())),
            ("arm", Some("7") | None) => ("arm", Some("v7".to_string())),
            ("arm", Some(v @ ("5" | "6" | "8"))) => ("arm", Some(format!("v{v}"))),
            (other, v) => (other, v.map(str::to_string)),
        };
        Platform {
            os,
            architecture: architecture.to_string(),
            variant,
        }
    }

    /// This platform and those it can also run, best first (containerd's `Only`): amd64/vN
    /// runs amd64/vN-1 … and 386; arm64 runs arm up to v8; arm/vN runs arm down to v5.
    fn compatible(&self) -> Vec<Platform> {
        let with = |arch: &str, variant: Option<String>| Platform {
            os: self.os.clone(),
            architecture: arch.to_string(),
            variant,
        };
        let level = |v: &Option<String>| {
            v.as_deref()
                .and_then(|v| v.strip_prefix('v'))
                .and_then(|n| n.parse::<u32>().ok())
        };
        let mut out = vec![self.clone()];
        match self.architecture.as_str() {
            "amd64" => {
                let top = level(&self.variant).unwrap_or(1);
                for n in (1..top).rev() {
                    out.push(with("amd64", (n > 1).then(|| format!("v{n}"))));
                }
                out.push(with("386", None));
            }
            "arm64" => {
                let top = level(&self.variant).unwrap_or(8);
                for n in (8..top).rev() {
                    out.push(with("arm64", Some(format!("v{n}"))));
                }
                for n in (5..=8).rev() {
                    out.push(with("arm", Some(format!("v{n}"))));
                }
            }
            "arm" => {
                let top = level(&self.variant).unwrap_or(7);
                for n in (5..top).rev() {
                    out.push(with("arm", Some(format!("v{n}"))));
                }
            }
            _ => {}
        }
        out
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

fn is_attestation(d: &Descriptor) -> bool {
    let annotated = d
        .annotations()
        .as_ref()
        .and_then(|a| a.get(REFERENCE_TYPE_ANNOTATION))
        .is_some_and(|t| t == ATTESTATION_MANIFEST);
    let unknown = d.platform().as_ref().is_some_and(|p| {
        p.os().to_string() == "unknown" && p.architecture().to_string() == "unknown"
    });
    annotated || unknown
}

/// Picks the manifest for `want` from an index, as containerd's platform matcher does:
/// architecture aliases are normalized (`x86_64` → `amd64`, `aarch64` → `arm64`), `arm64`'s
/// variant defaults to `v8`, an entry without a variant matches any variant, and a compatible
/// platform (`linux/386` for `linux/amd64`, `linux/arm/v7` for `linux/arm64`) is taken when
/// the exact one is missing. Attestation manifests are skipped; an entry without a platform
/// matches last. The error lists the platforms the index has.
pub fn select_platform(index: &ImageIndex, want: &Platform) -> Result<Descriptor, ModelError> {
    let want = Platform::normalized(&want.os, &want.architecture, want.variant.as_deref());
    let ranked = want.compatible();
    let mut best: Option<(usize, &Descriptor)> = None;
    let mut available = Vec::new();
    for d in index.manifests() {
        if is_attestation(d) {
            continue;
        }
        if !matches!(
            d.media_type().as_ref(),
            OCI_MANIFEST | OCI_INDEX | DOCKER_MANIFEST | DOCKER_MANIFEST_LIST
        ) {
            continue;
        }
        let rank = match d.platform() {
            None => Some(usize::MAX),
            Some(p) => {
                let have = Platform::from_oci(p);
                available.push(have.to_string());
                let no_variant = p.variant().as_deref().is_none_or(str::is_empty);
                ranked.iter().position(|c| {
                    c.os == have.os
                        && c.architecture == have.architecture
                        && (no_variant || c.variant == have.variant)
                })
            }
        };
        if let Some(rank) = rank {
            if best.is_none_or(|(r, _)| rank < r) {
                best = Some((rank, d));
            }
        }
    }
    match best {
        Some((_, d)) => Ok(d.clone()),
        None => Err(ModelError::NoMatchingPlatform { want, available }),
    }
}

/// OCI ChainIDs of a layer stack: `chain[0] = diff[0]`, `chain[n] = sha256(chain[n-1] + " " +
/// diff[n])`, hashing the text `"sha256:… sha256:…"`.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => {
                let mut h = Hasher::new();
                h.update(format!("{prev} {d}").as_bytes());
                h.finish()
            }
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest as _;

    /// Replaces `<x>` with a sha256 digest of 64 `x`s, for x in a..=f.
    fn fixture(json: &str) -> Vec<u8> {
        let mut s = json.to_string();
        for c in 'a'..='f' {
            s = s.replace(
                &format!("<{c}>"),
                &format!("sha256:{}", c.to_string().repeat(64)),
            );
        }
        s.into_bytes()
    }

    fn hex_digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    const OCI_INDEX_JSON: &str = r#"{
      "schemaVersion": 2,
      "mediaType": "application/vnd.oci.image.index.v1+json",
      "manifests": [
        {
          "mediaType": "application/vnd.oci.image.manifest.v1+json",
          "digest": "<a>",
          "size": 1035,
          "platform": { "architecture": "amd64", "os": "linux" }
        },
        {
          "mediaType": "application/vnd.oci.image.manifest.v1+json",
          "digest": "<b>",
          "size": 1035,
          "platform": { "architecture": "arm64", "os": "linux", "variant": "v8" }
        },
        {
          "mediaType": "application/vnd.oci.image.manifest.v1+json",
          "digest": "<c>",
          "size": 1035,
          "platform": { "architecture": "arm", "os": "linux", "variant": "v7" }
        },
        {
          "mediaType": "application/vnd.oci.image.manifest.v1+json",
          "digest": "<d>",
          "size": 839,
          "annotations": {
            "vnd.docker.reference.digest": "<a>",
            "vnd.docker.reference.type": "attestation-manifest"
          },
          "platform": { "architecture": "unknown", "os": "unknown" }
        }
      ],
      "annotations": { "org.opencontainers.image.created": "2024-05-01T00:00:00Z" }
    }"#;

    const DOCKER_LIST_JSON: &str = r#"{
      "manifests": [
        {
          "digest": "<a>",
          "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
          "platform": { "architecture": "amd64", "os": "linux" },
          "size": 528
        },
        {
          "digest": "<b>",
          "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
          "platform": { "architecture": "arm", "os": "linux", "variant": "v6" },
          "size": 528
        },
        {
          "digest": "<c>",
          "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
          "platform": { "architecture": "arm64", "os": "linux", "variant": "v8" },
          "size": 528
        },
        {
          "digest": "<d>",
          "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
          "platform": { "architecture": "386", "os": "linux" },
          "size": 528
        },
        {
          "digest": "<e>",
          "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
          "platform": {
            "architecture": "amd64",
            "os": "windows",
            "os.version": "10.0.17763.5830"
          },
          "size": 1125
        }
      ],
      "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
      "schemaVersion": 2
    }"#;

    const DOCKER_MANIFEST_JSON: &str = r#"{
      "schemaVersion": 2,
      "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
      "config": {
        "mediaType": "application/vnd.docker.container.image.v1+json",
        "size": 1457,
        "digest": "<a>"
      },
      "layers": [
        {
          "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
          "size": 2152262,
          "digest": "<b>"
        },
        {
          "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
          "size": 1024,
          "digest": "<c>",
          "urls": ["https://example.com/layer.tar.gz"]
        }
      ]
    }"#;

    const OCI_MANIFEST_ZSTD_JSON: &str = r#"{
      "schemaVersion": 2,
      "mediaType": "application/vnd.oci.image.manifest.v1+json",
      "config": {
        "mediaType": "application/vnd.oci.image.config.v1+json",
        "digest": "<a>",
        "size": 581
      },
      "layers": [
        {
          "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
          "digest": "<b>",
          "size": 3623807
        },
        {
          "mediaType": "application/vnd.oci.image.layer.v1.tar+zstd",
          "digest": "<c>",
          "size": 1024
        },
        {
          "mediaType": "application/vnd.oci.image.layer.v1.tar",
          "digest": "<d>",
          "size": 10240
        }
      ],
      "annotations": { "org.opencontainers.image.base.name": "docker.io/library/alpine:3.20" }
    }"#;

    const SCHEMA1_JSON: &str = r#"{
      "schemaVersion": 1,
      "name": "library/busybox",
      "tag": "latest",
      "architecture": "amd64",
      "fsLayers": [ { "blobSum": "<a>" } ],
      "history": [ { "v1Compatibility": "{}" } ],
      "signatures": []
    }"#;

    const UNKNOWN_LAYER_JSON: &str = r#"{
      "schemaVersion": 2,
      "mediaType": "application/vnd.oci.image.manifest.v1+json",
      "config": {
        "mediaType": "application/vnd.oci.image.config.v1+json",
        "digest": "<a>",
        "size": 581
      },
      "layers": [
        {
          "mediaType": "application/vnd.example.layer.v1.tar+lz4",
          "digest": "<b>",
          "size": 1
        }
      ]
    }"#;

    const DOCKER_CONFIG_JSON: &str = r##"{
      "architecture": "amd64",
      "config": {
        "Hostname": "",
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "Cmd": ["sh"],
        "Image": "sha256:896f4dfb2b4f3a6a4c3e4f2ad4d2a4e5d7a1a6c6d5c2e0e8c6d3a9b9d0f2c4e1",
        "Volumes": null,
        "WorkingDir": "",
        "Entrypoint": null,
        "OnBuild": null,
        "Labels": null,
        "ExposedPorts": { "80/tcp": {} }
      },
      "container": "5f3e4d5c6b7a",
      "container_config": { "Cmd": ["/bin/sh", "-c", "#(nop) ", "CMD [\"sh\"]"] },
      "created": "2023-07-18T23:19:33.655005962Z",
      "docker_version": "20.10.23",
      "history": [
        { "created": "2023-07-18T23:19:33.538571854Z", "created_by": "/bin/sh -c #(nop) ADD file:7e9002edaafd4e4579b65c8f0aaabde1aeb7fd3f8d95579f7fd3443cef785fd1 in / " },
        { "created": "2023-07-18T23:19:33.655005962Z", "created_by": "/bin/sh -c #(nop)  CMD [\"sh\"]", "empty_layer": true }
      ],
      "os": "linux",
      "rootfs": { "type": "layers", "diff_ids": ["<e>", "<f>"] }
    }"##;

    fn index(json: &str) -> ImageIndex {
        match parse_document(None, &fixture(json)).unwrap() {
            Document::Index(i) => i,
            other => panic!("not an index: {other:?}"),
        }
    }

    fn manifest(media_type: Option<&str>, json: &str) -> ImageManifest {
        match parse_document(media_type, &fixture(json)).unwrap() {
            Document::Manifest(m) => m,
            other => panic!("not a manifest: {other:?}"),
        }
    }

    #[test]
    fn parses_oci_and_docker_documents() {
        let oci = index(OCI_INDEX_JSON);
        assert_eq!(oci.manifests().len(), 4);
        assert_eq!(oci.manifests()[1].digest().to_string(), hex_digest('b'));

        let list = index(DOCKER_LIST_JSON);
        assert_eq!(list.manifests().len(), 5);
        assert_eq!(list.manifests()[0].media_type().as_ref(), DOCKER_MANIFEST);
        let with_type = parse_document(Some(DOCKER_MANIFEST_LIST), &fixture(DOCKER_LIST_JSON));
        assert!(matches!(with_type, Ok(Document::Index(_))));

        let m = manifest(Some(DOCKER_MANIFEST), DOCKER_MANIFEST_JSON);
        assert_eq!(m.config().media_type().as_ref(), DOCKER_CONFIG);
        assert_eq!(m.config().digest().to_string(), hex_digest('a'));
        let layers: Vec<_> = m
            .layers()
            .iter()
            .map(|l| l.media_type().to_string())
            .collect();
        assert_eq!(layers, [DOCKER_LAYER_GZIP, DOCKER_FOREIGN_LAYER_GZIP]);
        assert_eq!(m.layers()[0].size(), 2152262);
        let compressions: Vec<_> = m
            .layers()
            .iter()
            .map(|l| layer_compression(l.media_type().as_ref()).unwrap())
            .collect();
        assert_eq!(compressions, [Compression::Gzip, Compression::Gzip]);

        // A Content-Type with parameters, and the media type read from the JSON.
        let m2 = manifest(
            Some("application/vnd.docker.distribution.manifest.v2+json; charset=utf-8"),
            DOCKER_MANIFEST_JSON,
        );
        assert_eq!(m2, m);
        assert_eq!(manifest(Some("application/json"), DOCKER_MANIFEST_JSON), m);

        let z = manifest(None, OCI_MANIFEST_ZSTD_JSON);
        let compressions: Vec<_> = z
            .layers()
            .iter()
            .map(|l| layer_compression(l.media_type().as_ref()).unwrap())
            .collect();
        assert_eq!(
            compressions,
            [Compression::Gzip, Compression::Zstd, Compression::None]
        );
    }

    #[test]
    fn guesses_the_type_of_documents_without_media_type() {
        let idx = r#"{"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "<a>", "size": 7}]}"#;
        assert!(matches!(
            parse_document(None, &fixture(idx)),
            Ok(Document::Index(_))
        ));
        let man = r#"{"schemaVersion": 2, "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "<a>", "size": 2}, "layers": []}"#;
        assert!(matches!(
            parse_document(None, &fixture(man)),
            Ok(Document::Manifest(_))
        ));
        let err = parse_document(None, b"{\"schemaVersion\": 2}").unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot tell what the document is: it has no mediaType, manifests or layers"
        );
    }

    #[test]
    fn rejects_bad_documents() {
        let err = parse_document(None, &fixture(SCHEMA1_JSON)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Docker schema 1 manifests are not supported"
        );
        let err = parse_document(Some(DOCKER_SCHEMA1_SIGNED_MANIFEST), b"{}").unwrap_err();
        assert_eq!(
            err.to_string(),
            "Docker schema 1 manifests are not supported"
        );

        let err = parse_document(
            Some("application/vnd.example.thing+json"),
            &fixture(OCI_MANIFEST_ZSTD_JSON),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "unsupported manifest media type \"application/vnd.example.thing+json\""
        );
        let odd = r#"{"schemaVersion": 2, "mediaType": "application/vnd.oci.artifact.manifest.v1+json", "blobs": []}"#;
        let err = parse_document(None, odd.as_bytes()).unwrap_err();
        assert!(
            err.to_string()
                .contains("application/vnd.oci.artifact.manifest.v1+json"),
            "{err}"
        );

        // A document that is not what its media type says (CVE-2021-41190's ambiguity).
        let err = parse_document(Some(OCI_MANIFEST), &fixture(OCI_INDEX_JSON)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("document fetched as {OCI_MANIFEST} is an index")
        );
        let err = parse_document(Some(OCI_INDEX), &fixture(DOCKER_MANIFEST_JSON)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("document fetched as {OCI_INDEX} is a manifest")
        );

        let v3 = OCI_MANIFEST_ZSTD_JSON.replace("\"schemaVersion\": 2", "\"schemaVersion\": 3");
        let err = parse_document(None, &fixture(&v3)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{OCI_MANIFEST} document has schemaVersion 3, want 2")
        );

        let err = parse_document(None, b"not json").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid image manifest or index: "),
            "{err}"
        );
        let no_layers = r#"{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "<a>", "size": 2}}"#;
        let err = parse_document(None, &fixture(no_layers)).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid image manifest: missing field `layers`"),
            "{err}"
        );

        // A manifest with an unknown layer type parses; its layer is refused by name.
        let m = manifest(None, UNKNOWN_LAYER_JSON);
        let err = layer_compression(m.layers()[0].media_type().as_ref()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unsupported layer media type \"application/vnd.example.layer.v1.tar+lz4\""
        );
    }

    #[test]
    fn layer_media_types() {
        for (m, c) in [
            (OCI_LAYER, Compression::None),
            (OCI_LAYER_GZIP, Compression::Gzip),
            (OCI_LAYER_ZSTD, Compression::Zstd),
            (OCI_LAYER_NONDISTRIBUTABLE, Compression::None),
            (OCI_LAYER_NONDISTRIBUTABLE_GZIP, Compression::Gzip),
            (OCI_LAYER_NONDISTRIBUTABLE_ZSTD, Compression::Zstd),
            (DOCKER_LAYER, Compression::None),
            (DOCKER_LAYER_GZIP, Compression::Gzip),
            (DOCKER_LAYER_ZSTD, Compression::Zstd),
            (DOCKER_FOREIGN_LAYER, Compression::None),
            (DOCKER_FOREIGN_LAYER_GZIP, Compression::Gzip),
        ] {
            assert_eq!(layer_compression(m).unwrap(), c, "{m}");
        }
        for m in [
            OCI_CONFIG,
            DOCKER_CONFIG,
            OCI_MANIFEST,
            "application/vnd.in-toto+json",
            "",
        ] {
            assert!(layer_compression(m).is_err(), "{m}");
        }
    }

    #[test]
    fn parses_docker_config() {
        let config = parse_config(&fixture(DOCKER_CONFIG_JSON)).unwrap();
        assert_eq!(config.os().to_string(), "linux");
        assert_eq!(config.architecture().to_string(), "amd64");
        let c = config.config().as_ref().unwrap();
        assert_eq!(c.cmd().as_deref(), Some(&["sh".to_string()][..]));
        assert_eq!(
            c.exposed_ports().as_deref(),
            Some(&["80/tcp".to_string()][..])
        );
        assert_eq!(
            diff_ids(&config)
                .unwrap()
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>(),
            [hex_digest('e'), hex_digest('f')]
        );
        let bad = DOCKER_CONFIG_JSON.replace("\"<f>\"", "\"sha256:nothex\"");
        let err = parse_config(&fixture(&bad)).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid image config: rootfs.diff_ids[1]: invalid digest"),
            "{err}"
        );
        let bad = DOCKER_CONFIG_JSON.replace("\"type\": \"layers\"", "\"type\": \"other\"");
        let err = parse_config(&fixture(&bad)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid image config: rootfs.type is \"other\", want \"layers\""
        );
        let err = parse_config(b"{\"os\": \"linux\"}").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid image config: missing field"),
            "{err}"
        );
    }

    fn p(s: &str) -> Platform {
        Platform::parse(s).unwrap()
    }

    #[test]
    fn platforms_parse_and_print() {
        for (input, shown) in [
            ("linux/amd64", "linux/amd64"),
            ("linux/x86_64", "linux/amd64"),
            ("linux/amd64/v1", "linux/amd64"),
            ("linux/amd64/v3", "linux/amd64/v3"),
            ("linux/arm64", "linux/arm64/v8"),
            ("linux/aarch64", "linux/arm64/v8"),
            ("linux/arm64/v8", "linux/arm64/v8"),
            ("linux/arm64/9", "linux/arm64/v9"),
            ("linux/arm", "linux/arm/v7"),
            ("linux/arm/v7", "linux/arm/v7"),
            ("linux/arm/6", "linux/arm/v6"),
            ("linux/armhf", "linux/arm/v7"),
            ("linux/i386", "linux/386"),
            ("Linux/AMD64", "linux/amd64"),
            ("linux/s390x", "linux/s390x"),
            ("windows/amd64", "windows/amd64"),
        ] {
            assert_eq!(p(input).to_string(), shown, "{input}");
        }
        assert_eq!(
            p("linux/arm/v7"),
            Platform {
                os: "linux".into(),
                architecture: "arm".into(),
                variant: Some("v7".into())
            }
        );
        for bad in [
            "linux",
            "",
            "linux/",
            "/amd64",
            "linux/amd64/v8/x",
            "linux/am d64",
        ] {
            let err = Platform::parse(bad).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with(&format!("invalid platform {bad:?}: ")),
                "{err}"
            );
        }
        let host = Platform::host();
        assert_eq!(host.os, std::env::consts::OS);
        let expected = match std::env::consts::ARCH {
            "x86_64" => "linux/amd64",
            "aarch64" => "linux/arm64/v8",
            _ => "",
        };
        if !expected.is_empty() {
            assert_eq!(host.to_string(), expected);
        }
    }

    #[test]
    fn selects_platforms_like_containerd() {
        let oci = index(OCI_INDEX_JSON);
        let list = index(DOCKER_LIST_JSON);
        let pick = |idx: &ImageIndex, want: &str| {
            select_platform(idx, &p(want))
                .map(|d| d.digest().to_string())
                .map_err(|e| e.to_string())
        };
        for (idx, want, digest) in [
            (&oci, "linux/amd64", 'a'),
            (&oci, "linux/x86_64", 'a'),
            (&oci, "linux/amd64/v2", 'a'), // the entry has no variant: it matches
            (&oci, "linux/arm64", 'b'),
            (&oci, "linux/aarch64/v8", 'b'),
            (&oci, "linux/arm64/v9", 'b'), // v9 runs v8
            (&oci, "linux/arm/v7", 'c'),
            (&oci, "linux/arm", 'c'),
            (&oci, "linux/arm/v8", 'c'), // arm/v8 runs arm/v7
            (&list, "linux/amd64", 'a'),
            (&list, "linux/386", 'd'),
            (&list, "linux/arm64", 'c'),
            (&list, "linux/arm/v7", 'b'), // v7 runs v6
            (&list, "linux/arm/v6", 'b'),
            (&list, "windows/amd64", 'e'),
        ] {
            assert_eq!(pick(idx, want), Ok(hex_digest(digest)), "{want}");
        }
        // 32-bit arm v6 cannot run v7; s390x is not there; the attestation is never picked.
        assert_eq!(
            pick(&oci, "linux/arm/v6"),
            Err("no manifest for platform linux/arm/v6 in the image index (it has linux/amd64, linux/arm64/v8, linux/arm/v7)".to_string())
        );
        assert!(pick(&oci, "linux/s390x")
            .unwrap_err()
            .starts_with("no manifest for platform linux/s390x"));
        assert!(pick(&oci, "unknown/unknown").is_err());

        // amd64 falls back to 386 when there is no amd64 entry.
        let only_386 = r#"{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "<f>", "size": 1, "platform": {"architecture": "386", "os": "linux"}}]}"#;
        assert_eq!(pick(&index(only_386), "linux/amd64"), Ok(hex_digest('f')));
        // An arm entry without a variant matches any arm; an entry without a platform matches
        // last.
        let loose = r#"{"schemaVersion": 2, "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "<e>", "size": 1},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "<f>", "size": 1, "platform": {"architecture": "arm", "os": "linux"}}]}"#;
        assert_eq!(pick(&index(loose), "linux/arm/v6"), Ok(hex_digest('f')));
        assert_eq!(pick(&index(loose), "linux/amd64"), Ok(hex_digest('e')));
        let empty = index(
            r#"{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}"#,
        );
        assert_eq!(
            pick(&empty, "linux/amd64"),
            Err(
                "no manifest for platform linux/amd64 in the image index (it has none)".to_string()
            )
        );
    }

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        assert!(chain_ids(&[]).is_empty());
        let diffs: Vec<Digest> = ['a', 'b', 'c']
            .iter()
            .map(|&c| hex_digest(c).parse().unwrap())
            .collect();
        let chain = chain_ids(&diffs);
        let sha = |s: String| {
            let hex: String = sha2::Sha256::digest(s.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            format!("sha256:{hex}")
        };
        let c1 = sha(format!("{} {}", hex_digest('a'), hex_digest('b')));
        let c2 = sha(format!("{c1} {}", hex_digest('c')));
        let got: Vec<String> = chain.iter().map(|d| d.to_string()).collect();
        assert_eq!(got, [hex_digest('a'), c1, c2]);
        assert_eq!(chain_ids(&diffs[..1]), diffs[..1]);
    }
}
