#!/usr/bin/env bash
# The gateway's configuration for the side-by-side benchmark and its profile (compare.sh,
# profile.sh): the Kafka sink and the Rust example routing plugin with the peer's agent directory.
#   benches/gateway-config.sh WORK_DIR TOPIC_PREFIX PLUGIN_WASM > gateway.toml
set -euo pipefail
cat <<TOML
[ingest]
listen = "127.0.0.1:18081"
[admin]
listen = "127.0.0.1:19091"
[store]
path = "$1/store"
[log]
level = "warn"
[sinks.kafka]
brokers = "127.0.0.1:9092"
location = "eu"
topic_prefix = "$2"
partitions = 6
[routing.fallback]
queue = "unassigned"
priority = "normal"
[[routing.plugins]]
id = "rules"
path = "$3"
capabilities = ["agents", "kv", "log", "counters", "clock"]
[[routing.chains]]
plugins = ["rules"]
[[routing.agents]]
id = "anna"
team = "eu-sales"
capacity = 8
[[routing.agents]]
id = "ben"
team = "eu-sales"
capacity = 8
[[routing.agents]]
id = "emma"
team = "en-sales"
capacity = 12
online = false
TOML
