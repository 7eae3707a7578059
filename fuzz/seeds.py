#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora into fuzz/seeds/<target>/.

Seeds come from the repository's own fixtures (JSON documents, Dockerfiles, seccomp profiles
and configs embedded in the tests, crates/runtime/src/seccomp/testdata) plus hand-made
inputs that reach the deep paths: layer tars with whiteouts, links and PAX headers, docker
and OCI archives, HTTP requests with chunked bodies and upgrades, a registry push, pull and
ranged read, tokens signed with the fuzz key. Standard library only; run by scripts/fuzz.
"""

import base64
import gzip
import hashlib
import hmac
import io
import json
import re
import shutil
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "fuzz" / "seeds"
KEY = b"berth-fuzz-token-key"  # the key of fuzz_targets/registry_{request,token}.rs

seeds: dict[str, list[bytes]] = {}


def add(target: str, data, prefix: bytes = b""):
    if isinstance(data, str):
        data = data.encode()
    seeds.setdefault(target, []).append(prefix + data)


def rust_strings(paths, keyword):
    """String literals (raw or plain) in Rust sources that contain `keyword`."""
    out = []
    for p in paths:
        text = p.read_text(errors="replace")
        for m in re.finditer(r'r(#+)"(.*?)"\1', text, re.S):
            if keyword in m.group(2):
                out.append(m.group(2))
        for m in re.finditer(r'(?<![r#\w])"((?:[^"\\]|\\.)*)"', text, re.S):
            s = m.group(1)
            if keyword in s:
                try:
                    out.append(s.encode().decode("unicode_escape"))
                except UnicodeDecodeError:
                    pass
    return out


def rs(*globs):
    files = []
    for g in globs:
        files.extend(sorted(REPO.glob(g)))
    return files


def tar_bytes(entries, fmt=tarfile.PAX_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for info, data in entries:
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def entry(name, kind=tarfile.REGTYPE, data=b"", **kw):
    i = tarfile.TarInfo(name)
    i.type = kind
    i.size = len(data) if kind == tarfile.REGTYPE else 0
    i.mode = kw.pop("mode", 0o644 if kind == tarfile.REGTYPE else 0o755)
    for k, v in kw.items():
        setattr(i, k, v)
    return i, (data if kind == tarfile.REGTYPE else None)


def layers():
    base = [
        entry("etc/", tarfile.DIRTYPE),
        entry("etc/passwd", data=b"root:x:0:0::/root:/bin/sh\n"),
        entry("bin/", tarfile.DIRTYPE),
        entry("bin/sh", data=b"\x7fELF"),
        entry("bin/ls", tarfile.LNKTYPE, linkname="bin/sh"),
        entry("bin/link", tarfile.SYMTYPE, linkname="/etc/passwd"),
        entry("escape", tarfile.SYMTYPE, linkname="../../../../tmp"),
        entry("escape/x", data=b"through a symlink"),
        entry("dev/", tarfile.DIRTYPE),
        entry("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3),
        entry("fifo", tarfile.FIFOTYPE),
        entry("a" * 150 + "/long", data=b"long name"),
        entry("pax", data=b"x", pax_headers={"SCHILY.xattr.user.k": "v", "path": "pax-renamed"}),
    ]
    whiteouts = [
        entry("etc/.wh.passwd"),
        entry("bin/.wh..wh..opq"),
        entry("bin/new", data=b"new"),
        entry(".wh..wh.plnk/", tarfile.DIRTYPE),
        entry("../outside", data=b"dot-dot"),
        entry("/abs", data=b"absolute"),
        entry("hard", tarfile.LNKTYPE, linkname="../../etc/shadow"),
    ]
    out = []
    for e in (base, whiteouts):
        for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT):
            try:
                out.append(tar_bytes(e, fmt))
            except ValueError:
                pass
    return out


def docker_archive(layer: bytes):
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]},
    }
    cfg = json.dumps(config).encode()
    cid = hashlib.sha256(cfg).hexdigest()
    lid = hashlib.sha256(layer).hexdigest()
    manifest = [{"Config": f"{cid}.json", "RepoTags": ["fuzz:latest"], "Layers": [f"{lid}/layer.tar"]}]
    entries = [
        entry(f"{cid}.json", data=cfg),
        entry(f"{lid}/", tarfile.DIRTYPE),
        entry(f"{lid}/layer.tar", data=layer),
        entry("manifest.json", data=json.dumps(manifest).encode()),
        entry("repositories", data=json.dumps({"fuzz": {"latest": lid}}).encode()),
    ]
    return tar_bytes(entries), cfg, cid


def oci_archive(layer: bytes, cfg: bytes):
    gz = gzip.compress(layer, mtime=0)
    blobs = {}

    def blob(b):
        d = hashlib.sha256(b).hexdigest()
        blobs[d] = b
        return {"digest": "sha256:" + d, "size": len(b)}

    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **blob(cfg)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **blob(gz)}],
    }
    m = json.dumps(manifest).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **blob(m),
                "annotations": {"org.opencontainers.image.ref.name": "fuzz:oci"},
                "platform": {"architecture": "amd64", "os": "linux"},
            }
        ],
    }
    entries = [entry("oci-layout", data=b'{"imageLayoutVersion":"1.0.0"}')]
    entries.append(entry("index.json", data=json.dumps(index).encode()))
    for d, b in blobs.items():
        entries.append(entry(f"blobs/sha256/{d}", data=b))
    return tar_bytes(entries), manifest, index


def b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def token(claims) -> str:
    head = b64url(b'{"alg":"HS256","typ":"JWT"}')
    body = b64url(json.dumps(claims, separators=(",", ":")).encode())
    signed = f"{head}.{body}"
    sig = hmac.new(KEY, signed.encode(), hashlib.sha256).digest()
    return f"{signed}.{b64url(sig)}"


def request(method, path, headers=(), body=b""):
    lines = [f"{method} {path} HTTP/1.1", "Host: registry"]
    lines += list(headers)
    if body or method in ("PUT", "POST", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def main():
    build_rs = rs("crates/build/src/*.rs", "crates/berth/tests/*.rs", "crates/engine/src/builder.rs")
    for s in rust_strings(build_rs, "FROM "):
        add("dockerfile", s)
    add("dockerfile", "# syntax=docker/dockerfile:1\n# escape=`\nFROM busybox AS base\nARG V=1\n"
        "RUN --mount=type=cache,target=/c <<EOF\necho $V\nEOF\nCOPY --from=base --chown=1:1 a b\n"
        "HEALTHCHECK --interval=5s CMD [\"true\"]\nONBUILD RUN x\nENV A=${B:-c} D=\"e f\"\n")
    for s in ["*.log\n!keep.log\nnode_modules\n**/tmp\n/abs\n../up\n[a-z]?\0a.log\nkeep.log\nx/tmp/y\n",
              "**\n!src/**\n\0src/a\nother\n", "[\0a\n"]:
        add("dockerignore", s)

    for s in rust_strings(rs("crates/runtime/src/**/*.rs", "crates/berth/tests/runtime.rs"), "ociVersion"):
        add("runtime_config", s)
    seccomp_profiles = [p.read_bytes() for p in sorted((REPO / "crates/runtime/src/seccomp/testdata").glob("*.json"))]
    seccomp_profiles += [s.encode() for s in rust_strings(rs("crates/runtime/src/**/*.rs"), "defaultAction")]
    for p in seccomp_profiles:
        add("seccomp", p)
        try:
            spec = {"ociVersion": "1.2.0", "root": {"path": "rootfs"},
                    "process": {"args": ["sh"], "cwd": "/"},
                    "linux": {"seccomp": json.loads(p)}}
            add("runtime_config", json.dumps(spec))
        except ValueError:
            pass

    docs = rust_strings(rs("crates/image/src/**/*.rs", "crates/registry/src/*.rs", "crates/engine/src/distribution.rs"), "schemaVersion")
    docs += rust_strings(rs("crates/image/src/**/*.rs"), "diff_ids")
    for i, d in enumerate(docs):
        add("image_document", d, bytes([i % 7]))
    for p in ["linux/amd64", "linux/arm64/v8", "linux/arm/v7", "windows/amd64", "linux"]:
        add("image_document", p, b"\0")

    for l in layers():
        for mode in (0, 1):
            add("layer_apply", l, bytes([mode]))
        add("layer_apply", gzip.compress(l, mtime=0), b"\x02")
    add("layer_apply", b"\x28\xb5\x2f\xfd\x00\x58\x11\x00\x00", b"\x03")

    layer = layers()[0]
    docker_tar, cfg, cid = docker_archive(layer)
    oci_tar, manifest, index = oci_archive(layer, cfg)
    add("image_archive", docker_tar)
    add("image_archive", oci_tar)
    add("image_document", json.dumps(manifest), b"\x02")
    add("image_document", json.dumps(index), b"\x01")
    add("image_document", cfg, b"\x00")

    for s in ["busybox", "docker.io/library/busybox:1.36", "localhost:5000/a/b-c_d.e:tag",
              "ghcr.io/x/y@sha256:" + "a" * 64, "UPPER/x", "a:b:c", "[::1]:5000/x:y",
              "sha256:" + "0" * 64, "x/../y"]:
        add("reference", s)

    reqs = [
        b"GET /v1.41/containers/json?all=1&filters=%7B%22label%22%3A%5B%22a%3Db%22%5D%7D HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /build?t=a HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST /containers/x/attach?stream=1 HTTP/1.1\r\nUpgrade: tcp\r\nConnection: Upgrade\r\n\r\n",
        b"PUT /x HTTP/1.0\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        b"GET / HTTP/1.1\r\n\r\nGET /again HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
    ]
    for r in reqs:
        add("http_request", r)
    for r in [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
              b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nTrailer: x\r\n\r\n",
              b"HTTP/1.1 204 No Content\r\n\r\n", b"HTTP/1.0 101 Switching\r\nUpgrade: tcp\r\n\r\nraw",
              b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1/x\r\n\r\n"]:
        add("http_response", r)

    # The registry: a monolithic push, a manifest, ranged reads, lists, deletes.
    blob = b"fuzz blob content"
    bd = "sha256:" + hashlib.sha256(blob).hexdigest()
    cd = "sha256:" + hashlib.sha256(cfg).hexdigest()
    man = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                      "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": len(cfg)},
                      "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": bd, "size": len(blob)}]}).encode()
    session = b"".join([
        request("GET", "/v2/"),
        request("POST", f"/v2/fuzz/app/blobs/uploads/?digest={bd}", ["Content-Type: application/octet-stream"], blob),
        request("POST", f"/v2/fuzz/app/blobs/uploads/?digest={cd}", [], cfg),
        request("PUT", "/v2/fuzz/app/manifests/v1", ["Content-Type: application/vnd.oci.image.manifest.v1+json"], man),
        request("GET", f"/v2/fuzz/app/blobs/{bd}", ["Range: bytes=2-5"]),
        request("HEAD", "/v2/fuzz/app/manifests/v1", ["Accept: application/vnd.oci.image.manifest.v1+json"]),
        request("GET", "/v2/fuzz/app/tags/list?n=1&last=a"),
        request("GET", "/v2/_catalog?n=2"),
        request("GET", f"/v2/fuzz/app/referrers/{bd}?artifactType=x"),
        request("POST", "/v2/fuzz/app/blobs/uploads/?mount=" + bd + "&from=other/repo"),
        request("PATCH", "/v2/fuzz/app/blobs/uploads/0123", ["Content-Range: 0-3"], b"abcd"),
        request("DELETE", "/v2/fuzz/app/manifests/v1"),
        request("GET", "/v2/../../etc/passwd/manifests/latest"),
    ])
    add("registry_request", session, b"\x00")
    claims = {"iss": "fuzz", "sub": "alice", "aud": "fuzz", "iat": 0, "nbf": 0, "exp": 4102444800,
              "jti": "x", "access": [{"type": "repository", "name": "fuzz/app", "actions": ["pull", "push", "delete"]},
                                     {"type": "registry", "name": "catalog", "actions": ["*"]}]}
    t = token(claims)
    add("registry_request", b"".join([
        request("GET", "/v2/", [f"Authorization: Bearer {t}"]),
        request("POST", f"/v2/fuzz/app/blobs/uploads/?digest={bd}", [f"Authorization: Bearer {t}"], blob),
        request("GET", f"/v2/fuzz/app/blobs/{bd}", [f"Authorization: Bearer {t}", "Range: bytes=-3"]),
        request("GET", "/token?service=fuzz&scope=repository:fuzz/app:pull,push", ["Authorization: Basic YTpi"]),
        request("GET", "/v2/_catalog", ["Authorization: Bearer x.y.z"]),
    ]), b"\x01")
    add("registry_token", t)
    add("registry_token", json.dumps(claims))
    for s in ["bytes=0-10", "bytes=-5", "bytes=3-", "bytes=5-1", "bytes=0-1,2-3", "a/b", "a//b", "a/../b"]:
        add("registry_token", s)

    create = {"Image": "busybox", "Cmd": ["sh"], "Env": ["A=b", "C"], "Labels": {"a": "b"},
              "ExposedPorts": {"80/tcp": {}}, "Volumes": {"/v": {}}, "Healthcheck": {"Test": ["CMD", "true"], "Interval": None},
              "HostConfig": {"Binds": ["/h:/c:ro", "vol:/d"], "PortBindings": {"80/tcp": [{"HostPort": "8080"}]},
                             "Memory": 1 << 20, "NanoCpus": 500000000, "RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 2},
                             "Mounts": [{"Type": "tmpfs", "Target": "/t", "TmpfsOptions": {"SizeBytes": 1024}}],
                             "Tmpfs": {"/run": "size=1m"}, "CapAdd": ["NET_ADMIN"], "Ulimits": [{"Name": "nofile", "Soft": 1, "Hard": 2}],
                             "LogConfig": {"Type": "json-file", "Config": {"max-size": "1m"}}, "ExtraHosts": ["a:1.2.3.4"],
                             "Dns": ["1.1.1.1"], "GroupAdd": ["10"], "VolumesFrom": ["x:ro"], "Links": ["a:b"], "ShmSize": 65536},
              "NetworkingConfig": {"EndpointsConfig": {"n": {"Aliases": ["x"]}}}}
    add("docker_api_body", b"name=web&platform=linux/amd64\n" + json.dumps(create).encode(), b"\x00")
    add("docker_api_body", b"\n" + json.dumps({"Memory": 1 << 20, "CpuShares": 2, "RestartPolicy": {"Name": "always"}, "CpuQuota": 0}).encode(), b"\x01")
    add("docker_api_body", b"\n" + json.dumps({"Cmd": ["ls"], "Env": ["A=b"], "Tty": True, "DetachKeys": "ctrl-p,ctrl-q", "User": "1:1"}).encode(), b"\x02")
    for s in rust_strings(rs("crates/api/src/*.rs"), "HostConfig"):
        add("docker_api_body", b"\n" + s.encode(), b"\x00")

    for s in rust_strings(rs("crates/cni/src/*.rs", "crates/engine/src/*.rs"), "cniVersion"):
        add("cni_result", s)
    add("cni_result", json.dumps({"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "mac": "aa:bb:cc:dd:ee:ff", "sandbox": "/run/netns/x"}],
                                  "ips": [{"address": "10.88.0.2/16", "gateway": "10.88.0.1", "interface": 0},
                                          {"address": "fd00::2/64", "gateway": "fd00::1"}], "dns": {}}))

    if OUT.exists():
        shutil.rmtree(OUT)
    total = 0
    for target, items in sorted(seeds.items()):
        d = OUT / target
        d.mkdir(parents=True)
        for data in items:
            (d / hashlib.sha1(data).hexdigest()).write_bytes(data)
        total += len(items)
        print(f"{target}: {len(items)} seeds")
    print(f"{total} seeds in {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
