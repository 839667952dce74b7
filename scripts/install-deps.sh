#!/usr/bin/env bash
# Installs the system packages Weft's build, lab and tests need on Debian 12 (run as root).
# Idempotent: packages already present are left alone, so a second run costs a few seconds.
set -euo pipefail

PACKAGES=(
  # eBPF build: Debian's Rust ships the core library source that -Z build-std needs,
  # and bpf-linker links against LLVM 22 (see scripts/build-ebpf.sh).
  rustc-web cargo-web rust-web-src llvm-22-dev libpolly-22-dev zlib1g-dev libzstd-dev
  # lab and tests: namespaces, tc, captures, ping
  iproute2 iputils-ping tcpdump procps
  # `make bench`: single-stream TCP throughput between pods and between nodes
  iperf3
  # a real libcni runtime for the conformance test
  podman containernetworking-plugins runc busybox-static
  # the image test imports `make image`'s archive as `kind load` does
  containerd
  # real BGP peers for the route distributor's tests
  bird2 gobgpd
  # the test control plane's certificates (lab/src/control_plane.rs)
  openssl
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all system packages present"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages (${missing[*]}) and not root: install them or run as root" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
