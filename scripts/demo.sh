#!/usr/bin/env bash
# The embedded demo: builds Ember, generates TPC-H SF 0.1 into ./data (once), and runs TPC-H Q1
# and Q3 on a scheduler + 2 executors embedded in one process (real loopback gRPC and Flight).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/ember-target}"
cargo build --workspace --bins
ember="$CARGO_TARGET_DIR/debug/ember"
data="data/tpch-sf0.1"
if [ ! -e "$data/_SUCCESS" ]; then
  "$ember" datagen tpch --scale-factor 0.1 --output "$data"
fi
"$ember" sql --local --executors 2 --tables "$data" -f tpch/q1.sql
"$ember" sql --local --executors 2 --tables "$data" -c "EXPLAIN $(cat tpch/q3.sql)" --format csv
"$ember" sql --local --executors 2 --tables "$data" -f tpch/q3.sql
