//! The daemon's HTTP server: berth's own JSON API (documented in docs/api.md) under `/berth/v1`
//! on a unix socket, one thread per connection, every route a call into the engine.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::Duration;

use engine::engine::{Engine, EngineError};
use image::reference::Reference;
use serde_json::{json, Value};

use crate::http::{self, Body, Chunked, Head, ReadError};

/// The prefix of berth's API.
pub const PREFIX: &str = "/berth/v1";

/// Largest JSON body accepted.
const MAX_JSON: usize = 4 * 1024 * 1024;

/// An error answer: status and message.
pub(crate) struct Fail(pub(crate) u16, pub(crate) String, Option<i32>);

impl From<EngineError> for Fail {
    fn from(e: EngineError) -> Fail {
        let code = match &e {
            EngineError::Command { code, .. } => Some(*code),
            _ => None,
        };
        Fail(e.status(), e.to_string(), code)
    }
}

impl From<image::images::ImageError> for Fail {
    fn from(e: image::images::ImageError) -> Fail {
        EngineError::from(e).into()
    }
}

impl Fail {
    /// The message answered.
    #[cfg(test)]
    pub(crate) fn message(&self) -> &str {
        &self.1
    }
}

fn bad(msg: impl Into<String>) -> Fail {
    Fail(400, msg.into(), None)
}

type Reply = Result<Out, Fail>;

/// What a handler answers.
pub(crate) enum Out {
    Json(u16, Value),
    Empty(u16),
    /// The handler wrote the response itself (streams, hijacks); the connection closes.
    Done,
    /// The handler wrote a complete response with its length; the connection stays.
    Wrote,
}

/// Serves `listener` until the process ends.
pub fn serve(listener: UnixListener, engine: Arc<Engine>) {
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        let engine = engine.clone();
        std::thread::spawn(move || {
            let _ = connection(stream, &engine);
        });
    }
}

fn error_body(msg: &str, exit_code: Option<i32>) -> Vec<u8> {
    let v = match exit_code {
        Some(c) => json!({ "message": msg, "exit_code": c }),
        None => json!({ "message": msg }),
    };
    let mut b = serde_json::to_vec(&v).unwrap_or_default();
    b.push(b'\n');
    b
}

fn connection(stream: UnixStream, engine: &Arc<Engine>) -> io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        // An idle keep-alive connection is closed after a while; a request in progress has
        // no deadline (uploads may be large).
        reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(300)))?;
        let head = match http::read_head(&mut reader) {
            Ok(h) => h,
            Err(ReadError::Closed) | Err(ReadError::Io(_)) => return Ok(()),
            Err(ReadError::Bad(m)) => {
                http::respond(&mut writer, 400, "application/json", &error_body(&m, None))?;
                return Ok(());
            }
        };
        // A body has as long as it needs, as long as it keeps coming.
        reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(300)))?;
        let mut body = match Body::new(&head, &mut reader) {
            Ok(b) => b,
            Err(ReadError::Bad(m)) => {
                http::respond(&mut writer, 400, "application/json", &error_body(&m, None))?;
                return Ok(());
            }
            Err(_) => return Ok(()),
        };
        head.send_continue(&mut writer)?;
        // An upgrade request's own body (Docker's exec start sends JSON) is read first; what
        // the client sent after it belongs to the stream.
        let reply = if head.wants_upgrade() {
            let mut own = Vec::new();
            (&mut body).take(MAX_JSON as u64).read_to_end(&mut own)?;
            // Only what is buffered already: the client may send nothing before the 101.
            let inner = body.get_mut();
            let early = inner.buffer().to_vec();
            io::BufRead::consume(inner, early.len());
            route(
                engine,
                &head,
                &mut io::Cursor::new(own),
                &mut writer,
                &early,
            )
        } else {
            route(engine, &head, &mut body, &mut writer, &[])
        };
        // Whatever the handler did not read of the body is drained so the next request parses.
        let drained = io::copy(&mut body, &mut io::sink());
        match reply {
            Ok(Out::Json(code, v)) => {
                let mut b = serde_json::to_vec(&v).unwrap_or_default();
                b.push(b'\n');
                http::respond(&mut writer, code, "application/json", &b)?;
            }
            Ok(Out::Empty(code)) => http::respond(&mut writer, code, "text/plain", b"")?,
            Ok(Out::Done) => return Ok(()),
            Ok(Out::Wrote) => {}
            Err(Fail(code, msg, exit)) => http::respond(
                &mut writer,
                code,
                "application/json",
                &error_body(&msg, exit),
            )?,
        }
        if drained.is_err()
            || head
                .header("connection")
                .is_some_and(|c| c.eq_ignore_ascii_case("close"))
        {
            return Ok(());
        }
    }
}

pub(crate) fn json_body<T: serde::de::DeserializeOwned>(
    body: &mut (impl Read + ?Sized),
) -> Result<T, Fail> {
    let mut v = Vec::new();
    body.take(MAX_JSON as u64 + 1)
        .read_to_end(&mut v)
        .map_err(|e| bad(format!("reading the request body: {e}")))?;
    if v.len() > MAX_JSON {
        return Err(Fail(413, "request body too large".into(), None));
    }
    if v.iter().all(u8::is_ascii_whitespace) {
        v = b"{}".to_vec();
    }
    let de = &mut serde_json::Deserializer::from_slice(&v);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let at = e.path().to_string();
        if at == "." {
            bad(format!("invalid request body: {}", e.inner()))
        } else {
            bad(format!("invalid request body: {at}: {}", e.inner()))
        }
    })
}

/// A stream of JSON lines whose answer head goes out with its first line, as dockerd's: a job
/// that fails before it has said anything (a pull the registry refuses, a Dockerfile that does
/// not parse) can still answer with an error status.
pub(crate) struct JsonLines {
    conn: UnixStream,
    out: Option<Chunked<UnixStream>>,
    broken: bool,
}

impl JsonLines {
    pub(crate) fn new(w: &UnixStream) -> Result<JsonLines, Fail> {
        Ok(JsonLines {
            conn: w.try_clone().map_err(|e| Fail(500, e.to_string(), None))?,
            out: None,
            broken: false,
        })
    }

    fn open(&mut self) {
        if self.out.is_some() || self.broken {
            return;
        }
        let opened = self.conn.try_clone().ok().and_then(|mut c| {
            http::respond_stream_head(&mut c, 200, "application/json")
                .ok()
                .map(|_| Chunked(c))
        });
        self.broken = opened.is_none();
        self.out = opened;
    }

    /// Sends one line (the head first, if this is the first).
    pub(crate) fn send(&mut self, v: &Value) {
        self.open();
        if let Some(o) = self.out.as_mut() {
            let _ = o.write_all(format!("{v}\n").as_bytes());
        }
    }

    /// Whether anything has been said (an error is then a line, not a status).
    pub(crate) fn started(&self) -> bool {
        self.out.is_some()
    }

    /// Ends the stream (a head and an empty stream if nothing was said).
    pub(crate) fn finish(mut self) {
        self.open();
        if let Some(o) = self.out {
            let _ = o.finish();
        }
    }
}

fn num<T: std::str::FromStr>(head: &Head, key: &str) -> Result<Option<T>, Fail> {
    match head.q(key).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| bad(format!("invalid value for {key}: {v:?}"))),
    }
}

fn route(
    engine: &Arc<Engine>,
    head: &Head,
    body: &mut dyn Read,
    w: &mut UnixStream,
    early: &[u8],
) -> Reply {
    let m = head.method.as_str();
    let (docker, path) = crate::docker::split(&head.path)?;
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts == ["_ping"] {
        return match m {
            "GET" | "HEAD" => {
                crate::docker::ping(w, m == "HEAD").map_err(|e| Fail(500, e.to_string(), None))?;
                Ok(Out::Wrote)
            }
            _ => Err(Fail(405, "method not allowed".into(), None)),
        };
    }
    // Docker's shapes where they differ from berth's own.
    if docker {
        match (m, parts.as_slice()) {
            ("GET", ["version"]) => return Ok(Out::Json(200, crate::docker::version())),
            ("GET", ["info"]) => return Ok(Out::Json(200, crate::docker::info(engine))),
            // Swarm mode is not served: answered as dockerd answers on a node that is in no
            // swarm (503), which clients rely on (docker-py's `leave(force=True)` counts it
            // as done).
            ("POST", ["swarm", "leave"]) => {
                return Err(Fail(503, "This node is not part of a swarm".into(), None))
            }
            (_, ["swarm" | "nodes" | "services" | "tasks" | "secrets" | "configs", ..]) => {
                return Err(Fail(
                    503,
                    "This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm join\" to connect this node to swarm and try again.".into(),
                    None,
                ))
            }
            ("POST", ["containers", "create"]) => return crate::docker::create(engine, head, body),
            // dockerd's 304: nothing to do.
            ("POST", ["containers", id, "start"]) => {
                if engine.is_running(id) {
                    return Ok(Out::Empty(304));
                }
                engine.start(id)?;
                return Ok(Out::Empty(204));
            }
            ("POST", ["containers", id, "stop"]) => {
                if !engine.is_running(id) {
                    engine.record(id)?;
                    return Ok(Out::Empty(304));
                }
                engine.stop(id, num(head, "t")?)?;
                return Ok(Out::Empty(204));
            }
            ("POST", ["containers", id, "update"]) => {
                return crate::docker::update(engine, id, body)
            }
            ("GET", ["containers", id, "changes"]) => {
                let changes: Vec<Value> = engine
                    .changes(id)?
                    .into_iter()
                    .map(|(path, kind)| json!({"Path": path, "Kind": kind}))
                    .collect();
                return Ok(Out::Json(200, json!(changes)));
            }
            // dockerd's route is `/containers/{name:.*}`: a name with a slash (what a legacy
            // link's removal names) is a container that does not exist.
            ("DELETE", ["containers", _, _, ..]) => {
                let full = parts[1..].join("/");
                return Err(Fail(404, format!("No such container: {full}"), None));
            }
            // Managed plugins are not supported: none are installed, and what would install or
            // run one is refused as dockerd refuses it on a platform without plugins.
            ("GET", ["plugins"]) => return Ok(Out::Json(200, json!([]))),
            ("GET", ["plugins", name, "json"]) => {
                return Err(Fail(404, format!("plugin \"{name}\" not found"), None))
            }
            (_, ["plugins", ..]) => {
                return Err(Fail(
                    500,
                    "plugins are not supported on this platform".into(),
                    None,
                ))
            }
            ("GET", ["containers", "json"]) => return crate::docker::list_containers(engine, head),
            ("POST", ["containers", id, "wait"]) => {
                return crate::docker::wait(engine, id, head, w)
            }
            ("GET", ["containers", id, "json"]) => {
                return Ok(Out::Json(200, engine.inspect(id)?));
            }
            ("GET", ["containers", id, "stats"]) => {
                return crate::docker::stats(engine, id, head, w)
            }
            ("POST", ["containers", id, "exec"]) => {
                return crate::docker::exec_create(engine, id, body)
            }
            ("POST", ["exec", id, "start"]) => {
                #[derive(serde::Deserialize, Default)]
                #[serde(default, rename_all = "PascalCase")]
                struct Start {
                    detach: bool,
                    tty: Option<bool>,
                }
                let s: Start = json_body(body)?;
                return exec_start(engine, id, head, s.detach, s.tty, w, early);
            }
            ("GET", ["exec", id, "json"]) => {
                let info = engine.exec_inspect(id, Duration::ZERO)?;
                return Ok(Out::Json(
                    200,
                    serde_json::to_value(info).unwrap_or_default(),
                ));
            }
            (_, ["networks", rest @ ..]) => {
                return crate::docker::networks(engine, m, rest, head, body)
            }
            ("POST", ["volumes", "create"]) => return crate::docker::volume_create(engine, body),
            ("POST", ["commit"]) => return crate::docker::commit(engine, head),
            ("GET", ["events"]) => {
                // Docker's JSON `filters` as berth's `filter=key=value` list.
                let mut h = head.clone();
                let pairs: Vec<String> = crate::docker::filter_pairs(head)?;
                if !pairs.is_empty() {
                    h.query.insert("filter".into(), pairs);
                }
                return events(engine, &h, w);
            }
            ("POST", ["build", "prune"]) => {
                let p = engine.builder_prune()?;
                return Ok(Out::Json(
                    200,
                    json!({"CachesDeleted": [], "SpaceReclaimed": p.bytes}),
                ));
            }
            ("DELETE", ["containers", id]) => {
                engine.remove(
                    id,
                    head.flag("force"),
                    head.flag("v") || head.flag("volumes"),
                )?;
                return Ok(Out::Empty(204));
            }
            ("GET", ["volumes"]) => return crate::docker::list_volumes(engine, head),
            ("POST", ["volumes", "prune"]) => return crate::docker::prune_volumes(engine, head),
            ("POST", ["containers", "prune"]) => {
                return crate::docker::prune_containers(engine, head)
            }
            ("GET", ["system", "df"]) => {
                return Ok(Out::Json(200, crate::docker::disk_usage(engine)))
            }
            (_, ["images", ..]) => {
                let rest = path.trim_start_matches('/').trim_start_matches("images");
                return crate::docker::images(engine, m, rest, head, body, w);
            }
            _ => {}
        }
    }
    match (m, parts.as_slice()) {
        ("GET", ["version"]) => Ok(Out::Json(200, version())),
        ("GET", ["info"]) => Ok(Out::Json(200, engine.info())),
        ("POST", ["build"]) => build(engine, head, body, w),
        ("POST", ["builder", "prune"]) => Ok(Out::Json(200, json!(engine.builder_prune()?))),
        ("POST", ["auth"]) => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Login {
                username: String,
                password: String,
                serveraddress: String,
            }
            let l: Login = json_body(body)?;
            engine.login(
                &l.serveraddress,
                engine::distribution::Credentials {
                    username: l.username,
                    password: l.password,
                },
            )?;
            Ok(Out::Json(200, json!({"Status": "Login Succeeded"})))
        }
        ("GET", ["system", "df"]) => Ok(Out::Json(200, engine.disk_usage())),
        ("POST", ["system", "prune"]) => system_prune(engine, head),
        ("GET", ["events"]) => events(engine, head, w),

        ("POST", ["containers", "create"]) => {
            let req: engine::CreateRequest = json_body(body)?;
            let rec = engine.create(req)?;
            Ok(Out::Json(201, json!({"Id": rec.id, "Name": rec.name})))
        }
        ("GET", ["containers"]) => {
            let list = engine.list(head.flag("all"), head.flag("size"));
            Ok(Out::Json(
                200,
                serde_json::to_value(list).unwrap_or_default(),
            ))
        }
        ("POST", ["containers", "prune"]) => Ok(Out::Json(
            200,
            json!({"ContainersDeleted": engine.container_prune()}),
        )),
        ("GET", ["containers", id]) => Ok(Out::Json(200, engine.inspect(id)?)),
        ("DELETE", ["containers", id]) => {
            engine.remove(id, head.flag("force"), head.flag("volumes"))?;
            Ok(Out::Empty(204))
        }
        ("POST", ["containers", id, "start"]) => {
            engine.start(id)?;
            Ok(Out::Empty(204))
        }
        ("POST", ["containers", id, "stop"]) => {
            engine.stop(id, num(head, "t")?)?;
            Ok(Out::Empty(204))
        }
        ("POST", ["containers", id, "restart"]) => {
            engine.restart(id, num(head, "t")?)?;
            Ok(Out::Empty(204))
        }
        ("POST", ["containers", id, "kill"]) => {
            engine.kill(id, head.q("signal").unwrap_or(""))?;
            Ok(Out::Empty(204))
        }
        ("POST", ["containers", id, "pause"]) => {
            engine.pause(id, true)?;
            Ok(Out::Empty(204))
        }
        ("POST", ["containers", id, "unpause"]) => {
            engine.pause(id, false)?;
            Ok(Out::Empty(204))
        }
        ("POST", ["containers", id, "rename"]) => {
            engine.rename(id, head.q("name").unwrap_or(""))?;
            Ok(Out::Empty(204))
        }
        ("POST", ["containers", id, "update"]) => {
            let u: engine::UpdateRequest = json_body(body)?;
            engine.update_resources(id, &u)?;
            Ok(Out::Json(200, json!({"Warnings": []})))
        }
        ("POST", ["containers", id, "wait"]) => {
            let condition = wait_condition(head)?;
            let code = engine.wait(id, condition)?;
            Ok(Out::Json(200, json!({"StatusCode": code})))
        }
        ("GET", ["containers", id, "logs"]) => logs(engine, id, head, w),
        ("POST", ["containers", id, "attach"]) => attach(engine, id, head, w, early),
        ("POST", ["containers", id, "resize"]) => {
            engine.resize(
                id,
                num(head, "h")?.unwrap_or(24),
                num(head, "w")?.unwrap_or(80),
            )?;
            Ok(Out::Empty(200))
        }
        ("GET", ["containers", id, "stats"]) => stats(engine, id, head, w),
        ("GET", ["containers", id, "top"]) => {
            let (titles, rows) = engine.top(id, head.q("ps_args").unwrap_or(""))?;
            Ok(Out::Json(200, json!({"Titles": titles, "Processes": rows})))
        }
        ("GET" | "HEAD", ["containers", id, "archive"]) => crate::archive::get(engine, id, head, w),
        ("PUT", ["containers", id, "archive"]) => crate::archive::put(engine, id, head, body),
        ("POST", ["containers", id, "exec"]) => {
            let req: engine::ExecRequest = json_body(body)?;
            let exec_id = engine.exec_create(id, req)?;
            Ok(Out::Json(201, json!({"Id": exec_id})))
        }
        ("POST", ["exec", id, "start"]) => {
            exec_start(engine, id, head, head.flag("detach"), None, w, early)
        }
        ("POST", ["exec", id, "resize"]) => {
            engine.exec_resize(
                id,
                num(head, "h")?.unwrap_or(24),
                num(head, "w")?.unwrap_or(80),
            )?;
            Ok(Out::Empty(200))
        }
        ("GET", ["exec", id]) => {
            let info = engine.exec_inspect(id, Duration::ZERO)?;
            Ok(Out::Json(
                200,
                serde_json::to_value(info).unwrap_or_default(),
            ))
        }

        ("POST", ["volumes", "create"]) => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Req {
                #[serde(rename = "Name", default)]
                name: String,
                #[serde(rename = "Labels", default)]
                labels: BTreeMap<String, String>,
            }
            let r: Req = json_body(body)?;
            let (v, created) = engine
                .volumes
                .create((!r.name.is_empty()).then_some(r.name.as_str()), r.labels)
                .map_err(EngineError::from)?;
            if created {
                engine
                    .events
                    .emit("volume", "create", &v.name, BTreeMap::new());
            }
            Ok(Out::Json(201, serde_json::to_value(v).unwrap_or_default()))
        }
        ("GET", ["volumes"]) => Ok(Out::Json(200, json!({"Volumes": engine.volumes.list()}))),
        ("POST", ["volumes", "prune"]) => {
            let (gone, bytes) = engine.volume_prune(head.flag("all"));
            Ok(Out::Json(
                200,
                json!({"VolumesDeleted": gone, "SpaceReclaimed": bytes}),
            ))
        }
        ("GET", ["volumes", name]) => {
            let v = engine.volumes.inspect(name).map_err(EngineError::from)?;
            Ok(Out::Json(200, serde_json::to_value(v).unwrap_or_default()))
        }
        ("DELETE", ["volumes", name]) => {
            engine.volume_remove(name, head.flag("force"))?;
            Ok(Out::Empty(204))
        }

        ("POST", ["networks", "create"]) => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Req {
                #[serde(rename = "Name")]
                name: String,
                #[serde(rename = "Subnet", default)]
                subnet: Option<String>,
                #[serde(rename = "Gateway", default)]
                gateway: Option<String>,
                #[serde(rename = "Internal", default)]
                internal: bool,
                #[serde(rename = "Labels", default)]
                labels: BTreeMap<String, String>,
            }
            let r: Req = json_body(body)?;
            let n = engine.network_create(
                &r.name,
                r.subnet.as_deref().filter(|s| !s.is_empty()),
                r.gateway.as_deref().filter(|s| !s.is_empty()),
                r.internal,
                r.labels,
            )?;
            Ok(Out::Json(201, serde_json::to_value(n).unwrap_or_default()))
        }
        ("GET", ["networks"]) => Ok(Out::Json(
            200,
            serde_json::to_value(engine.networks.list()).unwrap_or_default(),
        )),
        ("POST", ["networks", "prune"]) => Ok(Out::Json(
            200,
            json!({"NetworksDeleted": engine.network_prune()}),
        )),
        ("GET", ["networks", name]) => Ok(Out::Json(200, engine.network_inspect(name)?)),
        ("DELETE", ["networks", name]) => {
            engine.network_remove(name)?;
            Ok(Out::Empty(204))
        }
        ("POST", ["networks", name, "connect"]) => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Req {
                #[serde(rename = "Container")]
                container: String,
                #[serde(rename = "Aliases", default)]
                aliases: Vec<String>,
                #[serde(rename = "IP", default)]
                ip: Option<String>,
            }
            let r: Req = json_body(body)?;
            engine.network_connect(
                name,
                &r.container,
                engine::engine::EndpointRequest {
                    name: String::new(),
                    aliases: r.aliases,
                    ip: r.ip.filter(|i| !i.is_empty()),
                },
            )?;
            Ok(Out::Empty(200))
        }
        ("POST", ["networks", name, "disconnect"]) => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Req {
                #[serde(rename = "Container")]
                container: String,
                #[serde(rename = "Force", default)]
                force: bool,
            }
            let r: Req = json_body(body)?;
            let _ = r.force;
            engine.network_disconnect(name, &r.container)?;
            Ok(Out::Empty(200))
        }
        ("POST", ["sandboxes", "create"]) => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Req {
                #[serde(rename = "Name")]
                name: String,
                #[serde(rename = "Hostname", default)]
                hostname: String,
                #[serde(rename = "Networks", default)]
                networks: Vec<String>,
                #[serde(rename = "Ports", default)]
                ports: Vec<engine::network::PortMapping>,
            }
            let r: Req = json_body(body)?;
            let s = engine.sandbox_create(&r.name, &r.hostname, &r.networks, r.ports)?;
            Ok(Out::Json(201, serde_json::to_value(s).unwrap_or_default()))
        }
        ("GET", ["sandboxes"]) => {
            let list: Vec<Value> = engine
                .sandboxes
                .list()
                .into_iter()
                .map(|s| {
                    let users = engine.sandbox_users(&s.name);
                    let mut v = serde_json::to_value(s).unwrap_or_default();
                    v["Containers"] = json!(users);
                    v
                })
                .collect();
            Ok(Out::Json(200, Value::Array(list)))
        }
        ("DELETE", ["sandboxes", name]) => {
            engine.sandbox_remove(name, head.flag("force"))?;
            Ok(Out::Empty(204))
        }
        (_, ["images", ..]) => crate::images::route(engine, m, &parts[1..], head, body, w),
        _ => Err(Fail(
            404,
            format!("page not found: {} {}", m, head.path),
            None,
        )),
    }
}

/// `POST /build`: the body is a tar of the context; the answer streams JSON lines
/// (`{"stream"}` progress, then `{"aux": {"ID"}}` or `{"error"}`).
fn build(
    engine: &Arc<Engine>,
    head: &Head,
    body: &mut (impl Read + ?Sized),
    w: &mut UnixStream,
) -> Reply {
    let list = |k: &str| head.query.get(k).cloned().unwrap_or_default();
    let kv = |k: &str| -> Result<BTreeMap<String, String>, Fail> {
        list(k)
            .into_iter()
            .map(|p| {
                p.split_once('=')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| bad(format!("{k}: expected KEY=VALUE, got {p:?}")))
            })
            .collect()
    };
    if head.flag("squash") {
        return Err(bad("squash is only supported with experimental mode"));
    }
    let mut build_args = kv("buildarg")?;
    let mut labels = kv("label")?;
    // Docker's forms: `buildargs` and `labels` as JSON objects, `dockerfile=`.
    let object = |k: &str| -> Result<BTreeMap<String, String>, Fail> {
        match head.q(k).filter(|v| !v.is_empty()) {
            None => Ok(BTreeMap::new()),
            Some(v) => {
                let m: BTreeMap<String, Option<String>> = serde_json::from_str(v)
                    .map_err(|e| bad(format!("{k}: not a JSON object of strings: {e}")))?;
                Ok(m.into_iter()
                    .filter_map(|(k, v)| v.map(|v| (k, v)))
                    .collect())
            }
        }
    };
    build_args.extend(object("buildargs")?);
    labels.extend(object("labels")?);
    let registry_auth = crate::images::registry_config(head)?;
    let dockerfile = head
        .q("f")
        .or(head.q("dockerfile"))
        .filter(|f| !f.is_empty())
        .unwrap_or("Dockerfile")
        .to_string();
    // The context is kept as the tar it came in: indexed, and extracted only if a step
    // needs its files (an unchanged rebuild never does).
    let builder_dir = engine.data_root().join("builder");
    let stem = format!("context-{}", engine::fsutil::random_hex(8));
    let tar_file = builder_dir.join(format!("{stem}.tar"));
    let secrets_dir = builder_dir.join(format!("{stem}.secrets"));
    let internal = |e: std::io::Error| Fail(500, e.to_string(), None);
    let result = (|| -> Result<_, Fail> {
        std::fs::create_dir_all(&builder_dir).map_err(internal)?;
        let mut f = std::fs::File::create(&tar_file).map_err(internal)?;
        // The context may come gzip-compressed (docker-py's `gzip=True`, or any client), as
        // dockerd accepts it: recognised by its magic number.
        let mut reader = BufReader::new(body);
        let gzip = reader
            .fill_buf()
            .map_err(|e| bad(format!("reading the build context: {e}")))?
            .starts_with(&[0x1f, 0x8b]);
        let copied = if gzip {
            std::io::copy(&mut flate2::read::GzDecoder::new(reader), &mut f)
        } else {
            std::io::copy(&mut reader, &mut f)
        };
        copied.map_err(|e| bad(format!("reading the build context: {e}")))?;
        drop(f);
        let context = build::context::Context::from_tar(&tar_file, &engine::builder::HIDDEN)
            .map_err(|e| bad(format!("reading the build context: {e}")))?;
        let text = context
            .read(&dockerfile)
            .map_err(|e| bad(format!("reading {dockerfile} from the context: {e}")))?;
        let text =
            String::from_utf8(text).map_err(|_| bad(format!("{dockerfile}: not UTF-8 text")))?;
        // As dockerd: a Dockerfile without instructions is a bad request, not a failed build.
        let instructions = text
            .lines()
            .map(str::trim)
            .any(|l| !l.is_empty() && !l.starts_with('#'));
        if !instructions {
            return Err(bad("failed to parse Dockerfile: file with no instructions"));
        }
        // berth build --secret files: out of the context, into a directory of their own.
        let mut secrets = BTreeMap::new();
        for id in context.files_under(engine::builder::CLI_SECRETS) {
            if id.contains('/') {
                return Err(bad(format!("secret {id:?}: not a usable id")));
            }
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .recursive(true)
                .create(&secrets_dir)
                .map_err(internal)?;
            let data = context
                .read(&format!("{}/{id}", engine::builder::CLI_SECRETS))
                .map_err(|e| bad(e.to_string()))?;
            let path = secrets_dir.join(&id);
            engine::fsutil::write_atomic(&path, &data, 0o600).map_err(internal)?;
            secrets.insert(id, path);
        }
        Ok((text, secrets, context))
    })();
    let (text, secrets, context) = match result {
        Ok(t) => t,
        Err(e) => {
            let _ = std::fs::remove_file(&tar_file);
            let _ = std::fs::remove_dir_all(&secrets_dir);
            return Err(e);
        }
    };
    let opts = engine::builder::BuildOptions {
        dockerfile: text,
        tags: list("t"),
        build_args,
        target: head.q("target").filter(|t| !t.is_empty()).map(String::from),
        no_cache: head.flag("nocache"),
        labels,
        platform: head
            .q("platform")
            .filter(|p| !p.is_empty())
            .map(String::from),
        network: head
            .q("networkmode")
            .filter(|p| !p.is_empty())
            .map(String::from),
        secrets,
        registry_auth,
        // Docker's `extrahosts`: `name:address` pairs, comma- or space-separated.
        extra_hosts: head
            .query
            .get("extrahosts")
            .into_iter()
            .flatten()
            .flat_map(|v| v.split([',', ' ']))
            .filter(|h| !h.is_empty())
            .map(String::from)
            .collect(),
    };
    // As dockerd, the answer's head goes out with the first line: a build that fails before
    // it has said anything (a Dockerfile that does not parse, a platform this machine does not
    // build) is an error answer, a later failure the stream's last message.
    let mut lines = JsonLines::new(w)?;
    let source = engine::builder::BuildContext::Tar {
        file: tar_file.clone(),
        context,
    };
    let r = engine.build(source, &opts, &mut |line| {
        // A line of a RUN's stderr comes already ended, wrapped in dockerd's red.
        let text = if line.ends_with("\n\u{1b}[0m") {
            line.to_string()
        } else {
            format!("{line}\n")
        };
        lines.send(&json!({ "stream": text }))
    });
    // Nothing of the build is left once its result is out.
    let _ = std::fs::remove_file(&tar_file);
    let _ = std::fs::remove_dir_all(&secrets_dir);
    match r {
        Ok(id) => {
            let cache_from = head.q("cachefrom").unwrap_or("").trim();
            if !matches!(cache_from, "" | "[]" | "null") {
                lines.send(&json!({"stream": "[Warning] cachefrom: berth's builder reuses its own build cache only; the images named were not used\n"}),
                );
            }
            lines.send(&json!({"aux": {"ID": id}}));
            // The classic builder's last lines, which clients (the Python SDK) read the
            // image from.
            let short = id.trim_start_matches("sha256:").get(..12).unwrap_or(&id);
            lines.send(&json!({"stream": format!("Successfully built {short}\n")}));
            for t in &opts.tags {
                let shown = Reference::parse(t)
                    .map(|r| r.familiar())
                    .unwrap_or_else(|_| t.clone());
                lines.send(&json!({"stream": format!("Successfully tagged {shown}\n")}));
            }
        }
        Err(e) => {
            if !lines.started() {
                return Err(e.into());
            }
            lines.send(&json!({"error": e.to_string(), "errorDetail": {"message": e.to_string()}}))
        }
    }
    lines.finish();
    Ok(Out::Done)
}

pub(crate) fn version() -> Value {
    let uname = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({
        "Version": env!("CARGO_PKG_VERSION"),
        "ApiVersion": crate::API_VERSION,
        "Os": "linux",
        "Arch": std::env::consts::ARCH,
        "KernelVersion": uname.trim(),
        "Components": [{"Name": "berth", "Version": env!("CARGO_PKG_VERSION")}],
    })
}

fn system_prune(engine: &Arc<Engine>, head: &Head) -> Reply {
    let containers = engine.container_prune();
    let cache = engine.builder_prune()?;
    let images = engine.images.prune(head.flag("all"))?;
    let volumes = if head.flag("volumes") {
        engine.volume_prune(false).0
    } else {
        Vec::new()
    };
    Ok(Out::Json(
        200,
        json!({
            "ContainersDeleted": containers,
            "ImagesDeleted": images.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
            "VolumesDeleted": volumes,
            "BuildCache": cache,
        }),
    ))
}

fn events(engine: &Arc<Engine>, head: &Head, w: &mut UnixStream) -> Reply {
    let now = timefmt::now_nanos();
    let since = match head.q("since") {
        Some(s) if !s.is_empty() => Some(
            timefmt::parse_time_arg(s, now).ok_or_else(|| bad(format!("invalid since: {s}")))?,
        ),
        _ => None,
    };
    let until = match head.q("until") {
        Some(s) if !s.is_empty() => Some(
            timefmt::parse_time_arg(s, now).ok_or_else(|| bad(format!("invalid until: {s}")))?,
        ),
        _ => None,
    };
    let filters: Vec<String> = head.query.get("filter").cloned().unwrap_or_default();
    let filter = engine::events::Filter::parse(&filters).map_err(bad)?;
    let (past, rx) = engine.events.subscribe(since);
    http::respond_stream_head(w, 200, "application/x-ndjson")
        .map_err(|e| Fail(500, e.to_string(), None))?;
    let mut out = Chunked(w.try_clone().map_err(|e| Fail(500, e.to_string(), None))?);
    let send = |out: &mut Chunked<UnixStream>, e: &engine::events::Event| -> io::Result<()> {
        let mut line = serde_json::to_vec(e).unwrap_or_default();
        line.push(b'\n');
        out.write_all(&line)
    };
    for e in past.iter().filter(|e| filter.matches(e)) {
        if until.is_some_and(|u| e.time_nano >= u) {
            let _ = out.finish();
            return Ok(Out::Done);
        }
        if send(&mut out, e).is_err() {
            return Ok(Out::Done);
        }
    }
    loop {
        let wait = match until {
            Some(u) => {
                let left = u - timefmt::now_nanos();
                if left <= 0 {
                    break;
                }
                Duration::from_nanos(left as u64).min(Duration::from_secs(1))
            }
            None => Duration::from_secs(1),
        };
        match rx.recv_timeout(wait) {
            Ok(e) => {
                if filter.matches(&e) && send(&mut out, &e).is_err() {
                    return Ok(Out::Done);
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                // Notice a client that went away.
                if peer_closed(w) {
                    return Ok(Out::Done);
                }
            }
            Err(_) => break,
        }
    }
    let _ = out.finish();
    Ok(Out::Done)
}

/// Whether the peer closed its side (a poll for readability that reads EOF).
fn peer_closed(s: &UnixStream) -> bool {
    let mut b = [0u8; 1];
    matches!(s.peek_like(&mut b), Ok(0))
}

trait PeekLike {
    fn peek_like(&self, b: &mut [u8]) -> io::Result<usize>;
}

impl PeekLike for UnixStream {
    fn peek_like(&self, b: &mut [u8]) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        // SAFETY: recv into a valid buffer of b.len() bytes.
        let n = unsafe {
            libc::recv(
                self.as_raw_fd(),
                b.as_mut_ptr().cast(),
                b.len(),
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

fn frame(stream: u8, data: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + data.len());
    f.extend_from_slice(&[stream, 0, 0, 0]);
    f.extend_from_slice(&(data.len() as u32).to_be_bytes());
    f.extend_from_slice(data);
    f
}

fn logs(engine: &Arc<Engine>, id: &str, head: &Head, w: &mut UnixStream) -> Reply {
    let now = timefmt::now_nanos();
    let time = |k: &str| -> Result<Option<i128>, Fail> {
        match head.q(k).filter(|s| !s.is_empty() && *s != "0") {
            None => Ok(None),
            Some(s) => timefmt::parse_time_arg(s, now)
                .map(Some)
                .ok_or_else(|| bad(format!("invalid value for \"{k}\": {s:?}"))),
        }
    };
    let tail = match head.q("tail").filter(|t| !t.is_empty() && *t != "all") {
        None => None,
        Some(t) => Some(
            t.parse::<usize>()
                .map_err(|_| bad(format!("invalid tail: {t:?}")))?,
        ),
    };
    let (out_flag, err_flag) = (head.flag("stdout"), head.flag("stderr"));
    let q = engine::logfile::Query {
        since: time("since")?,
        until: time("until")?,
        tail,
        follow: head.flag("follow"),
        stdout: out_flag || !err_flag,
        stderr: err_flag || !out_flag,
    };
    let rec = engine.record(id)?;
    if rec.config.log_driver == "none" {
        return Err(EngineError::NotImplemented(
            "configured logging driver does not support reading".into(),
        )
        .into());
    }
    let tty = rec.config.run.tty;
    let timestamps = head.flag("timestamps");
    http::respond_stream_head(w, 200, stream_type(tty))
        .map_err(|e| Fail(500, e.to_string(), None))?;
    let mut out = Chunked(w.try_clone().map_err(|e| Fail(500, e.to_string(), None))?);
    let conn = w.try_clone().map_err(|e| Fail(500, e.to_string(), None))?;
    let r = engine.logs(id, &q, &|| peer_closed(&conn), &mut |e| {
        let mut text = Vec::new();
        if timestamps {
            text.extend_from_slice(e.time.as_bytes());
            text.push(b' ');
        }
        text.extend_from_slice(e.log.as_bytes());
        if tty {
            out.write_all(&text)
        } else {
            out.write_all(&frame(if e.stream == "stderr" { 2 } else { 1 }, &text))
        }
    });
    if r.is_ok() {
        let _ = out.finish();
    }
    Ok(Out::Done)
}

/// How a container's output stream is passed on: as the shim gives it (raw with a TTY,
/// multiplexed without), or converted because the client asked for the other framing (Docker
/// frames an exec's output by the start request's `Tty`, not the exec's).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reframe {
    AsIs,
    /// Raw output sent as stdout frames.
    Frame,
    /// Frames sent as their payloads alone.
    Unframe,
}

fn copy_out(from: &mut UnixStream, to: &mut UnixStream, how: Reframe) {
    match how {
        Reframe::AsIs => {
            let _ = io::copy(from, to);
        }
        Reframe::Frame => {
            let mut buf = vec![0u8; 32 * 1024];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 || to.write_all(&frame(1, &buf[..n])).is_err() {
                    break;
                }
            }
        }
        Reframe::Unframe => {
            let mut hdr = [0u8; 8];
            while from.read_exact(&mut hdr).is_ok() {
                let n = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]) as u64;
                if io::copy(&mut (&mut *from).take(n), to).is_err() {
                    break;
                }
            }
        }
    }
}

/// Docker's detach keys (`--detach-keys`, `detachKeys=`), for a TTY's input: comma-separated, each a single
/// character or `ctrl-X` (X a letter or one of `@[\\]^_`). Empty: Docker's default,
/// ctrl-p then ctrl-q.
pub(crate) fn detach_keys(spec: &str) -> Result<Vec<u8>, Fail> {
    if spec.is_empty() {
        return Ok(vec![0x10, 0x11]);
    }
    let mut out = Vec::new();
    for key in spec.split(',') {
        let byte = match key.strip_prefix("ctrl-") {
            Some(c) if c.len() == 1 => {
                let c = c.as_bytes()[0].to_ascii_lowercase();
                match c {
                    b'a'..=b'z' => c - b'a' + 1,
                    b'@' => 0,
                    b'[' => 27,
                    b'\\' => 28,
                    b']' => 29,
                    b'^' => 30,
                    b'_' => 31,
                    _ => return Err(bad(format!("Invalid detach keys ({spec}) provided"))),
                }
            }
            None if key.len() == 1 => key.as_bytes()[0],
            _ => return Err(bad(format!("Invalid detach keys ({spec}) provided"))),
        };
        out.push(byte);
    }
    Ok(out)
}

/// Copies the client's input to the container until the client closes it or types the
/// detach keys (not passed on; bytes that begin the sequence but do not complete it are).
/// True when it detached.
fn copy_in(from: &mut UnixStream, to: &mut UnixStream, keys: &[u8]) -> bool {
    let mut buf = vec![0u8; 32 * 1024];
    let mut matched = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        let mut out = Vec::with_capacity(n);
        for &b in &buf[..n] {
            if !keys.is_empty() && b == keys[matched] {
                matched += 1;
                if matched == keys.len() {
                    let _ = to.write_all(&out);
                    return true;
                }
                continue;
            }
            out.extend_from_slice(&keys[..matched]);
            matched = 0;
            if !keys.is_empty() && b == keys[0] {
                matched = 1;
                continue;
            }
            out.push(b);
        }
        if to.write_all(&out).is_err() {
            return false;
        }
    }
}

/// Copies between the client's connection and the monitor's attach stream until both sides
/// are done; a half-close from the client reaches the container's stdin.
pub(crate) fn pump(client: UnixStream, shim: UnixStream, early: &[u8], keys: Vec<u8>) {
    pump_as(client, shim, early, Reframe::AsIs, keys)
}

fn pump_as(client: UnixStream, shim: UnixStream, early: &[u8], how: Reframe, keys: Vec<u8>) {
    let (Ok(mut c_in), Ok(mut s_out)) = (client.try_clone(), shim.try_clone()) else {
        return;
    };
    // A hijacked stream waits for the client for as long as it stays connected.
    let _ = client.set_read_timeout(None);
    let early = early.to_vec();
    let input = std::thread::spawn(move || {
        let _ = s_out.write_all(&early);
        if copy_in(&mut c_in, &mut s_out, &keys) {
            // Detached: the client's connection ends, the container goes on (its stdin
            // open unless it closes after the first attach).
            let _ = c_in.shutdown(std::net::Shutdown::Both);
            let _ = s_out.shutdown(std::net::Shutdown::Read);
        }
        let _ = s_out.shutdown(std::net::Shutdown::Write);
    });
    let (mut s_in, mut c_out) = (shim, client);
    copy_out(&mut s_in, &mut c_out, how);
    let _ = c_out.shutdown(std::net::Shutdown::Both);
    let _ = s_in.shutdown(std::net::Shutdown::Both);
    let _ = input.join();
}

fn attach(engine: &Arc<Engine>, id: &str, head: &Head, w: &mut UnixStream, early: &[u8]) -> Reply {
    // Docker's `stream=0`: the logs so far (with `logs=1`), then the end; no attachment.
    if head.q("stream").is_some_and(|s| s == "0" || s == "false") {
        let tty = engine.record(id)?.config.run.tty;
        let mut client = upgrade(w, head, tty)?;
        if head.flag("logs") {
            let (o, e) = (head.flag("stdout"), head.flag("stderr"));
            let q = engine::logfile::Query {
                since: None,
                until: None,
                tail: None,
                follow: false,
                stdout: o,
                stderr: e,
            };
            let _ = engine.logs(id, &q, &|| false, &mut |e| {
                if tty {
                    client.write_all(e.log.as_bytes())
                } else {
                    let n = if e.stream == "stderr" { 2 } else { 1 };
                    client.write_all(&frame(n, e.log.as_bytes()))
                }
            });
        }
        let _ = client.shutdown(std::net::Shutdown::Both);
        return Ok(Out::Done);
    }
    let keys = detach_keys(head.q("detachKeys").unwrap_or(""))?;
    let (a, tty) = engine.attach(
        id,
        head.flag("stdin"),
        head.flag("stdout"),
        head.flag("stderr"),
    )?;
    let client = upgrade(w, head, tty)?;
    match a.wait() {
        // As dockerd, the keys detach from a TTY only (other input passes untouched).
        Ok(s) => pump(client, s, early, if tty { keys } else { Vec::new() }),
        Err(e) => {
            let mut c = client;
            if !tty {
                let _ = c.write_all(&frame(2, format!("berth: {e}\n").as_bytes()));
            }
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
    Ok(Out::Done)
}

pub(crate) fn exec_start(
    engine: &Arc<Engine>,
    id: &str,
    head: &Head,
    detach: bool,
    start_tty: Option<bool>,
    w: &mut UnixStream,
    early: &[u8],
) -> Reply {
    if detach {
        engine.exec_start(id, true)?;
        return Ok(Out::Empty(204));
    }
    // The answer goes out before the process starts: a client reading the answer's head
    // through a buffer must not find output in it (the Python SDK loses it there).
    let mut upgraded = None;
    let started = engine.exec_start_then(id, false, &mut |tty| {
        let framing = start_tty.unwrap_or(tty);
        upgraded = Some((tty, framing));
        upgrade(w, head, framing)
            .map(|_| ())
            .map_err(|f| std::io::Error::other(f.1))
    });
    match (started, upgraded) {
        (Ok(Some((stream, _))), Some((tty, framing))) => {
            let client = w.try_clone().map_err(|e| Fail(500, e.to_string(), None))?;
            let how = match (tty, framing) {
                (true, false) => Reframe::Frame,
                (false, true) => Reframe::Unframe,
                _ => Reframe::AsIs,
            };
            let keys = match engine.exec_inspect(id, Duration::ZERO) {
                Ok(i) if i.process.tty => {
                    detach_keys(i.process.detach_keys.as_deref().unwrap_or(""))?
                }
                _ => Vec::new(),
            };
            pump_as(client, stream, early, how, keys);
            Ok(Out::Done)
        }
        (Ok(_), _) => Err(Fail(500, "no stream".into(), None)),
        // Failed after the answer: said in the stream, as dockerd says it.
        (Err(e), Some((_, tty))) => {
            let mut c = w.try_clone().map_err(|e| Fail(500, e.to_string(), None))?;
            let text = format!("{e}\n");
            let _ = if tty {
                c.write_all(text.as_bytes())
            } else {
                c.write_all(&frame(2, text.as_bytes()))
            };
            let _ = c.shutdown(std::net::Shutdown::Both);
            Ok(Out::Done)
        }
        (Err(e), None) => Err(e.into()),
    }
}

/// The stream's content type: raw with a TTY, Docker's multiplexed frames without.
fn stream_type(tty: bool) -> &'static str {
    if tty {
        "application/vnd.docker.raw-stream"
    } else {
        "application/vnd.docker.multiplexed-stream"
    }
}

/// Answers 101 (or, to a request that did not ask for the upgrade, 200 as dockerd does) and
/// returns the connection, now a raw stream that ends with the connection.
fn upgrade(w: &mut UnixStream, head: &Head, tty: bool) -> Result<UnixStream, Fail> {
    if head.wants_upgrade() {
        http::respond_upgrade(w, stream_type(tty)).map_err(|e| Fail(500, e.to_string(), None))?;
    } else {
        let h = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nApi-Version: {}\r\nConnection: close\r\n\r\n",
            stream_type(tty),
            crate::API_VERSION
        );
        w.write_all(h.as_bytes())
            .map_err(|e| Fail(500, e.to_string(), None))?;
    }
    w.try_clone().map_err(|e| Fail(500, e.to_string(), None))
}

fn stats(engine: &Arc<Engine>, id: &str, head: &Head, w: &mut UnixStream) -> Reply {
    let stream = head.q("stream").is_none_or(|s| s == "1" || s == "true");
    if !stream {
        return Ok(Out::Json(
            200,
            serde_json::to_value(engine.stats(id)?).unwrap_or_default(),
        ));
    }
    engine.stats(id)?;
    http::respond_stream_head(w, 200, "application/x-ndjson")
        .map_err(|e| Fail(500, e.to_string(), None))?;
    let mut out = Chunked(w.try_clone().map_err(|e| Fail(500, e.to_string(), None))?);
    while let Ok(s) = engine.stats(id) {
        let mut line = serde_json::to_vec(&s).unwrap_or_default();
        line.push(b'\n');
        if out.write_all(&line).is_err() {
            return Ok(Out::Done);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let _ = out.finish();
    Ok(Out::Done)
}

/// Resolves a container reference for image commands (commit): an engine container's ID,
/// or the name as given (containers mounted with `image mount`).
pub(crate) fn container_id(engine: &Arc<Engine>, name: &str) -> String {
    engine
        .record(name)
        .map(|r| r.id)
        .unwrap_or_else(|_| name.to_string())
}

/// Parses a tag for image commands.
pub(crate) fn parse_ref(s: &str) -> Result<Reference, Fail> {
    Reference::parse(s).map_err(|e| bad(e.to_string()))
}

/// `wait`'s `condition=`: `not-running` (the default), `next-exit` or `removed`.
pub(crate) fn wait_condition(head: &Head) -> Result<engine::engine::WaitCondition, Fail> {
    match head.q("condition").unwrap_or("not-running") {
        "" | "not-running" => Ok(engine::engine::WaitCondition::NotRunning),
        "next-exit" => Ok(engine::engine::WaitCondition::NextExit),
        "removed" => Ok(engine::engine::WaitCondition::Removed),
        c => Err(bad(format!("invalid condition: {c:?}"))),
    }
}

pub(crate) use Fail as Failure;
pub(crate) use Out as Output;
pub(crate) type Handled = Reply;
pub(crate) fn bad_request(msg: impl Into<String>) -> Fail {
    bad(msg)
}
pub(crate) fn failure(code: u16, msg: impl Into<String>) -> Fail {
    Fail(code, msg.into(), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_keys_parse_as_docker_writes_them() {
        assert_eq!(detach_keys("").ok(), Some(vec![0x10, 0x11]));
        assert_eq!(detach_keys("ctrl-x,y").ok(), Some(vec![0x18, b'y']));
        assert_eq!(detach_keys("ctrl-@,ctrl-_").ok(), Some(vec![0, 31]));
        assert!(detach_keys("ctrl-1").is_err());
        assert!(detach_keys("ab").is_err());
    }

    #[test]
    fn input_stops_at_the_detach_keys_and_keeps_a_broken_prefix() {
        let (mut client, mut from) = UnixStream::pair().unwrap();
        let (mut to, mut container) = UnixStream::pair().unwrap();
        client.write_all(b"a\x10b\x10\x11ignored").unwrap();
        assert!(copy_in(&mut from, &mut to, &[0x10, 0x11]));
        drop(to);
        let mut got = Vec::new();
        container.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"a\x10b");
        // Without keys (no TTY) everything passes.
        let (mut client, mut from) = UnixStream::pair().unwrap();
        let (mut to, mut container) = UnixStream::pair().unwrap();
        client.write_all(b"\x10\x11x").unwrap();
        drop(client);
        assert!(!copy_in(&mut from, &mut to, &[]));
        drop(to);
        let mut got = Vec::new();
        container.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"\x10\x11x");
    }
}
