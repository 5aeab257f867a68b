#!/usr/bin/env bash
# Runs Ember's whole test suite: installs what is missing, checks formatting and clippy lints,
# builds once, runs the doc tests, then every other test with cargo-nextest (or cargo test
# where nextest is not installed).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
# One target directory outside the clone, reused by later runs on the same machine.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/ember-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
start=$(date +%s)
# Style and lints first: a formatting slip or a clippy warning fails the run.
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Doc tests first (nextest does not run them), so the test runner's summary comes last.
cargo test --workspace --doc
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --all-targets --profile ci --no-fail-fast
else
  cargo test --workspace --all-targets --no-fail-fast
fi
echo "tests finished in $(( $(date +%s) - start ))s"
