//! Table responses (`as=Table;v=v1;g=meta.k8s.io`) with the columns kubectl shows for each
//! kind, as Kubernetes' printers define them (`-o wide` columns have priority 1).

use serde_json::{json, Value};

use crate::kinds::{json_path, Kind};

struct Col(&'static str, &'static str, i32);

fn s(v: &Value, p: &str) -> String {
    match v.pointer(p) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        _ => String::new(),
    }
}
fn i(v: &Value, p: &str) -> i64 {
    v.pointer(p).and_then(Value::as_i64).unwrap_or(0)
}
fn or_none(s: String) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s
    }
}

/// Kubernetes' short age: 5s, 3m20s, 7h, 2d3h, 45d, 2y100d.
pub fn age(ts: &str) -> String {
    let Some(t) = timefmt::parse_rfc3339(ts) else {
        return "<unknown>".into();
    };
    let secs = ((timefmt::now_nanos() - t) / 1_000_000_000).max(0) as i64;
    timefmt_human(secs)
}

fn timefmt_human(d: i64) -> String {
    if d < 0 {
        return "<invalid>".into();
    }
    let (m, h, days) = (d / 60, d / 3600, d / 86400);
    if d < 60 * 2 {
        format!("{d}s")
    } else if m < 10 {
        let s = d % 60;
        if s == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{s}s")
        }
    } else if m < 60 * 3 {
        format!("{m}m")
    } else if h < 8 {
        let mm = m % 60;
        if mm == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{mm}m")
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        let hh = h % 24;
        if hh == 0 {
            format!("{days}d")
        } else {
            format!("{days}d{hh}h")
        }
    } else if h < 24 * 365 * 2 {
        format!("{days}d")
    } else if h < 24 * 365 * 8 {
        let dy = days % 365;
        if dy == 0 {
            format!("{}y", days / 365)
        } else {
            format!("{}y{dy}d", days / 365)
        }
    } else {
        format!("{}y", days / 365)
    }
}

fn containers_images(o: &Value, spec_ptr: &str) -> (String, String) {
    let cs = o
        .pointer(spec_ptr)
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let names: Vec<String> = cs.iter().map(|c| s(c, "/name")).collect();
    let images: Vec<String> = cs.iter().map(|c| s(c, "/image")).collect();
    (names.join(","), images.join(","))
}

fn selector_string(sel: Option<&Value>) -> String {
    let Some(sel) = sel else {
        return "<none>".into();
    };
    let l = crate::selector::LabelSelector::from_object(sel)
        .map(|l| l.to_string_form())
        .unwrap_or_default();
    or_none(l)
}

/// A LabelSelector (`matchLabels`/`matchExpressions`) or a plain map (a
/// ReplicationController's), as kubectl shows either.
fn any_selector(sel: Option<&Value>) -> String {
    match sel {
        Some(v) if v.get("matchLabels").is_some() || v.get("matchExpressions").is_some() => {
            selector_string(sel)
        }
        _ => map_selector(sel),
    }
}

fn map_selector(sel: Option<&Value>) -> String {
    let Some(o) = sel.and_then(Value::as_object) else {
        return "<none>".into();
    };
    let parts: Vec<String> = o
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    or_none(parts.join(","))
}

fn pod_row(o: &Value) -> Vec<Value> {
    let statuses = o
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let total = o
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map_or(0, |c| c.len());
    let ready = statuses
        .iter()
        .filter(|c| c.get("ready") == Some(&json!(true)))
        .count();
    let restarts: i64 = statuses.iter().map(|c| i(c, "/restartCount")).sum();
    let mut reason = s(o, "/status/phase");
    if !s(o, "/status/reason").is_empty() {
        reason = s(o, "/status/reason");
    }
    for c in statuses.iter().rev() {
        if let Some(r) = c.pointer("/state/waiting/reason").and_then(Value::as_str) {
            reason = r.into();
        } else if let Some(r) = c
            .pointer("/state/terminated/reason")
            .and_then(Value::as_str)
        {
            reason = r.into();
        }
    }
    if o.pointer("/metadata/deletionTimestamp").is_some() {
        reason = "Terminating".into();
    }
    let ip = or_none(s(o, "/status/podIP"));
    let node = or_none(s(o, "/spec/nodeName"));
    let nominated = or_none(s(o, "/status/nominatedNodeName"));
    let gates = o
        .pointer("/spec/readinessGates")
        .and_then(Value::as_array)
        .map_or("<none>".to_string(), |g| format!("0/{}", g.len()));
    vec![
        json!(s(o, "/metadata/name")),
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts),
        json!(age(&s(o, "/metadata/creationTimestamp"))),
        json!(ip),
        json!(node),
        json!(nominated),
        json!(gates),
    ]
}

fn service_ports(o: &Value) -> String {
    let ports = o
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let parts: Vec<String> = ports
        .iter()
        .map(|p| {
            let np = i(p, "/nodePort");
            if np > 0 {
                format!("{}:{}/{}", i(p, "/port"), np, s(p, "/protocol"))
            } else {
                format!("{}/{}", i(p, "/port"), s(p, "/protocol"))
            }
        })
        .collect();
    or_none(parts.join(","))
}

/// Renders one object's cells.
type RowFn = fn(&Value) -> Vec<Value>;

fn columns(kind: &Kind) -> (Vec<Col>, RowFn) {
    let name = Col("Name", "string", 0);
    let age_c = Col("Age", "string", 0);
    macro_rules! cols { ($($c:expr),*) => { vec![$($c),*] } }
    match (kind.group.as_str(), kind.plural.as_str()) {
        ("", "pods") => (
            cols![
                name,
                Col("Ready", "string", 0),
                Col("Status", "string", 0),
                Col("Restarts", "string", 0),
                age_c,
                Col("IP", "string", 1),
                Col("Node", "string", 1),
                Col("Nominated Node", "string", 1),
                Col("Readiness Gates", "string", 1)
            ],
            pod_row,
        ),
        ("apps", "deployments") => (
            cols![
                name,
                Col("Ready", "string", 0),
                Col("Up-to-date", "integer", 0),
                Col("Available", "integer", 0),
                age_c,
                Col("Containers", "string", 1),
                Col("Images", "string", 1),
                Col("Selector", "string", 1)
            ],
            |o| {
                let (c, im) = containers_images(o, "/spec/template/spec");
                vec![
                    json!(s(o, "/metadata/name")),
                    json!(format!(
                        "{}/{}",
                        i(o, "/status/readyReplicas"),
                        i(o, "/spec/replicas")
                    )),
                    json!(i(o, "/status/updatedReplicas")),
                    json!(i(o, "/status/availableReplicas")),
                    json!(age(&s(o, "/metadata/creationTimestamp"))),
                    json!(c),
                    json!(im),
                    json!(selector_string(o.pointer("/spec/selector"))),
                ]
            },
        ),
        ("apps", "replicasets") | ("", "replicationcontrollers") => (
            cols![
                name,
                Col("Desired", "integer", 0),
                Col("Current", "integer", 0),
                Col("Ready", "integer", 0),
                age_c,
                Col("Containers", "string", 1),
                Col("Images", "string", 1),
                Col("Selector", "string", 1)
            ],
            |o| {
                let (c, im) = containers_images(o, "/spec/template/spec");
                vec![
                    json!(s(o, "/metadata/name")),
                    json!(i(o, "/spec/replicas")),
                    json!(i(o, "/status/replicas")),
                    json!(i(o, "/status/readyReplicas")),
                    json!(age(&s(o, "/metadata/creationTimestamp"))),
                    json!(c),
                    json!(im),
                    json!(any_selector(o.pointer("/spec/selector"))),
                ]
            },
        ),
        ("apps", "statefulsets") => (
            cols![
                name,
                Col("Ready", "string", 0),
                age_c,
                Col("Containers", "string", 1),
                Col("Images", "string", 1)
            ],
            |o| {
                let (c, im) = containers_images(o, "/spec/template/spec");
                vec![
                    json!(s(o, "/metadata/name")),
                    json!(format!(
                        "{}/{}",
                        i(o, "/status/readyReplicas"),
                        i(o, "/spec/replicas")
                    )),
                    json!(age(&s(o, "/metadata/creationTimestamp"))),
                    json!(c),
                    json!(im),
                ]
            },
        ),
        ("apps", "daemonsets") => (
            cols![
                name,
                Col("Desired", "integer", 0),
                Col("Current", "integer", 0),
                Col("Ready", "integer", 0),
                Col("Up-to-date", "integer", 0),
                Col("Available", "integer", 0),
                Col("Node Selector", "string", 0),
                age_c,
                Col("Containers", "string", 1),
                Col("Images", "string", 1),
                Col("Selector", "string", 1)
            ],
            |o| {
                let (c, im) = containers_images(o, "/spec/template/spec");
                vec![
                    json!(s(o, "/metadata/name")),
                    json!(i(o, "/status/desiredNumberScheduled")),
                    json!(i(o, "/status/currentNumberScheduled")),
                    json!(i(o, "/status/numberReady")),
                    json!(i(o, "/status/updatedNumberScheduled")),
                    json!(i(o, "/status/numberAvailable")),
                    json!(map_selector(o.pointer("/spec/template/spec/nodeSelector"))),
                    json!(age(&s(o, "/metadata/creationTimestamp"))),
                    json!(c),
                    json!(im),
                    json!(selector_string(o.pointer("/spec/selector"))),
                ]
            },
        ),
        ("", "services") => (
            cols![
                name,
                Col("Type", "string", 0),
                Col("Cluster-IP", "string", 0),
                Col("External-IP", "string", 0),
                Col("Port(s)", "string", 0),
                age_c,
                Col("Selector", "string", 1)
            ],
            |o| {
                let ty = s(o, "/spec/type");
                let ext: Vec<String> = o
                    .pointer("/status/loadBalancer/ingress")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|i| {
                        let ip = s(i, "/ip");
                        if ip.is_empty() {
                            s(i, "/hostname")
                        } else {
                            ip
                        }
                    })
                    .collect();
                let mut ext_ips: Vec<String> = o
                    .pointer("/spec/externalIPs")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect();
                let external = match ty.as_str() {
                    "ExternalName" => s(o, "/spec/externalName"),
                    "LoadBalancer" => {
                        ext_ips.extend(ext);
                        if ext_ips.is_empty() {
                            "<pending>".into()
                        } else {
                            ext_ips.join(",")
                        }
                    }
                    _ => or_none(ext_ips.join(",")),
                };
                vec![
                    json!(s(o, "/metadata/name")),
                    json!(ty),
                    json!(or_none(s(o, "/spec/clusterIP"))),
                    json!(external),
                    json!(service_ports(o)),
                    json!(age(&s(o, "/metadata/creationTimestamp"))),
                    json!(map_selector(o.pointer("/spec/selector"))),
                ]
            },
        ),
        ("", "namespaces") => (cols![name, Col("Status", "string", 0), age_c], |o| {
            vec![
                json!(s(o, "/metadata/name")),
                json!(s(o, "/status/phase")),
                json!(age(&s(o, "/metadata/creationTimestamp"))),
            ]
        }),
        ("", "configmaps") => (cols![name, Col("Data", "string", 0), age_c], |o| {
            let n = o
                .get("data")
                .and_then(Value::as_object)
                .map_or(0, |m| m.len())
                + o.get("binaryData")
                    .and_then(Value::as_object)
                    .map_or(0, |m| m.len());
            vec![
                json!(s(o, "/metadata/name")),
                json!(n),
                json!(age(&s(o, "/metadata/creationTimestamp"))),
            ]
        }),
        ("", "secrets") => (
            cols![
                name,
                Col("Type", "string", 0),
                Col("Data", "string", 0),
                age_c
            ],
            |o| {
                let n = o
                    .get("data")
                    .and_then(Value::as_object)
                    .map_or(0, |m| m.len());
                vec![
                    json!(s(o, "/metadata/name")),
                    json!(s(o, "/type")),
                    json!(n),
                    json!(age(&s(o, "/metadata/creationTimestamp"))),
                ]
            },
        ),
        ("certificates.k8s.io", "certificatesigningrequests") => (
            cols![
                name,
                age_c,
                Col("SignerName", "string", 0),
                Col("Requestor", "string", 0),
                Col("RequestedDuration", "string", 0),
                Col("Condition", "string", 0)
            ],
            |o| {
                let conds: Vec<String> = o
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["type"].as_str().map(str::to_string))
                    .chain(
                        o.pointer("/status/certificate")
                            .filter(|c| !c.is_null())
                            .map(|_| "Issued".to_string()),
                    )
                    .collect();
                let duration = o
                    .pointer("/spec/expirationSeconds")
                    .and_then(Value::as_i64)
                    .map_or("<none>".to_string(), timefmt::human_duration);
                vec![
                    json!(s(o, "/metadata/name")),
                    json!(age(&s(o, "/metadata/creationTimestamp"))),
                    json!(s(o, "/spec/signerName")),
                    json!(s(o, "/spec/username")),
                    json!(duration),
                    json!(if conds.is_empty() {
                        "Pending".to_string()
                    } else {
                        conds.join(",")
                    }),
                ]
            },
        ),
        ("", "serviceaccounts") => (cols![name, Col("Secrets", "string", 0), age_c], |o| {
            vec![
                json!(s(o, "/metadata/name")),
                json!(o
                    .get("secrets")
                    .and_then(Value::as_array)
                    .map_or(0, |a| a.len())),
                json!(age(&s(o, "/metadata/creationTimestamp"))),
            ]
        }),
        ("", "endpoints") => (cols![name, Col("Endpoints", "string", 0), age_c], |o| {
            let mut eps = Vec::new();
            for ss in o
                .get("subsets")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                for a in ss
                    .get("addresses")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    for p in ss
                        .get("ports")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        eps.push(format!("{}:{}", s(a, "/ip"), i(p, "/port")));
                    }
                }
            }
            let shown = if eps.len() > 3 {
                format!("{} + {} more...", eps[..3].join(","), eps.len() - 3)
            } else {
                or_none(eps.join(","))
            };
            vec![
                json!(s(o, "/metadata/name")),
                json!(shown),
                json!(age(&s(o, "/metadata/creationTimestamp"))),
            ]
        }),
        ("", "nodes") => (
            cols![
                name,
                Col("Status", "string", 0),
                Col("Roles", "string", 0),
                age_c,
                Col("Version", "string", 0),
                Col("Internal-IP", "string", 1),
                Col("External-IP", "string", 1),
                Col("OS-Image", "string", 1),
                Col("Kernel-Version", "string", 1),
                Col("Container-Runtime", "string", 1)
            ],
            |o| {
                let ready = o
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .find(|c| s(c, "/type") == "Ready")
                    .map(|c| {
                        if s(c, "/status") == "True" {
                            "Ready"
                        } else {
                            "NotReady"
                        }
                    })
                    .unwrap_or("Unknown");
                let mut status = ready.to_string();
                if o.pointer("/spec/unschedulable") == Some(&json!(true)) {
                    status.push_str(",SchedulingDisabled");
                }
                let roles: Vec<String> = o
                    .pointer("/metadata/labels")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                    .filter_map(|(k, _)| {
                        k.strip_prefix("node-role.kubernetes.io/").map(String::from)
                    })
                    .collect();
                let addr = |t: &str| {
                    o.pointer("/status/addresses")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .find(|a| s(a, "/type") == t)
                        .map(|a| s(a, "/address"))
                        .unwrap_or_else(|| "<none>".into())
                };
                vec![
                    json!(s(o, "/metadata/name")),
                    json!(status),
                    json!(or_none(roles.join(","))),
                    json!(age(&s(o, "/metadata/creationTimestamp"))),
                    json!(s(o, "/status/nodeInfo/kubeletVersion")),
                    json!(addr("InternalIP")),
                    json!(addr("ExternalIP")),
                    json!(s(o, "/status/nodeInfo/osImage")),
                    json!(s(o, "/status/nodeInfo/kernelVersion")),
                    json!(s(o, "/status/nodeInfo/containerRuntimeVersion")),
                ]
            },
        ),
        ("", "events") => (
            cols![
                Col("Last Seen", "string", 0),
                Col("Type", "string", 0),
                Col("Reason", "string", 0),
                Col("Object", "string", 0),
                Col("Message", "string", 0)
            ],
            |o| {
                let last = [
                    s(o, "/lastTimestamp"),
                    s(o, "/eventTime"),
                    s(o, "/metadata/creationTimestamp"),
                ]
                .into_iter()
                .find(|t| !t.is_empty())
                .unwrap_or_default();
                vec![
                    json!(age(&last)),
                    json!(s(o, "/type")),
                    json!(s(o, "/reason")),
                    json!(format!(
                        "{}/{}",
                        s(o, "/involvedObject/kind").to_lowercase(),
                        s(o, "/involvedObject/name")
                    )),
                    json!(s(o, "/message")),
                ]
            },
        ),
        ("batch", "jobs") => (
            cols![
                name,
                Col("Status", "string", 0),
                Col("Completions", "string", 0),
                Col("Duration", "string", 0),
                age_c,
                Col("Containers", "string", 1),
                Col("Images", "string", 1),
                Col("Selector", "string", 1)
            ],
            |o| {
                let (c, im) = containers_images(o, "/spec/template/spec");
                let conds = o
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let has = |t: &str| {
                    conds
                        .iter()
                        .any(|c| s(c, "/type") == t && s(c, "/status") == "True")
                };
                let status = if has("Complete") {
                    "Complete"
                } else if has("Failed") {
                    "Failed"
                } else if has("Suspended") {
                    "Suspended"
                } else if has("FailureTarget") {
                    "FailureTarget"
                } else {
                    "Running"
                };
                let completions = if o.pointer("/spec/completions").is_some() {
                    format!(
                        "{}/{}",
                        i(o, "/status/succeeded"),
                        i(o, "/spec/completions")
                    )
                } else {
                    format!(
                        "{}/1 of {}",
                        i(o, "/status/succeeded"),
                        i(o, "/spec/parallelism").max(1)
                    )
                };
                let duration = match (
                    timefmt::parse_rfc3339(&s(o, "/status/startTime")),
                    timefmt::parse_rfc3339(&s(o, "/status/completionTime")),
                ) {
                    (Some(a), Some(b)) => timefmt_human(((b - a) / 1_000_000_000) as i64),
                    (Some(a), None) => {
                        timefmt_human(((timefmt::now_nanos() - a) / 1_000_000_000) as i64)
                    }
                    _ => String::new(),
                };
                vec![
                    json!(s(o, "/metadata/name")),
                    json!(status),
                    json!(completions),
                    json!(duration),
                    json!(age(&s(o, "/metadata/creationTimestamp"))),
                    json!(c),
                    json!(im),
                    json!(selector_string(o.pointer("/spec/selector"))),
                ]
            },
        ),
        ("batch", "cronjobs") => (
            cols![
                name,
                Col("Schedule", "string", 0),
                Col("Timezone", "string", 0),
                Col("Suspend", "boolean", 0),
                Col("Active", "integer", 0),
                Col("Last Schedule", "string", 0),
                age_c,
                Col("Containers", "string", 1),
                Col("Images", "string", 1),
                Col("Selector", "string", 1)
            ],
            |o| {
                let (c, im) = containers_images(o, "/spec/jobTemplate/spec/template/spec");
                let last = s(o, "/status/lastScheduleTime");
                vec![
                    json!(s(o, "/metadata/name")),
                    json!(s(o, "/spec/schedule")),
                    json!(or_none(s(o, "/spec/timeZone"))),
                    json!(o.pointer("/spec/suspend") == Some(&json!(true))),
                    json!(o
                        .pointer("/status/active")
                        .and_then(Value::as_array)
                        .map_or(0, |a| a.len())),
                    json!(if last.is_empty() {
                        "<none>".into()
                    } else {
                        age(&last)
                    }),
                    json!(age(&s(o, "/metadata/creationTimestamp"))),
                    json!(c),
                    json!(im),
                    json!(selector_string(
                        o.pointer("/spec/jobTemplate/spec/selector")
                    )),
                ]
            },
        ),
        ("coordination.k8s.io", "leases") => {
            (cols![name, Col("Holder", "string", 0), age_c], |o| {
                vec![
                    json!(s(o, "/metadata/name")),
                    json!(s(o, "/spec/holderIdentity")),
                    json!(age(&s(o, "/metadata/creationTimestamp"))),
                ]
            })
        }
        ("autoscaling", "horizontalpodautoscalers") => (
            cols![
                name,
                Col("Reference", "string", 0),
                Col("Targets", "string", 0),
                Col("MinPods", "string", 0),
                Col("MaxPods", "string", 0),
                Col("Replicas", "string", 0),
                age_c
            ],
            |o| {
                let reference = format!(
                    "{}/{}",
                    s(o, "/spec/scaleTargetRef/kind"),
                    s(o, "/spec/scaleTargetRef/name")
                );
                let mut targets = Vec::new();
                if let Some(u) = o.pointer("/spec/targetCPUUtilizationPercentage") {
                    let cur = o
                        .pointer("/status/currentCPUUtilizationPercentage")
                        .map_or("<unknown>".to_string(), |c| format!("{c}%"));
                    targets.push(format!("cpu: {cur}/{u}%"));
                }
                // As kubectl's printer: each metric's current value (from the status entry
                // at the same index) over its target.
                let statuses = o
                    .pointer("/status/currentMetrics")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for (i, m) in o
                    .pointer("/spec/metrics")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    let st = statuses.get(i);
                    let cur =
                        |path: &str, pct: bool| {
                            st.and_then(|c| c.pointer(path))
                                .map_or("<unknown>".to_string(), |v| match v.as_str() {
                                    Some(s) => s.to_string(),
                                    None if pct => format!("{v}%"),
                                    None => v.to_string(),
                                })
                        };
                    let source = match s(m, "/type").as_str() {
                        "Resource" => "resource",
                        "ContainerResource" => "containerResource",
                        "Pods" => "pods",
                        "Object" => "object",
                        "External" => "external",
                        _ => continue,
                    };
                    let target = format!("/{source}/target");
                    let current = format!("/{source}/current");
                    let prefix = match source {
                        "resource" | "containerResource" => {
                            format!("{}: ", s(m, &format!("/{source}/name")))
                        }
                        _ => String::new(),
                    };
                    let text = if let Some(u) = m.pointer(&format!("{target}/averageUtilization")) {
                        format!(
                            "{}/{u}%",
                            cur(&format!("{current}/averageUtilization"), true)
                        )
                    } else if let Some(v) = m.pointer(&format!("{target}/averageValue")) {
                        format!(
                            "{}/{}",
                            cur(&format!("{current}/averageValue"), false),
                            v.as_str().unwrap_or_default()
                        )
                    } else if let Some(v) = m.pointer(&format!("{target}/value")) {
                        format!(
                            "{}/{}",
                            cur(&format!("{current}/value"), false),
                            v.as_str().unwrap_or_default()
                        )
                    } else {
                        format!(
                            "{}/<auto>",
                            cur(&format!("{current}/averageUtilization"), true)
                        )
                    };
                    targets.push(format!("{prefix}{text}"));
                }
                let min = o
                    .pointer("/spec/minReplicas")
                    .map_or("<unset>".to_string(), |v| v.to_string());
                vec![
                    json!(s(o, "/metadata/name")),
                    json!(reference),
                    json!(or_none(targets.join(", "))),
                    json!(min),
                    json!(i(o, "/spec/maxReplicas")),
                    json!(i(o, "/status/currentReplicas")),
                    json!(age(&s(o, "/metadata/creationTimestamp"))),
                ]
            },
        ),
        ("", "persistentvolumeclaims") => (
            cols![
                name,
                Col("Status", "string", 0),
                Col("Volume", "string", 0),
                Col("Capacity", "string", 0),
                Col("Access Modes", "string", 0),
                Col("StorageClass", "string", 0),
                Col("VolumeAttributesClass", "string", 0),
                age_c,
                Col("VolumeMode", "string", 1)
            ],
            |o| {
                let modes: Vec<String> = o
                    .pointer("/spec/accessModes")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|m| {
                        match m.as_str().unwrap_or_default() {
                            "ReadWriteOnce" => "RWO",
                            "ReadOnlyMany" => "ROX",
                            "ReadWriteMany" => "RWX",
                            "ReadWriteOncePod" => "RWOP",
                            _ => "",
                        }
                        .to_string()
                    })
                    .collect();
                vec![
                    json!(s(o, "/metadata/name")),
                    json!(s(o, "/status/phase")),
                    json!(s(o, "/spec/volumeName")),
                    json!(s(o, "/status/capacity/storage")),
                    json!(modes.join(",")),
                    json!(s(o, "/spec/storageClassName")),
                    json!(or_unset(s(o, "/spec/volumeAttributesClassName"))),
                    json!(age(&s(o, "/metadata/creationTimestamp"))),
                    json!(s(o, "/spec/volumeMode")),
                ]
            },
        ),
        ("", "persistentvolumes") => (
            cols![
                name,
                Col("Capacity", "string", 0),
                Col("Access Modes", "string", 0),
                Col("Reclaim Policy", "string", 0),
                Col("Status", "string", 0),
                Col("Claim", "string", 0),
                Col("StorageClass", "string", 0),
                Col("VolumeAttributesClass", "string", 0),
                Col("Reason", "string", 0),
                age_c,
                Col("VolumeMode", "string", 1)
            ],
            |o| {
                let modes: Vec<String> = o
                    .pointer("/spec/accessModes")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|m| {
                        match m.as_str().unwrap_or_default() {
                            "ReadWriteOnce" => "RWO",
                            "ReadOnlyMany" => "ROX",
                            "ReadWriteMany" => "RWX",
                            "ReadWriteOncePod" => "RWOP",
                            _ => "",
                        }
                        .to_string()
                    })
                    .collect();
                let claim = if o.pointer("/spec/claimRef").is_some() {
                    format!(
                        "{}/{}",
                        s(o, "/spec/claimRef/namespace"),
                        s(o, "/spec/claimRef/name")
                    )
                } else {
                    String::new()
                };
                vec![
                    json!(s(o, "/metadata/name")),
                    json!(s(o, "/spec/capacity/storage")),
                    json!(modes.join(",")),
                    json!(s(o, "/spec/persistentVolumeReclaimPolicy")),
                    json!(s(o, "/status/phase")),
                    json!(claim),
                    json!(s(o, "/spec/storageClassName")),
                    json!(or_unset(s(o, "/spec/volumeAttributesClassName"))),
                    json!(s(o, "/status/reason")),
                    json!(age(&s(o, "/metadata/creationTimestamp"))),
                    json!(s(o, "/spec/volumeMode")),
                ]
            },
        ),
        ("policy", "poddisruptionbudgets") => (
            cols![
                name,
                Col("Min Available", "string", 0),
                Col("Max Unavailable", "string", 0),
                Col("Allowed Disruptions", "integer", 0),
                age_c
            ],
            |o| {
                let na = |p: &str| {
                    let v = s(o, p);
                    if v.is_empty() {
                        "N/A".to_string()
                    } else {
                        v
                    }
                };
                vec![
                    json!(s(o, "/metadata/name")),
                    json!(na("/spec/minAvailable")),
                    json!(na("/spec/maxUnavailable")),
                    json!(i(o, "/status/disruptionsAllowed")),
                    json!(age(&s(o, "/metadata/creationTimestamp"))),
                ]
            },
        ),
        ("scheduling.k8s.io", "priorityclasses") => (
            cols![
                name,
                Col("Value", "integer", 0),
                Col("Global-Default", "boolean", 0),
                age_c,
                Col("PreemptionPolicy", "string", 0)
            ],
            |o| {
                vec![
                    json!(s(o, "/metadata/name")),
                    json!(i(o, "/value")),
                    json!(o.get("globalDefault") == Some(&json!(true))),
                    json!(age(&s(o, "/metadata/creationTimestamp"))),
                    json!(s(o, "/preemptionPolicy")),
                ]
            },
        ),
        ("storage.k8s.io", "storageclasses") => (
            cols![
                name,
                Col("Provisioner", "string", 0),
                Col("ReclaimPolicy", "string", 0),
                Col("VolumeBindingMode", "string", 0),
                Col("AllowVolumeExpansion", "boolean", 0),
                age_c
            ],
            |o| {
                let mut name = s(o, "/metadata/name");
                if o.pointer("/metadata/annotations/storageclass.kubernetes.io~1is-default-class")
                    == Some(&json!("true"))
                {
                    name.push_str(" (default)");
                }
                vec![
                    json!(name),
                    json!(s(o, "/provisioner")),
                    json!(s(o, "/reclaimPolicy")),
                    json!(s(o, "/volumeBindingMode")),
                    json!(o.get("allowVolumeExpansion") == Some(&json!(true))),
                    json!(age(&s(o, "/metadata/creationTimestamp"))),
                ]
            },
        ),
        ("apps", "controllerrevisions") => (
            cols![
                name,
                Col("Controller", "string", 0),
                Col("Revision", "integer", 0),
                age_c
            ],
            |o| {
                let owner = o
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .find(|r| r.get("controller") == Some(&json!(true)))
                    .map(|r| {
                        format!(
                            "{}.{}/{}",
                            s(r, "/kind").to_lowercase(),
                            s(r, "/apiVersion").split('/').next().unwrap_or_default(),
                            s(r, "/name")
                        )
                    })
                    .unwrap_or_else(|| "<none>".into());
                vec![
                    json!(s(o, "/metadata/name")),
                    json!(owner),
                    json!(i(o, "/revision")),
                    json!(age(&s(o, "/metadata/creationTimestamp"))),
                ]
            },
        ),
        ("discovery.k8s.io", "endpointslices") => (
            cols![
                name,
                Col("AddressType", "string", 0),
                Col("Ports", "string", 0),
                Col("Endpoints", "string", 0),
                age_c
            ],
            |o| {
                let ports: Vec<String> = o
                    .get("ports")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|p| i(p, "/port").to_string())
                    .collect();
                let eps: Vec<String> = o
                    .get("endpoints")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .flat_map(|e| {
                        e.get("addresses")
                            .and_then(Value::as_array)
                            .cloned()
                            .unwrap_or_default()
                    })
                    .filter_map(|a| a.as_str().map(String::from))
                    .collect();
                let shown = if eps.len() > 3 {
                    format!("{} + {} more...", eps[..3].join(","), eps.len() - 3)
                } else {
                    or_none(eps.join(","))
                };
                vec![
                    json!(s(o, "/metadata/name")),
                    json!(s(o, "/addressType")),
                    json!(or_none(ports.join(","))),
                    json!(shown),
                    json!(age(&s(o, "/metadata/creationTimestamp"))),
                ]
            },
        ),
        ("rbac.authorization.k8s.io", "roles")
        | ("rbac.authorization.k8s.io", "clusterroles")
        | ("", "limitranges")
        | ("apiextensions.k8s.io", "customresourcedefinitions") => {
            (cols![name, Col("Created At", "date", 0)], |o| {
                vec![
                    json!(s(o, "/metadata/name")),
                    json!(s(o, "/metadata/creationTimestamp")),
                ]
            })
        }
        ("rbac.authorization.k8s.io", "rolebindings")
        | ("rbac.authorization.k8s.io", "clusterrolebindings") => (
            cols![
                name,
                Col("Role", "string", 0),
                age_c,
                Col("Users", "string", 1),
                Col("Groups", "string", 1),
                Col("ServiceAccounts", "string", 1)
            ],
            |o| {
                let subj = |k: &str| {
                    let v: Vec<String> = o
                        .get("subjects")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter(|x| s(x, "/kind") == k)
                        .map(|x| {
                            if k == "ServiceAccount" {
                                format!("{}/{}", s(x, "/namespace"), s(x, "/name"))
                            } else {
                                s(x, "/name")
                            }
                        })
                        .collect();
                    v.join(", ")
                };
                vec![
                    json!(s(o, "/metadata/name")),
                    json!(format!(
                        "{}/{}",
                        s(o, "/roleRef/kind"),
                        s(o, "/roleRef/name")
                    )),
                    json!(age(&s(o, "/metadata/creationTimestamp"))),
                    json!(subj("User")),
                    json!(subj("Group")),
                    json!(subj("ServiceAccount")),
                ]
            },
        ),
        ("", "resourcequotas") => (
            cols![
                name,
                age_c,
                Col("Request", "string", 0),
                Col("Limit", "string", 0)
            ],
            |o| {
                let mut req = Vec::new();
                let mut lim = Vec::new();
                for (k, v) in o
                    .pointer("/status/hard")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                {
                    let used = o
                        .pointer("/status/used")
                        .and_then(|u| u.get(k))
                        .and_then(Value::as_str)
                        .unwrap_or("0");
                    let e = format!("{k}: {used}/{}", v.as_str().unwrap_or_default());
                    if k.starts_with("limits.") {
                        lim.push(e)
                    } else {
                        req.push(e)
                    }
                }
                vec![
                    json!(s(o, "/metadata/name")),
                    json!(age(&s(o, "/metadata/creationTimestamp"))),
                    json!(req.join(", ")),
                    json!(lim.join(", ")),
                ]
            },
        ),
        ("networking.k8s.io", "ingresses") => (
            cols![
                name,
                Col("Class", "string", 0),
                Col("Hosts", "string", 0),
                Col("Address", "string", 0),
                Col("Ports", "string", 0),
                age_c
            ],
            |o| {
                let hosts: Vec<String> = o
                    .pointer("/spec/rules")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|r| {
                        let h = s(r, "/host");
                        if h.is_empty() {
                            "*".into()
                        } else {
                            h
                        }
                    })
                    .collect();
                let ports = if o.pointer("/spec/tls").is_some() {
                    "80, 443"
                } else {
                    "80"
                };
                let addr: Vec<String> = o
                    .pointer("/status/loadBalancer/ingress")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|i| s(i, "/ip"))
                    .collect();
                vec![
                    json!(s(o, "/metadata/name")),
                    json!(or_none(s(o, "/spec/ingressClassName"))),
                    json!(if hosts.is_empty() {
                        "*".into()
                    } else {
                        hosts.join(",")
                    }),
                    json!(addr.join(",")),
                    json!(ports),
                    json!(age(&s(o, "/metadata/creationTimestamp"))),
                ]
            },
        ),
        ("networking.k8s.io", "ingressclasses") => (
            cols![
                name,
                Col("Controller", "string", 0),
                Col("Parameters", "string", 0),
                age_c
            ],
            |o| {
                vec![
                    json!(s(o, "/metadata/name")),
                    json!(s(o, "/spec/controller")),
                    json!(or_none(s(o, "/spec/parameters/name"))),
                    json!(age(&s(o, "/metadata/creationTimestamp"))),
                ]
            },
        ),
        ("networking.k8s.io", "networkpolicies") => {
            (cols![name, Col("Pod-Selector", "string", 0), age_c], |o| {
                vec![
                    json!(s(o, "/metadata/name")),
                    json!(or_none(
                        crate::selector::LabelSelector::from_object(
                            o.pointer("/spec/podSelector").unwrap_or(&Value::Null)
                        )
                        .map(|l| l.to_string_form())
                        .unwrap_or_default()
                    )),
                    json!(age(&s(o, "/metadata/creationTimestamp"))),
                ]
            })
        }
        _ => (cols![name, Col("Created At", "date", 0)], |o| {
            vec![
                json!(s(o, "/metadata/name")),
                json!(s(o, "/metadata/creationTimestamp")),
            ]
        }),
    }
}

fn or_unset(s: String) -> String {
    if s.is_empty() {
        "<unset>".into()
    } else {
        s
    }
}

fn describe(name: &str) -> String {
    match name {
        "Name" => "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names".into(),
        "Age" => "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata".into(),
        _ => String::new(),
    }
}

/// The column definitions of `kind`'s Table.
pub fn column_definitions(kind: &Kind) -> Vec<Value> {
    let def = |name: &str, ty: &str, format: &str, description: &str, priority: i32| json!({"name": name, "type": ty, "format": format, "description": description, "priority": priority});
    if kind.crd_schema.is_some() {
        let mut defs = vec![def("Name", "string", "name", &describe("Name"), 0)];
        for c in &kind.printer_columns {
            defs.push(def(
                &c.name,
                &c.type_,
                &c.format,
                &c.description,
                c.priority,
            ));
        }
        if kind.printer_columns.is_empty() {
            defs.push(def("Age", "date", "", &describe("Age"), 0));
        }
        defs
    } else {
        let (cols, _) = columns(kind);
        cols.iter()
            .map(|c| {
                def(
                    c.0,
                    c.1,
                    if c.0 == "Name" { "name" } else { "" },
                    &describe(c.0),
                    c.2,
                )
            })
            .collect()
    }
}

/// One object's row: its cells and, per `include` (`includeObject`), the object or its
/// metadata.
pub fn row(kind: &Kind, o: &Value, include: Option<&str>) -> Value {
    let cells = if kind.crd_schema.is_some() {
        let mut r = vec![json!(s(o, "/metadata/name"))];
        for c in &kind.printer_columns {
            let v = json_path(o, &c.json_path).cloned().unwrap_or(Value::Null);
            let v = if c.type_ == "date" {
                v.as_str().map(|t| json!(age(t))).unwrap_or(Value::Null)
            } else {
                v
            };
            r.push(v);
        }
        if kind.printer_columns.is_empty() {
            r.push(json!(age(&s(o, "/metadata/creationTimestamp"))));
        }
        r
    } else {
        (columns(kind).1)(o)
    };
    let mut r = json!({"cells": cells});
    match include.unwrap_or("Metadata") {
        "None" => {}
        "Object" => r["object"] = o.clone(),
        _ => r["object"] = crate::api::partial(o),
    }
    r
}

/// A Table of `objects` of `kind`; `include` is the `includeObject` parameter.
pub fn table(
    kind: &Kind,
    objects: &[Value],
    include: Option<&str>,
    list_meta: Option<Value>,
) -> Value {
    let rows: Vec<Value> = objects.iter().map(|o| row(kind, o, include)).collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta.unwrap_or_else(|| json!({"resourceVersion": objects.first().and_then(|o| o.pointer("/metadata/resourceVersion")).cloned().unwrap_or(json!(""))})),
        "columnDefinitions": column_definitions(kind),
        "rows": rows,
    })
}
