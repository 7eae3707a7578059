#!/usr/bin/env bash
# Autoscaling on measured load, with berth's defaults (the agent samples every 5 s, the
# server scrapes every node every 10 s, HPAs sync every 5 s), on a server and two agents
# in network namespaces of this script's own:
#  1. load step: a Deployment of busybox httpd whose CGI page burns CPU (1 replica, 50m
#     requested, 200m limit) behind a Service, with an HPA at 50% CPU (max 4, Kubernetes'
#     default behavior); one client starts requesting the page in a loop through the
#     Service. Seconds from the client's start to the first scale-up decision (the
#     Deployment's replicas raised by the HPA) and to the new replicas Ready. RUNS times
#     (a fresh namespace each); median and range.
#  2. the metrics pipeline's cost: 30 pods on one node, its agent sampling every second;
#     the CPU of the agent's sampler thread per cycle over 60 s, the whole agent's CPU and
#     RSS, and the server's CPU over 30 s of scrapes.
# The peer, Kubernetes' HPA with metrics-server and the kubelet, is not installable on this
# machine (no Kubernetes in Debian's archive, no other network); its defaults (kubelet
# housekeeping 10 s, metrics-server resolution 15 s, HPA sync 15 s) are printed beside
# berth's for the reader, not measured.
#   bench/hpa.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
if [[ $(id -u) != 0 ]]; then echo "run as root" >&2; exit 1; fi
command -v kubectl >/dev/null || { echo "kubectl is needed" >&2; exit 1; }
need=()
command -v protoc >/dev/null || need+=(protobuf-compiler)
[[ -x /usr/lib/cni/bridge ]] || need+=(containernetworking-plugins)
command -v nft >/dev/null || need+=(nftables)
if ((${#need[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/berth-target}
cargo build --release --locked -q -p berth
berth=$CARGO_TARGET_DIR/release/berth
work=$(mktemp -d /var/tmp/berth-bench-hpa.XXXXXX)
bn=bbh$$
# shellcheck source=bench/berth-nodes.sh
source bench/berth-nodes.sh
cleanup() {
  nodes_cleanup
  rm -rf "$work"
}
trap cleanup EXIT
now() { date +%s%N; }
secs() { python3 -c "import sys; print(f'{(int(sys.argv[2])-int(sys.argv[1]))/1e9:.1f}')" "$1" "$2"; }
stats() { python3 -c "import sys, statistics as s; v=sorted(map(float, sys.argv[1:])); print(f'median {s.median(v):.1f} s (min {v[0]:.1f}, max {v[-1]:.1f})')" "$@"; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

nodes_up 2

# --- 1. load step -----------------------------------------------------------------------
decide=() ready=()
for r in $(seq "$runs"); do
  ns=run$r
  k create namespace "$ns" >/dev/null
  k -n "$ns" apply -f - >/dev/null <<'YAML'
apiVersion: v1
kind: ConfigMap
metadata: {name: burn}
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
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: httpd
        image: busybox:latest
        imagePullPolicy: Never
        command: [httpd, -f, -p, "8080", -h, /www]
        resources: {requests: {cpu: 50m}, limits: {cpu: 200m}}
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
        volumeMounts: [{name: cgi, mountPath: /www/cgi-bin}]
      volumes: [{name: cgi, configMap: {name: burn, defaultMode: 0755}}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 8080}]
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: web}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  minReplicas: 1
  maxReplicas: 4
  metrics:
  - type: Resource
    resource: {name: cpu, target: {type: Utilization, averageUtilization: 50}}
YAML
  k -n "$ns" wait --for=condition=Available deploy/web --timeout=60s >/dev/null
  # The HPA has measured the idle Deployment before the load starts.
  until k -n "$ns" get hpa web -o jsonpath='{.status.currentMetrics[0].resource.current.averageUtilization}' | grep -q .; do sleep 0.2; done
  k -n "$ns" apply -f - >/dev/null <<'YAML'
apiVersion: v1
kind: Pod
metadata: {name: load}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: load
    image: busybox:latest
    imagePullPolicy: Never
    command: [sh, -c, "while :; do wget -q -O- http://web:8080/cgi-bin/burn >/dev/null 2>&1; done"]
YAML
  k -n "$ns" wait --for=condition=Ready pod/load --timeout=60s >/dev/null
  t0=$(now)
  until [[ $(k -n "$ns" get deploy web -o jsonpath='{.spec.replicas}') -gt 1 ]]; do sleep 0.1; done
  t1=$(now)
  want=$(k -n "$ns" get deploy web -o jsonpath='{.spec.replicas}')
  until [[ $(k -n "$ns" get deploy web -o jsonpath='{.status.readyReplicas}') -ge $want ]]; do sleep 0.1; done
  t2=$(now)
  decide+=("$(secs "$t0" "$t1")")
  ready+=("$(secs "$t0" "$t2")")
  echo "run $r: scale-up to $want decided after $(secs "$t0" "$t1") s, Ready after $(secs "$t0" "$t2") s"
  k delete namespace "$ns" --wait=false >/dev/null
done

# --- 2. the pipeline's cost ---------------------------------------------------------------
k create namespace cost >/dev/null
k -n cost apply -f - >/dev/null <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata: {name: idle}
spec:
  replicas: 30
  selector: {matchLabels: {app: idle}}
  template:
    metadata: {labels: {app: idle}}
    spec:
      nodeSelector: {kubernetes.io/hostname: node-1}
      terminationGracePeriodSeconds: 0
      containers:
      - {name: c, image: busybox:latest, imagePullPolicy: Never, command: [sleep, "3600"]}
YAML
k -n cost wait --for=condition=Available deploy/idle --timeout=120s >/dev/null
hz=$(getconf CLK_TCK)
# The sampler runs on a thread of its own ("stats"): its CPU over 60 s of one-second
# cycles, beside the whole agent's.
kill -9 "${agents[1]}"
wait "${agents[1]}" 2>/dev/null || true
agent_start 1 --housekeeping-interval 1s
until k get --raw "/api/v1/nodes/node-1/proxy/healthz" >/dev/null 2>&1; do sleep 0.2; done
sleep 10
apid=${agents[1]}
# nsenter execs the agent: the pid is the agent's.
stats_tid=$(grep -l '^stats$' /proc/"$apid"/task/*/comm | head -1 | cut -d/ -f5)
a0=$(ticks "$apid")
t0=$(awk '{print $14 + $15}' "/proc/$apid/task/$stats_tid/stat")
sleep 60
a1=$(ticks "$apid")
t1=$(awk '{print $14 + $15}' "/proc/$apid/task/$stats_tid/stat")
cycle_ms=$(python3 -c "import sys; print(f'{(int(sys.argv[2]) - int(sys.argv[1])) * 1000 / int(sys.argv[3]) / 60:.2f}')" "$t0" "$t1" "$hz")
agent_ms=$(((a1 - a0) * 1000 / hz))
rss=$(awk '/VmRSS/ {print $2}' "/proc/$apid/status")
pods_sampled=$(k get --raw /api/v1/nodes/node-1/proxy/stats/summary | python3 -c 'import json, sys; print(len(json.load(sys.stdin)["pods"]))')
server=$(pgrep -f "berth server --bind-address $net.1" | head -1)
s0=$(ticks "$server")
sleep 30
s1=$(ticks "$server")

echo
echo "== autoscaling, berth's defaults (agent sampling 5 s, scrape 10 s, HPA sync 5 s), $runs runs"
echo "   load start -> first scale-up decision: $(stats "${decide[@]}")"
echo "   load start -> new replicas Ready:      $(stats "${ready[@]}")"
echo "   Kubernetes' defaults for comparison (not measured here): kubelet housekeeping 10 s,"
echo "   metrics-server resolution 15 s, HPA sync 15 s"
echo "== the metrics pipeline's cost, $pods_sampled pods on a node"
echo "   sampler: ${cycle_ms} ms of CPU per cycle ($(python3 -c "import sys; print(f'{float(sys.argv[1]) / 5 / 10:.3f}')" "$cycle_ms")% of a core at the default 5 s)"
echo "   whole agent over 60 s of 1 s cycles: ${agent_ms} ms of CPU; RSS ${rss} KiB"
echo "   server CPU over 30 s (two nodes, scraped every 10 s): $(((s1 - s0) * 1000 / hz)) ms"
