#!/usr/bin/env bash
# Runs a cargo command for wasm32-unknown-unknown with whichever toolchain this machine can
# get: rustup's target when the toolchain server answers (recipe A), else Debian's rustc-web
# with build-std (recipe B). Usage: scripts/wasm-env.sh cargo <args…>
set -euo pipefail
export CARGO_TARGET_DIR=${WASM_TARGET_DIR:-/var/tmp/dinoscope-target-wasm}


shift # drop the literal "cargo"
if rustup target list --installed 2>/dev/null | grep -q wasm32-unknown-unknown \
   || timeout 120 rustup target add wasm32-unknown-unknown >/dev/null 2>&1; then
  exec cargo "$@"
fi
echo "rustup could not add wasm32-unknown-unknown; using Debian's rustc-web with build-std" >&2
if ! command -v /usr/bin/rustc >/dev/null || ! /usr/bin/rustc --print target-list | grep -q wasm32; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rustc-web rust-web-src cargo-web rust-web-llvm lld-22
fi
export RUSTC_BOOTSTRAP=1 RUSTC=/usr/bin/rustc
exec /usr/bin/cargo "$@" -Zbuild-std=std,panic_abort
