#!/usr/bin/env bash
# Services and cluster DNS, each beside what it is measured against, in one run:
#  1. HTTP (wrk, 2 threads, 10 connections, 5 s; busybox httpd, 64 KiB page) from a node to
#     a pod on another node: straight to the pod's IP, through the Service's ClusterIP, and
#     through its NodePort on the pod's node. Target: Service paths >= 0.95x direct.
#  2. Rule programming (agent's proxy, in a network namespace of its own): 1,000 Services
#     with 10,000 endpoints applied in one transaction, then one endpoint change applied
#     incrementally (as the proxy does) against rewriting the table whole (what a proxy
#     without incremental updates pays). Also at 100 and 5,000 Services. Target: one
#     change <= 10 ms.
#  3. Cluster DNS: A queries for 1,000 Service names, 16 concurrent clients, 5 s, against
#     berth's server and against Debian's dnsmasq serving the same names from a hosts file,
#     both on loopback: queries/s, p50 and p99 latency.
# Everything runs on this machine (a bridge and network namespaces of the script's own,
# and loopback); nothing is pulled.
#   bench/services.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) != 0 ]]; then echo "run as root" >&2; exit 1; fi
command -v kubectl >/dev/null || { echo "kubectl is needed" >&2; exit 1; }
need=()
command -v protoc >/dev/null || need+=(protobuf-compiler)
command -v wrk >/dev/null || need+=(wrk)
command -v dnsmasq >/dev/null || need+=(dnsmasq-base)
command -v nft >/dev/null || need+=(nftables)
[[ -x /usr/lib/cni/bridge ]] || need+=(containernetworking-plugins)
command -v iptables >/dev/null || need+=(iptables)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
if ((${#need[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/berth-target}
cargo build --release --locked -q -p berth
cargo build --release --locked -q -p agent --example proxyperf --example dnsbench
berth=$CARGO_TARGET_DIR/release/berth
ex=$CARGO_TARGET_DIR/release/examples
work=$(mktemp -d /var/tmp/berth-bench-svc.XXXXXX)
id=$$
br=bbs$id
net=10.252.$((id % 200 + 2))
pids=()
cleanup() {
  set +e
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
  wait 2>/dev/null
  for i in 0 1; do
    for d in /sys/fs/cgroup/bbs${id}x$i /sys/fs/cgroup/*/bbs${id}x$i; do
      [[ -d $d ]] || continue
      find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -9 2>/dev/null
    done
  done
  sleep 0.5
  for i in 0 1; do
    for d in /sys/fs/cgroup/bbs${id}x$i /sys/fs/cgroup/*/bbs${id}x$i; do
      [[ -d $d ]] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
    done
    ip netns del "bbs${id}n$i" 2>/dev/null
    ip link del "bbs${id}v$i" 2>/dev/null
  done
  ip link del "$br" 2>/dev/null
  grep -o " \($work\|/run/bbs$id\)[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l
  rm -rf "/run/bbs$id" "$work"
}
trap cleanup EXIT
k() { kubectl --kubeconfig "$work/kubeconfig" "$@"; }
ratio() { python3 -c "import sys; a,b=map(float,sys.argv[1:]); print(f'{b/a:.3f}' if a>0 else 'n/a')" "$1" "$2"; }

# --- 1. HTTP through a Service -------------------------------------------------------
bash scripts/busybox-bundle "$work/bundle" true >/dev/null
head -c 65536 /dev/urandom | base64 >"$work/bundle/rootfs/index.html"
tar -C "$work/bundle/rootfs" -czf "$work/bb.tar.gz" .
ip link add "$br" type bridge
ip addr add "$net.1/24" dev "$br"
ip link set "$br" up
"$berth" server --bind-address "$net.1" --tls-san "$net.1" --https-listen-port 0 \
  --disable-agent --data-dir "$work/server" --write-kubeconfig "$work/kubeconfig" \
  2>"$work/server.log" &
pids+=($!)
until grep -q "Kubernetes API on" "$work/server.log"; do sleep 0.05; done
url=$(grep -o "Kubernetes API on [^;]*" "$work/server.log" | awk '{print $4}')
token=$(cat "$work/server/tls/token")
printf 'nameserver 127.0.0.1\n' >"$work/resolv.conf"
for i in 0 1; do
  ip netns add "bbs${id}n$i"
  ip link add "bbs${id}v$i" type veth peer name eth0 netns "bbs${id}n$i"
  ip link set "bbs${id}v$i" master "$br" up
  ip netns exec "bbs${id}n$i" sh -c "ip addr add $net.$((10 + i))/24 dev eth0; ip link set eth0 up; ip link set lo up; ip route add default via $net.1; sysctl -qw net.ipv4.ip_forward=1"
  mkdir -p "/run/bbs$id/$i"
  nsenter --net="/var/run/netns/bbs${id}n$i" "$berth" agent --server "$url" --token "$token" \
    --node-name "node-$i" --node-ip "$net.$((10 + i))" --data-dir "$work/node-$i" \
    --exec-root "/run/bbs$id/$i" --engine-socket "/run/bbs$id/$i/berth.sock" \
    --cgroup-root "/bbs${id}x$i" --resolv-conf "$work/resolv.conf" 2>"$work/node-$i.log" &
  pids+=($!)
done
for i in 0 1; do
  until [[ -S /run/bbs$id/$i/berth.sock ]]; do sleep 0.05; done
  BERTH_HOST=unix:///run/bbs$id/$i/berth.sock "$berth" image import -c 'CMD ["sh"]' "$work/bb.tar.gz" busybox:latest >/dev/null
done
# A node exists once its agent has its certificates; then it is waited for.
for n in node-0 node-1; do until k get node "$n" >/dev/null 2>&1; do sleep 0.1; done; done
k wait --for=condition=Ready node/node-0 node/node-1 --timeout=60s >/dev/null
# One identical server pod per path: a client host reaching one server by two paths would
# meet its own TIME_WAIT connections under another timestamp offset (PAWS), which no real
# client does and which is not what is measured here.
for p in direct clusterip nodeport; do
  k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: web-$p, labels: {app: web-$p}}
spec:
  nodeName: node-1
  containers:
  - name: c
    image: busybox:latest
    imagePullPolicy: Never
    command: [httpd, -f, -p, "8080", -h, /]
    readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web-$p}
spec:
  type: NodePort
  selector: {app: web-$p}
  ports: [{port: 80, targetPort: 8080}]
EOF
done
k wait --for=condition=Ready pod/web-direct pod/web-clusterip pod/web-nodeport --timeout=60s >/dev/null
pod_ip=$(k get pod web-direct -o jsonpath='{.status.podIP}')
cluster_ip=$(k get svc web-clusterip -o jsonpath='{.spec.clusterIP}')
node_port=$(k get svc web-nodeport -o jsonpath='{.spec.ports[0].nodePort}')
n0() { ip netns exec "bbs${id}n0" "$@"; }
for _ in $(seq 100); do n0 wrk -t1 -c1 -d1s "http://$cluster_ip/index.html" 2>/dev/null | grep -q "Requests/sec" && n0 wrk -t1 -c1 -d1s "http://$net.11:$node_port/index.html" 2>/dev/null | grep -q "Requests/sec" && break; sleep 0.2; done
# wrk: "req/s p50_ms p99_ms"
measure() {
  n0 wrk -t2 -c10 -d5s --latency "$1" | python3 -c '
import re, sys
t = sys.stdin.read()
rps = re.search(r"Requests/sec:\s+([\d.]+)", t).group(1)
def ms(p):
    m = re.search(r"\s" + str(p) + r"%\s+([\d.]+)(us|ms|s)\b", t)
    v, u = float(m.group(1)), m.group(2)
    return v / 1000 if u == "us" else v * 1000 if u == "s" else v
print(rps, f"{ms(50):.2f}", f"{ms(99):.2f}")'
}
# Three rounds, the paths taken in turn; the median round of each is printed.
for r in 1 2 3; do
  measure "http://$pod_ip:8080/index.html" >>"$work/direct"
  measure "http://$cluster_ip/index.html" >>"$work/clusterip"
  measure "http://$net.11:$node_port/index.html" >>"$work/nodeport"
done
mid() { sort -n "$1" | sed -n 2p; }
read -r d_rps d_p50 d_p99 < <(mid "$work/direct")
read -r c_rps c_p50 c_p99 < <(mid "$work/clusterip")
read -r n_rps n_p50 n_p99 < <(mid "$work/nodeport")
echo "HTTP from node-0 to a pod on node-1 (wrk -t2 -c10 -d5s, busybox httpd, 64 KiB page, a new connection per request; median of 3 rounds):"
printf "  direct to the pod %-22s %9s req/s  p50 %6s ms  p99 %6s ms\n" "$pod_ip:8080" "$d_rps" "$d_p50" "$d_p99"
printf "  ClusterIP         %-22s %9s req/s  p50 %6s ms  p99 %6s ms  %s x direct\n" "$cluster_ip:80" "$c_rps" "$c_p50" "$c_p99" "$(ratio "$d_rps" "$c_rps")"
printf "  NodePort          %-22s %9s req/s  p50 %6s ms  p99 %6s ms  %s x direct\n" "$net.11:$node_port" "$n_rps" "$n_p50" "$n_p99" "$(ratio "$d_rps" "$n_rps")"
echo "  (target: Service paths >= 0.95 x direct)"
for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done

# --- 2. Rule programming ---------------------------------------------------------------
echo "rule programming (one transaction through libnftables; a namespace of its own):"
for n in 100 1000 5000; do
  "$ex/proxyperf" "$n" 10 20 | python3 -c '
import sys
v = dict(l.split(maxsplit=1) for l in sys.stdin.read().splitlines())
svc, eps = v["services"], v["endpoints"]
full, change, compute, rewrite = (float(v[k]) for k in ("full_apply_ms", "change_ms", "change_compute_ms", "rewrite_ms"))
print(f"  {svc:>5} Services, {eps:>6} endpoints: all at once {full:8.1f} ms | one endpoint change {change:6.2f} ms"
      f" (computing it {compute:.2f} ms) | the same change as a whole rewrite {rewrite:8.1f} ms ({rewrite / change:.0f}x)")'
done
echo "  (target at 1,000 Services: one change <= 10 ms)"

# --- 3. Cluster DNS ----------------------------------------------------------------------
free_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
p1=$(free_port)
p2=$(free_port)
"$ex/dnsbench" serve "127.0.0.1:$p1" 1000 &
pids+=($!)
"$ex/dnsbench" hosts 1000 >"$work/hosts"
dnsmasq --keep-in-foreground --no-resolv --no-hosts --addn-hosts="$work/hosts" \
  --listen-address=127.0.0.1 --bind-interfaces --port="$p2" --local-ttl=5 \
  --pid-file="$work/dnsmasq.pid" --user=root 2>"$work/dnsmasq.log" &
pids+=($!)
sleep 1
read -r b_qps b_p50 b_p99 b_fail < <("$ex/dnsbench" load "127.0.0.1:$p1" 1000 5 16)
read -r m_qps m_p50 m_p99 m_fail < <("$ex/dnsbench" load "127.0.0.1:$p2" 1000 5 16)
echo "cluster DNS, A queries for 1,000 Service names, 16 clients, 5 s, loopback:"
printf "  berth (cluster DNS)        %8s queries/s  p50 %6s ms  p99 %6s ms  failed %s\n" "$b_qps" "$b_p50" "$b_p99" "$b_fail"
printf "  dnsmasq (hosts file)       %8s queries/s  p50 %6s ms  p99 %6s ms  failed %s\n" "$m_qps" "$m_p50" "$m_p99" "$m_fail"
echo "  berth/dnsmasq queries/s = $(ratio "$m_qps" "$b_qps")"
