#!/usr/bin/env bash
# A cluster of nodes on one machine: berth (`berth server` and two `berth agent`s, each agent
# in its own network namespace on a private bridge) side by side with Docker's own
# orchestrator (Debian's dockerd in swarm mode, two dockerds in namespaces: bench/swarm-nodes.sh).
#  1. node failure: 3 replicas on one node; that node dies (its agent and containers killed, its
#     link cut): seconds until 3 replacement pods are Ready on the other node (berth: with its
#     defaults, node-monitor-grace-period 5 s and 2 s default tolerations; Kubernetes' defaults
#     take about 6 minutes). Target <= 10 s.
#  2. rolling update of 10 replicas (maxSurge/maxUnavailable 25%): seconds from
#     `kubectl set image` until the rollout is complete, and the same with `docker service
#     update` (parallelism 3, start-first).
# Traffic stays on the private bridges; no image is pulled from anywhere (imported locally).
#   bench/cluster.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
command -v kubectl >/dev/null || { echo "kubectl is needed" >&2; exit 1; }
if ! command -v protoc >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq protobuf-compiler >/dev/null
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/berth-target}
cargo build --release --locked -q -p berth
berth=$CARGO_TARGET_DIR/release/berth
work=$(mktemp -d /var/tmp/berth-bench-cluster.XXXXXX)
# shellcheck source=bench/swarm-nodes.sh
source bench/swarm-nodes.sh
id=$$
br=bbc$id
net=10.251.$((id % 200 + 2))
pids=()
bc_cleanup() {
  set +e
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
  wait 2>/dev/null
  for i in 0 1; do
    for d in /sys/fs/cgroup/bbc${id}x$i /sys/fs/cgroup/*/bbc${id}x$i; do
      [[ -d $d ]] || continue
      find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -9 2>/dev/null
    done
  done
  sleep 0.5
  for i in 0 1; do
    for d in /sys/fs/cgroup/bbc${id}x$i /sys/fs/cgroup/*/bbc${id}x$i; do
      [[ -d $d ]] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
    done
    ip netns del "bbc${id}n$i" 2>/dev/null
    ip link del "bbc${id}v$i" 2>/dev/null
  done
  ip link del "$br" 2>/dev/null
  grep -o " \($work\|/run/bbc$id\)[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l
  rm -rf "/run/bbc$id"
}
cleanup() {
  bc_cleanup
  swarm_cleanup
  rm -rf "$work"
}
trap cleanup EXIT
secs() { python3 -c "import sys; print(f'{(int(sys.argv[2])-int(sys.argv[1]))/1e9:.1f}')" "$1" "$2"; }
ratio() { python3 -c "import sys; a,b=map(float,sys.argv[1:]); print(f'{b/a:.1f}x' if a>0 else 'n/a')" "$1" "$2"; }
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

bash scripts/busybox-bundle "$work/bundle" true >/dev/null
tar -C "$work/bundle/rootfs" -czf "$work/bb.tar.gz" .

# berth: the server on the bridge, two agents in namespaces.
berth_up() {
  ip link add "$br" type bridge
  ip addr add "$net.1/24" dev "$br"
  ip link set "$br" up
  "$berth" server --bind-address "$net.1" --tls-san "$net.1" --https-listen-port 0 \
    --disable-agent --data-dir "$work/server" --write-kubeconfig "$work/kubeconfig" \
    2>"$work/server.log" &
  pids+=($!)
  until grep -q "Kubernetes API on" "$work/server.log"; do sleep 0.05; done
  url=$(grep -o "Kubernetes API on [^;]*" "$work/server.log" | awk '{print $4}')
  token=$(cat "$work/server/tls/token")
  for i in 0 1; do
    ip netns add "bbc${id}n$i"
    ip link add "bbc${id}v$i" type veth peer name eth0 netns "bbc${id}n$i"
    ip link set "bbc${id}v$i" master "$br" up
    ip netns exec "bbc${id}n$i" sh -c "ip addr add $net.$((10 + i))/24 dev eth0; ip link set eth0 up; ip link set lo up; ip route add default via $net.1; sysctl -qw net.ipv4.ip_forward=1"
    mkdir -p "/run/bbc$id/$i"
    nsenter --net="/var/run/netns/bbc${id}n$i" "$berth" agent --server "$url" --token "$token" \
      --node-name "node-$i" --node-ip "$net.$((10 + i))" --data-dir "$work/node-$i" \
      --exec-root "/run/bbc$id/$i" --engine-socket "/run/bbc$id/$i/berth.sock" \
      --cgroup-root "/bbc${id}x$i" 2>"$work/node-$i.log" &
    pids+=($!)
    eval "agent$i=$!"
  done
  for i in 0 1; do
    until [[ -S /run/bbc$id/$i/berth.sock ]]; do sleep 0.05; done
    BERTH_HOST=unix:///run/bbc$id/$i/berth.sock "$berth" image import -c 'CMD ["sh"]' "$work/bb.tar.gz" busybox:latest >/dev/null
    BERTH_HOST=unix:///run/bbc$id/$i/berth.sock "$berth" tag busybox:latest busybox:v2
  done
  # A node exists once its agent has its certificates; then it is waited for.
  for n in node-0 node-1; do until k get node "$n" >/dev/null 2>&1; do sleep 0.1; done; done
  k wait --for=condition=Ready node/node-0 node/node-1 --timeout=60s >/dev/null
}
k() { kubectl --kubeconfig "$work/kubeconfig" "$@"; }
deploy() { # name replicas
  k apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: $1}
spec:
  replicas: $2
  selector: {matchLabels: {app: $1}}
  template:
    metadata: {labels: {app: $1}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {name: c, image: busybox:latest, imagePullPolicy: Never, command: [sleep, "100000"]}
EOF
  k rollout status "deployment/$1" --timeout=120s >/dev/null
}

berth_failover() {
  k cordon node-0 >/dev/null
  deploy fo 3
  k uncordon node-0 >/dev/null
  local t0 t1 n
  t0=$(date +%s%N)
  kill -9 "$agent1"
  for d in /sys/fs/cgroup/bbc${id}x1 /sys/fs/cgroup/*/bbc${id}x1; do
    [[ -d $d ]] && find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -9 2>/dev/null
  done
  ip link set "bbc${id}v1" down
  while :; do
    n=$(k get pods -l app=fo -o jsonpath='{range .items[*]}{.spec.nodeName} {.metadata.deletionTimestamp} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c '^node-0  True' || true)
    ((n >= 3)) && break
    (( $(date +%s%N) - t0 > 180000000000 )) && { echo timeout; return; }
    sleep 0.05
  done
  t1=$(date +%s%N)
  secs "$t0" "$t1"
}

berth_rolling() {
  deploy ru 10
  local t0 t1
  t0=$(date +%s%N)
  k set image deployment/ru c=busybox:v2 >/dev/null
  k rollout status deployment/ru --timeout=180s >/dev/null
  t1=$(date +%s%N)
  k delete deployment ru --wait=false >/dev/null
  secs "$t0" "$t1"
}

b_fo=(); b_ru=(); s_fo=(); s_ru=()
for r in $(seq 1 "$runs"); do
  berth_up
  b_ru+=("$(berth_rolling)")
  b_fo+=("$(berth_failover)")
  bc_cleanup; pids=(); rm -rf "$work/server" "$work"/node-*
  swarm_up 2
  s_ru+=("$(swarm_rolling_update_s)")
  swarm_cleanup
  swarm_up 2
  s_fo+=("$(swarm_failover_s)")
  swarm_cleanup
  echo "run $r: berth failover ${b_fo[-1]} s, rolling update ${b_ru[-1]} s | swarm failover ${s_fo[-1]} s, rolling update ${s_ru[-1]} s" >&2
done
bfo=$(echo "${b_fo[*]}" | median); bru=$(echo "${b_ru[*]}" | median)
sfo=$(echo "${s_fo[*]}" | median); sru=$(echo "${s_ru[*]}" | median)
echo "cluster of 2 nodes on one machine, median of $runs runs:"
printf "  node failure -> 3 replacement pods Ready: berth %s s | swarm %s s | swarm/berth %s (target <= 10 s; Kubernetes defaults ~360 s)\n" \
  "$bfo" "$sfo" "$(ratio "$bfo" "$sfo")"
printf "  rolling update of 10 replicas:            berth %s s | swarm %s s | swarm/berth %s\n" \
  "$bru" "$sru" "$(ratio "$bru" "$sru")"
echo "  all runs: berth failover ${b_fo[*]}; swarm failover ${s_fo[*]}; berth update ${b_ru[*]}; swarm update ${s_ru[*]}"
