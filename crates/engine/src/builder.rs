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
use crate::spec::{MountSpec, Network, RunOptions};

type Result<T> = std::result::Result<T, EngineError>;

fn invalid(msg: impl Into<String>) -> EngineError {
    EngineError::Invalid(msg.into())
}

fn internal(msg: impl std::fmt::Display) -> EngineError {
    EngineError::Internal(msg.to_string())
}

/// The name `berth build` gives a Dockerfile from outside the context in the context tar.
pub const CLI_DOCKERFILE: &str = ".berth-build.Dockerfile";
/// The directory of the context tar that carries `berth build --secret` files.
pub const CLI_SECRETS: &str = ".berth-build-secrets";

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
    /// `--platform` (this machine's only).
    pub platform: Option<String>,
    /// `--network`: the RUN steps' network (default, none or host).
    pub network: Option<String>,
    /// `--secret id=…,src=…`: id → a file of the daemon's.
    pub secrets: BTreeMap<String, PathBuf>,
    /// Credentials per registry (config.json keys) for the images the build pulls.
    pub registry_auth: BTreeMap<String, crate::distribution::Credentials>,
    /// `--add-host`: `name:address` entries in the RUN steps' /etc/hosts.
    pub extra_hosts: Vec<String>,
}

/// A stage being built.
struct Stage {
    /// Its place among the Dockerfile's stages.
    index: usize,
    image: Option<ImageRecord>,
    config: Value,
    /// The ARGs declared in the stage, with their values.
    args: BTreeMap<String, String>,
    /// The global ARGs (a stage sees one only when it declares it again).
    global: BTreeMap<String, String>,
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

/// The build cache: step key → image ID, in `<root>/builder/cache.json`. A build reads it
/// once; each new entry is merged into the file under `CACHE_FILE` (builds run side by
/// side, and `builder prune` empties it).
struct Cache {
    path: PathBuf,
    map: BTreeMap<String, String>,
}

static CACHE_FILE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn read_cache(path: &Path) -> BTreeMap<String, String> {
    fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

impl Cache {
    fn path(root: &Path) -> PathBuf {
        root.join("builder").join("cache.json")
    }

    fn open(root: &Path) -> Cache {
        let path = Cache::path(root);
        let _file = CACHE_FILE.lock().unwrap_or_else(|e| e.into_inner());
        let map = read_cache(&path);
        Cache { path, map }
    }

    fn insert(&mut self, k: String, id: String) -> Result<()> {
        self.map.insert(k.clone(), id.clone());
        let _file = CACHE_FILE.lock().unwrap_or_else(|e| e.into_inner());
        let mut on_disk = read_cache(&self.path);
        on_disk.insert(k, id);
        if let Some(d) = self.path.parent() {
            fs::create_dir_all(d).map_err(internal)?;
        }
        let json = serde_json::to_vec(&on_disk).map_err(internal)?;
        fsutil::write_atomic(&self.path, &json, 0o600).map_err(internal)
    }
}

/// What `builder prune` removed.
#[derive(Debug, Default, serde::Serialize)]
pub struct BuilderPruned {
    /// Cached steps forgotten.
    #[serde(rename = "CachesDeleted")]
    pub steps: usize,
    /// Cache mounts removed.
    #[serde(rename = "CacheMountsDeleted")]
    pub mounts: usize,
    /// Images removed (intermediate images no tag or container uses).
    #[serde(rename = "ImagesDeleted")]
    pub images: Vec<String>,
    /// Bytes freed under the data root.
    #[serde(rename = "SpaceReclaimed")]
    pub bytes: u64,
}

impl Engine {
    /// The images the build cache refers to: kept by `image prune`, as docker keeps its
    /// build cache apart from dangling images.
    pub fn build_cache_images(&self) -> std::collections::BTreeSet<image::digest::Digest> {
        let _file = CACHE_FILE.lock().unwrap_or_else(|e| e.into_inner());
        read_cache(&Cache::path(self.data_root()))
            .values()
            .filter_map(|id| id.parse().ok())
            .collect()
    }

    /// `berth builder prune`: the whole build cache — cached steps, their images unless a tag
    /// or a container uses them, and the RUN cache mounts.
    pub fn builder_prune(&self) -> Result<BuilderPruned> {
        let root = self.data_root();
        let before = fsutil::dir_size(root);
        let mut pruned = BuilderPruned::default();
        {
            let _file = CACHE_FILE.lock().unwrap_or_else(|e| e.into_inner());
            let path = Cache::path(root);
            pruned.steps = read_cache(&path).len();
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(internal(format!("{}: {e}", path.display()))),
            }
        }
        let mounts = root.join("builder").join("cache-mounts");
        for e in fs::read_dir(&mounts).into_iter().flatten().flatten() {
            fs::remove_dir_all(e.path())
                .map_err(|err| internal(format!("{}: {err}", e.path().display())))?;
            pruned.mounts += 1;
        }
        pruned.images = self
            .images
            .prune(false)?
            .iter()
            .map(|d| d.to_string())
            .collect();
        pruned.bytes = before.saturating_sub(fsutil::dir_size(root));
        Ok(pruned)
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

/// A stage of the Dockerfile: its FROM, its instructions, the earlier stages it needs.
struct StagePlan {
    name: Option<String>,
    from: Instruction,
    base: String,
    body: Vec<Instruction>,
    deps: Vec<usize>,
}

/// Where the context is: a directory, or a tar a client sent (indexed; extracted only when
/// a step needs its files).
pub enum BuildContext {
    /// A directory.
    Dir(PathBuf),
    /// A tar file and its index (`build::context::Context::from_tar` with `HIDDEN`).
    Tar {
        /// The tar file.
        file: PathBuf,
        /// Its index.
        context: build::context::Context,
    },
}

/// Docker's predefined ARGs: given with --build-arg, RUN sees them undeclared.
const PROXY_ARGS: [&str; 10] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// The label of the containers RUN steps run in.
pub const BUILD_LABEL: &str = "berth.build.step";
/// The prefix of the image-store mounts (COPY --from, WORKDIR, layers) of a build.
const MOUNT_PREFIX: &str = "berth-build-";

impl Engine {
    /// At start: what builds in flight when the daemon died left — their contexts and
    /// scratch directories, RUN containers and mounts.
    pub(crate) fn sweep_builds(self: &Arc<Self>) {
        let dir = self.data_root().join("builder");
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("context-") || name.starts_with("scratch-") {
                let p = e.path();
                let _ = if p.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
            }
        }
        for c in self.list(true, false) {
            if c.labels.contains_key(BUILD_LABEL) {
                let _ = self.remove(&c.id, true, true);
            }
        }
        for name in self.images.container_names().unwrap_or_default() {
            if name.starts_with(MOUNT_PREFIX) {
                let _ = self.images.remove_container(&name);
            }
        }
    }
}

/// What `berth build` puts in the context tar that is not the context.
pub const HIDDEN: [&str; 2] = [CLI_DOCKERFILE, CLI_SECRETS];

/// What every step of one build shares.
struct Job<'a> {
    opts: &'a BuildOptions,
    /// The context directory, or the context tar.
    source: std::result::Result<PathBuf, PathBuf>,
    /// A context tar's files, once a step needed them.
    extracted: std::sync::Mutex<Option<PathBuf>>,
    context: build::context::Context,
    names: Vec<Option<String>>,
    esc: char,
    global: BTreeMap<String, String>,
    total: usize,
    cache: std::sync::Mutex<Cache>,
    fetched: std::sync::Mutex<BTreeMap<String, Vec<u8>>>,
}

impl Job<'_> {
    /// The context's files in a directory: extracted from the tar the first time.
    fn dir(&self, engine: &Engine) -> Result<PathBuf> {
        let file = match &self.source {
            Ok(d) => return Ok(d.clone()),
            Err(file) => file,
        };
        let mut extracted = self.extracted.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = extracted.as_ref() {
            return Ok(d.clone());
        }
        let dir = tempfile_dir(&engine.data_root().join("builder"))?;
        let applied = fs::File::open(file)
            .map_err(internal)
            .and_then(|f| {
                image::layer::apply(std::io::BufReader::new(f), image::Compression::None, &dir)
                    .map_err(|e| invalid(format!("the build context: {e}")))
            })
            .and_then(|_| {
                for h in HIDDEN {
                    let p = dir.join(h);
                    let r = if p.is_dir() {
                        fs::remove_dir_all(&p)
                    } else {
                        fs::remove_file(&p)
                    };
                    match r {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(internal(e))
                        }
                        _ => {}
                    }
                }
                Ok(())
            });
        if let Err(e) = applied {
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
        *extracted = Some(dir.clone());
        Ok(dir)
    }

    /// The stage a `--from` or `FROM` word names among the stages before `before`.
    fn stage_ref(&self, word: &str, before: usize) -> Option<usize> {
        stage_ref(&self.names, word, before)
    }
}

fn stage_ref(names: &[Option<String>], word: &str, before: usize) -> Option<usize> {
    let lower = word.to_ascii_lowercase();
    word.parse::<usize>()
        .ok()
        .filter(|i| *i < before)
        .or_else(|| {
            names[..before]
                .iter()
                .position(|n| n.as_deref() == Some(lower.as_str()))
        })
}

/// The `from=` of each `--mount` of a RUN.
fn mount_froms(ins: &Instruction) -> Vec<String> {
    ins.flags
        .iter()
        .filter(|f| f.name == "mount")
        .filter_map(|f| f.value.as_deref())
        .flat_map(|v| v.split(','))
        .filter_map(|kv| kv.strip_prefix("from=").map(String::from))
        .collect()
}

impl Engine {
    /// Builds `opts.dockerfile` against the context directory `ctx`; `out` gets the progress
    /// lines. Returns the image ID. Only the stages the target needs are built, those that do
    /// not need each other in parallel. Nothing is tagged unless every step succeeded.
    pub fn build(
        self: &Arc<Self>,
        ctx: BuildContext,
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
        if let Some(p) = &opts.platform {
            let host = format!("linux/{}", host_arch());
            if p.trim_end_matches('/') != host {
                return Err(invalid(format!(
                    "--platform {p}: this machine builds {host} only"
                )));
            }
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
        // Global ARGs (before the first FROM, BuildKit's platform ones predefined), and the
        // stages.
        let platform = format!("linux/{}", host_arch());
        let mut global: BTreeMap<String, String> = BTreeMap::new();
        for prefix in ["TARGET", "BUILD"] {
            global.insert(format!("{prefix}PLATFORM"), platform.clone());
            global.insert(format!("{prefix}OS"), "linux".into());
            global.insert(format!("{prefix}ARCH"), host_arch().into());
            global.insert(format!("{prefix}VARIANT"), String::new());
        }
        let mut plans: Vec<StagePlan> = Vec::new();
        for ins in &df.instructions {
            if ins.keyword == "FROM" {
                let words = build::shell::expand_words(&ins.text(), &global, esc)
                    .map_err(|e| invalid(format!("FROM: {e}")))?;
                let base = words.first().cloned().unwrap_or_default();
                let name = (words.len() == 3).then(|| words[2].to_ascii_lowercase());
                plans.push(StagePlan {
                    name,
                    from: ins.clone(),
                    base,
                    body: Vec::new(),
                    deps: Vec::new(),
                });
            } else if let Some(s) = plans.last_mut() {
                s.body.push(ins.clone());
            } else if ins.keyword == "ARG" {
                for (k, v) in arg_decls(&ins.text()) {
                    let v = v.map(|v| build::shell::expand(&v, &global, esc).unwrap_or(v));
                    if let Some(v) = opts.build_args.get(&k).cloned().or(v) {
                        global.insert(k, v);
                    }
                }
            }
        }
        let names: Vec<Option<String>> = plans.iter().map(|p| p.name.clone()).collect();
        for (si, plan) in plans.iter_mut().enumerate() {
            let mut deps: Vec<usize> = Vec::new();
            if let Some(i) =
                stage_ref(&names, &plan.base, si).filter(|_| plan.base.parse::<usize>().is_err())
            {
                deps.push(i);
            }
            for ins in &plan.body {
                let froms: Vec<String> = match ins.keyword.as_str() {
                    "COPY" | "ADD" => ins.flag("from").map(String::from).into_iter().collect(),
                    "RUN" => mount_froms(ins),
                    _ => Vec::new(),
                };
                deps.extend(froms.iter().filter_map(|f| stage_ref(&names, f, si)));
            }
            deps.sort_unstable();
            deps.dedup();
            plan.deps = deps;
        }
        let target = match &opts.target {
            Some(t) => names
                .iter()
                .position(|n| n.as_deref() == Some(&t.to_ascii_lowercase()))
                .ok_or_else(|| invalid(format!("target stage {t:?} could not be found")))?,
            None => plans.len() - 1,
        };
        // The stages the target needs, and where each one's steps are numbered from.
        let mut needed = vec![false; plans.len()];
        let mut todo = vec![target];
        while let Some(i) = todo.pop() {
            if !std::mem::replace(&mut needed[i], true) {
                todo.extend(&plans[i].deps);
            }
        }
        let mut first_step = vec![0; plans.len()];
        let mut total = 0;
        for (i, p) in plans.iter().enumerate().filter(|(i, _)| needed[*i]) {
            first_step[i] = total + 1;
            total += 1 + p.body.len();
        }
        let (source, context) = match ctx {
            BuildContext::Dir(d) => {
                let c =
                    build::context::Context::open(&d, None).map_err(|e| invalid(e.to_string()))?;
                (Ok(d), c)
            }
            BuildContext::Tar { file, context } => (Err(file), context),
        };
        let job = Job {
            opts,
            source,
            extracted: Default::default(),
            context,
            names,
            esc,
            global,
            total,
            cache: std::sync::Mutex::new(Cache::open(self.data_root())),
            fetched: Default::default(),
        };
        let result = self.run_job(&job, &plans, &needed, &first_step, target, &tags, out);
        if let Some(d) = job
            .extracted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = fs::remove_dir_all(d);
        }
        result
    }

    /// The stages the target needs, in waves, and the tags.
    #[allow(clippy::too_many_arguments)]
    fn run_job(
        self: &Arc<Self>,
        job: &Job,
        plans: &[StagePlan],
        needed: &[bool],
        first_step: &[usize],
        target: usize,
        tags: &[image::reference::Reference],
        out: &mut dyn FnMut(&str),
    ) -> Result<String> {
        let opts = job.opts;
        let mut built: Vec<Option<Stage>> = (0..plans.len()).map(|_| None).collect();
        let mut left: Vec<usize> = (0..plans.len()).filter(|i| needed[*i]).collect();
        while !left.is_empty() {
            let ready: Vec<usize> = left
                .iter()
                .copied()
                .filter(|&i| plans[i].deps.iter().all(|d| built[*d].is_some()))
                .collect();
            let (tx, rx) = std::sync::mpsc::channel::<String>();
            let results: Vec<(usize, Result<Stage>)> = std::thread::scope(|s| {
                let handles: Vec<_> = ready
                    .iter()
                    .map(|&si| {
                        let tx = tx.clone();
                        let (job, built, plan) = (&job, &built, &plans[si]);
                        let step = first_step[si];
                        s.spawn(move || {
                            let mut send = |l: &str| {
                                let _ = tx.send(l.to_string());
                            };
                            self.build_stage(job, si, plan, step, built, &mut send)
                        })
                    })
                    .collect();
                drop(tx);
                for line in rx {
                    out(&line);
                }
                ready
                    .iter()
                    .zip(handles)
                    .map(|(&si, h)| {
                        (
                            si,
                            h.join()
                                .unwrap_or_else(|_| Err(internal("a build thread panicked"))),
                        )
                    })
                    .collect()
            });
            for (si, r) in results {
                built[si] = Some(r?);
            }
            left.retain(|i| !ready.contains(i));
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
        for t in tags {
            self.images.tag(&img.id.to_string(), t)?;
        }
        Ok(img.id.to_string())
    }

    /// An image a build names (FROM, COPY --from, RUN --mount from=): the one here, else
    /// pulled as docker build pulls it, with the credentials the client sent.
    fn build_image(&self, job: &Job, name: &str, out: &mut dyn FnMut(&str)) -> Result<ImageRecord> {
        if let Ok(img) = self.images.resolve(name) {
            return Ok(img);
        }
        let r = image::reference::Reference::parse(name)
            .map_err(|e| invalid(format!("{name}: invalid reference format: {e}")))?;
        let creds = if r.domain() == "docker.io" {
            job.opts
                .registry_auth
                .get("https://index.docker.io/v1/")
                .or_else(|| job.opts.registry_auth.get("docker.io"))
        } else {
            job.opts.registry_auth.get(r.domain())
        }
        .cloned();
        self.pull(name, job.opts.platform.as_deref(), false, creds, &mut |v| {
            // Status changes only: the bars are for terminals.
            if v.get("progress").is_some() {
                return;
            }
            match (v["id"].as_str(), v["status"].as_str()) {
                (Some(id), Some(s)) => out(&format!("{id}: {s}")),
                (None, Some(s)) => out(s),
                _ => {}
            }
        })?;
        Ok(self.images.resolve(name)?)
    }

    /// One stage: its base, the base's ONBUILD triggers, then its instructions.
    fn build_stage(
        self: &Arc<Self>,
        job: &Job,
        si: usize,
        plan: &StagePlan,
        first_step: usize,
        built: &[Option<Stage>],
        out: &mut dyn FnMut(&str),
    ) -> Result<Stage> {
        out(&format!(
            "Step {first_step}/{} : FROM {}",
            job.total,
            shown(&plan.from)
        ));
        let base = &plan.base;
        if let Some(p) = plan.from.flag("platform") {
            let p = build::shell::expand(p, &job.global, job.esc)
                .map_err(|e| invalid(format!("FROM --platform: {e}")))?;
            let host = format!("linux/{}", host_arch());
            if p.trim_end_matches('/') != host {
                return Err(invalid(format!(
                    "FROM --platform={p}: this machine builds {host} only"
                )));
            }
        }
        let from_stage = job
            .stage_ref(base, si)
            .filter(|_| base.parse::<usize>().is_err());
        let (image, mut config) = if base == "scratch" {
            (None, Images::scratch_config())
        } else if let Some(i) = from_stage {
            let s = built[i]
                .as_ref()
                .ok_or_else(|| internal("stage not built"))?;
            (s.image.clone(), s.config.clone())
        } else {
            let img = self
                .build_image(job, base, out)
                .map_err(|e| invalid(format!("FROM {base}: {e}")))?;
            let cfg = self.images.config(&img)?;
            (Some(img), cfg)
        };
        if let Some(id) = image.as_ref().filter(|_| from_stage.is_none()) {
            out(&format!(
                " ---> {}",
                &id.id.to_string().trim_start_matches("sha256:")[..12]
            ));
        }
        let shell = config["config"]["Shell"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_else(|| vec!["/bin/sh".to_string(), "-c".to_string()]);
        // The base image's ONBUILD triggers run first, and are not inherited further.
        let triggers: Vec<String> = config["config"]["OnBuild"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let mut pre: Vec<Instruction> = Vec::new();
        if !triggers.is_empty() {
            config["config"]["OnBuild"] = Value::Null;
            out(&format!(
                "# Executing {} build trigger{}",
                triggers.len(),
                if triggers.len() == 1 { "" } else { "s" }
            ));
            for t in &triggers {
                let (df, problems) = build::dockerfile::parse(t);
                if let Some(p) = problems.iter().find(|p| p.error) {
                    return Err(invalid(format!(
                        "ONBUILD trigger {t:?} of {base}: {}",
                        p.message
                    )));
                }
                pre.extend(df.instructions);
            }
        }
        let mut st = Stage {
            index: si,
            image,
            config,
            args: BTreeMap::new(),
            global: job.global.clone(),
            shell,
        };
        for ins in &pre {
            out(&format!(
                " ---> Running in trigger: {} {}",
                ins.keyword,
                shown(ins)
            ));
            self.step(job, &mut st, ins, built, out)?;
        }
        for (n, ins) in plan.body.iter().enumerate() {
            let flags: String = ins
                .flags
                .iter()
                .map(|f| match &f.value {
                    Some(v) => format!("--{}={v} ", f.name),
                    None => format!("--{} ", f.name),
                })
                .collect();
            out(&format!(
                "Step {}/{} : {} {flags}{}",
                first_step + 1 + n,
                job.total,
                ins.keyword,
                shown(ins)
            ));
            self.step(job, &mut st, ins, built, out)?;
        }
        Ok(st)
    }

    /// One instruction of a stage: from the cache, or run.
    fn step(
        self: &Arc<Self>,
        job: &Job,
        st: &mut Stage,
        ins: &Instruction,
        built: &[Option<Stage>],
        out: &mut dyn FnMut(&str),
    ) -> Result<()> {
        let started = std::time::Instant::now();
        let (esc, opts) = (job.esc, job.opts);
        let env = st.env();
        let kw = ins.keyword.as_str();
        // What makes this step this step.
        let mut extra = String::new();
        if matches!(kw, "COPY" | "ADD") && ins.flag("from").is_none() {
            let srcs = copy_sources(ins, &env, esc)?;
            let mut resolved = Vec::new();
            for s in srcs.0.iter().filter(|s| !s.starts_with("<<") && !is_url(s)) {
                resolved.extend(
                    job.context
                        .resolve(s)
                        .map_err(|e| invalid(format!("{kw}: {e}")))?,
                );
            }
            extra = job
                .context
                .digest(&resolved)
                .map_err(|e| invalid(e.to_string()))?;
            // A URL's content, fetched on every build (as docker build does), is part of it.
            if kw == "ADD" {
                for s in srcs.0.iter().filter(|s| is_url(s)) {
                    extra.push_str(&format!(" {s}={:x}", Sha256::digest(job.fetch(self, s)?)));
                }
            }
        }
        let mut froms: Vec<String> = ins.flag("from").map(String::from).into_iter().collect();
        if kw == "RUN" {
            froms.extend(mount_froms(ins));
            // A bind mount of the context: its content is part of what the step is.
            if ins
                .flags
                .iter()
                .any(|f| f.name == "mount" && f.value.as_deref().is_some_and(is_context_bind))
            {
                let all = job.context.paths().map_err(|e| invalid(e.to_string()))?;
                let top: Vec<String> = all.into_iter().filter(|p| !p.contains('/')).collect();
                extra.push_str(
                    &job.context
                        .digest(&top)
                        .map_err(|e| invalid(e.to_string()))?,
                );
            }
            for (id, path) in &opts.secrets {
                // Which secrets are there, never their content.
                extra.push_str(&format!(" secret:{id}:{}", path.exists()));
            }
        }
        for from in &froms {
            let current = st.index;
            if let Some(s) = job
                .stage_ref(from, current)
                .and_then(|i| built.get(i))
                .and_then(|s| s.as_ref())
            {
                extra.push(' ');
                extra.push_str(&s.parent_id());
            } else if job.stage_ref(from, current).is_none() {
                // An image: which one the name means now (pulled if it is not here).
                let kind = if kw == "RUN" {
                    "RUN --mount from"
                } else {
                    "--from"
                };
                let img = self.build_image(job, from, out).map_err(|e| {
                    invalid(format!(
                        "{kw} {kind}={from}: no such stage, and the image: {e}"
                    ))
                })?;
                extra.push(' ');
                extra.push_str(&img.id.to_string());
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
        let cached = (!opts.no_cache)
            .then(|| {
                job.cache
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .map
                    .get(&k)
                    .cloned()
            })
            .flatten();
        if let Some(img) = cached.and_then(|id| self.images.resolve(&id).ok()) {
            out(" ---> Using cache");
            st.config = self.images.config(&img)?;
            let id = img.id.to_string();
            st.image = Some(img);
            self.stage_locals(st, ins, &env, esc, &opts.build_args)?;
            out(&format!(
                " ---> {}",
                &id.trim_start_matches("sha256:")[..12]
            ));
            return Ok(());
        }
        let image = match kw {
            "RUN" => self.run_step(job, st, ins, &env, built, out)?,
            "COPY" | "ADD" => self.copy_step(job, st, ins, &env, built)?,
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
                    &format!("/bin/sh -c #(nop) {kw} {}", shown(ins)),
                    "",
                    None,
                )?
            }
        };
        let id = image.id.to_string();
        st.config = self.images.config(&image)?;
        st.image = Some(image);
        self.stage_locals(st, ins, &env, esc, &opts.build_args)?;
        job.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(k, id.clone())?;
        out(&format!(
            " ---> {} ({:.1}s)",
            &id.trim_start_matches("sha256:")[..12],
            started.elapsed().as_secs_f64()
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
                // --build-arg, else the default, else the global ARG's value; else unset.
                for (k, v) in arg_decls(&ins.text()) {
                    let v = v.map(|v| build::shell::expand(&v, env, esc).unwrap_or(v));
                    let val = build_args
                        .get(&k)
                        .cloned()
                        .or(v)
                        .or_else(|| st.global.get(&k).cloned());
                    if let Some(val) = val {
                        st.args.insert(k, val);
                    }
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
                    let (ports, proto) = p.split_once('/').unwrap_or((&p, "tcp"));
                    let proto = proto.to_ascii_lowercase();
                    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
                        return Err(invalid(format!("EXPOSE {p}: unknown protocol {proto}")));
                    }
                    let bad = || invalid(format!("EXPOSE {p}: not a port or a port range"));
                    let (lo, hi) = ports.split_once('-').unwrap_or((ports, ports));
                    let (lo, hi): (u16, u16) = (
                        lo.parse().map_err(|_| bad())?,
                        hi.parse().map_err(|_| bad())?,
                    );
                    if lo == 0 || hi < lo {
                        return Err(bad());
                    }
                    for port in lo..=hi {
                        st.config["config"]["ExposedPorts"][format!("{port}/{proto}")] = json!({});
                    }
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

    /// RUN: a container of the stage's image with its environment, user, working directory
    /// and `--mount`s; its output streamed; a non-zero exit fails the build; its changes (the
    /// mounts' stub targets taken out) are the layer.
    fn run_step(
        self: &Arc<Self>,
        job: &Job,
        st: &Stage,
        ins: &Instruction,
        env: &BTreeMap<String, String>,
        built: &[Option<Stage>],
        out: &mut dyn FnMut(&str),
    ) -> Result<ImageRecord> {
        let image = st
            .image
            .as_ref()
            .ok_or_else(|| invalid("RUN: a stage FROM scratch has nothing to run"))?;
        let mut args = match &ins.args {
            Args::Exec(v) => v.clone(),
            Args::Shell(s) => {
                let mut v = st.shell.clone();
                let only_heredoc = ins.heredocs.len() == 1
                    && s.trim()
                        .trim_start_matches("<<")
                        .trim_start_matches('-')
                        .trim_matches(['"', '\''])
                        == ins.heredocs[0].name;
                if only_heredoc {
                    // `RUN <<EOF`: the heredoc is the script.
                    v.push(ins.heredocs[0].body.clone());
                } else if ins.heredocs.is_empty() {
                    v.push(s.clone());
                } else {
                    // `RUN cat <<EOF > f`: the shell reads the heredocs, as written.
                    let mut script = s.clone();
                    for h in &ins.heredocs {
                        script.push('\n');
                        script.push_str(&h.body);
                        if !h.body.ends_with('\n') && !h.body.is_empty() {
                            script.push('\n');
                        }
                        script.push_str(&h.name);
                    }
                    v.push(script);
                }
                v
            }
        };
        if args.is_empty() {
            args.push("true".into());
        }
        // RUN --network, else the build's --network; default: the default bridge.
        let build_net = job.opts.network.as_deref().unwrap_or("default");
        let mode = match ins.flag("network") {
            None | Some("default") => build_net,
            Some("none") => "none",
            Some("host") if build_net == "host" => "host",
            Some("host") => {
                return Err(invalid(
                    "RUN --network=host: allowed only in a build run with --network host",
                ))
            }
            Some(n) => {
                return Err(invalid(format!(
                    "RUN --network={n}: expected default, none or host"
                )))
            }
        };
        // A user-defined network (the build's `networkmode`, as dockerd takes it) by name.
        let (network, run_net) = match mode {
            "default" | "bridge" => (
                Some(crate::network::DEFAULT_NETWORK.to_string()),
                Network::None,
            ),
            "none" => (None, Network::None),
            "host" => (None, Network::Host),
            n => match self.networks.get(n) {
                Ok(net) => (Some(net.name), Network::None),
                Err(_) => {
                    return Err(invalid(format!(
                        "--network {n}: expected default, bridge, none, host or a network's name"
                    )))
                }
            },
        };
        if let Some(s) = ins.flag("security").filter(|s| *s != "sandbox") {
            return Err(invalid(format!(
                "RUN --security={s}: only sandbox is allowed (no insecure builds)"
            )));
        }
        let mut held = Held::default();
        let result = (|| -> Result<ImageRecord> {
            let mut mounts = Vec::new();
            for f in ins.flags.iter().filter(|f| f.name == "mount") {
                let spec = f.value.as_deref().unwrap_or_default();
                if let Some(m) = self.run_mount(job, st, spec, built, &mut held)? {
                    mounts.push(m);
                }
            }
            let mut env_list: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            // The predefined proxy ARGs reach RUN without being declared (and, as docker's,
            // without being part of the cache key).
            for k in PROXY_ARGS {
                if let (Some(v), false) = (job.opts.build_args.get(k), env.contains_key(k)) {
                    env_list.push(format!("{k}={v}"));
                }
            }
            // dockerd's words for a failed RUN name the command as it ran.
            let ran = args.join(" ");
            let req = CreateRequest {
                image: image.id.to_string(),
                extra_hosts: job.opts.extra_hosts.clone(),
                run: RunOptions {
                    args,
                    entrypoint: Some(String::new()),
                    env: env_list,
                    workdir: Some(st.workdir()),
                    user: st.config["config"]["User"]
                        .as_str()
                        .filter(|u| !u.is_empty())
                        .map(String::from),
                    network: run_net,
                    mounts: mounts.clone(),
                    labels: [(BUILD_LABEL.to_string(), String::new())].into(),
                    ..Default::default()
                },
                networks: network
                    .iter()
                    .map(|name| crate::engine::EndpointRequest {
                        name: name.clone(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            };
            let rec = self.create(req)?;
            let id = rec.id.clone();
            held.container = Some(id.clone());
            ensure_dir(&rec.rootfs, &st.workdir())?;
            // The mount targets the image lacks: the runtime makes stubs for them, which are
            // not part of the layer.
            let mut stubs: Vec<String> = Vec::new();
            // The engine's own mounts (as docker's init layer holds them) and the step's.
            let targets = [
                "/proc",
                "/sys",
                "/dev",
                "/etc/hostname",
                "/etc/hosts",
                "/etc/resolv.conf",
            ]
            .into_iter()
            .map(String::from)
            .chain(mounts.iter().map(mount_target));
            for target in targets {
                let mut prefix = String::new();
                for part in target.split('/').filter(|p| !p.is_empty()) {
                    prefix = format!("{prefix}/{part}");
                    if !exists_in_root(&rec.rootfs, &prefix)? {
                        stubs.push(prefix.clone());
                    }
                }
            }
            let (attach, _) = self.attach(&id, false, true, true)?;
            self.start(&id)?;
            let mut stream = attach.wait().map_err(internal)?;
            let mut hdr = [0u8; 8];
            // Per stream (stdout, stderr); stderr's lines in the red dockerd wraps them in.
            let mut pending = [String::new(), String::new()];
            let mut emit = |err: bool, line: &str| {
                if err {
                    out(&format!("\u{1b}[91m{line}\n\u{1b}[0m"));
                } else {
                    out(line);
                }
            };
            while stream.read_exact(&mut hdr).is_ok() {
                let n = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]) as usize;
                let mut buf = vec![0u8; n];
                if stream.read_exact(&mut buf).is_err() {
                    break;
                }
                let err = hdr[0] == 2;
                let p = &mut pending[usize::from(err)];
                p.push_str(&String::from_utf8_lossy(&buf));
                while let Some(nl) = p.find('\n') {
                    let line = p[..nl].to_string();
                    p.drain(..=nl);
                    emit(err, &line);
                }
            }
            for (i, p) in pending.iter().enumerate() {
                if !p.is_empty() {
                    emit(i == 1, p);
                }
            }
            let code = self.wait(&id, WaitCondition::NotRunning)?;
            if code != 0 {
                return Err(invalid(format!(
                    "The command '{ran}' returned a non-zero code: {code}"
                )));
            }
            let upper = self
                .images
                .snapshots()
                .container_upper(&id)
                .map_err(internal)?;
            stubs.sort_by_key(|s| std::cmp::Reverse(s.len()));
            for s in &stubs {
                remove_stub(&upper, s);
            }
            let mut config = st.config.clone();
            config["container_config"] = json!({"Cmd": ["/bin/sh", "-c", ins.text()]});
            Ok(self.images.derive(
                Some(image),
                config,
                Some(&upper),
                &format!("RUN {}", shown(ins)),
                "",
                None,
            )?)
        })();
        if let Some(id) = held.container.take() {
            let _ = self.remove(&id, true, true);
        }
        for tmp in held.mounted.drain(..) {
            let _ = self.images.remove_container(&tmp);
        }
        for dir in held.dirs.drain(..) {
            let _ = fs::remove_dir_all(&dir);
        }
        result
    }

    /// One `RUN --mount=…`: bind (the context or a stage, read-only unless `rw`, whose
    /// writes are then discarded), cache (a directory of the builder's kept across builds),
    /// tmpfs, secret (`berth build --secret`). None for an absent optional secret.
    fn run_mount(
        self: &Arc<Self>,
        job: &Job,
        st: &Stage,
        spec: &str,
        built: &[Option<Stage>],
        held: &mut Held,
    ) -> Result<Option<MountSpec>> {
        let bad = |m: String| invalid(format!("RUN --mount={spec}: {m}"));
        let mut kv: BTreeMap<&str, &str> = BTreeMap::new();
        for part in spec.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, "true"));
            let k = match k {
                "dst" | "destination" => "target",
                "src" => "source",
                "readonly" => "ro",
                k => k,
            };
            kv.insert(k, v);
        }
        let kind = kv.get("type").copied().unwrap_or("bind");
        let flag = |k: &str| kv.get(k).is_some_and(|v| *v == "true" || *v == "1");
        let octal = |k: &str, default: u32| -> Result<u32> {
            kv.get(k).map_or(Ok(default), |v| {
                u32::from_str_radix(v, 8).map_err(|_| bad(format!("{k}={v} is not an octal mode")))
            })
        };
        let number = |k: &str| -> Result<u32> {
            kv.get(k).map_or(Ok(0), |v| {
                v.parse()
                    .map_err(|_| bad(format!("{k}={v} is not a number")))
            })
        };
        let absolute = |t: &str| -> String {
            if t.starts_with('/') {
                t.to_string()
            } else {
                format!("{}/{t}", st.workdir().trim_end_matches('/'))
            }
        };
        for k in kv.keys() {
            let known: &[&str] = match kind {
                "bind" => &["type", "target", "source", "from", "rw", "ro"],
                "cache" => &[
                    "type", "target", "id", "sharing", "mode", "uid", "gid", "ro",
                ],
                "tmpfs" => &["type", "target", "size"],
                "secret" => &[
                    "type", "target", "id", "required", "mode", "uid", "gid", "env",
                ],
                "ssh" => {
                    return Err(bad(
                        "ssh mounts need an SSH agent, which berth build does not forward".into(),
                    ))
                }
                t => {
                    return Err(bad(format!(
                        "unknown mount type {t:?} (bind, cache, tmpfs or secret)"
                    )))
                }
            };
            if !known.contains(k) {
                return Err(bad(format!("unknown option {k:?} for a {kind} mount")));
            }
        }
        match kind {
            "bind" => {
                let target = absolute(
                    kv.get("target")
                        .ok_or_else(|| bad("target is required".into()))?,
                );
                let source = kv.get("source").copied().unwrap_or(".");
                let root: PathBuf = match kv.get("from") {
                    None => job.dir(self)?,
                    Some(from) => {
                        let current = st.index;
                        let img = match job
                            .stage_ref(from, current)
                            .and_then(|i| built.get(i))
                            .and_then(|s| s.as_ref())
                        {
                            Some(s) => s
                                .image
                                .clone()
                                .ok_or_else(|| bad(format!("stage {from} is empty")))?,
                            None => self.build_image(job, from, &mut |_| {}).map_err(|e| {
                                bad(format!("from={from}: no such stage, and the image: {e}"))
                            })?,
                        };
                        let tmp = format!("{MOUNT_PREFIX}from-{}", fsutil::random_hex(8));
                        let (_, merged) = self.images.mount_container(&tmp, &img.id.to_string())?;
                        held.mounted.push(tmp);
                        merged
                    }
                };
                if !kv.contains_key("from") {
                    job.context
                        .resolve(source)
                        .map_err(|e| bad(e.to_string()))?;
                }
                let mut path = resolve_in_root(&root, source)
                    .map_err(|e| bad(format!("source {source}: {e}")))?;
                let rw = flag("rw");
                if rw {
                    // Writes go to a copy that is thrown away.
                    let dir = tempfile_dir(&self.data_root().join("builder"))?;
                    held.dirs.push(dir.clone());
                    let copy = dir.join("src");
                    let st = std::process::Command::new("cp")
                        .arg("-a")
                        .arg("--")
                        .arg(&path)
                        .arg(&copy)
                        .status()
                        .map_err(internal)?;
                    if !st.success() {
                        return Err(bad(format!(
                            "copying {source} for a writable bind mount failed"
                        )));
                    }
                    path = copy;
                }
                Ok(Some(MountSpec::Bind {
                    source: path,
                    target,
                    read_only: !rw,
                }))
            }
            "cache" => {
                let target = absolute(
                    kv.get("target")
                        .ok_or_else(|| bad("target is required".into()))?,
                );
                let id = kv.get("id").map_or(target.clone(), |s| s.to_string());
                let dir = self
                    .data_root()
                    .join("builder")
                    .join("cache-mounts")
                    .join(&key(&[&id])[..32]);
                if !dir.exists() {
                    let parent = dir
                        .parent()
                        .ok_or_else(|| internal("cache mount directory"))?;
                    fs::create_dir_all(parent).map_err(internal)?;
                    let tmp = tempfile_dir(parent)?;
                    use std::os::unix::fs::PermissionsExt;
                    fs::set_permissions(&tmp, fs::Permissions::from_mode(octal("mode", 0o755)?))
                        .map_err(internal)?;
                    std::os::unix::fs::chown(&tmp, Some(number("uid")?), Some(number("gid")?))
                        .map_err(internal)?;
                    if fs::rename(&tmp, &dir).is_err() {
                        let _ = fs::remove_dir_all(&tmp); // another build made it first
                    }
                }
                Ok(Some(MountSpec::Bind {
                    source: dir,
                    target,
                    read_only: flag("ro"),
                }))
            }
            "tmpfs" => {
                let target = absolute(
                    kv.get("target")
                        .ok_or_else(|| bad("target is required".into()))?,
                );
                let size = kv
                    .get("size")
                    .map(|s| parse_size(s).ok_or_else(|| bad(format!("size={s} is not a size"))))
                    .transpose()?;
                Ok(Some(MountSpec::Tmpfs {
                    target,
                    size,
                    mode: None,
                }))
            }
            "secret" => {
                let id = match (kv.get("id"), kv.get("target")) {
                    (Some(id), _) => id.to_string(),
                    (None, Some(t)) => t.rsplit('/').next().unwrap_or(t).to_string(),
                    (None, None) => {
                        return Err(bad("a secret mount needs an id or a target".into()))
                    }
                };
                if kv.contains_key("env") {
                    return Err(bad(
                        "env= secrets are not supported; mount the secret as a file".into(),
                    ));
                }
                let target = absolute(
                    kv.get("target")
                        .map_or(format!("/run/secrets/{id}"), |t| t.to_string())
                        .as_str(),
                );
                let Some(src) = job.opts.secrets.get(&id) else {
                    if flag("required") {
                        return Err(bad(format!("secret {id} is required but was not given (berth build --secret id={id},src=…)")));
                    }
                    return Ok(None);
                };
                // A private copy with the mount's owner and mode; the secret never enters a layer.
                let dir = tempfile_dir(&self.data_root().join("builder"))?;
                held.dirs.push(dir.clone());
                let copy = dir.join("secret");
                fs::copy(src, &copy).map_err(internal)?;
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(&copy, fs::Permissions::from_mode(octal("mode", 0o400)?))
                    .map_err(internal)?;
                std::os::unix::fs::chown(&copy, Some(number("uid")?), Some(number("gid")?))
                    .map_err(internal)?;
                Ok(Some(MountSpec::Bind {
                    source: copy,
                    target,
                    read_only: true,
                }))
            }
            _ => Err(bad(format!("unknown mount type {kind:?}"))),
        }
    }

    /// COPY/ADD: the sources (context, stage or image paths, heredocs, for ADD fetched URLs
    /// and local archives extracted) as one tar applied inside the root, every path resolved
    /// in it.
    fn copy_step(
        self: &Arc<Self>,
        job: &Job,
        st: &Stage,
        ins: &Instruction,
        env: &BTreeMap<String, String>,
        built: &[Option<Stage>],
    ) -> Result<ImageRecord> {
        let kw = ins.keyword.as_str();
        let (srcs, dest) = copy_sources(ins, env, job.esc)?;
        let dest = if dest.starts_with('/') {
            dest
        } else {
            format!("{}/{dest}", st.workdir().trim_end_matches('/'))
        };
        let from = ins.flag("from");
        let mut held = Held::default();
        let result = (|| -> Result<ImageRecord> {
            // Where the sources are: the context, or another stage's or image's root.
            let src_root = match from {
                None => PathBuf::new(), // context sources are read through the context
                Some(from) => {
                    let current = st.index;
                    let img = match job
                        .stage_ref(from, current)
                        .and_then(|i| built.get(i))
                        .and_then(|s| s.as_ref())
                    {
                        Some(s) => s.image.clone().ok_or_else(|| {
                            invalid(format!("{kw} --from={from}: that stage is empty"))
                        })?,
                        None => self.build_image(job, from, &mut |_| {}).map_err(|e| {
                            invalid(format!(
                                "{kw} --from={from}: no such stage, and the image: {e}"
                            ))
                        })?,
                    };
                    let tmp = format!("{MOUNT_PREFIX}from-{}", fsutil::random_hex(8));
                    let (_, merged) = self.images.mount_container(&tmp, &img.id.to_string())?;
                    held.mounted.push(tmp);
                    merged
                }
            };
            let excludes: Vec<&str> = ins
                .flags
                .iter()
                .filter(|f| f.name == "exclude")
                .filter_map(|f| f.value.as_deref())
                .collect();
            let excludes = build::ignore::Ignore::parse(&excludes.join("\n"))
                .map_err(|e| invalid(format!("{kw} --exclude: {e}")))?;
            let chown = match ins.flag("chown") {
                Some(c) => Some(
                    self.owner_ids(
                        st,
                        &build::shell::expand(c, env, job.esc)
                            .map_err(|e| invalid(format!("{kw} --chown: {e}")))?,
                        &mut held,
                    )?,
                ),
                None => None,
            };
            let chmod = match ins.flag("chmod") {
                Some(m) => Some(
                    u32::from_str_radix(m, 8)
                        .ok()
                        .filter(|m| *m <= 0o7777)
                        .ok_or_else(|| invalid(format!("{kw} --chmod={m}: not an octal mode")))?,
                ),
                None => None,
            };
            let parents = ins
                .flags
                .iter()
                .any(|f| f.name == "parents" && f.value.as_deref() != Some("false"));
            let mut resolved: Vec<(String, String)> = Vec::new(); // (source word, path)
            for s in srcs.iter().filter(|s| !s.starts_with("<<") && !is_url(s)) {
                if from.is_some() {
                    let p = build::ignore::clean(s);
                    if s.contains(['*', '?', '[']) {
                        return Err(invalid(format!(
                            "{kw} --from: wildcards are matched in the context only: {s}"
                        )));
                    }
                    if fs::symlink_metadata(src_root.join(&p)).is_err()
                        && resolve_in_root(&src_root, &p).is_err()
                    {
                        return Err(invalid(format!("{kw}: {s}: not found in the stage")));
                    }
                    resolved.push((s.clone(), p));
                } else {
                    for p in job
                        .context
                        .resolve(s)
                        .map_err(|e| invalid(format!("{kw}: {e}")))?
                    {
                        if !excludes.excluded(&p) {
                            resolved.push((s.clone(), p));
                        }
                    }
                }
            }
            let several = srcs.len() > 1 || resolved.len() > 1;
            let mut tar = tar::Builder::new(Vec::new());
            tar.follow_symlinks(false);
            let header = |m: Option<&fs::Metadata>, size: u64, mode: u32| {
                let mut h = tar::Header::new_gnu();
                match m {
                    Some(m) => h.set_metadata(m),
                    None => {
                        h.set_mode(mode);
                        h.set_mtime(0);
                    }
                }
                h.set_size(size);
                if let Some((u, g)) = chown {
                    h.set_uid(u);
                    h.set_gid(g);
                }
                if let (Some(mode), false) = (chmod, m.is_some_and(|m| m.file_type().is_symlink()))
                {
                    h.set_mode(mode);
                }
                h
            };
            for s in &srcs {
                if let Some(name) = s.strip_prefix("<<") {
                    let name = name.trim_start_matches('-').trim_matches(['"', '\'']);
                    let doc = ins
                        .heredocs
                        .iter()
                        .find(|h| h.name == name)
                        .ok_or_else(|| invalid(format!("{kw}: no heredoc {name}")))?;
                    let body = if doc.expand {
                        build::shell::expand(&doc.body, env, job.esc)
                            .unwrap_or_else(|_| doc.body.clone())
                    } else {
                        doc.body.clone()
                    };
                    let target = build::context::target(&dest, name, false, several)
                        .map_err(|e| invalid(format!("{kw}: {e}")))?;
                    let mut h = header(None, body.len() as u64, 0o644);
                    tar.append_data(&mut h, target.trim_start_matches('/'), body.as_bytes())
                        .map_err(internal)?;
                } else if is_url(s) {
                    if kw != "ADD" {
                        return Err(invalid(format!(
                            "COPY {s}: COPY takes no URLs; ADD fetches them"
                        )));
                    }
                    let data = job.fetch(self, s)?;
                    if let Some(want) = ins.flag("checksum") {
                        let got = format!("sha256:{:x}", Sha256::digest(&data));
                        if !want.starts_with("sha256:") {
                            return Err(invalid(format!(
                                "ADD --checksum={want}: expected sha256:<hex>"
                            )));
                        }
                        if got != want {
                            return Err(invalid(format!(
                                "ADD {s}: checksum mismatch: expected {want}, got {got}"
                            )));
                        }
                    }
                    let name = s
                        .split(['?', '#'])
                        .next()
                        .unwrap_or(s)
                        .rsplit('/')
                        .next()
                        .filter(|n| !n.is_empty())
                        .unwrap_or("download");
                    let target = build::context::target(&dest, name, false, several)
                        .map_err(|e| invalid(format!("{kw}: {e}")))?;
                    let mut h = header(None, data.len() as u64, 0o600);
                    tar.append_data(&mut h, target.trim_start_matches('/'), &data[..])
                        .map_err(internal)?;
                }
            }
            // Context sources: read through the context (a tar is never extracted for them).
            if from.is_none() {
                let ctx = &job.context;
                let cerr = |e: build::context::ContextError| invalid(format!("{kw}: {e}"));
                let all = ctx.paths().map_err(cerr)?;
                for (_, rel) in &resolved {
                    let info = ctx.entry(rel).map_err(cerr)?;
                    let name = Path::new(rel)
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let target = if parents && rel != "." {
                        format!("{}/{rel}", dest.trim_end_matches('/'))
                    } else {
                        build::context::target(&dest, &name, info.is_dir(), several)
                            .map_err(cerr)?
                    };
                    if kw == "ADD" && info.is_file() && is_archive(&name) {
                        append_archive(&mut tar, ctx.open_file(rel).map_err(cerr)?, &dest, &name)?;
                        continue;
                    }
                    let mut add =
                        |info: &build::context::EntryInfo, rel: &str, n: &str| -> Result<()> {
                            let mut h = tar::Header::new_gnu();
                            h.set_mode(info.mode & 0o7777);
                            h.set_uid(info.uid);
                            h.set_gid(info.gid);
                            h.set_mtime(info.mtime);
                            if let Some((u, g)) = chown {
                                h.set_uid(u);
                                h.set_gid(g);
                            }
                            if let (Some(mode), None) = (chmod, &info.symlink) {
                                h.set_mode(mode);
                            }
                            let n = n.trim_start_matches('/');
                            if let Some(link) = &info.symlink {
                                h.set_entry_type(tar::EntryType::Symlink);
                                h.set_size(0);
                                tar.append_link(&mut h, n, link).map_err(internal)
                            } else if info.is_dir() {
                                h.set_entry_type(tar::EntryType::Directory);
                                h.set_size(0);
                                tar.append_data(&mut h, n, std::io::empty())
                                    .map_err(internal)
                            } else if info.is_file() {
                                h.set_entry_type(tar::EntryType::Regular);
                                h.set_size(info.size);
                                tar.append_data(&mut h, n, ctx.open_file(rel).map_err(cerr)?)
                                    .map_err(internal)
                            } else {
                                Ok(()) // sockets, fifos and devices are not copied
                            }
                        };
                    if !info.is_dir() {
                        add(&info, rel, &target)?;
                        continue;
                    }
                    let base = target.trim_end_matches('/').to_string();
                    if !base.is_empty() {
                        add(&info, rel, &base)?;
                    }
                    let prefix = if rel == "." {
                        String::new()
                    } else {
                        format!("{rel}/")
                    };
                    // --exclude matches from the context's root and from the source
                    // directory's; an excluded directory takes what is under it along.
                    let mut excluded_dirs: Vec<String> = Vec::new();
                    for child in all.iter().filter(|p| p.starts_with(&prefix)) {
                        let suffix = &child[prefix.len()..];
                        if excluded_dirs.iter().any(|d| child.starts_with(d.as_str())) {
                            continue;
                        }
                        if excludes.excluded(child) || excludes.excluded(suffix) {
                            excluded_dirs.push(format!("{child}/"));
                            continue;
                        }
                        let info = ctx.entry(child).map_err(cerr)?;
                        add(&info, child, &format!("{base}/{suffix}"))?;
                    }
                }
                let bytes = tar.into_inner().map_err(internal)?;
                return self.apply_layer(st, &bytes, &format!("{kw} {}", shown(ins)));
            }
            // A stage's or image's files, every path resolved inside its root.
            for (word, rel) in &resolved {
                let path = resolve_in_root(&src_root, rel)
                    .map_err(|e| invalid(format!("{kw} {word}: {e}")))?;
                let md = fs::symlink_metadata(&path)
                    .map_err(|e| invalid(format!("{kw} {word}: {e}")))?;
                let name = Path::new(rel)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let target = if parents && rel != "." {
                    format!("{}/{rel}", dest.trim_end_matches('/'))
                } else {
                    build::context::target(&dest, &name, md.is_dir(), several)
                        .map_err(|e| invalid(format!("{kw}: {e}")))?
                };
                // ADD extracts a local tar archive into the destination directory.
                if kw == "ADD" && md.is_file() && is_archive(&name) {
                    let f = fs::File::open(&path).map_err(internal)?;
                    append_archive(&mut tar, Box::new(f), &dest, &name)?;
                    continue;
                }
                let mut add = |p: &Path, n: &str| -> std::io::Result<()> {
                    let m = fs::symlink_metadata(p)?;
                    let size = if m.is_file() { m.len() } else { 0 };
                    let mut h = header(Some(&m), size, 0);
                    let n = n.trim_start_matches('/');
                    if m.file_type().is_symlink() {
                        tar.append_link(&mut h, n, fs::read_link(p)?)
                    } else if m.is_dir() {
                        tar.append_data(&mut h, n, std::io::empty())
                    } else if m.is_file() {
                        tar.append_data(&mut h, n, fs::File::open(p)?)
                    } else {
                        Ok(()) // sockets, fifos and devices are not copied
                    }
                };
                if md.is_dir() {
                    let base = target.trim_end_matches('/').to_string();
                    let mut stack = vec![(path.clone(), base.clone(), rel.clone())];
                    if !base.is_empty() {
                        add(&path, &base).map_err(internal)?;
                    }
                    while let Some((dir, into, rel_dir)) = stack.pop() {
                        let mut entries: Vec<_> =
                            fs::read_dir(&dir).map_err(internal)?.flatten().collect();
                        entries.sort_by_key(|e| e.file_name());
                        for e in entries {
                            let fname = e.file_name().to_string_lossy().into_owned();
                            let rel_child = if rel_dir == "." {
                                fname.clone()
                            } else {
                                format!("{rel_dir}/{fname}")
                            };
                            // --exclude matches from the context's root and from the
                            // source directory's.
                            let in_source = rel_child
                                .strip_prefix(rel.as_str())
                                .map_or(rel_child.as_str(), |r| r.trim_start_matches('/'));
                            if excludes.excluded(&rel_child) || excludes.excluded(in_source) {
                                continue;
                            }
                            let n = format!("{into}/{fname}");
                            add(&e.path(), &n).map_err(internal)?;
                            if e.file_type().is_ok_and(|t| t.is_dir()) {
                                stack.push((e.path(), n, rel_child));
                            }
                        }
                    }
                } else {
                    add(&path, &target).map_err(internal)?;
                }
            }
            let bytes = tar.into_inner().map_err(internal)?;
            self.apply_layer(st, &bytes, &format!("{kw} {}", shown(ins)))
        })();
        for tmp in held.mounted.drain(..) {
            let _ = self.images.remove_container(&tmp);
        }
        result
    }

    /// `--chown` as numeric IDs: numbers as they are, names looked up in the stage's
    /// /etc/passwd and /etc/group.
    fn owner_ids(&self, st: &Stage, spec: &str, held: &mut Held) -> Result<(u64, u64)> {
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let numeric = |s: &str| s.parse::<u64>().ok();
        if numeric(user).is_some() && group.is_none_or(|g| numeric(g).is_some()) {
            let u = numeric(user).unwrap_or(0);
            return Ok((u, group.and_then(numeric).unwrap_or(u)));
        }
        let img = st.image.as_ref().ok_or_else(|| {
            invalid(format!(
                "--chown={spec}: names need an /etc/passwd (the stage is FROM scratch)"
            ))
        })?;
        let tmp = format!("{MOUNT_PREFIX}{}", fsutil::random_hex(8));
        let (_, merged) = self.images.mount_container(&tmp, &img.id.to_string())?;
        held.mounted.push(tmp);
        let table = |file: &str| -> Vec<Vec<String>> {
            resolve_in_root(&merged, file)
                .ok()
                .and_then(|p| fs::read_to_string(p).ok())
                .unwrap_or_default()
                .lines()
                .map(|l| l.split(':').map(String::from).collect())
                .collect()
        };
        let passwd = table("etc/passwd");
        let groups = table("etc/group");
        let (uid, primary) = match numeric(user) {
            Some(u) => (u, u),
            None => {
                let row = passwd
                    .iter()
                    .find(|r| r.first().is_some_and(|n| n == user))
                    .ok_or_else(|| {
                        invalid(format!(
                            "--chown={spec}: no user {user} in the stage's /etc/passwd"
                        ))
                    })?;
                (
                    row.get(2).and_then(|v| v.parse().ok()).unwrap_or(0),
                    row.get(3).and_then(|v| v.parse().ok()).unwrap_or(0),
                )
            }
        };
        let gid = match group {
            None => primary,
            Some(g) => match numeric(g) {
                Some(g) => g,
                None => groups
                    .iter()
                    .find(|r| r.first().is_some_and(|n| n == g))
                    .and_then(|r| r.get(2)?.parse().ok())
                    .ok_or_else(|| {
                        invalid(format!(
                            "--chown={spec}: no group {g} in the stage's /etc/group"
                        ))
                    })?,
            },
        };
        Ok((uid, gid))
    }

    /// WORKDIR: the directory made (owned by root, as docker build's) when the image does not
    /// have it; otherwise a config-only step.
    fn workdir_step(&self, st: &Stage) -> Result<ImageRecord> {
        let dir = st.workdir();
        let created_by = format!("WORKDIR {dir}");
        let exists = match &st.image {
            None => dir == "/",
            Some(img) => {
                let tmp = format!("{MOUNT_PREFIX}{}", fsutil::random_hex(8));
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
                let tmp = format!("{MOUNT_PREFIX}{}", fsutil::random_hex(8));
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
}

/// What a step holds until it ends: a build container, mounted images, scratch directories.
#[derive(Default)]
struct Held {
    container: Option<String>,
    mounted: Vec<String>,
    dirs: Vec<PathBuf>,
}

impl Job<'_> {
    /// The body of an http:// or https:// URL (ADD), fetched once per build.
    fn fetch(&self, engine: &Engine, url: &str) -> Result<Vec<u8>> {
        let mut fetched = self.fetched.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = fetched.get(url) {
            return Ok(d.clone());
        }
        let data = crate::distribution::fetch_url(url, &engine.registry_options())
            .map_err(|e| invalid(format!("ADD {url}: cannot be fetched: {e}")))?;
        fetched.insert(url.to_string(), data.clone());
        Ok(data)
    }
}

fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://") || s.starts_with("git@")
}

/// Whether a `--mount` spec binds the context (a bind mount without `from=`).
fn is_context_bind(spec: &str) -> bool {
    let parts: Vec<&str> = spec.split(',').collect();
    let kind = parts
        .iter()
        .find_map(|p| p.strip_prefix("type="))
        .unwrap_or("bind");
    kind == "bind" && !parts.iter().any(|p| p.starts_with("from="))
}

fn mount_target(m: &MountSpec) -> String {
    match m {
        MountSpec::Bind { target, .. }
        | MountSpec::Volume { target, .. }
        | MountSpec::Tmpfs { target, .. } => target.clone(),
    }
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    }
}

/// `1g`, `64m`, `512k` or bytes.
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let s = s.trim_end_matches('b');
    let (num, mult) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 1u64 << 10),
        'm' => (&s[..s.len() - 1], 1 << 20),
        'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// The path of `rel` inside `root`, resolved inside it (symlinks cannot leave it).
fn resolve_in_root(root: &Path, rel: &str) -> std::io::Result<PathBuf> {
    use std::os::fd::{AsFd, AsRawFd};
    let root_fd = fs::File::open(root)?;
    let rel = rel.trim_start_matches('/');
    let c = std::ffi::CString::new(if rel.is_empty() { "." } else { rel }).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "a NUL byte in the path")
    })?;
    let fd = inroot::openat2_in_root(root_fd.as_fd(), &c, libc::O_PATH)?;
    fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Whether `path` exists inside the root at `rootfs` (resolved inside it).
fn exists_in_root(rootfs: &Path, path: &str) -> Result<bool> {
    match resolve_in_root(rootfs, path) {
        Ok(_) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => Ok(false),
        Err(e) => Err(internal(format!("{path}: {e}"))),
    }
}

/// Takes a mount-target stub (an empty file or directory the runtime made) out of an upper
/// directory; anything else, or a path through a symbolic link, stays.
fn remove_stub(upper: &Path, path: &str) {
    let mut p = upper.to_path_buf();
    let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    for (i, part) in parts.iter().enumerate() {
        p.push(part);
        match fs::symlink_metadata(&p) {
            Ok(m) if i + 1 < parts.len() && m.is_dir() => {}
            Ok(m) if i + 1 == parts.len() => {
                let _ = if m.is_dir() {
                    fs::remove_dir(&p) // only when empty
                } else if m.is_file() && m.len() == 0 {
                    fs::remove_file(&p)
                } else {
                    Ok(())
                };
            }
            _ => return,
        }
    }
}

/// The entries of a local tar archive (plain or gzip) re-rooted under `into`.
fn append_archive(
    tar: &mut tar::Builder<Vec<u8>>,
    archive: Box<dyn Read + Send>,
    into: &str,
    name: &str,
) -> Result<()> {
    use std::io::BufRead;
    let mut buffered = std::io::BufReader::new(archive);
    let gz = buffered
        .fill_buf()
        .map_err(internal)?
        .starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn Read> = if gz {
        Box::new(flate2::read::MultiGzDecoder::new(buffered))
    } else {
        Box::new(buffered)
    };
    let mut input = tar::Archive::new(reader);
    let base = into.trim_end_matches('/').trim_start_matches('/');
    for e in input
        .entries()
        .map_err(|e| invalid(format!("ADD {name}: {e}")))?
    {
        let mut e = e.map_err(|e| invalid(format!("ADD {name}: {e}")))?;
        let path = e.path().map_err(internal)?.to_string_lossy().into_owned();
        let rel = path.trim_start_matches("./").trim_start_matches('/');
        if rel.is_empty() {
            continue;
        }
        let n = if base.is_empty() {
            rel.to_string()
        } else {
            format!("{base}/{rel}")
        };
        let mut h = e.header().clone();
        let kind = h.entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let link = e
                .link_name()
                .map_err(internal)?
                .map(|l| l.into_owned())
                .unwrap_or_default();
            // A hard link names another entry of the archive: re-rooted with it.
            let link = if kind.is_hard_link() {
                let l = link.to_string_lossy();
                let l = l.trim_start_matches("./").trim_start_matches('/');
                PathBuf::from(if base.is_empty() {
                    l.to_string()
                } else {
                    format!("{base}/{l}")
                })
            } else {
                link
            };
            h.set_size(0);
            tar.append_link(&mut h, &n, link).map_err(internal)?;
        } else {
            let mut data = Vec::new();
            e.read_to_end(&mut data).map_err(internal)?;
            tar.append_data(&mut h, &n, &data[..]).map_err(internal)?;
        }
    }
    Ok(())
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
