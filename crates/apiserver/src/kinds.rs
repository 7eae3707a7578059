//! The resource kinds the API server serves: their names, scope, subresources and codec,
//! built-in ones from the `k8s-openapi` types and custom ones from CustomResourceDefinitions.

use std::sync::{Arc, RwLock};

use serde_json::Value;

/// How a kind's objects are decoded: typed built-ins round-trip through their `k8s-openapi`
/// type (unknown fields are reported and dropped), custom resources through their schema.
pub trait Codec: Send + Sync {
    /// Decodes an object, returning it with unknown fields pruned and the paths of the
    /// unknown fields (`spec.foo`, `spec.containers[0].bar`).
    fn decode(&self, value: Value) -> Result<(Value, Vec<String>), String>;
    /// The OpenAPI definition name of the kind (`io.k8s.api.apps.v1.Deployment`).
    fn schema_name(&self) -> String;
    /// Adds the kind's schema (and what it references) to a generator.
    fn add_schema(&self, gen: &mut schemars::SchemaGenerator) -> schemars::Schema;
}

/// A typed built-in kind.
pub struct Typed<T>(std::marker::PhantomData<fn() -> T>);

impl<T> Typed<T> {
    pub fn codec() -> Arc<dyn Codec>
    where
        T: serde::de::DeserializeOwned + serde::Serialize + schemars::JsonSchema + 'static,
    {
        Arc::new(Typed::<T>(std::marker::PhantomData))
    }
}

/// Renders a serde_ignored path the way Kubernetes names fields: `spec.containers[0].foo`.
pub fn field_path(path: &serde_ignored::Path) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => {
            let p = field_path(parent);
            if p.is_empty() {
                key.clone()
            } else {
                format!("{p}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => field_path(parent),
    }
}

impl<T> Codec for Typed<T>
where
    T: serde::de::DeserializeOwned + serde::Serialize + schemars::JsonSchema + 'static,
{
    fn decode(&self, value: Value) -> Result<(Value, Vec<String>), String> {
        let mut unknown = Vec::new();
        let typed: T = serde_ignored::deserialize(value, |p| unknown.push(field_path(&p)))
            .map_err(|e| e.to_string())?;
        let out = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
        Ok((out, unknown))
    }
    fn schema_name(&self) -> String {
        T::schema_name().into_owned()
    }
    fn add_schema(&self, gen: &mut schemars::SchemaGenerator) -> schemars::Schema {
        gen.subschema_for::<T>()
    }
}

/// One resource as served at `/apis/{group}/{version}/{plural}` (or `/api/v1/{plural}`).
#[derive(Clone)]
pub struct Kind {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub list_kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Whether the kind has a `status` subresource (the main resource then ignores status).
    pub status: bool,
    /// Whether the kind has a `scale` subresource, and where replicas live.
    pub scale: Option<ScalePaths>,
    pub codec: Arc<dyn Codec>,
    /// Where objects are stored: `/registry/{storage_group}/{storage_plural}/...`; kinds
    /// served in several versions share it.
    pub storage_group: String,
    pub storage_plural: String,
    /// The version objects are stored in (conversion happens at the edge).
    pub storage_version: String,
    /// Custom resources: the CRD's printer columns.
    pub printer_columns: Vec<PrinterColumn>,
    /// Custom resources: the structural schema of this version.
    pub crd_schema: Option<Value>,
    /// Extra subresources routed elsewhere (node-side ones such as `log`, `exec`).
    pub node_subresources: Vec<&'static str>,
    /// Served from memory, not stored: only `get` and `list` (metrics.k8s.io).
    pub read_only: bool,
    /// A review: only `create`, answered with its status and never stored
    /// (authorization.k8s.io's access reviews, authentication.k8s.io's SelfSubjectReview).
    pub review: bool,
}

#[derive(Clone, Debug)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

#[derive(Clone, Debug)]
pub struct PrinterColumn {
    pub name: String,
    pub type_: String,
    pub format: String,
    pub description: String,
    pub priority: i32,
    pub json_path: String,
}

impl Kind {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
    /// `deployments.apps`, `pods` — as Kubernetes names a resource in messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
    /// The store key prefix of the kind (in a namespace when given).
    pub fn prefix(&self, namespace: Option<&str>) -> String {
        let g = if self.storage_group.is_empty() {
            "core"
        } else {
            &self.storage_group
        };
        match namespace {
            Some(ns) if self.namespaced => format!("/registry/{g}/{}/{ns}/", self.storage_plural),
            _ => format!("/registry/{g}/{}/", self.storage_plural),
        }
    }
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}{name}", self.prefix(namespace))
    }
    pub fn verbs(&self) -> Vec<&'static str> {
        if self.read_only {
            return vec!["get", "list"];
        }
        if self.review {
            return vec!["create"];
        }
        vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    }
    /// Whether objects are stored in another group or version than this one serves.
    pub fn is_converted(&self) -> bool {
        self.storage_version != self.version || self.storage_group != self.group
    }
    fn is_builtin(&self) -> bool {
        self.crd_schema.is_none()
    }
}

fn typed<T>(plural: &str, namespaced: bool, short: &[&str], categories: &[&str]) -> Kind
where
    T: k8s_openapi::ListableResource,
    T: k8s_openapi::Resource
        + serde::de::DeserializeOwned
        + serde::Serialize
        + schemars::JsonSchema
        + 'static,
{
    debug_assert_eq!(T::URL_PATH_SEGMENT, plural);
    Kind {
        list_kind: T::LIST_KIND.into(),
        short_names: short.iter().map(|s| s.to_string()).collect(),
        categories: categories.iter().map(|s| s.to_string()).collect(),
        ..unlisted::<T>(plural, namespaced)
    }
}

/// A built-in kind without a list kind (the reviews); `typed` adds the list to it.
fn unlisted<T>(plural: &str, namespaced: bool) -> Kind
where
    T: k8s_openapi::Resource
        + serde::de::DeserializeOwned
        + serde::Serialize
        + schemars::JsonSchema
        + 'static,
{
    Kind {
        group: T::GROUP.into(),
        version: T::VERSION.into(),
        kind: T::KIND.into(),
        list_kind: String::new(),
        plural: plural.into(),
        singular: T::KIND.to_lowercase(),
        namespaced,
        short_names: Vec::new(),
        categories: Vec::new(),
        status: false,
        scale: None,
        codec: Typed::<T>::codec(),
        storage_group: T::GROUP.into(),
        storage_plural: plural.into(),
        storage_version: T::VERSION.into(),
        printer_columns: Vec::new(),
        crd_schema: None,
        node_subresources: Vec::new(),
        read_only: false,
        review: false,
    }
}

/// A review kind: created, answered, never stored (nor listed).
fn review<T>(plural: &str, namespaced: bool) -> Kind
where
    T: k8s_openapi::Resource
        + serde::de::DeserializeOwned
        + serde::Serialize
        + schemars::JsonSchema
        + 'static,
{
    Kind {
        review: true,
        ..unlisted::<T>(plural, namespaced)
    }
}

/// The review kinds: authorization.k8s.io's access reviews, authentication.k8s.io's
/// SelfSubjectReview.
fn reviews() -> Vec<Kind> {
    use k8s_openapi::api::{authentication, authorization};
    vec![
        review::<authorization::v1::SelfSubjectAccessReview>("selfsubjectaccessreviews", false),
        review::<authorization::v1::SelfSubjectRulesReview>("selfsubjectrulesreviews", false),
        review::<authorization::v1::SubjectAccessReview>("subjectaccessreviews", false),
        review::<authorization::v1::LocalSubjectAccessReview>("localsubjectaccessreviews", true),
        review::<authentication::v1::SelfSubjectReview>("selfsubjectreviews", false),
    ]
}

fn with_status(mut k: Kind) -> Kind {
    k.status = true;
    k
}

fn with_scale(mut k: Kind) -> Kind {
    k.scale = Some(ScalePaths {
        spec_replicas: ".spec.replicas".into(),
        status_replicas: ".status.replicas".into(),
        label_selector: Some(".spec.selector".into()),
    });
    k
}

/// The built-in kinds, in the order discovery lists them.
pub fn builtins() -> Vec<Kind> {
    use k8s_openapi::api::*;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;
    let all = &["all"];
    let mut pod = with_status(typed::<core::v1::Pod>("pods", true, &["po"], all));
    pod.node_subresources = vec![
        "log",
        "exec",
        "attach",
        "portforward",
        "proxy",
        "ephemeralcontainers",
        "eviction",
        "binding",
    ];
    let mut node = with_status(typed::<core::v1::Node>("nodes", false, &["no"], &[]));
    node.node_subresources = vec!["proxy"];
    let mut svc = with_status(typed::<core::v1::Service>("services", true, &["svc"], all));
    svc.node_subresources = vec!["proxy"];
    let mut hpa_v1 = with_status(typed::<autoscaling::v1::HorizontalPodAutoscaler>(
        "horizontalpodautoscalers",
        true,
        &["hpa"],
        all,
    ));
    hpa_v1.storage_version = "v2".into();
    let mut events_v1 = typed::<events::v1::Event>("events", true, &["ev"], &[]);
    events_v1.storage_group = String::new();
    events_v1.storage_version = "v1".into();
    vec![
        with_status(typed::<core::v1::Namespace>(
            "namespaces",
            false,
            &["ns"],
            &[],
        )),
        pod,
        svc,
        typed::<core::v1::Endpoints>("endpoints", true, &["ep"], &[]),
        typed::<core::v1::ConfigMap>("configmaps", true, &["cm"], &[]),
        typed::<core::v1::Secret>("secrets", true, &[], &[]),
        {
            let mut sa = typed::<core::v1::ServiceAccount>("serviceaccounts", true, &["sa"], &[]);
            sa.node_subresources = vec!["token"];
            sa
        },
        node,
        typed::<core::v1::Event>("events", true, &["ev"], &[]),
        with_status(typed::<certificates::v1::CertificateSigningRequest>(
            "certificatesigningrequests",
            false,
            &["csr"],
            &[],
        )),
        with_status(typed::<core::v1::PersistentVolume>(
            "persistentvolumes",
            false,
            &["pv"],
            &[],
        )),
        with_status(typed::<core::v1::PersistentVolumeClaim>(
            "persistentvolumeclaims",
            true,
            &["pvc"],
            &[],
        )),
        typed::<core::v1::LimitRange>("limitranges", true, &["limits"], &[]),
        with_status(typed::<core::v1::ResourceQuota>(
            "resourcequotas",
            true,
            &["quota"],
            &[],
        )),
        typed::<core::v1::PodTemplate>("podtemplates", true, &[], &[]),
        {
            let mut rc = with_scale(with_status(typed::<core::v1::ReplicationController>(
                "replicationcontrollers",
                true,
                &["rc"],
                all,
            )));
            rc.scale.as_mut().unwrap().label_selector = Some(".spec.selector".into());
            rc
        },
        with_scale(with_status(typed::<apps::v1::Deployment>(
            "deployments",
            true,
            &["deploy"],
            all,
        ))),
        with_scale(with_status(typed::<apps::v1::ReplicaSet>(
            "replicasets",
            true,
            &["rs"],
            all,
        ))),
        with_scale(with_status(typed::<apps::v1::StatefulSet>(
            "statefulsets",
            true,
            &["sts"],
            all,
        ))),
        with_status(typed::<apps::v1::DaemonSet>(
            "daemonsets",
            true,
            &["ds"],
            all,
        )),
        typed::<apps::v1::ControllerRevision>("controllerrevisions", true, &[], &[]),
        with_status(typed::<batch::v1::Job>("jobs", true, &[], all)),
        with_status(typed::<batch::v1::CronJob>("cronjobs", true, &["cj"], all)),
        with_status(typed::<autoscaling::v2::HorizontalPodAutoscaler>(
            "horizontalpodautoscalers",
            true,
            &["hpa"],
            all,
        )),
        hpa_v1,
        with_status(typed::<policy::v1::PodDisruptionBudget>(
            "poddisruptionbudgets",
            true,
            &["pdb"],
            &[],
        )),
        typed::<coordination::v1::Lease>("leases", true, &[], &[]),
        typed::<discovery::v1::EndpointSlice>("endpointslices", true, &[], &[]),
        events_v1,
        typed::<rbac::v1::ClusterRole>("clusterroles", false, &[], &[]),
        typed::<rbac::v1::ClusterRoleBinding>("clusterrolebindings", false, &[], &[]),
        typed::<rbac::v1::Role>("roles", true, &[], &[]),
        typed::<rbac::v1::RoleBinding>("rolebindings", true, &[], &[]),
        typed::<scheduling::v1::PriorityClass>("priorityclasses", false, &["pc"], &[]),
        typed::<storage::v1::StorageClass>("storageclasses", false, &["sc"], &[]),
        with_status(typed::<networking::v1::NetworkPolicy>(
            "networkpolicies",
            true,
            &["netpol"],
            &[],
        )),
        with_status(typed::<networking::v1::Ingress>(
            "ingresses",
            true,
            &["ing"],
            &[],
        )),
        typed::<networking::v1::IngressClass>("ingressclasses", false, &[], &[]),
        with_status(typed::<apiext::CustomResourceDefinition>(
            "customresourcedefinitions",
            false,
            &["crd", "crds"],
            &["api-extensions"],
        )),
    ]
    .into_iter()
    .chain(crate::resourcemetrics::kinds())
    .chain(reviews())
    .collect()
}

/// The kinds served now: the built-ins plus the custom resources of established CRDs.
pub struct Registry {
    kinds: RwLock<Arc<Vec<Arc<Kind>>>>,
    /// Bumped whenever the served kinds change (documents generated from them are stale).
    generation: std::sync::atomic::AtomicU64,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            kinds: RwLock::new(Arc::new(builtins().into_iter().map(Arc::new).collect())),
            generation: Default::default(),
        }
    }
}

impl Registry {
    pub fn all(&self) -> Arc<Vec<Arc<Kind>>> {
        self.kinds.read().unwrap().clone()
    }
    /// The kind served at `group/version/plural`.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<Arc<Kind>> {
        self.all()
            .iter()
            .find(|k| k.group == group && k.version == version && k.plural == plural)
            .cloned()
    }
    /// Any served version of `group`/`plural` (for "does this resource exist at all").
    pub fn any_version(&self, group: &str, plural: &str) -> Option<Arc<Kind>> {
        self.all()
            .iter()
            .find(|k| k.group == group && k.plural == plural)
            .cloned()
    }
    /// Replaces the custom kinds with `custom` (from the CRDs now established).
    pub fn set_custom(&self, custom: Vec<Kind>) {
        let mut v: Vec<Arc<Kind>> = self
            .all()
            .iter()
            .filter(|k| k.is_builtin())
            .cloned()
            .collect();
        v.extend(custom.into_iter().map(Arc::new));
        let mut kinds = self.kinds.write().unwrap();
        let same = kinds.len() == v.len()
            && kinds.iter().zip(&v).all(|(a, b)| {
                a.api_version() == b.api_version()
                    && a.plural == b.plural
                    && a.crd_schema == b.crd_schema
                    && a.printer_columns.len() == b.printer_columns.len()
            });
        *kinds = Arc::new(v);
        if !same {
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Changes whenever the served kinds change.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }
    /// The groups served, each with its versions in preference order.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for k in self.all().iter() {
            if k.group.is_empty() {
                continue;
            }
            match out.iter_mut().find(|(g, _)| *g == k.group) {
                Some((_, vs)) => {
                    if !vs.contains(&k.version) {
                        vs.push(k.version.clone())
                    }
                }
                None => out.push((k.group.clone(), vec![k.version.clone()])),
            }
        }
        for (_, vs) in out.iter_mut() {
            vs.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
        }
        out
    }
}

/// Kubernetes' version ordering: GA > beta > alpha, higher numbers first.
pub fn version_priority(v: &str) -> (u8, u32, u32) {
    let rest = v.strip_prefix('v').unwrap_or(v);
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let major = digits.parse().unwrap_or(0);
    let tail = &rest[digits.len()..];
    if tail.is_empty() {
        (3, major, 0)
    } else if let Some(n) = tail.strip_prefix("beta") {
        (2, major, n.parse().unwrap_or(0))
    } else if let Some(n) = tail.strip_prefix("alpha") {
        (1, major, n.parse().unwrap_or(0))
    } else {
        (0, 0, 0)
    }
}

/// Reads a `.a.b[0].c`-style JSONPath (the simple subset CRDs use) from a value.
pub fn json_path<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = v;
    let p = path.trim_start_matches('{').trim_end_matches('}');
    for part in p.split('.').filter(|s| !s.is_empty()) {
        let (name, idx) = match part.find('[') {
            Some(i) => (
                &part[..i],
                part[i + 1..].trim_end_matches(']').parse::<usize>().ok(),
            ),
            None => (part, None),
        };
        if !name.is_empty() {
            cur = cur.get(name)?;
        }
        if let Some(i) = idx {
            cur = cur.get(i)?;
        }
    }
    Some(cur)
}

/// Sets a `.a.b` path, creating objects on the way.
pub fn set_json_path(v: &mut Value, path: &str, new: Value) {
    let parts: Vec<&str> = path.split('.').filter(|s| !s.is_empty()).collect();
    let mut cur = v;
    for (i, part) in parts.iter().enumerate() {
        if !cur.is_object() {
            *cur = Value::Object(Default::default());
        }
        let map = cur.as_object_mut().unwrap();
        if i == parts.len() - 1 {
            map.insert(part.to_string(), new);
            return;
        }
        cur = map
            .entry(part.to_string())
            .or_insert_with(|| Value::Object(Default::default()));
    }
}
