//! `berth build --check` over Dockerfiles written to cover the language: every problem by
//! file:line:column, none for a file that uses every instruction correctly.

use std::path::Path;
use std::process::Command;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

fn check(name: &str) -> (i32, String) {
    let dir = common::manifest_dir().join("tests/dockerfiles");
    let out = Command::new(BERTH)
        .args(["build", "--check", "-f"])
        .arg(dir.join(name))
        .arg(&dir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn a_dockerfile_using_every_instruction_checks_clean() {
    let (code, out) = check("good.Dockerfile");
    assert_eq!(
        (code, out.trim()),
        (0, "Check complete, no warnings found."),
        "{out}"
    );
}

#[test]
fn every_problem_is_reported_with_its_place() {
    let (code, out) = check("bad.Dockerfile");
    assert_eq!(code, 1);
    let lines: Vec<&str> = out.lines().collect();
    let expect = [
        ":1:1: error: RUN: no build stage in current context",
        ":3:6: error: COPY: unknown flag: --form",
        ":4:1: error: unknown instruction: FORM",
        ":5:1: warning: JSON arguments recommended for CMD",
        ":6:1: warning: multiple CMD instructions",
        ":7:6: error: duplicate stage name",
        ":8:6: error: COPY --from=5: stage 5 is not an earlier stage",
        ":9:7: error: SHELL requires the arguments to be in JSON form",
    ];
    for e in expect {
        assert!(
            lines.iter().any(|l| l.contains(e)),
            "missing {e:?} in:\n{out}"
        );
    }
    assert!(out.contains("bad.Dockerfile:"));
    assert!(
        lines
            .last()
            .unwrap()
            .starts_with("Check complete, 6 error(s) and 2 warning(s)"),
        "{out}"
    );
}

// ---- Builds, through a daemon of the test's own. ----

mod common;

use common::Daemon;
use serde_json::{json, Value};
use std::fs;

struct Env {
    d: Daemon,
    dir: tempfile::TempDir,
}

/// A daemon with a busybox image (`busybox:latest`) and an empty context directory.
fn env() -> Env {
    common::require_root();
    let dir = tempfile::Builder::new()
        .prefix("berth-build-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let d = common::daemon_with_busybox(dir.path());
    fs::create_dir(dir.path().join("ctx")).unwrap();
    Env { d, dir }
}

impl Env {
    fn ctx(&self) -> std::path::PathBuf {
        self.dir.path().join("ctx")
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.ctx().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    /// `berth build` of the context with `args`: (exit code, stdout + stderr).
    fn build(&self, args: &[&str]) -> (i32, String) {
        let ctx = self.ctx();
        let out = self
            .d
            .cmd()
            .arg("build")
            .args(args)
            .arg(&ctx)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    fn build_ok(&self, args: &[&str]) -> String {
        let (code, out) = self.build(args);
        assert_eq!(code, 0, "build failed:\n{out}\n{}", self.d.log());
        out
    }

    fn image_id(&self, name: &str) -> String {
        self.d
            .ok(&["image", "inspect", "-f", "{{.Id}}", name])
            .trim()
            .to_string()
    }

    fn config(&self, name: &str) -> Value {
        let v: Value = serde_json::from_str(&self.d.ok(&["image", "inspect", name])).unwrap();
        v[0]["Config"].clone()
    }

    /// No context, extracted files or secrets of a finished build are left in the data root.
    fn assert_no_leftovers(&self) {
        let dir = self.dir.path().join("data/builder");
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(
                name == "cache.json" || name == "cache-mounts",
                "{name} is left in {}",
                dir.display()
            );
        }
    }

    /// Nothing of a failed build is left: no container, no tag.
    fn assert_clean_failure(&self, tag: &str) {
        self.assert_no_leftovers();
        assert!(
            self.d.err(&["image", "inspect", tag]).0 != 0,
            "{tag} was tagged"
        );
        assert_eq!(
            self.d.ok(&["ps", "-aq"]).trim(),
            "",
            "a build container is left"
        );
    }
}

const MULTI_STAGE: &str = r#"# syntax=docker/dockerfile:1
ARG BASE=busybox
FROM $BASE AS builder
ARG GREETING=hello
ENV APP=/app
WORKDIR $APP
COPY src/ ./src/
RUN echo "$GREETING from $(cat src/name.txt)" > out.txt && echo run-$((1+1))-output
RUN <<EOT
mkdir -p /app/bin
cp /bin/busybox /app/bin/busybox
EOT

FROM scratch
COPY --from=builder /app/bin/busybox /bin/busybox
COPY --from=builder /app/out.txt /out.txt
CMD ["/bin/busybox", "cat", "/out.txt"]
"#;

#[test]
fn a_multi_stage_build_runs_and_rebuilds_from_the_cache() {
    let e = env();
    e.write("Dockerfile", MULTI_STAGE);
    e.write("src/name.txt", "berth\n");
    e.write("junk/big.bin", "ignored");
    e.write(".dockerignore", "junk\n");
    let iid = e.dir.path().join("iid");
    let out = e.build_ok(&[
        "-t",
        "app:1",
        "--build-arg",
        "GREETING=hi",
        "--iidfile",
        iid.to_str().unwrap(),
    ]);
    assert!(
        out.contains("run-2-output"),
        "RUN output not streamed:\n{out}"
    );
    assert!(out.contains("Successfully tagged app:1"), "{out}");
    let id = e.image_id("app:1");
    assert_eq!(fs::read_to_string(&iid).unwrap(), id);
    let ran = e.d.ok(&["run", "--rm", "app:1"]);
    assert_eq!(ran, "hi from berth\n");
    // The final stage has only what it copied: two layers, not the builder's.
    let layers =
        e.d.ok(&["image", "inspect", "-f", "{{len .RootFS.Layers}}", "app:1"]);
    assert_eq!(layers.trim(), "2");

    // An unchanged rebuild: every step from the cache, the same image.
    let out = e.build_ok(&["-t", "app:2", "--build-arg", "GREETING=hi"]);
    let steps = out.lines().filter(|l| l.starts_with("Step ")).count();
    let hits = out.matches(" ---> Using cache").count();
    assert_eq!(hits, steps - 2, "all but the two FROMs cached:\n{out}");
    assert!(!out.contains("run-2-output"), "{out}");
    assert_eq!(e.image_id("app:2"), id);

    // Another build arg value changes the ARG step and everything after it.
    let out = e.build_ok(&["-t", "app:3", "--build-arg", "GREETING=hey"]);
    assert!(out.contains("run-2-output"), "{out}");
    assert_eq!(e.d.ok(&["run", "--rm", "app:3"]), "hey from berth\n");

    // --target builds the stage asked for, and tags it.
    e.build_ok(&["-t", "app:builder", "--target", "builder"]);
    let out =
        e.d.ok(&["run", "--rm", "app:builder", "cat", "/app/out.txt"]);
    assert_eq!(out, "hello from berth\n");
    e.assert_no_leftovers();
    // .dockerignore kept junk/ out of the context.
    let (code, _) = e.d.err(&["run", "--rm", "app:builder", "ls", "/app/junk"]);
    assert_ne!(code, 0);
}

#[test]
fn the_cache_follows_content_not_modification_times() {
    let e = env();
    e.write(
        "Dockerfile",
        "FROM busybox\nCOPY a.txt /a.txt\nRUN echo step3\nCOPY b.txt /b.txt\nRUN cat /a.txt /b.txt > /ab.txt\n",
    );
    e.write("a.txt", "alpha\n");
    e.write("b.txt", "beta\n");
    let hits = |out: &str| out.matches(" ---> Using cache").count();
    let out = e.build_ok(&["-t", "c:1"]);
    assert_eq!(hits(&out), 0, "{out}");
    let first = e.image_id("c:1");

    // A new modification time alone: every step from the cache.
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    fs::File::options()
        .write(true)
        .open(e.ctx().join("a.txt"))
        .unwrap()
        .set_modified(later)
        .unwrap();
    let out = e.build_ok(&["-t", "c:2"]);
    assert_eq!(hits(&out), 4, "{out}");
    assert_eq!(e.image_id("c:2"), first);

    // One byte of b.txt changed: the steps before its COPY hit, it and the ones after miss.
    e.write("b.txt", "betA\n");
    let out = e.build_ok(&["-t", "c:3"]);
    assert_eq!(hits(&out), 2, "{out}");
    let steps: Vec<&str> = out.split("Step ").skip(1).collect();
    assert!(steps[1].contains("Using cache") && steps[2].contains("Using cache"));
    assert!(!steps[3].contains("Using cache") && !steps[4].contains("Using cache"));
    assert_ne!(e.image_id("c:3"), first);
    assert_eq!(
        e.d.ok(&["run", "--rm", "c:3", "cat", "/ab.txt"]),
        "alpha\nbetA\n"
    );

    // A mode change is metadata that counts.
    let p = e.ctx().join("a.txt");
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    let out = e.build_ok(&["-t", "c:4"]);
    assert_eq!(hits(&out), 0, "{out}");

    // --no-cache runs everything again.
    let out = e.build_ok(&["-t", "c:5", "--no-cache"]);
    assert_eq!(hits(&out), 0, "{out}");
    assert!(out.contains("step3"));
}

#[test]
fn the_config_is_what_docker_build_makes() {
    let e = env();
    e.write(
        "Dockerfile",
        r#"FROM busybox
MAINTAINER someone@example.com
ENV A=1 B="two words"
ENV C $A-x
LABEL org.example.name="web app" version=1
EXPOSE 80 53/udp
WORKDIR /srv
WORKDIR www
USER 1000:1000
STOPSIGNAL SIGQUIT
VOLUME ["/data", "/logs"]
HEALTHCHECK --interval=5s --timeout=2s --retries=4 CMD wget -q -O- http://localhost/ || exit 1
ONBUILD RUN echo child
SHELL ["/bin/sh", "-ec"]
ENTRYPOINT ["/bin/sh", "-c"]
CMD echo hello
"#,
    );
    e.build_ok(&["-t", "cfg:1", "--label", "built-by=test"]);
    let c = e.config("cfg:1");
    let expect = json!({
        "Env": ["A=1", "B=two words", "C=1-x"],
        "Labels": {"org.example.name": "web app", "version": "1", "built-by": "test"},
        "ExposedPorts": {"80/tcp": {}, "53/udp": {}},
        "WorkingDir": "/srv/www",
        "User": "1000:1000",
        "StopSignal": "SIGQUIT",
        "Volumes": {"/data": {}, "/logs": {}},
        "Healthcheck": {
            "Test": ["CMD-SHELL", "wget -q -O- http://localhost/ || exit 1"],
            "Interval": 5_000_000_000u64,
            "Timeout": 2_000_000_000u64,
            "Retries": 4
        },
        "OnBuild": ["RUN echo child"],
        "Shell": ["/bin/sh", "-ec"],
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": ["/bin/sh", "-ec", "echo hello"],
    });
    for (field, want) in expect.as_object().unwrap() {
        let mut got = c[field].clone();
        if field == "Env" {
            // The base image's PATH aside, in order.
            got = json!(got
                .as_array()
                .unwrap()
                .iter()
                .filter(|v| !v.as_str().unwrap().starts_with("PATH="))
                .collect::<Vec<_>>());
        }
        assert_eq!(&got, want, "{field}");
    }
    let author = e.d.ok(&["image", "inspect", "-f", "{{.Author}}", "cfg:1"]);
    assert_eq!(author.trim(), "someone@example.com");
    // Config steps but the two WORKDIRs, which made their directories (busybox has no
    // /srv): two layers; one history entry per step.
    let layers = |i: &str| -> usize {
        let n =
            e.d.ok(&["image", "inspect", "-f", "{{len .RootFS.Layers}}", i]);
        n.trim().parse().unwrap()
    };
    assert_eq!(layers("cfg:1"), layers("busybox") + 2);
    let history = e.d.ok(&["history", "--no-trunc", "cfg:1"]);
    let base = e.d.ok(&["history", "--no-trunc", "busybox"]);
    // 15 instructions after FROM and the --label.
    assert_eq!(
        history.lines().count(),
        base.lines().count() + 16,
        "{history}"
    );
    for by in [
        "#(nop) ENV C $A-x",
        "#(nop) EXPOSE 80 53/udp",
        "LABEL (--label)",
    ] {
        assert!(history.contains(by), "{by:?} not in\n{history}");
    }
    // The image runs as the config says.
    let out =
        e.d.ok(&["run", "--rm", "--user", "0", "cfg:1", "echo $A $C; pwd"]);
    assert_eq!(out, "1 1-x\n/srv/www\n");
}

#[test]
fn a_failing_run_shows_its_output_and_code_and_tags_nothing() {
    let e = env();
    e.write(
        "Dockerfile",
        "FROM busybox\nRUN echo before-failure && exit 3\nRUN echo never\n",
    );
    let (code, out) = e.build(&["-t", "bad:1"]);
    assert_ne!(code, 0);
    assert!(out.contains("before-failure"), "{out}");
    assert!(out.contains("returned a non-zero code: 3"), "{out}");
    assert!(!out.contains("never"), "{out}");
    e.assert_clean_failure("bad:1");
}

#[test]
fn bad_sources_and_stages_fail_the_build_by_name() {
    let e = env();
    e.write("present.txt", "x");
    // A loopback port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let refused = format!("FROM busybox\nADD http://127.0.0.1:{closed}/x.tgz /x\n");
    let refused_url = format!("http://127.0.0.1:{closed}/x.tgz: cannot be fetched");
    let cases: &[(&str, &str)] = &[
        ("FROM busybox\nCOPY missing.txt /x\n", "missing.txt"),
        ("FROM busybox\nCOPY ../outside /x\n", "outside"),
        // Not a stage: an image, which is pulled (from a closed port on loopback here).
        (
            "FROM busybox\nCOPY --from=127.0.0.1:1/nowhere /a /b\n",
            "--from=127.0.0.1:1/nowhere: no such stage, and the image",
        ),
        (
            "FROM busybox\nFORM x\n",
            "Dockerfile:2:1: error: unknown instruction: FORM\n    2 | FORM x",
        ),
        // Not JSON: the shell form, as docker reads it.
        (
            "FROM busybox\nRUN [\"sh\", \n",
            "returned a non-zero code: 127",
        ),
        (
            "FROM 127.0.0.1:1/no-such-image\n",
            "FROM 127.0.0.1:1/no-such-image: ",
        ),
        ("FROM --platform=linux/s390x busybox\n", "linux/s390x"),
        (&refused, &refused_url),
        (
            "FROM busybox\nADD https://127.0.0.1:1/x.tgz /x\n",
            "https://127.0.0.1:1/x.tgz: cannot be fetched",
        ),
    ];
    for (i, (dockerfile, names)) in cases.iter().enumerate() {
        e.write("Dockerfile", dockerfile);
        let tag = format!("bad:{i}");
        let (code, out) = e.build(&["-t", &tag]);
        assert_ne!(code, 0, "{dockerfile} built:\n{out}");
        assert!(
            out.contains(names),
            "{dockerfile}: {names:?} not named in:\n{out}"
        );
        e.assert_clean_failure(&tag);
    }
}

#[test]
fn independent_stages_build_in_parallel_and_unneeded_ones_not_at_all() {
    let e = env();
    // Each of a and b waits for the other to have started (through a shared cache mount):
    // the build only finishes when they run at the same time. c would fail, but nothing
    // needs it.
    let wait_for = |me: &str, other: &str| {
        format!(
            "RUN --mount=type=cache,id=rendezvous,target=/sync touch /sync/{me} && \
             i=0; while [ ! -e /sync/{other} ]; do i=$((i+1)); [ $i -gt 600 ] && exit 7; sleep 0.1; done; \
             echo {me} > /{me}"
        )
    };
    e.write(
        "Dockerfile",
        &format!(
            "FROM busybox AS a\n{}\nFROM busybox AS b\n{}\nFROM busybox AS c\nRUN exit 1\n\
             FROM busybox\nCOPY --from=a /a /a\nCOPY --from=b /b /b\n",
            wait_for("a", "b"),
            wait_for("b", "a")
        ),
    );
    let out = e.build_ok(&["-t", "par:1"]);
    assert!(!out.contains("RUN exit 1"), "stage c was built:\n{out}");
    assert_eq!(
        e.d.ok(&["run", "--rm", "par:1", "cat", "/a", "/b"]),
        "a\nb\n"
    );
    // --target c needs c alone, and fails in it.
    let (code, out) = e.build(&["-t", "par:c", "--target", "c"]);
    assert_ne!(code, 0);
    assert!(!out.contains("wait"), "{out}");
    assert!(out.contains("returned a non-zero code: 1"), "{out}");
}

#[test]
fn run_mounts_cache_bind_tmpfs_and_secret() {
    let e = env();
    e.write("data.txt", "from the context\n");
    let secret = e.dir.path().join("token");
    fs::write(&secret, "s3cret-value").unwrap();
    e.write(
        "Dockerfile",
        "FROM busybox\n\
         RUN --mount=type=cache,target=/cache echo x >> /cache/log && wc -l < /cache/log > /count\n\
         RUN --mount=type=bind,source=data.txt,target=/mnt/in/data.txt cat /mnt/in/data.txt > /copied\n\
         RUN --mount=type=tmpfs,target=/scratch grep ' /scratch tmpfs ' /proc/mounts && touch /scratch/x\n\
         RUN --mount=type=secret,id=token,required=true grep -qx s3cret-valu. /run/secrets/token && touch /secret-seen\n",
    );
    let src = format!("id=token,src={}", secret.display());
    e.build_ok(&["-t", "m:1", "--secret", &src]);
    let run = |args: &[&str]| {
        let mut all = vec!["run", "--rm", "m:1"];
        all.extend(args);
        e.d.ok(&all)
    };
    assert_eq!(run(&["cat", "/count"]).trim(), "1");
    assert_eq!(run(&["cat", "/copied"]), "from the context\n");
    run(&["test", "-e", "/secret-seen"]);
    // Mount targets the image did not have are not in it.
    for gone in ["/mnt/in", "/scratch", "/run/secrets", "/cache"] {
        let (code, _) = e.d.err(&["run", "--rm", "m:1", "test", "-e", gone]);
        assert_ne!(code, 0, "{gone} was left in the image");
    }
    // The secret is in no layer.
    let saved = e.dir.path().join("m.tar");
    e.d.ok(&["save", "-o", saved.to_str().unwrap(), "m:1"]);
    let bytes = fs::read(&saved).unwrap();
    assert!(!bytes.windows(12).any(|w| w == b"s3cret-value"));
    e.assert_no_leftovers();
    // The cache mount outlives the build: a rebuild without the step cache sees it.
    e.build_ok(&["-t", "m:2", "--no-cache", "--secret", &src]);
    let count = e.d.ok(&["run", "--rm", "m:2", "cat", "/count"]);
    assert_eq!(count.trim(), "2");
    // A required secret not given, an unknown mount type: the build fails, naming it.
    let (code, out) = e.build(&["-t", "m:3", "--no-cache"]);
    assert_ne!(code, 0);
    assert!(out.contains("secret token is required"), "{out}");
    e.assert_clean_failure("m:3");
    e.write(
        "Dockerfile",
        "FROM busybox\nRUN --mount=type=nfs,target=/x true\n",
    );
    let (code, out) = e.build(&["-t", "m:4"]);
    assert_ne!(code, 0);
    assert!(out.contains("unknown mount type \"nfs\""), "{out}");
    e.assert_clean_failure("m:4");
}

#[test]
fn onbuild_heredocs_exclude_chown_archives_urls_and_stdin() {
    let e = env();
    // A parent image with triggers.
    e.write(
        "Dockerfile",
        "FROM busybox\nONBUILD COPY marker.txt /marker.txt\nONBUILD RUN echo triggered > /triggered\n",
    );
    e.write("marker.txt", "marker\n");
    e.build_ok(&["-t", "parent:1"]);
    assert_eq!(
        e.config("parent:1")["OnBuild"],
        json!([
            "COPY marker.txt /marker.txt",
            "RUN echo triggered > /triggered"
        ])
    );
    // A local archive to ADD, a file to fetch over loopback.
    let staging = e.dir.path().join("staging");
    fs::create_dir_all(staging.join("pkg")).unwrap();
    fs::write(staging.join("pkg/inside.txt"), "unpacked\n").unwrap();
    let status = std::process::Command::new("tar")
        .arg("-C")
        .arg(&staging)
        .arg("-czf")
        .arg(e.ctx().join("pkg.tgz"))
        .arg("pkg")
        .status()
        .unwrap();
    assert!(status.success());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for s in listener.incoming().flatten() {
            let mut s = s;
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let req = String::from_utf8_lossy(&req).to_string();
            let reply = if req.starts_with("GET /file.txt ") {
                "HTTP/1.0 200 OK\r\nContent-Length: 9\r\n\r\nfetched!\n".to_string()
            } else {
                "HTTP/1.0 404 Not Found\r\n\r\n".to_string()
            };
            let _ = s.write_all(reply.as_bytes());
        }
    });
    e.write("dir/keep.txt", "keep\n");
    e.write("dir/drop.log", "drop\n");
    e.write(
        "Dockerfile",
        &format!(
            "FROM parent:1\nENV NAME=world\n\
             COPY <<EOF /etc/greeting\nhello $NAME\nEOF\n\
             COPY --exclude=*.log dir/ /dir/\n\
             COPY --chown=nobody:nogroup --chmod=640 marker.txt /owned\n\
             ADD pkg.tgz /opt/\n\
             ADD http://127.0.0.1:{port}/file.txt /downloaded.txt\n"
        ),
    );
    e.build_ok(&["-t", "child:1"]);
    let run = |cmd: &str| e.d.ok(&["run", "--rm", "child:1", "sh", "-c", cmd]);
    assert_eq!(run("cat /marker.txt /triggered"), "marker\ntriggered\n");
    assert_eq!(
        e.config("child:1")["OnBuild"],
        Value::Null,
        "triggers are not inherited"
    );
    assert_eq!(run("cat /etc/greeting"), "hello world\n");
    assert_eq!(run("ls /dir"), "keep.txt\n");
    assert_eq!(run("stat -c '%u:%g %a' /owned"), "65534:65534 640\n");
    assert_eq!(run("cat /opt/pkg/inside.txt"), "unpacked\n");
    assert_eq!(
        run("cat /downloaded.txt; stat -c %a /downloaded.txt"),
        "fetched!\n600\n"
    );
    // --checksum: the right one builds, a wrong one fails naming both.
    let sum = "sha256:5c25c8b4dc1e2e4d8fa0c7a0b6b0e06a01b5ab25cd3a7bdef4b8b59c33fc8bc9";
    let right = {
        use sha2::Digest as _;
        format!("sha256:{:x}", sha2::Sha256::digest(b"fetched!\n"))
    };
    for (checksum, ok) in [(right.as_str(), true), (sum, false)] {
        e.write(
            "Dockerfile",
            &format!(
                "FROM busybox\nADD --checksum={checksum} http://127.0.0.1:{port}/file.txt /f\n"
            ),
        );
        let (code, out) = e.build(&["-t", "sum:1"]);
        assert_eq!(code == 0, ok, "{out}");
        if !ok {
            assert!(
                out.contains(&format!("checksum mismatch: expected {sum}, got {right}")),
                "{out}"
            );
        }
    }
    // A RUN whose heredoc is a command's input; EXPOSE of a range.
    e.write(
        "Dockerfile",
        "FROM busybox\nRUN cat <<EOF > /from-heredoc\nline one\nline two\nEOF\nEXPOSE 7000-7002/udp\n",
    );
    e.build_ok(&["-t", "hd:1"]);
    assert_eq!(
        e.d.ok(&["run", "--rm", "hd:1", "cat", "/from-heredoc"]),
        "line one\nline two\n"
    );
    assert_eq!(
        e.config("hd:1")["ExposedPorts"],
        json!({"7000/udp": {}, "7001/udp": {}, "7002/udp": {}})
    );
    // A URL that answers 404: the build fails naming it.
    e.write(
        "Dockerfile",
        &format!("FROM busybox\nADD http://127.0.0.1:{port}/missing /m\n"),
    );
    let (code, out) = e.build(&["-t", "child:2"]);
    assert_ne!(code, 0);
    assert!(out.contains("cannot be fetched: HTTP 404"), "{out}");
    e.assert_clean_failure("child:2");

    // A Dockerfile on stdin: no context.
    let mut child =
        e.d.cmd()
            .args(["build", "-t", "stdin:1", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"FROM busybox\nRUN echo from-stdin > /s\n")
        .unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    assert_eq!(
        e.d.ok(&["run", "--rm", "stdin:1", "cat", "/s"]),
        "from-stdin\n"
    );
}

#[test]
fn the_cache_outlives_restarts_and_image_prune_and_goes_with_builder_prune() {
    let mut e = env();
    e.write("a.txt", "alpha\n");
    e.write(
        "Dockerfile",
        "FROM busybox\nCOPY a.txt /a.txt\n\
         RUN --mount=type=cache,target=/c echo x >> /c/n && wc -l < /c/n > /count\nCMD cat /count\n",
    );
    let hits = |out: &str| out.matches(" ---> Using cache").count();
    e.build_ok(&["-t", "keep:1"]);
    // The daemon killed and started again, dangling images pruned: still every step cached.
    e.d.kill9();
    e.d.restart();
    e.d.ok(&["image", "prune", "-f"]);
    let out = e.build_ok(&["-t", "keep:2"]);
    assert_eq!(hits(&out), 3, "{out}");
    assert_eq!(e.image_id("keep:1"), e.image_id("keep:2"));
    // The intermediate images are listed with -a only.
    assert!(!e.d.ok(&["images"]).contains("<none>"));
    assert_eq!(e.d.ok(&["images", "-a"]).matches("<none>").count(), 4); // 2 per row
                                                                        // builder prune: the steps, the cache mount and the intermediate images go; tags stay.
    let out = e.d.ok(&["builder", "prune", "-f"]);
    assert!(out.contains("Deleted build cache objects: 3"), "{out}");
    assert!(out.contains("Deleted cache mounts: 1"), "{out}");
    assert!(out.contains("Deleted images: 2"), "{out}");
    assert_eq!(e.d.ok(&["run", "--rm", "keep:1"]), "1\n");
    let out = e.build_ok(&["-t", "keep:3"]);
    assert_eq!(hits(&out), 0, "{out}");
    assert_eq!(
        e.d.ok(&["run", "--rm", "keep:3"]),
        "1\n",
        "the cache mount was emptied"
    );
}

#[test]
fn run_steps_are_on_the_default_bridge_unless_told_otherwise() {
    let e = env();
    e.write(
        "Dockerfile",
        "FROM busybox\nRUN grep -c : /proc/net/dev > /default\n\
         RUN --network=none grep -c : /proc/net/dev > /none\n",
    );
    e.build_ok(&["-t", "net:1"]);
    let out =
        e.d.ok(&["run", "--rm", "net:1", "cat", "/default", "/none"]);
    assert_eq!(
        out, "2\n1\n",
        "lo and eth0 by default, lo alone with --network=none"
    );
    // The files the engine bind-mounts into a RUN container are not in the layer.
    let root = e.d.ok(&["image", "mount", "look", "net:1"]);
    for f in ["etc/hostname", "etc/hosts", "etc/resolv.conf"] {
        assert!(
            !Path::new(root.trim()).join(f).exists(),
            "{f} is in the image"
        );
    }
    e.d.ok(&["image", "umount", "look"]);
    e.build_ok(&["-t", "net:2", "--no-cache", "--network", "none"]);
    let out =
        e.d.ok(&["run", "--rm", "net:2", "cat", "/default", "/none"]);
    assert_eq!(out, "1\n1\n");
    // RUN as the stage's USER, in its WORKDIR, through its SHELL.
    e.write(
        "Dockerfile",
        "FROM busybox\nWORKDIR /tmp\nUSER 65534:65534\nSHELL [\"/bin/sh\", \"-xc\"]\n\
         RUN echo \"uid=$(id -u) gid=$(id -g) pwd=$(pwd)\"\n",
    );
    let out = e.build_ok(&["-t", "user:1"]);
    assert!(out.contains("uid=65534 gid=65534 pwd=/tmp"), "{out}");
    assert!(out.contains("+ id -u"), "SHELL's -x not used:\n{out}");
    e.write("Dockerfile", "FROM busybox\nRUN --network=host true\n");
    let (code, out) = e.build(&["-t", "net:3"]);
    assert_ne!(code, 0);
    assert!(out.contains("RUN --network=host"), "{out}");
}

#[test]
fn a_daemon_killed_mid_build_restarts_with_nothing_of_it_left() {
    let mut e = env();
    e.write("data.txt", "x");
    e.write(
        "Dockerfile",
        "FROM busybox\nCOPY data.txt /data.txt\nRUN sleep 600\n",
    );
    let mut build =
        e.d.cmd()
            .args(["build", "-t", "never:1"])
            .arg(e.ctx())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while e
        .d
        .ok(&["ps", "-q", "--filter", "label=berth.build.step"])
        .trim()
        .is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the RUN step never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    e.d.kill9();
    let _ = build.wait();
    e.d.restart();
    assert_eq!(
        e.d.ok(&["ps", "-aq"]).trim(),
        "",
        "the RUN container is left"
    );
    e.assert_no_leftovers();
    let data = e.dir.path().join("data");
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(data.to_str().unwrap()),
        "a mount of the build is left:\n{mounts}"
    );
    assert!(e.d.err(&["image", "inspect", "never:1"]).0 != 0);
}

#[test]
fn args_are_scoped_as_docker_scopes_them() {
    let e = env();
    e.write(
        "Dockerfile",
        "ARG GLOBAL=g\nARG BASE=busybox\nFROM $BASE\n\
         RUN echo \"global=${GLOBAL-unset} arch=${TARGETARCH-unset} proxy=${http_proxy-unset}\" > /a\n\
         ARG GLOBAL\nARG TARGETARCH\nARG UNSET\nARG WITH_DEFAULT=d\n\
         RUN echo \"global=$GLOBAL arch=$TARGETARCH unset=${UNSET-unset} default=$WITH_DEFAULT\" > /b\n",
    );
    e.build_ok(&[
        "-t",
        "args:1",
        "--build-arg",
        "http_proxy=http://127.0.0.1:3128",
    ]);
    let out = e.d.ok(&["run", "--rm", "args:1", "cat", "/a", "/b"]);
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    };
    assert_eq!(
        out,
        format!(
            "global=unset arch=unset proxy=http://127.0.0.1:3128\n\
             global=g arch={arch} unset=unset default=d\n"
        )
    );
    // The proxy is not part of the image's history or config.
    let history = e.d.ok(&["history", "--no-trunc", "args:1"]);
    assert!(!history.contains("3128"), "{history}");
}
