//! Routes to the other nodes' pod CIDRs via their addresses (host-gw), so every pod
//! reaches every other pod by its IP without NAT. Kept from a watch on Nodes: a node that
//! joins, moves or leaves updates every node's routes. berth's routes carry their own
//! protocol number, so the agent finds (and removes) exactly the ones it made.

use std::collections::BTreeMap;
use std::process::Command;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::watcher;

/// The `proto` of berth's routes (`ip route … proto 98`).
const PROTO: &str = "98";

fn ip(args: &[&str]) -> Result<String, String> {
    let o = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

/// berth's routes now: CIDR → gateway.
fn current() -> BTreeMap<String, String> {
    let out = ip(&["-4", "route", "show", "proto", PROTO]).unwrap_or_default();
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let via = f.iter().position(|w| *w == "via")?;
            Some((f.first()?.to_string(), f.get(via + 1)?.to_string()))
        })
        .collect()
}

/// Makes the routes `want` (CIDR → gateway) and removes berth's others.
pub fn apply(want: &BTreeMap<String, String>) {
    let have = current();
    for (cidr, gw) in want {
        if have.get(cidr) != Some(gw) {
            if let Err(e) = ip(&["route", "replace", cidr, "via", gw, "proto", PROTO]) {
                eprintln!("berth agent: route to {cidr}: {e}");
            }
        }
    }
    for cidr in have.keys() {
        if !want.contains_key(cidr) {
            let _ = ip(&["route", "del", cidr, "proto", PROTO]);
        }
    }
}

fn node_route(n: &Node) -> Option<(String, String, String)> {
    let name = n.metadata.name.clone()?;
    let cidr = n
        .spec
        .as_ref()?
        .pod_cidr
        .clone()
        .filter(|c| !c.is_empty())?;
    let addr = n
        .status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .find(|a| a.type_ == "InternalIP")?
        .address
        .clone();
    Some((name, cidr, addr))
}

/// Follows the Nodes and keeps this node's routes to the others' pod CIDRs.
pub async fn run(client: kube::Client, me: String) {
    let api: kube::Api<Node> = kube::Api::all(client);
    let mut stream = watcher::watcher(api, watcher::Config::default()).boxed();
    let mut nodes: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut building: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut ready = false;
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(watcher::Event::Init) => building.clear(),
            Ok(watcher::Event::InitApply(n)) => {
                if let Some((name, cidr, addr)) = node_route(&n) {
                    building.insert(name, (cidr, addr));
                }
            }
            Ok(watcher::Event::InitDone) => {
                nodes = std::mem::take(&mut building);
                ready = true;
            }
            Ok(watcher::Event::Apply(n)) => match node_route(&n) {
                Some((name, cidr, addr)) => {
                    nodes.insert(name, (cidr, addr));
                }
                None => {
                    if let Some(name) = &n.metadata.name {
                        nodes.remove(name);
                    }
                }
            },
            Ok(watcher::Event::Delete(n)) => {
                if let Some(name) = &n.metadata.name {
                    nodes.remove(name);
                }
            }
            Err(e) => {
                eprintln!("berth agent: watching nodes: {e}");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        }
        if ready {
            let want: BTreeMap<String, String> = nodes
                .iter()
                .filter(|(n, _)| **n != me)
                .map(|(_, (cidr, addr))| (cidr.clone(), addr.clone()))
                .collect();
            tokio::task::spawn_blocking(move || apply(&want)).await.ok();
        }
    }
}
