#!/usr/bin/env bash
# Everything CI runs, on a fresh machine or a developer's: system packages the tests need,
# then formatting, lints and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use. Installed only when missing (needs root, as CI is).
packages=(
  procps          # kill(1), used to send SIGTERM in tests
  bind9-dnsutils  # dig(1), the DNS client of tests/dns.rs
  iproute2        # ip(8): network namespaces and veth pairs of tests/userspace.rs
  util-linux      # nsenter(1), taskset(1): ebpf tests (no /sys remount), svcplane bench
  clang llvm libbpf-dev  # compile ebpf/bpf/*.bpf.c (without them the ebpf mode is left out)
  bpftool         # tests/ebpf.rs checks that cleanup detached every program
  python3         # the socket client of the eBPF tests (ebpf/tests/client.py)
  haproxy         # svcplane bench --modes haproxy (tests/bench.rs)
  iptables        # svcplane bench --modes iptables: iptables-restore (tests/bench.rs)
  nftables        # svcplane bench --modes nftables: nft (tests/bench.rs)
  knot            # knotd: svcplane bench's DNS comparison (tests/bench.rs, --dns auto)
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh: missing packages ${missing[*]}; run as root or install them" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  # Servers (haproxy, knot) must not start as services on the host.
  policy=/usr/sbin/policy-rc.d
  made_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && made_policy=1
  fi
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
  if [ -n "$made_policy" ]; then rm -f "$policy"; fi
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
