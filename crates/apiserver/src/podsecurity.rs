//! PodSecurity admission: the Pod Security Standards (`privileged`, `baseline`,
//! `restricted`, at their latest version) applied by namespace labels, as Kubernetes'
//! built-in admission plugin applies them:
//!
//! - `pod-security.kubernetes.io/enforce`: a pod that violates the level is refused
//!   (`violates PodSecurity "restricted:latest": …`);
//! - `…/warn`: it is admitted with a warning kubectl prints
//!   (`would violate PodSecurity "…": …`);
//! - `…/audit`: recorded as the `pod-security.kubernetes.io/audit-violations` annotation
//!   Kubernetes adds to audit events; berth keeps no audit log, so it is a warning too;
//! - workloads (Deployments, Jobs, … and PodTemplates) are never refused: their pod
//!   template is checked against the enforce and warn levels and violations are warnings,
//!   so a user learns at `kubectl apply` rather than when no pod appears;
//! - invalid label values on a Namespace are refused.
//!
//! Each check reports Kubernetes' reason and detail texts (k8s.io/pod-security-admission
//! policy/check_*.go), and reasons are listed in the order of the checks' IDs.

use serde_json::Value;

use crate::api::Api;
use crate::status::{ApiError, ApiResult, FieldError};

const PREFIX: &str = "pod-security.kubernetes.io/";
const LEVELS: &[&str] = &["privileged", "baseline", "restricted"];

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    fn parse(s: &str) -> Option<Level> {
        match s {
            "privileged" => Some(Level::Privileged),
            "baseline" => Some(Level::Baseline),
            "restricted" => Some(Level::Restricted),
            _ => None,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

fn plural<'a>(one: &'a str, many: &'a str, n: usize) -> &'a str {
    if n == 1 {
        one
    } else {
        many
    }
}

fn join_quote(items: &[String]) -> String {
    items
        .iter()
        .map(|i| format!("\"{i}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `container "a"` or `containers "a", "b"`.
fn containers(names: &[String]) -> String {
    format!(
        "{} {}",
        plural("container", "containers", names.len()),
        join_quote(names)
    )
}

/// A pod spec's containers: init, regular, ephemeral (Kubernetes' visit order).
fn all_containers(spec: &Value) -> Vec<&Value> {
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| spec.get(*k).and_then(Value::as_array).into_iter().flatten())
        .collect()
}

fn name(c: &Value) -> String {
    c.get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn bool_at(v: &Value, p: &str) -> Option<bool> {
    v.pointer(p).and_then(Value::as_bool)
}

fn str_at<'a>(v: &'a Value, p: &str) -> Option<&'a str> {
    v.pointer(p).and_then(Value::as_str)
}

const BASELINE_CAPS: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ping_group_range",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_syncookies",
];

const RESTRICTED_VOLUMES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// The violations of `level` by a pod (its metadata and spec): (check ID, reason, detail),
/// in the order of the IDs.
pub fn check(level: Level, meta: &Value, spec: &Value) -> Vec<(&'static str, String)> {
    let mut out: Vec<(&'static str, String, String)> = Vec::new();
    if level == Level::Privileged {
        return Vec::new();
    }
    let cs = all_containers(spec);
    let psc = spec.get("securityContext").cloned().unwrap_or(Value::Null);
    let mut add = |id: &'static str, reason: &str, detail: String| {
        out.push((id, reason.to_string(), detail));
    };
    // --- baseline ---
    // windowsHostProcess
    let host_process = bool_at(&psc, "/windowsOptions/hostProcess") == Some(true)
        || cs
            .iter()
            .any(|c| bool_at(c, "/securityContext/windowsOptions/hostProcess") == Some(true));
    if host_process {
        add(
            "windowsHostProcess",
            "hostProcess",
            "pod or containers must not set securityContext.windowsOptions.hostProcess=true".into(),
        );
    }
    // hostNamespaces
    let hosts: Vec<String> = ["hostNetwork", "hostPID", "hostIPC"]
        .iter()
        .filter(|k| spec.get(**k).and_then(Value::as_bool) == Some(true))
        .map(|k| format!("{k}=true"))
        .collect();
    if !hosts.is_empty() {
        add("hostNamespaces", "host namespaces", hosts.join(", "));
    }
    // privileged
    let bad: Vec<String> = cs
        .iter()
        .filter(|c| bool_at(c, "/securityContext/privileged") == Some(true))
        .map(|c| name(c))
        .collect();
    if !bad.is_empty() {
        add(
            "privileged",
            "privileged",
            format!(
                "{} must not set securityContext.privileged=true",
                containers(&bad)
            ),
        );
    }
    // capabilities_baseline
    let mut bad = Vec::new();
    let mut forbidden: std::collections::BTreeSet<String> = Default::default();
    for c in &cs {
        let mut any = false;
        for cap in c
            .pointer("/securityContext/capabilities/add")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !BASELINE_CAPS.contains(&cap) {
                forbidden.insert(cap.to_string());
                any = true;
            }
        }
        if any {
            bad.push(name(c));
        }
    }
    if !bad.is_empty() {
        let f: Vec<String> = forbidden.into_iter().collect();
        add(
            "capabilities_baseline",
            "non-default capabilities",
            format!(
                "{} must not include {} in securityContext.capabilities.add",
                containers(&bad),
                join_quote(&f)
            ),
        );
    }
    // hostPathVolumes (restricted replaces it with restrictedVolumes)
    let volumes: Vec<&Value> = spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    if level == Level::Baseline {
        let bad: Vec<String> = volumes
            .iter()
            .filter(|v| v.get("hostPath").is_some_and(|h| !h.is_null()))
            .map(|v| name(v))
            .collect();
        if !bad.is_empty() {
            add(
                "hostPathVolumes",
                "hostPath volumes",
                format!(
                    "{} {}",
                    plural("volume", "volumes", bad.len()),
                    join_quote(&bad)
                ),
            );
        }
    }
    // hostPorts
    let mut bad = Vec::new();
    let mut ports = Vec::new();
    for c in &cs {
        let mut any = false;
        for p in c
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(hp) = p
                .get("hostPort")
                .and_then(Value::as_i64)
                .filter(|h| *h != 0)
            {
                ports.push(hp.to_string());
                any = true;
            }
        }
        if any {
            bad.push(name(c));
        }
    }
    if !bad.is_empty() {
        add(
            "hostPorts",
            "hostPort",
            format!(
                "{} {} {} {}",
                containers(&bad),
                plural("uses", "use", bad.len()),
                plural("hostPort", "hostPorts", ports.len()),
                ports.join(", ")
            ),
        );
    }
    // appArmorProfile
    let unconfined = |v: &Value, p: &str| str_at(v, p) == Some("Unconfined");
    let mut setters = Vec::new();
    if unconfined(&psc, "/appArmorProfile/type") {
        setters.push("pod".to_string());
    }
    let bad: Vec<String> = cs
        .iter()
        .filter(|c| unconfined(c, "/securityContext/appArmorProfile/type"))
        .map(|c| name(c))
        .collect();
    if !bad.is_empty() {
        setters.push(containers(&bad));
    }
    let annotated: Vec<String> = meta
        .get("annotations")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(k, v)| {
            k.starts_with("container.apparmor.security.beta.kubernetes.io/")
                && v.as_str().is_some_and(|v| {
                    v != "runtime/default" && !v.starts_with("localhost/") && !v.is_empty()
                })
        })
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    if !setters.is_empty() || !annotated.is_empty() {
        let mut d = Vec::new();
        if !setters.is_empty() {
            d.push(format!(
                "{} must not set appArmorProfile.type to \"Unconfined\"",
                setters.join(" and ")
            ));
        }
        if !annotated.is_empty() {
            d.push(format!(
                "{} {}",
                plural("annotation", "annotations", annotated.len()),
                join_quote(&annotated)
            ));
        }
        add(
            "appArmorProfile",
            "forbidden AppArmor profile",
            d.join("; "),
        );
    }
    // seLinuxOptions
    let se_ok_types = [
        "",
        "container_t",
        "container_init_t",
        "container_kvm_t",
        "container_engine_t",
    ];
    let se_bad = |o: &Value| -> Vec<String> {
        let mut why = Vec::new();
        if let Some(t) = str_at(o, "/type").filter(|t| !se_ok_types.contains(t)) {
            why.push(format!("type \"{t}\""));
        }
        if str_at(o, "/user").is_some_and(|u| !u.is_empty()) {
            why.push("user may not be set".into());
        }
        if str_at(o, "/role").is_some_and(|r| !r.is_empty()) {
            why.push("role may not be set".into());
        }
        why
    };
    let mut setters = Vec::new();
    let mut why: Vec<String> = Vec::new();
    if let Some(o) = psc.get("seLinuxOptions") {
        let w = se_bad(o);
        if !w.is_empty() {
            setters.push("pod".to_string());
            why.extend(w);
        }
    }
    let mut bad = Vec::new();
    for c in &cs {
        if let Some(o) = c.pointer("/securityContext/seLinuxOptions") {
            let w = se_bad(o);
            if !w.is_empty() {
                bad.push(name(c));
                for x in w {
                    if !why.contains(&x) {
                        why.push(x);
                    }
                }
            }
        }
    }
    if !bad.is_empty() {
        setters.push(containers(&bad));
    }
    if !setters.is_empty() {
        add(
            "seLinuxOptions",
            "seLinuxOptions",
            format!(
                "{} set forbidden securityContext.seLinuxOptions: {}",
                setters.join(" and "),
                why.join("; ")
            ),
        );
    }
    // procMount
    let mut bad = Vec::new();
    let mut kinds: Vec<String> = Vec::new();
    for c in &cs {
        if let Some(p) = str_at(c, "/securityContext/procMount").filter(|p| *p != "Default") {
            bad.push(name(c));
            if !kinds.iter().any(|k| k == p) {
                kinds.push(p.to_string());
            }
        }
    }
    if !bad.is_empty() {
        add(
            "procMount",
            "procMount",
            format!(
                "{} must not set securityContext.procMount to {}",
                containers(&bad),
                join_quote(&kinds)
            ),
        );
    }
    // sysctls
    let bad: Vec<String> = psc
        .get("sysctls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("name").and_then(Value::as_str))
        .filter(|n| !SAFE_SYSCTLS.contains(n))
        .map(str::to_string)
        .collect();
    if !bad.is_empty() {
        add("sysctls", "forbidden sysctls", bad.join(", "));
    }
    // seccompProfile (baseline: no Unconfined; restricted: RuntimeDefault or Localhost)
    let pod_seccomp = str_at(&psc, "/seccompProfile/type");
    if level == Level::Baseline {
        let mut d = Vec::new();
        if pod_seccomp == Some("Unconfined") {
            d.push(
                "pod must not set securityContext.seccompProfile.type to \"Unconfined\""
                    .to_string(),
            );
        }
        let bad: Vec<String> = cs
            .iter()
            .filter(|c| str_at(c, "/securityContext/seccompProfile/type") == Some("Unconfined"))
            .map(|c| name(c))
            .collect();
        if !bad.is_empty() {
            d.push(format!(
                "{} must not set securityContext.seccompProfile.type to \"Unconfined\"",
                containers(&bad)
            ));
        }
        if !d.is_empty() {
            add("seccompProfile_baseline", "seccompProfile", d.join("; "));
        }
    }
    if level == Level::Restricted {
        // restrictedVolumes
        let mut bad = Vec::new();
        let mut types: std::collections::BTreeSet<String> = Default::default();
        for v in &volumes {
            let Some(o) = v.as_object() else { continue };
            for (k, val) in o {
                if k == "name" || val.is_null() {
                    continue;
                }
                if !RESTRICTED_VOLUMES.contains(&k.as_str()) {
                    bad.push(name(v));
                    types.insert(k.clone());
                }
            }
        }
        if !bad.is_empty() {
            let t: Vec<String> = types.into_iter().collect();
            add(
                "restrictedVolumes",
                "restricted volume types",
                format!(
                    "{} {} {} {} {}",
                    plural("volume", "volumes", bad.len()),
                    join_quote(&bad),
                    plural("uses", "use", bad.len()),
                    plural("restricted volume type", "restricted volume types", t.len()),
                    join_quote(&t)
                ),
            );
        }
        // allowPrivilegeEscalation
        let bad: Vec<String> = cs
            .iter()
            .filter(|c| bool_at(c, "/securityContext/allowPrivilegeEscalation") != Some(false))
            .map(|c| name(c))
            .collect();
        if !bad.is_empty() {
            add(
                "allowPrivilegeEscalation",
                "allowPrivilegeEscalation != false",
                format!(
                    "{} must set securityContext.allowPrivilegeEscalation=false",
                    containers(&bad)
                ),
            );
        }
        // runAsNonRoot
        let pod_nonroot = bool_at(&psc, "/runAsNonRoot");
        let mut setters = Vec::new();
        if pod_nonroot == Some(false) {
            setters.push("pod".to_string());
        }
        let explicit: Vec<String> = cs
            .iter()
            .filter(|c| bool_at(c, "/securityContext/runAsNonRoot") == Some(false))
            .map(|c| name(c))
            .collect();
        if !explicit.is_empty() {
            setters.push(containers(&explicit));
        }
        if !setters.is_empty() {
            add(
                "runAsNonRoot",
                "runAsNonRoot != true",
                format!(
                    "{} must not set securityContext.runAsNonRoot=false",
                    setters.join(" and ")
                ),
            );
        } else if pod_nonroot != Some(true) {
            let implicit: Vec<String> = cs
                .iter()
                .filter(|c| bool_at(c, "/securityContext/runAsNonRoot") != Some(true))
                .map(|c| name(c))
                .collect();
            if !implicit.is_empty() {
                add(
                    "runAsNonRoot",
                    "runAsNonRoot != true",
                    format!(
                        "pod or {} must set securityContext.runAsNonRoot=true",
                        containers(&implicit)
                    ),
                );
            }
        }
        // runAsUser
        let mut setters = Vec::new();
        if psc.get("runAsUser").and_then(Value::as_i64) == Some(0) {
            setters.push("pod".to_string());
        }
        let bad: Vec<String> = cs
            .iter()
            .filter(|c| {
                c.pointer("/securityContext/runAsUser")
                    .and_then(Value::as_i64)
                    == Some(0)
            })
            .map(|c| name(c))
            .collect();
        if !bad.is_empty() {
            setters.push(containers(&bad));
        }
        if !setters.is_empty() {
            add(
                "runAsUser",
                "runAsUser=0",
                format!("{} must not set runAsUser=0", setters.join(" and ")),
            );
        }
        // seccompProfile_restricted
        let good = |t: Option<&str>| matches!(t, Some("RuntimeDefault") | Some("Localhost"));
        let mut setters = Vec::new();
        let mut bad_types: Vec<String> = Vec::new();
        if pod_seccomp.is_some() && !good(pod_seccomp) {
            setters.push("pod".to_string());
            bad_types.push(pod_seccomp.unwrap_or_default().to_string());
        }
        let explicit: Vec<String> = cs
            .iter()
            .filter(|c| {
                let t = str_at(c, "/securityContext/seccompProfile/type");
                t.is_some() && !good(t)
            })
            .map(|c| name(c))
            .collect();
        for c in &cs {
            if let Some(t) =
                str_at(c, "/securityContext/seccompProfile/type").filter(|t| !good(Some(t)))
            {
                if !bad_types.iter().any(|b| b == t) {
                    bad_types.push(t.to_string());
                }
            }
        }
        if !explicit.is_empty() {
            setters.push(containers(&explicit));
        }
        if !setters.is_empty() {
            add(
                "seccompProfile_restricted",
                "seccompProfile",
                format!(
                    "{} must not set securityContext.seccompProfile.type to {}",
                    setters.join(" and "),
                    join_quote(&bad_types)
                ),
            );
        } else if !good(pod_seccomp) {
            let implicit: Vec<String> = cs
                .iter()
                .filter(|c| !good(str_at(c, "/securityContext/seccompProfile/type")))
                .map(|c| name(c))
                .collect();
            if !implicit.is_empty() {
                add(
                    "seccompProfile_restricted",
                    "seccompProfile",
                    format!(
                        "pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
                        containers(&implicit)
                    ),
                );
            }
        }
        // capabilities_restricted
        let mut d = Vec::new();
        let missing_drop: Vec<String> = cs
            .iter()
            .filter(|c| {
                !c.pointer("/securityContext/capabilities/drop")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.iter().any(|x| x == "ALL"))
            })
            .map(|c| name(c))
            .collect();
        if !missing_drop.is_empty() {
            d.push(format!(
                "{} must set securityContext.capabilities.drop=[\"ALL\"]",
                containers(&missing_drop)
            ));
        }
        let mut adding = Vec::new();
        let mut caps: std::collections::BTreeSet<String> = Default::default();
        for c in &cs {
            let mut any = false;
            for cap in c
                .pointer("/securityContext/capabilities/add")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .filter(|c| *c != "NET_BIND_SERVICE")
            {
                caps.insert(cap.to_string());
                any = true;
            }
            if any {
                adding.push(name(c));
            }
        }
        if !adding.is_empty() {
            let f: Vec<String> = caps.into_iter().collect();
            d.push(format!(
                "{} must not include {} in securityContext.capabilities.add",
                containers(&adding),
                join_quote(&f)
            ));
        }
        if !d.is_empty() {
            add(
                "capabilities_restricted",
                "unrestricted capabilities",
                d.join("; "),
            );
        }
    }
    out.sort_by(|a, b| a.0.cmp(b.0));
    out.into_iter()
        .map(|(id, reason, detail)| (id, format!("{reason} ({detail})")))
        .collect()
}

/// A namespace's policy for one mode: the level and its version label (`latest` unless
/// given).
fn policy(labels: &Value, mode: &str) -> Option<(Level, String)> {
    let level = labels
        .get(format!("{PREFIX}{mode}"))
        .and_then(Value::as_str)?;
    // An invalid level is evaluated as restricted (Kubernetes fails closed).
    let level = Level::parse(level).unwrap_or(Level::Restricted);
    let version = labels
        .get(format!("{PREFIX}{mode}-version"))
        .and_then(Value::as_str)
        .unwrap_or("latest")
        .to_string();
    Some((level, version))
}

/// The pod spec (and its metadata) of an object PodSecurity looks at: a Pod, or the
/// template of a workload.
fn pod_of<'a>(kind: &crate::kinds::Kind, obj: &'a Value) -> Option<(&'a Value, &'a Value, bool)> {
    let pair = |meta: &'a Value, spec: &'a Value| Some((meta, spec));
    let (m, s) = match (kind.group.as_str(), kind.kind.as_str()) {
        ("", "Pod") => return Some((obj.get("metadata")?, obj.get("spec")?, true)),
        ("", "PodTemplate") => pair(
            obj.pointer("/template/metadata").unwrap_or(&Value::Null),
            obj.pointer("/template/spec")?,
        )?,
        ("batch", "CronJob") => pair(
            obj.pointer("/spec/jobTemplate/spec/template/metadata")
                .unwrap_or(&Value::Null),
            obj.pointer("/spec/jobTemplate/spec/template/spec")?,
        )?,
        ("", "ReplicationController")
        | ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet")
        | ("batch", "Job") => pair(
            obj.pointer("/spec/template/metadata")
                .unwrap_or(&Value::Null),
            obj.pointer("/spec/template/spec")?,
        )?,
        _ => return None,
    };
    Some((m, s, false))
}

/// Checks an object being created against its namespace's levels: refuses a Pod that
/// violates `enforce`, and returns the warnings for `warn` and `audit` (and for a
/// workload's template, for `enforce` too).
pub fn admit(
    api: &Api,
    kind: &crate::kinds::Kind,
    obj: &Value,
    warnings: &mut Vec<String>,
) -> ApiResult<()> {
    let Some((meta, spec, is_pod)) = pod_of(kind, obj) else {
        return Ok(());
    };
    let ns = obj
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let Some(labels) = api
        .cache
        .get(&format!("/registry/core/namespaces/{ns}"))
        .and_then(|raw| serde_json::from_slice::<Value>(&raw).ok())
        .and_then(|n| n.pointer("/metadata/labels").cloned())
    else {
        return Ok(());
    };
    let describe = |level: Level, version: &str| -> Option<String> {
        let v = check(level, meta, spec);
        (!v.is_empty()).then(|| {
            format!(
                "PodSecurity \"{}:{version}\": {}",
                level.name(),
                v.into_iter().map(|(_, r)| r).collect::<Vec<_>>().join(", ")
            )
        })
    };
    let mut said: Vec<String> = Vec::new();
    if let Some((level, version)) = policy(&labels, "enforce") {
        if let Some(v) = describe(level, &version) {
            if is_pod {
                let name = obj
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                return Err(ApiError::forbidden(format!(
                    "pods \"{name}\" is forbidden: violates {v}"
                )));
            }
            said.push(v);
        }
    }
    for mode in ["warn", "audit"] {
        if let Some((level, version)) = policy(&labels, mode) {
            if let Some(v) = describe(level, &version) {
                if !said.contains(&v) {
                    said.push(v);
                }
            }
        }
    }
    warnings.extend(said.into_iter().map(|v| format!("would violate {v}")));
    Ok(())
}

/// The PodSecurity labels of a Namespace being written must name a level and a version.
pub fn validate_namespace(obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let Some(labels) = obj.pointer("/metadata/labels").and_then(Value::as_object) else {
        return errs;
    };
    for (k, v) in labels {
        let Some(rest) = k.strip_prefix(PREFIX) else {
            continue;
        };
        let v = v.as_str().unwrap_or_default();
        let field = format!("metadata.labels[{k}]");
        match rest {
            "enforce" | "warn" | "audit" if Level::parse(v).is_none() => {
                errs.push(FieldError::not_supported(field, v, LEVELS));
            }
            "enforce-version" | "warn-version" | "audit-version" => {
                let ok = v == "latest"
                    || v.strip_prefix("v1.")
                        .is_some_and(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_digit()));
                if !ok {
                    errs.push(FieldError::invalid(
                        field,
                        v,
                        "must be \"latest\" or a Kubernetes version such as \"v1.32\"",
                    ));
                }
            }
            _ => {}
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reasons(level: Level, spec: Value) -> Vec<String> {
        check(level, &json!({}), &spec)
            .into_iter()
            .map(|(_, r)| r)
            .collect()
    }

    #[test]
    fn a_plain_pod_violates_restricted_as_kubernetes_says() {
        let spec = json!({"containers": [{"name": "nginx", "image": "nginx"}]});
        assert!(reasons(Level::Baseline, spec.clone()).is_empty());
        assert_eq!(
            reasons(Level::Restricted, spec).join(", "),
            "allowPrivilegeEscalation != false (container \"nginx\" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container \"nginx\" must set securityContext.capabilities.drop=[\"ALL\"]), runAsNonRoot != true (pod or container \"nginx\" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container \"nginx\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
        );
        let good = json!({
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "securityContext": {
                "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}],
            "volumes": [{"name": "t", "projected": {"sources": []}}, {"name": "e", "emptyDir": {}}],
        });
        assert!(reasons(Level::Restricted, good).is_empty());
    }

    #[test]
    fn baseline_refuses_host_access_and_privilege() {
        let spec = json!({
            "hostNetwork": true, "hostPID": true,
            "securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}, {"name": "net.ipv4.tcp_syncookies", "value": "1"}]},
            "containers": [
                {"name": "a", "securityContext": {"privileged": true, "capabilities": {"add": ["NET_ADMIN", "CHOWN"]}}, "ports": [{"containerPort": 80, "hostPort": 8080}]},
                {"name": "b", "securityContext": {"privileged": true, "procMount": "Unmasked", "seccompProfile": {"type": "Unconfined"}}},
            ],
            "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
        });
        assert_eq!(
            reasons(Level::Baseline, spec),
            [
                "non-default capabilities (container \"a\" must not include \"NET_ADMIN\" in securityContext.capabilities.add)",
                "host namespaces (hostNetwork=true, hostPID=true)",
                "hostPath volumes (volume \"h\")",
                "hostPort (container \"a\" uses hostPort 8080)",
                "privileged (containers \"a\", \"b\" must not set securityContext.privileged=true)",
                "procMount (container \"b\" must not set securityContext.procMount to \"Unmasked\")",
                "seccompProfile (container \"b\" must not set securityContext.seccompProfile.type to \"Unconfined\")",
                "forbidden sysctls (kernel.msgmax)",
            ]
        );
    }

    #[test]
    fn namespace_labels_must_name_a_level() {
        let errs = validate_namespace(&json!({"metadata": {"labels": {
            "pod-security.kubernetes.io/enforce": "strict",
            "pod-security.kubernetes.io/warn-version": "1.32",
            "pod-security.kubernetes.io/audit": "baseline",
        }}}));
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(text.len(), 2, "{text:?}");
        assert!(
            text[0].contains("supported values: \"privileged\", \"baseline\", \"restricted\""),
            "{text:?}"
        );
    }
}
