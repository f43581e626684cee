#!/usr/bin/env bash
# Builds the viewer for the browser into web/dist: wasm32 release build (rustup's target, or
# Debian's rustc-web as a fallback, see scripts/wasm-env.sh), optional wasm-opt (before
# wasm-bindgen: Debian's wasm-opt 108 breaks wasm-bindgen's output otherwise), wasm-bindgen
# --target web, then index.html and the demo checkpoint beside it. A second module,
# pkg-threads/, is the compute worker for browsers without WebGPU on a cross-origin isolated
# page: burn's CPU backend on every core (atomics + build-std from rustup's rust-src, or from
# Debian's rustc-web where rustup cannot get it, see scripts/wasm-env.sh). WEB_THREADS=0 skips
# it (the page then computes on one thread).
set -euo pipefail
cd "$(dirname "$0")/.."
BINDGEN_VERSION=0.2.130
export WASM_TARGET_DIR=${WASM_TARGET_DIR:-/var/tmp/dinoscope-target-wasm}
if ! wasm-bindgen --version 2>/dev/null | grep -q "$BINDGEN_VERSION"; then
  echo "installing wasm-bindgen-cli $BINDGEN_VERSION (matches the crate in Cargo.lock)…"
  cargo install wasm-bindgen-cli --version "$BINDGEN_VERSION"
fi
export WASM_THREADS_TARGET_DIR=${WASM_THREADS_TARGET_DIR:-/var/tmp/dinoscope-target-wasm-threads}
bash scripts/wasm-env.sh cargo build --release --target wasm32-unknown-unknown -p dino-viewer
threads=${WEB_THREADS:-1}
if [ "$threads" = 1 ]; then
  WASM_THREADS=1 bash scripts/wasm-env.sh cargo build --release --target wasm32-unknown-unknown \
    -p dino-viewer --bin dino-viewer-threads --no-default-features --features threads
fi
rm -rf web/dist && mkdir -p web/dist
# bindgen <wasm> <out dir> <name>: optional wasm-opt (it reads the module's own feature list:
# SIMD, atomics), then wasm-bindgen.
bindgen() {
  local wasm=$1
  if command -v wasm-opt >/dev/null && [ "${WASM_OPT:-1}" = 1 ]; then
    wasm-opt -O2 --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int \
      --enable-mutable-globals --enable-reference-types --enable-multivalue "$wasm" -o web/dist/opt.wasm
    wasm=web/dist/opt.wasm
  fi
  wasm-bindgen --target web --no-typescript --out-dir "$2" --out-name "$3" "$wasm"
  rm -f web/dist/opt.wasm
}
bindgen "$WASM_TARGET_DIR/wasm32-unknown-unknown/release/dino-viewer.wasm" web/dist/pkg dino-viewer
if [ "$threads" = 1 ]; then
  bindgen "$WASM_THREADS_TARGET_DIR/wasm32-unknown-unknown/release/dino-viewer-threads.wasm" \
    web/dist/pkg-threads dino-viewer-threads
fi
cp web/index.html web/worker.js web/isolation.js web/dist/
# The demo model the page opens when no ?checkpoint= is given (see assets/demo/README.md).
cp assets/demo/dino-vit-tiny8-shapes.safetensors web/dist/demo.safetensors
echo "web/dist is ready: python3 web/serve.py, then open http://localhost:8000"
