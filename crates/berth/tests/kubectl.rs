//! kubectl 1.32 against `berth server`, on both store backends (SQLite and a real etcd):
//! discovery, CRUD with kubectl's tables and output formats, the three patch types,
//! client- and server-side apply, kustomize, diff, scale, edit, wait, watch, deletion,
//! custom resources, and bad input answered with Kubernetes' Status.

mod cluster;
mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use cluster::{mask_ages, Server};

fn sqlite() -> &'static Server {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| Server::start("kubectl-sqlite", false))
}

fn etcd() -> &'static Server {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| Server::start("kubectl-etcd", true))
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(mod $name {
            #[test]
            fn sqlite() {
                super::$name(super::sqlite())
            }
            #[test]
            fn etcd() {
                super::$name(super::etcd())
            }
        })*
    };
}

on_both_backends!(
    discovery_and_explain,
    create_get_describe_and_output_formats,
    patch_label_annotate,
    client_side_apply_three_times,
    server_side_apply_conflicts,
    kustomize_diff_and_scale,
    edit_wait_and_watch,
    delete_cascade_and_finalizers,
    custom_resources_with_printer_columns,
    bad_input_is_refused_and_nothing_stored,
    namespace_deletion_empties_it,
    paging_and_selectors,
    dry_run_warnings_and_versions,
    node_subresources_answer_clearly,
);

const DEPLOY: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: busybox:1.36
        ports:
        - containerPort: 80
        env:
        - {name: A, value: \"1\"}
        - {name: B, value: \"2\"}
";

fn discovery_and_explain(s: &Server) {
    let v = s.ok(&["version", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&v).unwrap();
    assert_eq!(v["serverVersion"]["major"], "1");
    assert_eq!(v["serverVersion"]["minor"], "32");
    let r = s.ok(&["api-resources"]);
    let head = r.lines().next().unwrap();
    assert_eq!(
        head.split_whitespace().collect::<Vec<_>>(),
        ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]
    );
    for line in [
        "pods po v1 true Pod",
        "deployments deploy apps/v1 true Deployment",
        "customresourcedefinitions crd,crds apiextensions.k8s.io/v1 false CustomResourceDefinition",
        "horizontalpodautoscalers hpa autoscaling/v2 true HorizontalPodAutoscaler",
        "leases coordination.k8s.io/v1 true Lease",
        "priorityclasses pc scheduling.k8s.io/v1 false PriorityClass",
        "storageclasses sc storage.k8s.io/v1 false StorageClass",
        "clusterroles rbac.authorization.k8s.io/v1 false ClusterRole",
    ] {
        let want: Vec<&str> = line.split(' ').collect();
        assert!(
            r.lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == want),
            "api-resources lacks {line}:\n{r}"
        );
    }
    let versions = s.ok(&["api-versions"]);
    for gv in [
        "v1",
        "apps/v1",
        "autoscaling/v1",
        "autoscaling/v2",
        "batch/v1",
        "events.k8s.io/v1",
        "policy/v1",
        "discovery.k8s.io/v1",
        "networking.k8s.io/v1",
    ] {
        assert!(
            versions.lines().any(|l| l == gv),
            "api-versions lacks {gv}:\n{versions}"
        );
    }
    // Prometheus metrics: requests by verb, resource and code; open watches; store latencies.
    s.ok(&["get", "namespaces"]);
    let m = s.ok(&["get", "--raw", "/metrics"]);
    for want in ["apiserver_request_total{verb=\"LIST\",resource=\"namespaces\",code=\"200\"}", "apiserver_request_duration_seconds_bucket{verb=\"LIST\",resource=\"namespaces\",le=\"0.005\"}", "apiserver_longrunning_requests{verb=\"WATCH\"}", "berth_store_request_duration_seconds_count{operation=\"create\"}"] {
        assert!(m.contains(want), "/metrics lacks {want}");
    }
    let e = s.ok(&["explain", "deployment.spec.strategy"]);
    assert!(e.contains("KIND:       Deployment"), "{e}");
    assert!(e.contains("FIELD: strategy <DeploymentStrategy>"), "{e}");
    assert!(
        e.contains("rollingUpdate\t<RollingUpdateDeployment>"),
        "{e}"
    );
    assert!(e.contains("type\t<string>"), "{e}");
}

fn create_get_describe_and_output_formats(s: &Server) {
    let ns = s.namespace("crud");
    assert_eq!(
        s.ok_in(&["create", "-n", &ns, "-f", "-"], DEPLOY),
        "deployment.apps/web created\n"
    );
    s.ok(&[
        "create",
        "configmap",
        "cfg",
        "-n",
        &ns,
        "--from-literal=a=1",
        "--from-literal=b=2",
    ]);
    s.ok(&[
        "create",
        "service",
        "clusterip",
        "svc",
        "-n",
        &ns,
        "--tcp=80:8080",
    ]);
    let t = mask_ages(&s.ok(&["get", "deploy", "-n", &ns]));
    assert_eq!(
        t,
        "NAME   READY   UP-TO-DATE   AVAILABLE   AGE\nweb    0/2     0            0           AGE"
    );
    let t = mask_ages(&s.ok(&["get", "deploy", "-n", &ns, "-o", "wide"]));
    assert_eq!(t, "NAME   READY   UP-TO-DATE   AVAILABLE   AGE   CONTAINERS   IMAGES         SELECTOR\nweb    0/2     0            0           AGE   web          busybox:1.36   app=web");
    let t = mask_ages(&s.ok(&["get", "configmaps", "-n", &ns]));
    // Every namespace holds the cluster CA, as in Kubernetes.
    assert_eq!(
        t,
        "NAME               DATA   AGE\ncfg                2      AGE\nkube-root-ca.crt   1      AGE"
    );
    let svc = s.ok(&[
        "get",
        "svc",
        "svc",
        "-n",
        &ns,
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    assert!(svc.starts_with("10.43."), "cluster IP {svc}");
    let t = mask_ages(&s.ok(&["get", "svc", "-n", &ns]));
    let w = svc.len().max("CLUSTER-IP".len()) + 3;
    let want = format!("NAME   TYPE        {:<w$}EXTERNAL-IP   PORT(S)   AGE\nsvc    ClusterIP   {svc:<w$}<none>        80/TCP    AGE", "CLUSTER-IP");
    assert_eq!(t, want);
    assert_eq!(
        s.ok(&["get", "deploy,cm", "-n", &ns, "-o", "name"]),
        "deployment.apps/web\nconfigmap/cfg\nconfigmap/kube-root-ca.crt\n"
    );
    // A replace that leaves the cluster IP out keeps the one allocated.
    let svc_yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: svc, labels: {changed: \"yes\"}}\nspec:\n  ports: [{name: 80-8080, port: 80, targetPort: 8080}]\n";
    s.ok_in(&["replace", "-n", &ns, "-f", "-"], svc_yaml);
    assert_eq!(
        s.ok(&[
            "get",
            "svc",
            "svc",
            "-n",
            &ns,
            "-o",
            "jsonpath={.spec.clusterIP} {.metadata.labels.changed}"
        ]),
        format!("{svc} yes")
    );
    // Protobuf of a Go struct inlined in its parent (IngressRule's IngressRuleValue).
    s.ok(&[
        "create",
        "ingress",
        "ing",
        "-n",
        &ns,
        "--rule=foo.com/=svc:80",
        "--class=nginx",
    ]);
    assert_eq!(
        s.ok(&["get", "ingress", "ing", "-n", &ns, "-o", "jsonpath={.spec}"]),
        r#"{"ingressClassName":"nginx","rules":[{"host":"foo.com","http":{"paths":[{"backend":{"service":{"name":"svc","port":{"number":80}}},"path":"/","pathType":"Exact"}]}}]}"#
    );
    // A ReplicationController's selector is a plain map; its table shows it as one.
    s.ok_in(&["create", "-n", &ns, "-f", "-"], "apiVersion: v1\nkind: ReplicationController\nmetadata: {name: rc}\nspec:\n  template:\n    metadata: {labels: {app: rc}}\n    spec: {containers: [{name: c, image: busybox:1.36}]}\n");
    let t = mask_ages(&s.ok(&["get", "rc", "-n", &ns, "-o", "wide"]));
    assert_eq!(t, "NAME   DESIRED   CURRENT   READY   AGE   CONTAINERS   IMAGES         SELECTOR\nrc     1         0         0       AGE   c            busybox:1.36   app=rc");
    assert_eq!(s.ok(&["get", "deploy", "web", "-n", &ns, "-o", "jsonpath={.spec.template.spec.containers[0].image} {.spec.strategy.type} {.spec.template.spec.restartPolicy}"]), "busybox:1.36 RollingUpdate Always");
    assert_eq!(
        s.ok(&[
            "get",
            "deploy",
            "-n",
            &ns,
            "-o",
            "custom-columns=NAME:.metadata.name,REPLICAS:.spec.replicas"
        ]),
        "NAME   REPLICAS\nweb    2\n"
    );
    let y = s.ok(&["get", "deploy", "web", "-n", &ns, "-o", "yaml"]);
    assert!(
        y.contains("  generation: 1\n")
            && y.contains("imagePullPolicy: IfNotPresent")
            && y.contains("revisionHistoryLimit: 10"),
        "{y}"
    );
    let j: serde_json::Value = serde_json::from_str(&s.ok(&[
        "get",
        "deploy",
        "web",
        "-n",
        &ns,
        "-o",
        "json",
        "--show-managed-fields",
    ]))
    .unwrap();
    assert_eq!(j["metadata"]["uid"].as_str().unwrap().len(), 36);
    assert_eq!(j["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
    assert_eq!(
        j["metadata"]["managedFields"][0]["manager"],
        "kubectl-create"
    );
    let all = mask_ages(&s.ok(&[
        "get",
        "cm",
        "-A",
        "--field-selector",
        &format!("metadata.namespace={ns}"),
    ]));
    assert_eq!(
        all,
        format!("NAMESPACE   NAME               DATA   AGE\n{ns:<11} cfg                2      AGE\n{ns:<11} kube-root-ca.crt   1      AGE")
    );
    let d = s.ok(&["describe", "deploy", "web", "-n", &ns]);
    for want in [
        "Name:                   web",
        &format!("Namespace:              {ns}"),
        "Selector:               app=web",
        "Replicas:               2 desired | 0 updated | 0 total | 0 available | 0 unavailable",
        "StrategyType:           RollingUpdate",
        "RollingUpdateStrategy:  25% max unavailable, 25% max surge",
        "    Image:      busybox:1.36",
    ] {
        assert!(d.contains(want), "describe lacks {want:?}:\n{d}");
    }
    assert!(
        d.lines()
            .any(|l| l.starts_with("Events:") && l.ends_with("<none>")),
        "{d}"
    );
    // kubectl's generators send protobuf; zero values of pointer fields survive, Go's
    // zero value fields do not appear.
    s.ok(&[
        "create",
        "deployment",
        "zero",
        "-n",
        &ns,
        "--image=busybox:1.36",
        "--replicas=0",
        "--port=80",
        "--",
        "sleep",
        "1",
    ]);
    let y = s.ok(&["get", "deploy", "zero", "-n", &ns, "-o", "yaml"]);
    assert!(
        y.contains("  replicas: 0\n")
            && y.contains("        - containerPort: 80\n          protocol: TCP\n")
            && y.contains("        - sleep\n"),
        "{y}"
    );
    for absent in ["hostPort", "stdin", "paused", "generation: 0", "1970"] {
        assert!(!y.contains(absent), "{absent} in {y}");
    }
    let e = s.err(&["get", "pods", "nothere", "-n", &ns]);
    assert_eq!(
        e,
        "Error from server (NotFound): pods \"nothere\" not found\n"
    );
    let e = s.err_in(&["create", "-n", &ns, "-f", "-"], DEPLOY);
    assert_eq!(e, "Error from server (AlreadyExists): error when creating \"STDIN\": deployments.apps \"web\" already exists\n");
}

fn patch_label_annotate(s: &Server) {
    let ns = s.namespace("patch");
    s.ok_in(&["create", "-n", &ns, "-f", "-"], DEPLOY);
    assert_eq!(s.ok(&["patch", "deploy", "web", "-n", &ns, "-p", r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"busybox:1.37"}]}}}}"#]), "deployment.apps/web patched\n");
    assert_eq!(
        s.ok(&[
            "patch",
            "deploy",
            "web",
            "-n",
            &ns,
            "--type=merge",
            "-p",
            r#"{"spec":{"replicas":4}}"#
        ]),
        "deployment.apps/web patched\n"
    );
    assert_eq!(
        s.ok(&[
            "patch",
            "deploy",
            "web",
            "-n",
            &ns,
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/revisionHistoryLimit","value":3}]"#
        ]),
        "deployment.apps/web patched\n"
    );
    let got = s.ok(&["get", "deploy", "web", "-n", &ns, "-o", "jsonpath={.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].ports[0].containerPort} {.spec.replicas} {.spec.revisionHistoryLimit} {.metadata.generation}"]);
    assert_eq!(
        got, "busybox:1.37 80 4 3 4",
        "the strategic merge patch kept the container's other fields"
    );
    assert_eq!(
        s.ok(&[
            "patch",
            "deploy",
            "web",
            "-n",
            &ns,
            "--type=merge",
            "-p",
            r#"{"spec":{"replicas":4}}"#
        ]),
        "deployment.apps/web patched (no change)\n"
    );
    s.ok(&["label", "deploy", "web", "-n", &ns, "tier=fe"]);
    s.ok(&["annotate", "deploy", "web", "-n", &ns, "note=hello"]);
    assert_eq!(
        s.ok(&["get", "deploy", "-n", &ns, "-l", "tier=fe", "-o", "name"]),
        "deployment.apps/web\n"
    );
    assert_eq!(
        s.ok(&["get", "deploy", "-n", &ns, "-l", "tier!=fe", "-o", "name"]),
        ""
    );
    s.ok(&["label", "deploy", "web", "-n", &ns, "tier-"]);
    assert_eq!(
        s.ok(&[
            "get",
            "deploy",
            "web",
            "-n",
            &ns,
            "-o",
            "jsonpath={.metadata.labels} {.metadata.annotations.note}"
        ]),
        r#"{"app":"web"} hello"#
    );
    let e = s.err(&["label", "deploy", "web", "-n", &ns, "app=other"]);
    assert!(
        e.contains("'app' already has a value (web), and --overwrite is false"),
        "{e}"
    );
    let e = s.err(&[
        "patch",
        "deploy",
        "web",
        "-n",
        &ns,
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/nothere/x","value":3}]"#,
    ]);
    assert!(
        e.starts_with("The request is invalid: ") && e.contains("/spec/nothere/x"),
        "{e}"
    );
    let e = s.err(&[
        "patch",
        "deploy",
        "web",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"selector":{"matchLabels":{"app":"other"}}}}"#,
    ]);
    assert!(
        e.contains("The Deployment \"web\" is invalid")
            && e.contains("spec.selector: Invalid value")
            && e.contains("field is immutable"),
        "{e}"
    );
}

fn client_side_apply_three_times(s: &Server) {
    let ns = s.namespace("csa");
    assert_eq!(
        s.ok_in(&["apply", "-n", &ns, "-f", "-"], DEPLOY),
        "deployment.apps/web created\n"
    );
    // Change a field, add a field and a list element merged by key.
    let second = DEPLOY
        .replace("replicas: 2", "replicas: 3")
        .replace(
            "{name: B, value: \"2\"}",
            "{name: B, value: \"20\"}\n        - {name: C, value: \"3\"}",
        )
        .replace(
            "    spec:\n      containers:",
            "    spec:\n      terminationGracePeriodSeconds: 5\n      containers:",
        );
    assert_eq!(
        s.ok_in(&["apply", "-n", &ns, "-f", "-"], &second),
        "deployment.apps/web configured\n"
    );
    assert_eq!(
        s.ok(&["get", "deploy", "web", "-n", &ns, "-o", "jsonpath={.spec.replicas} {.spec.template.spec.terminationGracePeriodSeconds} {.spec.template.spec.containers[0].env}"]),
        r#"3 5 [{"name":"A","value":"1"},{"name":"B","value":"20"},{"name":"C","value":"3"}]"#
    );
    // A field set by someone else survives the next apply; fields removed from the file go.
    s.ok(&["annotate", "deploy", "web", "-n", &ns, "other=kept"]);
    let third = second
        .replace("        - {name: A, value: \"1\"}\n", "")
        .replace("      terminationGracePeriodSeconds: 5\n", "");
    assert_eq!(
        s.ok_in(&["apply", "-n", &ns, "-f", "-"], &third),
        "deployment.apps/web configured\n"
    );
    assert_eq!(
        s.ok(&["get", "deploy", "web", "-n", &ns, "-o", "jsonpath={.spec.template.spec.terminationGracePeriodSeconds} {.spec.template.spec.containers[0].env} {.metadata.annotations.other}"]),
        r#"30 [{"name":"B","value":"20"},{"name":"C","value":"3"}] kept"#
    );
    assert_eq!(
        s.ok_in(&["apply", "-n", &ns, "-f", "-"], &third),
        "deployment.apps/web unchanged\n"
    );
}

fn server_side_apply_conflicts(s: &Server) {
    let ns = s.namespace("ssa");
    assert_eq!(
        s.ok_in(&["apply", "--server-side", "-n", &ns, "-f", "-"], DEPLOY),
        "deployment.apps/web serverside-applied\n"
    );
    let mf = s.ok(&[
        "get",
        "deploy",
        "web",
        "-n",
        &ns,
        "-o",
        "jsonpath={.metadata.managedFields[*].manager}:{.metadata.managedFields[*].operation}",
    ]);
    assert_eq!(mf, "kubectl:Apply");
    s.ok(&["scale", "deploy", "web", "-n", &ns, "--replicas=5"]);
    let e = s.err_in(&["apply", "--server-side", "-n", &ns, "-f", "-"], DEPLOY);
    assert!(e.starts_with("error: Apply failed with 1 conflict: conflict with \"kubectl\" using apps/v1: .spec.replicas") || e.contains("conflict with \"kubectl-scale\""), "{e}");
    assert_eq!(
        s.ok(&[
            "get",
            "deploy",
            "web",
            "-n",
            &ns,
            "-o",
            "jsonpath={.spec.replicas}"
        ]),
        "5",
        "a conflicting apply changes nothing"
    );
    assert_eq!(
        s.ok_in(
            &[
                "apply",
                "--server-side",
                "--force-conflicts",
                "-n",
                &ns,
                "-f",
                "-"
            ],
            DEPLOY
        ),
        "deployment.apps/web serverside-applied\n"
    );
    assert_eq!(
        s.ok(&[
            "get",
            "deploy",
            "web",
            "-n",
            &ns,
            "-o",
            "jsonpath={.spec.replicas}"
        ]),
        "2"
    );
    // Fields dropped from the applied configuration are removed.
    let fewer = DEPLOY.replace("        - {name: B, value: \"2\"}\n", "");
    s.ok_in(&["apply", "--server-side", "-n", &ns, "-f", "-"], &fewer);
    assert_eq!(
        s.ok(&[
            "get",
            "deploy",
            "web",
            "-n",
            &ns,
            "-o",
            "jsonpath={.spec.template.spec.containers[0].env}"
        ]),
        r#"[{"name":"A","value":"1"}]"#
    );
}

fn kustomize_diff_and_scale(s: &Server) {
    let ns = s.namespace("kust");
    let dir = s.dir.join(format!("kustomize-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("deploy.yaml"), DEPLOY).unwrap();
    std::fs::write(dir.join("kustomization.yaml"), format!("namespace: {ns}\nnamePrefix: k-\ncommonLabels:\n  team: blue\nresources:\n- deploy.yaml\nconfigMapGenerator:\n- name: settings\n  literals: [mode=fast]\n")).unwrap();
    let out = s.ok(&["apply", "-k", dir.to_str().unwrap()]);
    assert!(
        out.contains("deployment.apps/k-web created") && out.contains("configmap/k-settings-"),
        "{out}"
    );
    assert_eq!(
        s.ok(&["get", "deploy", "-n", &ns, "-l", "team=blue", "-o", "name"]),
        "deployment.apps/k-web\n"
    );
    // diff: nothing for the same files, a unified diff (exit 1) for a change.
    let same = s.kubectl(&["diff", "-k", dir.to_str().unwrap()]);
    assert_eq!(
        same.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&same.stdout)
    );
    std::fs::write(
        dir.join("deploy.yaml"),
        DEPLOY.replace("busybox:1.36", "busybox:1.37"),
    )
    .unwrap();
    let changed = s.kubectl(&["diff", "-k", dir.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&changed.stdout);
    assert_eq!(
        changed.status.code(),
        Some(1),
        "{text}{}",
        String::from_utf8_lossy(&changed.stderr)
    );
    assert!(
        text.contains("-        image: busybox:1.36")
            && text.contains("+        image: busybox:1.37"),
        "{text}"
    );
    assert_eq!(
        s.ok(&[
            "get",
            "deploy",
            "k-web",
            "-n",
            &ns,
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}"
        ]),
        "busybox:1.36",
        "diff is a dry run"
    );
    // scale goes through the scale subresource; no controller exists to act on it.
    assert_eq!(
        s.ok(&["scale", "deploy", "k-web", "-n", &ns, "--replicas=7"]),
        "deployment.apps/k-web scaled\n"
    );
    assert_eq!(
        s.ok(&[
            "get",
            "deploy",
            "k-web",
            "-n",
            &ns,
            "-o",
            "jsonpath={.spec.replicas}"
        ]),
        "7"
    );
    let e = s.err(&[
        "scale",
        "deploy",
        "k-web",
        "-n",
        &ns,
        "--replicas=3",
        "--current-replicas=2",
    ]);
    assert!(e.contains("Expected replicas to be 2, was 7"), "{e}");
}

fn edit_wait_and_watch(s: &Server) {
    let ns = s.namespace("edit");
    s.ok(&[
        "create",
        "configmap",
        "cfg",
        "-n",
        &ns,
        "--from-literal=mode=slow",
    ]);
    let o = s
        .kubectl_cmd(&["edit", "configmap", "cfg", "-n", &ns])
        .env("EDITOR", "sed -i s/mode:\\ slow/mode:\\ fast/")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "configmap/cfg edited\n");
    assert_eq!(
        s.ok(&["get", "cm", "cfg", "-n", &ns, "-o", "jsonpath={.data.mode}"]),
        "fast"
    );

    // get -w sees every change, in order.
    let mut watch = s
        .kubectl_cmd(&[
            "get",
            "configmaps",
            "-n",
            &ns,
            "-w",
            "--output-watch-events",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let next = || {
        rx.recv_timeout(Duration::from_secs(20))
            .expect("a watch line")
    };
    let next3 = || {
        next()
            .split_whitespace()
            .take(3)
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(next3(), ["EVENT", "NAME", "DATA"]);
    assert_eq!(next3(), ["ADDED", "cfg", "1"]);
    assert_eq!(next3(), ["ADDED", "kube-root-ca.crt", "1"]);
    s.ok(&[
        "patch",
        "cm",
        "cfg",
        "-n",
        &ns,
        "-p",
        r#"{"data":{"more":"yes"}}"#,
    ]);
    assert_eq!(next3(), ["MODIFIED", "cfg", "2"]);
    s.ok(&[
        "create",
        "configmap",
        "two",
        "-n",
        &ns,
        "--from-literal=mode=x",
    ]);
    assert_eq!(next3(), ["ADDED", "two", "1"]);
    s.ok(&["delete", "cm", "two", "-n", &ns]);
    assert_eq!(next3(), ["DELETED", "two", "1"]);
    let _ = watch.kill();
    let _ = watch.wait();

    // wait --for=delete returns once the object is gone; --for=condition on a status condition.
    s.ok(&[
        "patch",
        "cm",
        "cfg",
        "-n",
        &ns,
        "-p",
        r#"{"metadata":{"finalizers":["example.com/hold"]}}"#,
    ]);
    s.ok(&["delete", "cm", "cfg", "-n", &ns, "--wait=false"]);
    // kubectl's own log (-v=6) says when its watch is established; the finalizer goes then.
    let mut waiter = s
        .kubectl_cmd(&[
            "wait",
            "--for=delete",
            "configmap/cfg",
            "-n",
            &ns,
            "--timeout=30s",
            "-v=6",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (watching_tx, watching) = std::sync::mpsc::channel();
    let log = waiter.stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(log).lines().map_while(Result::ok) {
            if l.contains("watch=true") && l.contains("200 OK") {
                let _ = watching_tx.send(());
            }
        }
    });
    watching
        .recv_timeout(Duration::from_secs(20))
        .expect("kubectl wait watches the object");
    assert!(
        waiter.try_wait().unwrap().is_none(),
        "kubectl wait ended while the object was held"
    );
    s.ok(&[
        "patch",
        "cm",
        "cfg",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    let o = waiter.wait_with_output().unwrap();
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "configmap/cfg condition met\n"
    );
    s.ok_in(&["create", "-n", &ns, "-f", "-"], DEPLOY);
    let status = r#"{"status":{"conditions":[{"type":"Available","status":"True","reason":"MinimumReplicasAvailable","message":"ok"}]}}"#;
    s.ok(&[
        "patch",
        "deploy",
        "web",
        "-n",
        &ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        status,
    ]);
    assert_eq!(
        s.ok(&[
            "wait",
            "--for=condition=Available",
            "deploy/web",
            "-n",
            &ns,
            "--timeout=10s"
        ]),
        "deployment.apps/web condition met\n"
    );
}

fn delete_cascade_and_finalizers(s: &Server) {
    let ns = s.namespace("del");
    for n in ["a", "b", "c"] {
        s.ok(&["create", "configmap", n, "-n", &ns]);
    }
    assert_eq!(
        s.ok(&["delete", "cm", "a", "-n", &ns, "--cascade=background"]),
        "configmap \"a\" deleted\n"
    );
    // Orphan and foreground are recorded as the finalizers the collector acts on.
    assert_eq!(
        s.ok(&[
            "delete",
            "cm",
            "b",
            "-n",
            &ns,
            "--cascade=orphan",
            "--wait=false"
        ]),
        "configmap \"b\" deleted\n"
    );
    assert_eq!(
        s.ok(&[
            "get",
            "cm",
            "b",
            "-n",
            &ns,
            "-o",
            "jsonpath={.metadata.finalizers}"
        ]),
        r#"["orphan"]"#
    );
    assert!(!s
        .ok(&[
            "get",
            "cm",
            "b",
            "-n",
            &ns,
            "-o",
            "jsonpath={.metadata.deletionTimestamp}"
        ])
        .is_empty());
    s.ok(&[
        "delete",
        "cm",
        "c",
        "-n",
        &ns,
        "--cascade=foreground",
        "--wait=false",
    ]);
    assert_eq!(
        s.ok(&[
            "get",
            "cm",
            "c",
            "-n",
            &ns,
            "-o",
            "jsonpath={.metadata.finalizers}"
        ]),
        r#"["foregroundDeletion"]"#
    );
    // Removing the last finalizer lets the object go.
    s.ok(&[
        "patch",
        "cm",
        "b",
        "-n",
        &ns,
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ]);
    s.ok(&[
        "patch",
        "cm",
        "c",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    assert_eq!(
        s.ok(&["get", "cm", "-n", &ns, "-o", "name"]),
        "configmap/kube-root-ca.crt\n"
    );
    // A finalizer of one's own holds the object until it is removed; kubectl delete --wait waits.
    s.ok_in(
        &["create", "-n", &ns, "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: held, finalizers: [example.com/hold]}\n",
    );
    let deleter = s
        .kubectl_cmd(&["delete", "cm", "held", "-n", &ns, "--timeout=30s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut tries = 0;
    while s
        .ok(&[
            "get",
            "cm",
            "held",
            "-n",
            &ns,
            "-o",
            "jsonpath={.metadata.deletionTimestamp}",
        ])
        .is_empty()
    {
        tries += 1;
        assert!(tries < 200, "the delete never marked the object");
        std::thread::sleep(Duration::from_millis(50));
    }
    s.ok(&[
        "patch",
        "cm",
        "held",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":[]}}"#,
    ]);
    let o = deleter.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "configmap \"held\" deleted\n"
    );
    // deletecollection with a selector.
    for n in ["x1", "x2", "y1"] {
        s.ok(&["create", "configmap", n, "-n", &ns]);
    }
    s.ok(&["label", "cm", "x1", "x2", "-n", &ns, "group=x"]);
    s.ok(&["delete", "cm", "-n", &ns, "-l", "group=x"]);
    assert_eq!(
        s.ok(&["get", "cm", "-n", &ns, "-o", "name"]),
        "configmap/kube-root-ca.crt\nconfigmap/y1\n"
    );
}

const CRD: &str = "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wg]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
      scale: {specReplicasPath: .spec.replicas, statusReplicasPath: .status.replicas}
    additionalPrinterColumns:
    - {name: Size, type: string, jsonPath: .spec.size}
    - {name: Replicas, type: integer, jsonPath: .spec.replicas}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: string, enum: [small, large]}
              replicas: {type: integer, default: 1, minimum: 0}
          status:
            type: object
            properties:
              replicas: {type: integer}
";

fn custom_resources_with_printer_columns(s: &Server) {
    let ns = s.namespace("crd");
    // One CRD per server; the etcd and SQLite servers each get theirs.
    let o = s.kubectl_in(&["apply", "-f", "-"], CRD);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    s.ok(&[
        "wait",
        "--for=condition=established",
        "crd/widgets.example.com",
        "--timeout=20s",
    ]);
    let cr =
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {size: small}\n";
    assert_eq!(
        s.ok_in(&["apply", "-n", &ns, "-f", "-"], cr),
        "widget.example.com/w1 created\n"
    );
    let t = mask_ages(&s.ok(&["get", "widgets", "-n", &ns]));
    assert_eq!(
        t, "NAME   SIZE    REPLICAS   AGE\nw1     small   1          AGE",
        "the default for replicas is applied"
    );
    assert_eq!(
        s.ok(&["scale", "wg", "w1", "-n", &ns, "--replicas=3"]),
        "widget.example.com/w1 scaled\n"
    );
    assert_eq!(
        s.ok(&[
            "get",
            "wg",
            "w1",
            "-n",
            &ns,
            "-o",
            "jsonpath={.spec.replicas}"
        ]),
        "3"
    );
    let e = s.err_in(&["create", "-n", &ns, "-f", "-"], "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w2}\nspec: {size: huge, replicas: -1}\n");
    assert!(e.contains("The Widget \"w2\" is invalid") && e.contains("spec.size: Unsupported value: \"huge\": supported values: \"small\", \"large\"") && e.contains("spec.replicas: Invalid value: -1: spec.replicas in body should be greater than or equal to 0"), "{e}");
    let e = s.err_in(&["create", "-n", &ns, "-f", "-"], "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w3}\nspec: {size: small, colour: red}\n");
    assert_eq!(e, "Error from server (BadRequest): error when creating \"STDIN\": Widget in version \"v1\" cannot be handled as a Widget: strict decoding error: unknown field \"spec.colour\"\n");
    // Unknown fields are pruned (with a warning) when validation is off.
    let o = s.kubectl_in(&["create", "--validate=false", "-n", &ns, "-f", "-"], "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w4}\nspec: {size: large, colour: red}\n");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        s.ok(&["get", "wg", "w4", "-n", &ns, "-o", "jsonpath={.spec}"]),
        r#"{"replicas":1,"size":"large"}"#
    );
    let e = s.err_in(
        &["create", "-n", &ns, "-f", "-"],
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w5}\nspec: {replicas: 2}\n",
    );
    assert!(e.contains("spec.size: Required value"), "{e}");
    // A second served version (conversion None): the same objects, with its apiVersion.
    let two = "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: gadgets.example.com}\nspec:\n  group: example.com\n  scope: Namespaced\n  names: {plural: gadgets, kind: Gadget}\n  versions:\n  - {name: v1, served: true, storage: true, schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}}\n  - {name: v2, served: true, storage: false, schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}}\n";
    let o = s.kubectl_in(&["apply", "-f", "-"], two);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    s.ok(&[
        "wait",
        "--for=condition=established",
        "crd/gadgets.example.com",
        "--timeout=20s",
    ]);
    s.ok_in(
        &["create", "-n", &ns, "-f", "-"],
        "apiVersion: example.com/v2\nkind: Gadget\nmetadata: {name: g}\nspec: {x: 1}\n",
    );
    assert_eq!(
        s.ok(&[
            "get",
            "gadgets.v1.example.com",
            "g",
            "-n",
            &ns,
            "-o",
            "jsonpath={.apiVersion} {.spec.x}"
        ]),
        "example.com/v1 1"
    );
    assert_eq!(
        s.ok(&[
            "get",
            "gadgets.v2.example.com",
            "g",
            "-n",
            &ns,
            "-o",
            "jsonpath={.apiVersion} {.spec.x}"
        ]),
        "example.com/v2 1"
    );
    s.ok(&[
        "patch",
        "wg",
        "w1",
        "-n",
        &ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"replicas":3}}"#,
    ]);
    assert_eq!(
        s.ok(&[
            "get",
            "wg",
            "w1",
            "-n",
            &ns,
            "-o",
            "jsonpath={.status.replicas} {.metadata.generation}"
        ]),
        "3 2"
    );
}

fn bad_input_is_refused_and_nothing_stored(s: &Server) {
    let ns = s.namespace("bad");
    let post = |body: &str, ct: &str| {
        let path = s
            .dir
            .join(format!("body-{}-{}.bin", std::process::id(), body.len()));
        std::fs::write(&path, body).unwrap();
        let o = s.kubectl(&[
            "create",
            "--raw",
            &format!("/api/v1/namespaces/{ns}/configmaps"),
            "-f",
            path.to_str().unwrap(),
        ]);
        let _ = ct;
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (ok, e) = post("{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",", "");
    assert!(!ok);
    assert!(e.starts_with("Error from server (BadRequest)"), "{e}");
    let (ok, e) = post(
        r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"s"}}"#,
        "",
    );
    assert!(!ok && e.contains("BadRequest"), "{e}");
    let (ok, e) = post(
        r#"{"apiVersion":"v2","kind":"ConfigMap","metadata":{"name":"s"}}"#,
        "",
    );
    assert!(!ok && e.contains("BadRequest"), "{e}");
    let big = format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"big"}},"data":{{"a":"{}"}}}}"#,
        "x".repeat(3 * 1024 * 1024 + 10)
    );
    let (ok, e) = post(&big, "");
    assert!(
        !ok && e.contains("Request entity too large: limit is 3145728"),
        "{e}"
    );
    let e = s.err_in(
        &["create", "-n", &ns, "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: Bad_Name}\n",
    );
    assert!(e.contains("The ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"), "{e}");
    let e = s.err_in(&["create", "-n", &ns, "-f", "-"], "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - name: c\n    image: busybox\n    imagePullPolicy: Sometimes\n");
    assert!(e.contains("The Pod \"p\" is invalid: spec.containers[0].imagePullPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"IfNotPresent\", \"Never\""), "{e}");
    let e = s.err_in(
        &["create", "-n", &ns, "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containerz: []\n",
    );
    assert_eq!(e, "Error from server (BadRequest): error when creating \"STDIN\": Pod in version \"v1\" cannot be handled as a Pod: strict decoding error: unknown field \"spec.containerz\"\n");
    let e = s.err_in(
        &["create", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: nowhere}\n",
    );
    assert_eq!(e, "Error from server (NotFound): error when creating \"STDIN\": namespaces \"nowhere\" not found\n");
    let e = s.err_in(&["create", "-n", &ns, "-f", "-"], "apiVersion: v1\nkind: Pod\nmetadata: {name: q}\nspec:\n  containers:\n  - name: c\n    image: busybox\n    resources: {requests: {cpu: lots}}\n");
    assert_eq!(e, "Error from server (BadRequest): error when creating \"STDIN\": Pod in version \"v1\" cannot be handled as a Pod: quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'\n");
    let e = s.err_in(&["create", "-n", &ns, "-f", "-"], "apiVersion: v1\nkind: Pod\nmetadata: {name: q}\nspec:\n  containers:\n  - name: c\n    image: busybox\n    env: [{name: A=B, value: x}]\n    ports: [{name: a-very-long-port-name, containerPort: 80}]\n");
    assert!(e.contains("spec.containers[0].ports[0].name: Invalid value: \"a-very-long-port-name\": must be no more than 15 characters") && e.contains("spec.containers[0].env[0].name: Invalid value: \"A=B\""), "{e}");
    // A stale resourceVersion: 409 Conflict, and the object keeps its value.
    s.ok(&["create", "configmap", "c", "-n", &ns, "--from-literal=k=v1"]);
    let rv = s.ok(&[
        "get",
        "cm",
        "c",
        "-n",
        &ns,
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ]);
    s.ok(&[
        "patch",
        "cm",
        "c",
        "-n",
        &ns,
        "-p",
        r#"{"data":{"k":"v2"}}"#,
    ]);
    let stale = format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c, resourceVersion: \"{rv}\"}}\ndata: {{k: v3}}\n");
    let e = s.err_in(&["replace", "-n", &ns, "-f", "-"], &stale);
    assert_eq!(e, "Error from server (Conflict): error when replacing \"STDIN\": Operation cannot be fulfilled on configmaps \"c\": the object has been modified; please apply your changes to the latest version and try again\n");
    assert_eq!(
        s.ok(&["get", "cm", "c", "-n", &ns, "-o", "jsonpath={.data.k}"]),
        "v2"
    );
    // Nothing half-made: only the one good object exists (and the namespace's CA).
    assert_eq!(
        s.ok(&["get", "cm", "-n", &ns, "-o", "name"]),
        "configmap/c\nconfigmap/kube-root-ca.crt\n"
    );
    assert_eq!(s.ok(&["get", "pods", "-n", &ns, "-o", "name"]), "");
    // A resourceVersion the server never reaches: waited for (3 s), then 504 as Kubernetes does.
    let e = s.err(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/{ns}/configmaps?resourceVersion=999999999"),
    ]);
    assert!(
        e.starts_with(
            "Error from server (Timeout): Too large resource version: 999999999, current: "
        ),
        "{e}"
    );
    // The server kept serving throughout.
    assert_eq!(s.ok(&["get", "--raw", "/readyz"]), "ok");
    // A wrong token gets 401, on every path.
    let anon_config = s.dir.join("anonymous.kubeconfig");
    std::fs::write(&anon_config, format!("apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"{}\", insecure-skip-tls-verify: true}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: nobody}}\ncurrent-context: c\nusers:\n- name: nobody\n  user: {{token: wrong}}\n", s.url)).unwrap();
    let anon = |p: &str| {
        let o = std::process::Command::new("kubectl")
            .args(["get", "--raw", p])
            .env("KUBECONFIG", &anon_config)
            .env("HOME", &s.dir)
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    for p in ["/api/v1/namespaces", "/version"] {
        let (ok, e) = anon(p);
        assert!(
            !ok && e == "error: You must be logged in to the server (Unauthorized)\n",
            "{p}: {e}"
        );
    }
}

fn namespace_deletion_empties_it(s: &Server) {
    let ns = s.namespace("gone");
    s.ok(&["create", "configmap", "c", "-n", &ns]);
    s.ok(&[
        "create",
        "secret",
        "generic",
        "x",
        "-n",
        &ns,
        "--from-literal=a=b",
    ]);
    s.ok_in(&["create", "-n", &ns, "-f", "-"], DEPLOY);
    assert_eq!(
        s.ok(&["delete", "namespace", &ns, "--timeout=60s"]),
        format!("namespace \"{ns}\" deleted\n")
    );
    let e = s.err(&["get", "namespace", &ns]);
    assert_eq!(
        e,
        format!("Error from server (NotFound): namespaces \"{ns}\" not found\n")
    );
    assert_eq!(
        s.ok(&[
            "get",
            "cm,secret,deploy",
            "-A",
            "--field-selector",
            &format!("metadata.namespace={ns}"),
            "-o",
            "name"
        ]),
        ""
    );
    // A namespace being deleted takes nothing new.
    let ns2 = s.namespace("going");
    s.ok_in(
        &["create", "-n", &ns2, "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: held, finalizers: [example.com/hold]}\n",
    );
    s.ok(&["delete", "namespace", &ns2, "--wait=false"]);
    let e = s.err(&["create", "configmap", "late", "-n", &ns2]);
    assert!(
        e.contains(
            "unable to create new content in namespace going because it is being terminated"
        ),
        "{e}"
    );
    s.ok(&[
        "patch",
        "cm",
        "held",
        "-n",
        &ns2,
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    s.ok(&[
        "wait",
        "--for=delete",
        &format!("namespace/{ns2}"),
        "--timeout=60s",
    ]);
}

fn paging_and_selectors(s: &Server) {
    let ns = s.namespace("pages");
    for i in 0..25 {
        let body = format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c{i:02}\n  labels: {{parity: {}}}\n", if i % 2 == 0 { "even" } else { "odd" });
        s.ok_in(&["create", "-n", &ns, "-f", "-"], &body);
    }
    // kubectl pages with limit/continue; the pages join to the whole list.
    let names = s.ok(&["get", "cm", "-n", &ns, "--chunk-size=4", "-o", "name"]);
    // The 25 and the namespace's kube-root-ca.crt.
    assert_eq!(names.lines().count(), 26);
    let raw: serde_json::Value = serde_json::from_str(&s.ok(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/{ns}/configmaps?limit=10"),
    ]))
    .unwrap();
    assert_eq!(raw["items"].as_array().unwrap().len(), 10);
    assert_eq!(raw["metadata"]["remainingItemCount"], 16);
    let token = raw["metadata"]["continue"].as_str().unwrap();
    let next: serde_json::Value = serde_json::from_str(&s.ok(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/{ns}/configmaps?limit=10&continue={token}"),
    ]))
    .unwrap();
    assert_eq!(next["items"][0]["metadata"]["name"], "c10");
    assert_eq!(
        next["metadata"]["resourceVersion"], raw["metadata"]["resourceVersion"],
        "pages are read at one revision"
    );
    assert_eq!(
        s.ok(&[
            "get",
            "cm",
            "-n",
            &ns,
            "-l",
            "parity=odd",
            "--chunk-size=3",
            "-o",
            "name"
        ])
        .lines()
        .count(),
        12
    );
    assert_eq!(
        s.ok(&[
            "get",
            "cm",
            "-n",
            &ns,
            "-l",
            "parity in (even),parity notin (odd)",
            "-o",
            "name"
        ])
        .lines()
        .count(),
        13
    );
    assert_eq!(
        s.ok(&[
            "get",
            "cm",
            "-n",
            &ns,
            "--field-selector",
            "metadata.name!=c00,metadata.name!=c01",
            "-o",
            "name"
        ])
        .lines()
        .count(),
        24
    );
    let e = s.err(&[
        "get",
        "cm",
        "-n",
        &ns,
        "--field-selector",
        "spec.nodeName=x",
    ]);
    assert!(
        e.contains("field label not supported: spec.nodeName"),
        "{e}"
    );
}

fn dry_run_warnings_and_versions(s: &Server) {
    let ns = s.namespace("dry");
    // Server-side dry runs answer as a create would and store nothing.
    assert_eq!(
        s.ok_in(
            &["create", "--dry-run=server", "-n", &ns, "-f", "-"],
            DEPLOY
        ),
        "deployment.apps/web created (server dry run)\n"
    );
    assert_eq!(
        s.ok_in(&["apply", "--dry-run=server", "-n", &ns, "-f", "-"], DEPLOY),
        "deployment.apps/web created (server dry run)\n"
    );
    assert_eq!(s.ok(&["get", "deploy", "-n", &ns, "-o", "name"]), "");
    s.ok_in(&["create", "-n", &ns, "-f", "-"], DEPLOY);
    assert_eq!(
        s.ok(&["delete", "deploy", "web", "-n", &ns, "--dry-run=server"]),
        "deployment.apps \"web\" deleted (server dry run)\n"
    );
    assert_eq!(
        s.ok(&["get", "deploy", "-n", &ns, "-o", "name"]),
        "deployment.apps/web\n",
        "a dry-run delete deletes nothing"
    );
    s.ok(&["delete", "deploy", "web", "-n", &ns]);
    let e = s.err_in(
        &["create", "--dry-run=server", "-n", &ns, "-f", "-"],
        &DEPLOY.replace("name: web\n", "name: Web\n"),
    );
    assert!(e.contains("The Deployment \"Web\" is invalid"), "{e}");
    // fieldValidation=Warn: stored, with the server's warning shown by kubectl.
    let o = s.kubectl_in(
        &["create", "--validate=warn", "-n", &ns, "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: w}\ndata: {a: b}\nextra: 1\n",
    );
    assert!(o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Warning: unknown field \"extra\""),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        s.ok(&["get", "cm", "w", "-n", &ns, "-o", "jsonpath={.data.a}"]),
        "b"
    );
    // One object, two versions: an autoscaling/v1 HPA read as v2, a core/v1 Event read as
    // events.k8s.io/v1.
    s.ok_in(&["create", "-n", &ns, "-f", "-"], "apiVersion: autoscaling/v1\nkind: HorizontalPodAutoscaler\nmetadata: {name: h}\nspec:\n  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}\n  minReplicas: 2\n  maxReplicas: 5\n  targetCPUUtilizationPercentage: 70\n");
    let v2: serde_json::Value = serde_json::from_str(&s.ok(&[
        "get",
        "horizontalpodautoscalers.v2.autoscaling",
        "h",
        "-n",
        &ns,
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(v2["apiVersion"], "autoscaling/v2");
    assert_eq!(
        v2["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
        70
    );
    let v1: serde_json::Value = serde_json::from_str(&s.ok(&[
        "get",
        "horizontalpodautoscalers.v1.autoscaling",
        "h",
        "-n",
        &ns,
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(
        (
            v1["spec"]["targetCPUUtilizationPercentage"].as_i64(),
            v1["spec"]["minReplicas"].as_i64()
        ),
        (Some(70), Some(2))
    );
    let t = mask_ages(&s.ok(&["get", "hpa", "-n", &ns]));
    assert_eq!(t, "NAME   REFERENCE        TARGETS              MINPODS   MAXPODS   REPLICAS   AGE\nh      Deployment/web   cpu: <unknown>/70%   2         5         0          AGE");
    let uid = s.ok(&[
        "get",
        "cm",
        "w",
        "-n",
        &ns,
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    s.ok_in(&["create", "-n", &ns, "-f", "-"], &format!("apiVersion: v1\nkind: Event\nmetadata: {{name: e1}}\ninvolvedObject: {{kind: ConfigMap, name: w, namespace: dry, uid: {uid}}}\nreason: Tested\nmessage: hello\ntype: Normal\n"));
    let ev: serde_json::Value = serde_json::from_str(&s.ok(&[
        "get",
        "events.v1.events.k8s.io",
        "e1",
        "-n",
        &ns,
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(
        (
            ev["note"].as_str(),
            ev["regarding"]["name"].as_str(),
            ev["reason"].as_str()
        ),
        (Some("hello"), Some("w"), Some("Tested"))
    );
    let d = s.ok(&["describe", "cm", "w", "-n", &ns]);
    assert!(
        d.contains("Normal  Tested") && d.contains("hello"),
        "describe shows the object's events:\n{d}"
    );
}

fn node_subresources_answer_clearly(s: &Server) {
    let ns = s.namespace("nodesub");
    s.ok_in(&["create", "-n", &ns, "-f", "-"], "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - {name: c, image: busybox}\n");
    let e = s.err(&["logs", "p", "-n", &ns]);
    assert_eq!(
        e,
        "Error from server (BadRequest): pod p does not have a host assigned\n"
    );
    // Bound through pods/binding (as the scheduler will) to a node that does not exist.
    let binding = r#"{"apiVersion":"v1","kind":"Binding","metadata":{"name":"p"},"target":{"kind":"Node","name":"n1"}}"#;
    let path = s.dir.join(format!("binding-{ns}.json"));
    std::fs::write(&path, binding).unwrap();
    s.ok(&[
        "create",
        "--raw",
        &format!("/api/v1/namespaces/{ns}/pods/p/binding"),
        "-f",
        path.to_str().unwrap(),
    ]);
    assert_eq!(
        s.ok(&[
            "get",
            "pod",
            "p",
            "-n",
            &ns,
            "-o",
            "jsonpath={.spec.nodeName}"
        ]),
        "n1"
    );
    let e = s.err(&["logs", "p", "-n", &ns]);
    assert_eq!(e, "Error from server (NotFound): nodes \"n1\" not found\n");
    // A bound pod is deleted gracefully: marked, and left for its node to finish.
    s.ok(&["delete", "pod", "p", "-n", &ns, "--wait=false"]);
    let grace = s.ok(&[
        "get",
        "pod",
        "p",
        "-n",
        &ns,
        "-o",
        "jsonpath={.metadata.deletionGracePeriodSeconds}",
    ]);
    assert_eq!(grace, "30");
    s.ok(&[
        "delete",
        "pod",
        "p",
        "-n",
        &ns,
        "--grace-period=0",
        "--force",
    ]);
    assert_eq!(s.ok(&["get", "pods", "-n", &ns, "-o", "name"]), "");
}

/// A user with `view` in one namespace reads there and nothing else, as RBAC decides; the
/// access reviews behind `kubectl auth can-i` and `whoami` say the same.
#[test]
fn a_user_with_view_in_one_namespace_reads_there_only() {
    let s = sqlite();
    s.ok(&["create", "namespace", "rbac-a"]);
    s.ok(&["create", "namespace", "rbac-b"]);
    s.ok(&[
        "-n",
        "rbac-a",
        "create",
        "configmap",
        "c",
        "--from-literal=k=v",
    ]);
    s.ok(&[
        "-n",
        "rbac-a",
        "create",
        "rolebinding",
        "alice-view",
        "--clusterrole=view",
        "--user=alice",
    ]);
    let out = std::process::Command::new(common::BERTH)
        .args([
            "kubeconfig",
            "--user",
            "alice",
            "--group",
            "devs",
            "--data-dir",
        ])
        .arg(s.dir.join("data"))
        .arg("--kubeconfig")
        .arg(&s.kubeconfig)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kc = s.dir.join("alice.yaml");
    std::fs::write(&kc, &out.stdout).unwrap();
    let alice = |args: &[&str]| {
        std::process::Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &kc)
            .output()
            .unwrap()
    };
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    // The binding reaches the authorizer within moments of its creation.
    let mut ok = None;
    for _ in 0..50 {
        let o = alice(&["-n", "rbac-a", "get", "configmaps", "-o", "name"]);
        if o.status.success() {
            ok = Some(text(&o));
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ok
        .expect("alice lists configmaps in rbac-a")
        .contains("configmap/c"));
    let o = alice(&["-n", "rbac-b", "get", "pods"]);
    assert!(!o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).trim(),
        "Error from server (Forbidden): pods is forbidden: User \"alice\" cannot list resource \"pods\" in API group \"\" in the namespace \"rbac-b\""
    );
    let o = alice(&["-n", "rbac-a", "delete", "configmap", "c"]);
    assert!(
        text(&o).contains(
            "configmaps \"c\" is forbidden: User \"alice\" cannot delete resource \"configmaps\""
        ),
        "{}",
        text(&o)
    );
    let o = alice(&["-n", "rbac-a", "get", "secrets"]);
    assert!(!o.status.success(), "view reads no secrets");
    let o = alice(&["get", "nodes"]);
    assert!(
        text(&o).contains("cannot list resource \"nodes\" in API group \"\" at the cluster scope"),
        "{}",
        text(&o)
    );
    // kubectl auth can-i, and --list.
    for (args, want) in [
        (vec!["-n", "rbac-a", "list", "pods"], "yes"),
        (vec!["-n", "rbac-a", "get", "deployments.apps"], "yes"),
        (vec!["-n", "rbac-a", "create", "pods"], "no"),
        (vec!["-n", "rbac-b", "list", "pods"], "no"),
        (
            vec![
                "-n",
                "rbac-a",
                "create",
                "rolebindings.rbac.authorization.k8s.io",
            ],
            "no",
        ),
    ] {
        let mut a = vec!["auth", "can-i"];
        a.extend_from_slice(&args);
        let o = alice(&a);
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            want,
            "{args:?}: {}",
            text(&o)
        );
        assert_eq!(o.status.success(), want == "yes");
    }
    let o = alice(&["auth", "can-i", "--list", "-n", "rbac-a"]);
    let list = text(&o);
    assert!(
        list.lines()
            .any(|l| l.starts_with("pods ") && l.contains("[get list watch]")),
        "{list}"
    );
    assert!(
        list.lines().any(
            |l| l.starts_with("selfsubjectaccessreviews.authorization.k8s.io")
                && l.contains("[create]")
        ),
        "{list}"
    );
    assert!(!list.lines().any(|l| l.starts_with("secrets ")), "{list}");
    let o = alice(&[
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username} {.status.userInfo.groups}",
    ]);
    let who = text(&o);
    assert!(
        who.starts_with("alice ") && who.contains("devs") && who.contains("system:authenticated"),
        "{who}"
    );
    // The admin asks about alice.
    let sar = s.ok_in(
        &["create", "-f", "-", "-o", "jsonpath={.status.allowed}"],
        "apiVersion: authorization.k8s.io/v1\nkind: SubjectAccessReview\nspec:\n  user: alice\n  resourceAttributes: {namespace: rbac-a, verb: watch, resource: pods}\n",
    );
    assert_eq!(sar.trim(), "true");
    // Reviews are answered, never stored or listed.
    let o = s
        .kubectl_cmd(&["get", "selfsubjectaccessreviews"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    // The admin acts as alice; alice may not act as anyone.
    let o = s
        .kubectl_cmd(&[
            "--as=alice",
            "-n",
            "rbac-a",
            "get",
            "configmaps",
            "-o",
            "name",
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("configmap/c"),
        "{}",
        text(&o)
    );
    let o = s
        .kubectl_cmd(&["--as=alice", "-n", "rbac-b", "get", "pods"])
        .output()
        .unwrap();
    assert!(
        text(&o).contains("User \"alice\" cannot list resource \"pods\""),
        "{}",
        text(&o)
    );
    let o = alice(&["--as=bob", "-n", "rbac-a", "get", "pods"]);
    assert!(
        text(&o).contains("users \"bob\" is forbidden: User \"alice\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"),
        "{}",
        text(&o)
    );
    // With admin in rbac-a alice may bind what she holds there, and nothing more.
    s.ok(&[
        "-n",
        "rbac-a",
        "create",
        "rolebinding",
        "alice-admin",
        "--clusterrole=admin",
        "--user=alice",
    ]);
    let mut granted = false;
    for _ in 0..50 {
        if alice(&[
            "auth",
            "can-i",
            "-n",
            "rbac-a",
            "create",
            "rolebindings.rbac.authorization.k8s.io",
        ])
        .status
        .success()
        {
            granted = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(granted);
    let o = alice(&[
        "-n",
        "rbac-a",
        "create",
        "rolebinding",
        "bob-view",
        "--clusterrole=view",
        "--user=bob",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = alice(&[
        "-n",
        "rbac-a",
        "create",
        "role",
        "secrets",
        "--verb=get",
        "--resource=secrets",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = alice(&[
        "-n",
        "rbac-a",
        "create",
        "rolebinding",
        "alice-root",
        "--clusterrole=cluster-admin",
        "--user=alice",
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("is attempting to grant RBAC permissions not currently held"),
        "{}",
        text(&o)
    );
    let o = alice(&[
        "-n",
        "rbac-a",
        "create",
        "role",
        "nodes",
        "--verb=list",
        "--resource=nodes",
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("Resources:[\"nodes\"], Verbs:[\"list\"]"),
        "{}",
        text(&o)
    );
    assert!(!String::from_utf8_lossy(
        &s.kubectl_cmd(&["-n", "rbac-a", "get", "rolebindings", "-o", "name"])
            .output()
            .unwrap()
            .stdout
    )
    .contains("alice-root"));
    s.ok(&["-n", "rbac-a", "delete", "rolebinding", "alice-admin"]);
    // Without the binding, nothing.
    s.ok(&["-n", "rbac-a", "delete", "rolebinding", "alice-view"]);
    let mut denied = false;
    for _ in 0..50 {
        if !alice(&["-n", "rbac-a", "get", "configmaps"])
            .status
            .success()
        {
            denied = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(denied, "the binding's deletion takes effect");
    // The command refuses to mint an admin.
    let o = std::process::Command::new(common::BERTH)
        .args([
            "kubeconfig",
            "--user",
            "mallory",
            "--group",
            "system:masters",
            "--data-dir",
        ])
        .arg(s.dir.join("data"))
        .output()
        .unwrap();
    assert!(!o.status.success());
}

/// An EncryptionConfiguration for Secrets with these providers, written under `dir`.
fn encryption_config(dir: &std::path::Path, file: &str, providers: &str) -> String {
    let p = dir.join(file);
    std::fs::write(
        &p,
        format!("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n{providers}"),
    )
    .unwrap();
    p.display().to_string()
}

/// Whether any file under `dir` contains `needle`.
fn found_in_files(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p)
                .unwrap_or_default()
                .windows(needle.len())
                .any(|w| w == needle)
            {
                hits.push(p);
            }
        }
    }
    hits
}

const AESCBC_OLD: &str = "  - aescbc:\n      keys: [{name: old, secret: MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=}]\n";
const SECRETBOX_NEW: &str = "  - secretbox:\n      keys: [{name: new, secret: ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=}]\n";

/// With an EncryptionConfiguration, Secrets are ciphertext in SQLite and in etcd while
/// kubectl reads them as ever; keys rotate by restarting with the new key first, after
/// which the old key is no longer needed; a configuration that cannot read what is stored
/// stops the server with the key named.
#[test]
fn secrets_are_encrypted_at_rest_and_keys_rotate() {
    let keys = cluster::base_dir("enc-keys");
    let old = encryption_config(&keys, "old.yaml", AESCBC_OLD);
    let sentinel = "hunter2-at-rest-sentinel";
    let b64 = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(sentinel)
    };
    let secret = format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: s}}\nstringData: {{password: {sentinel}}}\n");
    for etcd in [false, true] {
        let s = Server::start_with(
            if etcd { "enc-etcd" } else { "enc-sqlite" },
            etcd,
            &["--encryption-provider-config", &old],
        );
        s.ok_in(&["create", "-f", "-"], &secret);
        assert_eq!(
            s.ok(&["get", "secret", "s", "-o", "jsonpath={.data.password}"]),
            b64
        );
        // A ConfigMap is not covered: stored as it is.
        s.ok(&[
            "create",
            "configmap",
            "plain",
            "--from-literal=k=visible-configmap-value",
        ]);
        let data = s.dir.clone();
        for needle in [sentinel, b64.as_str()] {
            let hits = found_in_files(&data, needle.as_bytes());
            assert!(hits.is_empty(), "{needle} in clear in {hits:?}");
        }
        assert!(!found_in_files(&data, b"k8s:enc:aescbc:v1:old:").is_empty());
        if etcd {
            continue;
        }
        // Rotation: the new key first, the old one second; the server re-writes.
        let new_then_old = encryption_config(
            &keys,
            "rotate.yaml",
            &format!("{SECRETBOX_NEW}{AESCBC_OLD}"),
        );
        // SAFETY: kill(2) on the pid of a child this test started; no memory is involved.
        unsafe { libc::kill(s.pid as i32, libc::SIGKILL) };
        let s2 = Server::start_reusing(&s, &["--encryption-provider-config", &new_then_old]);
        assert_eq!(
            s2.ok(&["get", "secret", "s", "-o", "jsonpath={.data.password}"]),
            b64
        );
        // SAFETY: as above.
        unsafe { libc::kill(s2.pid as i32, libc::SIGKILL) };
        let new_only = encryption_config(&keys, "new.yaml", SECRETBOX_NEW);
        let s3 = Server::start_reusing(&s2, &["--encryption-provider-config", &new_only]);
        assert_eq!(
            s3.ok(&["get", "secret", "s", "-o", "jsonpath={.data.password}"]),
            b64
        );
        // SAFETY: as above.
        unsafe { libc::kill(s3.pid as i32, libc::SIGKILL) };
        // A configuration that reads none of it: the server says which key it lacks.
        let wrong = encryption_config(
            &keys,
            "wrong.yaml",
            "  - aesgcm:\n      keys: [{name: other, secret: MDEyMzQ1Njc4OWFiY2RlZg==}]\n",
        );
        let out = std::process::Command::new(common::BERTH)
            .args(["server", "--disable-agent", "--disable-scheduler"])
            .args([
                "--disable-controller-manager",
                "--bind-address",
                "127.0.0.1",
            ])
            .args(["--https-listen-port", "0", "--data-dir"])
            .arg(s3.dir.join("data"))
            .arg("--write-kubeconfig")
            .arg(keys.join("kc.yaml"))
            .args(["--encryption-provider-config", &wrong])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains("stored encrypted as secretbox:v1:new, which no provider of the encryption configuration reads"),
            "{err}"
        );
        // A malformed configuration is refused before anything starts.
        let bad = encryption_config(
            &keys,
            "bad.yaml",
            "  - aescbc:\n      keys: [{name: k, secret: c2hvcnQ=}]\n",
        );
        let out = std::process::Command::new(common::BERTH)
            .args(["server", "--disable-agent", "--data-dir"])
            .arg(keys.join("unused"))
            .args(["--encryption-provider-config", &bad])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains("the key is 5 bytes; it must be 16, 24, 32 bytes"),
            "{err}"
        );
    }
}

/// PodSecurity by namespace labels: `enforce` refuses a pod with Kubernetes' message,
/// `warn` admits it with kubectl's warning, a workload's template is warned about and never
/// refused, and a label naming no level is refused.
#[test]
fn pod_security_levels_apply_by_namespace_label() {
    let s = sqlite();
    let ns = s.namespace("pss");
    s.ok(&[
        "label",
        "ns",
        &ns,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/warn=restricted",
    ]);
    let pod = |name: &str, sc: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers:\n  - name: c\n    image: busybox\n    securityContext: {sc}\n")
    };
    let e = s.err_in(
        &["create", "-n", &ns, "-f", "-"],
        &pod("priv", "{privileged: true}"),
    );
    assert!(e.contains("Error from server (Forbidden): error when creating \"STDIN\": pods \"priv\" is forbidden: violates PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false (container \"c\" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container \"c\" must set securityContext.capabilities.drop=[\"ALL\"]), privileged (container \"c\" must not set securityContext.privileged=true), runAsNonRoot != true (pod or container \"c\" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container \"c\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"), "{e}");
    assert_eq!(s.ok(&["get", "pods", "-n", &ns, "-o", "name"]), "");
    // A pod that meets the level, with its service-account volume, is admitted.
    s.ok_in(
        &["create", "-n", &ns, "-f", "-"],
        &pod("ok", "{allowPrivilegeEscalation: false, runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}, capabilities: {drop: [ALL]}}"),
    );
    // A Deployment whose template violates it is created, with the warning.
    let o = s.kubectl_in(
        &[
            "create",
            "-n",
            &ns,
            "deployment",
            "web",
            "--image",
            "busybox",
        ],
        "",
    );
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("Warning: would violate PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false (container \"busybox\""),
        "{err}"
    );
    // warn only: admitted, with the warning.
    let warned = s.namespace("pss-warn");
    s.ok(&[
        "label",
        "ns",
        &warned,
        "pod-security.kubernetes.io/warn=baseline",
        "pod-security.kubernetes.io/warn-version=v1.32",
    ]);
    let o = s.kubectl_in(
        &["create", "-n", &warned, "-f", "-"],
        &pod("priv", "{privileged: true}"),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Warning: would violate PodSecurity \"baseline:v1.32\": privileged (container \"c\" must not set securityContext.privileged=true)"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let e = s.err(&[
        "label",
        "ns",
        &warned,
        "pod-security.kubernetes.io/enforce=strict",
    ]);
    assert!(
        e.contains("Unsupported value: \"strict\": supported values: \"privileged\", \"baseline\", \"restricted\""),
        "{e}"
    );
}

/// LimitRanger fills in and bounds containers' resources; ResourceQuota refuses what
/// would go over it with Kubernetes' message, and its usage follows deletions.
#[test]
fn limit_ranges_default_and_quotas_refuse_what_goes_over() {
    let s = sqlite();
    let ns = s.namespace("quota");
    s.ok_in(
        &["apply", "-n", &ns, "-f", "-"],
        "apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: compute}\nspec:\n  hard: {pods: \"2\", requests.cpu: \"1\", requests.memory: 1Gi}\n---\napiVersion: v1\nkind: LimitRange\nmetadata: {name: defaults}\nspec:\n  limits:\n  - type: Container\n    default: {cpu: 500m, memory: 256Mi}\n    defaultRequest: {cpu: 400m}\n    max: {cpu: \"1\"}\n",
    );
    let pod = |name: &str, resources: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers:\n  - name: c\n    image: busybox\n    resources: {resources}\n")
    };
    s.ok_in(&["create", "-n", &ns, "-f", "-"], &pod("a", "{}"));
    assert_eq!(
        s.ok(&[
            "get",
            "pod",
            "a",
            "-n",
            &ns,
            "-o",
            "jsonpath={.spec.containers[0].resources}"
        ]),
        r#"{"limits":{"cpu":"500m","memory":"256Mi"},"requests":{"cpu":"400m","memory":"256Mi"}}"#
    );
    s.ok_in(
        &["create", "-n", &ns, "-f", "-"],
        &pod("b", "{requests: {cpu: 500m, memory: 256Mi}}"),
    );
    let e = s.err_in(
        &["create", "-n", &ns, "-f", "-"],
        &pod("c", "{requests: {cpu: 200m, memory: 64Mi}}"),
    );
    assert!(
        e.contains("pods \"c\" is forbidden: exceeded quota: compute, requested: pods=1,requests.cpu=200m, used: pods=2,requests.cpu=900m, limited: pods=2,requests.cpu=1"),
        "{e}"
    );
    let e = s.err_in(
        &["create", "-n", &ns, "-f", "-"],
        &pod("d", "{limits: {cpu: \"2\"}}"),
    );
    assert!(
        e.contains("pods \"d\" is forbidden: maximum cpu usage per Container is 1, but limit is 2"),
        "{e}"
    );
    assert_eq!(
        s.ok(&[
            "get",
            "quota",
            "compute",
            "-n",
            &ns,
            "-o",
            "jsonpath={.status.used}"
        ]),
        r#"{"pods":"2","requests.cpu":"900m","requests.memory":"512Mi"}"#
    );
    // Usage follows a deletion, after which the pod fits.
    s.ok(&["delete", "pod", "a", "-n", &ns, "--wait=false"]);
    let t0 = std::time::Instant::now();
    loop {
        let used = s.ok(&[
            "get",
            "quota",
            "compute",
            "-n",
            &ns,
            "-o",
            "jsonpath={.status.used.pods}",
        ]);
        if used == "1" {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the quota still counts {used} pods"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    s.ok_in(
        &["create", "-n", &ns, "-f", "-"],
        &pod("c", "{requests: {cpu: 200m, memory: 64Mi}}"),
    );
    let e = s.err_in(
        &["create", "-n", &ns, "-f", "-"],
        "apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: x}\nspec:\n  hard: {pods: \"-1x\"}\n",
    );
    assert!(
        e.contains("quantities must match the regular expression"),
        "{e}"
    );
}

/// The ImageSignaturePolicy kind is served and printed like any kind, and a policy whose
/// key or mode is wrong is refused with the field named.
#[test]
fn image_signature_policies_are_validated() {
    let s = sqlite();
    let e = s.err_in(
        &["apply", "-f", "-"],
        "apiVersion: security.berth.io/v1\nkind: ImageSignaturePolicy\nmetadata: {name: bad}\nspec:\n  images: [\"**\"]\n  keys: [{name: k, publicKey: not-a-key}]\n",
    );
    assert!(
        e.contains("The ImageSignaturePolicy \"bad\" is invalid: spec.keys[0].publicKey: Invalid value: \"not-a-key\": not a PEM \"PUBLIC KEY\" block"),
        "{e}"
    );
    let e = s.err_in(
        &["apply", "-f", "-"],
        "apiVersion: security.berth.io/v1\nkind: ImageSignaturePolicy\nmetadata: {name: bad}\nspec:\n  images: [\"**\"]\n  mode: audit\n  keys: [{name: k, publicKey: x}]\n",
    );
    assert!(e.contains("spec.mode"), "{e}");
    let resources = s.ok(&["api-resources", "--api-group", "security.berth.io"]);
    assert!(
        resources.contains("imagesignaturepolicies") && resources.contains("isp"),
        "{resources}"
    );
    assert_eq!(s.ok(&["get", "isp"]), "");
}

/// berth's scheduler and controllers run as `system:kube-scheduler` and
/// `system:kube-controller-manager` with Kubernetes-style least privileges.
#[test]
fn the_scheduler_and_controllers_hold_only_their_roles() {
    let s = sqlite();
    let can = |user: &str, args: &[&str]| {
        let mut a = vec!["auth", "can-i", "--as", user];
        a.extend_from_slice(args);
        String::from_utf8_lossy(&s.kubectl(&a).stdout)
            .trim()
            .to_string()
    };
    let sched = "system:kube-scheduler";
    let cm = "system:kube-controller-manager";
    assert_eq!(
        can(sched, &["create", "pods", "--subresource", "binding"]),
        "yes"
    );
    assert_eq!(can(sched, &["list", "nodes"]), "yes");
    assert_eq!(can(sched, &["get", "secrets"]), "no");
    assert_eq!(can(sched, &["create", "deployments"]), "no");
    assert_eq!(can(cm, &["create", "replicasets.apps"]), "yes");
    assert_eq!(
        can(
            cm,
            &["update", "deployments.apps", "--subresource", "scale"]
        ),
        "yes"
    );
    assert_eq!(can(cm, &["create", "secrets"]), "no");
    assert_eq!(can(cm, &["create", "clusterrolebindings"]), "no");
    assert_eq!(can(cm, &["impersonate", "users"]), "no");
}

/// A server publishes its registry for the nodes (`kube-public/berth-registry`, its
/// advertised address and the registry's port) and serves it there; with
/// `--disable-registry` it serves and publishes none.
#[test]
fn a_server_publishes_its_registry_unless_disabled() {
    let s = sqlite();
    let reg = s.registry.clone().expect("the server serves a registry");
    let published = s.ok(&[
        "-n",
        "kube-public",
        "get",
        "configmap",
        "berth-registry",
        "-o",
        "jsonpath={.data.*}",
    ]);
    let port = reg.rsplit(':').next().unwrap();
    assert!(
        published.ends_with(&format!(":{port}")),
        "{published} names the registry's port {port}"
    );
    // Its /v2/ asks for credentials (Docker's Basic challenge).
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(s.dir.join("data/tls/ca.crt"))
        .arg(format!("https://{reg}/v2/"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
    let off = Server::start_with("no-registry", false, &["--disable-registry"]);
    assert!(off.registry.is_none());
    let o = off.kubectl(&["-n", "kube-public", "get", "configmap", "berth-registry"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("NotFound"));
}
