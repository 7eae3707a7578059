//! ControllerRevisions, the history of DaemonSets and StatefulSets: one per distinct pod
//! template, named `<owner>-<hash>`, labelled `controller-revision-hash`, its `data` the
//! patch that restores the template (what `kubectl rollout undo` applies) and its
//! `revision` a number that grows with each change (a template that comes back takes the
//! next number, as in Kubernetes). Controllers keep what they last settled per owner
//! ([`Known`]), so only a changed template costs API calls.

use k8s_openapi::api::apps::v1::ControllerRevision;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

pub const HASH_LABEL: &str = "controller-revision-hash";

/// What a controller last settled per owner (by UID): the template's hash and revision,
/// so a reconcile whose template has not changed needs no list of the revisions.
#[derive(Default)]
pub struct Known(std::sync::Mutex<std::collections::HashMap<String, (String, usize, i64)>>);

impl Known {
    /// [`current`], skipping the API when the owner's template (and history limit) are the
    /// ones last settled.
    pub async fn current(
        &self,
        client: &kube::Client,
        owner: &Value,
        api_version: &str,
        kind: &str,
        history: usize,
    ) -> anyhow::Result<(String, i64)> {
        let uid = owner["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let hash = crate::deployment::template_hash(&owner["spec"]["template"], 0);
        if let Some((h, limit, rev)) = self.0.lock().unwrap().get(&uid) {
            if *h == hash && *limit == history {
                return Ok((hash, *rev));
            }
        }
        let got = current(client, owner, api_version, kind, history).await?;
        let mut m = self.0.lock().unwrap();
        // Owners deleted since are forgotten now and then (the map stays small).
        if m.len() > 10_000 {
            m.clear();
        }
        m.insert(uid, (got.0.clone(), history, got.1));
        Ok(got)
    }
}

/// The current revision of an owner's template: `(hash, revision number)`, creating or
/// renumbering its ControllerRevision as needed; older ones beyond `history` are deleted.
pub async fn current(
    client: &kube::Client,
    owner: &Value,
    api_version: &str,
    kind: &str,
    history: usize,
) -> anyhow::Result<(String, i64)> {
    let ns = owner["metadata"]["namespace"].as_str().unwrap_or_default();
    let name = owner["metadata"]["name"].as_str().unwrap_or_default();
    let uid = owner["metadata"]["uid"].as_str().unwrap_or_default();
    let template = owner["spec"]["template"].clone();
    let hash = crate::deployment::template_hash(&template, 0);
    let api: kube::Api<ControllerRevision> = kube::Api::namespaced(client.clone(), ns);
    let selector = owner["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let mut mine: Vec<ControllerRevision> = api
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .filter(|r| {
            r.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.uid == uid)
        })
        .collect();
    mine.sort_by_key(|r| r.revision);
    let max = mine.last().map_or(0, |r| r.revision);
    let cr_name = format!("{name}-{hash}");
    let rev = match mine
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some(cr_name.as_str()))
    {
        Some(r) if r.revision == max => max,
        Some(_) => {
            // The template came back (a rollback): it becomes the newest revision.
            api.patch(
                &cr_name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"revision": max + 1})),
            )
            .await?;
            max + 1
        }
        None => {
            let mut tmpl = template.clone();
            tmpl["$patch"] = json!("replace");
            let mut labels = owner["spec"]["template"]["metadata"]["labels"].clone();
            if !labels.is_object() {
                labels = json!({});
            }
            labels[HASH_LABEL] = json!(hash);
            let cr: ControllerRevision = serde_json::from_value(json!({
                "apiVersion": "apps/v1", "kind": "ControllerRevision",
                "metadata": {"name": cr_name, "namespace": ns, "labels": labels,
                    "ownerReferences": [crate::owned::owner_ref(api_version, kind, &serde_json::from_value(owner["metadata"].clone())?)]},
                "data": {"spec": {"template": tmpl}},
                "revision": max + 1,
            }))?;
            match api.create(&PostParams::default(), &cr).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
            max + 1
        }
    };
    // History beyond the limit goes, oldest first (never the current one).
    let old: Vec<&ControllerRevision> = mine
        .iter()
        .filter(|r| r.metadata.name.as_deref() != Some(cr_name.as_str()))
        .collect();
    if old.len() > history {
        for r in &old[..old.len() - history] {
            let n = r.metadata.name.clone().unwrap_or_default();
            let _ = api.delete(&n, &Default::default()).await;
        }
    }
    Ok((hash, rev))
}

/// The pod's revision hash label.
pub fn hash_of(p: &k8s_openapi::api::core::v1::Pod) -> Option<&str> {
    p.metadata
        .labels
        .as_ref()?
        .get(HASH_LABEL)
        .map(String::as_str)
}
