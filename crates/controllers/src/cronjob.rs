//! The CronJob controller, as Kubernetes' (batch/v1): at each time the schedule names (in
//! `timeZone`), a Job from `jobTemplate` named `<cronjob>-<minutes since the epoch>`, with
//! `concurrencyPolicy` (Allow, Forbid, Replace), `startingDeadlineSeconds` (a start later
//! than that is skipped), `suspend`, and the history limits for finished Jobs. Status has
//! the active Jobs, `lastScheduleTime` and `lastSuccessfulTime`. A schedule missed while the
//! server was down is started late (once) within the deadline, as Kubernetes does.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

use crate::owned::{self, View};

const NAME: &str = "cronjob-controller";

/// Runs the controller until the process ends.
pub async fn run(client: kube::Client) {
    owned::run::<CronJob, Job, _>(client, "cronjob", false, CronJobs).await
}

struct CronJobs;

fn finished(j: &Job) -> Option<&str> {
    j.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| c.type_.as_str())
}

fn scheduled_at(j: &Job) -> Option<Timestamp> {
    j.metadata
        .annotations
        .as_ref()?
        .get("batch.kubernetes.io/cronjob-scheduled-timestamp")?
        .parse()
        .ok()
}

fn job_ref(j: &Job) -> Value {
    json!({"kind": "Job", "apiVersion": "batch/v1", "namespace": j.metadata.namespace,
        "name": j.metadata.name, "uid": j.metadata.uid, "resourceVersion": j.metadata.resource_version})
}

impl owned::Reconciler<CronJob, Job> for CronJobs {
    async fn reconcile(
        &self,
        client: &kube::Client,
        cj: &CronJob,
        view: View<'_, Job>,
        changed: &mut HashSet<String>,
    ) -> anyhow::Result<Option<Duration>> {
        if cj.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        let ns = cj.metadata.namespace.clone().unwrap_or_default();
        let name = cj.metadata.name.clone().unwrap_or_default();
        let involved = json!({"kind": "CronJob", "apiVersion": "batch/v1", "namespace": ns,
            "name": name, "uid": cj.metadata.uid});
        let spec = cj.spec.clone().unwrap_or_default();
        let jobs_api: kube::Api<Job> = kube::Api::namespaced(client.clone(), &ns);
        let api: kube::Api<CronJob> = kube::Api::namespaced(client.clone(), &ns);
        let old_status = serde_json::to_value(&cj.status).unwrap_or(Value::Null);
        let mut status = if old_status.is_object() {
            old_status.clone()
        } else {
            json!({})
        };

        let mut jobs: Vec<Arc<Job>> = view.pods;
        jobs.sort_by_key(|j| {
            scheduled_at(j).or_else(|| j.metadata.creation_timestamp.as_ref().map(|t| t.0))
        });
        // Finished Jobs: the last success, then the history limits.
        let mut active: Vec<Arc<Job>> = Vec::new();
        let mut succeeded: Vec<Arc<Job>> = Vec::new();
        let mut failed: Vec<Arc<Job>> = Vec::new();
        let was_active: HashSet<String> = cj
            .status
            .as_ref()
            .and_then(|s| s.active.as_ref())
            .map(|a| a.iter().filter_map(|r| r.uid.clone()).collect())
            .unwrap_or_default();
        for j in &jobs {
            if j.metadata.deletion_timestamp.is_some() {
                continue;
            }
            match finished(j) {
                Some(kind) => {
                    let jn = j.metadata.name.clone().unwrap_or_default();
                    if was_active.contains(j.metadata.uid.as_deref().unwrap_or_default()) {
                        let st = if kind == "Complete" {
                            "Complete"
                        } else {
                            "Failed"
                        };
                        crate::event(
                            client,
                            NAME,
                            involved.clone(),
                            "Normal",
                            "SawCompletedJob",
                            &format!("Saw completed job: {jn}, status: {st}"),
                        )
                        .await;
                    }
                    if kind == "Complete" {
                        if let Some(t) = j.status.as_ref().and_then(|s| s.completion_time.as_ref())
                        {
                            let cur = status["lastSuccessfulTime"]
                                .as_str()
                                .and_then(|s| s.parse::<Timestamp>().ok());
                            if cur.is_none_or(|c| c < t.0) {
                                status["lastSuccessfulTime"] =
                                    json!(t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
                            }
                        }
                        succeeded.push(j.clone());
                    } else {
                        failed.push(j.clone());
                    }
                }
                None => active.push(j.clone()),
            }
        }
        let report = owned::Reporter {
            component: NAME,
            involved: &involved,
        };
        for (list, limit) in [
            (&succeeded, spec.successful_jobs_history_limit.unwrap_or(3)),
            (&failed, spec.failed_jobs_history_limit.unwrap_or(1)),
        ] {
            let excess = list.len().saturating_sub(limit.max(0) as usize);
            for j in list.iter().take(excess) {
                delete_job(client, &report, j, changed).await?;
            }
        }

        let tz = cron::zone(spec.time_zone.as_deref()).map_err(anyhow::Error::msg)?;
        let sched = cron::Schedule::parse(&spec.schedule).map_err(anyhow::Error::msg)?;
        let now = Timestamp::now();
        let since: Timestamp = status["lastScheduleTime"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .or_else(|| cj.metadata.creation_timestamp.as_ref().map(|t| t.0))
            .unwrap_or(now);
        // The most recent time due (and how many were missed).
        let mut due: Option<Timestamp> = None;
        let mut missed = 0;
        let mut t = since;
        while let Some(n) = sched.next(t, &tz) {
            if n > now {
                break;
            }
            due = Some(n);
            missed += 1;
            t = n;
            if missed > 100 {
                // As Kubernetes: too many missed; only the latest is considered.
                crate::event(client, NAME, involved.clone(), "Warning", "TooManyMissedTimes",
                    "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew").await;
                let mut last = n;
                while let Some(n2) = sched.next(last, &tz) {
                    if n2 > now {
                        break;
                    }
                    last = n2;
                }
                due = Some(last);
                break;
            }
        }
        let next = sched.next(due.unwrap_or(since).max(now), &tz);
        let requeue = next.map(|n| {
            let d = n.duration_since(now).as_secs_f64().max(0.0);
            Duration::from_secs_f64(d) + Duration::from_millis(100)
        });

        let mut active_refs: Vec<Value> = active.iter().map(|j| job_ref(j)).collect();
        if let (Some(at), false) = (due, spec.suspend.unwrap_or(false)) {
            let late = now.duration_since(at).as_secs_f64();
            let too_late = spec
                .starting_deadline_seconds
                .is_some_and(|d| late > d as f64);
            if too_late {
                crate::event(
                    client,
                    NAME,
                    involved.clone(),
                    "Warning",
                    "MissSchedule",
                    &format!(
                        "Missed scheduled time to start a job: {}",
                        at.strftime("%Y-%m-%dT%H:%M:%SZ")
                    ),
                )
                .await;
                status["lastScheduleTime"] = json!(at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
            } else {
                let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
                let mut go = true;
                if !active.is_empty() && policy == "Forbid" {
                    // Skipped, and not retried for this time.
                    crate::event(client, NAME, involved.clone(), "Normal", "JobAlreadyActive",
                        "Not starting job because prior execution is running and concurrency policy is Forbid").await;
                    go = false;
                    status["lastScheduleTime"] =
                        json!(at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
                }
                if go && policy == "Replace" {
                    for j in &active {
                        delete_job(client, &report, j, changed).await?;
                    }
                    active_refs.clear();
                }
                if go {
                    let job = job_for(cj, at, &tz)?;
                    let jn = job.metadata.name.clone().unwrap_or_default();
                    match jobs_api.create(&PostParams::default(), &job).await {
                        Ok(made) => {
                            changed.insert(format!("{ns}/{jn}"));
                            active_refs.push(job_ref(&made));
                            crate::event(
                                client,
                                NAME,
                                involved.clone(),
                                "Normal",
                                "SuccessfulCreate",
                                &format!("Created job {jn}"),
                            )
                            .await;
                        }
                        // Made before a restart: it is there already.
                        Err(kube::Error::Api(e)) if e.code == 409 => {}
                        Err(e) => {
                            crate::event(
                                client,
                                NAME,
                                involved.clone(),
                                "Warning",
                                "FailedCreate",
                                &format!("Error creating job: {e}"),
                            )
                            .await;
                            return Err(e.into());
                        }
                    }
                    status["lastScheduleTime"] =
                        json!(at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
                }
            }
        }
        if active_refs.is_empty() {
            status.as_object_mut().map(|o| o.remove("active"));
        } else {
            status["active"] = json!(active_refs);
        }
        if status != old_status && !(status == json!({}) && old_status.is_null()) {
            // A merge patch drops a field only when told so (null).
            let mut patch = status.clone();
            if patch.get("active").is_none() {
                patch["active"] = Value::Null;
            }
            api.patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": patch})),
            )
            .await?;
        }
        Ok(requeue)
    }
}

/// Deletes a Job of the CronJob (its pods in the background), recorded in `changed` and
/// as a `SuccessfulDelete` event "Deleted job NAME", as Kubernetes words it.
async fn delete_job(
    client: &kube::Client,
    r: &owned::Reporter<'_>,
    j: &Job,
    changed: &mut HashSet<String>,
) -> anyhow::Result<()> {
    let ns = j.metadata.namespace.clone().unwrap_or_default();
    let jn = j.metadata.name.clone().unwrap_or_default();
    let api: kube::Api<Job> = kube::Api::namespaced(client.clone(), &ns);
    match api.delete(&jn, &DeleteParams::background()).await {
        Ok(_) => {
            changed.insert(format!("{ns}/{jn}"));
            let msg = format!("Deleted job {jn}");
            crate::event(
                client,
                r.component,
                r.involved.clone(),
                "Normal",
                "SuccessfulDelete",
                &msg,
            )
            .await;
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The Job for the time `at`.
fn job_for(cj: &CronJob, at: Timestamp, tz: &jiff::tz::TimeZone) -> anyhow::Result<Job> {
    let name = cj.metadata.name.clone().unwrap_or_default();
    let v = serde_json::to_value(cj)?;
    let tmpl = v
        .pointer("/spec/jobTemplate")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let mut meta = tmpl.get("metadata").cloned().unwrap_or_else(|| json!({}));
    meta["name"] = json!(format!("{name}-{}", at.as_second() / 60));
    meta["namespace"] = json!(cj.metadata.namespace);
    meta["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"] = json!(at
        .to_zoned(tz.clone())
        .strftime("%Y-%m-%dT%H:%M:%S%:z")
        .to_string());
    meta["ownerReferences"] = json!([owned::owner_ref("batch/v1", "CronJob", &cj.metadata)]);
    Ok(serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": meta,
        "spec": tmpl.get("spec").cloned().unwrap_or_else(|| json!({})),
    }))?)
}
