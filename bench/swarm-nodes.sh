# shellcheck shell=bash
# The Docker-swarm half of the multi-node benchmarks: a swarm of N dockerds (Debian's docker.io),
# each in its own network namespace on a private bridge, as if they were N machines.
# Source this file; the caller sets `work` (a temporary directory) and calls swarm_cleanup from
# its own EXIT trap.
#   swarm_up N              bridge bsw$$, namespaces bsw$$n0.., one dockerd each; node 0 inits
#                           the swarm, the others join as workers; busybox:latest imported on
#                           every node; `dk I args...` runs the docker CLI against node I.
#   swarm_failover_s        3 replicas all on node 1, node 1 dies (link down, SIGKILL of its
#                           dockerd, containerd, shims and containers): seconds until 3 tasks
#                           run on node 0, or "timeout" after 180 s.
#   swarm_rolling_update_s  10 replicas, `docker service update --image busybox:v2`: seconds
#                           until all 10 new tasks run.
#   swarm_cleanup           removes everything the above made.
# Network traffic stays on the bridge: the namespaces have no default route, and the dockerds
# run with DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1 and the CLI with --no-resolve-image, so neither
# the workers nor the CLI ever ask a registry about the image (swarm otherwise tries a pull of
# every tag-referenced image before each task starts). Swarm's own timings (dispatcher
# heartbeat 5 s, restart delay 5 s, ...) are left at their defaults.

sw_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
sw_id=$$
sw_br=bsw$sw_id          # the "switch"; node I is netns bsw$$nI, host end of its veth bsw$$hI
sw_n=0
sw_net=                  # 10.253.X: host end .1, node I .(10+I)

sw_dir() { echo "$work/sw/$1"; }
dk() { local i=$1; shift; DOCKER_HOST="unix://$(sw_dir "$i")/docker.sock" docker "$@"; }
sw_ip() { echo "$sw_net.$((10 + $1))"; }
sw_host() { echo "bsw$sw_id-n$1"; }

# Every process of node I: its dockerd (--exec-root X), containerd (--config X/containerd/...),
# the shims (-address X/containerd/containerd.sock), found by their command lines, and the
# container processes, found by the node's cgroup parent (dockerd --cgroup-parent /bsw$$nI).
sw_node_pids() {
  local x
  x="$(sw_dir "$1")/x"
  {
    grep -lzxF -- "$x" /proc/[0-9]*/cmdline
    grep -lzF -- "$x/" /proc/[0-9]*/cmdline
  } 2>/dev/null | cut -d/ -f3
  cat /sys/fs/cgroup/*/"bsw${sw_id}n$1"/*/cgroup.procs /sys/fs/cgroup/*/"bsw${sw_id}n$1"/cgroup.procs \
    /sys/fs/cgroup/"bsw${sw_id}n$1"/*/cgroup.procs 2>/dev/null
}
# SIGKILL them all at once (grep itself matched its own command line: it is gone by now, and
# the ones that are no longer there are left out).
sw_kill_node() {
  local p pids=()
  for p in $(sw_node_pids "$1" | sort -un); do
    [[ $p != "$BASHPID" && -d /proc/$p ]] && pids+=("$p")
  done
  ((${#pids[@]})) && kill -9 "${pids[@]}" 2>/dev/null
  return 0
}

sw_pick_subnet() { # the first 10.253.X.0/24 from X = $$ on that no route on the host touches
  local k x
  for ((k = 0; k < 250; k++)); do
    x=$(((sw_id + k) % 250 + 2))
    [[ -z $(ip -4 route show root "10.253.$x.0/24") ]] || continue
    [[ -z $(ip -4 route show match "10.253.$x.1" | grep -v '^default') ]] || continue
    sw_net=10.253.$x
    return 0
  done
  echo "swarm: no free 10.253.X.0/24" >&2
  return 1
}

swarm_up() {
  local n=${1:?swarm_up N} i ns tok ready
  if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    # No policy-rc.d: the package's postinst would start a dockerd of its own on the host.
    local policy=
    [[ -e /usr/sbin/policy-rc.d ]] || { printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; policy=1; }
    local rc=0
    { apt-get update -qq && apt-get install -y -qq docker.io >/dev/null; } || rc=$?
    [[ -n $policy ]] && rm -f /usr/sbin/policy-rc.d
    ((rc == 0)) || return "$rc"
  fi
  sw_n=$n
  sw_pick_subnet
  mkdir -p "$work/sw"
  if [[ ! -f $work/bb.tar.gz ]]; then
    bash "$sw_root/scripts/busybox-bundle" "$work/sw/bundle" true >/dev/null
    tar -C "$work/sw/bundle/rootfs" -czf "$work/bb.tar.gz" .
  fi
  ip link add "$sw_br" type bridge
  ip addr add "$sw_net.1/24" dev "$sw_br"
  ip link set "$sw_br" up
  for ((i = 0; i < n; i++)); do
    ns=bsw${sw_id}n$i
    ip netns add "$ns"
    ip link add "bsw${sw_id}h$i" type veth peer name eth0 netns "$ns"
    ip link set "bsw${sw_id}h$i" master "$sw_br" up
    ip -n "$ns" addr add "$(sw_ip "$i")/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    mkdir -p "$(sw_dir "$i")"
    # nsenter, not `ip netns exec` (which remounts /sys and hides the cgroups); a UTS namespace
    # of its own so that each node has its own hostname in swarm. The ingress network that
    # `swarm init` makes is used only by published ports (none here), so iptables stays off;
    # whatever dockerd sets up (docker_gwbridge, the ingress and overlay sandboxes) lives in
    # the node's netns and goes with it. (Its log has one harmless error, "enabling default vlan
    # on bridge br0 failed": the overlay sandbox's br0 is not in the /sys it sees.) The tasks
    # themselves get no network but lo (--bridge none), as in bench/pods.sh. cgroupfs driver
    # and a cgroup parent per node, so that a node's containers are found and removed by it.
    nsenter --net="/var/run/netns/$ns" -- unshare --uts -- \
      sh -c 'hostname "$0" && exec "$@"' "$(sw_host "$i")" \
      env DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1 \
      dockerd --data-root "$(sw_dir "$i")/d" --exec-root "$(sw_dir "$i")/x" \
      --pidfile "$(sw_dir "$i")/docker.pid" -H "unix://$(sw_dir "$i")/docker.sock" \
      --bridge none --iptables=false --ip-forward=false --ip-masq=false \
      --exec-opt native.cgroupdriver=cgroupfs --cgroup-parent "/bsw${sw_id}n$i" >"$(sw_dir "$i")/dockerd.log" 2>&1 &
    disown   # swarm_cleanup SIGKILLs it: no "Killed" job notice from the caller's shell
  done
  for ((i = 0; i < n; i++)); do
    for _ in $(seq 300); do dk "$i" version >/dev/null 2>&1 && break; sleep 0.1; done
    dk "$i" version >/dev/null || { echo "swarm: dockerd $i did not start" >&2; return 1; }
  done
  dk 0 swarm init --advertise-addr "$(sw_ip 0)" --listen-addr "$(sw_ip 0):2377" >/dev/null
  tok=$(dk 0 swarm join-token -q worker)
  for ((i = 1; i < n; i++)); do
    dk "$i" swarm join --token "$tok" --advertise-addr "$(sw_ip "$i")" \
      --listen-addr "$(sw_ip "$i"):2377" "$(sw_ip 0):2377" >/dev/null
  done
  for ((i = 0; i < n; i++)); do
    gunzip -c "$work/bb.tar.gz" | dk "$i" import -c 'CMD ["sh"]' - busybox:latest >/dev/null
  done
  for _ in $(seq 300); do
    ready=$(dk 0 node ls --format '{{.Status}}' | grep -c '^Ready$' || true)
    ((ready == n)) && return 0
    sleep 0.1
  done
  echo "swarm: only $ready of $n nodes ready" >&2
  return 1
}

sw_node_id() { dk "$1" info --format '{{.Swarm.NodeID}}'; }
# Tasks of service $1 that should run and do, on node $2 (all nodes if empty), image $3 if set.
sw_running() {
  local out
  out=$(dk 0 service ps "$1" --filter desired-state=running --format '{{.Node}} {{.Image}} {{.CurrentState}}' 2>/dev/null) || return 1
  awk -v node="${2:-}" -v img="${3:-}" '(node == "" || $1 == node) && (img == "" || $2 == img) && $3 == "Running" {n++} END {print n + 0}' <<<"$out"
}
# Polls every 50 ms until service $1 has $2 such tasks (on node $3, image $4), at most $5 s:
# 0 when reached, 1 on timeout, 2 when the manager stops answering (about 4 s of failed calls;
# so a Ctrl-C, which the docker CLI turns into exit status 130 that bash does not take for an
# interrupt, and which stops the dockerds too, ends the wait instead of polling to the timeout).
sw_wait() {
  local end=$(($(date +%s) + $5)) n fails=0
  while (($(date +%s) < end)); do
    if n=$(sw_running "$1" "$3" "$4"); then
      fails=0
      ((n >= $2)) && return 0
    elif ((++fails >= 50)); then
      echo "swarm: the manager does not answer" >&2
      return 2
    fi
    sleep 0.05
  done
  return 1
}
sw_secs() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f\n", (b - a) / 1e9}'; }

# (Usually called as x=$(swarm_failover_s), where errexit does not reach: hence the explicit
# `|| return 1`s.)
swarm_failover_s() {
  local i t0 rc=0
  ((sw_n >= 2)) || { echo "swarm: swarm_failover_s needs swarm_up 2 or more" >&2; return 1; }
  # All 3 tasks on node 1: every other node drained while the service starts; node 0 is then
  # active again (swarm does not move running tasks back) so the replacements can go there.
  for ((i = 0; i < sw_n; i++)); do
    ((i == 1)) || dk 0 node update --availability drain "$(sw_node_id "$i")" >/dev/null || return 1
  done
  dk 0 service create -d -q --no-resolve-image --name bswfo --replicas 3 --restart-condition any \
    busybox:latest sleep 100000 >/dev/null || return 1
  sw_wait bswfo 3 "$(sw_host 1)" "" 120 || { echo "swarm: tasks did not start on node 1" >&2; return 1; }
  dk 0 node update --availability active "$(sw_node_id 0)" >/dev/null || return 1
  # The machine dies: its link goes first, so that the FIN/RST its kernel sends for the
  # killed processes' sockets never reaches the manager (a dead machine sends nothing).
  t0=$(date +%s%N)
  ip link set "bsw${sw_id}h1" down
  sw_kill_node 1
  sw_kill_node 1   # anything that was forking right then
  sw_wait bswfo 3 "$(sw_host 0)" "" 180 || rc=$?
  case $rc in
    0) sw_secs "$t0" "$(date +%s%N)" ;;
    1) echo timeout ;;
    *) return 1 ;;
  esac
}

swarm_rolling_update_s() {
  local i t0 rc=0
  for ((i = 0; i < sw_n; i++)); do
    dk "$i" image inspect busybox:v2 >/dev/null 2>&1 ||
      gunzip -c "$work/bb.tar.gz" | dk "$i" import -c 'CMD ["sh"]' - busybox:v2 >/dev/null || return 1
  done
  # A Kubernetes Deployment of 10 with maxSurge 25% (rounded up: 3) and maxUnavailable 25%
  # (rounded down: 2) runs at most 13 pods and keeps at least 8 available. Swarm has one knob
  # for the batch size and one for the order: parallelism 3 with start-first runs at most 13
  # tasks (the same surge of 3), in batches of 3,3,3,1, as the Deployment's new ReplicaSet
  # grows by 3 at a time; it never goes below 10 running (swarm cannot combine a surge with
  # an unavailable budget: stop-first would be maxSurge 0). No delay between batches, as a
  # Deployment without minReadySeconds. --update-monitor (5 s) only decides when a failed
  # update rolls back; it does not hold the next batch.
  dk 0 service create -d -q --no-resolve-image --name bswru --replicas 10 --restart-condition any \
    --update-parallelism 3 --update-delay 0s --update-order start-first \
    busybox:latest sleep 100000 >/dev/null || return 1
  sw_wait bswru 10 "" busybox:latest 120 || { echo "swarm: 10 tasks did not start" >&2; return 1; }
  t0=$(date +%s%N)
  dk 0 service update -d -q --no-resolve-image --image busybox:v2 bswru >/dev/null || return 1
  sw_wait bswru 10 "" busybox:v2 180 || rc=$?
  case $rc in
    0) sw_secs "$t0" "$(date +%s%N)" ;;
    1) echo timeout ;;
    *) return 1 ;;
  esac
}

# The nodes: those swarm_up counted, and any that its directories or namespaces show (if it
# failed half way, or ran in a subshell).
sw_nodes() {
  {
    ((sw_n > 0)) && seq 0 $((sw_n - 1))
    [[ -n ${work:-} ]] && for d in "$work"/sw/[0-9]*; do [[ -d $d ]] && basename "$d"; done
    ls /var/run/netns 2>/dev/null | sed -n "s/^bsw${sw_id}n\([0-9]*\)\$/\1/p"
  } | sort -un
}

swarm_cleanup() {
  local opts=$- i d p x nodes
  set +e
  nodes=$(sw_nodes)
  for i in $nodes; do sw_kill_node "$i"; done
  for i in $nodes; do
    for _ in $(seq 50); do
      [[ -z $(sw_node_pids "$i" | while read -r p; do [[ -d /proc/$p ]] && echo "$p"; done) ]] && break
      sw_kill_node "$i"
      sleep 0.1
    done
  done
  # The shims' sockets: containerd names them /run/containerd/s/sha256(address/namespace/id),
  # and a SIGKILLed shim leaves its socket behind.
  for i in $nodes; do
    [[ -n ${work:-} ]] || break
    x="$(sw_dir "$i")/x"
    for d in "$(sw_dir "$i")"/d/containers/*/; do
      [[ -d $d ]] || continue
      rm -f "/run/containerd/s/$(printf '%s' "$x/containerd/containerd.sock/moby/$(basename "$d")" | sha256sum | cut -d' ' -f1)"
    done
  done
  if [[ -n ${work:-} ]]; then
    grep -o " $work/sw[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null
  fi
  for i in $nodes; do
    for d in /sys/fs/cgroup/*/"bsw${sw_id}n$i" /sys/fs/cgroup/"bsw${sw_id}n$i"; do
      [[ -d $d ]] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
    done
    ip link del "bsw${sw_id}h$i" 2>/dev/null
    ip netns del "bsw${sw_id}n$i" 2>/dev/null
  done
  ip link del "$sw_br" 2>/dev/null
  [[ -n ${work:-} ]] && rm -rf "$work/sw"
  sw_n=0
  [[ $opts == *e* ]] && set -e
  return 0
}
