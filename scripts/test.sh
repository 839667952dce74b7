#!/usr/bin/env bash
# `make test`: the whole suite, then one summary line over every test binary
# (cargo's own last line is that of whichever binary ran last, often an
# empty doc-test run).
set -uo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
mkdir -p target
log=target/test-output.log
# --show-output: the figures tests print (simulation message counts, timings)
# stay in the log even when they pass.
# The calculation is pure: no tokio, netlink or aya behind it.
if "$CARGO" tree -p weft-calc -e normal --prefix none | grep -E '^(tokio|aya|rtnetlink|netlink)[-_a-z]* v' >&2; then
    echo "test.sh: weft-calc depends on the crates above; it must stay free of I/O" >&2
    exit 1
fi
"$CARGO" test --release --workspace --no-fail-fast -- --test-threads=2 --show-output 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
awk '/^test result:/ { passed += $4; failed += $6; ignored += $8 }
     END { printf "total: %d passed, %d failed, %d skipped\n", passed, failed, ignored }' "$log"
exit "$status"
