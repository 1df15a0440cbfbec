"""Reads wrk's output on stdin; prints one JSON object: mode, test, requests/s, p50/p99 (ms),
socket errors and, for a proxy, its CPU microseconds per request (bench/proxy.sh).

Arguments: mode test [proxy-cpu-ticks clock-ticks-per-second duration-seconds]"""
import json
import re
import sys

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * UNITS[m.group(2)] if m else None


mode, test = sys.argv[1], sys.argv[2]
out = {"mode": mode, "test": test}
errors = 0
for line in sys.stdin:
    f = line.split()
    if line.startswith("Requests/sec:"):
        out["rps"] = float(f[1])
    elif len(f) == 2 and f[0] in ("50%", "99%"):
        out["p" + f[0].rstrip("%")] = ms(f[1])
    elif line.strip().startswith("Socket errors:"):
        errors += sum(int(x) for x in re.findall(r"\d+", line))
    elif line.strip().startswith("Non-2xx"):
        errors += int(f[-1])
out["errors"] = errors
if len(sys.argv) > 5 and sys.argv[1] != "direct" and out.get("rps"):
    ticks, hz, secs = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    out["cpu_us_per_req"] = ticks / hz * 1e6 / (out["rps"] * secs)
if "rps" not in out:
    sys.exit(f"wrk printed no Requests/sec for {mode} {test}")
print(json.dumps(out))
