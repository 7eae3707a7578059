//! Nodes with kubectl: `berth server` and two `berth agent`s, each in a network namespace of
//! its own (`tests/cluster/nodes.rs`). Pods run on the agents' engines with init containers,
//! env from ConfigMaps and Secrets, volumes, limits and probes; `kubectl logs/exec/attach/cp`
//! reach them through the API server; crashes back off, failed liveness probes and OOM kills
//! show as the kubelet shows them; deletion is graceful; an agent SIGKILLed and restarted
//! keeps its pods; and bad input gets the kubelet's reasons. Every test has its namespace;
//! the agent restart test kills node-1's agent, so other tests put what must stay reachable
//! through its kubelet on node-0.

#[path = "nodes/autoscaling.rs"]
mod autoscaling;
mod cluster;
mod common;

use std::sync::OnceLock;

use cluster::nodes::Cluster;

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

extern "C" fn cleanup_cluster() {
    if let Some(c) = CLUSTER.get() {
        c.cleanup();
    }
}

/// The shared cluster (made once; everything it made is removed at exit).
fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| {
        // Metrics sampled every second and HPAs synced every two, so that autoscaling
        // tests take seconds.
        let c = Cluster::start_full(
            "nodes",
            2,
            &[
                "--metric-resolution",
                "2s",
                "--horizontal-pod-autoscaler-sync-period",
                "2s",
                "--insecure-registry",
                "10.240.0.0/12",
            ],
            // The test registries listen on the cluster's bridge, over plain http.
            &[
                "--housekeeping-interval",
                "1s",
                "--insecure-registry",
                "10.240.0.0/12",
            ],
        );
        // SAFETY: atexit registers a plain function; it runs once after the tests.
        unsafe { libc::atexit(cleanup_cluster) };
        load_busybox(&c);
        c
    })
}

/// Every node gets busybox in its engine, as a user loads a local image.
fn load_busybox(c: &Cluster) {
    let tar = common::rootfs_tar(&c.server.dir, "bb", "busybox\n");
    for h in &c.hosts {
        h.berth_ok(&[
            "image",
            "import",
            "-c",
            "CMD [\"sh\"]",
            tar.to_str().unwrap(),
            "busybox:latest",
        ]);
    }
}

fn with<T>(f: impl FnOnce(&Cluster) -> T) -> T {
    f(cluster())
}

fn kubectl_ok(args: &[&str]) -> String {
    with(|c| c.server.ok(args))
}

fn kubectl_in(args: &[&str], stdin: &str) -> String {
    with(|c| c.server.ok_in(args, stdin))
}

fn kubectl_out(args: &[&str]) -> std::process::Output {
    let cmd = with(|c| c.server.kubectl_cmd(args));
    let mut cmd = cmd;
    cmd.output().unwrap()
}

fn ns(name: &str) -> String {
    with(|c| c.server.namespace(name))
}

fn wait_for(ns: &str, what: &str, cond: &str) {
    let o = kubectl_out(&[
        "-n",
        ns,
        "wait",
        what,
        &format!("--for={cond}"),
        "--timeout=90s",
    ]);
    if !o.status.success() {
        let desc = kubectl_out(&["-n", ns, "get", what, "-o", "yaml"]);
        let logs = with(|c| {
            c.hosts
                .iter()
                .map(|h| h.log())
                .collect::<Vec<_>>()
                .join("\n")
        });
        panic!(
            "{what} never got {cond}: {}\n{}\n{logs}",
            String::from_utf8_lossy(&o.stderr),
            String::from_utf8_lossy(&desc.stdout)
        );
    }
}

/// Polls `f` every 200 ms until it gives a value; fails with `what` after `secs`.
fn poll<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = std::time::Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t0.elapsed().as_secs() < secs, "{what}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// `s`, unless it is empty.
fn nonempty(s: String) -> Option<String> {
    Some(s).filter(|s| !s.is_empty())
}

fn get(ns: &str, what: &str, path: &str) -> String {
    kubectl_ok(&["-n", ns, "get", what, "-o", &format!("jsonpath={path}")])
}

fn pod_yaml(name: &str, node: &str, body: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 2\n{body}")
}

#[test]
fn a_pod_with_init_env_volumes_limits_and_readiness_runs() {
    let ns = ns("run");
    kubectl_in(
        &["-n", &ns, "apply", "-f", "-"],
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cfg}}\ndata: {{greeting: hello, app.conf: \"port=80\\n\"}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: sec}}\nstringData: {{password: s3cret}}\n---\n{}",
            pod_yaml("web", "node-0", r#"  initContainers:
  - name: init
    image: busybox:latest
    imagePullPolicy: Never
    command: ["sh", "-c", "echo init done > /work/init.txt"]
    volumeMounts: [{name: work, mountPath: /work}]
  containers:
  - name: app
    image: busybox:latest
    imagePullPolicy: Never
    command: ["sh", "-c", "echo $(GREETING) $PASSWORD $MY_POD; cat /work/init.txt; trap 'exit 0' TERM; while true; do sleep 0.2; done"]
    env:
    - {name: GREETING, valueFrom: {configMapKeyRef: {name: cfg, key: greeting}}}
    - {name: PASSWORD, valueFrom: {secretKeyRef: {name: sec, key: password}}}
    - {name: MY_POD, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    resources: {limits: {cpu: 200m, memory: 64Mi}, requests: {cpu: 100m, memory: 32Mi}}
    readinessProbe: {exec: {command: ["cat", "/etc/cfg/app.conf"]}, periodSeconds: 1}
    volumeMounts:
    - {name: config, mountPath: /etc/cfg}
    - {name: work, mountPath: /work}
  volumes:
  - {name: config, configMap: {name: cfg}}
  - {name: work, emptyDir: {}}
"#)
        ),
    );
    wait_for(&ns, "pod/web", "condition=Ready");
    let status: serde_json::Value =
        serde_json::from_str(&kubectl_ok(&["-n", &ns, "get", "pod", "web", "-o", "json"])).unwrap();
    let st = &status["status"];
    assert_eq!(st["phase"], "Running");
    assert_eq!(st["qosClass"], "Burstable");
    let node_ip = with(|c| c.hosts[0].ip.clone());
    assert_eq!(st["hostIP"], node_ip.as_str());
    let cidr = get("default", "node/node-0", "{.spec.podCIDR}");
    let pod_ip = st["podIP"].as_str().unwrap();
    assert!(
        pod_ip.starts_with(cidr.trim_end_matches("0/24")),
        "pod IP {pod_ip} is not in the node's pod CIDR {cidr}"
    );
    assert!(st["startTime"].is_string());
    for c in [
        "PodScheduled",
        "Initialized",
        "ContainersReady",
        "Ready",
        "PodReadyToStartContainers",
    ] {
        let cond = st["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["type"] == c);
        assert_eq!(
            cond.map(|x| x["status"].clone()),
            Some("True".into()),
            "{c}: {st}"
        );
    }
    let cs = &st["containerStatuses"][0];
    assert_eq!(cs["ready"], true);
    assert_eq!(cs["started"], true);
    assert_eq!(cs["restartCount"], 0);
    assert!(cs["containerID"].as_str().unwrap().starts_with("berth://"));
    assert!(cs["imageID"].as_str().unwrap().starts_with("sha256:"));
    assert!(cs["state"]["running"]["startedAt"].is_string());
    let init = &st["initContainerStatuses"][0];
    assert_eq!(init["state"]["terminated"]["reason"], "Completed");
    assert_eq!(init["state"]["terminated"]["exitCode"], 0);

    let logs = kubectl_ok(&["-n", &ns, "logs", "web", "-c", "app"]);
    assert_eq!(logs, "hello s3cret web\ninit done\n");
    // The node's engine shows the pod's containers with the kubelet's labels.
    let ps = with(|c| {
        c.hosts[0].berth_ok(&[
            "ps",
            "--filter",
            "label=io.kubernetes.pod.name=web",
            "--filter",
            &format!("label=io.kubernetes.pod.namespace={ns}"),
            "--filter",
            "label=io.kubernetes.container.name=app",
            "--format",
            "{{.Names}}",
        ])
    });
    assert!(ps.trim().starts_with(&format!("k8s_app_web_{ns}_")), "{ps}");
    // The configMap volume follows updates (the ..data swap).
    kubectl_ok(&[
        "-n",
        &ns,
        "patch",
        "configmap",
        "cfg",
        "-p",
        r#"{"data":{"app.conf":"port=81\n"}}"#,
    ]);
    let mut seen = String::new();
    for _ in 0..100 {
        seen = kubectl_ok(&[
            "-n",
            &ns,
            "exec",
            "web",
            "-c",
            "app",
            "--",
            "cat",
            "/etc/cfg/app.conf",
        ]);
        if seen == "port=81\n" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(seen, "port=81\n");
    // The kubelet's summary, through nodes/proxy: the pod shows from the sampler's next
    // cycle (a second here).
    let (summary, pod) = poll("the pod's containers in the kubelet's summary", 30, || {
        let summary: serde_json::Value = serde_json::from_str(&kubectl_ok(&[
            "get",
            "--raw",
            "/api/v1/nodes/node-0/proxy/stats/summary",
        ]))
        .unwrap();
        let pod = summary["pods"].as_array()?.iter().find(|p| {
            p["podRef"]["name"] == "web"
                && p["podRef"]["namespace"] == ns.as_str()
                && p["containers"].as_array().is_some_and(|c| !c.is_empty())
        })?;
        Some((summary.clone(), pod.clone()))
    });
    assert_eq!(summary["node"]["nodeName"], "node-0");
    assert!(
        summary["node"]["memory"]["workingSetBytes"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(pod["containers"][0]["name"], "app");
    assert!(
        pod["containers"][0]["memory"]["workingSetBytes"]
            .as_u64()
            .unwrap()
            > 0
    );
    kubectl_ok(&["-n", &ns, "delete", "pod", "web"]);
    let left = with(|c| {
        c.hosts[0].berth_ok(&[
            "ps",
            "-a",
            "--filter",
            "label=io.kubernetes.pod.name=web",
            "-q",
        ])
    });
    assert_eq!(
        left.trim(),
        "",
        "the pod's containers are gone from the node"
    );
}

#[test]
fn logs_exec_attach_and_cp_reach_the_container() {
    let ns = ns("streams");
    kubectl_in(
        &["-n", &ns, "apply", "-f", "-"],
        &pod_yaml(
            "box",
            "node-0",
            r#"  containers:
  - name: c
    image: busybox:latest
    imagePullPolicy: Never
    stdin: true
    command: ["sh", "-c", "echo started; trap 'exit 0' TERM; while read line; do echo got $line; done"]
"#,
        ),
    );
    wait_for(&ns, "pod/box", "condition=Ready");
    // exec: output, stderr, exit code.
    let o = kubectl_out(&[
        "-n",
        &ns,
        "exec",
        "box",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "out\n");
    assert!(String::from_utf8_lossy(&o.stderr).contains("err\n"));
    // exec -i: stdin reaches the process and its end closes it.
    assert_eq!(
        kubectl_in(&["-n", &ns, "exec", "-i", "box", "--", "wc", "-c"], "12345").trim(),
        "5"
    );
    // exec -it on a pseudo-terminal.
    let kc = with(|c| c.server.kubeconfig.clone());
    let mut cmd = std::process::Command::new("kubectl");
    cmd.arg("--kubeconfig")
        .arg(&kc)
        .args(["-n", &ns, "exec", "-it", "box", "--", "sh"]);
    let (code, out) = common::on_tty(cmd, "tty; stty size; exit 7\n");
    assert_eq!(code, 7, "{out}");
    assert!(out.contains("/dev/pts/"), "{out}");
    assert!(
        out.contains("30 100"),
        "the terminal size reaches the process: {out}"
    );
    // The same over SPDY, for clients that do not use WebSockets.
    let spdy = |args: &[&str], input: Option<&str>| {
        let mut cmd = with(|c| c.server.kubectl_cmd(args));
        cmd.env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false");
        if let Some(i) = input {
            use std::io::Write;
            let mut child = cmd
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(i.as_bytes()).unwrap();
            child.wait_with_output().unwrap()
        } else {
            cmd.output().unwrap()
        }
    };
    let o = spdy(
        &[
            "-n",
            &ns,
            "exec",
            "box",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 4",
        ],
        None,
    );
    assert_eq!(
        o.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "out\n");
    assert!(String::from_utf8_lossy(&o.stderr).contains("err\n"));
    let o = spdy(
        &["-n", &ns, "exec", "-i", "box", "--", "wc", "-c"],
        Some("123"),
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "3");
    let mut cmd = std::process::Command::new("kubectl");
    cmd.env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")
        .arg("--kubeconfig")
        .arg(&kc)
        .args(["-n", &ns, "exec", "-it", "box", "--", "sh"]);
    let (code, out) = common::on_tty(cmd, "stty size; exit 5\n");
    assert_eq!(code, 5, "{out}");
    assert!(
        out.contains("30 100"),
        "the terminal size reaches the process over SPDY: {out}"
    );
    // attach: what is typed reaches the container's stdin, its output comes back.
    let mut cmd = with(|c| c.server.kubectl_cmd(&["-n", &ns, "attach", "-i", "box"]));
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::{BufRead, Write};
        let mut stdin = child.stdin.take().unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut got = String::new();
        for _ in 0..50 {
            stdin.write_all(b"ping\n").unwrap();
            stdin.flush().unwrap();
            if let Some(Ok(l)) = lines.next() {
                got = l;
                if got == "got ping" {
                    break;
                }
            }
        }
        assert_eq!(got, "got ping");
    }
    let _ = child.kill();
    let _ = child.wait();
    // logs: everything the container wrote, with tail and timestamps.
    let logs = kubectl_ok(&["-n", &ns, "logs", "box"]);
    assert!(logs.starts_with("started\ngot ping\n"), "{logs}");
    assert_eq!(
        kubectl_ok(&["-n", &ns, "logs", "box", "--tail=1"]).trim(),
        "got ping"
    );
    let ts = kubectl_ok(&["-n", &ns, "logs", "box", "--timestamps", "--tail=1"]);
    assert!(ts.contains("Z got ping"), "{ts}");
    // cp both ways (tar through exec).
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("in.txt");
    std::fs::write(&src, "copied in\n").unwrap();
    kubectl_ok(&["-n", &ns, "cp", src.to_str().unwrap(), "box:/tmp/in.txt"]);
    assert_eq!(
        kubectl_ok(&["-n", &ns, "exec", "box", "--", "cat", "/tmp/in.txt"]),
        "copied in\n"
    );
    let back = dir.path().join("back.txt");
    kubectl_ok(&["-n", &ns, "cp", "box:/tmp/in.txt", back.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "copied in\n");
    // logs -f follows until the container ends.
    kubectl_in(
        &["-n", &ns, "apply", "-f", "-"],
        &pod_yaml(
            "ticker",
            "node-0",
            r#"  restartPolicy: Never
  containers:
  - name: c
    image: busybox:latest
    imagePullPolicy: Never
    command: ["sh", "-c", "for i in 1 2 3; do echo tick $i; sleep 0.5; done"]
"#,
        ),
    );
    wait_for(
        &ns,
        "pod/ticker",
        "jsonpath={.status.containerStatuses[0].started}=true",
    );
    assert_eq!(
        kubectl_ok(&["-n", &ns, "logs", "-f", "ticker"]),
        "tick 1\ntick 2\ntick 3\n"
    );
    wait_for(&ns, "pod/ticker", "jsonpath={.status.phase}=Succeeded");
}

#[test]
fn crashes_back_off_and_probes_and_oom_show_as_the_kubelet_shows_them() {
    let ns = ns("crash");
    kubectl_in(
        &["-n", &ns, "apply", "-f", "-"],
        &[
            pod_yaml("crash", "node-0", "  containers:\n  - name: c\n    image: busybox:latest\n    imagePullPolicy: Never\n    command: [\"sh\", \"-c\", \"echo bye; exit 2\"]\n"),
            pod_yaml("oom", "node-0", "  restartPolicy: Never\n  containers:\n  - name: c\n    image: busybox:latest\n    imagePullPolicy: Never\n    command: [\"sh\", \"-c\", \"x=a; while true; do x=$x$x; done\"]\n    resources: {limits: {memory: 20Mi}}\n"),
            pod_yaml("live", "node-0", "  containers:\n  - name: c\n    image: busybox:latest\n    imagePullPolicy: Never\n    command: [\"sh\", \"-c\", \"touch /tmp/ok; trap 'exit 0' TERM; (sleep 2; rm /tmp/ok) & while true; do sleep 0.2; done\"]\n    livenessProbe: {exec: {command: [test, -f, /tmp/ok]}, periodSeconds: 1, failureThreshold: 2}\n"),
        ]
        .join("---\n"),
    );
    wait_for(
        &ns,
        "pod/crash",
        "jsonpath={.status.containerStatuses[0].restartCount}=2",
    );
    wait_for(
        &ns,
        "pod/crash",
        "jsonpath={.status.containerStatuses[0].state.waiting.reason}=CrashLoopBackOff",
    );
    let last = get(&ns, "pod/crash", "{.status.containerStatuses[0].lastState.terminated.reason}/{.status.containerStatuses[0].lastState.terminated.exitCode}");
    assert_eq!(last, "Error/2");
    let msg = get(
        &ns,
        "pod/crash",
        "{.status.containerStatuses[0].state.waiting.message}",
    );
    assert!(
        msg.starts_with("back-off 20s restarting failed container=c pod=crash_"),
        "{msg}"
    );
    assert_eq!(
        kubectl_ok(&["-n", &ns, "logs", "crash", "--previous"]),
        "bye\n"
    );
    let table = kubectl_ok(&["-n", &ns, "get", "pod", "crash"]);
    assert!(table.contains("CrashLoopBackOff"), "{table}");

    wait_for(
        &ns,
        "pod/oom",
        "jsonpath={.status.containerStatuses[0].state.terminated.reason}=OOMKilled",
    );
    assert_eq!(get(&ns, "pod/oom", "{.status.phase}"), "Failed");

    wait_for(
        &ns,
        "pod/live",
        "jsonpath={.status.containerStatuses[0].restartCount}=1",
    );
    let events = kubectl_ok(&[
        "-n",
        &ns,
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=live",
    ]);
    assert!(events.contains("Liveness probe failed"), "{events}");
    assert!(
        events.contains("failed liveness probe, will be restarted"),
        "{events}"
    );
}

#[test]
fn deletion_runs_prestop_then_sigterm_within_the_grace_period() {
    let ns = ns("grace");
    let dir = with(|c| {
        c.hosts[0]
            .data_dir
            .join(format!("grace-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir).unwrap();
    kubectl_in(
        &["-n", &ns, "apply", "-f", "-"],
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: g}}\nspec:\n  nodeName: node-0\n  terminationGracePeriodSeconds: 10\n  containers:\n  - name: c\n    image: busybox:latest\n    imagePullPolicy: Never\n    command: [\"sh\", \"-c\", \"trap 'echo term >> /out/order; exit 0' TERM; while true; do sleep 0.1; done\"]\n    lifecycle: {{preStop: {{exec: {{command: [sh, -c, 'echo prestop >> /out/order']}}}}}}\n    volumeMounts: [{{name: out, mountPath: /out}}]\n  volumes:\n  - {{name: out, hostPath: {{path: {}, type: Directory}}}}\n",
            dir.display()
        ),
    );
    wait_for(&ns, "pod/g", "condition=Ready");
    kubectl_ok(&["-n", &ns, "delete", "pod", "g", "--grace-period=10"]);
    assert_eq!(
        std::fs::read_to_string(dir.join("order")).unwrap(),
        "prestop\nterm\n"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_input_gets_the_kubelets_reasons_and_leaves_nothing() {
    let ns = ns("bad");
    kubectl_in(
        &[
            "-n",
            &ns,
            "create",
            "configmap",
            "cfg",
            "--from-literal=a=1",
        ],
        "",
    );
    kubectl_in(
        &["-n", &ns, "apply", "-f", "-"],
        &[
            pod_yaml("noimage", "node-0", "  containers:\n  - name: c\n    image: 127.0.0.1:1/nope:1\n"),
            pod_yaml("never", "node-0", "  containers:\n  - name: c\n    image: nope:1\n    imagePullPolicy: Never\n"),
            pod_yaml("nokey", "node-0", "  containers:\n  - name: c\n    image: busybox:latest\n    imagePullPolicy: Never\n    env: [{name: X, valueFrom: {configMapKeyRef: {name: cfg, key: nope}}}]\n"),
            pod_yaml("nodir", "node-0", "  containers:\n  - name: c\n    image: busybox:latest\n    imagePullPolicy: Never\n    volumeMounts: [{name: v, mountPath: /v}]\n  volumes:\n  - {name: v, hostPath: {path: /nonexistent/berth-test, type: Directory}}\n"),
            pod_yaml("huge", "node-0", "  containers:\n  - name: c\n    image: busybox:latest\n    imagePullPolicy: Never\n    resources: {requests: {cpu: \"1000\"}}\n"),
        ]
        .join("---\n"),
    );
    wait_for(
        &ns,
        "pod/noimage",
        "jsonpath={.status.containerStatuses[0].state.waiting.reason}=ErrImagePull",
    );
    wait_for(
        &ns,
        "pod/noimage",
        "jsonpath={.status.containerStatuses[0].state.waiting.reason}=ImagePullBackOff",
    );
    let msg = get(
        &ns,
        "pod/noimage",
        "{.status.containerStatuses[0].state.waiting.message}",
    );
    assert_eq!(msg, "Back-off pulling image \"127.0.0.1:1/nope:1\"");
    let events = kubectl_ok(&[
        "-n",
        &ns,
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=noimage",
    ]);
    assert!(
        events.contains("Failed to pull image \"127.0.0.1:1/nope:1\""),
        "{events}"
    );
    wait_for(
        &ns,
        "pod/never",
        "jsonpath={.status.containerStatuses[0].state.waiting.reason}=ErrImageNeverPull",
    );
    wait_for(
        &ns,
        "pod/nokey",
        "jsonpath={.status.containerStatuses[0].state.waiting.reason}=CreateContainerConfigError",
    );
    assert_eq!(
        get(
            &ns,
            "pod/nokey",
            "{.status.containerStatuses[0].state.waiting.message}"
        ),
        format!("couldn't find key nope in ConfigMap {ns}/cfg")
    );
    wait_for(&ns, "pod/huge", "jsonpath={.status.reason}=OutOfcpu");
    assert_eq!(get(&ns, "pod/huge", "{.status.phase}"), "Failed");
    assert!(get(&ns, "pod/huge", "{.status.message}").starts_with(
        "Pod was rejected: Node didn't have enough resource: cpu, requested: 1000000"
    ));
    let mut events = String::new();
    for _ in 0..100 {
        events = kubectl_ok(&[
            "-n",
            &ns,
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=nodir",
        ]);
        if events.contains("FailedMount") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(
        events.contains("hostPath type check failed: /nonexistent/berth-test is not a directory"),
        "{events}"
    );
    assert!(!std::path::Path::new("/nonexistent/berth-test").exists());
    // Deleted, they leave nothing on the node.
    kubectl_ok(&["-n", &ns, "delete", "pods", "--all"]);
    let uids_left = with(|c| {
        c.hosts[0].berth_ok(&[
            "ps",
            "-a",
            "--filter",
            &format!("label=io.kubernetes.pod.namespace={ns}"),
            "-q",
        ])
    });
    assert_eq!(uids_left.trim(), "");
}

#[test]
fn a_token_with_the_wrong_ca_hash_is_refused() {
    let (url, dir) = with(|c| (c.server.url.clone(), c.server.dir.join("wrong-token")));
    let token = format!("K10{}::server:whatever", "0".repeat(64));
    let out = with(|c| {
        c.hosts[1].exec(&[
            common::BERTH,
            "agent",
            "--server",
            &url,
            "--token",
            &token,
            "--node-name",
            "intruder",
            "--data-dir",
            dir.to_str().unwrap(),
            "--exec-root",
            "/run/berth-wrong-token",
            "--engine-socket",
            "/run/berth-wrong-token/s.sock",
            "--kubelet-port",
            "10251",
        ])
    });
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to join"), "{err}");
    assert!(
        !dir.join("tls").exists(),
        "nothing was obtained from the server"
    );
    let nodes = kubectl_ok(&["get", "nodes", "-o", "name"]);
    assert!(!nodes.contains("intruder"));
    let _ = std::fs::remove_dir_all("/run/berth-wrong-token");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_agent_killed_and_restarted_keeps_its_pods_and_cleans_up_deleted_ones() {
    let ns = ns("restart");
    kubectl_in(
        &["-n", &ns, "apply", "-f", "-"],
        &[
            pod_yaml("keep", "node-1", "  containers:\n  - name: c\n    image: busybox:latest\n    imagePullPolicy: Never\n    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 0.2; done\"]\n"),
            pod_yaml("gone", "node-1", "  containers:\n  - name: c\n    image: busybox:latest\n    imagePullPolicy: Never\n    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 0.2; done\"]\n"),
        ]
        .join("---\n"),
    );
    wait_for(&ns, "pod/keep", "condition=Ready");
    wait_for(&ns, "pod/gone", "condition=Ready");
    let id_before = get(
        &ns,
        "pod/keep",
        "{.status.containerStatuses[0].containerID}",
    );
    with(|c| c.hosts[1].kill9());
    // Deleted while its agent is down: the API keeps it terminating until the node acts.
    kubectl_ok(&["-n", &ns, "delete", "pod", "gone", "--wait=false"]);
    with(|c| c.restart_agent(1));
    wait_for(&ns, "pod/gone", "delete");
    let gone = with(|c| {
        c.hosts[1].berth_ok(&[
            "ps",
            "-a",
            "--filter",
            "label=io.kubernetes.pod.name=gone",
            "-q",
        ])
    });
    assert_eq!(gone.trim(), "");
    assert_eq!(
        get(
            &ns,
            "pod/keep",
            "{.status.containerStatuses[0].containerID}"
        ),
        id_before
    );
    assert_eq!(
        get(
            &ns,
            "pod/keep",
            "{.status.containerStatuses[0].restartCount}"
        ),
        "0"
    );
    wait_for(&ns, "pod/keep", "condition=Ready");
    let running = with(|c| {
        c.hosts[1].berth_ok(&["ps", "--filter", "label=io.kubernetes.pod.name=keep", "-q"])
    });
    assert_eq!(running.trim().lines().count(), 1, "started once, not twice");
}

#[test]
fn pods_on_different_nodes_reach_each_other_by_pod_ip_without_nat() {
    let ns = ns("net");
    let server = r#"  containers:
  - name: c
    image: busybox:latest
    imagePullPolicy: Never
    command: ["sh", "-c", "mkdir -p /www/cgi-bin; printf '#!/bin/sh\necho\necho $REMOTE_ADDR\n' > /www/cgi-bin/ip; chmod +x /www/cgi-bin/ip; exec httpd -f -p 8080 -h /www"]
    readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
"#;
    let client = r#"  containers:
  - name: c
    image: busybox:latest
    imagePullPolicy: Never
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"]
"#;
    kubectl_in(
        &["-n", &ns, "apply", "-f", "-"],
        &[
            pod_yaml("srv", "node-1", server),
            pod_yaml("cli", "node-0", client),
        ]
        .join("---\n"),
    );
    wait_for(&ns, "pod/srv", "condition=Ready");
    wait_for(&ns, "pod/cli", "condition=Ready");
    let srv_ip = get(&ns, "pod/srv", "{.status.podIP}");
    let cli_ip = get(&ns, "pod/cli", "{.status.podIP}");
    let mut seen = String::new();
    for _ in 0..50 {
        // (busybox-static's wget crashes in glibc's static resolver; nc speaks HTTP here.)
        let o = kubectl_out(&[
            "-n",
            &ns,
            "exec",
            "cli",
            "--",
            "sh",
            "-c",
            &format!("printf 'GET /cgi-bin/ip HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {srv_ip} 8080"),
        ]);
        seen = String::from_utf8_lossy(&o.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_string();
        if o.status.success() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // busybox's httpd reports the IPv4-mapped form.
    assert_eq!(
        seen,
        format!("[::ffff:{cli_ip}]"),
        "the server sees the client's pod IP"
    );
}

#[test]
fn static_pods_run_from_manifests_as_mirror_pods() {
    let dir = with(|c| c.hosts[0].data_dir.join("manifests"));
    std::fs::create_dir_all(&dir).unwrap();
    let name = format!("static{}", std::process::id());
    std::fs::write(
        dir.join(format!("{name}.yaml")),
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: busybox:latest\n    imagePullPolicy: Never\n    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 0.2; done\"]\n"),
    )
    .unwrap();
    let mirror = format!("pod/{name}-node-0");
    // The agent looks at its manifests every 2 s.
    for _ in 0..100 {
        if kubectl_out(&["get", &mirror]).status.success() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    wait_for("default", &mirror, "condition=Ready");
    assert_eq!(
        get(
            "default",
            &mirror,
            "{.metadata.annotations.kubernetes\\.io/config\\.source}"
        ),
        "file"
    );
    assert_eq!(
        get("default", &mirror, "{.metadata.ownerReferences[0].kind}"),
        "Node"
    );
    std::fs::remove_file(dir.join(format!("{name}.yaml"))).unwrap();
    wait_for("default", &mirror, "delete");
}

#[test]
fn port_forward_reaches_a_port_inside_the_pod() {
    let ns = ns("pf");
    kubectl_in(
        &["-n", &ns, "apply", "-f", "-"],
        &pod_yaml(
            "web",
            "node-0",
            r#"  containers:
  - name: c
    image: busybox:latest
    imagePullPolicy: Never
    command: ["sh", "-c", "mkdir /www; echo forwarded > /www/index.html; exec httpd -f -p 127.0.0.1:8080 -h /www"]
"#,
        ),
    );
    wait_for(&ns, "pod/web", "condition=Ready");
    for websockets in [true, false] {
        let local = common::free_port();
        let mut cmd = with(|c| {
            c.server.kubectl_cmd(&[
                "-n",
                &ns,
                "port-forward",
                "pod/web",
                &format!("{local}:8080"),
            ])
        });
        // kubectl 1.32 tunnels SPDY through a WebSocket; without it, plain SPDY.
        cmd.env(
            "KUBECTL_PORT_FORWARD_WEBSOCKETS",
            if websockets { "true" } else { "false" },
        );
        let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().unwrap();
        let mut lines =
            std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
        let first = lines.next().unwrap().unwrap();
        assert!(first.starts_with("Forwarding from 127.0.0.1:"), "{first}");
        std::thread::spawn(move || for _ in lines {});
        // Two connections in a row over the same session; the server listens on the pod's
        // loopback only, so this reaches inside its network namespace.
        for _ in 0..2 {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(("127.0.0.1", local)).unwrap();
            s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").unwrap();
            let mut body = String::new();
            s.read_to_string(&mut body).unwrap();
            assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
            assert!(
                body.ends_with("forwarded\n"),
                "websockets {websockets}: {body}"
            );
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn security_context_groups_sysctls_and_host_namespaces() {
    let ns = ns("secctx");
    kubectl_in(
        &["-n", &ns, "apply", "-f", "-"],
        &[
            pod_yaml("sc", "node-0", r#"  securityContext:
    runAsUser: 1000
    runAsGroup: 3000
    fsGroup: 2000
    supplementalGroups: [4000]
    sysctls: [{name: net.ipv4.ip_unprivileged_port_start, value: "0"}]
  hostPID: true
  containers:
  - name: c
    image: busybox:latest
    imagePullPolicy: Never
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"]
    securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
    volumeMounts: [{name: data, mountPath: /data}]
  volumes:
  - {name: data, emptyDir: {}}
"#),
            pod_yaml("unsafe", "node-0", r#"  securityContext:
    sysctls: [{name: kernel.msgmax, value: "1"}]
  containers:
  - name: c
    image: busybox:latest
    imagePullPolicy: Never
"#),
        ]
        .join("---\n"),
    );
    wait_for(&ns, "pod/sc", "condition=Ready");
    let id = kubectl_ok(&["-n", &ns, "exec", "sc", "--", "id"]);
    assert!(id.starts_with("uid=1000 gid=3000"), "{id}");
    assert!(
        id.contains("2000") && id.contains("4000"),
        "fsGroup and supplementalGroups: {id}"
    );
    // The emptyDir belongs to fsGroup: the user writes there through the group.
    let stat = kubectl_ok(&[
        "-n",
        &ns,
        "exec",
        "sc",
        "--",
        "sh",
        "-c",
        "touch /data/f && stat -c '%g' /data",
    ]);
    assert_eq!(stat.trim(), "2000");
    let ro = kubectl_out(&["-n", &ns, "exec", "sc", "--", "touch", "/rootfile"]);
    assert!(!ro.status.success(), "the root file system is read-only");
    let sysctl = kubectl_ok(&[
        "-n",
        &ns,
        "exec",
        "sc",
        "--",
        "cat",
        "/proc/sys/net/ipv4/ip_unprivileged_port_start",
    ]);
    assert_eq!(sysctl.trim(), "0");
    // hostPID: the host's processes, not only the container's.
    let procs = kubectl_ok(&[
        "-n",
        &ns,
        "exec",
        "sc",
        "--",
        "sh",
        "-c",
        "ls -d /proc/[0-9]* | wc -l",
    ]);
    assert!(procs.trim().parse::<u32>().unwrap() > 10, "{procs}");
    wait_for(
        &ns,
        "pod/unsafe",
        "jsonpath={.status.reason}=SysctlForbidden",
    );
    assert_eq!(get(&ns, "pod/unsafe", "{.status.phase}"), "Failed");
}

#[test]
fn an_agent_refuses_an_engine_socket_another_daemon_holds() {
    let (url, token, socket, dir) = with(|c| {
        (
            c.server.url.clone(),
            std::fs::read_to_string(c.server.dir.join("data/tls/token")).unwrap(),
            c.hosts[0].socket.clone(),
            c.server.dir.join("second-agent"),
        )
    });
    let out = with(|c| {
        c.hosts[0].exec(&[
            common::BERTH,
            "agent",
            "--server",
            &url,
            "--token",
            token.trim(),
            "--node-name",
            "second",
            "--data-dir",
            dir.to_str().unwrap(),
            "--exec-root",
            "/run/berth-second-agent",
            "--engine-socket",
            socket.to_str().unwrap(),
            "--kubelet-port",
            "10252",
        ])
    });
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another daemon is listening on"), "{err}");
    assert!(!kubectl_ok(&["get", "nodes", "-o", "name"]).contains("second"));
    let _ = std::fs::remove_dir_all("/run/berth-second-agent");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn host_ports_and_claims_bound_to_local_volumes() {
    let ns = ns("hostport");
    let dir = with(|c| {
        c.hosts[0]
            .data_dir
            .join(format!("pv-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.html"), "from the volume\n").unwrap();
    let pv = format!("pv-{}", std::process::id());
    kubectl_in(
        &["apply", "-f", "-"],
        &format!("apiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: {pv}}}\nspec:\n  capacity: {{storage: 1Gi}}\n  accessModes: [ReadWriteOnce]\n  hostPath: {{path: {}}}\n", dir.display()),
    );
    kubectl_in(
        &["-n", &ns, "apply", "-f", "-"],
        &[
            format!("apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: data}}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {{requests: {{storage: 1Gi}}}}\n  volumeName: {pv}\n"),
            pod_yaml("web", "node-0", r#"  containers:
  - name: c
    image: busybox:latest
    imagePullPolicy: Never
    command: ["sh", "-c", "echo written > /www/out.txt; exec httpd -f -p 8080 -h /www"]
    ports: [{containerPort: 8080, hostPort: 18080}]
    readinessProbe: {httpGet: {path: /index.html, port: 8080}, periodSeconds: 1}
    volumeMounts: [{name: www, mountPath: /www}]
  volumes:
  - {name: www, persistentVolumeClaim: {claimName: data}}
"#),
        ]
        .join("---\n"),
    );
    wait_for(&ns, "pod/web", "condition=Ready");
    // The node's address, the host port: served from the claim's volume.
    let ip = with(|c| c.hosts[0].ip.clone());
    let mut body = String::new();
    for _ in 0..50 {
        use std::io::{Read, Write};
        if let Ok(mut s) = std::net::TcpStream::connect((ip.as_str(), 18080)) {
            s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").unwrap();
            body.clear();
            let _ = s.read_to_string(&mut body);
            if body.contains("200 OK") {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(body.ends_with("from the volume\n"), "{body}");
    assert_eq!(
        std::fs::read_to_string(dir.join("out.txt")).unwrap(),
        "written\n"
    );
    kubectl_ok(&["-n", &ns, "delete", "pod", "web"]);
    kubectl_ok(&["delete", "pv", &pv]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_pod_cgroup_carries_the_pods_limits_and_goes_with_it() {
    let ns = ns("podcg");
    let ctr = |name: &str| {
        format!("  - name: {name}\n    image: busybox:latest\n    imagePullPolicy: Never\n    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 0.2; done\"]\n    resources: {{limits: {{cpu: 100m, memory: 64Mi}}}}\n")
    };
    kubectl_in(
        &["-n", &ns, "apply", "-f", "-"],
        &pod_yaml(
            "g",
            "node-0",
            &format!("  containers:\n{}{}", ctr("a"), ctr("b")),
        ),
    );
    wait_for(&ns, "pod/g", "condition=Ready");
    assert_eq!(get(&ns, "pod/g", "{.status.qosClass}"), "Guaranteed");
    let uid = get(&ns, "pod/g", "{.metadata.uid}");
    let root = with(|c| c.hosts[0].cgroup_root.clone());
    let rel = format!("{}/kubepods/pod{uid}", root.trim_start_matches('/'));
    let v1 = std::path::Path::new("/sys/fs/cgroup/memory");
    let (mem, quota) = if v1.is_dir() {
        (
            v1.join(&rel).join("memory.limit_in_bytes"),
            std::path::Path::new("/sys/fs/cgroup/cpu")
                .join(&rel)
                .join("cpu.cfs_quota_us"),
        )
    } else {
        let d = std::path::Path::new("/sys/fs/cgroup").join(&rel);
        (d.join("memory.max"), d.join("cpu.max"))
    };
    assert_eq!(
        std::fs::read_to_string(&mem).unwrap().trim(),
        (128u64 << 20).to_string()
    );
    assert!(std::fs::read_to_string(&quota)
        .unwrap()
        .starts_with("20000"));
    kubectl_ok(&["-n", &ns, "delete", "pod", "g"]);
    assert!(
        !mem.parent().unwrap().exists(),
        "the pod cgroup is gone with the pod"
    );
}

#[test]
fn the_scheduler_places_pods_and_a_replicaset_keeps_its_count() {
    let ns = ns("sched");
    kubectl_in(
        &["-n", &ns, "apply", "-f", "-"],
        r#"apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: web}
spec:
  replicas: 4
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: c
        image: busybox:latest
        imagePullPolicy: Never
        command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"]
        resources: {requests: {cpu: 10m, memory: 8Mi}}
"#,
    );
    wait_for(&ns, "rs/web", "jsonpath={.status.readyReplicas}=4");
    // LeastAllocated spreads them over both nodes.
    let nodes = kubectl_ok(&[
        "-n",
        &ns,
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].spec.nodeName}",
    ]);
    assert!(
        nodes.contains("node-0") && nodes.contains("node-1"),
        "{nodes}"
    );
    let events = kubectl_ok(&[
        "-n",
        &ns,
        "get",
        "events",
        "--field-selector",
        "reason=Scheduled",
    ]);
    assert!(events.contains("Successfully assigned"), "{events}");
    // A pod deleted is replaced.
    let first = kubectl_ok(&[
        "-n",
        &ns,
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]);
    let o = kubectl_out(&["-n", &ns, "delete", "pod", &first]);
    assert!(
        o.status.success(),
        "{}\n{}\n{}",
        with(|c| c.server.log()),
        String::from_utf8_lossy(&o.stderr),
        kubectl_ok(&[
            "-n",
            &ns,
            "get",
            "events",
            "--sort-by=.metadata.creationTimestamp"
        ])
    );
    wait_for(&ns, "rs/web", "jsonpath={.status.readyReplicas}=4");
    let names = kubectl_ok(&[
        "-n",
        &ns,
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    assert!(!names.split(' ').any(|n| n == first), "{names}");
    let log = with(|c| c.server.log());
    assert_eq!(names.split(' ').count(), 4, "{names}\n{log}");
    // Scaled down, the excess goes.
    kubectl_ok(&["-n", &ns, "scale", "rs", "web", "--replicas=2"]);
    wait_for(&ns, "rs/web", "jsonpath={.status.replicas}=2");
    // A nodeSelector picks its node; a pod no node fits says why, as kube-scheduler does.
    kubectl_in(
        &["-n", &ns, "apply", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata: {name: pinned}\nspec:\n  nodeSelector: {kubernetes.io/hostname: node-1}\n  containers:\n  - {name: c, image: busybox:latest, imagePullPolicy: Never, command: [sleep, '1000']}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: huge}\nspec:\n  containers:\n  - {name: c, image: busybox:latest, imagePullPolicy: Never, resources: {requests: {cpu: '1000'}}}\n",
    );
    wait_for(&ns, "pod/pinned", "jsonpath={.spec.nodeName}=node-1");
    wait_for(
        &ns,
        "pod/huge",
        "jsonpath={.status.conditions[0].reason}=Unschedulable",
    );
    let msg = get(&ns, "pod/huge", "{.status.conditions[0].message}");
    assert!(
        msg.starts_with("0/2 nodes are available: 2 Insufficient cpu."),
        "{msg}"
    );
    let events = kubectl_ok(&[
        "-n",
        &ns,
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=huge",
    ]);
    assert!(events.contains("FailedScheduling"), "{events}");
    kubectl_ok(&["-n", &ns, "delete", "rs", "web"]);
    kubectl_ok(&["-n", &ns, "delete", "pods", "--all", "--grace-period=1"]);
}

#[test]
fn a_deployment_rolls_out_a_new_image_and_back() {
    let ns = ns("deploy");
    with(|c| {
        for h in &c.hosts {
            h.berth_ok(&["tag", "busybox:latest", "busybox:v2"]);
        }
    });
    kubectl_in(
        &["-n", &ns, "apply", "-f", "-"],
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 4
  selector: {matchLabels: {app: web}}
  strategy: {rollingUpdate: {maxSurge: 1, maxUnavailable: 1}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: c
        image: busybox:latest
        imagePullPolicy: Never
        command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"]
        readinessProbe: {exec: {command: ["true"]}, periodSeconds: 1}
"#,
    );
    kubectl_ok(&[
        "-n",
        &ns,
        "rollout",
        "status",
        "deployment/web",
        "--timeout=90s",
    ]);
    let state = kubectl_ok(&["-n", &ns, "get", "deploy,rs,pods", "-o", "wide"]);
    assert_eq!(
        get(&ns, "deployment/web", "{.status.availableReplicas}"),
        "4",
        "{state}"
    );
    kubectl_ok(&["-n", &ns, "set", "image", "deployment/web", "c=busybox:v2"]);
    kubectl_ok(&[
        "-n",
        &ns,
        "rollout",
        "status",
        "deployment/web",
        "--timeout=90s",
    ]);
    // Terminating pods of the old set may still be listed; the live ones all run v2.
    let images = kubectl_ok(&[
        "-n",
        &ns,
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={range .items[?(@.metadata.deletionTimestamp)]}x{end}{range .items[*]}{.metadata.name}={.spec.containers[0].image}={.metadata.deletionTimestamp} {end}",
    ]);
    let state = kubectl_ok(&["-n", &ns, "get", "deploy,rs,pods", "-o", "wide"]);
    let live: Vec<&str> = images
        .split_whitespace()
        .filter(|p| p.ends_with('='))
        .collect();
    assert_eq!(live.len(), 4, "{images}\n{state}");
    assert!(
        live.iter().all(|p| p.contains("=busybox:v2=")),
        "{images}\n{state}"
    );
    let history = kubectl_ok(&["-n", &ns, "rollout", "history", "deployment/web"]);
    assert!(
        history.contains("1 ") && history.contains("2 "),
        "{history}"
    );
    let rs = kubectl_ok(&[
        "-n",
        &ns,
        "get",
        "rs",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.spec.replicas} {end}",
    ]);
    assert_eq!(rs.split_whitespace().count(), 2, "two ReplicaSets: {rs}");
    kubectl_ok(&["-n", &ns, "rollout", "undo", "deployment/web"]);
    kubectl_ok(&[
        "-n",
        &ns,
        "rollout",
        "status",
        "deployment/web",
        "--timeout=90s",
    ]);
    let images = kubectl_ok(&[
        "-n",
        &ns,
        "get",
        "deployment",
        "web",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    ]);
    assert_eq!(images, "busybox:latest");
    let events = kubectl_ok(&[
        "-n",
        &ns,
        "get",
        "events",
        "--field-selector",
        "reason=ScalingReplicaSet",
    ]);
    assert!(events.contains("Scaled up replica set web-"), "{events}");
    // Deleted (background propagation), its ReplicaSets and pods go with it.
    kubectl_ok(&["-n", &ns, "delete", "deployment", "web"]);
    for what in ["rs", "pods"] {
        let mut left = String::from("?");
        for _ in 0..300 {
            left = kubectl_ok(&["-n", &ns, "get", what, "-l", "app=web", "-o", "name"]);
            if left.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert_eq!(left, "", "the garbage collector removes the {what}");
    }
    // With --cascade=orphan, the ReplicaSet stays, without its owner.
    kubectl_in(
        &["-n", &ns, "apply", "-f", "-"],
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: kept}\nspec:\n  replicas: 1\n  selector: {matchLabels: {app: kept}}\n  template:\n    metadata: {labels: {app: kept}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers:\n      - {name: c, image: busybox:latest, imagePullPolicy: Never, command: [sleep, '1000']}\n",
    );
    kubectl_ok(&[
        "-n",
        &ns,
        "rollout",
        "status",
        "deployment/kept",
        "--timeout=90s",
    ]);
    kubectl_ok(&[
        "-n",
        &ns,
        "delete",
        "deployment",
        "kept",
        "--cascade=orphan",
    ]);
    let owners = kubectl_ok(&[
        "-n",
        &ns,
        "get",
        "rs",
        "-l",
        "app=kept",
        "-o",
        "jsonpath={.items[*].metadata.ownerReferences}",
    ]);
    assert_eq!(owners, "", "orphaned");
    assert_eq!(
        kubectl_ok(&[
            "-n",
            &ns,
            "get",
            "rs",
            "-l",
            "app=kept",
            "-o",
            "jsonpath={.items[0].status.replicas}"
        ]),
        "1"
    );
    kubectl_ok(&["-n", &ns, "delete", "rs", "-l", "app=kept"]);
}

#[test]
fn a_rollout_that_never_becomes_ready_exceeds_its_progress_deadline() {
    let ns = ns("deadline");
    kubectl_in(
        &["-n", &ns, "apply", "-f", "-"],
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: stuck}
spec:
  replicas: 2
  progressDeadlineSeconds: 3
  selector: {matchLabels: {app: stuck}}
  template:
    metadata: {labels: {app: stuck}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: c
        image: busybox:latest
        imagePullPolicy: Never
        command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"]
        readinessProbe: {exec: {command: ["false"]}, periodSeconds: 1}
"#,
    );
    let o = kubectl_out(&[
        "-n",
        &ns,
        "rollout",
        "status",
        "deployment/stuck",
        "--timeout=60s",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("exceeded its progress deadline"), "{err}");
    assert_eq!(
        get(
            &ns,
            "deployment/stuck",
            "{.status.conditions[?(@.type==\"Progressing\")].reason}"
        ),
        "ProgressDeadlineExceeded"
    );
    kubectl_ok(&["-n", &ns, "delete", "deployment", "stuck"]);
}

#[test]
fn rollout_restart_pause_and_resume() {
    let ns = ns("restartdeploy");
    kubectl_in(
        &["-n", &ns, "apply", "-f", "-"],
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: app}
spec:
  replicas: 2
  selector: {matchLabels: {app: app}}
  template:
    metadata: {labels: {app: app}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: c
        image: busybox:latest
        imagePullPolicy: Never
        command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"]
"#,
    );
    kubectl_ok(&[
        "-n",
        &ns,
        "rollout",
        "status",
        "deployment/app",
        "--timeout=90s",
    ]);
    let before = kubectl_ok(&[
        "-n",
        &ns,
        "get",
        "pods",
        "-l",
        "app=app",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    // restart: a new ReplicaSet, every pod replaced.
    kubectl_ok(&["-n", &ns, "rollout", "restart", "deployment/app"]);
    kubectl_ok(&[
        "-n",
        &ns,
        "rollout",
        "status",
        "deployment/app",
        "--timeout=90s",
    ]);
    let mut after = String::new();
    for _ in 0..100 {
        after = kubectl_ok(&["-n", &ns, "get", "pods", "-l", "app=app", "--field-selector", "status.phase=Running", "-o", "jsonpath={.items[?(@.metadata.deletionTimestamp)]}|{range .items[*]}{.metadata.name} {end}"]);
        if after.starts_with('|') && after[1..].split_whitespace().count() == 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    for p in before.split_whitespace() {
        assert!(!after.contains(p), "{p} was replaced: {after}");
    }
    // pause: a template change waits; resume: it rolls out.
    kubectl_ok(&["-n", &ns, "rollout", "pause", "deployment/app"]);
    kubectl_ok(&["-n", &ns, "set", "env", "deployment/app", "COLOR=blue"]);
    let generation = get(&ns, "deployment/app", "{.metadata.generation}");
    wait_for(
        &ns,
        "deployment/app",
        &format!("jsonpath={{.status.observedGeneration}}={generation}"),
    );
    let rs = kubectl_ok(&["-n", &ns, "get", "rs", "-o", "name"]);
    assert_eq!(rs.lines().count(), 2, "paused: no new ReplicaSet yet: {rs}");
    kubectl_ok(&["-n", &ns, "rollout", "resume", "deployment/app"]);
    kubectl_ok(&[
        "-n",
        &ns,
        "rollout",
        "status",
        "deployment/app",
        "--timeout=90s",
    ]);
    let rs = kubectl_ok(&["-n", &ns, "get", "rs", "-o", "name"]);
    assert_eq!(rs.lines().count(), 3, "{rs}");
    kubectl_ok(&["-n", &ns, "delete", "deployment", "app"]);
}

/// A cluster of its own for a test that kills a node; removed when the test ends.
struct Dedicated(Cluster);

impl Drop for Dedicated {
    fn drop(&mut self) {
        self.0.cleanup();
    }
}

impl Dedicated {
    fn start(name: &str, n: usize) -> Dedicated {
        Dedicated::start_with_agents(name, n, &[])
    }

    fn start_with_agents(name: &str, n: usize, agent_flags: &[&str]) -> Dedicated {
        let c = Cluster::start_full(name, n, &[], agent_flags);
        load_busybox(&c);
        Dedicated(c)
    }

    fn jsonpath(&self, args: &[&str], path: &str) -> String {
        let p = format!("jsonpath={path}");
        let mut v = args.to_vec();
        v.extend_from_slice(&["-o", &p]);
        self.0.server.ok(&v)
    }
}

#[test]
fn a_dead_nodes_pods_run_elsewhere_within_seconds_and_not_twice_when_it_returns() {
    let d = Dedicated::start("failure", 2);
    let c = &d.0;
    // Every replica starts on node-1, the node that will die.
    c.server.ok(&["cordon", "node-0"]);
    c.server.ok_in(
        &["apply", "-f", "-"],
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: c
        image: busybox:latest
        imagePullPolicy: Never
        command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"]
        readinessProbe: {exec: {command: ["true"]}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80}]
"#,
    );
    c.server
        .ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    let old = d.jsonpath(
        &["get", "pods", "-l", "app=web"],
        "{.items[*].metadata.name}",
    );
    let placed = d.jsonpath(
        &["get", "pods", "-l", "app=web"],
        "{.items[*].spec.nodeName}",
    );
    assert_eq!(placed, "node-1 node-1 node-1");
    // The default tolerations, as DefaultTolerationSeconds admission adds them.
    let first = old.split(' ').next().unwrap().to_string();
    let tols = d.jsonpath(&["get", "pod", &first], "{.spec.tolerations}");
    assert!(
        tols.contains(
            r#""key":"node.kubernetes.io/unreachable","operator":"Exists","tolerationSeconds":2"#
        ),
        "{tols}"
    );
    c.server.ok(&["uncordon", "node-0"]);

    let t0 = std::time::Instant::now();
    c.kill_node(1);
    // Replacement pods Ready on node-0 (polled; the figure is printed, not asserted).
    let ready_on_node0 = || {
        let out = d.jsonpath(
            &["get", "pods", "-l", "app=web"],
            r#"{range .items[*]}{.spec.nodeName} {.metadata.deletionTimestamp} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}"#,
        );
        out.lines()
            .filter(|l| l.starts_with("node-0  True"))
            .count()
    };
    while ready_on_node0() < 3 {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(120),
            "the pods were never replaced: {}\n{}",
            c.server.ok(&["get", "pods", "-o", "wide"]),
            c.server.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    eprintln!(
        "node failure: 3 replacement pods Ready on node-0 {:.1} s after node-1 died",
        t0.elapsed().as_secs_f64()
    );
    // The Service's ready endpoints are the replacements; the dead node's are not ready.
    poll("the Service's endpoints follow", 30, || {
        let eps = d.jsonpath(
            &[
                "get",
                "endpointslices",
                "-l",
                "kubernetes.io/service-name=web",
            ],
            "{range .items[*].endpoints[*]}{.nodeName}={.conditions.ready} {end}",
        );
        let on0 = eps
            .split_whitespace()
            .filter(|e| *e == "node-0=true")
            .count();
        (on0 == 3 && !eps.contains("node-1=true")).then_some(())
    });
    let node = d.jsonpath(
        &["get", "node", "node-1"],
        "{.spec.taints[*].key} {.status.conditions[?(@.type==\"Ready\")].status}",
    );
    assert!(
        node.contains("node.kubernetes.io/unreachable") && node.ends_with("Unknown"),
        "{node}"
    );
    let events = c.server.ok(&[
        "get",
        "events",
        "--field-selector",
        "reason=TaintManagerEviction",
    ]);
    assert!(events.contains("Marking for deletion Pod"), "{events}");
    // The dead node's pods are terminating, not gone, while it cannot say it stopped them.
    for p in old.split(' ') {
        assert!(!d
            .jsonpath(&["get", "pod", p], "{.metadata.deletionTimestamp}")
            .is_empty());
    }

    // It comes back: it finishes the old pods rather than running them again.
    c.set_connected(1, true);
    c.hosts[1].spawn();
    c.wait_ready(&c.hosts[1]);
    let mut args = vec!["wait", "--for=delete", "--timeout=60s"];
    let names: Vec<String> = old.split(' ').map(|p| format!("pod/{p}")).collect();
    args.extend(names.iter().map(String::as_str));
    c.server.ok(&args);
    let running = c.hosts[1].berth_ok(&[
        "ps",
        "--filter",
        "label=io.kubernetes.pod.namespace=default",
        "-q",
    ]);
    assert_eq!(running.trim(), "", "the old pods run again on node-1");
    let pods = d.jsonpath(
        &["get", "pods", "-l", "app=web"],
        "{.items[*].spec.nodeName}",
    );
    assert_eq!(pods, "node-0 node-0 node-0");
    // Ready again, it loses the taints.
    let t1 = std::time::Instant::now();
    while !matches!(
        d.jsonpath(&["get", "node", "node-1"], "{.spec.taints}")
            .as_str(),
        "" | "[]"
    ) {
        assert!(
            t1.elapsed() < std::time::Duration::from_secs(30),
            "node-1 kept its taints: {}\n{}",
            c.server.ok(&["get", "node", "node-1", "-o", "yaml"]),
            c.server.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn job_yaml(name: &str, extra_spec: &str, command: &str) -> String {
    format!(
        r#"apiVersion: batch/v1
kind: Job
metadata: {{name: {name}}}
spec:
{extra_spec}  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 1
      nodeSelector: {{kubernetes.io/hostname: node-0}}
      containers:
      - name: c
        image: busybox:latest
        imagePullPolicy: Never
        command: ["sh", "-c", {command:?}]
        volumeMounts: [{{name: data, mountPath: /data}}]
      volumes:
      - name: data
        hostPath: {{path: /tmp/berth-jobs-{name}-{pid}, type: DirectoryOrCreate}}
"#,
        pid = std::process::id()
    )
}

#[test]
fn jobs_retry_fail_by_policy_and_deadline_run_indexed_and_go_after_their_ttl() {
    let ns = ns("jobs");
    let docs = [
        // Fails once (the marker is not there yet), then succeeds twice.
        job_yaml("retry", "  completions: 2\n  backoffLimit: 3\n", "if [ -e /data/ok ]; then exit 0; fi; touch /data/ok; exit 1"),
        job_yaml("doomed", "  backoffLimit: 0\n", "exit 1"),
        job_yaml(
            "policy",
            "  backoffLimit: 6\n  podFailurePolicy:\n    rules:\n    - action: FailJob\n      onExitCodes: {containerName: c, operator: In, values: [42]}\n",
            "exit 42",
        ),
        job_yaml("deadline", "  activeDeadlineSeconds: 2\n", "sleep 100"),
        job_yaml(
            "indexed",
            "  completions: 3\n  parallelism: 3\n  completionMode: Indexed\n  ttlSecondsAfterFinished: 3\n",
            "echo index=$JOB_COMPLETION_INDEX host=$(hostname)",
        ),
        job_yaml("later", "  suspend: true\n", "true"),
    ];
    kubectl_in(&["-n", &ns, "apply", "-f", "-"], &docs.join("---\n"));
    wait_for(&ns, "job/doomed", "condition=Failed");
    assert_eq!(
        get(
            &ns,
            "job/doomed",
            "{.status.conditions[?(@.type==\"Failed\")].reason}"
        ),
        "BackoffLimitExceeded"
    );
    wait_for(&ns, "job/policy", "condition=Failed");
    let msg = get(
        &ns,
        "job/policy",
        "{.status.conditions[?(@.type==\"Failed\")].message}",
    );
    assert!(
        msg.contains("failed with exit code 42 matching FailJob rule at index 0"),
        "{msg}"
    );
    assert_eq!(
        get(&ns, "job/policy", "{.status.failed}"),
        "1",
        "no retries after FailJob"
    );
    wait_for(&ns, "job/deadline", "condition=Failed");
    assert_eq!(
        get(
            &ns,
            "job/deadline",
            "{.status.conditions[?(@.type==\"Failed\")].reason}"
        ),
        "DeadlineExceeded"
    );
    // Indexed: every index ran once, with its index and a stable hostname.
    wait_for(&ns, "job/indexed", "condition=Complete");
    let out = kubectl_ok(&[
        "-n",
        &ns,
        "logs",
        "-l",
        "batch.kubernetes.io/job-completion-index=1,job-name=indexed",
    ]);
    assert_eq!(out.trim(), "index=1 host=indexed-1");
    // Its TTL: the Job and its pods go once finished.
    wait_for(&ns, "job/indexed", "delete");
    // Suspended: nothing runs until resumed.
    assert_eq!(
        get(
            &ns,
            "job/later",
            "{.status.conditions[?(@.type==\"Suspended\")].status}"
        ),
        "True"
    );
    assert_eq!(
        kubectl_ok(&[
            "-n",
            &ns,
            "get",
            "pods",
            "-l",
            "job-name=later",
            "-o",
            "name"
        ]),
        ""
    );
    kubectl_ok(&[
        "-n",
        &ns,
        "patch",
        "job",
        "later",
        "--type=merge",
        "-p",
        r#"{"spec":{"suspend":false}}"#,
    ]);
    wait_for(&ns, "job/later", "condition=Complete");
    // The retried Job: one failure, then two successes after the back-off.
    wait_for(&ns, "job/retry", "condition=Complete");
    assert_eq!(
        get(&ns, "job/retry", "{.status.succeeded} {.status.failed}"),
        "2 1"
    );
    let pods = kubectl_ok(&[
        "-n",
        &ns,
        "get",
        "pods",
        "-l",
        "job-name=retry",
        "-o",
        "jsonpath={.items[*].status.phase}",
    ]);
    let mut phases: Vec<&str> = pods.split(' ').collect();
    phases.sort();
    assert_eq!(phases, ["Failed", "Succeeded", "Succeeded"]);
    // Counted pods keep no tracking finalizer.
    let fin = kubectl_ok(&[
        "-n",
        &ns,
        "get",
        "pods",
        "-o",
        "jsonpath={.items[*].metadata.finalizers}",
    ]);
    assert!(!fin.contains("job-tracking"), "{fin}");
    let events = kubectl_ok(&[
        "-n",
        &ns,
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=retry",
    ]);
    assert!(
        events.contains("SuccessfulCreate") && events.contains("Completed"),
        "{events}"
    );
    kubectl_ok(&["-n", &ns, "delete", "jobs", "--all"]);
    for j in ["retry", "doomed", "policy", "deadline", "indexed", "later"] {
        let _ = std::fs::remove_dir_all(format!("/tmp/berth-jobs-{j}-{}", std::process::id()));
    }
}

#[test]
fn a_cronjob_fires_on_its_schedule_keeps_its_history_and_rejects_bad_schedules() {
    let ns = ns("cron");
    let bad = kubectl_out(&[
        "-n",
        &ns,
        "create",
        "cronjob",
        "bad",
        "--image=busybox:latest",
        "--schedule=61 * * * *",
    ]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("spec.schedule") && err.contains("above maximum (59)"),
        "{err}"
    );
    // Every minute (Jobs are named by the minute, as Kubernetes names them, so a minute is
    // the shortest period); one finished Job is kept.
    kubectl_in(
        &["-n", &ns, "apply", "-f", "-"],
        r#"apiVersion: batch/v1
kind: CronJob
metadata: {name: tick}
spec:
  schedule: "* * * * *"
  timeZone: Europe/Paris
  concurrencyPolicy: Forbid
  successfulJobsHistoryLimit: 1
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          terminationGracePeriodSeconds: 1
          containers:
          - {name: c, image: busybox:latest, imagePullPolicy: Never, command: ["true"]}
"#,
    );
    // Two runs, a minute apart; the first Job is deleted when the second finishes.
    let t0 = std::time::Instant::now();
    loop {
        let deleted = kubectl_ok(&[
            "-n",
            &ns,
            "get",
            "events",
            "--field-selector",
            "reason=SuccessfulDelete,involvedObject.kind=CronJob",
            "-o",
            "name",
        ]);
        if !deleted.is_empty() {
            break;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(150),
            "the CronJob did not fire twice: {}\n{}",
            kubectl_ok(&["-n", &ns, "get", "cronjobs,jobs,pods,events", "-o", "wide"]),
            with(|c| c.server.log())
        );
        let _ = kubectl_out(&[
            "-n",
            &ns,
            "wait",
            "jobs",
            "--all",
            "--for=condition=Complete",
            "--timeout=10s",
        ]);
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let created = kubectl_ok(&[
        "-n",
        &ns,
        "get",
        "events",
        "--field-selector",
        "reason=SuccessfulCreate,involvedObject.kind=CronJob",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert_eq!(created.matches("Created job tick-").count(), 2, "{created}");
    wait_for(&ns, "cronjob/tick", "jsonpath={.status.lastSuccessfulTime}");
    kubectl_ok(&[
        "-n",
        &ns,
        "patch",
        "cronjob",
        "tick",
        "--type=merge",
        "-p",
        r#"{"spec":{"suspend":true}}"#,
    ]);
    let names = kubectl_ok(&[
        "-n",
        &ns,
        "get",
        "jobs",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    assert_eq!(names.split(' ').count(), 1, "{names}");
    // Named by the scheduled minute, which is a whole minute in Paris too.
    let stamp = kubectl_ok(&[
        "-n",
        &ns,
        "get",
        "jobs",
        "-o",
        "jsonpath={.items[0].metadata.annotations.batch\\.kubernetes\\.io/cronjob-scheduled-timestamp}",
    ]);
    assert!(stamp.ends_with(":00+01:00"), "{stamp}");
    kubectl_ok(&["-n", &ns, "delete", "cronjob", "tick"]);
}

#[test]
fn a_daemonset_runs_one_pod_per_eligible_node_and_rolls_out_and_back() {
    let ns = ns("daemons");
    let key = format!("berth.test/ds-{}", std::process::id());
    kubectl_in(
        &["-n", &ns, "apply", "-f", "-"],
        &format!(
            r#"apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: agent}}
spec:
  selector: {{matchLabels: {{app: agent}}}}
  updateStrategy: {{type: RollingUpdate, rollingUpdate: {{maxUnavailable: 1}}}}
  template:
    metadata: {{labels: {{app: agent}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: c
        image: busybox:latest
        imagePullPolicy: Never
        command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"]
        readinessProbe: {{exec: {{command: ["true"]}}, periodSeconds: 1}}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: picky}}
spec:
  selector: {{matchLabels: {{app: picky}}}}
  template:
    metadata: {{labels: {{app: picky}}}}
    spec:
      terminationGracePeriodSeconds: 1
      nodeSelector: {{{key}: "yes"}}
      containers:
      - {{name: c, image: busybox:latest, imagePullPolicy: Never, command: ["sleep", "1000"]}}
"#
        ),
    );
    kubectl_ok(&["-n", &ns, "rollout", "status", "ds/agent", "--timeout=90s"]);
    let nodes = kubectl_ok(&[
        "-n",
        &ns,
        "get",
        "pods",
        "-l",
        "app=agent",
        "-o",
        "jsonpath={.items[*].spec.nodeName}",
    ]);
    let mut nodes: Vec<&str> = nodes.split(' ').collect();
    nodes.sort();
    assert_eq!(nodes, ["node-0", "node-1"]);
    assert_eq!(
        get(
            &ns,
            "ds/agent",
            "{.status.desiredNumberScheduled} {.status.numberReady}"
        ),
        "2 2"
    );
    // Only a labelled node gets the picky one; unlabelled, it loses it.
    assert_eq!(
        get(&ns, "ds/picky", "{.status.desiredNumberScheduled}"),
        "0"
    );
    kubectl_ok(&["label", "node", "node-0", &format!("{key}=yes")]);
    wait_for(&ns, "ds/picky", "jsonpath={.status.numberAvailable}=1");
    assert_eq!(
        kubectl_ok(&[
            "-n",
            &ns,
            "get",
            "pods",
            "-l",
            "app=picky",
            "-o",
            "jsonpath={.items[*].spec.nodeName}"
        ]),
        "node-0"
    );
    kubectl_ok(&["label", "node", "node-0", &format!("{key}-")]);
    wait_for(
        &ns,
        "ds/picky",
        "jsonpath={.status.desiredNumberScheduled}=0",
    );
    poll("the picky pod stayed", 60, || {
        kubectl_ok(&["-n", &ns, "get", "pods", "-l", "app=picky", "-o", "name"])
            .is_empty()
            .then_some(())
    });
    // A rolling update, then back.
    kubectl_ok(&["-n", &ns, "set", "env", "ds/agent", "V=2"]);
    kubectl_ok(&["-n", &ns, "rollout", "status", "ds/agent", "--timeout=90s"]);
    let envs = kubectl_ok(&[
        "-n",
        &ns,
        "get",
        "pods",
        "-l",
        "app=agent",
        "-o",
        "jsonpath={.items[*].spec.containers[0].env[0].value}",
    ]);
    assert_eq!(envs, "2 2");
    let history = kubectl_ok(&["-n", &ns, "rollout", "history", "ds/agent"]);
    assert!(
        history.contains("1 ") && history.contains("2 "),
        "{history}"
    );
    kubectl_ok(&["-n", &ns, "rollout", "undo", "ds/agent"]);
    kubectl_ok(&["-n", &ns, "rollout", "status", "ds/agent", "--timeout=90s"]);
    // Back to the first template (the replaced pods may still be terminating for a moment).
    let t1 = std::time::Instant::now();
    loop {
        let envs = kubectl_ok(&[
            "-n",
            &ns,
            "get",
            "pods",
            "-l",
            "app=agent",
            "-o",
            "jsonpath={range .items[*]}{.metadata.deletionTimestamp}{.spec.containers[0].env}{\"\\n\"}{end}",
        ]);
        let live: Vec<&str> = envs.lines().filter(|l| !l.starts_with("20")).collect();
        if live.len() == 2 && live.iter().all(|l| l.is_empty()) {
            break;
        }
        assert!(
            t1.elapsed() < std::time::Duration::from_secs(30),
            "not back to the first template: {envs}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let revs = kubectl_ok(&[
        "-n",
        &ns,
        "get",
        "controllerrevisions",
        "-l",
        "app=agent",
        "-o",
        "jsonpath={.items[*].revision}",
    ]);
    let mut revs: Vec<&str> = revs.split(' ').collect();
    revs.sort();
    assert_eq!(
        revs,
        ["2", "3"],
        "the first template came back as revision 3"
    );
    kubectl_ok(&["-n", &ns, "delete", "ds", "--all"]);
}

#[test]
fn a_statefulset_keeps_names_and_claims_in_order_and_updates_by_partition() {
    let ns = ns("stateful");
    let pid = std::process::id();
    let class = format!("berth-local-{pid}");
    let dirs: Vec<std::path::PathBuf> = (0..2)
        .map(|i| std::path::PathBuf::from(format!("/tmp/berth-sts-{pid}-{i}")))
        .collect();
    let mut pvs = String::new();
    for (i, d) in dirs.iter().enumerate() {
        std::fs::create_dir_all(d).unwrap();
        pvs.push_str(&format!(
            "apiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: sts-{pid}-{i}}}\nspec:\n  capacity: {{storage: 1Gi}}\n  accessModes: [ReadWriteOnce]\n  storageClassName: {class}\n  hostPath: {{path: {}}}\n---\n",
            d.display()
        ));
    }
    kubectl_in(&["apply", "-f", "-"], &pvs);
    kubectl_in(
        &["-n", &ns, "apply", "-f", "-"],
        &format!(
            r#"apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: db}}
spec:
  serviceName: db
  replicas: 2
  selector: {{matchLabels: {{app: db}}}}
  template:
    metadata: {{labels: {{app: db}}}}
    spec:
      terminationGracePeriodSeconds: 1
      nodeSelector: {{kubernetes.io/hostname: node-0}}
      containers:
      - name: c
        image: busybox:latest
        imagePullPolicy: Never
        command: ["sh", "-c", "hostname >> /data/id; trap 'exit 0' TERM; while true; do sleep 0.2; done"]
        readinessProbe: {{exec: {{command: ["true"]}}, periodSeconds: 1}}
        volumeMounts: [{{name: data, mountPath: /data}}]
  volumeClaimTemplates:
  - metadata: {{name: data}}
    spec:
      accessModes: [ReadWriteOnce]
      storageClassName: {class}
      resources: {{requests: {{storage: 1Gi}}}}
"#
        ),
    );
    kubectl_ok(&["-n", &ns, "rollout", "status", "sts/db", "--timeout=90s"]);
    // Ordered: db-1 was made only once db-0 was Ready.
    let ready0 = get(
        &ns,
        "pod/db-0",
        "{.status.conditions[?(@.type==\"Ready\")].lastTransitionTime}",
    );
    let made1 = get(&ns, "pod/db-1", "{.metadata.creationTimestamp}");
    assert!(
        made1 >= ready0,
        "db-1 made at {made1}, db-0 ready at {ready0}"
    );
    // Each pod has its claim, bound to a volume, and its stable hostname.
    assert_eq!(get(&ns, "pvc/data-db-0", "{.status.phase}"), "Bound");
    assert_eq!(get(&ns, "pvc/data-db-1", "{.status.phase}"), "Bound");
    let vol0 = get(&ns, "pvc/data-db-0", "{.spec.volumeName}");
    let dir0 = &dirs[vol0.rsplit('-').next().unwrap().parse::<usize>().unwrap()];
    assert_eq!(std::fs::read_to_string(dir0.join("id")).unwrap(), "db-0\n");
    // db-0 deleted comes back as db-0, on the same claim.
    let uid = get(&ns, "pod/db-0", "{.metadata.uid}");
    kubectl_ok(&["-n", &ns, "delete", "pod", "db-0"]);
    wait_for(&ns, "sts/db", "jsonpath={.status.readyReplicas}=2");
    assert_ne!(get(&ns, "pod/db-0", "{.metadata.uid}"), uid);
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(dir0.join("id")).unwrap() != "db-0\ndb-0\n" {
        assert!(t0.elapsed() < std::time::Duration::from_secs(30));
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // A partitioned update: only ordinals >= 1 move; then all.
    kubectl_ok(&[
        "-n",
        &ns,
        "patch",
        "sts",
        "db",
        "--type=merge",
        "-p",
        r#"{"spec":{"updateStrategy":{"type":"RollingUpdate","rollingUpdate":{"partition":1}}}}"#,
    ]);
    let before = get(
        &ns,
        "pod/db-0",
        "{.metadata.labels.controller-revision-hash}",
    );
    kubectl_ok(&["-n", &ns, "set", "env", "sts/db", "V=2"]);
    wait_for(&ns, "sts/db", "jsonpath={.status.updatedReplicas}=1");
    wait_for(&ns, "sts/db", "jsonpath={.status.readyReplicas}=2");
    assert_eq!(
        get(
            &ns,
            "pod/db-0",
            "{.metadata.labels.controller-revision-hash}"
        ),
        before
    );
    assert_eq!(
        get(&ns, "pod/db-1", "{.spec.containers[0].env[0].value}"),
        "2"
    );
    kubectl_ok(&[
        "-n",
        &ns,
        "patch",
        "sts",
        "db",
        "--type=merge",
        "-p",
        r#"{"spec":{"updateStrategy":{"rollingUpdate":{"partition":0}}}}"#,
    ]);
    kubectl_ok(&["-n", &ns, "rollout", "status", "sts/db", "--timeout=90s"]);
    assert_eq!(
        get(&ns, "pod/db-0", "{.spec.containers[0].env[0].value}"),
        "2"
    );
    assert_eq!(
        get(&ns, "sts/db", "{.status.currentRevision}"),
        get(&ns, "sts/db", "{.status.updateRevision}")
    );
    // Scaled down, the highest ordinal goes; its claim stays.
    kubectl_ok(&["-n", &ns, "scale", "sts", "db", "--replicas=1"]);
    wait_for(&ns, "pod/db-1", "delete");
    assert_eq!(get(&ns, "pvc/data-db-1", "{.status.phase}"), "Bound");
    kubectl_ok(&["-n", &ns, "delete", "sts", "db"]);
    kubectl_ok(&["-n", &ns, "delete", "pvc", "--all"]);
    for i in 0..2 {
        let _ = kubectl_out(&["delete", "pv", &format!("sts-{pid}-{i}")]);
    }
    for d in dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn drain_respects_a_disruption_budget_and_cordon_keeps_pods_off() {
    let d = Dedicated::start("drain", 2);
    let c = &d.0;
    c.server.ok(&["cordon", "node-0"]);
    c.server.ok_in(
        &["apply", "-f", "-"],
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: c
        image: busybox:latest
        imagePullPolicy: Never
        command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"]
        readinessProbe: {exec: {command: ["true"]}, periodSeconds: 1}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web}
spec:
  minAvailable: 2
  selector: {matchLabels: {app: web}}
"#,
    );
    c.server
        .ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    assert_eq!(
        d.jsonpath(
            &["get", "pods", "-l", "app=web"],
            "{.items[*].spec.nodeName}"
        ),
        "node-1 node-1"
    );
    c.server.ok(&["uncordon", "node-0"]);
    c.server.ok(&[
        "wait",
        "--for=jsonpath={.status.currentHealthy}=2",
        "pdb/web",
        "--timeout=30s",
    ]);
    assert_eq!(
        d.jsonpath(&["get", "pdb", "web"], "{.status.disruptionsAllowed}"),
        "0"
    );
    // The budget allows no disruption: drain gives up, the pods stay.
    let out = c
        .server
        .kubectl(&["drain", "node-1", "--ignore-daemonsets", "--timeout=8s"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Cannot evict pod as it would violate the pod's disruption budget"),
        "{err}"
    );
    assert_eq!(
        d.jsonpath(
            &["get", "pods", "-l", "app=web"],
            "{.items[*].spec.nodeName}"
        ),
        "node-1 node-1"
    );
    assert_eq!(
        d.jsonpath(&["get", "node", "node-1"], "{.spec.unschedulable}"),
        "true"
    );
    // One may go at a time: drain evicts one, waits for its replacement, then the other.
    c.server.ok(&[
        "patch",
        "pdb",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"minAvailable":1}}"#,
    ]);
    c.server
        .ok(&["drain", "node-1", "--ignore-daemonsets", "--timeout=90s"]);
    c.server
        .ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    assert_eq!(
        d.jsonpath(
            &[
                "get",
                "pods",
                "-l",
                "app=web",
                "--field-selector",
                "status.phase=Running"
            ],
            "{.items[*].spec.nodeName}"
        ),
        "node-0 node-0"
    );
    // Uncordoned, the node takes pods again.
    c.server.ok(&["uncordon", "node-1"]);
    assert_eq!(
        d.jsonpath(&["get", "node", "node-1"], "{.spec.unschedulable}"),
        ""
    );
    // Every namespace has its default ServiceAccount.
    c.server.ok(&["create", "namespace", "fresh"]);
    c.server.ok(&[
        "wait",
        "--for=jsonpath={.metadata.name}=default",
        "-n",
        "fresh",
        "serviceaccount/default",
        "--timeout=30s",
    ]);
}

#[test]
fn of_two_servers_on_one_store_one_leads_and_the_other_takes_over_when_it_dies() {
    let dir = cluster::base_dir("leader-etcd");
    let (etcd, etcd_pid) = cluster::start_etcd(&dir);
    let a = cluster::Server::start_cluster("leader-a", &["--datastore-endpoint", &etcd]);
    // The second server of the cluster joins with its token.
    let token = std::fs::read_to_string(a.dir.join("data/tls/token")).unwrap();
    let b = cluster::Server::start_cluster(
        "leader-b",
        &["--datastore-endpoint", &etcd, "--token", token.trim()],
    );
    let holder = |s: &cluster::Server| {
        s.kubectl(&[
            "-n",
            "kube-system",
            "get",
            "lease",
            "berth-controllers",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
    };
    let t0 = std::time::Instant::now();
    let first = loop {
        let o = holder(&a);
        if o.status.success() && !o.stdout.is_empty() {
            break String::from_utf8_lossy(&o.stdout).into_owned();
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(30),
            "no leader"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let (leader, follower) = if a.log().contains(&format!("{first} became the leader")) {
        (a, b)
    } else {
        (b, a)
    };
    assert!(leader.log().contains(&format!("{first} became the leader")));
    assert!(!follower.log().contains("became the leader"));
    // One set of controllers: a ReplicaSet gets its pods once, not twice.
    follower.ok_in(
        &["apply", "-f", "-"],
        "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {name: one}\nspec:\n  replicas: 3\n  selector: {matchLabels: {app: one}}\n  template:\n    metadata: {labels: {app: one}}\n    spec:\n      containers: [{name: c, image: busybox:latest}]\n",
    );
    follower.ok(&[
        "wait",
        "--for=jsonpath={.status.replicas}=3",
        "rs/one",
        "--timeout=30s",
    ]);
    let pods = follower.ok(&["get", "pods", "-l", "app=one", "-o", "name"]);
    assert_eq!(pods.lines().count(), 3, "{pods}");
    // The leader dies: within the lease duration, the other takes over and acts.
    // SAFETY: kill(2) of the server process this test started.
    unsafe { libc::kill(leader.pid as i32, libc::SIGKILL) };
    let t1 = std::time::Instant::now();
    loop {
        if follower.log().contains("became the leader") {
            break;
        }
        assert!(
            t1.elapsed() < std::time::Duration::from_secs(40),
            "no takeover: {}",
            follower.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    eprintln!(
        "leader election: the other server took over {:.1} s after the leader died",
        t1.elapsed().as_secs_f64()
    );
    assert_ne!(String::from_utf8_lossy(&holder(&follower).stdout), first);
    follower.ok(&["scale", "rs", "one", "--replicas=1"]);
    follower.ok(&[
        "wait",
        "--for=jsonpath={.status.replicas}=1",
        "rs/one",
        "--timeout=30s",
    ]);
    drop(follower);
    // SAFETY: kill(2) of the etcd this test started.
    unsafe { libc::kill(etcd_pid as i32, libc::SIGKILL) };
    let _ = std::fs::remove_dir_all(&dir);
}

/// Watches the pods labelled `app=<app>` in `ns` with `kubectl get -w` and checks at every
/// event that no more than `max_pods` exist (not being deleted) and no fewer than
/// `min_ready` are Ready; returns the extremes seen when `stop` is set.
fn watch_rollout_limits(
    ns: &str,
    app: &str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(usize, usize, usize)> {
    let mut cmd = with(|c| {
        c.server.kubectl_cmd(&[
            "-n",
            ns,
            "get",
            "pods",
            "-l",
            &format!("app={app}"),
            "-w",
            "--output-watch-events",
            "-o",
            "json",
        ])
    });
    cmd.stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::collections::HashMap;
        let mut pods: HashMap<String, (bool, bool)> = HashMap::new();
        let (mut max_pods, mut min_ready, mut events) = (0usize, usize::MAX, 0usize);
        let stream = serde_json::Deserializer::from_reader(out).into_iter::<serde_json::Value>();
        let killer = {
            let stop = stop.clone();
            let pid = child.id() as i32;
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                // SAFETY: kill(2) of the kubectl this thread started.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            })
        };
        for ev in stream.map_while(Result::ok) {
            let o = &ev["object"];
            let name = o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if ev["type"] == "DELETED" {
                pods.remove(&name);
            } else {
                let deleting = o["metadata"]["deletionTimestamp"].is_string();
                let ready = o["status"]["conditions"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                });
                pods.insert(name, (deleting, ready));
            }
            events += 1;
            let live = pods.values().filter(|(d, _)| !d).count();
            let ready = pods.values().filter(|(d, r)| !d && *r).count();
            if live > max_pods {
                let mut names: Vec<&String> = pods
                    .iter()
                    .filter(|(_, (d, _))| !d)
                    .map(|(n, _)| n)
                    .collect();
                names.sort();
                eprintln!("rollout watch: {live} pods: {names:?}");
            }
            max_pods = max_pods.max(live);
            // Readiness is judged once the initial list is in (6 pods seen).
            if events >= 6 {
                min_ready = min_ready.min(ready);
            }
        }
        let _ = child.wait();
        let _ = killer.join();
        (max_pods, min_ready, events)
    })
}

#[test]
fn a_rolling_update_holds_max_surge_and_max_unavailable_at_every_moment() {
    let ns = ns("limits");
    with(|c| {
        for h in &c.hosts {
            h.berth_ok(&["tag", "busybox:latest", "busybox:limits"]);
        }
    });
    kubectl_in(
        &["-n", &ns, "apply", "-f", "-"],
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: roll}
spec:
  replicas: 6
  selector: {matchLabels: {app: roll}}
  strategy: {rollingUpdate: {maxSurge: 2, maxUnavailable: 1}}
  template:
    metadata: {labels: {app: roll}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: c
        image: busybox:latest
        imagePullPolicy: Never
        command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"]
        readinessProbe: {exec: {command: ["true"]}, initialDelaySeconds: 1, periodSeconds: 1}
"#,
    );
    kubectl_ok(&[
        "-n",
        &ns,
        "rollout",
        "status",
        "deployment/roll",
        "--timeout=90s",
    ]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = watch_rollout_limits(&ns, "roll", stop.clone());
    // The watch has its initial list before the change.
    std::thread::sleep(std::time::Duration::from_millis(500));
    kubectl_ok(&[
        "-n",
        &ns,
        "set",
        "image",
        "deployment/roll",
        "c=busybox:limits",
    ]);
    kubectl_ok(&[
        "-n",
        &ns,
        "rollout",
        "status",
        "deployment/roll",
        "--timeout=120s",
    ]);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (max_pods, min_ready, events) = watcher.join().unwrap();
    assert!(events > 12, "the watch saw the rollout: {events} events");
    assert!(
        max_pods <= 8,
        "6 replicas + maxSurge 2, but {max_pods} pods at once: {}",
        kubectl_ok(&[
            "-n",
            &ns,
            "get",
            "events",
            "--sort-by=.metadata.creationTimestamp"
        ])
    );
    assert!(
        min_ready >= 5,
        "6 replicas - maxUnavailable 1, but only {min_ready} ready"
    );
    let images = kubectl_ok(&[
        "-n",
        &ns,
        "get",
        "pods",
        "-l",
        "app=roll",
        "--field-selector",
        "status.phase=Running",
        "-o",
        "jsonpath={.items[*].spec.containers[0].image}",
    ]);
    assert_eq!(
        images.split(' ').filter(|i| *i == "busybox:limits").count(),
        6,
        "{images}"
    );
    kubectl_ok(&["-n", &ns, "delete", "deployment", "roll"]);
}

#[test]
fn a_rollout_survives_a_server_sigkill_midway_without_loss_or_duplicates() {
    let mut d = Dedicated::start("midway", 2);
    for h in &d.0.hosts {
        h.berth_ok(&["tag", "busybox:latest", "busybox:midway"]);
    }
    d.0.server.ok_in(
        &["apply", "-f", "-"],
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 6
  selector: {matchLabels: {app: web}}
  strategy: {rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: c
        image: busybox:latest
        imagePullPolicy: Never
        command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"]
        readinessProbe: {exec: {command: ["true"]}, initialDelaySeconds: 1, periodSeconds: 1}
"#,
    );
    d.0.server
        .ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    d.0.server
        .ok(&["set", "image", "deployment/web", "c=busybox:midway"]);
    // Midway: the new ReplicaSet has some pods, not all.
    poll("the rollout did not start", 60, || {
        let updated = d.jsonpath(&["get", "deployment", "web"], "{.status.updatedReplicas}");
        updated
            .parse::<i32>()
            .is_ok_and(|n| (1..6).contains(&n))
            .then_some(())
    });
    d.0.restart_server();
    d.0.server
        .ok(&["rollout", "status", "deployment/web", "--timeout=120s"]);
    // Nothing lost or doubled: two ReplicaSets, six pods, all new.
    let sets = d.jsonpath(&["get", "rs", "-l", "app=web"], "{.items[*].spec.replicas}");
    let mut sets: Vec<&str> = sets.split(' ').collect();
    sets.sort();
    assert_eq!(sets, ["0", "6"]);
    let t1 = std::time::Instant::now();
    loop {
        let images = d.jsonpath(
            &["get", "pods", "-l", "app=web"],
            "{.items[*].spec.containers[0].image}",
        );
        if images.split(' ').count() == 6 {
            assert!(images.split(' ').all(|i| i == "busybox:midway"), "{images}");
            break;
        }
        assert!(
            t1.elapsed() < std::time::Duration::from_secs(30),
            "pods: {images}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(
        d.jsonpath(
            &["get", "deployment", "web"],
            "{.metadata.annotations.deployment\\.kubernetes\\.io/revision}"
        ),
        "2"
    );
}

#[test]
fn anti_affinity_and_topology_spread_place_pods_across_nodes() {
    let ns = ns("spread");
    let deploy = |name: &str, replicas: u32, rule: &str| {
        format!(
            r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 1
{rule}
      containers:
      - {{name: c, image: busybox:latest, imagePullPolicy: Never, command: [sleep, "1000"]}}
"#
        )
    };
    kubectl_in(
        &["-n", &ns, "apply", "-f", "-"],
        &[
            deploy(
                "apart",
                3,
                "      affinity:\n        podAntiAffinity:\n          requiredDuringSchedulingIgnoredDuringExecution:\n          - labelSelector: {matchLabels: {app: apart}}\n            topologyKey: kubernetes.io/hostname",
            ),
            deploy(
                "even",
                4,
                "      topologySpreadConstraints:\n      - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: even}}}",
            ),
        ]
        .join("---\n"),
    );
    // Anti-affinity: one per node; the third fits nowhere, in kube-scheduler's words.
    wait_for(
        &ns,
        "deployment/apart",
        "jsonpath={.status.readyReplicas}=2",
    );
    let msg = poll("no pod was left unschedulable", 60, || {
        nonempty(kubectl_ok(&[
            "-n",
            &ns,
            "get",
            "pods",
            "-l",
            "app=apart",
            "-o",
            "jsonpath={.items[*].status.conditions[?(@.reason==\"Unschedulable\")].message}",
        ]))
    });
    assert!(
        msg.starts_with("0/2 nodes are available: 2 node(s) didn't match pod anti-affinity rules."),
        "{msg}"
    );
    let nodes = kubectl_ok(&[
        "-n",
        &ns,
        "get",
        "pods",
        "-l",
        "app=apart",
        "-o",
        "jsonpath={.items[*].spec.nodeName}",
    ]);
    let mut nodes: Vec<&str> = nodes.split(' ').filter(|n| !n.is_empty()).collect();
    nodes.sort();
    assert_eq!(nodes, ["node-0", "node-1"]);
    // Topology spread with maxSkew 1 over two nodes: two each.
    wait_for(&ns, "deployment/even", "jsonpath={.status.readyReplicas}=4");
    let nodes = kubectl_ok(&[
        "-n",
        &ns,
        "get",
        "pods",
        "-l",
        "app=even",
        "-o",
        "jsonpath={.items[*].spec.nodeName}",
    ]);
    assert_eq!(nodes.matches("node-0").count(), 2, "{nodes}");
    assert_eq!(nodes.matches("node-1").count(), 2, "{nodes}");
    kubectl_ok(&["-n", &ns, "delete", "deployment", "--all"]);
}

/// Millicores from a CPU quantity (`2`, `1500m`).
fn millicores(q: &str) -> u64 {
    match q.strip_suffix('m') {
        Some(m) => m.parse().unwrap(),
        None => (q.parse::<f64>().unwrap() * 1000.0) as u64,
    }
}

#[test]
fn priorities_preempt_lower_pods_and_a_pending_pod_waits_for_a_new_node() {
    let mut d = Dedicated::start("preempt", 1);
    let alloc = millicores(&d.jsonpath(&["get", "node", "node-0"], "{.status.allocatable.cpu}"));
    let (small, big) = (alloc * 2 / 5, alloc / 2);
    let c = &d.0;
    // The system classes exist; the Priority admission's rules hold.
    let classes = c.server.ok(&["get", "priorityclasses"]);
    assert!(
        classes.contains("system-node-critical") && classes.contains("2000001000"),
        "{classes}"
    );
    c.server.ok_in(
        &["apply", "-f", "-"],
        "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: low}\nvalue: 100\n---\napiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: high}\nvalue: 1000\n---\napiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: polite}\nvalue: 1000\npreemptionPolicy: Never\n---\napiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: usual}\nvalue: 10\nglobalDefault: true\n",
    );
    let refused = |yaml: &str, want: &str| {
        let o = c.server.kubectl_in(&["apply", "-f", "-"], yaml);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(!o.status.success() && err.contains(want), "{err}");
    };
    refused(
        "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: second}\nvalue: 5\nglobalDefault: true\n",
        "PriorityClass usual is already marked as default. Only one default can exist",
    );
    refused(
        "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: huge}\nvalue: 2000000000\n",
        "maximum allowed value of a user defined priority is 1000000000",
    );
    refused(
        "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: system-mine}\nvalue: 5\n",
        "priority class names with 'system-' prefix are reserved for system use only",
    );
    refused(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: ghost}\nspec:\n  priorityClassName: nope\n  containers: [{name: c, image: busybox:latest}]\n",
        "pods \"ghost\" is forbidden: no PriorityClass with name nope was found",
    );
    refused(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: forged}\nspec:\n  priority: 5\n  containers: [{name: c, image: busybox:latest}]\n",
        "the integer value of priority (5) must not be provided in pod spec; priority admission controller computed 10 from the given PriorityClass name",
    );
    for name in ["ghost", "forged"] {
        let o = c.server.kubectl(&["get", "pod", name]);
        assert!(!o.status.success(), "{name} was stored");
    }
    let pod = |name: &str, class: &str, cpu: u64| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: {name}}}}}\nspec:\n  priorityClassName: {class}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: busybox:latest\n    imagePullPolicy: Never\n    command: [sh, -c, \"trap 'exit 0' TERM; while true; do sleep 0.2; done\"]\n    resources: {{requests: {{cpu: {cpu}m}}}}\n")
    };
    // Two low-priority replicas fill 80% of the node.
    c.server.ok_in(
        &["apply", "-f", "-"],
        &format!(
            r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: low}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: low}}}}
  template:
    metadata: {{labels: {{app: low}}}}
    spec:
      priorityClassName: low
      terminationGracePeriodSeconds: 1
      containers:
      - name: c
        image: busybox:latest
        imagePullPolicy: Never
        command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"]
        resources: {{requests: {{cpu: {small}m}}}}
"#
        ),
    );
    c.server
        .ok(&["rollout", "status", "deployment/low", "--timeout=90s"]);
    let prio = d.jsonpath(
        &["get", "pods", "-l", "app=low"],
        "{.items[0].spec.priority}",
    );
    assert_eq!(prio, "100");
    // A high-priority pod that fits only without one of them preempts exactly one.
    c.server
        .ok_in(&["apply", "-f", "-"], &pod("high", "high", big));
    let o = c
        .server
        .kubectl(&["wait", "pod/high", "--for=condition=Ready", "--timeout=90s"]);
    assert!(
        o.status.success(),
        "{}\n{}\n{}",
        String::from_utf8_lossy(&o.stderr),
        c.server.ok(&["get", "pods", "-o", "wide"]),
        c.server.ok(&["get", "events"])
    );
    assert_eq!(
        d.jsonpath(&["get", "pod", "high"], "{.spec.nodeName}"),
        "node-0"
    );
    let preempted = d.jsonpath(
        &["get", "events", "--field-selector", "reason=Preempted"],
        "{range .items[*]}{.involvedObject.name} {.message}{\"\\n\"}{end}",
    );
    let uid = d.jsonpath(&["get", "pod", "high"], "{.metadata.uid}");
    assert_eq!(preempted.lines().count(), 1, "{preempted}");
    assert!(
        preempted.starts_with("low-")
            && preempted.contains(&format!("Preempted by pod {uid} on node node-0")),
        "{preempted}"
    );
    // The victim's replacement waits: nothing of lower priority is left to preempt.
    let pending_msg = || {
        d.jsonpath(
            &[
                "get",
                "pods",
                "-l",
                "app=low",
                "--field-selector",
                "status.phase=Pending",
            ],
            "{.items[*].status.conditions[?(@.reason==\"Unschedulable\")].message}",
        )
    };
    let msg = poll("the replacement never showed why it waits", 60, || {
        nonempty(pending_msg())
    });
    assert_eq!(
        msg,
        "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod."
    );
    // A pod whose class says Never waits rather than preempt.
    c.server
        .ok_in(&["apply", "-f", "-"], &pod("polite", "polite", small));
    let msg = poll("polite never showed why it waits", 60, || {
        nonempty(d.jsonpath(
            &["get", "pod", "polite"],
            "{.status.conditions[?(@.reason==\"Unschedulable\")].message}",
        ))
    });
    assert_eq!(
        msg,
        "0/1 nodes are available: 1 Insufficient cpu. preemption: not eligible due to preemptionPolicy=Never."
    );
    assert_eq!(
        d.jsonpath(
            &[
                "get",
                "pods",
                "-l",
                "app=low",
                "--field-selector",
                "status.phase=Running"
            ],
            "{.items[*].metadata.name}"
        )
        .split(' ')
        .count(),
        1
    );
    // A node joins: both waiting pods go there.
    d.0.add_node(&["--node-label", "pool=extra"]);
    let tar = common::rootfs_tar(&d.0.server.dir, "bb2", "busybox\n");
    d.0.hosts[1].berth_ok(&[
        "image",
        "import",
        "-c",
        "CMD [\"sh\"]",
        tar.to_str().unwrap(),
        "busybox:latest",
    ]);
    let c = &d.0;
    c.server
        .ok(&["rollout", "status", "deployment/low", "--timeout=90s"]);
    let o = c.server.kubectl(&[
        "wait",
        "pod/polite",
        "--for=condition=Ready",
        "--timeout=90s",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        d.jsonpath(&["get", "pod", "polite"], "{.spec.nodeName}"),
        "node-1"
    );
    let nodes = d.jsonpath(
        &["get", "pods", "-l", "app=low"],
        "{.items[*].spec.nodeName}",
    );
    let mut nodes: Vec<&str> = nodes.split(' ').collect();
    nodes.sort();
    assert_eq!(nodes, ["node-0", "node-1"]);
    assert_eq!(
        d.jsonpath(&["get", "node", "node-1"], "{.metadata.labels.pool}"),
        "extra"
    );
}

/// Every process in the cgroup directory `dir` and below.
fn cgroup_procs(dir: &std::path::Path) -> Vec<i32> {
    let mut out: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(cgroup_procs(&e.path()));
        }
    }
    out
}

/// The directory of the cgroup named `name` under `dir`, searched depth-first.
fn find_cgroup(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if e.file_name() == name {
            return Some(e.path());
        }
        if let Some(p) = find_cgroup(&e.path(), name) {
            return Some(p);
        }
    }
    None
}

#[test]
fn a_container_killed_from_the_host_is_restarted() {
    let ns = ns("hostkill");
    kubectl_in(
        &["-n", &ns, "apply", "-f", "-"],
        &pod_yaml(
            "victim",
            "node-0",
            "  containers:\n  - name: c\n    image: busybox:latest\n    imagePullPolicy: Never\n    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 0.2; done\"]\n    resources: {requests: {cpu: 10m}}\n",
        ),
    );
    wait_for(&ns, "pod/victim", "condition=Ready");
    let uid = get(&ns, "pod/victim", "{.metadata.uid}");
    let first = get(
        &ns,
        "pod/victim",
        "{.status.containerStatuses[0].containerID}",
    );
    let root = with(|c| c.hosts[0].cgroup_root.clone());
    let v1 = std::path::Path::new("/sys/fs/cgroup/memory");
    let base = if v1.is_dir() {
        v1.to_path_buf()
    } else {
        std::path::PathBuf::from("/sys/fs/cgroup")
    };
    let kubepods = base.join(root.trim_start_matches('/')).join("kubepods");
    let dir = find_cgroup(&kubepods, &format!("pod{uid}")).expect("the pod's cgroup");
    let procs = cgroup_procs(&dir);
    assert!(!procs.is_empty(), "no process in {}", dir.display());
    for pid in procs {
        // SAFETY: kill(2) of the test pod's own processes, found through its cgroup.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    wait_for(
        &ns,
        "pod/victim",
        "jsonpath={.status.containerStatuses[0].restartCount}=1",
    );
    wait_for(&ns, "pod/victim", "condition=Ready");
    assert_eq!(
        get(
            &ns,
            "pod/victim",
            "{.status.containerStatuses[0].lastState.terminated.exitCode}"
        ),
        "137"
    );
    assert_ne!(
        get(
            &ns,
            "pod/victim",
            "{.status.containerStatuses[0].containerID}"
        ),
        first
    );
    kubectl_ok(&["-n", &ns, "delete", "pod", "victim", "--grace-period=1"]);
}

#[test]
fn a_replication_controller_keeps_its_count_scales_and_takes_its_pods_along() {
    let ns = ns("rc");
    kubectl_in(
        &["-n", &ns, "apply", "-f", "-"],
        r#"apiVersion: v1
kind: ReplicationController
metadata: {name: old}
spec:
  replicas: 3
  template:
    metadata: {labels: {app: old}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: c
        image: busybox:latest
        imagePullPolicy: Never
        command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"]
"#,
    );
    wait_for(&ns, "rc/old", "jsonpath={.status.readyReplicas}=3");
    // The selector defaults to the template's labels; kubectl shows the counts.
    assert_eq!(get(&ns, "rc/old", "{.spec.selector.app}"), "old");
    let table = kubectl_ok(&["-n", &ns, "get", "rc", "old", "--no-headers"]);
    let cols: Vec<&str> = table.split_whitespace().collect();
    assert_eq!(&cols[..4], ["old", "3", "3", "3"], "{table}");
    let pods = get(&ns, "pods", "{.items[*].metadata.name}");
    let first = pods.split(' ').next().unwrap().to_string();
    assert_eq!(
        get(
            &ns,
            &format!("pod/{first}"),
            "{.metadata.ownerReferences[0].kind}"
        ),
        "ReplicationController"
    );
    kubectl_ok(&["-n", &ns, "delete", "pod", &first]);
    wait_for(&ns, "rc/old", "jsonpath={.status.readyReplicas}=3");
    let now = get(&ns, "pods", "{.items[*].metadata.name}");
    assert!(!now.split(' ').any(|n| n == first), "{now}");
    kubectl_ok(&["-n", &ns, "scale", "rc", "old", "--replicas=1"]);
    wait_for(&ns, "rc/old", "jsonpath={.status.replicas}=1");
    let events = kubectl_ok(&[
        "-n",
        &ns,
        "get",
        "events",
        "--field-selector",
        "involvedObject.kind=ReplicationController",
        "-o",
        "jsonpath={range .items[*]}{.reason} {.source.component}{\"\\n\"}{end}",
    ]);
    assert!(
        events.contains("SuccessfulCreate replication-controller")
            && events.contains("SuccessfulDelete replication-controller"),
        "{events}"
    );
    // Deleted, it takes its pods along (the garbage collector follows the references).
    kubectl_ok(&["-n", &ns, "delete", "rc", "old", "--wait=true"]);
    let o = kubectl_out(&[
        "-n",
        &ns,
        "wait",
        "pods",
        "-l",
        "app=old",
        "--for=delete",
        "--timeout=60s",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(get(&ns, "pods", "{.items[*].metadata.name}"), "");
}

#[test]
fn claims_that_wait_for_their_consumer_bind_to_local_volumes_on_the_pods_node() {
    let ns = ns("localpv");
    let tag = std::process::id();
    let sc = format!("local-{tag}");
    let dirs: Vec<std::path::PathBuf> = with(|c| {
        c.hosts
            .iter()
            .map(|h| h.data_dir.join(format!("lpv-{tag}")))
            .collect()
    });
    let mut objs = vec![format!("apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {{name: {sc}}}\nprovisioner: kubernetes.io/no-provisioner\nvolumeBindingMode: WaitForFirstConsumer\n")];
    for (i, d) in dirs.iter().enumerate() {
        std::fs::create_dir_all(d).unwrap();
        objs.push(format!("apiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: lpv{i}-{tag}}}\nspec:\n  capacity: {{storage: 1Gi}}\n  accessModes: [ReadWriteOnce]\n  storageClassName: {sc}\n  local: {{path: {}}}\n  nodeAffinity:\n    required:\n      nodeSelectorTerms:\n      - matchExpressions: [{{key: kubernetes.io/hostname, operator: In, values: [node-{i}]}}]\n", d.display()));
    }
    kubectl_in(&["apply", "-f", "-"], &objs.join("---\n"));
    let table = kubectl_ok(&["get", "sc", &sc, "--no-headers"]);
    let cols: Vec<&str> = table.split_whitespace().collect();
    assert_eq!(
        &cols[..5],
        [
            sc.as_str(),
            "kubernetes.io/no-provisioner",
            "Delete",
            "WaitForFirstConsumer",
            "false"
        ],
        "{table}"
    );
    // A claim nobody uses waits, and says so.
    let claim = |name: &str| {
        format!("apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: {name}}}\nspec:\n  storageClassName: {sc}\n  accessModes: [ReadWriteOnce]\n  resources: {{requests: {{storage: 1Gi}}}}\n")
    };
    kubectl_in(&["-n", &ns, "apply", "-f", "-"], &claim("idle"));
    poll("no WaitForFirstConsumer event", 60, || {
        (get(
            &ns,
            "events",
            "{.items[?(@.reason==\"WaitForFirstConsumer\")].message}",
        ) == "waiting for first consumer to be created before binding")
            .then_some(())
    });
    assert_eq!(get(&ns, "pvc/idle", "{.status.phase}"), "Pending");
    // A StatefulSet's two claims: each pod goes where a volume is, and its claim binds there.
    kubectl_in(
        &["-n", &ns, "apply", "-f", "-"],
        &format!(
            r#"apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: db}}
spec:
  replicas: 2
  podManagementPolicy: Parallel
  serviceName: db
  selector: {{matchLabels: {{app: db}}}}
  template:
    metadata: {{labels: {{app: db}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: c
        image: busybox:latest
        imagePullPolicy: Never
        command: ["sh", "-c", "hostname > /data/who; trap 'exit 0' TERM; while true; do sleep 0.2; done"]
        volumeMounts: [{{name: data, mountPath: /data}}]
  volumeClaimTemplates:
  - metadata: {{name: data}}
    spec:
      storageClassName: {sc}
      accessModes: [ReadWriteOnce]
      resources: {{requests: {{storage: 1Gi}}}}
"#
        ),
    );
    wait_for(&ns, "sts/db", "jsonpath={.status.readyReplicas}=2");
    let mut used = Vec::new();
    for pod in ["db-0", "db-1"] {
        let node = get(&ns, &format!("pod/{pod}"), "{.spec.nodeName}");
        let i: usize = node.strip_prefix("node-").unwrap().parse().unwrap();
        assert_eq!(
            get(&ns, &format!("pvc/data-{pod}"), "{.spec.volumeName}"),
            format!("lpv{i}-{tag}")
        );
        assert_eq!(
            get(&ns, &format!("pvc/data-{pod}"), "{.status.phase}"),
            "Bound"
        );
        assert_eq!(
            std::fs::read_to_string(dirs[i].join("who")).unwrap().trim(),
            pod
        );
        used.push(i);
    }
    used.sort();
    assert_eq!(used, [0, 1]);
    // No volume left for the idle claim; a bound claim's volume pins its pod's node; a
    // missing claim is named.
    let db0_node = get(&ns, "pod/db-0", "{.spec.nodeName}");
    let other = if db0_node == "node-0" {
        "node-1"
    } else {
        "node-0"
    };
    let user = |name: &str, claim: &str, extra: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n{extra}  containers:\n  - {{name: c, image: busybox:latest, imagePullPolicy: Never, command: [sleep, '1000']}}\n  volumes:\n  - {{name: v, persistentVolumeClaim: {{claimName: {claim}}}}}\n")
    };
    kubectl_in(
        &["-n", &ns, "apply", "-f", "-"],
        &[
            user("stray", "idle", ""),
            user(
                "pinned",
                "data-db-0",
                &format!("  nodeSelector: {{kubernetes.io/hostname: {other}}}\n"),
            ),
            user("lost", "nope", ""),
        ]
        .join("---\n"),
    );
    let not_helpful =
        "preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling.";
    for (pod, why) in [
        ("stray", "0/2 nodes are available: 2 node(s) didn't find available persistent volumes to bind."),
        ("pinned", "0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) had volume node affinity conflict."),
        ("lost", "0/2 nodes are available: persistentvolumeclaim \"nope\" not found."),
    ] {
        wait_for(
            &ns,
            &format!("pod/{pod}"),
            "jsonpath={.status.conditions[0].reason}=Unschedulable",
        );
        let msg = get(&ns, &format!("pod/{pod}"), "{.status.conditions[0].message}");
        assert_eq!(msg, format!("{why} {not_helpful}"), "{pod}");
    }
    kubectl_ok(&["-n", &ns, "delete", "pods,sts", "--all", "--grace-period=1"]);
    kubectl_ok(&["-n", &ns, "delete", "pvc", "--all"]);
    kubectl_ok(&[
        "delete",
        "pv",
        &format!("lpv0-{tag}"),
        &format!("lpv1-{tag}"),
    ]);
    kubectl_ok(&["delete", "sc", &sc]);
    for d in dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// An HTTP server pod answering `/cgi-bin/who` with its name, ready while /tmp/ready exists.
fn web_pod(name: &str, node: &str, labels: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{{labels}}}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 2
  hostname: {name}
  subdomain: db
  containers:
  - name: c
    image: busybox:latest
    imagePullPolicy: Never
    ports: [{{name: http, containerPort: 8080}}]
    command: ["sh", "-c", "touch /tmp/ready; mkdir -p /www/cgi-bin; printf '#!/bin/sh\necho\necho {name}\n' > /www/cgi-bin/who; printf '#!/bin/sh\necho\necho $REMOTE_ADDR\n' > /www/cgi-bin/src; chmod +x /www/cgi-bin/who /www/cgi-bin/src; exec httpd -f -p 8080 -h /www"]
    readinessProbe: {{exec: {{command: [test, -f, /tmp/ready]}}, periodSeconds: 1, failureThreshold: 1}}
"#
    )
}

/// `GET /cgi-bin/who` from pod `from` to `addr` (busybox's nc); the answer's last line, or
/// the error.
fn who_from_pod(ns: &str, from: &str, addr: &str) -> Result<String, String> {
    let o = kubectl_out(&[
        "-n",
        ns,
        "exec",
        from,
        "--",
        "sh",
        "-c",
        &format!("printf 'GET /cgi-bin/who HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {addr} 2>&1"),
    ]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let last = out.lines().last().unwrap_or_default().trim().to_string();
    if o.status.success() && out.starts_with("HTTP/") {
        Ok(last)
    } else {
        Err(format!("{out}{}", String::from_utf8_lossy(&o.stderr)))
    }
}

/// `GET /cgi-bin/who` from the test's own host (outside the cluster's nodes).
fn who_from_host(addr: &str) -> Result<String, String> {
    get_from_host(addr, "/cgi-bin/who")
}

/// `GET path` from the test's own host; the answer's last line.
fn get_from_host(addr: &str, path: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(
        &addr.parse().map_err(|e| format!("{addr}: {e}"))?,
        std::time::Duration::from_secs(3),
    )
    .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(3)))
        .ok();
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    Ok(out.lines().last().unwrap_or_default().trim().to_string())
}

/// A jsonpath over a Service's EndpointSlices.
fn slices(ns: &str, svc: &str, path: &str) -> String {
    kubectl_ok(&[
        "-n",
        ns,
        "get",
        "endpointslices",
        "-l",
        &format!("kubernetes.io/service-name={svc}"),
        "-o",
        &format!("jsonpath={path}"),
    ])
}

/// The pod names that answer `n` requests.
fn spread(
    n: usize,
    mut ask: impl FnMut() -> Result<String, String>,
) -> std::collections::BTreeMap<String, usize> {
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..n {
        let who = ask().unwrap_or_else(|e| panic!("a request failed: {e}"));
        *seen.entry(who).or_insert(0) += 1;
    }
    seen
}

#[test]
fn services_balance_over_ready_endpoints_across_nodes_by_name_and_port() {
    let ns = ns("svc");
    let cli = r#"  containers:
  - name: c
    image: busybox:latest
    imagePullPolicy: Never
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"]
"#;
    let services = r#"apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec:
  type: ExternalName
  externalName: example.test
---
apiVersion: v1
kind: Service
metadata: {name: nobody}
spec:
  selector: {app: nobody}
  ports: [{port: 80, targetPort: 8080}]
"#
    .to_string();
    kubectl_in(
        &["-n", &ns, "apply", "-f", "-"],
        &[
            web_pod("web-a", "node-0", "app: web"),
            web_pod("web-b", "node-1", "app: web"),
            pod_yaml("cli", "node-0", cli),
            services,
        ]
        .join("---\n"),
    );
    for p in ["web-a", "web-b", "cli"] {
        wait_for(&ns, &format!("pod/{p}"), "condition=Ready");
    }
    // The slice and the Endpoints list both pods, ready, with the named port resolved.
    let ready = poll("web's slice lists both pods ready", 30, || {
        let out = slices(
            &ns,
            "web",
            "{range .items[*].endpoints[*]}{.targetRef.name}={.conditions.ready} {end}",
        );
        let mut v: Vec<&str> = out.split_whitespace().collect();
        v.sort();
        (v == ["web-a=true", "web-b=true"]).then_some(out)
    });
    assert!(!ready.is_empty());
    assert_eq!(slices(&ns, "web", "{.items[0].ports[0].port}"), "8080");
    let ep = get(
        &ns,
        "endpoints/web",
        "{.subsets[0].addresses[*].targetRef.name}",
    );
    assert_eq!(ep.split_whitespace().count(), 2, "{ep}");
    // Cluster DNS: the Service by short and full name, from the pod's search path.
    let cluster_ip = get(&ns, "svc/web", "{.spec.clusterIP}");
    assert!(cluster_ip.starts_with("10.43."), "{cluster_ip}");
    let resolv = kubectl_ok(&["-n", &ns, "exec", "cli", "--", "cat", "/etc/resolv.conf"]);
    assert!(resolv.contains("nameserver 10.43.0.10"), "{resolv}");
    assert!(
        resolv.contains(&format!(
            "search {ns}.svc.cluster.local svc.cluster.local cluster.local"
        )),
        "{resolv}"
    );
    assert!(resolv.contains("options ndots:5"), "{resolv}");
    let lookup = |name: &str, extra: &[&str]| {
        let mut args = vec!["-n", &ns, "exec", "cli", "--", "nslookup"];
        args.extend_from_slice(extra);
        args.push(name);
        let o = kubectl_out(&args);
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let out = lookup("web", &[]);
    assert!(out.contains(&format!("Address: {cluster_ip}")), "{out}");
    let full = format!("web.{ns}.svc.cluster.local");
    assert!(lookup(&full, &[]).contains(&cluster_ip));
    // From a pod in another namespace, by its full name (busybox's nslookup applies no
    // search path to a name with a dot), and through it.
    let other = format!("{ns}-other");
    kubectl_ok(&["create", "namespace", &other]);
    kubectl_in(
        &["-n", &other, "apply", "-f", "-"],
        &pod_yaml("cli", "node-0", cli),
    );
    wait_for(&other, "pod/cli", "condition=Ready");
    let o = kubectl_out(&[
        "-n",
        &other,
        "exec",
        "cli",
        "--",
        "nslookup",
        &format!("web.{ns}.svc.cluster.local"),
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(&format!("Address: {cluster_ip}")), "{out}");
    let who = poll("the Service answers another namespace", 30, || {
        who_from_pod(&other, "cli", &format!("{cluster_ip} 80")).ok()
    });
    assert!(who == "web-a" || who == "web-b", "{who}");
    kubectl_ok(&["delete", "namespace", &other, "--wait=false"]);
    // Headless: one address per ready pod, the pods' own names, and SRV for named ports.
    let (ip_a, ip_b) = (
        get(&ns, "pod/web-a", "{.status.podIP}"),
        get(&ns, "pod/web-b", "{.status.podIP}"),
    );
    let out = lookup(&format!("db.{ns}.svc.cluster.local"), &[]);
    assert!(out.contains(&ip_a) && out.contains(&ip_b), "{out}");
    let out = lookup(&format!("web-b.db.{ns}.svc.cluster.local"), &[]);
    assert!(out.contains(&ip_b) && !out.contains(&ip_a), "{out}");
    let out = lookup(
        &format!("_http._tcp.db.{ns}.svc.cluster.local"),
        &["-type=srv"],
    );
    assert!(
        out.contains(&format!("8080 web-a.db.{ns}.svc.cluster.local")),
        "{out}"
    );
    let out = lookup(&format!("ext.{ns}.svc.cluster.local"), &["-type=cname"]);
    assert!(out.contains("example.test"), "{out}");
    let out = lookup(&format!("nothing.{ns}.svc.cluster.local"), &[]);
    assert!(out.contains("NXDOMAIN"), "{out}");
    // Traffic through the ClusterIP reaches both pods, on both nodes.
    let seen = spread(24, || who_from_pod(&ns, "cli", &format!("{cluster_ip} 80")));
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["web-a", "web-b"],
        "{seen:?}"
    );
    // The NodePort answers on every node's address, from outside the cluster.
    let node_port = get(&ns, "svc/web", "{.spec.ports[0].nodePort}");
    let node_ips: Vec<String> = with(|c| c.hosts.iter().map(|h| h.ip.clone()).collect());
    for ip in &node_ips {
        let seen = spread(12, || who_from_host(&format!("{ip}:{node_port}")));
        assert!(!seen.is_empty(), "{seen:?}");
    }
    // A pod that fails readiness leaves the rotation, and comes back when ready. (web-a,
    // on node-0: another test restarts node-1's agent, whose kubelet API exec needs.)
    kubectl_ok(&["-n", &ns, "exec", "web-a", "--", "rm", "/tmp/ready"]);
    poll("web-a leaves the rotation", 30, || {
        let seen = spread(8, || who_from_pod(&ns, "cli", &format!("{cluster_ip} 80")));
        (seen.keys().collect::<Vec<_>>() == ["web-b"]).then_some(())
    });
    let out = lookup(&format!("db.{ns}.svc.cluster.local"), &[]);
    assert!(out.contains(&ip_b) && !out.contains(&ip_a), "{out}");
    kubectl_ok(&["-n", &ns, "exec", "web-a", "--", "touch", "/tmp/ready"]);
    poll("web-a comes back", 30, || {
        let seen = spread(16, || who_from_pod(&ns, "cli", &format!("{cluster_ip} 80")));
        (seen.len() == 2).then_some(())
    });
    // Session affinity: one client, one pod.
    kubectl_ok(&[
        "-n",
        &ns,
        "patch",
        "svc/web",
        "-p",
        r#"{"spec":{"sessionAffinity":"ClientIP"}}"#,
    ]);
    poll("affinity holds", 30, || {
        let seen = spread(12, || who_from_pod(&ns, "cli", &format!("{cluster_ip} 80")));
        (seen.len() == 1).then_some(())
    });
    // The node explains how it routes the Service.
    let said = with(|c| {
        let o = c.hosts[0].exec(&[common::BERTH, "proxy", "explain", &format!("{ns}/web")]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).to_string()
    });
    for want in [
        format!("address {cluster_ip} . tcp . 80 ({ns}/web:http) -> service-{ns}/web/tcp/http"),
        format!("NodePort tcp . {node_port} ({ns}/web:http) -> external-{ns}/web/tcp/http"),
        format!("dnat to {ip_a}:8080"),
        format!("dnat to {ip_b}:8080"),
        "(a client seen recently goes to the same endpoint)".to_string(),
    ] {
        assert!(said.contains(&want), "{want:?} not in:\n{said}");
    }
    // A Service without endpoints refuses at once rather than hanging.
    let nobody = get(&ns, "svc/nobody", "{.spec.clusterIP}");
    let err = who_from_pod(&ns, "cli", &format!("{nobody} 80")).unwrap_err();
    assert!(err.contains("refused"), "{err}");
    // Deleting the namespace takes its rules off every node.
    kubectl_ok(&["delete", "namespace", &ns, "--wait=true", "--timeout=60s"]);
    with(|c| {
        for h in &c.hosts {
            poll("the namespace's rules leave the node", 30, || {
                let o = h.exec(&["nft", "list", "table", "ip", "berth-proxy"]);
                let rules = String::from_utf8_lossy(&o.stdout).to_string();
                (o.status.success() && !rules.contains(&format!("{ns}/"))).then_some(())
            });
        }
    });
}

/// The lines of each node's berth table that mention any of `needles`.
fn rules_mentioning(needles: &[String]) -> Vec<String> {
    with(|c| {
        c.hosts
            .iter()
            .flat_map(|h| {
                let o = h.exec(&["nft", "list", "table", "ip", "berth-proxy"]);
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| needles.iter().any(|n| l.contains(n.as_str())))
                    .map(|l| format!("{}: {}", h.name, l.trim()))
                    .collect::<Vec<_>>()
            })
            .collect()
    })
}

/// A node's routes, but for its pod bridge's own (there once a pod ran; up or down as pods
/// come and go).
fn routes(h: &cluster::nodes::Host) -> String {
    String::from_utf8_lossy(&h.exec(&["ip", "route"]).stdout)
        .lines()
        .filter(|l| !l.contains(" dev br-"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn load_balancers_keep_client_addresses_and_bad_services_leave_nothing_behind() {
    let ns = ns("lb");
    let routes_before: Vec<String> = with(|c| c.hosts.iter().map(routes).collect());
    let lb = |name: &str, policy: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  type: LoadBalancer\n  externalTrafficPolicy: {policy}\n  selector: {{app: web}}\n  ports: [{{name: http, port: 8081, targetPort: http}}]\n"
        )
    };
    kubectl_in(
        &["-n", &ns, "apply", "-f", "-"],
        &[
            web_pod("web-a", "node-0", "app: web"),
            web_pod("web-b", "node-1", "app: web"),
            lb("front", "Local"),
        ]
        .join("---\n"),
    );
    for p in ["web-a", "web-b"] {
        wait_for(&ns, &format!("pod/{p}"), "condition=Ready");
    }
    let node_ips: Vec<String> = with(|c| c.hosts.iter().map(|h| h.ip.clone()).collect());
    let ingress = poll("front gets the nodes' addresses", 30, || {
        let got = get(&ns, "svc/front", "{.status.loadBalancer.ingress[*].ip}");
        let mut got: Vec<String> = got.split_whitespace().map(String::from).collect();
        got.sort();
        let mut want = node_ips.clone();
        want.sort();
        (got == want).then_some(got)
    });
    assert_eq!(ingress.len(), 2);
    // externalTrafficPolicy Local: each node's address serves its own pod, and the pod
    // sees the client's own address (no masquerading).
    let host_ip = with(|c| format!("{}.1", c.subnet_prefix));
    for (ip, pod) in node_ips.iter().zip(["web-a", "web-b"]) {
        let seen = poll("the load balancer answers", 30, || {
            Some(spread(6, || who_from_host(&format!("{ip}:8081")))).filter(|s| !s.is_empty())
        });
        assert_eq!(seen.keys().collect::<Vec<_>>(), [pod], "{ip}: {seen:?}");
        let src = get_from_host(&format!("{ip}:8081"), "/cgi-bin/src").unwrap();
        assert!(
            src.contains(&host_ip),
            "{src} is not the client's {host_ip}"
        );
    }
    // Policy Cluster: both pods answer on one address, the source masqueraded to a node.
    kubectl_ok(&[
        "-n",
        &ns,
        "patch",
        "svc/front",
        "-p",
        r#"{"spec":{"externalTrafficPolicy":"Cluster"}}"#,
    ]);
    poll("one address reaches both pods", 30, || {
        let seen = spread(16, || who_from_host(&format!("{}:8081", node_ips[0])));
        (seen.len() == 2).then_some(())
    });
    // A second LoadBalancer on the same port waits, with a warning, until it is free.
    kubectl_in(&["-n", &ns, "apply", "-f", "-"], &lb("second", "Cluster"));
    poll("the conflict is reported", 30, || {
        let ev = get(
            &ns,
            "events",
            "{range .items[?(@.reason==\"PortConflict\")]}{.message}{end}",
        );
        ev.contains("8081/TCP").then_some(())
    });
    assert_eq!(
        get(&ns, "svc/second", "{.status.loadBalancer.ingress[*].ip}"),
        ""
    );
    let out = kubectl_ok(&["-n", &ns, "get", "svc", "second"]);
    assert!(out.contains("<pending>"), "{out}");
    kubectl_ok(&["-n", &ns, "delete", "svc", "front"]);
    poll("second takes the port", 30, || {
        nonempty(get(
            &ns,
            "svc/second",
            "{.status.loadBalancer.ingress[*].ip}",
        ))
    });
    poll("second answers", 30, || {
        who_from_host(&format!("{}:8081", node_ips[1])).ok()
    });
    // Bad input: Kubernetes' errors, and nothing stored.
    let node_port = get(&ns, "svc/second", "{.spec.ports[0].nodePort}");
    let bad = |yaml: String, want: &str| {
        let o = with(|c| c.server.kubectl_in(&["-n", &ns, "apply", "-f", "-"], &yaml));
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(!o.status.success() && err.contains(want), "{want}: {err}");
    };
    bad(
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: taken}}\nspec:\n  type: NodePort\n  selector: {{app: web}}\n  ports: [{{port: 80, nodePort: {node_port}}}]\n"),
        "provided port is already allocated",
    );
    bad(
        "apiVersion: v1\nkind: Service\nmetadata: {name: badip}\nspec:\n  clusterIP: 10.99.0.5\n  ports: [{port: 80}]\n".into(),
        "the provided IP (10.99.0.5) is not in the valid range. The range of valid IPs is 10.43.0.0/16",
    );
    let names = get(&ns, "svc", "{.items[*].metadata.name}");
    assert_eq!(names, "second");
    // The API itself is a Service too: `kubernetes` on 10.43.0.1:443, reachable from pods.
    let o = kubectl_out(&[
        "-n",
        &ns,
        "exec",
        "web-a",
        "--",
        "nc",
        "-w",
        "3",
        "10.43.0.1",
        "443",
        "-e",
        "true",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Deleting everything leaves no rule naming the namespace, its addresses or ports,
    // and the routes as they were.
    let mut needles = vec![
        format!("{ns}/"),
        format!(" {node_port}"),
        ":8081".to_string(),
    ];
    needles.push(get(&ns, "svc/second", "{.spec.clusterIP}"));
    assert!(
        !rules_mentioning(&needles).is_empty(),
        "the rules were there"
    );
    kubectl_ok(&["delete", "namespace", &ns, "--wait=true", "--timeout=60s"]);
    poll("no rule is left", 30, || {
        rules_mentioning(&needles).is_empty().then_some(())
    });
    let routes_after: Vec<String> = with(|c| c.hosts.iter().map(routes).collect());
    assert_eq!(routes_before, routes_after);
}

/// Requests `GET /cgi-bin/who` from the test's host to `addr` until `stop`: (ok, failed,
/// the first failures).
fn load_from_host(
    addr: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(usize, usize, Vec<String>)> {
    load_from_host_path(addr, "/cgi-bin/who", "app-", stop)
}

/// Requests `GET path` from the test's host to `addr` until `stop`, counting answers that
/// start with `want` as ok.
fn load_from_host_path(
    addr: String,
    path: &'static str,
    want: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(usize, usize, Vec<String>)> {
    std::thread::spawn(move || {
        let (mut ok, mut failed, mut errors) = (0, 0, Vec::new());
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            match get_from_host(&addr, path) {
                Ok(who) if who.starts_with(want) => ok += 1,
                Ok(other) => {
                    failed += 1;
                    errors.push(format!("{addr}: answered {other:?}"));
                }
                Err(e) => {
                    failed += 1;
                    errors.push(format!("{addr}: {e}"));
                }
            }
            errors.truncate(5);
        }
        (ok, failed, errors)
    })
}

#[test]
fn a_rollout_and_its_undo_behind_a_service_fail_no_request() {
    let ns = ns("zero");
    with(|c| {
        for h in &c.hosts {
            h.berth_ok(&["tag", "busybox:latest", "busybox:v2"]);
        }
    });
    // Each pod, when signalled, writes what cluster DNS (which follows the same slices as
    // the proxies) says of the Service's ready endpoints: its own address must be gone. It
    // serves a second longer, as an application behind a Service does while the nodes'
    // proxies catch up with the slice (DNS in the server sees it first: one request in
    // ~1800 through the LoadBalancer address was refused without that second).
    let term_dir =
        std::path::PathBuf::from(format!("/var/tmp/berth-test-{ns}-{}", std::process::id()));
    let app = format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: app}}
spec:
  replicas: 3
  selector: {{matchLabels: {{app: app}}}}
  template:
    metadata: {{labels: {{app: app}}}}
    spec:
      terminationGracePeriodSeconds: 5
      volumes: [{{name: term, hostPath: {{path: {dir}, type: DirectoryOrCreate}}}}]
      containers:
      - name: c
        image: busybox:latest
        imagePullPolicy: Never
        ports: [{{name: http, containerPort: 8080}}]
        volumeMounts: [{{name: term, mountPath: /term}}]
        command: ["sh", "-c", "mkdir -p /www/cgi-bin; printf '#!/bin/sh\necho\necho $HOSTNAME\n' > /www/cgi-bin/who; chmod +x /www/cgi-bin/who; httpd -f -p 8080 -h /www & pid=$!; trap 'nslookup app-h.{ns}.svc.cluster.local > /term/$HOSTNAME 2>&1; sleep 1; kill $pid; exit 0' TERM; wait"]
        readinessProbe: {{tcpSocket: {{port: http}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: app}}
spec:
  type: LoadBalancer
  selector: {{app: app}}
  ports: [{{name: http, port: 8082, targetPort: http}}]
---
apiVersion: v1
kind: Service
metadata: {{name: app-h}}
spec:
  clusterIP: None
  selector: {{app: app}}
  ports: [{{name: http, port: 8080}}]
"#,
        dir = term_dir.display()
    );
    let cli = r#"  containers:
  - name: c
    image: busybox:latest
    imagePullPolicy: Never
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"]
"#;
    kubectl_in(
        &["-n", &ns, "apply", "-f", "-"],
        &[app.to_string(), pod_yaml("cli", "node-0", cli)].join("---\n"),
    );
    kubectl_ok(&[
        "-n",
        &ns,
        "rollout",
        "status",
        "deployment/app",
        "--timeout=120s",
    ]);
    wait_for(&ns, "pod/cli", "condition=Ready");
    let cluster_ip = get(&ns, "svc/app", "{.spec.clusterIP}");
    let node_port = get(&ns, "svc/app", "{.spec.ports[0].nodePort}");
    let node_ips: Vec<String> = with(|c| c.hosts.iter().map(|h| h.ip.clone()).collect());
    poll("the load balancer answers", 30, || {
        who_from_host(&format!("{}:8082", node_ips[1])).ok()
    });
    poll("the ClusterIP answers", 30, || {
        who_from_pod(&ns, "cli", &format!("{cluster_ip} 8082")).ok()
    });
    // Load through the ClusterIP from a pod, the NodePort and the LoadBalancer from outside.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let from_host = [
        load_from_host(format!("{}:{node_port}", node_ips[0]), stop.clone()),
        load_from_host(format!("{}:8082", node_ips[1]), stop.clone()),
    ];
    let script = format!(
        "ok=0; fail=0; while [ ! -f /tmp/stop ]; do \
           if printf 'GET /cgi-bin/who HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {cluster_ip} 8082 | grep -q '^app-'; \
           then ok=$((ok+1)); else fail=$((fail+1)); fi; done; echo $ok $fail"
    );
    let in_pod = {
        let mut cmd = with(|c| {
            c.server
                .kubectl_cmd(&["-n", &ns, "exec", "cli", "--", "sh", "-c", &script])
        });
        std::thread::spawn(move || cmd.output().unwrap())
    };
    std::thread::sleep(std::time::Duration::from_secs(1));
    kubectl_ok(&["-n", &ns, "set", "image", "deployment/app", "c=busybox:v2"]);
    kubectl_ok(&[
        "-n",
        &ns,
        "rollout",
        "status",
        "deployment/app",
        "--timeout=120s",
    ]);
    kubectl_ok(&["-n", &ns, "rollout", "undo", "deployment/app"]);
    kubectl_ok(&[
        "-n",
        &ns,
        "rollout",
        "status",
        "deployment/app",
        "--timeout=120s",
    ]);
    // The old pods' endpoints go as they terminate: wait until only three pods remain.
    poll("the rollout's old pods are gone", 60, || {
        let pods = kubectl_ok(&["-n", &ns, "get", "pods", "-l", "app=app", "-o", "name"]);
        (pods.split_whitespace().count() == 3).then_some(())
    });
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    kubectl_ok(&["-n", &ns, "exec", "cli", "--", "touch", "/tmp/stop"]);
    let out = in_pod.join().unwrap();
    let counts = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (pod_ok, pod_failed) = counts
        .split_once(' ')
        .map(|(a, b)| {
            (
                a.parse::<usize>().unwrap_or(0),
                b.parse::<usize>().unwrap_or(usize::MAX),
            )
        })
        .unwrap_or_else(|| {
            panic!(
                "the in-pod load said {counts:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let mut report = vec![format!(
        "ClusterIP from a pod: {pod_ok} ok, {pod_failed} failed"
    )];
    let mut failed = pod_failed;
    let mut errors = Vec::new();
    for (name, t) in ["NodePort", "LoadBalancer"].iter().zip(from_host) {
        let (ok, f, e) = t.join().unwrap();
        report.push(format!("{name} from outside: {ok} ok, {f} failed"));
        assert!(ok > 0, "{name}: no request went through");
        failed += f;
        errors.extend(e);
    }
    println!(
        "requests during the rollout and its undo: {}",
        report.join("; ")
    );
    assert!(pod_ok > 0);
    assert_eq!(failed, 0, "{}\n{}", report.join("; "), errors.join("\n"));
}

#[test]
fn vxlan_carries_pod_traffic_between_nodes_and_goes_with_a_node() {
    let d = Dedicated::start_with_agents("vxlan", 2, &["--network-backend", "vxlan"]);
    let c = &d.0;
    let (n0, n1) = (&c.hosts[0], &c.hosts[1]);
    let cli = r#"  containers:
  - name: c
    image: busybox:latest
    imagePullPolicy: Never
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"]
"#;
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  type: NodePort\n  selector: {app: web}\n  ports: [{port: 80, targetPort: http}]\n";
    c.server.ok_in(
        &["apply", "-f", "-"],
        &[
            web_pod("srv", "node-1", "app: web"),
            pod_yaml("cli", "node-0", cli),
            svc.to_string(),
        ]
        .join("---\n"),
    );
    for p in ["srv", "cli"] {
        let o = c.server.kubectl(&[
            "wait",
            "--for=condition=Ready",
            &format!("pod/{p}"),
            "--timeout=90s",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    // node-0 reaches node-1's pods through its VXLAN device, with the neighbour and
    // forwarding entries node-1 published.
    let cidr1 = d.jsonpath(&["get", "node", "node-1"], "{.spec.podCIDR}");
    let mac1 = d.jsonpath(
        &["get", "node", "node-1"],
        "{.metadata.annotations.berth\\.dev/vtep-mac}",
    );
    assert_eq!(mac1.len(), 17, "{mac1}");
    let route =
        String::from_utf8_lossy(&n0.exec(&["ip", "route", "show", &cidr1]).stdout).to_string();
    assert!(route.contains("dev berth.vxlan"), "{route}");
    let fdb = String::from_utf8_lossy(
        &n0.exec(&["bridge", "fdb", "show", "dev", "berth.vxlan"])
            .stdout,
    )
    .to_string();
    assert!(fdb.contains(&format!("{mac1} dst {}", n1.ip)), "{fdb}");
    let tx = || -> u64 {
        let o = n0.exec(&["ip", "-j", "-s", "link", "show", "berth.vxlan"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        v.pointer("/0/stats64/tx/packets")
            .and_then(|p| p.as_u64())
            .unwrap_or(0)
    };
    let before = tx();
    // Pod to pod without NAT, and through the Service.
    let srv_ip = d.jsonpath(&["get", "pod", "srv"], "{.status.podIP}");
    let cli_ip = d.jsonpath(&["get", "pod", "cli"], "{.status.podIP}");
    let ask = |addr: &str, path: &str| {
        let o = c.server.kubectl(&[
            "exec",
            "cli",
            "--",
            "sh",
            "-c",
            &format!("printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {addr}"),
        ]);
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let src = poll("node-1's pod answers over VXLAN", 30, || {
        nonempty(ask(&format!("{srv_ip} 8080"), "/cgi-bin/src"))
    });
    assert_eq!(src, format!("[::ffff:{cli_ip}]"));
    let cluster_ip = d.jsonpath(&["get", "svc", "web"], "{.spec.clusterIP}");
    let who = poll("the Service answers", 30, || {
        nonempty(ask(&format!("{cluster_ip} 80"), "/cgi-bin/who"))
    });
    assert_eq!(who, "srv");
    assert!(tx() > before, "the traffic went through berth.vxlan");
    // node-0's agent restarts while requests come in through its NodePort: its rules are
    // rebuilt in one transaction, and no request fails.
    let node_port = d.jsonpath(&["get", "svc", "web"], "{.spec.ports[0].nodePort}");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = load_from_host_path(
        format!("{}:{node_port}", n0.ip),
        "/cgi-bin/who",
        "srv",
        stop.clone(),
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    c.restart_agent(0);
    std::thread::sleep(std::time::Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed, errors) = load.join().unwrap();
    println!(
        "requests through node-0's NodePort while its agent restarted: {ok} ok, {failed} failed"
    );
    assert!(ok > 0 && failed == 0, "{errors:?}");
    // node-1 leaves: node-0 forgets its route, neighbour and forwarding entry.
    n1.kill9();
    c.server.ok(&["delete", "node", "node-1"]);
    poll("node-1's entries go", 30, || {
        let route =
            String::from_utf8_lossy(&n0.exec(&["ip", "route", "show", &cidr1]).stdout).to_string();
        let fdb = String::from_utf8_lossy(
            &n0.exec(&["bridge", "fdb", "show", "dev", "berth.vxlan"])
                .stdout,
        )
        .to_string();
        let neigh = String::from_utf8_lossy(
            &n0.exec(&["ip", "neigh", "show", "dev", "berth.vxlan"])
                .stdout,
        )
        .to_string();
        (route.trim().is_empty() && !fdb.contains(&mac1) && neigh.trim().is_empty()).then_some(())
    });
    // node-0 leaves the cluster (its Node deleted, its agent still running): it removes
    // its Service table, its VXLAN device and berth's routes.
    c.server.ok(&["delete", "node", "node-0"]);
    poll("node-0 removes what it set up", 30, || {
        let table = n0.exec(&["nft", "list", "table", "ip", "berth-proxy"]);
        let dev = n0.exec(&["ip", "link", "show", "berth.vxlan"]);
        let routes =
            String::from_utf8_lossy(&n0.exec(&["ip", "route", "show", "proto", "98"]).stdout)
                .to_string();
        (!table.status.success() && !dev.status.success() && routes.trim().is_empty()).then_some(())
    });
}

/// The Node authorizer: a node's own credentials read the Secrets of the pods bound to it
/// and nothing of another node's, and change only what is its own.
#[test]
fn a_pods_service_account_token_works_inside_it_and_dies_with_it() {
    let ns = ns("satoken");
    kubectl_ok(&["-n", &ns, "create", "serviceaccount", "reader"]);
    kubectl_ok(&[
        "-n",
        &ns,
        "create",
        "rolebinding",
        "reader-view",
        "--clusterrole",
        "view",
        "--serviceaccount",
        &format!("{ns}:reader"),
    ]);
    // The host's kubectl (a static binary) is mounted into a busybox pod.
    let kubectl = std::fs::canonicalize(
        String::from_utf8(
            std::process::Command::new("sh")
                .args(["-c", "command -v kubectl"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
        .trim(),
    )
    .unwrap();
    let dir = kubectl.parent().unwrap().display().to_string();
    let bin = format!("/opt/k/{}", kubectl.file_name().unwrap().to_string_lossy());
    kubectl_in(
        &["-n", &ns, "apply", "-f", "-"],
        &pod_yaml(
            "inpod",
            "node-0",
            &format!("  serviceAccountName: reader\n  containers:\n  - name: c\n    image: busybox:latest\n    imagePullPolicy: Never\n    command: [sleep, \"3600\"]\n    env: [{{name: HOME, value: /tmp}}]\n    volumeMounts: [{{name: k, mountPath: /opt/k, readOnly: true}}]\n  volumes:\n  - name: k\n    hostPath: {{path: {dir}, type: Directory}}\n"),
        ),
    );
    wait_for(&ns, "pod/inpod", "condition=Ready");
    let inside = |args: &[&str]| {
        let mut a = vec!["-n", ns.as_str(), "exec", "inpod", "--", bin.as_str()];
        a.extend_from_slice(args);
        let o = kubectl_out(&a);
        (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    };
    // The standard files, and the kubelet's variables for the API server's Service.
    let files = kubectl_ok(&[
        "-n",
        &ns,
        "exec",
        "inpod",
        "--",
        "sh",
        "-c",
        "cd /var/run/secrets/kubernetes.io/serviceaccount && cat namespace && echo && head -1 ca.crt && echo $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT",
    ]);
    assert_eq!(
        files.lines().collect::<Vec<_>>(),
        [ns.as_str(), "-----BEGIN CERTIFICATE-----", "10.43.0.1:443"],
        "{files}"
    );
    // kubectl inside the pod, with nothing but its in-cluster configuration.
    let (ok, out) = inside(&["get", "pods", "-o", "name"]);
    assert!(ok && out.trim() == "pod/inpod", "{out}");
    let (ok, out) = inside(&[
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username}",
    ]);
    assert!(ok, "{out}");
    assert_eq!(out, format!("system:serviceaccount:{ns}:reader"));
    let (ok, out) = inside(&["get", "secrets"]);
    assert!(!ok);
    assert!(
        out.contains(&format!("secrets is forbidden: User \"system:serviceaccount:{ns}:reader\" cannot list resource \"secrets\" in API group \"\" in the namespace \"{ns}\"")),
        "{out}"
    );
    // The same token from outside, until the pod is deleted.
    let token = kubectl_ok(&[
        "-n",
        &ns,
        "exec",
        "inpod",
        "--",
        "cat",
        "/var/run/secrets/kubernetes.io/serviceaccount/token",
    ]);
    let (url, ca) = with(|c| (c.server.url.clone(), c.server.dir.join("data/tls/ca.crt")));
    let with_token = |token: &str, args: &[&str]| {
        let o = std::process::Command::new("kubectl")
            .args([
                "--kubeconfig",
                "/dev/null",
                "--server",
                &url,
                "--certificate-authority",
            ])
            .arg(&ca)
            .args(["--token", token])
            .args(args)
            .output()
            .unwrap();
        (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    };
    let (ok, out) = with_token(&token, &["-n", &ns, "get", "pods", "-o", "name"]);
    assert!(ok && out.trim() == "pod/inpod", "{out}");
    kubectl_ok(&["-n", &ns, "delete", "pod", "inpod", "--wait=true"]);
    let (ok, out) = with_token(&token, &["-n", &ns, "get", "pods"]);
    assert!(!ok);
    assert!(out.contains("Unauthorized"), "{out}");
    // TokenRequest for users: `kubectl create token`, with Kubernetes' bounds.
    let t = kubectl_ok(&["-n", &ns, "create", "token", "reader", "--duration", "10m"]);
    let (ok, out) = with_token(
        t.trim(),
        &["auth", "whoami", "-o", "jsonpath={.status.userInfo.groups}"],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("system:serviceaccounts:{ns}")),
        "{out}"
    );
    let o = kubectl_out(&["-n", &ns, "create", "token", "reader", "--duration", "1m"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("may not specify a duration less than 10 minutes"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // A token for another audience does not authenticate here.
    let t = kubectl_ok(&[
        "-n",
        &ns,
        "create",
        "token",
        "reader",
        "--audience",
        "vault",
    ]);
    let (ok, out) = with_token(t.trim(), &["auth", "whoami"]);
    assert!(!ok && out.contains("Unauthorized"), "{out}");
    // The issuer's discovery document and keys, for the service accounts themselves.
    let (ok, out) = with_token(
        kubectl_ok(&["-n", &ns, "create", "token", "reader"]).trim(),
        &["get", "--raw", "/.well-known/openid-configuration"],
    );
    assert!(ok, "{out}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        doc["issuer"],
        "https://kubernetes.default.svc.cluster.local"
    );
    let jwks: serde_json::Value =
        serde_json::from_str(&kubectl_ok(&["get", "--raw", "/openid/v1/jwks"])).unwrap();
    assert_eq!(jwks["keys"][0]["alg"], "ES256");
    // Automounting switched off by the pod: no token volume; an account that is missing
    // is refused with Kubernetes' message.
    let dry = kubectl_in(
        &["-n", &ns, "create", "--dry-run=server", "-o", "jsonpath={.spec.volumes}", "-f", "-"],
        &pod_yaml(
            "nomount",
            "node-0",
            "  automountServiceAccountToken: false\n  containers:\n  - {name: c, image: busybox:latest}\n",
        ),
    );
    assert!(!dry.contains("kube-api-access"), "{dry}");
    let err = with(|c| {
        c.server.err_in(
            &["-n", &ns, "create", "-f", "-"],
            &pod_yaml(
                "nosa",
                "node-0",
                "  serviceAccountName: ghost\n  containers:\n  - {name: c, image: busybox:latest}\n",
            ),
        )
    });
    assert!(
        err.contains(&format!(
            "error looking up service account {ns}/ghost: serviceaccount \"ghost\" not found"
        )),
        "{err}"
    );
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]);
}

#[test]
fn a_node_reads_only_the_secrets_of_its_own_pods() {
    let ns = ns("nodeauthz");
    let pod = |name: &str, node: &str, secret: &str| {
        pod_yaml(
            name,
            node,
            &format!("  containers:\n  - name: c\n    image: busybox:latest\n    imagePullPolicy: Never\n    command: [sleep, \"3600\"]\n    env: [{{name: S, valueFrom: {{secretKeyRef: {{name: {secret}, key: k}}}}}}]\n"),
        )
    };
    kubectl_in(
        &["-n", &ns, "apply", "-f", "-"],
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: s0}}\nstringData: {{k: zero}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: s1}}\nstringData: {{k: one}}\n---\n{}---\n{}",
            pod("p0", "node-0", "s0"),
            pod("p1", "node-1", "s1")
        ),
    );
    wait_for(&ns, "pod/p0", "condition=Ready");
    wait_for(&ns, "pod/p1", "condition=Ready");
    let kc = with(|c| c.hosts[1].data_dir.join("kubelet.kubeconfig"));
    let as_node1 = |args: &[&str]| {
        let o = std::process::Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &kc)
            .output()
            .unwrap();
        (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    };
    let (ok, out) = as_node1(&["-n", &ns, "get", "secret", "s1", "-o", "jsonpath={.data.k}"]);
    assert!(
        ok && out == "b25l",
        "ok={ok} out={out:?} kubeconfig={}",
        std::fs::read_to_string(&kc)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.contains("-data"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let (ok, out) = as_node1(&["-n", &ns, "get", "secret", "s0"]);
    assert!(!ok);
    assert!(
        out.contains(&format!("secrets \"s0\" is forbidden: User \"system:node:node-1\" cannot get resource \"secrets\" in API group \"\" in the namespace \"{ns}\"")),
        "{out}"
    );
    let (ok, out) = as_node1(&["-n", &ns, "get", "secrets"]);
    assert!(!ok, "a node lists no secrets: {out}");
    let (ok, out) = as_node1(&["-n", &ns, "delete", "pod", "p0", "--wait=false"]);
    assert!(!ok, "{out}");
    let (ok, out) = as_node1(&["label", "node", "node-0", "stolen=yes"]);
    assert!(!ok, "{out}");
    // NodeRestriction: a node creates only mirror pods bound to itself.
    let (ok, out) = as_node1(&["-n", &ns, "run", "sneaky", "--image", "busybox:latest"]);
    assert!(!ok);
    assert!(
        out.contains("node \"node-1\" can only create mirror pods bound to itself"),
        "{out}"
    );
    let (ok, out) = as_node1(&["label", "node", "node-1", "authz-test=yes"]);
    assert!(ok, "a node changes its own Node: {out}");
    kubectl_ok(&["label", "node", "node-1", "authz-test-"]);
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]);
}

/// A registry on the cluster's bridge (the server's address), for this test only.
struct BridgeRegistry {
    child: std::process::Child,
    addr: String,
}

impl BridgeRegistry {
    fn start(dir: &std::path::Path) -> BridgeRegistry {
        use std::io::BufRead;
        let ip = with(|c| {
            c.server
                .url
                .trim_start_matches("https://")
                .rsplit_once(':')
                .unwrap()
                .0
                .to_string()
        });
        let mut child = std::process::Command::new(common::BERTH)
            .args([
                "registry",
                "serve",
                "-q",
                "--addr",
                &format!("{ip}:0"),
                "--root",
            ])
            .arg(dir)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        err.read_line(&mut line).unwrap();
        let addr = line
            .split("://")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_string();
        std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
        BridgeRegistry { child, addr }
    }
}

impl Drop for BridgeRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn curl(args: &[&str]) -> String {
    let o = std::process::Command::new("curl")
        .arg("-sf")
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Signed images only: where a policy enforces signatures, images signed by its key in
/// either cosign format run (by the digest admission verified); unsigned ones, ones signed
/// by another key, a tag moved to an unsigned digest and a tampered signature are refused
/// with the image, the policy and the reason; warn mode admits with a warning; and a
/// static pod's unsigned image never runs, because the agent checks too.
#[test]
fn only_signed_images_run_where_a_policy_enforces_it() {
    let tmp = with(|c| c.server.dir.join("sigtest"));
    std::fs::create_dir_all(&tmp).unwrap();
    let reg = BridgeRegistry::start(&tmp.join("registry"));
    let repo = format!("{}/signed/app", reg.addr);
    // Five different images pushed from node-0's engine.
    let tar = with(|c| common::rootfs_tar(&c.server.dir, "sigbb", "busybox\n"));
    for v in ["legacy", "bundle", "otherkey", "unsigned", "tampered"] {
        let r = format!("{repo}:{v}");
        with(|c| {
            c.hosts[0].berth_ok(&[
                "image",
                "import",
                "-c",
                "CMD [\"sh\"]",
                "-c",
                &format!("ENV VARIANT={v}"),
                tar.to_str().unwrap(),
                &r,
            ]);
            c.hosts[0].berth_ok(&["push", &r]);
        });
    }
    let berth = |args: &[&str]| {
        let o = std::process::Command::new(common::BERTH)
            .args(args)
            .current_dir(&tmp)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "berth {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    berth(&["image", "generate-key-pair", "--output", "release.key"]);
    berth(&["image", "generate-key-pair", "--output", "other.key"]);
    let insecure = ["--insecure-registry", "10.240.0.0/12"];
    let sign = |key: &str, tag: &str, bundle: bool| {
        let mut a = vec!["image", "sign", "--key", key];
        if bundle {
            a.push("--bundle");
        }
        a.extend(insecure);
        let r = format!("{repo}:{tag}");
        a.push(&r);
        berth(&a);
    };
    sign("release.key", "legacy", false);
    sign("release.key", "bundle", true);
    sign("other.key", "otherkey", false);
    sign("release.key", "tampered", false);
    // A tag signed, then moved to the unsigned image.
    let digest_of = |tag: &str| {
        curl(&["-I", "-H", "Accept: application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.v2+json", &format!("http://{}/v2/signed/app/manifests/{tag}", reg.addr)])
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("docker-content-digest:").map(|d| d.trim().to_string()))
            .unwrap()
    };
    let legacy_manifest = curl(&["-H", "Accept: application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.v2+json", &format!("http://{}/v2/signed/app/manifests/legacy", reg.addr)]);
    let media: serde_json::Value = serde_json::from_str(&legacy_manifest).unwrap();
    let media = media["mediaType"].as_str().unwrap().to_string();
    let unsigned_manifest = curl(&[
        "-H",
        &format!("Accept: {media}"),
        &format!("http://{}/v2/signed/app/manifests/unsigned", reg.addr),
    ]);
    std::fs::write(tmp.join("m.json"), &legacy_manifest).unwrap();
    curl(&[
        "-X",
        "PUT",
        "-H",
        &format!("Content-Type: {media}"),
        "--data-binary",
        &format!("@{}", tmp.join("m.json").display()),
        &format!("http://{}/v2/signed/app/manifests/moved", reg.addr),
    ]);
    sign("release.key", "moved", false);
    std::fs::write(tmp.join("u.json"), &unsigned_manifest).unwrap();
    curl(&[
        "-X",
        "PUT",
        "-H",
        &format!("Content-Type: {media}"),
        "--data-binary",
        &format!("@{}", tmp.join("u.json").display()),
        &format!("http://{}/v2/signed/app/manifests/moved", reg.addr),
    ]);
    // Tampering: the .sig manifest's signature changed by one character.
    let hex = digest_of("tampered")
        .trim_start_matches("sha256:")
        .to_string();
    let sig_url = format!(
        "http://{}/v2/signed/app/manifests/sha256-{hex}.sig",
        reg.addr
    );
    let mut sig: serde_json::Value = serde_json::from_str(&curl(&[
        "-H",
        "Accept: application/vnd.oci.image.manifest.v1+json",
        &sig_url,
    ]))
    .unwrap();
    let s = sig["layers"][0]["annotations"]["dev.cosignproject.cosign/signature"]
        .as_str()
        .unwrap()
        .to_string();
    let flipped = format!("{}{}", if s.starts_with('M') { "N" } else { "M" }, &s[1..]);
    sig["layers"][0]["annotations"]["dev.cosignproject.cosign/signature"] =
        serde_json::json!(flipped);
    std::fs::write(tmp.join("sig.json"), sig.to_string()).unwrap();
    curl(&[
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/vnd.oci.image.manifest.v1+json",
        "--data-binary",
        &format!("@{}", tmp.join("sig.json").display()),
        &sig_url,
    ]);
    // The policies: enforce where sig=enforce, warn where sig=warn.
    let pem = std::fs::read_to_string(tmp.join("release.key.pub")).unwrap();
    let key_yaml: String = pem.lines().map(|l| format!("        {l}\n")).collect();
    let policy = |name: &str, mode: &str| {
        format!("apiVersion: security.berth.io/v1\nkind: ImageSignaturePolicy\nmetadata: {{name: {name}}}\nspec:\n  images: [\"{}/signed/*\"]\n  mode: {mode}\n  namespaceSelector: {{matchLabels: {{sig: {mode}}}}}\n  keys:\n  - name: release\n    publicKey: |\n{key_yaml}", reg.addr)
    };
    kubectl_in(
        &["apply", "-f", "-"],
        &format!(
            "{}---\n{}",
            policy("sig-enforce", "enforce"),
            policy("sig-warn", "warn")
        ),
    );
    let listed = kubectl_ok(&["get", "imagesignaturepolicies"]);
    assert!(
        listed.contains("sig-enforce")
            && listed.contains("enforce")
            && listed.contains("/signed/*"),
        "{listed}"
    );
    let ns = ns("sigs");
    kubectl_ok(&["label", "ns", &ns, "sig=enforce"]);
    let pod = |name: &str, tag: &str, node: &str| {
        pod_yaml(name, node, &format!("  containers:\n  - name: c\n    image: {repo}:{tag}\n    command: [sleep, \"3600\"]\n"))
    };
    // Signed in either format: admitted, pinned to the digest, running.
    kubectl_in(
        &["-n", &ns, "apply", "-f", "-"],
        &format!(
            "{}---\n{}",
            pod("legacy", "legacy", "node-1"),
            pod("bundle", "bundle", "node-1")
        ),
    );
    wait_for(&ns, "pod/legacy", "condition=Ready");
    wait_for(&ns, "pod/bundle", "condition=Ready");
    let recorded = get(
        &ns,
        "pod/legacy",
        "{.metadata.annotations.security\\.berth\\.io/verified-images}",
    );
    assert_eq!(
        recorded,
        format!("{{\"c\":\"{repo}@{}\"}}", digest_of("legacy"))
    );
    assert_eq!(
        get(&ns, "pod/legacy", "{.spec.containers[0].image}"),
        format!("{repo}:legacy"),
        "the spec stays as written"
    );
    // Refused, each with its reason.
    for (tag, why) in [
        ("unsigned", "no signature"),
        ("otherkey", "does not verify"),
        ("moved", "no signature"),
        ("tampered", "does not verify"),
    ] {
        let e = with(|c| {
            c.server.err_in(
                &["-n", &ns, "create", "-f", "-"],
                &pod(&format!("p-{tag}"), tag, "node-1"),
            )
        });
        assert!(
            e.contains(&format!("pods \"p-{tag}\" is forbidden: image \"{repo}:{tag}\" is refused by ImageSignaturePolicy \"sig-enforce\": ")) && e.contains(why),
            "{tag}: {e}"
        );
    }
    // A workload whose template names an unsigned image is created, with a warning at once.
    let o = with(|c| {
        c.server.kubectl_in(
            &[
                "-n",
                &ns,
                "create",
                "deployment",
                "early",
                "--image",
                &format!("{repo}:unsigned"),
            ],
            "",
        )
    });
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("Warning: pods of this template would be refused: image")
            && err.contains("sig-enforce"),
        "{err}"
    );
    // Warn mode: admitted, with the warning.
    let warned = ns_labeled("sigs-warn", "sig=warn");
    let o = with(|c| {
        c.server.kubectl_in(
            &["-n", &warned, "create", "-f", "-"],
            &pod("w", "unsigned", "node-1"),
        )
    });
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("Warning: image")
            && err.contains(
                "is not signed as ImageSignaturePolicy \"sig-warn\" requires (warn mode)"
            ),
        "{err}"
    );
    // A static pod never went through admission: the agent refuses its unsigned image.
    let dir = with(|c| c.hosts[1].data_dir.join("manifests"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("unsigned.yaml"),
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: static-unsigned, namespace: {ns}}}\nspec:\n  containers:\n  - name: c\n    image: {repo}:unsigned\n    command: [sleep, \"3600\"]\n"),
    )
    .unwrap();
    let said = poll("the agent's refusal of the static pod", 60, || {
        let log = with(|c| c.hosts[1].log());
        let events = kubectl_ok(&[
            "-n",
            &ns,
            "get",
            "events",
            "-o",
            "jsonpath={.items[*].message}",
        ]);
        let all = format!("{log}\n{events}");
        all.contains(&format!(
            "image \"{repo}:unsigned\" is refused by ImageSignaturePolicy \"sig-enforce\""
        ))
        .then_some(all)
    });
    assert!(said.contains("no signature"), "{said}");
    let ps = with(|c| c.hosts[1].berth_ok(&["ps", "-a", "--format", "{{.Image}}"]));
    assert!(!ps.contains(":unsigned"), "an unsigned image ran: {ps}");
    std::fs::remove_file(dir.join("unsigned.yaml")).unwrap();
    kubectl_ok(&[
        "delete",
        "imagesignaturepolicies",
        "sig-enforce",
        "sig-warn",
    ]);
    kubectl_ok(&["delete", "namespace", &ns, &warned, "--wait=false"]);
}

fn ns_labeled(name: &str, label: &str) -> String {
    let n = ns(name);
    kubectl_ok(&["label", "ns", &n, label]);
    n
}

/// Bootstrap tokens: `berth token create` makes one that authenticates as a bootstrapper
/// (which may ask for certificates and nothing else); once expired it cannot join a node.
/// A user's CertificateSigningRequest waits for `kubectl certificate approve`, then is
/// issued by the cluster CA.
#[test]
fn bootstrap_tokens_join_until_they_expire_and_csrs_wait_for_approval() {
    let (kc, url, dir) = with(|c| {
        (
            c.server.kubeconfig.clone(),
            c.server.url.clone(),
            c.server.dir.join("bootstrap"),
        )
    });
    let berth = |args: &[&str]| {
        let o = std::process::Command::new(common::BERTH)
            .args(args)
            .arg("--kubeconfig")
            .arg(&kc)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "berth {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let token = berth(&[
        "token",
        "create",
        "--ttl",
        "1h",
        "--description",
        "for a test",
    ]);
    let secret = token.rsplit("::").next().unwrap().to_string();
    let id = secret.split('.').next().unwrap().to_string();
    let as_token = |t: &str, args: &[&str]| {
        let o = std::process::Command::new("kubectl")
            .args([
                "--kubeconfig",
                "/dev/null",
                "--server",
                &url,
                "--insecure-skip-tls-verify",
                "--token",
                t,
            ])
            .args(args)
            .output()
            .unwrap();
        (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    };
    let (ok, out) = as_token(
        &secret,
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username} {.status.userInfo.groups}",
        ],
    );
    assert!(ok, "{out}");
    assert!(
        out.starts_with(&format!("system:bootstrap:{id} ")) && out.contains("system:bootstrappers"),
        "{out}"
    );
    let (ok, out) = as_token(&secret, &["-n", "kube-system", "get", "secrets"]);
    assert!(!ok && out.contains("forbidden"), "{out}");
    let listed = berth(&["token", "list"]);
    assert!(
        listed.contains(&secret)
            && listed.contains("authentication,signing")
            && listed.contains("for a test"),
        "{listed}"
    );
    berth(&["token", "delete", &id]);
    assert!(!berth(&["token", "list"]).contains(&secret));
    let (ok, _) = as_token(&secret, &["auth", "whoami"]);
    assert!(!ok, "a deleted token authenticates no more");
    // An expired token cannot join.
    let expired = berth(&["token", "create", "--ttl", "1s"]);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let out = with(|c| {
        c.hosts[1].exec(&[
            common::BERTH,
            "agent",
            "--server",
            &url,
            "--token",
            &expired,
            "--node-name",
            "latecomer",
            "--data-dir",
            dir.to_str().unwrap(),
            "--exec-root",
            "/run/berth-bootstrap-test",
            "--engine-socket",
            "/run/berth-bootstrap-test/s.sock",
            "--kubelet-port",
            "10252",
        ])
    });
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the server refused the token (401 Unauthorized)"),
        "{err}"
    );
    assert!(!dir.join("tls/client.crt").exists());
    assert!(!kubectl_ok(&["get", "nodes", "-o", "name"]).contains("latecomer"));
    let _ = std::fs::remove_dir_all("/run/berth-bootstrap-test");
    let _ = std::fs::remove_dir_all(&dir);
    // A user's request: pending until approved, then issued by the cluster CA.
    let key = rcgen_free_csr();
    kubectl_in(
        &["apply", "-f", "-"],
        &format!("apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata: {{name: jane}}\nspec:\n  request: {key}\n  signerName: kubernetes.io/kube-apiserver-client\n  expirationSeconds: 86400\n  usages: [client auth]\n"),
    );
    let row = kubectl_ok(&["get", "csr", "jane", "--no-headers"]);
    assert!(
        row.contains("kubernetes.io/kube-apiserver-client")
            && row.contains("Pending")
            && row.contains("system:admin"),
        "{row}"
    );
    kubectl_ok(&["certificate", "approve", "jane"]);
    let cert = poll("the approved CSR to be issued", 30, || {
        nonempty(get("default", "csr/jane", "{.status.certificate}"))
    });
    use base64::Engine as _;
    let pem = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(cert)
            .unwrap(),
    )
    .unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    assert!(kubectl_ok(&["get", "csr", "jane", "--no-headers"]).contains("Approved,Issued"));
    // The nodes' own requests were approved and issued automatically.
    let nodes = kubectl_ok(&[
        "get",
        "csr",
        "-o",
        "jsonpath={range .items[*]}{.spec.username} {.status.conditions[0].reason}{\"\\n\"}{end}",
    ]);
    assert!(
        nodes
            .lines()
            .any(|l| l.starts_with("system:bootstrap:server-token AutoApproved")),
        "{nodes}"
    );
    assert!(
        nodes
            .lines()
            .any(|l| l.starts_with("system:node:node-0 AutoApproved")),
        "{nodes}"
    );
    kubectl_ok(&["delete", "csr", "jane"]);
}

/// A base64 PEM certificate request for CN jane, O dev (made with openssl).
fn rcgen_free_csr() -> String {
    let dir = with(|c| c.server.dir.join("csr-jane"));
    std::fs::create_dir_all(&dir).unwrap();
    let o = std::process::Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
        ])
        .arg(dir.join("jane.key"))
        .args(["-subj", "/CN=jane/O=dev"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(&o.stdout)
}

/// Node certificates are renewed before they expire, as the node itself, and the agent
/// carries on with the new ones (the API client and the kubelet API) without a restart.
#[test]
fn agents_renew_their_certificates_before_they_expire() {
    let d = Dedicated(Cluster::start_with(
        "renew",
        1,
        &["--cluster-signing-duration", "20s"],
    ));
    let c = &d.0;
    let h = &c.hosts[0];
    let crt = h.data_dir.join("tls/client.crt");
    let first = std::fs::read_to_string(&crt).unwrap();
    poll("a renewal", 90, || {
        h.log()
            .contains("renewed the node's certificates")
            .then_some(())
    });
    assert_ne!(std::fs::read_to_string(&crt).unwrap(), first);
    // Past the first certificate's expiry, the node still reports and serves: its
    // kubelet API answers the server with the renewed serving certificate.
    load_busybox(c);
    std::thread::sleep(std::time::Duration::from_secs(21));
    c.server.ok(&[
        "wait",
        "--for=condition=Ready",
        "node/node-0",
        "--timeout=30s",
    ]);
    c.server.ok_in(
        &["apply", "-f", "-"],
        &pod_yaml(
            "renewed",
            "node-0",
            "  containers:\n  - name: c\n    image: busybox:latest\n    imagePullPolicy: Never\n    command: [sleep, \"3600\"]\n",
        ),
    );
    c.server.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/renewed",
        "--timeout=60s",
    ]);
    assert_eq!(
        c.server.ok(&["exec", "renewed", "--", "echo", "hi"]).trim(),
        "hi"
    );
    let csrs = c.server.ok(&[
        "get",
        "csr",
        "-o",
        "jsonpath={range .items[*]}{.spec.username} {.spec.signerName}{\"\\n\"}{end}",
    ]);
    assert!(
        csrs.lines()
            .any(|l| l == "system:node:node-0 kubernetes.io/kube-apiserver-client-kubelet"),
        "the node renewed its client certificate as itself: {csrs}"
    );
    assert!(
        !h.log().contains("renewing the node's certificates:"),
        "{}",
        h.log()
    );
}

/// Two servers on one etcd: agents learn both from the `kubernetes` Endpoints, and when the
/// one they joined dies they carry on through the other — the node stays Ready, and a new
/// pod on it runs and answers `kubectl exec` through the surviving server.
#[test]
fn agents_fail_over_to_another_server_when_theirs_dies() {
    let dir = cluster::base_dir("failover-etcd");
    let (etcd, etcd_pid) = cluster::start_etcd(&dir);
    let d = Dedicated(Cluster::start_with(
        "failover",
        1,
        &["--datastore-endpoint", &etcd],
    ));
    let c = &d.0;
    load_busybox(c);
    let b = c.add_server("failover-b");
    let b_addr = b.url.trim_start_matches("https://").to_string();
    // It took the cluster's CA from the store (encrypted with the token there).
    assert_eq!(
        std::fs::read(b.dir.join("data/tls/ca.crt")).unwrap(),
        std::fs::read(c.server.dir.join("data/tls/ca.crt")).unwrap()
    );
    // A server with another token, or none, is refused the cluster's store.
    for token in [Some("K10abc::server:not-the-token"), None] {
        let mut cmd = std::process::Command::new(common::BERTH);
        cmd.args([
            "server",
            "--disable-agent",
            "--disable-scheduler",
            "--disable-controller-manager",
        ])
        .args([
            "--bind-address",
            "127.0.0.1",
            "--https-listen-port",
            "0",
            "--data-dir",
        ])
        .arg(dir.join("intruder"))
        .arg("--write-kubeconfig")
        .arg(dir.join("intruder.yaml"))
        .args(["--datastore-endpoint", &etcd]);
        if let Some(t) = token {
            cmd.args(["--token", t]);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains("not the cluster's token")
                || err.contains("start this server with that cluster's --token"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(dir.join("intruder"));
    }
    // The agent learns the second server (the servers' identity leases, every 5 s).
    poll("the agent to learn the second server", 60, || {
        c.hosts[0].log().contains(&b_addr).then_some(())
    });
    // SAFETY: kill(2) of the server process this test started.
    unsafe { libc::kill(c.server.pid as i32, libc::SIGKILL) };
    let t0 = std::time::Instant::now();
    // The node's lease goes on being renewed, through the survivor.
    let renewed = |s: &cluster::Server| {
        s.ok(&[
            "-n",
            "kube-node-lease",
            "get",
            "lease",
            "node-0",
            "-o",
            "jsonpath={.spec.renewTime}",
        ])
    };
    let before = renewed(&b);
    let t1 = std::time::Instant::now();
    while renewed(&b) == before {
        assert!(
            t1.elapsed() < std::time::Duration::from_secs(30),
            "the node's lease was not renewed through the other server:\n{}",
            c.hosts[0].log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    eprintln!("failover: the node renewed its lease through the other server {:.1} s after its server died", t0.elapsed().as_secs_f64());
    b.ok_in(
        &["apply", "-f", "-"],
        &pod_yaml(
            "after",
            "node-0",
            "  containers:\n  - name: c\n    image: busybox:latest\n    imagePullPolicy: Never\n    command: [sleep, \"3600\"]\n",
        ),
    );
    b.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/after",
        "--timeout=60s",
    ]);
    assert_eq!(
        b.ok(&["exec", "after", "--", "echo", "still"]).trim(),
        "still"
    );
    b.ok(&[
        "wait",
        "--for=condition=Ready",
        "node/node-0",
        "--timeout=30s",
    ]);
    drop(b);
    drop(d);
    // SAFETY: kill(2) of the etcd this test started.
    unsafe { libc::kill(etcd_pid as i32, libc::SIGKILL) };
    let _ = std::fs::remove_dir_all(&dir);
}

/// The pid of the etcd member a server of an HA cluster runs.
fn etcd_member_pid(s: &cluster::Server) -> i32 {
    let data = format!("{}/data/etcd/data", s.dir.display());
    poll("the server's etcd member", 30, || {
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
            (args.first()?.ends_with(b"etcd") && args.contains(&data.as_bytes())).then_some(pid)
        })
    })
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) of a process this test started (directly or through its server).
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
}

/// Three servers that run etcd themselves (`--cluster-init`, then two joining with
/// `--server` and the token) and two agents. One etcd member stopped changes nothing a
/// user sees through any server; two stopped make every server refuse reads and writes
/// with a clear 503 (never an answer from stale memory) until one is back. Killing the
/// server that leads hands the controllers to another within seconds: a Deployment
/// scaled right after converges, no acknowledged write is lost, the pods keep running and
/// the agents carry on through the survivors. The dead server's member is then removed.
#[test]
fn three_servers_on_their_own_etcd_survive_losing_members_and_the_leader() {
    // Secrets encrypted at rest: the first server's configuration is the cluster's.
    let keys = cluster::base_dir("ha-keys");
    let config = keys.join("encryption.yaml");
    std::fs::write(
        &config,
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aescbc:\n      keys: [{name: k1, secret: MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=}]\n  - identity: {}\n",
    )
    .unwrap();
    let d = Dedicated(Cluster::start_with(
        "ha",
        2,
        &[
            "--cluster-init",
            "--encryption-provider-config",
            config.to_str().unwrap(),
        ],
    ));
    let c = &d.0;
    load_busybox(c);
    let b = c.add_server("ha-b");
    let s3 = c.add_server("ha-c");
    let members = |s: &cluster::Server| {
        let o = std::process::Command::new(common::BERTH)
            .args(["member", "list", "--data-dir"])
            .arg(s.dir.join("data"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let list = members(&b);
    assert_eq!(
        list.lines().count(),
        4,
        "three members and a header:\n{list}"
    );
    assert_eq!(list.matches("https://").count(), 6, "{list}");
    assert!(!list.contains("unreachable"), "{list}");
    for s in [&b, &s3] {
        // The joining servers took the cluster's CA through the first one's API.
        assert_eq!(
            std::fs::read(s.dir.join("data/tls/ca.crt")).unwrap(),
            std::fs::read(c.server.dir.join("data/tls/ca.crt")).unwrap()
        );
    }
    // A join with a node's bootstrap token, or a wrong token, is refused and leaves nothing.
    let bad = cluster::base_dir("ha-intruder");
    let hash = c.token.split("::").next().unwrap().to_string();
    for token in [
        format!("{hash}::abcdef.0123456789abcdef"),
        format!("{hash}::server:wrong"),
    ] {
        let o = std::process::Command::new(common::BERTH)
            .args(["server", "--disable-agent", "--disable-scheduler"])
            .args([
                "--disable-controller-manager",
                "--bind-address",
                "127.0.0.1",
            ])
            .args([
                "--advertise-address",
                "127.0.0.1",
                "--https-listen-port",
                "0",
            ])
            .args(["--server", &c.server.url, "--token", &token, "--data-dir"])
            .arg(bad.join("data"))
            .arg("--write-kubeconfig")
            .arg(bad.join("k.yaml"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{err}");
        assert!(
            err.contains("server token") || err.contains("refused to let this server join"),
            "{err}"
        );
        assert!(!bad.join("data/tls").exists() && !bad.join("data/etcd").exists());
    }
    assert_eq!(members(&c.server).lines().count(), 4);
    // A Secret written through a server given no encryption configuration is ciphertext
    // in every member's data.
    let sentinel = "ha-at-rest-sentinel";
    s3.ok(&[
        "create",
        "secret",
        "generic",
        "s",
        &format!("--from-literal=p={sentinel}"),
    ]);
    assert_eq!(
        c.server
            .ok(&["get", "secret", "s", "-o", "jsonpath={.data.p}"])
            .trim(),
        {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(sentinel)
        }
    );
    for s in [&c.server, &b, &s3] {
        let mut stack = vec![s.dir.join("data/etcd/data")];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let bytes = std::fs::read(&p).unwrap_or_default();
                    assert!(
                        !bytes
                            .windows(sentinel.len())
                            .any(|w| w == sentinel.as_bytes()),
                        "the secret is in clear in {}",
                        p.display()
                    );
                }
            }
        }
    }

    let servers = [&c.server, &b, &s3];
    let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: ha\nspec:\n  replicas: 2\n  selector:\n    matchLabels: {app: ha}\n  template:\n    metadata:\n      labels: {app: ha}\n    spec:\n      containers:\n      - name: c\n        image: busybox:latest\n        imagePullPolicy: Never\n        command: [sleep, \"3600\"]\n";
    b.ok_in(&["apply", "-f", "-"], deployment);
    s3.ok(&["rollout", "status", "deployment/ha", "--timeout=120s"]);
    let pods = |s: &cluster::Server| {
        s.ok(&[
            "get",
            "pods",
            "-l",
            "app=ha",
            "-o",
            "jsonpath={range .items[*]}{.metadata.uid} {.status.containerStatuses[0].restartCount}{\"\\n\"}{end}",
        ])
    };
    let before = pods(&c.server);

    // One member stopped (frozen, as a hung host): every server goes on serving.
    let e3 = etcd_member_pid(&s3);
    let e2 = etcd_member_pid(&b);
    signal(e3, libc::SIGSTOP);
    for (i, s) in servers.iter().enumerate() {
        s.ok(&[
            "create",
            "configmap",
            &format!("one-{i}"),
            "--from-literal=k=v",
        ]);
        for j in 0..=i {
            s.ok(&["get", "configmap", &format!("one-{j}")]);
        }
    }
    // Two stopped: no quorum. Every server refuses, reads included, and says why. (A
    // refused write is undetermined, as a timed-out one is with etcd: one that a frozen
    // member had taken may yet be carried out when it wakes. Each try has a name of its
    // own.)
    signal(e2, libc::SIGSTOP);
    let mut tries = 0;
    for s in servers {
        poll("writes refused without a quorum", 30, || {
            tries += 1;
            let name = format!("refused-{tries}");
            let o = s.kubectl(&["create", "configmap", &name, "--from-literal=k=v"]);
            let err = String::from_utf8_lossy(&o.stderr).into_owned();
            (!o.status.success() && err.contains("lost the quorum")).then_some(())
        });
        let o = s.kubectl(&["get", "configmap", "one-0"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "a read without a quorum answered");
        assert!(
            err.contains("ServiceUnavailable") && err.contains("lost the quorum"),
            "{err}"
        );
    }
    // One back: everything continues.
    signal(e2, libc::SIGCONT);
    let t0 = std::time::Instant::now();
    loop {
        let o = c
            .server
            .kubectl(&["create", "configmap", "two", "--from-literal=k=v"]);
        if o.status.success() {
            break;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(30),
            "no write 30 s after a member came back: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    signal(e3, libc::SIGCONT);
    for s in servers {
        s.ok(&["get", "configmap", "two"]);
    }

    // Kill the server that leads.
    let holder = c.server.ok(&[
        "-n",
        "kube-system",
        "get",
        "lease",
        "berth-controllers",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    let leads = |s: &cluster::Server| {
        std::fs::read_to_string(s.dir.join("server.log"))
            .unwrap_or_default()
            .contains(&format!("{holder} became the leader"))
    };
    let leader = *servers.iter().find(|s| leads(s)).expect("a server leads");
    let survivor = *servers.iter().find(|s| s.pid != leader.pid).unwrap();
    let leader_member = std::fs::read_to_string(leader.dir.join("data/etcd/member.json")).unwrap();
    let leader_member = serde_json::from_str::<serde_json::Value>(&leader_member).unwrap()["name"]
        .as_str()
        .unwrap()
        .to_string();
    leader.ok(&["create", "configmap", "acknowledged", "--from-literal=k=v"]);
    signal(leader.pid as i32, libc::SIGKILL);
    let t0 = std::time::Instant::now();
    survivor.ok(&["scale", "deployment/ha", "--replicas=4"]);
    poll(
        "the new leader's controllers to scale the deployment",
        60,
        || {
            let n = survivor
                .ok(&["get", "pods", "-l", "app=ha", "-o", "name"])
                .lines()
                .count();
            (n >= 4).then_some(())
        },
    );
    eprintln!(
        "failover: the new leader's controllers created pods {:.1} s after the leading server was killed",
        t0.elapsed().as_secs_f64()
    );
    survivor.ok(&["rollout", "status", "deployment/ha", "--timeout=120s"]);
    survivor.ok(&["get", "configmap", "acknowledged"]);
    // The pods that ran before run on, never restarted.
    let after = pods(survivor);
    for line in before.lines() {
        assert!(after.contains(line), "{line} not in {after}");
    }
    // Both agents carry on through the survivors: their leases are renewed.
    for h in &c.hosts {
        let renewed = || {
            survivor.ok(&[
                "-n",
                "kube-node-lease",
                "get",
                "lease",
                &h.name,
                "-o",
                "jsonpath={.spec.renewTime}",
            ])
        };
        let r0 = renewed();
        poll("the node's lease renewed through a survivor", 60, || {
            (renewed() != r0).then_some(())
        });
    }
    survivor.ok(&[
        "wait",
        "--for=condition=Ready",
        "node",
        "--all",
        "--timeout=30s",
    ]);

    // The dead server's member is removed; the cluster has two.
    let o = std::process::Command::new(common::BERTH)
        .args(["member", "remove", &leader_member, "--data-dir"])
        .arg(survivor.dir.join("data"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let list = members(survivor);
    assert_eq!(list.lines().count(), 3, "{list}");
    assert!(!list.contains(&leader_member), "{list}");
    survivor.ok(&["create", "configmap", "after-removal", "--from-literal=k=v"]);
    for s in servers {
        if s.pid != leader.pid {
            signal(s.pid as i32, libc::SIGKILL);
        }
    }
    drop(d);
    let _ = std::fs::remove_dir_all(&bad);
    let _ = std::fs::remove_dir_all(&keys);
}

/// The server's registry knows its clients by the cluster's identities, with skopeo as the
/// client (Docker's certs.d layout for certificates, Basic credentials for tokens): the
/// anonymous are asked to authenticate, the admin's client certificate pushes, a node's
/// certificate pulls (the default `berth:registry-pull` binding of `system:nodes`) but may
/// not push, and a ServiceAccount's token as the password pulls only once RBAC grants it;
/// a forged token is refused.
#[test]
fn the_server_registry_knows_its_clients_by_the_clusters_identities() {
    with(|c| {
        let reg = c
            .server
            .registry
            .clone()
            .expect("the server says where its registry listens");
        let h = &c.hosts[0];
        let dir = cluster::base_dir("registry-clients");
        let archive = dir.join("bb.tar");
        h.berth_ok(&["save", "-o", archive.to_str().unwrap(), "busybox:latest"]);
        let tls = c.server.dir.join("data/tls");
        // A certs.d directory: the cluster CA, and a client certificate if given.
        let certs = |name: &str, pair: Option<(std::path::PathBuf, std::path::PathBuf)>| {
            let d = dir.join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::copy(tls.join("ca.crt"), d.join("ca.crt")).unwrap();
            if let Some((cert, key)) = pair {
                std::fs::copy(cert, d.join("client.cert")).unwrap();
                std::fs::copy(key, d.join("client.key")).unwrap();
            }
            d.display().to_string()
        };
        let anonymous = certs("anonymous", None);
        let admin = certs(
            "admin",
            Some((tls.join("admin.crt"), tls.join("admin.key"))),
        );
        let node = certs(
            "node",
            Some((
                h.data_dir.join("tls/client.crt"),
                h.data_dir.join("tls/client.key"),
            )),
        );
        let skopeo = |args: &[&str]| {
            let o = std::process::Command::new("skopeo")
                .arg("--insecure-policy")
                .args(args)
                .output()
                .expect("skopeo (Debian's skopeo package)");
            (
                o.status.success(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        };
        let src = format!("docker-archive:{}", archive.display());
        let app = format!("docker://{reg}/app:1");
        let push = |certs: &str, creds: Option<&str>| {
            let mut a = vec!["copy", "--dest-cert-dir", certs];
            if let Some(c) = creds {
                a.extend(["--dest-creds", c]);
            }
            a.extend([src.as_str(), app.as_str()]);
            skopeo(&a)
        };
        let pull = |certs: &str, creds: Option<&str>| {
            let mut a = vec!["inspect", "--cert-dir", certs];
            if let Some(c) = creds {
                a.extend(["--creds", c]);
            }
            a.push(app.as_str());
            skopeo(&a)
        };
        let (ok, err) = push(&anonymous, None);
        assert!(!ok && err.contains("authentication required"), "{err}");
        let (ok, err) = push(&admin, None);
        assert!(ok, "the admin pushes: {err}");
        // Every node runs the pushed image with no configuration of its own: the agents
        // trust the registry the server published, and pull as their node.
        for (i, host) in c.hosts.iter().enumerate().take(2) {
            let name = format!("from-registry-{i}");
            c.server.ok_in(
                &["apply", "-f", "-"],
                &pod_yaml(
                    &name,
                    &host.name,
                    &format!("  containers:\n  - name: c\n    image: {reg}/app:1\n    imagePullPolicy: Always\n    command: [sleep, \"3600\"]\n"),
                ),
            );
        }
        for i in 0..2 {
            c.server.ok(&[
                "wait",
                "--for=condition=Ready",
                &format!("pod/from-registry-{i}"),
                "--timeout=60s",
            ]);
        }
        c.server.ok(&[
            "delete",
            "pod",
            "from-registry-0",
            "from-registry-1",
            "--grace-period=1",
        ]);
        let (ok, err) = pull(&node, None);
        assert!(ok, "a node pulls: {err}");
        let (ok, err) = push(&node, None);
        assert!(!ok && err.contains("may not push"), "{err}");
        c.server
            .ok(&["create", "serviceaccount", "registry-puller"]);
        let token = c.server.ok(&["create", "token", "registry-puller"]);
        let creds = format!("x:{}", token.trim());
        let (ok, err) = pull(&anonymous, Some(&creds));
        assert!(!ok && err.contains("may not pull"), "{err}");
        c.server.ok(&[
            "create",
            "clusterrolebinding",
            "registry-puller",
            "--clusterrole=berth:registry-pull",
            "--serviceaccount=default:registry-puller",
        ]);
        poll("the binding to let the account pull", 30, || {
            pull(&anonymous, Some(&creds)).0.then_some(())
        });
        let (ok, err) = push(&anonymous, Some(&creds));
        assert!(!ok && err.contains("may not push"), "{err}");
        let (ok, err) = pull(&anonymous, Some("x:not-a-token"));
        assert!(!ok && err.contains("not one of this cluster's"), "{err}");
        c.server
            .ok(&["delete", "clusterrolebinding", "registry-puller"]);
        c.server
            .ok(&["delete", "serviceaccount", "registry-puller"]);
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// The two halves with their usual clients: the docker CLI builds an image from a
/// Dockerfile against `berth daemon` and pushes it to the server's registry, logged in with
/// a ServiceAccount token that RBAC lets push; kubectl deploys it, and the Deployment's
/// pods run the very image that was built (its ID).
#[test]
fn docker_builds_and_pushes_to_the_cluster_registry_and_kubectl_deploys_it() {
    with(|c| {
        let reg = c.server.registry.clone().expect("the server's registry");
        let dir = cluster::base_dir("docker-workflow");
        // The daemon trusts the cluster CA for the registry, as /etc/docker/certs.d would.
        let certs = dir.join("certs.d");
        std::fs::create_dir_all(certs.join(&reg)).unwrap();
        std::fs::copy(
            c.server.dir.join("data/tls/ca.crt"),
            certs.join(&reg).join("ca.crt"),
        )
        .unwrap();
        let d = common::Daemon::start_with(
            &dir.join("daemon"),
            &[
                "--registry-certs",
                certs.to_str().unwrap(),
                "--allowed-registry",
                &reg,
            ],
        );
        let config = dir.join("docker-config");
        std::fs::create_dir_all(&config).unwrap();
        let docker = |args: &[&str]| {
            let o = std::process::Command::new("docker")
                .env("DOCKER_HOST", format!("unix://{}", d.socket.display()))
                .env("DOCKER_CONFIG", &config)
                .env("DOCKER_BUILDKIT", "0")
                .stdin(std::process::Stdio::null())
                .args(args)
                .output()
                .expect("the docker CLI");
            assert!(
                o.status.success(),
                "docker {args:?}: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        let ctx = dir.join("ctx");
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::copy("/bin/busybox", ctx.join("busybox")).unwrap();
        std::fs::write(ctx.join("index.html"), "hello from the cluster registry\n").unwrap();
        std::fs::write(
            ctx.join("Dockerfile"),
            "FROM scratch\nCOPY busybox /bin/busybox\nCOPY index.html /www/index.html\nEXPOSE 8080\nCMD [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n",
        )
        .unwrap();
        let image = format!("{reg}/web:1");
        docker(&["build", "-q", "-t", &image, ctx.to_str().unwrap()]);
        let id = docker(&["image", "inspect", "-f", "{{.Id}}", &image]);
        c.server.ok(&["create", "serviceaccount", "ci-pusher"]);
        c.server.ok(&[
            "create",
            "clusterrolebinding",
            "ci-pusher",
            "--clusterrole=berth:registry-push",
            "--serviceaccount=default:ci-pusher",
        ]);
        let token = c.server.ok(&["create", "token", "ci-pusher"]);
        poll("docker login with the account's token", 30, || {
            std::process::Command::new("docker")
                .env("DOCKER_HOST", format!("unix://{}", d.socket.display()))
                .env("DOCKER_CONFIG", &config)
                .args(["login", &reg, "-u", "ci-pusher", "-p", token.trim()])
                .output()
                .unwrap()
                .status
                .success()
                .then_some(())
        });
        docker(&["push", &image]);
        c.server.ok(&[
            "create",
            "deployment",
            "registry-web",
            &format!("--image={image}"),
            "--replicas=2",
            "--port=8080",
        ]);
        c.server.ok(&[
            "rollout",
            "status",
            "deployment/registry-web",
            "--timeout=120s",
        ]);
        let ids = c.server.ok(&[
            "get",
            "pods",
            "-l",
            "app=registry-web",
            "-o",
            "jsonpath={range .items[*]}{.status.containerStatuses[0].imageID}{\"\\n\"}{end}",
        ]);
        assert_eq!(ids.lines().count(), 2, "{ids}");
        for l in ids.lines() {
            assert_eq!(l.trim(), id.trim(), "the pods run the image docker built");
        }
        c.server.ok(&["delete", "deployment", "registry-web"]);
        c.server.ok(&["delete", "clusterrolebinding", "ci-pusher"]);
        c.server.ok(&["delete", "serviceaccount", "ci-pusher"]);
        drop(d);
        let _ = std::fs::remove_dir_all(&dir);
    });
}
