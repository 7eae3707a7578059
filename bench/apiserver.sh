#!/usr/bin/env bash
# berth server's Kubernetes API on its two stores side by side in one run: embedded SQLite
# and Debian's etcd (3.4) on loopback. For each:
#  1. write path: COUNT Pod creates from 32 concurrent clients over HTTP/2 (creates/s, p50,
#     p99 latency); targets: >= 3,000 creates/s on SQLite with p99 <= 25 ms, and SQLite at
#     least as fast as etcd;
#  2. read path: a full list of the COUNT pods as JSON and as a Table (median of 5), and one
#     write fanned out to 1,000 watchers (time from the write to the last watcher's
#     receipt, p50/p99 over 50 writes; target p99 <= 100 ms);
#  3. memory: the server's RSS idle and with the pods stored (target <= 150 MB; k3s's own
#     resource-profiling docs report 1.4-1.6 GB for its server);
#  4. cold start: `berth server` on the existing data dir to a ready API (target <= 0.5 s).
# Everything listens on loopback only.
#   bench/apiserver.sh [COUNT]
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-10000}
need=()
command -v etcd >/dev/null || need+=(etcd-server)
command -v protoc >/dev/null || need+=(protobuf-compiler)
if ((${#need[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/berth-target}
cargo build --release --locked -q -p berth
cargo build --release --locked -q -p apiserver --example apiload
berth=$CARGO_TARGET_DIR/release/berth
load=$CARGO_TARGET_DIR/release/examples/apiload
work=$(mktemp -d /var/tmp/berth-bench-api.XXXXXX)
pids=()
cleanup() {
  set +e
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss_mb() { awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }

# etcd, as Kubernetes runs it, on loopback.
ec=$(free_port); ep=$(free_port)
etcd --name bench --data-dir "$work/etcd" --listen-client-urls "http://127.0.0.1:$ec" \
  --advertise-client-urls "http://127.0.0.1:$ec" --listen-peer-urls "http://127.0.0.1:$ep" \
  --initial-advertise-peer-urls "http://127.0.0.1:$ep" --initial-cluster "bench=http://127.0.0.1:$ep" \
  >"$work/etcd.log" 2>&1 &
pids+=($!)
until grep -q "ready to serve client requests" "$work/etcd.log"; do sleep 0.1; done

start_server() { # backend port → pid
  local backend=$1 port=$2 args=()
  [[ $backend == etcd ]] && args=(--datastore-endpoint "etcd://127.0.0.1:$ec")
  "$berth" server --bind-address 127.0.0.1 --https-listen-port "$port" --data-dir "$work/$backend" \
    --write-kubeconfig "$work/$backend.kubeconfig" "${args[@]}" 2>>"$work/$backend.log" &
  spid=$!
  pids+=($spid)
}

declare -A r
for backend in sqlite etcd; do
  port=$(free_port)
  start_server "$backend" "$port"
  "$load" ready "https://127.0.0.1:$port" >/dev/null
  sleep 1
  r[$backend.rss_idle]=$(rss_mb "$spid")
  out=$("$load" create "$work/$backend.kubeconfig" "$count" 32)
  echo "$backend: $out"
  r[$backend.creates]=$(sed 's/.*creates_per_s=\([0-9]*\).*/\1/' <<<"$out")
  r[$backend.p50]=$(sed 's/.*p50_ms=\([0-9.]*\).*/\1/' <<<"$out")
  r[$backend.p99]=$(sed 's/.*p99_ms=\([0-9.]*\).*/\1/' <<<"$out")
  r[$backend.rss_full]=$(rss_mb "$spid")
  out=$("$load" list "$work/$backend.kubeconfig")
  echo "$backend: ${out//$'\n'/ }"
  r[$backend.list_json]=$(sed -n 's/^list_json.*median_ms=\([0-9.]*\).*/\1/p' <<<"$out")
  r[$backend.list_table]=$(sed -n 's/^list_table.*median_ms=\([0-9.]*\).*/\1/p' <<<"$out")
  out=$("$load" fanout "$work/$backend.kubeconfig" 1000 50)
  echo "$backend: $out"
  r[$backend.fan50]=$(sed 's/.*last_receipt_p50_ms=\([0-9.]*\).*/\1/' <<<"$out")
  r[$backend.fan99]=$(sed 's/.*last_receipt_p99_ms=\([0-9.]*\).*/\1/' <<<"$out")
  r[$backend.rss_watch]=$(rss_mb "$spid")
  kill "$spid"; wait "$spid" 2>/dev/null || true
  # Cold start on the existing data dir: the waiter starts with the server.
  start_server "$backend" "$port"
  out=$("$load" ready "https://127.0.0.1:$port")
  r[$backend.ready]=$(sed 's/ready_ms=//' <<<"$out")
  kill "$spid"; wait "$spid" 2>/dev/null || true
done

ratio() { python3 -c "print(f'{$1/$2:.2f}x')"; }
printf '\n%-44s %12s %12s %10s\n' "berth server, $count pods" sqlite etcd sqlite/etcd
row() { printf '%-44s %12s %12s %10s\n' "$1" "${r[sqlite.$2]}" "${r[etcd.$2]}" "$3"; }
row "creates/s (32 clients, HTTP/2)" creates "$(ratio "${r[sqlite.creates]}" "${r[etcd.creates]}")"
row "create latency p50 (ms)" p50 ""
row "create latency p99 (ms)" p99 ""
row "full list as JSON (ms)" list_json ""
row "full list as Table (ms)" list_table ""
row "1 write -> 1000 watchers, last p50 (ms)" fan50 ""
row "1 write -> 1000 watchers, last p99 (ms)" fan99 ""
row "RSS idle (MB)" rss_idle ""
row "RSS with the pods stored (MB)" rss_full ""
row "RSS with 1000 watches open (MB)" rss_watch ""
row "cold start to ready (ms)" ready ""
echo "k3s server for comparison (its resource-profiling docs): 1428-1606 MB"
