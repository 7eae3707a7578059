//! kube-rs (the `kube` crate) against `berth server`: typed CRUD with Kubernetes' errors and
//! defaults, server-side apply with conflicts, a watcher and reflector that survive a 410
//! relist, and what an unauthenticated client may reach.

mod cluster;
mod common;

use std::sync::OnceLock;
use std::time::Duration;

use cluster::Server;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Client, Config};
use serde_json::json;

/// A server with a watch cache of 5 events (a watch resuming from an older
/// resourceVersion gets 410 Expired) and a static token file.
fn start(name: &str, etcd: bool) -> Server {
    let tokens = cluster::base_dir(&format!("{name}-tokens")).join("tokens.csv");
    std::fs::write(
        &tokens,
        "admintoken,alice,1,\"system:masters\"\nplaintoken,bob,2,\"developers\"\n",
    )
    .unwrap();
    Server::start_with(
        name,
        etcd,
        &[
            "--default-watch-cache-size",
            "5",
            "--token-auth-file",
            tokens.to_str().unwrap(),
        ],
    )
}

fn sqlite() -> &'static Server {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| start("kube-rs-sqlite", false))
}

fn etcd() -> &'static Server {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| start("kube-rs-etcd", true))
}

/// Each scenario runs against the server on SQLite and the one on etcd.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::sqlite()).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn etcd() {
                super::$name(super::etcd()).await
            }
        })*
    };
}

on_both_backends!(
    typed_crud_with_kubernetes_errors_and_defaults,
    server_side_apply_with_conflicts,
    watcher_and_reflector_survive_a_410_relist,
    anonymous_clients_reach_only_health_and_version,
    bearer_tokens_and_the_authorizer,
    streaming_list_watcher,
    protocol_errors_are_statuses,
);

/// A client with a bearer token instead of the admin certificate.
fn token_client(s: &Server, token: &str) -> Client {
    let kc = kube::config::Kubeconfig::read_from(&s.kubeconfig).unwrap();
    let cluster = kc.clusters[0].cluster.clone().unwrap();
    let mut cfg = Config::new(s.url.parse().unwrap());
    cfg.root_cert = Some(vec![base64_decode_pem(
        cluster.certificate_authority_data.as_deref().unwrap(),
    )]);
    cfg.auth_info.token = Some(token.to_string().into());
    Client::try_from(cfg).unwrap()
}

fn base64_decode_pem(data: &str) -> Vec<u8> {
    use base64::Engine as _;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(data)
        .unwrap();
    let text = String::from_utf8(pem).unwrap();
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

async fn client(s: &Server) -> Client {
    let kc = kube::config::Kubeconfig::read_from(&s.kubeconfig).unwrap();
    let cfg = Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    Client::try_from(cfg).unwrap()
}

async fn namespace(c: &Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(c.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
}

fn api_error(e: kube::Error) -> (u16, String, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone(), s.message.clone()),
        other => panic!("not an API error: {other}"),
    }
}

async fn typed_crud_with_kubernetes_errors_and_defaults(s: &Server) {
    let c = client(s).await;
    namespace(&c, "typed").await;
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "typed");
    let cm: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "a", "labels": {"k": "v"}}, "data": {"x": "1"}}),
    )
    .unwrap();
    let created = cms.create(&PostParams::default(), &cm).await.unwrap();
    let rv = created.metadata.resource_version.clone().unwrap();
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
    let (code, reason, msg) = api_error(cms.create(&PostParams::default(), &cm).await.unwrap_err());
    assert_eq!(
        (code, reason.as_str(), msg.as_str()),
        (409, "AlreadyExists", "configmaps \"a\" already exists")
    );
    let got = cms.get("a").await.unwrap();
    assert_eq!(got.data.as_ref().unwrap()["x"], "1");
    let listed = cms
        .list(&ListParams::default().labels("k=v"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    assert!(cms
        .list(&ListParams::default().labels("k=w"))
        .await
        .unwrap()
        .items
        .is_empty());
    let mut changed = got.clone();
    changed.data = Some([("x".to_string(), "2".to_string())].into());
    let replaced = cms
        .replace("a", &PostParams::default(), &changed)
        .await
        .unwrap();
    assert_ne!(
        replaced.metadata.resource_version.as_deref(),
        Some(rv.as_str())
    );
    // The stale copy loses.
    let (code, reason, _) = api_error(
        cms.replace("a", &PostParams::default(), &changed)
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    let patched = cms
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"y": "3"}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.data.unwrap().len(), 2);
    cms.delete("a", &DeleteParams::default()).await.unwrap();
    let (code, reason, msg) = api_error(cms.get("a").await.unwrap_err());
    assert_eq!(
        (code, reason.as_str(), msg.as_str()),
        (404, "NotFound", "configmaps \"a\" not found")
    );

    // Defaults as Kubernetes fills them.
    let pods: Api<Pod> = Api::namespaced(c.clone(), "typed");
    let pod: Pod =
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": [
        {"name": "a", "image": "busybox:1.36"}, {"name": "b", "image": "busybox"}]}}))
        .unwrap();
    let p = pods.create(&PostParams::default(), &pod).await.unwrap();
    let spec = p.spec.unwrap();
    assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
    assert_eq!(spec.dns_policy.as_deref(), Some("ClusterFirst"));
    assert_eq!(spec.termination_grace_period_seconds, Some(30));
    assert_eq!(
        spec.containers[0].image_pull_policy.as_deref(),
        Some("IfNotPresent")
    );
    assert_eq!(
        spec.containers[1].image_pull_policy.as_deref(),
        Some("Always")
    );
    assert_eq!(p.status.unwrap().phase.as_deref(), Some("Pending"));
    let deploys: Api<Deployment> = Api::namespaced(c.clone(), "typed");
    let d: Deployment = serde_json::from_value(json!({"metadata": {"name": "d"}, "spec": {
        "selector": {"matchLabels": {"app": "d"}},
        "template": {"metadata": {"labels": {"app": "other"}}, "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}}})).unwrap();
    let (code, reason, msg) = api_error(
        deploys
            .create(&PostParams::default(), &d)
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    assert!(
        msg.contains("spec.template.metadata.labels: Invalid value")
            && msg.contains("`selector` does not match template `labels`"),
        "{msg}"
    );
    let (code, _, _) = api_error(deploys.get("d").await.unwrap_err());
    assert_eq!(code, 404, "an invalid object is not stored");
}

async fn server_side_apply_with_conflicts(s: &Server) {
    let c = client(s).await;
    namespace(&c, "ssa").await;
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "ssa");
    let mine = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "s"}, "data": {"a": "1", "b": "2"}});
    let applied = cms
        .patch("s", &PatchParams::apply("me"), &Patch::Apply(&mine))
        .await
        .unwrap();
    let mf = applied.metadata.managed_fields.unwrap();
    assert_eq!(mf.len(), 1);
    assert_eq!(mf[0].manager.as_deref(), Some("me"));
    assert_eq!(mf[0].operation.as_deref(), Some("Apply"));
    let theirs = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "s"}, "data": {"a": "9"}});
    let (code, reason, msg) = api_error(
        cms.patch("s", &PatchParams::apply("them"), &Patch::Apply(&theirs))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert_eq!(
        msg,
        "Apply failed with 1 conflict: conflict with \"me\" using v1: .data.a"
    );
    let forced = cms
        .patch(
            "s",
            &PatchParams::apply("them").force(),
            &Patch::Apply(&theirs),
        )
        .await
        .unwrap();
    assert_eq!(forced.data.as_ref().unwrap()["a"], "9");
    // "me" no longer owns .data.a; applying without it removes only what "me" alone owned.
    let mine2 =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "s"}, "data": {}});
    let after = cms
        .patch("s", &PatchParams::apply("me"), &Patch::Apply(&mine2))
        .await
        .unwrap();
    assert_eq!(
        after.data.clone().unwrap(),
        [("a".to_string(), "9".to_string())].into()
    );
    // Applying the same again writes nothing: no new resourceVersion (no event for watchers).
    let again = cms
        .patch("s", &PatchParams::apply("me"), &Patch::Apply(&mine2))
        .await
        .unwrap();
    assert_eq!(
        again.metadata.resource_version,
        after.metadata.resource_version
    );

    // Status through server-side apply, as controllers write it.
    let deploys: Api<Deployment> = Api::namespaced(c.clone(), "ssa");
    let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {
        "selector": {"matchLabels": {"app": "d"}},
        "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}}});
    deploys
        .patch("d", &PatchParams::apply("me"), &Patch::Apply(&d))
        .await
        .unwrap();
    let status = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "status": {"replicas": 3, "readyReplicas": 2}});
    let got = deploys
        .patch_status(
            "d",
            &PatchParams::apply("controller"),
            &Patch::Apply(&status),
        )
        .await
        .unwrap();
    let st = got.status.unwrap();
    assert_eq!((st.replicas, st.ready_replicas), (Some(3), Some(2)));
    assert_eq!(
        got.spec.unwrap().replicas,
        Some(1),
        "a status apply leaves the spec"
    );
    let mf = got.metadata.managed_fields.unwrap();
    let entry = mf
        .iter()
        .find(|m| m.manager.as_deref() == Some("controller"))
        .expect("the controller's entry");
    assert_eq!(entry.subresource.as_deref(), Some("status"));
    // DELETE is not a verb of the status subresource.
    let req = http::Request::delete("/apis/apps/v1/namespaces/ssa/deployments/d/status")
        .body(Vec::new())
        .unwrap();
    let (code, reason, _) = api_error(c.request_text(req).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (405, "MethodNotAllowed"));
    assert!(deploys.get("d").await.is_ok());
}

async fn watcher_and_reflector_survive_a_410_relist(s: &Server) {
    let c = client(s).await;
    namespace(&c, "watched").await;
    namespace(&c, "noise").await;
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "watched");
    let noise: Api<ConfigMap> = Api::namespaced(c.clone(), "noise");
    let pp = PostParams::default();
    let cm = |n: &str| -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": n}})).unwrap()
    };
    cms.create(&pp, &cm("first")).await.unwrap();
    let (reader, writer) = reflector::store();
    // A 1 s server timeout: each watch ends and resumes from the last resourceVersion seen.
    // Every namespace also holds the cluster's kube-root-ca.crt.
    let cfg = watcher::Config::default()
        .timeout(1)
        .fields("metadata.name!=kube-root-ca.crt");
    let mut events = watcher(cms.clone(), cfg).reflect(writer).boxed();
    let mut inits = 0;
    macro_rules! next {
        () => {
            tokio::time::timeout(Duration::from_secs(30), events.next())
                .await
                .expect("a watcher event")
                .unwrap()
        };
    }
    loop {
        if let Ok(watcher::Event::InitDone) = next!() {
            inits += 1;
            break;
        }
    }
    assert_eq!(reader.state().len(), 1);
    // Writes elsewhere push this watch's resourceVersion out of the 5-event window.
    for i in 0..20 {
        noise.create(&pp, &cm(&format!("n{i}"))).await.unwrap();
    }
    // The resumed watch gets 410 Expired, and the watcher relists.
    let mut expired = false;
    loop {
        match next!() {
            Err(watcher::Error::WatchError(e)) => {
                assert_eq!((e.code, e.reason.as_str()), (410, "Expired"));
                expired = true;
            }
            Ok(watcher::Event::InitDone) => {
                inits += 1;
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("unexpected watcher error: {e}"),
        }
    }
    assert!(expired && inits == 2);
    cms.create(&pp, &cm("second")).await.unwrap();
    loop {
        if let Ok(watcher::Event::Apply(o)) = next!() {
            if o.metadata.name.as_deref() == Some("second") {
                break;
            }
        }
    }
    let mut names: Vec<String> = reader
        .state()
        .iter()
        .filter_map(|o| o.metadata.name.clone())
        .collect();
    names.sort();
    assert_eq!(names, ["first", "second"]);
}

async fn anonymous_clients_reach_only_health_and_version(s: &Server) {
    let mut cfg = Config::new(s.url.parse().unwrap());
    cfg.accept_invalid_certs = true;
    let anon = Client::try_from(cfg).unwrap();
    let v = anon.apiserver_version().await.unwrap();
    assert_eq!((v.major.as_str(), v.minor.as_str()), ("1", "32"));
    for path in ["/readyz", "/livez/ping", "/healthz/etcd"] {
        let req = http::Request::get(path).body(Vec::new()).unwrap();
        assert_eq!(anon.request_text(req).await.unwrap(), "ok", "{path}");
    }
    // A health check that does not exist is not found.
    let req = http::Request::get("/livez/nothing/else")
        .body(Vec::new())
        .unwrap();
    assert!(anon.request_text(req).await.is_err());
    let (code, reason, _) = api_error(
        Api::<Namespace>::all(anon)
            .list(&ListParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (401, "Unauthorized"));
}

async fn bearer_tokens_and_the_authorizer(s: &Server) {
    let admin = token_client(s, "admintoken");
    namespace(&admin, "tokens").await;
    let cms: Api<ConfigMap> = Api::namespaced(admin, "tokens");
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "t"}, "data": {"k": "v"}})).unwrap();
    let made = cms.create(&PostParams::default(), &cm).await.unwrap();
    assert_eq!(made.data.unwrap()["k"], "v");
    // An authenticated user outside system:masters may discover, not read or write.
    let bob = token_client(s, "plaintoken");
    let v = bob.apiserver_version().await.unwrap();
    assert_eq!(v.minor, "32");
    let (code, reason, msg) = api_error(
        Api::<ConfigMap>::namespaced(bob, "tokens")
            .get("t")
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (403, "Forbidden"));
    assert_eq!(msg, "configmaps \"t\" is forbidden: User \"bob\" cannot get resource \"configmaps\" in API group \"\" in the namespace \"tokens\"");
    let (code, _, _) = api_error(
        Api::<ConfigMap>::namespaced(token_client(s, "nosuchtoken"), "tokens")
            .get("t")
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 401);
}

async fn streaming_list_watcher(s: &Server) {
    let c = client(s).await;
    namespace(&c, "streamed").await;
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "streamed");
    for n in ["a", "b"] {
        let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": n}})).unwrap();
        cms.create(&PostParams::default(), &cm).await.unwrap();
    }
    // sendInitialEvents: the state as ADDED events, then a bookmark marking its end.
    let (reader, writer) = reflector::store();
    let mut events = watcher(
        cms.clone(),
        watcher::Config::default()
            .streaming_lists()
            .fields("metadata.name!=kube-root-ca.crt"),
    )
    .reflect(writer)
    .boxed();
    loop {
        let e = tokio::time::timeout(Duration::from_secs(30), events.next())
            .await
            .expect("an event")
            .unwrap()
            .unwrap();
        if let watcher::Event::InitDone = e {
            break;
        }
    }
    assert_eq!(reader.state().len(), 2);
    cms.delete("a", &DeleteParams::default()).await.unwrap();
    loop {
        let e = tokio::time::timeout(Duration::from_secs(30), events.next())
            .await
            .expect("an event")
            .unwrap()
            .unwrap();
        if let watcher::Event::Delete(o) = e {
            assert_eq!(o.metadata.name.as_deref(), Some("a"));
            break;
        }
    }
    assert_eq!(reader.state().len(), 1);
}

async fn protocol_errors_are_statuses(s: &Server) {
    let c = client(s).await;
    namespace(&c, "proto").await;
    let send = |method: &str, path: &str, ct: &str, accept: &str, body: &str| {
        http::Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", ct)
            .header("accept", accept)
            .body(body.as_bytes().to_vec())
            .unwrap()
    };
    let cases = [
        (
            send(
                "GET",
                "/api/v1/namespaces/proto/configmaps",
                "",
                "application/vnd.kubernetes.protobuf",
                "",
            ),
            406,
            "NotAcceptable",
        ),
        (
            send(
                "POST",
                "/api/v1/namespaces/proto/configmaps",
                "text/plain",
                "application/json",
                "x",
            ),
            415,
            "UnsupportedMediaType",
        ),
        (
            send(
                "PUT",
                "/api/v1/namespaces/proto/configmaps",
                "application/json",
                "application/json",
                "{}",
            ),
            405,
            "MethodNotAllowed",
        ),
        (
            send(
                "POST",
                "/api/v1/namespaces/proto/configmaps",
                "application/json",
                "application/json",
                "{\"apiVersion\":",
            ),
            400,
            "BadRequest",
        ),
        (
            send(
                "POST",
                "/api/v1/namespaces/proto/configmaps",
                "application/yaml",
                "application/json",
                "a: [b",
            ),
            400,
            "BadRequest",
        ),
        (
            send(
                "GET",
                "/api/v1/namespaces/proto/configmaps?watch=true&resourceVersion=notanumber",
                "",
                "application/json",
                "",
            ),
            400,
            "BadRequest",
        ),
        (
            send(
                "GET",
                "/apis/nothere.example.com/v1/things",
                "",
                "application/json",
                "",
            ),
            404,
            "NotFound",
        ),
        (
            send(
                "GET",
                "/api/v1/namespaces/proto/configmaps?resourceVersion=1&continue=abc",
                "",
                "application/json",
                "",
            ),
            400,
            "BadRequest",
        ),
    ];
    for (req, code, reason) in cases {
        let what = format!("{} {}", req.method(), req.uri());
        let text = c.request_text(req).await;
        let (got_code, got_reason, _) = api_error(text.unwrap_err());
        assert_eq!((got_code, got_reason.as_str()), (code, reason), "{what}");
    }
    // DeleteOptions preconditions.
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "proto");
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "p"}})).unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some("not-the-uid".into()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    let (code, reason, msg) = api_error(cms.delete("p", &dp).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert!(
        msg.contains("Precondition failed: UID in precondition: not-the-uid"),
        "{msg}"
    );
    assert!(
        cms.get("p").await.is_ok(),
        "a failed precondition deletes nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_keeps_its_certificates_and_state() {
    let s = Server::start("restart", false);
    let tls = s.dir.join("data/tls");
    let read = |f: &str| std::fs::read(tls.join(f)).unwrap();
    let (ca, admin, token) = (read("ca.crt"), read("admin.crt"), read("token"));
    let token_text = String::from_utf8(token.clone()).unwrap();
    assert!(
        token_text.starts_with("K10") && token_text.contains("::server:"),
        "{token_text}"
    );
    let mode = |p: &std::path::Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
            & 0o777
    };
    assert_eq!(mode(&s.kubeconfig), 0o600);
    assert_eq!(mode(&tls.join("ca.key")), 0o600);
    s.ok(&["create", "configmap", "kept", "--from-literal=a=b"]);
    // SIGKILL, then start again on the same data dir with another SAN.
    // SAFETY: kill(2) on the pid of a child this test started; no memory is involved.
    unsafe { libc::kill(s.pid as i32, libc::SIGKILL) };
    let s2 = Server::start_reusing(&s, &["--tls-san", "berth.example"]);
    assert_eq!(
        (read("ca.crt"), read("admin.crt"), read("token")),
        (ca, admin, token),
        "the CA, admin certificate and token are reused"
    );
    assert!(std::fs::read_to_string(tls.join("serving.sans"))
        .unwrap()
        .lines()
        .any(|l| l == "berth.example"));
    assert_eq!(
        s2.ok(&["get", "configmap", "kept", "-o", "jsonpath={.data.a}"]),
        "b"
    );
}

/// The API server negotiates HTTP/2 through ALPN, and HTTP/1.1 with a client that offers
/// only that.
#[test]
fn alpn_chooses_http2_or_http1() {
    use rustls_pki_types::pem::PemObject;
    let s = sqlite();
    let kc = kube::config::Kubeconfig::read_from(&s.kubeconfig).unwrap();
    let ca = kc.clusters[0]
        .cluster
        .clone()
        .unwrap()
        .certificate_authority_data
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    {
        use base64::Engine as _;
        let pem = base64::engine::general_purpose::STANDARD
            .decode(ca)
            .unwrap();
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
            roots.add(c.unwrap()).unwrap();
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let negotiate = |offer: &[&[u8]]| -> Option<Vec<u8>> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        cfg.alpn_protocols = offer.iter().map(|p| p.to_vec()).collect();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).unwrap();
        let mut tcp = std::net::TcpStream::connect(s.url.trim_start_matches("https://")).unwrap();
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp).unwrap();
        }
        conn.alpn_protocol().map(|p| p.to_vec())
    };
    assert_eq!(
        negotiate(&[b"h2", b"http/1.1"]).as_deref(),
        Some(&b"h2"[..])
    );
    assert_eq!(negotiate(&[b"http/1.1"]).as_deref(), Some(&b"http/1.1"[..]));
}
