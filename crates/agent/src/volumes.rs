//! A pod's volumes on the node, under `<data-dir>/pods/<uid>/volumes/<plugin>/<name>`:
//! emptyDir (a directory, or tmpfs with `medium: Memory`), hostPath with its type checks,
//! configMap, secret (always on tmpfs), downwardAPI and projected volumes written as the
//! kubelet's atomic writer does (the files are links through `..data`, which is swapped to
//! a new timestamped directory in one rename, so a reader never sees half an update), and
//! persistentVolumeClaims bound to hostPath or local PersistentVolumes.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    ConfigMap, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Volume,
};

use crate::podspec::ConfigError;

/// The API objects a pod's volumes and environment name, fetched before the pod is synced.
#[derive(Default, Clone)]
pub struct Objects {
    pub config_maps: BTreeMap<String, Option<ConfigMap>>,
    pub secrets: BTreeMap<String, Option<Secret>>,
    pub claims: BTreeMap<String, Option<(PersistentVolumeClaim, Option<PersistentVolume>)>>,
    /// ServiceAccount tokens for projected sources, by [`token_key`]: the token, or why
    /// the server gave none.
    pub tokens: BTreeMap<String, Result<String, String>>,
}

/// What tells one projected token of a pod from another: its audience and lifetime.
pub fn token_key(audience: Option<&str>, expiration_seconds: Option<i64>) -> String {
    format!(
        "{}|{}",
        audience.unwrap_or_default(),
        expiration_seconds.unwrap_or(3600)
    )
}

/// The projected `serviceAccountToken` sources of a pod: (audience, expirationSeconds).
pub fn token_sources(pod: &Pod) -> Vec<(Option<String>, Option<i64>)> {
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|v| v.projected.as_ref())
        .flat_map(|p| p.sources.iter().flatten())
        .filter_map(|s| s.service_account_token.as_ref())
        .map(|t| (t.audience.clone(), t.expiration_seconds))
        .collect()
}

impl crate::podspec::Lookup for Objects {
    fn config_map(&self, name: &str) -> Option<ConfigMap> {
        self.config_maps.get(name).cloned().flatten()
    }
    fn secret(&self, name: &str) -> Option<Secret> {
        self.secrets.get(name).cloned().flatten()
    }
}

/// The ConfigMaps, Secrets and claims a pod names (volumes, env, envFrom, pull secrets).
pub fn referenced(pod: &Pod) -> (Vec<String>, Vec<String>, Vec<String>) {
    let mut cms = Vec::new();
    let mut secrets = Vec::new();
    let mut claims = Vec::new();
    let Some(spec) = pod.spec.as_ref() else {
        return (cms, secrets, claims);
    };
    for v in spec.volumes.iter().flatten() {
        if let Some(c) = &v.config_map {
            cms.push(c.name.clone());
        }
        if let Some(s) = &v.secret {
            secrets.push(s.secret_name.clone().unwrap_or_default());
        }
        if let Some(p) = &v.projected {
            for src in p.sources.iter().flatten() {
                if let Some(c) = &src.config_map {
                    cms.push(c.name.clone());
                }
                if let Some(s) = &src.secret {
                    secrets.push(s.name.clone());
                }
            }
        }
        if let Some(c) = &v.persistent_volume_claim {
            claims.push(c.claim_name.clone());
        }
    }
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        for e in c.env_from.iter().flatten() {
            if let Some(r) = &e.config_map_ref {
                cms.push(r.name.clone());
            }
            if let Some(r) = &e.secret_ref {
                secrets.push(r.name.clone());
            }
        }
        for e in c.env.iter().flatten() {
            if let Some(src) = &e.value_from {
                if let Some(r) = &src.config_map_key_ref {
                    cms.push(r.name.clone());
                }
                if let Some(r) = &src.secret_key_ref {
                    secrets.push(r.name.clone());
                }
            }
        }
    }
    for s in spec.image_pull_secrets.iter().flatten() {
        secrets.push(s.name.clone());
    }
    for l in [&mut cms, &mut secrets, &mut claims] {
        l.retain(|n| !n.is_empty());
        l.sort();
        l.dedup();
    }
    (cms, secrets, claims)
}

fn cpath(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::other("path contains NUL"))
}

fn is_mountpoint(p: &Path) -> bool {
    let (Ok(a), Ok(b)) = (
        std::fs::metadata(p),
        p.parent().map(std::fs::metadata).transpose(),
    ) else {
        return false;
    };
    b.is_some_and(|b| a.dev() != b.dev())
        || std::fs::read_to_string("/proc/self/mountinfo")
            .map(|m| {
                let s = p.to_string_lossy();
                m.lines().any(|l| l.split(' ').nth(4) == Some(&*s))
            })
            .unwrap_or(false)
}

/// Mounts a tmpfs on `dir` unless one is there.
fn tmpfs(dir: &Path, size: Option<u64>) -> std::io::Result<()> {
    if is_mountpoint(dir) {
        return Ok(());
    }
    let src = CString::new("tmpfs").expect("no NUL");
    let target = cpath(dir)?;
    let mut data = "mode=0755".to_string();
    if let Some(s) = size {
        data.push_str(&format!(",size={s}"));
    }
    let data = CString::new(data).expect("no NUL");
    // SAFETY: all pointers are NUL-terminated strings alive for the call.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            src.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            data.as_ptr().cast(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn unmount(dir: &Path) {
    if let Ok(c) = cpath(dir) {
        // SAFETY: a NUL-terminated path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Writes `files` (relative path → bytes, mode) into `dir` atomically, as the kubelet's
/// AtomicWriter: a new `..<timestamp>` directory, `..data` swapped to it by rename, and
/// top-level links through `..data`. Unchanged content is left alone.
pub fn atomic_write(dir: &Path, files: &BTreeMap<String, (Vec<u8>, u32)>) -> std::io::Result<()> {
    let data_link = dir.join("..data");
    if let Ok(cur) = std::fs::read_link(&data_link) {
        let cur = dir.join(cur);
        let same = files
            .iter()
            .all(|(p, (b, _))| std::fs::read(cur.join(p)).ok().as_ref() == Some(b))
            && count_files(&cur) == files.len();
        if same {
            return Ok(());
        }
    }
    let stamp = format!("..{}", timefmt::now_nanos());
    let new = dir.join(&stamp);
    std::fs::create_dir_all(&new)?;
    std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o755))?;
    for (p, (b, mode)) in files {
        let f = new.join(p);
        if let Some(parent) = f.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&f, b)?;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(*mode))?;
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp)?;
    let old = std::fs::read_link(&data_link).ok();
    std::fs::rename(&tmp, &data_link)?;
    // Top-level names through ..data.
    let tops: std::collections::BTreeSet<String> = files
        .keys()
        .map(|p| p.split('/').next().unwrap_or(p).to_string())
        .collect();
    for t in &tops {
        let l = dir.join(t);
        if std::fs::symlink_metadata(&l).is_err() {
            std::os::unix::fs::symlink(format!("..data/{t}"), &l)?;
        }
    }
    // Links to names no longer there go, and the old directory.
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if !n.starts_with("..") && !tops.contains(&n) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    if let Some(o) = old {
        if o != Path::new(&stamp) {
            let _ = std::fs::remove_dir_all(dir.join(o));
        }
    }
    Ok(())
}

fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                n += count_files(&p);
            } else {
                n += 1;
            }
        }
    }
    n
}

/// Where projected keys come from: for messages and `optional`.
struct Source<'a> {
    kind: &'a str,
    ns: &'a str,
    name: &'a str,
    optional: bool,
}

fn projected_items(
    all: BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: u32,
    src: Source<'_>,
    out: &mut BTreeMap<String, (Vec<u8>, u32)>,
) -> Result<(), ConfigError> {
    let Source {
        kind,
        ns,
        name,
        optional,
    } = src;
    match items {
        Some(items) if !items.is_empty() => {
            for it in items {
                let Some(b) = all.get(&it.key) else {
                    if optional {
                        continue;
                    }
                    return Err(ConfigError(format!(
                        "configmap references non-existent config key: {}",
                        it.key
                    ))
                    .with_kind(kind, ns, name, &it.key));
                };
                check_rel(&it.path)?;
                out.insert(
                    it.path.clone(),
                    (b.clone(), it.mode.map_or(default_mode, |m| m as u32)),
                );
            }
        }
        _ => {
            for (k, b) in all {
                out.insert(k, (b, default_mode));
            }
        }
    }
    Ok(())
}

impl ConfigError {
    fn with_kind(self, kind: &str, ns: &str, name: &str, key: &str) -> ConfigError {
        if kind == "Secret" {
            ConfigError(format!("couldn't find key {key} in Secret {ns}/{name}"))
        } else {
            ConfigError(format!("couldn't find key {key} in ConfigMap {ns}/{name}"))
        }
    }
}

fn check_rel(p: &str) -> Result<(), ConfigError> {
    if p.is_empty() || p.starts_with('/') || p.split('/').any(|c| c == ".." || c.starts_with(".."))
    {
        return Err(ConfigError(format!("invalid volume item path {p:?}")));
    }
    Ok(())
}

fn cm_bytes(c: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut m: BTreeMap<String, Vec<u8>> = c
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    for (k, v) in c.binary_data.iter().flatten() {
        m.insert(k.clone(), v.0.clone());
    }
    m
}

fn secret_bytes(s: &Secret) -> BTreeMap<String, Vec<u8>> {
    s.data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect()
}

/// Where a pod's volumes live.
pub fn pod_dir(data_dir: &Path, uid: &str) -> PathBuf {
    data_dir.join("pods").join(uid)
}

/// Makes (or refreshes) every volume of the pod; returns name → host path.
pub fn setup(
    data_dir: &Path,
    pod: &Pod,
    objs: &Objects,
    pod_ip: &str,
    host_ip: &str,
) -> Result<BTreeMap<String, PathBuf>, ConfigError> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let base = pod_dir(data_dir, &uid).join("volumes");
    let io = |what: &str, e: std::io::Error| ConfigError(format!("{what}: {e}"));
    let mut out = BTreeMap::new();
    let fs_group = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref())
        .and_then(|s| s.fs_group)
        .and_then(|g| u32::try_from(g).ok());
    for v in pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
    {
        let p = volume(&base, v, pod, objs, &ns, pod_ip, host_ip).map_err(|e| {
            ConfigError(format!(
                "MountVolume.SetUp failed for volume \"{}\" : {}",
                v.name, e.0
            ))
        })?;
        // fsGroup owns the volumes the kubelet manages (never a hostPath or a claim's).
        if let Some(g) = fs_group {
            if v.host_path.is_none() && v.persistent_volume_claim.is_none() {
                chgrp_tree(&p, g);
            }
        }
        out.insert(v.name.clone(), p);
    }
    let _ = io;
    Ok(out)
}

fn volume(
    base: &Path,
    v: &Volume,
    pod: &Pod,
    objs: &Objects,
    ns: &str,
    pod_ip: &str,
    host_ip: &str,
) -> Result<PathBuf, ConfigError> {
    let io = |e: std::io::Error| ConfigError(e.to_string());
    let dir_for = |plugin: &str| -> Result<PathBuf, ConfigError> {
        let d = base.join(plugin).join(&v.name);
        std::fs::create_dir_all(&d).map_err(io)?;
        Ok(d)
    };
    if let Some(e) = &v.empty_dir {
        let d = dir_for("kubernetes.io~empty-dir")?;
        if e.medium.as_deref() == Some("Memory") {
            let size = e
                .size_limit
                .as_ref()
                .and_then(|q| crate::podspec::bytes(&q.0));
            tmpfs(&d, size).map_err(io)?;
        }
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).map_err(io)?;
        return Ok(d);
    }
    if let Some(h) = &v.host_path {
        let p = PathBuf::from(&h.path);
        let t = h.type_.as_deref().unwrap_or("");
        let meta = std::fs::metadata(&p);
        use std::os::unix::fs::FileTypeExt;
        let fail = |what: &str| {
            Err(ConfigError(format!(
                "hostPath type check failed: {} is not a {what}",
                h.path
            )))
        };
        match t {
            "" => {}
            "DirectoryOrCreate" => {
                if meta.is_err() {
                    std::fs::create_dir_all(&p).map_err(io)?;
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).map_err(io)?;
                } else if !meta.as_ref().is_ok_and(|m| m.is_dir()) {
                    return fail("directory");
                }
            }
            "Directory" => {
                if !meta.as_ref().is_ok_and(|m| m.is_dir()) {
                    return fail("directory");
                }
            }
            "FileOrCreate" => {
                if meta.is_err() {
                    if let Some(parent) = p.parent() {
                        std::fs::create_dir_all(parent).map_err(io)?;
                    }
                    std::fs::OpenOptions::new().create(true).append(true).open(&p).map_err(io)?;
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).map_err(io)?;
                } else if !meta.as_ref().is_ok_and(|m| m.is_file()) {
                    return fail("file");
                }
            }
            "File" => {
                if !meta.as_ref().is_ok_and(|m| m.is_file()) {
                    return fail("file");
                }
            }
            "Socket" => {
                if !meta.as_ref().is_ok_and(|m| m.file_type().is_socket()) {
                    return fail("socket file");
                }
            }
            "CharDevice" => {
                if !meta.as_ref().is_ok_and(|m| m.file_type().is_char_device()) {
                    return fail("character device");
                }
            }
            "BlockDevice" => {
                if !meta.as_ref().is_ok_and(|m| m.file_type().is_block_device()) {
                    return fail("block device");
                }
            }
            other => {
                return Err(ConfigError(format!(
                    "hostPath type {other:?} is not one of DirectoryOrCreate, Directory, FileOrCreate, File, Socket, CharDevice, BlockDevice"
                )))
            }
        }
        return Ok(p);
    }
    if let Some(c) = &v.config_map {
        let d = dir_for("kubernetes.io~configmap")?;
        let mode = c.default_mode.unwrap_or(0o644) as u32;
        let mut files = BTreeMap::new();
        match objs.config_maps.get(&c.name).cloned().flatten() {
            Some(cm) => projected_items(
                cm_bytes(&cm),
                c.items.as_ref(),
                mode,
                Source {
                    kind: "ConfigMap",
                    ns,
                    name: &c.name,
                    optional: c.optional == Some(true),
                },
                &mut files,
            )?,
            None if c.optional == Some(true) => {}
            None => return Err(ConfigError(format!("configmap \"{}\" not found", c.name))),
        }
        atomic_write(&d, &files).map_err(io)?;
        return Ok(d);
    }
    if let Some(s) = &v.secret {
        let d = dir_for("kubernetes.io~secret")?;
        tmpfs(&d, None).map_err(io)?;
        let name = s.secret_name.clone().unwrap_or_default();
        let mode = s.default_mode.unwrap_or(0o644) as u32;
        let mut files = BTreeMap::new();
        match objs.secrets.get(&name).cloned().flatten() {
            Some(sec) => projected_items(
                secret_bytes(&sec),
                s.items.as_ref(),
                mode,
                Source {
                    kind: "Secret",
                    ns,
                    name: &name,
                    optional: s.optional == Some(true),
                },
                &mut files,
            )?,
            None if s.optional == Some(true) => {}
            None => return Err(ConfigError(format!("secret \"{name}\" not found"))),
        }
        atomic_write(&d, &files).map_err(io)?;
        return Ok(d);
    }
    if let Some(dapi) = &v.downward_api {
        let d = dir_for("kubernetes.io~downward-api")?;
        let mode = dapi.default_mode.unwrap_or(0o644) as u32;
        let mut files = BTreeMap::new();
        for it in dapi.items.iter().flatten() {
            check_rel(&it.path)?;
            let val = downward_item(
                pod,
                it.field_ref.as_ref().map(|f| f.field_path.as_str()),
                it.resource_field_ref.as_ref(),
                pod_ip,
                host_ip,
            )?;
            files.insert(
                it.path.clone(),
                (val.into_bytes(), it.mode.map_or(mode, |m| m as u32)),
            );
        }
        atomic_write(&d, &files).map_err(io)?;
        return Ok(d);
    }
    if let Some(p) = &v.projected {
        let d = dir_for("kubernetes.io~projected")?;
        tmpfs(&d, None).map_err(io)?;
        let mode = p.default_mode.unwrap_or(0o644) as u32;
        let mut files = BTreeMap::new();
        for src in p.sources.iter().flatten() {
            if let Some(c) = &src.config_map {
                match objs.config_maps.get(&c.name).cloned().flatten() {
                    Some(cm) => projected_items(
                        cm_bytes(&cm),
                        c.items.as_ref(),
                        mode,
                        Source {
                            kind: "ConfigMap",
                            ns,
                            name: &c.name,
                            optional: c.optional == Some(true),
                        },
                        &mut files,
                    )?,
                    None if c.optional == Some(true) => {}
                    None => return Err(ConfigError(format!("configmap \"{}\" not found", c.name))),
                }
            }
            if let Some(s) = &src.secret {
                match objs.secrets.get(&s.name).cloned().flatten() {
                    Some(sec) => projected_items(
                        secret_bytes(&sec),
                        s.items.as_ref(),
                        mode,
                        Source {
                            kind: "Secret",
                            ns,
                            name: &s.name,
                            optional: s.optional == Some(true),
                        },
                        &mut files,
                    )?,
                    None if s.optional == Some(true) => {}
                    None => return Err(ConfigError(format!("secret \"{}\" not found", s.name))),
                }
            }
            if let Some(da) = &src.downward_api {
                for it in da.items.iter().flatten() {
                    check_rel(&it.path)?;
                    let val = downward_item(
                        pod,
                        it.field_ref.as_ref().map(|f| f.field_path.as_str()),
                        it.resource_field_ref.as_ref(),
                        pod_ip,
                        host_ip,
                    )?;
                    files.insert(
                        it.path.clone(),
                        (val.into_bytes(), it.mode.map_or(mode, |m| m as u32)),
                    );
                }
            }
            if let Some(t) = &src.service_account_token {
                check_rel(&t.path)?;
                let key = token_key(t.audience.as_deref(), t.expiration_seconds);
                match objs.tokens.get(&key) {
                    Some(Ok(tok)) => {
                        files.insert(t.path.clone(), (tok.clone().into_bytes(), mode));
                    }
                    Some(Err(e)) => return Err(ConfigError(format!("failed to fetch token: {e}"))),
                    None => {
                        return Err(ConfigError(
                            "failed to fetch token: the agent has not requested it".into(),
                        ))
                    }
                }
            }
        }
        atomic_write(&d, &files).map_err(io)?;
        return Ok(d);
    }
    if let Some(c) = &v.persistent_volume_claim {
        let Some(Some((pvc, pv))) = objs.claims.get(&c.claim_name).cloned() else {
            return Err(ConfigError(format!(
                "persistentvolumeclaim \"{}\" not found",
                c.claim_name
            )));
        };
        let phase = pvc
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        let Some(pv) = pv else {
            return Err(ConfigError(format!(
                "persistentvolumeclaim \"{}\" is not bound (phase {phase:?})",
                c.claim_name
            )));
        };
        let spec = pv.spec.unwrap_or_default();
        let path = spec
            .host_path
            .map(|h| h.path)
            .or_else(|| spec.local.map(|l| l.path))
            .ok_or_else(|| ConfigError(format!(
                "persistentvolume \"{}\" is neither hostPath nor local: berth's agent mounts only those",
                pv.metadata.name.unwrap_or_default()
            )))?;
        let p = PathBuf::from(path);
        if !p.exists() {
            return Err(ConfigError(format!(
                "the path {} of the local volume does not exist",
                p.display()
            )));
        }
        return Ok(p);
    }
    Err(ConfigError(format!(
        "volume \"{}\" has a type berth's agent does not mount (supported: emptyDir, hostPath, configMap, secret, downwardAPI, projected, persistentVolumeClaim)",
        v.name
    )))
}

/// Gives `dir` and everything under it (links themselves, not their targets) to group
/// `gid`, group-readable (and group-writable and setgid for directories), as the kubelet
/// applies fsGroup.
fn chgrp_tree(dir: &Path, gid: u32) {
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return;
    };
    let _ = std::os::unix::fs::lchown(dir, None, Some(gid));
    if meta.file_type().is_symlink() {
        return;
    }
    let mode = meta.permissions().mode() & 0o7777;
    let want = if meta.is_dir() {
        mode | 0o2070
    } else {
        mode | 0o040
    };
    if want != mode {
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(want));
    }
    if meta.is_dir() {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                chgrp_tree(&e.path(), gid);
            }
        }
    }
}

fn downward_item(
    pod: &Pod,
    field: Option<&str>,
    res: Option<&k8s_openapi::api::core::v1::ResourceFieldSelector>,
    pod_ip: &str,
    host_ip: &str,
) -> Result<String, ConfigError> {
    if let Some(f) = field {
        return crate::podspec::field_ref(pod, f, pod_ip, host_ip);
    }
    if let Some(r) = res {
        let spec = pod.spec.as_ref();
        let c = spec
            .and_then(|s| {
                let n = r.container_name.as_deref().unwrap_or_default();
                s.containers.iter().find(|c| c.name == n)
            })
            .ok_or_else(|| ConfigError("resourceFieldRef needs a containerName".into()))?;
        return crate::podspec::resource_field(
            c,
            &r.resource,
            r.divisor.as_ref().map(|d| d.0.as_str()),
            (0, 0),
        );
    }
    Err(ConfigError(
        "a downwardAPI item needs fieldRef or resourceFieldRef".into(),
    ))
}

/// Removes a pod's volumes: unmounts the tmpfs ones, then the directory.
pub fn teardown(data_dir: &Path, uid: &str) {
    let dir = pod_dir(data_dir, uid);
    let vols = dir.join("volumes");
    if let Ok(plugins) = std::fs::read_dir(&vols) {
        for p in plugins.flatten() {
            if let Ok(vs) = std::fs::read_dir(p.path()) {
                for v in vs.flatten() {
                    if is_mountpoint(&v.path()) {
                        unmount(&v.path());
                    }
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
