//! The Job controller, as Kubernetes' (batch/v1): pods run to completion, `parallelism` at a
//! time, until `completions` succeed (NonIndexed), every index in `0..completions` has a
//! pod that succeeded (Indexed; pods get their index in an annotation, a label, the
//! `JOB_COMPLETION_INDEX` variable and their hostname), or, without `completions`, one pod
//! succeeded and none is left running (a work queue).
//!
//! Failures are counted towards `backoffLimit` (container restarts too, for
//! `restartPolicy: OnFailure`); replacements wait 10 s, doubling per failure, up to 6 min.
//! `podFailurePolicy` rules (FailJob, Ignore, Count, FailIndex on exit codes or pod
//! conditions), `activeDeadlineSeconds`, `suspend` and `ttlSecondsAfterFinished` are
//! honoured.
//!
//! Pods are tracked with the `batch.kubernetes.io/job-tracking` finalizer as Kubernetes
//! does: a finished pod's UID goes into `status.uncountedTerminatedPods`, then its finalizer
//! is removed, then it moves into `succeeded`/`failed`, so a pod is counted once even if
//! the server restarts or the pod is deleted in between.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Patch, PatchParams, PropagationPolicy};
use serde_json::{json, Value};

use crate::owned::{self, View};

const NAME: &str = "job-controller";
pub const TRACKING: &str = "batch.kubernetes.io/job-tracking";
const INDEX: &str = "batch.kubernetes.io/job-completion-index";
const BACKOFF_BASE: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(360);

/// Runs the controller until the process ends.
pub async fn run(client: kube::Client) {
    owned::run::<Job, Pod, _>(client, "job", false, Jobs::default()).await
}

#[derive(Default)]
struct Jobs {
    /// When each Job (by UID) last had a pod fail, and how many had failed then.
    last_failure: Mutex<HashMap<String, (Instant, i64)>>,
}

fn has_tracking(p: &Pod) -> bool {
    p.metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|x| x == TRACKING))
}

fn index_of(p: &Pod) -> Option<i64> {
    p.metadata.annotations.as_ref()?.get(INDEX)?.parse().ok()
}

/// Parses "0-2,5" into a set of indexes.
pub fn parse_indexes(s: &str) -> BTreeSet<i64> {
    let mut out = BTreeSet::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i64>(), b.parse::<i64>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(a) = part.parse() {
                    out.insert(a);
                }
            }
        }
    }
    out
}

/// Formats indexes as Kubernetes does: "0-2,5".
pub fn format_indexes(s: &BTreeSet<i64>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut it = s.iter().peekable();
    while let Some(&a) = it.next() {
        let mut b = a;
        while it.peek() == Some(&&(b + 1)) {
            b += 1;
            it.next();
        }
        parts.push(if a == b {
            a.to_string()
        } else {
            format!("{a}-{b}")
        });
    }
    parts.join(",")
}

/// What a podFailurePolicy rule says about a failed pod.
#[derive(Debug, PartialEq)]
enum Verdict {
    Count,
    Ignore,
    FailJob(String),
    FailIndex,
}

fn failure_verdict(job: &Value, p: &Pod) -> Verdict {
    let Some(rules) = job
        .pointer("/spec/podFailurePolicy/rules")
        .and_then(Value::as_array)
    else {
        return Verdict::Count;
    };
    let pod = serde_json::to_value(p).unwrap_or_default();
    let ns = p.metadata.namespace.clone().unwrap_or_default();
    let pname = p.metadata.name.clone().unwrap_or_default();
    for (i, r) in rules.iter().enumerate() {
        let action = r.get("action").and_then(Value::as_str).unwrap_or("");
        let mut hit: Option<String> = None;
        if let Some(on) = r.get("onExitCodes") {
            let want_ctr = on.get("containerName").and_then(Value::as_str);
            let op = on.get("operator").and_then(Value::as_str).unwrap_or("In");
            let vals: Vec<i64> = on
                .get("values")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_i64).collect())
                .unwrap_or_default();
            let statuses = pod
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for c in statuses {
                let name = c.get("name").and_then(Value::as_str).unwrap_or("");
                if want_ctr.is_some_and(|w| w != name) {
                    continue;
                }
                let Some(code) = c
                    .pointer("/state/terminated/exitCode")
                    .and_then(Value::as_i64)
                else {
                    continue;
                };
                let matched = match op {
                    "In" => vals.contains(&code),
                    _ => code != 0 && !vals.contains(&code),
                };
                if matched {
                    hit = Some(format!(
                        "Container {name} for pod {ns}/{pname} failed with exit code {code} matching {action} rule at index {i}"
                    ));
                    break;
                }
            }
        }
        if let Some(conds) = r.get("onPodConditions").and_then(Value::as_array) {
            for want in conds {
                let t = want.get("type").and_then(Value::as_str).unwrap_or("");
                let st = want.get("status").and_then(Value::as_str).unwrap_or("True");
                let has = pod
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .is_some_and(|cs| {
                        cs.iter().any(|c| {
                            c.get("type").and_then(Value::as_str) == Some(t)
                                && c.get("status").and_then(Value::as_str) == Some(st)
                        })
                    });
                if has {
                    hit = Some(format!(
                        "Pod {ns}/{pname} has condition {t} matching {action} rule at index {i}"
                    ));
                }
            }
        }
        if let Some(msg) = hit {
            return match action {
                "FailJob" => Verdict::FailJob(msg),
                "Ignore" => Verdict::Ignore,
                "FailIndex" => Verdict::FailIndex,
                _ => Verdict::Count,
            };
        }
    }
    Verdict::Count
}

fn condition(job: &Value, t: &str) -> bool {
    job.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some(t)
                    && c.get("status").and_then(Value::as_str) == Some("True")
            })
        })
}

fn set_condition(status: &mut Value, t: &str, st: &str, reason: &str, message: &str) {
    let now = crate::now();
    let list = status
        .as_object_mut()
        .map(|o| o.entry("conditions").or_insert_with(|| json!([])))
        .and_then(Value::as_array_mut);
    let Some(list) = list else {
        return;
    };
    if let Some(c) = list
        .iter_mut()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(t))
    {
        let same = c.get("status").and_then(Value::as_str) == Some(st)
            && c.get("reason").and_then(Value::as_str) == Some(reason)
            && c.get("message").and_then(Value::as_str) == Some(message);
        if same {
            return;
        }
        if c.get("status").and_then(Value::as_str) != Some(st) {
            c["lastTransitionTime"] = json!(now);
        }
        c["status"] = json!(st);
        c["reason"] = json!(reason);
        c["message"] = json!(message);
        c["lastProbeTime"] = json!(now);
    } else {
        list.push(
            json!({"type": t, "status": st, "reason": reason, "message": message,
            "lastProbeTime": now, "lastTransitionTime": now}),
        );
    }
}

fn secs_since(t: Option<&str>) -> Option<i64> {
    let t = timefmt::parse_rfc3339(t?)?;
    Some(((timefmt::now_nanos() - t) / 1_000_000_000) as i64)
}

async fn remove_finalizer(client: &kube::Client, p: &Pod) -> anyhow::Result<()> {
    if !has_tracking(p) {
        return Ok(());
    }
    let api: kube::Api<Pod> = kube::Api::namespaced(
        client.clone(),
        p.metadata.namespace.as_deref().unwrap_or_default(),
    );
    let name = p.metadata.name.as_deref().unwrap_or_default();
    // The agent updates pods all the time: read, then write with that version, retried.
    let mut current = p.clone();
    for _ in 0..5 {
        if !has_tracking(&current) || current.metadata.uid != p.metadata.uid {
            return Ok(());
        }
        let rest: Vec<&String> = current
            .metadata
            .finalizers
            .iter()
            .flatten()
            .filter(|f| *f != TRACKING)
            .collect();
        let patch = json!({"metadata": {"finalizers": rest, "resourceVersion": current.metadata.resource_version}});
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => match api.get_opt(name).await? {
                Some(fresh) => current = fresh,
                None => return Ok(()),
            },
            Err(e) => return Err(e.into()),
        }
    }
    Err(anyhow::anyhow!(
        "pod {name} kept changing; its finalizer stays for now"
    ))
}

impl owned::Reconciler<Job> for Jobs {
    async fn reconcile(
        &self,
        client: &kube::Client,
        job: &Job,
        view: View<'_>,
        changed: &mut HashSet<String>,
    ) -> anyhow::Result<Option<Duration>> {
        let v = serde_json::to_value(job)?;
        let ns = job.metadata.namespace.clone().unwrap_or_default();
        let name = job.metadata.name.clone().unwrap_or_default();
        let uid = job.metadata.uid.clone().unwrap_or_default();
        let api: kube::Api<Job> = kube::Api::namespaced(client.clone(), &ns);
        let involved = json!({"kind": "Job", "apiVersion": "batch/v1", "namespace": ns, "name": name, "uid": uid});
        let pods = view.pods;
        if job.metadata.deletion_timestamp.is_some() {
            for p in &pods {
                remove_finalizer(client, p).await?;
            }
            return Ok(None);
        }
        let finished = condition(&v, "Complete") || condition(&v, "Failed");
        if finished {
            // Pods of a finished Job keep no finalizer; its TTL runs from completion.
            for p in &pods {
                remove_finalizer(client, p).await?;
            }
            let Some(ttl) = v
                .pointer("/spec/ttlSecondsAfterFinished")
                .and_then(Value::as_i64)
            else {
                return Ok(None);
            };
            let done_at = v
                .pointer("/status/completionTime")
                .and_then(Value::as_str)
                .or_else(|| {
                    v.pointer("/status/conditions")
                        .and_then(Value::as_array)
                        .and_then(|cs| {
                            cs.iter()
                                .filter_map(|c| c.get("lastTransitionTime")?.as_str())
                                .max()
                        })
                });
            let age = secs_since(done_at).unwrap_or(0);
            if age >= ttl {
                let dp = DeleteParams {
                    propagation_policy: Some(PropagationPolicy::Background),
                    preconditions: Some(kube::api::Preconditions {
                        uid: Some(uid.clone()),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                match api.delete(&name, &dp).await {
                    Err(kube::Error::Api(e)) if e.code != 404 && e.code != 409 => {
                        return Err(kube::Error::Api(e).into())
                    }
                    Err(kube::Error::Api(_)) | Ok(_) => {}
                    Err(e) => return Err(e.into()),
                }
                return Ok(None);
            }
            return Ok(Some(Duration::from_secs((ttl - age).max(1) as u64)));
        }

        let spec = &v["spec"];
        let parallelism = spec["parallelism"].as_i64().unwrap_or(1).max(0);
        let completions = spec["completions"].as_i64();
        let indexed = spec["completionMode"].as_str() == Some("Indexed");
        let backoff_limit = spec["backoffLimit"].as_i64().unwrap_or(6);
        let suspend = spec["suspend"].as_bool().unwrap_or(false);
        let mut status = v.get("status").cloned().unwrap_or_else(|| json!({}));
        if !status.is_object() {
            status = json!({});
        }
        let old_status = status.clone();

        // Counting: uncounted pods whose finalizer is gone move into the counts.
        let uids_with_finalizer: HashSet<&str> = pods
            .iter()
            .filter(|p| has_tracking(p))
            .filter_map(|p| p.metadata.uid.as_deref())
            .collect();
        let mut uncounted_s: Vec<String> = status
            .pointer("/uncountedTerminatedPods/succeeded")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let mut uncounted_f: Vec<String> = status
            .pointer("/uncountedTerminatedPods/failed")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let mut succeeded = status["succeeded"].as_i64().unwrap_or(0);
        let mut failed = status["failed"].as_i64().unwrap_or(0);
        let before = uncounted_s.len();
        uncounted_s.retain(|u| uids_with_finalizer.contains(u.as_str()));
        succeeded += (before - uncounted_s.len()) as i64;
        let before = uncounted_f.len();
        uncounted_f.retain(|u| uids_with_finalizer.contains(u.as_str()));
        failed += (before - uncounted_f.len()) as i64;

        let mut completed: BTreeSet<i64> =
            parse_indexes(status["completedIndexes"].as_str().unwrap_or(""));
        let mut failed_indexes: BTreeSet<i64> =
            parse_indexes(status["failedIndexes"].as_str().unwrap_or(""));
        // A failure decided earlier (FailureTarget) stands while the pods are finished.
        let mut fail_job: Option<(String, String)> = v
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|cs| {
                cs.iter().find(|c| {
                    c.get("type").and_then(Value::as_str) == Some("FailureTarget")
                        && c.get("status").and_then(Value::as_str) == Some("True")
                })
            })
            .map(|c| {
                let f = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                (f("reason"), f("message"))
            });
        let mut to_release: Vec<&Arc<Pod>> = Vec::new();
        let mut new_failures = 0;
        for p in &pods {
            let puid = p.metadata.uid.clone().unwrap_or_default();
            let terminal = matches!(owned::phase(p), "Succeeded" | "Failed");
            let gone = p.metadata.deletion_timestamp.is_some();
            if !has_tracking(p) || !(terminal || gone) {
                continue;
            }
            if uncounted_s.contains(&puid) || uncounted_f.contains(&puid) {
                to_release.push(p);
                continue;
            }
            if owned::phase(p) == "Succeeded" {
                if let Some(i) = index_of(p).filter(|_| indexed) {
                    completed.insert(i);
                }
                uncounted_s.push(puid);
            } else {
                match failure_verdict(&v, p) {
                    Verdict::Ignore => {
                        // Not counted at all: its finalizer simply goes.
                        to_release.push(p);
                        continue;
                    }
                    Verdict::FailJob(msg) => {
                        fail_job.get_or_insert(("PodFailurePolicy".into(), msg));
                    }
                    Verdict::FailIndex => {
                        if let Some(i) = index_of(p) {
                            failed_indexes.insert(i);
                        }
                    }
                    Verdict::Count => {}
                }
                new_failures += 1;
                uncounted_f.push(puid);
            }
            to_release.push(p);
        }
        if new_failures > 0 {
            let mut lf = self.last_failure.lock().unwrap_or_else(|e| e.into_inner());
            let n = lf.get(&uid).map_or(0, |x| x.1) + new_failures;
            lf.insert(uid.clone(), (Instant::now(), n));
        }
        let succeeded_total = succeeded + uncounted_s.len() as i64;
        let restarts: i64 = if spec
            .pointer("/template/spec/restartPolicy")
            .and_then(Value::as_str)
            == Some("OnFailure")
        {
            pods.iter()
                .flat_map(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.container_statuses.clone())
                        .unwrap_or_default()
                })
                .map(|c| i64::from(c.restart_count))
                .sum()
        } else {
            0
        };
        let failed_total = failed + uncounted_f.len() as i64 + restarts;

        let active: Vec<&Arc<Pod>> = pods
            .iter()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && !matches!(owned::phase(p), "Succeeded" | "Failed")
            })
            .collect();
        let now = crate::now();
        if status.get("startTime").is_none() && !suspend {
            status["startTime"] = json!(now);
        }
        // Why the Job fails, if it does.
        if fail_job.is_none() && failed_total > backoff_limit {
            fail_job = Some((
                "BackoffLimitExceeded".into(),
                "Job has reached the specified backoff limit".into(),
            ));
        }
        if fail_job.is_none() && indexed && !failed_indexes.is_empty() {
            fail_job = Some(("FailedIndexes".into(), "Job has failed indexes".into()));
        }
        let mut requeue: Option<Duration> = None;
        if let (None, Some(ads)) = (&fail_job, spec["activeDeadlineSeconds"].as_i64()) {
            if !suspend {
                let ran = secs_since(status["startTime"].as_str()).unwrap_or(0);
                if ran >= ads {
                    fail_job = Some((
                        "DeadlineExceeded".into(),
                        "Job was active longer than specified deadline".into(),
                    ));
                } else {
                    requeue = Some(Duration::from_secs((ads - ran) as u64));
                }
            }
        }
        let complete = fail_job.is_none()
            && match (indexed, completions) {
                (true, Some(c)) => (0..c).all(|i| completed.contains(&i)),
                (false, Some(c)) => succeeded_total >= c,
                (_, None) => succeeded_total > 0 && active.is_empty(),
            };

        // Pods to stop: all when the Job is finished or suspended.
        let mut stop: Vec<&Arc<Pod>> = Vec::new();
        if fail_job.is_some() || complete || suspend {
            stop.extend(active.iter().copied());
        }
        // Pods to start.
        let mut starts: Vec<Option<i64>> = Vec::new();
        if fail_job.is_none() && !complete && !suspend {
            let wait = {
                let lf = self.last_failure.lock().unwrap_or_else(|e| e.into_inner());
                lf.get(&uid).and_then(|(at, n)| {
                    let d = BACKOFF_BASE
                        .saturating_mul(1u32 << (n - 1).clamp(0, 10) as u32)
                        .min(BACKOFF_MAX);
                    d.checked_sub(at.elapsed())
                })
            };
            if let Some(w) = wait {
                requeue = Some(requeue.map_or(w, |r| r.min(w)));
            } else if indexed {
                let c = completions.unwrap_or(0);
                let running: HashSet<i64> = active.iter().filter_map(|p| index_of(p)).collect();
                let room = (parallelism - active.len() as i64).max(0);
                starts.extend(
                    (0..c)
                        .filter(|i| {
                            !completed.contains(i)
                                && !failed_indexes.contains(i)
                                && !running.contains(i)
                        })
                        .take(room as usize)
                        .map(Some),
                );
            } else {
                let want = match completions {
                    Some(c) => parallelism.min(c - succeeded_total),
                    // A work queue: once one pod succeeded, no new ones.
                    None if succeeded_total > 0 => 0,
                    None => parallelism,
                };
                let n = (want - active.len() as i64).max(0);
                starts.extend(std::iter::repeat_n(None, n as usize));
                if active.len() as i64 > want.max(0) {
                    // Parallelism lowered: the newest go.
                    let mut extra: Vec<&Arc<Pod>> = active.clone();
                    extra.sort_by_key(|p| {
                        std::cmp::Reverse(p.metadata.creation_timestamp.clone().map(|t| t.0))
                    });
                    stop.extend(
                        extra
                            .into_iter()
                            .take((active.len() as i64 - want.max(0)) as usize),
                    );
                }
            }
        }

        // Status first (the uncounted pods recorded), then finalizers, then pods.
        status["uncountedTerminatedPods"] =
            json!({"succeeded": uncounted_s, "failed": uncounted_f});
        status["succeeded"] = json!(succeeded);
        status["failed"] = json!(failed);
        let still_active = active.len() as i64 - stop.len() as i64 + starts.len() as i64;
        status["active"] = json!(still_active.max(0));
        status["ready"] = json!(active.iter().filter(|p| owned::is_ready(p)).count());
        status["terminating"] = json!(pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_some()
                && !matches!(owned::phase(p), "Succeeded" | "Failed"))
            .count());
        if indexed {
            status["completedIndexes"] = json!(format_indexes(&completed));
            if !failed_indexes.is_empty() {
                status["failedIndexes"] = json!(format_indexes(&failed_indexes));
            }
        }
        let mut event: Option<(&str, &str, String)> = None;
        if suspend && !condition(&v, "Suspended") {
            set_condition(
                &mut status,
                "Suspended",
                "True",
                "JobSuspended",
                "Job suspended",
            );
            status.as_object_mut().map(|o| o.remove("startTime"));
            event = Some(("Normal", "Suspended", "Job suspended".into()));
        } else if !suspend && condition(&v, "Suspended") {
            set_condition(
                &mut status,
                "Suspended",
                "False",
                "JobResumed",
                "Job resumed",
            );
            status["startTime"] = json!(now);
            event = Some(("Normal", "Resumed", "Job resumed".into()));
        }
        // Finished only once every pod is counted (nothing left uncounted).
        let all_counted = uncounted_s.is_empty() && uncounted_f.is_empty() && to_release.is_empty();
        if let Some((reason, msg)) = &fail_job {
            if all_counted && stop.is_empty() {
                set_condition(&mut status, "FailureTarget", "True", reason, msg);
                set_condition(&mut status, "Failed", "True", reason, msg);
                event = Some(("Warning", reason.as_str(), msg.clone()));
            } else {
                set_condition(&mut status, "FailureTarget", "True", reason, msg);
                requeue = Some(Duration::from_millis(500));
            }
        } else if complete {
            if all_counted && stop.is_empty() {
                set_condition(
                    &mut status,
                    "SuccessCriteriaMet",
                    "True",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                );
                set_condition(
                    &mut status,
                    "Complete",
                    "True",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                );
                status["completionTime"] = json!(now);
                event = Some(("Normal", "Completed", "Job completed".into()));
            } else {
                requeue = Some(Duration::from_millis(500));
            }
        }
        if status != old_status {
            api.patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": status})),
            )
            .await?;
        }
        if let Some((typ, reason, msg)) = event {
            crate::event(client, NAME, involved.clone(), typ, reason, &msg).await;
        }
        for p in &to_release {
            remove_finalizer(client, p).await?;
        }
        if !to_release.is_empty() {
            // The uncounted pods are counted on the next pass.
            requeue = Some(Duration::from_millis(200));
        }
        let report = owned::Reporter {
            component: NAME,
            involved: &involved,
        };
        for p in stop {
            // Stopped by the controller: not a failure, so not tracked.
            remove_finalizer(client, p).await?;
            owned::delete_reported(client, &report, p, changed).await?;
        }
        for idx in starts {
            let pod = pod_for(&v, &name, idx);
            let owner = owned::owner_ref("batch/v1", "Job", &job.metadata);
            owned::create_reported(client, &report, &ns, pod, owner, changed).await?;
        }
        Ok(requeue)
    }
}

/// A pod from the Job's template (for index `idx` in Indexed mode).
fn pod_for(job: &Value, name: &str, idx: Option<i64>) -> Value {
    let (mut meta, mut spec) = owned::from_template(job);
    meta["finalizers"] = json!([TRACKING]);
    match idx {
        Some(i) => {
            meta["generateName"] = json!(format!("{name}-{i}-"));
            meta["annotations"][INDEX] = json!(i.to_string());
            meta["labels"][INDEX] = json!(i.to_string());
            if spec.get("hostname").is_none() {
                spec["hostname"] = json!(format!("{name}-{i}"));
            }
            for list in ["containers", "initContainers"] {
                if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
                    for c in cs {
                        let env = c
                            .as_object_mut()
                            .map(|o| o.entry("env").or_insert_with(|| json!([])));
                        if let Some(Value::Array(env)) = env {
                            env.push(
                                json!({"name": "JOB_COMPLETION_INDEX", "value": i.to_string()}),
                            );
                        }
                    }
                }
            }
        }
        None => meta["generateName"] = json!(format!("{name}-")),
    }
    json!({"metadata": meta, "spec": spec})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_round_trip_in_kubernetes_form() {
        let s = parse_indexes("0-2,5,7-8");
        assert_eq!(s.iter().copied().collect::<Vec<_>>(), [0, 1, 2, 5, 7, 8]);
        assert_eq!(format_indexes(&s), "0-2,5,7-8");
        assert_eq!(format_indexes(&BTreeSet::new()), "");
    }

    #[test]
    fn pod_failure_policy_rules_match_exit_codes() {
        let job = json!({"spec": {"podFailurePolicy": {"rules": [
            {"action": "Ignore", "onExitCodes": {"operator": "In", "values": [3]}},
            {"action": "FailJob", "onExitCodes": {"containerName": "c", "operator": "In", "values": [42]}},
        ]}}});
        let pod = |code: i64| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "n"},
                "status": {"phase": "Failed", "containerStatuses": [{"name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"terminated": {"exitCode": code}}}]}}))
            .unwrap()
        };
        assert_eq!(failure_verdict(&job, &pod(3)), Verdict::Ignore);
        assert_eq!(
            failure_verdict(&job, &pod(42)),
            Verdict::FailJob(
                "Container c for pod n/p failed with exit code 42 matching FailJob rule at index 1"
                    .into()
            )
        );
        assert_eq!(failure_verdict(&job, &pod(1)), Verdict::Count);
    }
}
