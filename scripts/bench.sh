#!/usr/bin/env bash
# `make bench`: benchmarks that print figures, each against a baseline
# measured in the same run. Not a test: nothing here fails on a slow machine.
# All sections by default; `scripts/bench.sh throughput --seconds 10`,
# `scripts/bench.sh policy policy-apply policy-memory` (or
# WEFT_BENCH_SECTIONS=throughput make bench) runs a part, `--help` lists the knobs.
set -euo pipefail
cd "$(dirname "$0")/.."
exec target/release/weft-bench "$@"
