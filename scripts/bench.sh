#!/usr/bin/env bash
# `make bench`: benchmarks that print figures, each against a baseline
# measured in the same run. Not a test: nothing here fails on a slow machine.
set -euo pipefail
cd "$(dirname "$0")/.."
target/release/weft-bench
