//! `berth registry serve` through HTTP as the OCI distribution spec has it — every endpoint
//! and error path — and with clients nobody here wrote (skopeo), with no auth, htpasswd,
//! bearer tokens and TLS. All traffic stays on loopback.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// A `berth registry serve` of the test's own on a free loopback port.
struct Reg {
    child: Child,
    addr: String,
    root: PathBuf,
    args: Vec<String>,
}

impl Reg {
    fn start(root: &Path, args: &[&str]) -> Reg {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (child, addr) = Reg::spawn(root, &args, "127.0.0.1:0");
        Reg {
            child,
            addr,
            root: root.to_path_buf(),
            args,
        }
    }

    fn spawn(root: &Path, args: &[String], addr: &str) -> (Child, String) {
        let mut child = Command::new(BERTH)
            .args(["registry", "serve", "-q", "--addr", addr, "--root"])
            .arg(root)
            .args(args)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        err.read_line(&mut line).unwrap();
        let addr = line
            .split("://")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_string();
        std::thread::spawn(move || {
            let mut sink = String::new();
            let _ = err.read_to_string(&mut sink);
        });
        (child, addr)
    }

    /// SIGKILL, then the same registry again on the same address.
    fn kill_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, addr) = Reg::spawn(&self.root, &self.args, &self.addr);
        assert_eq!(addr, self.addr);
        self.child = child;
    }

    fn req(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        request(&self.addr, method, path, headers, body)
    }
}

impl Drop for Reg {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Resp {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn h(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }

    /// The spec's error code.
    fn code(&self) -> String {
        self.json()["errors"][0]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

fn request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    let chunked = headers.iter().any(|(k, _)| *k == "Transfer-Encoding");
    if !chunked {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    if chunked {
        for part in body.chunks(7) {
            write!(s, "{:x}\r\n", part.len()).unwrap();
            s.write_all(part).unwrap();
            s.write_all(b"\r\n").unwrap();
        }
        s.write_all(b"0\r\n\r\n").unwrap();
    } else {
        s.write_all(body).unwrap();
    }
    let mut r = BufReader::new(s);
    let (status, headers) = httpwire::read_response_head(&mut r).unwrap();
    let mut out = Vec::new();
    if method != "HEAD" {
        httpwire::Body::for_response(&headers, status, &mut r)
            .read_to_end(&mut out)
            .unwrap();
    }
    Resp {
        status,
        headers,
        body: out,
    }
}

fn sha(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("berth-registry-")
        .tempdir_in("/var/tmp")
        .unwrap()
}

/// Uploads `data` monolithically to `repo`.
fn put_blob(reg: &Reg, repo: &str, data: &[u8]) -> String {
    let d = sha(data);
    let r = reg.req(
        "POST",
        &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
        &[],
        data,
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    d
}

/// An image manifest of a config and layers already in `repo`.
fn manifest(config: &[u8], layers: &[&[u8]]) -> Vec<u8> {
    let desc = |media: &str, data: &[u8]| json!({"mediaType": media, "digest": sha(data), "size": data.len()});
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": desc("application/vnd.oci.image.config.v1+json", config),
        "layers": layers.iter().map(|l| desc("application/vnd.oci.image.layer.v1.tar+gzip", l)).collect::<Vec<_>>(),
    }))
    .unwrap()
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

#[test]
fn blobs_and_uploads_as_the_spec_says() {
    let dir = tempdir();
    let reg = Reg::start(dir.path(), &["--max-blob-size", "4096"]);
    let r = reg.req("GET", "/v2/", &[], b"");
    assert_eq!(
        (r.status, r.h("docker-distribution-api-version")),
        (200, "registry/2.0")
    );
    // Names the spec does not allow.
    for bad in [
        "/v2/UPPER/tags/list",
        "/v2/a//b/tags/list",
        "/v2/a-/blobs/uploads/",
    ] {
        let r = reg.req("GET", bad, &[], b"");
        assert_eq!((r.status, r.code()), (400, "NAME_INVALID".into()), "{bad}");
    }
    // Monolithic upload; HEAD and GET with ranges.
    let data: Vec<u8> = (0..200u8).collect();
    let d = put_blob(&reg, "lib/a", &data);
    let r = reg.req("HEAD", &format!("/v2/lib/a/blobs/{d}"), &[], b"");
    assert_eq!(
        (
            r.status,
            r.h("content-length"),
            r.h("docker-content-digest")
        ),
        (200, "200", d.as_str())
    );
    let r = reg.req(
        "GET",
        &format!("/v2/lib/a/blobs/{d}"),
        &[("Range", "bytes=10-19")],
        b"",
    );
    assert_eq!((r.status, r.h("content-range")), (206, "bytes 10-19/200"));
    assert_eq!(r.body, &data[10..20]);
    let r = reg.req(
        "GET",
        &format!("/v2/lib/a/blobs/{d}"),
        &[("Range", "bytes=300-")],
        b"",
    );
    assert_eq!(r.status, 416);
    // Another repository does not see it until it mounts it.
    let r = reg.req("GET", &format!("/v2/lib/b/blobs/{d}"), &[], b"");
    assert_eq!((r.status, r.code()), (404, "BLOB_UNKNOWN".into()));
    let r = reg.req(
        "POST",
        &format!("/v2/lib/b/blobs/uploads/?mount={d}&from=lib/a"),
        &[],
        b"",
    );
    assert_eq!(
        (r.status, r.h("location")),
        (201, format!("/v2/lib/b/blobs/{d}").as_str())
    );
    let r = reg.req(
        "POST",
        &format!("/v2/lib/c/blobs/uploads/?mount={d}&from=lib/nothing"),
        &[],
        b"",
    );
    assert_eq!(r.status, 202, "an impossible mount starts an upload");

    // Chunked upload: in order, a chunk out of order refused with the range so far.
    let data2: Vec<u8> = (0..100u8).rev().collect();
    let d2 = sha(&data2);
    let r = reg.req("POST", "/v2/lib/a/blobs/uploads/", &[], b"");
    assert_eq!((r.status, r.h("range")), (202, "0-0"));
    let loc = r.h("location").to_string();
    assert!(loc.starts_with("/v2/lib/a/blobs/uploads/") && !r.h("docker-upload-uuid").is_empty());
    let r = reg.req(
        "PATCH",
        &loc,
        &[
            ("Content-Range", "0-49"),
            ("Content-Type", "application/octet-stream"),
        ],
        &data2[..50],
    );
    assert_eq!((r.status, r.h("range")), (202, "0-49"));
    let r = reg.req("PATCH", &loc, &[("Content-Range", "60-69")], &data2[60..70]);
    assert_eq!((r.status, r.h("range")), (416, "0-49"));
    let r = reg.req("GET", &loc, &[], b"");
    assert_eq!((r.status, r.h("range")), (204, "0-49"));
    // A streamed (chunked-encoding) PATCH without Content-Range.
    let r = reg.req(
        "PATCH",
        &loc,
        &[("Transfer-Encoding", "chunked")],
        &data2[50..90],
    );
    assert_eq!((r.status, r.h("range")), (202, "0-89"));
    // The wrong digest: refused, nothing stored; then the right one with the last bytes.
    let r = reg.req("PUT", &format!("{loc}?digest={d}"), &[], &data2[90..]);
    assert_eq!((r.status, r.code()), (400, "DIGEST_INVALID".into()));
    assert_eq!(
        reg.req("HEAD", &format!("/v2/lib/a/blobs/{d2}"), &[], b"")
            .status,
        404
    );
    let r = reg.req("PUT", &format!("{loc}?digest={d2}"), &[], b"");
    assert_eq!((r.status, r.h("docker-content-digest")), (201, d2.as_str()));
    assert_eq!(
        reg.req("GET", &format!("/v2/lib/a/blobs/{d2}"), &[], b"")
            .body,
        data2
    );
    assert_eq!(reg.req("GET", &loc, &[], b"").code(), "BLOB_UPLOAD_UNKNOWN");

    // Cancel.
    let r = reg.req("POST", "/v2/lib/a/blobs/uploads/", &[], b"");
    let loc = r.h("location").to_string();
    assert_eq!(reg.req("DELETE", &loc, &[], b"").status, 204);
    let r = reg.req("PATCH", &loc, &[], b"x");
    assert_eq!((r.status, r.code()), (404, "BLOB_UPLOAD_UNKNOWN".into()));
    // An upload of another repository's is not this one's.
    let r = reg.req("POST", "/v2/lib/a/blobs/uploads/", &[], b"");
    let uuid = r.h("docker-upload-uuid").to_string();
    assert_eq!(
        reg.req("GET", &format!("/v2/lib/b/blobs/uploads/{uuid}"), &[], b"")
            .status,
        404
    );
    assert_eq!(
        reg.req("GET", "/v2/lib/a/blobs/uploads/..%2F..%2Fetc", &[], b"")
            .status,
        404
    );

    // Over the size limit: SIZE_INVALID, and nothing stored.
    let big = vec![7u8; 5000];
    let r = reg.req(
        "POST",
        &format!("/v2/lib/a/blobs/uploads/?digest={}", sha(&big)),
        &[],
        &big,
    );
    assert_eq!((r.status, r.code()), (413, "SIZE_INVALID".into()));
    assert_eq!(
        reg.req("HEAD", &format!("/v2/lib/a/blobs/{}", sha(&big)), &[], b"")
            .status,
        404
    );
    // A malformed digest.
    let r = reg.req("GET", "/v2/lib/a/blobs/sha256:xyz", &[], b"");
    assert_eq!((r.status, r.code()), (400, "DIGEST_INVALID".into()));

    // DELETE of a blob.
    assert_eq!(
        reg.req("DELETE", &format!("/v2/lib/b/blobs/{d}"), &[], b"")
            .status,
        202
    );
    assert_eq!(
        reg.req("HEAD", &format!("/v2/lib/b/blobs/{d}"), &[], b"")
            .status,
        404
    );
    assert_eq!(
        reg.req("HEAD", &format!("/v2/lib/a/blobs/{d}"), &[], b"")
            .status,
        200
    );
    let r = reg.req("GET", "/metrics", &[], b"");
    let text = String::from_utf8_lossy(&r.body);
    assert!(
        text.contains("registry_http_requests_total{method=\"PATCH\",code=\"202\"} 2"),
        "{text}"
    );
}

#[test]
fn a_client_waiting_for_100_continue_gets_it_and_a_blob_pushed_twice_is_stored_once() {
    let dir = tempdir();
    let reg = Reg::start(dir.path(), &[]);
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let d = sha(&data);
    // curl's way with a large body: the head, then the body only after `100 Continue`
    // (curl gives up waiting after a second; a client may wait for ever).
    let mut s = TcpStream::connect(&reg.addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    write!(
        s,
        "POST /v2/lib/c/blobs/uploads/?digest={d} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        data.len()
    )
    .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let (status, _) = httpwire::read_response_head(&mut r).unwrap();
    assert_eq!(status, 100, "the server must ask for the body");
    s.write_all(&data).unwrap();
    let (status, headers) = httpwire::read_response_head(&mut r).unwrap();
    assert_eq!(status, 201);
    assert_eq!(headers.get("docker-content-digest"), Some(&d));

    // The same blob into another repository: a second copy is not kept, both can read it,
    // and the stored file is the one blob.
    assert_eq!(put_blob(&reg, "lib/d", &data), d);
    for repo in ["lib/c", "lib/d"] {
        let r = reg.req("GET", &format!("/v2/{repo}/blobs/{d}"), &[], b"");
        assert_eq!((r.status, sha(&r.body)), (200, d.clone()));
        // A range of it too, through the same kernel path as the whole.
        let r = reg.req(
            "GET",
            &format!("/v2/{repo}/blobs/{d}"),
            &[("Range", "bytes=1000-1999")],
            b"",
        );
        assert_eq!((r.status, &r.body[..]), (206, &data[1000..2000]));
    }
    let stored: Vec<_> = std::fs::read_dir(dir.path().join("blobs/sha256"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(stored, vec![d[7..].to_string()]);
    let uploads = std::fs::read_dir(dir.path().join("uploads"))
        .unwrap()
        .count();
    assert_eq!(uploads, 0, "finished uploads leave nothing behind");
}

#[test]
fn edge_cases_a_conformance_suite_and_real_clients_hit() {
    let dir = tempdir();
    let reg = Reg::start(dir.path(), &[]);
    let data = b"some blob".to_vec();
    let d = put_blob(&reg, "lib/e", &data);
    // A reference that cannot be a tag names no manifest: 404, for GET, HEAD and DELETE.
    for m in ["GET", "HEAD", "DELETE"] {
        let r = reg.req(m, "/v2/lib/e/manifests/.INVALID_MANIFEST_NAME", &[], b"");
        assert_eq!(r.status, 404, "{m}");
    }
    // Ranges: another unit or several ranges are ignored; one past the end is 416 with the
    // size.
    let r = reg.req(
        "GET",
        &format!("/v2/lib/e/blobs/{d}"),
        &[("Range", "items=0-1")],
        b"",
    );
    assert_eq!((r.status, r.body.clone()), (200, data.clone()));
    let r = reg.req(
        "GET",
        &format!("/v2/lib/e/blobs/{d}"),
        &[("Range", "bytes=0-1,3-4")],
        b"",
    );
    assert_eq!(r.status, 200);
    let r = reg.req(
        "GET",
        &format!("/v2/lib/e/blobs/{d}"),
        &[("Range", "bytes=100-")],
        b"",
    );
    assert_eq!((r.status, r.h("content-range")), (416, "bytes */9"));
    // A monolithic upload with a malformed digest leaves no upload behind.
    let r = reg.req(
        "POST",
        "/v2/lib/e/blobs/uploads/?digest=sha256:nothex",
        &[],
        b"x",
    );
    assert_eq!((r.status, r.code()), (400, "DIGEST_INVALID".into()));
    assert_eq!(
        std::fs::read_dir(dir.path().join("uploads"))
            .unwrap()
            .count(),
        0
    );
    // A 204 carries no Content-Length.
    let r = reg.req("POST", "/v2/lib/e/blobs/uploads/", &[], b"");
    let loc = r.h("location").to_string();
    let r = reg.req("GET", &loc, &[], b"");
    assert_eq!((r.status, r.headers.get("content-length")), (204, None));
    assert_eq!(reg.req("DELETE", &loc, &[], b"").status, 204);
    // An error decided before the body is read goes out without `100 Continue`, and the
    // connection closes without resetting it away.
    let mut s = TcpStream::connect(&reg.addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    write!(
        s,
        "PUT /v2/lib/e/blobs/uploads/no-such-upload?digest={d} HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\nExpect: 100-continue\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let (status, _) = httpwire::read_response_head(&mut r).unwrap();
    assert_eq!(status, 404);
}

#[test]
fn manifests_tags_catalog_and_referrers() {
    let dir = tempdir();
    let reg = Reg::start(dir.path(), &[]);
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let layer = b"not really a tarball";
    // A manifest whose blobs are not there.
    let m = manifest(config, &[layer]);
    let r = reg.req(
        "PUT",
        "/v2/app/manifests/v1",
        &[("Content-Type", OCI_MANIFEST)],
        &m,
    );
    assert_eq!((r.status, r.code()), (400, "MANIFEST_BLOB_UNKNOWN".into()));
    put_blob(&reg, "app", config);
    put_blob(&reg, "app", layer);
    for (body, code) in [
        (&b"{not json"[..], "MANIFEST_INVALID"),
        (br#"{"schemaVersion":1}"#, "MANIFEST_INVALID"),
    ] {
        let r = reg.req(
            "PUT",
            "/v2/app/manifests/v1",
            &[("Content-Type", OCI_MANIFEST)],
            body,
        );
        assert_eq!((r.status, r.code()), (400, code.to_string()));
    }
    let r = reg.req(
        "PUT",
        "/v2/app/manifests/bad:tag",
        &[("Content-Type", OCI_MANIFEST)],
        &m,
    );
    assert_eq!(r.status, 400);
    let r = reg.req(
        "PUT",
        &format!("/v2/app/manifests/{}", sha(b"other")),
        &[("Content-Type", OCI_MANIFEST)],
        &m,
    );
    assert_eq!((r.status, r.code()), (400, "DIGEST_INVALID".into()));
    let md = sha(&m);
    for tag in ["v1", "v2", "v3", "latest"] {
        let r = reg.req(
            "PUT",
            &format!("/v2/app/manifests/{tag}"),
            &[("Content-Type", OCI_MANIFEST)],
            &m,
        );
        assert_eq!((r.status, r.h("docker-content-digest")), (201, md.as_str()));
        assert_eq!(r.h("location"), format!("/v2/app/manifests/{md}"));
    }
    for reference in ["v1", md.as_str()] {
        let r = reg.req(
            "GET",
            &format!("/v2/app/manifests/{reference}"),
            &[("Accept", OCI_MANIFEST)],
            b"",
        );
        assert_eq!(
            (r.status, r.h("content-type"), r.h("docker-content-digest")),
            (200, OCI_MANIFEST, md.as_str())
        );
        assert_eq!(r.body, m);
        let r = reg.req("HEAD", &format!("/v2/app/manifests/{reference}"), &[], b"");
        assert_eq!(
            (r.status, r.h("content-length")),
            (200, m.len().to_string().as_str())
        );
    }
    let r = reg.req("GET", "/v2/app/manifests/nope", &[], b"");
    assert_eq!((r.status, r.code()), (404, "MANIFEST_UNKNOWN".into()));
    // Tags, paginated with Link.
    let r = reg.req("GET", "/v2/app/tags/list", &[], b"");
    assert_eq!(
        r.json(),
        json!({"name": "app", "tags": ["latest", "v1", "v2", "v3"]})
    );
    let r = reg.req("GET", "/v2/app/tags/list?n=2", &[], b"");
    assert_eq!(r.json()["tags"], json!(["latest", "v1"]));
    assert_eq!(r.h("link"), "</v2/app/tags/list?n=2&last=v1>; rel=\"next\"");
    let r = reg.req("GET", "/v2/app/tags/list?n=2&last=v1", &[], b"");
    assert_eq!(
        (r.json()["tags"].clone(), r.h("link")),
        (json!(["v2", "v3"]), "")
    );
    let r = reg.req("GET", "/v2/nothing/tags/list", &[], b"");
    assert_eq!((r.status, r.code()), (404, "NAME_UNKNOWN".into()));
    // The catalog.
    put_blob(&reg, "zz/last", b"x");
    let r = reg.req("GET", "/v2/_catalog?n=1", &[], b"");
    assert_eq!(r.json(), json!({"repositories": ["app"]}));
    assert!(r.h("link").contains("last=app"));
    let r = reg.req("GET", "/v2/_catalog", &[], b"");
    assert_eq!(r.json(), json!({"repositories": ["app", "zz/last"]}));

    // An index of the manifest; one referencing a manifest that is not there.
    let index = |digests: &[&str]| {
        serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": digests.iter().map(|d| json!({"mediaType": OCI_MANIFEST, "digest": d, "size": m.len(),
                "platform": {"architecture": "amd64", "os": "linux"}})).collect::<Vec<_>>()})).unwrap()
    };
    let missing = sha(b"missing");
    let r = reg.req(
        "PUT",
        "/v2/app/manifests/multi",
        &[("Content-Type", "application/vnd.oci.image.index.v1+json")],
        &index(&[&missing]),
    );
    assert_eq!((r.status, r.code()), (400, "MANIFEST_BLOB_UNKNOWN".into()));
    let r = reg.req(
        "PUT",
        "/v2/app/manifests/multi",
        &[("Content-Type", "application/vnd.oci.image.index.v1+json")],
        &index(&[&md]),
    );
    assert_eq!(r.status, 201);

    // Referrers: an artifact whose subject is the manifest.
    let empty = b"{}";
    put_blob(&reg, "app", empty);
    let sig = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.signature",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha(empty), "size": 2},
        "layers": [], "subject": {"mediaType": OCI_MANIFEST, "digest": md, "size": m.len()},
        "annotations": {"org.example.signed-by": "test"}})).unwrap();
    let r = reg.req(
        "PUT",
        &format!("/v2/app/manifests/{}", sha(&sig)),
        &[("Content-Type", OCI_MANIFEST)],
        &sig,
    );
    assert_eq!((r.status, r.h("oci-subject")), (201, md.as_str()));
    let r = reg.req("GET", &format!("/v2/app/referrers/{md}"), &[], b"");
    assert_eq!(
        (r.status, r.h("content-type")),
        (200, "application/vnd.oci.image.index.v1+json")
    );
    assert_eq!(
        r.json()["manifests"],
        json!([{"mediaType": OCI_MANIFEST, "digest": sha(&sig), "size": sig.len(),
            "artifactType": "application/vnd.example.signature", "annotations": {"org.example.signed-by": "test"}}])
    );
    let r = reg.req(
        "GET",
        &format!("/v2/app/referrers/{md}?artifactType=application/vnd.example.sbom"),
        &[],
        b"",
    );
    assert_eq!(
        (r.json()["manifests"].clone(), r.h("oci-filters-applied")),
        (json!([]), "artifactType")
    );
    let r = reg.req(
        "GET",
        &format!("/v2/app/referrers/{}", sha(b"none")),
        &[],
        b"",
    );
    assert_eq!((r.status, r.json()["manifests"].clone()), (200, json!([])));

    // DELETE by tag removes the tag; by digest the manifest and its tags.
    assert_eq!(
        reg.req("DELETE", "/v2/app/manifests/v3", &[], b"").status,
        202
    );
    assert_eq!(reg.req("GET", "/v2/app/manifests/v3", &[], b"").status, 404);
    assert_eq!(reg.req("GET", "/v2/app/manifests/v2", &[], b"").status, 200);
    assert_eq!(
        reg.req(
            "DELETE",
            &format!("/v2/app/manifests/{}", sha(&sig)),
            &[],
            b""
        )
        .status,
        202
    );
    assert_eq!(
        reg.req("GET", &format!("/v2/app/referrers/{md}"), &[], b"")
            .json()["manifests"],
        json!([])
    );
    assert_eq!(
        reg.req("DELETE", &format!("/v2/app/manifests/{md}"), &[], b"")
            .status,
        202
    );
    assert_eq!(reg.req("GET", "/v2/app/manifests/v1", &[], b"").status, 404);
    assert_eq!(
        reg.req("GET", "/v2/app/tags/list", &[], b"").json()["tags"],
        json!(["multi"])
    );
}

#[test]
fn a_registry_killed_mid_upload_restarts_without_a_corrupt_blob_and_gc_keeps_what_is_referenced() {
    let dir = tempdir();
    let mut reg = Reg::start(dir.path(), &[]);
    let data: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    let d = sha(&data);
    let r = reg.req("POST", "/v2/up/blobs/uploads/", &[], b"");
    let loc = r.h("location").to_string();
    assert_eq!(
        reg.req(
            "PATCH",
            &loc,
            &[("Content-Range", "0-99999")],
            &data[..100_000]
        )
        .status,
        202
    );
    // Killed in the middle of a chunk: the connection dies with half of it sent.
    let mut s = TcpStream::connect(&reg.addr).unwrap();
    write!(s, "PATCH {loc} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\nContent-Range: 100000-199999\r\n\r\n").unwrap();
    s.write_all(&data[100_000..150_000]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    reg.kill_and_restart();
    drop(s);
    assert_eq!(
        reg.req("HEAD", &format!("/v2/up/blobs/{d}"), &[], b"")
            .status,
        404
    );
    // The upload resumes from what it has (whole chunks only, or the bytes that arrived).
    let r = reg.req("GET", &loc, &[], b"");
    assert_eq!(r.status, 204);
    let have: usize = r
        .h("range")
        .split('-')
        .nth(1)
        .unwrap()
        .parse::<usize>()
        .unwrap()
        + 1;
    assert!(have == 100_000 || have == 150_000, "{have}");
    let r = reg.req("PUT", &format!("{loc}?digest={d}"), &[], &data[have..]);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        reg.req("GET", &format!("/v2/up/blobs/{d}"), &[], b"").body,
        data
    );

    // GC while pushes go on: nothing a stored manifest references is lost; an orphan goes.
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    put_blob(&reg, "up", config);
    let m = manifest(config, &[&data]);
    assert_eq!(
        reg.req(
            "PUT",
            "/v2/up/manifests/keep",
            &[("Content-Type", OCI_MANIFEST)],
            &m
        )
        .status,
        201
    );
    let orphan = put_blob(&reg, "up", b"orphan blob");
    let addr = reg.addr.clone();
    let pusher = std::thread::spawn(move || {
        let mut pushed = Vec::new();
        for i in 0..40 {
            let layer = format!("layer {i}").into_bytes();
            let ld = sha(&layer);
            let r = request(
                &addr,
                "POST",
                &format!("/v2/busy/blobs/uploads/?digest={ld}"),
                &[],
                &layer,
            );
            assert_eq!(r.status, 201);
            let cfg = format!(r#"{{"n":{i}}}"#).into_bytes();
            let cd = sha(&cfg);
            assert_eq!(
                request(
                    &addr,
                    "POST",
                    &format!("/v2/busy/blobs/uploads/?digest={cd}"),
                    &[],
                    &cfg
                )
                .status,
                201
            );
            let m = manifest(&cfg, &[&layer]);
            let r = request(
                &addr,
                "PUT",
                &format!("/v2/busy/manifests/t{i}"),
                &[("Content-Type", OCI_MANIFEST)],
                &m,
            );
            // A manifest whose blobs a sweep took first is refused, never stored half-made.
            if r.status == 201 {
                pushed.push((format!("t{i}"), ld, cd));
            } else {
                assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
            }
        }
        pushed
    });
    let out = Command::new(BERTH)
        .args(["registry", "gc", "--grace", "0s", "--root"])
        .arg(dir.path())
        .output()
        .unwrap();
    let report = common::stdout_of(out, "berth registry gc");
    let pushed = pusher.join().unwrap();
    assert!(report.contains(&format!("deleted {orphan}")), "{report}");
    assert_eq!(
        reg.req("HEAD", &format!("/v2/up/blobs/{orphan}"), &[], b"")
            .status,
        404
    );
    assert_eq!(
        reg.req("GET", &format!("/v2/up/blobs/{d}"), &[], b"").body,
        data
    );
    assert_eq!(
        reg.req("GET", "/v2/up/manifests/keep", &[], b"").status,
        200
    );
    for (tag, ld, cd) in &pushed {
        assert_eq!(
            reg.req("GET", &format!("/v2/busy/manifests/{tag}"), &[], b"")
                .status,
            200
        );
        for b in [ld, cd] {
            assert_eq!(
                reg.req("HEAD", &format!("/v2/busy/blobs/{b}"), &[], b"")
                    .status,
                200,
                "{tag}: {b} lost"
            );
        }
    }
}

/// An htpasswd file of `users` (bcrypt).
fn htpasswd(dir: &Path, users: &[(&str, &str)]) -> PathBuf {
    let p = dir.join("htpasswd");
    let text: String = users
        .iter()
        .map(|(u, pw)| format!("{u}:{}\n", bcrypt::hash(pw, 4).unwrap()))
        .collect();
    std::fs::write(&p, text).unwrap();
    p
}

fn basic(user: &str, pw: &str) -> String {
    use std::fmt::Write as _;
    let raw = format!("{user}:{pw}");
    let table = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::from("Basic ");
    for c in raw.as_bytes().chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                out.push(table[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                let _ = out.write_char('=');
            }
        }
    }
    out
}

#[test]
fn tokens_and_permissions() {
    let dir = tempdir();
    let pw = htpasswd(dir.path(), &[("alice", "wonder"), ("bob", "builder")]);
    let access = dir.path().join("access.json");
    std::fs::write(
        &access,
        r#"{"access": [{"user": "alice", "repository": "*", "actions": ["pull", "push", "delete"]},
                       {"user": "bob", "repository": "team/*", "actions": ["pull"]},
                       {"user": "", "repository": "public/*", "actions": ["pull"]}]}"#,
    )
    .unwrap();
    let reg = Reg::start(
        &dir.path().join("data"),
        &[
            "--htpasswd",
            pw.to_str().unwrap(),
            "--access",
            access.to_str().unwrap(),
        ],
    );
    // The challenge.
    let r = reg.req("GET", "/v2/", &[], b"");
    assert_eq!((r.status, r.code()), (401, "UNAUTHORIZED".into()));
    assert_eq!(
        r.h("www-authenticate"),
        format!(
            "Bearer realm=\"http://{}/token\",service=\"berth-registry\"",
            reg.addr
        )
    );
    let r = reg.req("POST", "/v2/team/app/blobs/uploads/", &[], b"");
    assert!(
        r.h("www-authenticate")
            .ends_with(",scope=\"repository:team/app:pull,push\""),
        "{}",
        r.h("www-authenticate")
    );
    // Tokens: wrong password refused; scopes cut to what the user may.
    let token = |auth: Option<&str>, scope: &str| {
        let hdr: Vec<(&str, &str)> = auth.map(|a| vec![("Authorization", a)]).unwrap_or_default();
        reg.req(
            "GET",
            &format!("/token?service=berth-registry&scope={scope}"),
            &hdr,
            b"",
        )
    };
    assert_eq!(
        token(Some(&basic("alice", "wrong")), "repository:team/app:pull").status,
        401
    );
    let alice = token(
        Some(&basic("alice", "wonder")),
        "repository:team/app:pull,push",
    );
    assert_eq!(alice.status, 200);
    let at = format!("Bearer {}", alice.json()["token"].as_str().unwrap());
    assert!(alice.json()["expires_in"].as_u64().unwrap() > 0);
    let bob = token(
        Some(&basic("bob", "builder")),
        "repository:team/app:pull,push",
    );
    let bt = format!("Bearer {}", bob.json()["token"].as_str().unwrap());
    // alice pushes; bob may pull but not push; a token for team/app is no good on other/x.
    let data = b"some layer";
    let d = sha(data);
    let r = reg.req(
        "POST",
        &format!("/v2/team/app/blobs/uploads/?digest={d}"),
        &[("Authorization", &at)],
        data,
    );
    assert_eq!(r.status, 201);
    assert_eq!(
        reg.req(
            "GET",
            &format!("/v2/team/app/blobs/{d}"),
            &[("Authorization", &bt)],
            b""
        )
        .status,
        200
    );
    let r = reg.req(
        "POST",
        "/v2/team/app/blobs/uploads/",
        &[("Authorization", &bt)],
        b"",
    );
    // bob may never push there: no token could help, so 403.
    assert_eq!((r.status, r.code()), (403, "DENIED".into()));
    let r = reg.req(
        "GET",
        &format!("/v2/other/x/blobs/{d}"),
        &[("Authorization", &at)],
        b"",
    );
    // A token for another repository: 401, asking for the scope that is missing.
    assert_eq!(r.status, 401);
    let challenge = r.h("www-authenticate");
    assert!(
        challenge.contains("scope=\"repository:other/x:pull\"")
            && challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    // Writes ask for push, deletes for delete.
    let r = reg.req("DELETE", &format!("/v2/team/app/manifests/{d}"), &[], b"");
    assert!(
        r.h("www-authenticate")
            .contains("repository:team/app:delete"),
        "{}",
        r.h("www-authenticate")
    );
    // A forged or garbled token.
    let forged = format!("{}x", &at);
    assert_eq!(
        reg.req(
            "GET",
            &format!("/v2/team/app/blobs/{d}"),
            &[("Authorization", &forged)],
            b""
        )
        .status,
        401
    );
    // The anonymous: public/* only.
    let anon = token(
        None,
        "repository:public/x:pull&scope=repository:team/app:pull",
    );
    let grants = &anon.json();
    assert_eq!(grants["token"].as_str().map(|t| !t.is_empty()), Some(true));
    let ant = format!("Bearer {}", anon.json()["token"].as_str().unwrap());
    assert_eq!(
        reg.req(
            "GET",
            &format!("/v2/team/app/blobs/{d}"),
            &[("Authorization", &ant)],
            b""
        )
        .status,
        401
    );
    assert_eq!(
        reg.req(
            "GET",
            "/v2/public/x/tags/list",
            &[("Authorization", &ant)],
            b""
        )
        .code(),
        "NAME_UNKNOWN"
    );
    // Storage unchanged by refused requests: bob's upload never started.
    assert_eq!(
        reg.req("GET", "/v2/_catalog", &[("Authorization", &at)], b"")
            .status,
        401
    );
    let cat = token(Some(&basic("alice", "wonder")), "registry:catalog:*");
    let ct = format!("Bearer {}", cat.json()["token"].as_str().unwrap());
    assert_eq!(
        reg.req("GET", "/v2/_catalog", &[("Authorization", &ct)], b"")
            .json(),
        json!({"repositories": ["team/app"]})
    );
}

/// An image in a docker-archive, saved from a daemon of the test's own.
fn image_archive(dir: &Path) -> PathBuf {
    let d = common::daemon_with_busybox(dir);
    let out = dir.join("busybox.tar");
    d.ok(&["save", "-o", out.to_str().unwrap(), "busybox:latest"]);
    out
}

fn skopeo(args: &[&str]) -> (bool, String) {
    let out = Command::new("skopeo").args(args).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A CA (`certs/ca.crt`, what clients trust) and a certificate for 127.0.0.1 it signed
/// (`dir/server.crt`, the leaf then the CA) with its key (`dir/key.pem`). Returns the chain and
/// the key. (rustls, rightly, refuses a CA certificate as a server's own.)
fn self_signed(dir: &Path, certs: &Path) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(certs).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ca = certs.join("ca.crt");
    let ca = ca.to_str().unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=berth test CA",
        "-keyout",
        "ca.key",
        "-out",
        ca,
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "key.pem",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        ca,
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "server.ext",
        "-out",
        "leaf.crt",
    ]);
    let chain = [
        std::fs::read(dir.join("leaf.crt")).unwrap(),
        std::fs::read(certs.join("ca.crt")).unwrap(),
    ]
    .concat();
    std::fs::write(dir.join("server.crt"), chain).unwrap();
    (dir.join("server.crt"), dir.join("key.pem"))
}

#[test]
fn skopeo_pushes_and_pulls_unchanged_with_every_kind_of_auth_and_tls() {
    common::require_root();
    let dir = tempdir();
    let archive = image_archive(dir.path());
    let pw = htpasswd(dir.path(), &[("alice", "wonder")]);
    let certs = dir.path().join("certs");
    let (cert, key) = self_signed(dir.path(), &certs);
    let pw_s = pw.to_str().unwrap().to_string();
    let cases: Vec<(&str, Vec<String>, Vec<String>)> = vec![
        ("none", vec![], vec!["--tls-verify=false".into()]),
        (
            "htpasswd",
            vec![
                "--htpasswd".into(),
                pw_s.clone(),
                "--auth".into(),
                "basic".into(),
            ],
            vec![
                "--tls-verify=false".into(),
                "--creds".into(),
                "alice:wonder".into(),
            ],
        ),
        (
            "token",
            vec!["--htpasswd".into(), pw_s.clone()],
            vec![
                "--tls-verify=false".into(),
                "--creds".into(),
                "alice:wonder".into(),
            ],
        ),
        (
            "tls",
            vec![
                "--htpasswd".into(),
                pw_s.clone(),
                "--tls-cert".into(),
                cert.to_str().unwrap().into(),
                "--tls-key".into(),
                key.to_str().unwrap().into(),
            ],
            vec![
                "--tls-verify=true".into(),
                "--cert-dir".into(),
                certs.to_str().unwrap().into(),
                "--creds".into(),
                "alice:wonder".into(),
            ],
        ),
    ];
    for (name, serve, client) in cases {
        let root = dir.path().join(format!("reg-{name}"));
        let args: Vec<&str> = serve.iter().map(String::as_str).collect();
        let reg = Reg::start(&root, &args);
        let digest_file = dir.path().join(format!("{name}.digest"));
        let dest = format!("docker://{}/lib/busybox:1", reg.addr);
        let with = |prefix: &str| -> Vec<String> {
            client
                .iter()
                .map(|c| c.replacen("--", &format!("--{prefix}"), 1))
                .collect()
        };
        let mut push: Vec<String> = vec![
            "copy".into(),
            "--digestfile".into(),
            digest_file.to_str().unwrap().into(),
        ];
        push.extend(with("dest-"));
        push.push(format!("docker-archive:{}", archive.display()));
        push.push(dest.clone());
        let (ok, out) = skopeo(&push.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(ok, "{name}: push failed: {out}");
        let pushed = std::fs::read_to_string(&digest_file).unwrap();
        // Pull it back: the same manifest, byte for byte.
        let back = dir.path().join(format!("back-{name}"));
        let mut pull: Vec<String> = vec!["copy".into()];
        pull.extend(with("src-"));
        pull.push(dest.clone());
        pull.push(format!("dir:{}", back.display()));
        let (ok, out) = skopeo(&pull.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(ok, "{name}: pull failed: {out}");
        let manifest = std::fs::read(back.join("manifest.json")).unwrap();
        assert_eq!(sha(&manifest), pushed.trim(), "{name}");
        // Without credentials, an authenticated registry says no.
        if name != "none" {
            let mut anon: Vec<String> = vec!["inspect".into()];
            anon.extend(
                with("")
                    .into_iter()
                    .filter(|a| !a.starts_with("--creds") && a != "alice:wonder"),
            );
            anon.push(dest.clone());
            let (ok, out) = skopeo(&anon.iter().map(String::as_str).collect::<Vec<_>>());
            assert!(!ok, "{name}: anonymous inspect worked: {out}");
        }
    }
}

/// Debian's docker-registry (distribution) on a loopback port of its own.
struct Distribution {
    child: Child,
    addr: String,
}

impl Distribution {
    fn start(dir: &Path) -> Distribution {
        let addr = format!("127.0.0.1:{}", common::free_port());
        let cfg = dir.join("distribution.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                dir.join("distribution").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (Debian's distribution) is installed by scripts/test");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while TcpStream::connect(&addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "docker-registry did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Distribution { child, addr }
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn berth_pushes_and_pulls_with_its_own_registry_and_with_distribution() {
    common::require_root();
    let dir = tempdir();
    // Small upload chunks, so that even busybox goes up in many PATCHes.
    let certs_d = dir.path().join("certs.d");
    let d = common::daemon_with_busybox_and(
        dir.path(),
        &[
            "--upload-chunk-size",
            "65536",
            "--registry-certs",
            certs_d.to_str().unwrap(),
        ],
    );
    let docker_config = dir.path().join("docker-config");
    let berth = |args: &[&str]| -> (i32, String) {
        let out = d
            .cmd()
            .env("DOCKER_CONFIG", &docker_config)
            .args(args)
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
    };
    let ok = |args: &[&str]| -> String {
        let (code, out) = berth(args);
        assert_eq!(code, 0, "berth {args:?}: {out}\n{}", d.log());
        out
    };
    // berth's registry, with tokens: login, push, remove, pull, run.
    let pw = htpasswd(dir.path(), &[("alice", "wonder")]);
    let reg = Reg::start(
        &dir.path().join("reg"),
        &["--htpasswd", pw.to_str().unwrap()],
    );
    let (code, out) = berth(&["login", "-u", "alice", "-p", "wrong", &reg.addr]);
    assert_ne!(code, 0);
    assert!(out.contains("unauthorized"), "{out}");
    assert!(!docker_config.join("config.json").exists());
    let (code, out) = berth(&["push", &format!("{}/lib/bb:1", reg.addr)]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("No such image") || out.contains("authentication"),
        "{out}"
    );
    assert!(ok(&["login", "-u", "alice", "-p", "wonder", &reg.addr]).contains("Login Succeeded"));
    use std::os::unix::fs::PermissionsExt;
    let cfg = docker_config.join("config.json");
    assert_eq!(
        std::fs::metadata(&cfg).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let v: Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    assert!(v["auths"][&reg.addr]["auth"].is_string(), "{v}");

    let name = format!("{}/lib/bb:1", reg.addr);
    ok(&["tag", "busybox:latest", &name]);
    let out = ok(&["push", &name]);
    assert!(
        out.contains("Pushed") && out.contains("1: digest: sha256:"),
        "{out}"
    );
    let patches = |reg: &Reg| -> u64 {
        let r = reg.req("GET", "/metrics", &[], b"");
        String::from_utf8_lossy(&r.body)
            .lines()
            .find(|l| l.starts_with("registry_http_requests_total{method=\"PATCH\",code=\"202\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    let layer_size: u64 = d
        .ok(&["image", "inspect", "-f", "{{.Size}}", &name])
        .trim()
        .parse()
        .unwrap();
    assert!(layer_size > 4 * 65536);
    assert!(patches(&reg) >= 4, "the layer did not go up in chunks");
    let out = ok(&["push", &name]);
    assert!(
        out.contains("Layer already exists") && !out.contains("Pushed"),
        "{out}"
    );
    // Into another repository of the same registry: mounted from the first (the token
    // covers pulling from it), not sent again.
    let blobs = || {
        std::fs::read_dir(dir.path().join("reg/blobs/sha256"))
            .unwrap()
            .count()
    };
    let before = (blobs(), patches(&reg));
    let copy = format!("{}/team/copy:1", reg.addr);
    ok(&["tag", &name, &copy]);
    let out = ok(&["push", &copy]);
    assert!(
        out.contains("Mounted from lib/bb") && !out.contains("Pushed"),
        "{out}"
    );
    assert_eq!(
        (blobs(), patches(&reg)),
        before,
        "nothing new is stored: the manifest too is the same blob"
    );
    ok(&["rmi", &copy]);
    let id = d.ok(&["image", "inspect", "-f", "{{.Id}}", &name]);
    ok(&["rmi", &name, "busybox:latest"]);
    let out = ok(&["pull", &name]);
    assert!(
        out.contains("Download complete") && out.contains("Status: Downloaded newer image"),
        "{out}"
    );
    assert_eq!(
        d.ok(&["image", "inspect", "-f", "{{.Id}}", &name]),
        id,
        "the same image back"
    );
    assert_eq!(
        ok(&["run", "--rm", &name, "cat", "/etc/version"]),
        "busybox\n"
    );
    // Pulled again: nothing is fetched.
    let out = ok(&["pull", &name]);
    assert!(
        out.contains("Already exists") && !out.contains("Download complete"),
        "{out}"
    );
    // run pulls what is not here.
    ok(&["rmi", &name]);
    let (code, out) = berth(&["run", "--rm", &name, "cat", "/etc/version"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("Unable to find image") && out.starts_with("busybox\n"),
        "{out}"
    );
    assert!(ok(&["logout", &reg.addr]).contains("Removing login credentials"));
    let (code, out) = berth(&["pull", &name]);
    assert_ne!(code, 0, "pulled without credentials: {out}");

    // Debian's docker-registry (distribution), no auth.
    let dist = Distribution::start(dir.path());
    let other = format!("{}/team/busybox:v2", dist.addr);
    ok(&["tag", &name, &other]);
    let out = ok(&["push", &other]);
    assert!(out.contains("v2: digest: sha256:"), "{out}");
    ok(&["rmi", &other, &name]);
    ok(&["pull", &other]);
    assert_eq!(
        ok(&["run", "--rm", &other, "cat", "/etc/version"]),
        "busybox\n"
    );
    // A build whose base is not here pulls it, as docker build does.
    ok(&["rmi", &other]);
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {other}\nRUN cat /etc/version > /seen\n"),
    )
    .unwrap();
    let out = ok(&["build", "-t", "built:1", ctx.to_str().unwrap()]);
    assert!(out.contains("Downloaded newer image"), "{out}");
    assert_eq!(ok(&["run", "--rm", "built:1", "cat", "/seen"]), "busybox\n");
    // Over TLS, trusting the registry's own CA from certs.d (a fallback to plain http would
    // fail against a TLS port); and ADD of an https URL through the same trust.
    let (cert, key) = self_signed(dir.path(), &dir.path().join("tls"));
    let treg = Reg::start(
        &dir.path().join("reg-tls"),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    // Plain HTTP on its port is told so at once, not left waiting for a TLS record.
    let plain = treg.req("GET", "/v2/", &[], b"");
    assert_eq!(plain.status, 400);
    assert!(String::from_utf8_lossy(&plain.body).contains("HTTPS server"));
    std::fs::create_dir_all(certs_d.join(&treg.addr)).unwrap();
    std::fs::copy(&cert, certs_d.join(&treg.addr).join("ca.crt")).unwrap();
    let secure = format!("{}/lib/tls:1", treg.addr);
    ok(&["tag", "built:1", &secure]);
    ok(&["push", &secure]);
    ok(&["rmi", &secure]);
    ok(&["pull", &secure]);
    assert_eq!(ok(&["run", "--rm", &secure, "cat", "/seen"]), "busybox\n");
    let config = d.ok(&["image", "inspect", "-f", "{{.Id}}", &secure]);
    let config = config.trim();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM busybox:latest\nADD --checksum={config} https://{}/v2/lib/tls/blobs/{config} /config.json\n",
            treg.addr
        ),
    )
    .unwrap();
    ok(&["tag", &secure, "busybox:latest"]);
    ok(&["build", "-t", "fetched:1", ctx.to_str().unwrap()]);
    let got = ok(&["run", "--rm", "fetched:1", "cat", "/config.json"]);
    assert_eq!(sha(got.as_bytes()), config);
    // skopeo sees there what berth pushed.
    let (okk, out) = skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{other}"),
    ]);
    assert!(okk, "{out}");
    assert!(out.contains("\"Architecture\""), "{out}");
}

/// How the fake registry below answers for one blob.
#[derive(Clone, Copy, PartialEq)]
enum Serve {
    Whole,
    /// Half the body, then the connection closes (a transfer cut off).
    CutOff,
    /// Other bytes of the same length (a lying or corrupted server).
    Wrong,
}

/// A registry of the test's own on loopback serving one image, `t/img:1`, blob by blob as
/// `behaviour` says, counting each path's GETs.
struct FakeRegistry {
    addr: String,
    behaviour: std::sync::Arc<std::sync::Mutex<BTreeMap<String, Serve>>>,
    gets: std::sync::Arc<std::sync::Mutex<BTreeMap<String, usize>>>,
}

impl FakeRegistry {
    fn start(manifest: Vec<u8>, blobs: BTreeMap<String, Vec<u8>>) -> FakeRegistry {
        use std::sync::{Arc, Mutex};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let behaviour = Arc::new(Mutex::new(BTreeMap::new()));
        let gets = Arc::new(Mutex::new(BTreeMap::new()));
        let (b, g) = (behaviour.clone(), gets.clone());
        let manifest = Arc::new(manifest);
        let blobs = Arc::new(blobs);
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (b, g, manifest, blobs) =
                    (b.clone(), g.clone(), manifest.clone(), blobs.clone());
                std::thread::spawn(move || {
                    let mut w = conn.try_clone().unwrap();
                    let mut r = BufReader::new(conn);
                    // A client trying TLS first is told this is plain HTTP.
                    if matches!(r.fill_buf(), Ok(b) if b.first() == Some(&0x16)) {
                        let _ = w.write_all(b"HTTP/1.0 400 Bad Request\r\n\r\n");
                        return;
                    }
                    while let Ok(head) = httpwire::read_head(&mut r) {
                        *g.lock().unwrap().entry(head.path.clone()).or_default() +=
                            usize::from(head.method == "GET");
                        let (status, ctype, body, serve) = if head.path == "/v2/" {
                            (200, "application/json", b"{}".to_vec(), Serve::Whole)
                        } else if head.path == "/v2/t/img/manifests/1" {
                            (200, OCI_MANIFEST, (*manifest).clone(), Serve::Whole)
                        } else if let Some(d) = head.path.strip_prefix("/v2/t/img/blobs/") {
                            match blobs.get(d) {
                                Some(data) => {
                                    let serve = b.lock().unwrap().get(d).copied().unwrap_or(Serve::Whole);
                                    (200, "application/octet-stream", data.clone(), serve)
                                }
                                None => (404, "application/json", br#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}"#.to_vec(), Serve::Whole),
                            }
                        } else {
                            (
                                404,
                                "application/json",
                                br#"{"errors":[{"code":"NAME_UNKNOWN","message":"unknown"}]}"#
                                    .to_vec(),
                                Serve::Whole,
                            )
                        };
                        let digest = if head.path.contains("/manifests/") {
                            sha(&body)
                        } else {
                            String::new()
                        };
                        let _ = write!(
                            w,
                            "HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nDocker-Content-Digest: {digest}\r\n\r\n",
                            body.len()
                        );
                        if head.method == "HEAD" {
                            continue;
                        }
                        match serve {
                            Serve::Whole => {
                                let _ = w.write_all(&body);
                            }
                            Serve::CutOff => {
                                let _ = w.write_all(&body[..body.len() / 2]);
                                return;
                            }
                            Serve::Wrong => {
                                let bad: Vec<u8> = body.iter().map(|b| b ^ 0x5a).collect();
                                let _ = w.write_all(&bad);
                            }
                        }
                    }
                });
            }
        });
        FakeRegistry {
            addr,
            behaviour,
            gets,
        }
    }

    fn serve(&self, digest: &str, how: Serve) {
        self.behaviour
            .lock()
            .unwrap()
            .insert(digest.to_string(), how);
    }

    fn gets(&self, digest: &str) -> usize {
        let path = format!("/v2/t/img/blobs/{digest}");
        self.gets.lock().unwrap().get(&path).copied().unwrap_or(0)
    }
}

/// Every file under `dir` (relative paths).
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            }
            out.push(
                e.path()
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
    out.sort();
    out
}

#[test]
fn a_pull_cut_off_or_lied_to_keeps_nothing_wrong_and_the_next_fetches_only_what_is_missing() {
    common::require_root();
    let dir = tempdir();
    let d = common::Daemon::start(&dir.path().join("data"));
    // The image: a busybox root (gzip) and a layer with a message (plain tar).
    let base = std::fs::read(common::rootfs_tar(dir.path(), "base", "fetched\n")).unwrap();
    let files = dir.path().join("files");
    std::fs::create_dir_all(files.join("etc")).unwrap();
    std::fs::write(files.join("etc/message"), "the second layer\n").unwrap();
    let top = Command::new("tar")
        .args(["--owner=0", "--group=0", "-C"])
        .arg(&files)
        .args(["-cf", "-", "etc"])
        .output()
        .unwrap()
        .stdout;
    let mut gunzipped = Vec::new();
    flate2::read::GzDecoder::new(&base[..])
        .read_to_end(&mut gunzipped)
        .unwrap();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["cat", "/etc/message", "/etc/version"]},
        "rootfs": {"type": "layers", "diff_ids": [sha(&gunzipped), sha(&top)]},
    }))
    .unwrap();
    let desc = |media: &str, data: &[u8]| json!({"mediaType": media, "digest": sha(data), "size": data.len()});
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": desc("application/vnd.oci.image.config.v1+json", &config),
        "layers": [
            desc("application/vnd.oci.image.layer.v1.tar+gzip", &base),
            desc("application/vnd.oci.image.layer.v1.tar", &top),
        ],
    }))
    .unwrap();
    let (cd, bd, td) = (sha(&config), sha(&base), sha(&top));
    let blobs: BTreeMap<String, Vec<u8>> =
        [(cd.clone(), config), (bd.clone(), base), (td.clone(), top)]
            .into_iter()
            .collect();
    let fake = FakeRegistry::start(manifest, blobs);
    let image = format!("{}/t/img:1", fake.addr);
    let store = || -> (Vec<String>, Vec<String>) {
        let all = files_under(&dir.path().join("data"));
        let blobs = all
            .iter()
            .filter(|p| p.contains("blobs/sha256/"))
            .map(|p| p.rsplit('/').next().unwrap().to_string())
            .collect();
        let temps = all
            .into_iter()
            .filter(|p| p.rsplit('/').next().unwrap().starts_with(".tmp-"))
            .collect();
        (blobs, temps)
    };
    let (before, _) = store();

    // The top layer lies: the pull fails naming it, and nothing is stored under the digest
    // the bytes really have; no half-made snapshot or temporary file stays.
    fake.serve(&td, Serve::Wrong);
    let out = d.berth(&["pull", &image]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(&td[7..19]) || err.contains(&td), "{err}");
    let (blobs, temps) = store();
    assert!(temps.is_empty(), "{temps:?}");
    for b in &blobs {
        assert!(
            before.contains(b) || [&cd, &bd].iter().any(|d| d.ends_with(b.as_str())),
            "a blob the image does not have was stored: {b}"
        );
    }

    // The top layer is cut off each time: the pull fails; what did arrive stays.
    fake.serve(&td, Serve::CutOff);
    let out = d.berth(&["pull", &image]);
    assert!(!out.status.success());
    assert!(store().1.is_empty());
    let base_gets = fake.gets(&bd);
    assert_eq!(base_gets, 1, "the base layer arrived whole the first time");

    // Served whole: the pull fetches only the missing layer, and the image runs.
    fake.serve(&td, Serve::Whole);
    d.ok(&["pull", &image]);
    assert_eq!(fake.gets(&bd), 1, "the base layer was fetched again");
    assert_eq!(fake.gets(&cd), 1, "the config was fetched again");
    let out = d.ok(&["run", "--rm", "--network", "none", &image]);
    assert_eq!(out, "the second layer\nfetched\n");
    assert!(store().1.is_empty());
}

/// A loopback TCP proxy to `upstream` that cuts off, once, the `nth` connection whose
/// client sends more than 32 KiB: after 32 KiB, both sides are closed. Returns its address
/// and whether it has cut.
fn cutting_proxy(
    upstream: String,
    nth: usize,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let cut = Arc::new(AtomicBool::new(false));
    let big = Arc::new(AtomicUsize::new(0));
    let c = cut.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(&upstream) else {
                continue;
            };
            let (c, big) = (c.clone(), big.clone());
            let (mut from_server, mut to_client) =
                (server.try_clone().unwrap(), client.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut from_server, &mut to_client);
                let _ = to_client.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let (mut from_client, mut to_server) = (client, server);
                let mut buf = [0u8; 4096];
                let mut sent = 0usize;
                let mut counted = false;
                loop {
                    let n = match from_client.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if sent + n > 32 << 10 && !counted {
                        counted = true;
                        if big.fetch_add(1, Ordering::SeqCst) + 1 == nth
                            && !c.load(Ordering::SeqCst)
                        {
                            let _ = to_server.write_all(&buf[..(32 << 10) - sent]);
                            c.store(true, Ordering::SeqCst);
                            let _ = to_server.shutdown(std::net::Shutdown::Both);
                            let _ = from_client.shutdown(std::net::Shutdown::Both);
                            return;
                        }
                    }
                    if to_server.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    sent += n;
                }
                let _ = to_server.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (addr, cut)
}

#[test]
fn a_push_cut_off_inside_a_chunk_goes_on_where_the_registry_stands() {
    common::require_root();
    let dir = tempdir();
    let d = common::daemon_with_busybox_and(dir.path(), &["--upload-chunk-size", "65536"]);
    let reg = Reg::start(&dir.path().join("reg"), &[]);
    // The third chunk of 64 KiB is cut off halfway: the registry keeps two, and says so.
    let (proxy, cut) = cutting_proxy(reg.addr.clone(), 3);
    let name = format!("{proxy}/lib/cut:1");
    d.ok(&["tag", "busybox:latest", &name]);
    let out = d.ok(&["push", &name]);
    assert!(
        cut.load(std::sync::atomic::Ordering::SeqCst),
        "nothing was cut off"
    );
    assert!(
        out.contains("Pushed") && out.contains("1: digest: sha256:"),
        "{out}"
    );
    // The registry verified every blob against its digest when the upload closed; the image
    // comes back whole and runs.
    d.ok(&["rmi", &name, "busybox:latest"]);
    d.ok(&["pull", &name]);
    assert_eq!(
        d.ok(&[
            "run",
            "--rm",
            "--network",
            "none",
            &name,
            "cat",
            "/etc/version"
        ]),
        "busybox\n"
    );
    let left = std::fs::read_dir(dir.path().join("reg/uploads"))
        .unwrap()
        .count();
    assert_eq!(left, 0, "the upload was finished, not abandoned");
}

fn run(cmd: &mut Command) -> (bool, String) {
    let o = cmd.output().unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let o = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

/// cosign's two signature formats, written by hand with openssl as the spec describes them,
/// verify with `berth image verify`; the legacy signature `berth image sign` writes verifies
/// with openssl; each fails for another key.
#[test]
fn image_signatures_interoperate_with_openssl_in_both_cosign_formats() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let tmp = tempdir();
    let dir = tmp.path();
    let reg = Reg::start(&dir.join("reg"), &[]);
    let repo = "signed/app";
    // Three images: one signed by berth, one by openssl (legacy), one by openssl (bundle).
    let mut digests = Vec::new();
    for tag in ["berth", "legacy", "bundle"] {
        let config = format!("{{\"tag\":\"{tag}\"}}");
        put_blob(&reg, repo, config.as_bytes());
        let m = manifest(config.as_bytes(), &[]);
        let r = reg.req(
            "PUT",
            &format!("/v2/{repo}/manifests/{tag}"),
            &[("Content-Type", OCI_MANIFEST)],
            &m,
        );
        assert_eq!(r.status, 201);
        digests.push(sha(&m));
    }
    let image = |tag: &str| format!("{}/{repo}:{tag}", reg.addr);
    // Keys: SEC1 from openssl (what `openssl ecparam -genkey` writes), and another one.
    openssl(
        dir,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "ec.pem",
        ],
    );
    openssl(dir, &["ec", "-in", "ec.pem", "-pubout", "-out", "ec.pub"]);
    openssl(
        dir,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "other.pem",
        ],
    );
    openssl(
        dir,
        &["ec", "-in", "other.pem", "-pubout", "-out", "other.pub"],
    );
    let berth = |args: &[&str]| run(Command::new(BERTH).args(args).current_dir(dir));
    let verify = |key: &str, tag: &str| berth(&["image", "verify", "--key", key, &image(tag)]);
    // 1. berth signs; openssl verifies the legacy signature as cosign's spec defines it.
    let (ok, out) = berth(&["image", "sign", "--key", "ec.pem", &image("berth")]);
    assert!(ok, "{out}");
    let hex = digests[0].trim_start_matches("sha256:");
    let sig_manifest: Value = serde_json::from_slice(
        &reg.req(
            "GET",
            &format!("/v2/{repo}/manifests/sha256-{hex}.sig"),
            &[("Accept", OCI_MANIFEST)],
            b"",
        )
        .body,
    )
    .unwrap();
    let layer = &sig_manifest["layers"][0];
    assert_eq!(
        layer["mediaType"],
        "application/vnd.dev.cosign.simplesigning.v1+json"
    );
    let payload = reg
        .req(
            "GET",
            &format!("/v2/{repo}/blobs/{}", layer["digest"].as_str().unwrap()),
            &[],
            b"",
        )
        .body;
    assert_eq!(
        String::from_utf8_lossy(&payload),
        format!("{{\"critical\":{{\"identity\":{{\"docker-reference\":\"{}/{repo}\"}},\"image\":{{\"docker-manifest-digest\":\"{}\"}},\"type\":\"cosign container image signature\"}},\"optional\":null}}", reg.addr, digests[0])
    );
    std::fs::write(dir.join("payload"), &payload).unwrap();
    std::fs::write(
        dir.join("sig.der"),
        b64.decode(
            layer["annotations"]["dev.cosignproject.cosign/signature"]
                .as_str()
                .unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    let said = openssl(
        dir,
        &[
            "dgst",
            "-sha256",
            "-verify",
            "ec.pub",
            "-signature",
            "sig.der",
            "payload",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&said).trim(), "Verified OK");
    assert!(verify("ec.pub", "berth").0);
    let (ok, out) = verify("other.pub", "berth");
    assert!(!ok && out.contains("does not verify"), "{out}");
    // 2. The legacy format built with openssl and pushed by hand (as skopeo would).
    let payload = format!("{{\"critical\":{{\"identity\":{{\"docker-reference\":\"{}/{repo}\"}},\"image\":{{\"docker-manifest-digest\":\"{}\"}},\"type\":\"cosign container image signature\"}},\"optional\":null}}", reg.addr, digests[1]);
    std::fs::write(dir.join("payload2"), &payload).unwrap();
    let sig = b64.encode(openssl(
        dir,
        &["dgst", "-sha256", "-sign", "ec.pem", "payload2"],
    ));
    let pd = put_blob(&reg, repo, payload.as_bytes());
    put_blob(&reg, repo, b"{}");
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(b"{}"), "size": 2},
        "layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json", "digest": pd, "size": payload.len(),
                    "annotations": {"dev.cosignproject.cosign/signature": sig}}],
    }))
    .unwrap();
    let hex1 = digests[1].trim_start_matches("sha256:");
    assert_eq!(
        reg.req(
            "PUT",
            &format!("/v2/{repo}/manifests/sha256-{hex1}.sig"),
            &[("Content-Type", OCI_MANIFEST)],
            &m
        )
        .status,
        201
    );
    let (ok, out) = verify("ec.pub", "legacy");
    assert!(ok && out.contains("cosign .sig signature"), "{out}");
    assert!(!verify("other.pub", "legacy").0);
    // 3. A cosign 3 bundle built from its published format: DSSE over an in-toto
    //    Statement, signed over PAE, pushed as a referrer of the image.
    let hex2 = digests[2].trim_start_matches("sha256:");
    let statement = serde_json::to_vec(&json!({"_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": format!("{}/{repo}", reg.addr), "digest": {"sha256": hex2}}],
        "predicateType": "https://sigstore.dev/cosign/sign/v1", "predicate": {}}))
    .unwrap();
    let ptype = "application/vnd.in-toto+json";
    let mut pae = format!("DSSEv1 {} {ptype} {} ", ptype.len(), statement.len()).into_bytes();
    pae.extend(&statement);
    std::fs::write(dir.join("pae"), &pae).unwrap();
    let sig = b64.encode(openssl(
        dir,
        &["dgst", "-sha256", "-sign", "other.pem", "pae"],
    ));
    let bundle = serde_json::to_vec(&json!({
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": {"publicKey": {"hint": "other"}},
        "dsseEnvelope": {"payload": b64.encode(&statement), "payloadType": ptype, "signatures": [{"sig": sig, "keyid": ""}]},
    }))
    .unwrap();
    let bd = put_blob(&reg, repo, &bundle);
    let image_manifest = reg
        .req(
            "GET",
            &format!("/v2/{repo}/manifests/bundle"),
            &[("Accept", OCI_MANIFEST)],
            b"",
        )
        .body;
    let referrer = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha(b"{}"), "size": 2},
        "layers": [{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json", "digest": bd, "size": bundle.len()}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": digests[2], "size": image_manifest.len()},
        "annotations": {"dev.sigstore.bundle.content": "dsse-envelope", "dev.sigstore.bundle.predicateType": "https://sigstore.dev/cosign/sign/v1"},
    }))
    .unwrap();
    assert_eq!(
        reg.req(
            "PUT",
            &format!("/v2/{repo}/manifests/{}", sha(&referrer)),
            &[("Content-Type", OCI_MANIFEST)],
            &referrer
        )
        .status,
        201
    );
    let (ok, out) = verify("other.pub", "bundle");
    assert!(ok && out.contains("sigstore bundle signature"), "{out}");
    let (ok, out) = verify("ec.pub", "bundle");
    assert!(!ok && out.contains("does not verify"), "{out}");
    // An unsigned image, and bad keys, say so.
    let config = b"{\"tag\":\"unsigned\"}";
    put_blob(&reg, repo, config);
    reg.req(
        "PUT",
        &format!("/v2/{repo}/manifests/unsigned"),
        &[("Content-Type", OCI_MANIFEST)],
        &manifest(config, &[]),
    );
    let (ok, out) = verify("ec.pub", "unsigned");
    assert!(!ok && out.contains("no signature"), "{out}");
    std::fs::write(
        dir.join("bad.pub"),
        "-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    let (ok, out) = verify("bad.pub", "berth");
    assert!(
        !ok && out.contains("not an ECDSA P-256 public key"),
        "{out}"
    );
}
