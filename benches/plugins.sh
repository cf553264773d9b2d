#!/usr/bin/env bash
# Routing-plugin benchmark: builds the example plugins and the benchmark (release), then measures
# the cost per inquiry of each plugin in the sandbox against the same rules compiled natively,
# in one run: ROUNDS (default 5) interleaved rounds of SECONDS_PER_RUN (default 1) per cell,
# medians reported (about 1 minute).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/inquiry-gateway/target}"
plugins/build.sh rust go c
cargo build --release --locked -p inquiry-benches --bin plugin-bench
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr); commit $(git rev-parse --short HEAD)"
"$CARGO_TARGET_DIR/release/plugin-bench"
