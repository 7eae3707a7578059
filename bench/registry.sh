#!/usr/bin/env bash
# The registry against Debian's docker-registry (distribution 2.8), side by side in one run:
#  1. skopeo pushes the same 200 MB image (four 50 MB layers of incompressible data) into an
#     empty `berth registry serve` and an empty docker-registry, then pulls it back to an OCI
#     layout: median seconds over RUNS, throughput ratio berth/distribution (target >= 1.5x),
#     the CPU time each server and skopeo spent, and each server's peak RSS.
#  2. The servers' own throughput, with clients that cost little (curl): 16 concurrent
#     monolithic uploads of the four layers into four repositories, then 16 concurrent
#     downloads of them.
#  3. `berth pull` of that image from berth's registry against `skopeo copy` of it to an OCI
#     layout (ratio of times; berth also unpacks the layers into snapshots).
# Everything listens on loopback only.
#   bench/registry.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
if [[ $(id -u) != 0 ]]; then echo "run as root" >&2; exit 1; fi
need=()
command -v protoc >/dev/null || need+=(protobuf-compiler)   # builds the etcd client
command -v skopeo >/dev/null || need+=(skopeo)
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
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
bsock=$bexec/berth.sock
cleanup() {
  set +e
  [[ -n ${rpid:-} ]] && kill "$rpid" 2>/dev/null
  [[ -n ${dpid:-} ]] && kill "$dpid" 2>/dev/null
  [[ -n ${bpid:-} ]] && kill "$bpid" 2>/dev/null && sleep 0.5
  grep -o " \($work\|$bexec\)[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null
  "$berth" daemon --remove-host-setup --root "$work/berth" >/dev/null 2>&1
  rm -rf "$work" "$bexec"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The image: an OCI layout with four 50 MB layers of random bytes (gzip cannot shrink them).
python3 - "$work/oci" <<'PY'
import gzip, hashlib, io, json, os, sys, tarfile
root = sys.argv[1]
blobs = os.path.join(root, "blobs", "sha256")
os.makedirs(blobs)
def put(data):
    d = hashlib.sha256(data).hexdigest()
    open(os.path.join(blobs, d), "wb").write(data)
    return "sha256:" + d, len(data)
layers, diff_ids = [], []
for i in range(4):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as t:
        data = os.urandom(50 << 20)
        info = tarfile.TarInfo(f"data/layer{i}.bin"); info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    diff_ids.append("sha256:" + hashlib.sha256(raw.getvalue()).hexdigest())
    d, n = put(gzip.compress(raw.getvalue(), compresslevel=1))
    layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": n})
cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["true"]},
                  "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
cd, cn = put(cfg)
man = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                  "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cn},
                  "layers": layers}).encode()
md, mn = put(man)
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
           "digest": md, "size": mn, "annotations": {"org.opencontainers.image.ref.name": "bench"}}]},
          open(os.path.join(root, "index.json"), "w"))
open(os.path.join(root, "oci-layout"), "w").write('{"imageLayoutVersion": "1.0.0"}')
PY
size=$(du -sb "$work/oci/blobs" | cut -f1)
echo "image: $((size / 1000000)) MB in 4 layers"

start_berth() { # $1 storage
  local p; p=$(port)
  "$berth" registry serve -q --addr "127.0.0.1:$p" --root "$1" 2>/dev/null &
  rpid=$!; raddr=127.0.0.1:$p
  for _ in $(seq 100); do curl -sf "http://$raddr/v2/" >/dev/null && break; sleep 0.05; done
}
start_dist() { # $1 storage
  local p; p=$(port)
  printf 'version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' "$1" "$p" >"$work/dist.yml"
  docker-registry serve "$work/dist.yml" >/dev/null 2>&1 &
  dpid=$!; daddr=127.0.0.1:$p
  for _ in $(seq 100); do curl -sf "http://$daddr/v2/" >/dev/null && break; sleep 0.05; done
}
now() { date +%s.%N; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f", a - b }'; }
cpu() { awk '{ printf "%.2f", ($14 + $15) / 100 }' "/proc/$1/stat"; } # user + system seconds
layers=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(" ".join(l["digest"][7:] for l in m["layers"]))' \
  "$work/oci/blobs/sha256/$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"][7:])' "$work/oci/index.json")")
upload() { # addr repo hex
  local loc sep
  loc=$(curl -sf -X POST -D - -o /dev/null "http://$1/v2/$2/blobs/uploads/" | tr -d '\r' | awk -F': ' 'tolower($1) == "location" { print $2 }')
  [[ $loc == http* ]] || loc=http://$1$loc
  [[ $loc == *\?* ]] && sep='&' || sep='?'
  curl -sf -X PUT -H 'Content-Type: application/octet-stream' -T "$work/oci/blobs/sha256/$3" "$loc${sep}digest=sha256:$3" -o /dev/null
}
concurrent() { # addr upload|download
  local pids=() r l
  for r in 1 2 3 4; do for l in $layers; do
    if [[ $2 == upload ]]; then upload "$1" "curl/r$r" "$l" &
    else curl -sf -o /dev/null "http://$1/v2/curl/r$r/blobs/sha256:$l" & fi
    pids+=($!)
  done; done
  wait "${pids[@]}"
}
TIMEFORMAT=%U+%S # skopeo's own CPU seconds
skpush=""; skpull=""
declare -A push pull pushcpu pullcpu cup cdown cupcpu cdowncpu rss
for server in berth dist; do
  rss[$server]=0
  for i in $(seq "$runs"); do
    rm -rf "$work/store-$server" "$work/back"
    if [[ $server == berth ]]; then start_berth "$work/store-$server"; addr=$raddr; pid=$rpid
    else start_dist "$work/store-$server"; addr=$daddr; pid=$dpid; fi
    c0=$(cpu "$pid"); t0=$(now)
    k1=$( { time skopeo copy -q --dest-tls-verify=false "oci:$work/oci:bench" "docker://$addr/bench/image:1" >&2; } 2>&1 )
    c1=$(cpu "$pid"); t1=$(now)
    k2=$( { time skopeo copy -q --src-tls-verify=false "docker://$addr/bench/image:1" "oci:$work/back:bench" >&2; } 2>&1 )
    c2=$(cpu "$pid"); t2=$(now)
    skpush+="$k1 "; skpull+="$k2 "
    concurrent "$addr" upload
    c3=$(cpu "$pid"); t3=$(now)
    concurrent "$addr" download
    c4=$(cpu "$pid"); t4=$(now)
    push[$server]+="$(sub "$t1" "$t0") "; pushcpu[$server]+="$(sub "$c1" "$c0") "
    pull[$server]+="$(sub "$t2" "$t1") "; pullcpu[$server]+="$(sub "$c2" "$c1") "
    cup[$server]+="$(sub "$t3" "$t2") "; cupcpu[$server]+="$(sub "$c3" "$c2") "
    cdown[$server]+="$(sub "$t4" "$t3") "; cdowncpu[$server]+="$(sub "$c4" "$c3") "
    hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
    (( hwm > rss[$server] )) && rss[$server]=$hwm
    if [[ $i -lt $runs || $server == dist ]]; then kill "$pid"; wait "$pid" 2>/dev/null || true; fi
  done
done
dpid=""
rm -rf "$work/back" "$work/store-dist"
# berth pull against skopeo copy, from berth's registry (still running).
"$berth" daemon -H "unix://$bsock" --root "$work/berth" --exec-root "$bexec" \
  --bridge-name "bb$$" --bridge-subnet 10.235.0.0/16 >"$work/berth.log" 2>&1 &
bpid=$!
for _ in $(seq 100); do [[ -S $bsock ]] && "$berth" -H "unix://$bsock" version >/dev/null 2>&1 && break; sleep 0.1; done
bpull=""; spull=""
for i in $(seq "$runs"); do
  "$berth" -H "unix://$bsock" rmi "$raddr/bench/image:1" >/dev/null 2>&1 || true
  "$berth" -H "unix://$bsock" image prune -a >/dev/null 2>&1 || true
  rm -rf "$work/oci-back"
  t0=$(now); "$berth" -H "unix://$bsock" pull -q "$raddr/bench/image:1" >/dev/null; t1=$(now)
  skopeo copy -q --src-tls-verify=false "docker://$raddr/bench/image:1" "oci:$work/oci-back:bench"; t2=$(now)
  bpull+="$(sub "$t1" "$t0") "; spull+="$(sub "$t2" "$t1") "
done
python3 - "$size" <<PY
import statistics, sys
size = int(sys.argv[1])
med = lambda s: statistics.median(float(x) for x in s.split())
mbps = lambda t, n=size: n / t / 1e6
rows = [
    ("skopeo push", med("${push[berth]}"), med("${push[dist]}"), med("${pushcpu[berth]}"), med("${pushcpu[dist]}"), size),
    ("skopeo pull", med("${pull[berth]}"), med("${pull[dist]}"), med("${pullcpu[berth]}"), med("${pullcpu[dist]}"), size),
    ("16 curl uploads", med("${cup[berth]}"), med("${cup[dist]}"), med("${cupcpu[berth]}"), med("${cupcpu[dist]}"), 4 * size),
    ("16 curl downloads", med("${cdown[berth]}"), med("${cdown[dist]}"), med("${cdowncpu[berth]}"), med("${cdowncpu[dist]}"), 4 * size),
]
print(f"{'':18} {'berth':>19} {'distribution':>19} {'throughput':>11} {'server CPU s':>16} {'CPU ratio':>9}")
for name, tb, td, cb, cd, n in rows:
    print(f"{name:18} {tb:6.2f} s {mbps(tb, n):5.0f} MB/s {td:6.2f} s {mbps(td, n):5.0f} MB/s {td / tb:10.2f}x {cb:7.2f} {cd:7.2f} {cb / max(cd, 0.01):9.2f}")
cpu = lambda s: statistics.median(eval(x) for x in s.split())
kp, kl = cpu("$skpush"), cpu("$skpull")
print(f"skopeo's own CPU: {kp:.2f} s per push, {kl:.2f} s per pull. On 2 cores the client and the server share")
print("the CPU, so no server can make a skopeo transfer faster than about the client's own time.")
print("throughput target: >= 1.5x distribution")
rb, rd = int("${rss[berth]}"), int("${rss[dist]}")
print(f"peak RSS          berth {rb / 1024:6.1f} MiB   distribution {rd / 1024:6.1f} MiB   ratio {rb / rd:.2f}")
bp, sp = med("$bpull"), med("$spull")
print(f"berth pull {bp:.2f} s   skopeo copy {sp:.2f} s   ratio {bp / sp:.2f} (berth also unpacks the layers)")
PY
