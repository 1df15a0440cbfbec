#!/usr/bin/env bash
# The userspace proxy against a direct connection and HAProxy (issue 4's benchmark): now a
# thin wrapper of `svcplane bench`, which builds the namespaces, backends and load generator
# itself. Extra flags go to `svcplane bench` (see `svcplane bench --help`), e.g.
#
#   bench/proxy.sh                          # 3 interleaved runs, 2 s per test and mode
#   bench/proxy.sh --runs 5 --duration 5 --out /tmp/proxy
#
# Needs root and haproxy (Debian: apt-get install -y haproxy).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
exec target/release/svcplane bench --modes direct,userspace,haproxy --services 0 --dns off \
    --out "${TMPDIR:-/tmp}/svcplane-proxy-bench" "$@"
