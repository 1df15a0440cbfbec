#!/usr/bin/env bash
# Userspace proxy benchmark: a direct connection to one backend, svcplane --mode userspace
# and HAProxy (mode tcp, one thread, roundrobin), measured in one run, the two proxies
# pinned to the same core. Prints new connections/s (HTTP with Connection: close),
# keep-alive requests/s and p50/p99 latency, each as median [min-max] over the runs and as
# ratios to HAProxy and to direct, next to the goals of issue 4. See bench/README.md.
#
#   bench/proxy.sh                      # 3 interleaved runs of 10 s per test and mode
#   bench/proxy.sh --runs 1 --duration 5
#   bench/proxy.sh --out /tmp/proxy.json    # also every figure as JSON
#
# Needs root, wrk, haproxy and nginx (Debian: apt-get install -y wrk haproxy nginx-light,
# with a policy-rc.d that returns 101 so the servers do not start as services), iproute2,
# taskset, python3, 2+ CPUs, and a release build (built here). Everything runs inside
# network namespaces this script creates (client, node, three backends) and removes on
# exit, Ctrl-C included; no traffic leaves them.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

RUNS=3
DURATION=10          # seconds per measurement
CONNS=32             # wrk connections for the throughput tests
LAT_CONNS=1          # wrk connections for the latency test: one request at a time
PROXY_CPU=0          # svcplane and HAProxy
LOAD_CPU=1           # wrk and the nginx backends
OUT=""
QUIET_WAIT=180
TESTS="conn keepalive latency"

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --connections) CONNS=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --proxy-cpu) PROXY_CPU=$2; shift 2 ;;
        --tests) TESTS=${2//,/ }; shift 2 ;;
        --load-cpu) LOAD_CPU=$2; shift 2 ;;
        --quiet-wait) QUIET_WAIT=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "bench/proxy.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

[ "$(id -u)" -eq 0 ] || { echo "bench/proxy.sh: needs root (network namespaces)" >&2; exit 1; }
for tool in wrk haproxy nginx curl ip taskset python3; do
    command -v "$tool" >/dev/null || {
        echo "bench/proxy.sh: $tool is missing (apt-get install -y wrk haproxy nginx-light iproute2)" >&2
        exit 1
    }
done
[ "$(nproc)" -ge 2 ] || { echo "bench/proxy.sh: needs 2 CPUs" >&2; exit 1; }

cargo build --release --locked -q
BIN=$ROOT/target/release/svcplane

ID="spb$$"
TMP=$(mktemp -d)
NODE=$ID-node
CLIENT=$ID-client
PIDS=()
cleanup() {
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    sleep 0.2
    for ns in $(ip netns list | awk '{print $1}' | grep "^$ID-" || true); do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Wait for a quiet machine: other builds would make every figure meaningless.
waited=0
while :; do
    load=$(cut -d' ' -f1 /proc/loadavg)
    python3 -c "import sys; sys.exit(0 if $load < 0.7 else 1)" && break
    [ "$waited" -ge "$QUIET_WAIT" ] && { echo "warning: load average $load; measuring anyway" >&2; break; }
    sleep 5; waited=$((waited + 5))
done

# === topology ===
nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
mkns() {
    ip netns add "$1"
    ip -n "$1" link set lo up
    # No TIME_WAIT: tens of thousands of connections a second reuse client ports within the
    # TIME_WAIT period, and a SYN that meets an old TIME_WAIT socket stalls for a 1 s
    # retransmission, whichever side closed first. That would measure port reuse, not
    # the proxies.
    nsx "$1" sysctl -qw net.ipv4.ip_local_port_range="1024 65000" net.ipv4.tcp_tw_reuse=1 \
        net.ipv4.tcp_max_tw_buckets=0
}
link() { # ns-a if-a addr-a ns-b if-b addr-b
    ip link add "$2" netns "$1" type veth peer name "$5" netns "$4"
    ip -n "$1" addr add "$3/24" dev "$2"; ip -n "$1" link set "$2" up
    ip -n "$4" addr add "$6/24" dev "$5"; ip -n "$4" link set "$5" up
}
mkns "$NODE"; mkns "$CLIENT"
nsx "$NODE" sysctl -qw net.ipv4.ip_forward=1 net.core.somaxconn=65535
link "$NODE" to-client 10.200.0.1 "$CLIENT" eth0 10.200.0.2
ip -n "$CLIENT" route add default via 10.200.0.1
BACKENDS=()
for k in 0 1 2; do
    ns=$ID-b$k
    mkns "$ns"
    nsx "$ns" sysctl -qw net.core.somaxconn=65535
    link "$NODE" "to-b$k" "10.201.$k.1" "$ns" eth0 "10.201.$k.2"
    ip -n "$ns" route add default via "10.201.$k.1"
    cat > "$TMP/nginx-b$k.conf" <<EOF
worker_processes 1;
pid $TMP/nginx-b$k.pid;
error_log $TMP/nginx-b$k.err;
events { worker_connections 65535; }
http {
    access_log off;
    keepalive_requests 100000000;
    server {
        listen 10.201.$k.2:8080 backlog=65535 reuseport;
        location / { return 200 "b$k\n"; }
    }
}
EOF
    nsx "$ns" taskset -c "$LOAD_CPU" nginx -c "$TMP/nginx-b$k.conf" -g 'daemon off;' &
    PIDS+=($!)
    BACKENDS+=("10.201.$k.2")
done

# svcplane: a ClusterIP Service over the three backends.
mkdir -p "$TMP/manifests"
cat > "$TMP/manifests/web.yaml" <<EOF
apiVersion: v1
kind: Service
metadata: {name: web, namespace: bench}
spec:
  clusterIP: 10.96.0.10
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: bench, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
$(for b in "${BACKENDS[@]}"; do echo "- addresses: [$b]"; done)
EOF
ip netns exec "$NODE" taskset -c "$PROXY_CPU" "$BIN" run --manifests "$TMP/manifests" --mode userspace \
    --admin-listen 127.0.0.1:10249 --dns-listen 127.0.0.1:5353 --state-dir "$TMP/state" \
    --node-ip 10.200.0.1 >"$TMP/svcplane.log" 2>&1 &
PIDS+=($!)
declare -A PROXY_PID=([svcplane]=$!)

# HAProxy: mode tcp, one thread, roundrobin over the same backends.
cat > "$TMP/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 9000
defaults
    mode tcp
    timeout connect 1s
    timeout client 60s
    timeout server 60s
frontend fe
    bind 10.200.0.1:8081 backlog 65535
    maxconn 9000
    default_backend be
backend be
    balance roundrobin
$(for i in "${!BACKENDS[@]}"; do echo "    server b$i ${BACKENDS[$i]}:8080"; done)
EOF
ip netns exec "$NODE" taskset -c "$PROXY_CPU" haproxy -f "$TMP/haproxy.cfg" -db >"$TMP/haproxy.log" 2>&1 &
PIDS+=($!)
PROXY_PID[haproxy]=$!

declare -A URL=(
    [direct]="http://10.201.0.2:8080/"
    [svcplane]="http://10.96.0.10:80/"
    [haproxy]="http://10.200.0.1:8081/"
)
for m in direct svcplane haproxy; do
    ok=""
    for _ in $(seq 50); do
        if nsx "$CLIENT" curl -sf -o /dev/null --max-time 1 "${URL[$m]}" 2>/dev/null; then ok=1; break; fi
        sleep 0.2
    done
    if [ -z "$ok" ]; then
        echo "bench/proxy.sh: $m does not answer at ${URL[$m]}; logs:" >&2
        tail -5 "$TMP/svcplane.log" "$TMP/haproxy.log" "$TMP"/nginx-*.err >&2 || true
        exit 1
    fi
done

# === measurements ===
# wrk prints "Requests/sec: N" and, with --latency, "50%  1.23ms" lines.
measure() { # mode test -> one JSON object
    local mode=$1 test=$2 args
    case $test in
        conn) args=(-t1 -c"$CONNS" -H "Connection: close") ;;
        keepalive) args=(-t1 -c"$CONNS") ;;
        latency) args=(-t1 -c"$LAT_CONNS" --latency) ;;
    esac
    # The proxy's CPU time (user + system, clock ticks) over the run: its cost per request.
    local pid=${PROXY_PID[$mode]:-} before=0 after=0
    [ -n "$pid" ] && before=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    nsx "$CLIENT" taskset -c "$LOAD_CPU" wrk "${args[@]}" -d"${DURATION}s" "${URL[$mode]}" >"$TMP/wrk.out" 2>&1
    [ -n "$pid" ] && after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    python3 "$ROOT/bench/wrk_parse.py" "$mode" "$test" "$(( after - before ))" "$(getconf CLK_TCK)" \
        "$DURATION" <"$TMP/wrk.out"
}

MODES=(direct svcplane haproxy)
# Warm-up, discarded: the first connections of a fresh topology are slow.
for m in "${MODES[@]}"; do
    nsx "$CLIENT" wrk -t1 -c"$CONNS" -d1s -H "Connection: close" "${URL[$m]}" >/dev/null 2>&1
    nsx "$CLIENT" wrk -t1 -c"$CONNS" -d1s "${URL[$m]}" >/dev/null 2>&1
done
RESULTS=$TMP/results.jsonl
: > "$RESULTS"
for run in $(seq 0 $((RUNS - 1))); do
    # Interleave: A B C, B C A, C A B, ...
    order=()
    for i in 0 1 2; do order+=("${MODES[$(( (i + run) % 3 ))]}"); done
    for test in $TESTS; do
        for m in "${order[@]}"; do
            echo "run $((run + 1))/$RUNS: $test $m" >&2
            measure "$m" "$test" | sed "s/^{/{\"run\": $run, /" >> "$RESULTS"
        done
    done
done

python3 "$ROOT/bench/proxy_report.py" "$RESULTS" "$(nproc)" "$(uname -r)" ${OUT:+"$OUT"}
