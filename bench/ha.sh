#!/usr/bin/env bash
# An HA control plane side by side with one server, in one run, on loopback addresses:
#  1. writes: the API server benchmark's write path (COUNT Pod creates from 32 concurrent
#     clients over HTTP/2) against one server on SQLite, and against a server of three
#     `berth server`s that run their own etcd members (`--cluster-init`, `--server`), so
#     each write is agreed by a quorum of three over TLS;
#  2. failover: ROUNDS times, kill the server that leads (SIGKILL: its etcd member dies
#     with it), scale a Deployment at once through a survivor, and time from the kill to
#     the new leader's first controller action (the ReplicaSet's new pod); target <= 5 s.
#     Side by side with the same servers on kube-controller-manager's default leader
#     election (lease 15 s, renew deadline 10 s, retry 2 s), what k3s and kubeadm
#     clusters run with.
# Nothing listens beyond 127.0.0.2-127.0.0.5.
#   bench/ha.sh [COUNT] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-5000}
rounds=${2:-3}
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
work=$(mktemp -d /var/tmp/berth-bench-ha.XXXXXX)
declare -A pid
cleanup() {
  set +e
  for p in "${pid[@]}"; do kill -9 "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

declare -A ip flags
served() { grep -c "Kubernetes API on" "$work/$1.log" 2>/dev/null || true; }
# launch NAME: server NAME (no node agent) on ${ip[NAME]}:6443 with ${flags[NAME]} and
# $timing, in the background.
launch() {
  local name=$1
  # shellcheck disable=SC2086
  "$berth" server --bind-address "${ip[$name]}" --advertise-address "${ip[$name]}" \
    --disable-agent --data-dir "$work/$name" --write-kubeconfig "$work/$name.yaml" \
    ${flags[$name]} $timing >>"$work/$name.log" 2>&1 &
  pid[$name]=$!
}
# await NAME N: until server NAME has said it serves N times.
await() {
  until [[ $(served "$1") -ge $2 ]]; do
    kill -0 "${pid[$1]}" 2>/dev/null || { tail "$work/$1.log"; exit 1; }
    sleep 0.05
  done
}
start() {
  local n
  n=$(served "$1")
  launch "$1"
  await "$1" $((n + 1))
}
k() { kubectl --kubeconfig "$work/$1.yaml" "${@:2}"; }
timing=""

# restart_all: the three HA servers at once (a restarted member waits for a quorum).
restart_all() {
  local s
  declare -A n
  for s in s1 s2 s3; do kill -9 "${pid[$s]}" 2>/dev/null || true; done
  for s in s1 s2 s3; do wait "${pid[$s]}" 2>/dev/null || true; done
  for s in s1 s2 s3; do
    n[$s]=$(served "$s")
    launch "$s"
  done
  for s in s1 s2 s3; do await "$s" $((n[$s] + 1)); done
}

declare -A r
# creates LABEL KUBECONFIG DESCRIPTION: the write benchmark, its figures kept under LABEL.
creates() {
  local out
  out=$("$load" create "$work/$2.yaml" "$count" 32)
  echo "$3: $out"
  r[$1.creates]=$(sed 's/.*creates_per_s=\([0-9]*\).*/\1/' <<<"$out")
  r[$1.p50]=$(sed 's/.*p50_ms=\([0-9.]*\).*/\1/' <<<"$out")
  r[$1.p99]=$(sed 's/.*p99_ms=\([0-9.]*\).*/\1/' <<<"$out")
}
echo "== writes: $count pod creates from 32 clients (the API and its store; no scheduler or controllers)"
timing="--disable-scheduler --disable-controller-manager"
ip[sqlite]=127.0.0.5
flags[sqlite]=""
start sqlite
creates sqlite sqlite "one server on SQLite"
kill -9 "${pid[sqlite]}"
wait "${pid[sqlite]}" 2>/dev/null || true
unset 'pid[sqlite]'

ip[s1]=127.0.0.2 ip[s2]=127.0.0.3 ip[s3]=127.0.0.4
flags[s1]="--cluster-init"
start s1
token=$(cat "$work/s1/tls/token")
flags[s2]="--server https://127.0.0.2:6443 --token $token"
flags[s3]="--server https://127.0.0.3:6443 --token $token"
start s2
start s3
creates ha s1 "three servers on their etcd members"
k s1 delete pods --all --wait=false >/dev/null

# failover LABEL: ROUNDS kills of the leading server; the killed one restarts each time.
failover() {
  local label=$1 times=() i s leader survivor holder t0 t
  for i in $(seq "$rounds"); do
    survivor=""
    leader=""
    for s in s1 s2 s3; do k "$s" get --raw /readyz >/dev/null 2>&1 && survivor=$s && break; done
    k "$survivor" create deployment "fo$i" --image=busybox:latest --replicas=1 >/dev/null
    until [[ $(k "$survivor" get pods -l "app=fo$i" -o name | wc -l) -ge 1 ]]; do sleep 0.1; done
    holder=$(k "$survivor" -n kube-system get lease berth-controllers -o jsonpath='{.spec.holderIdentity}')
    for s in s1 s2 s3; do
      grep -q "$holder became the leader" "$work/$s.log" && leader=$s
    done
    for s in s1 s2 s3; do [[ $s != "$leader" ]] && survivor=$s; done
    kill -9 "${pid[$leader]}"
    t0=$(date +%s.%N)
    k "$survivor" scale "deployment/fo$i" --replicas=2 >/dev/null
    until [[ $(k "$survivor" get pods -l "app=fo$i" -o name 2>/dev/null | wc -l) -ge 2 ]]; do
      sleep 0.05
    done
    t=$(python3 -c "print(f'{$(date +%s.%N) - $t0:.1f}')")
    wait "${pid[$leader]}" 2>/dev/null || true
    times+=("$t")
    echo "$label: round $i: killed the leader ($leader); the new leader acted after $t s"
    start "$leader"
    k "$survivor" delete deployment "fo$i" >/dev/null
  done
  r[$label]=$(python3 -c "import statistics as s; v=[$(IFS=,; echo "${times[*]}")]; print(f'{s.median(v):.1f} (max {max(v):.1f})')")
}

echo "== failover: $rounds kills of the leading server"
timing=""
restart_all
failover berth
# The same servers on kube-controller-manager's default leader election.
timing="--leader-elect-lease-duration 15s --leader-elect-renew-deadline 10s --leader-elect-retry-period 2s"
restart_all
failover kube

ratio() { python3 -c "print(f'{$1/$2:.2f}x')"; }
printf '\n%-48s %14s %14s %8s\n' "writes ($count pods, 32 clients)" "1 on SQLite" "3 on etcd" ratio
printf '%-48s %14s %14s %8s\n' "creates/s" "${r[sqlite.creates]}" "${r[ha.creates]}" \
  "$(ratio "${r[ha.creates]}" "${r[sqlite.creates]}")"
printf '%-48s %14s %14s\n' "create latency p50 (ms)" "${r[sqlite.p50]}" "${r[ha.p50]}"
printf '%-48s %14s %14s\n' "create latency p99 (ms)" "${r[sqlite.p99]}" "${r[ha.p99]}"
printf '\n%-48s %14s\n' "leader killed -> first controller action (s)" "median (max)"
printf '%-48s %14s\n' "berth (lease 4 s, renew 3 s, retry 0.5 s)" "${r[berth]}"
printf '%-48s %14s\n' "kube-controller-manager defaults (15/10/2 s)" "${r[kube]}"
echo "target: <= 5 s"
