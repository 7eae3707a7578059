//! `/images/…`: the image store through the daemon (the CLI's image commands).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use engine::engine::Engine;
use image::reference::Reference;
use serde_json::{json, Value};

use crate::http::{self, Chunked, Head};
use crate::server::{bad_request, container_id, failure, parse_ref, Failure, Handled, Output};

fn names(head: &Head, key: &str) -> Vec<String> {
    head.query.get(key).cloned().unwrap_or_default()
}

fn one<'a>(head: &'a Head, key: &str) -> Result<&'a str, Failure> {
    head.q(key)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| bad_request(format!("missing parameter {key}")))
}

/// `X-Registry-Auth`: base64url JSON `{"username", "password"}` (Docker's), if given.
pub fn registry_auth(head: &Head) -> Result<Option<engine::distribution::Credentials>, Failure> {
    let Some(h) = head
        .header("x-registry-auth")
        .filter(|h| !h.trim().is_empty())
    else {
        return Ok(None);
    };
    let raw = base64_any(h.trim()).ok_or_else(|| bad_request("X-Registry-Auth: not base64"))?;
    let creds: engine::distribution::Credentials =
        serde_json::from_slice(&raw).map_err(|e| bad_request(format!("X-Registry-Auth: {e}")))?;
    Ok((!creds.username.is_empty()).then_some(creds))
}

/// `X-Registry-Config`: base64 JSON of registry → `{"username", "password"}` (what docker
/// build sends), if given.
pub fn registry_config(
    head: &Head,
) -> Result<BTreeMap<String, engine::distribution::Credentials>, Failure> {
    let Some(h) = head
        .header("x-registry-config")
        .filter(|h| !h.trim().is_empty())
    else {
        return Ok(BTreeMap::new());
    };
    let raw = base64_any(h.trim()).ok_or_else(|| bad_request("X-Registry-Config: not base64"))?;
    serde_json::from_slice(&raw).map_err(|e| bad_request(format!("X-Registry-Config: {e}")))
}

/// Base64 in either alphabet, padded or not.
fn base64_any(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Routes `/images/<rest>`.
pub fn route(
    engine: &Arc<Engine>,
    method: &str,
    rest: &[&str],
    head: &Head,
    body: &mut (impl Read + ?Sized),
    w: &mut UnixStream,
) -> Handled {
    let images = &engine.images;
    match (method, rest) {
        ("GET", []) => {
            // The build cache's intermediate images only with all=1, as docker images -a.
            let mut list = images.list()?;
            if !head.flag("all") {
                let cache = engine.build_cache_images();
                list.retain(|s| !s.names.is_empty() || !cache.contains(&s.id));
            }
            Ok(Output::Json(
                200,
                serde_json::to_value(list).unwrap_or_default(),
            ))
        }
        ("GET", ["inspect"]) => {
            let r = images.resolve(one(head, "name")?)?;
            let config = images.config(&r)?;
            let tags = images.names_of(&r.id)?;
            Ok(Output::Json(
                200,
                json!({"record": r, "config": config, "names": tags}),
            ))
        }
        ("GET", ["history"]) => {
            let r = images.resolve(one(head, "name")?)?;
            let config = images.config(&r)?;
            let chains = image::model::chain_ids(&r.diff_ids);
            let sizes: Vec<u64> = chains
                .iter()
                .map(|c| images.snapshots().size(c).unwrap_or(0))
                .collect();
            Ok(Output::Json(
                200,
                json!({"id": r.id.to_string(), "history": config["history"], "layer_sizes": sizes}),
            ))
        }
        ("GET", ["versions"]) => {
            let name = one(head, "name")?;
            let tag = parse_ref(name)?;
            let current = images.resolve(name).ok();
            let mut rows = Vec::new();
            for (id, until) in images.tag_history(&tag)?.iter().rev() {
                let manifest = images
                    .resolve(&id.to_string())
                    .map(|r| r.manifest.to_string())
                    .ok();
                rows.push(json!({"id": id.to_string(), "manifest": manifest, "until": until}));
            }
            Ok(Output::Json(
                200,
                json!({"current": current, "history": rows}),
            ))
        }
        ("POST", ["tag"]) => {
            let t = parse_ref(one(head, "target")?)?;
            if t.digest().is_some() {
                return Err(bad_request(format!(
                    "tag {}: a tag cannot contain a digest",
                    t.familiar()
                )));
            }
            images.tag(one(head, "source")?, &t)?;
            engine
                .events
                .emit("image", "tag", one(head, "source")?, Default::default());
            Ok(Output::Empty(201))
        }
        ("DELETE", []) => {
            let name = one(head, "name")?;
            let (untagged, deleted) = images.remove(name, head.flag("force"))?;
            images.gc()?;
            engine
                .events
                .emit("image", "delete", name, Default::default());
            Ok(Output::Json(
                200,
                json!({"untagged": untagged, "deleted": deleted.map(|d| d.to_string())}),
            ))
        }
        ("POST", ["prune"]) => {
            // The build cache is not dangling: `builder prune` removes it.
            let removed = images.prune_except(head.flag("all"), &engine.build_cache_images())?;
            Ok(Output::Json(
                200,
                json!(removed.iter().map(|d| d.to_string()).collect::<Vec<_>>()),
            ))
        }
        ("POST", ["import"]) => {
            let tag = head
                .q("tag")
                .filter(|t| !t.is_empty())
                .map(parse_ref)
                .transpose()?;
            let r = images.import(
                body,
                &names(head, "change"),
                head.q("message").unwrap_or(""),
                tag.as_ref(),
            )?;
            engine
                .events
                .emit("image", "import", &r.id.to_string(), Default::default());
            Ok(Output::Json(200, json!({"id": r.id.to_string()})))
        }
        ("POST", ["load"]) => {
            let loaded = images.load(std::io::BufReader::new(body))?;
            let v: Vec<Value> = loaded
                .into_iter()
                .map(|(name, id)| json!({"name": name, "id": id.to_string()}))
                .collect();
            engine.events.emit("image", "load", "", Default::default());
            Ok(Output::Json(200, Value::Array(v)))
        }
        ("GET", ["save"]) => {
            let list = names(head, "name");
            if list.is_empty() {
                return Err(bad_request("save: name at least one image"));
            }
            let format = match head.q("format").unwrap_or("docker") {
                "docker" => image::archive::Format::Docker,
                "oci" => image::archive::Format::Oci,
                f => return Err(bad_request(format!("format {f:?}: expected docker or oci"))),
            };
            for n in &list {
                images.resolve(n)?;
            }
            http::respond_stream_head(w, 200, "application/x-tar")
                .map_err(|e| failure(500, e.to_string()))?;
            let mut out = Chunked(std::io::BufWriter::with_capacity(
                256 * 1024,
                w.try_clone().map_err(|e| failure(500, e.to_string()))?,
            ));
            // A failure midway leaves the stream unterminated: the client sees a truncated body.
            if images.save(&list, format, &mut out).is_ok() && out.flush().is_ok() {
                let _ = out.finish();
            }
            Ok(Output::Done)
        }
        ("POST", ["commit"]) => {
            let container = container_id(engine, one(head, "container")?);
            let tag = head
                .q("tag")
                .filter(|t| !t.is_empty())
                .map(parse_ref)
                .transpose()?;
            let r = images.commit(
                &container,
                &names(head, "change"),
                head.q("message").unwrap_or(""),
                tag.as_ref(),
            )?;
            Ok(Output::Json(201, json!({"id": r.id.to_string()})))
        }
        ("POST", ["mount"]) => {
            let (_, path) = images.mount_container(one(head, "container")?, one(head, "image")?)?;
            Ok(Output::Json(200, json!({"path": path})))
        }
        ("POST", ["umount"]) => {
            let c = one(head, "container")?;
            if engine.record(c).is_ok() {
                return Err(failure(
                    409,
                    format!("{c} is a container of the engine: remove it with rm"),
                ));
            }
            images.remove_container(c)?;
            Ok(Output::Empty(204))
        }
        ("POST", ["pull"]) | ("POST", ["push"]) => {
            let name = one(head, "ref")?.to_string();
            let creds = registry_auth(head)?;
            http::respond_stream_head(w, 200, "application/json")
                .map_err(|e| failure(500, e.to_string()))?;
            let mut out = Chunked(w.try_clone().map_err(|e| failure(500, e.to_string()))?);
            let mut send = |v: Value| {
                let mut line = serde_json::to_vec(&v).unwrap_or_default();
                line.push(b'\n');
                let _ = out.write_all(&line);
            };
            let all = head.flag("all");
            let result = if rest == ["pull"] {
                engine
                    .pull(
                        &name,
                        head.q("platform").filter(|p| !p.is_empty()),
                        all,
                        creds,
                        &mut send,
                    )
                    .map(|ids| json!({"aux": {"ids": ids}}))
            } else {
                engine
                    .push(&name, all, creds, &mut send)
                    .map(|_| json!({"aux": {}}))
            };
            match result {
                Ok(v) => send(v),
                Err(e) => {
                    send(json!({"error": e.to_string(), "errorDetail": {"message": e.to_string()}}))
                }
            }
            let _ = out.finish();
            Ok(Output::Done)
        }
        _ => {
            let _ = Reference::parse;
            Err(failure(
                404,
                format!("page not found: {method} {}", head.path),
            ))
        }
    }
}
