//! The engine's event stream (`berth events`): what happened to containers, images and
//! volumes, kept in a bounded ring for `--since` and fanned out to subscribers.

use std::collections::{BTreeMap, VecDeque};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

const KEEP: usize = 1024;

/// One event, shaped like the Docker API's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// `container`, `image`, `volume`.
    #[serde(rename = "Type")]
    pub typ: String,
    /// `create`, `start`, `die`, `stop`, `kill`, `destroy`, `health_status: healthy`, …
    #[serde(rename = "Action")]
    pub action: String,
    /// What it happened to.
    #[serde(rename = "Actor")]
    pub actor: Actor,
    /// Seconds since the epoch.
    pub time: i64,
    /// Nanoseconds since the epoch.
    #[serde(rename = "timeNano")]
    pub time_nano: i128,
}

/// The object of an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// Its ID (or name, for volumes).
    #[serde(rename = "ID")]
    pub id: String,
    /// `name`, `image`, `exitCode`, `signal`, …
    #[serde(rename = "Attributes")]
    pub attributes: BTreeMap<String, String>,
}

/// `--filter` for events: every key given must match one of its values.
#[derive(Debug, Clone, Default)]
pub struct Filter(pub BTreeMap<String, Vec<String>>);

impl Filter {
    /// Parses `key=value` filters (`container`, `event`, `type`, `image`, `label`).
    pub fn parse(items: &[String]) -> Result<Filter, String> {
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for i in items {
            let (k, v) = i
                .split_once('=')
                .ok_or_else(|| format!("bad format of filter (expected name=value): {i}"))?;
            if !matches!(
                k,
                "container" | "event" | "type" | "image" | "label" | "volume"
            ) {
                return Err(format!("invalid filter '{k}'"));
            }
            m.entry(k.to_string()).or_default().push(v.to_string());
        }
        Ok(Filter(m))
    }

    /// Whether `e` passes.
    pub fn matches(&self, e: &Event) -> bool {
        self.0.iter().all(|(k, vals)| {
            vals.iter().any(|v| match k.as_str() {
                "container" => {
                    e.typ == "container"
                        && (e.actor.id.starts_with(v.as_str())
                            || e.actor.attributes.get("name") == Some(v))
                }
                "volume" => e.typ == "volume" && e.actor.id == *v,
                "event" => e.action == *v || e.action.split(':').next() == Some(v.as_str()),
                "type" => e.typ == *v,
                "image" => e.actor.attributes.get("image") == Some(v),
                "label" => match v.split_once('=') {
                    Some((lk, lv)) => e.actor.attributes.get(lk).map(String::as_str) == Some(lv),
                    None => e.actor.attributes.contains_key(v.as_str()),
                },
                _ => false,
            })
        })
    }
}

/// The ring and the subscribers.
#[derive(Default)]
pub struct Events {
    inner: Mutex<(VecDeque<Event>, Vec<Sender<Event>>)>,
}

impl Events {
    /// Records and publishes an event.
    pub fn emit(&self, typ: &str, action: &str, id: &str, attributes: BTreeMap<String, String>) {
        let nanos = timefmt::now_nanos();
        let e = Event {
            typ: typ.into(),
            action: action.into(),
            actor: Actor {
                id: id.into(),
                attributes,
            },
            time: (nanos / 1_000_000_000) as i64,
            time_nano: nanos,
        };
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.0.len() == KEEP {
            g.0.pop_front();
        }
        g.0.push_back(e.clone());
        g.1.retain(|s| s.send(e.clone()).is_ok());
    }

    /// The kept events at or after `since` (ns), and a receiver of the ones to come.
    pub fn subscribe(&self, since: Option<i128>) -> (Vec<Event>, Receiver<Event>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let past = match since {
            Some(s) => g.0.iter().filter(|e| e.time_nano >= s).cloned().collect(),
            None => Vec::new(),
        };
        g.1.push(tx);
        (past, rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_and_replay() {
        let ev = Events::default();
        let attrs = |n: &str| BTreeMap::from([("name".to_string(), n.to_string())]);
        ev.emit("container", "start", "abc123", attrs("web"));
        let (past, rx) = ev.subscribe(Some(0));
        assert_eq!(past.len(), 1);
        ev.emit("container", "die", "abc123", attrs("web"));
        ev.emit("volume", "create", "data", BTreeMap::new());
        let got: Vec<Event> = rx.try_iter().collect();
        assert_eq!(got.len(), 2);
        let f = Filter::parse(&["container=web".into(), "event=die".into()]).unwrap();
        assert!(f.matches(&got[0]) && !f.matches(&got[1]) && !f.matches(&past[0]));
        assert!(Filter::parse(&["bogus=1".into()]).is_err());
        assert!(Filter::parse(&["novalue".into()]).is_err());
    }
}
