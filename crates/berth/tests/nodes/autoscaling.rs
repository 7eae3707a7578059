//! Resource metrics and autoscaling on the shared cluster: `kubectl top` against the
//! cgroups' own readings, an HPA driven by real load through a Service, and HPAs that
//! cannot compute a count.

use super::*;

/// The CPU time (ns) and working set (bytes) of a pod's cgroup, read from the host.
fn pod_cgroup_usage(uid: &str) -> (u64, u64) {
    let name = format!("pod{uid}");
    let v1 = std::path::Path::new("/sys/fs/cgroup/cpuacct");
    let read = |p: std::path::PathBuf| {
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    let keyed = |text: String, key: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    if v1.is_dir() {
        let cpu = find_cgroup(v1, &name).expect("the pod's cpuacct cgroup");
        let mem = find_cgroup(std::path::Path::new("/sys/fs/cgroup/memory"), &name)
            .expect("the pod's memory cgroup");
        let usage: u64 = read(mem.join("memory.usage_in_bytes"))
            .trim()
            .parse()
            .unwrap();
        let inactive = keyed(read(mem.join("memory.stat")), "total_inactive_file");
        (
            read(cpu.join("cpuacct.usage")).trim().parse().unwrap(),
            usage.saturating_sub(inactive),
        )
    } else {
        let d =
            find_cgroup(std::path::Path::new("/sys/fs/cgroup"), &name).expect("the pod's cgroup");
        let usage: u64 = read(d.join("memory.current")).trim().parse().unwrap();
        let inactive = keyed(read(d.join("memory.stat")), "inactive_file");
        (
            keyed(read(d.join("cpu.stat")), "usage_usec") * 1000,
            usage.saturating_sub(inactive),
        )
    }
}

/// `kubectl top pod` rows: name → (millicores, MiB).
fn top_pods(args: &[&str]) -> Vec<(String, u64, u64)> {
    let mut a = vec!["top", "pod", "--no-headers"];
    a.extend_from_slice(args);
    let out = kubectl_out(&a);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let n = f.len();
            (n >= 3).then(|| {
                (
                    f[..n - 2].join(" "),
                    f[n - 2].trim_end_matches('m').parse().unwrap_or(u64::MAX),
                    f[n - 1].trim_end_matches("Mi").parse().unwrap_or(u64::MAX),
                )
            })
        })
        .collect()
}

#[test]
fn kubectl_top_shows_busy_and_idle_pods_as_their_cgroups_measure_them() {
    let ns = ns("top");
    let pod = |name: &str, cmd: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: {name}}}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: busybox:latest\n    imagePullPolicy: Never\n    command: [\"sh\", \"-c\", \"{cmd}\"]\n    resources: {{requests: {{cpu: 50m, memory: 16Mi}}, limits: {{cpu: 300m, memory: 64Mi}}}}\n")
    };
    kubectl_in(
        &["-n", &ns, "apply", "-f", "-"],
        &format!(
            "{}---\n{}",
            pod("busy", "while :; do :; done"),
            pod("idle", "exec sleep 3600")
        ),
    );
    wait_for(&ns, "pod/busy", "condition=Ready");
    wait_for(&ns, "pod/idle", "condition=Ready");
    // The metrics API is discovered as metrics-server's would be.
    let groups = kubectl_ok(&["api-versions"]);
    assert!(
        groups.lines().any(|l| l == "metrics.k8s.io/v1beta1"),
        "{groups}"
    );
    let resources = kubectl_ok(&[
        "api-resources",
        "--api-group=metrics.k8s.io",
        "--no-headers",
    ]);
    assert!(
        resources.contains("PodMetrics") && resources.contains("NodeMetrics"),
        "{resources}"
    );

    // Both pods show once two readings of each exist; the busy one runs at its limit.
    let rows = poll("kubectl top shows both pods", 60, || {
        let rows = top_pods(&["-n", &ns]);
        (rows.len() == 2 && rows.iter().any(|r| r.0 == "busy" && r.1 > 150)).then_some(rows)
    });
    let busy = rows.iter().find(|r| r.0 == "busy").unwrap();
    let idle = rows.iter().find(|r| r.0 == "idle").unwrap();
    eprintln!(
        "kubectl top: busy {}m {}Mi, idle {}m {}Mi",
        busy.1, busy.2, idle.1, idle.2
    );
    assert!(
        busy.1 <= 330,
        "a pod limited to 300m cannot use more: {busy:?}"
    );
    assert!(idle.1 <= 5, "an idle pod is near zero: {idle:?}");

    // The figures are the cgroup's: its rate over a window like the metrics' equals the
    // API's CPU, and its working set the API's memory.
    let uid = get(&ns, "pod/busy", "{.metadata.uid}");
    let (c0, _) = pod_cgroup_usage(&uid);
    let t0 = std::time::Instant::now();
    let raw = kubectl_ok(&[
        "get",
        "--raw",
        &format!("/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods/busy"),
    ]);
    let m: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(m["kind"], "PodMetrics", "{raw}");
    assert_eq!(m["metadata"]["labels"]["app"], "busy", "{raw}");
    let window = m["window"]
        .as_str()
        .unwrap()
        .trim_end_matches('s')
        .parse::<f64>()
        .unwrap();
    assert!(
        (1.0..=5.0).contains(&window),
        "the window is the sampling interval: {raw}"
    );
    std::thread::sleep(std::time::Duration::from_secs(3));
    let (c1, ws) = pod_cgroup_usage(&uid);
    let cgroup_milli = (c1 - c0) as f64 / t0.elapsed().as_nanos() as f64 * 1000.0;
    // Thousandths of a core: millicores.
    let api_milli =
        quantity::milli(m["containers"][0]["usage"]["cpu"].as_str().unwrap()).unwrap() as f64;
    eprintln!(
        "busy: cgroup {cgroup_milli:.0}m over 3 s, metrics API {api_milli:.0}m over {window}s"
    );
    assert!(
        (api_milli - cgroup_milli).abs() <= 0.2 * cgroup_milli + 15.0,
        "metrics API {api_milli}m against the cgroup's {cgroup_milli}m"
    );
    let api_mem =
        quantity::units(m["containers"][0]["usage"]["memory"].as_str().unwrap()).unwrap() as f64;
    assert!(
        (api_mem - ws as f64).abs() <= 0.25 * ws as f64 + (1 << 20) as f64,
        "metrics API memory {api_mem} against the cgroup's working set {ws}"
    );

    // --containers, -A with --sort-by, a label selector, nodes.
    let out = kubectl_ok(&["top", "pod", "-n", &ns, "--containers", "--no-headers"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("busy") && l.contains("main")),
        "{out}"
    );
    let all = top_pods(&["-A", "--sort-by=cpu"]);
    let pos = |n: &str| {
        all.iter()
            .position(|r| r.0.ends_with(&format!(" {n}")) || r.0 == n)
    };
    assert!(
        pos("busy").unwrap() < pos("idle").unwrap(),
        "sorted by CPU: {all:?}"
    );
    assert!(
        all.iter().any(|r| r.0.starts_with(&format!("{ns} "))),
        "with namespaces: {all:?}"
    );
    let sel = top_pods(&["-n", &ns, "-l", "app=idle"]);
    assert_eq!(
        sel.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
        ["idle"]
    );
    let nodes = kubectl_ok(&["top", "node", "--no-headers"]);
    assert_eq!(nodes.lines().count(), 2, "{nodes}");
    for l in nodes.lines() {
        let cpu: u64 = l
            .split_whitespace()
            .nth(1)
            .unwrap()
            .trim_end_matches('m')
            .parse()
            .unwrap();
        assert!(cpu > 0, "a node's CPU is measured: {nodes}");
    }
    // A pod with no metrics is a NotFound; the API is read-only.
    let o = kubectl_out(&["top", "pod", "-n", &ns, "nosuch"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not found"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = kubectl_out(&[
        "delete",
        "--raw",
        &format!("/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods/busy"),
    ]);
    assert!(!o.status.success(), "metrics cannot be deleted");
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]);
}

/// A web server whose CGI burns CPU on every request, behind a Service.
fn burner(ns: &str, replicas: u32, requests: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: burn}}
data:
  burn: |
    #!/bin/sh
    echo Content-Type: text/plain
    echo
    i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done
    echo "$HOSTNAME"
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {ns}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: httpd
        image: busybox:latest
        imagePullPolicy: Never
        command: ["httpd", "-f", "-p", "8080", "-h", "/www"]
        {requests}
        readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
        volumeMounts: [{{name: cgi, mountPath: /www/cgi-bin}}]
      volumes: [{{name: cgi, configMap: {{name: burn, defaultMode: 0755}}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {ns}}}
spec:
  selector: {{app: web}}
  ports: [{{port: 8080}}]
"#
    )
}

fn replicas(ns: &str) -> (String, String) {
    let s = get(
        ns,
        "hpa/web",
        "{.status.currentReplicas}/{.status.desiredReplicas}",
    );
    let d = get(ns, "deploy/web", "{.spec.replicas}/{.status.readyReplicas}");
    (s, d)
}

#[test]
fn an_hpa_scales_a_deployment_up_under_load_and_back_down_after_its_window() {
    let ns = ns("hpa");
    kubectl_in(
        &["-n", &ns, "apply", "-f", "-"],
        &burner(
            &ns,
            1,
            "resources: {requests: {cpu: 50m}, limits: {cpu: 200m}}",
        ),
    );
    wait_for(&ns, "deploy/web", "condition=Available");
    kubectl_in(
        &["-n", &ns, "apply", "-f", "-"],
        r#"apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: web}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  minReplicas: 1
  maxReplicas: 4
  metrics:
  - type: Resource
    resource: {name: cpu, target: {type: Utilization, averageUtilization: 50}}
  behavior:
    scaleDown:
      stabilizationWindowSeconds: 10
"#,
    );
    // Defaults filled in as Kubernetes fills them.
    assert_eq!(
        get(&ns, "hpa/web", "{.spec.behavior.scaleUp.selectPolicy}"),
        "Max"
    );
    assert_eq!(
        get(
            &ns,
            "hpa/web",
            "{.spec.behavior.scaleDown.policies[0].type}"
        ),
        "Percent"
    );
    // Idle, it measures and holds at one replica.
    poll("the HPA measures the idle deployment", 60, || {
        let t = kubectl_ok(&["-n", &ns, "get", "hpa", "web", "--no-headers"]);
        (!t.contains("<unknown>") && t.contains("cpu: ")).then_some(())
    });
    assert_eq!(get(&ns, "deploy/web", "{.spec.replicas}"), "1");

    // Load: one client in a loop through the Service.
    kubectl_in(
        &["-n", &ns, "apply", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata: {name: load}\nspec:\n  terminationGracePeriodSeconds: 0\n  containers:\n  - name: load\n    image: busybox:latest\n    imagePullPolicy: Never\n    command: [\"sh\", \"-c\", \"while :; do wget -q -O- http://web:8080/cgi-bin/burn >/dev/null 2>&1; done\"]\n",
    );
    let t0 = std::time::Instant::now();
    let mut last = (String::new(), String::new());
    let mut timeline = Vec::new();
    poll("the HPA scales the deployment up under load", 150, || {
        let r = replicas(&ns);
        if r != last {
            timeline.push(format!(
                "{:>5.1}s hpa {} deploy {}",
                t0.elapsed().as_secs_f64(),
                r.0,
                r.1
            ));
            eprintln!("{}", timeline.last().unwrap());
            last = r.clone();
        }
        let ready: u32 =
            r.1.split('/')
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        (ready >= 3).then_some(())
    });
    let table = kubectl_ok(&["-n", &ns, "get", "hpa", "web"]);
    eprintln!("{table}");
    let described = kubectl_ok(&["-n", &ns, "describe", "hpa", "web"]);
    for want in [
        "ScalingActive",
        "ValidMetricFound",
        "SuccessfulRescale",
        "resource cpu on pods",
    ] {
        assert!(described.contains(want), "{want} not in\n{described}");
    }
    assert!(
        table.contains("TARGETS") && table.contains("/50%"),
        "{table}"
    );
    let events = kubectl_ok(&[
        "-n",
        &ns,
        "get",
        "events",
        "--field-selector",
        "reason=SuccessfulRescale",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(
        events.contains("New size: ")
            && events.contains("cpu resource utilization (percentage of request) above target"),
        "{events}"
    );
    let limited = get(
        &ns,
        "hpa/web",
        "{.status.conditions[?(@.type==\"ScalingActive\")].reason}",
    );
    assert_eq!(limited, "ValidMetricFound");

    // Load stops: back to one replica once the window of higher recommendations passed.
    kubectl_ok(&["-n", &ns, "delete", "pod", "load", "--wait=false"]);
    let t1 = std::time::Instant::now();
    poll("the HPA scales back down after the load", 150, || {
        let r = replicas(&ns);
        if r != last {
            timeline.push(format!(
                "{:>5.1}s hpa {} deploy {} (load stopped {:.1}s ago)",
                t0.elapsed().as_secs_f64(),
                r.0,
                r.1,
                t1.elapsed().as_secs_f64()
            ));
            eprintln!("{}", timeline.last().unwrap());
            last = r.clone();
        }
        (r.1.starts_with("1/")).then_some(())
    });
    assert!(
        t1.elapsed().as_secs() >= 10,
        "not before the 10 s stabilization window: {timeline:?}"
    );
    let events = kubectl_ok(&[
        "-n",
        &ns,
        "get",
        "events",
        "--field-selector",
        "reason=SuccessfulRescale",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(events.contains("All metrics below target"), "{events}");
    eprintln!("replicas over time:\n{}", timeline.join("\n"));
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]);
}

#[test]
fn hpas_without_requests_metrics_or_target_say_why_and_hold_their_replicas() {
    let ns = ns("hpafail");
    // No requests: `kubectl autoscale`, then the condition naming the container.
    kubectl_in(&["-n", &ns, "apply", "-f", "-"], &burner(&ns, 2, ""));
    wait_for(&ns, "deploy/web", "condition=Available");
    kubectl_ok(&[
        "-n",
        &ns,
        "autoscale",
        "deployment",
        "web",
        "--cpu-percent=50",
        "--min=1",
        "--max=5",
    ]);
    let cond = |name: &str, t: &str| {
        get(&ns, &format!("hpa/{name}"), &format!("{{.status.conditions[?(@.type==\"{t}\")].status}} {{.status.conditions[?(@.type==\"{t}\")].reason}}: {{.status.conditions[?(@.type==\"{t}\")].message}}"))
    };
    let c = poll("the HPA reports the missing requests", 60, || {
        let c = cond("web", "ScalingActive");
        c.contains("missing request").then_some(c)
    });
    assert!(c.starts_with("False FailedGetResourceMetric: the HPA was unable to compute the replica count: failed to get cpu utilization: missing request for cpu in container httpd of Pod web-"), "{c}");
    let table = kubectl_ok(&["-n", &ns, "get", "hpa", "web", "--no-headers"]);
    assert!(table.contains("cpu: <unknown>/50%"), "{table}");

    // Pods that never start have no metrics; a Pods metric has no API to come from; a
    // target that does not exist has no scale.
    kubectl_in(
        &["-n", &ns, "apply", "-f", "-"],
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: never}
spec:
  replicas: 2
  selector: {matchLabels: {app: never}}
  template:
    metadata: {labels: {app: never}}
    spec:
      containers:
      - {name: c, image: "127.0.0.1:1/none:1", resources: {requests: {cpu: 10m}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: other}
spec:
  replicas: 2
  selector: {matchLabels: {app: other}}
  template:
    metadata: {labels: {app: other}}
    spec:
      terminationGracePeriodSeconds: 0
      containers:
      - {name: c, image: busybox:latest, imagePullPolicy: Never, command: [sleep, "3600"]}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: never}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: never}
  maxReplicas: 6
  metrics: [{type: Resource, resource: {name: cpu, target: {type: Utilization, averageUtilization: 10}}}]
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: custom}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: other}
  maxReplicas: 6
  metrics: [{type: Pods, pods: {metric: {name: requests_per_second}, target: {type: AverageValue, averageValue: "10"}}}]
---
apiVersion: autoscaling/v1
kind: HorizontalPodAutoscaler
metadata: {name: ghost}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: ghost}
  maxReplicas: 3
  targetCPUUtilizationPercentage: 60
"#,
    );
    let c = poll("the HPA of pods without metrics says so", 60, || {
        let c = cond("never", "ScalingActive");
        c.starts_with("False").then_some(c)
    });
    assert!(
        c.contains("FailedGetResourceMetric")
            && c.contains("no metrics returned from resource metrics API"),
        "{c}"
    );
    let c = poll(
        "the HPA with a Pods metric says which API is missing",
        60,
        || {
            let c = cond("custom", "ScalingActive");
            c.starts_with("False").then_some(c)
        },
    );
    assert!(
        c.contains("FailedGetPodsMetric") && c.contains("custom.metrics.k8s.io"),
        "{c}"
    );
    let c = poll("the HPA of a missing target says so", 60, || {
        let c = cond("ghost", "AbleToScale");
        c.starts_with("False").then_some(c)
    });
    assert!(
        c.starts_with(
            "False FailedGetScale: the HPA controller was unable to get the target's current scale"
        ),
        "{c}"
    );
    // Several syncs (2 s apart here) later nothing was scaled.
    std::thread::sleep(std::time::Duration::from_secs(5));
    for d in ["web", "never", "other"] {
        assert_eq!(
            get(&ns, &format!("deploy/{d}"), "{.spec.replicas}"),
            "2",
            "{d}"
        );
    }
    // A custom resource with a scale subresource is scaled through it: below its HPA's
    // minimum, it is raised to it without any metric.
    kubectl_in(
        &["apply", "-f", "-"],
        r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: scalers.autoscale.example.com}
spec:
  group: autoscale.example.com
  scope: Namespaced
  names: {plural: scalers, kind: Scaler}
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
      scale: {specReplicasPath: .spec.replicas, statusReplicasPath: .status.replicas, labelSelectorPath: .status.selector}
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#,
    );
    wait_for(
        "default",
        "crd/scalers.autoscale.example.com",
        "condition=Established",
    );
    kubectl_in(
        &["-n", &ns, "apply", "-f", "-"],
        "apiVersion: autoscale.example.com/v1
kind: Scaler
metadata: {name: s}
spec: {replicas: 1}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: s}
spec:
  scaleTargetRef: {apiVersion: autoscale.example.com/v1, kind: Scaler, name: s}
  minReplicas: 2
  maxReplicas: 3
",
    );
    poll(
        "the HPA raises the custom resource to its minimum",
        60,
        || (get(&ns, "scaler/s", "{.spec.replicas}") == "2").then_some(()),
    );
    let events = kubectl_ok(&[
        "-n",
        &ns,
        "get",
        "events",
        "--field-selector",
        "reason=SuccessfulRescale,involvedObject.name=s",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(
        events.contains("New size: 2; reason: Current number of replicas below Spec.MinReplicas"),
        "{events}"
    );
    kubectl_ok(&["delete", "crd", "scalers.autoscale.example.com"]);
    let warnings = kubectl_ok(&[
        "-n",
        &ns,
        "get",
        "events",
        "--field-selector",
        "type=Warning",
        "-o",
        "jsonpath={.items[*].reason}",
    ]);
    assert!(
        warnings.contains("FailedGetResourceMetric") && warnings.contains("FailedGetScale"),
        "{warnings}"
    );
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]);
}
