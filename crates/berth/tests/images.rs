//! The image store from the command line: import, list, inspect, history, tag (versions and
//! rollback), rmi, prune, mounting an image for a container and running it with the runtime,
//! and hostile layers that must leave the store exactly as it was.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{busybox_bundle, require_root, BERTH};
use serde_json::Value;

struct Env {
    daemon: common::Daemon,
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("berth-images-")
            .tempdir_in("/var/tmp")
            .unwrap();
        Env {
            daemon: common::Daemon::start(&dir.path().join("data")),
            dir,
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn berth(&self, args: &[&str]) -> Output {
        self.daemon.berth(args)
    }

    fn ok(&self, args: &[&str]) -> String {
        common::stdout_of(self.berth(args), &format!("berth {args:?}"))
    }

    fn err(&self, args: &[&str]) -> String {
        let out = self.berth(args);
        assert!(
            !out.status.success(),
            "berth {args:?} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    /// A gzip tarball of a busybox root file system with `extra` as its /etc/version.
    fn rootfs_tar(&self, name: &str, extra: &str) -> PathBuf {
        common::rootfs_tar(self.dir.path(), name, extra)
    }

    fn inspect(&self, name: &str) -> Value {
        let v: Value = serde_json::from_str(&self.ok(&["image", "inspect", name])).unwrap();
        v[0].clone()
    }

    /// Every file under the data root with its size, to check a failed command changed nothing.
    fn snapshot_of_store(&self) -> Vec<(PathBuf, u64)> {
        fn walk(p: &Path, out: &mut Vec<(PathBuf, u64)>) {
            for e in fs::read_dir(p).into_iter().flatten().flatten() {
                let m = e.metadata().unwrap();
                if m.is_dir() {
                    walk(&e.path(), out);
                } else if !e.file_name().to_string_lossy().ends_with(".lock") {
                    out.push((e.path(), m.len()));
                }
            }
        }
        let mut v = Vec::new();
        walk(&self.root(), &mut v);
        v.sort();
        v
    }
}

#[test]
fn import_list_inspect_history_and_versions() {
    let e = Env::new();
    let v1 = e.rootfs_tar("v1", "one");
    let id1 = e.ok(&[
        "image",
        "import",
        "-c",
        "CMD [\"cat\", \"/etc/version\"]",
        "-c",
        "ENV STAGE=one",
        "-m",
        "first",
        v1.to_str().unwrap(),
        "app:1",
    ]);
    let id1 = id1.trim().to_string();
    assert!(id1.starts_with("sha256:"), "{id1}");
    let list = e.ok(&["images"]);
    assert!(
        list.starts_with("REPOSITORY") && list.contains("app") && list.contains(&id1[7..19]),
        "{list}"
    );
    let i = e.inspect("app:1");
    assert_eq!(i["Id"], id1.as_str());
    assert_eq!(i["RepoTags"], serde_json::json!(["app:1"]));
    assert_eq!(
        i["Config"]["Cmd"],
        serde_json::json!(["cat", "/etc/version"])
    );
    assert_eq!(i["Config"]["Env"], serde_json::json!(["STAGE=one"]));
    assert_eq!(i["RootFS"]["Layers"].as_array().unwrap().len(), 1);
    let layers1 = i["RootFS"].clone();
    assert_eq!(i["Os"], "linux");
    let history = e.ok(&["image", "history", "app:1"]);
    assert!(
        history.contains("berth image import") && history.contains("first"),
        "{history}"
    );

    // A new version under the same tag: the old one stays addressable by digest, and rolling
    // back is re-tagging it.
    let manifest1 = i["Metadata"]["Manifest"].as_str().unwrap().to_string();
    let v2 = e.rootfs_tar("v2", "two");
    let id2 = e
        .ok(&["image", "import", v2.to_str().unwrap(), "app:1"])
        .trim()
        .to_string();
    assert_ne!(id1, id2);
    assert_eq!(e.inspect("app:1")["Id"], id2.as_str());
    assert_eq!(e.inspect(&format!("app@{manifest1}"))["Id"], id1.as_str());
    assert_eq!(
        e.inspect(&id1[7..19])["Id"],
        id1.as_str(),
        "a short id finds it too"
    );
    let versions = e.ok(&["image", "versions", "app:1"]);
    let rows: Vec<&str> = versions.lines().skip(1).collect();
    assert!(
        rows.len() == 2
            && rows[0].starts_with('*')
            && rows[0].contains(&id2[7..19])
            && rows[1].contains(&manifest1),
        "{versions}"
    );
    e.ok(&["tag", &format!("app@{manifest1}"), "app:1"]);
    assert_eq!(e.inspect("app:1")["Id"], id1.as_str());
    assert_eq!(
        e.ok(&["image", "versions", "app:1"]).lines().count(),
        4,
        "the rollback is a version too"
    );
    e.ok(&["tag", "app:1", "other/app:stable"]);
    assert_eq!(e.inspect("other/app:stable")["Id"], id1.as_str());
    let err = e.err(&["rmi", &format!("app@{manifest1}")]);
    assert!(
        err.contains("app:1") && err.contains("force"),
        "rmi by digest of a tagged image: {err}"
    );
    let q = e.ok(&["images", "-q", "--no-trunc"]);
    assert!(q.contains(&id1) && q.contains(&id2), "{q}");
    let formatted = e.ok(&["images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"]);
    let mut lines: Vec<&str> = formatted.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            format!("<none>:<none> {}", &id2[7..19]),
            format!("app:1 {}", &id1[7..19]),
            format!("other/app:stable {}", &id1[7..19])
        ],
        "{formatted}"
    );
    let json_line: Value = serde_json::from_str(
        e.ok(&["images", "--format", "json", "--filter", "reference=app"])
            .trim(),
    )
    .unwrap();
    assert_eq!(
        (json_line["Repository"].as_str(), json_line["Tag"].as_str()),
        (Some("app"), Some("1"))
    );
    assert!(e.ok(&["images", "--digests"]).contains(&manifest1));
    let filtered = e.ok(&["images", "--filter", "reference=other/*"]);
    assert!(
        filtered.contains("other/app") && !filtered.lines().any(|l| l.starts_with("app ")),
        "{filtered}"
    );
    let dangling = e.ok(&["images", "--filter", "dangling=true", "-q", "--no-trunc"]);
    assert_eq!(dangling.trim(), id2, "the replaced version is dangling");

    // `-` reads the tarball from stdin, as docker import does.
    let piped = e
        .daemon
        .cmd()
        .args(["image", "import", "-", "piped:1"])
        .stdin(fs::File::open(&v1).unwrap())
        .output()
        .unwrap();
    common::stdout_of(piped, "berth image import -");
    assert_eq!(
        e.inspect("piped:1")["RootFS"],
        layers1,
        "the same tarball through stdin is the same layer"
    );
    // Bad names are named.
    assert!(e.err(&["tag", "app:1", "Bad/Name"]).contains("lowercase"));
    assert!(e
        .err(&["image", "inspect", "nope:1"])
        .contains("no such image"));
    assert!(e
        .err(&["image", "import", "-c", "RUN make", v1.to_str().unwrap()])
        .contains("RUN"));
}

#[test]
fn containers_run_on_image_snapshots_and_pin_their_image() {
    let e = Env::new();
    let tar = e.rootfs_tar("run", "from the image\n");
    e.ok(&["image", "import", tar.to_str().unwrap(), "box:1"]);
    let merged = PathBuf::from(e.ok(&["image", "mount", "c1", "box:1"]).trim());
    // Run a container on the overlay with the OCI runtime.
    let bundle = e.dir.path().join("bundle-c1");
    busybox_bundle(
        &bundle,
        &["sh", "-c", "cat /etc/version; echo written > /new-file"],
    );
    let config = bundle.join("config.json");
    let mut c: Value = serde_json::from_str(&fs::read_to_string(&config).unwrap()).unwrap();
    c["root"] = serde_json::json!({"path": merged, "readonly": false});
    fs::write(&config, c.to_string()).unwrap();
    let out = Command::new(BERTH)
        .args(["runtime", "--root"])
        .arg(e.dir.path().join("rt"))
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg("c1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "from the image\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The write went to the container's layer, not the image.
    assert!(merged.join("new-file").exists());
    let snapshots: Vec<_> = fs::read_dir(e.root().join("snapshots"))
        .unwrap()
        .flatten()
        .filter(|d| d.file_name() != "containers")
        .collect();
    assert!(snapshots
        .iter()
        .all(|s| !s.path().join("diff/new-file").exists()));

    // In use: rmi refuses, prune keeps it.
    assert!(e.err(&["rmi", "box:1"]).contains("in use by container c1"));
    e.ok(&["image", "prune", "-a"]);
    assert!(e.ok(&["images"]).contains("box"));
    e.ok(&["image", "umount", "c1"]);
    assert!(!fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(merged.to_str().unwrap()));
    let out = e.ok(&["rmi", "box:1"]);
    assert!(
        out.contains("Untagged: box:1") && out.contains("Deleted: sha256:"),
        "{out}"
    );
    // Garbage collection removed every blob and snapshot of it.
    let blobs = fs::read_dir(e.root().join("content/blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, 0);
    let snaps = fs::read_dir(e.root().join("snapshots"))
        .unwrap()
        .flatten()
        .filter(|d| d.file_name() != "containers")
        .count();
    assert_eq!(snaps, 0);
}

/// A gzip tarball with one entry whose name is written raw (the tar crate refuses `..`).
fn hostile_tar(path: &Path, name: &str) {
    let mut header = tar::Header::new_old();
    let bytes = name.as_bytes();
    header.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
    header.set_size(5);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let gz =
        flate2::write::GzEncoder::new(fs::File::create(path).unwrap(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    b.append(&header, &b"pwned"[..]).unwrap();
    b.into_inner().unwrap().finish().unwrap();
}

#[test]
fn hostile_layers_fail_by_name_and_leave_the_store_as_it_was() {
    let e = Env::new();
    let good = e.rootfs_tar("good", "ok");
    e.ok(&["image", "import", good.to_str().unwrap(), "good:1"]);
    let before = e.snapshot_of_store();
    let sentinel = e.dir.path().join("sentinel");
    fs::create_dir(&sentinel).unwrap();
    for (i, name) in ["../../../../../../escape", "a/../../escape"]
        .iter()
        .enumerate()
    {
        let bad = e.dir.path().join(format!("bad{i}.tar.gz"));
        hostile_tar(&bad, name);
        let err = e.err(&["image", "import", bad.to_str().unwrap(), "bad:1"]);
        assert!(
            err.contains(name),
            "the error does not name the entry {name:?}: {err}"
        );
        assert_eq!(
            e.snapshot_of_store(),
            before,
            "the store changed after a failed import of {name:?}"
        );
    }
    assert!(!Path::new("/escape").exists() && !e.dir.path().join("escape").exists());
    assert_eq!(fs::read_dir(&sentinel).unwrap().count(), 0);
    // A truncated gzip is refused too, and named.
    let bytes = fs::read(&good).unwrap();
    let cut = e.dir.path().join("cut.tar.gz");
    fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = e.err(&["image", "import", cut.to_str().unwrap(), "cut:1"]);
    assert!(!err.is_empty());
    assert_eq!(
        e.snapshot_of_store(),
        before,
        "the store changed after a failed import of a truncated gzip"
    );
}

/// Appends a file to a tar being built in a test.
fn add(b: &mut tar::Builder<fs::File>, path: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, path, data).unwrap();
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn save_and_load_round_trip_in_both_formats() {
    let e = Env::new();
    let tar = e.rootfs_tar("rt", "round trip\n");
    let id = e
        .ok(&[
            "image",
            "import",
            "-c",
            "CMD [\"cat\", \"/etc/version\"]",
            tar.to_str().unwrap(),
            "rt:1",
        ])
        .trim()
        .to_string();
    let manifest = e.inspect("rt:1")["Metadata"]["Manifest"]
        .as_str()
        .unwrap()
        .to_string();
    let size = e.inspect("rt:1")["Size"].clone();
    for format in ["docker", "oci"] {
        let archive = e.dir.path().join(format!("rt-{format}.tar"));
        e.ok(&[
            "save",
            "--format",
            format,
            "-o",
            archive.to_str().unwrap(),
            "rt:1",
        ]);
        let other = Env::new();
        let out = other.ok(&["load", "-i", archive.to_str().unwrap()]);
        assert_eq!(out.trim(), "Loaded image: rt:1", "{format}");
        let i = other.inspect("rt:1");
        assert_eq!(i["Id"], id.as_str(), "{format}: image id changed");
        assert_eq!(
            i["Metadata"]["Manifest"],
            manifest.as_str(),
            "{format}: manifest digest changed"
        );
        assert_eq!(
            i["Size"], size,
            "{format}: the loaded image reports another size"
        );
        assert_eq!(
            i["Config"]["Cmd"],
            serde_json::json!(["cat", "/etc/version"])
        );
        // What was loaded is saved back byte for byte.
        let again = other.dir.path().join("again.tar");
        other.ok(&[
            "save",
            "--format",
            format,
            "-o",
            again.to_str().unwrap(),
            "rt:1",
        ]);
        assert!(
            fs::read(&again).unwrap() == fs::read(&archive).unwrap(),
            "{format}: save → load → save is not identical"
        );
    }
    let docker = fs::read(e.dir.path().join("rt-docker.tar")).unwrap();
    let names: Vec<String> = tar::Archive::new(&docker[..])
        .entries()
        .unwrap()
        .map(|en| en.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.contains(&"manifest.json".to_string())
            && names.contains(&"index.json".to_string())
            && names.contains(&"oci-layout".to_string()),
        "{names:?}"
    );
}

#[test]
fn legacy_docker_archives_load_and_run_their_config() {
    // The layout older `docker save` (Debian's dockerd 20.10) writes: <layer id>/layer.tar,
    // <config digest>.json, manifest.json, repositories.
    let e = Env::new();
    let bundle = e.dir.path().join("legacy-rootfs");
    busybox_bundle(&bundle, &["true"]);
    fs::write(bundle.join("rootfs/etc/version"), "legacy layer\n").unwrap();
    let layer_path = e.dir.path().join("layer.tar");
    assert!(Command::new("tar")
        .arg("-C")
        .arg(bundle.join("rootfs"))
        .arg("-cf")
        .arg(&layer_path)
        .arg(".")
        .status()
        .unwrap()
        .success());
    let layer = fs::read(&layer_path).unwrap();
    let diff_id = sha256_hex(&layer);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "created": "2024-01-02T03:04:05Z",
        "config": {"Cmd": ["cat", "/etc/version"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
        "history": [{"created": "2024-01-02T03:04:05Z", "created_by": "docker import"}],
    })
    .to_string();
    let config_hex = sha256_hex(config.as_bytes());
    let archive = e.dir.path().join("legacy.tar");
    let mut b = tar::Builder::new(fs::File::create(&archive).unwrap());
    let layer_id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    add(&mut b, &format!("{layer_id}/VERSION"), b"1.0");
    add(&mut b, &format!("{layer_id}/json"), br#"{"id":"x"}"#);
    add(&mut b, &format!("{layer_id}/layer.tar"), &layer);
    add(&mut b, &format!("{config_hex}.json"), config.as_bytes());
    add(&mut b, "manifest.json", serde_json::json!([{"Config": format!("{config_hex}.json"), "RepoTags": ["legacy:1"], "Layers": [format!("{layer_id}/layer.tar")]}]).to_string().as_bytes());
    add(
        &mut b,
        "repositories",
        serde_json::json!({"legacy": {"1": layer_id}})
            .to_string()
            .as_bytes(),
    );
    b.finish().unwrap();
    assert_eq!(
        e.ok(&["load", "-i", archive.to_str().unwrap()]).trim(),
        "Loaded image: legacy:1"
    );
    let i = e.inspect("legacy:1");
    assert_eq!(i["Id"], format!("sha256:{config_hex}"));
    // Run what the image's config says.
    let merged = PathBuf::from(e.ok(&["image", "mount", "legacy-c", "legacy:1"]).trim());
    let run_bundle = e.dir.path().join("run");
    let cmd: Vec<String> = serde_json::from_value(i["Config"]["Cmd"].clone()).unwrap();
    busybox_bundle(
        &run_bundle,
        &cmd.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let cfg = run_bundle.join("config.json");
    let mut c: Value = serde_json::from_str(&fs::read_to_string(&cfg).unwrap()).unwrap();
    c["root"] = serde_json::json!({"path": merged});
    fs::write(&cfg, c.to_string()).unwrap();
    let out = Command::new(BERTH)
        .args(["runtime", "--root"])
        .arg(e.dir.path().join("rt"))
        .args(["run", "--bundle"])
        .arg(&run_bundle)
        .arg("legacy-c")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "legacy layer\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    e.ok(&["image", "umount", "legacy-c"]);
}

#[test]
fn corrupt_archives_fail_by_name_and_leave_the_store_as_it_was() {
    let e = Env::new();
    let good = e.rootfs_tar("keep", "kept\n");
    e.ok(&["image", "import", good.to_str().unwrap(), "keep:1"]);
    let before = e.snapshot_of_store();
    // A blob whose content does not match its name.
    let archive = e.dir.path().join("lying.tar");
    let mut b = tar::Builder::new(fs::File::create(&archive).unwrap());
    add(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    let liar = format!("blobs/sha256/{}", "a".repeat(64));
    add(&mut b, &liar, b"not what the name says");
    b.finish().unwrap();
    let err = e.err(&["load", "-i", archive.to_str().unwrap()]);
    assert!(err.contains(&liar) && err.contains("digest"), "{err}");
    assert_eq!(e.snapshot_of_store(), before);
    // A manifest that references a blob the archive lacks.
    let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{}", "b".repeat(64)), "size": 2}, "layers": []})
    .to_string();
    let mhex = sha256_hex(manifest.as_bytes());
    let archive = e.dir.path().join("missing.tar");
    let mut b = tar::Builder::new(fs::File::create(&archive).unwrap());
    add(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    add(&mut b, &format!("blobs/sha256/{mhex}"), manifest.as_bytes());
    add(&mut b, "index.json", serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{mhex}"), "size": manifest.len()}]}).to_string().as_bytes());
    b.finish().unwrap();
    let err = e.err(&["load", "-i", archive.to_str().unwrap()]);
    assert!(
        err.contains(&"b".repeat(64)),
        "the error does not name the missing blob: {err}"
    );
    assert_eq!(e.snapshot_of_store(), before);
    // A legacy archive whose layer tries to escape.
    let evil_layer = e.dir.path().join("evil-layer.tar.gz");
    hostile_tar(&evil_layer, "../../../../escape-through-load");
    let layer = fs::read(&evil_layer).unwrap();
    let config = serde_json::json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", "c".repeat(64))]}})
    .to_string();
    let chex = sha256_hex(config.as_bytes());
    let archive = e.dir.path().join("evil.tar");
    let mut b = tar::Builder::new(fs::File::create(&archive).unwrap());
    add(&mut b, "l1/layer.tar", &layer);
    add(&mut b, &format!("{chex}.json"), config.as_bytes());
    add(&mut b, "manifest.json", serde_json::json!([{"Config": format!("{chex}.json"), "RepoTags": ["evil:1"], "Layers": ["l1/layer.tar"]}]).to_string().as_bytes());
    b.finish().unwrap();
    let err = e.err(&["load", "-i", archive.to_str().unwrap()]);
    assert!(
        err.contains("escape-through-load"),
        "the error does not name the entry: {err}"
    );
    assert_eq!(e.snapshot_of_store(), before);
    assert!(
        !Path::new("/escape-through-load").exists()
            && !e.dir.path().join("escape-through-load").exists()
    );
    // Not an archive at all.
    let junk = e.dir.path().join("junk.tar");
    fs::write(&junk, b"this is not a tar file").unwrap();
    assert!(!e.err(&["load", "-i", junk.to_str().unwrap()]).is_empty());
    assert_eq!(e.snapshot_of_store(), before);
}

#[test]
fn commit_whiteouts_and_opaque_directories_across_three_layers() {
    let e = Env::new();
    let base = e.dir.path().join("base");
    for (p, c) in [
        ("data/a", "a"),
        ("data/b", "b"),
        ("keep/x", "x"),
        ("opq/1", "1"),
        ("opq/2", "2"),
    ] {
        fs::create_dir_all(base.join(p).parent().unwrap()).unwrap();
        fs::write(base.join(p), c).unwrap();
    }
    let tar = e.dir.path().join("base.tar");
    assert!(Command::new("tar")
        .arg("-C")
        .arg(&base)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap()
        .success());
    e.ok(&["image", "import", tar.to_str().unwrap(), "layers:1"]);

    // Layer 2: delete a file, add one, replace a directory wholesale (overlay makes it opaque).
    let m = PathBuf::from(e.ok(&["image", "mount", "c1", "layers:1"]).trim());
    fs::remove_file(m.join("data/a")).unwrap();
    fs::write(m.join("data/c"), "c").unwrap();
    fs::remove_dir_all(m.join("opq")).unwrap();
    fs::create_dir(m.join("opq")).unwrap();
    fs::write(m.join("opq/3"), "3").unwrap();
    e.ok(&[
        "image",
        "commit",
        "-m",
        "second",
        "-c",
        "ENV LAYER=2",
        "c1",
        "layers:2",
    ]);
    e.ok(&["image", "umount", "c1"]);

    // Layer 3: delete another file, bring a deleted one back.
    let m = PathBuf::from(e.ok(&["image", "mount", "c2", "layers:2"]).trim());
    assert!(!m.join("data/a").exists() && m.join("data/c").exists());
    fs::remove_file(m.join("data/b")).unwrap();
    fs::write(m.join("data/a"), "back").unwrap();
    e.ok(&["image", "commit", "c2", "layers:3"]);
    e.ok(&["image", "umount", "c2"]);

    let m = PathBuf::from(e.ok(&["image", "mount", "c3", "layers:3"]).trim());
    let list = |d: &str| {
        let mut v: Vec<String> = fs::read_dir(m.join(d))
            .unwrap()
            .map(|x| x.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(list("data"), ["a", "c"]);
    assert_eq!(fs::read_to_string(m.join("data/a")).unwrap(), "back");
    assert_eq!(
        list("opq"),
        ["3"],
        "the opaque directory hides the base layer's files"
    );
    assert_eq!(list("keep"), ["x"]);
    e.ok(&["image", "umount", "c3"]);
    let i = e.inspect("layers:3");
    assert_eq!(i["RootFS"]["Layers"].as_array().unwrap().len(), 3);
    assert_eq!(i["Config"]["Env"], serde_json::json!(["LAYER=2"]));
    let history = e.ok(&["image", "history", "layers:3"]);
    assert_eq!(history.matches("berth commit").count(), 2, "{history}");
    // Removing the images below it (and collecting garbage) keeps every layer layers:3 uses.
    let out = e.ok(&["rmi", "layers:1", "layers:2"]);
    assert_eq!(out.matches("Deleted: sha256:").count(), 2, "{out}");
    e.ok(&["image", "prune"]);
    let m = PathBuf::from(e.ok(&["image", "mount", "c5", "layers:3"]).trim());
    assert_eq!(fs::read_to_string(m.join("data/a")).unwrap(), "back");
    assert_eq!(fs::read_to_string(m.join("keep/x")).unwrap(), "x");
    e.ok(&["image", "umount", "c5"]);
    // The chain survives a round trip through an archive.
    let archive = e.dir.path().join("layers.tar");
    e.ok(&["save", "-o", archive.to_str().unwrap(), "layers:3"]);
    let other = Env::new();
    other.ok(&["load", "-i", archive.to_str().unwrap()]);
    let m = PathBuf::from(other.ok(&["image", "mount", "c4", "layers:3"]).trim());
    assert_eq!(fs::read_to_string(m.join("data/a")).unwrap(), "back");
    assert!(!m.join("data/b").exists() && !m.join("opq/1").exists());
    other.ok(&["image", "umount", "c4"]);
}

#[test]
fn forced_rmi_prune_and_permissions_protect_what_is_in_use() {
    use std::os::unix::fs::PermissionsExt;
    let e = Env::new();
    let v1 = e.rootfs_tar("p1", "one\n");
    let v2 = e.rootfs_tar("p2", "two\n");
    let id1 = e
        .ok(&["image", "import", v1.to_str().unwrap(), "keep:1"])
        .trim()
        .to_string();
    e.ok(&["image", "import", v2.to_str().unwrap(), "keep:1"]);
    // prune without --all keeps the tag's earlier version (it is a version, not garbage).
    e.ok(&["image", "prune"]);
    assert_eq!(e.inspect(&id1)["Id"], id1.as_str());
    // A forced rmi of an image a container uses leaves the image (dangling) and its layers.
    let merged = PathBuf::from(e.ok(&["image", "mount", "c1", "keep:1"]).trim());
    let out = e.ok(&["rmi", "--force", "keep:1"]);
    assert!(
        out.contains("Untagged: keep:1") && !out.contains("Deleted"),
        "{out}"
    );
    assert_eq!(
        fs::read_to_string(merged.join("etc/version")).unwrap(),
        "two\n"
    );
    assert!(
        e.err(&["image", "mount", "c1", &id1])
            .contains("already exists"),
        "a second root file system for c1"
    );
    e.ok(&["image", "umount", "c1"]);
    e.ok(&["image", "prune", "--all"]);
    assert_eq!(e.ok(&["images", "-q"]), "");
    // Layers may hold setuid files and devices: no host user may reach them.
    assert_eq!(
        fs::metadata(e.root()).unwrap().permissions().mode() & 0o777,
        0o711
    );
    assert_eq!(
        fs::metadata(e.root().join("snapshots"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    assert_eq!(
        fs::metadata(e.root().join("content"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    // docker load takes compressed archives: so does berth load.
    e.ok(&["image", "import", v1.to_str().unwrap(), "gz:1"]);
    let archive = e.dir.path().join("gz.tar");
    e.ok(&["save", "-o", archive.to_str().unwrap(), "gz:1"]);
    assert!(Command::new("gzip")
        .arg(&archive)
        .status()
        .unwrap()
        .success());
    let other = Env::new();
    assert_eq!(
        other
            .ok(&["load", "-i", &format!("{}.gz", archive.display())])
            .trim(),
        "Loaded image: gz:1"
    );
}

#[test]
fn skopeo_reads_berths_oci_archives_and_berth_loads_skopeos() {
    // A client nobody here wrote: skopeo (Debian's; scripts/test installs it).
    let e = Env::new();
    assert!(
        Command::new("skopeo")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "skopeo is missing: install Debian's skopeo package (scripts/test does)"
    );
    let tar = e.rootfs_tar("sk", "for skopeo\n");
    let id = e
        .ok(&["image", "import", tar.to_str().unwrap(), "sk:1"])
        .trim()
        .to_string();
    let manifest = e.inspect("sk:1")["Metadata"]["Manifest"]
        .as_str()
        .unwrap()
        .to_string();
    let ours = e.dir.path().join("ours.tar");
    e.ok(&[
        "save",
        "--format",
        "oci",
        "-o",
        ours.to_str().unwrap(),
        "sk:1",
    ]);
    let inspect = Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci-archive:{}", ours.display()))
        .output()
        .unwrap();
    let inspect: Value =
        serde_json::from_str(&common::stdout_of(inspect, "skopeo inspect")).unwrap();
    assert_eq!(
        inspect["Digest"],
        manifest.as_str(),
        "skopeo sees another manifest"
    );
    assert_eq!(inspect["Layers"].as_array().unwrap().len(), 1);
    let theirs = e.dir.path().join("theirs.tar");
    let copy = Command::new("skopeo")
        .args(["copy", "-q"])
        .arg(format!("oci-archive:{}", ours.display()))
        .arg(format!("oci-archive:{}:sk:2", theirs.display()))
        .output()
        .unwrap();
    common::stdout_of(copy, "skopeo copy");
    let other = Env::new();
    assert_eq!(
        other.ok(&["load", "-i", theirs.to_str().unwrap()]).trim(),
        "Loaded image: sk:2"
    );
    assert_eq!(
        other.inspect("sk:2")["Id"],
        id.as_str(),
        "the image id changed through skopeo"
    );
}
