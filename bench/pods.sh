#!/usr/bin/env bash
# Pods on a node: berth (server + one `berth agent`) side by side with Docker's own
# orchestrator (Debian's dockerd in swarm mode) on this machine, same busybox image, present
# locally on both.
#  1. startup latency: create → running (berth: the pod's Ready=True seen by a watch; swarm:
#     `docker service create` until its task reports Running), one at a time (COUNT times)
#     and 30 at once; p50/p99 and the ratio. Targets: berth single p50 <= 150 ms, 30 at
#     once p99 <= 1 s (Kubernetes' SLO is p99 <= 5 s).
#  2. agent memory: RSS of `berth agent` idle and with 30 pods, the shims (one monitor per
#     container) counted separately; k3s's agent uses about 275 MB per its docs; target
#     <= 30 MB.
# Everything listens on loopback or in the dockerd's own bridge-less setup.
#   bench/pods.sh [COUNT]
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-20}
need=()
command -v protoc >/dev/null || need+=(protobuf-compiler)
command -v dockerd >/dev/null || need+=(docker.io)
command -v kubectl >/dev/null || { echo "kubectl is needed" >&2; exit 1; }
if ((${#need[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/berth-target}
cargo build --release --locked -q -p berth
cargo build --release --locked -q -p agent --example podstart
berth=$CARGO_TARGET_DIR/release/berth
load=$CARGO_TARGET_DIR/release/examples/podstart
work=$(mktemp -d /var/tmp/berth-bench-pods.XXXXXX)
run=/run/bbp$$
pids=()
cleanup() {
  set +e
  DOCKER_HOST=unix://$work/docker.sock docker swarm leave --force >/dev/null 2>&1
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  # The agent's pods and monitors (their cgroups), mounts, networks.
  for d in /sys/fs/cgroup/*/bbp$$; do
    find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -9 2>/dev/null
  done
  sleep 0.5
  for d in /sys/fs/cgroup/*/bbp$$; do find "$d" -depth -type d -exec rmdir {} + 2>/dev/null; done
  grep -o " \($work\|$run\)[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l
  "$berth" daemon --remove-host-setup --root "$work/agent/engine" --exec-root "$run" \
    --bridge-name bbp0 --bridge-subnet 10.252.0.0/24 2>/dev/null
  ip link del docker_gwbridge 2>/dev/null
  rm -rf "$work" "$run"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
# PSS (shared pages split among their users) and anonymous memory, KB.
pss_kb() { awk '/^Pss:/ {print $2}' "/proc/$1/smaps_rollup"; }
anon_kb() { awk '/^Anonymous:/ {print $2}' "/proc/$1/smaps_rollup"; }
# Resident pages of the berth binary itself (code and data, shared with the shims).
exe_kb() { awk -v exe="$(readlink "/proc/$1/exe")" '/^[0-9a-f]+-[0-9a-f]+ / {m=($6==exe)} m && /^Rss:/ {s+=$2} END {print s+0}' "/proc/$1/smaps"; }
ms() { python3 -c "import sys; print(f'{float(sys.argv[1]):.0f}')" "$1"; }
ratio() { python3 -c "import sys; a,b=map(float,sys.argv[1:]); print(f'{b/a:.1f}x' if a>0 else 'n/a')" "$1" "$2"; }
pct() { sort -n | python3 -c "import sys,math; v=[float(x) for x in sys.stdin]; p=float(sys.argv[1]); print(v[max(1,math.ceil(len(v)*p))-1])" "$1"; }

bash scripts/busybox-bundle "$work/bundle" true >/dev/null
tar -C "$work/bundle/rootfs" -czf "$work/bb.tar.gz" .

# berth: a control plane and one agent on loopback.
port=$(free_port); kport=$(free_port)
"$berth" server --bind-address 127.0.0.1 --https-listen-port "$port" --data-dir "$work/server" \
  --write-kubeconfig "$work/kubeconfig" --disable-agent 2>"$work/server.log" &
pids+=($!)
until grep -q "Kubernetes API on" "$work/server.log"; do sleep 0.05; done
token=$(cat "$work/server/tls/token")
"$berth" agent --server "https://127.0.0.1:$port" --token "$token" --node-name bench \
  --node-ip 127.0.0.1 --kubelet-port "$kport" --data-dir "$work/agent" --exec-root "$run" \
  --engine-socket "$run/berth.sock" --cgroup-root "/bbp$$" --bridge-name bbp0 \
  --bridge-subnet 10.252.0.0/24 2>"$work/agent.log" &
agent=$!
pids+=($agent)
until [[ -S $run/berth.sock ]]; do sleep 0.05; done
BERTH_HOST=unix://$run/berth.sock "$berth" image import -c 'CMD ["sh"]' "$work/bb.tar.gz" busybox:latest >/dev/null
until kubectl --kubeconfig "$work/kubeconfig" get node bench >/dev/null 2>&1; do sleep 0.1; done
kubectl --kubeconfig "$work/kubeconfig" wait --for=condition=Ready node/bench --timeout=60s >/dev/null
sleep 2
agent_idle=$(rss_kb "$agent"); agent_idle_pss=$(pss_kb "$agent"); agent_idle_anon=$(anon_kb "$agent")

"$load" "$work/kubeconfig" bench "$count" seq busybox:latest >"$work/berth-seq.txt"
read -r b_seq50 b_seq99 < <(tail -1 "$work/berth-seq.txt")
"$load" "$work/kubeconfig" bench 30 par busybox:latest keep >"$work/berth-par.txt"
read -r b_par50 b_par99 < <(tail -1 "$work/berth-par.txt")
sleep 1
sleep 3
agent_30=$(rss_kb "$agent"); agent_30_pss=$(pss_kb "$agent"); agent_30_anon=$(anon_kb "$agent")
agent_30_exe=$(exe_kb "$agent")
shims=0; nshim=0
for p in $(pgrep -f "berth shim $run" || true); do
  shims=$((shims + $(rss_kb "$p"))); nshim=$((nshim + 1))
done
kubectl --kubeconfig "$work/kubeconfig" delete pods -l bench=podstart --wait=true >/dev/null

# Docker's orchestrator: dockerd in swarm mode, its own data root, no bridge or iptables.
export DOCKER_HOST=unix://$work/docker.sock
# Swarm otherwise asks a registry about a tag-referenced image before each task (both the
# workers and the CLI): the image is local and nothing may leave this machine.
DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1 dockerd --data-root "$work/docker" --exec-root "$work/dexec" --pidfile "$work/docker.pid" \
  -H "$DOCKER_HOST" --bridge none --iptables=false --ip-masq=false >"$work/dockerd.log" 2>&1 &
pids+=($!)
until docker version >/dev/null 2>&1; do sleep 0.1; done
docker swarm init --advertise-addr 127.0.0.1 >/dev/null 2>&1 || docker swarm init --advertise-addr "$(hostname -I | awk '{print $1}')" >/dev/null
gunzip -c "$work/bb.tar.gz" | docker import -c 'CMD ["sh"]' - busybox:latest >/dev/null
svc_ms() { # name replicas → ms until that many tasks run
  local t0 n
  t0=$(date +%s%N)
  docker service create -d -q --no-resolve-image --name "$1" --replicas "$2" --restart-condition none busybox:latest sleep 1000 >/dev/null 2>&1
  while :; do
    n=$(docker service ps "$1" --filter desired-state=running --format '{{.CurrentState}}' 2>/dev/null | grep -c '^Running' || true)
    ((n >= $2)) && break
    sleep 0.02
  done
  echo $(( ($(date +%s%N) - t0) / 1000000 ))
}
: >"$work/swarm-seq.txt"
for i in $(seq 1 "$count"); do
  svc_ms "s$i" 1 >>"$work/swarm-seq.txt"
  docker service rm "s$i" >/dev/null
done
s_seq50=$(pct 0.5 <"$work/swarm-seq.txt"); s_seq99=$(pct 0.99 <"$work/swarm-seq.txt")
s_par=$(svc_ms par 30)
docker service rm par >/dev/null

echo "pod startup, image present (create -> running):"
printf "  one at a time (%d):  berth p50 %s ms, p99 %s ms | swarm p50 %s ms, p99 %s ms | swarm/berth p50 %s\n" \
  "$count" "$(ms "$b_seq50")" "$(ms "$b_seq99")" "$s_seq50" "$s_seq99" "$(ratio "$b_seq50" "$s_seq50")"
printf "  30 at once:          berth p50 %s ms, p99 %s ms | swarm all 30 running after %s ms | swarm/berth %s\n" \
  "$(ms "$b_par50")" "$(ms "$b_par99")" "$s_par" "$(ratio "$b_par99" "$s_par")"
echo "  targets: berth single p50 <= 150 ms; 30 at once p99 <= 1000 ms"
echo "agent memory:"
printf "  berth agent RSS idle %d MB, with 30 pods %d MB (target <= 30 MB; k3s agent ~275 MB)\n" \
  $((agent_idle / 1024)) $((agent_30 / 1024))
printf "    of which the berth binary's own pages (shared with the shims) %d MB; PSS idle %d MB, with 30 pods %d MB; anonymous idle %d MB, with 30 pods %d MB\n" \
  $((agent_30_exe / 1024)) $((agent_idle_pss / 1024)) $((agent_30_pss / 1024)) $((agent_idle_anon / 1024)) $((agent_30_anon / 1024))
printf "  shims: %d processes, %d MB in all (%d KB each)\n" "$nshim" $((shims / 1024)) $((nshim ? shims / nshim : 0))
