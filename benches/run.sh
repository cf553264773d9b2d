#!/usr/bin/env bash
# Ingest benchmark, one run, one machine: the bare-hyper ceiling vs the gateway (single POSTs),
# then NDJSON batch ingest. Prints one JSON line per measurement (append to a file with
# `benches/run.sh | tee -a benches/results.jsonl`). Takes ~1.5 minutes plus a release build.
#
#   SECONDS_PER_RUN=10 benches/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/inquiry-gateway/target}"
secs="${SECONDS_PER_RUN:-10}"
cargo build --release --locked -q -p inquiry-gateway -p inquiry-benches
bin="$CARGO_TARGET_DIR/release"
work="$(mktemp -d)"
# `|| true`: under `set -e` a failing `kill` (no jobs left) would end the trap before the `rm`.
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
trap 'exit 143' INT TERM

wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }

echo "{\"machine\":\"$(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo)\",\"kernel\":\"$(uname -r)\",\"date\":\"$(date -u +%FT%TZ)\",\"commit\":\"$(git rev-parse --short HEAD)\"}"

"$bin/bare-server" --listen 127.0.0.1:18080 2>/dev/null &
bare=$!
wait_port 18080
"$bin/loadgen" --url http://127.0.0.1:18080/v1/inquiries --connections 64 --seconds "$secs" --label bare-hyper-single
kill "$bare"

printf '[ingest]\nlisten = "127.0.0.1:18081"\n[admin]\nlisten = "127.0.0.1:19091"\n[store]\npath = "%s/store"\n[log]\nlevel = "warn"\n' "$work" > "$work/gateway.toml"
"$bin/inquiry-gateway" run --config "$work/gateway.toml" > "$work/gateway.log" 2>&1 &
gw=$!
wait_port 18081
c0=$(cpu_ticks "$gw")
"$bin/loadgen" --url http://127.0.0.1:18081/v1/inquiries --connections 64 --seconds "$secs" --label gateway-single
c1=$(cpu_ticks "$gw")
"$bin/loadgen" --url http://127.0.0.1:18081/v1/inquiries/batch --batch 1000 --connections 4 --seconds "$secs" --label gateway-batch-1000
c2=$(cpu_ticks "$gw")
rss_kib=$(awk '/VmRSS/{print $2}' "/proc/$gw/status")
echo "{\"gateway_cpu_seconds_single\":$(( (c1 - c0) ))e-2,\"gateway_cpu_seconds_batch\":$(( (c2 - c1) ))e-2,\"gateway_rss_kib\":$rss_kib}"
kill -TERM "$gw"
wait "$gw"
