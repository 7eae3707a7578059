//! A pod's container as an engine container: command and args over the image's
//! entrypoint and cmd (Kubernetes' rules), the environment with `valueFrom`/`envFrom` and
//! `$(VAR)` references, resources as cgroup limits, the securityContext, mounts of the
//! pod's volumes, and the labels the kubelet puts on its containers.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Service};
use serde_json::Value;

/// Why a container could not be configured: becomes `CreateContainerConfigError`.
#[derive(Debug, Clone)]
pub struct ConfigError(pub String);

pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";
pub const LABEL_ATTEMPT: &str = "io.kubernetes.container.attempt";

/// Kubernetes' `$(VAR)` expansion: defined names are replaced, `$$` escapes, anything
/// else is left as written.
pub fn expand(s: &str, env: &BTreeMap<String, String>) -> String {
    let b = s.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'(' {
                if let Some(end) = s[i + 2..].find(')') {
                    let name = &s[i + 2..i + 2 + end];
                    if let Some(v) = env.get(name) {
                        out.push_str(v);
                        i += 3 + end;
                        continue;
                    }
                }
            }
        }
        let ch = s[i..].chars().next().unwrap_or('\0');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// A quantity in millicores (`500m`, `2`, `1.5`).
pub fn cpu_milli(q: &str) -> Option<u64> {
    quantity::cpu_milli(q)
}

/// A quantity in bytes (`64Mi`, `1G`, `1e3`, `128974848`).
pub fn bytes(q: &str) -> Option<u64> {
    quantity::units(q)
}

fn quantity(c: &Container, which: &str, res: &str) -> Option<String> {
    let r = c.resources.as_ref()?;
    let m = if which == "limits" {
        r.limits.as_ref()?
    } else {
        r.requests.as_ref()?
    };
    m.get(res).map(|q| q.0.clone())
}

/// A container's request, defaulting to its limit as Kubernetes does.
pub fn request(c: &Container, res: &str) -> Option<String> {
    quantity(c, "requests", res).or_else(|| quantity(c, "limits", res))
}

pub fn limit(c: &Container, res: &str) -> Option<String> {
    quantity(c, "limits", res)
}

/// The pod's QoS class (Kubernetes' rules).
pub fn qos_class(pod: &Pod) -> &'static str {
    let spec = pod.spec.as_ref();
    let all: Vec<&Container> = spec
        .map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
                .collect()
        })
        .unwrap_or_default();
    let mut any = false;
    let mut guaranteed = true;
    for c in &all {
        for res in ["cpu", "memory"] {
            let req = request(c, res);
            let lim = limit(c, res);
            if req.is_some() || lim.is_some() {
                any = true;
            }
            match (&req, &lim) {
                (Some(r), Some(l)) => {
                    let same = if res == "cpu" {
                        cpu_milli(r) == cpu_milli(l)
                    } else {
                        bytes(r) == bytes(l)
                    };
                    if !same {
                        guaranteed = false;
                    }
                }
                _ => guaranteed = false,
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// What the API gives a container's environment: ConfigMaps and Secrets by name.
pub trait Lookup {
    fn config_map(&self, name: &str) -> Option<ConfigMap>;
    fn secret(&self, name: &str) -> Option<Secret>;
}

fn secret_value(s: &Secret, key: &str) -> Option<String> {
    if let Some(v) = s.data.as_ref().and_then(|d| d.get(key)) {
        return Some(String::from_utf8_lossy(&v.0).into_owned());
    }
    s.string_data.as_ref().and_then(|d| d.get(key)).cloned()
}

fn cm_value(c: &ConfigMap, key: &str) -> Option<String> {
    if let Some(v) = c.data.as_ref().and_then(|d| d.get(key)) {
        return Some(v.clone());
    }
    c.binary_data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
}

/// `fieldRef` paths the kubelet resolves.
pub fn field_ref(
    pod: &Pod,
    path: &str,
    pod_ip: &str,
    host_ip: &str,
) -> Result<String, ConfigError> {
    let md = &pod.metadata;
    let spec = pod.spec.as_ref();
    let v = match path {
        "metadata.name" => md.name.clone().unwrap_or_default(),
        "metadata.namespace" => md.namespace.clone().unwrap_or_default(),
        "metadata.uid" => md.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => pod_ip.to_string(),
        "status.hostIP" | "status.hostIPs" => host_ip.to_string(),
        p => {
            let lookup = |prefix: &str, m: Option<&BTreeMap<String, String>>| {
                p.strip_prefix(prefix).map(|k| {
                    let k = k.trim_start_matches("['").trim_end_matches("']");
                    m.and_then(|m| m.get(k)).cloned().unwrap_or_default()
                })
            };
            if let Some(v) = lookup("metadata.labels", md.labels.as_ref()) {
                if p == "metadata.labels" {
                    return Ok(format_map(md.labels.as_ref()));
                }
                v
            } else if let Some(v) = lookup("metadata.annotations", md.annotations.as_ref()) {
                if p == "metadata.annotations" {
                    return Ok(format_map(md.annotations.as_ref()));
                }
                v
            } else {
                return Err(ConfigError(format!("unsupported fieldRef path {p:?}")));
            }
        }
    };
    Ok(v)
}

fn format_map(m: Option<&BTreeMap<String, String>>) -> String {
    m.map(|m| {
        m.iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    })
    .unwrap_or_default()
}

/// `resourceFieldRef`: the container's limit or request in the divisor's unit (limits fall
/// back to the node's allocatable, as Kubernetes does).
pub fn resource_field(
    c: &Container,
    resource: &str,
    divisor: Option<&str>,
    node_alloc: (u64, u64),
) -> Result<String, ConfigError> {
    let (which, res) = resource
        .split_once('.')
        .ok_or_else(|| ConfigError(format!("unsupported resource {resource:?}")))?;
    let raw = match which {
        "limits" => limit(c, res),
        "requests" => request(c, res),
        _ => None,
    };
    match res {
        "cpu" => {
            let m = raw
                .as_deref()
                .and_then(cpu_milli)
                .unwrap_or(if which == "limits" { node_alloc.0 } else { 0 });
            let d = divisor.and_then(cpu_milli).unwrap_or(1000).max(1);
            Ok(m.div_ceil(d).to_string())
        }
        "memory" | "ephemeral-storage" => {
            let b = raw
                .as_deref()
                .and_then(bytes)
                .unwrap_or(if which == "limits" { node_alloc.1 } else { 0 });
            let d = divisor.and_then(bytes).unwrap_or(1).max(1);
            Ok(b.div_ceil(d).to_string())
        }
        _ => Err(ConfigError(format!("unsupported resource {resource:?}"))),
    }
}

/// The container's environment, in order, with `$(VAR)` references resolved.
pub fn environment(
    pod: &Pod,
    c: &Container,
    api: &dyn Lookup,
    pod_ip: &str,
    host_ip: &str,
    node_alloc: (u64, u64),
    service_env: &[(String, String)],
) -> Result<Vec<(String, String)>, ConfigError> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut out: Vec<(String, String)> = Vec::new();
    let set = |out: &mut Vec<(String, String)>, k: String, v: String| {
        if let Some(e) = out.iter_mut().find(|(n, _)| *n == k) {
            e.1 = v;
        } else {
            out.push((k, v));
        }
    };
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match api.config_map(&r.name) {
                Some(cm) => {
                    for (k, v) in cm.data.iter().flatten() {
                        set(&mut out, format!("{prefix}{k}"), v.clone());
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(ConfigError(format!("configmap \"{}\" not found", r.name))),
            }
        }
        if let Some(r) = &from.secret_ref {
            match api.secret(&r.name) {
                Some(s) => {
                    for (k, v) in s.data.iter().flatten() {
                        set(
                            &mut out,
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v.0).into_owned(),
                        );
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(ConfigError(format!("secret \"{}\" not found", r.name))),
            }
        }
    }
    for e in c.env.iter().flatten() {
        let value = if let Some(src) = &e.value_from {
            if let Some(r) = &src.config_map_key_ref {
                match api.config_map(&r.name) {
                    Some(cm) => match cm_value(&cm, &r.key) {
                        Some(v) => v,
                        None if r.optional == Some(true) => continue,
                        None => {
                            return Err(ConfigError(format!(
                                "couldn't find key {} in ConfigMap {ns}/{}",
                                r.key, r.name
                            )))
                        }
                    },
                    None if r.optional == Some(true) => continue,
                    None => return Err(ConfigError(format!("configmap \"{}\" not found", r.name))),
                }
            } else if let Some(r) = &src.secret_key_ref {
                match api.secret(&r.name) {
                    Some(s) => match secret_value(&s, &r.key) {
                        Some(v) => v,
                        None if r.optional == Some(true) => continue,
                        None => {
                            return Err(ConfigError(format!(
                                "couldn't find key {} in Secret {ns}/{}",
                                r.key, r.name
                            )))
                        }
                    },
                    None if r.optional == Some(true) => continue,
                    None => return Err(ConfigError(format!("secret \"{}\" not found", r.name))),
                }
            } else if let Some(r) = &src.field_ref {
                field_ref(pod, &r.field_path, pod_ip, host_ip)?
            } else if let Some(r) = &src.resource_field_ref {
                let target = match r.container_name.as_deref() {
                    Some(n) if !n.is_empty() && n != c.name => pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.containers.iter().find(|x| x.name == n))
                        .ok_or_else(|| ConfigError(format!("container {n} not found")))?,
                    _ => c,
                };
                resource_field(
                    target,
                    &r.resource,
                    r.divisor.as_ref().map(|d| d.0.as_str()),
                    node_alloc,
                )?
            } else {
                String::new()
            }
        } else {
            // References resolve against the declared variables and the Services'.
            let mut map: BTreeMap<String, String> = service_env.iter().cloned().collect();
            map.extend(out.iter().cloned());
            expand(e.value.as_deref().unwrap_or_default(), &map)
        };
        set(&mut out, e.name.clone(), value);
    }
    // Then the Services' variables the container did not declare itself.
    for (k, v) in service_env {
        if !out.iter().any(|(n, _)| n == k) {
            out.push((k.clone(), v.clone()));
        }
    }
    Ok(out)
}

/// The variables the kubelet gives a container for each Service (`enableServiceLinks`)
/// and always for the API server's `kubernetes` Service: `{NAME}_SERVICE_HOST`,
/// `{NAME}_SERVICE_PORT[_{PORT NAME}]` and Docker's link variables (`{NAME}_PORT`,
/// `{NAME}_PORT_{port}_{PROTO}[_PROTO|_PORT|_ADDR]`), for Services with a cluster IP.
pub fn service_env<'a>(services: impl IntoIterator<Item = &'a Service>) -> Vec<(String, String)> {
    let mut sorted: Vec<&Service> = services.into_iter().collect();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let var = |s: &str| s.replace('-', "_").to_uppercase();
    let mut out = Vec::new();
    for svc in sorted {
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        let ip = spec.cluster_ip.clone().unwrap_or_default();
        if ip.is_empty() || ip == "None" {
            continue;
        }
        let ports = spec.ports.as_deref().unwrap_or_default();
        let Some(first) = ports.first() else {
            continue;
        };
        let prefix = var(svc.metadata.name.as_deref().unwrap_or_default());
        out.push((format!("{prefix}_SERVICE_HOST"), ip.clone()));
        let port_var = format!("{prefix}_SERVICE_PORT");
        out.push((port_var.clone(), first.port.to_string()));
        for p in ports {
            if let Some(n) = p.name.as_deref().filter(|n| !n.is_empty()) {
                out.push((format!("{port_var}_{}", var(n)), p.port.to_string()));
            }
        }
        let host = if ip.contains(':') {
            format!("[{ip}]")
        } else {
            ip.clone()
        };
        for (i, p) in ports.iter().enumerate() {
            let proto = p.protocol.as_deref().unwrap_or("TCP");
            let url = format!("{}://{host}:{}", proto.to_lowercase(), p.port);
            if i == 0 {
                out.push((format!("{prefix}_PORT"), url.clone()));
            }
            let pp = format!("{prefix}_PORT_{}_{}", p.port, proto.to_uppercase());
            out.push((pp.clone(), url));
            out.push((format!("{pp}_PROTO"), proto.to_lowercase()));
            out.push((format!("{pp}_PORT"), p.port.to_string()));
            out.push((format!("{pp}_ADDR"), ip.clone()));
        }
    }
    out
}

/// `--user` for the securityContext (the container's over the pod's).
pub fn user(pod: &Pod, c: &Container) -> Option<String> {
    let psc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let csc = c.security_context.as_ref();
    let uid = csc
        .and_then(|s| s.run_as_user)
        .or_else(|| psc.and_then(|s| s.run_as_user));
    let gid = csc
        .and_then(|s| s.run_as_group)
        .or_else(|| psc.and_then(|s| s.run_as_group));
    match (uid, gid) {
        (Some(u), Some(g)) => Some(format!("{u}:{g}")),
        (Some(u), None) => Some(u.to_string()),
        (None, Some(g)) => Some(format!("0:{g}")),
        (None, None) => None,
    }
}

pub fn run_as_non_root(pod: &Pod, c: &Container) -> bool {
    c.security_context
        .as_ref()
        .and_then(|s| s.run_as_non_root)
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.security_context.as_ref())
                .and_then(|s| s.run_as_non_root)
        })
        .unwrap_or(false)
}

/// The pod's supplementary groups: `supplementalGroups` and `fsGroup`.
pub fn groups(pod: &Pod) -> Vec<u32> {
    let Some(sc) = pod.spec.as_ref().and_then(|s| s.security_context.as_ref()) else {
        return Vec::new();
    };
    let mut g: Vec<u32> = sc
        .supplemental_groups
        .iter()
        .flatten()
        .chain(sc.fs_group.iter())
        .filter_map(|g| u32::try_from(*g).ok())
        .collect();
    g.sort_unstable();
    g.dedup();
    g
}

/// The sysctls the kubelet allows without `--allowed-unsafe-sysctls`: namespaced and safe.
pub const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

/// The pod's sysctls.
pub fn sysctls(pod: &Pod) -> BTreeMap<String, String> {
    pod.spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref())
        .and_then(|s| s.sysctls.as_ref())
        .map(|l| {
            l.iter()
                .map(|s| (s.name.clone(), s.value.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// The kubelet's sysctl admission: `Some(message)` for a sysctl it does not allow.
pub fn forbidden_sysctl(pod: &Pod) -> Option<String> {
    sysctls(pod)
        .keys()
        .find(|k| !SAFE_SYSCTLS.contains(&k.as_str()))
        .map(|k| format!("forbidden sysctl: \"{k}\" not allowlisted"))
}

/// Security options as the engine takes them (`--security-opt`, capabilities, privileged,
/// read-only root).
pub struct Security {
    pub privileged: bool,
    pub read_only: bool,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub security_opt: Vec<String>,
}

pub fn security(pod: &Pod, c: &Container) -> Result<Security, ConfigError> {
    let sc = c.security_context.as_ref();
    let psc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let caps = |l: Option<&Vec<String>>| -> Vec<String> {
        l.into_iter()
            .flatten()
            .map(|c| c.trim_start_matches("CAP_").to_ascii_uppercase())
            .collect()
    };
    let mut opts = Vec::new();
    if sc.and_then(|s| s.allow_privilege_escalation) == Some(false) {
        opts.push("no-new-privileges".to_string());
    }
    let seccomp = sc
        .and_then(|s| s.seccomp_profile.as_ref())
        .or_else(|| psc.and_then(|s| s.seccomp_profile.as_ref()));
    if let Some(p) = seccomp {
        match p.type_.as_str() {
            "RuntimeDefault" => {}
            "Unconfined" => opts.push("seccomp=unconfined".into()),
            "Localhost" => {
                let path = p.localhost_profile.clone().unwrap_or_default();
                if path.is_empty() || path.contains("..") {
                    return Err(ConfigError(format!(
                        "invalid localhostProfile {path:?} for seccompProfile type Localhost"
                    )));
                }
                opts.push(format!("seccomp=/var/lib/kubelet/seccomp/{path}"));
            }
            t => return Err(ConfigError(format!("unknown seccompProfile type {t:?}"))),
        }
    }
    Ok(Security {
        privileged: sc.and_then(|s| s.privileged).unwrap_or(false),
        read_only: sc
            .and_then(|s| s.read_only_root_filesystem)
            .unwrap_or(false),
        cap_add: caps(
            sc.and_then(|s| s.capabilities.as_ref())
                .and_then(|c| c.add.as_ref()),
        ),
        cap_drop: caps(
            sc.and_then(|s| s.capabilities.as_ref())
                .and_then(|c| c.drop.as_ref()),
        ),
        security_opt: opts,
    })
}

/// The engine's `(memory, cpus, cpu_shares)` for a container's resources.
pub fn limits(c: &Container) -> (Option<String>, Option<String>, Option<u64>) {
    let memory = limit(c, "memory")
        .and_then(|q| bytes(&q))
        .map(|b| b.to_string());
    let cpus = limit(c, "cpu")
        .and_then(|q| cpu_milli(&q))
        .map(|m| format!("{}", m as f64 / 1000.0));
    // The kubelet's shares: milli * 1024 / 1000, at least 2.
    let shares = request(c, "cpu")
        .and_then(|q| cpu_milli(&q))
        .map(|m| (m * 1024 / 1000).max(2))
        .or(Some(2));
    (memory, cpus, shares)
}

/// The labels the kubelet puts on a container (`crictl`'s view).
pub fn labels(pod: &Pod, container: &str, attempt: u32) -> BTreeMap<String, String> {
    let md = &pod.metadata;
    BTreeMap::from([
        (LABEL_POD_NAME.into(), md.name.clone().unwrap_or_default()),
        (
            LABEL_POD_NAMESPACE.into(),
            md.namespace.clone().unwrap_or_default(),
        ),
        (LABEL_POD_UID.into(), md.uid.clone().unwrap_or_default()),
        (LABEL_CONTAINER_NAME.into(), container.to_string()),
        (LABEL_ATTEMPT.into(), attempt.to_string()),
    ])
}

/// Stable engine names: `k8s_<container>_<pod>_<namespace>_<uid>_<attempt>`, as the
/// kubelet's Docker integration named them.
pub fn container_name(pod: &Pod, container: &str, attempt: u32) -> String {
    let md = &pod.metadata;
    format!(
        "k8s_{container}_{}_{}_{}_{attempt}",
        md.name.as_deref().unwrap_or_default(),
        md.namespace.as_deref().unwrap_or_default(),
        md.uid.as_deref().unwrap_or_default()
    )
}

pub fn sandbox_name(uid: &str) -> String {
    format!("k8s_POD_{uid}")
}

/// A Value's string at `ptr`.
pub fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion() {
        let env = BTreeMap::from([("A".to_string(), "x".to_string())]);
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &env), "x-$(B)-$(A)-$");
        assert_eq!(expand("é$(A", &env), "é$(A");
    }
}

/// The cluster DNS Service's address, the nameserver of `ClusterFirst` pods.
pub const CLUSTER_DNS: &str = "10.43.0.10";

/// The pod's `/etc/resolv.conf`, as the kubelet writes it for its `dnsPolicy` and
/// `dnsConfig` from the node's resolv.conf (`host`).
pub fn resolv_conf(pod: &Pod, host: &str, domain: &str) -> String {
    let spec = pod.spec.as_ref();
    let host_network = spec.and_then(|s| s.host_network) == Some(true);
    let policy = spec
        .and_then(|s| s.dns_policy.as_deref())
        .unwrap_or("ClusterFirst");
    let cluster = match policy {
        "ClusterFirstWithHostNet" => true,
        "ClusterFirst" => !host_network,
        _ => false,
    };
    let field = |key: &str| -> Vec<String> {
        host.lines()
            .filter_map(|l| l.trim().strip_prefix(key))
            .filter(|rest| rest.starts_with([' ', '\t']))
            .flat_map(|rest| rest.split_whitespace().map(String::from))
            .collect()
    };
    let (mut servers, mut search, mut options): (Vec<String>, Vec<String>, Vec<String>) =
        match policy {
            "None" => Default::default(),
            _ if cluster => {
                let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
                let mut search = vec![
                    format!("{ns}.svc.{domain}"),
                    format!("svc.{domain}"),
                    domain.to_string(),
                ];
                search.extend(field("search"));
                (
                    vec![CLUSTER_DNS.to_string()],
                    search,
                    vec!["ndots:5".into()],
                )
            }
            _ => (field("nameserver"), field("search"), field("options")),
        };
    if let Some(c) = spec.and_then(|s| s.dns_config.as_ref()) {
        servers.extend(c.nameservers.iter().flatten().cloned());
        search.extend(c.searches.iter().flatten().cloned());
        for o in c.options.iter().flatten() {
            let name = o.name.clone().unwrap_or_default();
            options.retain(|x| x.split(':').next() != Some(name.as_str()));
            options.push(match &o.value {
                Some(v) => format!("{name}:{v}"),
                None => name,
            });
        }
    }
    let dedup = |v: Vec<String>| {
        let mut out: Vec<String> = Vec::new();
        for x in v {
            if !x.is_empty() && !out.contains(&x) {
                out.push(x);
            }
        }
        out
    };
    let servers: Vec<String> = dedup(servers).into_iter().take(3).collect();
    let search: Vec<String> = dedup(search).into_iter().take(32).collect();
    let mut out = String::new();
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    for s in servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    out
}

#[cfg(test)]
mod dns_tests {
    use super::*;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "shop"},
            "spec": spec,
        }))
        .unwrap()
    }

    const HOST: &str = "search corp.example\nnameserver 192.0.2.53\noptions edns0\n";

    #[test]
    fn cluster_first_pods_ask_cluster_dns_with_the_namespace_searched_first() {
        let r = resolv_conf(
            &pod(serde_json::json!({"containers": []})),
            HOST,
            "cluster.local",
        );
        assert_eq!(
            r,
            "search shop.svc.cluster.local svc.cluster.local cluster.local corp.example\nnameserver 10.43.0.10\noptions ndots:5\n"
        );
        // Host-network pods keep the node's, unless ClusterFirstWithHostNet.
        let r = resolv_conf(
            &pod(serde_json::json!({"containers": [], "hostNetwork": true})),
            HOST,
            "cluster.local",
        );
        assert_eq!(r, HOST);
        let r = resolv_conf(
            &pod(
                serde_json::json!({"containers": [], "hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"}),
            ),
            HOST,
            "cluster.local",
        );
        assert!(r.contains("nameserver 10.43.0.10"));
    }

    #[test]
    fn none_takes_dns_config_alone_and_options_merge_by_name() {
        let r = resolv_conf(
            &pod(
                serde_json::json!({"containers": [], "dnsPolicy": "None", "dnsConfig": {
                "nameservers": ["1.2.3.4"], "searches": ["a.example"],
                "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}),
            ),
            HOST,
            "cluster.local",
        );
        assert_eq!(
            r,
            "search a.example\nnameserver 1.2.3.4\noptions ndots:2 edns0\n"
        );
        let r = resolv_conf(
            &pod(
                serde_json::json!({"containers": [], "dnsConfig": {"options": [{"name": "ndots", "value": "1"}]}}),
            ),
            HOST,
            "cluster.local",
        );
        assert!(r.ends_with("options ndots:1\n"), "{r}");
    }
}
