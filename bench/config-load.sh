#!/usr/bin/env bash
# Manifest load benchmark of the config crate: cold load, one-file change latency through
# the watcher, peak RSS, next to the goals. See bench/README.md.
#
#   bench/config-load.sh                      # 10,000 Services x 10 endpoints in 1000 files
#   bench/config-load.sh --services 1000 --files 100 --json /tmp/load.json
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --release --quiet -p svcplane-config --example bench_load -- "$@"
