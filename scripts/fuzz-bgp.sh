#!/usr/bin/env bash
# Fuzzes the BGP codec (bgp/fuzz, fuzz target `decode`): arbitrary bytes are
# decoded with and without 4-octet AS numbers; decoding must not panic and
# whatever decodes must survive an encode/decode round trip unchanged.
#
# Usage: scripts/fuzz-bgp.sh [SECONDS]   (default 600)
# Extra arguments after SECONDS go to libFuzzer (e.g. -jobs=2).
#
# Needs the rustup `nightly` toolchain (for -Z sanitizer; no rust-src needed).
# cargo-fuzz is installed once into the repo-local .tools/. The corpus and any
# crashing inputs land in bgp/fuzz/corpus and bgp/fuzz/artifacts (gitignored);
# reproduce a crash with
#   .tools/bin/cargo-fuzz run decode <artifact>   (from bgp/, with +nightly)
# Set FUZZ_SANITIZER=none if AddressSanitizer is unavailable.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$REPO/.tools"
SECONDS_TO_RUN="${1:-600}"
shift || true

if [ ! -x "$TOOLS/bin/cargo-fuzz" ]; then
    cargo install cargo-fuzz --locked --root "$TOOLS"
fi
export PATH="$TOOLS/bin:$PATH"

cd "$REPO/bgp"
exec cargo +nightly fuzz run -s "${FUZZ_SANITIZER:-address}" decode -- \
    -max_total_time="$SECONDS_TO_RUN" "$@"
