//! Loading and validating a bundle's `config.json`: every error names the field that is wrong.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

/// Why a bundle's configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {field}: {message}")]
    Invalid {
        file: String,
        field: String,
        message: String,
    },
    #[error("{file}: unknown field `{field}`")]
    UnknownField { file: String, field: String },
}

fn invalid(file: &Path, field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        file: file.display().to_string(),
        field: field.into(),
        message: message.into(),
    }
}

/// `--strict-spec`: unknown properties are an error instead of a warning.
static STRICT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes unknown properties an error (`--strict-spec`) for the rest of the process.
pub fn set_strict(strict: bool) {
    STRICT.store(strict, std::sync::atomic::Ordering::Relaxed);
}

/// Parses JSON text into `T` as the OCI runtime spec asks: unknown properties are ignored —
/// engines newer than berth send fields it does not know — and each is named in the log
/// (a misspelled security setting must not pass without a word). With `--strict-spec` they
/// are an error, as [`parse_strict`].
pub fn parse<T: serde::de::DeserializeOwned>(text: &str, file: &Path) -> Result<T, SpecError> {
    parse_as(
        text,
        file,
        STRICT.load(std::sync::atomic::Ordering::Relaxed),
    )
}

/// Parses JSON text into `T`, rejecting unknown fields and reporting the JSON path of any
/// type error.
pub fn parse_strict<T: serde::de::DeserializeOwned>(
    text: &str,
    file: &Path,
) -> Result<T, SpecError> {
    parse_as(text, file, true)
}

fn parse_as<T: serde::de::DeserializeOwned>(
    text: &str,
    file: &Path,
    strict: bool,
) -> Result<T, SpecError> {
    let mut unknown = Vec::new();
    let mut de = serde_json::Deserializer::from_str(text);
    let mut record = |path: serde_ignored::Path| unknown.push(path.to_string());
    let ignored = serde_ignored::Deserializer::new(&mut de, &mut record);
    let value: T = serde_path_to_error::deserialize(ignored).map_err(|e| {
        let field = e.path().to_string();
        let message = e.into_inner().to_string();
        invalid(
            file,
            if field.split('.').all(|p| p == "?" || p.is_empty()) {
                "(document)".into()
            } else {
                field
            },
            message,
        )
    })?;
    de.end()
        .map_err(|e| invalid(file, "(document)", e.to_string()))?;
    // serde_ignored writes `?` for a step through an Option.
    let unknown: Vec<String> = unknown
        .into_iter()
        .map(|f| {
            f.split('.')
                .filter(|p| *p != "?")
                .collect::<Vec<_>>()
                .join(".")
        })
        .collect();
    if let Some(field) = unknown.first() {
        if strict {
            return Err(SpecError::UnknownField {
                file: file.display().to_string(),
                field: field.clone(),
            });
        }
        for field in &unknown {
            crate::log::warn(&format!(
                "{}: unknown property `{field}` ignored (--strict-spec refuses it)",
                file.display()
            ));
        }
    }
    Ok(value)
}

/// The smallest memory limit a container is allowed (Docker's minimum): below it the runtime's
/// own setup would be OOM-killed before the container's program starts.
pub const MIN_MEMORY: i64 = 6 << 20;

/// Reads `<bundle>/config.json` and validates it for use by `create`.
pub fn load_bundle(bundle: &Path) -> Result<Spec, SpecError> {
    load_bundle_as(bundle, STRICT.load(std::sync::atomic::Ordering::Relaxed))
}

/// [`load_bundle`], strict about unknown properties or not.
pub fn load_bundle_as(bundle: &Path, strict: bool) -> Result<Spec, SpecError> {
    let path = bundle.join("config.json");
    let text = fs::read_to_string(&path).map_err(|source| SpecError::Read {
        path: path.clone(),
        source,
    })?;
    let spec: Spec = parse_as(&text, &path, strict)?;
    validate(&spec, bundle, &path)?;
    Ok(spec)
}

/// The root filesystem directory of `spec`, made absolute against `bundle`.
pub fn rootfs_path(spec: &Spec, bundle: &Path) -> PathBuf {
    let root = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .unwrap_or_default();
    if root.is_absolute() {
        root
    } else {
        bundle.join(root)
    }
}

/// Checks what serde cannot: required fields, paths, value ranges and cross-field rules.
pub fn validate(spec: &Spec, bundle: &Path, file: &Path) -> Result<(), SpecError> {
    let v = spec.version();
    if v.is_empty() {
        return Err(invalid(file, "ociVersion", "missing"));
    }
    if !v.starts_with("1.") {
        return Err(invalid(
            file,
            "ociVersion",
            format!("unsupported version {v:?}, berth supports 1.x"),
        ));
    }
    let Some(root) = spec.root() else {
        return Err(invalid(file, "root", "missing"));
    };
    if root.path().as_os_str().is_empty() {
        return Err(invalid(file, "root.path", "empty"));
    }
    let rootfs = rootfs_path(spec, bundle);
    match fs::metadata(&rootfs) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(invalid(
                file,
                "root.path",
                format!("{} is not a directory", rootfs.display()),
            ))
        }
        Err(e) => {
            return Err(invalid(
                file,
                "root.path",
                format!("{}: {e}", rootfs.display()),
            ))
        }
    }
    if let Some(process) = spec.process() {
        match process.args() {
            Some(args) if !args.is_empty() && !args[0].is_empty() => {}
            _ => {
                return Err(invalid(
                    file,
                    "process.args",
                    "must name the program to run",
                ))
            }
        }
        if !process.cwd().is_absolute() {
            return Err(invalid(
                file,
                "process.cwd",
                format!("{} is not an absolute path", process.cwd().display()),
            ));
        }
        for (i, e) in process.env().iter().flatten().enumerate() {
            if !e.contains('=') {
                return Err(invalid(
                    file,
                    format!("process.env[{i}]"),
                    format!("{e:?} is not KEY=value"),
                ));
            }
        }
    }
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        if !m.destination().is_absolute() {
            return Err(invalid(
                file,
                format!("mounts[{i}].destination"),
                format!("{} is not an absolute path", m.destination().display()),
            ));
        }
        if m.uid_mappings().is_some() || m.gid_mappings().is_some() {
            return Err(invalid(
                file,
                format!("mounts[{i}].uidMappings"),
                "id-mapped mounts are not supported",
            ));
        }
        for o in m.options().iter().flatten() {
            if o == "idmap" || o == "ridmap" {
                return Err(invalid(
                    file,
                    format!("mounts[{i}].options"),
                    format!("{o:?} (id-mapped mounts) is not supported"),
                ));
            }
        }
    }
    if let Some(linux) = spec.linux() {
        let mut seen = HashSet::new();
        let mut has_user = false;
        for (i, ns) in linux.namespaces().iter().flatten().enumerate() {
            if !seen.insert(ns.typ()) {
                return Err(invalid(
                    file,
                    format!("linux.namespaces[{i}].type"),
                    format!("{} listed twice", ns.typ()),
                ));
            }
            if ns.typ() == LinuxNamespaceType::Time {
                return Err(invalid(
                    file,
                    format!("linux.namespaces[{i}].type"),
                    "time namespaces are not supported",
                ));
            }
            if ns.typ() == LinuxNamespaceType::User {
                has_user = true;
            }
            if let Some(p) = ns.path() {
                if !p.is_absolute() {
                    return Err(invalid(
                        file,
                        format!("linux.namespaces[{i}].path"),
                        format!("{} is not absolute", p.display()),
                    ));
                }
                if let Err(e) = fs::metadata(p) {
                    return Err(invalid(
                        file,
                        format!("linux.namespaces[{i}].path"),
                        format!("{}: {e}", p.display()),
                    ));
                }
            }
        }
        let maps = linux.uid_mappings().iter().flatten().count()
            + linux.gid_mappings().iter().flatten().count();
        if has_user {
            let joining = linux
                .namespaces()
                .iter()
                .flatten()
                .any(|n| n.typ() == LinuxNamespaceType::User && n.path().is_some());
            if !joining
                && (linux.uid_mappings().as_ref().is_none_or(|m| m.is_empty())
                    || linux.gid_mappings().as_ref().is_none_or(|m| m.is_empty()))
            {
                return Err(invalid(
                    file,
                    "linux.uidMappings",
                    "a new user namespace needs both uidMappings and gidMappings",
                ));
            }
        } else if maps > 0 {
            return Err(invalid(
                file,
                "linux.uidMappings",
                "mappings are set but there is no user namespace",
            ));
        }
        if let Some(p) = linux.cgroups_path() {
            if p.components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(invalid(
                    file,
                    "linux.cgroupsPath",
                    format!("{} must not contain ..", p.display()),
                ));
            }
        }
        for (i, d) in linux.devices().iter().flatten().enumerate() {
            if !d.path().is_absolute() || !d.path().starts_with("/dev") {
                return Err(invalid(
                    file,
                    format!("linux.devices[{i}].path"),
                    format!("{} is not under /dev", d.path().display()),
                ));
            }
        }
        for (i, p) in linux
            .masked_paths()
            .iter()
            .flatten()
            .chain(linux.readonly_paths().iter().flatten())
            .enumerate()
        {
            if !p.starts_with('/') {
                return Err(invalid(
                    file,
                    format!("linux.maskedPaths/readonlyPaths[{i}]"),
                    format!("{p:?} is not absolute"),
                ));
            }
        }
        if let Some(prop) = linux.rootfs_propagation() {
            if crate::mounts::propagation_flag(prop).is_none() {
                return Err(invalid(
                    file,
                    "linux.rootfsPropagation",
                    format!("unknown propagation {prop:?}"),
                ));
            }
        }
        if linux.intel_rdt().is_some() {
            return Err(invalid(
                file,
                "linux.intelRdt",
                "Intel RDT is not supported",
            ));
        }
        if let Some(res) = linux.resources() {
            if let Some(mem) = res.memory() {
                if let Some(l) = mem.limit() {
                    if l < -1 || l == 0 {
                        return Err(invalid(
                            file,
                            "linux.resources.memory.limit",
                            format!("{l} is not a valid limit (bytes, or -1 for none)"),
                        ));
                    }
                    if l > 0 && l < MIN_MEMORY {
                        return Err(invalid(
                            file,
                            "linux.resources.memory.limit",
                            format!("{l} bytes is below the minimum of {MIN_MEMORY} (6 MiB) a container needs to start"),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle_with(config: &str) -> (tempfile::TempDir, Result<Spec, SpecError>) {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("rootfs")).unwrap();
        fs::write(dir.path().join("config.json"), config).unwrap();
        let r = load_bundle_as(dir.path(), true);
        (dir, r)
    }

    const MINIMAL: &str = r#"{"ociVersion":"1.2.0","root":{"path":"rootfs"},"process":{"args":["true"],"cwd":"/","user":{"uid":0,"gid":0}},"linux":{"namespaces":[{"type":"pid"},{"type":"mount"}]}}"#;

    #[test]
    fn errors_name_the_field() {
        let cases: &[(&str, &str)] = &[
            (MINIMAL, ""),
            (
                &MINIMAL.replace(r#""cwd":"/""#, r#""cwd":"/","bogus":1"#),
                "unknown field `process.bogus`",
            ),
            (
                &MINIMAL.replace(r#"{"type":"pid"}"#, r#"{"type":"pidx"}"#),
                "linux.namespaces[0].type",
            ),
            (
                &MINIMAL.replace(r#"{"type":"mount"}"#, r#"{"type":"pid"}"#),
                "linux.namespaces[1].type: pid listed twice",
            ),
            (&MINIMAL.replace(r#""rootfs""#, r#""nothere""#), "root.path"),
            (
                &MINIMAL.replace(r#""uid":0,"gid":0"#, r#""uid":"x","gid":0"#),
                "process.user.uid",
            ),
            (
                &MINIMAL.replace(r#""args":["true"]"#, r#""args":[]"#),
                "process.args",
            ),
            (
                &MINIMAL.replace(r#""cwd":"/""#, r#""cwd":"rel""#),
                "process.cwd",
            ),
            (&MINIMAL.replace(r#""1.2.0""#, r#""2.0.0""#), "ociVersion"),
            (
                &MINIMAL.replace(r#"{"type":"mount"}"#, r#"{"type":"mount"},{"type":"user"}"#),
                "linux.uidMappings",
            ),
            (
                &MINIMAL.replace(
                    r#""namespaces""#,
                    r#""resources":{"memory":{"limit":-5}},"namespaces""#,
                ),
                "linux.resources.memory.limit",
            ),
            (
                &MINIMAL.replace(
                    r#""namespaces""#,
                    r#""cgroupsPath":"a/../../b","namespaces""#,
                ),
                "linux.cgroupsPath",
            ),
            (
                &MINIMAL.replace(
                    r#"{"type":"mount"}"#,
                    r#"{"type":"network","path":"/nonexistent/ns"}"#,
                ),
                "linux.namespaces[1].path",
            ),
            ("{", "(document)"),
        ];
        for (config, want) in cases {
            let (_d, r) = bundle_with(config);
            match (r, want.is_empty()) {
                (Ok(_), true) => {}
                (Ok(_), false) => {
                    panic!("accepted config, wanted error containing {want:?}: {config}")
                }
                (Err(e), true) => panic!("rejected valid config: {e}"),
                (Err(e), false) => {
                    let msg = e.to_string();
                    assert!(
                        msg.contains(want),
                        "error {msg:?} does not contain {want:?}"
                    );
                }
            }
        }
    }

    /// Untrusted input never panics the parser: every truncation and every single-byte
    /// corruption of a full config gives either a config or an error.
    #[test]
    fn mangled_configs_never_panic() {
        let full = r#"{"ociVersion":"1.2.0","root":{"path":"rootfs","readonly":true},"hostname":"h",
            "process":{"terminal":false,"user":{"uid":0,"gid":0,"additionalGids":[1]},"args":["sh","-c","x"],
              "env":["A=b"],"cwd":"/","capabilities":{"bounding":["CAP_KILL"]},"rlimits":[{"type":"RLIMIT_NOFILE","hard":1,"soft":1}],
              "noNewPrivileges":true,"oomScoreAdj":5},
            "mounts":[{"destination":"/proc","type":"proc","source":"proc","options":["nosuid"]}],
            "hooks":{"prestart":[{"path":"/bin/true","args":["true"],"env":["X=y"],"timeout":3}]},
            "linux":{"namespaces":[{"type":"pid"},{"type":"network","path":"/proc/1/ns/net"}],
              "uidMappings":[{"containerID":0,"hostID":1000,"size":10}],
              "resources":{"memory":{"limit":100000000,"swap":200000000},"cpu":{"shares":2,"quota":1000,"period":100000},
                "pids":{"limit":10},"devices":[{"allow":false,"access":"rwm"}]},
              "seccomp":{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO",
                "args":[{"index":0,"value":1,"op":"SCMP_CMP_EQ"}]}]},
              "maskedPaths":["/proc/kcore"],"readonlyPaths":["/proc/sys"],"sysctl":{"net.ipv4.ip_forward":"1"}}}"#;
        let path = Path::new("config.json");
        assert!(parse_strict::<Spec>(full, path).is_ok());
        for end in 0..full.len() {
            if full.is_char_boundary(end) {
                let _ = parse_strict::<Spec>(&full[..end], path);
            }
        }
        let bytes = full.as_bytes();
        for (i, replacement) in
            (0..bytes.len()).flat_map(|i| [b'"', b'{', b'1', b'-', b'x'].map(|r| (i, r)))
        {
            let mut b = bytes.to_vec();
            b[i] = replacement;
            if let Ok(text) = std::str::from_utf8(&b) {
                let _ = parse_strict::<Spec>(text, path);
            }
        }
    }
}
