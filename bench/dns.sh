#!/usr/bin/env bash
# Cluster DNS benchmark: svcplane against Knot DNS serving the same records, each server
# pinned to one core, load from dnsperf pinned to another core, for 100 and 10,000
# services. Prints QPS, CPU per query, p50/p99 at half of svcplane's peak load and the
# ratios next to the goals of issue 3. The sizes' peak runs are taken by turns against
# servers of every size running side by side (idle while not measured), so the
# 10,000-vs-100 ratios pair runs minutes apart, not a quarter of an hour. See
# bench/README.md.
#
#   bench/dns.sh                          # 100 and 10000 services, 12 x 5 s peak runs each
#   bench/dns.sh --out /tmp/dns.json      # also write every figure as JSON
#   bench/dns.sh --services "1000" --reps 1 --duration 5
#
# Needs: knotd and dnsperf (Debian: apt-get install -y knot dnsperf, with a policy-rc.d
# that returns 101 so knot does not start as a service), taskset, python3, 2+ CPUs.
# Traffic goes to 127.0.0.1 only. Everything started here is stopped on exit or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
GEN="python3 $ROOT/bench/dns_gen.py"

SIZES="100 10000"
DURATION=5         # seconds per peak run
REPS=12            # peak runs per server and size, by turns (medians are reported)
LAT_DURATION=10    # seconds of the fixed-rate latency run
CLIENTS=8          # dnsperf -c: client sockets
OUTSTANDING=100    # dnsperf -q: queries in flight (enough to keep one core busy)
SERVER_CPU=0
CLIENT_CPU=1
QUIET_WAIT=180     # wait at most this long for other load on the machine to stop
OUT=""
KEEP=""

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --services) SIZES=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --reps) REPS=$2; shift 2 ;;
        --latency-duration) LAT_DURATION=$2; shift 2 ;;
        --clients) CLIENTS=$2; shift 2 ;;
        --outstanding) OUTSTANDING=$2; shift 2 ;;
        --quiet-wait) QUIET_WAIT=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

log() { printf '[dns-bench] %s\n' "$*" >&2; }

# --- tools -------------------------------------------------------------------------------
missing=()
for t in knotd dnsperf; do command -v "$t" >/dev/null || missing+=("$t"); done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        log "installing knot dnsperf (services kept from starting by policy-rc.d)"
        made_policy=""
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
            chmod +x /usr/sbin/policy-rc.d
            made_policy=1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q knot dnsperf >/dev/null \
            || { [ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d; exit 1; }
        [ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d
    else
        echo "missing: ${missing[*]} (apt-get install -y knot dnsperf)" >&2
        exit 1
    fi
fi
for t in taskset python3; do
    command -v "$t" >/dev/null || { echo "missing: $t" >&2; exit 1; }
done
if [ "$(nproc --all)" -lt 2 ]; then
    echo "needs 2 CPUs: the server on CPU $SERVER_CPU, dnsperf on CPU $CLIENT_CPU" >&2
    exit 1
fi

# --- cleanup -----------------------------------------------------------------------------
TMP=$(mktemp -d /tmp/svcplane-dns-bench.XXXXXX)
SERVER_PID=""     # the server being measured
SERVER_PIDS=""    # every server running
CHILD_PID=""
# stop PID: TERM, then KILL after 5 s.
stop_pid() {
    local pid=$1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pid "$CHILD_PID"
    [ -f "$TMP/client.pid" ] && stop_pid "$(cat "$TMP/client.pid")"
    for pid in $SERVER_PIDS; do stop_pid "$pid"; done
    if [ -n "$KEEP" ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

stop_servers() {
    for pid in $SERVER_PIDS; do stop_pid "$pid"; done
    SERVER_PIDS=""
}

# bg CMD...: runs CMD in the background and waits for it, so that a signal reaches the
# trap at once; CMD's stdout is the caller's.
bg() {
    "$@" &
    CHILD_PID=$!
    local rc=0
    wait "$CHILD_PID" || rc=$?
    CHILD_PID=""
    rm -f "$TMP/client.pid"
    return "$rc"
}

# --- build -------------------------------------------------------------------------------
log "building svcplane (release)"
cargo build --release --quiet --bin svcplane
# A private copy: a concurrent build cannot replace the binary under the benchmark.
cp "${CARGO_TARGET_DIR:-target}/release/svcplane" "$TMP/svcplane"

RESULTS=$TMP/results.jsonl
python3 - "$SIZES" "$DURATION" "$REPS" "$LAT_DURATION" "$CLIENTS" "$OUTSTANDING" > "$RESULTS" <<'PY'
import json, os, platform, subprocess, sys
sizes, dur, reps, lat, clients, outstanding = sys.argv[1:]
ver = lambda c: subprocess.run(c, capture_output=True, text=True).stdout.strip().splitlines()
print(json.dumps({
    "kernel": platform.release(), "cpus": os.cpu_count(),
    "cpu_model": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), ""),
    "knot": ver(["knotd", "--version"])[0], "dnsperf": ver(["dnsperf", "-h"])[-1],
    "services": [int(s) for s in sizes.split()], "peak_run_s": int(dur), "reps": int(reps),
    "latency_run_s": int(lat), "dnsperf_clients": int(clients),
    "dnsperf_outstanding": int(outstanding), "latency_rate": {},
}))
PY

# --- one server ----------------------------------------------------------------------------
# start_server NAME DIR PORT: starts it pinned to SERVER_CPU, waits until it answers.
start_server() {
    local name=$1 dir=$2 port=$3
    case "$name" in
        svcplane)
            # --mode none: DNS only. The default mode would proxy every Service and add
            # its ClusterIPs to this (the host's) loopback interface.
            RUST_LOG=warn taskset -c "$SERVER_CPU" "$TMP/svcplane" run --mode none \
                --manifests "$dir/manifests" --dns-listen "127.0.0.1:$port" \
                --admin-listen 127.0.0.1:0 --state-dir "$dir/state" \
                > "$dir/svcplane.log" 2>&1 &
            ;;
        knot)
            sed "s/@PORT@/$port/" "$dir/knot/knot.conf.in" > "$dir/knot/knot.conf"
            taskset -c "$SERVER_CPU" knotd -c "$dir/knot/knot.conf" > "$dir/knot.log" 2>&1 &
            ;;
    esac
    SERVER_PID=$!
    SERVER_PIDS="$SERVER_PIDS $SERVER_PID"
    if ! bg $GEN wait "$port" "$(cat "$dir/last-name")" 300; then
        log "$name did not come up; its log:"
        cat "$dir/$name.log" >&2 || true
        exit 1
    fi
}

# pinning NAME: what the server runs on (checked, and recorded in the results).
pinning() {
    local allowed udp
    allowed=$(awk '/Cpus_allowed_list/ {print $2}' "/proc/$SERVER_PID/status")
    udp=$(cat /proc/"$SERVER_PID"/task/*/comm | grep -c -E '^dns-udp' || true)
    if [ "$allowed" != "$SERVER_CPU" ]; then
        log "$1 is not pinned to CPU $SERVER_CPU (allowed: $allowed)"; exit 1
    fi
    if [ "$1" = svcplane ] && [ "$udp" != 1 ]; then
        log "svcplane runs $udp UDP threads, expected 1"; exit 1
    fi
    printf '{"cpus_allowed": "%s", "threads": %s, "svcplane_udp_threads": %s}' \
        "$allowed" "$(ls /proc/"$SERVER_PID"/task | wc -l)" "$udp"
}

# measure OUTFILE DNSPERF-ARGS...: one dnsperf run against the running server; prints
# the figures as JSON.
measure() {
    local out=$1; shift
    bg $GEN measure --server-pid "$SERVER_PID" --server-cpu "cpu$SERVER_CPU" \
        --client-cpu "cpu$CLIENT_CPU" --out "$out" --pidfile "$TMP/client.pid" \
        --quiet "$QUIET_WAIT" -- \
        taskset -c "$CLIENT_CPU" dnsperf -s 127.0.0.1 -p "$PORT" -d "$DIR/queries.txt" \
        -c "$CLIENTS" -q "$OUTSTANDING" -T 1 -t 1 "$@"
}

# use N: the server of size N (of the kind running now) is the one measured.
use() {
    DIR=$TMP/n$1
    PORT=$(cat "$DIR/port")
    SERVER_PID=$(cat "$DIR/pid")
}

# peak N REP: one peak run against size N that nothing else disturbed: no other program
# and no steal by the hypervisor (at most 5 attempts, 5 s apart: on this kind of VM steal
# comes in phases of several seconds; when the machine never calms down the last,
# disturbed run is kept and flagged, and the report leaves its round out of the paired
# ratios).
peak() {
    local n=$1 rep=$2 try out
    use "$n"
    for try in 1 2 3 4 5; do
        out=$DIR/$NAME.peak$rep.$try
        measure "$out.txt" -l "$DURATION" > "$out.json"
        log "$NAME, $n services, peak run $rep: $($GEN summary "$(cat "$out.json")")"
        case "$(cat "$out.json")" in *'"clean": true'*) break ;; esac
        [ "$try" = 5 ] || sleep 5
    done
    cp "$out.json" "$DIR/$NAME.peak$rep.json"
}

# bench_server NAME: one server per size, all pinned to SERVER_CPU; peak runs taken by
# turns (size after size, REPS rounds), so that a drift of the machine's speed during
# the minutes this takes shifts every size alike; then each size's fixed-rate latency run.
bench_server() {
    NAME=$1
    local n rep pin rate lat pct i runs
    for n in $SIZES; do
        DIR=$TMP/n$n
        PORT=$($GEN port)
        echo "$PORT" > "$DIR/port"
        start_server "$NAME" "$DIR" "$PORT"
        echo "$SERVER_PID" > "$DIR/pid"
        pinning "$NAME" > "$DIR/$NAME.pin"
        bg $GEN answers "$PORT" "$DIR/verify.txt" "$DIR/$NAME.answers.json"
    done
    # Every other round takes the sizes in reverse order (100, 10000, 10000, 100, ...):
    # neither size always runs first, and a steady drift cancels within two rounds.
    local order reversed=""
    for n in $SIZES; do reversed="$n $reversed"; done
    for rep in $(seq "$REPS"); do
        if [ $((rep % 2)) = 1 ]; then order=$SIZES; else order=$reversed; fi
        for n in $order; do peak "$n" "$rep"; done
    done
    for n in $SIZES; do
        use "$n"
        runs=()
        for rep in $(seq "$REPS"); do runs+=("$(cat "$DIR/$NAME.peak$rep.json")"); done
        # The latency run's rate: half of svcplane's peak (the median of its runs); Knot is
        # measured at the same rate.
        if [ "$NAME" = svcplane ]; then
            rate=$(printf '%s\n' "${runs[@]}" | python3 -c 'import json,sys,statistics; print(int(statistics.median(json.loads(l)["qps"] for l in sys.stdin) / 2))')
            echo "$rate" > "$DIR/rate"
        fi
        rate=$(cat "$DIR/rate")
        for i in 1 2 3 4 5; do
            measure "$DIR/$NAME.latency.txt" -l "$LAT_DURATION" -Q "$rate" -v > "$DIR/$NAME.latency.json"
            lat=$(cat "$DIR/$NAME.latency.json")
            case "$lat" in *'"clean": true'*) break ;; esac
            log "$NAME latency run disturbed ($($GEN summary "$lat")), repeating"
            [ "$i" = 5 ] || sleep 5
        done
        pct=$($GEN latency "$DIR/$NAME.latency.txt")
        log "$NAME, $n services, at $rate QPS: $pct"
        pin=$(cat "$DIR/$NAME.pin")
        python3 - "$NAME" "$n" "$rate" "$pin" "$lat" "$pct" "${runs[@]}" >> "$RESULTS" <<'PY'
import json, statistics, sys
name, n, rate, pin, lat, pct = sys.argv[1:7]
runs = [json.loads(r) for r in sys.argv[7:]]
med = lambda k: statistics.median(r[k] for r in runs if r.get(k) is not None)
lat, pct = json.loads(lat), json.loads(pct)
print(json.dumps({
    "server": name, "services": int(n),
    "qps": round(med("qps")), "qps_runs": [round(r["qps"]) for r in runs],
    "cpu_us_per_query": med("cpu_us_per_query"),
    "cpu_us_per_query_runs": [r.get("cpu_us_per_query") for r in runs],
    "server_cpu_pct": med("server_cpu_pct"), "client_cpu_pct": med("client_cpu_pct"),
    "server_core_busy_pct": med("server_cpu_busy_pct"),
    "client_core_busy_pct": med("client_cpu_busy_pct"),
    "lost": sum(r.get("lost", 0) for r in runs),
    "all_peak_runs_clean": all(r["clean"] for r in runs),
    "pinning": json.loads(pin),
    "latency": {**pct, "rate_qps": int(rate), "achieved_qps": lat.get("qps"),
                "lost": lat.get("lost"), "server_cpu_pct": lat.get("server_cpu_pct"),
                "clean": lat.get("clean"), "quiet_before": lat.get("quiet_before"),
                "steal_pct": [lat.get("server_cpu_steal_pct"), lat.get("client_cpu_steal_pct")]},
    "peak_runs": runs,
}))
PY
    done
    stop_servers
}

# --- the runs ------------------------------------------------------------------------------
for n in $SIZES; do
    mkdir -p "$TMP/n$n"
    log "generating $n services"
    $GEN gen "$TMP/n$n" --services "$n" > "$TMP/n$n/last-name"
done
for s in svcplane knot; do
    bench_server "$s"
done
for n in $SIZES; do
    DIR=$TMP/n$n
    # Same names, same answers: every sampled query (each kind the load sends, plus the
    # apex) must get the same rcode, flags and record sets from both servers.
    cmp=$($GEN compare "$DIR/svcplane.answers.json" "$DIR/knot.answers.json" \
        --allow "cluster.local NS") || { log "answers differ at $n services: $cmp"; exit 1; }
    log "$n services, answers compared: $cmp"
    echo "{\"services\": $n, \"rate\": $(cat "$DIR/rate"), \"compare\": $cmp}" >> "$TMP/per-size.jsonl"
done

python3 - "$RESULTS" "$TMP/per-size.jsonl" <<'PY'
import json, sys
lines = open(sys.argv[1]).read().splitlines()
meta = json.loads(lines[0])
for l in open(sys.argv[2]):
    r = json.loads(l)
    meta["latency_rate"][str(r["services"])] = r["rate"]
    meta.setdefault("answers_compared", {})[str(r["services"])] = r["compare"]
open(sys.argv[1], "w").write("\n".join([json.dumps(meta)] + lines[1:]) + "\n")
PY
$GEN report "$RESULTS" "${OUT:-$TMP/dns-bench.json}"
if [ -n "$OUT" ]; then log "figures written to $OUT"; fi
exit 0
