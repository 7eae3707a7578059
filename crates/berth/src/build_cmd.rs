//! `berth build`: the context (through its .dockerignore) sent to the daemon as a tar, the
//! progress printed; and `--check` (parse and lint the Dockerfile only, no build).

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context as _, Result};
use api::client::{Client, Send};
use api::http::encode;
use clap::Args;

use crate::util::Failure;

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// Parse and lint the Dockerfile only, reporting every problem.
    #[arg(long)]
    check: bool,
    /// The Dockerfile (default: CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Name and optionally a tag (name:tag); repeatable.
    #[arg(short = 't', long = "tag")]
    tag: Vec<String>,
    /// Set build-time variables.
    #[arg(long = "build-arg")]
    build_arg: Vec<String>,
    /// Set the target build stage to build.
    #[arg(long)]
    target: Option<String>,
    /// Do not use cache when building the image.
    #[arg(long = "no-cache")]
    no_cache: bool,
    /// Set metadata for an image.
    #[arg(long = "label")]
    label: Vec<String>,
    /// Write the image ID to the file.
    #[arg(long)]
    iidfile: Option<PathBuf>,
    /// Suppress the build output and print image ID on success.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Set the target platform (this machine's, linux/amd64 here).
    #[arg(long)]
    platform: Option<String>,
    /// The network of the RUN steps: default (the default bridge), none or host.
    #[arg(long)]
    network: Option<String>,
    /// Type of progress output: auto, plain or tty.
    #[arg(long, default_value = "auto")]
    progress: String,
    /// A secret for RUN --mount=type=secret: id=NAME,src=FILE.
    #[arg(long)]
    secret: Vec<String>,
    /// The build context: a directory, or - for a Dockerfile or a context tar on stdin.
    context: PathBuf,
}

/// `id=NAME,src=FILE` (also `source=`, `type=file`) → (NAME, FILE).
fn parse_secret(s: &str) -> Result<(String, PathBuf)> {
    let (mut id, mut src) = (None, None);
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("id", v)) => id = Some(v.to_string()),
            Some(("src" | "source", v)) => src = Some(PathBuf::from(v)),
            Some(("type", "file")) => {}
            _ => bail!("--secret {s}: expected id=NAME,src=FILE, not {part:?}"),
        }
    }
    let id = id.ok_or_else(|| anyhow!("--secret {s}: id= is missing"))?;
    if id.is_empty() || id.contains(['/', '\0']) || id.starts_with('.') {
        bail!("--secret {s}: {id:?} is not a usable id");
    }
    let src = src.unwrap_or_else(|| PathBuf::from(&id));
    Ok((id, src))
}

/// Whether `b` starts like a tar archive (ustar magic) or a gzip stream.
fn looks_like_archive(b: &[u8]) -> bool {
    b.starts_with(&[0x1f, 0x8b]) || b.get(257..262) == Some(b"ustar")
}

pub fn run(c: Option<&Client>, a: &BuildArgs) -> Result<i32> {
    if !matches!(a.progress.as_str(), "auto" | "plain" | "tty" | "quiet") {
        bail!(Failure::new(
            125,
            format!(
                "--progress {}: expected auto, plain, tty or quiet",
                a.progress
            )
        ));
    }
    let stdin = a.context.as_os_str() == "-";
    let mut input = Vec::new();
    if stdin {
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut input)?;
    }
    let archive = stdin && looks_like_archive(&input);
    let file = a
        .file
        .clone()
        .unwrap_or_else(|| a.context.join("Dockerfile"));
    let text = if archive {
        String::new()
    } else if stdin {
        String::from_utf8(input.clone()).context("the Dockerfile on stdin is not UTF-8")?
    } else {
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?
    };
    if a.check {
        if archive {
            bail!("--check reads a Dockerfile, not a context archive");
        }
        return check(&file, &text);
    }
    if !archive {
        // A Dockerfile that cannot build fails here, named as the user knows it, each error
        // with its place and its line.
        let (_, problems) = build::lint::check(&text);
        let shown = if stdin {
            "<stdin>".to_string()
        } else {
            file.display().to_string()
        };
        let lines: Vec<&str> = text.lines().collect();
        let mut errors = 0;
        for p in problems.iter().filter(|p| p.error) {
            errors += 1;
            eprintln!("{shown}:{}:{}: error: {}", p.line, p.column, p.message);
            if let Some(l) = lines.get(p.line.saturating_sub(1)) {
                eprintln!("{:>5} | {l}", p.line);
            }
        }
        if errors > 0 {
            bail!(Failure::new(
                1,
                format!("{shown}: {errors} error(s); nothing was built")
            ));
        }
    }
    let secrets = a
        .secret
        .iter()
        .map(|s| parse_secret(s))
        .collect::<Result<Vec<_>>>()?;
    let c = c.ok_or_else(|| anyhow!("no daemon to build with"))?;
    let quiet = a.quiet || a.progress == "quiet";
    if archive {
        // A context archive as it is; its Dockerfile is -f's path in it.
        let f = a
            .file
            .as_ref()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| "Dockerfile".into());
        return send(c, a, input, &f, quiet);
    }
    // The context as a tar: what .dockerignore leaves, and the Dockerfile (under a name of
    // its own when it lives outside the context).
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    let paths = if stdin {
        Vec::new() // a Dockerfile on stdin: no context
    } else {
        build::context::Context::open(&a.context, a.file.as_deref())
            .map_err(|e| anyhow!("{e}"))?
            .paths()
            .map_err(|e| anyhow!("{e}"))?
    };
    for p in paths {
        let full = a.context.join(&p);
        let md = std::fs::symlink_metadata(&full)?;
        if md.is_dir() {
            let mut h = tar::Header::new_gnu();
            h.set_metadata(&md);
            h.set_size(0);
            tar.append_data(&mut h, &p, std::io::empty())?;
        } else {
            tar.append_path_with_name(&full, &p)?;
        }
    }
    let dockerfile_name = engine::builder::CLI_DOCKERFILE;
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o600);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(text.len() as u64);
    tar.append_data(&mut h, dockerfile_name, text.as_bytes())?;
    for (id, src) in &secrets {
        let data = std::fs::read(src)
            .with_context(|| format!("--secret id={id}: reading {}", src.display()))?;
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o600);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(data.len() as u64);
        let name = format!("{}/{id}", engine::builder::CLI_SECRETS);
        tar.append_data(&mut h, name, &data[..])?;
    }
    let bytes = tar.into_inner()?;
    send(c, a, bytes, dockerfile_name, quiet)
}

/// Sends the context tar to the daemon's build and prints its progress.
fn send(
    c: &Client,
    a: &BuildArgs,
    bytes: Vec<u8>,
    dockerfile_name: &str,
    quiet: bool,
) -> Result<i32> {
    let mut target = format!(
        "/build?f={}&nocache={}",
        encode(dockerfile_name),
        u8::from(a.no_cache)
    );
    if let Some(p) = &a.platform {
        target.push_str(&format!("&platform={}", encode(p)));
    }
    if let Some(n) = &a.network {
        target.push_str(&format!("&networkmode={}", encode(n)));
    }
    for t in &a.tag {
        target.push_str(&format!("&t={}", encode(t)));
    }
    for b in &a.build_arg {
        let b = if b.contains('=') {
            b.clone()
        } else {
            format!("{b}={}", std::env::var(b).unwrap_or_default())
        };
        target.push_str(&format!("&buildarg={}", encode(&b)));
    }
    for l in &a.label {
        target.push_str(&format!("&label={}", encode(l)));
    }
    if let Some(t) = &a.target {
        target.push_str(&format!("&target={}", encode(t)));
    }
    let mut reader = std::io::Cursor::new(bytes);
    // The credentials a FROM of a registry's image may need, as docker build sends them.
    let auth = crate::registry_client_cmd::registry_config_header()?;
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("X-Registry-Config", a)])
        .unwrap_or_default();
    let resp = c
        .call_with(
            "POST",
            &target,
            &headers,
            Send::Stream(&mut reader, "application/x-tar"),
        )
        .map_err(|e| Failure::new(1, e.to_string()))?;
    let mut out = std::io::stdout().lock();
    for line in std::io::BufReader::new(resp).lines() {
        let line = line?;
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if let Some(s) = v["stream"].as_str() {
            if !quiet {
                write!(out, "{s}")?;
                out.flush()?;
            }
        } else if let Some(id) = v["aux"]["ID"].as_str() {
            if quiet {
                writeln!(out, "{id}")?;
            } else {
                writeln!(
                    out,
                    "Successfully built {}",
                    &id.trim_start_matches("sha256:")[..12]
                )?;
                for t in &a.tag {
                    writeln!(out, "Successfully tagged {t}")?;
                }
            }
            if let Some(f) = &a.iidfile {
                std::fs::write(f, id).with_context(|| format!("writing {}", f.display()))?;
            }
            return Ok(0);
        } else if let Some(e) = v["error"].as_str() {
            bail!(Failure::new(1, e.to_string()));
        }
    }
    bail!(Failure::new(1, "the build ended without a result"))
}

/// Prints `file:line:column: error|warning: message (Rule)` for each problem; exit status 1
/// when there is any, as `docker build --check`.
fn check(file: &std::path::Path, text: &str) -> Result<i32> {
    let (_, problems) = build::lint::check(text);
    for p in &problems {
        println!(
            "{}:{}:{}: {}: {} ({})",
            file.display(),
            p.line,
            p.column,
            if p.error { "error" } else { "warning" },
            p.message,
            p.rule
        );
    }
    if problems.is_empty() {
        println!("Check complete, no warnings found.");
        Ok(0)
    } else {
        let errors = problems.iter().filter(|p| p.error).count();
        println!(
            "Check complete, {} error(s) and {} warning(s) have been found!",
            errors,
            problems.len() - errors
        );
        Ok(1)
    }
}
