#!/usr/bin/env bash
# Builds every example plugin from source into $PLUGINS_OUT (default
# ~/.cache/inquiry-gateway/plugins, outside the clone): example-rust.wasm, example-go.wasm,
# example-c.wasm, and the gateway tests' test-*.wasm. No .wasm file is ever committed.
# Installs the toolchains it needs from Debian's packages when they are missing.
# Usage: plugins/build.sh [rust] [go] [c] [test]
#
# - Rust: Debian's rustc-web (1.96) + rust-web-src + cargo-web build wasm32-unknown-unknown
#   with -Zbuild-std (rustup's toolchain here has no wasm32 target). Elsewhere, with rustup:
#   `rustup target add wasm32-unknown-unknown && cargo build --release --target wasm32-unknown-unknown`.
# - Go: GOOS=wasip1 GOARCH=wasm, -buildmode=c-shared (a WASI reactor) and go:wasmexport.
# - C: clang-19 --target=wasm32-unknown-unknown with lld-19, no libc.
set -euo pipefail
cd "$(dirname "$0")"
out="${PLUGINS_OUT:-$HOME/.cache/inquiry-gateway/plugins}"
mkdir -p "$out"
languages=("$@")
((${#languages[@]})) || languages=(rust go c test)

sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
need_apt=()
[ -x /usr/bin/rustc ] && /usr/bin/rustc --version | grep -q '^rustc 1\.9[6-9]' || need_apt+=(rustc-web)
[ -d /usr/lib/rustlib/src/rust/library ] || need_apt+=(rust-web-src)
[ -x /usr/bin/cargo ] || need_apt+=(cargo-web)
command -v clang-19 >/dev/null 2>&1 || need_apt+=(clang-19)
command -v wasm-ld-19 >/dev/null 2>&1 || need_apt+=(lld-19)
if ((${#need_apt[@]})); then
  echo "plugins: installing ${need_apt[*]} from Debian's packages"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

build_rust() {
  local target="$HOME/.cache/inquiry-gateway/plugins-target"
  (cd examples/rust &&
    RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR="$target" \
      CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=wasm-ld-19 \
      /usr/bin/cargo build --quiet --release --locked --target wasm32-unknown-unknown \
      -Zbuild-std=std,panic_abort)
  cp "$target/wasm32-unknown-unknown/release/example_router.wasm" "$out/example-rust.wasm"
}

build_go() {
  (cd examples/go && GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -trimpath -o "$out/example-go.wasm" .)
}

build_c() {
  clang-19 --target=wasm32-unknown-unknown -O2 -nostdlib -fno-builtin -Wall -Wextra -Werror \
    -I sdk-c -Wl,--no-entry -Wl,--export-dynamic -Wl,--strip-all -fuse-ld=lld \
    -o "$out/example-c.wasm" examples/c/router.c
}

# Test plugins of the gateway's own tests (gateway/tests/plugins/*.c), not examples.
build_test() {
  for source in ../gateway/tests/plugins/*.c; do
    clang-19 --target=wasm32-unknown-unknown -O2 -nostdlib -fno-builtin -Wall -Wextra -Werror \
      -I sdk-c -Wl,--no-entry -Wl,--export-dynamic -Wl,--strip-all -fuse-ld=lld \
      -o "$out/test-$(basename "$source" .c).wasm" "$source"
  done
}

for language in "${languages[@]}"; do
  started=$(date +%s)
  "build_$language"
  echo "plugins: built $language into $out ($(($(date +%s) - started)) s)"
done
