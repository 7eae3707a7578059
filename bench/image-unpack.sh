#!/usr/bin/env bash
# Layer unpacking: `berth image import` of a 200 MB gzip layer (many small files; one large
# file) side by side with `tar -xzf` of the same file onto the same disk (the floor), with
# hyperfine; prints MB/s and the ratio (target: within 1.2x of tar). When a Docker daemon is
# reachable (`docker info`), also `berth load` vs `docker load` of the same archive.
#   bench/image-unpack.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
if [[ $(id -u) != 0 ]]; then echo "run as root" >&2; exit 1; fi
command -v hyperfine >/dev/null || { export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq hyperfine >/dev/null; }
command -v protoc >/dev/null || { export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq protobuf-compiler >/dev/null; }   # builds the etcd client
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/berth-target}
cargo build --release --locked -q -p berth
berth=$CARGO_TARGET_DIR/release/berth
work=$(mktemp -d /var/tmp/berth-bench-image.XXXXXX)
trap 'umount -R "$work"/* 2>/dev/null; rm -rf "$work"' EXIT

echo "making the layers (incompressible data, so the gzip is ~200 MB)…"
mkdir -p "$work/small/files" "$work/large"
python3 - "$work/small/files" <<'PY'
import os, sys
d = sys.argv[1]
for i in range(50000):
    sub = os.path.join(d, f"{i // 1000:02d}")
    os.makedirs(sub, exist_ok=True)
    with open(os.path.join(sub, f"f{i}"), "wb") as f:
        f.write(os.urandom(4096))
PY
head -c 200M /dev/urandom > "$work/large/blob"
tar -C "$work/small" -czf "$work/small.tar.gz" .
tar -C "$work/large" -czf "$work/large.tar.gz" .
rm -rf "$work/small" "$work/large"

report() {
  python3 - "$1" "$2" <<'PY'
import json, os, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
size = os.path.getsize(sys.argv[2]) / 1e6
b, t = r["berth image import"]["median"], r["tar -xzf"]["median"]
print(f"  {os.path.basename(sys.argv[2])}: {size:.0f} MB   berth {b:.2f} s ({size / b:.0f} MB/s)   tar {t:.2f} s ({size / t:.0f} MB/s)   ratio berth/tar = {b / t:.2f} (target <= 1.2)")
PY
}

for layer in small large; do
  f=$work/$layer.tar.gz
  hyperfine --runs "$runs" --export-json "$work/$layer.json" \
    --prepare "rm -rf $work/root $work/tar; mkdir -p $work/tar; sync" \
    -n "berth image import" "$berth --data-root $work/root image import $f" \
    -n "tar -xzf" "tar -xzf $f -C $work/tar" >/dev/null
  report "$work/$layer.json" "$f"
done

if docker info >/dev/null 2>&1; then
  "$berth" --data-root "$work/root" image import "$work/large.tar.gz" bench:1 >/dev/null
  "$berth" --data-root "$work/root" save -o "$work/bench.tar" bench:1
  hyperfine --runs "$runs" --export-json "$work/load.json" \
    --prepare "rm -rf $work/root2; docker rmi -f bench:1 >/dev/null 2>&1 || true" \
    -n "berth load" "$berth --data-root $work/root2 load -q -i $work/bench.tar" \
    -n "docker load" "docker load -q -i $work/bench.tar" >/dev/null
  python3 - "$work/load.json" <<'PY'
import json, sys
r = {x["command"]: x["median"] for x in json.load(open(sys.argv[1]))["results"]}
print(f"  load: berth {r['berth load']:.2f} s   docker {r['docker load']:.2f} s   ratio = {r['berth load'] / r['docker load']:.2f} (target <= 0.5)")
PY
else
  echo "  load vs docker load: skipped (no Docker daemon reachable; install docker.io and start dockerd)"
fi
