#!/usr/bin/env bash
# Builds the benchmark's peer (benches/peer/: the benthos core of Redpanda Connect, v4.60.0, with
# a kafka_franz output on franz-go) with the Go toolchain into $PEER_OUT (default
# ~/.cache/inquiry-gateway/peer, outside the clone), only when its sources or the Go version
# changed. Prints the binary's path. Modules come from the Go module proxy (GOPROXY).
#
#   benches/peer.sh            # -> ~/.cache/inquiry-gateway/peer/peer
set -euo pipefail
cd "$(dirname "$0")/peer"
out="${PEER_OUT:-$HOME/.cache/inquiry-gateway/peer}"
mkdir -p "$out"
stamp="$( (go version; cat go.mod go.sum ./*.go) | sha256sum | cut -d' ' -f1)"
if [[ -x "$out/peer" && -f "$out/peer.stamp" && "$(cat "$out/peer.stamp")" == "$stamp" ]]; then
  echo "$out/peer"
  exit 0
fi
echo "peer: building benches/peer with $(go version | cut -d' ' -f3) into $out" >&2
nice -n 19 go build -trimpath -mod=readonly -o "$out/peer.tmp" .
mv "$out/peer.tmp" "$out/peer"
echo "$stamp" > "$out/peer.stamp"
echo "$out/peer"
