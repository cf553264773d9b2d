#!/usr/bin/env bash
# The gateway side by side with its peer (issue 8): one run, one machine, the same Kafka broker
# and the same load generator, the identical job (POST one inquiry -> route by the example rules
# -> Kafka, acks=all) on
#
#   peer     benches/peer (the benthos core of Redpanda Connect v4.60.0: http_server with
#            sync_response, the rules in bloblang, kafka_franz on franz-go, acks=all)
#   gateway  release build, the Kafka sink and the Rust example routing plugin (wasm)
#   bare     the bare-hyper ceiling (benches/src/bin/bare-server.rs: no routing, no Kafka)
#
# For each: saturation (closed loop, the best of the CONNS connection counts), then open-loop
# runs at 25/50/75% of the PEER's saturation throughput (fixed-rate arrivals, latency from each
# request's scheduled send time). Each run records the load generator's numbers, the server's
# CPU (utime+stime over the measured window) and RSS (VmRSS at the end of the window, still
# under load), the broker's CPU, and for the gateway the Kafka deliveries and the commit ->
# Kafka ack histogram over the window (its /metrics).
#
#   benches/compare.sh                              # SECONDS_PER_RUN=10: about 7 minutes
#   SECONDS_PER_RUN=5 benches/compare.sh --quick    # regression check: under 2 minutes when built
#
# Environment: SECONDS_PER_RUN (10; 5 with --quick), WARMUP_SECONDS (2), CONNS (saturation
# connection counts, "64 256 1024"; "256" with --quick), RATE_CONNS (connections of the open-loop
# runs, 256), OUT (where the JSON lines go; default a temporary file, printed at the end),
# CARGO_TARGET_DIR (~/.cache/inquiry-gateway/target). Everything runs under nice -n 19.
# Starts Kafka (tests/services/kafka.sh start) when it is not running and leaves it running.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
[[ "${1:-}" == "--quick" ]] && quick=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/inquiry-gateway/target}"
secs="${SECONDS_PER_RUN:-$([[ $quick == 1 ]] && echo 5 || echo 10)}"
warm="${WARMUP_SECONDS:-2}"
conns="${CONNS:-$([[ $quick == 1 ]] && echo 256 || echo "64 256 1024")}"
rate_conns="${RATE_CONNS:-256}"
n="nice -n 19"

$n cargo build --release --locked -q -p inquiry-gateway -p inquiry-benches
bin="$CARGO_TARGET_DIR/release"
peer_bin="$(benches/peer.sh)"
plugin="${PLUGINS_OUT:-$HOME/.cache/inquiry-gateway/plugins}/example-rust.wasm"
[[ -f "$plugin" ]] || $n plugins/build.sh rust
work="$(mktemp -d)"
out="${OUT:-$work/results.jsonl}"
[[ -n "${OUT:-}" ]] && : > "$out"
trap 'kill $(jobs -p) 2>/dev/null || true; { [[ -n "${OUT:-}" ]] || cp "$out" /tmp/compare-last.jsonl 2>/dev/null || true; }; rm -rf "$work"' EXIT
trap 'exit 143' INT TERM

$n tests/services/kafka.sh status >/dev/null 2>&1 || $n tests/services/kafka.sh start >&2
kafka_pid="$(cat "${SERVICES_DIR:-$HOME/.cache/inquiry-gateway/services}/kafka/node-${KAFKA_PORT:-9092}/kafka.pid")"
prefix="cmp$(date +%s)."
$n tests/services/kafka.sh create-topic "${prefix}peer.inquiries.routed" 6 >/dev/null

wait_port() { for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
rss_kib() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
# snap PID FILE [ADMIN]: CPU ticks and RSS of PID and the broker's CPU; the gateway's metrics.
snap() {
  rm -f "$2.metrics"
  printf '{"t":%s,"cpu":%s,"rss_kib":%s,"kafka_cpu":%s}\n' "$(date +%s.%N)" "$(cpu_ticks "$1")" "$(rss_kib "$1")" \
    "$(cpu_ticks "$kafka_pid")" > "$2"
  if [[ -n "${3:-}" ]]; then curl -sf "$3/metrics" > "$2.metrics" || true; fi
}
# load SYSTEM PID ADMIN LOADGEN-ARGS...: one measured run; appends one JSON line to $out.
load() {
  local system=$1 pid=$2 admin=$3
  shift 3
  (sleep "$warm"; snap "$pid" "$work/s0" "$admin"; sleep "$secs"; snap "$pid" "$work/s1" "$admin") &
  local sampler=$!
  $n "$bin/loadgen" --seconds "$secs" --warmup-seconds "$warm" "$@" > "$work/loadgen.json"
  wait "$sampler"
  python3 benches/compare.py merge "$system" "$work/loadgen.json" "$work/s0" "$work/s1" | tee -a "$out"
}
# saturate SYSTEM PID ADMIN URL: the closed-loop runs; prints the best inquiries/s.
saturate() {
  for c in $conns; do
    load "$1" "$2" "$3" --url "$4" --connections "$c" --label "$1-saturation-c$c" >&2
    if [[ -n "$3" ]]; then drain "$3"; fi
  done
  python3 benches/compare.py best "$out" "$1"
}
# at_rates SYSTEM PID ADMIN URL: open-loop runs at 25/50/75% of the peer's saturation.
at_rates() {
  for pct in 25 50 75; do
    local rate=$(( peer_max * pct / 100 ))
    load "$1" "$2" "$3" --url "$4" --connections "$rate_conns" --rate "$rate" --label "$1-rate-$pct" >&2
    if [[ -n "$3" ]]; then drain "$3"; fi
  done
}
# drain ADMIN: waits until the gateway's Kafka spool is empty (after a run outpaced forwarding).
drain() {
  for _ in $(seq 600); do
    curl -sf "$1/readyz" | python3 -c 'import json,sys; s=json.load(sys.stdin)["sinks"]["kafka"]; sys.exit(0 if s["spooled"]==0 else 1)' \
      2>/dev/null && return 0
    sleep 0.1
  done
  echo "compare: the gateway's Kafka spool did not drain within 60 s" >&2
}

python3 benches/compare.py machine "$(git rev-parse --short HEAD)" "$secs" "$warm" "$conns" "$rate_conns" | tee -a "$out" >&2

# ---- the peer ----
PEER_LISTEN=127.0.0.1:18082 PEER_ADMIN=127.0.0.1:19195 PEER_BROKERS=127.0.0.1:9092 \
  PEER_TOPIC="${prefix}peer.inquiries.routed" PEER_AGENTS="anna=eu-sales:8,ben=eu-sales:8,emma=en-sales:12:offline" \
  $n "$peer_bin" -c benches/peer/peer.yaml > "$work/peer.log" 2>&1 &
peer=$!
wait_port 18082
for _ in $(seq 100); do curl -sf 127.0.0.1:19195/ready >/dev/null && break; sleep 0.1; done
peer_max="$(saturate peer "$peer" "" http://127.0.0.1:18082/v1/inquiries)"
echo "compare: the peer's saturation throughput is $peer_max inquiries/s" >&2
at_rates peer "$peer" "" http://127.0.0.1:18082/v1/inquiries
kill "$peer"; wait "$peer" 2>/dev/null || true

# ---- the gateway: Kafka sink + the Rust example routing plugin ----
benches/gateway-config.sh "$work" "$prefix" "$plugin" > "$work/gateway.toml"
$n "$bin/inquiry-gateway" run --config "$work/gateway.toml" > "$work/gateway.log" 2>&1 &
gw=$!
wait_port 18081 || { cat "$work/gateway.log" >&2; exit 1; }
for _ in $(seq 300); do
  curl -sf 127.0.0.1:19091/readyz | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["sinks"]["kafka"]["status"]=="ready" else 1)' 2>/dev/null && break
  sleep 0.2
done
saturate gateway "$gw" http://127.0.0.1:19091 http://127.0.0.1:18081/v1/inquiries > /dev/null
at_rates gateway "$gw" http://127.0.0.1:19091 http://127.0.0.1:18081/v1/inquiries
if grep -i "error\|panic" "$work/gateway.log" >&2; then echo "compare: the gateway logged errors (above)" >&2; fi
kill -TERM "$gw"; wait "$gw" || true

# ---- the bare-hyper ceiling ----
$n "$bin/bare-server" --listen 127.0.0.1:18080 2>/dev/null &
bare=$!
wait_port 18080
saturate bare "$bare" "" http://127.0.0.1:18080/v1/inquiries > /dev/null
[[ $quick == 1 ]] || at_rates bare "$bare" "" http://127.0.0.1:18080/v1/inquiries
kill "$bare"; wait "$bare" 2>/dev/null || true

python3 benches/compare.py report "$out"
echo "compare: raw results in ${OUT:-/tmp/compare-last.jsonl}" >&2
