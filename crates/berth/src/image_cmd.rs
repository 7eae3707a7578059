//! `berth images`, `berth image …`, `berth tag`, `berth rmi`: the image store from the command
//! line, with Docker's command and flag names.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use image::images::{Images, Summary};
use image::reference::Reference;

#[derive(Args)]
pub struct ListArgs {
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
    Inspect { names: Vec<String> },
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

fn short(id: &image::Digest, no_trunc: bool) -> String {
    if no_trunc {
        id.to_string()
    } else {
        id.hex()[..12].to_string()
    }
}

fn human_size(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i < units.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
            + units[i]
    }
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

pub fn list(images: &Images, a: &ListArgs) -> Result<()> {
    let summaries = images.list()?;
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
            let fields = serde_json::json!({
                "Repository": repo, "Tag": tag, "ID": short(&s.id, a.no_trunc), "Digest": s.manifest.to_string(),
                "CreatedAt": s.created, "Size": human_size(s.size),
            });
            if fmt == "json" || fmt == "{{json .}}" {
                writeln!(out, "{fields}")?;
            } else {
                let mut line = fmt.clone();
                for (k, v) in fields.as_object().into_iter().flatten() {
                    line = line.replace(&format!("{{{{.{k}}}}}"), v.as_str().unwrap_or_default());
                }
                writeln!(out, "{}", line.replace("\\t", "\t"))?;
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
            row.push(s.manifest.to_string());
        }
        row.extend([
            short(&s.id, a.no_trunc),
            s.created.get(..19).unwrap_or(&s.created).replace('T', " "),
            human_size(s.size),
        ]);
        table.push(row);
    }
    print_table(&mut out, &table)
}

fn print_table(out: &mut impl Write, table: &[Vec<String>]) -> Result<()> {
    let cols = table.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| table.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for r in table {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        writeln!(out, "{}", line.join("   ").trim_end())?;
    }
    Ok(())
}

fn inspect(images: &Images, names: &[String]) -> Result<()> {
    if names.is_empty() {
        bail!("image inspect: name at least one image");
    }
    let mut docs = Vec::new();
    for n in names {
        let r = images.resolve(n)?;
        let config = images.config(&r)?;
        let tags: Vec<String> = images
            .names_of(&r.id)?
            .iter()
            .filter_map(|t| Reference::parse(t).ok())
            .map(|t| t.familiar())
            .collect();
        let digests: Vec<String> = images
            .names_of(&r.id)?
            .iter()
            .filter_map(|t| Reference::parse(t).ok())
            .map(|t| format!("{}@{}", t.familiar_repository(), r.manifest))
            .collect();
        docs.push(serde_json::json!({
            "Id": r.id.to_string(),
            "RepoTags": tags,
            "RepoDigests": digests,
            "Created": config["created"],
            "Comment": config["history"].as_array().and_then(|h| h.last()).and_then(|h| h["comment"].as_str()).unwrap_or(""),
            "Author": config["author"].as_str().unwrap_or(""),
            "Config": config["config"],
            "Architecture": config["architecture"],
            "Variant": config["variant"],
            "Os": config["os"],
            "Size": r.size,
            "RootFS": {"Type": "layers", "Layers": r.diff_ids.iter().map(|d| d.to_string()).collect::<Vec<_>>()},
            "Metadata": {"Manifest": r.manifest.to_string()},
        }));
    }
    println!("{}", serde_json::to_string_pretty(&docs)?);
    Ok(())
}

fn history(images: &Images, name: &str, no_trunc: bool) -> Result<()> {
    let r = images.resolve(name)?;
    let config = images.config(&r)?;
    let mut table = vec![["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"]
        .map(String::from)
        .to_vec()];
    let entries = config["history"].as_array().cloned().unwrap_or_default();
    let chains = image::model::chain_ids(&r.diff_ids);
    let mut layer = chains.len();
    for (i, h) in entries.iter().enumerate().rev() {
        let empty = h["empty_layer"].as_bool().unwrap_or(false);
        let size = if empty {
            0
        } else {
            layer = layer.saturating_sub(1);
            chains
                .get(layer)
                .and_then(|c| images.snapshots().size(c).ok())
                .unwrap_or(0)
        };
        let mut by = h["created_by"].as_str().unwrap_or("").to_string();
        if !no_trunc && by.len() > 45 {
            by.truncate(44);
            by.push('…');
        }
        let id = if i + 1 == entries.len() {
            short(&r.id, no_trunc)
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
    print_table(&mut std::io::stdout().lock(), &table)
}

fn versions(images: &Images, name: &str) -> Result<()> {
    let tag = Reference::parse(name)?;
    let mut table = vec![["", "IMAGE ID", "MANIFEST DIGEST", "UNTIL"]
        .map(String::from)
        .to_vec()];
    if let Ok(current) = images.resolve(name) {
        table.push(vec![
            "*".into(),
            short(&current.id, false),
            current.manifest.to_string(),
            "now".into(),
        ]);
    }
    for (id, until) in images.tag_history(&tag)?.iter().rev() {
        let manifest = images
            .resolve(&id.to_string())
            .map(|r| r.manifest.to_string())
            .unwrap_or_else(|_| "(removed)".into());
        table.push(vec![
            String::new(),
            short(id, false),
            manifest,
            until.get(..19).unwrap_or(until).replace('T', " "),
        ]);
    }
    if table.len() == 1 {
        bail!("no such image: {name}");
    }
    print_table(&mut std::io::stdout().lock(), &table)
}

pub fn tag(images: &Images, source: &str, target: &str) -> Result<()> {
    let t = Reference::parse(target)?;
    if t.digest().is_some() {
        bail!("tag {target:?}: a tag cannot contain a digest");
    }
    images.tag(source, &t)?;
    Ok(())
}

pub fn rmi(images: &Images, names: &[String], force: bool) -> Result<()> {
    if names.is_empty() {
        bail!("rmi: name at least one image");
    }
    let mut failed = false;
    for n in names {
        match images.remove(n, force) {
            Ok((untagged, deleted)) => {
                for u in untagged {
                    println!(
                        "Untagged: {}",
                        Reference::parse(&u).map(|r| r.familiar()).unwrap_or(u)
                    );
                }
                if let Some(d) = deleted {
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
    images.gc()?;
    Ok(())
}

pub fn main(root: &Path, cmd: ImageCmd) -> Result<()> {
    let images = Images::open(root)
        .with_context(|| format!("opening the image store at {}", root.display()))?;
    match cmd {
        ImageCmd::Ls(a) => list(&images, &a)?,
        ImageCmd::Import {
            change,
            message,
            file,
            reference,
        } => {
            let tag = reference.as_deref().map(Reference::parse).transpose()?;
            let r = if file == "-" {
                images.import(std::io::stdin().lock(), &change, &message, tag.as_ref())?
            } else {
                let path = PathBuf::from(&file);
                let f = std::fs::File::open(&path)
                    .with_context(|| format!("opening {}", path.display()))?;
                images.import(f, &change, &message, tag.as_ref())?
            };
            println!("{}", r.id);
        }
        ImageCmd::Inspect { names } => inspect(&images, &names)?,
        ImageCmd::History { no_trunc, name } => history(&images, &name, no_trunc)?,
        ImageCmd::Tag { source, target } => tag(&images, &source, &target)?,
        ImageCmd::Versions { name } => versions(&images, &name)?,
        ImageCmd::Rm { force, names } => rmi(&images, &names, force)?,
        ImageCmd::Prune { all, force } => {
            let _ = force;
            let removed = images.prune(all)?;
            for d in &removed {
                println!("Deleted: {d}");
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
            let format = match format.as_str() {
                "docker" => image::archive::Format::Docker,
                "oci" => image::archive::Format::Oci,
                f => bail!("--format {f:?}: expected docker or oci"),
            };
            match output {
                Some(p) => {
                    let tmp = p.with_extension("berth-partial");
                    let f = std::fs::File::create(&tmp)
                        .with_context(|| format!("creating {}", tmp.display()))?;
                    let mut w = std::io::BufWriter::new(f);
                    let saved = images.save(&names, format, &mut w).and_then(|()| {
                        w.flush()
                            .map_err(|e| image::images::ImageError::Archive(e.to_string()))
                    });
                    if let Err(e) = saved {
                        let _ = std::fs::remove_file(&tmp);
                        return Err(e.into());
                    }
                    std::fs::rename(&tmp, &p)
                        .with_context(|| format!("writing {}", p.display()))?;
                }
                None => {
                    // SAFETY: isatty has no preconditions.
                    if unsafe { libc::isatty(1) } == 1 {
                        bail!("save: refusing to write an archive to a terminal (use -o or redirect stdout)");
                    }
                    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                    images.save(&names, format, &mut out)?;
                    out.flush()?;
                }
            }
        }
        ImageCmd::Load { input, quiet } => {
            let loaded = match input {
                Some(p) => images.load(std::io::BufReader::new(
                    std::fs::File::open(&p).with_context(|| format!("opening {}", p.display()))?,
                ))?,
                None => images.load(std::io::BufReader::new(std::io::stdin().lock()))?,
            };
            if !quiet {
                for (name, id) in loaded {
                    if name.starts_with("sha256:") {
                        println!("Loaded image ID: {id}");
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
            let tag = reference.as_deref().map(Reference::parse).transpose()?;
            let r = images.commit(&container, &change, &message, tag.as_ref())?;
            println!("{}", r.id);
        }
        ImageCmd::Mount { container, name } => {
            let (_, path) = images.mount_container(&container, &name)?;
            println!("{}", path.display());
        }
        ImageCmd::Umount { container } => images.remove_container(&container)?,
    }
    Ok(())
}
