#!/usr/bin/env bash
# Side-by-side CPU benchmarks: each `dino bench` measurement is followed at once by the official
# facebookresearch/dino code on the same work with the same thread count, and the pairs become
# the CPU tables of BENCHMARKS.md (scripts/benchmarks.py).
#
# Needs: PyTorch CPU from pip (python3 -m venv /tmp/ref && /tmp/ref/bin/pip install torch
# torchvision numpy pillow), the official code in a git-ignored folder (third_party/dino: the
# .py files of facebookresearch/dino), and the `dino` binary of the README's profile
# (cargo build -p dino-trainer --bin dino).
#
# Usage: PYTHON=/tmp/ref/bin/python bash scripts/bench-cpu.sh [results.jsonl]
#   QUICK=1 runs fewer steps (a check that everything runs, not a measurement).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench-cpu.jsonl}
py=${PYTHON:-python3}
repo=${DINO_REPO:-third_party/dino}
threads=${THREADS:-$(nproc)}
target=$(cargo metadata --format-version 1 --no-deps | "$py" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
dino=${DINO:-$target/debug/dino}
[ -x "$dino" ] || { echo "no dino binary at $dino: run cargo build -p dino-trainer --bin dino (or set DINO)" >&2; exit 1; }
[ -f "$repo/main_dino.py" ] || { echo "the official code is not in $repo: put facebookresearch/dino's .py files there (or set DINO_REPO)" >&2; exit 1; }
"$py" -c 'import torch, torchvision' 2>/dev/null || { echo "$py has no torch/torchvision: set PYTHON to a venv with them" >&2; exit 1; }
steps=10 warmup=2 batches=6 images=96 runs=5
[ "${QUICK:-0}" = 1 ] && steps=1 warmup=1 batches=1 images=8 runs=1

# The photos (assets/samples, 451–600 px) repeated into one class folder for both loaders.
photos=$(mktemp -d)
trap 'rm -rf "$photos"' EXIT
mkdir -p "$photos/photos"
for i in $(seq 1 8); do for f in assets/samples/*.jpg; do cp "$f" "$photos/photos/$i-$(basename "$f")"; done; done

: > "$out"
"$py" - "$out" "$threads" <<'PY'
import datetime, json, platform, subprocess, sys, torch
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
meta = {"mode": "meta", "date": datetime.date.today().isoformat(),
        "machine": f"{cpu}, {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores",
        "versions": f"{rustc}, burn 0.22.1 (flex, rayon + simd), torch {torch.__version__}",
        "command": "bash scripts/bench-cpu.sh", "threads": int(sys.argv[2])}
open(sys.argv[1], "a").write(json.dumps(meta) + "\n")
PY

pair() { # $1: dino bench args, $2: bench_reference.py args
  echo "== dino bench $1" >&2
  RAYON_NUM_THREADS=$threads "$dino" bench $1 | tee -a "$out"
  echo "== official $2" >&2
  "$py" scripts/bench_reference.py --dino-repo "$repo" $2 2>/dev/null | tee -a "$out"
}

readme="--arch vit_tiny --patch-size 8 --depth 4 --image-size 64 --local-size 32 --local-crops 4 --out-dim 4096 --batch-size 32"
small="--arch vit_small --patch-size 16 --image-size 96 --local-size 48 --local-crops 8 --out-dim 65536 --batch-size 16"
pair "--mode step --device cpu $readme --warmup $warmup --steps $steps" \
     "--threads $threads step $readme --warmup $warmup --steps $steps"
pair "--mode step --device cpu $small --warmup $warmup --steps $steps" \
     "--threads $threads step $small --warmup $warmup --steps $steps"
# The step's matrix products one by one, on the same shapes and views as torch.mm: what the
# kernel library alone accounts for of the step's ratio.
pair "--mode matmul --device cpu $readme --steps $runs" \
     "--threads $threads matmul --products $out"
# One core each: our loader with one worker, the official transform in this process.
pair "--mode data --data $photos --workers 1 --batch-size 16 --steps $batches" \
     "--threads 1 data --data $photos --images $images"
pair "--mode viewer --device cpu --arch vit_small --patch-size 16 --viewer-size 480 --steps $runs" \
     "--threads $threads viewer --arch vit_small --patch-size 16 --size 480 --runs $runs"

"$py" scripts/benchmarks.py "$out" --section cpu --write BENCHMARKS.md
echo "wrote $out and the CPU section of BENCHMARKS.md" >&2
