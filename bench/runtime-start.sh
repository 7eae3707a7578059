#!/usr/bin/env bash
# Container start latency: `berth runtime run` vs `runc run` of /bin/true from the same
# busybox bundle, side by side with hyperfine, plus the floor (unshare of the same namespaces).
# Prints the medians, the ratios (targets: berth <= 0.3x runc and <= 2.5x the floor), berth's
# peak RSS, and where berth's time goes: the mean of each phase over traced runs
# (BERTH_TRACE=1 marks them, from the runtime and from the container's init, on one clock).
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
print(f"ratio   berth/runc = {b / c:.3f}   (target <= 0.3)   berth/floor = {b / f:.2f}   (target <= 2.5)")
PY
rss=$( { /usr/bin/time -f '%M' "$berth" runtime --root "$work/berth-state" run --bundle "$work/bundle" bench-rss; } 2>&1 | tail -1 )
echo "peak RSS of berth runtime run: ${rss} KiB"
# Where the time goes: BERTH_TRACE's phases, each the mean of its duration since the mark
# before it; the first is from the spawn of berth to its main.
python3 - "$berth" "$work" <<'PY'
import collections, os, subprocess, sys, time
berth, work = sys.argv[1], sys.argv[2]
env = dict(os.environ, BERTH_TRACE="1")
runs = 100
sums = collections.OrderedDict()
totals = []
for i in range(runs):
    t0 = time.clock_gettime(time.CLOCK_MONOTONIC)
    p = subprocess.run([berth, "runtime", "--root", f"{work}/trace-state", "run", "--bundle",
                        f"{work}/bundle", f"trace-{i}"], stderr=subprocess.PIPE, text=True, check=True, env=env)
    t1 = time.clock_gettime(time.CLOCK_MONOTONIC)
    marks = [(float(l.split()[1]), " ".join(l.split()[3:])) for l in p.stderr.splitlines()
             if l.startswith("berth-trace ")]
    prev = t0
    for n, (t, what) in enumerate(marks):
        key = (n, "until " + what)
        sums[key] = sums.get(key, 0.0) + (t - prev)
        prev = t
    sums[(len(marks), "until the runtime exited")] = sums.get((len(marks), "until the runtime exited"), 0.0) + (t1 - prev)
    totals.append(t1 - t0)
print(f"berth runtime run, phases (mean of {runs} traced runs, from the spawn):")
for (n, what), total in sums.items():
    print(f"  {total / runs * 1000:7.2f} ms  {what}")
print(f"  {sum(totals) / runs * 1000:7.2f} ms  in all")
PY
