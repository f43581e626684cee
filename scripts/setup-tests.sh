#!/usr/bin/env bash
# One-time setup for `cargo test --workspace` on a fresh Debian machine: Chromium and its
# WebDriver for the browser test, binaryen (wasm-opt), Mesa's lavapipe (a CPU Vulkan driver)
# for the wgpu test, and the web build in web/dist.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v apt-get >/dev/null; then
  need=()
  for p in pkg-config chromium chromium-driver binaryen mesa-vulkan-drivers libvulkan1; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
  if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]}…"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi
bash web/build.sh
