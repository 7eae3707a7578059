#!/usr/bin/env bash
# Scheduler throughput as kube-scheduler's scheduler_perf measures it: Node objects without
# agents and pods created through the API; pods/s from the first create until all are bound,
# the whole API path included (berth server on loopback, SQLite store, the scheduler only).
#   SchedulingBasic            5000 nodes, 10000 pods   (kube-scheduler's CI threshold: 270 pods/s)
#   SchedulingPodAntiAffinity  5000 nodes,  2000 pods, required anti-affinity on hostname
#                              within 50 groups
#   TopologySpreading          5000 nodes,  5000 pods, DoNotSchedule maxSkew 5 over 10 zones
# Target for the basic workload on this 2-core machine: >= 1500 pods/s.
#   bench/scheduler.sh [NODES] [PODS]
set -euo pipefail
cd "$(dirname "$0")/.."
nodes=${1:-5000}
pods=${2:-10000}
if ! command -v protoc >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq protobuf-compiler >/dev/null
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/berth-target}
cargo build --release --locked -q -p berth
cargo build --release --locked -q -p controllers --example schedperf
berth=$CARGO_TARGET_DIR/release/berth
perf=$CARGO_TARGET_DIR/release/examples/schedperf
work=$(mktemp -d /var/tmp/berth-bench-sched.XXXXXX)
server=
cleanup() {
  [[ -n $server ]] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

run() { # workload pods → "pods/s seconds"
  local dir=$work/$1 port
  mkdir -p "$dir"
  port=$(free_port)
  "$berth" server --bind-address 127.0.0.1 --https-listen-port "$port" --data-dir "$dir/server" \
    --write-kubeconfig "$dir/kubeconfig" --disable-agent --disable-controller-manager \
    2>"$dir/server.log" &
  server=$!
  until grep -q "Kubernetes API on" "$dir/server.log"; do sleep 0.05; done
  "$perf" "$dir/kubeconfig" "$nodes" "$2" "$1" 2>"$dir/perf.log"
  kill "$server"; wait "$server" 2>/dev/null || true; server=
}
read -r basic basic_s < <(run basic "$pods")
read -r anti anti_s < <(run anti 2000)
read -r spread spread_s < <(run spread 5000)
echo "scheduler throughput, $nodes nodes, pods created through the API until all bound:"
printf "  SchedulingBasic (%d pods):           berth %s pods/s (%s s) | kube-scheduler CI threshold 270 pods/s | %s (target >= 1500 pods/s)\n" \
  "$pods" "$basic" "$basic_s" "$(python3 -c "print(f'{$basic/270:.1f}x')")"
printf "  SchedulingPodAntiAffinity (2000 pods): berth %s pods/s (%s s)\n" "$anti" "$anti_s"
printf "  TopologySpreading (5000 pods):        berth %s pods/s (%s s)\n" "$spread" "$spread_s"
