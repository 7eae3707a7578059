//! Prometheus metrics: requests by verb, resource and code with latency histograms, open
//! watches, and store operation latencies (through a timing wrapper around the store).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    n: u64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len()];
        }
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += secs;
        self.n += 1;
    }
    fn render(&self, name: &str, labels: &str, out: &mut String) {
        for (i, b) in BUCKETS.iter().enumerate() {
            out.push_str(&format!(
                "{name}_bucket{{{labels},le=\"{b}\"}} {}\n",
                self.counts.get(i).copied().unwrap_or(0)
            ));
        }
        out.push_str(&format!(
            "{name}_bucket{{{labels},le=\"+Inf\"}} {}\n",
            self.n
        ));
        out.push_str(&format!("{name}_sum{{{labels}}} {}\n", self.sum));
        out.push_str(&format!("{name}_count{{{labels}}} {}\n", self.n));
    }
}

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    latency: Mutex<BTreeMap<(String, String), Histogram>>,
    store: Mutex<BTreeMap<String, Histogram>>,
    pub watches: AtomicI64,
}

impl Metrics {
    pub fn request(&self, verb: &str, resource: &str, code: u16, took: Duration) {
        *self
            .requests
            .lock()
            .unwrap()
            .entry((verb.into(), resource.into(), code))
            .or_default() += 1;
        self.latency
            .lock()
            .unwrap()
            .entry((verb.into(), resource.into()))
            .or_default()
            .observe(took.as_secs_f64());
    }
    pub fn store_op(&self, op: &str, took: Duration) {
        self.store
            .lock()
            .unwrap()
            .entry(op.into())
            .or_default()
            .observe(took.as_secs_f64());
    }
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP apiserver_request_total Counter of apiserver requests broken out for each verb, resource and HTTP response code.\n# TYPE apiserver_request_total counter\n");
        for ((verb, res, code), n) in self.requests.lock().unwrap().iter() {
            out.push_str(&format!("apiserver_request_total{{verb=\"{verb}\",resource=\"{res}\",code=\"{code}\"}} {n}\n"));
        }
        out.push_str("# HELP apiserver_request_duration_seconds Response latency distribution in seconds for each verb and resource.\n# TYPE apiserver_request_duration_seconds histogram\n");
        for ((verb, res), h) in self.latency.lock().unwrap().iter() {
            h.render(
                "apiserver_request_duration_seconds",
                &format!("verb=\"{verb}\",resource=\"{res}\""),
                &mut out,
            );
        }
        out.push_str("# HELP apiserver_longrunning_requests Gauge of all active long-running apiserver requests.\n# TYPE apiserver_longrunning_requests gauge\n");
        out.push_str(&format!(
            "apiserver_longrunning_requests{{verb=\"WATCH\"}} {}\n",
            self.watches.load(Ordering::Relaxed)
        ));
        out.push_str("# HELP berth_store_request_duration_seconds Store operation latency in seconds.\n# TYPE berth_store_request_duration_seconds histogram\n");
        for (op, h) in self.store.lock().unwrap().iter() {
            h.render(
                "berth_store_request_duration_seconds",
                &format!("operation=\"{op}\""),
                &mut out,
            );
        }
        out
    }
}

/// A store that records how long each operation takes.
pub struct TimedStore {
    pub inner: Arc<dyn store::Store>,
    pub metrics: Arc<Metrics>,
}

macro_rules! timed {
    ($self:ident, $op:literal, $e:expr) => {{
        let start = Instant::now();
        let r = $e;
        $self.metrics.store_op($op, start.elapsed());
        r
    }};
}

#[async_trait::async_trait]
impl store::Store for TimedStore {
    async fn current_revision(&self) -> store::Result<i64> {
        self.inner.current_revision().await
    }
    async fn compacted_revision(&self) -> store::Result<i64> {
        self.inner.compacted_revision().await
    }
    async fn get(&self, key: &str, revision: i64) -> store::Result<Option<store::KeyValue>> {
        timed!(self, "get", self.inner.get(key, revision).await)
    }
    async fn list(&self, opts: store::ListOptions<'_>) -> store::Result<store::ListResult> {
        timed!(self, "list", self.inner.list(opts).await)
    }
    async fn create(&self, key: &str, value: Vec<u8>) -> store::Result<i64> {
        timed!(self, "create", self.inner.create(key, value).await)
    }
    async fn update(&self, key: &str, value: Vec<u8>, expected: i64) -> store::Result<i64> {
        timed!(
            self,
            "update",
            self.inner.update(key, value, expected).await
        )
    }
    async fn delete(
        &self,
        key: &str,
        expected: Option<i64>,
    ) -> store::Result<(i64, store::KeyValue)> {
        timed!(self, "delete", self.inner.delete(key, expected).await)
    }
    async fn watch(&self, prefix: &str, after: i64) -> store::Result<store::WatchStream> {
        self.inner.watch(prefix, after).await
    }
    async fn compact(&self, revision: i64) -> store::Result<()> {
        timed!(self, "compact", self.inner.compact(revision).await)
    }
}
