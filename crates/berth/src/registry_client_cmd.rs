//! `berth pull`, `push`, `login` and `logout`: credentials in Docker's config.json (so
//! existing ones work), sent to the daemon as `X-Registry-Auth`; progress as lines.

use std::io::IsTerminal;
use std::io::{BufRead, Read, Write};
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context as _, Result};
use api::client::{Client, Send};
use api::http::encode;
use serde_json::{json, Value};

use crate::util::Failure;

/// Docker Hub's key in config.json.
const HUB: &str = "https://index.docker.io/v1/";

/// `$DOCKER_CONFIG/config.json`, or `~/.docker/config.json`.
fn config_path() -> PathBuf {
    match std::env::var_os("DOCKER_CONFIG") {
        Some(d) => PathBuf::from(d).join("config.json"),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".docker")
            .join("config.json"),
    }
}

fn read_config() -> Result<Value> {
    let p = config_path();
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).with_context(|| format!("reading {}", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(json!({})),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

fn write_config(v: &Value) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let p = config_path();
    let dir = p
        .parent()
        .ok_or_else(|| anyhow!("no directory for {}", p.display()))?;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(".config.json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(serde_json::to_string_pretty(v)?.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &p).with_context(|| format!("writing {}", p.display()))?;
    Ok(())
}

/// The config.json key of a registry host (Docker Hub's is its v1 URL).
fn key_of(server: &str) -> String {
    let s = server
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    if matches!(s, "docker.io" | "index.docker.io" | "registry-1.docker.io")
        || s.starts_with("index.docker.io/")
    {
        HUB.to_string()
    } else {
        s.to_string()
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn b64(data: &[u8]) -> String {
    let mut out = String::new();
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            out.push(if i <= c.len() {
                B64[(n >> (18 - 6 * i)) as usize & 63] as char
            } else {
                '='
            });
        }
    }
    out
}

fn unb64(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.trim().trim_end_matches('=').bytes() {
        let v = B64.iter().position(|&t| t == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// The stored credentials for a registry host, for clients of its API in this process.
pub fn credentials_for(domain: &str) -> Result<Option<engine::distribution::Credentials>> {
    let cfg = read_config()?;
    let Some(auth) = cfg["auths"][key_of(domain)]["auth"].as_str() else {
        return Ok(None);
    };
    let raw = unb64(auth)
        .ok_or_else(|| anyhow!("{}: a malformed auth entry", config_path().display()))?;
    let raw = String::from_utf8(raw)?;
    let (u, p) = raw.split_once(':').unwrap_or((&raw, ""));
    Ok(Some(engine::distribution::Credentials {
        username: u.to_string(),
        password: p.to_string(),
    }))
}

/// The stored credentials for the registry of `image`, as the `X-Registry-Auth` value.
fn auth_header(image: &str) -> Result<Option<String>> {
    let domain = image::reference::Reference::parse(image)
        .map(|r| r.domain().to_string())
        .unwrap_or_default();
    let cfg = read_config()?;
    let entry = &cfg["auths"][key_of(&domain)];
    let Some(auth) = entry["auth"].as_str() else {
        return Ok(None);
    };
    let raw = unb64(auth)
        .ok_or_else(|| anyhow!("{}: a malformed auth entry", config_path().display()))?;
    let raw = String::from_utf8(raw)?;
    let (u, p) = raw.split_once(':').unwrap_or((&raw, ""));
    let v = json!({"username": u, "password": p, "serveraddress": domain});
    Ok(Some(b64(v.to_string().as_bytes())))
}

/// Every stored credential as Docker's `X-Registry-Config` (base64 JSON: registry →
/// `{"username", "password"}`), for a build that may pull its bases; None when there are none.
pub fn registry_config_header() -> Result<Option<String>> {
    let cfg = read_config()?;
    let mut all = serde_json::Map::new();
    for (server, entry) in cfg["auths"].as_object().into_iter().flatten() {
        let Some(raw) = entry["auth"].as_str().and_then(unb64) else {
            continue;
        };
        let raw = String::from_utf8_lossy(&raw).into_owned();
        let (u, p) = raw.split_once(':').unwrap_or((&raw, ""));
        all.insert(
            server.clone(),
            json!({"username": u, "password": p, "serveraddress": server}),
        );
    }
    Ok((!all.is_empty()).then(|| b64(Value::Object(all).to_string().as_bytes())))
}

/// Progress as Docker's CLI shows it: on a terminal one line per layer, rewritten in place
/// with its bar; elsewhere a line per change of status, without the bars.
#[derive(Default)]
struct Bars {
    ids: Vec<String>,
}

impl Bars {
    fn show(&mut self, out: &mut dyn Write, v: &Value, terminal: bool) -> std::io::Result<()> {
        let Some(status) = v["status"].as_str() else {
            return Ok(());
        };
        let progress = v["progress"].as_str();
        let Some(id) = v["id"].as_str() else {
            return writeln!(out, "{status}");
        };
        if !terminal {
            return match progress {
                Some(_) => Ok(()),
                None => writeln!(out, "{id}: {status}"),
            };
        }
        let text = match progress {
            Some(p) => format!("{id}: {status} {p}"),
            None => format!("{id}: {status}"),
        };
        match self.ids.iter().position(|i| i == id) {
            None => {
                self.ids.push(id.to_string());
                writeln!(out, "\x1b[2K{text}")?;
            }
            Some(at) => {
                let up = self.ids.len() - at;
                write!(out, "\x1b[{up}A\r\x1b[2K{text}\x1b[{up}B\r")?;
            }
        }
        out.flush()
    }
}

/// Streams a pull or push, printing its progress; the final message.
fn stream(c: &Client, target: &str, image: &str, quiet: bool, to_stderr: bool) -> Result<Value> {
    let auth = auth_header(image)?;
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("X-Registry-Auth", a)])
        .unwrap_or_default();
    let resp = c
        .call_with("POST", target, &headers, Send::Nothing)
        .map_err(|e| Failure::new(1, e.to_string()))?;
    let mut out: Box<dyn Write> = if to_stderr {
        Box::new(std::io::stderr().lock())
    } else {
        Box::new(std::io::stdout().lock())
    };
    let terminal = if to_stderr {
        std::io::stderr().is_terminal()
    } else {
        std::io::stdout().is_terminal()
    };
    let mut bars = Bars::default();
    for line in std::io::BufReader::new(resp).lines() {
        let v: Value = serde_json::from_str(&line?).unwrap_or_default();
        if let Some(e) = v["error"].as_str() {
            bail!(Failure::new(1, format!("Error response from daemon: {e}")));
        }
        if v.get("aux").is_some() {
            return Ok(v["aux"].clone());
        }
        if quiet {
            continue;
        }
        bars.show(&mut out, &v, terminal)?;
    }
    bail!(Failure::new(
        1,
        "the daemon ended the stream without a result"
    ))
}

pub fn pull(
    c: &Client,
    name: &str,
    platform: Option<&str>,
    all_tags: bool,
    quiet: bool,
) -> Result<i32> {
    let mut target = format!(
        "/images/pull?ref={}&all={}",
        encode(name),
        u8::from(all_tags)
    );
    if let Some(p) = platform {
        target.push_str(&format!("&platform={}", encode(p)));
    }
    stream(c, &target, name, quiet, false)?;
    if quiet {
        println!("{name}");
    }
    Ok(0)
}

/// `run` and `create` of an image that is not here: pulled first, progress on stderr.
pub fn pull_for_run(c: &Client, name: &str, platform: Option<&str>) -> Result<()> {
    let mut target = format!("/images/pull?ref={}", encode(name));
    if let Some(p) = platform {
        target.push_str(&format!("&platform={}", encode(p)));
    }
    stream(c, &target, name, false, true).map(|_| ())
}

pub fn push(c: &Client, name: &str, all_tags: bool, quiet: bool) -> Result<i32> {
    let target = format!(
        "/images/push?ref={}&all={}",
        encode(name),
        u8::from(all_tags)
    );
    stream(c, &target, name, quiet, false)?;
    Ok(0)
}

pub fn login(
    c: &Client,
    server: Option<&str>,
    user: Option<&str>,
    password: Option<&str>,
    password_stdin: bool,
) -> Result<i32> {
    let server = server.unwrap_or("docker.io");
    let user = match user {
        Some(u) => u.to_string(),
        None => bail!(Failure::new(1, "login: a username is required (-u)")),
    };
    let password = match (password, password_stdin) {
        (Some(_), true) => bail!(Failure::new(
            1,
            "--password and --password-stdin are mutually exclusive"
        )),
        (Some(p), false) => p.to_string(),
        (None, true) => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            s.trim_end_matches(['\n', '\r']).to_string()
        }
        (None, false) => bail!(Failure::new(
            1,
            "login: a password is required (-p or --password-stdin)"
        )),
    };
    let body = json!({"username": user, "password": password, "serveraddress": server});
    c.json("POST", "/auth", Some(&body))
        .map_err(|e| Failure::new(1, e.to_string()))?;
    let mut cfg = read_config()?;
    if !cfg["auths"].is_object() {
        cfg["auths"] = json!({});
    }
    cfg["auths"][key_of(server)] = json!({"auth": b64(format!("{user}:{password}").as_bytes())});
    write_config(&cfg)?;
    println!("Login Succeeded");
    Ok(0)
}

pub fn logout(server: Option<&str>) -> Result<i32> {
    let server = server.unwrap_or("docker.io");
    let key = key_of(server);
    let mut cfg = read_config()?;
    let removed = cfg["auths"]
        .as_object_mut()
        .and_then(|a| a.remove(&key))
        .is_some();
    if removed {
        write_config(&cfg)?;
        println!("Removing login credentials for {key}");
    } else {
        println!("Not logged in to {key}");
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_and_base64() {
        assert_eq!(super::key_of("docker.io"), super::HUB);
        assert_eq!(super::key_of("https://127.0.0.1:5000/"), "127.0.0.1:5000");
        let s = super::b64(b"alice:wonder");
        assert_eq!(s, "YWxpY2U6d29uZGVy");
        assert_eq!(super::unb64(&s).unwrap(), b"alice:wonder");
    }
}
