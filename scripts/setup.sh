#!/usr/bin/env bash
# Installs what building Ember needs beyond the Rust toolchain: protoc (for the gRPC code), and
# with `--test`, what the tests need: a real etcd (Debian's etcd-server) for the cluster tests.
# Idempotent; uses Debian's packages (run as root, or with sudo available).
set -euo pipefail

missing=()
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
if [ "${1:-}" = "--test" ]; then
  # Debian installs etcd under /usr/bin; the tests start their own etcd processes.
  command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
