#!/usr/bin/env bash
# berth build against docker build (the classic builder of Debian's docker.io), side by side
# in one run, on the same context and Dockerfile (two stages, COPY of a source tree, RUN
# steps, config steps), both with their RUN steps off the network:
#  1. a cold build (--no-cache), hyperfine medians and ratio (target berth <= 0.5x docker);
#  2. an unchanged rebuild (every step from the cache), medians and ratio (target <= 0.5x).
# dockerd is started here with its own data root, exec root and socket.
#   bench/build.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10}
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
  [[ -S $bsock ]] && docker -H "unix://$dsock" info >/dev/null 2>&1 && break
  sleep 0.2
done
B() { "$berth" -H "unix://$bsock" "$@"; }
D() { DOCKER_BUILDKIT=0 docker -H "unix://$dsock" "$@"; }

# The same base image for both.
scripts/busybox-bundle "$work/fs" "$berth" -- true >/dev/null
tar -C "$work/fs/rootfs" -cf "$work/busybox.tar" .
B image import -c 'CMD ["sh"]' "$work/busybox.tar" busybox:latest >/dev/null
D import -c 'CMD ["sh"]' "$work/busybox.tar" busybox:latest >/dev/null
echo "berth: $("$berth" --version)"
echo "docker: $(D version --format '{{.Server.Version}}') (classic builder)"

# A context: 2,000 source files (about 8 MB) in 40 directories, a vendored dependency
# blob, and files .dockerignore leaves out.
ctx=$work/ctx
python3 - "$ctx" <<'PY'
import os, random, sys
root = sys.argv[1]
rnd = random.Random(7)
for d in range(40):
    p = os.path.join(root, "src", f"pkg{d:02}")
    os.makedirs(p, exist_ok=True)
    for f in range(50):
        with open(os.path.join(p, f"mod{f:02}.c"), "w") as fh:
            fh.write("".join(f"int f{d}_{f}_{i}(int x) {{ return x * {rnd.randint(1, 9999)}; }}\n" for i in range(60)))
os.makedirs(os.path.join(root, "vendor"), exist_ok=True)
with open(os.path.join(root, "vendor", "deps.bin"), "wb") as fh:
    fh.write(rnd.randbytes(4 << 20))
os.makedirs(os.path.join(root, "build-output"), exist_ok=True)
with open(os.path.join(root, "build-output", "junk.o"), "wb") as fh:
    fh.write(rnd.randbytes(1 << 20))
PY
printf 'build-output\n*.tmp\n' >"$ctx/.dockerignore"
cat >"$ctx/Dockerfile" <<'DF'
FROM busybox AS build
ARG VERSION=1.0
ENV APP_HOME=/app
WORKDIR /app
COPY vendor/ ./vendor/
RUN md5sum vendor/deps.bin > vendor.sum
COPY src/ ./src/
RUN find src -name '*.c' | sort | xargs cat | md5sum > src.sum && mkdir -p out \
 && tar -cf out/app.tar src && echo "$VERSION" > out/VERSION

FROM busybox
LABEL org.opencontainers.image.title=bench
COPY --from=build /app/out/ /opt/app/
COPY --from=build /app/vendor.sum /app/src.sum /opt/app/
RUN echo 'app:x:1000:1000::/opt/app:/bin/sh' >> /etc/passwd
USER app
EXPOSE 8080
ENV MODE=production
WORKDIR /opt/app
CMD ["sh", "-c", "cat VERSION"]
DF
B build -q --network none -t bench:1 "$ctx" >/dev/null
D build -q --network none -t bench:1 "$ctx" >/dev/null
[[ $(B run --rm --network none bench:1) == 1.0 && $(D run --rm --network none bench:1) == 1.0 ]] \
  || { echo "the images do not run alike" >&2; exit 1; }

hyperfine --runs "$runs" --warmup 1 -N --export-json "$work/cold.json" \
  -n "berth build --no-cache" "$berth -H unix://$bsock build -q --no-cache --network none -t bench:1 $ctx" \
  -n "docker build --no-cache" "env DOCKER_BUILDKIT=0 docker -H unix://$dsock build -q --no-cache --network none -t bench:1 $ctx" \
  >"$work/cold.txt"
hyperfine --runs "$((runs * 2))" --warmup 2 -N --export-json "$work/warm.json" \
  -n "berth build (cached)" "$berth -H unix://$bsock build -q --network none -t bench:1 $ctx" \
  -n "docker build (cached)" "env DOCKER_BUILDKIT=0 docker -H unix://$dsock build -q --network none -t bench:1 $ctx" \
  >"$work/warm.txt"
cat "$work/cold.txt" "$work/warm.txt"
python3 - "$work/cold.json" "$work/warm.json" <<'PY'
import json, sys
for path, what in zip(sys.argv[1:], ("cold build", "unchanged rebuild")):
    r = [x["median"] * 1000 for x in json.load(open(path))["results"]]
    print(f"{what:18} berth {r[0]:8.1f} ms   docker {r[1]:8.1f} ms   ratio {r[0] / r[1]:.3f}   (target <= 0.5)")
PY
