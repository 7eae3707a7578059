#!/usr/bin/env bash
# The Docker Engine API: the same docker CLI (the installed 28.x) against berth's daemon and
# against dockerd (Debian's docker.io, started here with its own data root and socket), side
# by side in one run, on the same busybox image:
#  1. `docker run --rm --network none busybox true` (hyperfine medians and ratio; target
#     berth <= 0.15x dockerd);
#  2. `docker ps -a` with 100 containers on each (hyperfine medians and ratio).
#   bench/docker-api.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-30}
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
# The newest docker CLI on the machine (/usr/local/bin first), the same for both daemons.
docker=$(command -v docker)
work=$(mktemp -d /var/tmp/berth-bench.XXXXXX)
bexec=/run/bb-$$
dsock=$work/docker.sock
bsock=$bexec/berth.sock
cleanup() {
  set +e
  [[ -S $bsock ]] && "$docker" -H "unix://$bsock" rm -f $("$docker" -H "unix://$bsock" ps -aq) >/dev/null 2>&1
  [[ -S $dsock ]] && "$docker" -H "unix://$dsock" rm -f $("$docker" -H "unix://$dsock" ps -aq) >/dev/null 2>&1
  [[ -n ${bpid:-} ]] && kill "$bpid" 2>/dev/null && sleep 0.5
  [[ -n ${dpid:-} ]] && kill "$dpid" 2>/dev/null && wait "$dpid" 2>/dev/null
  grep -o " \($work\|$bexec\)[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null
  "$berth" daemon --remove-host-setup --root "$work/berth" >/dev/null 2>&1
  rm -rf "$work" "$bexec"
}
trap cleanup EXIT

"$berth" daemon -H "unix://$bsock" --root "$work/berth" --exec-root "$bexec" \
  --bridge-name "bb$$" --bridge-subnet 10.234.0.0/16 >"$work/berth.log" 2>&1 &
bpid=$!
dockerd --data-root "$work/docker" --exec-root "$work/dexec" --pidfile "$work/dockerd.pid" \
  -H "unix://$dsock" --bridge none --iptables=false --ip-forward=false --ip-masq=false \
  --storage-driver overlay2 >"$work/dockerd.log" 2>&1 &
dpid=$!
for _ in $(seq 100); do
  [[ -S $bsock ]] && "$docker" -H "unix://$dsock" info >/dev/null 2>&1 && break
  sleep 0.2
done
B() { "$docker" -H "unix://$bsock" "$@"; }
D() { "$docker" -H "unix://$dsock" "$@"; }

scripts/busybox-bundle "$work/fs" "$berth" -- true >/dev/null
tar -C "$work/fs/rootfs" -cf "$work/busybox.tar" .
B import -c 'CMD ["sh"]' "$work/busybox.tar" busybox:latest >/dev/null
D import -c 'CMD ["sh"]' "$work/busybox.tar" busybox:latest >/dev/null
echo "docker CLI: $("$docker" -H "unix://$dsock" version --format '{{.Client.Version}}')"
echo "berth: $(B version --format '{{.Server.Version}} (API {{.Server.APIVersion}})')"
echo "dockerd: $(D version --format '{{.Server.Version}} (API {{.Server.APIVersion}})')"

report() { # hyperfine json, berth name, docker name, target
  python3 - "$@" <<'PY'
import json, sys
f, bn, dn, target = sys.argv[1:5]
r = {x["command"]: x for x in json.load(open(f))["results"]}
b, d = r[bn]["median"] * 1000, r[dn]["median"] * 1000
print(f"{bn:24} {b:8.1f} ms   {dn:24} {d:8.1f} ms   ratio {b / d:.3f}  {target}")
PY
}
hyperfine --runs "$runs" --warmup 3 -N --export-json "$work/run.json" \
  -n "berth: docker run --rm" "$docker -H unix://$bsock run --rm --network none busybox true" \
  -n "dockerd: docker run --rm" "$docker -H unix://$dsock run --rm --network none busybox true" >/dev/null
for i in $(seq 100); do
  B create --network none --name "c$i" busybox true >/dev/null
  D create --network none --name "c$i" busybox true >/dev/null
done
hyperfine --runs "$runs" --warmup 3 -N --export-json "$work/ps.json" \
  -n "berth: docker ps -a" "$docker -H unix://$bsock ps -a" \
  -n "dockerd: docker ps -a" "$docker -H unix://$dsock ps -a" >/dev/null
report "$work/run.json" "berth: docker run --rm" "dockerd: docker run --rm" "(target <= 0.15)"
report "$work/ps.json" "berth: docker ps -a" "dockerd: docker ps -a" "(100 containers)"
