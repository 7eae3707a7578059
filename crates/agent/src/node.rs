//! The Node object and its heartbeat: registration with addresses, capacity and
//! allocatable, nodeInfo, conditions and images; the Lease in `kube-node-lease` renewed
//! every quarter of its duration (the kubelet's ratio); status reported when it changes
//! and at least every minute.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{json, Value};

use crate::Config;

pub struct NodeAgent {
    cfg: Config,
    ip: IpAddr,
    client: kube::Client,
    engine: Arc<engine::Engine>,
}

/// Kubernetes' time format (seconds).
pub fn k8s_time_of(nanos: i128) -> String {
    let secs = nanos.div_euclid(1_000_000_000) as i64;
    let s = timefmt::rfc3339(secs, 0);
    format!("{}Z", &s[..19])
}

pub fn k8s_now() -> String {
    k8s_time_of(timefmt::now_nanos())
}

fn meminfo(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    s.lines()
        .find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn os_image() -> String {
    let s = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".into())
}

fn disk(path: &std::path::Path) -> (u64, u64) {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return (0, 0);
    };
    // SAFETY: statvfs writes into the zeroed struct we own; the path is NUL-terminated.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return (0, 0);
        }
        let total = st.f_blocks as u64 * st.f_frsize as u64;
        let avail = st.f_bavail as u64 * st.f_frsize as u64;
        (total, avail)
    }
}

/// `key[=value]:Effect` as a Taint.
pub fn parse_taint(s: &str) -> Result<Value> {
    let (kv, effect) = s
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("--node-taint {s:?}: expected key[=value]:Effect"))?;
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        return Err(anyhow!(
            "--node-taint {s:?}: the effect must be NoSchedule, PreferNoSchedule or NoExecute"
        ));
    }
    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
    if k.is_empty() {
        return Err(anyhow!("--node-taint {s:?}: no key"));
    }
    Ok(json!({"key": k, "value": v, "effect": effect}))
}

impl NodeAgent {
    pub fn new(
        cfg: Config,
        ip: IpAddr,
        client: kube::Client,
        engine: Arc<engine::Engine>,
    ) -> NodeAgent {
        NodeAgent {
            cfg,
            ip,
            client,
            engine,
        }
    }

    fn capacity(&self) -> (Value, Value) {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        let mem = meminfo("MemTotal").unwrap_or(0);
        let (disk_total, _) = disk(&self.cfg.data_dir);
        let capacity = json!({
            "cpu": cpus.to_string(),
            "memory": format!("{}Ki", mem / 1024),
            "pods": self.cfg.max_pods.to_string(),
            "ephemeral-storage": format!("{}Ki", disk_total / 1024),
        });
        // The kubelet's hard eviction threshold for memory (100Mi) is kept back too.
        let alloc_cpu = (cpus * 1000).saturating_sub(self.cfg.reserved_cpu_milli);
        let alloc_mem = mem
            .saturating_sub(self.cfg.reserved_memory)
            .saturating_sub(100 << 20);
        let allocatable = json!({
            "cpu": format!("{alloc_cpu}m"),
            "memory": format!("{}Ki", alloc_mem / 1024),
            "pods": self.cfg.max_pods.to_string(),
            "ephemeral-storage": format!("{}Ki", disk_total * 9 / 10 / 1024),
        });
        (capacity, allocatable)
    }

    fn conditions(&self, now: &str, previous: Option<&Value>) -> Value {
        let avail = meminfo("MemAvailable").unwrap_or(u64::MAX);
        let (total, free) = disk(&self.cfg.data_dir);
        let disk_pressure = total > 0 && free < total / 10;
        let pids_max: u64 = read_trim("/proc/sys/kernel/pid_max")
            .parse()
            .unwrap_or(u64::MAX);
        let pids = std::fs::read_dir("/proc")
            .map(|d| {
                d.filter(|e| {
                    e.as_ref().is_ok_and(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .bytes()
                            .all(|b| b.is_ascii_digit())
                    })
                })
                .count() as u64
            })
            .unwrap_or(0);
        let pid_pressure = pids > pids_max / 10 * 9;
        let mem_pressure = avail < 100 << 20;
        let cond = |t: &str, status: bool, reason: &str, message: &str| {
            let s = if status { "True" } else { "False" };
            // lastTransitionTime moves only when the status changes.
            let since = previous
                .and_then(|p| p.as_array())
                .and_then(|a| a.iter().find(|c| c["type"] == t))
                .filter(|c| c["status"] == s)
                .and_then(|c| c["lastTransitionTime"].as_str())
                .unwrap_or(now)
                .to_string();
            json!({"type": t, "status": s, "reason": reason, "message": message,
                   "lastHeartbeatTime": now, "lastTransitionTime": since})
        };
        json!([
            if mem_pressure {
                cond(
                    "MemoryPressure",
                    true,
                    "KubeletHasInsufficientMemory",
                    "kubelet has insufficient memory available",
                )
            } else {
                cond(
                    "MemoryPressure",
                    false,
                    "KubeletHasSufficientMemory",
                    "kubelet has sufficient memory available",
                )
            },
            if disk_pressure {
                cond(
                    "DiskPressure",
                    true,
                    "KubeletHasDiskPressure",
                    "kubelet has disk pressure",
                )
            } else {
                cond(
                    "DiskPressure",
                    false,
                    "KubeletHasNoDiskPressure",
                    "kubelet has no disk pressure",
                )
            },
            if pid_pressure {
                cond(
                    "PIDPressure",
                    true,
                    "KubeletHasInsufficientPID",
                    "kubelet has insufficient PID available",
                )
            } else {
                cond(
                    "PIDPressure",
                    false,
                    "KubeletHasSufficientPID",
                    "kubelet has sufficient PID available",
                )
            },
            cond(
                "Ready",
                true,
                "KubeletReady",
                "kubelet is posting ready status"
            ),
        ])
    }

    fn images(&self) -> Value {
        let mut list: Vec<Value> = self
            .engine
            .images
            .list()
            .unwrap_or_default()
            .into_iter()
            .map(|s| {
                let mut names = s.names.clone();
                names.push(format!("{}", s.id));
                json!({"names": names, "sizeBytes": s.size})
            })
            .collect();
        list.sort_by_key(|v| std::cmp::Reverse(v["sizeBytes"].as_u64().unwrap_or(0)));
        list.truncate(50);
        Value::Array(list)
    }

    fn status(&self, previous: Option<&Value>) -> Value {
        let now = k8s_now();
        let (capacity, allocatable) = self.capacity();
        let uname = nix::sys::utsname::uname().ok();
        let kernel = uname
            .as_ref()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            a => a,
        };
        json!({
            "addresses": [
                {"type": "InternalIP", "address": self.ip.to_string()},
                {"type": "Hostname", "address": self.cfg.node_name},
            ],
            "capacity": capacity,
            "allocatable": allocatable,
            "conditions": self.conditions(&now, previous.and_then(|p| p.get("conditions"))),
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.cfg.kubelet_port}},
            "nodeInfo": {
                "machineID": read_trim("/etc/machine-id"),
                "systemUUID": read_trim("/sys/class/dmi/id/product_uuid"),
                "bootID": read_trim("/proc/sys/kernel/random/boot_id"),
                "kernelVersion": kernel,
                "osImage": os_image(),
                "containerRuntimeVersion": format!("{}://{}", crate::RUNTIME, env!("CARGO_PKG_VERSION")),
                "kubeletVersion": "v1.32.0",
                "kubeProxyVersion": "v1.32.0",
                "operatingSystem": "linux",
                "architecture": arch,
            },
            "images": self.images(),
        })
    }

    fn labels(&self) -> Value {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            a => a,
        };
        let mut l = serde_json::Map::new();
        for (k, v) in [
            ("kubernetes.io/hostname", self.cfg.node_name.as_str()),
            ("kubernetes.io/os", "linux"),
            ("kubernetes.io/arch", arch),
            ("beta.kubernetes.io/os", "linux"),
            ("beta.kubernetes.io/arch", arch),
        ] {
            l.insert(k.into(), json!(v));
        }
        if self.cfg.control_plane {
            l.insert(
                "node-role.kubernetes.io/control-plane".into(),
                json!("true"),
            );
        }
        for (k, v) in &self.cfg.labels {
            l.insert(k.clone(), json!(v));
        }
        Value::Object(l)
    }

    /// Creates the Node or takes over the existing one; returns its pod CIDR.
    pub async fn register(&self) -> Result<String> {
        let api: kube::Api<Node> = kube::Api::all(self.client.clone());
        let taints: Vec<Value> = self
            .cfg
            .taints
            .iter()
            .map(|t| parse_taint(t))
            .collect::<Result<_>>()?;
        let existing = api.get_opt(&self.cfg.node_name).await?;
        let node = match existing {
            None => {
                let mut spec = json!({});
                if !taints.is_empty() {
                    spec["taints"] = json!(taints);
                }
                let n: Node = serde_json::from_value(json!({
                    "apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": self.cfg.node_name, "labels": self.labels()},
                    "spec": spec,
                }))?;
                api.create(&PostParams::default(), &n)
                    .await
                    .with_context(|| format!("registering node {}", self.cfg.node_name))?
            }
            Some(_) => {
                let mut patch = json!({"metadata": {"labels": self.labels()}});
                if !taints.is_empty() {
                    patch["spec"] = json!({"taints": taints});
                }
                api.patch(
                    &self.cfg.node_name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?
            }
        };
        let prev = serde_json::to_value(&node.status).unwrap_or_default();
        api.patch_status(
            &self.cfg.node_name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": self.status(Some(&prev))})),
        )
        .await
        .context("reporting the node's status")?;
        let cidr = node
            .spec
            .as_ref()
            .and_then(|s| s.pod_cidr.clone())
            .filter(|c| !c.is_empty())
            .ok_or_else(|| anyhow!("the server gave node {} no pod CIDR", self.cfg.node_name))?;
        self.renew_lease().await?;
        Ok(cidr)
    }

    async fn renew_lease(&self) -> Result<()> {
        let api: kube::Api<Lease> = kube::Api::namespaced(self.client.clone(), "kube-node-lease");
        let now = {
            let n = timefmt::now_nanos();
            let s = timefmt::rfc3339((n / 1_000_000_000) as i64, (n % 1_000_000_000) as u32);
            format!("{}.{}Z", &s[..19], &s[20..26])
        };
        let secs = self.cfg.lease_duration.as_secs().max(1);
        let patch = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": self.cfg.node_name, "namespace": "kube-node-lease",
                "ownerReferences": []},
            "spec": {"holderIdentity": self.cfg.node_name, "leaseDurationSeconds": secs, "renewTime": now},
        });
        match api
            .patch(
                &self.cfg.node_name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => {
                let l: Lease = serde_json::from_value(patch)?;
                api.create(&PostParams::default(), &l).await?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Renews the Lease every quarter of its duration and reports the Node's status when
    /// it changed or a minute went by.
    pub async fn heartbeat(self: Arc<Self>) {
        let api: kube::Api<Node> = kube::Api::all(self.client.clone());
        let every = (self.cfg.lease_duration / 4).max(Duration::from_millis(250));
        let mut last_check = Instant::now();
        let mut last_sent = Instant::now();
        let mut last_status = Value::Null;
        let mut lease_failed = false;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let mut reconnected = false;
            match self.renew_lease().await {
                Ok(()) => {
                    reconnected = lease_failed;
                    lease_failed = false;
                }
                Err(e) => {
                    eprintln!("berth agent: renewing the node lease: {e}");
                    lease_failed = true;
                }
            }
            // Memory freed by pods that went back to the system, not kept in the heap.
            // SAFETY: malloc_trim only releases free heap memory.
            unsafe { libc::malloc_trim(0) };
            if last_check.elapsed() < Duration::from_secs(10)
                && !last_status.is_null()
                && !reconnected
            {
                continue;
            }
            let prev = api
                .get_opt(&self.cfg.node_name)
                .await
                .ok()
                .flatten()
                .and_then(|n| serde_json::to_value(n.status).ok());
            let st = self.status(prev.as_ref());
            let mut cmp = st.clone();
            strip_times(&mut cmp);
            // The node controller marks a node it stopped hearing from Unknown: what the API
            // holds is compared too, not only what was sent last.
            let stored = prev
                .as_ref()
                .map(|p| condition_states(p.get("conditions")))
                .unwrap_or_default();
            if cmp != last_status
                || stored != condition_states(st.get("conditions"))
                || last_sent.elapsed() >= Duration::from_secs(60)
            {
                match api
                    .patch_status(
                        &self.cfg.node_name,
                        &PatchParams::default(),
                        &Patch::Merge(&json!({"status": st})),
                    )
                    .await
                {
                    Ok(_) => {
                        last_status = cmp;
                        last_sent = Instant::now();
                    }
                    Err(e) => eprintln!("berth agent: reporting node status: {e}"),
                }
            }
            last_check = Instant::now();
        }
    }
}

/// Each condition's type and status.
fn condition_states(v: Option<&Value>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = v
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|c| {
                    let f = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                    (f("type"), f("status"))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn strip_times(v: &mut Value) {
    if let Some(a) = v.get_mut("conditions").and_then(Value::as_array_mut) {
        for c in a {
            if let Some(o) = c.as_object_mut() {
                o.remove("lastHeartbeatTime");
            }
        }
    }
}
