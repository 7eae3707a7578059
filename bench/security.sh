#!/usr/bin/env bash
# What berth's cluster security costs, side by side in one run, on loopback only:
#  1. authorization: COUNT GETs of one ConfigMap by a user whose access comes from a
#     RoleBinding to `view`, from 32 concurrent streams over HTTP/2, against a server with
#     `--authorization-mode Node,RBAC` (the default) and one with `AlwaysAllow` (RBAC off);
#     p50/p99 and throughput, and the ratio;
#  2. signed-image admission: pods created one at a time whose image an
#     ImageSignaturePolicy covers (a cosign .sig signature checked against a local
#     registry): the first (resolve the tag, fetch and verify the signature) and the rest
#     (tag resolved again, verdict from the cache), beside the same pods in a namespace no
#     policy selects.
# The peers (kube-apiserver's RBAC authorizer; sigstore policy-controller, Kyverno
# verifyImages as admission webhooks) are not installable on this machine; their published
# webhook timeouts (3-30 s) frame the admission figures.
#   bench/security.sh [COUNT] [PODS]
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-10000}
pods=${2:-200}
need=()
command -v protoc >/dev/null || need+=(protobuf-compiler)
command -v curl >/dev/null || need+=(curl)
if ((${#need[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v kubectl >/dev/null || { echo "kubectl is needed" >&2; exit 1; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/berth-target}
cargo build --release --locked -q -p berth
cargo build --release --locked -q -p apiserver --example apiload
berth=$CARGO_TARGET_DIR/release/berth
load=$CARGO_TARGET_DIR/release/examples/apiload
work=$(mktemp -d /var/tmp/berth-bench-sec.XXXXXX)
pids=()
cleanup() {
  set +e
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
field() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p"; }

start_server() { # name mode → port
  local name=$1 mode=$2 port
  port=$(free_port)
  "$berth" server --bind-address 127.0.0.1 --https-listen-port "$port" --data-dir "$work/$name" \
    --write-kubeconfig "$work/$name.kubeconfig" --disable-agent --disable-scheduler \
    --disable-controller-manager --authorization-mode "$mode" 2>>"$work/$name.log" &
  pids+=($!)
  until grep -q "Kubernetes API on" "$work/$name.log" 2>/dev/null; do sleep 0.05; done
  echo "$port"
}

echo "== authorization: $count GETs of one ConfigMap by a user with view through a RoleBinding"
declare -A get
for mode in Node,RBAC AlwaysAllow; do
  name=${mode//,/-}
  start_server "$name" "$mode" >/dev/null
  k() { kubectl --kubeconfig "$work/$name.kubeconfig" "$@"; }
  k create namespace bench >/dev/null
  k -n bench create configmap c --from-literal=k=v >/dev/null
  k -n bench create rolebinding viewer --clusterrole view --user bench >/dev/null
  "$berth" kubeconfig --user bench --data-dir "$work/$name" --kubeconfig "$work/$name.kubeconfig" >"$work/$name.user"
  "$load" get "$work/$name.user" /api/v1/namespaces/bench/configmaps/c 500 8 >/dev/null # warm-up
  get[$mode]=$("$load" get "$work/$name.user" /api/v1/namespaces/bench/configmaps/c "$count" 32)
  printf '%-12s %s\n' "$mode" "${get[$mode]}"
done
awk -v a="$(field "${get[Node,RBAC]}" p50_ms)" -v b="$(field "${get[AlwaysAllow]}" p50_ms)" \
  -v c="$(field "${get[Node,RBAC]}" gets_per_s)" -v d="$(field "${get[AlwaysAllow]}" gets_per_s)" \
  'BEGIN { printf "RBAC on/off: p50 %.2fx, throughput %.2fx\n", a/b, c/d }'

echo "== signed-image admission: $pods pods created one at a time"
rport=$(free_port)
"$berth" registry serve -q --addr "127.0.0.1:$rport" --root "$work/registry" 2>"$work/registry.log" &
pids+=($!)
until grep -q "://" "$work/registry.log" 2>/dev/null; do sleep 0.05; done
reg=127.0.0.1:$rport
# An image: a config blob and a manifest.
printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}' >"$work/config"
cd_=$(sha256sum "$work/config" | cut -d' ' -f1)
curl -sf -X POST "http://$reg/v2/signed/app/blobs/uploads/?digest=sha256:$cd_" --data-binary "@$work/config" >/dev/null
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","size":%d,"digest":"sha256:%s"},"layers":[]}' \
  "$(stat -c %s "$work/config")" "$cd_" >"$work/manifest"
curl -sf -X PUT -H "Content-Type: application/vnd.oci.image.manifest.v1+json" \
  "http://$reg/v2/signed/app/manifests/1" --data-binary "@$work/manifest" >/dev/null
(cd "$work" && "$berth" image generate-key-pair --output release.key >/dev/null)
"$berth" image sign --key "$work/release.key" "$reg/signed/app:1" >/dev/null
k() { kubectl --kubeconfig "$work/Node-RBAC.kubeconfig" "$@"; }
{
  printf 'apiVersion: security.berth.io/v1\nkind: ImageSignaturePolicy\nmetadata: {name: bench}\nspec:\n  images: ["%s/signed/*"]\n  namespaceSelector: {matchLabels: {sig: enforce}}\n  keys:\n  - name: release\n    publicKey: |\n' "$reg"
  sed 's/^/      /' "$work/release.key.pub"
} | k apply -f - >/dev/null
k create namespace signed >/dev/null
k label namespace signed sig=enforce >/dev/null
k create namespace plain >/dev/null
signed=$("$load" admit "$work/Node-RBAC.kubeconfig" signed "$reg/signed/app:1" "$pods")
plain=$("$load" admit "$work/Node-RBAC.kubeconfig" plain "$reg/signed/app:1" "$pods")
printf '%-22s %s\n' "policy (cosign .sig)" "$signed" "no policy" "$plain"
awk -v a="$(field "$signed" then_p50_ms)" -v b="$(field "$plain" then_p50_ms)" -v f="$(field "$signed" first_ms)" \
  'BEGIN { printf "signed admission: first %.1f ms, cached p50 %.2f ms (%.2f ms over no policy)\n", f, a, a-b }'
