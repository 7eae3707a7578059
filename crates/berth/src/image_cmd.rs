//! `berth images`, `berth image …`, `berth tag`, `berth rmi`: the image store from the command
//! line, with Docker's command and flag names.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use api::client::{Client, Send};
use api::http::encode;
use clap::{Args, Subcommand};
use image::reference::Reference;
use serde_json::{json, Value};

use crate::util::{human_size, print_table, Failure};

#[derive(Args)]
pub struct ListArgs {
    /// Show all images (the build cache's intermediate images are hidden by default).
    #[arg(long, short = 'a')]
    all: bool,
    /// Only image ids.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Show manifest digests.
    #[arg(long)]
    digests: bool,
    /// Show full image ids.
    #[arg(long = "no-trunc")]
    no_trunc: bool,
    /// dangling=true|false, reference=<pattern> (repeatable).
    #[arg(long, short = 'f')]
    filter: Vec<String>,
    /// `json` (one object per line) or a template using {{.Repository}} {{.Tag}} {{.ID}} {{.Digest}} {{.CreatedAt}} {{.Size}}.
    #[arg(long)]
    format: Option<String>,
}

#[derive(Subcommand)]
pub enum ImageCmd {
    /// List images.
    #[command(alias = "list")]
    Ls(ListArgs),
    /// Sign an image in its registry as cosign does (the `sha256-<digest>.sig` tag, or a
    /// Sigstore bundle referrer with --bundle), with an ECDSA P-256 private key (PEM).
    Sign {
        /// The private key: PKCS#8 `PRIVATE KEY` or SEC1 `EC PRIVATE KEY` PEM.
        #[arg(long)]
        key: PathBuf,
        /// Write a cosign 3 Sigstore bundle (through the referrers API) instead of the
        /// legacy signature.
        #[arg(long)]
        bundle: bool,
        /// Registries reachable over plain http (hosts or CIDRs).
        #[arg(long = "insecure-registry")]
        insecure_registry: Vec<String>,
        image: String,
    },
    /// Check that an image in its registry carries a signature by a public key, in either
    /// cosign format; offline (no transparency log).
    Verify {
        /// The public key (PEM `PUBLIC KEY`).
        #[arg(long)]
        key: PathBuf,
        /// Registries reachable over plain http (hosts or CIDRs).
        #[arg(long = "insecure-registry")]
        insecure_registry: Vec<String>,
        image: String,
    },
    /// Write a new ECDSA P-256 key pair for signing: KEY (private, mode 0600) and KEY.pub.
    GenerateKeyPair {
        /// The private key's path; the public key goes to <path>.pub.
        #[arg(long, default_value = "cosign.key")]
        output: PathBuf,
    },
    /// Create an image from a root file system tarball (plain, gzip or zstd; `-` for stdin).
    Import {
        /// A Dockerfile instruction to apply: CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, STOPSIGNAL, USER, VOLUME, WORKDIR.
        #[arg(long, short = 'c')]
        change: Vec<String>,
        /// A commit message for the image's history.
        #[arg(long, short = 'm', default_value = "")]
        message: String,
        file: String,
        reference: Option<String>,
    },
    /// Show images' details as JSON.
    Inspect {
        /// Format output using a Go template.
        #[arg(short = 'f', long)]
        format: Option<String>,
        names: Vec<String>,
    },
    /// Show how an image was made.
    History {
        #[arg(long = "no-trunc")]
        no_trunc: bool,
        name: String,
    },
    /// The versions a tag has pointed at: the current image first, then earlier ones, newest first.
    Versions { name: String },
    /// Give an image another name (docker tag).
    Tag { source: String, target: String },
    /// Remove images (docker rmi).
    #[command(alias = "rmi", alias = "remove")]
    Rm {
        #[arg(long, short = 'f')]
        force: bool,
        names: Vec<String>,
    },
    /// Remove images without a name (all unused ones with --all) and unreferenced content.
    Prune {
        #[arg(long, short = 'a')]
        all: bool,
        #[arg(long, short = 'f')]
        force: bool,
    },
    /// Write images to a tar archive (docker save; the OCI image layout with --format oci).
    Save {
        /// Write to this file instead of stdout.
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
        /// docker (OCI layout + Docker's manifest.json, as docker save writes) or oci.
        #[arg(long, default_value = "docker")]
        format: String,
        names: Vec<String>,
    },
    /// Load images from a tar archive (docker save output, old or new, or an OCI image layout).
    Load {
        /// Read from this file instead of stdin.
        #[arg(long, short = 'i')]
        input: Option<PathBuf>,
        #[arg(long, short = 'q')]
        quiet: bool,
    },
    /// Make a new image from a container's changes (docker commit).
    Commit {
        #[arg(long, short = 'c')]
        change: Vec<String>,
        #[arg(long, short = 'm', default_value = "")]
        message: String,
        container: String,
        reference: Option<String>,
    },
    /// Mount an image's root file system for a container (an overlay with a writable layer); prints its path.
    Mount { container: String, name: String },
    /// Unmount and remove a container's root file system.
    Umount { container: String },
}

/// A row of the daemon's image list.
#[derive(serde::Deserialize)]
struct Summary {
    id: String,
    names: Vec<String>,
    manifest: String,
    created: String,
    size: u64,
}

fn short(id: &str, no_trunc: bool) -> String {
    if no_trunc {
        id.to_string()
    } else {
        id.trim_start_matches("sha256:").chars().take(12).collect()
    }
}

fn fail(e: api::client::ApiError) -> anyhow::Error {
    Failure::new(1, e.to_string()).into()
}

/// Rows of `berth images`: one per name, or one `<none>` row for an unnamed image.
fn rows(summaries: &[Summary]) -> Vec<(String, String, &Summary)> {
    let mut out = Vec::new();
    for s in summaries {
        if s.names.is_empty() {
            out.push(("<none>".to_string(), "<none>".to_string(), s));
        }
        for n in &s.names {
            let (repo, tag) = match Reference::parse(n) {
                Ok(r) => (
                    r.familiar_repository(),
                    r.tag().unwrap_or("<none>").to_string(),
                ),
                Err(_) => (n.clone(), "<none>".into()),
            };
            out.push((repo, tag, s));
        }
    }
    out
}

fn matches_filters(repo: &str, tag: &str, s: &Summary, filters: &[String]) -> Result<bool> {
    for f in filters {
        let (k, v) = f
            .split_once('=')
            .with_context(|| format!("--filter {f:?}: expected key=value"))?;
        let ok = match k {
            "dangling" => match v {
                "true" => s.names.is_empty(),
                "false" => !s.names.is_empty(),
                _ => bail!("--filter dangling={v}: expected true or false"),
            },
            "reference" => glob(v, &format!("{repo}:{tag}")) || glob(v, repo),
            _ => bail!("--filter {k}: unknown filter (dangling, reference)"),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Shell-style `*` and `?` matching.
fn glob(pattern: &str, s: &str) -> bool {
    fn go(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], s) || (!s.is_empty() && go(p, &s[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &s[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), s.as_bytes())
}

pub fn list(c: &Client, a: &ListArgs) -> Result<()> {
    let summaries: Vec<Summary> = serde_json::from_value(
        c.json("GET", &format!("/images?all={}", u8::from(a.all)), None)
            .map_err(fail)?,
    )?;
    let mut out = std::io::stdout().lock();
    let mut shown = Vec::new();
    for (repo, tag, s) in rows(&summaries) {
        if matches_filters(&repo, &tag, s, &a.filter)? {
            shown.push((repo, tag, s));
        }
    }
    if a.quiet {
        let mut seen = std::collections::BTreeSet::new();
        for (_, _, s) in &shown {
            if seen.insert(&s.id) {
                writeln!(out, "{}", short(&s.id, a.no_trunc))?;
            }
        }
        return Ok(());
    }
    if let Some(fmt) = &a.format {
        for (repo, tag, s) in &shown {
            let fields = json!({
                "Repository": repo, "Tag": tag, "ID": short(&s.id, a.no_trunc), "Digest": s.manifest,
                "CreatedAt": s.created, "Size": human_size(s.size),
            });
            if fmt == "json" || fmt == "{{json .}}" {
                writeln!(out, "{fields}")?;
            } else {
                writeln!(
                    out,
                    "{}",
                    crate::template::render(fmt, &fields).map_err(|e| anyhow!(e))?
                )?;
            }
        }
        return Ok(());
    }
    let mut table: Vec<Vec<String>> = vec![];
    let mut header = vec!["REPOSITORY", "TAG"];
    if a.digests {
        header.push("DIGEST");
    }
    header.extend(["IMAGE ID", "CREATED", "SIZE"]);
    table.push(header.iter().map(|s| s.to_string()).collect());
    for (repo, tag, s) in &shown {
        let mut row = vec![repo.clone(), tag.clone()];
        if a.digests {
            row.push(s.manifest.clone());
        }
        row.extend([
            short(&s.id, a.no_trunc),
            s.created.get(..19).unwrap_or(&s.created).replace('T', " "),
            human_size(s.size),
        ]);
        table.push(row);
    }
    Ok(print_table(&mut out, &table)?)
}

/// `docker image inspect`'s document for one image.
pub fn inspect_doc(c: &Client, name: &str) -> Result<Value> {
    let v = c
        .json(
            "GET",
            &format!("/images/inspect?name={}", encode(name)),
            None,
        )
        .map_err(fail)?;
    let (r, config) = (&v["record"], &v["config"]);
    let names: Vec<String> = v["names"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n.as_str().and_then(|n| Reference::parse(n).ok()))
        .map(|t| t.familiar())
        .collect();
    let digests: Vec<String> = v["names"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n.as_str().and_then(|n| Reference::parse(n).ok()))
        .map(|t| {
            format!(
                "{}@{}",
                t.familiar_repository(),
                r["manifest"].as_str().unwrap_or("")
            )
        })
        .collect();
    Ok(json!({
        "Id": r["id"],
        "RepoTags": names,
        "RepoDigests": digests,
        "Created": config["created"],
        "Comment": config["history"].as_array().and_then(|h| h.last()).and_then(|h| h["comment"].as_str()).unwrap_or(""),
        "Author": config["author"].as_str().unwrap_or(""),
        "Config": config["config"],
        "Architecture": config["architecture"],
        "Variant": config["variant"],
        "Os": config["os"],
        "Size": r["size"],
        "RootFS": {"Type": "layers", "Layers": r["diff_ids"]},
        "Metadata": {"Manifest": r["manifest"]},
    }))
}

fn inspect(c: &Client, names: &[String], format: Option<&str>) -> Result<()> {
    if names.is_empty() {
        bail!("image inspect: name at least one image");
    }
    let docs = names
        .iter()
        .map(|n| inspect_doc(c, n))
        .collect::<Result<Vec<_>>>()?;
    crate::container_cmd::print_docs(&docs, format)
}

fn history(c: &Client, name: &str, no_trunc: bool) -> Result<()> {
    let v = c
        .json(
            "GET",
            &format!("/images/history?name={}", encode(name)),
            None,
        )
        .map_err(fail)?;
    let mut table = vec![["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"]
        .map(String::from)
        .to_vec()];
    let entries = v["history"].as_array().cloned().unwrap_or_default();
    let sizes: Vec<u64> = v["layer_sizes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| s.as_u64().unwrap_or(0))
        .collect();
    let mut layer = sizes.len();
    for (i, h) in entries.iter().enumerate().rev() {
        let empty = h["empty_layer"].as_bool().unwrap_or(false);
        let size = if empty {
            0
        } else {
            layer = layer.saturating_sub(1);
            sizes.get(layer).copied().unwrap_or(0)
        };
        let mut by = h["created_by"].as_str().unwrap_or("").to_string();
        if !no_trunc && by.chars().count() > 45 {
            by = by.chars().take(44).collect();
            by.push('…');
        }
        let id = if i + 1 == entries.len() {
            short(v["id"].as_str().unwrap_or(""), no_trunc)
        } else {
            "<missing>".into()
        };
        table.push(vec![
            id,
            h["created"]
                .as_str()
                .unwrap_or("")
                .get(..19)
                .unwrap_or("")
                .replace('T', " "),
            by,
            human_size(size),
            h["comment"].as_str().unwrap_or("").to_string(),
        ]);
    }
    Ok(print_table(&mut std::io::stdout().lock(), &table)?)
}

fn versions(c: &Client, name: &str) -> Result<()> {
    let v = c
        .json(
            "GET",
            &format!("/images/versions?name={}", encode(name)),
            None,
        )
        .map_err(fail)?;
    let mut table = vec![["", "IMAGE ID", "MANIFEST DIGEST", "UNTIL"]
        .map(String::from)
        .to_vec()];
    if v["current"].is_object() {
        table.push(vec![
            "*".into(),
            short(v["current"]["id"].as_str().unwrap_or(""), false),
            v["current"]["manifest"].as_str().unwrap_or("").into(),
            "now".into(),
        ]);
    }
    for h in v["history"].as_array().cloned().unwrap_or_default() {
        let until = h["until"].as_str().unwrap_or("");
        table.push(vec![
            String::new(),
            short(h["id"].as_str().unwrap_or(""), false),
            h["manifest"].as_str().unwrap_or("(removed)").to_string(),
            until.get(..19).unwrap_or(until).replace('T', " "),
        ]);
    }
    if table.len() == 1 {
        bail!("no such image: {name}");
    }
    Ok(print_table(&mut std::io::stdout().lock(), &table)?)
}

pub fn tag(c: &Client, source: &str, target: &str) -> Result<()> {
    let t = Reference::parse(target)?;
    if t.digest().is_some() {
        bail!("tag {target:?}: a tag cannot contain a digest");
    }
    c.call(
        "POST",
        &format!(
            "/images/tag?source={}&target={}",
            encode(source),
            encode(target)
        ),
        Send::Nothing,
    )
    .map_err(fail)?;
    Ok(())
}

pub fn rmi(c: &Client, names: &[String], force: bool) -> Result<()> {
    if names.is_empty() {
        bail!("rmi: name at least one image");
    }
    let mut failed = false;
    for n in names {
        match c.json(
            "DELETE",
            &format!("/images?name={}&force={}", encode(n), u8::from(force)),
            None,
        ) {
            Ok(v) => {
                for u in v["untagged"].as_array().into_iter().flatten() {
                    let u = u.as_str().unwrap_or("").to_string();
                    println!(
                        "Untagged: {}",
                        Reference::parse(&u).map(|r| r.familiar()).unwrap_or(u)
                    );
                }
                if let Some(d) = v["deleted"].as_str() {
                    println!("Deleted: {d}");
                }
            }
            Err(e) => {
                eprintln!("berth: {e}");
                failed = true;
            }
        }
    }
    if failed {
        bail!("some images were not removed");
    }
    Ok(())
}

/// Shows upload progress on stderr when it is a terminal.
struct Progress<R> {
    inner: R,
    done: u64,
    total: Option<u64>,
    label: &'static str,
    shown: std::time::Instant,
    tty: bool,
}

impl<R: Read> Progress<R> {
    fn new(inner: R, total: Option<u64>, label: &'static str) -> Self {
        // SAFETY: isatty has no preconditions.
        let tty = unsafe { libc::isatty(2) } == 1;
        Progress {
            inner,
            done: 0,
            total,
            label,
            shown: std::time::Instant::now(),
            tty,
        }
    }

    fn draw(&self) {
        let bar = match self.total {
            Some(t) if t > 0 => {
                let filled = ((self.done as f64 / t as f64) * 40.0) as usize;
                format!(
                    "[{}>{}] {}/{}",
                    "=".repeat(filled.min(40)),
                    " ".repeat(40 - filled.min(40)),
                    human_size(self.done),
                    human_size(t)
                )
            }
            _ => human_size(self.done),
        };
        eprint!("\r{} {bar}", self.label);
    }
}

impl<R: Read> Read for Progress<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        if self.tty && (self.shown.elapsed().as_millis() > 100 || n == 0) {
            self.draw();
            self.shown = std::time::Instant::now();
            if n == 0 {
                eprintln!();
            }
        }
        Ok(n)
    }
}

fn upload(c: &Client, target: &str, input: Option<&PathBuf>, label: &'static str) -> Result<Value> {
    let (reader, total): (Box<dyn Read>, Option<u64>) = match input {
        Some(p) if p.as_os_str() != "-" => {
            let f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
            let len = f.metadata().ok().map(|m| m.len());
            (Box::new(f), len)
        }
        _ => (Box::new(std::io::stdin().lock()), None),
    };
    let mut r = Progress::new(reader, total, label);
    c.call("POST", target, Send::Stream(&mut r, "application/x-tar"))
        .map_err(fail)?
        .json()
        .map_err(fail)
}

/// A registry session for `image`'s repository, and the reference after the repository.
fn registry_session(
    image: &str,
    insecure: &[String],
) -> Result<(engine::distribution::Session, image::reference::Reference)> {
    let r = image::reference::Reference::parse(image).map_err(|e| anyhow!("{image}: {e}"))?;
    let creds = crate::registry_client_cmd::credentials_for(r.domain())?;
    let opts = engine::distribution::RegistryOptions {
        insecure: insecure.to_vec(),
        ..Default::default()
    };
    Ok((
        engine::distribution::Session::new(r.domain(), r.path(), creds, &opts),
        r,
    ))
}

/// `berth image sign|verify|generate-key-pair`: clients of the registry, not the daemon.
pub fn signatures(cmd: ImageCmd) -> Result<Option<ImageCmd>> {
    match cmd {
        ImageCmd::GenerateKeyPair { output } => {
            let pem = signing::SigningKey::generate_pem();
            let key = signing::SigningKey::from_pem(&pem).map_err(|e| anyhow!(e))?;
            {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .create_new(true)
                    .write(true)
                    .mode(0o600)
                    .open(&output)
                    .with_context(|| format!("creating {}", output.display()))?;
                f.write_all(pem.as_bytes())?;
            }
            let mut pubp = output.clone().into_os_string();
            pubp.push(".pub");
            std::fs::write(&pubp, key.public().to_pem())
                .with_context(|| format!("writing {}", pubp.to_string_lossy()))?;
            println!(
                "Private key written to {}\nPublic key written to {}",
                output.display(),
                pubp.to_string_lossy()
            );
            Ok(None)
        }
        ImageCmd::Sign {
            key,
            bundle,
            insecure_registry,
            image,
        } => {
            let pem = std::fs::read_to_string(&key)
                .with_context(|| format!("reading {}", key.display()))?;
            let k = signing::SigningKey::from_pem(&pem)
                .map_err(|e| anyhow!("{}: {e}", key.display()))?;
            let (session, r) = registry_session(&image, &insecure_registry)?;
            let reference = signing::manifest_reference(&r);
            let (media, digest, bytes) = session
                .get_manifest(&reference, "")?
                .ok_or_else(|| anyhow!("{image}: the registry has no such image"))?;
            let repo = r.repository();
            if bundle {
                signing::sign_bundle(&session, &repo, &digest, &media, bytes.len(), &k)
            } else {
                signing::sign_legacy(&session, &repo, &digest, &k)
            }
            .map_err(|e| anyhow!("signing {image}: {e}"))?;
            println!("Signed {repo}@{digest}");
            Ok(None)
        }
        ImageCmd::Verify {
            key,
            insecure_registry,
            image,
        } => {
            let pem = std::fs::read_to_string(&key)
                .with_context(|| format!("reading {}", key.display()))?;
            let k = signing::PublicKey::from_pem(&pem)
                .map_err(|e| anyhow!("{}: {e}", key.display()))?;
            let (session, r) = registry_session(&image, &insecure_registry)?;
            let reference = signing::manifest_reference(&r);
            let digest =
                signing::resolve(&session, &reference).map_err(|e| anyhow!("{image}: {e}"))?;
            let name = key.display().to_string();
            let v = signing::verify(&session, &digest, &[(name, k)])
                .map_err(|e| anyhow!("{image}: {e}"))?;
            println!(
                "Verified {}@{} ({} signature by {})",
                r.repository(),
                v.digest,
                v.format,
                v.key
            );
            Ok(None)
        }
        other => Ok(Some(other)),
    }
}

pub fn main(c: &Client, cmd: ImageCmd) -> Result<()> {
    match cmd {
        ImageCmd::Ls(a) => list(c, &a)?,
        ImageCmd::Sign { .. } | ImageCmd::Verify { .. } | ImageCmd::GenerateKeyPair { .. } => {
            let _ = signatures(cmd)?;
        }
        ImageCmd::Import {
            change,
            message,
            file,
            reference,
        } => {
            if let Some(r) = &reference {
                Reference::parse(r)?;
            }
            let mut target = format!("/images/import?message={}", encode(&message));
            if let Some(r) = &reference {
                target.push_str(&format!("&tag={}", encode(r)));
            }
            for ch in &change {
                target.push_str(&format!("&change={}", encode(ch)));
            }
            let v = upload(c, &target, Some(&PathBuf::from(&file)), "Importing")?;
            println!("{}", v["id"].as_str().unwrap_or(""));
        }
        ImageCmd::Inspect { names, format } => inspect(c, &names, format.as_deref())?,
        ImageCmd::History { no_trunc, name } => history(c, &name, no_trunc)?,
        ImageCmd::Tag { source, target } => tag(c, &source, &target)?,
        ImageCmd::Versions { name } => versions(c, &name)?,
        ImageCmd::Rm { force, names } => rmi(c, &names, force)?,
        ImageCmd::Prune { all, force } => {
            let _ = force;
            let removed = c
                .json(
                    "POST",
                    &format!("/images/prune?all={}", u8::from(all)),
                    None,
                )
                .map_err(fail)?;
            let removed = removed.as_array().cloned().unwrap_or_default();
            for d in &removed {
                println!("Deleted: {}", d.as_str().unwrap_or(""));
            }
            println!("Total images removed: {}", removed.len());
        }
        ImageCmd::Save {
            output,
            format,
            names,
        } => {
            if names.is_empty() {
                bail!("save: name at least one image");
            }
            if !matches!(format.as_str(), "docker" | "oci") {
                bail!("--format {format:?}: expected docker or oci");
            }
            let mut target = format!("/images/save?format={format}");
            for n in &names {
                target.push_str(&format!("&name={}", encode(n)));
            }
            match output {
                Some(p) => {
                    let mut resp = c.call("GET", &target, Send::Nothing).map_err(fail)?;
                    let tmp = p.with_extension("berth-partial");
                    let f = std::fs::File::create(&tmp)
                        .with_context(|| format!("creating {}", tmp.display()))?;
                    let mut w = std::io::BufWriter::new(f);
                    let saved = std::io::copy(&mut resp, &mut w).and_then(|_| w.flush());
                    if let Err(e) = saved {
                        let _ = std::fs::remove_file(&tmp);
                        bail!("saving: {e}");
                    }
                    std::fs::rename(&tmp, &p)
                        .with_context(|| format!("writing {}", p.display()))?;
                }
                None => {
                    // SAFETY: isatty has no preconditions.
                    if unsafe { libc::isatty(1) } == 1 {
                        bail!("save: refusing to write an archive to a terminal (use -o or redirect stdout)");
                    }
                    let mut resp = c.call("GET", &target, Send::Nothing).map_err(fail)?;
                    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                    std::io::copy(&mut resp, &mut out)?;
                    out.flush()?;
                }
            }
        }
        ImageCmd::Load { input, quiet } => {
            let loaded = upload(c, "/images/load", input.as_ref(), "Loading")?;
            if !quiet {
                for l in loaded.as_array().cloned().unwrap_or_default() {
                    let name = l["name"].as_str().unwrap_or("");
                    if name.starts_with("sha256:") {
                        println!("Loaded image ID: {}", l["id"].as_str().unwrap_or(""));
                    } else {
                        println!("Loaded image: {name}");
                    }
                }
            }
        }
        ImageCmd::Commit {
            change,
            message,
            container,
            reference,
        } => {
            if let Some(r) = &reference {
                Reference::parse(r)?;
            }
            let mut target = format!(
                "/images/commit?container={}&message={}",
                encode(&container),
                encode(&message)
            );
            if let Some(r) = &reference {
                target.push_str(&format!("&tag={}", encode(r)));
            }
            for ch in &change {
                target.push_str(&format!("&change={}", encode(ch)));
            }
            let v = c.json("POST", &target, None).map_err(fail)?;
            println!("{}", v["id"].as_str().unwrap_or(""));
        }
        ImageCmd::Mount { container, name } => {
            let v = c
                .json(
                    "POST",
                    &format!(
                        "/images/mount?container={}&image={}",
                        encode(&container),
                        encode(&name)
                    ),
                    None,
                )
                .map_err(fail)?;
            println!("{}", v["path"].as_str().unwrap_or(""));
        }
        ImageCmd::Umount { container } => {
            c.call(
                "POST",
                &format!("/images/umount?container={}", encode(&container)),
                Send::Nothing,
            )
            .map_err(fail)?;
        }
    }
    Ok(())
}
