//! The resource verbs: get, list, watch, create, update, patch (four types), delete and
//! deletecollection, with their subresources (status, scale, binding), over the store and
//! the watch cache.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::apply;
use crate::cache::{Cache, CacheEvent};
use crate::convert;
use crate::kinds::{self, Kind, Registry};
use crate::patch;
use crate::rules;
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::{ApiError, ApiResult, FieldError};
use crate::table;

/// A reply body: whole, or a stream of chunks (watches).
pub enum Body {
    Full(Bytes),
    Stream(mpsc::Receiver<Bytes>),
}

pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: Body,
    pub warnings: Vec<String>,
}

impl Reply {
    pub fn json(status: u16, v: &Value) -> Reply {
        Reply {
            status,
            content_type: "application/json".into(),
            body: Body::Full(Bytes::from(serde_json::to_vec(v).unwrap_or_default())),
            warnings: Vec::new(),
        }
    }
    pub fn error(e: &ApiError) -> Reply {
        Reply::json(e.code, &e.to_status())
    }
}

/// What a request asks for, parsed from its path and query.
pub struct Target {
    pub kind: Arc<Kind>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
}

/// How the client wants objects back.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Output {
    Object,
    Table,
    Metadata,
}

pub struct Ctx<'a> {
    pub query: &'a [(String, String)],
    pub output: Output,
    pub user_agent: &'a str,
    pub content_type: &'a str,
    pub body: Bytes,
    /// Checks an object about to be written on behalf of the requesting user (RBAC's
    /// escalation prevention); None for the server's own writes.
    pub guard: Option<&'a Guard<'a>>,
}

/// See [`Ctx::guard`].
/// The object may be changed (the requester recorded); the flag says it is being created.
pub type Guard<'a> = dyn Fn(&Kind, &mut Value, bool) -> Result<(), ApiError> + Send + Sync + 'a;

impl Ctx<'_> {
    pub fn q(&self, k: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }
    fn flag(&self, k: &str) -> bool {
        matches!(self.q(k), Some("true") | Some("1") | Some(""))
    }
    /// The request body's media type, without parameters.
    fn media_type(&self) -> &str {
        self.content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
    }
    fn dry_run(&self) -> bool {
        self.query.iter().any(|(k, v)| k == "dryRun" && v == "All")
    }
    fn manager(&self) -> String {
        match self.q("fieldManager") {
            Some(m) if !m.is_empty() => m.to_string(),
            _ => {
                let ua = self.user_agent.split('/').next().unwrap_or_default();
                if ua.is_empty() {
                    "unknown".into()
                } else {
                    ua.to_string()
                }
            }
        }
    }
}

const APPLY_PATCH: &str = "application/apply-patch+yaml";

pub struct Api {
    pub store: Arc<dyn store::Store>,
    pub registry: Arc<Registry>,
    pub cache: Arc<Cache>,
    pub admission: Admission,
    /// ImageSignaturePolicy admission, with its verdict cache.
    pub images: Arc<crate::imagepolicy::ImagePolicies>,
}

/// Settings of the admission steps that mutate objects.
#[derive(Clone, Copy, Debug)]
pub struct Admission {
    /// DefaultTolerationSeconds: how long a pod stays on a `not-ready` node.
    pub not_ready_toleration_seconds: i64,
    /// DefaultTolerationSeconds: how long a pod stays on an `unreachable` node.
    pub unreachable_toleration_seconds: i64,
}

impl Default for Admission {
    /// Kubernetes' five minutes.
    fn default() -> Self {
        Admission {
            not_ready_toleration_seconds: 300,
            unreachable_toleration_seconds: 300,
        }
    }
}

fn now() -> String {
    crate::now()
}

pub(crate) fn random_suffix(n: usize) -> String {
    const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut b = vec![0u8; n];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    b.iter()
        .map(|x| ALPHA[*x as usize % ALPHA.len()] as char)
        .collect()
}

pub fn new_uid() -> String {
    let mut b = [0u8; 16];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn meta(v: &Value) -> &Value {
    v.get("metadata").unwrap_or(&Value::Null)
}
fn meta_mut(v: &mut Value) -> &mut Map<String, Value> {
    if !v.get("metadata").is_some_and(Value::is_object) {
        v["metadata"] = json!({});
    }
    v["metadata"].as_object_mut().unwrap()
}
fn name_of(v: &Value) -> &str {
    meta(v)
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Decodes a request body (JSON or YAML) into a value.
pub fn decode_body(ct: &str, body: &[u8]) -> ApiResult<Value> {
    let base = ct.split(';').next().unwrap_or_default().trim();
    let v: Value = match base {
        "application/yaml" | "application/apply-patch+yaml" => serde_yaml::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?,
        ""
        | "application/json"
        | "application/merge-patch+json"
        | "application/strategic-merge-patch+json"
        | "application/json-patch+json"
        | "*/*" => serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
        })?,
        "application/vnd.kubernetes.protobuf" => crate::proto::decode(body).map_err(|e| {
            ApiError::bad_request(format!("the protobuf body could not be decoded: {e}"))
        })?,
        _ => {
            return Err(ApiError::unsupported_media(&[
                "application/json",
                "application/yaml",
                "application/vnd.kubernetes.protobuf",
            ]))
        }
    };
    Ok(v)
}

impl Api {
    /// Sets the resourceVersion and converts a stored object to what `kind` serves.
    fn out(&self, kind: &Kind, mut v: Value, rev: i64) -> Value {
        if v.is_object() {
            meta_mut(&mut v).insert("resourceVersion".into(), json!(rev.to_string()));
        }
        convert::to_served(kind, v)
    }

    fn render_one(&self, kind: &Kind, ctx: &Ctx, obj: Value) -> Value {
        match ctx.output {
            Output::Object => obj,
            Output::Table => table::table(kind, &[obj], ctx.q("includeObject"), None),
            Output::Metadata => partial(&obj),
        }
    }

    async fn get_stored(
        &self,
        kind: &Kind,
        ns: Option<&str>,
        name: &str,
    ) -> ApiResult<(Value, i64)> {
        match self.store.get(&kind.key(ns, name), 0).await? {
            Some(kv) => Ok((
                serde_json::from_slice(&kv.value).map_err(|e| ApiError::internal(e.to_string()))?,
                kv.mod_revision,
            )),
            None => Err(ApiError::not_found(kind, name)),
        }
    }

    // === get ===

    pub async fn get(&self, t: &Target, ctx: &Ctx<'_>) -> ApiResult<Reply> {
        let name = t.name.as_deref().unwrap();
        let (obj, rev) = self
            .get_stored(&t.kind, t.namespace.as_deref(), name)
            .await?;
        let obj = self.out(&t.kind, obj, rev);
        match t.sub.as_deref() {
            Some("scale") => Ok(Reply::json(200, &scale_of(&t.kind, &obj)?)),
            _ => Ok(Reply::json(200, &self.render_one(&t.kind, ctx, obj))),
        }
    }

    // === list ===

    pub async fn list(&self, t: &Target, ctx: &Ctx<'_>) -> ApiResult<Reply> {
        let labels = LabelSelector::parse(ctx.q("labelSelector").unwrap_or_default())
            .map_err(ApiError::bad_request)?;
        let fields = FieldSelector::parse(ctx.q("fieldSelector").unwrap_or_default(), &t.kind)
            .map_err(ApiError::bad_request)?;
        let limit: usize = ctx.q("limit").and_then(|l| l.parse().ok()).unwrap_or(0);
        let (prefix, exact_prefix) = scope(t, &fields);
        // Objects are parsed only when a selector needs to look inside them.
        let selective = !labels.is_empty() || !fields.is_empty();
        let matches = |raw: &[u8]| -> bool {
            if !selective {
                return true;
            }
            let Ok(v) = serde_json::from_slice::<Value>(raw) else {
                return false;
            };
            labels.matches(meta(&v).get("labels").and_then(Value::as_object)) && fields.matches(&v)
        };
        let mut items: Vec<(Arc<[u8]>, i64)> = Vec::new();
        let (revision, cont, remaining);
        let rv = ctx.q("resourceVersion").unwrap_or_default();
        let rv_match = ctx.q("resourceVersionMatch").unwrap_or_default();
        let token = ctx.q("continue").filter(|c| !c.is_empty());
        if token.is_some() && !rv.is_empty() && rv != "0" {
            return Err(ApiError::bad_request(
                "specifying resource version is not allowed when using continue",
            ));
        }
        if !rv_match.is_empty() && rv.is_empty() {
            return Err(ApiError::bad_request("resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided"));
        }
        if !["", "Exact", "NotOlderThan"].contains(&rv_match) {
            return Err(ApiError::bad_request(format!("resourceVersionMatch: Unsupported value: \"{rv_match}\": supported values: \"Exact\", \"NotOlderThan\"")));
        }
        if let Some(token) = token {
            let (rev, start) = decode_continue(token)?;
            let page = self
                .store_page(&prefix, exact_prefix, Some(&start), rev, limit, &matches)
                .await?;
            (items, revision, cont, remaining) = (page.0, rev, page.1, page.2);
        } else if !rv.is_empty()
            && rv != "0"
            && (rv_match == "Exact" || (limit > 0 && rv_match != "NotOlderThan"))
        {
            // An exact revision: read from the store at it.
            let rev = parse_rv(rv)?;
            let page = self
                .store_page(&prefix, exact_prefix, None, rev, limit, &matches)
                .await?;
            (items, revision, cont, remaining) = (page.0, rev, page.1, page.2);
        } else {
            // Served from the watch cache; consistent with the store unless RV=0 (any), and
            // not older than a resourceVersion given (waited for, as Kubernetes waits, up to 3 s).
            // A first page comes from the cache too; the pages after it from the store at the
            // cache's revision.
            if rv != "0" {
                let current = self.store.current_revision().await?;
                let wanted = if rv.is_empty() { 0 } else { parse_rv(rv)? };
                self.cache.wait_for(current.max(wanted)).await;
                let have = self.cache.revision();
                if have < wanted {
                    return Err(too_large_rv(wanted, have));
                }
            }
            let (rev, objs) = self.cache.list(&prefix);
            let (mut next, mut left) = (None, 0);
            for (n, (k, r, v)) in objs.iter().enumerate() {
                if (exact_prefix && *k != prefix) || !matches(v) {
                    continue;
                }
                if limit > 0 && items.len() == limit {
                    next = Some(encode_continue(rev, &objs[n - 1].0));
                    left = (objs.len() - n) as i64;
                    break;
                }
                items.push((v.clone(), *r));
            }
            (revision, cont, remaining) = (rev, next, left);
        }
        let mut list_meta = json!({"resourceVersion": revision.to_string()});
        if let Some(c) = &cont {
            list_meta["continue"] = json!(c);
            if remaining > 0 && !selective {
                list_meta["remainingItemCount"] = json!(remaining);
            }
        }
        // The list is written item by item: a 10,000-object Table never exists as one tree.
        let converted = t.kind.is_converted();
        let include = ctx.q("includeObject");
        let mut body =
            Vec::with_capacity(items.iter().map(|(v, _)| v.len() + 32).sum::<usize>() + 256);
        let (head, tail) = match ctx.output {
            Output::Table => (
                format!("{{\"apiVersion\":\"meta.k8s.io/v1\",\"columnDefinitions\":{},\"kind\":\"Table\",\"metadata\":{list_meta},\"rows\":[", Value::Array(table::column_definitions(&t.kind))),
                "]}".to_string(),
            ),
            Output::Metadata => (
                "{\"apiVersion\":\"meta.k8s.io/v1\",\"items\":[".to_string(),
                format!("],\"kind\":\"PartialObjectMetadataList\",\"metadata\":{list_meta}}}"),
            ),
            Output::Object => (
                format!("{{\"apiVersion\":{},\"items\":[", json!(t.kind.api_version())),
                format!("],\"kind\":{},\"metadata\":{list_meta}}}", json!(t.kind.list_kind)),
            ),
        };
        body.extend_from_slice(head.as_bytes());
        for (n, (raw, rev)) in items.iter().enumerate() {
            if n > 0 {
                body.push(b',');
            }
            if ctx.output == Output::Object && !converted {
                // The common case, without parsing: the stored bytes with the resourceVersion
                // spliced into their metadata.
                splice_resource_version(raw, *rev, &mut body);
                continue;
            }
            let v: Value =
                serde_json::from_slice(raw).map_err(|e| ApiError::internal(e.to_string()))?;
            let v = self.out(&t.kind, v, *rev);
            let item = match ctx.output {
                Output::Table => table::row(&t.kind, &v, include),
                Output::Metadata => partial(&v),
                Output::Object => v,
            };
            serde_json::to_writer(&mut body, &item)
                .map_err(|e| ApiError::internal(e.to_string()))?;
        }
        body.extend_from_slice(tail.as_bytes());
        Ok(Reply {
            status: 200,
            content_type: "application/json".into(),
            body: Body::Full(Bytes::from(body)),
            warnings: Vec::new(),
        })
    }

    /// One page from the store at `rev`, filtered; returns items, continue token, remaining.
    async fn store_page(
        &self,
        prefix: &str,
        exact: bool,
        start: Option<&str>,
        rev: i64,
        limit: usize,
        matches: &(dyn Fn(&[u8]) -> bool + Sync),
    ) -> ApiResult<(Vec<(Arc<[u8]>, i64)>, Option<String>, i64)> {
        let mut out = Vec::new();
        let mut after = start.map(String::from);
        loop {
            let want = if limit == 0 {
                0
            } else {
                (limit - out.len()).max(1)
            };
            let page = self
                .store
                .list(store::ListOptions {
                    prefix,
                    start_after: after.as_deref(),
                    revision: rev,
                    limit: want,
                })
                .await?;
            for kv in page.kvs {
                after = Some(kv.key.clone());
                if (exact && kv.key != prefix) || !matches(&kv.value) {
                    continue;
                }
                out.push((Arc::from(kv.value), kv.mod_revision));
            }
            if !page.more {
                return Ok((out, None, 0));
            }
            if limit > 0 && out.len() >= limit {
                let token = encode_continue(rev, after.as_deref().unwrap_or_default());
                return Ok((out, Some(token), page.remaining));
            }
        }
    }

    // === watch ===

    pub async fn watch(&self, t: &Target, ctx: &Ctx<'_>) -> ApiResult<Reply> {
        let labels = LabelSelector::parse(ctx.q("labelSelector").unwrap_or_default())
            .map_err(ApiError::bad_request)?;
        let fields = FieldSelector::parse(ctx.q("fieldSelector").unwrap_or_default(), &t.kind)
            .map_err(ApiError::bad_request)?;
        let (prefix, exact) = scope(t, &fields);
        let rv = ctx.q("resourceVersion").unwrap_or_default();
        let send_initial = ctx.flag("sendInitialEvents");
        let bookmarks = ctx.flag("allowWatchBookmarks");
        let from = if rv.is_empty() || rv == "0" || send_initial {
            let current = self.store.current_revision().await?;
            if rv.is_empty() || send_initial {
                self.cache.wait_for(current).await;
            }
            None
        } else {
            let r = parse_rv(rv)?;
            self.cache.wait_for(r).await;
            if self.cache.revision() < r {
                return Err(too_large_rv(r, self.cache.revision()));
            }
            Some(r)
        };
        let timeout = ctx
            .q("timeoutSeconds")
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(1800 + (rand_u64() % 1800));
        let (tx, rx) = mpsc::channel::<Bytes>(256);
        let kind = t.kind.clone();
        let output = ctx.output;
        let include = ctx.q("includeObject").map(String::from);
        let encode = move |ty: &str, obj: Value| -> Bytes {
            let obj = match output {
                Output::Table => table::table(&kind, &[obj], include.as_deref(), None),
                Output::Metadata => partial(&obj),
                Output::Object => obj,
            };
            let mut b = serde_json::to_vec(&json!({"type": ty, "object": obj})).unwrap_or_default();
            b.push(b'\n');
            Bytes::from(b)
        };
        let sub = match self.cache.subscribe(&prefix, from) {
            Ok(s) => s,
            Err(oldest) => {
                // The window no longer holds `from`: an ERROR event with 410, as Kubernetes sends.
                let e = ApiError::expired(format!(
                    "too old resource version: {} ({})",
                    from.unwrap_or(0),
                    oldest + 1
                ));
                let _ = tx.try_send(encode_status(&e));
                return Ok(stream_reply(rx));
            }
        };
        let kind = t.kind.clone();
        let plain = output == Output::Object
            && labels.is_empty()
            && fields.is_empty()
            && !kind.is_converted();
        let me = self.clone_handle();
        let prefix2 = prefix.clone();
        let in_scope = move |e: &CacheEvent| !exact || e.key == prefix;
        tokio::spawn(async move {
            let matches = |v: &Value| {
                labels.matches(meta(v).get("labels").and_then(Value::as_object))
                    && fields.matches(v)
            };
            let deadline = tokio::time::sleep(std::time::Duration::from_secs(timeout));
            tokio::pin!(deadline);
            let mut last = sub.revision;
            let send_event = |e: &CacheEvent| -> Option<Bytes> {
                if !in_scope(e) {
                    return None;
                }
                if plain {
                    // Every watcher of the stored version without selectors gets the same line.
                    return Some(
                        e.line
                            .get_or_init(|| {
                                let mut b =
                                    format!("{{\"type\":\"{}\",\"object\":", e.kind).into_bytes();
                                splice_resource_version(&e.raw, e.revision, &mut b);
                                b.extend_from_slice(b"}\n");
                                Bytes::from(b)
                            })
                            .clone(),
                    );
                }
                let now_match = e.kind != "DELETED" && matches(e.object());
                let was_match = e.prev().is_some_and(|p| matches(p));
                let ty = match (e.kind, was_match, now_match) {
                    ("DELETED", true, _) => "DELETED",
                    ("DELETED", false, _) | (_, false, false) => return None,
                    (_, false, true) => "ADDED",
                    (kind, true, true) => {
                        if kind == "ADDED" {
                            "ADDED"
                        } else {
                            "MODIFIED"
                        }
                    }
                    (_, true, false) => "DELETED",
                };
                let obj = me.out(&kind, (**e.object()).clone(), e.revision);
                Some(encode(ty, obj))
            };
            for e in &sub.initial {
                if let Some(b) = send_event(e) {
                    if tx.send(b).await.is_err() {
                        return;
                    }
                }
            }
            if send_initial && bookmarks {
                let mut bm = json!({"kind": kind.kind, "apiVersion": kind.api_version(), "metadata": {"resourceVersion": sub.revision.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}});
                if output == Output::Table {
                    bm = json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": sub.revision.to_string()}, "columnDefinitions": [], "rows": []});
                }
                let mut b = serde_json::to_vec(&json!({"type": "BOOKMARK", "object": bm}))
                    .unwrap_or_default();
                b.push(b'\n');
                if tx.send(Bytes::from(b)).await.is_err() {
                    return;
                }
            }
            let mut rx = sub.rx;
            let mut bookmark_tick = tokio::time::interval(std::time::Duration::from_secs(60));
            bookmark_tick.tick().await;
            loop {
                tokio::select! {
                    _ = &mut deadline => return,
                    _ = tx.closed() => return,
                    _ = bookmark_tick.tick(), if bookmarks => {
                        let bm = json!({"type": "BOOKMARK", "object": {"kind": kind.kind, "apiVersion": kind.api_version(), "metadata": {"resourceVersion": last.to_string()}}});
                        let mut b = serde_json::to_vec(&bm).unwrap_or_default();
                        b.push(b'\n');
                        if tx.send(Bytes::from(b)).await.is_err() { return; }
                    }
                    r = rx.recv() => {
                        let events: Vec<Arc<CacheEvent>> = match r {
                            Ok(e) => vec![e],
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => match me.cache.since(&prefix2, last) {
                                Some(evs) => evs,
                                None => {
                                    let _ = tx.send(encode_status(&ApiError::expired("too old resource version"))).await;
                                    return;
                                }
                            },
                            Err(_) => return,
                        };
                        for e in events {
                            if e.revision <= last {
                                continue;
                            }
                            // Bookmarks may claim every revision read so far, whatever its key.
                            last = e.revision;
                            if !e.key.starts_with(&prefix2) {
                                continue;
                            }
                            if let Some(b) = send_event(&e) {
                                if tx.send(b).await.is_err() { return; }
                            }
                        }
                    }
                }
            }
        });
        Ok(stream_reply(rx))
    }

    /// Deletes an object with default options, as a client that sent no body would.
    pub async fn delete_default(
        &self,
        kind: &Arc<Kind>,
        ns: Option<&str>,
        name: &str,
    ) -> ApiResult<()> {
        let ctx = Ctx {
            query: &[],
            output: Output::Object,
            user_agent: "berth",
            content_type: "",
            body: Bytes::new(),
            guard: None,
        };
        self.delete_one(kind, ns, name, &json!({}), &ctx)
            .await
            .map(|_| ())
    }

    pub fn clone_handle(&self) -> Arc<Api> {
        Arc::new(Api {
            store: self.store.clone(),
            registry: self.registry.clone(),
            cache: self.cache.clone(),
            admission: self.admission,
            images: self.images.clone(),
        })
    }

    // === create ===

    /// Decodes an object for `kind`, checking its apiVersion/kind and unknown fields.
    fn decode_object(
        &self,
        kind: &Kind,
        ctx: &Ctx,
        v: Value,
        warnings: &mut Vec<String>,
    ) -> ApiResult<Value> {
        if !v.is_object() {
            return Err(ApiError::bad_request(format!(
                "Object 'Kind' is missing in '{v}'"
            )));
        }
        let k = v.get("kind").and_then(Value::as_str).unwrap_or_default();
        let av = v
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if k.is_empty() {
            return Err(ApiError::bad_request(format!(
                "Object 'Kind' is missing in '{}'",
                truncate(&v.to_string())
            )));
        }
        if av.is_empty() {
            return Err(ApiError::bad_request(format!(
                "Object 'apiVersion' is missing in '{}'",
                truncate(&v.to_string())
            )));
        }
        if k != kind.kind || av != kind.api_version() {
            if k != kind.kind {
                return Err(ApiError::bad_request(format!(
                    "the kind in the data ({k}) does not match the expected kind ({}) for resource {}",
                    kind.kind,
                    kind.qualified()
                )));
            }
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({})",
                kind.api_version()
            )));
        }
        let out = decode_checked(kind, ctx, v, warnings)?;
        Ok(convert::to_storage(kind, out))
    }

    /// The namespace of a new object must exist and not be terminating. Read from the watch
    /// cache, and from the store only when the cache has not seen it yet (just created).
    async fn check_namespace(&self, kind: &Kind, ns: Option<&str>) -> ApiResult<()> {
        let Some(ns) = ns.filter(|_| kind.namespaced) else {
            return Ok(());
        };
        let key = format!("/registry/core/namespaces/{ns}");
        let raw = match self.cache.get(&key) {
            Some(raw) => raw,
            None => match self.store.get(&key, 0).await? {
                Some(kv) => Arc::from(kv.value),
                None => return Err(ApiError::not_found_gr("", "namespaces", ns)),
            },
        };
        let v: Value = serde_json::from_slice(&raw).unwrap_or_default();
        if meta(&v).get("deletionTimestamp").is_some() {
            let mut e = ApiError::forbidden(format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            ));
            e.details = Some(
                json!({"causes": [{"reason": "NamespaceTerminating", "message": format!("namespace {ns} is being terminated"), "field": "metadata.namespace"}]}),
            );
            return Err(e);
        }
        Ok(())
    }

    pub async fn create(&self, t: &Target, ctx: &Ctx<'_>) -> ApiResult<Reply> {
        let mut warnings = Vec::new();
        let v = decode_body(ctx.content_type, &ctx.body)?;
        let mut obj = self.decode_object(&t.kind, ctx, v, &mut warnings)?;
        let ns = t.namespace.clone();
        self.prepare_create(&t.kind, ns.as_deref(), &mut obj)?;
        let name = name_of(&obj).to_string();
        rules::default(&t.kind, &mut obj);
        crate::crd::default_and_prune(&t.kind, &mut obj);
        let errs = self.validate(&t.kind, &obj, None);
        if !errs.is_empty() {
            return Err(ApiError::invalid(&t.kind, &name, errs));
        }
        if let Some(g) = ctx.guard {
            g(&t.kind, &mut obj, true)?;
        }
        self.check_namespace(&t.kind, ns.as_deref()).await?;
        let _allocated = self.admit_create(&t.kind, &mut obj).await?;
        self.images
            .admit(self, &t.kind, &mut obj, &mut warnings)
            .await?;
        crate::podsecurity::admit(self, &t.kind, &obj, &mut warnings)?;
        if !ctx.dry_run() {
            crate::quota::admit(self, &t.kind, &obj).await?;
        }
        apply::record_update(
            None,
            &mut obj,
            &ctx.manager(),
            &t.kind.api_version(),
            None,
            &now(),
        );
        let key = t.kind.key(ns.as_deref(), &name);
        let rev = if ctx.dry_run() {
            0
        } else {
            match self
                .store
                .create(&key, serde_json::to_vec(&obj).unwrap())
                .await
            {
                Ok(r) => r,
                Err(store::StoreError::AlreadyExists(_)) => {
                    return Err(ApiError::already_exists(&t.kind, &name))
                }
                Err(e) => return Err(e.into()),
            }
        };
        let out = self.out(&t.kind, obj, rev);
        let mut r = Reply::json(201, &self.render_one(&t.kind, ctx, out));
        r.warnings = warnings;
        Ok(r)
    }

    fn prepare_create(&self, kind: &Kind, ns: Option<&str>, obj: &mut Value) -> ApiResult<()> {
        let m = meta_mut(obj);
        match (ns, m.get("namespace").and_then(Value::as_str)) {
            (Some(u), Some(b)) if kind.namespaced && !b.is_empty() && u != b => {
                return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"));
            }
            _ => {}
        }
        if kind.namespaced {
            if let Some(ns) = ns {
                m.insert("namespace".into(), json!(ns));
            }
        } else {
            m.remove("namespace");
        }
        let has_name = m
            .get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        if !has_name {
            if let Some(g) = m
                .get("generateName")
                .and_then(Value::as_str)
                .filter(|g| !g.is_empty())
            {
                let base: String = g.chars().take(58).collect();
                m.insert("name".into(), json!(format!("{base}{}", random_suffix(5))));
            }
        }
        m.insert("uid".into(), json!(new_uid()));
        m.insert("creationTimestamp".into(), json!(now()));
        m.remove("resourceVersion");
        m.remove("deletionTimestamp");
        m.remove("deletionGracePeriodSeconds");
        m.remove("managedFields");
        m.remove("selfLink");
        if has_generation(kind) {
            m.insert("generation".into(), json!(1));
        } else {
            m.remove("generation");
        }
        if kind.status
            && kind.kind != "Pod"
            && kind.kind != "Namespace"
            && kind.kind != "Service"
            && kind.crd_schema.is_none()
        {
            // Status is the system's to write; built-in kinds show it empty until then.
            if let Some(o) = obj.as_object_mut() {
                o.insert("status".into(), json!({}));
            }
        }
        // A pod's status, and a custom resource's with a status subresource, are the
        // system's to write.
        if (kind.kind == "Pod" && kind.group.is_empty())
            || (kind.status && kind.crd_schema.is_some())
        {
            if let Some(o) = obj.as_object_mut() {
                o.remove("status");
            }
        }
        if kind.kind == "Job" && kind.group == "batch" {
            default_job_selector(obj);
        }
        Ok(())
    }

    fn validate(&self, kind: &Kind, obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
        let mut errs = rules::validate(kind, obj, old);
        errs.extend(crate::crd::validate(kind, obj));
        if kind.group.is_empty() && kind.kind == "Namespace" {
            errs.extend(crate::podsecurity::validate_namespace(obj));
        }
        errs.extend(crate::imagepolicy::validate(kind, obj));
        if kind.group == "certificates.k8s.io" && old.is_none() {
            errs.extend(crate::csr::validate(obj));
        }
        if let Some(o) = old {
            if meta(o).get("uid") != meta(obj).get("uid") && meta(obj).get("uid").is_some() {
                errs.push(FieldError::invalid_raw(
                    "metadata.uid",
                    meta(obj)["uid"].to_string(),
                    "field is immutable",
                ));
            }
        }
        errs
    }

    /// What the API server itself fills in on create (Service cluster IPs).
    /// Returns the allocation lock when it holds one, to be kept until the object is stored.
    async fn admit_create(
        &self,
        kind: &Kind,
        obj: &mut Value,
    ) -> ApiResult<Option<tokio::sync::MutexGuard<'static, ()>>> {
        if kind.group.is_empty() && kind.kind == "Service" {
            return crate::services::allocate(self, obj).await.map(Some);
        }
        if kind.group.is_empty() && kind.kind == "Pod" {
            crate::serviceaccount::admit_pod(self, obj).await?;
            crate::priority::admit_pod(self, obj).await?;
            crate::limitrange::admit_pod(self, obj)?;
            // The QoS class reflects the resources LimitRanger filled in.
            let qos = rules::qos_class(obj.get("spec").unwrap_or(&Value::Null));
            if let Some(st) = obj.get_mut("status").and_then(Value::as_object_mut) {
                st.insert("qosClass".into(), json!(qos));
            }
            self.default_toleration_seconds(obj);
        }
        if kind.group.is_empty() && kind.kind == "PersistentVolumeClaim" {
            crate::limitrange::admit_claim(self, obj)?;
        }
        if kind.group == "scheduling.k8s.io" && kind.kind == "PriorityClass" {
            crate::priority::admit_class(self, kind, obj, true).await?;
        }
        if kind.group.is_empty() && kind.kind == "Node" {
            return crate::services::allocate_pod_cidr(self, obj)
                .await
                .map(Some);
        }
        Ok(None)
    }

    /// DefaultTolerationSeconds: a pod that does not tolerate the `not-ready` or
    /// `unreachable` NoExecute taints tolerates them for the configured time, so its
    /// controller replaces it elsewhere that long after its node fails.
    fn default_toleration_seconds(&self, obj: &mut Value) {
        let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
            return;
        };
        let tols = spec.entry("tolerations").or_insert_with(|| json!([]));
        let Some(list) = tols.as_array_mut() else {
            return;
        };
        for (key, secs) in [
            (
                "node.kubernetes.io/not-ready",
                self.admission.not_ready_toleration_seconds,
            ),
            (
                "node.kubernetes.io/unreachable",
                self.admission.unreachable_toleration_seconds,
            ),
        ] {
            // As Kubernetes: any toleration of the taint's key with the NoExecute effect
            // (or every effect), or one of every key, counts.
            let tolerated = list.iter().any(|t| {
                let effect = t.get("effect").and_then(Value::as_str).unwrap_or("");
                let k = t.get("key").and_then(Value::as_str).unwrap_or("");
                let exists = t.get("operator").and_then(Value::as_str) == Some("Exists");
                (effect.is_empty() || effect == "NoExecute")
                    && (k == key || (k.is_empty() && exists))
            });
            if !tolerated {
                list.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": secs}));
            }
        }
    }

    // === update, patch ===

    pub async fn update(&self, t: &Target, ctx: &Ctx<'_>) -> ApiResult<Reply> {
        let mut warnings = Vec::new();
        let v = decode_body(ctx.content_type, &ctx.body)?;
        let name = t.name.clone().unwrap();
        if t.sub.as_deref() == Some("scale") {
            return self.update_scale(t, ctx, ScaleChange::Replace(v)).await;
        }
        let new = self.decode_object(&t.kind, ctx, v, &mut warnings)?;
        let body_name = name_of(&new).to_string();
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let precondition = meta(&new)
            .get("resourceVersion")
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty())
            .map(String::from);
        let mut r = self
            .write(
                t,
                ctx,
                precondition.as_deref(),
                |_cur| Ok(new.clone()),
                false,
            )
            .await?;
        r.warnings.extend(warnings);
        Ok(r)
    }

    pub async fn patch(&self, t: &Target, ctx: &Ctx<'_>) -> ApiResult<Reply> {
        let ct = ctx.media_type().to_string();
        let allowed = [
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
            "application/apply-patch+yaml",
            "application/apply-patch+cbor",
        ];
        if !allowed.contains(&ct.as_str()) {
            return Err(ApiError::unsupported_media(&allowed));
        }
        if ct == "application/strategic-merge-patch+json" && t.kind.crd_schema.is_some() {
            return Err(ApiError::unsupported_media(&[
                "application/json-patch+json",
                "application/merge-patch+json",
                "application/apply-patch+yaml",
            ]));
        }
        let patch_v = decode_body(&ct, &ctx.body)?;
        if ct != "application/json-patch+json" && !patch_v.is_object() {
            return Err(ApiError::bad_request(format!("couldn't get version/kind; json parse error: json: cannot unmarshal {} into Go value of type struct {{ APIVersion string \"json:\\\"apiVersion,omitempty\\\"\"; Kind string \"json:\\\"kind,omitempty\\\"\" }}", json_type(&patch_v))));
        }
        if t.sub.as_deref() == Some("scale") {
            return self
                .update_scale(t, ctx, ScaleChange::Patch(ct, patch_v))
                .await;
        }
        let precondition = if ct == APPLY_PATCH {
            None
        } else {
            patch_v
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .filter(|r| !r.is_empty())
                .map(String::from)
        };
        let apply_mode = ct == APPLY_PATCH;
        let mut warnings = Vec::new();
        if apply_mode {
            if ctx.q("fieldManager").is_none_or(str::is_empty) {
                return Err(ApiError::bad_request(
                    "PATCH, application/apply-patch+yaml requires fieldManager to be set",
                ));
            }
            // Unknown fields are reported on the applied configuration.
            let _ = self.decode_object(&t.kind, ctx, patch_v.clone(), &mut warnings)?;
        }
        let kind = t.kind.clone();
        let force = ctx.flag("force");
        let part = if t.sub.as_deref() == Some("status") {
            apply::Part::Status
        } else {
            apply::Part::Main
        };
        let manager = ctx.manager();
        let mut r = self
            .write(
                t,
                ctx,
                precondition.as_deref(),
                |cur| {
                    let mut base = cur.cloned().unwrap_or(Value::Null);
                    match ct.as_str() {
                        "application/json-patch+json" => {
                            patch::json_patch(&mut base, &patch_v).map_err(json_patch_error)?;
                        }
                        "application/merge-patch+json" => patch::merge_patch(&mut base, &patch_v),
                        "application/strategic-merge-patch+json" => {
                            patch::strategic_merge(&mut base, &patch_v)
                                .map_err(ApiError::bad_request)?
                        }
                        _ => {
                            let served = cur.map(|c| self.out(&kind, c.clone(), 0));
                            let applied = apply::apply_part(
                                served.as_ref(),
                                &patch_v,
                                &manager,
                                &kind.api_version(),
                                force,
                                &now(),
                                part,
                            )
                            .map_err(|cs| conflict_error(&kind, name_of(&patch_v), cs))?;
                            return Ok(applied);
                        }
                    }
                    Ok(self.out(&kind, base, 0))
                },
                apply_mode && part == apply::Part::Main,
            )
            .await?;
        r.warnings.extend(warnings);
        Ok(r)
    }

    /// The read-modify-write behind update and patch: `change` gets the current object in
    /// the served version (None if it does not exist; only apply creates) and returns the
    /// new one. Retries on a lost compare-and-swap unless the client gave a precondition.
    async fn write(
        &self,
        t: &Target,
        ctx: &Ctx<'_>,
        precondition: Option<&str>,
        change: impl Fn(Option<&Value>) -> ApiResult<Value>,
        may_create: bool,
    ) -> ApiResult<Reply> {
        let kind = &t.kind;
        let name = t.name.clone().unwrap();
        let ns = t.namespace.as_deref();
        let key = kind.key(ns, &name);
        let sub = t.sub.as_deref();
        let mut warnings: Vec<String> = Vec::new();
        for _attempt in 0..8 {
            let cur = self.store.get(&key, 0).await?;
            let Some(cur) = cur else {
                if !may_create {
                    return Err(ApiError::not_found(kind, &name));
                }
                let mut new = change(None)?;
                let managed = meta(&new).get("managedFields").cloned();
                new = convert::to_storage(kind, new);
                self.prepare_create(kind, ns, &mut new)?;
                meta_mut(&mut new).insert("name".into(), json!(name));
                if let Some(mf) = managed {
                    meta_mut(&mut new).insert("managedFields".into(), mf);
                }
                rules::default(kind, &mut new);
                crate::crd::default_and_prune(kind, &mut new);
                let errs = self.validate(kind, &new, None);
                if !errs.is_empty() {
                    return Err(ApiError::invalid(kind, &name, errs));
                }
                if let Some(g) = ctx.guard {
                    g(kind, &mut new, true)?;
                }
                self.check_namespace(kind, ns).await?;
                let _allocated = self.admit_create(kind, &mut new).await?;
                self.images
                    .admit(self, kind, &mut new, &mut warnings)
                    .await?;
                crate::podsecurity::admit(self, kind, &new, &mut warnings)?;
                if !ctx.dry_run() {
                    crate::quota::admit(self, kind, &new).await?;
                }
                let rev = if ctx.dry_run() {
                    0
                } else {
                    match self
                        .store
                        .create(&key, serde_json::to_vec(&new).unwrap())
                        .await
                    {
                        Ok(r) => r,
                        Err(store::StoreError::AlreadyExists(_)) => continue,
                        Err(e) => return Err(e.into()),
                    }
                };
                let out = self.out(kind, new, rev);
                return Ok(with_warnings(
                    &warnings,
                    Reply::json(201, &self.render_one(kind, ctx, out)),
                ));
            };
            let old: Value = serde_json::from_slice(&cur.value)
                .map_err(|e| ApiError::internal(e.to_string()))?;
            if let Some(p) = precondition {
                if p != cur.mod_revision.to_string() {
                    return Err(ApiError::conflict(kind, &name));
                }
            }
            let served_old = self.out(kind, old.clone(), cur.mod_revision);
            let new_served = change(Some(&served_old))?;
            if !new_served.is_object() {
                return Err(ApiError::invalid(
                    kind,
                    &name,
                    vec![FieldError::invalid_raw(
                        "",
                        new_served.to_string(),
                        "the object must be a JSON object",
                    )],
                ));
            }
            // The result goes through the codec of the served version: types checked, unknown
            // fields pruned and reported as fieldValidation asks (apply reported them already).
            let mut ignored = Vec::new();
            let apply_mode = ctx.media_type() == APPLY_PATCH;
            // A binding is the server's own change of a stored pod: nothing to decode.
            let binding = sub == Some("binding");
            let decoded = if binding {
                new_served
            } else {
                decode_checked(
                    kind,
                    ctx,
                    new_served,
                    if apply_mode {
                        &mut ignored
                    } else {
                        &mut warnings
                    },
                )?
            };
            let new = convert::to_storage(kind, decoded);
            let mut new = self.merge_update(kind, sub, &old, new)?;
            rules::default(kind, &mut new);
            crate::crd::default_and_prune(kind, &mut new);
            let errs = self.validate(kind, &new, Some(&old));
            if !errs.is_empty() {
                return Err(ApiError::invalid(kind, &name, errs));
            }
            if let Some(g) = ctx.guard {
                g(kind, &mut new, false)?;
            }
            // As Kubernetes' binding storage, which updates the pod without a field manager.
            if ctx.media_type() != APPLY_PATCH && !binding {
                apply::record_update(
                    Some(&old),
                    &mut new,
                    &ctx.manager(),
                    &kind.api_version(),
                    sub,
                    &now(),
                );
            }
            if apply::same_ignoring_times(&new, &old) {
                // Nothing changed but managedFields timestamps: no new revision, no event.
                let out = self.out(kind, old, cur.mod_revision);
                let mut r = Reply::json(200, &self.render_one(kind, ctx, out));
                r.warnings = warnings;
                return Ok(r);
            }
            // An object being deleted goes once its last finalizer is removed and its grace
            // period is over (Kubernetes' shouldDeleteDuringUpdate); a namespace also waits
            // for its spec.finalizers.
            let finalizers_empty = meta(&new)
                .get("finalizers")
                .and_then(Value::as_array)
                .is_none_or(|f| f.is_empty());
            let grace_over = meta(&old)
                .get("deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                == 0;
            let ns_done = !(kind.kind == "Namespace" && kind.group.is_empty())
                || new
                    .pointer("/spec/finalizers")
                    .and_then(Value::as_array)
                    .is_none_or(|f| f.is_empty());
            let deleting = meta(&new).get("deletionTimestamp").is_some()
                && finalizers_empty
                && grace_over
                && ns_done;
            if ctx.dry_run() {
                let out = self.out(kind, new, cur.mod_revision);
                return Ok(with_warnings(
                    &warnings,
                    Reply::json(200, &self.render_one(kind, ctx, out)),
                ));
            }
            let written = if deleting {
                self.store
                    .delete(&key, Some(cur.mod_revision))
                    .await
                    .map(|(rev, _)| rev)
            } else {
                self.store
                    .update(&key, serde_json::to_vec(&new).unwrap(), cur.mod_revision)
                    .await
            };
            match written {
                Ok(rev) => {
                    let out = self.out(kind, new, rev);
                    return Ok(with_warnings(
                        &warnings,
                        Reply::json(200, &self.render_one(kind, ctx, out)),
                    ));
                }
                Err(store::StoreError::Conflict { .. }) if precondition.is_none() => continue,
                Err(store::StoreError::Conflict { .. }) => {
                    return Err(ApiError::conflict(kind, &name))
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::conflict(kind, &name))
    }

    /// Keeps what a write may not change: identity, timestamps, and (main resource vs
    /// status subresource) the other half; bumps the generation when the spec changed.
    fn merge_update(
        &self,
        kind: &Kind,
        sub: Option<&str>,
        old: &Value,
        mut new: Value,
    ) -> ApiResult<Value> {
        if sub == Some("status") {
            let mut out = old.clone();
            match new.get("status") {
                Some(s) => out["status"] = s.clone(),
                None => {
                    if let Some(o) = out.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
            // Kubernetes lets status writes change nothing else but metadata's managedFields.
            if let Some(mf) = meta(&new).get("managedFields").cloned() {
                meta_mut(&mut out).insert("managedFields".into(), mf);
            }
            return Ok(out);
        }
        if sub == Some("approval") {
            // certificatesigningrequests/approval: only the conditions change.
            let mut out = old.clone();
            out["status"]["conditions"] = new
                .pointer("/status/conditions")
                .cloned()
                .unwrap_or(json!([]));
            return Ok(out);
        }
        if sub == Some("binding") {
            // pods/binding: nodeName and the PodScheduled condition, set from the stored pod.
            let nm = meta_mut(&mut new);
            nm.remove("resourceVersion");
            nm.remove("selfLink");
            return Ok(new);
        }
        if sub == Some("finalize") {
            // namespaces/finalize changes spec.finalizers and nothing else.
            let mut out = old.clone();
            let f = new
                .pointer("/spec/finalizers")
                .cloned()
                .unwrap_or(json!([]));
            if !out.get("spec").is_some_and(Value::is_object) {
                out["spec"] = json!({});
            }
            out["spec"]["finalizers"] = f;
            return Ok(out);
        }
        if !new.is_object() {
            return Err(ApiError::bad_request("the object is not a JSON object"));
        }
        let om = meta(old).clone();
        let nm = meta_mut(&mut new);
        for k in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "namespace",
        ] {
            match om.get(k) {
                Some(v) => nm.insert(k.into(), v.clone()),
                None => nm.remove(k),
            };
        }
        nm.insert(
            "name".into(),
            om.get("name").cloned().unwrap_or(Value::Null),
        );
        nm.remove("resourceVersion");
        nm.remove("selfLink");
        if !nm.contains_key("managedFields") {
            if let Some(mf) = om.get("managedFields") {
                nm.insert("managedFields".into(), mf.clone());
            }
        }
        if kind.status {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    new.as_object_mut().unwrap().remove("status");
                }
            }
        }
        if kind.group.is_empty() && kind.kind == "Service" {
            crate::services::keep_allocations(old, &mut new);
        }
        if has_generation(kind) {
            let strip = |v: &Value| {
                let mut c = v.clone();
                if let Some(o) = c.as_object_mut() {
                    o.remove("metadata");
                    o.remove("status");
                }
                c
            };
            if strip(old) != strip(&new) {
                let g = om.get("generation").and_then(Value::as_i64).unwrap_or(0) + 1;
                meta_mut(&mut new).insert("generation".into(), json!(g));
            }
        }
        Ok(new)
    }

    async fn update_scale(
        &self,
        t: &Target,
        ctx: &Ctx<'_>,
        change: ScaleChange,
    ) -> ApiResult<Reply> {
        let kind = t.kind.clone();
        let paths = kind
            .scale
            .clone()
            .ok_or_else(|| ApiError::not_found(&kind, t.name.as_deref().unwrap_or_default()))?;
        let inner = Target {
            kind: kind.clone(),
            namespace: t.namespace.clone(),
            name: t.name.clone(),
            sub: None,
        };
        let precondition = match &change {
            ScaleChange::Replace(v) => v
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .filter(|r| !r.is_empty())
                .map(String::from),
            ScaleChange::Patch(..) => None,
        };
        let reply = self
            .write(
                &inner,
                ctx,
                precondition.as_deref(),
                |cur| {
                    let cur = cur.unwrap();
                    let mut scale = scale_of(&kind, cur)?;
                    match &change {
                        ScaleChange::Replace(v) => scale = v.clone(),
                        ScaleChange::Patch(ct, p) => match ct.as_str() {
                            "application/json-patch+json" => {
                                patch::json_patch(&mut scale, p).map_err(json_patch_error)?
                            }
                            "application/strategic-merge-patch+json" => {
                                patch::strategic_merge(&mut scale, p)
                                    .map_err(ApiError::bad_request)?
                            }
                            _ => patch::merge_patch(&mut scale, p),
                        },
                    }
                    let replicas = scale
                        .pointer("/spec/replicas")
                        .and_then(Value::as_i64)
                        .unwrap_or(0);
                    if replicas < 0 {
                        return Err(ApiError::invalid(
                            &kind,
                            t.name.as_deref().unwrap_or_default(),
                            vec![FieldError::invalid_raw(
                                "spec.replicas",
                                replicas.to_string(),
                                "must be greater than or equal to 0",
                            )],
                        ));
                    }
                    let mut new = cur.clone();
                    kinds::set_json_path(&mut new, &paths.spec_replicas, json!(replicas));
                    Ok(new)
                },
                false,
            )
            .await?;
        let obj = match reply.body {
            Body::Full(b) => serde_json::from_slice::<Value>(&b).unwrap_or_default(),
            Body::Stream(_) => Value::Null,
        };
        Ok(Reply::json(200, &scale_of(&kind, &obj)?))
    }

    // === delete ===

    pub async fn delete(&self, t: &Target, ctx: &Ctx<'_>) -> ApiResult<Reply> {
        let opts = delete_options(ctx)?;
        let name = t.name.clone().unwrap();
        let (reply, _) = self
            .delete_one(&t.kind, t.namespace.as_deref(), &name, &opts, ctx)
            .await?;
        Ok(reply)
    }

    async fn delete_one(
        &self,
        kind: &Arc<Kind>,
        ns: Option<&str>,
        name: &str,
        opts: &Value,
        ctx: &Ctx<'_>,
    ) -> ApiResult<(Reply, Value)> {
        let key = kind.key(ns, name);
        // kubectl sends dryRun in the DeleteOptions body, not the query.
        let dry = ctx.dry_run()
            || opts
                .get("dryRun")
                .and_then(Value::as_array)
                .is_some_and(|d| d.iter().any(|x| x == "All"));
        for _ in 0..8 {
            let Some(cur) = self.store.get(&key, 0).await? else {
                return Err(ApiError::not_found(kind, name));
            };
            let mut obj: Value = serde_json::from_slice(&cur.value)
                .map_err(|e| ApiError::internal(e.to_string()))?;
            if let Some(uid) = opts.pointer("/preconditions/uid").and_then(Value::as_str) {
                let actual = meta(&obj)
                    .get("uid")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if uid != actual {
                    return Err(ApiError::conflict_msg(kind, name, &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}")));
                }
            }
            if let Some(rv) = opts
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
            {
                if rv != cur.mod_revision.to_string() {
                    return Err(ApiError::conflict_msg(kind, name, &format!("Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}", cur.mod_revision)));
                }
            }
            let policy = opts
                .get("propagationPolicy")
                .and_then(Value::as_str)
                .map(String::from)
                .or_else(
                    || match opts.get("orphanDependents").and_then(Value::as_bool) {
                        Some(true) => Some("Orphan".into()),
                        Some(false) => Some("Background".into()),
                        None => None,
                    },
                );
            if let Some(p) = &policy {
                if !["Orphan", "Background", "Foreground"].contains(&p.as_str()) {
                    return Err(ApiError::invalid(
                        kind,
                        name,
                        vec![FieldError::not_supported(
                            "propagationPolicy",
                            p,
                            &["Foreground", "Background", "Orphan", "nil"],
                        )],
                    ));
                }
            }
            let is_pod = kind.kind == "Pod" && kind.group.is_empty();
            let is_ns = kind.kind == "Namespace" && kind.group.is_empty();
            let grace = opts.get("gracePeriodSeconds").and_then(Value::as_i64);
            let m = meta_mut(&mut obj);
            let mut finalizers: Vec<Value> = m
                .get("finalizers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let mut changed = false;
            match policy.as_deref() {
                Some("Orphan") if !finalizers.contains(&json!("orphan")) => {
                    finalizers.push(json!("orphan"));
                    changed = true;
                }
                Some("Foreground") if !finalizers.contains(&json!("foregroundDeletion")) => {
                    finalizers.push(json!("foregroundDeletion"));
                    changed = true;
                }
                _ => {}
            }
            let bound_pod = is_pod
                && obj
                    .pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .is_some_and(|n| !n.is_empty())
                && obj
                    .pointer("/status/phase")
                    .and_then(Value::as_str)
                    .is_none_or(|p| p != "Succeeded" && p != "Failed");
            let pod_grace = if bound_pod {
                let g = grace
                    .or_else(|| {
                        obj.pointer("/spec/terminationGracePeriodSeconds")
                            .and_then(Value::as_i64)
                    })
                    .unwrap_or(30);
                Some(g.max(0))
            } else {
                None
            };
            let graceful = pod_grace.is_some_and(|g| g > 0);
            let m = meta_mut(&mut obj);
            if changed {
                m.insert("finalizers".into(), Value::Array(finalizers.clone()));
            }
            if !finalizers.is_empty() || graceful || is_ns {
                // Marked for deletion; finalizers (or the node, or the namespace cleaner) finish it.
                let already = m.contains_key("deletionTimestamp");
                let g = pod_grace.unwrap_or(0);
                if !already
                    || m.get("deletionGracePeriodSeconds")
                        .and_then(Value::as_i64)
                        .is_some_and(|old| g < old)
                {
                    let when = now_plus(if graceful { g } else { 0 });
                    m.insert("deletionTimestamp".into(), json!(when));
                    m.insert("deletionGracePeriodSeconds".into(), json!(g));
                    changed = true;
                }
                if is_ns && obj.pointer("/status/phase") != Some(&json!("Terminating")) {
                    obj["status"]["phase"] = json!("Terminating");
                    changed = true;
                }
                let rev = if changed && !dry {
                    match self
                        .store
                        .update(&key, serde_json::to_vec(&obj).unwrap(), cur.mod_revision)
                        .await
                    {
                        Ok(r) => r,
                        Err(store::StoreError::Conflict { .. }) => continue,
                        Err(e) => return Err(e.into()),
                    }
                } else {
                    cur.mod_revision
                };
                if is_ns && !dry {
                    crate::namespaces::finalize_later(self.clone_handle(), name.to_string());
                }
                let out = self.out(kind, obj, rev);
                return Ok((Reply::json(200, &out), out));
            }
            if dry {
                let out = self.out(kind, obj, cur.mod_revision);
                return Ok((Reply::json(200, &out), out));
            }
            match self.store.delete(&key, Some(cur.mod_revision)).await {
                Ok((rev, _)) => {
                    let out = self.out(kind, obj, rev);
                    return Ok((Reply::json(200, &out), out));
                }
                Err(store::StoreError::Conflict { .. }) => continue,
                Err(store::StoreError::NotFound(_)) => return Err(ApiError::not_found(kind, name)),
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::conflict(kind, name))
    }

    pub async fn delete_collection(&self, t: &Target, ctx: &Ctx<'_>) -> ApiResult<Reply> {
        let opts = delete_options(ctx)?;
        let labels = LabelSelector::parse(ctx.q("labelSelector").unwrap_or_default())
            .map_err(ApiError::bad_request)?;
        let fields = FieldSelector::parse(ctx.q("fieldSelector").unwrap_or_default(), &t.kind)
            .map_err(ApiError::bad_request)?;
        let list = self
            .store
            .list(store::ListOptions {
                prefix: &t.kind.prefix(t.namespace.as_deref()),
                ..Default::default()
            })
            .await?;
        let mut items = Vec::new();
        for kv in list.kvs {
            let v: Value = serde_json::from_slice(&kv.value).unwrap_or_default();
            if !(labels.matches(meta(&v).get("labels").and_then(Value::as_object))
                && fields.matches(&v))
            {
                continue;
            }
            let ns = meta(&v)
                .get("namespace")
                .and_then(Value::as_str)
                .map(String::from);
            match self
                .delete_one(&t.kind, ns.as_deref(), name_of(&v), &opts, ctx)
                .await
            {
                Ok((_, out)) => items.push(out),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let rev = self.store.current_revision().await?;
        Ok(Reply::json(
            200,
            &json!({"kind": t.kind.list_kind, "apiVersion": t.kind.api_version(), "metadata": {"resourceVersion": rev.to_string()}, "items": items}),
        ))
    }

    /// pods/binding: sets the pod's node, once.
    pub async fn bind(&self, t: &Target, ctx: &Ctx<'_>) -> ApiResult<Reply> {
        let b = decode_body(ctx.content_type, &ctx.body)?;
        let node = b
            .pointer("/target/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if node.is_empty() {
            return Err(ApiError::invalid(
                &t.kind,
                t.name.as_deref().unwrap_or_default(),
                vec![FieldError::required("target.name", "")],
            ));
        }
        let inner = Target {
            kind: t.kind.clone(),
            namespace: t.namespace.clone(),
            name: t.name.clone(),
            sub: Some("binding".into()),
        };
        let name = t.name.clone().unwrap_or_default();
        let kind = t.kind.clone();
        let at = now();
        self.write(
            &inner,
            ctx,
            None,
            |cur| {
                let mut v = cur.unwrap().clone();
                if v.pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .is_some_and(|n| !n.is_empty())
                {
                    return Err(ApiError::conflict_msg(
                        &kind,
                        &name,
                        &format!(
                            "pod {name} is already assigned to node {:?}",
                            v["spec"]["nodeName"].as_str().unwrap_or_default()
                        ),
                    ));
                }
                v["spec"]["nodeName"] = json!(node);
                // PodScheduled becomes True, as Kubernetes' binding sets it.
                let scheduled = json!({"type": "PodScheduled", "status": "True",
                    "lastProbeTime": null, "lastTransitionTime": at});
                if !v.get("status").is_some_and(Value::is_object) {
                    v["status"] = json!({});
                }
                let conds = v["status"]
                    .as_object_mut()
                    .unwrap()
                    .entry("conditions")
                    .or_insert_with(|| json!([]));
                if let Some(list) = conds.as_array_mut() {
                    list.retain(|c| c.get("type").and_then(Value::as_str) != Some("PodScheduled"));
                    list.insert(0, scheduled);
                }
                Ok(v)
            },
            false,
        )
        .await?;
        Ok(Reply::json(
            201,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        ))
    }
}

enum ScaleChange {
    Replace(Value),
    Patch(String, Value),
}

fn has_generation(kind: &Kind) -> bool {
    kind.crd_schema.is_some()
        || matches!(
            kind.group.as_str(),
            "apps"
                | "batch"
                | "autoscaling"
                | "policy"
                | "networking.k8s.io"
                | "apiextensions.k8s.io"
        )
        || (kind.group.is_empty() && (kind.kind == "ReplicationController" || kind.kind == "Pod"))
}

fn default_job_selector(obj: &mut Value) {
    let uid = meta(obj).get("uid").cloned().unwrap_or_default();
    if obj.pointer("/spec/manualSelector") == Some(&json!(true)) {
        return;
    }
    if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
        spec.insert(
            "selector".into(),
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
        );
    }
    let name = meta(obj).get("name").cloned().unwrap_or_default();
    if let Some(t) = obj.pointer_mut("/spec/template") {
        if !t.get("metadata").is_some_and(Value::is_object) {
            t["metadata"] = json!({});
        }
        let labels = t["metadata"]
            .as_object_mut()
            .unwrap()
            .entry("labels")
            .or_insert(json!({}));
        if let Some(l) = labels.as_object_mut() {
            l.insert("batch.kubernetes.io/controller-uid".into(), uid.clone());
            l.insert("batch.kubernetes.io/job-name".into(), name.clone());
            l.insert("controller-uid".into(), uid);
            l.insert("job-name".into(), name);
        }
    }
}

fn delete_options(ctx: &Ctx) -> ApiResult<Value> {
    let mut opts = if ctx.body.iter().any(|b| !b.is_ascii_whitespace()) {
        decode_body(ctx.content_type, &ctx.body)?
    } else {
        json!({})
    };
    if !opts.is_object() {
        return Err(ApiError::bad_request("DeleteOptions must be an object"));
    }
    for k in ["gracePeriodSeconds"] {
        if let Some(v) = ctx.q(k).and_then(|s| s.parse::<i64>().ok()) {
            opts[k] = json!(v);
        }
    }
    if let Some(p) = ctx.q("propagationPolicy") {
        opts["propagationPolicy"] = json!(p);
    }
    if let Some(o) = ctx.q("orphanDependents") {
        opts["orphanDependents"] = json!(o == "true");
    }
    Ok(opts)
}

fn now_plus(secs: i64) -> String {
    let n = timefmt::now_nanos();
    let t = n + secs as i128 * 1_000_000_000;
    crate::time_secs((t / 1_000_000_000) as i64)
}

/// Decodes an object through `kind`'s codec (types checked, unknown fields pruned) and
/// handles the unknown fields as `fieldValidation` asks: 400 with Strict, a warning with
/// Warn (the default), nothing with Ignore.
fn decode_checked(
    kind: &Kind,
    ctx: &Ctx,
    v: Value,
    warnings: &mut Vec<String>,
) -> ApiResult<Value> {
    let cannot = |why: String| {
        ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {why}",
            kind.kind, kind.version, kind.kind
        ))
    };
    let (out, unknown) = kind.codec.decode(v).map_err(cannot)?;
    if kind.crd_schema.is_none() && rules::bad_quantity(&out).is_some() {
        return Err(cannot("quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'".into()));
    }
    if !unknown.is_empty() {
        let list: Vec<String> = unknown
            .iter()
            .map(|u| format!("unknown field \"{u}\""))
            .collect();
        match ctx.q("fieldValidation").unwrap_or("Warn") {
            "Strict" => {
                return Err(cannot(format!(
                    "strict decoding error: {}",
                    list.join(", ")
                )))
            }
            "Ignore" => {}
            _ => warnings.extend(list),
        }
    }
    Ok(out)
}

fn with_warnings(warnings: &[String], mut r: Reply) -> Reply {
    r.warnings.extend_from_slice(warnings);
    r
}

/// 504 for a resourceVersion the server has not reached within the wait.
fn too_large_rv(wanted: i64, have: i64) -> ApiError {
    let mut e = ApiError::new(
        504,
        "Timeout",
        format!("Too large resource version: {wanted}, current: {have}"),
    );
    e.details = Some(
        json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}], "retryAfterSeconds": 1}),
    );
    e
}

/// A JSON patch that cannot be applied: 422 as Kubernetes' generic server response.
fn json_patch_error(e: String) -> ApiError {
    let mut err = ApiError::new(
        422,
        "Invalid",
        "the server rejected our request due to an error in our request",
    );
    err.details = Some(json!({"causes": [{"reason": "UnexpectedServerResponse", "message": e}]}));
    err
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Array(_) => "array",
        Value::String(_) => "string",
        Value::Number(_) => "number",
        Value::Bool(_) => "bool",
        _ => "null",
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(200).collect()
}

fn conflict_error(kind: &Kind, name: &str, cs: Vec<apply::Conflict>) -> ApiError {
    let n = cs.len();
    let mut by_manager: Vec<(String, String, Vec<String>)> = Vec::new();
    for c in &cs {
        match by_manager.iter_mut().find(|(m, _, _)| *m == c.manager) {
            Some(e) => e.2.push(c.field.clone()),
            None => by_manager.push((
                c.manager.clone(),
                c.api_version.clone(),
                vec![c.field.clone()],
            )),
        }
    }
    let msg = if n == 1 {
        format!(
            "Apply failed with 1 conflict: conflict with \"{}\" using {}: {}",
            cs[0].manager, cs[0].api_version, cs[0].field
        )
    } else {
        let mut s = format!("Apply failed with {n} conflicts: ");
        let parts: Vec<String> = by_manager
            .iter()
            .map(|(m, av, fs)| format!("conflicts with \"{m}\" using {av}:\n- {}", fs.join("\n- ")))
            .collect();
        s.push_str(&parts.join("\n"));
        s
    };
    let mut e = ApiError::new(409, "Conflict", msg);
    e.details = Some(json!({
        "name": name,
        "group": kind.group,
        "kind": kind.plural,
        "causes": cs.iter().map(|c| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{}\" using {}", c.manager, c.api_version), "field": c.field})).collect::<Vec<_>>(),
    }));
    e
}

pub fn parse_rv(rv: &str) -> ApiResult<i64> {
    rv.parse::<i64>()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))
}

fn encode_continue(rev: i64, start: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"v": "meta.k8s.io/v1", "rv": rev, "start": start}).to_string())
}

fn decode_continue(token: &str) -> ApiResult<(i64, String)> {
    use base64::Engine as _;
    let bad = || {
        ApiError::bad_request("continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)")
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    Ok((
        v.get("rv").and_then(Value::as_i64).ok_or_else(bad)?,
        v.get("start")
            .and_then(Value::as_str)
            .ok_or_else(bad)?
            .to_string(),
    ))
}

fn encode_status(e: &ApiError) -> Bytes {
    let mut b =
        serde_json::to_vec(&json!({"type": "ERROR", "object": e.to_status()})).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

fn stream_reply(rx: mpsc::Receiver<Bytes>) -> Reply {
    Reply {
        status: 200,
        content_type: "application/json".into(),
        body: Body::Stream(rx),
        warnings: Vec::new(),
    }
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u64::from_le_bytes(b)
}

/// The offset just after the `{` that opens the top-level `"metadata"` object of a JSON
/// object, found by a scan that tracks strings and nesting (no parsing, no allocation).
fn top_level_metadata(raw: &[u8]) -> Option<usize> {
    const KEY: &[u8] = b"\"metadata\"";
    let (mut depth, mut in_str, mut escaped) = (0usize, false, false);
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if in_str {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        match b {
            b'"' => {
                if depth == 1 && raw[i..].starts_with(KEY) {
                    let mut k = i + KEY.len();
                    while raw
                        .get(k)
                        .is_some_and(|c| c.is_ascii_whitespace() || *c == b':')
                    {
                        k += 1;
                    }
                    return (raw.get(k) == Some(&b'{')).then_some(k + 1);
                }
                in_str = true;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    None
}

/// The key prefix a list or watch reads, and whether it names one object exactly (a name
/// in the path, or a `metadata.name` field selector where the namespace is known).
fn scope(t: &Target, fields: &FieldSelector) -> (String, bool) {
    let name = t.name.as_deref().or(fields
        .name()
        .filter(|_| t.namespace.is_some() || !t.kind.namespaced));
    match name {
        Some(n) => (t.kind.key(t.namespace.as_deref(), n), true),
        None => (t.kind.prefix(t.namespace.as_deref()), false),
    }
}

/// Writes a stored object with `metadata.resourceVersion` set, without parsing it.
fn splice_resource_version(raw: &[u8], rev: i64, out: &mut Vec<u8>) {
    match top_level_metadata(raw) {
        Some(cut) => {
            out.extend_from_slice(&raw[..cut]);
            out.extend_from_slice(format!("\"resourceVersion\":\"{rev}\"").as_bytes());
            if raw[cut..].iter().find(|c| !c.is_ascii_whitespace()) != Some(&b'}') {
                out.push(b',');
            }
            out.extend_from_slice(&raw[cut..]);
        }
        None => out.extend_from_slice(raw),
    }
}

/// PartialObjectMetadata of an object.
pub fn partial(v: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta(v),
    })
}

/// The autoscaling/v1 Scale of an object with a scale subresource.
pub fn scale_of(kind: &Kind, obj: &Value) -> ApiResult<Value> {
    let Some(p) = &kind.scale else {
        return Err(ApiError::not_found(kind, name_of(obj)));
    };
    let m = meta(obj);
    let selector = p
        .label_selector
        .as_deref()
        .and_then(|path| kinds::json_path(obj, path))
        .map(|s| {
            if s.get("matchLabels").is_some() || s.get("matchExpressions").is_some() {
                LabelSelector::from_object(s)
                    .map(|l| l.to_string_form())
                    .unwrap_or_default()
            } else if let Some(o) = s.as_object() {
                let mut parts: Vec<String> = o
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect();
                parts.sort();
                parts.join(",")
            } else {
                s.as_str().unwrap_or_default().to_string()
            }
        });
    let mut status = json!({"replicas": kinds::json_path(obj, &p.status_replicas).and_then(Value::as_i64).unwrap_or(0)});
    if let Some(s) = selector {
        status["selector"] = json!(s);
    }
    let mut md = json!({"name": m.get("name"), "uid": m.get("uid"), "resourceVersion": m.get("resourceVersion"), "creationTimestamp": m.get("creationTimestamp")});
    if let Some(ns) = m.get("namespace") {
        md["namespace"] = ns.clone();
    }
    Ok(json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": md,
        "spec": {"replicas": kinds::json_path(obj, &p.spec_replicas).and_then(Value::as_i64).unwrap_or(0)},
        "status": status,
    }))
}

#[cfg(test)]
mod splice_tests {
    use super::*;

    #[test]
    fn resource_version_goes_into_the_top_level_metadata() {
        let cases = [
            (
                r#"{"apiVersion":"v1","metadata":{"name":"a"}}"#,
                r#"{"apiVersion":"v1","metadata":{"resourceVersion":"7","name":"a"}}"#,
            ),
            (
                r#"{"metadata":{}}"#,
                r#"{"metadata":{"resourceVersion":"7"}}"#,
            ),
            (
                r#"{"data":{"spec":{"metadata":{"x":1}}},"kind":"K","metadata":{"name":"b"}}"#,
                r#"{"data":{"spec":{"metadata":{"x":1}}},"kind":"K","metadata":{"resourceVersion":"7","name":"b"}}"#,
            ),
            (
                r#"{"a":"\"metadata\":{","metadata":{"n":1}}"#,
                r#"{"a":"\"metadata\":{","metadata":{"resourceVersion":"7","n":1}}"#,
            ),
        ];
        for (raw, want) in cases {
            let mut out = Vec::new();
            splice_resource_version(raw.as_bytes(), 7, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), want);
            let _: Value = serde_json::from_str(want).unwrap();
        }
    }
}
