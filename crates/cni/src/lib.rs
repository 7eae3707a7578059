//! The Container Network Interface (CNI 1.0) from the runtime's side: a network
//! configuration list (`.conflist`) is a chain of plugins; ADD runs them in order, each given
//! the previous one's result, DEL in reverse with the cached result of the ADD, CHECK like
//! ADD. Plugins are executables found on a search path, driven by `CNI_*` environment
//! variables and the configuration on stdin, answering JSON on stdout.
//!
//! This crate knows the protocol only; which networks exist is the engine's business.

#![forbid(unsafe_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

/// The spec version berth speaks.
pub const CNI_VERSION: &str = "1.0.0";

/// Where Debian, Kubernetes and most distributions put the plugins.
pub const DEFAULT_PATHS: [&str; 2] = ["/usr/lib/cni", "/opt/cni/bin"];

/// Why a CNI operation failed. Messages name the network and plugin.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The configuration list is malformed.
    #[error("network {network}: invalid configuration: {reason}")]
    Config {
        /// The network.
        network: String,
        /// What is wrong.
        reason: String,
    },
    /// A plugin executable is not on the search path.
    #[error("network {network}: CNI plugin {plugin:?} not found in {paths} (install containernetworking-plugins)")]
    Missing {
        /// The network.
        network: String,
        /// The plugin's type.
        plugin: String,
        /// Where it was looked for.
        paths: String,
    },
    /// A plugin failed; its own error as the spec shapes it.
    #[error("network {network}: plugin {plugin} failed on {command}: {msg}")]
    Plugin {
        /// The network.
        network: String,
        /// The plugin's type.
        plugin: String,
        /// ADD, DEL, CHECK.
        command: &'static str,
        /// The spec's error code.
        code: u64,
        /// Its message, and its details after a colon.
        msg: String,
    },
    /// The plugin could not be run or answered garbage.
    #[error("network {network}: plugin {plugin}: {reason}")]
    Exec {
        /// The network.
        network: String,
        /// The plugin's type.
        plugin: String,
        /// What happened.
        reason: String,
    },
}

/// A network configuration list.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfList {
    /// `name`.
    pub name: String,
    /// `cniVersion`.
    pub cni_version: String,
    /// The plugin configurations, in chain order.
    pub plugins: Vec<Value>,
}

impl ConfList {
    /// Parses a `.conflist` document.
    pub fn parse(v: &Value) -> Result<ConfList, CniError> {
        let name = v["name"].as_str().unwrap_or_default().to_string();
        let bad = |reason: &str| CniError::Config {
            network: if name.is_empty() {
                "?".into()
            } else {
                name.clone()
            },
            reason: reason.into(),
        };
        if name.is_empty() {
            return Err(bad("name: missing"));
        }
        let cni_version = v["cniVersion"]
            .as_str()
            .ok_or_else(|| bad("cniVersion: missing"))?
            .to_string();
        let plugins = v["plugins"]
            .as_array()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| bad("plugins: missing or empty"))?
            .clone();
        for (i, p) in plugins.iter().enumerate() {
            if p["type"].as_str().is_none_or(str::is_empty) {
                return Err(bad(&format!("plugins[{i}].type: missing")));
            }
        }
        Ok(ConfList {
            name,
            cni_version,
            plugins,
        })
    }
}

/// What the runtime tells the plugins about the attachment.
#[derive(Debug, Clone, Default)]
pub struct Attachment {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`: the namespace's path.
    pub netns: PathBuf,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`: `K=V` pairs.
    pub args: Vec<(String, String)>,
    /// Values for the plugins' declared capabilities (`portMappings`, …), as `runtimeConfig`.
    pub capabilities: serde_json::Map<String, Value>,
}

/// Runs plugins found on a search path.
#[derive(Debug, Clone)]
pub struct Cni {
    paths: Vec<PathBuf>,
}

impl Default for Cni {
    fn default() -> Self {
        Cni::new(DEFAULT_PATHS.iter().map(PathBuf::from).collect())
    }
}

impl Cni {
    /// Plugins from `paths`, in order.
    pub fn new(paths: Vec<PathBuf>) -> Cni {
        Cni { paths }
    }

    fn find(&self, network: &str, plugin: &str) -> Result<PathBuf, CniError> {
        if plugin.contains('/') {
            return Err(CniError::Config {
                network: network.into(),
                reason: format!("plugin type {plugin:?} is not a plain name"),
            });
        }
        self.paths
            .iter()
            .map(|d| d.join(plugin))
            .find(|p| p.is_file())
            .ok_or_else(|| CniError::Missing {
                network: network.into(),
                plugin: plugin.into(),
                paths: self
                    .paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":"),
            })
    }

    /// The configuration one plugin of `list` gets on stdin.
    fn plugin_config(
        list: &ConfList,
        plugin: &Value,
        att: &Attachment,
        prev: Option<&Value>,
    ) -> Value {
        let mut conf = plugin.clone();
        conf["name"] = json!(list.name);
        conf["cniVersion"] = json!(list.cni_version);
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        // runtimeConfig: only the capabilities the plugin asks for.
        let mut rc = serde_json::Map::new();
        if let Some(caps) = plugin["capabilities"].as_object() {
            for (k, on) in caps {
                if on.as_bool() == Some(true) {
                    if let Some(v) = att.capabilities.get(k) {
                        rc.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        if !rc.is_empty() {
            conf["runtimeConfig"] = Value::Object(rc);
        }
        conf
    }

    fn exec(
        &self,
        list: &ConfList,
        command: &'static str,
        plugin: &Value,
        att: &Attachment,
        prev: Option<&Value>,
    ) -> Result<Option<Value>, CniError> {
        let typ = plugin["type"].as_str().unwrap_or_default();
        let path = self.find(&list.name, typ)?;
        let conf = Self::plugin_config(list, plugin, att, prev);
        let exec_err = |reason: String| CniError::Exec {
            network: list.name.clone(),
            plugin: typ.into(),
            reason,
        };
        let args: Vec<String> = att.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut child = Command::new(&path)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &att.container_id)
            .env("CNI_NETNS", &att.netns)
            .env("CNI_IFNAME", &att.ifname)
            .env("CNI_ARGS", args.join(";"))
            .env(
                "CNI_PATH",
                self.paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":"),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| exec_err(format!("running {}: {e}", path.display())))?;
        let input = serde_json::to_vec(&conf).unwrap_or_default();
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(&input);
        }
        let out = child
            .wait_with_output()
            .map_err(|e| exec_err(format!("waiting for {}: {e}", path.display())))?;
        let stdout: Value = if out.stdout.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(&out.stdout).map_err(|e| {
                exec_err(format!(
                    "invalid answer ({e}): {}",
                    String::from_utf8_lossy(&out.stdout).trim()
                ))
            })?
        };
        if !out.status.success() {
            let details = stdout["details"]
                .as_str()
                .filter(|d| !d.is_empty())
                .map(|d| format!(": {d}"))
                .unwrap_or_default();
            let stderr = String::from_utf8_lossy(&out.stderr);
            let msg = stdout["msg"]
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| format!("exit status {} {}", out.status, stderr.trim()));
            return Err(CniError::Plugin {
                network: list.name.clone(),
                plugin: typ.into(),
                command,
                code: stdout["code"].as_u64().unwrap_or(0),
                msg: format!("{msg}{details}"),
            });
        }
        Ok((!stdout.is_null()).then_some(stdout))
    }

    /// ADD: the chain in order, each plugin given the result so far. On failure the plugins
    /// that succeeded are undone (DEL), so nothing is left half-attached.
    pub fn add(&self, list: &ConfList, att: &Attachment) -> Result<Value, CniError> {
        let mut result: Option<Value> = None;
        for (i, plugin) in list.plugins.iter().enumerate() {
            match self.exec(list, "ADD", plugin, att, result.as_ref()) {
                Ok(r) => {
                    if let Some(r) = r {
                        result = Some(r);
                    }
                }
                Err(e) => {
                    for p in list.plugins[..=i].iter().rev() {
                        let _ = self.exec(list, "DEL", p, att, result.as_ref());
                    }
                    return Err(e);
                }
            }
        }
        result.ok_or_else(|| CniError::Exec {
            network: list.name.clone(),
            plugin: list.plugins[0]["type"].as_str().unwrap_or_default().into(),
            reason: "the chain returned no result".into(),
        })
    }

    /// DEL: the chain in reverse with the ADD's cached result. Every plugin runs even when one
    /// fails (the spec asks DEL to be best effort and idempotent); the first error is returned.
    pub fn del(
        &self,
        list: &ConfList,
        att: &Attachment,
        prev: Option<&Value>,
    ) -> Result<(), CniError> {
        let mut first = None;
        for p in list.plugins.iter().rev() {
            if let Err(e) = self.exec(list, "DEL", p, att, prev) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// CHECK: the chain in order with the ADD's cached result.
    pub fn check(&self, list: &ConfList, att: &Attachment, prev: &Value) -> Result<(), CniError> {
        for p in &list.plugins {
            self.exec(list, "CHECK", p, att, Some(prev))?;
        }
        Ok(())
    }

    /// VERSION: the spec versions a plugin supports.
    pub fn versions(&self, plugin: &str) -> Result<Vec<String>, CniError> {
        let list = ConfList {
            name: "version".into(),
            cni_version: CNI_VERSION.into(),
            plugins: vec![json!({"type": plugin})],
        };
        let r = self
            .exec(
                &list,
                "VERSION",
                &list.plugins[0],
                &Attachment::default(),
                None,
            )?
            .unwrap_or(Value::Null);
        Ok(r["supportedVersions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(String::from))
            .collect())
    }
}

/// The first IPv4 address (without prefix length) and its gateway in a result.
pub fn ipv4(result: &Value) -> Option<(String, u8, Option<String>)> {
    first_address::<std::net::Ipv4Addr>(result, 32)
}

/// The first IPv6 address (without prefix length) and its gateway in a result.
pub fn ipv6(result: &Value) -> Option<(String, u8, Option<String>)> {
    first_address::<std::net::Ipv6Addr>(result, 128)
}

/// The first entry of `ips` whose address is of the family `A`, with a prefix length the
/// family allows and a gateway (when there is one) of the same family. A plugin's answer is
/// not trusted to be well formed: an entry that is not is skipped.
fn first_address<A: std::str::FromStr>(
    result: &Value,
    max_len: u8,
) -> Option<(String, u8, Option<String>)> {
    result["ips"].as_array()?.iter().find_map(|ip| {
        let (a, len) = ip["address"].as_str()?.split_once('/')?;
        a.parse::<A>().ok()?;
        let len = len.parse::<u8>().ok().filter(|l| *l <= max_len)?;
        let gateway = match ip["gateway"].as_str() {
            Some(g) => {
                g.parse::<A>().ok()?;
                Some(g.to_string())
            }
            None => None,
        };
        Some((a.to_string(), len, gateway))
    })
}

/// The MAC address of the interface `ifname` inside the container, from a result.
pub fn mac(result: &Value, ifname: &str) -> Option<String> {
    result["interfaces"]
        .as_array()?
        .iter()
        .find(|i| i["name"] == ifname && i.get("sandbox").is_some())
        .and_then(|i| i["mac"].as_str().map(String::from))
}

/// Whether a plugin named `plugin` is on `paths` (for `info`).
pub fn available(paths: &[PathBuf], plugin: &str) -> bool {
    paths.iter().any(|d| Path::new(d).join(plugin).is_file())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A fake plugin: records its stdin and environment, answers what the test says.
    fn plugin(dir: &Path, name: &str, script: &str) {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn chains_pass_results_and_capabilities_and_undo_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let l = log.display();
        plugin(
            dir.path(),
            "first",
            &format!(
                r#"cat > "{l}.$CNI_COMMAND.first"; echo "$CNI_COMMAND first $CNI_IFNAME $CNI_ARGS" >> "{l}"; echo '{{"cniVersion":"1.0.0","ips":[{{"address":"10.9.0.5/16","gateway":"10.9.0.1"}}],"interfaces":[{{"name":"eth0","mac":"aa:bb","sandbox":"/x"}}]}}'"#
            ),
        );
        plugin(
            dir.path(),
            "second",
            &format!(
                r#"cat > "{l}.$CNI_COMMAND.second"; echo "$CNI_COMMAND second" >> "{l}"; [ "$CNI_COMMAND" = DEL ] && exit 0; cat "{l}.$CNI_COMMAND.second" | grep -q prevResult || exit 1; echo '{{"cniVersion":"1.0.0","ips":[{{"address":"10.9.0.5/16"}}]}}'"#
            ),
        );
        plugin(
            dir.path(),
            "broken",
            r#"echo "$CNI_COMMAND broken" >> LOG; [ "$CNI_COMMAND" = DEL ] && exit 0; echo '{"code":7,"msg":"no luck","details":"at all"}'; exit 1"#
                .replace("LOG", &l.to_string())
                .as_str(),
        );
        let cni = Cni::new(vec![dir.path().into()]);
        let list = ConfList::parse(&json!({
            "cniVersion": "1.0.0", "name": "net1",
            "plugins": [{"type": "first"}, {"type": "second", "capabilities": {"portMappings": true}}]
        }))
        .unwrap();
        let mut att = Attachment {
            container_id: "c1".into(),
            netns: "/proc/self/ns/net".into(),
            ifname: "eth0".into(),
            args: vec![("IP".into(), "10.9.0.5".into())],
            ..Default::default()
        };
        att.capabilities
            .insert("portMappings".into(), json!([{"hostPort": 8080}]));
        att.capabilities.insert("bandwidth".into(), json!({}));
        let r = cni.add(&list, &att).unwrap();
        assert_eq!(ipv4(&r), Some(("10.9.0.5".into(), 16, None)));
        let second: Value =
            serde_json::from_str(&std::fs::read_to_string(format!("{l}.ADD.second")).unwrap())
                .unwrap();
        assert_eq!(second["name"], "net1");
        assert_eq!(second["prevResult"]["ips"][0]["gateway"], "10.9.0.1");
        assert_eq!(
            second["runtimeConfig"],
            json!({"portMappings": [{"hostPort": 8080}]})
        );
        let first: Value =
            serde_json::from_str(&std::fs::read_to_string(format!("{l}.ADD.first")).unwrap())
                .unwrap();
        assert!(first.get("runtimeConfig").is_none() && first.get("prevResult").is_none());
        cni.del(&list, &att, Some(&r)).unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            [
                "ADD first eth0 IP=10.9.0.5",
                "ADD second",
                "DEL second",
                "DEL first eth0 IP=10.9.0.5"
            ]
        );
        // A failing plugin: its error by name and code, and what ran before it undone.
        std::fs::remove_file(&log).unwrap();
        let bad = ConfList::parse(&json!({
            "cniVersion": "1.0.0", "name": "net2", "plugins": [{"type": "first"}, {"type": "broken"}]
        }))
        .unwrap();
        let e = cni.add(&bad, &att).unwrap_err().to_string();
        assert_eq!(
            e,
            "network net2: plugin broken failed on ADD: no luck: at all"
        );
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.ends_with("DEL broken\nDEL first eth0 IP=10.9.0.5\n"),
            "{text}"
        );
        // A missing plugin is named.
        let missing = ConfList::parse(
            &json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "nope"}]}),
        )
        .unwrap();
        assert!(cni
            .add(&missing, &att)
            .unwrap_err()
            .to_string()
            .contains("CNI plugin \"nope\" not found"));
    }

    #[test]
    fn conflists_are_checked() {
        for bad in [
            json!({}),
            json!({"name": "x", "cniVersion": "1.0.0"}),
            json!({"name": "x", "cniVersion": "1.0.0", "plugins": []}),
            json!({"name": "x", "cniVersion": "1.0.0", "plugins": [{"ipam": {}}]}),
            json!({"name": "x", "plugins": [{"type": "bridge"}]}),
        ] {
            assert!(ConfList::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_reference_plugins_speak_1_0_when_installed() {
        let cni = Cni::default();
        if !available(
            &DEFAULT_PATHS.iter().map(PathBuf::from).collect::<Vec<_>>(),
            "bridge",
        ) {
            panic!("the CNI reference plugins are missing: install containernetworking-plugins");
        }
        let v = cni.versions("bridge").unwrap();
        assert!(v.iter().any(|x| x == CNI_VERSION), "{v:?}");
    }

    /// Found by fuzz_targets/cni_result.rs: a prefix length beyond the family's, or a gateway
    /// of the other family, was taken from a plugin's answer as it was.
    #[test]
    fn malformed_result_entries_are_skipped() {
        let r = serde_json::json!({"ips": [
            {"address": "10.0.0.2/33", "gateway": "10.0.0.1"},
            {"address": "10.0.0.3/24", "gateway": "fd00::1"},
            {"address": "fd00::2/129"},
            {"address": "fd00::3/64", "gateway": "10.0.0.1"},
            {"address": "10.0.0.4/24", "gateway": "10.0.0.1"},
            {"address": "fd00::4/64"},
        ]});
        assert_eq!(
            ipv4(&r),
            Some(("10.0.0.4".into(), 24, Some("10.0.0.1".into())))
        );
        assert_eq!(ipv6(&r), Some(("fd00::4".into(), 64, None)));
    }
}
