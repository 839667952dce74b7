#!/usr/bin/env bash
# Builds Weft's eBPF programs (ebpf/, a cargo workspace of its own) into
#   ebpf/target/bpfel-unknown-none/release/weft-ebpf
# which weft-dataplane embeds at compile time (dataplane/build.rs).
#
# The bpfel target has no prebuilt `core`, so it is built from source (-Z build-std),
# which needs the standard library source. Two toolchain routes, first present wins:
#   1. Debian's rustc-web + rust-web-src (/usr/bin/rustc, library source under
#      /usr/lib/rustlib/src/rust/library), with RUSTC_BOOTSTRAP=1 for -Z flags;
#   2. rustup nightly with the rust-src component.
# WEFT_EBPF_TOOLCHAIN=debian|rustup forces one; WEFT_EBPF_OBJECT is read by
# dataplane/build.rs, not here.
# bpf-linker 0.13.0 (against LLVM 22) is installed once into the repo-local .tools/.
# Idempotent: a second run with nothing changed takes about a second.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$REPO/.tools"
BPF_LINKER_VERSION="0.13.0"
LLVM_PREFIX="${LLVM_PREFIX:-/usr/lib/llvm-22}"

say() { echo "build-ebpf: $*" >&2; }
die() { say "error: $*"; exit 1; }

# --- toolchain route -------------------------------------------------------
has_library_src() { [ -f "$1/lib/rustlib/src/rust/library/core/Cargo.toml" ]; }

WANT="${WEFT_EBPF_TOOLCHAIN:-auto}"
case "$WANT" in auto|debian|rustup) ;; *) die "WEFT_EBPF_TOOLCHAIN must be auto, debian or rustup, not '$WANT'" ;; esac
route=""
missing=()
if [ "$WANT" != rustup ]; then
  if [ -x /usr/bin/rustc ] && [ -x /usr/bin/cargo ]; then
    if has_library_src "$(/usr/bin/rustc --print sysroot)"; then
      route=debian
      CARGO_CMD=(env RUSTC=/usr/bin/rustc /usr/bin/cargo)
    else
      missing+=("Debian route: /usr/bin/rustc has no library source (apt-get install rust-web-src)")
    fi
  else
    missing+=("Debian route: no /usr/bin/rustc and /usr/bin/cargo (apt-get install rustc-web cargo-web rust-web-src)")
  fi
fi
if [ -z "$route" ] && [ "$WANT" != debian ]; then
  if command -v rustup >/dev/null 2>&1 && rustup run nightly rustc --version >/dev/null 2>&1; then
    if has_library_src "$(rustup run nightly rustc --print sysroot)"; then
      route=rustup-nightly
      CARGO_CMD=(rustup run nightly cargo)
    else
      missing+=("rustup route: nightly has no rust-src (rustup component add rust-src --toolchain nightly)")
    fi
  else
    missing+=("rustup route: no rustup nightly toolchain (rustup toolchain install nightly --component rust-src)")
  fi
fi
if [ -z "$route" ]; then
  say "no toolchain can build core for bpfel-unknown-none (-Z build-std needs the library source):"
  for m in "${missing[@]}"; do say "  - $m"; done
  exit 1
fi
say "toolchain: $route ($("${CARGO_CMD[@]}" --version))"

# --- bpf-linker --------------------------------------------------------------
LINKER="$TOOLS/bin/bpf-linker"
if [ -x "$LINKER" ] && "$LINKER" --version 2>/dev/null | grep -q " $BPF_LINKER_VERSION\b"; then
  :
else
  [ -x "$LLVM_PREFIX/bin/llvm-config" ] \
    || die "bpf-linker needs LLVM 22 at $LLVM_PREFIX (apt-get install llvm-22-dev libpolly-22-dev, see scripts/install-deps.sh)"
  say "installing bpf-linker $BPF_LINKER_VERSION (LLVM 22) into $TOOLS (about a minute, once)"
  PATH="$LLVM_PREFIX/bin:$PATH" LLVM_SYS_221_PREFIX="$LLVM_PREFIX" \
    "${CARGO_CMD[@]}" install --quiet --locked --root "$TOOLS" bpf-linker \
      --version "$BPF_LINKER_VERSION" --no-default-features --features llvm-22 \
    || die "bpf-linker $BPF_LINKER_VERSION failed to build (see above)"
fi

# --- the programs --------------------------------------------------------------
# An explicit manifest: without ebpf/Cargo.toml cargo would walk up to the root
# workspace and try to build all of it for bpfel.
MANIFEST="$REPO/ebpf/Cargo.toml"
[ -f "$MANIFEST" ] || die "$MANIFEST is missing"
# RUSTC_BOOTSTRAP lets Debian's stable rustc take -Z build-std (a no-op on nightly).
PATH="$TOOLS/bin:$LLVM_PREFIX/bin:$PATH" RUSTC_BOOTSTRAP=1 \
  "${CARGO_CMD[@]}" build --manifest-path "$MANIFEST" --release \
    --target bpfel-unknown-none -Z build-std=core
OBJECT="$REPO/ebpf/target/bpfel-unknown-none/release/weft-ebpf"
[ -f "$OBJECT" ] || die "build succeeded but $OBJECT is missing"
say "built $OBJECT"
