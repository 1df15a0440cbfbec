"""Summarises bench/proxy.sh results: median [min-max] per mode and test, ratios to HAProxy and
to direct, and the goals of issue 4. Optional 4th argument: write everything as JSON."""
import json
import platform
import statistics
import sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
cpus, kernel = sys.argv[2], sys.argv[3]
out_path = sys.argv[4] if len(sys.argv) > 4 else None


def series(mode, test, key):
    return [r[key] for r in rows if r["mode"] == mode and r["test"] == test and key in r]


def med(mode, test, key):
    s = series(mode, test, key)
    return statistics.median(s) if s else float("nan")


def cell(mode, test, key, fmt):
    s = series(mode, test, key)
    if not s:
        return "-"
    return f"{fmt(statistics.median(s))} [{fmt(min(s))}-{fmt(max(s))}]"


k = lambda v: f"{v / 1000:.1f}k"
m = lambda v: f"{v:.3f}"
print(f"\nkernel {kernel}, {cpus} CPUs; proxies pinned to one core, wrk and nginx on another")
print(f"runs: {len({r['run'] for r in rows})}\n")
print("| mode | new conns/s | keep-alive req/s | p50 ms | p99 ms | proxy CPU µs/conn | proxy CPU µs/req | socket errors |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
u = lambda v: f"{v:.1f}"
for mode in ("direct", "svcplane", "haproxy"):
    errs = sum(r["errors"] for r in rows if r["mode"] == mode)
    print(
        f"| {mode} | {cell(mode, 'conn', 'rps', k)} | {cell(mode, 'keepalive', 'rps', k)} "
        f"| {cell(mode, 'latency', 'p50', m)} | {cell(mode, 'latency', 'p99', m)} "
        f"| {cell(mode, 'conn', 'cpu_us_per_req', u)} | {cell(mode, 'keepalive', 'cpu_us_per_req', u)} | {errs} |"
    )

ratios = {}
for test in ("conn", "keepalive"):
    s, h, d = (med(x, test, "rps") for x in ("svcplane", "haproxy", "direct"))
    ratios[test] = {"vs_haproxy": s / h, "vs_direct": s / d, "haproxy_vs_direct": h / d}
p99 = {x: med(x, "latency", "p99") for x in ("svcplane", "haproxy", "direct")}
print()
print("| goal | measured | met? |")
print("| --- | --- | --- |")
for test, label in (("conn", "new conns/s"), ("keepalive", "keep-alive req/s")):
    r = ratios[test]
    if r["vs_haproxy"] != r["vs_haproxy"]:  # not measured (NaN)
        continue
    print(f"| {label} >= 1.0x HAProxy | x{r['vs_haproxy']:.2f} | {'yes' if r['vs_haproxy'] >= 1.0 else 'no'} |")
    print(f"| {label} >= 0.45x direct | x{r['vs_direct']:.2f} (HAProxy x{r['haproxy_vs_direct']:.2f}) | {'yes' if r['vs_direct'] >= 0.45 else 'no'} |")
ok = p99["svcplane"] <= p99["haproxy"]
print(f"| p99 no worse than HAProxy | {p99['svcplane']:.3f} vs {p99['haproxy']:.3f} ms | {'yes' if ok else 'no'} |")

if out_path:
    with open(out_path, "w") as f:
        json.dump({"machine": {"kernel": kernel, "cpus": cpus, "python": platform.python_version()},
                   "results": rows, "ratios": ratios, "p99_ms": p99}, f, indent=2)
    print(f"\nwrote {out_path}")
