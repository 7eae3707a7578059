//! The ServiceAccount controller: every active namespace has a `default` ServiceAccount,
//! made again if deleted, as kube-controller-manager's does.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::PostParams;

/// Runs the controller until the process ends.
pub async fn run(client: kube::Client) {
    let nss = crate::follow(kube::Api::<Namespace>::all(client.clone())).map(|e| match e {
        crate::Seen::Applied(n) => Some(n),
        _ => None,
    });
    let sas = crate::follow(kube::Api::<ServiceAccount>::all(client.clone())).map(|e| match e {
        crate::Seen::Deleted(s) if s.metadata.name.as_deref() == Some("default") => {
            s.metadata.namespace.map(|ns| {
                let mut n = Namespace::default();
                n.metadata.name = Some(ns);
                n
            })
        }
        _ => None,
    });
    let mut events = futures::stream::select(nss.boxed(), sas.boxed());
    while let Some(e) = events.next().await {
        let Some(ns) = e else { continue };
        if ns.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let name = ns.metadata.name.unwrap_or_default();
        let api: kube::Api<ServiceAccount> = kube::Api::namespaced(client.clone(), &name);
        for attempt in 0..3 {
            let r = match api.get_opt("default").await {
                Ok(Some(_)) => break,
                Ok(None) => {
                    let mut sa = ServiceAccount::default();
                    sa.metadata.name = Some("default".into());
                    api.create(&PostParams::default(), &sa).await.map(drop)
                }
                Err(e) => Err(e),
            };
            match r {
                Ok(()) => break,
                // Conflict: it exists; Forbidden: the namespace is going.
                Err(kube::Error::Api(e)) if e.code == 409 || e.code == 403 => break,
                Err(e) => {
                    eprintln!("berth controllers: the default ServiceAccount of {name}: {e}");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
    }
}
