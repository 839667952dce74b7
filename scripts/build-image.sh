#!/usr/bin/env bash
# Builds Weft's image (weft-agent, weft-cni, weftctl in /usr/local/bin)
# without pulling any base image, and saves it as an archive that
# `kind load image-archive` and `ctr -n k8s.io images import` accept.
#
# The binaries are linked against glibc, so the image's root filesystem is
# made here: the three binaries, exactly the shared libraries `ldd` lists
# for them and the dynamic loader, each at the path the binaries look for
# it; then `podman build` of a FROM scratch Containerfile that copies it.
# podman works in a storage of its own (vfs, in a temporary directory,
# removed afterwards), so the machine's image store is neither used nor
# changed: the archive is the product.
#
#   IMAGE=localhost/weft:dev scripts/build-image.sh [ARCHIVE]
#
# IMAGE is set by `make image` (the Makefile holds the one name the
# DaemonSet runs). ARCHIVE defaults to target/weft-image.tar. The binaries
# come from $WEFT_BIN_DIR (default target/release; `make build` first).
set -euo pipefail
cd "$(dirname "$0")/.."

: "${IMAGE:?set IMAGE to the image name:tag (make image does)}"
BIN_DIR=${WEFT_BIN_DIR:-$PWD/target/release}
ARCHIVE=${1:-$PWD/target/weft-image.tar}
BINARIES=(weft-agent weft-cni weftctl)

for tool in podman ldd tar; do
    command -v "$tool" >/dev/null || {
        echo "build-image: $tool is missing (scripts/install-deps.sh installs podman)" >&2
        exit 1
    }
done
for bin in "${BINARIES[@]}"; do
    [ -x "$BIN_DIR/$bin" ] || {
        echo "build-image: $BIN_DIR/$bin is missing: run \`make build\` first" >&2
        exit 1
    }
done

WORK=$(mktemp -d /tmp/weft-image.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
ROOTFS=$WORK/context/rootfs
mkdir -p "$ROOTFS/usr/local/bin" "$ROOTFS/tmp"
chmod 1777 "$ROOTFS/tmp"

# The libraries and the loader, at the paths ldd resolved them to (the
# loader's path is the one written in the binaries' PT_INTERP), copied as
# files (-L: the host's may be symlinks).
libs=()
for bin in "${BINARIES[@]}"; do
    install -m 0755 "$BIN_DIR/$bin" "$ROOTFS/usr/local/bin/$bin"
    # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and
    # "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso has no file.
    out=$(ldd "$BIN_DIR/$bin") || {
        echo "build-image: ldd $bin failed: $out" >&2
        exit 1
    }
    if grep -q "not found" <<<"$out"; then
        echo "build-image: $bin needs a library this machine lacks:" >&2
        grep "not found" <<<"$out" >&2
        exit 1
    fi
    while read -r lib; do
        libs+=("$lib")
    done < <(awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' <<<"$out")
done
mapfile -t libs < <(printf '%s\n' "${libs[@]}" | sort -u)
for lib in "${libs[@]}"; do
    mkdir -p "$ROOTFS$(dirname "$lib")"
    cp -L "$lib" "$ROOTFS$lib"
done

cat >"$WORK/context/Containerfile" <<'EOF'
FROM scratch
COPY rootfs/ /
CMD ["/usr/local/bin/weft-agent"]
EOF

# podman with its own storage and configuration (see tests/tests/podman.rs
# for why runc, cgroupfs and a file events log on these machines).
cat >"$WORK/containers.conf" <<'EOF'
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
podman_() {
    CONTAINERS_CONF=$WORK/containers.conf TMPDIR=$WORK \
        podman --root "$WORK/storage" --runroot "$WORK/run" --storage-driver vfs "$@"
}

version=$("$BIN_DIR/weft-agent" --version | awk '{print $2}')
# --timestamp 0: the same binaries give the same image.
podman_ build --quiet --timestamp 0 \
    --label "org.opencontainers.image.title=weft" \
    --label "org.opencontainers.image.version=$version" \
    --tag "$IMAGE" --file "$WORK/context/Containerfile" "$WORK/context" >/dev/null
mkdir -p "$(dirname "$ARCHIVE")"
podman_ save --quiet --format docker-archive --output "$WORK/image.tar" "$IMAGE"
mv "$WORK/image.tar" "$ARCHIVE"

size=$(du -h "$ARCHIVE" | cut -f1)
echo "build-image: $IMAGE ($version: ${BINARIES[*]} and ${#libs[@]} files of glibc) saved as $ARCHIVE ($size)"
echo "build-image: load it with \`kind load image-archive $ARCHIVE\` or \`ctr -n k8s.io images import $ARCHIVE\`"
