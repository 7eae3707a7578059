#!/usr/bin/env bash
# The engine against Docker, side by side in one run, on the same busybox image:
#  1. `berth run --rm --network none busybox true` vs `docker run --rm --network none busybox
#     true` (hyperfine medians and ratio; target berth <= 0.1x docker): the engine alone,
#     without networking on either side (bench/network.sh compares the bridge networks).
#  2. Idle memory with 10 running containers: `berth daemon` plus its 10 monitors against
#     dockerd + containerd + their 10 shims (summed RSS; target berth <= 0.2x).
# dockerd (Debian's docker.io) is started here with its own data root, exec root and socket.
#   bench/engine-run.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-50}
if [[ $(id -u) != 0 ]]; then echo "run as root" >&2; exit 1; fi
need=()
command -v protoc >/dev/null || need+=(protobuf-compiler)   # builds the etcd client
command -v dockerd >/dev/null || need+=(docker.io)
command -v hyperfine >/dev/null || need+=(hyperfine)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
if ((${#need[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/berth-target}
cargo build --release --locked -q -p berth
berth=$CARGO_TARGET_DIR/release/berth
work=$(mktemp -d /var/tmp/berth-bench.XXXXXX)
bexec=/run/bb-$$
dsock=$work/docker.sock
bsock=$bexec/berth.sock
cleanup() {
  set +e
  [[ -S $bsock ]] && "$berth" -H "unix://$bsock" rm -f $("$berth" -H "unix://$bsock" ps -aq) >/dev/null 2>&1
  [[ -S $dsock ]] && docker -H "unix://$dsock" rm -f $(docker -H "unix://$dsock" ps -aq) >/dev/null 2>&1
  [[ -n ${bpid:-} ]] && kill "$bpid" 2>/dev/null && sleep 0.5
  [[ -n ${dpid:-} ]] && kill "$dpid" 2>/dev/null && wait "$dpid" 2>/dev/null
  grep -o " \($work\|$bexec\)[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null
  "$berth" daemon --remove-host-setup --root "$work/berth" >/dev/null 2>&1
  rm -rf "$work" "$bexec"
}
trap cleanup EXIT

"$berth" daemon -H "unix://$bsock" --root "$work/berth" --exec-root "$bexec" \
  --bridge-name "bb$$" --bridge-subnet 10.233.0.0/16 >"$work/berth.log" 2>&1 &
bpid=$!
dockerd --data-root "$work/docker" --exec-root "$work/dexec" --pidfile "$work/dockerd.pid" \
  -H "unix://$dsock" --bridge none --iptables=false --ip-forward=false --ip-masq=false \
  --storage-driver overlay2 >"$work/dockerd.log" 2>&1 &
dpid=$!
for _ in $(seq 100); do
  [[ -S $bsock ]] && docker -H "unix://$dsock" info >/dev/null 2>&1 && break
  sleep 0.2
done
B() { "$berth" -H "unix://$bsock" "$@"; }
D() { docker -H "unix://$dsock" "$@"; }

# The same root file system for both.
scripts/busybox-bundle "$work/fs" "$berth" -- true >/dev/null
tar -C "$work/fs/rootfs" -cf "$work/busybox.tar" .
B image import -c 'CMD ["sh"]' "$work/busybox.tar" busybox:latest >/dev/null
D import -c 'CMD ["sh"]' "$work/busybox.tar" busybox:latest >/dev/null
echo "berth: $("$berth" --version)"
echo "docker: $(D version --format '{{.Server.Version}}')"

hyperfine --runs "$runs" --warmup 3 -N --export-json "$work/h.json" \
  -n "berth run --rm" "$berth -H unix://$bsock run --rm --network none busybox true" \
  -n "docker run --rm" "docker -H unix://$dsock run --rm --network none busybox true" >"$work/hyperfine.txt"
cat "$work/hyperfine.txt"
python3 - "$work/h.json" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
b, d = (r[k]["median"] * 1000 for k in ("berth run --rm", "docker run --rm"))
print(f"median  berth run {b:.1f} ms   docker run {d:.1f} ms")
print(f"ratio   berth/docker = {b / d:.3f}   (target <= 0.1)")
PY

# Idle memory with ten running containers.
for i in $(seq 10); do
  B run -d --network none --name "idle$i" busybox sleep 3600 >/dev/null
  D run -d --network none --name "idle$i" busybox sleep 3600 >/dev/null
done
sleep 2
rss() { # summed VmRSS (KiB) of the pids given
  local t=0 p v
  for p in "$@"; do
    v=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
    t=$((t + ${v:-0}))
  done
  echo "$t"
}
pss() { # summed Pss (KiB): shared pages split between their users
  local t=0 p v
  for p in "$@"; do
    v=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)
    t=$((t + ${v:-0}))
  done
  echo "$t"
}
bshims=$(pgrep -f "shim $bexec/" || true)
dshims=$(pgrep -f "containerd-shim.*moby" || true)
cpid=$(pgrep -f "containerd --config $work/dexec" || pgrep -x containerd || true)
b_kib=$(rss "$bpid" $bshims)
d_kib=$(rss "$dpid" $cpid $dshims)
echo "idle RSS with 10 containers: berth daemon + $(echo $bshims | wc -w) monitors = $((b_kib / 1024)) MiB;" \
  "dockerd + containerd + $(echo $dshims | wc -w) shims = $((d_kib / 1024)) MiB"
python3 -c "print(f'ratio   berth/docker = {$b_kib / $d_kib:.3f}   (target <= 0.2)')"
b_pss=$(pss "$bpid" $bshims)
d_pss=$(pss "$dpid" $cpid $dshims)
echo "the same as PSS: berth $((b_pss / 1024)) MiB, docker $((d_pss / 1024)) MiB," \
  "ratio $(python3 -c "print(f'{$b_pss / $d_pss:.3f}')")"
