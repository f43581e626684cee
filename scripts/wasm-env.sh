#!/usr/bin/env bash
# Runs a cargo command for wasm32-unknown-unknown with whichever toolchain this machine can
# get: rustup's target when the toolchain server answers (recipe A), else Debian's rustc-web
# with build-std (recipe B). Usage: scripts/wasm-env.sh cargo <args…>
# WASM_THREADS=1 builds for shared memory (atomics, for wasm-bindgen-rayon): std itself must
# then be rebuilt with atomics (build-std), in its own target dir, from rustup's `rust-src`
# component with the same compiler (recipe C: Linux, macOS, Windows alike), else from
# Debian's rustc-web (recipe B).
set -euo pipefail
threads=${WASM_THREADS:-0}
if [ "$threads" = 1 ]; then
  export CARGO_TARGET_DIR=${WASM_THREADS_TARGET_DIR:-/var/tmp/dinoscope-target-wasm-threads}
  # rustc does not make the memory shared by itself here: the linker is told, and told to
  # export the thread-local storage symbols wasm-bindgen's thread start-up calls. 4 GiB is
  # wasm32's ceiling (the default would be 1 GiB).
  export RUSTFLAGS="-C target-feature=+atomics,+bulk-memory,+mutable-globals,+simd128 \
-C link-arg=--shared-memory -C link-arg=--import-memory -C link-arg=--max-memory=4294967296 \
-C link-arg=--export=__wasm_init_tls -C link-arg=--export=__tls_size \
-C link-arg=--export=__tls_align -C link-arg=--export=__tls_base"
else
  export CARGO_TARGET_DIR=${WASM_TARGET_DIR:-/var/tmp/dinoscope-target-wasm}
fi

shift # drop the literal "cargo"
# macOS has no `timeout`: there the toolchain server is waited for as long as it takes.
limit() { if command -v timeout >/dev/null; then timeout "$@"; else shift; "$@"; fi; }
if [ "$threads" = 1 ] && command -v rustup >/dev/null \
   && { rustup component list --installed 2>/dev/null | grep -q '^rust-src' \
        || limit 120 rustup component add rust-src >/dev/null 2>&1; } \
   && { rustup target list --installed 2>/dev/null | grep -q wasm32-unknown-unknown \
        || limit 120 rustup target add wasm32-unknown-unknown >/dev/null 2>&1; }; then
  # build-std is unstable; RUSTC_BOOTSTRAP lets the stable compiler use it, as recipe B does.
  export RUSTC_BOOTSTRAP=1
  exec cargo "$@" -Zbuild-std=std,panic_abort
fi
[ "$threads" != 1 ] || echo "rustup could not add rust-src; using Debian's rustc-web with build-std" >&2
if [ "$threads" != 1 ] && { rustup target list --installed 2>/dev/null | grep -q wasm32-unknown-unknown \
   || limit 120 rustup target add wasm32-unknown-unknown >/dev/null 2>&1; }; then
  exec cargo "$@"
fi
[ "$threads" = 1 ] || echo "rustup could not add wasm32-unknown-unknown; using Debian's rustc-web with build-std" >&2
if ! command -v /usr/bin/rustc >/dev/null || ! /usr/bin/rustc --print target-list | grep -q wasm32; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rustc-web rust-web-src cargo-web rust-web-llvm lld-22
fi
export RUSTC_BOOTSTRAP=1 RUSTC=/usr/bin/rustc
exec /usr/bin/cargo "$@" -Zbuild-std=std,panic_abort
