#!/usr/bin/env bash
# The whole test suite: unit, golden and end-to-end tests over real sockets, including the sinks
# against a real Apache Kafka broker (KRaft) and a real Apache Cassandra node on loopback, and
# the IMAP mailbox reader against a real Dovecot.
# Installs its prerequisites first (tests/setup.sh), builds the WebAssembly plugins
# (plugins/build.sh, into ~/.cache/inquiry-gateway/plugins), fetches and starts the servers
# (tests/services/*.sh; jars cached in ~/.cache/inquiry-gateway/services) and stops them at the
# end. Build output goes to $CARGO_TARGET_DIR (default ~/.cache/inquiry-gateway/target, outside
# the clone, so reruns are incremental).
set -euo pipefail
cd "$(dirname "$0")/.."

tests/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/inquiry-gateway/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

stop_services() {
  tests/services/kafka.sh stop || true
  tests/services/cassandra.sh stop || true
  tests/services/dovecot.sh stop || true
}
trap stop_services EXIT

# Fetch the servers, build, then start them (the build and the JVMs would compete for 2 cores).
tests/services/kafka.sh fetch
tests/services/cassandra.sh fetch
# WebAssembly plugins from source (Rust, Go, C examples and the tests' own plugins): installs
# Debian's rustc-web, rust-web-src, cargo-web, clang-19 and lld-19 when missing.
plugins/build.sh
cargo build --workspace --all-targets --locked
# The Go plugin SDK's own tests (the examples' golden cases run in the gateway's tests).
(cd plugins/sdk-go && go test ./...)
# Deployment files: helm lint, rendered manifests against the Kubernetes schemas, configs, rules.
GATEWAY_BIN="$CARGO_TARGET_DIR/debug/inquiry-gateway" deploy/lint.sh
# Fresh broker and node data each run (the jars stay cached): every test makes its own keyspaces
# and topics, and a node that kept thousands of tables from earlier runs takes a minute per
# schema change. KEEP_SERVICE_DATA=1 keeps them.
if [ "${KEEP_SERVICE_DATA:-0}" != 1 ]; then
  tests/services/kafka.sh reset
  tests/services/cassandra.sh reset
fi
tests/services/kafka.sh start
tests/services/cassandra.sh start
tests/services/dovecot.sh start

cargo test --workspace --all-targets --locked
