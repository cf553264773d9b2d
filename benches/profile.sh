#!/usr/bin/env bash
# Profiles the gateway on the side-by-side job (compare.sh's configuration: single POSTs, the Rust
# example routing plugin, the Kafka sink with acks=all) at saturation, and prints where its CPU
# goes: per thread, and the inclusive share of the gateway's own functions.
#
#   benches/profile.sh            # 256 connections, 20 s of load, perf records 8 s of it
#
# Environment: CONNS (256), SECONDS_PER_RUN (20), RECORD_SECONDS (8), OUT (a directory to keep
# perf.data and the folded stacks in; default a temporary one), CARGO_TARGET_DIR. Needs `perf`
# (Debian: linux-perf). Starts Kafka (tests/services/kafka.sh start) when it is not running.
# Besides the profile it prints the load generator's result and the gateway's CPU per inquiry
# over the whole run (perf's own overhead included: compare runs of this script with each other,
# not with compare.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/inquiry-gateway/target}"
conns="${CONNS:-256}"
secs="${SECONDS_PER_RUN:-20}"
record="${RECORD_SECONDS:-8}"
command -v perf >/dev/null || { echo "profile: perf is not installed (Debian: linux-perf)" >&2; exit 1; }
(( record < secs )) || { echo "profile: RECORD_SECONDS must be below SECONDS_PER_RUN" >&2; exit 1; }
cargo build --release --locked -q -p inquiry-gateway -p inquiry-benches
bin="$CARGO_TARGET_DIR/release"
plugin="${PLUGINS_OUT:-$HOME/.cache/inquiry-gateway/plugins}/example-rust.wasm"
[[ -f "$plugin" ]] || plugins/build.sh rust
work="${OUT:-$(mktemp -d)}"
mkdir -p "$work"
rm -rf "$work/store"
# The store goes (gigabytes); perf.data and the stacks stay in $work.
trap 'kill $(jobs -p) 2>/dev/null || true; sleep 0.5; rm -rf "$work/store"' EXIT
trap 'exit 143' INT TERM
tests/services/kafka.sh status >/dev/null 2>&1 || tests/services/kafka.sh start >&2
benches/gateway-config.sh "$work" "prof$(date +%s)." "$plugin" > "$work/gateway.toml"
"$bin/inquiry-gateway" run --config "$work/gateway.toml" > "$work/gateway.log" 2>&1 &
gw=$!
sleep 0.5; kill -0 "$gw" 2>/dev/null || { cat "$work/gateway.log" >&2; exit 1; }
for _ in $(seq 300); do
  curl -sf 127.0.0.1:19091/readyz | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["sinks"]["kafka"]["status"]=="ready" else 1)' 2>/dev/null && break
  sleep 0.2
done
kill -0 "$gw" 2>/dev/null || { cat "$work/gateway.log" >&2; exit 1; }
cpu0="$(awk '{print $14+$15}' "/proc/$gw/stat")"
"$bin/loadgen" --url http://127.0.0.1:18081/v1/inquiries --connections "$conns" --seconds "$secs" \
  --warmup-seconds 0 --label "gateway-profile-c$conns" > "$work/loadgen.json" &
loadgen=$!
sleep $(( (secs - record) / 2 ))
perf record -q -F 499 --call-graph dwarf,16384 -p "$gw" -o "$work/perf.data" -- sleep "$record" 2>&1 | grep -v "^\[ perf record" >&2 || true
wait "$loadgen"
cpu1="$(awk '{print $14+$15}' "/proc/$gw/stat")"
kill -TERM "$gw"; wait "$gw" || true
cat "$work/loadgen.json"
python3 - "$work/loadgen.json" "$cpu0" "$cpu1" "$(getconf CLK_TCK)" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))
cpu = (int(sys.argv[3]) - int(sys.argv[2])) / int(sys.argv[4])
print(f"gateway CPU: {cpu:.2f} s for {run['requests']} inquiries = {cpu * 1e6 / max(run['requests'], 1):.1f} us per inquiry")
PY
perf script -i "$work/perf.data" --no-inline 2>/dev/null > "$work/stacks.txt"
python3 benches/profile.py "$work/stacks.txt"
echo "profile: perf.data and stacks in $work" >&2
