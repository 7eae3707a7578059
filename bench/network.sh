#!/usr/bin/env bash
# Networking, side by side with Docker in one run, on the same busybox root file system:
#  1. `berth run --rm busybox true` on berth's default bridge network vs
#     `docker run --rm busybox true` on Docker's (target: berth <= 0.1x docker);
#  2. HTTP throughput (wrk, 2 threads, 10 connections, 5 s) against busybox httpd in a
#     berth container, through a published port on 127.0.0.1 vs straight to the container's
#     address (target: published >= 0.9x direct).
# dockerd (Debian's docker.io) is started here with its own data root and a bridge on a
# private subnet; what it and berth set up is removed at the end.
#   bench/network.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-40}
if [[ $(id -u) != 0 ]]; then echo "run as root" >&2; exit 1; fi
need=()
command -v protoc >/dev/null || need+=(protobuf-compiler)   # builds the etcd client
command -v dockerd >/dev/null || need+=(docker.io)
command -v hyperfine >/dev/null || need+=(hyperfine)
command -v wrk >/dev/null || need+=(wrk)
[[ -x /usr/lib/cni/bridge ]] || need+=(containernetworking-plugins)
command -v iptables >/dev/null || need+=(iptables)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
if ((${#need[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/berth-target}
cargo build --release --locked -q -p berth
berth=$CARGO_TARGET_DIR/release/berth
work=$(mktemp -d /var/tmp/berth-bench.XXXXXX)
bexec=/run/bbn-$$
dsock=$work/docker.sock
bsock=$bexec/berth.sock
bbridge=bbn$$
cleanup() {
  set +e
  [[ -S $bsock ]] && "$berth" -H "unix://$bsock" rm -f $("$berth" -H "unix://$bsock" ps -aq) >/dev/null 2>&1
  [[ -S $dsock ]] && docker -H "unix://$dsock" rm -f $(docker -H "unix://$dsock" ps -aq) >/dev/null 2>&1
  [[ -n ${bpid:-} ]] && kill "$bpid" 2>/dev/null && sleep 0.5
  [[ -n ${dpid:-} ]] && kill "$dpid" 2>/dev/null && wait "$dpid" 2>/dev/null
  "$berth" daemon --remove-host-setup --root "$work/berth" >/dev/null 2>&1
  ip link delete bdocker0 2>/dev/null
  grep -o " \($work\|$bexec\)[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null
  rm -rf "$work" "$bexec"
}
trap cleanup EXIT

"$berth" daemon -H "unix://$bsock" --root "$work/berth" --exec-root "$bexec" \
  --bridge-name "$bbridge" --bridge-subnet 10.231.0.0/16 >"$work/berth.log" 2>&1 &
bpid=$!
ip link add bdocker0 type bridge 2>/dev/null || true
ip addr add 10.232.0.1/24 dev bdocker0 2>/dev/null || true
ip link set bdocker0 up
dockerd --data-root "$work/docker" --exec-root "$work/dexec" --pidfile "$work/dockerd.pid" \
  -H "unix://$dsock" --bridge bdocker0 --storage-driver overlay2 >"$work/dockerd.log" 2>&1 &
dpid=$!
for _ in $(seq 100); do
  [[ -S $bsock ]] && docker -H "unix://$dsock" info >/dev/null 2>&1 && break
  sleep 0.2
done
B() { "$berth" -H "unix://$bsock" "$@"; }
D() { docker -H "unix://$dsock" "$@"; }
scripts/busybox-bundle "$work/fs" "$berth" -- true >/dev/null
head -c 65536 /dev/urandom | base64 >"$work/fs/rootfs/index.html"
tar -C "$work/fs/rootfs" -cf "$work/busybox.tar" .
B image import -c 'CMD ["sh"]' "$work/busybox.tar" busybox:latest >/dev/null
D import -c 'CMD ["sh"]' "$work/busybox.tar" busybox:latest >/dev/null
echo "berth: $("$berth" --version); docker: $(D version --format '{{.Server.Version}}')"

hyperfine --runs "$runs" --warmup 3 -N --export-json "$work/h.json" \
  -n "berth run --rm (bridge)" "$berth -H unix://$bsock run --rm busybox true" \
  -n "docker run --rm (bridge)" "docker -H unix://$dsock run --rm busybox true" >"$work/hyperfine.txt"
cat "$work/hyperfine.txt"
python3 - "$work/h.json" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
b, d = (r[k]["median"] * 1000 for k in ("berth run --rm (bridge)", "docker run --rm (bridge)"))
print(f"median  berth run {b:.1f} ms   docker run {d:.1f} ms   (both on a bridge network)")
print(f"ratio   berth/docker = {b / d:.3f}   (target <= 0.1)")
PY

port=$((20000 + RANDOM % 20000))
B run -d --name web -p "127.0.0.1:$port:80" busybox httpd -f -p 80 -h / >/dev/null
ip=$(B inspect -f '{{.NetworkSettings.IPAddress}}' web)
for _ in $(seq 50); do wrk -t1 -c1 -d1s "http://127.0.0.1:$port/index.html" >/dev/null 2>&1 && break; sleep 0.1; done
rps() { wrk -t2 -c10 -d5s "$1" | awk '/Requests\/sec/ {print $2}'; }
direct=$(rps "http://$ip/index.html")
published=$(rps "http://127.0.0.1:$port/index.html")
echo "throughput (64 KiB page): direct to $ip ${direct} req/s; published 127.0.0.1:$port ${published} req/s"
python3 -c "print(f'ratio   published/direct = {$published / $direct:.3f}   (target >= 0.9)')"
