# shellcheck shell=bash
# The berth half of the multi-node benchmarks: `berth server` on a private bridge and N
# `berth agent`s, each in its own network namespace on that bridge, as if they were N
# machines; busybox:latest imported into every node's engine (nothing is pulled).
# Source this file; the caller sets `berth` (the binary), `work` (a temporary directory)
# and `bn` (a short unique prefix, e.g. bbh$$), and calls nodes_cleanup from its EXIT trap.
#   nodes_up N [server flags...] [-- agent flags...]
#                       bridge $bn, namespaces ${bn}n0.., the server at $net.1 and node-I
#                       at $net.(10+I); `k` is kubectl against it; the agents' pids are
#                       ${agents[I]}.
#   agent_start I [agent flags...]   (re)starts node I's agent.
#   nodes_cleanup       removes everything the above made.
net=${net:-10.$((250 + $$ % 3)).$(($$ % 200 + 2))}
pids=()
agents=()
k() { kubectl --kubeconfig "$work/kubeconfig" "$@"; }

agent_start() {
  local i=$1
  shift
  nsenter --net="/var/run/netns/${bn}n$i" "$berth" agent --server "$url" --token "$token" \
    --node-name "node-$i" --node-ip "$net.$((10 + i))" --data-dir "$work/node-$i" \
    --exec-root "/run/$bn/$i" --engine-socket "/run/$bn/$i/berth.sock" \
    --cgroup-root "/${bn}x$i" --resolv-conf "$work/resolv.conf" "$@" 2>>"$work/node-$i.log" &
  pids+=($!)
  agents[i]=$!
}

nodes_up() {
  local n=$1
  shift
  local server_flags=() agent_flags=()
  while (($#)) && [[ $1 != -- ]]; do server_flags+=("$1"); shift; done
  (($#)) && shift
  agent_flags=("$@")
  bash scripts/busybox-bundle "$work/bundle" true >/dev/null
  tar -C "$work/bundle/rootfs" -czf "$work/bb.tar.gz" .
  ip link add "$bn" type bridge
  ip addr add "$net.1/24" dev "$bn"
  ip link set "$bn" up
  "$berth" server --bind-address "$net.1" --tls-san "$net.1" --https-listen-port 0 \
    --disable-agent --data-dir "$work/server" --write-kubeconfig "$work/kubeconfig" \
    "${server_flags[@]}" 2>"$work/server.log" &
  pids+=($!)
  until grep -q "Kubernetes API on" "$work/server.log"; do sleep 0.05; done
  url=$(grep -o "Kubernetes API on [^;]*" "$work/server.log" | awk '{print $4}')
  token=$(cat "$work/server/tls/token")
  printf 'nameserver 127.0.0.1\n' >"$work/resolv.conf"
  local i nodes=()
  for ((i = 0; i < n; i++)); do
    ip netns add "${bn}n$i"
    ip link add "${bn}v$i" type veth peer name eth0 netns "${bn}n$i"
    ip link set "${bn}v$i" master "$bn" up
    ip netns exec "${bn}n$i" sh -c "ip addr add $net.$((10 + i))/24 dev eth0; ip link set eth0 up; ip link set lo up; ip route add default via $net.1; sysctl -qw net.ipv4.ip_forward=1"
    mkdir -p "/run/$bn/$i"
    agent_start "$i" "${agent_flags[@]}"
    nodes+=("node/node-$i")
  done
  for ((i = 0; i < n; i++)); do
    until [[ -S /run/$bn/$i/berth.sock ]]; do sleep 0.05; done
    BERTH_HOST=unix:///run/$bn/$i/berth.sock "$berth" image import -c 'CMD ["sh"]' "$work/bb.tar.gz" busybox:latest >/dev/null
  done
  until k get "${nodes[@]}" >/dev/null 2>&1; do sleep 0.1; done
  # A node exists once its agent has its certificates; then it is waited for.
  for n in "${nodes[@]}"; do until k get "$n" >/dev/null 2>&1; do sleep 0.1; done; done
  k wait --for=condition=Ready "${nodes[@]}" --timeout=60s >/dev/null
}

nodes_cleanup() {
  set +e
  local p d i
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
  wait 2>/dev/null
  for d in /sys/fs/cgroup/"${bn}"x* /sys/fs/cgroup/*/"${bn}"x*; do
    [[ -d $d ]] || continue
    find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -9 2>/dev/null
  done
  sleep 0.5
  for d in /sys/fs/cgroup/"${bn}"x* /sys/fs/cgroup/*/"${bn}"x*; do
    [[ -d $d ]] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
  done
  for i in $(ip netns list | awk -v p="${bn}n" 'index($1, p) == 1 {print substr($1, length(p) + 1)}'); do
    ip netns del "${bn}n$i" 2>/dev/null
    ip link del "${bn}v$i" 2>/dev/null
  done
  ip link del "$bn" 2>/dev/null
  grep -o " \($work\|/run/$bn\)[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l
  rm -rf "/run/$bn"
}
