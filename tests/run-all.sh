#!/usr/bin/env bash
# The whole test suite: unit, golden and end-to-end tests over real sockets.
# Installs its prerequisites first (tests/setup.sh). Build output goes to $CARGO_TARGET_DIR
# (default: ~/.cache/inquiry-gateway/target, outside the clone, so reruns are incremental).
set -euo pipefail
cd "$(dirname "$0")/.."

tests/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/inquiry-gateway/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

cargo test --workspace --all-targets --locked
