//! The HorizontalPodAutoscaler controller (kube-controller-manager's
//! `horizontalpodautoscaling`), following Kubernetes' `horizontal.go` and
//! `replica_calculator.go`: every sync period each HPA reads its target's scale
//! subresource, computes a replica count per metric from metrics.k8s.io (the pods' usage
//! against their requests, with the tolerance and the handling of unready and missing
//! pods Kubernetes has), takes the largest, stabilizes and rate-limits it (`behavior`, or
//! the legacy rules without it), writes the scale, and records conditions, status and
//! events.
//!
//! Pods, Object and External metrics are read from the custom and external metrics APIs;
//! a cluster that serves none of them (berth serves only the resource metrics API) gets
//! `ScalingActive=False` naming the missing API, as Kubernetes reports it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::autoscaling::v2::{
    HPAScalingRules, HorizontalPodAutoscaler, HorizontalPodAutoscalerCondition,
    HorizontalPodAutoscalerStatus, MetricSpec, MetricStatus,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::Api;
use serde_json::{json, Value};

const COMPONENT: &str = "horizontal-pod-autoscaler";
const SCALE_UP_LIMIT_FACTOR: f64 = 2.0;
const SCALE_UP_LIMIT_MINIMUM: f64 = 4.0;

/// kube-controller-manager's `--horizontal-pod-autoscaler-*` settings.
#[derive(Clone, Debug)]
pub struct Settings {
    pub sync_period: Duration,
    pub downscale_stabilization: Duration,
    pub tolerance: f64,
    pub cpu_initialization_period: Duration,
    pub initial_readiness_delay: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            sync_period: Duration::from_secs(15),
            downscale_stabilization: Duration::from_secs(300),
            tolerance: 0.1,
            cpu_initialization_period: Duration::from_secs(300),
            initial_readiness_delay: Duration::from_secs(30),
        }
    }
}

/// One pod's metric: the value in thousandths, when it was measured and over what window
/// (ns).
#[derive(Clone, Copy, Debug)]
pub struct PodMetric {
    pub value: i64,
    pub timestamp: i128,
    pub window: i128,
}

type Metrics = BTreeMap<String, PodMetric>;

fn within(tolerance: f64, ratio: f64) -> bool {
    (1.0 - ratio).abs() <= tolerance
}

fn time_of(s: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> Option<i128> {
    s.map(|t| t.0.as_duration().as_nanos())
}

/// The pods a metric counts, as `groupPods` sorts them.
#[derive(Debug, Default, PartialEq)]
pub struct Groups {
    pub ready: usize,
    pub unready: BTreeSet<String>,
    pub missing: BTreeSet<String>,
    pub ignored: BTreeSet<String>,
}

pub fn group_pods(
    pods: &[Pod],
    metrics: &Metrics,
    resource: &str,
    s: &Settings,
    now: i128,
) -> Groups {
    let mut g = Groups::default();
    for p in pods {
        let name = p.metadata.name.clone().unwrap_or_default();
        let status = p.status.as_ref();
        let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or_default();
        if p.metadata.deletion_timestamp.is_some() || phase == "Failed" || phase == "Succeeded" {
            g.ignored.insert(name);
            continue;
        }
        if phase == "Pending" {
            g.unready.insert(name);
            continue;
        }
        let Some(metric) = metrics.get(&name) else {
            g.missing.insert(name);
            continue;
        };
        if resource == "cpu" {
            let cond = status
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
            let start = time_of(status.and_then(|s| s.start_time.as_ref()));
            let unready = match (cond, start) {
                (Some(c), Some(start)) => {
                    let changed = time_of(c.last_transition_time.as_ref()).unwrap_or(0);
                    if start + s.cpu_initialization_period.as_nanos() as i128 > now {
                        c.status == "False" || metric.timestamp < changed + metric.window
                    } else {
                        c.status == "False"
                            && start + s.initial_readiness_delay.as_nanos() as i128 > changed
                    }
                }
                _ => true,
            };
            if unready {
                g.unready.insert(name);
                continue;
            }
        }
        g.ready += 1;
    }
    g
}

/// Each pod's request of `resource` (of `container` alone when named), in thousandths.
pub fn calculate_requests(
    pods: &[Pod],
    container: &str,
    resource: &str,
) -> Result<BTreeMap<String, i64>, String> {
    let mut out = BTreeMap::new();
    for p in pods {
        let name = p.metadata.name.clone().unwrap_or_default();
        let spec = p.spec.as_ref();
        let sidecars = spec
            .and_then(|s| s.init_containers.as_ref())
            .into_iter()
            .flatten()
            .filter(|c| c.restart_policy.as_deref() == Some("Always"));
        let mut sum = 0i64;
        let mut found = false;
        for c in spec
            .map(|s| s.containers.iter())
            .into_iter()
            .flatten()
            .chain(sidecars)
        {
            if !container.is_empty() && c.name != container {
                continue;
            }
            let q = c
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get(resource))
                .and_then(|q| quantity::milli(&q.0))
                .ok_or_else(|| {
                    format!(
                        "missing request for {resource} in container {} of Pod {name}",
                        c.name
                    )
                })?;
            sum += q;
            found = true;
            if !container.is_empty() {
                break;
            }
        }
        if !container.is_empty() && !found {
            return Err(format!("container {container} not found in Pod {name}"));
        }
        out.insert(name, sum);
    }
    Ok(out)
}

/// (usage ratio, utilization %, raw average in thousandths) over the pods with requests.
pub fn utilization_ratio(
    metrics: &Metrics,
    requests: &BTreeMap<String, i64>,
    target: i32,
) -> Result<(f64, i32, i64), String> {
    let (mut used, mut requested, mut n) = (0i128, 0i128, 0i128);
    for (pod, m) in metrics {
        let Some(r) = requests.get(pod) else { continue };
        used += m.value as i128;
        requested += *r as i128;
        n += 1;
    }
    if requested == 0 {
        return Err("no metrics returned matched known pods".into());
    }
    let utilization = (used * 100 / requested) as i32;
    Ok((
        utilization as f64 / target as f64,
        utilization,
        (used / n) as i64,
    ))
}

/// What both calculators share (`GetResourceReplicas` and `calcPlainMetricReplicas`):
/// grouping the pods, the usage ratio of the ready ones, then — with missing pods, or
/// unready ones on a scale-up — the ratio again with those counted as Kubernetes counts
/// them, and the checks that keep a change small or in one direction from happening.
/// `prepare` runs once there are metrics (the requests); `ratio_of` gives a set's usage
/// ratio and what the status reports of it; `missing_down` what a missing pod uses on a
/// scale-down. Returns the replicas and the first ratio's report.
#[allow(clippy::too_many_arguments)]
fn propose<R, T>(
    current: i32,
    pods: &[Pod],
    mut metrics: Metrics,
    resource: &str,
    s: &Settings,
    now: i128,
    prepare: impl FnOnce() -> Result<R, String>,
    ratio_of: impl Fn(&R, &Metrics) -> Result<(f64, T), String>,
    missing_down: impl Fn(&R, &str) -> i64,
) -> Result<(i32, T), String> {
    if pods.is_empty() {
        return Err("no pods returned by selector while calculating replica count".into());
    }
    let g = group_pods(pods, &metrics, resource, s, now);
    for p in g.ignored.iter().chain(&g.unready) {
        metrics.remove(p);
    }
    if metrics.is_empty() {
        return Err("did not receive metrics for targeted pods (pods might be unready)".into());
    }
    let r = prepare()?;
    let (ratio, report) = ratio_of(&r, &metrics)?;
    let scale_up_with_unready = !g.unready.is_empty() && ratio > 1.0;
    if !scale_up_with_unready && g.missing.is_empty() {
        if within(s.tolerance, ratio) {
            return Ok((current, report));
        }
        return Ok(((ratio * g.ready as f64).ceil() as i32, report));
    }
    let counted = |value| PodMetric {
        value,
        timestamp: 0,
        window: 0,
    };
    for p in &g.missing {
        if ratio < 1.0 {
            metrics.insert(p.clone(), counted(missing_down(&r, p)));
        } else if ratio > 1.0 {
            metrics.insert(p.clone(), counted(0));
        }
    }
    if scale_up_with_unready {
        for p in &g.unready {
            metrics.insert(p.clone(), counted(0));
        }
    }
    let (new_ratio, _) = ratio_of(&r, &metrics)?;
    if within(s.tolerance, new_ratio)
        || (ratio < 1.0 && new_ratio > 1.0)
        || (ratio > 1.0 && new_ratio < 1.0)
    {
        return Ok((current, report));
    }
    let replicas = (new_ratio * metrics.len() as f64).ceil() as i32;
    if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
        return Ok((current, report));
    }
    Ok((replicas, report))
}

/// `GetResourceReplicas`: (replicas, utilization %, raw average) for a Utilization target.
#[allow(clippy::too_many_arguments)]
pub fn resource_replicas(
    current: i32,
    target: i32,
    pods: &[Pod],
    metrics: Metrics,
    resource: &str,
    container: &str,
    s: &Settings,
    now: i128,
) -> Result<(i32, i32, i64), String> {
    let (replicas, (utilization, raw)) = propose(
        current,
        pods,
        metrics,
        resource,
        s,
        now,
        || calculate_requests(pods, container, resource),
        |requests, m| {
            utilization_ratio(m, requests, target).map(|(ratio, u, raw)| (ratio, (u, raw)))
        },
        |requests, p| requests.get(p).copied().unwrap_or(0) * i64::from(target.max(100)) / 100,
    )?;
    Ok((replicas, utilization, raw))
}

/// `calcPlainMetricReplicas`: (replicas, average usage) for an AverageValue target.
pub fn plain_replicas(
    current: i32,
    target: i64,
    pods: &[Pod],
    metrics: Metrics,
    resource: &str,
    s: &Settings,
    now: i128,
) -> Result<(i32, i64), String> {
    propose(
        current,
        pods,
        metrics,
        resource,
        s,
        now,
        || Ok(()),
        |_, m| {
            let usage = m.values().map(|v| v.value as i128).sum::<i128>() / m.len() as i128;
            Ok((usage as f64 / target as f64, usage as i64))
        },
        |_, _| target,
    )
}

/// A scale change this controller made (for `behavior`'s rate limits).
#[derive(Clone, Copy, Debug)]
struct ScaleEvent {
    change: i32,
    at: Instant,
    outdated: bool,
}

/// What the controller remembers of an HPA between syncs (in memory, as Kubernetes').
#[derive(Default)]
struct Memory {
    recommendations: Vec<(i32, Instant)>,
    up: Vec<ScaleEvent>,
    down: Vec<ScaleEvent>,
    /// The last warning recorded (reason, message), to record a repeated one once.
    last_warning: Option<(String, String, Instant)>,
}

/// A condition to set: (type, status, reason, message).
type Cond = (&'static str, &'static str, String, String);

fn changes_in(period: i32, events: &[ScaleEvent], now: Instant) -> i32 {
    let cutoff = now.checked_sub(Duration::from_secs(period.max(0) as u64));
    events
        .iter()
        .filter(|e| cutoff.is_none_or(|c| e.at > c))
        .map(|e| e.change)
        .sum()
}

fn scale_up_limit(
    current: i32,
    up: &[ScaleEvent],
    down: &[ScaleEvent],
    rules: &HPAScalingRules,
    now: Instant,
) -> i32 {
    let select = rules.select_policy.as_deref().unwrap_or("Max");
    if select == "Disabled" {
        return current;
    }
    let mut result = if select == "Min" { i32::MAX } else { i32::MIN };
    for p in rules.policies.iter().flatten() {
        let start = current - changes_in(p.period_seconds, up, now)
            + changes_in(p.period_seconds, down, now);
        let proposed = if p.type_ == "Pods" {
            start + p.value
        } else {
            (start as f64 * (1.0 + p.value as f64 / 100.0)).ceil() as i32
        };
        result = if select == "Min" {
            result.min(proposed)
        } else {
            result.max(proposed)
        };
    }
    result
}

fn scale_down_limit(
    current: i32,
    up: &[ScaleEvent],
    down: &[ScaleEvent],
    rules: &HPAScalingRules,
    now: Instant,
) -> i32 {
    let select = rules.select_policy.as_deref().unwrap_or("Max");
    if select == "Disabled" {
        return current;
    }
    let mut result = if select == "Min" { i32::MIN } else { i32::MAX };
    for p in rules.policies.iter().flatten() {
        let start = current - changes_in(p.period_seconds, up, now)
            + changes_in(p.period_seconds, down, now);
        let proposed = if p.type_ == "Pods" {
            start - p.value
        } else {
            (start as f64 * (1.0 - p.value as f64 / 100.0)) as i32
        };
        result = if select == "Min" {
            result.max(proposed)
        } else {
            result.min(proposed)
        };
    }
    result
}

/// Kubernetes' default scaling rules (`GenerateHPAScaleUpRules`/`…ScaleDownRules`), with
/// what the HPA sets over them.
fn rules_with_defaults(
    given: Option<&HPAScalingRules>,
    up: bool,
    downscale_window: i32,
) -> HPAScalingRules {
    use k8s_openapi::api::autoscaling::v2::HPAScalingPolicy;
    let policy = |t: &str, value: i32| HPAScalingPolicy {
        type_: t.into(),
        value,
        period_seconds: 15,
    };
    let mut r = if up {
        HPAScalingRules {
            stabilization_window_seconds: Some(0),
            select_policy: Some("Max".into()),
            policies: Some(vec![policy("Pods", 4), policy("Percent", 100)]),
        }
    } else {
        HPAScalingRules {
            stabilization_window_seconds: Some(downscale_window),
            select_policy: Some("Max".into()),
            policies: Some(vec![policy("Percent", 100)]),
        }
    };
    if let Some(g) = given {
        if g.stabilization_window_seconds.is_some() {
            r.stabilization_window_seconds = g.stabilization_window_seconds;
        }
        if g.select_policy.is_some() {
            r.select_policy = g.select_policy.clone();
        }
        if g.policies.is_some() {
            r.policies = g.policies.clone();
        }
    }
    r
}

/// The replica count after stabilization and rate limits, with the conditions that say
/// why (`AbleToScale`, `ScalingLimited`).
#[allow(clippy::too_many_arguments)]
fn normalize(
    mem: &mut Memory,
    hpa: &HorizontalPodAutoscaler,
    current: i32,
    desired: i32,
    min: i32,
    max: i32,
    s: &Settings,
    now: Instant,
    conds: &mut Vec<Cond>,
) -> i32 {
    let behavior = hpa.spec.as_ref().and_then(|s| s.behavior.as_ref());
    let Some(b) = behavior else {
        // The legacy rules: a scale-down stabilization window, a scale-up rate.
        let cutoff = now.checked_sub(s.downscale_stabilization);
        let mut stabilized = desired;
        let mut old = None;
        for (i, (rec, at)) in mem.recommendations.iter().enumerate() {
            if cutoff.is_some_and(|c| *at < c) {
                old = Some(i);
            } else if *rec > stabilized {
                stabilized = *rec;
            }
        }
        match old {
            Some(i) => mem.recommendations[i] = (desired, now),
            None => mem.recommendations.push((desired, now)),
        }
        conds.push(if stabilized != desired {
            ("AbleToScale", "True", "ScaleDownStabilized".into(),
             "recent recommendations were higher than current one, applying the highest recent recommendation".into())
        } else {
            ("AbleToScale", "True", "ReadyForNewScale".into(), "recommended size matches current size".into())
        });
        let limit = (SCALE_UP_LIMIT_FACTOR * current as f64).max(SCALE_UP_LIMIT_MINIMUM) as i32;
        let (max_allowed, reason, message) = if max > limit {
            (
                limit,
                "ScaleUpLimit",
                "the desired replica count is increasing faster than the maximum scale rate",
            )
        } else {
            (
                max,
                "TooManyReplicas",
                "the desired replica count is more than the maximum replica count",
            )
        };
        let (result, reason, message) = if stabilized < min {
            (
                min,
                "TooFewReplicas",
                "the desired replica count is less than the minimum replica count",
            )
        } else if stabilized > max_allowed {
            (max_allowed, reason, message)
        } else {
            (
                stabilized,
                "DesiredWithinRange",
                "the desired count is within the acceptable range",
            )
        };
        conds.push((
            "ScalingLimited",
            if result == stabilized {
                "False"
            } else {
                "True"
            },
            reason.into(),
            message.into(),
        ));
        return result;
    };
    let window = s.downscale_stabilization.as_secs() as i32;
    let up_rules = rules_with_defaults(b.scale_up.as_ref(), true, window);
    let down_rules = rules_with_defaults(b.scale_down.as_ref(), false, window);
    let secs = |r: &HPAScalingRules| {
        Duration::from_secs(r.stabilization_window_seconds.unwrap_or(0).max(0) as u64)
    };
    let up_cutoff = now.checked_sub(secs(&up_rules));
    let down_cutoff = now.checked_sub(secs(&down_rules));
    let (mut up_rec, mut down_rec) = (desired, desired);
    let mut old = None;
    for (i, (rec, at)) in mem.recommendations.iter().enumerate() {
        let after_up = up_cutoff.is_none_or(|c| *at > c);
        let after_down = down_cutoff.is_none_or(|c| *at > c);
        if after_up {
            up_rec = up_rec.min(*rec);
        }
        if after_down {
            down_rec = down_rec.max(*rec);
        }
        if up_cutoff.is_some_and(|c| *at < c) && down_cutoff.is_some_and(|c| *at < c) {
            old = Some(i);
        }
    }
    let stabilized = current.max(up_rec).min(down_rec);
    match old {
        Some(i) => mem.recommendations[i] = (desired, now),
        None => mem.recommendations.push((desired, now)),
    }
    conds.push(if stabilized != desired {
        if desired >= current {
            ("AbleToScale", "True", "ScaleUpStabilized".into(),
             "recent recommendations were lower than current one, applying the lowest recent recommendation".into())
        } else {
            ("AbleToScale", "True", "ScaleDownStabilized".into(),
             "recent recommendations were higher than current one, applying the highest recent recommendation".into())
        }
    } else {
        ("AbleToScale", "True", "ReadyForNewScale".into(), "recommended size matches current size".into())
    });
    let (result, reason, message) = if stabilized > current {
        let limit = scale_up_limit(current, &mem.up, &mem.down, &up_rules, now).max(current);
        let (allowed, reason, message) = if max > limit {
            (
                limit,
                "ScaleUpLimit",
                "the desired replica count is increasing faster than the maximum scale rate",
            )
        } else {
            (
                max,
                "TooManyReplicas",
                "the desired replica count is more than the maximum replica count",
            )
        };
        if stabilized > allowed {
            (allowed, reason, message)
        } else {
            (stabilized, reason, message)
        }
    } else if stabilized < current {
        let limit = scale_down_limit(current, &mem.up, &mem.down, &down_rules, now).min(current);
        let (allowed, reason, message) = if min < limit {
            (
                limit,
                "ScaleDownLimit",
                "the desired replica count is decreasing faster than the maximum scale rate",
            )
        } else {
            (
                min,
                "TooFewReplicas",
                "the desired replica count is less than the minimum replica count",
            )
        };
        if stabilized < allowed {
            (allowed, reason, message)
        } else {
            (stabilized, reason, message)
        }
    } else {
        (
            stabilized,
            "DesiredWithinRange",
            "the desired count is within the acceptable range",
        )
    };
    conds.push((
        "ScalingLimited",
        if result == stabilized {
            "False"
        } else {
            "True"
        },
        reason.into(),
        message.into(),
    ));
    result
}

/// Records a rescale for `behavior`'s rate limits (`storeScaleEvent`).
fn store_scale_event(
    mem: &mut Memory,
    hpa: &HorizontalPodAutoscaler,
    prev: i32,
    new: i32,
    s: &Settings,
    now: Instant,
) {
    let Some(b) = hpa.spec.as_ref().and_then(|s| s.behavior.as_ref()) else {
        return;
    };
    let window = s.downscale_stabilization.as_secs() as i32;
    let (rules, events, change) = if new > prev {
        (
            rules_with_defaults(b.scale_up.as_ref(), true, window),
            &mut mem.up,
            new - prev,
        )
    } else {
        (
            rules_with_defaults(b.scale_down.as_ref(), false, window),
            &mut mem.down,
            prev - new,
        )
    };
    let longest = rules
        .policies
        .iter()
        .flatten()
        .map(|p| p.period_seconds)
        .max()
        .unwrap_or(0);
    let cutoff = now.checked_sub(Duration::from_secs(longest.max(0) as u64));
    let mut last_outdated = None;
    for (i, e) in events.iter_mut().enumerate() {
        if cutoff.is_some_and(|c| e.at < c) {
            e.outdated = true;
        }
        if e.outdated {
            last_outdated = Some(i);
        }
    }
    let ev = ScaleEvent {
        change,
        at: now,
        outdated: false,
    };
    match last_outdated {
        Some(i) => events[i] = ev,
        None => events.push(ev),
    }
}

/// What reading a metric gave: (proposed replicas, its name for messages, its status).
type MetricResult = Result<(i32, String, MetricStatus), (String, String, String)>;

struct Ctx {
    client: kube::Client,
    settings: Settings,
    memory: Mutex<HashMap<String, Memory>>,
    /// Scale targets' resources by (apiVersion, kind), found through discovery once a
    /// minute at most.
    mappings: Mutex<HashMap<(String, String), (ApiResource, Instant)>>,
}

/// How long a discovered scale target's resource is trusted.
const MAPPING_TTL: Duration = Duration::from_secs(60);

fn pod_metrics_api(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource {
        group: "metrics.k8s.io".into(),
        version: "v1beta1".into(),
        api_version: "metrics.k8s.io/v1beta1".into(),
        kind: "PodMetrics".into(),
        plural: "pods".into(),
    };
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// `GetResourceMetric`: each pod's usage of `resource` (of `container` alone when named).
async fn resource_metrics(
    client: &kube::Client,
    ns: &str,
    selector: &str,
    resource: &str,
    container: &str,
) -> Result<Metrics, String> {
    let list = pod_metrics_api(client, ns)
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|e| {
            format!(
                "unable to fetch metrics from resource metrics API: {}",
                kube_message(&e)
            )
        })?;
    if list.items.is_empty() {
        return Err("no metrics returned from resource metrics API".into());
    }
    let mut out = Metrics::new();
    'pods: for m in list.items {
        let name = m.metadata.name.clone().unwrap_or_default();
        let containers = m.data["containers"].as_array().cloned().unwrap_or_default();
        let mut sum = 0i64;
        let mut found = false;
        for c in &containers {
            if !container.is_empty() && c["name"] != container {
                continue;
            }
            let Some(v) = c["usage"][resource].as_str().and_then(quantity::milli) else {
                continue 'pods;
            };
            sum += v;
            found = true;
        }
        if !found {
            continue;
        }
        let timestamp = m.data["timestamp"]
            .as_str()
            .and_then(timefmt::parse_rfc3339)
            .unwrap_or(0);
        let window = m.data["window"]
            .as_str()
            .and_then(timefmt::parse_duration)
            .unwrap_or(0) as i128;
        out.insert(
            name,
            PodMetric {
                value: sum,
                timestamp,
                window,
            },
        );
    }
    Ok(out)
}

fn kube_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

impl Ctx {
    async fn warn(&self, key: &str, hpa: &HorizontalPodAutoscaler, reason: &str, message: &str) {
        {
            let mut mem = self.memory.lock().unwrap();
            let m = mem.entry(key.to_string()).or_default();
            // A warning repeated every sync is recorded once per ten minutes, as the event
            // recorder's aggregation would show it.
            if let Some((r, msg, at)) = &m.last_warning {
                if r == reason && msg == message && at.elapsed() < Duration::from_secs(600) {
                    return;
                }
            }
            m.last_warning = Some((reason.into(), message.into(), Instant::now()));
        }
        self.event(hpa, "Warning", reason, message).await;
    }

    async fn event(&self, hpa: &HorizontalPodAutoscaler, typ: &str, reason: &str, message: &str) {
        crate::event(
            &self.client,
            COMPONENT,
            json!({
                "kind": "HorizontalPodAutoscaler",
                "apiVersion": "autoscaling/v2",
                "namespace": hpa.metadata.namespace,
                "name": hpa.metadata.name,
                "uid": hpa.metadata.uid,
            }),
            typ,
            reason,
            message,
        )
        .await;
    }

    /// One metric's proposal (`computeReplicasForMetric`).
    async fn metric(
        &self,
        ns: &str,
        spec: &MetricSpec,
        spec_replicas: i32,
        selector: &str,
    ) -> MetricResult {
        let s = &self.settings;
        let now = timefmt::now_nanos();
        let fail =
            |reason: &str, outer: String, inner: String| Err((reason.to_string(), outer, inner));
        match spec.type_.as_str() {
            "Resource" | "ContainerResource" => {
                let (name, container, target) = match (&spec.resource, &spec.container_resource) {
                    (Some(r), _) if spec.type_ == "Resource" => {
                        (r.name.clone(), String::new(), &r.target)
                    }
                    (_, Some(c)) if spec.type_ == "ContainerResource" => {
                        (c.name.clone(), c.container.clone(), &c.target)
                    }
                    _ => {
                        let e = format!(
                            "invalid metric source: type {} without its source",
                            spec.type_
                        );
                        return fail("InvalidMetricSourceType", e.clone(), e);
                    }
                };
                let (reason, wrap) = if container.is_empty() {
                    (
                        "FailedGetResourceMetric",
                        format!("failed to get {name} resource metric value"),
                    )
                } else {
                    (
                        "FailedGetContainerResourceMetric",
                        format!("failed to get {container} container metric value"),
                    )
                };
                let pods = match Api::<Pod>::namespaced(self.client.clone(), ns)
                    .list(&ListParams::default().labels(selector))
                    .await
                {
                    Ok(l) => l.items,
                    Err(e) => {
                        let inner = format!(
                            "unable to get pods while calculating replica count: {}",
                            kube_message(&e)
                        );
                        return fail(reason, format!("{wrap}: {inner}"), inner);
                    }
                };
                let status_of = |current: Value| -> MetricStatus {
                    let v = if container.is_empty() {
                        json!({"type": spec.type_, "resource": {"name": name, "current": current}})
                    } else {
                        json!({"type": spec.type_, "containerResource": {"name": name, "container": container, "current": current}})
                    };
                    serde_json::from_value(v).unwrap_or_default()
                };
                if let Some(avg) = &target.average_value {
                    let target_milli = quantity::milli(&avg.0).unwrap_or(0).max(1);
                    let r = match resource_metrics(&self.client, ns, selector, &name, &container)
                        .await
                    {
                        Ok(m) => {
                            plain_replicas(spec_replicas, target_milli, &pods, m, &name, s, now)
                        }
                        Err(e) => Err(format!("unable to get metrics for resource {name}: {e}")),
                    };
                    return match r {
                        Ok((replicas, usage)) => Ok((
                            replicas,
                            format!("{name} resource"),
                            status_of(json!({"averageValue": quantity::format_milli(usage)})),
                        )),
                        Err(e) => {
                            let inner = format!("failed to get {name} usage: {e}");
                            fail(reason, format!("{wrap}: {inner}"), inner)
                        }
                    };
                }
                let Some(util) = target.average_utilization else {
                    let inner = "invalid resource metric source: neither an average utilization target nor an average value (usage) target was set".to_string();
                    return fail(reason, format!("{wrap}: {inner}"), inner);
                };
                let r = match resource_metrics(&self.client, ns, selector, &name, &container).await
                {
                    Ok(m) => {
                        resource_replicas(spec_replicas, util, &pods, m, &name, &container, s, now)
                    }
                    Err(e) => Err(format!("unable to get metrics for resource {name}: {e}")),
                };
                match r {
                    Ok((replicas, pct, raw)) => Ok((
                        replicas,
                        if container.is_empty() {
                            format!("{name} resource utilization (percentage of request)")
                        } else {
                            format!("{name} container resource utilization (percentage of request)")
                        },
                        status_of(
                            json!({"averageUtilization": pct, "averageValue": quantity::format_milli(raw)}),
                        ),
                    )),
                    Err(e) => {
                        let inner = format!("failed to get {name} utilization: {e}");
                        fail(reason, format!("{wrap}: {inner}"), inner)
                    }
                }
            }
            "Pods" => {
                let name = spec
                    .pods
                    .as_ref()
                    .map(|p| p.metric.name.clone())
                    .unwrap_or_default();
                let e = self
                    .custom_metrics_unavailable("custom.metrics.k8s.io", "custom")
                    .await;
                let inner = format!("unable to get metric {name}: {e}");
                fail(
                    "FailedGetPodsMetric",
                    format!("failed to get pods metric value: {inner}"),
                    inner,
                )
            }
            "Object" => {
                let name = spec
                    .object
                    .as_ref()
                    .map(|p| p.metric.name.clone())
                    .unwrap_or_default();
                let e = self
                    .custom_metrics_unavailable("custom.metrics.k8s.io", "custom")
                    .await;
                let inner = format!("unable to get metric {name}: {e}");
                fail(
                    "FailedGetObjectMetric",
                    format!("failed to get object metric value: {inner}"),
                    inner,
                )
            }
            "External" => {
                let name = spec
                    .external
                    .as_ref()
                    .map(|p| p.metric.name.clone())
                    .unwrap_or_default();
                let e = self
                    .custom_metrics_unavailable("external.metrics.k8s.io", "external")
                    .await;
                let inner = format!("unable to get external metric {ns}/{name}: {e}");
                fail(
                    "FailedGetExternalMetric",
                    format!("failed to get {name} external metric value: {inner}"),
                    inner,
                )
            }
            other => {
                let e = format!("unknown metric source type {other:?}");
                fail("InvalidMetricSourceType", e.clone(), e)
            }
        }
    }

    /// Why a custom or external metric cannot be read: the API group is not served.
    async fn custom_metrics_unavailable(&self, group: &str, what: &str) -> String {
        match kube::discovery::group(&self.client, group).await {
            Ok(_) => format!("unable to fetch metrics from {what} metrics API: berth does not read metrics from {group}"),
            Err(_) => format!("unable to fetch metrics from {what} metrics API: no {what} metrics API ({group}) registered"),
        }
    }

    async fn reconcile(&self, hpa: &HorizontalPodAutoscaler) {
        let ns = hpa.metadata.namespace.clone().unwrap_or_default();
        let name = hpa.metadata.name.clone().unwrap_or_default();
        let key = format!("{ns}/{name}");
        let Some(spec) = hpa.spec.clone() else { return };
        let original = hpa.status.clone().unwrap_or_default();
        let mut conds: Vec<Cond> = Vec::new();
        let target = &spec.scale_target_ref;
        let now = Instant::now();

        // The target's scale.
        let scale = match self.get_scale(&ns, target).await {
            Ok(s) => s,
            Err(e) => {
                self.warn(&key, hpa, "FailedGetScale", &e).await;
                conds.push((
                    "AbleToScale",
                    "False",
                    "FailedGetScale".into(),
                    format!("the HPA controller was unable to get the target's current scale: {e}"),
                ));
                self.write_status(hpa, &original, None, &conds, false).await;
                return;
            }
        };
        conds.push((
            "AbleToScale",
            "True",
            "SucceededGetScale".into(),
            "the HPA controller was able to get the target's current scale".into(),
        ));
        let current = scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        {
            let mut mem = self.memory.lock().unwrap();
            let m = mem.entry(key.clone()).or_default();
            if m.recommendations.is_empty() {
                m.recommendations.push((current, now));
            }
        }
        let min = spec.min_replicas.unwrap_or(1);
        let max = spec.max_replicas;
        let mut desired = 0;
        let mut reason = String::new();
        let mut statuses: Option<Vec<MetricStatus>> = None;
        if current == 0 {
            conds.push((
                "ScalingActive",
                "False",
                "ScalingDisabled".into(),
                "scaling is disabled since the replica count of the target is zero".into(),
            ));
        } else if current > max {
            reason = "Current number of replicas above Spec.MaxReplicas".into();
            desired = max;
        } else if current < min {
            reason = "Current number of replicas below Spec.MinReplicas".into();
            desired = min;
        } else {
            let selector = scale
                .status
                .as_ref()
                .and_then(|s| s.selector.clone())
                .unwrap_or_default();
            if selector.is_empty() {
                self.warn(&key, hpa, "SelectorRequired", "selector is required")
                    .await;
                conds.push((
                    "ScalingActive",
                    "False",
                    "InvalidSelector".into(),
                    "the HPA target's scale is missing a selector".into(),
                ));
                self.write_status(
                    hpa,
                    &original,
                    Some((current, original.desired_replicas, None)),
                    &conds,
                    false,
                )
                .await;
                return;
            }
            let metrics = spec.metrics.clone().unwrap_or_default();
            let mut slots: Vec<MetricStatus> = vec![MetricStatus::default(); metrics.len()];
            let (mut replicas, mut metric_name) = (0, String::new());
            let mut invalid = 0;
            let mut first: Option<(String, String, String)> = None;
            for (i, m) in metrics.iter().enumerate() {
                match self.metric(&ns, m, current, &selector).await {
                    Ok((r, n, st)) => {
                        slots[i] = st;
                        if replicas == 0 || r > replicas {
                            replicas = r;
                            metric_name = n;
                        }
                    }
                    Err((reason, outer, inner)) => {
                        self.warn(&key, hpa, &reason, &inner).await;
                        if first.is_none() {
                            first = Some((reason, outer, inner));
                        }
                        invalid += 1;
                    }
                }
            }
            if invalid >= metrics.len() || (invalid > 0 && replicas < current) {
                let (reason, outer, inner) = first.unwrap_or_default();
                conds.push((
                    "ScalingActive",
                    "False",
                    reason,
                    format!("the HPA was unable to compute the replica count: {inner}"),
                ));
                let msg = format!(
                    "invalid metrics ({invalid} invalid out of {}), first error is: {outer}",
                    metrics.len()
                );
                self.warn(&key, hpa, "FailedComputeMetricsReplicas", &msg)
                    .await;
                self.write_status(
                    hpa,
                    &original,
                    Some((current, original.desired_replicas, Some(slots))),
                    &conds,
                    false,
                )
                .await;
                return;
            }
            conds.push((
                "ScalingActive",
                "True",
                "ValidMetricFound".into(),
                format!(
                    "the HPA was able to successfully calculate a replica count from {metric_name}"
                ),
            ));
            statuses = Some(slots);
            desired = replicas;
            if desired > current {
                reason = format!("{metric_name} above target");
            } else if desired < current {
                reason = "All metrics below target".into();
            }
            let mut mem = self.memory.lock().unwrap();
            let m = mem.entry(key.clone()).or_default();
            desired = normalize(
                m,
                hpa,
                current,
                desired,
                min,
                max,
                &self.settings,
                now,
                &mut conds,
            );
        }
        let rescale = current != 0 && desired != current;
        if !rescale {
            desired = current;
            self.write_status(
                hpa,
                &original,
                Some((current, desired, statuses)),
                &conds,
                false,
            )
            .await;
            return;
        }
        match self.set_scale(&ns, target, desired).await {
            Ok(()) => {
                conds.push((
                    "AbleToScale",
                    "True",
                    "SucceededRescale".into(),
                    format!("the HPA controller was able to update the target scale to {desired}"),
                ));
                self.event(
                    hpa,
                    "Normal",
                    "SuccessfulRescale",
                    &format!("New size: {desired}; reason: {reason}"),
                )
                .await;
                {
                    let mut mem = self.memory.lock().unwrap();
                    let m = mem.entry(key.clone()).or_default();
                    store_scale_event(m, hpa, current, desired, &self.settings, now);
                }
                self.write_status(
                    hpa,
                    &original,
                    Some((current, desired, statuses)),
                    &conds,
                    true,
                )
                .await;
            }
            Err(e) => {
                self.warn(
                    &key,
                    hpa,
                    "FailedRescale",
                    &format!("New size: {desired}; reason: {reason}; error: {e}"),
                )
                .await;
                conds.push((
                    "AbleToScale",
                    "False",
                    "FailedUpdateScale".into(),
                    format!("the HPA controller was unable to update the target scale: {e}"),
                ));
                self.write_status(
                    hpa,
                    &original,
                    Some((current, original.desired_replicas, statuses)),
                    &conds,
                    false,
                )
                .await;
            }
        }
    }

    async fn target_api(
        &self,
        ns: &str,
        target: &k8s_openapi::api::autoscaling::v2::CrossVersionObjectReference,
    ) -> Result<Api<DynamicObject>, String> {
        let api_version = target.api_version.clone().unwrap_or_default();
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None if !api_version.is_empty() => (String::new(), api_version.clone()),
            None => return Err("invalid API version in scale target reference: empty".into()),
        };
        let key = (api_version.clone(), target.kind.clone());
        let cached = self
            .mappings
            .lock()
            .unwrap()
            .get(&key)
            .filter(|(_, at)| at.elapsed() < MAPPING_TTL)
            .map(|(ar, _)| ar.clone());
        let ar = match cached {
            Some(ar) => ar,
            None => {
                let gvk = kube::api::GroupVersionKind::gvk(&group, &version, &target.kind);
                let (ar, _) = kube::discovery::pinned_kind(&self.client, &gvk)
                    .await
                    .map_err(|e| {
                        format!(
                            "unable to determine resource for scale target reference: {}",
                            kube_message(&e)
                        )
                    })?;
                self.mappings
                    .lock()
                    .unwrap()
                    .insert(key, (ar.clone(), Instant::now()));
                ar
            }
        };
        Ok(Api::namespaced_with(self.client.clone(), ns, &ar))
    }

    async fn get_scale(
        &self,
        ns: &str,
        target: &k8s_openapi::api::autoscaling::v2::CrossVersionObjectReference,
    ) -> Result<k8s_openapi::api::autoscaling::v1::Scale, String> {
        let api = self.target_api(ns, target).await?;
        api.get_scale(&target.name).await.map_err(|e| {
            format!(
                "failed to query scale subresource for {}/{ns}/{}: {}",
                target.kind,
                target.name,
                kube_message(&e)
            )
        })
    }

    async fn set_scale(
        &self,
        ns: &str,
        target: &k8s_openapi::api::autoscaling::v2::CrossVersionObjectReference,
        replicas: i32,
    ) -> Result<(), String> {
        let api = self.target_api(ns, target).await?;
        api.patch_scale(
            &target.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await
        .map(drop)
        .map_err(|e| kube_message(&e))
    }

    /// Writes the status when it changed: `counts` is (current, desired, currentMetrics),
    /// None to keep them as they were.
    async fn write_status(
        &self,
        hpa: &HorizontalPodAutoscaler,
        original: &HorizontalPodAutoscalerStatus,
        counts: Option<(i32, i32, Option<Vec<MetricStatus>>)>,
        conds: &[Cond],
        rescaled: bool,
    ) {
        let mut st = original.clone();
        if let Some((current, desired, metrics)) = counts {
            st.current_replicas = Some(current);
            st.desired_replicas = desired;
            st.current_metrics = metrics;
        }
        if rescaled {
            st.last_scale_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff_now(),
            ));
        }
        let mut list: Vec<HorizontalPodAutoscalerCondition> =
            st.conditions.take().unwrap_or_default();
        for (t, status, reason, message) in conds {
            match list.iter_mut().find(|c| c.type_ == *t) {
                Some(c) => {
                    if c.status != *status {
                        c.last_transition_time = Some(
                            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff_now()),
                        );
                    }
                    c.status = status.to_string();
                    c.reason = Some(reason.clone());
                    c.message = Some(message.clone());
                }
                None => list.push(HorizontalPodAutoscalerCondition {
                    type_: t.to_string(),
                    status: status.to_string(),
                    reason: Some(reason.clone()),
                    message: Some(message.clone()),
                    last_transition_time: Some(
                        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff_now()),
                    ),
                }),
            }
        }
        st.conditions = Some(list);
        if &st == original {
            return;
        }
        let mut v = serde_json::to_value(&st).unwrap_or_default();
        // A merge patch removes what is null.
        for f in ["currentMetrics", "lastScaleTime", "currentReplicas"] {
            if v.get(f).is_none() {
                v[f] = Value::Null;
            }
        }
        let api: Api<HorizontalPodAutoscaler> = Api::namespaced(
            self.client.clone(),
            hpa.metadata.namespace.as_deref().unwrap_or_default(),
        );
        if let Err(e) = api
            .patch_status(
                hpa.metadata.name.as_deref().unwrap_or_default(),
                &PatchParams::default(),
                &Patch::Merge(json!({"status": v})),
            )
            .await
        {
            self.event(hpa, "Warning", "FailedUpdateStatus", &kube_message(&e))
                .await;
        }
    }
}

fn jiff_now() -> k8s_openapi::jiff::Timestamp {
    let n = timefmt::now_nanos();
    k8s_openapi::jiff::Timestamp::new((n / 1_000_000_000) as i64, 0).unwrap_or_default()
}

/// Reconciles every HPA every sync period, and a new or changed one at once.
pub async fn run(client: kube::Client, settings: Settings) {
    use futures::StreamExt;
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        settings,
        memory: Mutex::new(HashMap::new()),
        mappings: Mutex::new(HashMap::new()),
    });
    let api: Api<HorizontalPodAutoscaler> = Api::all(client);
    let mut events = std::pin::pin!(crate::follow_keyed(api, Default::default()));
    let mut hpas: HashMap<String, Arc<HorizontalPodAutoscaler>> = HashMap::new();
    let mut due: HashMap<String, tokio::time::Instant> = HashMap::new();
    loop {
        let next = due
            .values()
            .min()
            .copied()
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            ev = events.next() => {
                let Some((key, obj)) = ev else { return };
                match obj {
                    Some(o) => {
                        let changed = hpas.get(&key).is_none_or(|old| {
                            serde_json::to_value(&old.spec).ok() != serde_json::to_value(&o.spec).ok()
                        });
                        if changed {
                            due.insert(key.clone(), tokio::time::Instant::now());
                        }
                        hpas.insert(key, o);
                    }
                    None => {
                        hpas.remove(&key);
                        due.remove(&key);
                        ctx.memory.lock().unwrap().remove(&key);
                    }
                }
            }
            _ = tokio::time::sleep_until(next) => {
                let now = tokio::time::Instant::now();
                let ready: Vec<String> = due.iter().filter(|(_, t)| **t <= now).map(|(k, _)| k.clone()).collect();
                let work = ready.iter().filter_map(|k| hpas.get(k).cloned()).map(|h| {
                    let ctx = ctx.clone();
                    async move { ctx.reconcile(&h).await }
                });
                futures::future::join_all(work).await;
                for k in ready {
                    due.insert(k, now + ctx.settings.sync_period);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i128 = 1_000_000_000;

    fn pod(
        name: &str,
        phase: &str,
        ready: bool,
        started_ago_s: i64,
        cpu_request: Option<&str>,
    ) -> Pod {
        let now = timefmt::now_nanos() / S;
        let t = |ago: i64| timefmt::rfc3339(now as i64 - ago, 0);
        let mut p = json!({
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "app"}]},
            "status": {"phase": phase, "startTime": t(started_ago_s),
                "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"},
                    "lastTransitionTime": t(started_ago_s - 5)}]},
        });
        if let Some(r) = cpu_request {
            p["spec"]["containers"][0]["resources"] = json!({"requests": {"cpu": r}});
        }
        serde_json::from_value(p).unwrap()
    }

    fn metrics(v: &[(&str, i64)]) -> Metrics {
        v.iter()
            .map(|(n, m)| {
                (
                    n.to_string(),
                    PodMetric {
                        value: *m,
                        timestamp: timefmt::now_nanos(),
                        window: 10 * S,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn utilization_above_target_scales_up_proportionally() {
        let s = Settings::default();
        let pods = vec![
            pod("a", "Running", true, 600, Some("100m")),
            pod("b", "Running", true, 600, Some("100m")),
        ];
        // 90% against a 50% target on two pods: ceil(1.8 * 2) = 4.
        let (r, pct, raw) = resource_replicas(
            2,
            50,
            &pods,
            metrics(&[("a", 90), ("b", 90)]),
            "cpu",
            "",
            &s,
            timefmt::now_nanos(),
        )
        .unwrap();
        assert_eq!((r, pct, raw), (4, 90, 90));
        // Within the tolerance: no change.
        let (r, _, _) = resource_replicas(
            2,
            50,
            &pods,
            metrics(&[("a", 54), ("b", 52)]),
            "cpu",
            "",
            &s,
            timefmt::now_nanos(),
        )
        .unwrap();
        assert_eq!(r, 2);
        // Well below: scale down.
        let (r, _, _) = resource_replicas(
            2,
            50,
            &pods,
            metrics(&[("a", 10), ("b", 10)]),
            "cpu",
            "",
            &s,
            timefmt::now_nanos(),
        )
        .unwrap();
        assert_eq!(r, 1);
    }

    #[test]
    fn missing_requests_and_metrics_are_errors_with_kubernetes_messages() {
        let s = Settings::default();
        let pods = vec![pod("a", "Running", true, 600, None)];
        let e = resource_replicas(
            1,
            50,
            &pods,
            metrics(&[("a", 90)]),
            "cpu",
            "",
            &s,
            timefmt::now_nanos(),
        )
        .unwrap_err();
        assert_eq!(e, "missing request for cpu in container app of Pod a");
        let pods = vec![pod("a", "Running", true, 600, Some("100m"))];
        let e = resource_replicas(
            1,
            50,
            &pods,
            Metrics::new(),
            "cpu",
            "",
            &s,
            timefmt::now_nanos(),
        )
        .unwrap_err();
        assert_eq!(
            e,
            "did not receive metrics for targeted pods (pods might be unready)"
        );
        let e = resource_replicas(
            1,
            50,
            &[],
            Metrics::new(),
            "cpu",
            "",
            &s,
            timefmt::now_nanos(),
        )
        .unwrap_err();
        assert_eq!(
            e,
            "no pods returned by selector while calculating replica count"
        );
    }

    #[test]
    fn unready_and_missing_pods_damp_the_change() {
        let s = Settings::default();
        // One busy ready pod, one pending (unready): scaling up counts the pending one at 0.
        let pods = vec![
            pod("a", "Running", true, 600, Some("100m")),
            pod("b", "Pending", false, 1, Some("100m")),
        ];
        let (r, _, _) = resource_replicas(
            2,
            50,
            &pods,
            metrics(&[("a", 100)]),
            "cpu",
            "",
            &s,
            timefmt::now_nanos(),
        )
        .unwrap();
        // New ratio (100 + 0) / 200 / 0.5 = 1.0: within tolerance, so no change.
        assert_eq!(r, 2);
        // A missing pod on a scale-down counts as using its whole request.
        let pods = vec![
            pod("a", "Running", true, 600, Some("100m")),
            pod("b", "Running", true, 600, Some("100m")),
        ];
        let (r, _, _) = resource_replicas(
            2,
            50,
            &pods,
            metrics(&[("a", 10)]),
            "cpu",
            "",
            &s,
            timefmt::now_nanos(),
        )
        .unwrap();
        // (10 + 100) / 200 = 55% against 50%: within tolerance.
        assert_eq!(r, 2);
        // Deleted and failed pods are ignored.
        let mut gone = pod("c", "Failed", false, 600, Some("100m"));
        gone.metadata.name = Some("c".into());
        let g = group_pods(&[gone], &Metrics::new(), "cpu", &s, timefmt::now_nanos());
        assert!(g.ignored.contains("c"));
    }

    #[test]
    fn a_pod_starting_up_is_unready_until_a_full_window_after_it_became_ready() {
        let s = Settings::default();
        // Started 20 s ago, ready 15 s ago; its metric covers a window ending now of 30 s,
        // which began before it became ready.
        let p = pod("a", "Running", true, 20, Some("100m"));
        let m: Metrics = [(
            "a".to_string(),
            PodMetric {
                value: 50,
                timestamp: timefmt::now_nanos(),
                window: 30 * S,
            },
        )]
        .into();
        let g = group_pods(
            std::slice::from_ref(&p),
            &m,
            "cpu",
            &s,
            timefmt::now_nanos(),
        );
        assert!(g.unready.contains("a"), "{g:?}");
        // Memory does not look at readiness.
        let g = group_pods(&[p], &m, "memory", &s, timefmt::now_nanos());
        assert_eq!(g.ready, 1);
    }

    #[test]
    fn average_value_targets() {
        let s = Settings::default();
        let pods = vec![
            pod("a", "Running", true, 600, None),
            pod("b", "Running", true, 600, None),
        ];
        // 300 Mi each against 100 Mi: three times the pods.
        let mi = 1_048_576_000i64;
        let (r, usage) = plain_replicas(
            2,
            100 * mi,
            &pods,
            metrics(&[("a", 300 * mi), ("b", 300 * mi)]),
            "memory",
            &s,
            timefmt::now_nanos(),
        )
        .unwrap();
        assert_eq!((r, usage), (6, 300 * mi));
    }

    fn hpa(behavior: Option<Value>) -> HorizontalPodAutoscaler {
        let mut v = json!({"metadata": {"name": "h", "namespace": "d"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "w", "apiVersion": "apps/v1"}, "maxReplicas": 10}});
        if let Some(b) = behavior {
            v["spec"]["behavior"] = b;
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn legacy_rules_limit_the_scale_up_rate_and_stabilize_scale_down() {
        let s = Settings::default();
        let h = hpa(None);
        let mut mem = Memory::default();
        let now = Instant::now();
        let mut c = Vec::new();
        // From 1, at most max(2 * 1, 4) = 4.
        assert_eq!(normalize(&mut mem, &h, 1, 9, 1, 10, &s, now, &mut c), 4);
        assert!(
            c.iter()
                .any(|x| x.0 == "ScalingLimited" && x.1 == "True" && x.2 == "ScaleUpLimit"),
            "{c:?}"
        );
        // A lower recommendation within five minutes is held at the highest recent one.
        c.clear();
        // The highest recent recommendation (9), limited by the scale-up rate from 4 (8).
        assert_eq!(
            normalize(
                &mut mem,
                &h,
                4,
                2,
                1,
                10,
                &s,
                now + Duration::from_secs(30),
                &mut c
            ),
            8
        );
        assert!(c.iter().any(|x| x.2 == "ScaleDownStabilized"), "{c:?}");
    }

    #[test]
    fn behavior_policies_and_windows() {
        let s = Settings::default();
        let h = hpa(Some(json!({
            "scaleUp": {"stabilizationWindowSeconds": 0, "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]},
            "scaleDown": {"stabilizationWindowSeconds": 10, "policies": [{"type": "Percent", "value": 50, "periodSeconds": 60}]},
        })));
        let mut mem = Memory::default();
        let t0 = Instant::now();
        let mut c = Vec::new();
        // One pod per minute.
        assert_eq!(normalize(&mut mem, &h, 2, 8, 1, 10, &s, t0, &mut c), 3);
        store_scale_event(&mut mem, &h, 2, 3, &s, t0);
        c.clear();
        assert_eq!(
            normalize(
                &mut mem,
                &h,
                3,
                8,
                1,
                10,
                &s,
                t0 + Duration::from_secs(5),
                &mut c
            ),
            3
        );
        assert!(
            c.iter().any(|x| x.2 == "ScaleUpLimit" && x.1 == "True"),
            "{c:?}"
        );
        // Scaling down waits out the 10 s window of higher recommendations…
        c.clear();
        assert_eq!(
            normalize(
                &mut mem,
                &h,
                3,
                1,
                1,
                10,
                &s,
                t0 + Duration::from_secs(8),
                &mut c
            ),
            3
        );
        // …then halves at most per minute, from what there was at the period's start
        // (8 less the one added within it).
        c.clear();
        assert_eq!(
            normalize(
                &mut mem,
                &h,
                8,
                1,
                1,
                10,
                &s,
                t0 + Duration::from_secs(30),
                &mut c
            ),
            3
        );
        assert!(c.iter().any(|x| x.2 == "ScaleDownLimit"), "{c:?}");
        // selectPolicy Disabled: never up.
        let h = hpa(Some(json!({"scaleUp": {"selectPolicy": "Disabled"}})));
        let mut mem = Memory::default();
        c.clear();
        assert_eq!(normalize(&mut mem, &h, 2, 8, 1, 10, &s, t0, &mut c), 2);
    }
}
