# Weft's entry points. `make demo` and `make test` work on a fresh Debian 12
# machine as root: they install what is missing first (scripts/install-deps.sh).

SHELL := /bin/bash
# rustup's cargo if there is one, else Debian's (cargo-web, installed by deps).
CARGO ?= $(shell command -v cargo 2>/dev/null || echo /usr/bin/cargo)
RELEASE := target/release
WEFTCTL := $(RELEASE)/weftctl
export WEFT_BIN_DIR := $(CURDIR)/$(RELEASE)
# The image `make image` builds and deploy/daemonset.yaml runs (a test keeps
# them equal). "localhost/": the name podman gives a local image, which
# containerd keeps as it is when the archive is loaded into a node.
IMAGE := localhost/weft:dev

.PHONY: all deps ebpf build image control-plane test demo demo-down bench clean

all: build

deps:
	@bash scripts/install-deps.sh

ebpf: deps
	@bash scripts/build-ebpf.sh

# weft-agent, weft-cni and weftctl in target/release/ (the eBPF object is embedded in weft-agent).
build: ebpf
	$(CARGO) build --release --workspace --bins

# An image holding weft-agent, weft-cni and weftctl, built from their files
# and the shared libraries they load (no base image is pulled), saved as
# target/weft-image.tar for `kind load image-archive` or `ctr images import`.
image: build
	@IMAGE=$(IMAGE) bash scripts/build-image.sh

# The Kubernetes control plane the tests run against (etcd, kube-apiserver,
# kube-controller-manager, kubectl), built with Go into .tools once per version.
control-plane:
	@bash scripts/build-control-plane.sh

# The whole suite: unit tests of the pure logic, then the root-only
# integration tests (network namespaces, the real binaries, podman, the
# control plane).
test: build control-plane
	@CARGO=$(CARGO) bash scripts/test.sh

# The main job: a 3-node lab with 2 pods per node, and traffic between all pods.
demo: build
	@bash scripts/demo.sh

demo-down:
	$(WEFTCTL) lab down

bench: build control-plane
	@bash scripts/bench.sh

clean:
	-$(WEFTCTL) lab down 2>/dev/null
	$(CARGO) clean
	rm -rf ebpf/target
