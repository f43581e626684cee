#!/usr/bin/env bash
# One-time setup for `cargo test --workspace` on a fresh Debian machine: Chromium and its
# WebDriver for the browser test, binaryen (wasm-opt), Mesa's lavapipe (a CPU Vulkan driver)
# for the wgpu test, Open MPI and libclang for the MPI tests (the workspace build turns on the
# trainer's `mpi` feature, whose bindings bindgen generates), openssl for `web/serve.py --https`
# in the browser test, and the web build in web/dist
# (whose threaded module rebuilds std from rustup's rust-src, or Debian's rustc-web, see
# scripts/wasm-env.sh).
# `--packages` installs the system packages only (CI runs clippy on the workspace first).
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v apt-get >/dev/null; then
  need=()
  for p in pkg-config chromium chromium-driver binaryen mesa-vulkan-drivers libvulkan1 \
    openmpi-bin libopenmpi-dev libclang-dev python3 openssl; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
  done
  if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]}…"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi
[ "${1:-}" = --packages ] && exit 0
bash web/build.sh
