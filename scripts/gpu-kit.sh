#!/usr/bin/env bash
# Builds what scripts/gpu-check.sh needs on the GPU machine into gpu-kit/ (git-ignored), here on
# the CPU machine, before a device is ever lent (the device's minutes are too few to build):
#   gpu-kit/dino.xz       the release `dino` with --features vulkan: with it burn's wgpu runtime
#                         compiles every kernel to SPIR-V on a Vulkan adapter, `--device wgpu` too
#   gpu-kit/dino-wgsl.xz  the release `dino` as the README builds it (WGSL on every adapter)
#                         Both stripped and xz-compressed: 94 MB raw, 15 MB packed each, under
#                         the device's 64 MiB carry.
#   gpu-kit/debs/*.deb  Debian's Vulkan loader and the GL/X11 libraries the NVIDIA ICD needs:
#                       the GPU machine has the NVIDIA driver, no loader
# The official code the PyTorch side imports travels as third_party/dino (see BENCHMARKS.md).
# About 55 minutes on 2 cores the first time (two release builds of burn's stack).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p gpu-kit/debs
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
pack() {  # pack NAME [cargo features…]: build, strip and compress one variant
  local name=$1
  shift
  cargo build --release -p dino-trainer --bin dino "$@"
  rm -f "gpu-kit/$name" "gpu-kit/$name.xz"
  cp "$target/release/dino" "gpu-kit/$name"
  strip "gpu-kit/$name"
  xz -T0 -6 "gpu-kit/$name"
}
pack dino-wgsl
# SPIRV=0 skips the second build (gpu-check.sh then runs the WGSL parts only).
if [ "${SPIRV:-1}" = 1 ]; then pack dino --features vulkan; else rm -f gpu-kit/dino.xz; fi
# The loader and what the driver's Vulkan ICD (libGLX_nvidia.so.0) links against: without
# glvnd and the X11 client libraries the loader reports "Could not get 'vkCreateInstance' via
# 'vk_icdGetInstanceProcAddr'" and wgpu finds no adapter (seen on the H200 machine, 2026-12-04).
(cd gpu-kit/debs && rm -f ./*.deb && apt-get download libvulkan1 libglvnd0 libegl1 libgl1 libglx0 \
  libx11-6 libx11-xcb1 libxext6 libxcb1 libxau6 libxdmcp6 libbsd0 libmd0 libwayland-client0 libffi8 >/dev/null)
[ -f third_party/dino/main_dino.py ] || echo "note: third_party/dino is missing; put facebookresearch/dino's .py files there for the PyTorch side" >&2
ls -la gpu-kit gpu-kit/debs
echo "carry: gpu-kit third_party (run: bash scripts/gpu-check.sh)"
