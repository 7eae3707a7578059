//! Leader election through a Lease, as client-go's leaderelection does it, so that when
//! several servers share a store only one runs the scheduler and the controllers.
//!
//! The Lease is `kube-system/berth-controllers`. A candidate takes it when it is free or its
//! holder has not renewed it for `leaseDurationSeconds` — measured on this server's own
//! clock from when it *saw* the last change, so clocks of other machines do not matter —
//! with a compare-and-swap on its resourceVersion, so two candidates cannot both win. The
//! leader renews every [`RETRY`]; if it cannot renew within [`RENEW_DEADLINE`], it stops
//! its controllers before anyone else may take over (the deadline is shorter than the
//! lease), then becomes a candidate again. A server's identity is stable across its
//! restarts, so a restarted server takes its own lease back at once.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::PostParams;
use serde_json::json;

pub const NAMESPACE: &str = "kube-system";
pub const NAME: &str = "berth-controllers";
/// As kube-controller-manager's defaults.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
pub const RETRY: Duration = Duration::from_secs(2);

fn micro_now() -> String {
    let n = timefmt::now_nanos();
    let s = timefmt::rfc3339((n / 1_000_000_000) as i64, (n % 1_000_000_000) as u32);
    format!("{}.{}Z", &s[..19], &s[20..26])
}

/// One attempt to take or renew the lease; `Ok(true)` when this server holds it now.
async fn try_acquire(
    api: &kube::Api<Lease>,
    me: &str,
    observed: &mut Option<(String, Instant)>,
) -> anyhow::Result<bool> {
    let now = micro_now();
    let spec = |transitions: i32, acquired: Option<String>| {
        json!({"holderIdentity": me, "leaseDurationSeconds": LEASE_DURATION.as_secs(),
            "acquireTime": acquired.unwrap_or_else(|| now.clone()), "renewTime": now,
            "leaseTransitions": transitions})
    };
    let Some(cur) = api.get_opt(NAME).await? else {
        let l: Lease = serde_json::from_value(json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": NAME, "namespace": NAMESPACE},
            "spec": spec(0, None),
        }))?;
        return match api.create(&PostParams::default(), &l).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        };
    };
    let s = cur.spec.clone().unwrap_or_default();
    let holder = s.holder_identity.clone().unwrap_or_default();
    let record = format!(
        "{holder}/{}",
        s.renew_time
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default()
    );
    // When did we last see the record change?
    let seen_at = match observed {
        Some((r, at)) if *r == record => *at,
        _ => {
            *observed = Some((record, Instant::now()));
            Instant::now()
        }
    };
    let dur = Duration::from_secs(s.lease_duration_seconds.unwrap_or(15).max(1) as u64);
    let mine = holder == me;
    if !mine && !holder.is_empty() && seen_at.elapsed() < dur {
        return Ok(false);
    }
    let transitions = s.lease_transitions.unwrap_or(0) + i32::from(!mine);
    let acquired = if mine {
        s.acquire_time.as_ref().map(|t| t.0.to_string())
    } else {
        None
    };
    let mut next = cur.clone();
    next.spec = Some(serde_json::from_value(spec(transitions, acquired))?);
    // A replace with the version read: a rival that wrote meanwhile makes this fail.
    match api.replace(NAME, &PostParams::default(), &next).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Campaigns for the lease forever; while held, runs what `start` spawns.
pub async fn run<F>(client: kube::Client, me: String, start: F)
where
    F: Fn(kube::Client) -> Vec<tokio::task::JoinHandle<()>> + Send + 'static,
{
    let api: kube::Api<Lease> = kube::Api::namespaced(client.clone(), NAMESPACE);
    let mut observed = None;
    loop {
        // Candidate: until the lease is ours.
        loop {
            match try_acquire(&api, &me, &mut observed).await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => eprintln!("berth controllers: leader election: {e}"),
            }
            tokio::time::sleep(RETRY).await;
        }
        eprintln!("berth controllers: {me} became the leader");
        let tasks = start(client.clone());
        // Leader: renew, or stop before the lease can pass to another.
        let mut last_renew = Instant::now();
        loop {
            tokio::time::sleep(RETRY).await;
            match try_acquire(&api, &me, &mut observed).await {
                Ok(true) => last_renew = Instant::now(),
                Ok(false) => break,
                Err(e) => eprintln!("berth controllers: renewing the leader lease: {e}"),
            }
            if last_renew.elapsed() >= RENEW_DEADLINE {
                break;
            }
        }
        eprintln!("berth controllers: {me} lost the leader lease; stopping the controllers");
        for t in tasks {
            t.abort();
        }
        observed = None;
    }
}
