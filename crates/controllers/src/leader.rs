//! Leader election through a Lease, as client-go's leaderelection does it, so that when
//! several servers share a store only one runs the scheduler and the controllers.
//!
//! The Lease is `kube-system/berth-controllers`. A candidate takes it when it is free or its
//! holder has not renewed it for `leaseDurationSeconds` — measured on this server's own
//! clock from when it *saw* the last change, so clocks of other machines do not matter —
//! with a compare-and-swap on its resourceVersion, so two candidates cannot both win. The
//! leader renews every retry period; if it cannot renew within the renew deadline, it
//! stops its controllers before anyone else may take over (the deadline is shorter than
//! the lease, and a renewal that hangs is abandoned at the deadline), then becomes a
//! candidate again. A candidate looks every retry period and tries again exactly when
//! the lease it saw expires. A server's identity is stable across its restarts, so a
//! restarted server takes its own lease back at once.
//!
//! The defaults are shorter than kube-controller-manager's (15 s, 10 s, 2 s) so that a
//! dead leader's controllers are taken over within about 4 s: renewing twice a second is
//! one small write each.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::PostParams;
use serde_json::json;

pub const NAMESPACE: &str = "kube-system";
pub const NAME: &str = "berth-controllers";

/// kube-controller-manager's `--leader-elect-lease-duration`, `--leader-elect-renew-deadline`
/// and `--leader-elect-retry-period`.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            lease_duration: Duration::from_secs(4),
            renew_deadline: Duration::from_secs(3),
            retry_period: Duration::from_millis(500),
        }
    }
}

impl Timing {
    /// Checks the order client-go requires: lease > deadline > retry (× 1.2).
    pub fn check(&self) -> Result<(), String> {
        if self.lease_duration <= self.renew_deadline {
            return Err(format!(
                "the leader election's lease duration ({:?}) must be longer than its renew deadline ({:?})",
                self.lease_duration, self.renew_deadline
            ));
        }
        if self.renew_deadline.as_secs_f64() <= self.retry_period.as_secs_f64() * 1.2 {
            return Err(format!(
                "the leader election's renew deadline ({:?}) must be longer than 1.2 × its retry period ({:?})",
                self.renew_deadline, self.retry_period
            ));
        }
        if self.lease_duration < Duration::from_secs(1) {
            return Err("the leader election's lease duration is at least 1s".into());
        }
        Ok(())
    }
}

fn micro_now() -> String {
    let n = timefmt::now_nanos();
    let s = timefmt::rfc3339((n / 1_000_000_000) as i64, (n % 1_000_000_000) as u32);
    format!("{}.{}Z", &s[..19], &s[20..26])
}

/// One attempt to take or renew the lease; `Ok(true)` when this server holds it now.
/// `Err(Some(wait))`: another holds the lease, which expires in `wait` unless renewed.
async fn try_acquire(
    api: &kube::Api<Lease>,
    me: &str,
    timing: Timing,
    observed: &mut Option<(String, Instant)>,
) -> anyhow::Result<Result<(), Option<Duration>>> {
    let now = micro_now();
    let spec = |transitions: i32, acquired: Option<String>| {
        json!({"holderIdentity": me, "leaseDurationSeconds": timing.lease_duration.as_secs(),
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
            Ok(_) => Ok(Ok(())),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Err(None)),
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
        return Ok(Err(Some(dur - seen_at.elapsed())));
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
        Ok(_) => Ok(Ok(())),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(Err(None)),
        Err(e) => Err(e.into()),
    }
}

/// Campaigns for the lease forever; while held, runs what `start` spawns.
pub async fn run<F>(client: kube::Client, me: String, timing: Timing, start: F)
where
    F: Fn(kube::Client) -> Vec<tokio::task::JoinHandle<()>> + Send + 'static,
{
    let api: kube::Api<Lease> = kube::Api::namespaced(client.clone(), NAMESPACE);
    let mut observed = None;
    loop {
        // Candidate: until the lease is ours.
        loop {
            let wait = match try_acquire(&api, &me, timing, &mut observed).await {
                Ok(Ok(())) => break,
                // Look again at the next period, or as the lease expires if sooner.
                Ok(Err(Some(expires))) => expires.min(timing.retry_period),
                Ok(Err(None)) => timing.retry_period,
                Err(e) => {
                    eprintln!("berth controllers: leader election: {e}");
                    timing.retry_period
                }
            };
            tokio::time::sleep(wait).await;
        }
        eprintln!("berth controllers: {me} became the leader");
        let tasks = start(client.clone());
        // Leader: renew, or stop before the lease can pass to another.
        let mut last_renew = Instant::now();
        loop {
            tokio::time::sleep(timing.retry_period).await;
            let left = timing.renew_deadline.saturating_sub(last_renew.elapsed());
            match tokio::time::timeout(left, try_acquire(&api, &me, timing, &mut observed)).await {
                Ok(Ok(Ok(()))) => last_renew = Instant::now(),
                Ok(Ok(Err(_))) => break,
                Ok(Err(e)) => eprintln!("berth controllers: renewing the leader lease: {e}"),
                Err(_) => {}
            }
            if last_renew.elapsed() >= timing.renew_deadline {
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
