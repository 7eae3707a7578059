//! `berth build`: a Dockerfile run against a context, step by step, each step's image cached
//! by its parent, its instruction after substitution, the build args and environment in
//! scope, and (COPY/ADD) the content of its sources. RUN runs as a container of the engine;
//! COPY/ADD apply a tar of the sources inside the root (paths resolved in it); the other
//! instructions change the config only (`empty_layer` history entries, as docker build's).

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use build::dockerfile::{Args, Instruction};
use image::images::{ImageRecord, Images};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::engine::{CreateRequest, Engine, EngineError, WaitCondition};
use crate::fsutil;
use crate::spec::{Network, RunOptions};

type Result<T> = std::result::Result<T, EngineError>;

fn invalid(msg: impl Into<String>) -> EngineError {
    EngineError::Invalid(msg.into())
}

fn internal(msg: impl std::fmt::Display) -> EngineError {
    EngineError::Internal(msg.to_string())
}

/// What `build` is asked.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// The Dockerfile's text.
    pub dockerfile: String,
    /// `-t`.
    pub tags: Vec<String>,
    /// `--build-arg`.
    pub build_args: BTreeMap<String, String>,
    /// `--target`.
    pub target: Option<String>,
    /// `--no-cache`.
    pub no_cache: bool,
    /// `--label`.
    pub labels: BTreeMap<String, String>,
}

/// A stage being built.
struct Stage {
    name: Option<String>,
    image: Option<ImageRecord>,
    config: Value,
    args: BTreeMap<String, String>,
    shell: Vec<String>,
}

impl Stage {
    fn env(&self) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> = self.args.clone();
        for e in self.config["config"]["Env"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some((k, v)) = e.as_str().and_then(|e| e.split_once('=')) {
                env.insert(k.to_string(), v.to_string());
            }
        }
        env
    }

    fn parent_id(&self) -> String {
        self.image
            .as_ref()
            .map_or("scratch".into(), |i| i.id.to_string())
    }

    fn workdir(&self) -> String {
        self.config["config"]["WorkingDir"]
            .as_str()
            .filter(|w| !w.is_empty())
            .unwrap_or("/")
            .to_string()
    }
}

/// The build cache: step key → image ID, under the data root.
struct Cache {
    path: PathBuf,
    map: BTreeMap<String, String>,
}

impl Cache {
    fn open(root: &Path) -> Cache {
        let path = root.join("builder").join("cache.json");
        let map = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Cache { path, map }
    }

    fn save(&self) {
        if let Some(d) = self.path.parent() {
            let _ = fs::create_dir_all(d);
        }
        if let Ok(json) = serde_json::to_vec(&self.map) {
            let _ = fsutil::write_atomic(&self.path, &json, 0o600);
        }
    }
}

fn key(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    format!("{:x}", h.finalize())
}

fn set_env(config: &mut Value, k: &str, v: &str) {
    let env = config["config"]["Env"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut out: Vec<Value> = env
        .into_iter()
        .filter(|e| e.as_str().and_then(|e| e.split_once('=')).map(|(n, _)| n) != Some(k))
        .collect();
    out.push(json!(format!("{k}={v}")));
    config["config"]["Env"] = json!(out);
}

/// `KEY=value …` (or the legacy `KEY value`) after substitution.
fn pairs(
    ins: &Instruction,
    env: &BTreeMap<String, String>,
    esc: char,
) -> Result<Vec<(String, String)>> {
    let text = ins.text();
    let words = build::shell::expand_words(&text, env, esc)
        .map_err(|e| invalid(format!("{}: {e}", ins.keyword)))?;
    if words.first().is_some_and(|w| !w.contains('=')) {
        let (k, rest) = text
            .trim()
            .split_once(char::is_whitespace)
            .unwrap_or((text.trim(), ""));
        let v = build::shell::expand(rest.trim(), env, esc)
            .map_err(|e| invalid(format!("{}: {e}", ins.keyword)))?;
        return Ok(vec![(k.to_string(), v)]);
    }
    Ok(words
        .into_iter()
        .filter_map(|w| {
            w.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect())
}

fn duration_ns(s: &str) -> Result<u64> {
    timefmt::parse_duration(s)
        .map(|d| d as u64)
        .ok_or_else(|| invalid(format!("HEALTHCHECK: invalid duration {s:?}")))
}

impl Engine {
    /// Builds `opts.dockerfile` against the context directory `ctx`; `out` gets the progress
    /// lines. Returns the image ID. Nothing is tagged unless every step succeeded.
    pub fn build(
        self: &Arc<Self>,
        ctx: &Path,
        opts: &BuildOptions,
        out: &mut dyn FnMut(&str),
    ) -> Result<String> {
        let (df, problems) = build::lint::check(&opts.dockerfile);
        if let Some(p) = problems.iter().find(|p| p.error) {
            return Err(invalid(format!(
                "Dockerfile:{}:{}: {}",
                p.line, p.column, p.message
            )));
        }
        let tags = opts
            .tags
            .iter()
            .map(|t| {
                image::reference::Reference::parse(t)
                    .map_err(|e| invalid(format!("invalid tag {t:?}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let esc = df.escape;
        let context =
            build::context::Context::open(ctx, None).map_err(|e| invalid(e.to_string()))?;
        // Global ARGs (before the first FROM), and the stages.
        let mut global: BTreeMap<String, String> = BTreeMap::new();
        let mut stages: Vec<(String, Vec<Instruction>)> = Vec::new();
        for ins in &df.instructions {
            if ins.keyword == "FROM" {
                stages.push((ins.text(), vec![ins.clone()]));
            } else if let Some(s) = stages.last_mut() {
                s.1.push(ins.clone());
            } else if ins.keyword == "ARG" {
                for (k, v) in arg_decls(&ins.text()) {
                    let v = opts.build_args.get(&k).cloned().or(v).unwrap_or_default();
                    global.insert(k, v);
                }
            }
        }
        let names: Vec<Option<String>> = stages
            .iter()
            .map(|(from, _)| {
                let w: Vec<&str> = from.split_whitespace().collect();
                (w.len() == 3).then(|| w[2].to_ascii_lowercase())
            })
            .collect();
        let target = match &opts.target {
            Some(t) => names
                .iter()
                .position(|n| n.as_deref() == Some(&t.to_ascii_lowercase()))
                .ok_or_else(|| invalid(format!("target stage {t:?} could not be found")))?,
            None => stages.len() - 1,
        };
        let mut cache = Cache::open(&self.cfg_root());
        let mut built: Vec<Option<Stage>> = (0..stages.len()).map(|_| None).collect();
        let total: usize = stages[..=target].iter().map(|s| s.1.len()).sum();
        let mut step = 0;
        for (si, (_, instructions)) in stages.iter().enumerate().take(target + 1) {
            let mut stage: Option<Stage> = None;
            for ins in instructions {
                step += 1;
                let flags: String = ins
                    .flags
                    .iter()
                    .map(|f| match &f.value {
                        Some(v) => format!("--{}={v} ", f.name),
                        None => format!("--{} ", f.name),
                    })
                    .collect();
                let line = format!(
                    "Step {step}/{total} : {} {flags}{}",
                    ins.keyword,
                    shown(ins)
                );
                out(&line);
                if ins.keyword == "FROM" {
                    let words: Vec<String> = build::shell::expand_words(&ins.text(), &global, esc)
                        .map_err(|e| invalid(format!("FROM: {e}")))?;
                    let base = words.first().cloned().unwrap_or_default();
                    let from_stage = names[..si]
                        .iter()
                        .position(|n| n.as_deref() == Some(&base.to_ascii_lowercase()));
                    let (image, config) = if base == "scratch" {
                        (None, Images::scratch_config())
                    } else if let Some(i) = from_stage {
                        let s = built[i]
                            .as_ref()
                            .ok_or_else(|| internal("stage not built"))?;
                        (s.image.clone(), s.config.clone())
                    } else {
                        let img = self.images.resolve(&base).map_err(|_| {
                            invalid(format!("FROM {base}: no such image here (berth build does not pull images yet)"))
                        })?;
                        let cfg = self.images.config(&img)?;
                        (Some(img), cfg)
                    };
                    let shell = config["config"]["Shell"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|x| x.as_str().map(String::from))
                                .collect()
                        })
                        .unwrap_or_else(|| vec!["/bin/sh".to_string(), "-c".to_string()]);
                    stage = Some(Stage {
                        name: names[si].clone(),
                        image,
                        config,
                        args: global.clone(),
                        shell,
                    });
                    continue;
                }
                let st = stage.as_mut().ok_or_else(|| internal("no stage"))?;
                self.step(
                    st, ins, &context, ctx, &built, &names, esc, opts, &mut cache, out,
                )?;
            }
            built[si] = stage;
        }
        let mut last = built[target]
            .take()
            .ok_or_else(|| internal("the target stage was not built"))?;
        if !opts.labels.is_empty() || last.image.is_none() {
            for (k, v) in &opts.labels {
                last.config["config"]["Labels"][k] = json!(v);
            }
            let img = self.images.derive(
                last.image.as_ref(),
                last.config.clone(),
                None,
                "LABEL (--label)",
                "",
                None,
            )?;
            last.image = Some(img);
        }
        let img = last.image.ok_or_else(|| internal("no image"))?;
        for t in &tags {
            self.images.tag(&img.id.to_string(), t)?;
        }
        let _ = last.name;
        Ok(img.id.to_string())
    }

    fn cfg_root(&self) -> PathBuf {
        self.data_root().to_path_buf()
    }

    /// One instruction of a stage: from the cache, or run.
    #[allow(clippy::too_many_arguments)]
    fn step(
        self: &Arc<Self>,
        st: &mut Stage,
        ins: &Instruction,
        context: &build::context::Context,
        ctx: &Path,
        built: &[Option<Stage>],
        names: &[Option<String>],
        esc: char,
        opts: &BuildOptions,
        cache: &mut Cache,
        out: &mut dyn FnMut(&str),
    ) -> Result<()> {
        let env = st.env();
        let kw = ins.keyword.as_str();
        // What makes this step this step.
        let mut extra = String::new();
        if matches!(kw, "COPY" | "ADD") && ins.flag("from").is_none() {
            let srcs = copy_sources(ins, &env, esc)?;
            let mut resolved = Vec::new();
            for s in &srcs.0 {
                resolved.extend(
                    context
                        .resolve(s)
                        .map_err(|e| invalid(format!("{kw}: {e}")))?,
                );
            }
            extra = context
                .digest(&resolved)
                .map_err(|e| invalid(e.to_string()))?;
        }
        if let Some(from) = ins.flag("from") {
            let idx = from.parse::<usize>().ok().or_else(|| {
                names
                    .iter()
                    .position(|n| n.as_deref() == Some(&from.to_ascii_lowercase()))
            });
            if let Some(s) = idx.and_then(|i| built.get(i)).and_then(|s| s.as_ref()) {
                extra = s.parent_id();
            }
        }
        let mut text = format!("{kw} {:?} {}", ins.flags, ins.text());
        if kw == "ARG" {
            for (name, _) in arg_decls(&ins.text()) {
                if let Some(v) = opts.build_args.get(&name) {
                    text.push_str(&format!(" {name}={v}"));
                }
            }
        }
        let heredocs = serde_json::to_string(&ins.heredocs).unwrap_or_default();
        let envs = serde_json::to_string(&env).unwrap_or_default();
        let k = key(&[&st.parent_id(), &text, &heredocs, &envs, &extra]);
        if !opts.no_cache {
            if let Some(id) = cache.map.get(&k) {
                if let Ok(img) = self.images.resolve(id) {
                    out(" ---> Using cache");
                    st.config = self.images.config(&img)?;
                    st.image = Some(img);
                    self.stage_locals(st, ins, &env, esc, &opts.build_args)?;
                    out(&format!(
                        " ---> {}",
                        &id.trim_start_matches("sha256:")[..12]
                    ));
                    return Ok(());
                }
            }
        }
        let image = match kw {
            "RUN" => self.run_step(st, ins, &env, esc, out)?,
            "COPY" | "ADD" => self.copy_step(st, ins, &env, esc, ctx, built, names)?,
            "WORKDIR" => {
                self.config_step(st, ins, &env, esc)?;
                self.workdir_step(st)?
            }
            _ => {
                self.config_step(st, ins, &env, esc)?;
                self.images.derive(
                    st.image.as_ref(),
                    st.config.clone(),
                    None,
                    &format!("/bin/sh -c #(nop) {kw} {}", ins.text()),
                    "",
                    None,
                )?
            }
        };
        let id = image.id.to_string();
        st.config = self.images.config(&image)?;
        st.image = Some(image);
        self.stage_locals(st, ins, &env, esc, &opts.build_args)?;
        cache.map.insert(k, id.clone());
        cache.save();
        out(&format!(
            " ---> {}",
            &id.trim_start_matches("sha256:")[..12]
        ));
        Ok(())
    }

    /// What an instruction changes in the stage besides its image (ARG, SHELL).
    fn stage_locals(
        &self,
        st: &mut Stage,
        ins: &Instruction,
        env: &BTreeMap<String, String>,
        esc: char,
        build_args: &BTreeMap<String, String>,
    ) -> Result<()> {
        match ins.keyword.as_str() {
            "ARG" => {
                // --build-arg, else the default, else the global ARG's value.
                for (k, v) in arg_decls(&ins.text()) {
                    let v = v.map(|v| build::shell::expand(&v, env, esc).unwrap_or(v));
                    let val = build_args
                        .get(&k)
                        .cloned()
                        .or(v)
                        .or_else(|| st.args.get(&k).cloned())
                        .unwrap_or_default();
                    st.args.insert(k, val);
                }
            }
            "SHELL" => {
                if let Args::Exec(v) = &ins.args {
                    st.shell = v.clone();
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The config-only instructions.
    fn config_step(
        &self,
        st: &mut Stage,
        ins: &Instruction,
        env: &BTreeMap<String, String>,
        esc: char,
    ) -> Result<()> {
        let kw = ins.keyword.as_str();
        let word =
            |s: &str| build::shell::expand(s, env, esc).map_err(|e| invalid(format!("{kw}: {e}")));
        let cmdline = |st: &Stage| -> Value {
            match &ins.args {
                Args::Exec(v) => json!(v),
                Args::Shell(s) => {
                    let mut v = st.shell.clone();
                    v.push(s.clone());
                    json!(v)
                }
            }
        };
        let c = &mut st.config["config"];
        if !c.is_object() {
            st.config["config"] = json!({});
        }
        match kw {
            "ENV" => {
                for (k, v) in pairs(ins, env, esc)? {
                    set_env(&mut st.config, &k, &v);
                }
            }
            "LABEL" => {
                for (k, v) in pairs(ins, env, esc)? {
                    st.config["config"]["Labels"][k] = json!(v);
                }
            }
            "EXPOSE" => {
                for p in build::shell::expand_words(&ins.text(), env, esc)
                    .map_err(|e| invalid(format!("EXPOSE: {e}")))?
                {
                    let p = if p.contains('/') {
                        p
                    } else {
                        format!("{p}/tcp")
                    };
                    st.config["config"]["ExposedPorts"][p] = json!({});
                }
            }
            "USER" => st.config["config"]["User"] = json!(word(&ins.text())?),
            "WORKDIR" => {
                let w = word(&ins.text())?;
                let w = if w.starts_with('/') {
                    w
                } else {
                    format!("{}/{w}", st.workdir().trim_end_matches('/'))
                };
                st.config["config"]["WorkingDir"] = json!(w);
            }
            "STOPSIGNAL" => st.config["config"]["StopSignal"] = json!(word(&ins.text())?),
            "VOLUME" => {
                let vols = match &ins.args {
                    Args::Exec(v) => v.clone(),
                    Args::Shell(s) => build::shell::expand_words(s, env, esc)
                        .map_err(|e| invalid(format!("VOLUME: {e}")))?,
                };
                for v in vols {
                    st.config["config"]["Volumes"][v] = json!({});
                }
            }
            "CMD" => st.config["config"]["Cmd"] = cmdline(st),
            "ENTRYPOINT" => st.config["config"]["Entrypoint"] = cmdline(st),
            "SHELL" => {
                if let Args::Exec(v) = &ins.args {
                    st.config["config"]["Shell"] = json!(v);
                }
            }
            "MAINTAINER" => st.config["author"] = json!(ins.text()),
            "ONBUILD" => {
                let mut v = st.config["config"]["OnBuild"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                v.push(json!(ins.text()));
                st.config["config"]["OnBuild"] = json!(v);
            }
            "HEALTHCHECK" => {
                let text = ins.text();
                let mut hc = json!({});
                if text.trim().eq_ignore_ascii_case("NONE") {
                    hc["Test"] = json!(["NONE"]);
                } else {
                    let rest = text.trim()[3..].trim();
                    hc["Test"] = match serde_json::from_str::<Vec<String>>(rest) {
                        Ok(v) => json!(std::iter::once("CMD".to_string())
                            .chain(v)
                            .collect::<Vec<_>>()),
                        Err(_) => json!(["CMD-SHELL", rest]),
                    };
                    for (flag, field) in [
                        ("interval", "Interval"),
                        ("timeout", "Timeout"),
                        ("start-period", "StartPeriod"),
                        ("start-interval", "StartInterval"),
                    ] {
                        if let Some(v) = ins.flag(flag) {
                            hc[field] = json!(duration_ns(v)?);
                        }
                    }
                    if let Some(r) = ins.flag("retries") {
                        hc["Retries"] = json!(r
                            .parse::<u64>()
                            .map_err(|_| invalid(format!("HEALTHCHECK: invalid retries {r:?}")))?);
                    }
                }
                st.config["config"]["Healthcheck"] = hc;
            }
            _ => {}
        }
        Ok(())
    }

    /// RUN: a container of the stage's image with its environment, user and working
    /// directory; its output streamed; a non-zero exit fails the build; its changes are the
    /// layer.
    fn run_step(
        self: &Arc<Self>,
        st: &Stage,
        ins: &Instruction,
        env: &BTreeMap<String, String>,
        esc: char,
        out: &mut dyn FnMut(&str),
    ) -> Result<ImageRecord> {
        let _ = esc;
        let image = st
            .image
            .as_ref()
            .ok_or_else(|| invalid("RUN: a stage FROM scratch has nothing to run"))?;
        let mut args = match &ins.args {
            Args::Exec(v) => v.clone(),
            Args::Shell(s) => {
                let mut v = st.shell.clone();
                match ins.heredocs.first() {
                    Some(h) if s.trim().starts_with("<<") => v.push(h.body.clone()),
                    _ => v.push(s.clone()),
                }
                v
            }
        };
        if args.is_empty() {
            args.push("true".into());
        }
        let env_list: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let none = ins.flag("network") == Some("none");
        let req = CreateRequest {
            image: image.id.to_string(),
            run: RunOptions {
                args,
                entrypoint: Some(String::new()),
                env: env_list,
                workdir: Some(st.workdir()),
                user: st.config["config"]["User"]
                    .as_str()
                    .filter(|u| !u.is_empty())
                    .map(String::from),
                network: Network::None,
                ..Default::default()
            },
            networks: if none {
                Vec::new()
            } else {
                vec![crate::engine::EndpointRequest {
                    name: crate::network::DEFAULT_NETWORK.into(),
                    ..Default::default()
                }]
            },
            ..Default::default()
        };
        let rec = self.create(req)?;
        let id = rec.id.clone();
        let result = (|| -> Result<ImageRecord> {
            ensure_dir(&rec.rootfs, &st.workdir())?;
            let (attach, _) = self.attach(&id, false, true, true)?;
            self.start(&id)?;
            let mut stream = attach.wait().map_err(internal)?;
            let mut hdr = [0u8; 8];
            let mut pending = String::new();
            while stream.read_exact(&mut hdr).is_ok() {
                let n = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]) as usize;
                let mut buf = vec![0u8; n];
                if stream.read_exact(&mut buf).is_err() {
                    break;
                }
                pending.push_str(&String::from_utf8_lossy(&buf));
                while let Some(nl) = pending.find('\n') {
                    out(&pending[..nl]);
                    pending.drain(..=nl);
                }
            }
            if !pending.is_empty() {
                out(&pending);
            }
            let code = self.wait(&id, WaitCondition::NotRunning)?;
            if code != 0 {
                return Err(invalid(format!(
                    "The command '{}' returned a non-zero code: {code}",
                    ins.text()
                )));
            }
            let upper = self
                .images
                .snapshots()
                .container_upper(&id)
                .map_err(internal)?;
            let mut config = st.config.clone();
            config["container_config"] = json!({"Cmd": ["/bin/sh", "-c", ins.text()]});
            Ok(self.images.derive(
                Some(image),
                config,
                Some(&upper),
                &format!("/bin/sh -c {}", ins.text()),
                "",
                None,
            )?)
        })();
        let _ = self.remove(&id, true, true);
        result
    }

    /// COPY/ADD: the sources as a tar applied inside the root (every path resolved in it).
    #[allow(clippy::too_many_arguments)]
    fn copy_step(
        self: &Arc<Self>,
        st: &Stage,
        ins: &Instruction,
        env: &BTreeMap<String, String>,
        esc: char,
        ctx: &Path,
        built: &[Option<Stage>],
        names: &[Option<String>],
    ) -> Result<ImageRecord> {
        let kw = ins.keyword.as_str();
        let (srcs, dest) = copy_sources(ins, env, esc)?;
        let dest = if dest.starts_with('/') {
            dest
        } else {
            format!("{}/{dest}", st.workdir().trim_end_matches('/'))
        };
        // Where the sources are: the context, or another stage's root file system.
        let mut from_mount: Option<String> = None;
        let src_root: PathBuf = match ins.flag("from") {
            None => ctx.to_path_buf(),
            Some(from) => {
                let idx = from.parse::<usize>().ok().or_else(|| {
                    names
                        .iter()
                        .position(|n| n.as_deref() == Some(&from.to_ascii_lowercase()))
                });
                let image = match idx.and_then(|i| built.get(i)).and_then(|s| s.as_ref()) {
                    Some(s) => s.image.clone(),
                    None => Some(self.images.resolve(from).map_err(|_| {
                        invalid(format!("{kw} --from={from}: no such stage or image"))
                    })?),
                };
                match image {
                    Some(img) => {
                        let tmp = format!("build-from-{}", fsutil::random_hex(8));
                        let (_, merged) = self.images.mount_container(&tmp, &img.id.to_string())?;
                        from_mount = Some(tmp);
                        merged
                    }
                    None => {
                        return Err(invalid(format!("{kw} --from={from}: that stage is empty")))
                    }
                }
            }
        };
        let result = (|| -> Result<ImageRecord> {
            let context = build::context::Context::open(&src_root, None)
                .map_err(|e| invalid(e.to_string()))?;
            let mut resolved = Vec::new();
            for s in &srcs {
                if s.starts_with("http://") || s.starts_with("https://") {
                    return Err(invalid(format!(
                        "{kw} {s}: fetching remote sources is not supported"
                    )));
                }
                if ins.flag("from").is_some() {
                    let p = build::ignore::clean(s);
                    if !src_root.join(&p).exists()
                        && fs::symlink_metadata(src_root.join(&p)).is_err()
                    {
                        return Err(invalid(format!("{kw}: {s}: not found in the stage")));
                    }
                    resolved.push(p);
                } else {
                    resolved.extend(
                        context
                            .resolve(s)
                            .map_err(|e| invalid(format!("{kw}: {e}")))?,
                    );
                }
            }
            let several = resolved.len() > 1 || srcs.len() > 1;
            let mut tar = tar::Builder::new(Vec::new());
            tar.follow_symlinks(false);
            let chown = ins.flag("chown").map(|c| {
                let (u, g) = c.split_once(':').unwrap_or((c, c));
                (u.parse::<u64>().unwrap_or(0), g.parse::<u64>().unwrap_or(0))
            });
            let chmod = ins
                .flag("chmod")
                .and_then(|m| u32::from_str_radix(m, 8).ok());
            for rel in &resolved {
                let path = src_root.join(rel);
                let md =
                    fs::symlink_metadata(&path).map_err(|e| invalid(format!("{kw} {rel}: {e}")))?;
                let name = Path::new(rel)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let target = build::context::target(&dest, &name, md.is_dir(), several)
                    .map_err(|e| invalid(format!("{kw}: {e}")))?;
                // ADD extracts a local tar archive into the destination.
                if kw == "ADD" && md.is_file() && is_archive(&name) {
                    return self.add_archive(st, &path, &target);
                }
                let mut add = |p: &Path, n: &str| -> std::io::Result<()> {
                    let m = fs::symlink_metadata(p)?;
                    let mut h = tar::Header::new_gnu();
                    h.set_metadata(&m);
                    if let Some((u, g)) = chown {
                        h.set_uid(u);
                        h.set_gid(g);
                    }
                    if let (Some(mode), false) = (chmod, m.file_type().is_symlink()) {
                        h.set_mode(mode);
                    }
                    let n = n.trim_start_matches('/');
                    if m.file_type().is_symlink() {
                        h.set_size(0);
                        tar.append_link(&mut h, n, fs::read_link(p)?)
                    } else if m.is_dir() {
                        h.set_size(0);
                        tar.append_data(&mut h, n, std::io::empty())
                    } else {
                        tar.append_data(&mut h, n, fs::File::open(p)?)
                    }
                };
                if md.is_dir() {
                    let base = target.trim_end_matches('/').to_string();
                    let mut stack = vec![(path.clone(), base.clone())];
                    if !base.is_empty() {
                        add(&path, &base).map_err(internal)?;
                    }
                    while let Some((dir, into)) = stack.pop() {
                        let mut entries: Vec<_> =
                            fs::read_dir(&dir).map_err(internal)?.flatten().collect();
                        entries.sort_by_key(|e| e.file_name());
                        for e in entries {
                            let rel_child = format!(
                                "{}/{}",
                                rel.trim_end_matches('/'),
                                e.file_name().to_string_lossy()
                            );
                            if ins.flag("from").is_none() && context.resolve(&rel_child).is_err() {
                                continue; // excluded by .dockerignore
                            }
                            let n = format!("{into}/{}", e.file_name().to_string_lossy());
                            add(&e.path(), &n).map_err(internal)?;
                            if e.file_type().is_ok_and(|t| t.is_dir()) {
                                stack.push((e.path(), n));
                            }
                        }
                    }
                } else {
                    add(&path, &target).map_err(internal)?;
                }
            }
            let bytes = tar.into_inner().map_err(internal)?;
            self.apply_layer(st, &bytes, &format!("{kw} {}", ins.text()))
        })();
        if let Some(tmp) = from_mount {
            let _ = self.images.remove_container(&tmp);
        }
        result
    }

    /// WORKDIR: the directory made (owned by root, as docker build's) when the image does not
    /// have it; otherwise a config-only step.
    fn workdir_step(&self, st: &Stage) -> Result<ImageRecord> {
        let dir = st.workdir();
        let created_by = format!("WORKDIR {dir}");
        let exists = match &st.image {
            None => dir == "/",
            Some(img) => {
                let tmp = format!("build-{}", fsutil::random_hex(8));
                let (_, merged) = self.images.mount_container(&tmp, &img.id.to_string())?;
                let found = dir_in_root(&merged, &dir);
                let _ = self.images.remove_container(&tmp);
                found?
            }
        };
        if exists {
            let by = format!("/bin/sh -c #(nop) {created_by}");
            return Ok(self.images.derive(
                st.image.as_ref(),
                st.config.clone(),
                None,
                &by,
                "",
                None,
            )?);
        }
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        tar.append_data(&mut h, dir.trim_start_matches('/'), std::io::empty())
            .map_err(internal)?;
        let bytes = tar.into_inner().map_err(internal)?;
        self.apply_layer(st, &bytes, &created_by)
    }

    /// A layer from a tar applied onto the stage's image (or onto nothing, from scratch).
    fn apply_layer(&self, st: &Stage, tar: &[u8], created_by: &str) -> Result<ImageRecord> {
        match &st.image {
            Some(img) => {
                let tmp = format!("build-{}", fsutil::random_hex(8));
                let (_, merged) = self.images.mount_container(&tmp, &img.id.to_string())?;
                let r = image::layer::apply(tar, image::Compression::None, &merged)
                    .map_err(|e| invalid(e.to_string()))
                    .and_then(|_| {
                        let upper = self
                            .images
                            .snapshots()
                            .container_upper(&tmp)
                            .map_err(internal)?;
                        Ok(self.images.derive(
                            Some(img),
                            st.config.clone(),
                            Some(&upper),
                            created_by,
                            "",
                            None,
                        )?)
                    });
                let _ = self.images.remove_container(&tmp);
                r
            }
            None => {
                let dir = tempfile_dir(&self.data_root().join("builder"))?;
                let r = image::layer::apply(tar, image::Compression::None, &dir)
                    .map_err(|e| invalid(e.to_string()))
                    .and_then(|_| {
                        Ok(self.images.derive(
                            None,
                            st.config.clone(),
                            Some(&dir),
                            created_by,
                            "",
                            None,
                        )?)
                    });
                let _ = fs::remove_dir_all(&dir);
                r
            }
        }
    }

    fn add_archive(&self, st: &Stage, archive: &Path, target: &str) -> Result<ImageRecord> {
        // The archive's entries under the target directory: re-rooted through a tar of them.
        let f = fs::File::open(archive).map_err(internal)?;
        let name = archive
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let reader: Box<dyn Read> = if name.ends_with(".gz") || name.ends_with(".tgz") {
            Box::new(flate2::read::MultiGzDecoder::new(f))
        } else {
            Box::new(f)
        };
        let mut input = tar::Archive::new(reader);
        let mut outp = tar::Builder::new(Vec::new());
        let base = target
            .trim_end_matches('/')
            .trim_start_matches('/')
            .to_string();
        for e in input.entries().map_err(internal)? {
            let mut e = e.map_err(internal)?;
            let path = e.path().map_err(internal)?.to_string_lossy().into_owned();
            let mut h = e.header().clone();
            let n = format!("{base}/{}", path.trim_start_matches("./"));
            let mut data = Vec::new();
            e.read_to_end(&mut data).map_err(internal)?;
            if h.entry_type().is_symlink() || h.entry_type().is_hard_link() {
                let link = e
                    .link_name()
                    .map_err(internal)?
                    .map(|l| l.into_owned())
                    .unwrap_or_default();
                outp.append_link(&mut h, &n, link).map_err(internal)?;
            } else {
                outp.append_data(&mut h, &n, &data[..]).map_err(internal)?;
            }
        }
        let bytes = outp.into_inner().map_err(internal)?;
        self.apply_layer(st, &bytes, &format!("ADD {name} {target}"))
    }
}

/// An instruction's arguments as written: the shell form's text, the exec form as JSON.
fn shown(ins: &Instruction) -> String {
    match &ins.args {
        Args::Exec(v) => serde_json::to_string(v).unwrap_or_default(),
        Args::Shell(s) => s.clone(),
    }
}

/// A context-relative path, cleaned (for the Dockerfile's name).
pub fn clean_rel(p: &str) -> String {
    build::ignore::clean(p)
}

fn is_archive(name: &str) -> bool {
    [".tar", ".tar.gz", ".tgz"]
        .iter()
        .any(|s| name.ends_with(s))
}

fn tempfile_dir(parent: &Path) -> Result<PathBuf> {
    let d = parent.join(format!("scratch-{}", fsutil::random_hex(8)));
    fs::create_dir_all(&d).map_err(internal)?;
    Ok(d)
}

/// Makes the directory `path` inside the root at `rootfs` (resolved inside it).
fn ensure_dir(rootfs: &Path, path: &str) -> Result<()> {
    if path == "/" || path.is_empty() {
        return Ok(());
    }
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    tar.append_data(&mut h, path.trim_start_matches('/'), std::io::empty())
        .map_err(internal)?;
    let bytes = tar.into_inner().map_err(internal)?;
    image::layer::apply(&bytes[..], image::Compression::None, rootfs)
        .map_err(|e| invalid(e.to_string()))?;
    Ok(())
}

/// Whether `path` names a directory inside the root at `rootfs` (resolved inside it).
fn dir_in_root(rootfs: &Path, path: &str) -> Result<bool> {
    let root = fs::File::open(rootfs).map_err(internal)?;
    let rel = std::ffi::CString::new(path.trim_start_matches('/'))
        .map_err(|_| invalid(format!("WORKDIR {path:?}: a NUL byte")))?;
    let rel = if rel.as_bytes().is_empty() {
        c".".to_owned()
    } else {
        rel
    };
    use std::os::fd::AsFd;
    match inroot::openat2_in_root(root.as_fd(), &rel, libc::O_PATH | libc::O_DIRECTORY) {
        Ok(_) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => Ok(false),
        Err(e) => Err(internal(format!("WORKDIR {path}: {e}"))),
    }
}

/// `ARG a=1 b` → [("a", Some("1")), ("b", None)].
fn arg_decls(text: &str) -> Vec<(String, Option<String>)> {
    text.split_whitespace()
        .map(|w| match w.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.trim_matches('"').to_string())),
            None => (w.to_string(), None),
        })
        .collect()
}

/// COPY/ADD's sources and destination after substitution.
fn copy_sources(
    ins: &Instruction,
    env: &BTreeMap<String, String>,
    esc: char,
) -> Result<(Vec<String>, String)> {
    let mut words = match &ins.args {
        Args::Exec(v) => v.clone(),
        Args::Shell(s) => build::shell::expand_words(s, env, esc)
            .map_err(|e| invalid(format!("{}: {e}", ins.keyword)))?,
    };
    if words.len() < 2 {
        return Err(invalid(format!(
            "{} requires at least two arguments",
            ins.keyword
        )));
    }
    let dest = words.pop().unwrap_or_default();
    Ok((words, dest))
}
