#!/usr/bin/env bash
# Builds the Ember images on this machine: ember:dev (the `ember` binary) and ember-etcd:dev
# (Debian's etcd), from a local base image made with debootstrap (ember-base:bookworm, built
# once and kept; rebuilt when missing), since no registry can be reached here.
#
#   scripts/docker-images.sh [path/to/ember]     # default: the debug build in CARGO_TARGET_DIR
#
# Elsewhere: docker build --build-arg BASE=debian:bookworm-slim -f docker/Dockerfile CONTEXT
set -euo pipefail
cd "$(dirname "$0")/.."
binary="${1:-${CARGO_TARGET_DIR:-/var/tmp/ember-target}/debug/ember}"
[ -x "$binary" ] || { echo "no ember binary at $binary (build it first)" >&2; exit 1; }
base="${EMBER_BASE_IMAGE:-ember-base:bookworm}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

if ! docker image inspect "$base" >/dev/null 2>&1; then
  command -v debootstrap >/dev/null || { $sudo apt-get update -qq; DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq debootstrap >/dev/null; }
  rootfs="$(mktemp -d)"
  trap '$sudo rm -rf "$rootfs"' EXIT
  echo "building the base image $base with debootstrap" >&2
  $sudo debootstrap --variant=minbase bookworm "$rootfs" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >/dev/null
  $sudo rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc "$rootfs"/usr/share/man
  $sudo tar -C "$rootfs" -c . | docker import - "$base" >/dev/null
fi

command -v etcd >/dev/null || scripts/setup.sh --test
context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
# Debug line tables are of no use in the image.
objcopy --strip-debug "$binary" "$context/ember" 2>/dev/null || cp "$binary" "$context/ember"
cp "$(command -v etcd)" "$context/etcd"
docker build -q --build-arg BASE="$base" -t "${EMBER_IMAGE:-ember:dev}" -f docker/Dockerfile "$context" >/dev/null
docker build -q --build-arg BASE="$base" -t "${EMBER_ETCD_IMAGE:-ember-etcd:dev}" -f docker/etcd.Dockerfile "$context" >/dev/null
echo "built ${EMBER_IMAGE:-ember:dev} and ${EMBER_ETCD_IMAGE:-ember-etcd:dev} on $base" >&2
