#!/usr/bin/env bash
# Compares two builds of the gateway on the side-by-side job (compare.sh's configuration: single
# POSTs, the Rust example routing plugin, the Kafka sink with acks=all), alternating them so that
# both see the same machine: A, B, A, B... Prints one line per run: inquiries/s, p99 and the
# gateway's CPU per inquiry (from /proc, over the load generator's run).
#
#   cp "$CARGO_TARGET_DIR/release/inquiry-gateway" /tmp/gw-before   # build, copy, change, build...
#   benches/ab.sh /tmp/gw-before "$CARGO_TARGET_DIR/release/inquiry-gateway"
#
# Environment: ROUNDS (3), CONNS (256; 4 with BATCH), SECONDS_PER_RUN (10), BATCH (NDJSON
# batches of that many inquiries instead of single POSTs), CARGO_TARGET_DIR (for the load
# generator). Starts Kafka (tests/services/kafka.sh start) when it is not running.
set -euo pipefail
cd "$(dirname "$0")/.."
(($# == 2)) || { echo "usage: benches/ab.sh GATEWAY_BINARY_A GATEWAY_BINARY_B" >&2; exit 2; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/inquiry-gateway/target}"
rounds="${ROUNDS:-3}"
batch="${BATCH:-0}"
if ((batch > 0)); then
  conns="${CONNS:-4}"
  target=(--url http://127.0.0.1:18081/v1/inquiries/batch --batch "$batch")
else
  conns="${CONNS:-256}"
  target=(--url http://127.0.0.1:18081/v1/inquiries)
fi
secs="${SECONDS_PER_RUN:-10}"
cargo build --release --locked -q -p inquiry-benches --bin loadgen
loadgen="$CARGO_TARGET_DIR/release/loadgen"
plugin="${PLUGINS_OUT:-$HOME/.cache/inquiry-gateway/plugins}/example-rust.wasm"
[[ -f "$plugin" ]] || plugins/build.sh rust
tests/services/kafka.sh status >/dev/null 2>&1 || tests/services/kafka.sh start >&2
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; sleep 0.5; rm -rf "$work"' EXIT
trap 'exit 143' INT TERM

run_one() {
  local bin="$1" label="$2"
  rm -rf "$work/store"
  benches/gateway-config.sh "$work" "ab$(date +%s%N)." "$plugin" > "$work/gateway.toml"
  "$bin" run --config "$work/gateway.toml" > "$work/gateway.log" 2>&1 &
  local gw=$!
  for _ in $(seq 300); do
    curl -sf 127.0.0.1:19091/readyz 2>/dev/null |
      python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["sinks"]["kafka"]["status"]=="ready" else 1)' 2>/dev/null && break
    sleep 0.2
  done
  local before after
  before=$(awk '{print $14 + $15}' "/proc/$gw/stat")
  "$loadgen" "${target[@]}" --connections "$conns" --seconds "$secs" \
    --warmup-seconds 0 --label "$label" > "$work/loadgen.json"
  after=$(awk '{print $14 + $15}' "/proc/$gw/stat")
  kill "$gw"; wait "$gw" 2>/dev/null || true
  python3 - "$work/loadgen.json" "$before" "$after" "$(getconf CLK_TCK)" "$batch" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
cpu = (int(sys.argv[3]) - int(sys.argv[2])) / int(sys.argv[4])
print(f"{r['label']}: {r['inquiries_per_s']:,} inquiries/s, p99 {r['p99_us'] / 1000:.1f} ms, "
      f"{cpu * 1e6 / max(r['requests'] * max(int(sys.argv[5]), 1), 1):.1f} µs of gateway CPU per inquiry, "
      f"errors {r['errors']}, refused {r['refused']}")
PY
}

for round in $(seq "$rounds"); do
  run_one "$1" "A-$round"
  run_one "$2" "B-$round"
done
