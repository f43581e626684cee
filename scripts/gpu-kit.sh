#!/usr/bin/env bash
# Builds what scripts/gpu-check.sh needs on the GPU machine into gpu-kit/ (git-ignored), here on
# the CPU machine, before a device is ever lent (the device's minutes are too few to build):
#   gpu-kit/dino        the release `dino` with --features vulkan (WGSL and SPIR-V), stripped
#   gpu-kit/debs/*.deb  Debian's Vulkan loader: the GPU machine has the NVIDIA driver, no loader
# The official code the PyTorch side imports travels as third_party/dino (see BENCHMARKS.md).
# About 30 minutes on 2 cores the first time (its own release build of burn's stack).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p gpu-kit/debs
cargo build --release -p dino-trainer --bin dino --features vulkan
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
cp "$target/release/dino" gpu-kit/dino
strip gpu-kit/dino
(cd gpu-kit/debs && rm -f ./*.deb && apt-get download libvulkan1 >/dev/null)
[ -f third_party/dino/main_dino.py ] || echo "note: third_party/dino is missing; put facebookresearch/dino's .py files there for the PyTorch side" >&2
ls -la gpu-kit gpu-kit/debs
echo "carry: gpu-kit third_party (run: bash scripts/gpu-check.sh)"
