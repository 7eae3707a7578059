//! `metrics.k8s.io/v1beta1`, served by the API server itself: what metrics-server adds to a
//! Kubernetes cluster. Every `--metric-resolution` the server scrapes each Node's kubelet
//! `/metrics/resource` (cumulative CPU time and the working set, each with the time the
//! node sampled it), keeps the last two readings of each container and node, and serves
//! CPU as the rate between them (`window` is the time between the readings) with the
//! memory of the later one: NodeMetrics for `kubectl top node`, PodMetrics (per container)
//! for `kubectl top pod` and the HorizontalPodAutoscaler.
//!
//! As metrics-server does, a pod is listed once every container it runs has two readings,
//! and a container whose start time changed (it restarted) starts its series again.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde_json::{json, Value};

use crate::api::Api;
use crate::kinds::{Kind, Typed};
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;

pub const GROUP: &str = "metrics.k8s.io";
pub const VERSION: &str = "v1beta1";

/// A node's usage (`metrics.k8s.io/v1beta1` NodeMetrics).
#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[schemars(rename = "io.k8s.metrics.pkg.apis.metrics.v1beta1.NodeMetrics")]
#[serde(rename_all = "camelCase")]
pub struct NodeMetrics {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub metadata: ObjectMeta,
    pub timestamp: Time,
    pub window: String,
    pub usage: BTreeMap<String, Quantity>,
}

/// A pod's usage, per container (`metrics.k8s.io/v1beta1` PodMetrics).
#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[schemars(rename = "io.k8s.metrics.pkg.apis.metrics.v1beta1.PodMetrics")]
#[serde(rename_all = "camelCase")]
pub struct PodMetrics {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub metadata: ObjectMeta,
    pub timestamp: Time,
    pub window: String,
    pub containers: Vec<ContainerMetrics>,
}

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[schemars(rename = "io.k8s.metrics.pkg.apis.metrics.v1beta1.ContainerMetrics")]
pub struct ContainerMetrics {
    pub name: String,
    pub usage: BTreeMap<String, Quantity>,
}

/// The two kinds, read-only, as discovery lists them.
pub fn kinds() -> Vec<Kind> {
    let kind = |kind: &str, plural: &str, namespaced: bool, codec| Kind {
        group: GROUP.into(),
        version: VERSION.into(),
        kind: kind.into(),
        list_kind: format!("{kind}List"),
        plural: plural.into(),
        singular: String::new(),
        namespaced,
        short_names: Vec::new(),
        categories: Vec::new(),
        status: false,
        scale: None,
        codec,
        storage_group: GROUP.into(),
        storage_plural: plural.into(),
        storage_version: VERSION.into(),
        printer_columns: Vec::new(),
        crd_schema: None,
        node_subresources: Vec::new(),
        read_only: true,
        review: false,
    };
    vec![
        kind("NodeMetrics", "nodes", false, Typed::<NodeMetrics>::codec()),
        kind("PodMetrics", "pods", true, Typed::<PodMetrics>::codec()),
    ]
}

/// One reading of a cumulative CPU counter.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Point {
    /// Cumulative CPU, seconds.
    cpu: f64,
    /// When the node sampled it, ms since the epoch.
    at_ms: i64,
}

#[derive(Clone, Copy, Debug)]
struct Series {
    prev: Option<Point>,
    last: Point,
    memory: f64,
    /// The container's start time (a change restarts the series).
    start: f64,
}

impl Series {
    /// The next series given a new reading (a repeated reading changes nothing).
    fn next(old: Option<&Series>, p: Point, memory: f64, start: f64) -> Series {
        match old {
            Some(o) if o.start == start && p.at_ms == o.last.at_ms => *o,
            Some(o) if o.start == start && p.at_ms > o.last.at_ms && p.cpu >= o.last.cpu => {
                Series {
                    prev: Some(o.last),
                    last: p,
                    memory,
                    start,
                }
            }
            _ => Series {
                prev: None,
                last: p,
                memory,
                start,
            },
        }
    }
    /// (nanocores, window ms) once there are two readings.
    fn rate(&self) -> Option<(u64, i64)> {
        let p = self.prev?;
        let dt = self.last.at_ms - p.at_ms;
        (dt > 0).then(|| {
            (
                ((self.last.cpu - p.cpu) / (dt as f64 / 1e3) * 1e9).round() as u64,
                dt,
            )
        })
    }
}

#[derive(Default)]
struct NodeEntry {
    node: Option<Series>,
    /// By (namespace, pod), then container.
    pods: HashMap<(String, String), BTreeMap<String, Series>>,
}

/// The metrics of every node, as last scraped.
pub struct ResourceMetrics {
    nodes: Mutex<HashMap<String, NodeEntry>>,
    pub resolution: Duration,
}

/// One sample line of Prometheus' text format.
#[derive(Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
    pub timestamp_ms: Option<i64>,
}

impl Sample {
    fn label(&self, k: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses Prometheus' text exposition format (comments skipped).
pub fn parse_prometheus(text: &str) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| format!("line {}: {why}: {line:?}", i + 1);
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .ok_or_else(|| bad("no value"))?;
        let name = line[..name_end].to_string();
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(r) = rest.strip_prefix('{') {
            let mut chars = r.char_indices().peekable();
            let end;
            loop {
                // Skip separators.
                while let Some((_, c)) = chars.peek() {
                    if *c == ',' || c.is_whitespace() {
                        chars.next();
                    } else {
                        break;
                    }
                }
                let Some((start, c)) = chars.next() else {
                    return Err(bad("unterminated labels"));
                };
                if c == '}' {
                    end = start + 1;
                    break;
                }
                let mut key = String::from(c);
                loop {
                    match chars.next() {
                        Some((_, '=')) => break,
                        Some((_, c)) => key.push(c),
                        None => return Err(bad("a label without a value")),
                    }
                }
                if chars.next().map(|(_, c)| c) != Some('"') {
                    return Err(bad("a label value not in quotes"));
                }
                let mut val = String::new();
                loop {
                    match chars.next() {
                        Some((_, '"')) => break,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => val.push('\n'),
                            Some((_, c)) => val.push(c),
                            None => return Err(bad("unterminated label value")),
                        },
                        Some((_, c)) => val.push(c),
                        None => return Err(bad("unterminated label value")),
                    }
                }
                labels.push((key.trim().to_string(), val));
            }
            rest = &r[end..];
        }
        let mut fields = rest.split_whitespace();
        let value = match fields.next().ok_or_else(|| bad("no value"))? {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse::<f64>()
                .map_err(|_| bad("the value is not a number"))?,
        };
        let timestamp_ms = fields
            .next()
            .map(|t| {
                t.parse::<i64>()
                    .map_err(|_| bad("the timestamp is not a number"))
            })
            .transpose()?;
        out.push(Sample {
            name,
            labels,
            value,
            timestamp_ms,
        });
    }
    Ok(out)
}

/// CPU in nanocores as Kubernetes writes the quantity (`250m`, `12345n`, `2`).
pub fn cpu_quantity(nanocores: u64) -> String {
    if nanocores == 0 {
        "0".into()
    } else if nanocores.is_multiple_of(1_000_000_000) {
        (nanocores / 1_000_000_000).to_string()
    } else if nanocores.is_multiple_of(1_000_000) {
        format!("{}m", nanocores / 1_000_000)
    } else if nanocores.is_multiple_of(1_000) {
        format!("{}u", nanocores / 1_000)
    } else {
        format!("{nanocores}n")
    }
}

/// Bytes as a binary-SI quantity (`1536Ki`, `12Mi`, or plain bytes).
pub fn memory_quantity(bytes: u64) -> String {
    if bytes == 0 {
        return "0".into();
    }
    let mut v = bytes;
    for suffix in ["", "Ki", "Mi", "Gi", "Ti", "Pi"] {
        if !v.is_multiple_of(1024) || suffix == "Pi" {
            return format!("{v}{suffix}");
        }
        v /= 1024;
    }
    unreachable!("the loop returns at Pi")
}

/// A duration as Go's `time.Duration` prints it (`15s`, `10.012s`, `1m0.5s`).
pub fn go_duration(ms: i64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, m, s, frac) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    out.push_str(&s.to_string());
    if frac > 0 {
        out.push_str(format!(".{frac:03}").trim_end_matches('0'));
    }
    out.push('s');
    out
}

fn time_of_ms(ms: i64) -> String {
    crate::time_secs(ms.div_euclid(1000))
}

impl ResourceMetrics {
    pub fn new(resolution: Duration) -> ResourceMetrics {
        ResourceMetrics {
            nodes: Mutex::new(HashMap::new()),
            resolution,
        }
    }

    /// Takes in one scrape of a node's `/metrics/resource`.
    pub fn ingest(&self, node: &str, samples: &[Sample]) {
        let mut nodes = self.nodes.lock().unwrap();
        let old = nodes.remove(node).unwrap_or_default();
        let mut next = NodeEntry::default();
        let find = |name: &str, labels: &[(&str, &str)]| {
            samples
                .iter()
                .find(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(v)))
        };
        if let (Some(cpu), Some(mem)) = (
            find("node_cpu_usage_seconds_total", &[]),
            find("node_memory_working_set_bytes", &[]),
        ) {
            if let Some(at_ms) = cpu.timestamp_ms {
                next.node = Some(Series::next(
                    old.node.as_ref(),
                    Point {
                        cpu: cpu.value,
                        at_ms,
                    },
                    mem.value,
                    0.0,
                ));
            }
        }
        for s in samples
            .iter()
            .filter(|s| s.name == "container_cpu_usage_seconds_total")
        {
            let (Some(ns), Some(pod), Some(c), Some(at_ms)) = (
                s.label("namespace"),
                s.label("pod"),
                s.label("container"),
                s.timestamp_ms,
            ) else {
                continue;
            };
            let labels = [("namespace", ns), ("pod", pod), ("container", c)];
            let Some(mem) = find("container_memory_working_set_bytes", &labels) else {
                continue;
            };
            let start = find("container_start_time_seconds", &labels)
                .map(|s| s.value)
                .unwrap_or(0.0);
            let key = (ns.to_string(), pod.to_string());
            let prev = old.pods.get(&key).and_then(|p| p.get(c));
            let series = Series::next(
                prev,
                Point {
                    cpu: s.value,
                    at_ms,
                },
                mem.value,
                start,
            );
            next.pods
                .entry(key)
                .or_default()
                .insert(c.to_string(), series);
        }
        nodes.insert(node.to_string(), next);
    }

    /// Forgets nodes that are gone or could not be scraped.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.nodes.lock().unwrap().retain(|n, _| keep(n));
    }

    fn node_metrics(&self, name: &str, node: &Value) -> Option<Value> {
        let nodes = self.nodes.lock().unwrap();
        let s = nodes.get(name)?.node?;
        let (nano, window) = s.rate()?;
        Some(json!({
            "kind": "NodeMetrics",
            "apiVersion": format!("{GROUP}/{VERSION}"),
            "metadata": {
                "name": name,
                "creationTimestamp": crate::now(),
                "labels": node.pointer("/metadata/labels").cloned().unwrap_or(json!({})),
            },
            "timestamp": time_of_ms(s.last.at_ms),
            "window": go_duration(window),
            "usage": {"cpu": cpu_quantity(nano), "memory": memory_quantity(s.memory as u64)},
        }))
    }

    fn pod_metrics(&self, ns: &str, name: &str, pod: &Value) -> Option<Value> {
        let node = pod.pointer("/spec/nodeName").and_then(Value::as_str)?;
        let nodes = self.nodes.lock().unwrap();
        let containers = nodes
            .get(node)?
            .pods
            .get(&(ns.to_string(), name.to_string()))?;
        let mut out = Vec::new();
        let (mut at, mut window) = (0i64, 0i64);
        for (c, s) in containers {
            let (nano, w) = s.rate()?;
            at = at.max(s.last.at_ms);
            window = window.max(w);
            out.push(json!({"name": c, "usage": {
                "cpu": cpu_quantity(nano),
                "memory": memory_quantity(s.memory as u64),
            }}));
        }
        if out.is_empty() {
            return None;
        }
        Some(json!({
            "kind": "PodMetrics",
            "apiVersion": format!("{GROUP}/{VERSION}"),
            "metadata": {
                "name": name,
                "namespace": ns,
                "creationTimestamp": crate::now(),
                "labels": pod.pointer("/metadata/labels").cloned().unwrap_or(json!({})),
            },
            "timestamp": time_of_ms(at),
            "window": go_duration(window),
            "containers": out,
        }))
    }

    /// A get or list of NodeMetrics or PodMetrics: the objects, or None for a get of one
    /// with no metrics.
    pub fn read(
        &self,
        api: &Api,
        kind: &Kind,
        namespace: Option<&str>,
        name: Option<&str>,
        query: &[(String, String)],
    ) -> Result<Vec<Value>, ApiError> {
        let q = |k: &str| {
            query
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
                .unwrap_or_default()
        };
        let labels = LabelSelector::parse(q("labelSelector")).map_err(ApiError::bad_request)?;
        let fields =
            FieldSelector::parse(q("fieldSelector"), kind).map_err(ApiError::bad_request)?;
        let pods = kind.kind == "PodMetrics";
        let (group_prefix, list_prefix) = if pods {
            (
                "/registry/core/pods/",
                match namespace {
                    Some(ns) => format!("/registry/core/pods/{ns}/"),
                    None => "/registry/core/pods/".to_string(),
                },
            )
        } else {
            ("/registry/core/nodes/", "/registry/core/nodes/".to_string())
        };
        let objects: Vec<Value> = match name {
            Some(n) => {
                let key = format!("{list_prefix}{n}");
                api.cache
                    .get(&key)
                    .and_then(|raw| serde_json::from_slice(&raw).ok())
                    .into_iter()
                    .collect()
            }
            None => api
                .cache
                .list(&list_prefix)
                .1
                .into_iter()
                .filter(|e| e.0.starts_with(group_prefix))
                .filter_map(|e| serde_json::from_slice(&e.2).ok())
                .collect(),
        };
        let mut out = Vec::new();
        for o in objects {
            if !labels.matches(o.pointer("/metadata/labels").and_then(Value::as_object)) {
                continue;
            }
            let oname = o
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let m = if pods {
                let ns = o
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                self.pod_metrics(&ns, &oname, &o)
            } else {
                self.node_metrics(&oname, &o)
            };
            if let Some(m) = m.filter(|m| fields.matches(m)) {
                out.push(m);
            }
        }
        if let (Some(n), true) = (name, out.is_empty()) {
            return Err(ApiError::not_found(kind, n));
        }
        Ok(out)
    }
}

/// Scrapes every node every resolution, for as long as the process runs.
pub async fn run(api: Arc<Api>, nodes: Arc<crate::nodes::Nodes>, rm: Arc<ResourceMetrics>) {
    let mut tick = tokio::time::interval(rm.resolution);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timeout = rm.resolution.min(Duration::from_secs(10));
    // Nodes whose last scrape failed: a failure is reported when it starts.
    let mut failing = std::collections::HashSet::new();
    loop {
        tick.tick().await;
        let listed: Vec<(String, Value)> = api
            .cache
            .list("/registry/core/nodes/")
            .1
            .into_iter()
            .filter_map(|e| {
                let v: Value = serde_json::from_slice(&e.2).ok()?;
                Some((v.pointer("/metadata/name")?.as_str()?.to_string(), v))
            })
            .collect();
        let scrapes = listed.iter().map(|(name, node)| {
            let nodes = nodes.clone();
            async move {
                let (host, port) = crate::nodes::kubelet_address(node).map_err(|e| e.message)?;
                let body = tokio::time::timeout(
                    timeout,
                    nodes.kubelet_get(&host, port, "/metrics/resource"),
                )
                .await
                .map_err(|_| format!("scraping {host}:{port}: timed out"))??;
                let text = std::str::from_utf8(&body).map_err(|e| e.to_string())?;
                parse_prometheus(text).map(|s| (name.clone(), s))
            }
        });
        let results = futures::future::join_all(scrapes).await;
        let mut scraped = std::collections::HashSet::new();
        for ((name, _), r) in listed.iter().zip(results) {
            match r {
                Ok((name, samples)) => {
                    rm.ingest(&name, &samples);
                    failing.remove(&name);
                    scraped.insert(name);
                }
                Err(e) => {
                    if failing.insert(name.clone()) {
                        eprintln!("berth server: resource metrics of node {name}: {e}");
                    }
                }
            }
        }
        failing.retain(|n| listed.iter().any(|(l, _)| l == n));
        rm.retain(|n| scraped.contains(n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_parses() {
        let s = parse_prometheus(
            "# HELP x y\n# TYPE x counter\n\
             container_cpu_usage_seconds_total{container=\"a\",namespace=\"default\",pod=\"p\\\"q\"} 1.5 1700000000123\n\
             node_cpu_usage_seconds_total 12 1700000000000\nresource_scrape_error 0\n",
        )
        .unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].label("pod"), Some("p\"q"));
        assert_eq!((s[0].value, s[0].timestamp_ms), (1.5, Some(1700000000123)));
        assert_eq!(s[2].timestamp_ms, None);
        assert!(parse_prometheus("x{a=\"b} 1").is_err());
        assert!(parse_prometheus("x one").is_err());
    }

    #[test]
    fn quantities_as_kubernetes_writes_them() {
        assert_eq!(cpu_quantity(250_000_000), "250m");
        assert_eq!(cpu_quantity(2_000_000_000), "2");
        assert_eq!(cpu_quantity(12_345), "12345n");
        assert_eq!(cpu_quantity(0), "0");
        assert_eq!(memory_quantity(1536 * 1024), "1536Ki");
        assert_eq!(memory_quantity(12 << 20), "12Mi");
        assert_eq!(memory_quantity(1000), "1000");
        assert_eq!(go_duration(15_000), "15s");
        assert_eq!(go_duration(10_012), "10.012s");
        assert_eq!(go_duration(60_500), "1m0.5s");
        assert_eq!(go_duration(250), "250ms");
    }

    fn scrape(cpu: f64, at_ms: i64, start: f64) -> Vec<Sample> {
        let l = |n: &str| Sample {
            name: n.into(),
            labels: vec![
                ("container".into(), "app".into()),
                ("namespace".into(), "default".into()),
                ("pod".into(), "web".into()),
            ],
            value: 0.0,
            timestamp_ms: Some(at_ms),
        };
        vec![
            Sample {
                value: cpu,
                ..l("container_cpu_usage_seconds_total")
            },
            Sample {
                value: 4096.0,
                ..l("container_memory_working_set_bytes")
            },
            Sample {
                value: start,
                ..l("container_start_time_seconds")
            },
        ]
    }

    #[test]
    fn rates_between_scrapes_and_restarts_start_over() {
        let rm = ResourceMetrics::new(Duration::from_secs(10));
        let pod = json!({"spec": {"nodeName": "n1"}, "metadata": {"labels": {"app": "web"}}});
        rm.ingest("n1", &scrape(10.0, 1_000_000, 5.0));
        assert!(rm.pod_metrics("default", "web", &pod).is_none());
        // Half a core over 10 s.
        rm.ingest("n1", &scrape(15.0, 1_010_000, 5.0));
        let m = rm.pod_metrics("default", "web", &pod).unwrap();
        assert_eq!(m["containers"][0]["usage"]["cpu"], "500m");
        assert_eq!(m["containers"][0]["usage"]["memory"], "4Ki");
        assert_eq!(m["window"], "10s");
        // The same reading again changes nothing.
        rm.ingest("n1", &scrape(15.0, 1_010_000, 5.0));
        assert!(rm.pod_metrics("default", "web", &pod).is_some());
        // A restarted container has one reading again.
        rm.ingest("n1", &scrape(1.0, 1_020_000, 1_015.0));
        assert!(rm.pod_metrics("default", "web", &pod).is_none());
    }
}
