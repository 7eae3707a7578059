#!/usr/bin/env bash
# Container start latency: `berth runtime run` vs `runc run` of /bin/true from the same
# busybox bundle, side by side with hyperfine, plus the floor (unshare of the same namespaces).
# Prints both medians, the ratio (target: berth <= 0.5x runc) and berth's peak RSS.
#   bench/runtime-start.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-200}
if [[ $(id -u) != 0 ]]; then echo "run as root" >&2; exit 1; fi
need=()
command -v protoc >/dev/null || need+=(protobuf-compiler)   # builds the etcd client
command -v runc >/dev/null || need+=(runc)
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
trap 'rm -rf "$work"' EXIT
scripts/busybox-bundle "$work/bundle" "$berth" -- /bin/true >/dev/null
# The same bundle for both runtimes: runc's own default config, with berth's spec command
# writing the identical runc-style document (checked below).
python3 - "$work/bundle/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
assert c["process"]["args"] == ["/bin/true"] and c["process"]["terminal"] is False
PY
echo "runc: $(runc --version | head -1)"
echo "berth: $("$berth" --version)"
hyperfine --runs "$runs" --warmup 20 -N --export-json "$work/h.json" \
  -n "berth runtime run" "$berth runtime --root $work/berth-state run --bundle $work/bundle bench-berth" \
  -n "runc run" "runc --root $work/runc-state run --bundle $work/bundle bench-runc" \
  -n "unshare (floor)" "unshare --pid --mount --uts --ipc --net --fork true" >"$work/hyperfine.txt"
cat "$work/hyperfine.txt"
python3 - "$work/h.json" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
b, c, f = (r[k]["median"] * 1000 for k in ("berth runtime run", "runc run", "unshare (floor)"))
print(f"median  berth {b:.2f} ms   runc {c:.2f} ms   floor {f:.2f} ms")
print(f"ratio   berth/runc = {b / c:.3f}   (target <= 0.5)")
PY
rss=$( { /usr/bin/time -f '%M' "$berth" runtime --root "$work/berth-state" run --bundle "$work/bundle" bench-rss; } 2>&1 | tail -1 )
echo "peak RSS of berth runtime run: ${rss} KiB"
