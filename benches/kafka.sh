#!/usr/bin/env bash
# HTTP -> Kafka (acks=all) end to end: NDJSON batches into the gateway with the Kafka sink, until
# every acknowledged inquiry is acknowledged by Kafka. Reports the HTTP ingest numbers from the
# load generator, the end-to-end throughput (acknowledged by Kafka / time until the spool is
# empty), and the p50/p99 of commit-to-Kafka-ack and of ingest (request arrival to durable ack)
# from the gateway's own histograms. Needs the broker: tests/services/kafka.sh start.
#
#   SECONDS_PER_RUN=10 benches/kafka.sh
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
tests/services/kafka.sh start >/dev/null

prefix="bench$(date +%s)."
cat > "$work/gateway.toml" <<TOML
[ingest]
listen = "127.0.0.1:18081"
[admin]
listen = "127.0.0.1:19091"
[store]
path = "$work/store"
[log]
level = "warn"
[sinks.kafka]
brokers = "127.0.0.1:9092"
location = "eu"
topic_prefix = "$prefix"
partitions = 6
TOML
"$bin/inquiry-gateway" run --config "$work/gateway.toml" > "$work/gateway.log" 2>&1 &
gw=$!
for _ in $(seq 100); do curl -sf localhost:19091/readyz | grep -q '"kafka":{"spooled":0,"status":"ready"}\|"status":"ready","spooled":0' && break; sleep 0.2; done

start=$(date +%s.%N)
# RATE: batch requests per second (open loop; 500 inquiries each); 0 = as fast as possible.
"$bin/loadgen" --url http://127.0.0.1:18081/v1/inquiries/batch --batch 500 --connections 4 \
  --seconds "$secs" --warmup-seconds 0 --rate "${RATE:-0}" --label "gateway-batch-500-kafka-rate-${RATE:-max}"
until curl -sf localhost:19091/readyz | python3 -c 'import json,sys; s=json.load(sys.stdin)["sinks"]["kafka"]; sys.exit(0 if s["spooled"]==0 else 1)'; do sleep 0.1; done
end=$(date +%s.%N)
curl -s localhost:19091/metrics > "$work/metrics.txt"
python3 - "$work/metrics.txt" "$start" "$end" <<'PY'
import json, re, sys
text = open(sys.argv[1]).read()
elapsed = float(sys.argv[3]) - float(sys.argv[2])
def buckets(hop):
    rows = re.findall(r'inquiry_gateway_hop_duration_seconds_bucket\{hop="%s",channel="generic",le="([^"]+)"\} (\S+)' % hop, text)
    return [(float("inf") if le == "+Inf" else float(le), float(n)) for le, n in rows]
def quantile(b, q):
    total = b[-1][1]
    prev_le, prev_n = 0.0, 0.0
    for le, n in b:
        if n >= q * total:
            # linear interpolation inside the bucket, as Prometheus' histogram_quantile does
            return prev_le + (le - prev_le) * ((q * total - prev_n) / max(n - prev_n, 1e-9)) if le != float("inf") else prev_le
        prev_le, prev_n = le, n
delivered = float(re.search(r'inquiry_gateway_sink_delivered_total\{sink="kafka"\} (\S+)', text).group(1))
out = {"label": "http-to-kafka", "delivered": int(delivered), "seconds_until_spool_empty": round(elapsed, 2),
       "end_to_end_inquiries_per_s": round(delivered / elapsed)}
for hop in ("ingest", "sink_kafka"):
    b = buckets(hop)
    out[f"{hop}_p50_ms"] = round(quantile(b, 0.5) * 1000, 2)
    out[f"{hop}_p99_ms"] = round(quantile(b, 0.99) * 1000, 2)
print(json.dumps(out))
PY
kill -TERM "$gw"; wait "$gw"
