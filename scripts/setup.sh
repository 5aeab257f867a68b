#!/usr/bin/env bash
# Installs what building Ember needs beyond the Rust toolchain: protoc (for the gRPC code), and
# with `--test`, what the tests need: a real etcd (Debian's etcd-server) for the cluster tests,
# and Python 3 with the ADBC Flight SQL driver, pyarrow, and PySpark's thin Spark Connect client
# with pytest (from PyPI) for the client tests, and
# moto's S3 server (PyPI) for the object-store tests, kubectl (its kustomize) and
# kubernetes-validate (PyPI) for the Kubernetes manifests, and Chromium with its WebDriver for the
# web UI test.
# Idempotent; uses Debian's packages (run as root, or with sudo available).
set -euo pipefail

missing=()
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
if [ "${1:-}" = "--test" ]; then
  # Debian installs etcd under /usr/bin; the tests start their own etcd processes.
  command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
  command -v python3 >/dev/null 2>&1 || missing+=(python3 python3-pip)
  # kubectl renders the Kubernetes overlays (its built-in kustomize).
  command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)
  # The compose test builds images on a debootstrap base and runs docker-compose.
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
  # The web UI test drives a real headless Chromium over WebDriver.
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ "${1:-}" = "--test" ] && ! { python3 -c 'import adbc_driver_flightsql, pyarrow, boto3, yaml, pytest, pyspark.sql.connect.proto' 2>/dev/null && python3 -c 'import pyspark; assert pyspark.__version__ == "4.2.0"' 2>/dev/null && command -v moto_server >/dev/null && command -v kubernetes-validate >/dev/null; }; then
  echo "installing: adbc-driver-flightsql pyarrow moto[server] kubernetes-validate pyspark-client pytest (PyPI)" >&2
  pip=(python3 -m pip install -q --disable-pip-version-check adbc-driver-flightsql pyarrow 'moto[server]' kubernetes-validate pyyaml 'pyspark-client==4.2.0' pytest)
  # A Debian-managed Python refuses plain installs; the test machine is ours to change.
  "${pip[@]}" 2>/dev/null || "${pip[@]}" --break-system-packages
fi

# The compose test needs a running Docker Engine: start the daemon if it is installed but not
# running (CI machines start with none of the session's processes).
if [ "${1:-}" = "--test" ] && command -v dockerd >/dev/null 2>&1 && ! docker info >/dev/null 2>&1; then
  echo "starting the Docker daemon" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo sh -c 'nohup dockerd >/var/log/ember-dockerd.log 2>&1 &'
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  docker info >/dev/null 2>&1 || { echo "the Docker daemon did not start (see /var/log/ember-dockerd.log)" >&2; exit 1; }
fi
